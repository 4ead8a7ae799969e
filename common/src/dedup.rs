//! Duplicate detection: an event whose id equals that of an earlier kept event with the same
//! UTC event date is a duplicate.
//!
//! [`SeenIds`] holds, per event date, the 128-bit hashes of the ids kept so far. It is pure:
//! the caller loads a date's ids from wherever they are stored (the raw table) when
//! [`SeenIds::dates_to_load`] asks for them, then asks [`SeenIds::keep`] which rows of a batch
//! to keep. Memory is bounded by evicting the least recently used dates; an evicted date is
//! simply loaded again when a late event needs it.
//!
//! Between two batch runs a date collects every id of the day, so the layout is chosen for
//! bytes per id: recent ids sit in a hash set of bounded size, and when it fills they move to a
//! sorted run — 16 bytes an id, no table slack — behind a Bloom filter, so that a new id (most
//! ids) is told apart without searching the run. Runs merge like a binary counter (a run
//! swallows the next one when it is not twice as long), so a date holds a logarithmic number
//! of runs and each id is copied a logarithmic number of times. An id is a duplicate only if
//! a set or a run holds it: the filters only decide where to look, never the answer.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use arrow::array::{Array, BooleanArray, Date32Array, StringArray};
use fastbloom::BloomFilter;

/// The key an id is remembered by. 128 bits keep collisions out of reach (below 1e-20 for a
/// billion ids per date) at a fraction of the memory of the strings.
pub fn id_hash(id: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(id.as_bytes())
}

/// The hasher of the id sets and the date map: an id is already a uniform 128-bit hash, so
/// its low half is its hash, and a date is spread by one multiplication. SipHash, the
/// default, cost a tenth of the speed layer's fold.
#[derive(Debug, Default, Clone, Copy)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*byte)).wrapping_mul(SPREAD);
        }
    }

    fn write_u128(&mut self, id: u128) {
        self.0 = id as u64;
    }

    fn write_i32(&mut self, date: i32) {
        self.0 = u64::from(date as u32).wrapping_mul(SPREAD);
    }
}

/// 2^64 divided by the golden ratio: multiplying by it spreads consecutive keys over the
/// whole range, the top bits included (which hashbrown's control bytes use).
const SPREAD: u64 = 0x9E37_79B9_7F4A_7C15;

type KeyHash = BuildHasherDefault<KeyHasher>;

/// Ids a date's hash set holds before they move to a sorted run.
const OPEN_IDS: usize = 1 << 16;

/// How often a run's filter sends a new id to search the run.
const FALSE_POSITIVE_RATE: f64 = 0.01;

/// Ids kept so far, per UTC event date (days since the epoch).
#[derive(Debug)]
pub struct SeenIds {
    dates: HashMap<i32, DateIds, KeyHash>,
    max_dates: usize,
    open_ids: usize,
    clock: u64,
}

#[derive(Debug, Default)]
struct DateIds {
    open: HashSet<u128, KeyHash>,
    runs: Vec<Run>,
    last_used: u64,
}

/// Sorted ids and the filter that says which ids it cannot hold.
#[derive(Debug)]
struct Run {
    ids: Box<[u128]>,
    filter: BloomFilter,
}

impl Run {
    /// A run of `ids`, sorted and without repeats.
    fn new(ids: Vec<u128>) -> Self {
        let mut filter =
            BloomFilter::with_false_pos(FALSE_POSITIVE_RATE).expected_items(ids.len().max(1));
        for id in &ids {
            filter.insert_hash(*id as u64);
        }
        Self {
            ids: ids.into_boxed_slice(),
            filter,
        }
    }

    fn contains(&self, id: u128) -> bool {
        self.filter.contains_hash(id as u64) && self.ids.binary_search(&id).is_ok()
    }

    fn bytes(&self) -> usize {
        self.ids.len() * size_of::<u128>() + self.filter.num_bits() / 8
    }
}

