//! The watermark: which Kafka offsets a batch view covers.
//!
//! A view built from raw table version `raw_version` covers, per Kafka partition, every offset
//! up to and including the one the archiver recorded in that version's `txn` action. The speed
//! layer starts one past it; the split is by offset, never by event time.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Raw table version and, per Kafka partition, the last offset it holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    /// The raw table version the view was computed from.
    pub raw_version: u64,
    /// Partition → last offset covered; a partition absent here is covered by nothing.
    pub offsets: BTreeMap<i32, i64>,
}

impl Watermark {
    /// The first offset of `partition` that this watermark does not cover.
    pub fn next_offset(&self, partition: i32) -> i64 {
        self.offsets.get(&partition).map_or(0, |o| o + 1)
    }

    /// Whether the event at (`partition`, `offset`) is covered.
    pub fn covers(&self, partition: i32, offset: i64) -> bool {
        offset < self.next_offset(partition)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_split_exactly_at_the_recorded_offset() {
        let w = Watermark {
            raw_version: 3,
            offsets: [(0, 9), (1, -1)].into(),
        };
        assert!(w.covers(0, 9) && !w.covers(0, 10));
        assert_eq!(w.next_offset(1), 0);
        assert_eq!(w.next_offset(2), 0);
        let json = serde_json::to_string(&w).unwrap();
        assert_eq!(json, r#"{"raw_version":3,"offsets":{"0":9,"1":-1}}"#);
        assert_eq!(serde_json::from_str::<Watermark>(&json).unwrap(), w);
    }
}
