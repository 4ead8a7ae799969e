//! A table's commits read from its log entries, and which of its versions are still held.
//!
//! Time travel and the catalog both look back: which version was current at a time (the last
//! one committed at or before it), what the recent commits did, and whether a version can still
//! be read. A version is held while its log can be replayed (its entry or a checkpoint at or
//! before it remains, [`crate::lake::vacuum`] cleans older ones) and every data file it
//! references is still on storage (vacuum deletes files unreferenced for long enough). Both are
//! read from storage itself, so the answer stays true whoever vacuumed the table.

use std::collections::HashSet;

use deltalake::DeltaTable;
use deltalake::kernel::Version;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use serde::Serialize;
use url::Url;

use super::open;
use super::vacuum::{checkpoint_version, list};
use crate::error::{Error, Result};
use crate::views::records::format_time;
use crate::views::watermark::{COMMIT_KEY, commit_actions};

/// One commit of a table, as its log entry records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Commit {
    /// The version it made.
    pub version: u64,
    /// When it was made, in milliseconds since the epoch (the writer's clock, as Delta records
    /// it in `commitInfo`; the entry's modification time when it has none); RFC 3339 `at` when
    /// serialised.
    #[serde(rename = "at", serialize_with = "millis_as_time")]
    pub timestamp: i64,
    /// The Delta operation (`WRITE`, `DELETE`, `OPTIMIZE`, …).
    pub operation: Option<String>,
    /// Rows in the files it added (their statistics' `numRecords`).
    pub rows_added: u64,
    /// Files it added.
    pub files_added: u64,
    /// Files it removed.
    pub files_removed: u64,
    /// The batch run that made it, for a view version a run published.
    pub run_id: Option<String>,
}

/// Milliseconds since the epoch as RFC 3339 (the number itself if out of range).
pub fn millis_text(millis: i64) -> String {
    chrono::DateTime::from_timestamp_millis(millis)
        .map_or_else(|| millis.to_string(), |t| format_time(&t))
}

fn millis_as_time<S: serde::Serializer>(millis: &i64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&millis_text(*millis))
}

/// The versions of a table's log that can still be replayed.
#[derive(Debug, Clone)]
pub struct Log {
    /// Versions with a commit entry, ascending.
    entries: Vec<Version>,
    /// The first version the log can be replayed to.
    oldest: Option<Version>,
    /// When the latest commit entry was written, and its entity tag.
    latest_written: Option<(chrono::DateTime<chrono::Utc>, Option<String>)>,
}

impl Log {
    /// Lists `table`'s `_delta_log/`.
    pub async fn of(table: &DeltaTable) -> Result<Self> {
        let mut entries = Vec::new();
        let mut checkpoints = Vec::new();
        let mut latest_written = None;
        let mut newest = None;
        for object in list(table, Some(&Path::from("_delta_log"))).await? {
            let Some(name) = object.location.filename() else {
                continue;
            };
            if let Some(version) = name.strip_suffix(".json").and_then(|v| v.parse().ok()) {
                if newest < Some(version) {
                    newest = Some(version);
                    latest_written = Some((object.last_modified, object.e_tag.clone()));
                }
                entries.push(version);
            } else if let Some(version) = checkpoint_version(name) {
                checkpoints.push(version);
            }
        }
        entries.sort_unstable();
        let oldest = if entries.first() == Some(&0) {
            Some(0)
        } else {
            checkpoints.into_iter().min()
        };
        Ok(Self {
            entries,
            oldest,
            latest_written,
        })
    }

    /// The latest version committed; `None` when the log is empty (no table).
    pub fn latest(&self) -> Option<Version> {
        self.entries.last().copied()
    }

    /// The latest version with when its entry was written and its entity tag: unlike the
    /// version alone, it tells a table deleted and made again apart from the one before.
    pub fn latest_stamp(&self) -> Option<(Version, chrono::DateTime<chrono::Utc>, Option<String>)> {
        let (written, tag) = self.latest_written.clone()?;
        Some((self.latest()?, written, tag))
    }

    /// The first version that can still be loaded.
    pub fn oldest(&self) -> Option<Version> {
        self.oldest
    }

    /// Versions with a commit entry from the oldest loadable one on, ascending.
    fn readable_entries(&self) -> &[Version] {
        let from = self.oldest.unwrap_or(Version::MAX);
        &self.entries[self.entries.partition_point(|v| *v < from)..]
    }
}

/// The commit that made `version` of `table`; `None` when its log entry is gone.
pub async fn commit(table: &DeltaTable, version: Version) -> Result<Option<Commit>> {
    let Some(actions) = commit_actions(table, version).await? else {
        return Ok(None);
    };
    let mut commit = Commit {
        version,
        timestamp: 0,
        operation: None,
        rows_added: 0,
        files_added: 0,
        files_removed: 0,
        run_id: None,
    };
    let mut timestamp = None;
    for action in actions {
        if let Some(info) = action.get("commitInfo") {
            timestamp = info.get("timestamp").and_then(serde_json::Value::as_i64);
            commit.operation = info
                .get("operation")
                .and_then(|o| o.as_str())
                .map(str::to_owned);
            commit.run_id = info
                .pointer(&format!("/{COMMIT_KEY}/run_id"))
                .and_then(|r| r.as_str())
                .map(str::to_owned);
        } else if let Some(add) = action.get("add") {
            commit.files_added += 1;
            commit.rows_added += add
                .get("stats")
                .and_then(|s| s.as_str())
                .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
                .and_then(|s| s.get("numRecords").and_then(serde_json::Value::as_u64))
                .unwrap_or(0);
        } else if action.get("remove").is_some() {
            commit.files_removed += 1;
        }
    }
    commit.timestamp = match timestamp {
        Some(t) => t,
        None => entry_time(table, version).await?,
    };
    Ok(Some(commit))
}

