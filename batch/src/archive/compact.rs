//! Auto-compaction of the tables the archiver appends to.
//!
//! The archiver commits once per chunk (every second or two), so each date partition it
//! touches gains one small Parquet file per commit: tens of thousands a day. Every reader pays
//! for them: a batch run opens each file, every snapshot load carries each file's action.
//! Once `archive.compact_min_files` files were appended to a partition since its last
//! compaction, the archiver rewrites them with delta-rs' OPTIMIZE: one commit removing the
//! small files and adding the merged ones, all with `dataChange: false`, so readers that follow
//! changes ([`crate::views::watermark::dates_changed`]) skip it. Rows and `txn` offsets are
//! untouched.
//!
//! What is merged is chosen in tiers, as a size-tiered LSM does, so that each row is rewritten
//! a few times and not once per compaction: the new files, then the next older
//! `min_files - 1` files when there are that many and none is more than twice the size of what
//! is being merged, and so on up to [`TARGET_SIZE`]. Merging the new files into the partition's
//! one growing file instead (OPTIMIZE's plain bin-packing) rewrites the day so far at every
//! compaction: bytes written, and kept until vacuum, grow with the square of the day.
//! OPTIMIZE bins a partition's files newest first, contiguously, up to its target size and
//! skips files above it, so the target that merges exactly the chosen newest files is their
//! total size ([`merge_size`]).

use std::collections::BTreeMap;
use std::num::NonZeroU64;

use arrow::array::AsArray;
use arrow::datatypes::Date32Type;
use arrow::record_batch::RecordBatch;
use deltalake::operations::optimize::Metrics;
use deltalake::{DeltaResult, DeltaTable, FilterOp, FilterValue};
use futures::TryStreamExt;
use lambdaflow_common::timestamp::format_date;

/// Files at or above this size are left alone; smaller ones are merged up to it.
pub const TARGET_SIZE: u64 = 128 << 20;

/// How many files were appended to each partition value since its last compaction, kept up to
/// date by the table's only writer from what it commits.
#[derive(Debug)]
pub struct SmallFiles {
    column: &'static str,
    min_files: usize,
    counts: BTreeMap<String, usize>,
}

impl SmallFiles {
    /// Counts the files of `table` (at its loaded version) under [`TARGET_SIZE`] per value of
    /// the partition `column`: which of them a previous process appended since their last
    /// compaction is not recorded, so all count as new, and a partition that reaches
    /// `min_files` is merged whole up to [`TARGET_SIZE`] once. Never due when `min_files` is 0.
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

    /// The partition values that gained `min_files` files or more since their last compaction.
    pub fn due(&self) -> Vec<(String, usize)> {
        if self.min_files == 0 {
            return Vec::new();
        }
        self.counts
            .iter()
            .filter(|(_, n)| **n >= self.min_files)
            .map(|(value, n)| (value.clone(), *n))
            .collect()
    }

    /// Records a compaction of `value` (or, after a failure, forgets the partition's count so
    /// that it is tried again only after as many new files).
    pub fn compacted(&mut self, value: &str) {
        self.counts.remove(value);
    }

    /// How many files make a tier: the compaction trigger and the merge fan-out.
    pub fn min_files(&self) -> usize {
        self.min_files
    }
}

