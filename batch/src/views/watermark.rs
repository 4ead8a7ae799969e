//! Reading watermarks and what changed since one, from the Delta logs themselves.
//!
//! - The raw table's watermark at a version is the archiver's `txn` actions at that version
//!   ([`crate::archive::commit`]): every archiver commit covers every partition of the topic, so the
//!   partitions are found by probing 0, 1, … until one has no `txn`; each partition's offset
//!   is the one of its current epoch, which the watermark records beside it.
//! - A view's watermark lives in the `commitInfo` of the commit that published it, under the
//!   key `lambdaflow` ([`ViewCommit`]): it is written in the same atomic commit as the view's
//!   rows, and any Delta reader sees it in the table history (`DESCRIBE HISTORY`,
//!   `DeltaTable.history()`).
//! - The event dates changed between two raw versions are the `event_date` partition values of
//!   the files added or removed by the commits in between, read from those commits alone;
//!   files rewritten without changing data (`dataChange: false`, as compaction does) are not
//!   changes.

use std::collections::BTreeSet;

use chrono::NaiveDate;
use deltalake::DeltaTable;
use deltalake::kernel::Version;
use lambdaflow_common::schema::EVENT_DATE;
use lambdaflow_common::watermark::Watermark;
use serde::{Deserialize, Serialize};

use crate::archive::commit::held;
use crate::error::{Error, Result};

/// The `commitInfo` key under which a view commit records what it covers.
pub const COMMIT_KEY: &str = "lambdaflow";

/// How far back a view's history is searched for its last lambdaflow commit (other writers,
/// such as an OPTIMIZE run by hand, may have committed since).
const HISTORY_DEPTH: u64 = 100;

/// What a view commit records about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewCommit {
    /// The raw version and Kafka offsets the view covers.
    pub watermark: Watermark,
    /// [`lambdaflow_common::view::fingerprint`] of the definition it was computed under.
    pub definition: String,
    /// The batch run that wrote it.
    pub run_id: String,
}

fn delta(table: &DeltaTable) -> impl Fn(deltalake::DeltaTableError) -> Error + '_ {
    |source| Error::Delta {
        table: table.table_url().to_string(),
        source,
    }
}

/// The watermark of `raw` at its loaded version.
pub async fn raw_watermark(raw: &DeltaTable, topic: &str) -> Result<Watermark> {
    let snapshot = raw.snapshot().map_err(delta(raw))?;
    let mut watermark = Watermark {
        raw_version: snapshot.version(),
        ..Watermark::default()
    };
    for partition in 0.. {
        let Some((epoch, offset)) = held(raw, topic, partition).await.map_err(delta(raw))? else {
            break;
        };
        watermark.offsets.insert(partition, offset);
        if epoch > 0 {
            watermark.epochs.insert(partition, epoch);
        }
    }
    Ok(watermark)
}

/// The lambdaflow record of the newest commit of `view` that has one.
pub async fn view_commit(view: &DeltaTable) -> Result<Option<ViewCommit>> {
    Ok(view_commit_at(view).await?.map(|(_, commit)| commit))
}

/// [`view_commit`] with the version of the commit that holds it: the version whose log entry
/// log cleanup must keep ([`crate::lake::vacuum`]).
pub async fn view_commit_at(view: &DeltaTable) -> Result<Option<(Version, ViewCommit)>> {
    let Some(latest) = view.version() else {
        return Ok(None);
    };
    let log = view.log_store();
    let oldest = latest.saturating_sub(HISTORY_DEPTH);
    for version in (oldest..=latest).rev() {
        let Some(bytes) = log.read_commit_entry(version).await.map_err(delta(view))? else {
            break;
        };
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let Ok(action) = serde_json::from_slice::<serde_json::Value>(line) else {
                continue;
            };
            if let Some(record) = action.pointer(&format!("/commitInfo/{COMMIT_KEY}")) {
                return serde_json::from_value(record.clone())
                    .map(|commit| Some((version, commit)))
                    .map_err(|source| Error::Unreadable {
                        table: view.table_url().to_string(),
                        what: format!("{COMMIT_KEY} record of version {version}"),
                        source,
                    });
            }
        }
    }
    Ok(None)
}

