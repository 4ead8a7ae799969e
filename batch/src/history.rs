//! Batch run records and the run lock, kept under `<lake>/_lambdaflow/`.
//!
//! - `runs/<id>.json`: one [`RunRecord`] per run, rewritten as the run moves from `queued` to
//!   `running` (with progress) to `succeeded` or `failed`. Ids start with the UTC time, so
//!   listing them in reverse order lists the newest first.
//! - `batch.lock`: held by the running run, created with a conditional put (`PutMode::Create`)
//!   so that two processes never run at once, and refreshed every [`HEARTBEAT`]. A lock not
//!   refreshed for [`LOCK_TTL`], or held by a process of this host that no longer exists,
//!   belongs to a run that died (kill -9): the next run takes it over and marks the dead run
//!   `failed`.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use deltalake::DeltaTableBuilder;
use futures::TryStreamExt;
use lambdaflow_common::watermark::Watermark;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload};
use serde::{Deserialize, Serialize};
use tokio_util::task::AbortOnDropHandle;

use crate::error::{Error, Result};
use crate::lake::Lake;

/// How often a running batch refreshes its lock.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// How long a lock lives without a heartbeat.
pub const LOCK_TTL: Duration = Duration::from_secs(30);
const LOCK: &str = "batch.lock";
const RUNS: &str = "runs";

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Accepted, not started.
    Queued,
    /// Holding the lock and computing.
    Running,
    /// Every view published.
    Succeeded,
    /// Stopped by an error; views published before the error stay, the rest keep their
    /// previous version.
    Failed,
}

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// `lambdaflow batch run`.
    Cli,
    /// The cron schedule.
    Schedule,
    /// `POST /v1/batch/runs`.
    Api,
}

/// How a view was brought up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every date recomputed: `--full`, a new view, or a changed definition.
    Full,
    /// Only the dates with new raw rows recomputed.
    Incremental,
    /// Already at the raw version read: nothing written.
    Unchanged,
}

/// One view's part of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewOutcome {
    /// View name.
    pub name: String,
    /// How it was brought up to date.
    pub mode: Mode,
    /// Dates recomputed (all dates of the raw table for a full recompute).
    pub dates: usize,
    /// Raw rows in the files scanned.
    pub rows_read: u64,
    /// View rows written.
    pub rows_written: u64,
    /// The view table version published, if anything was.
    pub version: Option<u64>,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// The record of one batch run (`GET /v1/batch/runs/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Sortable id: UTC start time, then a random suffix.
    pub id: String,
    /// Where the run is.
    pub status: RunStatus,
    /// What started it.
    pub trigger: Trigger,
    /// Whether every date of every view was recomputed.
    pub full: bool,
    /// When it was accepted.
    pub queued_at: String,
    /// When it took the lock.
    pub started_at: Option<String>,
    /// When it ended.
    pub finished_at: Option<String>,
    /// The raw table version read.
    pub raw_version: Option<u64>,
    /// The Kafka offsets the views now cover.
    pub watermark: Option<Watermark>,
    /// Raw rows in the files scanned, summed over views.
    pub rows_read: u64,
    /// View rows written, summed over views.
    pub rows_written: u64,
    /// Event dates recomputed by any view, `YYYY-MM-DD`.
    pub dates: Vec<String>,
    /// Per view, in config order, as each finishes.
    pub views: Vec<ViewOutcome>,
    /// What the run is doing now, while it runs.
    pub progress: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
}

/// Now, as the RFC 3339 text used in records.
pub fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl RunRecord {
    /// A new queued run.
    pub fn queued(trigger: Trigger, full: bool) -> Self {
        let id = format!(
            "{}-{:06x}",
            Utc::now().format("%Y%m%dT%H%M%S%3fZ"),
            rand::random::<u32>() & 0xff_ffff
        );
        Self {
            id,
            status: RunStatus::Queued,
            trigger,
            full,
            queued_at: now(),
            started_at: None,
            finished_at: None,
            raw_version: None,
            watermark: None,
            rows_read: 0,
            rows_written: 0,
            dates: Vec::new(),
            views: Vec::new(),
            progress: None,
            error: None,
        }
    }
}

