//! Duplicate detection (SPEC §3): an event whose id equals that of an earlier kept event with
//! the same UTC event date is a duplicate.
//!
//! [`SeenIds`] holds, per event date, the 128-bit hashes of the ids kept so far. It is pure:
//! the caller loads a date's ids from wherever they are stored (the raw table) when
//! [`SeenIds::dates_to_load`] asks for them, then asks [`SeenIds::keep`] which rows of a batch
//! to keep. Memory is bounded by evicting the least recently used dates; an evicted date is
//! simply loaded again when a late event needs it.

use std::collections::{BTreeSet, HashMap, HashSet};

use arrow::array::{Array, BooleanArray, Date32Array, StringArray};

/// The key an id is remembered by. 128 bits keep collisions out of reach (below 1e-20 for a
/// billion ids per date) at a fraction of the memory of the strings.
pub fn id_hash(id: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(id.as_bytes())
}

/// Ids kept so far, per UTC event date (days since the epoch).
#[derive(Debug)]
pub struct SeenIds {
    dates: HashMap<i32, DateIds>,
    max_dates: usize,
    clock: u64,
}

#[derive(Debug, Default)]
struct DateIds {
    ids: HashSet<u128>,
    last_used: u64,
}

impl SeenIds {
    /// Keeps at most `max_dates` dates in memory between batches.
    pub fn new(max_dates: usize) -> Self {
        Self {
            dates: HashMap::new(),
            max_dates: max_dates.max(1),
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
        let entry = self.dates.entry(date).or_default();
        entry.ids.extend(ids.into_iter().map(id_hash));
    }

    /// Number of dates held in memory.
    pub fn loaded_dates(&self) -> usize {
        self.dates.len()
    }

    /// Which rows to keep: those whose (date, id) was not seen before, in row order, so that
    /// the first of several copies in one batch is the one kept. Kept ids are remembered.
    ///
    /// # Panics
    /// If a row's date was not loaded (see [`Self::dates_to_load`]).
    pub fn keep(&mut self, ids: &StringArray, dates: &Date32Array) -> BooleanArray {
        self.clock += 1;
        let clock = self.clock;
        (0..ids.len())
            .map(|i| {
                let set = self
                    .dates
                    .get_mut(&dates.value(i))
                    .expect("date loaded before keep");
                set.last_used = clock;
                Some(set.ids.insert(id_hash(ids.value(i))))
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
}
