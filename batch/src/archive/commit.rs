//! Idempotent Delta appends keyed by Kafka offsets.
//!
//! Every commit carries one `txn` action per Kafka partition it covers: app id
//! `archiver-<topic>-<partition>` (in a partition's epoch 0) or
//! `archiver-<topic>-<partition>-e<N>` (in epoch N, begun by an accepted topic reset,
//! [`OffsetTable::begin_epochs`]), version = the last offset the table holds for that
//! partition in that epoch. A partition's current epoch is the highest with a `txn`, and its
//! offsets compare only within it. delta-rs does not refuse a repeated version, so [`OffsetTable::append`] checks the
//! versions before writing, and after a failed commit re-reads the log to learn whether it
//! landed before it tries again: the outcome is checked, never guessed. Two writers can both
//! pass the check before writing; delta-rs then refuses the loser's commit
//! (`ConcurrentTransaction`, the winner's commit has a `txn` of the same app id), and the
//! loser's re-read finds the winner's offsets and stops with [`Error::ConcurrentWriter`]
//! instead of retrying: no offset is stored twice and no `txn` version goes backwards.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use deltalake::DeltaTable;
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::protocol::SaveMode;

use crate::archive::compact::{SmallFiles, compact};
use crate::error::{Error, Result};
use crate::metrics;
use crate::views::watermark::dates_added_by_others;

/// How often a failing commit is tried before the archiver gives up.
const MAX_ATTEMPTS: u32 = 8;

/// Refreshes after which the table's state is read afresh from the log instead of advanced.
/// An advanced state keeps a record batch of file actions per commit it applied, emptied but
/// never dropped, so a long-lived writer's handle would grow with every commit; a fresh read
/// starts from the last checkpoint and holds the live files only.
const RELOAD_EVERY: u32 = 100;

/// A Delta table appended to by one writer, with the Kafka offsets it holds per partition.
#[derive(Debug)]
pub struct OffsetTable {
    table: DeltaTable,
    topic: String,
    partition_by: &'static str,
    schema: SchemaRef,
    /// Every partition of the topic; each gets a `txn` in the first commit (`-1` while nothing
    /// was read), so that readers find the partitions by probing 0, 1, … until one is missing.
    partitions: Vec<i32>,
    /// Partition → last offset held, in the partition's current epoch.
    offsets: BTreeMap<i32, i64>,
    /// Partition → its current epoch (absent: 0).
    epochs: BTreeMap<i32, u32>,
    /// The table version `offsets` were read at or written by: while the log holds no later
    /// version, no other writer can have moved them, and they are not read again (each read
    /// replays the log since the last checkpoint, once per partition).
    known_at: Option<u64>,
    /// Small files per partition, when the table is auto-compacted ([`Self::with_compaction`]).
    compaction: Option<(Labels, SmallFiles)>,
    /// Refreshes since the state was last read afresh ([`RELOAD_EVERY`]).
    refreshes: u32,
    /// The version up to which [`Self::dates_added_by_others`] looked.
    others_checked_at: Option<u64>,
}

/// What the metrics of a table's compactions and size say it is: the source and which of its
/// tables (`raw`, `quarantine`).
#[derive(Debug, Clone)]
pub struct Labels {
    /// The source's name.
    pub source: String,
    /// The table, of the source's.
    pub table: &'static str,
}

/// The app id of a partition's `txn` action in epoch 0.
pub fn app_id(topic: &str, partition: i32) -> String {
    format!("archiver-{topic}-{partition}")
}

/// The app id of a partition's `txn` action in `epoch`.
pub fn epoch_app_id(topic: &str, partition: i32, epoch: u32) -> String {
    match epoch {
        0 => app_id(topic, partition),
        n => format!("archiver-{topic}-{partition}-e{n}"),
    }
}

/// `partition`'s current epoch in `table` (at its loaded version) and the last offset the
/// table holds in it; `None` when the table has no `txn` for the partition.
pub async fn held(
    table: &DeltaTable,
    topic: &str,
    partition: i32,
) -> deltalake::DeltaResult<Option<(u32, i64)>> {
    let snapshot = table.snapshot()?;
    let log = table.log_store();
    let version =
        |epoch| snapshot.transaction_version(log.as_ref(), epoch_app_id(topic, partition, epoch));
    let Some(mut offset) = version(0).await? else {
        return Ok(None);
    };
    let mut epoch = 0;
    while let Some(next) = version(epoch + 1).await? {
        epoch += 1;
        offset = next;
    }
    Ok(Some((epoch, offset)))
}

