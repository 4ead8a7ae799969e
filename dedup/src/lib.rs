//! Duplicate detection: an event whose id equals that of an earlier kept event with the same
//! UTC event date is a duplicate.
//!
//! [`SeenIds`] holds, per event date, the 128-bit hashes of the ids kept so far. The caller
//! loads a date's ids from wherever they are stored (the raw table) when
//! [`SeenIds::dates_to_load`] asks for them, then asks [`SeenIds::keep`] which rows of a batch
//! to keep. The least recently used dates are evicted beyond a bound; an evicted date is
//! simply loaded again when a late event needs it.
//!
//! A date collects every id of its day, and a day of events is more than memory should hold:
//! recent ids sit in a hash set of bounded size, and when it fills they move to a sorted run
//! in a file of local disk ([`run`]), behind a Bloom filter and a sparse index that memory
//! keeps (about 1.3 bytes an id, against 16 on disk). A new id — most ids — is told apart by
//! the filters alone; one the filters let through costs one 4 KiB read. Runs merge like a
//! binary counter (a run swallows the next one when it is not twice as long), so a date holds
//! a logarithmic number of runs and each id is rewritten a logarithmic number of times. An id
//! is a duplicate only if a set or a run holds it: the filters only decide where to look,
//! never the answer.

mod run;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::path::{Path, PathBuf};

use arrow::array::{Array, BooleanArray, BooleanBufferBuilder, Date32Array, StringArray};

use run::Run;