/// Two sorted runs without repeats (each holds an id at most once, and no id is in both) as one.
fn merge(a: &[u128], b: &[u128]) -> Vec<u128> {
    let mut merged = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i] < b[j] {
            merged.push(a[i]);
            i += 1;
        } else {
            merged.push(b[j]);
            j += 1;
        }
    }
    merged.extend_from_slice(&a[i..]);
    merged.extend_from_slice(&b[j..]);
    merged
}

impl DateIds {
    /// Remembers `id`; false if it was already there.
    fn insert(&mut self, id: u128, open_ids: usize) -> bool {
        if self.runs.iter().any(|run| run.contains(id)) || !self.open.insert(id) {
            return false;
        }
        if self.open.len() >= open_ids {
            let mut ids: Vec<u128> = self.open.drain().collect();
            ids.sort_unstable();
            self.push_run(ids);
        }
        true
    }

    /// Adds sorted `ids` none of the runs holds, merging runs that are no longer twice as
    /// long as the one after them.
    fn push_run(&mut self, mut ids: Vec<u128>) {
        while let Some(last) = self.runs.last() {
            if last.ids.len() > 2 * ids.len() {
                break;
            }
            let last = self.runs.pop().expect("checked above");
            ids = merge(&last.ids, &ids);
        }
        self.runs.push(Run::new(ids));
    }

    fn bytes(&self) -> usize {
        // A hash set slot holds the id and one control byte.
        self.open.capacity() * (size_of::<u128>() + 1)
            + self.runs.iter().map(Run::bytes).sum::<usize>()
    }
}

impl SeenIds {
    /// Keeps at most `max_dates` dates in memory between batches.
    pub fn new(max_dates: usize) -> Self {
        Self::with_open_ids(max_dates, OPEN_IDS)
    }

    /// As [`Self::new`], with recent ids moving to sorted runs once a date's hash set holds
    /// `open_ids` of them.
    pub fn with_open_ids(max_dates: usize, open_ids: usize) -> Self {
        Self {
            dates: HashMap::default(),
            max_dates: max_dates.max(1),
            open_ids: open_ids.max(1),
            clock: 0,
        }
    }

    /// The dates of `needed` that must be loaded before [`Self::keep`] can decide; evicts
    /// least recently used dates not in `needed` to make room.
    pub fn dates_to_load(&mut self, needed: &BTreeSet<i32>) -> Vec<i32> {
        let missing: Vec<i32> = needed
            .iter()
            .copied()
            .filter(|d| !self.dates.contains_key(d))
            .collect();
        while self.dates.len() + missing.len() > self.max_dates {
            let victim = self
                .dates
                .iter()
                .filter(|(d, _)| !needed.contains(d))
                .min_by_key(|(_, ids)| ids.last_used)
                .map(|(d, _)| *d);
            match victim {
                Some(d) => self.dates.remove(&d),
                None => break,
            };
        }
        missing
    }