impl OffsetTable {
    /// Wraps `table` (of `schema`, partitioned by `partition_by`) and reads the offsets it
    /// holds for `partitions` of `topic`.
    pub async fn load(
        table: DeltaTable,
        (schema, partition_by): (SchemaRef, &'static str),
        topic: &str,
        partitions: &[i32],
    ) -> Result<Self> {
        let mut this = Self {
            table,
            topic: topic.to_owned(),
            partition_by,
            schema,
            partitions: partitions.to_vec(),
            offsets: BTreeMap::new(),
            epochs: BTreeMap::new(),
            known_at: None,
            compaction: None,
            refreshes: 0,
            others_checked_at: None,
        };
        for (p, (epoch, offset)) in this.read_offsets(partitions).await? {
            this.offsets.insert(p, offset);
            this.epochs.insert(p, epoch);
        }
        this.known_at = this.table.version();
        this.others_checked_at = this.known_at;
        Ok(this)
    }

    /// Moves the table to its latest version and returns the event dates of the rows other
    /// writers (an import) added since the last look, whose ids deduplication has not seen;
    /// `None` when the log between can no longer be read (every date is then suspect).
    pub async fn dates_added_by_others(&mut self) -> Result<Option<BTreeSet<i32>>> {
        self.refresh().await?;
        let (Some(since), Some(now)) = (self.others_checked_at, self.table.version()) else {
            self.others_checked_at = self.table.version();
            return Ok(Some(BTreeSet::new()));
        };
        let own = format!("archiver-{}-", self.topic);
        let archived = |_, actions: &[serde_json::Value]| {
            actions.iter().any(|action| {
                action
                    .pointer("/txn/appId")
                    .and_then(|id| id.as_str())
                    .is_some_and(|id| id.starts_with(&own))
            })
        };
        let dates = match now > since {
            true => dates_added_by_others(&self.table, since, now, archived).await?,
            false => Some(BTreeSet::new()),
        };
        self.others_checked_at = Some(now);
        Ok(dates)
    }

    /// Auto-compacts the table ([`crate::archive::compact`]) once `min_files` files were
    /// appended to a partition since its last compaction (never when `0`); `labels` label its
    /// metrics.
    pub fn with_compaction(mut self, labels: Labels, min_files: usize) -> Result<Self> {
        let files =
            SmallFiles::count(&self.table, self.partition_by, min_files).map_err(|source| {
                Error::Delta {
                    table: self.url(),
                    source,
                }
            })?;
        self.compaction = Some((labels, files));
        Ok(self)
    }

    /// Adds partitions that appeared in the topic since [`Self::load`]: the next commit
    /// records them (at `-1` until they are read), so that readers probing partitions 0, 1, …
    /// find every one.
    pub fn add_partitions(&mut self, partitions: &[i32]) {
        for p in partitions {
            if !self.partitions.contains(p) {
                self.partitions.push(*p);
            }
        }
        self.partitions.sort_unstable();
    }

    /// The last offset this table holds for `partition`, if any.
    pub fn offset(&self, partition: i32) -> Option<i64> {
        self.offsets.get(&partition).copied()
    }

    /// The first offset of `partition` this table does not hold (in its current epoch).
    pub fn next(&self, partition: i32) -> i64 {
        self.offset(partition).map_or(0, |held| held + 1)
    }

    /// The epoch `partition`'s offsets currently count in.
    pub fn epoch(&self, partition: i32) -> u32 {
        self.epochs.get(&partition).copied().unwrap_or(0)
    }

    /// Every partition's last offset this table holds.
    pub fn offsets(&self) -> &BTreeMap<i32, i64> {
        &self.offsets
    }

    /// The table, at the version of its last commit.
    pub fn table(&self) -> &DeltaTable {
        &self.table
    }

    fn url(&self) -> String {
        self.table.table_url().to_string()
    }

    /// Partition → (epoch, last offset) as the log says at the loaded version.
    async fn read_offsets(&self, partitions: &[i32]) -> Result<BTreeMap<i32, (u32, i64)>> {
        let mut offsets = BTreeMap::new();
        for &p in partitions {
            let found = held(&self.table, &self.topic, p)
                .await
                .map_err(|source| Error::Delta {
                    table: self.url(),
                    source,
                })?;
            if let Some(found) = found {
                offsets.insert(p, found);
            }
        }
        Ok(offsets)
    }

    /// `partition`'s current epoch as the log says now (the table itself stays at its
    /// version): another process may have begun a new one ([`Self::begin_epochs`]).
    pub async fn latest_epoch(&self, partition: i32) -> Result<u32> {
        let mut latest = self.table.clone();
        let delta = |source| Error::Delta {
            table: self.url(),
            source,
        };
        latest.update_state().await.map_err(delta)?;
        let found = held(&latest, &self.topic, partition).await.map_err(delta)?;
        Ok(found.map_or(0, |(epoch, _)| epoch))
    }

    /// Begins a new epoch for each of `partitions` (a topic reset an operator accepted): one
    /// commit with no rows and a `txn` of `-1` under each partition's next epoch's app id, so
    /// that the partition is read again from offset 0 of the new epoch. Returns the new epochs.
    pub async fn begin_epochs(&mut self, partitions: &[i32]) -> Result<BTreeMap<i32, u32>> {
        self.refresh().await?;
        let all = self.partitions.clone();
        let held = self.read_offsets(&all).await?;
        self.check_unmoved(&held)?;
        let next: BTreeMap<i32, u32> = partitions
            .iter()
            .map(|p| (*p, self.epoch(*p) + 1))
            .collect();
        if next.is_empty() {
            return Ok(next);
        }
        let txns: Vec<Transaction> = next
            .iter()
            .map(|(p, epoch)| Transaction::new(epoch_app_id(&self.topic, *p, *epoch), -1))
            .collect();
        let url = self.url();
        self.table = self
            .table
            .clone()
            .write(vec![RecordBatch::new_empty(self.schema.clone())])
            .with_partition_columns([self.partition_by])
            .with_save_mode(SaveMode::Append)
            .with_commit_properties(CommitProperties::default().with_application_transactions(txns))
            .await
            .map_err(|source| Error::Delta { table: url, source })?;
        for (p, epoch) in &next {
            self.epochs.insert(*p, *epoch);
            self.offsets.insert(*p, -1);
        }
        self.known_at = self.table.version();
        Ok(next)
    }

    /// Appends `batch`, recording `upto` (partition → last offset covered) in the same commit.
    /// Partitions whose offset the table already holds are left out of the `txn` actions.
    /// An empty batch is not committed: re-reading its messages after a crash is harmless.
    pub async fn append(&mut self, batch: RecordBatch, upto: &BTreeMap<i32, i64>) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.commit(batch, upto).await
    }

