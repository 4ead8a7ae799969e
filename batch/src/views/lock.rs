//! The batch run lock, `<lake>/_lambdaflow/batch.lock`: at most one batch run at a time across
//! every process of a lake.
//!
//! The lock is created with a conditional put (`PutMode::Create`) so that two processes never
//! run at once, and refreshed every [`HEARTBEAT`]. A lock not refreshed for [`LOCK_TTL`], or
//! held by a process of this host that no longer exists, belongs to a run that died (kill -9):
//! the next run takes it over and marks the dead run `failed` in its record
//! ([`super::records`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutPayload};
use serde::{Deserialize, Serialize};
use tokio_util::task::AbortOnDropHandle;

use super::records::{History, RunStatus, format_time, now, time};
use crate::error::{Error, Result};

/// How often a running batch refreshes its lock.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// How long a lock lives without a heartbeat.
pub const LOCK_TTL: Duration = Duration::from_secs(30);
const LOCK: &str = "batch.lock";

/// The lock file's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LockRecord {
    run_id: String,
    /// When the holder took the lock; `None` when the file does not say (a torn write).
    #[serde(with = "time::lenient")]
    since: Option<DateTime<Utc>>,
    /// The holder's last refresh; `None` when the file does not say, which counts as stale.
    #[serde(with = "time::lenient")]
    heartbeat: Option<DateTime<Utc>>,
    pid: u32,
    /// The holder's host name: on the same host, a holder whose process is gone (kill -9)
    /// releases the lock at once instead of after [`LOCK_TTL`].
    #[serde(default)]
    host: String,
}

impl LockRecord {
    fn is_stale(&self) -> bool {
        let gone = !self.host.is_empty()
            && self.host == host_name()
            && self.pid != std::process::id()
            && !std::path::Path::new(&format!("/proc/{}", self.pid)).exists()
            && std::path::Path::new("/proc/self").exists();
        gone || is_stale(self.heartbeat)
    }

    /// The heartbeat as stored, for messages.
    fn heartbeat_text(&self) -> String {
        self.heartbeat.as_ref().map(format_time).unwrap_or_default()
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

fn is_stale(heartbeat: Option<DateTime<Utc>>) -> bool {
    heartbeat.is_none_or(|beat| {
        Utc::now()
            .signed_duration_since(beat)
            .to_std()
            .unwrap_or_default()
            > LOCK_TTL
    })
}

/// The run holding the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Its run id.
    pub run_id: String,
    /// When it took the lock, if the lock says.
    pub since: Option<DateTime<Utc>>,
}

/// The run lock of one lake, in the same store as its run records.
#[derive(Debug, Clone)]
pub struct BatchLock {
    history: History,
}

impl BatchLock {
    /// The lock of the lake whose records `history` keeps.
    pub fn new(history: History) -> Self {
        Self { history }
    }

    /// Takes the run lock for `run_id`, or says which run holds it. A lock whose holder
    /// stopped refreshing it is taken over, and that holder's record marked failed.
    pub async fn acquire(&self, run_id: &str) -> Result<RunLock> {
        let history = &self.history;
        let store = history.store();
        let path = Path::from(LOCK);
        let since = now();
        let record = |since: DateTime<Utc>| LockRecord {
            run_id: run_id.to_owned(),
            since: Some(since),
            heartbeat: Some(now()),
            pid: std::process::id(),
            host: host_name(),
        };
        let body = |r: &LockRecord| PutPayload::from(serde_json::to_vec(r).expect("serialises"));
        for _ in 0..2 {
            match store
                .put_opts(&path, body(&record(since)), PutMode::Create.into())
                .await
            {
                Ok(_) => {
                    let heartbeat = {
                        let store = store.clone();
                        let lock = record(since);
                        AbortOnDropHandle::new(tokio::spawn(async move {
                            loop {
                                tokio::time::sleep(HEARTBEAT).await;
                                let beat = LockRecord {
                                    heartbeat: Some(now()),
                                    ..lock.clone()
                                };
                                if let Err(error) = store.put(&Path::from(LOCK), body(&beat)).await
                                {
                                    tracing::warn!(%error, "could not refresh the batch lock");
                                }
                            }
                        }))
                    };
                    return Ok(RunLock {
                        history: history.clone(),
                        _heartbeat: heartbeat,
                    });
                }
                Err(object_store::Error::AlreadyExists { .. }) => {
                    let held = self.read().await?;
                    let Some(held) = held else { continue };
                    if !held.is_stale() {
                        return Err(Error::RunInProgress {
                            running: held.run_id,
                            since: held.since,
                        });
                    }
                    tracing::warn!(run = %held.run_id, heartbeat = %held.heartbeat_text(), pid = held.pid, "taking over the lock of a batch run that stopped without finishing");
                    if let Some(mut dead) = history.get(&held.run_id).await?
                        && matches!(dead.status, RunStatus::Queued | RunStatus::Running)
                    {
                        dead.status = RunStatus::Failed;
                        dead.finished_at = Some(now());
                        dead.progress = None;
                        dead.error = Some(format!(
                            "abandoned: the process running it stopped without finishing (last heartbeat {})",
                            held.heartbeat_text()
                        ));
                        history.save(&dead).await?;
                    }
                    match store.delete(&path).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                        Err(e) => return Err(history.store_err("removing a stale batch lock")(e)),
                    }
                }
                Err(e) => return Err(history.store_err("taking the batch lock")(e)),
            }
        }
        let held = self.read().await?;
        Err(Error::RunInProgress {
            running: held.as_ref().map_or("unknown".into(), |h| h.run_id.clone()),
            since: held.and_then(|h| h.since),
        })
    }

