//! The watermark: which Kafka offsets a batch view covers.
//!
//! A view built from raw table version `raw_version` covers, per Kafka partition, every offset
//! up to and including the one the archiver recorded in that version's `txn` action. The speed
//! layer starts one past it; the split is by offset, never by event time.
//!
//! Offsets compare only within an epoch. A topic that was recreated, or lost its data, starts
//! its offsets again below those the lake holds; once an operator accepts that
//! (`lambdaflow archive --accept-topic-reset`), the partition's offsets count in a new epoch,
//! and a watermark of an older epoch covers nothing of the new one.

use std::collections::BTreeMap;

use arrow::array::{AsArray, BooleanArray, RecordBatch};
use arrow::datatypes::{Int32Type, Int64Type};
use serde::{Deserialize, Serialize};

/// Raw table version and, per Kafka partition, the last offset it holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    /// The raw table version the view was computed from.
    pub raw_version: u64,
    /// Partition → last offset covered; a partition absent here is covered by nothing.
    pub offsets: BTreeMap<i32, i64>,
    /// Partition → the epoch its offset counts in; absent means epoch 0, so that watermarks
    /// written before epochs existed read as they were, and are written as they were.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub epochs: BTreeMap<i32, u32>,
}

impl Watermark {
    /// The epoch `partition`'s offset counts in.
    pub fn epoch(&self, partition: i32) -> u32 {
        self.epochs.get(&partition).copied().unwrap_or(0)
    }

    /// The first offset of `partition` that this watermark does not cover, in the
    /// watermark's own epoch of it ([`Self::epoch`]).
    pub fn next_offset(&self, partition: i32) -> i64 {
        self.offsets.get(&partition).map_or(0, |o| o + 1)
    }

    /// The first offset of `partition` not covered, when the partition's offsets now count in
    /// `current_epoch`: 0 when that is newer than the watermark's, whose offsets belong to a
    /// topic that is gone.
    pub fn next_offset_at(&self, partition: i32, current_epoch: u32) -> i64 {
        if self.epoch(partition) < current_epoch {
            0
        } else {
            self.next_offset(partition)
        }
    }

    /// Whether the event at (`partition`, `offset`) is covered.
    pub fn covers(&self, partition: i32, offset: i64) -> bool {
        offset < self.next_offset(partition)
    }
}

/// Which rows of `batch` have an offset at or beyond `next(partition)`, reading the Kafka
/// coordinates from the columns `partition_col` (int32) and `offset_col` (int64): the split
/// every layer makes by offset, never by time.
///
/// # Panics
/// If the columns are missing or of other types; every batch lambdaflow builds has them.
pub fn at_or_beyond(
    batch: &RecordBatch,
    (partition_col, offset_col): (&str, &str),
    next: impl Fn(i32) -> i64,
) -> BooleanArray {
    let partitions = batch
        .column_by_name(partition_col)
        .expect("partition column")
        .as_primitive::<Int32Type>();
    let offsets = batch
        .column_by_name(offset_col)
        .expect("offset column")
        .as_primitive::<Int64Type>();
    (0..offsets.len())
        .map(|i| Some(offsets.value(i) >= next(partitions.value(i))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_split_exactly_at_the_recorded_offset() {
        let w = Watermark {
            raw_version: 3,
            offsets: [(0, 9), (1, -1)].into(),
            ..Watermark::default()
        };
        assert!(w.covers(0, 9) && !w.covers(0, 10));
        assert_eq!(w.next_offset(1), 0);
        assert_eq!(w.next_offset(2), 0);
        let json = serde_json::to_string(&w).unwrap();
        assert_eq!(json, r#"{"raw_version":3,"offsets":{"0":9,"1":-1}}"#);
        assert_eq!(serde_json::from_str::<Watermark>(&json).unwrap(), w);
    }

    #[test]
    fn a_watermark_of_an_older_epoch_covers_nothing_of_a_newer_one() {
        let w = Watermark {
            raw_version: 8,
            offsets: [(0, 99), (1, 4)].into(),
            epochs: [(1, 1)].into(),
        };
        assert_eq!((w.epoch(0), w.epoch(1)), (0, 1));
        assert_eq!(w.next_offset_at(0, 0), 100);
        assert_eq!(w.next_offset_at(0, 1), 0, "partition 0 was reset since");
        assert_eq!(w.next_offset_at(1, 1), 5);
        let json = serde_json::to_string(&w).unwrap();
        assert_eq!(
            json,
            r#"{"raw_version":8,"offsets":{"0":99,"1":4},"epochs":{"1":1}}"#
        );
        assert_eq!(serde_json::from_str::<Watermark>(&json).unwrap(), w);
        let before_epochs: Watermark =
            serde_json::from_str(r#"{"raw_version":3,"offsets":{"0":9}}"#).unwrap();
        assert_eq!(before_epochs.epoch(0), 0);
    }
}
