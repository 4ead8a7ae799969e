//! Backfill from files: `lambdaflow import`.
//!
//! Each file ([`files`]: NDJSON, CSV with a header, Parquet; local, a directory, a glob, or
//! under an `s3://` prefix) is read record by record into the archiver's validator
//! ([`records`]): valid events are appended to the source's raw table, refused records to its
//! quarantine table with the file as `topic`, partition −1 and the line (row) as `offset`; a
//! valid event's raw row carries the same coordinates. Events are deduplicated by (date, id)
//! against the raw table and against each other, as the archiver does.
//!
//! Exactly once per file content: every commit carries a Delta `txn` whose app id is
//! `import-<BLAKE3 hash of the file>` and whose version is the last line (row) the table holds of
//! the file, [`DONE`] once the whole file is in. An import reads a file from its start and
//! appends to each table only the records past that table's version: one killed half way
//! resumes where each of its commits left off, and a file already imported, under any name,
//! adds nothing (a file is its exact content: one line appended makes another file, whose
//! refused records are quarantined again). Two imports of one file at once: before each commit
//! an import checks that the file's `txn` versions are still the ones it committed, and Delta
//! refuses a commit of the same app id racing another, so the second stops with an error.
//!
//! Beside a live archiver, each writer reads the commits of the other before it deduplicates a
//! chunk and loads the dates they added again, so an event both on Kafka and in a file is
//! stored once — unless both commit it within the same moment (between one's look and its
//! commit): two blind appends do not conflict in Delta. Import files whose events are not also
//! arriving on Kafka at that time, or stop the archiver while importing them.
//!
//! Validation judges `max_future` and `max_past` against the import's clock; a record on that
//! edge, read again after a kill that fell between a chunk's raw and quarantine commits, may be
//! judged otherwise the second time.
//!
//! Imported events have no Kafka offsets, so the speed layer never sees them: they count from
//! the first batch version computed after them.

pub mod files;
pub mod records;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::compute::filter_record_batch;
use deltalake::DeltaTable;
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::protocol::SaveMode;
use lambdaflow_common::config::Config;
use lambdaflow_common::schema::{self, EVENT_DATE, INGEST_DATE, KAFKA_OFFSET, KAFKA_PARTITION};
use lambdaflow_common::source::SourceConfig;
use lambdaflow_common::validate::Validator;
use lambdaflow_common::watermark::at_or_beyond;
use lambdaflow_dedup::SeenIds;
use serde::Serialize;

use self::files::{Format, ImportFile};
use self::records::{Chunk, ReadError};
use crate::error::{Error, Result};
use crate::lake::{self, Lake};
use crate::views::watermark::dates_added_by_others;

/// The `txn` version that says a table holds every record of the file.
pub const DONE: i64 = i64::MAX;

/// Chunks read ahead of the commits.
const READ_AHEAD: usize = 2;

/// What the import of one file did.
#[derive(Debug, Clone, Serialize)]
pub struct FileOutcome {
    /// The file, as named.
    pub file: String,
    /// Its format.
    pub format: Format,
    /// The BLAKE3 hash of its content.
    pub blake3: String,
    /// `true` when both tables already held all of it: the file was read only to hash it.
    pub already_imported: bool,
    /// Records read (valid or not); a file an earlier import stopped part way through is read
    /// from its start again, its committed records skipped.
    pub records: u64,
    /// Events appended to the raw table.
    pub archived: u64,
    /// Valid events dropped as already in the raw table or earlier in the import.
    pub duplicates: u64,
    /// Records appended to the quarantine table.
    pub quarantined: u64,
    /// Seconds it took.
    pub seconds: f64,
}

/// What an import did, per file and in all.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImportReport {
    /// The source imported into.
    pub source: String,
    /// Per file, in order.
    pub files: Vec<FileOutcome>,
    /// Records read in all.
    pub records: u64,
    /// Events appended to the raw table in all.
    pub archived: u64,
    /// Duplicates dropped in all.
    pub duplicates: u64,
    /// Records quarantined in all.
    pub quarantined: u64,
    /// Seconds the import took.
    pub seconds: f64,
}

