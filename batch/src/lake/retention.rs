//! Retention applied: the expired date partitions of the raw, quarantine and view tables
//! deleted, each table in one Delta commit.
//!
//! Every batch run expires first, under the run lock, so that the dates it then recomputes
//! are only dates the raw table still holds ([`crate::views::run`]); `lambdaflow lake expire`
//! does the same on its own. A view keeps the dates whose raw rows expired: it was computed
//! from them when raw still held them, so answers do not change when raw ages out; only the
//! view's own retention deletes its dates.
//!
//! A delete whose predicate names only the partition column removes whole files without
//! reading them, so expiring a year-old date costs one small commit whatever its size. The
//! files stay on storage until vacuum collects them, which keeps pinned readers safe.

use std::collections::BTreeSet;

use datafusion::common::ScalarValue;
use datafusion::logical_expr::{col, lit};
use deltalake::DeltaTable;
use lambdaflow_common::config::Config;
use lambdaflow_common::timestamp::{format_date, now_micros};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::lake::{Lake, LakeTable, open, partition_dates, tables};
use crate::metrics;
use crate::views::lock::BatchLock;
use crate::views::records::History;

/// What retention deleted, or would delete, from one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expired {
    /// The table, relative to the lake root (`raw/events`, `views/revenue`).
    pub table: String,
    /// Dates before this one (`YYYY-MM-DD`) expire.
    pub before: String,
    /// The expired dates the table held, oldest first.
    pub dates: Vec<String>,
    /// Files the delete removed from the table (0 in a dry run).
    pub files: u64,
    /// The table version of the delete, when one was committed.
    pub version: Option<u64>,
}

/// One pass of retention over every table with one; [`Expire::run`] applies it.
#[derive(Debug)]
pub struct Expire<'a> {
    config: &'a Config,
    lake: &'a Lake,
    now_micros: i64,
    dry_run: bool,
}

impl<'a> Expire<'a> {
    /// Retention of `config`'s tables in `lake`, as of now.
    pub fn new(config: &'a Config, lake: &'a Lake) -> Self {
        Self {
            config,
            lake,
            now_micros: now_micros(),
            dry_run: false,
        }
    }

    /// Reports what would expire and deletes nothing.
    pub fn with_dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// The oldest date each view keeps under its own retention, by view name.
    pub fn view_cutoff(&self, view: &str) -> Option<i32> {
        self.config
            .views
            .iter()
            .find(|v| v.name == view)
            .and_then(|v| v.retention.cutoff(self.now_micros))
    }

    /// `lambdaflow lake expire`: [`Expire::run`] on its own, holding the batch run lock so that
    /// it never deletes beside a running batch run (a dry run deletes nothing and takes none).
    pub async fn run_alone(&self) -> Result<Vec<Expired>> {
        if self.dry_run {
            return self.run().await;
        }
        BatchLock::new(History::new(self.lake)?)
            .holding("expire", self.run())
            .await
    }

    /// Deletes (or, in a dry run, lists) every expired date partition. Tables that do not
    /// exist yet and tables kept forever are skipped.
    pub async fn run(&self) -> Result<Vec<Expired>> {
        let mut report = Vec::new();
        for LakeTable {
            name,
            url,
            date_column: column,
            retention,
            ..
        } in tables(self.config, self.lake)
        {
            let Some(cutoff) = retention.cutoff(self.now_micros) else {
                continue;
            };
            let Some(table) = open(&url, None).await? else {
                continue;
            };
            let expired: BTreeSet<i32> = partition_dates(&table, column)?
                .into_iter()
                .filter(|d| *d < cutoff)
                .collect();
            let mut entry = Expired {
                table: name,
                before: format_date(cutoff),
                dates: expired.iter().map(|d| format_date(*d)).collect(),
                files: 0,
                version: None,
            };
            if !expired.is_empty() && !self.dry_run {
                let (files, version) = delete_before(table, column, cutoff).await?;
                entry.files = files;
                entry.version = version;
                metrics::EXPIRED_DATES
                    .with_label_values(&[&entry.table])
                    .inc_by(expired.len() as u64);
                tracing::info!(table = %entry.table, before = %entry.before, dates = ?entry.dates, files, "expired date partitions deleted");
            }
            report.push(entry);
        }
        Ok(report)
    }
}

/// Deletes every row of `table` whose `column` is before `cutoff`: whole partitions, so a
/// metadata-only commit. Returns the files removed and the new version.
async fn delete_before(table: DeltaTable, column: &str, cutoff: i32) -> Result<(u64, Option<u64>)> {
    let url = table.table_url().to_string();
    let predicate = col(column).lt(lit(ScalarValue::Date32(Some(cutoff))));
    let (table, deleted) = table
        .delete()
        .with_predicate(predicate)
        .await
        .map_err(|source| Error::Delta { table: url, source })?;
    Ok((deleted.num_removed_files as u64, table.version()))
}
