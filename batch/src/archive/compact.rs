//! Auto-compaction of the tables the archiver appends to.
//!
//! The archiver commits once per chunk (every second or two), so each date partition it
//! touches gains one small Parquet file per commit: tens of thousands a day. Every reader pays
//! for them: a batch run opens each file, every snapshot load carries each file's action.
//! Like Delta's auto compaction (`autoCompact.minNumFiles` 50, `maxFileSize` 128 MiB), once a
//! partition holds `archive.compact_min_files` files under [`TARGET_SIZE`], the archiver
//! rewrites them with delta-rs' OPTIMIZE: one commit removing the small files and adding the
//! merged ones, all with `dataChange: false`, so readers that follow changes
//! ([`crate::views::watermark::dates_changed`]) skip it. Rows and `txn` offsets are untouched.

use std::collections::BTreeMap;
use std::num::NonZeroU64;

use arrow::array::AsArray;
use arrow::datatypes::Date32Type;
use arrow::record_batch::RecordBatch;
use deltalake::operations::optimize::Metrics;
use deltalake::{DeltaResult, DeltaTable, FilterOp, FilterValue};
use lambdaflow_common::timestamp::format_date;

/// Files at or above this size are left alone; smaller ones are merged up to it.
pub const TARGET_SIZE: u64 = 128 << 20;

/// How many files under [`TARGET_SIZE`] each partition value holds, kept up to date by the
/// table's only writer from what it commits.
#[derive(Debug)]
pub struct SmallFiles {
    column: &'static str,
    min_files: usize,
    counts: BTreeMap<String, usize>,
}

impl SmallFiles {
    /// Counts the small files of `table` (at its loaded version) per value of the partition
    /// `column`; partitions reaching `min_files` are due for compaction (never when `0`).
    pub fn count(table: &DeltaTable, column: &'static str, min_files: usize) -> DeltaResult<Self> {
        let mut counts = BTreeMap::new();
        if table.version().is_some() {
            for file in table.snapshot()?.log_data().iter() {
                if u64::try_from(file.size()).unwrap_or(0) >= TARGET_SIZE {
                    continue;
                }
                if let Some(Some(value)) = file.partition_values_map().remove(column) {
                    *counts.entry(value).or_default() += 1;
                }
            }
        }
        Ok(Self {
            column,
            min_files,
            counts,
        })
    }

    /// Records a commit of `batch`: one new file per distinct date in its partition column.
    pub fn committed(&mut self, batch: &RecordBatch) {
        let Some(dates) = batch.column_by_name(self.column) else {
            return;
        };
        let mut dates: Vec<i32> = dates.as_primitive::<Date32Type>().values().to_vec();
        dates.sort_unstable();
        dates.dedup();
        for date in dates {
            *self.counts.entry(format_date(date)).or_default() += 1;
        }
    }

    /// The partition values holding `min_files` small files or more.
    pub fn due(&self) -> Vec<String> {
        if self.min_files == 0 {
            return Vec::new();
        }
        self.counts
            .iter()
            .filter(|(_, n)| **n >= self.min_files)
            .map(|(value, _)| value.clone())
            .collect()
    }

    /// Records a compaction of `value` that left `files` small files (or, after a failure,
    /// forgets the partition's count so that it is tried again only after as many new files).
    pub fn compacted(&mut self, value: &str, files: usize) {
        self.counts.insert(value.to_owned(), files);
    }
}

/// OPTIMIZE of one partition value: its files under [`TARGET_SIZE`] merged up to it.
pub async fn compact(
    table: DeltaTable,
    column: &str,
    value: &str,
) -> DeltaResult<(DeltaTable, Metrics)> {
    let filter = [(column, FilterOp::Eq, FilterValue::Scalar(value))];
    table
        .optimize()
        .with_filters(&filter)
        .with_target_size(NonZeroU64::new(TARGET_SIZE).expect("non-zero"))
        .await
}