/// How far an import is, handed to the caller after every commit.
#[derive(Debug, Clone)]
pub struct ImportProgress {
    /// The file being imported.
    pub file: String,
    /// Files done before it.
    pub files_done: usize,
    /// Files in all.
    pub files: usize,
    /// Bytes of every file read so far (estimated from rows within a Parquet file).
    pub bytes_done: u64,
    /// Bytes of every file.
    pub bytes: u64,
    /// Records read so far.
    pub records: u64,
    /// Since the import started.
    pub elapsed: Duration,
}

/// Told of an import's progress.
pub type OnProgress = Arc<dyn Fn(&ImportProgress) + Send + Sync>;

/// Imports files into one source's raw and quarantine tables.
pub struct Importer {
    source: SourceConfig,
    validator: Arc<Validator>,
    raw: DeltaTable,
    quarantine: DeltaTable,
    seen: SeenIds,
    /// The raw version up to which the commits of other writers were looked at.
    raw_checked_at: Option<u64>,
    /// The raw versions this importer committed.
    raw_own: BTreeSet<u64>,
    /// Refreshes of each table's state since it was last read afresh.
    raw_refreshes: u32,
    quarantine_refreshes: u32,
}

impl std::fmt::Debug for Importer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Importer")
            .field("source", &self.source.name)
            .finish_non_exhaustive()
    }
}

impl Importer {
    /// An importer into `source` of `config` (opening, or creating, its tables).
    pub async fn new(config: &Config, source: &SourceConfig) -> Result<Self> {
        let lake = Lake::new(&config.lake)?;
        let views: Vec<_> = config.views_of(&source.name).cloned().collect();
        let validator = Validator::new(source)
            .with_views(&views)
            .map_err(|e| Error::Import {
                file: format!("(source {})", source.name),
                message: format!("the source's view filters: {e}"),
            })?;
        let raw = lake::open_or_create(
            &lake.raw(&source.name),
            &schema::raw_schema(source),
            &[EVENT_DATE],
        )
        .await?;
        let quarantine = lake::open_or_create(
            &lake.quarantine(&source.name),
            &schema::quarantine_schema(),
            &[INGEST_DATE],
        )
        .await?;
        let seen = SeenIds::new(
            config.archive.dedup_dir.as_deref(),
            config.archive.dedup_max_dates,
        )?;
        Ok(Self {
            source: source.clone(),
            validator: Arc::new(validator),
            quarantine,
            raw_checked_at: raw.version(),
            raw_own: BTreeSet::new(),
            raw_refreshes: 0,
            quarantine_refreshes: 0,
            raw,
            seen,
        })
    }