    /// Records `upto` with no rows, so that a restart after a clean stop resumes after every
    /// message read, including those that gave this table nothing.
    pub async fn seal(&mut self, upto: &BTreeMap<i32, i64>) -> Result<()> {
        let empty = RecordBatch::new_empty(self.schema.clone());
        self.commit(empty, upto).await
    }

    async fn commit(&mut self, batch: RecordBatch, upto: &BTreeMap<i32, i64>) -> Result<()> {
        let mut advancing: BTreeMap<i32, i64> = upto
            .iter()
            .filter(|(p, o)| self.offset(**p).is_none_or(|held| **o > held))
            .map(|(p, o)| (*p, *o))
            .collect();
        if advancing.is_empty() {
            return Ok(());
        }
        for p in &self.partitions {
            if self.offset(*p).is_none() {
                advancing.entry(*p).or_insert(-1);
            }
        }
        let partitions: Vec<i32> = advancing.keys().copied().collect();
        self.refresh().await?;
        if self.table.version() != self.known_at {
            let held = self.read_offsets(&partitions).await?;
            self.check_unmoved(&held)?;
            self.known_at = self.table.version();
        }
        let txns: Vec<Transaction> = advancing
            .iter()
            .map(|(p, o)| Transaction::new(epoch_app_id(&self.topic, *p, self.epoch(*p)), *o))
            .collect();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = self
                .table
                .clone()
                .write(vec![batch.clone()])
                .with_partition_columns([self.partition_by])
                .with_save_mode(SaveMode::Append)
                .with_commit_properties(
                    CommitProperties::default().with_application_transactions(txns.clone()),
                )
                .await;
            let error = match result {
                Ok(table) => {
                    // This commit adds no ids deduplication has not seen.
                    if self.others_checked_at.map(|v| v + 1) == table.version() {
                        self.others_checked_at = table.version();
                    }
                    self.table = table;
                    self.offsets.extend(&advancing);
                    self.known_at = self.table.version();
                    self.committed(&batch).await;
                    return Ok(());
                }
                Err(error) => error,
            };
            tracing::warn!(table = %self.url(), attempt, %error, "commit failed; checking whether it landed");
            tokio::time::sleep(Duration::from_millis(100 << attempt.min(6))).await;
            if self.refresh().await.is_ok() {
                let now = self.read_offsets(&partitions).await?;
                if advancing
                    .iter()
                    .all(|(p, o)| now.get(p) == Some(&(self.epoch(*p), *o)))
                {
                    tracing::info!(table = %self.url(), "the failed commit had landed");
                    self.offsets.extend(&advancing);
                    self.known_at = self.table.version();
                    self.committed(&batch).await;
                    return Ok(());
                }
                // It did not land. If another writer moved any of these partitions meanwhile
                // (a conflict such as `ConcurrentTransaction`), retrying would store again
                // offsets it already holds and could move a `txn` version backwards: stop.
                self.check_unmoved(&now)?;
                self.known_at = self.table.version();
            }
            if attempt >= MAX_ATTEMPTS {
                return Err(Error::CommitRetriesExhausted {
                    table: self.url(),
                    attempts: attempt,
                    source: error,
                });
            }
        }
    }

    /// Fails with [`Error::ConcurrentWriter`] if `found` (offsets just read from the log)
    /// differs from what this writer holds for any partition: another writer moved it.
    ///
    /// The archiver stops rather than dropping the rows the other writer holds and going on:
    /// its deduplication knows only the ids it read itself, so an event the other writer
    /// stored at an offset dropped here would not be known as seen, and a later copy of it
    /// would be stored twice. Two archivers of one lake (a rolling deploy) are one too many;
    /// the one that stops is restarted by its supervisor and resumes after what the lake holds.
    fn check_unmoved(&self, found: &BTreeMap<i32, (u32, i64)>) -> Result<()> {
        for (p, (epoch, found)) in found {
            if Some(*found) != self.offset(*p) || *epoch != self.epoch(*p) {
                return Err(Error::ConcurrentWriter {
                    table: self.url(),
                    partition: *p,
                    expected: self.offset(*p).unwrap_or(-1),
                    found: *found,
                });
            }
        }
        Ok(())
    }

    /// After a commit of `batch`: counts its files and compacts the partitions that are due.
    /// A failed compaction is logged and left for later: the rows are committed either way.
    async fn committed(&mut self, batch: &RecordBatch) {
        let Some((labels, mut files)) = self.compaction.take() else {
            return;
        };
        files.committed(batch);
        for (value, new) in files.due() {
            let fanout = files.min_files();
            match compact(&self.table, self.partition_by, &value, new, fanout).await {
                Ok(None) => files.compacted(&value),
                Ok(Some((table, done))) => {
                    tracing::info!(
                        table = %self.url(),
                        partition = %value,
                        removed = done.num_files_removed,
                        added = done.num_files_added,
                        "compacted"
                    );
                    metrics::COMPACTIONS
                        .with_label_values(&[labels.source.as_str(), labels.table, "succeeded"])
                        .inc();
                    if table.version() == self.known_at.map(|v| v + 1) {
                        self.known_at = table.version();
                    }
                    self.table = table;
                    files.compacted(&value);
                }
                Err(error) => {
                    tracing::warn!(table = %self.url(), partition = %value, %error, "compaction failed; the files stay as they are");
                    metrics::COMPACTIONS
                        .with_label_values(&[labels.source.as_str(), labels.table, "failed"])
                        .inc();
                    files.compacted(&value);
                }
            }
        }
        if let Ok(snapshot) = self.table.snapshot() {
            let measure =
                |m| metrics::TABLE.with_label_values(&[labels.source.as_str(), labels.table, m]);
            measure("files").set(snapshot.log_data().num_files() as i64);
            let version = measure("version");
            version.set(self.table.version().map_or(-1, |v| v as i64));
        }
        self.compaction = Some((labels, files));
    }

    async fn refresh(&mut self) -> Result<()> {
        let url = self.url();
        self.refreshes += 1;
        if self.refreshes >= RELOAD_EVERY {
            let mut fresh = self.table.clone();
            fresh.state = None;
            fresh
                .update_state()
                .await
                .map_err(|source| Error::Delta { table: url, source })?;
            self.table = fresh;
            self.refreshes = 0;
            return Ok(());
        }
        self.table
            .update_state()
            .await
            .map_err(|source| Error::Delta { table: url, source })
    }
}