    /// Records the ids already stored for `date`.
    pub fn load<'a>(&mut self, date: i32, ids: impl IntoIterator<Item = &'a str>) {
        let open_ids = self.open_ids;
        let entry = self.dates.entry(date).or_default();
        let mut new: Vec<u128> = ids
            .into_iter()
            .map(id_hash)
            .filter(|id| {
                !entry.open.contains(id) && !entry.runs.iter().any(|run| run.contains(*id))
            })
            .collect();
        if new.len() < open_ids {
            for id in new {
                entry.insert(id, open_ids);
            }
        } else {
            new.sort_unstable();
            new.dedup();
            entry.push_run(new);
        }
    }

    /// Number of dates held in memory.
    pub fn loaded_dates(&self) -> usize {
        self.dates.len()
    }

    /// Bytes the remembered ids take: hash set slots, sorted runs and their filters.
    pub fn bytes(&self) -> usize {
        self.dates.values().map(DateIds::bytes).sum()
    }

    /// Which rows to keep: those whose (date, id) was not seen before, in row order, so that
    /// the first of several copies in one batch is the one kept. Kept ids are remembered.
    ///
    /// # Panics
    /// If a row's date was not loaded (see [`Self::dates_to_load`]).
    pub fn keep(&mut self, ids: &StringArray, dates: &Date32Array) -> BooleanArray {
        self.clock += 1;
        let (clock, open_ids) = (self.clock, self.open_ids);
        (0..ids.len())
            .map(|i| {
                let set = self
                    .dates
                    .get_mut(&dates.value(i))
                    .expect("date loaded before keep");
                set.last_used = clock;
                Some(set.insert(id_hash(ids.value(i)), open_ids))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_id_same_date_is_a_duplicate_other_date_is_not() {
        let mut seen = SeenIds::new(8);
        let needed = BTreeSet::from([1, 2]);
        assert_eq!(seen.dates_to_load(&needed), vec![1, 2]);
        seen.load(1, ["stored"]);
        seen.load(2, []);
        let ids = StringArray::from(vec!["a", "a", "stored", "a", "b"]);
        let dates = Date32Array::from(vec![1, 1, 1, 2, 2]);
        let keep = seen.keep(&ids, &dates);
        assert_eq!(
            keep,
            BooleanArray::from(vec![true, false, false, true, true])
        );
        let again = seen.keep(&StringArray::from(vec!["b"]), &Date32Array::from(vec![2]));
        assert_eq!(again, BooleanArray::from(vec![false]));
    }

    #[test]
    fn eviction_spares_the_dates_a_batch_needs() {
        let mut seen = SeenIds::new(2);
        for d in [1, 2] {
            seen.dates_to_load(&BTreeSet::from([d]));
            seen.load(d, []);
            seen.keep(&StringArray::from(vec!["x"]), &Date32Array::from(vec![d]));
        }
        assert_eq!(seen.dates_to_load(&BTreeSet::from([2, 3])), vec![3]);
        seen.load(3, []);
        assert_eq!(seen.loaded_dates(), 2);
        assert_eq!(
            seen.dates_to_load(&BTreeSet::from([1])),
            vec![1],
            "date 1 was evicted"
        );
    }

    proptest::proptest! {
        /// Whatever the mix of loads and batches, and however small the hash sets, a row is
        /// kept exactly when a plain set of (date, id) has not seen it.
        #[test]
        fn runs_and_sets_decide_like_one_set(
            steps in proptest::collection::vec(
                (proptest::bool::ANY, proptest::collection::vec((0..3i32, 0..40u8), 0..30)),
                1..20,
            ),
            open_ids in 1..6usize,
        ) {
            let mut seen = SeenIds::with_open_ids(8, open_ids);
            let mut model: HashSet<(i32, String)> = HashSet::new();
            for (load, rows) in steps {
                let needed = rows.iter().map(|(d, _)| *d).collect();
                for date in seen.dates_to_load(&needed) {
                    seen.load(date, []);
                }
                if load {
                    for (date, id) in &rows {
                        let id = id.to_string();
                        seen.load(*date, [id.as_str()]);
                        model.insert((*date, id));
                    }
                    continue;
                }
                let ids: Vec<String> = rows.iter().map(|(_, id)| id.to_string()).collect();
                let keep = seen.keep(
                    &StringArray::from(ids.clone()),
                    &Date32Array::from(rows.iter().map(|(d, _)| *d).collect::<Vec<_>>()),
                );
                let expected: Vec<bool> = rows
                    .iter()
                    .zip(ids)
                    .map(|((date, _), id)| model.insert((*date, id)))
                    .collect();
                proptest::prop_assert_eq!(keep, BooleanArray::from(expected));
            }
        }
    }

    #[test]
    fn a_bulk_load_becomes_one_run_and_ids_take_about_sixteen_bytes() {
        let mut seen = SeenIds::with_open_ids(1, 1 << 10);
        seen.dates_to_load(&BTreeSet::from([7]));
        let ids: Vec<String> = (0..100_000).map(|i| format!("id-{i}")).collect();
        seen.load(7, ids.iter().map(String::as_str));
        let per_id = seen.bytes() as f64 / ids.len() as f64;
        assert!((16.0..18.0).contains(&per_id), "{per_id} bytes per id");
        let again = seen.keep(
            &StringArray::from(vec!["id-99999", "new"]),
            &Date32Array::from(vec![7, 7]),
        );
        assert_eq!(again, BooleanArray::from(vec![false, true]));
    }
}
