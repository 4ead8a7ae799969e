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
//! A source whose views fail (its raw table unreadable, a view's query failing) is recorded
//! and the run goes on with the next source; the run fails at the end, naming each source that
//! did. Last, every table is vacuumed ([`crate::lake::vacuum`]) while the run still holds the lock.
//!
//! A run that dies before a view's commit leaves that view as it was; the next run starts
//! from the view's own watermark, so it recomputes what the dead run did not publish.

use std::collections::BTreeSet;
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
use lambdaflow_common::config::Config;
use lambdaflow_common::layout::ViewLayout;
use lambdaflow_common::schema::{EVENT_DATE, raw_schema};
use lambdaflow_common::source::SourceConfig;
use lambdaflow_common::timestamp::format_date;
use lambdaflow_common::view::ViewDef;
use lambdaflow_common::view::fingerprint;
use lambdaflow_common::watermark::Watermark;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::lake::retention::Expire;
use crate::lake::status::status;
use crate::lake::vacuum::Vacuum;
use crate::lake::{Lake, open_or_create, partition_dates};
use crate::metrics;
use crate::views::lock::{BatchLock, RunLock};
use crate::views::recompute::view_frame;
use crate::views::records::{
    History, Mode, RunRecord, RunStatus, SourceOutcome, Trigger, ViewOutcome, now,
};
use crate::views::sketch_udf;
use crate::views::watermark::{COMMIT_KEY, ViewCommit, dates_changed, raw_watermark, view_commit};

