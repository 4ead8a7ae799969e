//! One batch run: every view brought up to the raw table's current version, each published
//! in one Delta commit that also records its watermark.
//!
//! For each source in config order, retention is applied to its tables
//! ([`crate::lake::retention`]), its raw table's version pinned and, for each view over it, in
//! config order:
//! 1. read what its last commit covers ([`crate::views::watermark::view_commit`]);
//! 2. pick the mode: *full* for a new view, a changed definition or `--full`; *unchanged* if it
//!    already covers the raw version read; otherwise *incremental*: the event dates with raw
//!    rows added since its raw version ([`crate::views::watermark::dates_changed`]). Only dates
//!    the raw table still holds and the view's retention keeps are computed: a full recompute
//!    keeps the dates whose raw rows expired, and counts them in its record;
//! 3. compute the dates' rows ([`crate::views::recompute`]) at the pinned raw version;
//! 4. publish: overwrite exactly those dates (`replaceWhere` on `event_date`), or the whole
//!    table, in one commit carrying the [`ViewCommit`].
//!
//! The run is a graph of tasks, recorded with their states, attempts, times, rows and errors:
//! `expire:<source>` (retention) before each of the source's views' `recompute:<view>`
//! (steps 1–3), each before its `publish:<view>` (step 4), and every publish before `vacuum`.
//! A source's views run `batch.parallelism` at a time; a task whose error is transient (the
//! store, I/O, a lost commit race) is retried up to `batch.retries` times with backoff, and one
//! that fails for good fails its view alone: what comes after it is skipped, the other views
//! publish, and the run fails at the end naming the views (and sources) that did not. Last,
//! every table is vacuumed ([`crate::lake::vacuum`]) while the run still holds the lock,
//! whatever failed before it: only a cancelled run, or one that lost its lock, skips it. A
//! stopped run's record ends its running tasks failed and its pending ones skipped.
//!
//! A run that dies before a view's commit leaves that view as it was; the next run starts
//! from the view's own watermark, so it recomputes what the dead run did not publish.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{Expr, col, lit};
use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use lambdaflow_common::config::Config;
use lambdaflow_common::layout::ViewLayout;
use lambdaflow_common::schema::{EVENT_DATE, raw_schema};
use lambdaflow_common::source::SourceConfig;
use lambdaflow_common::timestamp::format_date;
use lambdaflow_common::view::ViewDef;
use lambdaflow_common::view::fingerprint;
use lambdaflow_common::watermark::Watermark;
use tokio_util::sync::CancellationToken;

use crate::cluster::scan::RawFiles;
use crate::cluster::{Cluster, JobShape};
use crate::error::{Error, Result};
use crate::lake::retention::Expire;
use crate::lake::status::status;
use crate::lake::vacuum::Vacuum;
use crate::lake::{Lake, open_or_create, partition_dates};
use crate::metrics;
use crate::views::lock::{BatchLock, RunLock};
use crate::views::recompute::view_frame;
use crate::views::records::{
    History, Mode, RunRecord, RunStatus, SourceOutcome, Task, TaskState, Trigger, VACUUM,
    ViewOutcome, now,
};
use crate::views::sketch_udf;
use crate::views::watermark::{COMMIT_KEY, ViewCommit, dates_changed, raw_watermark, view_commit};

/// How often a long view computation logs that it is still going.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Told of every change of a task's state, as it happens (the command line prints a line).
pub type TaskProgress = Arc<dyn Fn(&Task) + Send + Sync>;

/// A batch run with its options; [`BatchRun::run`] executes it.
pub struct BatchRun {
    config: Arc<Config>,
    lake: Lake,
    history: History,
    record: RunRecord,
    cancel: CancellationToken,
    on_task: Option<TaskProgress>,
}

impl std::fmt::Debug for BatchRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchRun")
            .field("record", &self.record.id)
            .finish_non_exhaustive()
    }
}

impl BatchRun {
    /// A run of every view of `config`, incremental, started from the command line.
    pub fn new(config: Arc<Config>, lake: Lake, history: History) -> Self {
        Self {
            config,
            lake,
            history,
            record: RunRecord::queued(Trigger::Cli, false),
            cancel: CancellationToken::new(),
            on_task: None,
        }
    }

