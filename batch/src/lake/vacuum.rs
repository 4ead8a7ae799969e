//! Vacuum: the files and log entries of every table that no reader needs any more, deleted;
//! checkpoints written every `lake.checkpoint_interval` commits.
//!
//! Compaction, retention and view recomputes replace files without deleting them, and every
//! commit adds a log entry, so without this a lake grows forever. Each table is vacuumed in
//! full mode (delta-rs' `VacuumMode::Full`): a data file is deleted when the latest version
//! does not reference it and it has been unreferenced for `lake.vacuum_retention` — a file
//! removed by a commit that long ago, or a file that no commit ever added (left by a run or an
//! archiver killed between writing and committing) last written that long ago.
//!
//! Two readers pin older versions, and their files and log entries are kept whatever their
//! age:
//! - each view's watermark names the raw version it was computed at: the serving layer reads
//!   raw ids at that version to deduplicate, and the next incremental run reads the raw log
//!   from it to find the dates that changed;
//! - each view's latest lambdaflow commit holds its watermark: its log entry must stay.
//!
//! A batch run in progress pins the raw version it reads; vacuum takes the same run lock (or
//! runs inside the batch run, after its views are published), so it never runs beside one.
//!
//! delta-rs' own log cleanup after each commit is turned off on every table lambdaflow creates
//! (and on older tables at their first vacuum), since it ignores those pins.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use deltalake::DeltaTable;
use deltalake::checkpoints::{cleanup_expired_logs_for, create_checkpoint};
use deltalake::kernel::Version;
use deltalake::operations::vacuum::{Clock, VacuumMode};
use deltalake::table::config::TablePropertiesExt;
use futures::TryStreamExt;
use lambdaflow_common::config::Config;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::lake::{LOG_CLEANUP_PROPERTY, Lake, LakeTable, open, tables};
use crate::metrics;
use crate::views::lock::BatchLock;
use crate::views::records::{History, format_time};
use crate::views::watermark::view_commit_at;

/// Where the vacuum records live under `<lake>/_lambdaflow/`.
const RECORDS: &str = "vacuum";

/// What vacuum did, or would do, to one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vacuumed {
    /// The table, relative to the lake root (`raw/events`, `views/revenue`).
    pub table: String,
    /// When it ran (RFC 3339).
    pub at: String,
    /// The table's version after it.
    pub version: Option<u64>,
    /// Older versions kept readable for a pinned reader, oldest first.
    pub pinned: Vec<u64>,
    /// Data files deleted (in a dry run: that would be deleted).
    pub files: u64,
    /// Log entries deleted (0 in a dry run).
    pub log_files: u64,
    /// The version a checkpoint was written at, when one was.
    pub checkpoint: Option<u64>,
}

/// One vacuum pass over every table of a config; [`Vacuum::run`] applies it.
#[derive(Debug)]
pub struct Vacuum<'a> {
    config: &'a Config,
    lake: &'a Lake,
    now: DateTime<Utc>,
    dry_run: bool,
}

impl<'a> Vacuum<'a> {
    /// Vacuum of `config`'s tables in `lake`, as of now.
    pub fn new(config: &'a Config, lake: &'a Lake) -> Self {
        Self {
            config,
            lake,
            now: Utc::now(),
            dry_run: false,
        }
    }

    /// Reports the data files that would be deleted and deletes nothing.
    pub fn with_dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// Vacuums as if the time were `now`: how files age past `lake.vacuum_retention` without
    /// waiting for it.
    pub fn with_now(mut self, now: DateTime<Utc>) -> Self {
        self.now = now;
        self
    }

    /// `lambdaflow lake vacuum`: [`Vacuum::run`] holding the batch run lock, so that it never
    /// runs beside a batch run (a dry run deletes nothing and takes none).
    pub async fn run_alone(&self) -> Result<Vec<Vacuumed>> {
        if self.dry_run {
            return self.run().await;
        }
        BatchLock::new(History::new(self.lake)?)
            .holding("vacuum", self.run())
            .await
    }