/// Whether `id` has the shape of a run id, so that it can name a file.
pub fn is_run_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The lock file's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LockRecord {
    run_id: String,
    since: String,
    heartbeat: String,
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
        gone || is_stale(&self.heartbeat)
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// Run records and the run lock of one lake.
#[derive(Debug, Clone)]
pub struct History {
    store: Arc<dyn ObjectStore>,
    root: String,
}

impl History {
    /// The history of `lake`, through the same object store configuration as its tables.
    pub fn new(lake: &Lake) -> Result<Self> {
        let url = lake.platform();
        let store = DeltaTableBuilder::from_url(url.clone())
            .and_then(|b| b.build_storage())
            .map_err(|source| Error::Delta {
                table: url.to_string(),
                source,
            })?
            .object_store(None);
        Ok(Self {
            store,
            root: url.to_string(),
        })
    }

    fn store_err(&self, what: &str) -> impl Fn(object_store::Error) -> Error + '_ {
        let context = format!("{what} under {}", self.root);
        move |source| Error::Store {
            context: context.clone(),
            source,
        }
    }

    /// Writes `record` (replacing an earlier state of the same run).
    pub async fn save(&self, record: &RunRecord) -> Result<()> {
        let path = Path::from(format!("{RUNS}/{}.json", record.id));
        let body = serde_json::to_vec_pretty(record).expect("records serialise");
        self.store
            .put(&path, PutPayload::from(body))
            .await
            .map_err(self.store_err("writing a run record"))?;
        Ok(())
    }

    /// The record of run `id`, if there is one.
    pub async fn get(&self, id: &str) -> Result<Option<RunRecord>> {
        if !is_run_id(id) {
            return Ok(None);
        }
        let path = Path::from(format!("{RUNS}/{id}.json"));
        let bytes = match self.store.get(&path).await {
            Ok(found) => found.bytes().await,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => Err(e),
        }
        .map_err(self.store_err("reading a run record"))?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Corrupt {
                table: self.root.clone(),
                message: format!("run record {id}: {e}"),
            })
    }

    /// The newest `limit` runs, newest first.
    pub async fn list(&self, limit: usize) -> Result<Vec<RunRecord>> {
        let mut ids: Vec<String> = self
            .store
            .list(Some(&Path::from(RUNS)))
            .map_ok(|meta| meta.location.filename().unwrap_or_default().to_owned())
            .try_collect()
            .await
            .map_err(self.store_err("listing run records"))?;
        ids.retain(|name| name.ends_with(".json"));
        ids.sort_unstable_by(|a, b| b.cmp(a));
        let mut records = Vec::new();
        for name in ids.into_iter().take(limit) {
            if let Some(record) = self.get(name.trim_end_matches(".json")).await? {
                records.push(record);
            }
        }
        Ok(records)
    }

    /// Takes the run lock for `run_id`, or says which run holds it. A lock whose holder
    /// stopped refreshing it is taken over, and that holder's record marked failed.
    pub async fn lock(&self, run_id: &str) -> Result<RunLock> {
        let path = Path::from(LOCK);
        let since = now();
        let record = |since: &str| LockRecord {
            run_id: run_id.to_owned(),
            since: since.to_owned(),
            heartbeat: now(),
            pid: std::process::id(),
            host: host_name(),
        };
        let body = |r: &LockRecord| PutPayload::from(serde_json::to_vec(r).expect("serialises"));
        for _ in 0..2 {
            match self
                .store
                .put_opts(&path, body(&record(&since)), PutMode::Create.into())
                .await
            {
                Ok(_) => {
                    let heartbeat = {
                        let this = self.clone();
                        let lock = record(&since);
                        AbortOnDropHandle::new(tokio::spawn(async move {
                            loop {
                                tokio::time::sleep(HEARTBEAT).await;
                                let beat = LockRecord {
                                    heartbeat: now(),
                                    ..lock.clone()
                                };
                                if let Err(error) =
                                    this.store.put(&Path::from(LOCK), body(&beat)).await
                                {
                                    tracing::warn!(%error, "could not refresh the batch lock");
                                }
                            }
                        }))
                    };
                    return Ok(RunLock {
                        history: self.clone(),
                        _heartbeat: heartbeat,
                    });
                }
                Err(object_store::Error::AlreadyExists { .. }) => {
                    let held = self.read_lock().await?;
                    let Some(held) = held else { continue };
                    if !held.is_stale() {
                        return Err(Error::RunInProgress {
                            running: held.run_id,
                            since: held.since,
                        });
                    }
                    tracing::warn!(run = %held.run_id, heartbeat = %held.heartbeat, pid = held.pid, "taking over the lock of a batch run that stopped without finishing");
                    if let Some(mut dead) = self.get(&held.run_id).await?
                        && matches!(dead.status, RunStatus::Queued | RunStatus::Running)
                    {
                        dead.status = RunStatus::Failed;
                        dead.finished_at = Some(now());
                        dead.progress = None;
                        dead.error = Some(format!(
                            "abandoned: the process running it stopped without finishing (last heartbeat {})",
                            held.heartbeat
                        ));
                        self.save(&dead).await?;
                    }
                    match self.store.delete(&path).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                        Err(e) => return Err(self.store_err("removing a stale batch lock")(e)),
                    }
                }
                Err(e) => return Err(self.store_err("taking the batch lock")(e)),
            }
        }
        let held = self.read_lock().await?;
        Err(Error::RunInProgress {
            running: held.as_ref().map_or("unknown".into(), |h| h.run_id.clone()),
            since: held.map_or_else(now, |h| h.since),
        })
    }

    /// The id of the run holding the lock, unless the lock is free or stale.
    pub async fn running(&self) -> Result<Option<String>> {
        Ok(self
            .read_lock()
            .await?
            .filter(|held| !held.is_stale())
            .map(|held| held.run_id))
    }

    async fn read_lock(&self) -> Result<Option<LockRecord>> {
        let bytes = match self.store.get(&Path::from(LOCK)).await {
            Ok(found) => found.bytes().await,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => Err(e),
        }
        .map_err(self.store_err("reading the batch lock"))?;
        // A lock that cannot be read (a torn write) counts as stale.
        Ok(Some(serde_json::from_slice(&bytes).unwrap_or(LockRecord {
            run_id: "unknown".into(),
            since: String::new(),
            heartbeat: String::new(),
            pid: 0,
            host: String::new(),
        })))
    }
}