/// The OPTIMIZE target size that merges one tier of a partition, from its files' sizes newest
/// first, `new` of them appended since its last compaction; `None` when nothing would merge.
///
/// The new files are taken, then, while the next `fanout - 1` older files exist, none is at or
/// above [`TARGET_SIZE`] or more than twice the size taken so far, and they all fit under
/// [`TARGET_SIZE`], those too; a group that does not all fit gives as many of its files as
/// do, and ends the merge. A row is thus rewritten once per tier, each tier `fanout` times
/// the last, and a merged file is not touched again until `fanout - 1` others of its size
/// follow it. When a new file is itself at or above [`TARGET_SIZE`], or the new files alone
/// reach it, OPTIMIZE bin-packs them to [`TARGET_SIZE`].
pub fn merge_size(newest_first: &[u64], new: usize, fanout: usize) -> Option<u64> {
    let new = new.min(newest_first.len());
    let (fresh, older) = newest_first.split_at(new);
    if fresh.iter().any(|size| *size >= TARGET_SIZE) {
        return Some(TARGET_SIZE);
    }
    let mut total: u64 = fresh.iter().sum();
    if total >= TARGET_SIZE {
        return Some(TARGET_SIZE);
    }
    let mut taken = new;
    for group in older.chunks(fanout.saturating_sub(1).max(1)) {
        if group.len() + 1 < fanout
            || group
                .iter()
                .any(|size| *size >= TARGET_SIZE || *size > total.saturating_mul(2))
        {
            break;
        }
        let sum: u64 = group.iter().sum();
        if total + sum <= TARGET_SIZE {
            total += sum;
            taken += group.len();
            continue;
        }
        for size in group {
            if total + size > TARGET_SIZE {
                break;
            }
            total += size;
            taken += 1;
        }
        break;
    }
    (taken > 1 && total > 0).then_some(total)
}

/// OPTIMIZE of one partition value: the tier [`merge_size`] chooses among its files, `new` of
/// them appended since its last compaction; `None` when there is nothing to merge.
pub async fn compact(
    table: &DeltaTable,
    column: &str,
    value: &str,
    new: usize,
    fanout: usize,
) -> DeltaResult<Option<(DeltaTable, Metrics)>> {
    let sizes = newest_first(table, column, value).await?;
    let Some(target) = merge_size(&sizes, new, fanout).and_then(NonZeroU64::new) else {
        return Ok(None);
    };
    let filter = [(column, FilterOp::Eq, FilterValue::Scalar(value))];
    table
        .clone()
        .optimize()
        .with_filters(&filter)
        .with_target_size(target)
        .await
        .map(Some)
}