/// How often a long view computation logs that it is still going.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// A batch run with its options; [`BatchRun::run`] executes it.
#[derive(Debug)]
pub struct BatchRun {
    config: Arc<Config>,
    lake: Lake,
    history: History,
    record: RunRecord,
    cancel: CancellationToken,
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
        }
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

    async fn views(&mut self, lock: &RunLock) -> Result<()> {
        let config = self.config.clone();
        let mut failed = Vec::new();
        for source in &config.sources {
            let outcome = self.source(&config.scoped(source), lock).await;
            let Err(e) = outcome else { continue };
            let recorded = self.record.sources.last_mut();
            recorded.expect("each source records itself first").error = Some(e.to_string());
            if config.sources.len() == 1 || matches!(e, Error::Cancelled | Error::LockLost { .. }) {
                return Err(e);
            }
            tracing::error!(run = %self.record.id, source = %source.name, error = %e, "a source's views failed; the run goes on with the next source");
            failed.push(format!("source {} ({e})", source.name));
        }
        self.vacuum().await;
        match failed.is_empty() {
            true => Ok(()),
            false => Err(Error::SourcesFailed(failed.join(", "))),
        }
    }

    /// Applies retention to the tables of `config`'s one source and brings every view over it
    /// up to its raw table's current version.
    async fn source(&mut self, config: &Config, lock: &RunLock) -> Result<()> {
        let source = config.source();
        let several = self.config.sources.len() > 1;
        self.record.sources.push(SourceOutcome {
            name: source.name.clone(),
            ..SourceOutcome::default()
        });
        let lake = self.lake.clone();
        let expire = Expire::new(config, &lake);
        self.record.expired.extend(expire.run().await?);
        let raw_url = self.lake.raw(&source.name);
        let raw = open_or_create(&raw_url, &raw_schema(source), &[EVENT_DATE]).await?;
        let raw_dates = partition_dates(&raw, EVENT_DATE)?;
        let watermark = raw_watermark(&raw, &source.topic).await?;
        tracing::info!(run = %self.record.id, source = %source.name, raw_version = watermark.raw_version, offsets = ?watermark.offsets, "batch run reading the raw table");
        if !several {
            self.record.raw_version = Some(watermark.raw_version);
            self.record.watermark = Some(watermark.clone());
        }
        let outcome = self.record.sources.last_mut().expect("pushed above");
        outcome.raw_version = Some(watermark.raw_version);
        outcome.watermark = Some(watermark.clone());
        self.history.save(&self.record).await?;

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
        let mut all_dates: BTreeSet<String> = self.record.dates.iter().cloned().collect();
        let views = &config.views;
        for (i, view) in views.iter().enumerate() {
            let progress = format!("view {}/{}: {}", i + 1, views.len(), view.name);
            self.record.progress = Some(match several {
                true => format!("{}: {progress}", source.name),
                false => progress,
            });
            self.history.save(&self.record).await?;
            let started = Instant::now();
            let (outcome, dates) = self
                .view(
                    &ctx,
                    (source, &raw, &raw_dates),
                    provider.clone(),
                    (view, expire.view_cutoff(&view.name)),
                    (&watermark, lock),
                )
                .await?;
            let outcome = ViewOutcome {
                seconds: started.elapsed().as_secs_f64(),
                ..outcome
            };
            tracing::info!(run = %self.record.id, view = %view.name, mode = ?outcome.mode, dates = outcome.dates, rows_read = outcome.rows_read, rows_written = outcome.rows_written, seconds = format!("{:.2}", outcome.seconds), "view published");
            self.record.rows_read += outcome.rows_read;
            self.record.rows_written += outcome.rows_written;
            all_dates.extend(dates.iter().map(|d| format_date(*d)));
            self.record.dates = all_dates.iter().cloned().collect();
            self.record.views.push(outcome);
        }
        Ok(())
    }

    /// Vacuums every table once the views are published, then refreshes the storage gauges.
    /// A failure is logged and recorded, not the run's: its views are published, and the next
    /// run vacuums again.
    async fn vacuum(&mut self) {
        self.record.progress = Some("vacuum".into());
        match Vacuum::new(&self.config, &self.lake).run().await {
            Ok(vacuumed) => self.record.vacuumed = vacuumed,
            Err(e) => {
                tracing::warn!(run = %self.record.id, error = %e, "vacuum failed; the next batch run tries again");
                metrics::VACUUM_FAILURES.inc();
                self.record.vacuum_error = Some(e.to_string());
            }
        }
        if let Err(e) = status(&self.config, &self.lake).await {
            tracing::warn!(run = %self.record.id, error = %e, "reading the lake's storage status failed");
        }
    }

    /// Brings one view up to `watermark`. `raw_dates` are the dates the raw table holds after
    /// retention, `cutoff` the oldest date the view keeps: no date outside both is computed,
    /// so a view keeps the dates whose raw rows expired and never recomputes them from a
    /// partial raw date.
    async fn view(
        &self,
        ctx: &SessionContext,
        (source, raw, raw_dates): (&SourceConfig, &DeltaTable, &BTreeSet<i32>),
        provider: Arc<dyn datafusion::catalog::TableProvider>,
        (view, cutoff): (&ViewDef, Option<i32>),
        (watermark, lock): (&Watermark, &RunLock),
    ) -> Result<(ViewOutcome, BTreeSet<i32>)> {
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
        };
        let dates = match &previous {
            Some(p) if !self.record.full && !redefined => {
                if p.watermark.raw_version == watermark.raw_version {
                    outcome.mode = Mode::Unchanged;
                    return Ok((outcome, BTreeSet::new()));
                }
                if p.watermark.raw_version < watermark.raw_version {
                    dates_changed(raw, p.watermark.raw_version, watermark.raw_version).await?
                } else {
                    None
                }
            }
            _ => None,
        };
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
        let (rows_read, scanned) = raw_rows(raw, dates.as_ref())?;
        outcome.rows_read = rows_read;
        outcome.dates = scanned.len();
        let frame = view_frame(ctx, provider, source, view, &layout, dates.as_ref())
            .map_err(|source| query_err(&url, source))?;
        let batches = with_progress(&view.name, frame.collect())
            .await
            .map_err(|source| query_err(&url, source))?;
        outcome.rows_written = batches.iter().map(|b| b.num_rows() as u64).sum();
        let commit = ViewCommit {
            watermark: watermark.clone(),
            definition,
            run_id: self.record.id.clone(),
        };
        // A run paused past the lock's time to live may have been taken over: it must not
        // publish over the run that now holds the lock.
        lock.confirm().await?;
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