/// When `version`'s log entry was last written, in milliseconds since the epoch.
async fn entry_time(table: &DeltaTable, version: Version) -> Result<i64> {
    let path = Path::from(format!("_delta_log/{version:020}.json"));
    let meta = table
        .log_store()
        .object_store(None)
        .head(&path)
        .await
        .map_err(|source| Error::Store {
            context: format!("reading {path} of {}", table.table_url()),
            source,
        })?;
    Ok(meta.last_modified.timestamp_millis())
}

/// The latest `limit` commits of `table` at its loaded version, newest first, as far back as
/// their log entries remain.
pub async fn recent(table: &DeltaTable, limit: usize) -> Result<Vec<Commit>> {
    let Some(latest) = table.version() else {
        return Ok(Vec::new());
    };
    let mut commits = Vec::with_capacity(limit);
    for version in (0..=latest).rev().take(limit) {
        match commit(table, version).await? {
            Some(c) => commits.push(c),
            None => break,
        }
    }
    Ok(commits)
}

/// Where a time falls in a table's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtTime {
    /// The last version committed at or before it.
    Version(Version),
    /// Before the table's first commit.
    BeforeFirst,
    /// Before the oldest version still in the log; the versions it fell in are gone.
    BeforeOldest,
}

/// The version of `table` current at `millis` (milliseconds since the epoch), by binary search
/// over the commit times of the log entries still held. It assumes commit times rise with
/// versions, as they do for one writer's clock; writers on hosts whose clocks disagree can make
/// it pick a neighbouring version.
pub async fn version_at(table: &DeltaTable, log: &Log, millis: i64) -> Result<Option<AtTime>> {
    let entries = log.readable_entries();
    let Some(first) = entries.first() else {
        return Ok(None);
    };
    let time = |v| async move {
        Ok::<_, Error>(commit(table, v).await?.map_or(i64::MAX, |c| c.timestamp))
    };
    let first_time = time(*first).await?;
    if millis < first_time {
        return Ok(Some(if *first == 0 {
            AtTime::BeforeFirst
        } else {
            AtTime::BeforeOldest
        }));
    }
    let (mut low, mut high) = (0, entries.len());
    while high - low > 1 {
        let mid = low + (high - low) / 2;
        if time(entries[mid]).await? <= millis {
            low = mid;
        } else {
            high = mid;
        }
    }
    Ok(Some(AtTime::Version(entries[low])))
}

/// Whether every data file of `table`'s loaded version is among `stored` (paths relative to the
/// table root).
pub fn files_present(table: &DeltaTable, stored: &HashSet<Path>) -> Result<bool> {
    let snapshot = table.snapshot().map_err(|source| Error::Delta {
        table: table.table_url().to_string(),
        source,
    })?;
    Ok(snapshot
        .log_data()
        .iter()
        .all(|file| stored.contains(&file.object_store_path())))
}

/// The data files on storage under `table`'s root (its log aside).
pub async fn stored_files(table: &DeltaTable) -> Result<HashSet<Path>> {
    Ok(list(table, None)
        .await?
        .into_iter()
        .map(|o| o.location)
        .filter(|p| !p.as_ref().starts_with("_delta_log/"))
        .collect())
}

/// `version` of the table at `url` when it is still held (its log replays and its files are on
/// storage), else `None`.
pub async fn held(
    url: &Url,
    version: Version,
    stored: &HashSet<Path>,
) -> Result<Option<DeltaTable>> {
    let table = match open(url, Some(version)).await {
        Ok(Some(table)) => table,
        Ok(None) | Err(Error::Delta { .. }) => return Ok(None),
        Err(other) => return Err(other),
    };
    Ok(files_present(&table, stored)?.then_some(table))
}

/// Whether `version` counts as held in the search for the oldest: held, with files (a version
/// without any, such as a table's empty first one, reads but holds nothing of the view).
async fn holds_rows(url: &Url, version: Version, stored: &HashSet<Path>) -> Result<bool> {
    let Some(table) = held(url, version, stored).await? else {
        return Ok(false);
    };
    let snapshot = table.snapshot().map_err(|source| Error::Delta {
        table: url.to_string(),
        source,
    })?;
    Ok(snapshot.log_data().iter().next().is_some())
}

/// The oldest version of the table at `url` still held, `latest` (assumed held) and down: vacuum
/// deletes the files that older versions needed first, so the held versions end in a run up to
/// the latest, found by stepping down in growing steps to one that is not held, then bisecting.
/// A version without files (a table's first, empty version) ends the run: it reads, but holds
/// nothing of the view.
pub async fn oldest_held(
    url: &Url,
    log: &Log,
    latest: Version,
    stored: &HashSet<Path>,
) -> Result<Version> {
    let floor = log.oldest().unwrap_or(latest);
    let (mut held_from, mut step) = (latest, 1);
    let not_held = loop {
        let probe = held_from.saturating_sub(step).max(floor);
        if probe == held_from {
            return Ok(held_from);
        }
        if !holds_rows(url, probe, stored).await? {
            break probe;
        }
        held_from = probe;
        step *= 2;
    };
    let (mut low, mut high) = (not_held, held_from);
    while high - low > 1 {
        let mid = low + (high - low) / 2;
        if holds_rows(url, mid, stored).await? {
            high = mid;
        } else {
            low = mid;
        }
    }
    Ok(high)
}