/// The sizes of the files of one partition value, newest first: the order OPTIMIZE bins them in.
async fn newest_first(table: &DeltaTable, column: &str, value: &str) -> DeltaResult<Vec<u64>> {
    let log = table.log_store();
    let files: Vec<_> = table
        .snapshot()?
        .snapshot()
        .file_views(log.as_ref(), None)
        .try_collect()
        .await?;
    Ok(files
        .into_iter()
        .filter(|file| {
            file.partition_values_map()
                .remove(column)
                .flatten()
                .as_deref()
                == Some(value)
        })
        .map(|file| u64::try_from(file.size()).unwrap_or(0))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KB: u64 = 1 << 10;
    const MB: u64 = 1 << 20;

    /// OPTIMIZE's plan for one partition as delta-rs makes it, applied to `files` (sizes, newest
    /// first): bins of contiguous files up to `target`, files above it skipped, bins of one file
    /// dropped; each bin becomes one file of their total size, newest. The bytes written.
    fn optimize(files: &mut Vec<u64>, target: u64) -> u64 {
        let mut bins: Vec<Vec<usize>> = Vec::new();
        let mut current: Vec<usize> = Vec::new();
        let mut sum = 0;
        for (i, size) in files.iter().enumerate() {
            if *size > target {
                bins.push(std::mem::take(&mut current));
                continue;
            }
            if current.is_empty() || sum + size > target {
                bins.push(std::mem::take(&mut current));
                sum = 0;
            }
            current.push(i);
            sum += size;
        }
        bins.push(current);
        bins.retain(|bin| bin.len() > 1);
        let merged: Vec<u64> = bins
            .iter()
            .map(|bin| bin.iter().map(|i| files[*i]).sum())
            .collect();
        let mut gone: Vec<usize> = bins.into_iter().flatten().collect();
        gone.sort_unstable();
        for i in gone.into_iter().rev() {
            files.remove(i);
        }
        for size in &merged {
            files.insert(0, *size);
        }
        merged.iter().sum()
    }

    /// Appends files of the given sizes to one partition, compacting as the archiver does
    /// (`plain`: OPTIMIZE's own bin-packing to [`TARGET_SIZE`] instead of tiers). The bytes
    /// appended, the bytes compactions wrote, and the files left (newest first).
    fn simulate(
        appends: impl Iterator<Item = u64>,
        min_files: usize,
        plain: bool,
    ) -> (u64, u64, Vec<u64>) {
        let (mut appended, mut written, mut new) = (0, 0, 0);
        let mut files = Vec::new();
        for size in appends {
            files.insert(0, size);
            appended += size;
            new += 1;
            if new >= min_files {
                let target = match plain {
                    true => Some(TARGET_SIZE),
                    false => merge_size(&files, new, min_files),
                };
                if let Some(target) = target {
                    written += optimize(&mut files, target);
                }
                new = 0;
            }
        }
        (appended, written, files)
    }

    #[test]
    fn a_day_of_equal_chunks_is_rewritten_once_per_tier_not_once_per_compaction() {
        let chunks = std::iter::repeat_n(60 * KB, 20_000);
        let (appended, written, files) = simulate(chunks.clone(), 50, false);
        let (_, plain, _) = simulate(chunks, 50, true);
        let (tiered, plain) = (
            written as f64 / appended as f64,
            plain as f64 / appended as f64,
        );
        assert!(tiered <= 2.5, "each byte rewritten {tiered:.1} times");
        assert!(plain >= 10.0, "plain bin-packing rewrites {plain:.1} times");
        assert!(files.len() < 3 * 50 + 10, "{} files left", files.len());
        let big: u64 = files.iter().filter(|size| **size >= 100 * MB).sum();
        assert!(
            big >= appended / 2,
            "most bytes end in files near the target: {files:?}"
        );
        assert!(files.iter().all(|size| *size <= TARGET_SIZE));
    }

    #[test]
    fn uneven_files_of_a_late_date_stay_few_and_cheap() {
        let sizes = (0..30_000u64).map(|i| (i * 7919 % 40 + 1) * KB);
        let (appended, written, files) = simulate(sizes, 50, false);
        let amplification = written as f64 / appended as f64;
        assert!(
            amplification <= 4.0,
            "each byte rewritten {amplification:.1} times"
        );
        assert!(files.len() < 4 * 50, "{} files left", files.len());
    }

    #[test]
    fn merges_the_new_files_and_complete_groups_of_similar_older_ones() {
        // Four new files, then three older ones of similar size: one tier merged.
        let files = [1, 1, 1, 1, 4, 4, 4].map(|n| n * MB);
        assert_eq!(merge_size(&files, 4, 4), Some(16 * MB));
        // Only two older ones of that size: the new files alone.
        let files = [1, 1, 1, 1, 4, 4, 30].map(|n| n * MB);
        assert_eq!(merge_size(&files, 4, 4), Some(4 * MB));
        // An older file more than twice the new ones' total is left alone.
        let files = [1, 1, 1, 1, 9, 1, 1].map(|n| n * MB);
        assert_eq!(merge_size(&files, 4, 4), Some(4 * MB));
        // Under the target, a group that does not fit gives the files that do.
        let files = [20, 20, 20, 20, 40, 40, 40].map(|n| n * MB);
        assert_eq!(merge_size(&files, 4, 4), Some(120 * MB));
        // New files at or above the target: OPTIMIZE bin-packs them.
        let files = [200 * MB, MB, MB];
        assert_eq!(merge_size(&files, 3, 4), Some(TARGET_SIZE));
        // One new file and nothing to join it: nothing to do.
        assert_eq!(merge_size(&[MB, 100 * MB], 1, 4), None);
    }

    #[test]
    fn the_chosen_size_makes_optimize_merge_the_chosen_files_and_older_leftovers_only() {
        let mut files = [1, 1, 1, 1, 4, 4, 4, 20, 2].map(|n| n * MB).to_vec();
        let target = merge_size(&files, 4, 4).unwrap();
        optimize(&mut files, target);
        assert_eq!(files, [16, 20, 2].map(|n| n * MB));
        // Older files that together fit under the chosen size are merged among themselves.
        let mut files = [1, 1, 1, 1, 4, 4, 4, 2, 2].map(|n| n * MB).to_vec();
        optimize(&mut files, target);
        assert_eq!(files, [4, 16].map(|n| n * MB));
    }
}