    /// Vacuums every table that exists, raw first, and records each outcome. A table that
    /// fails is logged and the others are still vacuumed (a source whose raw table is broken
    /// must not leave every other table to grow); the first failure is then the error. The
    /// caller holds the batch run lock.
    pub async fn run(&self) -> Result<Vec<Vacuumed>> {
        let history = History::new(self.lake)?;
        let pins = self.pins().await?;
        let mut report = Vec::new();
        let mut failed = None;
        for table in tables(self.config, self.lake) {
            match self.one(&table, &pins, &history).await {
                Ok(vacuumed) => report.extend(vacuumed),
                Err(error) => {
                    tracing::warn!(table = %table.name, %error, "vacuuming the table failed; the other tables go on");
                    failed.get_or_insert(error);
                }
            }
        }
        failed.map_or(Ok(report), Err)
    }

    /// Vacuums `table` if it exists, and records the outcome.
    async fn one(
        &self,
        table: &LakeTable,
        pins: &HashMap<String, BTreeSet<Version>>,
        history: &History,
    ) -> Result<Option<Vacuumed>> {
        let Some(delta) = open(&table.url, None).await? else {
            return Ok(None);
        };
        let pinned = pins.get(&table.name).cloned().unwrap_or_default();
        let vacuumed = self.table(table, delta, pinned).await?;
        if !self.dry_run {
            save(history, &vacuumed).await?;
            metrics::VACUUMED_FILES
                .with_label_values(&[&vacuumed.table])
                .inc_by(vacuumed.files);
            tracing::info!(table = %vacuumed.table, files = vacuumed.files, log_files = vacuumed.log_files, checkpoint = ?vacuumed.checkpoint, pinned = ?vacuumed.pinned, "table vacuumed");
        }
        Ok(Some(vacuumed))
    }

    /// The versions readers pin, by table name: each view's latest lambdaflow commit, and the
    /// version of its source's raw table that the view's watermark names.
    async fn pins(&self) -> Result<HashMap<String, BTreeSet<Version>>> {
        let mut pins: HashMap<String, BTreeSet<Version>> = HashMap::new();
        for table in tables(self.config, self.lake) {
            if table.view.is_none() {
                continue;
            }
            let Some(view) = open(&table.url, None).await? else {
                continue;
            };
            if let Some((version, commit)) = view_commit_at(&view).await? {
                pins.entry(table.name).or_default().insert(version);
                pins.entry(format!("raw/{}", table.source))
                    .or_default()
                    .insert(commit.watermark.raw_version);
            }
        }
        Ok(pins)
    }

    async fn table(
        &self,
        table: &LakeTable,
        mut delta: DeltaTable,
        pinned: BTreeSet<Version>,
    ) -> Result<Vacuumed> {
        let err = |source| Error::Delta {
            table: table.url.to_string(),
            source,
        };
        let current = delta.version().unwrap_or_default();
        // A pin past the current version names another table that once lived here.
        let pinned: Vec<Version> = pinned.into_iter().filter(|v| *v <= current).collect();
        if !self.dry_run
            && delta
                .snapshot()
                .map_err(err)?
                .table_config()
                .enable_expired_log_cleanup()
        {
            delta = delta
                .set_tbl_properties()
                .with_properties(HashMap::from([(
                    LOG_CLEANUP_PROPERTY.as_ref().to_owned(),
                    "false".to_owned(),
                )]))
                .await
                .map_err(err)?;
        }
        let retention = self.config.lake.vacuum_retention;
        let (delta, deleted) = delta
            .vacuum()
            .with_mode(VacuumMode::Full)
            .with_retention_period(
                chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX),
            )
            .with_enforce_retention_duration(false)
            .with_keep_versions(&pinned)
            .with_clock(Arc::new(FixedClock(self.now.timestamp_millis())))
            .with_dry_run(self.dry_run)
            .await
            .map_err(err)?;
        let version = delta.version();
        let mut vacuumed = Vacuumed {
            table: table.name.clone(),
            at: format_time(&self.now),
            version,
            pinned: pinned.clone(),
            files: deleted.files_deleted.len() as u64,
            log_files: 0,
            checkpoint: None,
        };
        if self.dry_run {
            return Ok(vacuumed);
        }
        let version = version.unwrap_or_default();
        let last_checkpoint = last_checkpoint(&delta).await?;
        // A writer beside vacuum may have checkpointed a version newer than the one read.
        let due = match last_checkpoint {
            Some(last) => version.saturating_sub(last) >= self.config.lake.checkpoint_interval,
            None => version + 1 >= self.config.lake.checkpoint_interval,
        };
        if due {
            create_checkpoint(&delta, None).await.map_err(err)?;
            vacuumed.checkpoint = Some(version);
        }
        let keep = pinned.first().copied().unwrap_or(version).min(version);
        let cutoff =
            self.now.timestamp_millis() - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        vacuumed.log_files =
            cleanup_expired_logs_for(keep, delta.log_store().as_ref(), cutoff, None)
                .await
                .map_err(err)? as u64;
        Ok(vacuumed)
    }
}

