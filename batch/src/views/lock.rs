//! The batch run lock: at most one batch run at a time across every process of a lake.
//!
//! The lock is a sequence of generations, `<lake>/_lambdaflow/batch.lock.<n>` (`n` zero-padded
//! to 20 digits), each written once with a create-if-absent put (`PutMode::Create`, which every
//! store has: `If-None-Match: *` on S3, `O_EXCL` on a local disk). The highest generation is the
//! lock's state: held by its run while its heartbeat is fresh, free once it is marked
//! `released` or stale. Every change is the creation of the next generation:
//!
//! - taking the lock (free or stale) creates `n + 1`; of two runs racing for it, only one
//!   creation succeeds;
//! - the heartbeat, every [`HEARTBEAT`], creates `n + 1` with a fresh time: if that generation
//!   exists, another run took the lock over, and this one has lost it;
//! - releasing creates `n + 1` marked `released`.
//!
//! Nothing is ever deleted and then re-created, so no reader can see a gap and take the lock
//! twice; older generations are removed only after a newer one exists, and a creation that
//! lands below a newer generation (in a gap left by that clean-up) is checked by listing and
//! counts as lost. A compare-and-swap on one object's ETag (`PutMode::Update`) would do the
//! same on S3, but not on a local disk, whose object store has no conditional update: one
//! protocol that every store supports is tested the same way everywhere.
//!
//! A lock not refreshed for [`LOCK_TTL`], or held by a process of this host that no longer
//! exists, belongs to a run that died (kill -9): the next run takes it over and marks the dead
//! run `failed` in its record ([`super::records`]). A run checks, by refreshing its lock
//! ([`RunLock::confirm`]), that it still holds it right before each view's publish commit, so
//! a run that was paused past the time to live and taken over stops before publishing.
//!
//! `<lake>/_lambdaflow/batch.lock`, the single lock file of earlier versions, is still honoured
//! while fresh (a run of an older binary during a rolling upgrade), and never written.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio_util::task::AbortOnDropHandle;

use super::records::{History, RunStatus, format_time, now, time};
use crate::error::{Error, Result};

/// How often a running batch refreshes its lock.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// How long a lock lives without a heartbeat.
pub const LOCK_TTL: Duration = Duration::from_secs(30);
/// The lock file of earlier versions, honoured while fresh.
const LEGACY_LOCK: &str = "batch.lock";
/// The prefix of every lock generation's file name.
const GENERATION_PREFIX: &str = "batch.lock.";