/// Local disk failed under the runs of [`SeenIds`].
#[derive(Debug, thiserror::Error)]
#[error("deduplication ids on local disk under {dir}: {source}")]
pub struct Error {
    dir: PathBuf,
    source: std::io::Error,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The key an id is remembered by. 128 bits keep collisions out of reach (below 1e-20 for a
/// billion ids per date) at a fraction of the memory of the strings.
pub fn id_hash(id: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(id.as_bytes())
}

/// The hasher of sets and maps keyed by [`id_hash`]es or dates: an id is already a uniform
/// 128-bit hash, so its low half is its hash, and a date is spread by one multiplication.
/// SipHash, the default, cost a tenth of the speed layer's fold.
#[derive(Debug, Default, Clone, Copy)]
pub struct KeyHasher(u64);

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

/// Builds [`KeyHasher`]s: `HashMap<u128, V, KeyHash>`.
pub type KeyHash = BuildHasherDefault<KeyHasher>;

/// Ids a date's hash set holds before they move to a sorted run.
const OPEN_IDS: usize = 1 << 16;

/// Ids a bulk load hashes, sorts and writes as one run at most: what it holds at once.
const LOAD_IDS: usize = 1 << 20;

/// Ids kept so far, per UTC event date (days since the epoch).
#[derive(Debug)]
pub struct SeenIds {
    dir: PathBuf,
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

impl DateIds {
    /// Whether a set or a run holds `id`.
    fn holds(&self, id: u128) -> std::io::Result<bool> {
        if self.open.contains(&id) {
            return Ok(true);
        }
        for run in &self.runs {
            if run.contains(id)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Remembers `id`; false if it was already there.
    fn insert(&mut self, dir: &Path, id: u128, open_ids: usize) -> std::io::Result<bool> {
        for run in &self.runs {
            if run.contains(id)? {
                return Ok(false);
            }
        }
        if !self.open.insert(id) {
            return Ok(false);
        }
        if self.open.len() >= open_ids {
            let mut ids: Vec<u128> = self.open.drain().collect();
            ids.sort_unstable();
            self.push_run(dir, ids)?;
        }
        Ok(true)
    }

    /// Adds `ids` none of the runs holds: one by one when they are few, as a run otherwise.
    fn absorb(&mut self, dir: &Path, mut ids: Vec<u128>, open_ids: usize) -> std::io::Result<()> {
        if ids.len() < open_ids {
            for id in ids {
                self.insert(dir, id, open_ids)?;
            }
            return Ok(());
        }
        ids.sort_unstable();
        ids.dedup();
        self.push_run(dir, ids)
    }

    /// Adds sorted `ids` none of the runs holds, merging runs that are no longer twice as
    /// long as the one after them.
    fn push_run(&mut self, dir: &Path, ids: Vec<u128>) -> std::io::Result<()> {
        let mut run = Run::write(dir, ids.len(), ids.into_iter().map(Ok))?;
        while let Some(last) = self.runs.last() {
            if last.len() > 2 * run.len() {
                break;
            }
            let last = self.runs.pop().expect("checked above");
            run = Run::merge(dir, &last, &run)?;
        }
        self.runs.push(run);
        Ok(())
    }

    fn memory_bytes(&self) -> usize {
        // A hash set slot holds the id and one control byte.
        self.open.capacity() * (size_of::<u128>() + 1)
            + self.runs.iter().map(Run::memory_bytes).sum::<usize>()
    }

    fn disk_bytes(&self) -> u64 {
        self.runs.iter().map(Run::disk_bytes).sum()
    }
}

/// A date's stored ids on their way in: see [`SeenIds::loading`].
#[derive(Debug)]
pub struct Loading {
    date: i32,
    ids: DateIds,
    dir: PathBuf,
    open_ids: usize,
}

impl Loading {
    /// The date being loaded.
    pub fn date(&self) -> i32 {
        self.date
    }

    /// Adds a part of the date's stored ids. At most [`LOAD_IDS`] new ids are held at once,
    /// however many there are.
    pub fn add<'a>(&mut self, ids: impl IntoIterator<Item = &'a str>) -> Result<()> {
        let mut new = Vec::new();
        let mut ids = ids.into_iter().map(id_hash).peekable();
        let added = (|| {
            while ids.peek().is_some() {
                for id in ids.by_ref() {
                    if !self.ids.holds(id)? {
                        new.push(id);
                        if new.len() == LOAD_IDS {
                            break;
                        }
                    }
                }
                self.ids
                    .absorb(&self.dir, std::mem::take(&mut new), self.open_ids)?;
            }
            Ok(())
        })();
        added.map_err(|source| Error {
            dir: self.dir.clone(),
            source,
        })
    }
}

impl SeenIds {
    /// Keeps at most `max_dates` dates between batches, with their runs in unnamed files under
    /// `dir` (the system's temporary directory when `None`; it should be a disk, not a
    /// memory-backed file system). Fails at once if no file can be made there, rather than at
    /// the first run hours later.
    pub fn new(dir: Option<&Path>, max_dates: usize) -> Result<Self> {
        Self::with_open_ids(dir, max_dates, OPEN_IDS)
    }

    /// As [`Self::new`], with recent ids moving to sorted runs once a date's hash set holds
    /// `open_ids` of them.
    pub fn with_open_ids(dir: Option<&Path>, max_dates: usize, open_ids: usize) -> Result<Self> {
        let this = Self {
            dir: dir.map_or_else(std::env::temp_dir, Path::to_owned),
            dates: HashMap::default(),
            max_dates: max_dates.max(1),
            open_ids: open_ids.max(1),
            clock: 0,
        };
        tempfile::tempfile_in(&this.dir).map_err(|source| this.error(source))?;
        Ok(this)
    }

    fn error(&self, source: std::io::Error) -> Error {
        Error {
            dir: self.dir.clone(),
            source,
        }
    }

    /// The dates of `needed` that must be loaded before [`Self::keep`] can decide. Dates not
    /// in `needed` make room: first those before `oldest` (older than any event still
    /// accepted, see `SourceConfig::oldest_live_date`), whose ids only take room, then the
    /// least recently used. A date that goes is only loaded again if an event needs it.
    pub fn dates_to_load(&mut self, needed: &BTreeSet<i32>, oldest: Option<i32>) -> Vec<i32> {
        if let Some(oldest) = oldest {
            self.dates.retain(|d, _| *d >= oldest || needed.contains(d));
        }
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

    /// Starts (or continues) loading the ids already stored for `date`. The date is taken
    /// out until [`Self::loaded`] puts it back, so a load that fails half way leaves it to be
    /// loaded again, never half known.
    pub fn loading(&mut self, date: i32) -> Loading {
        Loading {
            date,
            ids: self.dates.remove(&date).unwrap_or_default(),
            dir: self.dir.clone(),
            open_ids: self.open_ids,
        }
    }

    /// Puts a loaded date (back) in.
    pub fn loaded(&mut self, loading: Loading) {
        self.dates.insert(loading.date, loading.ids);
    }

    /// Records `ids`, already stored for `date`, in one step.
    pub fn load<'a>(&mut self, date: i32, ids: impl IntoIterator<Item = &'a str>) -> Result<()> {
        let mut loading = self.loading(date);
        loading.add(ids)?;
        self.loaded(loading);
        Ok(())
    }

    /// Forgets `dates`, as after another writer stored ids of theirs: each is loaded again when
    /// an event needs it.
    pub fn forget(&mut self, dates: impl IntoIterator<Item = i32>) {
        for date in dates {
            self.dates.remove(&date);
        }
    }

    /// Forgets every date, as after the stored ids it was loaded from changed.
    pub fn clear(&mut self) {
        self.dates.clear();
    }

    /// Number of dates held.
    pub fn loaded_dates(&self) -> usize {
        self.dates.len()
    }

    /// Bytes of memory the remembered ids take: hash set slots, and the runs' filters and
    /// indexes.
    pub fn bytes(&self) -> usize {
        self.dates.values().map(DateIds::memory_bytes).sum()
    }

    /// Bytes of the runs' files on local disk.
    pub fn disk_bytes(&self) -> u64 {
        self.dates.values().map(DateIds::disk_bytes).sum()
    }

    /// Which rows to keep: those whose (date, id) was not seen before, in row order, so that
    /// the first of several copies in one batch is the one kept. Kept ids are remembered.
    ///
    /// # Panics
    /// If a row's date was not loaded (see [`Self::dates_to_load`]).
    pub fn keep(&mut self, ids: &StringArray, dates: &Date32Array) -> Result<BooleanArray> {
        self.clock += 1;
        let (clock, open_ids) = (self.clock, self.open_ids);
        let mut keep = BooleanBufferBuilder::new(ids.len());
        for i in 0..ids.len() {
            let date = dates.value(i);
            let set = self.dates.get_mut(&date).expect("date loaded before keep");
            set.last_used = clock;
            match set.insert(&self.dir, id_hash(ids.value(i)), open_ids) {
                Ok(new) => keep.append(new),
                Err(source) => {
                    // A run that failed to be written or merged took ids with it: the date
                    // is no longer known whole, so it goes, to be loaded again.
                    self.dates.remove(&date);
                    return Err(self.error(source));
                }
            }
        }
        Ok(BooleanArray::new(keep.finish(), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_id_same_date_is_a_duplicate_other_date_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut seen = SeenIds::new(Some(dir.path()), 8).unwrap();
        let needed = BTreeSet::from([1, 2]);
        assert_eq!(seen.dates_to_load(&needed, None), vec![1, 2]);
        seen.load(1, ["stored"]).unwrap();
        seen.load(2, []).unwrap();
        let ids = StringArray::from(vec!["a", "a", "stored", "a", "b"]);
        let dates = Date32Array::from(vec![1, 1, 1, 2, 2]);
        let keep = seen.keep(&ids, &dates).unwrap();
        assert_eq!(
            keep,
            BooleanArray::from(vec![true, false, false, true, true])
        );
        let again = seen
            .keep(&StringArray::from(vec!["b"]), &Date32Array::from(vec![2]))
            .unwrap();
        assert_eq!(again, BooleanArray::from(vec![false]));
    }

    #[test]
    fn dates_before_the_oldest_live_one_go_unless_needed() {
        let dir = tempfile::tempdir().unwrap();
        let mut seen = SeenIds::new(Some(dir.path()), 8).unwrap();
        for d in [1, 2, 3, 4] {
            seen.load(d, ["x"]).unwrap();
        }
        assert_eq!(
            seen.dates_to_load(&BTreeSet::from([2, 5]), Some(3)),
            vec![5]
        );
        assert_eq!(
            seen.loaded_dates(),
            3,
            "1 went; 2 is needed, 3 and 4 are live"
        );
        assert_eq!(seen.dates_to_load(&BTreeSet::from([1]), Some(3)), vec![1]);
    }

    #[test]
    fn a_missing_directory_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let error = SeenIds::new(Some(&dir.path().join("missing")), 8).unwrap_err();
        assert!(error.to_string().contains("missing"), "{error}");
    }

    #[test]
    fn eviction_spares_the_dates_a_batch_needs() {
        let dir = tempfile::tempdir().unwrap();
        let mut seen = SeenIds::new(Some(dir.path()), 2).unwrap();
        for d in [1, 2] {
            seen.dates_to_load(&BTreeSet::from([d]), None);
            seen.load(d, []).unwrap();
            seen.keep(&StringArray::from(vec!["x"]), &Date32Array::from(vec![d]))
                .unwrap();
        }
        assert_eq!(seen.dates_to_load(&BTreeSet::from([2, 3]), None), vec![3]);
        seen.load(3, []).unwrap();
        assert_eq!(seen.loaded_dates(), 2);
        assert_eq!(
            seen.dates_to_load(&BTreeSet::from([1]), None),
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
            let dir = tempfile::tempdir().unwrap();
            let mut seen = SeenIds::with_open_ids(Some(dir.path()), 8, open_ids).unwrap();
            let mut model: HashSet<(i32, String)> = HashSet::new();
            for (load, rows) in steps {
                let needed = rows.iter().map(|(d, _)| *d).collect();
                for date in seen.dates_to_load(&needed, None) {
                    seen.load(date, []).unwrap();
                }
                if load {
                    for (date, id) in &rows {
                        let id = id.to_string();
                        seen.load(*date, [id.as_str()]).unwrap();
                        model.insert((*date, id));
                    }
                    continue;
                }
                let ids: Vec<String> = rows.iter().map(|(_, id)| id.to_string()).collect();
                let keep = seen.keep(
                    &StringArray::from(ids.clone()),
                    &Date32Array::from(rows.iter().map(|(d, _)| *d).collect::<Vec<_>>()),
                ).unwrap();
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
    fn a_bulk_load_goes_to_disk_and_leaves_memory_a_byte_and_a_half_an_id() {
        let dir = tempfile::tempdir().unwrap();
        let mut seen = SeenIds::with_open_ids(Some(dir.path()), 1, 1 << 10).unwrap();
        seen.dates_to_load(&BTreeSet::from([7]), None);
        let ids: Vec<String> = (0..100_000).map(|i| format!("id-{i}")).collect();
        seen.load(7, ids.iter().map(String::as_str)).unwrap();
        let per_id = seen.bytes() as f64 / ids.len() as f64;
        assert!(per_id < 1.5, "{per_id} bytes of memory per id");
        assert_eq!(seen.disk_bytes(), 16 * 100_000);
        let again = seen
            .keep(
                &StringArray::from(vec!["id-99999", "new"]),
                &Date32Array::from(vec![7, 7]),
            )
            .unwrap();
        assert_eq!(again, BooleanArray::from(vec![false, true]));
    }
}
