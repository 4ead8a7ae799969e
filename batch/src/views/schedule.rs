//! Batch runs in a long-running process: on the cron schedule, or on request from the API.
//!
//! [`Batches`] owns the runs started in this process. Within the process it refuses a second
//! run while one is queued or running; across processes the lock in [`crate::views::lock`] does.

use std::sync::{Arc, Mutex};

use chrono::Utc;
use lambdaflow_common::config::Config;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::{Error, Result};
use crate::lake::Lake;
use crate::views::lock::BatchLock;
use crate::views::records::{History, RunRecord, Trigger};
use crate::views::run::{BatchRun, TaskProgress};

/// The batch runs of one process.
#[derive(Debug)]
pub struct Batches {
    config: Arc<Config>,
    lake: Lake,
    history: History,
    lock: BatchLock,
    /// The run this process has queued or is running.
    current: Mutex<Option<String>>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl Batches {
    /// Runs of `config`'s views; every run stops when `shutdown` fires.
    pub fn new(config: Arc<Config>, shutdown: CancellationToken) -> Result<Arc<Self>> {
        let lake = Lake::new(&config.lake)?;
        let history = History::new(&lake)?;
        Ok(Arc::new(Self {
            config,
            lake,
            lock: BatchLock::new(history.clone()),
            history,
            current: Mutex::new(None),
            tasks: TaskTracker::new(),
            shutdown,
        }))
    }

    /// The run records.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Claims the right to run for `record`, or names the run that holds it.
    async fn claim(&self, record: &RunRecord) -> Result<()> {
        {
            let mut current = self.current.lock().expect("not poisoned");
            if let Some(running) = current.as_ref() {
                // A run of this process, queued or running; when it took the lock is in its
                // record, not here.
                return Err(Error::RunInProgress {
                    running: running.clone(),
                    since: None,
                });
            }
            *current = Some(record.id.clone());
        }
        match self.lock.holder().await {
            Ok(None) => Ok(()),
            Ok(Some(holder)) => {
                self.release();
                Err(Error::RunInProgress {
                    running: holder.run_id,
                    since: holder.since,
                })
            }
            Err(e) => {
                self.release();
                Err(e)
            }
        }
    }

    fn release(&self) {
        *self.current.lock().expect("not poisoned") = None;
    }

    fn run_of(&self, record: RunRecord) -> BatchRun {
        BatchRun::new(self.config.clone(), self.lake.clone(), self.history.clone())
            .with_record(record)
            .with_cancel(self.shutdown.clone())
    }

    /// Queues a run and starts it in the background; returns its id at once.
    pub async fn submit(self: &Arc<Self>, trigger: Trigger, full: bool) -> Result<String> {
        let record = RunRecord::queued(trigger, full);
        self.claim(&record).await?;
        if let Err(e) = self.history.save(&record).await {
            self.release();
            return Err(e);
        }
        let id = record.id.clone();
        let this = self.clone();
        self.tasks.spawn(async move {
            // The outcome is in the run record and the log.
            let _ = this.run_of(record).run().await;
            this.release();
        });
        Ok(id)
    }

    /// One run now, in the foreground, telling `progress` of every task's change of state.
    pub async fn run(
        &self,
        trigger: Trigger,
        full: bool,
        progress: Option<TaskProgress>,
    ) -> Result<RunRecord> {
        let record = RunRecord::queued(trigger, full);
        self.claim(&record).await?;
        let run = self.run_of(record);
        let run = match progress {
            Some(progress) => run.with_task_progress(progress),
            None => run,
        };
        let outcome = run.run().await;
        self.release();
        outcome
    }

    /// Runs on the configured cron schedule until `shutdown`; a failed run is recorded and
    /// logged, and the next one retries.
    pub async fn schedule(self: Arc<Self>) -> Result<()> {
        let schedule = self.config.batch.cron();
        tracing::info!(schedule = %self.config.batch.schedule, "batch schedule started (UTC)");
        loop {
            let Some(next) = schedule.upcoming(Utc).next() else {
                tracing::warn!("the batch schedule has no future run");
                self.shutdown.cancelled().await;
                break;
            };
            let wait = (next - Utc::now()).to_std().unwrap_or_default();
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.shutdown.cancelled() => break,
            }
            match self.run(Trigger::Schedule, false, None).await {
                Ok(_) => {}
                Err(Error::RunInProgress { running, .. }) => {
                    tracing::info!(%running, "scheduled batch run skipped: a run is in progress");
                }
                Err(Error::Cancelled) => break,
                Err(error) => {
                    tracing::warn!(%error, "scheduled batch run failed; the next one retries")
                }
            }
        }
        self.tasks.close();
        self.tasks.wait().await;
        Ok(())
    }

    /// Waits for runs started by [`Self::submit`] to end (they stop on `shutdown`).
    pub async fn drain(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}