fn is_stale(heartbeat: &str) -> bool {
    DateTime::parse_from_rfc3339(heartbeat).map_or(true, |beat| {
        Utc::now()
            .signed_duration_since(beat)
            .to_std()
            .unwrap_or_default()
            > LOCK_TTL
    })
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
        match history.store.delete(&Path::from(LOCK)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(history.store_err("releasing the batch lock")(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_sort_by_time_and_name_files_safely() {
        let a = RunRecord::queued(Trigger::Cli, false);
        std::thread::sleep(Duration::from_millis(2));
        let b = RunRecord::queued(Trigger::Api, true);
        assert!(a.id < b.id, "{} {}", a.id, b.id);
        assert!(is_run_id(&a.id));
        for bad in ["", "../x", "a/b", "a.json", &"x".repeat(65)] {
            assert!(!is_run_id(bad), "{bad}");
        }
        assert!(is_stale("2020-01-01T00:00:00Z") && is_stale("garbage") && !is_stale(&now()));
    }

    #[tokio::test]
    async fn one_run_holds_the_lock_and_a_stale_lock_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::new(&lambdaflow_common::config::LakeConfig {
            uri: dir.path().to_str().unwrap().to_owned(),
        })
        .unwrap();
        let history = History::new(&lake).unwrap();
        let mut first = RunRecord::queued(Trigger::Cli, false);
        first.status = RunStatus::Running;
        history.save(&first).await.unwrap();
        let lock = history.lock(&first.id).await.unwrap();
        match history.lock("other").await {
            Err(Error::RunInProgress { running, .. }) => assert_eq!(running, first.id),
            other => panic!("second lock: {other:?}"),
        }
        lock.release().await.unwrap();
        let again = history.lock("third").await.unwrap();
        drop(again);
        let stale = LockRecord {
            run_id: first.id.clone(),
            since: "2020-01-01T00:00:00Z".into(),
            heartbeat: "2020-01-01T00:00:00Z".into(),
            pid: 1,
            host: String::new(),
        };
        history
            .store
            .put(
                &Path::from(LOCK),
                PutPayload::from(serde_json::to_vec(&stale).unwrap()),
            )
            .await
            .unwrap();
        history
            .lock("fourth")
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
}