/// The actions of `table`'s log entry for `version`, one JSON value each; `None` when the entry
/// is gone (the log was cleaned up).
pub async fn commit_actions(
    table: &DeltaTable,
    version: Version,
) -> Result<Option<Vec<serde_json::Value>>> {
    let Some(bytes) = table
        .log_store()
        .read_commit_entry(version)
        .await
        .map_err(delta(table))?
    else {
        return Ok(None);
    };
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|line| {
            serde_json::from_slice(line).map_err(|source| Error::Unreadable {
                table: table.table_url().to_string(),
                what: format!("commit entry of version {version}"),
                source,
            })
        })
        .collect::<Result<_>>()
        .map(Some)
}

/// The event dates (days since the epoch) of the rows added or removed by the commits after
/// `since` up to and including `upto` (rewrites with `dataChange: false` excluded); `None` when a commit in between can no longer be read
/// (the log was cleaned up), in which case the caller recomputes everything.
pub async fn dates_changed(
    raw: &DeltaTable,
    since: Version,
    upto: Version,
) -> Result<Option<BTreeSet<i32>>> {
    let mut dates = BTreeSet::new();
    for version in since + 1..=upto {
        let Some(actions) = commit_actions(raw, version).await? else {
            return Ok(None);
        };
        for action in actions {
            for kind in ["add", "remove"] {
                let rewritten = action.pointer(&format!("/{kind}/dataChange"))
                    == Some(&serde_json::Value::Bool(false));
                if rewritten {
                    continue;
                }
                let pointer = format!("/{kind}/partitionValues/{EVENT_DATE}");
                if let Some(text) = action.pointer(&pointer).and_then(|v| v.as_str()) {
                    dates.insert(parse_date(text).ok_or_else(|| Error::Corrupt {
                        table: raw.table_url().to_string(),
                        message: format!("version {version}: bad {EVENT_DATE} `{text}`"),
                    })?);
                }
            }
        }
    }
    Ok(Some(dates))
}

/// The event dates of the rows added by the commits after `since` up to and including `upto`
/// that `own` does not claim (given each commit's version and actions): what another writer
/// stored (an import beside the archiver, the archiver beside an import), whose ids a writer's
/// deduplication has not seen. Rewrites (`dataChange: false`) add no ids and are left out.
/// `None` when a commit in between can no longer be read (the log was cleaned up) or names a
/// date that is not one: the caller forgets every date.
pub async fn dates_added_by_others(
    raw: &DeltaTable,
    since: Version,
    upto: Version,
    own: impl Fn(Version, &[serde_json::Value]) -> bool,
) -> Result<Option<BTreeSet<i32>>> {
    let mut dates = BTreeSet::new();
    for version in since + 1..=upto {
        let Some(actions) = commit_actions(raw, version).await? else {
            return Ok(None);
        };
        if own(version, &actions) {
            continue;
        }
        for action in &actions {
            if action.pointer("/add/dataChange") == Some(&serde_json::Value::Bool(false)) {
                continue;
            }
            let pointer = format!("/add/partitionValues/{EVENT_DATE}");
            if let Some(text) = action.pointer(&pointer).and_then(|v| v.as_str()) {
                let Some(date) = parse_date(text) else {
                    return Ok(None);
                };
                dates.insert(date);
            }
        }
    }
    Ok(Some(dates))
}

/// Days since the epoch of a `YYYY-MM-DD` partition value.
pub fn parse_date(text: &str) -> Option<i32> {
    let date = NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    Some((date - NaiveDate::from_ymd_opt(1970, 1, 1)?).num_days() as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_dates_parse_to_epoch_days() {
        assert_eq!(parse_date("1970-01-02"), Some(1));
        assert_eq!(parse_date("2026-11-23"), Some(20_780));
        assert_eq!(parse_date("1969-12-31"), Some(-1));
        assert_eq!(parse_date("nope"), None);
        assert_eq!(
            lambdaflow_common::timestamp::format_date(20_780),
            "2026-11-23"
        );
    }
}