    /// The run holding the lock, unless the lock is free or stale.
    pub async fn holder(&self) -> Result<Option<Holder>> {
        Ok(self
            .read()
            .await?
            .filter(|held| !held.is_stale())
            .map(|held| Holder {
                run_id: held.run_id,
                since: held.since,
            }))
    }

    async fn read(&self) -> Result<Option<LockRecord>> {
        let bytes = match self.history.store().get(&Path::from(LOCK)).await {
            Ok(found) => found.bytes().await,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => Err(e),
        }
        .map_err(self.history.store_err("reading the batch lock"))?;
        // A lock that cannot be read (a torn write) counts as stale.
        Ok(Some(serde_json::from_slice(&bytes).unwrap_or(LockRecord {
            run_id: "unknown".into(),
            since: None,
            heartbeat: None,
            pid: 0,
            host: String::new(),
        })))
    }
}

/// The held run lock; [`RunLock::release`] gives it back. Dropped without release (a panic),
/// the heartbeat stops and the lock goes stale after [`LOCK_TTL`].
#[derive(Debug)]
pub struct RunLock {
    history: History,
    _heartbeat: AbortOnDropHandle<()>,
}

impl RunLock {
    /// Stops the heartbeat and removes the lock.
    pub async fn release(self) -> Result<()> {
        let RunLock {
            history,
            _heartbeat,
        } = self;
        drop(_heartbeat);
        match history.store().delete(&Path::from(LOCK)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(history.store_err("releasing the batch lock")(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lake::Lake;
    use crate::views::records::{RunRecord, Trigger, parse_time};

    #[test]
    fn a_lock_without_a_recent_heartbeat_is_stale() {
        let is_stale = |text: &str| is_stale(parse_time(text));
        assert!(
            is_stale("2020-01-01T00:00:00Z")
                && is_stale("garbage")
                && !is_stale(&format_time(&now()))
        );
    }

    #[tokio::test]
    async fn one_run_holds_the_lock_and_a_stale_lock_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::new(&lambdaflow_common::config::LakeConfig {
            uri: dir.path().to_str().unwrap().to_owned(),
        })
        .unwrap();
        let history = History::new(&lake).unwrap();
        let lock = BatchLock::new(history.clone());
        let mut first = RunRecord::queued(Trigger::Cli, false);
        first.status = RunStatus::Running;
        history.save(&first).await.unwrap();
        let held = lock.acquire(&first.id).await.unwrap();
        match lock.acquire("other").await {
            Err(Error::RunInProgress { running, .. }) => assert_eq!(running, first.id),
            other => panic!("second lock: {other:?}"),
        }
        held.release().await.unwrap();
        let again = lock.acquire("third").await.unwrap();
        drop(again);
        let stale = LockRecord {
            run_id: first.id.clone(),
            since: parse_time("2020-01-01T00:00:00Z"),
            heartbeat: parse_time("2020-01-01T00:00:00Z"),
            pid: 1,
            host: String::new(),
        };
        history
            .store()
            .put(
                &Path::from(LOCK),
                PutPayload::from(serde_json::to_vec(&stale).unwrap()),
            )
            .await
            .unwrap();
        lock.acquire("fourth")
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
        let dead = history.get(&first.id).await.unwrap().unwrap();
        assert_eq!(dead.status, RunStatus::Failed);
        assert!(dead.error.unwrap().contains("abandoned"));
        assert_eq!(history.list(10).await.unwrap().len(), 1);
        assert!(history.get("../../etc/passwd").await.unwrap().is_none());
    }

    #[test]
    fn the_lock_file_keeps_its_text_format() {
        let record = LockRecord {
            run_id: "r".into(),
            since: parse_time("2026-11-23T04:05:06.789Z"),
            heartbeat: parse_time("2026-11-23T04:05:07.001Z"),
            pid: 7,
            host: "h".into(),
        };
        assert_eq!(
            serde_json::to_string(&record).unwrap(),
            r#"{"run_id":"r","since":"2026-11-23T04:05:06.789Z","heartbeat":"2026-11-23T04:05:07.001Z","pid":7,"host":"h"}"#
        );
        let torn: LockRecord =
            serde_json::from_str(r#"{"run_id":"r","since":"","heartbeat":"x","pid":7}"#).unwrap();
        assert!(torn.since.is_none() && torn.is_stale());
    }
}
