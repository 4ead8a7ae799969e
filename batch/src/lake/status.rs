//! Storage status: what each table of the lake holds and what it costs on storage.
//!
//! Live files and bytes come from the table's latest version; bytes on storage from listing
//! its root, so the difference is what vacuum will collect (or what a pinned reader still
//! needs). `GET /v1/lake` and `lambdaflow lake status` print it, and each status sets the
//! `lambdaflow_lake_*` gauges; a batch run takes one after it vacuums, so the gauges follow
//! the lake between requests.

use chrono::DateTime;
use lambdaflow_common::config::Config;
use lambdaflow_common::timestamp::format_date;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::lake::vacuum::{last_vacuums, storage};
use crate::lake::{Lake, open, partition_dates, tables};
use crate::metrics;
use crate::views::records::format_time;

/// One table's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableStatus {
    /// The table, relative to the lake root (`raw/events`, `views/revenue`).
    pub table: String,
    /// Its latest Delta version; `None` before it is created.
    pub version: Option<u64>,
    /// Data files its latest version references.
    pub live_files: u64,
    /// Bytes of those files.
    pub live_bytes: u64,
    /// Bytes of everything under its root: live files, files awaiting vacuum, the log.
    pub storage_bytes: u64,
    /// Files under its `_delta_log/`.
    pub log_files: u64,
    /// Its oldest date partition (`YYYY-MM-DD`).
    pub oldest_date: Option<String>,
    /// Its newest date partition.
    pub newest_date: Option<String>,
    /// When it was last vacuumed (RFC 3339).
    pub last_vacuum: Option<String>,
    /// When its oldest date expires under its retention (RFC 3339; in the past when the next
    /// batch run or `lambdaflow lake expire` will delete it); `None` when kept forever.
    pub next_expiry: Option<String>,
}

/// The status of every table of `config` in `lake`, raw first, then quarantine and the views.
pub async fn status(config: &Config, lake: &Lake) -> Result<Vec<TableStatus>> {
    let vacuums = last_vacuums(lake).await?;
    let mut statuses = Vec::new();
    for table in tables(config, lake) {
        let mut status = TableStatus {
            last_vacuum: vacuums.get(&table.name).map(|v| v.at.clone()),
            table: table.name,
            version: None,
            live_files: 0,
            live_bytes: 0,
            storage_bytes: 0,
            log_files: 0,
            oldest_date: None,
            newest_date: None,
            next_expiry: None,
        };
        if let Some(delta) = open(&table.url, None).await? {
            let snapshot = delta.snapshot().map_err(|source| Error::Delta {
                table: table.url.to_string(),
                source,
            })?;
            for file in snapshot.log_data().iter() {
                status.live_files += 1;
                status.live_bytes += u64::try_from(file.size()).unwrap_or(0);
            }
            let storage = storage(&delta).await?;
            status.storage_bytes = storage.bytes;
            status.log_files = storage.log_files;
            status.version = delta.version();
            let dates = partition_dates(&delta, table.date_column)?;
            status.oldest_date = dates.first().map(|d| format_date(*d));
            status.newest_date = dates.last().map(|d| format_date(*d));
            status.next_expiry = dates
                .first()
                .and_then(|d| table.retention.expires_at(*d))
                .and_then(DateTime::from_timestamp_micros)
                .map(|at| format_time(&at));
        }
        publish(&status);
        statuses.push(status);
    }
    Ok(statuses)
}

fn publish(status: &TableStatus) {
    let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
    let label = [status.table.as_str()];
    metrics::LAKE_VERSION
        .with_label_values(&label)
        .set(status.version.map_or(-1, gauge));
    metrics::LAKE_LIVE_FILES
        .with_label_values(&label)
        .set(gauge(status.live_files));
    metrics::LAKE_LIVE_BYTES
        .with_label_values(&label)
        .set(gauge(status.live_bytes));
    metrics::LAKE_STORAGE_BYTES
        .with_label_values(&label)
        .set(gauge(status.storage_bytes));
    metrics::LAKE_LOG_FILES
        .with_label_values(&label)
        .set(gauge(status.log_files));
}