/// delta-rs asks a [`Clock`] for the time it compares file ages with.
#[derive(Debug)]
struct FixedClock(i64);

impl Clock for FixedClock {
    fn current_timestamp_millis(&self) -> i64 {
        self.0
    }
}

/// What a table's `_delta_log/` and data directories hold on storage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Storage {
    /// Bytes of every object under the table's root: data files, live or not, and the log.
    pub bytes: u64,
    /// Files under `_delta_log/`: commits, checkpoints and the checkpoint pointer.
    pub log_files: u64,
}

/// Lists everything under `table`'s root (`prefix` `None`), or under one prefix of it.
pub(super) async fn list(
    table: &DeltaTable,
    prefix: Option<&Path>,
) -> Result<Vec<object_store::ObjectMeta>> {
    table
        .log_store()
        .object_store(None)
        .list(prefix)
        .try_collect()
        .await
        .map_err(|source| Error::Store {
            context: format!("listing {}", table.table_url()),
            source,
        })
}

/// The version of a checkpoint file named `name` under `_delta_log/`.
pub(super) fn checkpoint_version(name: &str) -> Option<Version> {
    let (version, rest) = name.split_once('.')?;
    rest.starts_with("checkpoint")
        .then(|| version.parse().ok())?
}

/// The version of `table`'s newest checkpoint, from a listing of its log alone.
async fn last_checkpoint(table: &DeltaTable) -> Result<Option<Version>> {
    let log = Path::from("_delta_log");
    Ok(list(table, Some(&log))
        .await?
        .iter()
        .filter_map(|o| o.location.filename().and_then(checkpoint_version))
        .max())
}

/// Everything under `table`'s root: its bytes and its log files.
pub async fn storage(table: &DeltaTable) -> Result<Storage> {
    let mut storage = Storage::default();
    for object in list(table, None).await? {
        storage.bytes += object.size;
        if object.location.as_ref().starts_with("_delta_log/") {
            storage.log_files += 1;
        }
    }
    Ok(storage)
}

fn record_path(table: &str) -> Path {
    Path::from(format!("{RECORDS}/{table}.json"))
}

async fn save(history: &History, vacuumed: &Vacuumed) -> Result<()> {
    let body = serde_json::to_vec_pretty(vacuumed).expect("records serialise");
    history
        .store()
        .put(&record_path(&vacuumed.table), PutPayload::from(body))
        .await
        .map_err(history.store_err("writing a vacuum record"))?;
    Ok(())
}

/// The last vacuum of each table that had one, by table name.
pub async fn last_vacuums(lake: &Lake) -> Result<BTreeMap<String, Vacuumed>> {
    let history = History::new(lake)?;
    let prefix = Path::from(RECORDS);
    let objects: Vec<_> = history
        .store()
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(history.store_err("listing the vacuum records"))?;
    let mut last = BTreeMap::new();
    for object in objects {
        let bytes = history
            .store()
            .get(&object.location)
            .await
            .map_err(history.store_err("reading a vacuum record"))?
            .bytes()
            .await
            .map_err(history.store_err("reading a vacuum record"))?;
        let record: Vacuumed =
            serde_json::from_slice(&bytes).map_err(|source| Error::Unreadable {
                table: object.location.to_string(),
                what: "vacuum record".into(),
                source,
            })?;
        last.insert(record.table.clone(), record);
    }
    Ok(last)
}