/// The path of lock generation `n`.
fn generation_path(n: u64) -> Path {
    Path::from(format!("{GENERATION_PREFIX}{n:020}"))
}

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
    /// Written by the holder when it gives the lock back: the lock is free.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    released: bool,
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

    /// Whether another run may take the lock.
    fn is_free(&self) -> bool {
        self.released || self.is_stale()
    }

    /// The heartbeat as stored, for messages.
    fn heartbeat_text(&self) -> String {
        self.heartbeat.as_ref().map(format_time).unwrap_or_default()
    }

    fn payload(&self) -> PutPayload {
        PutPayload::from(serde_json::to_vec(self).expect("serialises"))
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

    /// Does `work` holding the lock as `<task>-<time>`, as the lake's maintenance commands
    /// (`lambdaflow lake expire`, `lambdaflow lake vacuum`) do, so that they never run beside
    /// a batch run; the lock is released whatever the outcome.
    pub async fn holding<T>(&self, task: &str, work: impl Future<Output = Result<T>>) -> Result<T> {
        let id = format!("{task}-{}", Utc::now().format("%Y%m%dT%H%M%S%3fZ"));
        let lock = self.acquire(&id).await?;
        let outcome = work.await;
        lock.release().await?;
        outcome
    }

    /// Takes the run lock for `run_id`, or says which run holds it. A lock whose holder
    /// stopped refreshing it is taken over, and that holder's record marked failed.
    pub async fn acquire(&self, run_id: &str) -> Result<RunLock> {
        let since = now();
        let record = LockRecord {
            run_id: run_id.to_owned(),
            since: Some(since),
            heartbeat: Some(since),
            pid: std::process::id(),
            host: host_name(),
            released: false,
        };
        for _ in 0..3 {
            if let Some(legacy) = self.read(&Path::from(LEGACY_LOCK)).await?
                && !legacy.is_free()
            {
                return Err(in_progress(Some(legacy)));
            }
            let next = match self.current().await? {
                None => 0,
                Some((_, held)) if !held.is_free() => return Err(in_progress(Some(held))),
                Some((n, held)) => {
                    if !held.released {
                        self.abandon(&held).await?;
                    }
                    n + 1
                }
            };
            let record = LockRecord {
                heartbeat: Some(now()),
                ..record.clone()
            };
            if !self.create(next, &record).await? {
                // Another run created this generation first: read who holds it now.
                continue;
            }
            let held = Arc::new(Held {
                lock: self.clone(),
                record,
                generation: Mutex::new(Some(next)),
            });
            let heartbeat = {
                let held = held.clone();
                AbortOnDropHandle::new(tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(HEARTBEAT).await;
                        match held.beat().await {
                            Ok(()) => {}
                            Err(error @ Error::LockLost { .. }) => {
                                tracing::error!(%error, "the batch lock was taken over");
                                break;
                            }
                            Err(error) => {
                                tracing::warn!(%error, "could not refresh the batch lock")
                            }
                        }
                    }
                }))
            };
            return Ok(RunLock {
                held,
                _heartbeat: heartbeat,
            });
        }
        Err(in_progress(self.current().await?.map(|(_, held)| held)))
    }

    /// The run holding the lock, unless the lock is free or stale.
    pub async fn holder(&self) -> Result<Option<Holder>> {
        let legacy = self.read(&Path::from(LEGACY_LOCK)).await?;
        let current = self.current().await?.map(|(_, held)| held);
        Ok(legacy
            .into_iter()
            .chain(current)
            .find(|held| !held.is_free())
            .map(|held| Holder {
                run_id: held.run_id,
                since: held.since,
            }))
    }

    /// Marks the run that held a stale lock `failed` in its record.
    async fn abandon(&self, held: &LockRecord) -> Result<()> {
        tracing::warn!(run = %held.run_id, heartbeat = %held.heartbeat_text(), pid = held.pid, "taking over the lock of a batch run that stopped without finishing");
        let history = &self.history;
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
        Ok(())
    }

    /// Creates generation `n` holding `record`: `false` when it exists already, or when a
    /// newer generation exists (the creation landed in a gap left by a clean-up). Once it is
    /// the newest, the older generations are removed.
    async fn create(&self, n: u64, record: &LockRecord) -> Result<bool> {
        let store = self.history.store();
        match store
            .put_opts(
                &generation_path(n),
                record.payload(),
                PutMode::Create.into(),
            )
            .await
        {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. }) => {
                // Ours after all when an earlier attempt landed but reported an error.
                let found = self.read(&generation_path(n)).await?;
                let ours = found.is_some_and(|f| {
                    (&f.run_id, f.pid, &f.host, f.since)
                        == (&record.run_id, record.pid, &record.host, record.since)
                });
                if !ours {
                    return Ok(false);
                }
            }
            Err(e) => return Err(self.history.store_err("writing the batch lock")(e)),
        }
        let generations = self.generations().await?;
        if generations.last().is_some_and(|newest| *newest > n) {
            return Ok(false);
        }
        for old in generations.into_iter().filter(|g| *g < n) {
            if let Err(error) = store.delete(&generation_path(old)).await {
                tracing::debug!(%error, generation = old, "could not remove an old batch lock generation");
            }
        }
        Ok(true)
    }

    /// Every lock generation in the store, oldest first.
    async fn generations(&self) -> Result<Vec<u64>> {
        let listing = match self.history.store().list_with_delimiter(None).await {
            Ok(listing) => listing.objects,
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(self.history.store_err("listing the batch lock")(e)),
        };
        let mut generations: Vec<u64> = listing
            .iter()
            .filter_map(|meta| {
                meta.location
                    .filename()?
                    .strip_prefix(GENERATION_PREFIX)?
                    .parse()
                    .ok()
            })
            .collect();
        generations.sort_unstable();
        Ok(generations)
    }

    /// The newest generation and its record.
    async fn current(&self) -> Result<Option<(u64, LockRecord)>> {
        // The newest generation can be removed between the listing and the read only once a
        // newer one exists: list again then.
        for _ in 0..5 {
            let Some(newest) = self.generations().await?.last().copied() else {
                return Ok(None);
            };
            if let Some(record) = self.read(&generation_path(newest)).await? {
                return Ok(Some((newest, record)));
            }
        }
        Err(in_progress(None))
    }

    async fn read(&self, path: &Path) -> Result<Option<LockRecord>> {
        let bytes = match self.history.store().get(path).await {
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
            released: false,
        })))
    }
}

fn in_progress(held: Option<LockRecord>) -> Error {
    Error::RunInProgress {
        running: held.as_ref().map_or("unknown".into(), |h| h.run_id.clone()),
        since: held.and_then(|h| h.since),
    }
}

/// What a held lock knows about itself, shared with its heartbeat.
#[derive(Debug)]
struct Held {
    lock: BatchLock,
    record: LockRecord,
    /// The generation this run wrote last; `None` once it found the lock taken over.
    generation: Mutex<Option<u64>>,
}

impl Held {
    /// Refreshes the lock by creating the next generation, which fails if another run took
    /// the lock over.
    async fn beat(&self) -> Result<()> {
        self.next(false).await
    }

    async fn next(&self, released: bool) -> Result<()> {
        let mut generation = self.generation.lock().await;
        let lost = |generation| Error::LockLost {
            run_id: self.record.run_id.clone(),
            generation,
        };
        let Some(n) = *generation else {
            return Err(lost(0));
        };
        let record = LockRecord {
            heartbeat: Some(now()),
            released,
            ..self.record.clone()
        };
        if self.lock.create(n + 1, &record).await? {
            *generation = Some(n + 1);
            Ok(())
        } else {
            *generation = None;
            Err(lost(n + 1))
        }
    }
}