    /// Calls `progress` on every change of a task's state.
    pub fn with_task_progress(mut self, progress: TaskProgress) -> Self {
        self.on_task = Some(progress);
        self
    }

    /// Stops the run (recorded as failed, nothing half-published) when `cancel` fires.
    pub fn with_cancel(mut self, cancel: CancellationToken) -> Self {
        self.cancel = cancel;
        self
    }

    /// Recomputes every date of every view.
    pub fn with_full(mut self, full: bool) -> Self {
        self.record.full = full;
        self
    }

    /// Continues the run recorded (queued) as `record`.
    pub fn with_record(mut self, record: RunRecord) -> Self {
        self.record = record;
        self
    }

    /// Records what started the run.
    pub fn with_trigger(mut self, trigger: Trigger) -> Self {
        self.record.trigger = trigger;
        self
    }

    /// The run's id.
    pub fn id(&self) -> &str {
        &self.record.id
    }

    /// Takes the lock, runs, records the outcome, and returns the final record. An error
    /// after the lock was taken is in the record (`failed`) as well as returned.
    pub async fn run(mut self) -> Result<RunRecord> {
        // A cluster that is down fails the run before it takes the lock.
        if let Some(cluster) = self.cluster() {
            cluster.check().await?;
            self.record.engine = self.config.batch.engine.clone();
        }
        let lock = BatchLock::new(self.history.clone())
            .acquire(&self.record.id)
            .await?;
        self.record.status = RunStatus::Running;
        self.record.started_at = Some(now());
        let started = std::time::Instant::now();
        self.history.save(&self.record).await?;
        let cancel = self.cancel.clone();
        let outcome = tokio::select! {
            outcome = self.views(&lock) => outcome,
            () = cancel.cancelled() => Err(Error::Cancelled),
        };
        self.record.finished_at = Some(now());
        self.record.progress = None;
        if let Err(e @ (Error::Cancelled | Error::LockLost { .. })) = &outcome {
            self.record.stop_tasks(&e.to_string());
        }
        match &outcome {
            Ok(()) => self.record.status = RunStatus::Succeeded,
            Err(e) => {
                self.record.status = RunStatus::Failed;
                self.record.error = Some(e.to_string());
            }
        }
        let status = if outcome.is_ok() {
            "succeeded"
        } else {
            "failed"
        };
        metrics::RUN_SECONDS
            .with_label_values(&[status])
            .observe(started.elapsed().as_secs_f64());
        metrics::RUN_ROWS
            .with_label_values(&["read"])
            .inc_by(self.record.rows_read);
        metrics::RUN_ROWS
            .with_label_values(&["written"])
            .inc_by(self.record.rows_written);
        metrics::LAST_RUN
            .with_label_values(&[status])
            .set(chrono::Utc::now().timestamp());
        let saved = self.history.save(&self.record).await;
        lock.release().await?;
        saved?;
        match outcome {
            Ok(()) => {
                tracing::info!(run = %self.record.id, raw_version = ?self.record.raw_version, rows_read = self.record.rows_read, rows_written = self.record.rows_written, dates = self.record.dates.len(), "batch run succeeded");
                Ok(self.record)
            }
            Err(e) => {
                tracing::error!(run = %self.record.id, error = %e, "batch run failed");
                Err(e)
            }
        }
    }

    /// Lays out the run's graph: per source, `expire` before each of its views' `recompute`,
    /// each `recompute` before its `publish`, and every `publish` before `vacuum`.
    fn plan(&mut self) {
        let config = self.config.clone();
        let (tasks, edges) = (&mut self.record.tasks, &mut self.record.edges);
        for source in &config.sources {
            let expire = format!("expire:{}", source.name);
            tasks.push(Task::pending(expire.clone()));
            for view in &config.scoped(source).views {
                let (recompute, publish) = task_ids(&view.name);
                tasks.push(Task::pending(recompute.clone()));
                tasks.push(Task::pending(publish.clone()));
                edges.push([expire.clone(), recompute.clone()]);
                edges.push([recompute, publish.clone()]);
                edges.push([publish, VACUUM.to_owned()]);
            }
        }
        tasks.push(Task::pending(VACUUM.to_owned()));
    }