    /// Imports `files` in order; `progress` is told after every commit.
    pub async fn import(
        mut self,
        files: &[ImportFile],
        progress: Option<OnProgress>,
    ) -> Result<ImportReport> {
        let started = Instant::now();
        let bytes: u64 = files.iter().map(|f| f.size).sum();
        let mut report = ImportReport {
            source: self.source.name.clone(),
            ..ImportReport::default()
        };
        let mut bytes_before = 0;
        for (i, file) in files.iter().enumerate() {
            let before = bytes_before;
            let tell = |bytes_done: u64, records: u64| {
                if let Some(progress) = &progress {
                    progress(&ImportProgress {
                        file: file.name.clone(),
                        files_done: i,
                        files: files.len(),
                        bytes_done: before + bytes_done,
                        bytes,
                        records,
                        elapsed: started.elapsed(),
                    });
                }
            };
            let outcome = self.file(file, report.records, &tell).await?;
            tracing::debug!(file = %outcome.file, records = outcome.records, archived = outcome.archived, duplicates = outcome.duplicates, quarantined = outcome.quarantined, already_imported = outcome.already_imported, "file imported");
            report.records += outcome.records;
            report.archived += outcome.archived;
            report.duplicates += outcome.duplicates;
            report.quarantined += outcome.quarantined;
            report.files.push(outcome);
            tell(file.size, report.records);
            bytes_before += file.size;
        }
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    async fn file(
        &mut self,
        file: &ImportFile,
        records_before: u64,
        tell: &impl Fn(u64, u64),
    ) -> Result<FileOutcome> {
        let started = Instant::now();
        let local = file.fetch().await?;
        let app_id = format!("import-{}", local.blake3);
        let mut outcome = FileOutcome {
            file: file.name.clone(),
            format: file.format,
            blake3: local.blake3.clone(),
            already_imported: false,
            records: 0,
            archived: 0,
            duplicates: 0,
            quarantined: 0,
            seconds: 0.0,
        };
        // What each table holds of the file, read once and checked before every commit: this
        // import is its one writer from here on.
        let mut held = Held {
            raw: held(&self.raw, &app_id).await?,
            quarantine: held(&self.quarantine, &app_id).await?,
        };
        if held.raw == DONE && held.quarantine == DONE {
            outcome.already_imported = true;
            return Ok(outcome);
        }
        if held.raw > 0 || held.quarantine > 0 {
            tracing::info!(file = %file.name, raw_line = held.raw, quarantine_line = held.quarantine, "an earlier import of this file stopped part way: resuming after what it committed");
        }

        let (sender, mut chunks) = tokio::sync::mpsc::channel::<Chunk>(READ_AHEAD);
        let validator = self.validator.clone();
        let (path, format, topic) = (local.path.clone(), file.format, file.name.clone());
        let size = local.size;
        let reader = tokio::task::spawn_blocking(move || {
            records::read(&path, size, format, &validator, &topic, |chunk| {
                sender.blocking_send(chunk).map_err(|_| ReadError::Stopped)
            })
        });
        let mut written = Ok(());
        while let Some(chunk) = chunks.recv().await {
            outcome.records += chunk.records as u64;
            let (bytes_done, last) = (chunk.bytes_done, chunk.last);
            written = self.commit(chunk, &app_id, &mut held, &mut outcome).await;
            if written.is_err() {
                break;
            }
            tell(bytes_done, records_before + outcome.records);
            tracing::debug!(file = %file.name, line = last, "chunk imported");
        }
        drop(chunks);
        let read = reader.await.map_err(|e| Error::Import {
            file: file.name.clone(),
            message: format!("the reader stopped: {e}"),
        })?;
        written.map_err(|e| Error::Import {
            file: file.name.clone(),
            message: e.to_string(),
        })?;
        read.map_err(|e| Error::Import {
            file: file.name.clone(),
            message: e.to_string(),
        })?;
        // Both tables now hold every record of the file.
        let done = Transaction::new(&app_id, DONE);
        if held.raw != DONE {
            self.check_raw(&app_id, held.raw).await?;
            let empty = RecordBatch::new_empty(schema::raw_schema(&self.source));
            append(&mut self.raw, empty, done.clone(), EVENT_DATE).await?;
            self.raw_own.extend(self.raw.version());
        }
        if held.quarantine != DONE {
            self.check_quarantine(&app_id, held.quarantine).await?;
            let empty = RecordBatch::new_empty(schema::quarantine_schema());
            append(&mut self.quarantine, empty, done, INGEST_DATE).await?;
        }
        outcome.seconds = started.elapsed().as_secs_f64();
        Ok(outcome)
    }

    /// Appends `chunk`'s events (deduplicated) and refused records past what each table holds
    /// of the file, each table in one commit that records the chunk's last line.
    async fn commit(
        &mut self,
        chunk: Chunk,
        app_id: &str,
        held: &mut Held,
        outcome: &mut FileOutcome,
    ) -> Result<()> {
        let txn = Transaction::new(app_id, chunk.last);
        if chunk.last > held.raw {
            let columns = (KAFKA_PARTITION, KAFKA_OFFSET);
            let events = past(&chunk.validated.events, columns, held.raw);
            let valid = events.num_rows() as u64;
            if valid > 0 {
                self.check_raw(app_id, held.raw).await?;
                let id_field = &self.source.id_field;
                let events =
                    lake::deduplicate(events, &mut self.seen, &self.raw, id_field, None).await?;
                outcome.duplicates += valid - events.num_rows() as u64;
                if events.num_rows() > 0 {
                    outcome.archived += events.num_rows() as u64;
                    append(&mut self.raw, events, txn.clone(), EVENT_DATE).await?;
                    self.raw_own.extend(self.raw.version());
                    held.raw = chunk.last;
                }
            }
        }
        if chunk.last > held.quarantine {
            let rejects = past(
                &chunk.validated.rejects,
                ("partition", "offset"),
                held.quarantine,
            );
            if rejects.num_rows() > 0 {
                self.check_quarantine(app_id, held.quarantine).await?;
                outcome.quarantined += rejects.num_rows() as u64;
                append(&mut self.quarantine, rejects, txn, INGEST_DATE).await?;
                held.quarantine = chunk.last;
            }
        }
        Ok(())
    }

    /// Moves the quarantine table to its latest version and refuses to go on if another import
    /// of the file committed since this one (its `txn` is not at `held`).
    async fn check_quarantine(&mut self, app_id: &str, held: i64) -> Result<()> {
        refresh(&mut self.quarantine, &mut self.quarantine_refreshes).await?;
        check_held(&self.quarantine, app_id, held).await
    }

    /// Moves the raw table to its latest version, refuses to go on if another import of the
    /// file committed since this one (its `txn` is not at `held`), and forgets the dates whose
    /// rows other writers added since the last look.
    async fn check_raw(&mut self, app_id: &str, held: i64) -> Result<()> {
        refresh(&mut self.raw, &mut self.raw_refreshes).await?;
        check_held(&self.raw, app_id, held).await?;
        if let (Some(since), Some(now)) = (self.raw_checked_at, self.raw.version())
            && now > since
        {
            let own = &self.raw_own;
            match dates_added_by_others(&self.raw, since, now, |v, _| own.contains(&v)).await? {
                Some(dates) => self.seen.forget(dates),
                None => self.seen.clear(),
            }
        }
        self.raw_checked_at = self.raw.version();
        Ok(())
    }
}

/// Refreshes after which the raw table's state is read afresh.
const RELOAD_EVERY: u32 = 100;

/// Moves `table` to its latest version, reading its state afresh every [`RELOAD_EVERY`]
/// refreshes: an advanced state keeps the file actions of every commit it applied, a fresh
/// read the live files only.
async fn refresh(table: &mut DeltaTable, refreshes: &mut u32) -> Result<()> {
    *refreshes += 1;
    if *refreshes >= RELOAD_EVERY {
        table.state = None;
        *refreshes = 0;
    }
    let url = table.table_url().to_string();
    table
        .update_state()
        .await
        .map_err(|source| Error::Delta { table: url, source })
}

/// Refuses to go on when `table` (just refreshed) no longer holds `held` of the file imported
/// as `app_id`: another import of the same file committed meanwhile.
async fn check_held(table: &DeltaTable, app_id: &str, held: i64) -> Result<()> {
    let url = table.table_url().to_string();
    let now = self::held(table, app_id).await?;
    if now != held {
        return Err(Error::Import {
            file: url,
            message: format!(
                "another import of the same file committed meanwhile (line {now} where this one left {held}); it goes on alone"
            ),
        });
    }
    Ok(())
}

/// The last line each table holds of the file being imported.
struct Held {
    raw: i64,
    quarantine: i64,
}

/// The last line `table` holds of the file imported as `app_id`: 0 for none, [`DONE`] for
/// all of it.
async fn held(table: &DeltaTable, app_id: &str) -> Result<i64> {
    let delta = |source| Error::Delta {
        table: table.table_url().to_string(),
        source,
    };
    let version = table
        .snapshot()
        .map_err(delta)?
        .transaction_version(table.log_store().as_ref(), app_id)
        .await
        .map_err(delta)?;
    Ok(version.unwrap_or(0))
}

/// The rows of `batch` whose `offset_col` is past `held`.
fn past(batch: &RecordBatch, (partition_col, offset_col): (&str, &str), held: i64) -> RecordBatch {
    let keep = at_or_beyond(batch, (partition_col, offset_col), |_| {
        held.saturating_add(1)
    });
    if keep.true_count() == batch.num_rows() {
        return batch.clone();
    }
    filter_record_batch(batch, &keep).expect("mask matches the batch")
}

/// Appends `batch` to `table` (partitioned by `partition_by`) in one commit carrying `txn`,
/// and moves `table` to it.
async fn append(
    table: &mut DeltaTable,
    batch: RecordBatch,
    txn: Transaction,
    partition_by: &str,
) -> Result<()> {
    use deltalake::kernel::transaction::{CommitConflictError, TransactionError};
    let url = table.table_url().to_string();
    *table = table
        .clone()
        .write(vec![batch])
        .with_partition_columns([partition_by])
        .with_save_mode(SaveMode::Append)
        .with_commit_properties(CommitProperties::default().with_application_transaction(txn))
        .await
        .map_err(|source| match source {
            deltalake::DeltaTableError::Transaction {
                source: TransactionError::CommitConflict(CommitConflictError::ConcurrentTransaction),
            } => Error::Import {
                file: url,
                message: "another import of the same file committed meanwhile; it goes on alone"
                    .into(),
            },
            source => Error::Delta { table: url, source },
        })?;
    Ok(())
}