/// The held run lock; [`RunLock::release`] gives it back. Dropped without release (a panic),
/// the heartbeat stops and the lock goes stale after [`LOCK_TTL`].
#[derive(Debug)]
pub struct RunLock {
    held: Arc<Held>,
    _heartbeat: AbortOnDropHandle<()>,
}

impl RunLock {
    /// Refreshes the lock now, and fails with [`Error::LockLost`] if another run took it
    /// over: called right before each publish, so that a run that lost its lock publishes
    /// nothing more. A refreshed lock lives [`LOCK_TTL`], far longer than one commit takes.
    pub async fn confirm(&self) -> Result<()> {
        self.held.beat().await
    }

    /// Stops the heartbeat and marks the lock released (unless another run took it over).
    pub async fn release(self) -> Result<()> {
        let RunLock { held, _heartbeat } = self;
        drop(_heartbeat);
        match held.next(true).await {
            Ok(()) | Err(Error::LockLost { .. }) => Ok(()),
            Err(e) => Err(e),
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
        let lake = Lake::new(&lambdaflow_common::config::LakeConfig::at(
            dir.path().to_str().unwrap().to_owned(),
        ))
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
            released: false,
        };
        let newest = lock.generations().await.unwrap().last().copied().unwrap();
        history
            .store()
            .put(
                &generation_path(newest + 1),
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

    /// Writes a lock left by a run that died, where this version and earlier ones look.
    async fn leave_a_stale_lock(lock: &BatchLock) {
        let stale = LockRecord {
            run_id: "20200101T000000000Z-dead".into(),
            since: parse_time("2020-01-01T00:00:00Z"),
            heartbeat: parse_time("2020-01-01T00:00:00Z"),
            pid: 1,
            host: String::new(),
            released: false,
        };
        let store = lock.history.store();
        let next = lock
            .generations()
            .await
            .unwrap()
            .last()
            .map_or(0, |n| n + 1);
        for path in [Path::from(LEGACY_LOCK), generation_path(next)] {
            store.put(&path, stale.payload()).await.unwrap();
        }
    }

    /// Two runs, as two processes would (each with its own store client), race for a stale
    /// lock `rounds` times: exactly one wins each round.
    pub(crate) async fn race_for_a_stale_lock(lake: &Lake, rounds: usize) {
        let lock = || BatchLock::new(History::new(lake).unwrap());
        let (a, b) = (lock(), lock());
        for round in 0..rounds {
            leave_a_stale_lock(&a).await;
            let barrier = tokio::sync::Barrier::new(2);
            let take = |lock: &BatchLock, who: &'static str| {
                let (lock, barrier) = (lock.clone(), &barrier);
                async move {
                    barrier.wait().await;
                    lock.acquire(&format!("round-{round}-{who}")).await
                }
            };
            let (first, second) = tokio::join!(take(&a, "a"), take(&b, "b"));
            let winners: Vec<RunLock> = [first, second]
                .into_iter()
                .filter_map(|taken| match taken {
                    Ok(held) => Some(held),
                    Err(Error::RunInProgress { .. }) => None,
                    Err(other) => panic!("round {round}: {other}"),
                })
                .collect();
            assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
            for held in winners {
                held.confirm().await.unwrap();
                drop(held);
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_runs_racing_for_a_stale_lock_never_both_win() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::new(&lambdaflow_common::config::LakeConfig::at(
            dir.path().to_str().unwrap().to_owned(),
        ))
        .unwrap();
        race_for_a_stale_lock(&lake, 20).await;
    }

    #[tokio::test]
    async fn a_run_whose_lock_was_taken_over_stops_before_publishing() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::new(&lambdaflow_common::config::LakeConfig::at(
            dir.path().to_str().unwrap().to_owned(),
        ))
        .unwrap();
        let lock = BatchLock::new(History::new(&lake).unwrap());
        let held = lock.acquire("paused").await.unwrap();
        held.confirm().await.unwrap();
        // The run is paused past the time to live and another run takes its lock over.
        leave_a_stale_lock(&lock).await;
        let other = lock.acquire("other").await.unwrap();
        match held.confirm().await {
            Err(Error::LockLost { run_id, .. }) => assert_eq!(run_id, "paused"),
            unexpected => panic!("a lost lock confirmed: {unexpected:?}"),
        }
        held.release().await.unwrap();
        assert_eq!(lock.holder().await.unwrap().unwrap().run_id, "other");
        other.release().await.unwrap();
        assert!(lock.holder().await.unwrap().is_none());
        lock.acquire("next").await.unwrap();
    }

    #[test]
    fn the_lock_file_keeps_its_text_format() {
        let record = LockRecord {
            run_id: "r".into(),
            since: parse_time("2026-11-23T04:05:06.789Z"),
            heartbeat: parse_time("2026-11-23T04:05:07.001Z"),
            pid: 7,
            host: "h".into(),
            released: false,
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