    async fn views(&mut self, lock: &RunLock) -> Result<()> {
        let config = self.config.clone();
        self.plan();
        let mut failed = Vec::new();
        for source in &config.sources {
            let outcome = self.source(&config.scoped(source), lock).await;
            let Err(e) = outcome else { continue };
            let recorded = self.record.sources.last_mut();
            recorded.expect("each source records itself first").error = Some(e.to_string());
            if matches!(e, Error::Cancelled | Error::LockLost { .. }) {
                return Err(e);
            }
            tracing::error!(run = %self.record.id, source = %source.name, error = %e, "a source's views failed; the run goes on");
            failed.push((source.name.clone(), e));
        }
        if self.record.task(VACUUM).state == TaskState::Pending {
            self.vacuum().await;
        }
        match failed.len() {
            0 => Ok(()),
            1 if config.sources.len() == 1 => Err(failed.remove(0).1),
            _ => Err(Error::SourcesFailed(
                failed
                    .iter()
                    .map(|(name, e)| format!("source {name}: {e}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            )),
        }
    }

    /// Marks task `id` running for one more attempt.
    fn start(&mut self, id: &str) {
        let task = self.record.task(id);
        task.state = TaskState::Running;
        task.attempts += 1;
        task.started_at.get_or_insert_with(now);
        self.tell(id);
    }

    /// Marks task `id` done with `rows`.
    fn succeed(&mut self, id: &str, rows: u64) {
        let task = self.record.task(id);
        task.state = TaskState::Succeeded;
        task.rows = rows;
        task.error = None;
        task.finished_at = Some(now());
        self.tell(id);
    }

    /// Marks task `id` failed for good, and every task after it skipped.
    fn fail(&mut self, id: &str, error: &Error) {
        let task = self.record.task(id);
        task.state = TaskState::Failed;
        task.error = Some(error.to_string());
        task.finished_at = Some(now());
        self.tell(id);
        for skipped in self.record.skip_after(id) {
            self.tell(&skipped);
        }
    }

    /// Whether task `id` may try again after `error`: a transient error with retries left.
    /// Records the error either way.
    fn may_retry(&mut self, id: &str, error: &Error) -> bool {
        let retries = self.config.batch.retries;
        let task = self.record.task(id);
        task.error = Some(error.to_string());
        let again = transient(error) && task.attempts <= retries;
        if again {
            tracing::warn!(run = %self.record.id, task = %id, error = %error, "batch task failed; retrying");
        }
        again
    }

    fn tell(&mut self, id: &str) {
        if let Some(tell) = self.on_task.clone() {
            tell(self.record.task(id));
        }
    }

    /// Saves the record as it stands. A failed save is logged, not the run's: the record is
    /// saved again at the next step and at the end.
    async fn save(&self) {
        if let Err(e) = self.history.save(&self.record).await {
            tracing::warn!(run = %self.record.id, error = %e, "saving the run's record failed");
        }
    }

    /// Waits out the pause before task `id`'s next attempt.
    async fn backoff(&mut self, id: &str) {
        tokio::time::sleep(backoff_for(self.record.task(id).attempts + 1)).await;
    }

    /// Applies retention to the tables of `config`'s one source, then recomputes and
    /// publishes every view over it, `batch.parallelism` at a time, each retried on a
    /// transient error; a view that fails for good does not stop the others.
    async fn source(&mut self, config: &Config, lock: &RunLock) -> Result<()> {
        let source = config.source();
        let several = self.config.sources.len() > 1;
        self.record.sources.push(SourceOutcome {
            name: source.name.clone(),
            ..SourceOutcome::default()
        });
        let lake = self.lake.clone();
        let expire = Expire::new(config, &lake);
        let expire_task = format!("expire:{}", source.name);
        let expired = loop {
            self.start(&expire_task);
            let expired = match fault(&expire_task) {
                Some(e) => Err(e),
                None => expire.run().await,
            };
            match expired {
                Ok(expired) => break expired,
                Err(e) if self.may_retry(&expire_task, &e) => self.backoff(&expire_task).await,
                Err(e) => {
                    self.fail(&expire_task, &e);
                    return Err(e);
                }
            }
        };
        self.succeed(&expire_task, expired.iter().map(|e| e.files).sum());
        self.record.expired.extend(expired);
        let views = &config.views;
        let mut attempt = 1;
        let pinned = loop {
            match self.pin(source).await {
                Err(e) if transient(&e) && attempt <= self.config.batch.retries => {
                    tracing::warn!(run = %self.record.id, source = %source.name, error = %e, "reading the raw table failed; retrying");
                    attempt += 1;
                    tokio::time::sleep(backoff_for(attempt)).await;
                }
                pinned => break pinned,
            }
        };
        let (raw, raw_dates, watermark, ctx, scan) = match pinned {
            Ok(pinned) => pinned,
            Err(e) => {
                for view in views {
                    self.fail(&task_ids(&view.name).0, &e);
                }
                return Err(e);
            }
        };
        if !several {
            self.record.raw_version = Some(watermark.raw_version);
            self.record.watermark = Some(watermark.clone());
        }
        let outcome = self.record.sources.last_mut().expect("pushed above");
        outcome.raw_version = Some(watermark.raw_version);
        outcome.watermark = Some(watermark.clone());
        self.save().await;

        let job = ViewJob {
            lake: &lake,
            run_id: self.record.id.clone(),
            full: self.record.full,
            ctx: &ctx,
            source,
            raw: &raw,
            raw_dates: &raw_dates,
            scan,
            watermark: &watermark,
            lock,
        };
        let mut queue: VecDeque<(usize, Step)> =
            (0..views.len()).map(|i| (i, Step::Recompute)).collect();
        let mut running = FuturesUnordered::new();
        let mut dates: BTreeSet<String> = self.record.dates.iter().cloned().collect();
        let first = self.record.views.len();
        let mut failed = Vec::new();
        let slots = self.config.batch.parallelism.max(1);
        loop {
            while running.len() < slots
                && let Some((i, step)) = queue.pop_front()
            {
                let view: &ViewDef = &views[i];
                let id = step.task(&view.name);
                self.start(&id);
                let retry = self.record.task(&id).attempts > 1;
                let delay = retry.then(|| backoff_for(self.record.task(&id).attempts));
                let cutoff = expire.view_cutoff(&view.name);
                let job = &job;
                running.push(async move {
                    if let Some(delay) = delay {
                        tokio::time::sleep(delay).await;
                    }
                    let result = match (fault(&id), step) {
                        (Some(e), step) => Err((e, step)),
                        (None, Step::Recompute) => job
                            .recompute(view, cutoff)
                            .await
                            .map(|c| Done::Computed(Box::new(c)))
                            .map_err(|e| (e, Step::Recompute)),
                        (None, Step::Publish(computed)) => job
                            .publish(*computed.clone(), retry)
                            .await
                            .map(|(o, d)| Done::Published(o, d))
                            .map_err(|e| (e, Step::Publish(computed))),
                    };
                    (i, id, result)
                });
            }
            self.record.progress = Some(
                self.record
                    .tasks
                    .iter()
                    .filter(|t| t.state == TaskState::Running)
                    .map(|t| t.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            );
            self.save().await;
            let Some((i, id, result)) = running.next().await else {
                break;
            };
            match result {
                Ok(Done::Computed(computed)) => {
                    self.succeed(&id, computed.outcome.rows_read);
                    queue.push_front((i, Step::Publish(computed)));
                }
                Ok(Done::Published(outcome, published)) => {
                    self.succeed(&id, outcome.rows_written);
                    let (recompute, publish) = task_ids(&views[i].name);
                    let seconds = self
                        .record
                        .tasks
                        .iter()
                        .filter(|t| t.id == recompute || t.id == publish)
                        .filter_map(Task::seconds)
                        .sum();
                    tracing::info!(run = %self.record.id, view = %outcome.name, mode = ?outcome.mode, dates = outcome.dates, rows_read = outcome.rows_read, rows_written = outcome.rows_written, seconds = format!("{seconds:.2}"), "view published");
                    self.record.rows_read += outcome.rows_read;
                    self.record.rows_written += outcome.rows_written;
                    if let Some(job) = outcome.cluster {
                        let all = self.record.cluster.get_or_insert_default();
                        all.stages += job.stages;
                        all.tasks += job.tasks;
                    }
                    dates.extend(published.iter().map(|d| format_date(*d)));
                    self.record.dates = dates.iter().cloned().collect();
                    self.record.views.push(ViewOutcome { seconds, ..outcome });
                }
                Err((e, _)) if matches!(e, Error::Cancelled | Error::LockLost { .. }) => {
                    self.fail(&id, &e);
                    return Err(e);
                }
                Err((e, step)) if self.may_retry(&id, &e) => queue.push_back((i, step)),
                Err((e, _)) => {
                    tracing::error!(run = %self.record.id, task = %id, error = %e, "batch task failed; the other views go on");
                    self.fail(&id, &e);
                    failed.push(format!("{} ({e})", views[i].name));
                }
            }
        }
        self.record.views[first..]
            .sort_by_key(|outcome| views.iter().position(|v| v.name == outcome.name));
        match failed.is_empty() {
            true => Ok(()),
            false => Err(Error::ViewsFailed(failed.join(", "))),
        }
    }

    /// The cluster the view plans run on, when the engine is not local.
    fn cluster(&self) -> Option<Cluster> {
        self.config.batch.scheduler().map(Cluster::new)
    }

    /// Opens `source`'s raw table and pins its current version: the dates it holds, the
    /// watermark it covers, and a DataFusion session and scan reading it, on the engine.
    async fn pin(
        &self,
        source: &SourceConfig,
    ) -> Result<(DeltaTable, BTreeSet<i32>, Watermark, SessionContext, Scan)> {
        let raw_url = self.lake.raw(&source.name);
        let schema = raw_schema(source);
        let raw = open_or_create(&raw_url, &schema, &[EVENT_DATE]).await?;
        let raw_dates = partition_dates(&raw, EVENT_DATE)?;
        let watermark = raw_watermark(&raw, &source.topic).await?;
        tracing::info!(run = %self.record.id, source = %source.name, raw_version = watermark.raw_version, offsets = ?watermark.offsets, engine = %self.config.batch.engine, "batch run reading the raw table");
        if let Some(cluster) = self.cluster() {
            let ctx = cluster.session().await?;
            let files = RawFiles::pinned(&raw, &schema)?;
            return Ok((
                raw,
                raw_dates,
                watermark,
                ctx,
                Scan::Cluster(cluster, files),
            ));
        }
        let mut ctx = SessionContext::new();
        sketch_udf::register(&mut ctx).map_err(|source| query_err(&raw_url, source))?;
        raw.update_datafusion_session(&ctx.state())
            .map_err(|source| Error::Delta {
                table: raw_url.to_string(),
                source,
            })?;
        let provider = raw
            .table_provider()
            .await
            .map_err(|source| query_err(&raw_url, source))?;
        Ok((raw, raw_dates, watermark, ctx, Scan::Delta(provider)))
    }

    /// Vacuums every table once the views are published, then refreshes the storage gauges.
    /// A failure is logged and recorded (the task failed), not the run's: its views are
    /// published, and the next run vacuums again.
    async fn vacuum(&mut self) {
        self.record.progress = Some(VACUUM.into());
        self.start(VACUUM);
        match Vacuum::new(&self.config, &self.lake).run().await {
            Ok(vacuumed) => {
                let files = vacuumed.iter().map(|v| v.files).sum();
                self.record.vacuumed = vacuumed;
                self.succeed(VACUUM, files);
            }
            Err(e) => {
                tracing::warn!(run = %self.record.id, error = %e, "vacuum failed; the next batch run tries again");
                metrics::VACUUM_FAILURES.inc();
                self.record.vacuum_error = Some(e.to_string());
                self.fail(VACUUM, &e);
            }
        }
        if let Err(e) = status(&self.config, &self.lake).await {
            tracing::warn!(run = %self.record.id, error = %e, "reading the lake's storage status failed");
        }
    }
}

/// The `recompute` and `publish` task ids of view `view`.
fn task_ids(view: &str) -> (String, String) {
    (format!("recompute:{view}"), format!("publish:{view}"))
}

/// A view's next step, with what it needs.
#[derive(Clone)]
enum Step {
    Recompute,
    Publish(Box<Computed>),
}

impl Step {
    fn task(&self, view: &str) -> String {
        let (recompute, publish) = task_ids(view);
        match self {
            Self::Recompute => recompute,
            Self::Publish(_) => publish,
        }
    }
}

/// A step done.
enum Done {
    Computed(Box<Computed>),
    Published(ViewOutcome, BTreeSet<i32>),
}

/// What a view's recompute hands its publish: the rows of the dates computed, and where and
/// how they go.
#[derive(Clone)]
struct Computed {
    outcome: ViewOutcome,
    /// Dates to replace (`None`: the whole table); `None` with nothing to do when unchanged.
    dates: Option<BTreeSet<i32>>,
    /// The dates whose rows were read.
    scanned: BTreeSet<i32>,
    table: DeltaTable,
    layout: ViewLayout,
    batches: Vec<RecordBatch>,
    redefined: bool,
    commit: ViewCommit,
}

/// Whether a task that failed with `error` may succeed if tried again: the store, I/O or a
/// lost commit race, not a view's definition or data, nor a file or permission that is
/// missing.
fn transient(error: &Error) -> bool {
    use deltalake::DeltaTableError as Delta;
    use deltalake::kernel::transaction::TransactionError as Commit;
    match error {
        Error::Store { source, .. } => store_transient(source),
        Error::ConcurrentWriter { .. } | Error::CommitRetriesExhausted { .. } => true,
        Error::Delta { source, .. } => match source {
            Delta::ObjectStore { source } => store_transient(source),
            Delta::Transaction { source } => match source {
                Commit::ObjectStore { source } => store_transient(source),
                Commit::VersionAlreadyExists(_)
                | Commit::CommitConflict(_)
                | Commit::MaxCommitAttempts(_) => true,
                _ => false,
            },
            Delta::Io { source } => io_transient(source),
            Delta::VersionAlreadyExists(_) => true,
            _ => false,
        },
        Error::Query { source, .. } => match source.find_root() {
            datafusion::error::DataFusionError::ObjectStore(source) => store_transient(source),
            datafusion::error::DataFusionError::IoError(source) => io_transient(source),
            _ => false,
        },
        #[cfg(feature = "faults")]
        Error::Failpoint { transient, .. } => *transient,
        _ => false,
    }
}

/// Whether the store may answer otherwise if asked again: a server error, a timeout or a
/// lost race, not a missing object, a bad path or a refused permission.
fn store_transient(error: &object_store::Error) -> bool {
    matches!(
        error,
        object_store::Error::Generic { .. }
            | object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. }
            | object_store::Error::JoinError { .. }
    )
}

/// Whether an I/O error may not happen again: a timeout or a dropped connection, not a missing
/// file or a refused permission.
fn io_transient(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        error.kind(),
        TimedOut
            | Interrupted
            | WouldBlock
            | ConnectionReset
            | ConnectionAborted
            | BrokenPipe
            | UnexpectedEof
    )
}

/// The pause before attempt `attempt` (2 or more): 0.5 s, then doubling.
fn backoff_for(attempt: u32) -> Duration {
    Duration::from_millis(500 << attempt.saturating_sub(2).min(6))
}

/// The fault suite's failpoint on this attempt of task `id`, when one fires.
fn fault(id: &str) -> Option<Error> {
    #[cfg(feature = "faults")]
    return crate::faults::task_fault(id);
    #[cfg(not(feature = "faults"))]
    {
        let _ = id;
        None
    }
}

/// How a run reads the pinned raw version.
enum Scan {
    /// In this process, through delta-rs.
    Delta(Arc<dyn datafusion::catalog::TableProvider>),
    /// On a cluster, as a listing of the version's files.
    Cluster(Cluster, RawFiles),
}

/// What every view of one source shares within a run.
struct ViewJob<'a> {
    lake: &'a Lake,
    run_id: String,
    full: bool,
    ctx: &'a SessionContext,
    source: &'a SourceConfig,
    raw: &'a DeltaTable,
    /// The dates the raw table holds after retention.
    raw_dates: &'a BTreeSet<i32>,
    scan: Scan,
    watermark: &'a Watermark,
    lock: &'a RunLock,
}

impl ViewJob<'_> {
    /// Computes one view up to the pinned watermark. `cutoff` is the oldest date the view
    /// keeps: no date outside it and the raw table's is computed, so a view keeps the dates
    /// whose raw rows expired and never recomputes them from a partial raw date.
    async fn recompute(&self, view: &ViewDef, cutoff: Option<i32>) -> Result<Computed> {
        let source = self.source;
        let layout = ViewLayout::new(source, view).map_err(|source| Error::Layout {
            view: view.name.clone(),
            source,
        })?;
        let url = self.lake.view(&view.name);
        let table = open_or_create(&url, &layout.schema, &[EVENT_DATE]).await?;
        let definition = fingerprint(source, view);
        let previous = view_commit(&table).await?;
        let redefined = previous
            .as_ref()
            .is_some_and(|p| p.definition != definition);
        let mut outcome = ViewOutcome {
            name: view.name.clone(),
            mode: Mode::Full,
            dates: 0,
            rows_read: 0,
            rows_written: 0,
            version: None,
            kept_dates: 0,
            seconds: 0.0,
            cluster: None,
        };
        let commit = ViewCommit {
            watermark: self.watermark.clone(),
            definition,
            run_id: self.run_id.clone(),
        };
        let dates = match &previous {
            Some(p) if !self.full && !redefined => {
                if p.watermark.raw_version == self.watermark.raw_version {
                    outcome.mode = Mode::Unchanged;
                    return Ok(Computed {
                        outcome,
                        dates: None,
                        scanned: BTreeSet::new(),
                        table,
                        layout,
                        batches: Vec::new(),
                        redefined,
                        commit,
                    });
                }
                if p.watermark.raw_version < self.watermark.raw_version {
                    dates_changed(
                        self.raw,
                        p.watermark.raw_version,
                        self.watermark.raw_version,
                    )
                    .await?
                } else {
                    None
                }
            }
            _ => None,
        };
        let raw_dates = self.raw_dates;
        let computable = |d: &i32| raw_dates.contains(d) && cutoff.is_none_or(|c| *d >= c);
        let dates = match dates {
            Some(changed) => {
                outcome.mode = Mode::Incremental;
                Some(changed.into_iter().filter(computable).collect())
            }
            None => {
                let kept = match redefined {
                    true => 0,
                    false => partition_dates(&table, EVENT_DATE)?
                        .difference(raw_dates)
                        .count(),
                };
                outcome.kept_dates = kept;
                (kept > 0 || cutoff.is_some())
                    .then(|| raw_dates.iter().copied().filter(computable).collect())
            }
        };
        let (rows_read, scanned) = raw_rows(self.raw, dates.as_ref())?;
        outcome.rows_read = rows_read;
        outcome.dates = scanned.len();
        let batches = match &self.scan {
            Scan::Delta(provider) => {
                let frame = view_frame(
                    self.ctx,
                    provider.clone(),
                    source,
                    view,
                    &layout,
                    dates.as_ref(),
                )
                .map_err(|source| query_err(&url, source))?;
                with_progress(&view.name, frame.collect())
                    .await
                    .map_err(|source| query_err(&url, source))?
            }
            // The listing holds the dates' files alone: the plan filters no date.
            Scan::Cluster(cluster, files) => match files.scan(dates.as_ref())? {
                Some(provider) => {
                    let frame = view_frame(self.ctx, provider, source, view, &layout, None)
                        .map_err(|source| query_err(&url, source))?;
                    let (batches, shape) =
                        with_progress(&view.name, cluster.collect(self.ctx, frame))
                            .await
                            .map_err(|source| query_err(&url, source))?;
                    outcome.cluster = Some(shape);
                    batches
                }
                None => {
                    outcome.cluster = Some(JobShape::default());
                    Vec::new()
                }
            },
        };
        outcome.rows_written = batches.iter().map(|b| b.num_rows() as u64).sum();
        Ok(Computed {
            outcome,
            dates,
            scanned,
            table,
            layout,
            batches,
            redefined,
            commit,
        })
    }

    /// Publishes what `recompute` computed, in one commit carrying its watermark; a retry
    /// reads the table afresh. Nothing is written for a view that was already up to date.
    async fn publish(
        &self,
        computed: Computed,
        retry: bool,
    ) -> Result<(ViewOutcome, BTreeSet<i32>)> {
        let Computed {
            mut outcome,
            dates,
            scanned,
            table,
            layout,
            batches,
            redefined,
            commit,
        } = computed;
        if outcome.mode == Mode::Unchanged {
            return Ok((outcome, scanned));
        }
        let table = match retry {
            true => {
                open_or_create(
                    &self.lake.view(&outcome.name),
                    &layout.schema,
                    &[EVENT_DATE],
                )
                .await?
            }
            false => table,
        };
        // A run paused past the lock's time to live may have been taken over: it must not
        // publish over the run that now holds the lock.
        self.lock.confirm().await?;
        let table = publish(table, &layout, batches, dates.as_ref(), redefined, &commit).await?;
        outcome.version = table.version();
        Ok((outcome, scanned))
    }
}

fn query_err(url: &url::Url, source: datafusion::error::DataFusionError) -> Error {
    Error::Query {
        table: url.to_string(),
        source,
    }
}

/// Raw rows in, and the dates of, the files of `dates` (every file when `None`), from the
/// file statistics of the pinned snapshot.
fn raw_rows(raw: &DeltaTable, dates: Option<&BTreeSet<i32>>) -> Result<(u64, BTreeSet<i32>)> {
    let snapshot = raw.snapshot().map_err(|source| Error::Delta {
        table: raw.table_url().to_string(),
        source,
    })?;
    let mut rows = 0;
    let mut seen = BTreeSet::new();
    for file in snapshot.log_data().iter() {
        let date = file
            .partition_values_map()
            .get(EVENT_DATE)
            .cloned()
            .flatten()
            .and_then(|d| crate::views::watermark::parse_date(&d));
        let Some(date) = date else { continue };
        if dates.is_none_or(|d| d.contains(&date)) {
            rows += file.num_records().unwrap_or(0) as u64;
            seen.insert(date);
        }
    }
    if let Some(dates) = dates {
        seen.extend(dates);
    }
    Ok((rows, seen))
}

async fn with_progress<T>(view: &str, work: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let mut work = std::pin::pin!(work);
    loop {
        tokio::select! {
            done = &mut work => return done,
            () = tokio::time::sleep(PROGRESS_EVERY) => {
                tracing::info!(%view, seconds = started.elapsed().as_secs(), "still computing");
            }
        }
    }
}

fn date_list(dates: &BTreeSet<i32>) -> Expr {
    col(EVENT_DATE).in_list(
        dates
            .iter()
            .map(|d| lit(ScalarValue::Date32(Some(*d))))
            .collect(),
        false,
    )
}

/// Writes `batches` as the view's rows for `dates` (every date when `None`) in one commit
/// carrying `commit`. A redefined view is replaced whole, schema included: the dates it kept
/// were computed under the old definition.
async fn publish(
    table: DeltaTable,
    layout: &ViewLayout,
    batches: Vec<RecordBatch>,
    dates: Option<&BTreeSet<i32>>,
    redefined: bool,
    commit: &ViewCommit,
) -> Result<DeltaTable> {
    let url = table.table_url().to_string();
    let metadata = [(
        COMMIT_KEY.to_owned(),
        serde_json::to_value(commit).expect("serialises"),
    )];
    let properties = CommitProperties::default().with_metadata(metadata);
    let batches = if batches.is_empty() {
        vec![RecordBatch::new_empty(layout.schema.clone())]
    } else {
        batches
    };
    let write = table
        .write(batches)
        .with_partition_columns([EVENT_DATE])
        .with_commit_properties(properties);
    let write = match dates {
        _ if redefined => write
            .with_save_mode(SaveMode::Overwrite)
            .with_schema_mode(SchemaMode::Overwrite),
        Some(dates) if dates.is_empty() => write.with_save_mode(SaveMode::Append),
        Some(dates) => write
            .with_save_mode(SaveMode::Overwrite)
            .with_replace_where(date_list(dates)),
        None => write.with_save_mode(SaveMode::Overwrite),
    };
    write
        .await
        .map_err(|source| Error::Delta { table: url, source })
}
