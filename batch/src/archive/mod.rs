//! The archiver: Kafka → raw and quarantine Delta tables, exactly once.
//!
//! A consumer thread ([`lambdaflow_kafka::consumer::ChunkReader`]) polls every partition of
//! the topic (assigned by hand, starting after the offsets the tables hold) and validates
//! messages straight into Arrow builders. Every `commit_interval` or `commit_max_events` it
//! hands the chunk to the writer, which drops what
//! the tables already hold (after a restart), drops duplicates against the raw table's ids,
//! and appends to each table with the chunk's offsets in the same commit.
//!
//! - [`commit`]: the idempotent appends keyed by Kafka offsets that make it exactly once;
//! - [`compact`]: the auto-compaction of the small files those appends leave.

pub mod commit;
pub mod compact;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow::array::AsArray;
use arrow::compute::filter_record_batch;
use arrow::datatypes::Date32Type;
use arrow::record_batch::RecordBatch;
use deltalake::DeltaTable;
use lambdaflow_common::config::Config;
use lambdaflow_common::dedup::SeenIds;
use lambdaflow_common::schema::{self, EVENT_DATE, INGEST_DATE, KAFKA_OFFSET, KAFKA_PARTITION};
use lambdaflow_common::validate::Validator;
use lambdaflow_common::watermark::at_or_beyond;
use lambdaflow_kafka::consumer::{Chunk, ChunkPolicy, ChunkReader, Consumer};
use tokio_util::sync::CancellationToken;

use self::commit::OffsetTable;
use crate::error::Result;
use crate::lake::{self, Lake};
use crate::metrics;

/// Counters of the archiver's work since it started, readable while it runs.
#[derive(Debug, Default)]
pub struct ArchiveStats {
    /// Messages read from Kafka.
    pub consumed: AtomicU64,
    /// Events appended to the raw table.
    pub archived: AtomicU64,
    /// Valid events dropped as duplicates.
    pub duplicates: AtomicU64,
    /// Messages appended to the quarantine table.
    pub quarantined: AtomicU64,
    /// Delta commits made.
    pub commits: AtomicU64,
}

/// Archives one topic into one lake. Build with [`Archiver::new`], then [`Archiver::run`].
#[derive(Debug)]
pub struct Archiver {
    config: Arc<Config>,
    brokers: String,
    stats: Arc<ArchiveStats>,
}

impl Archiver {
    /// An archiver for `config`, reading from `brokers` (the resolved bootstrap servers).
    pub fn new(config: Arc<Config>, brokers: impl Into<String>) -> Self {
        Self {
            config,
            brokers: brokers.into(),
            stats: Arc::default(),
        }
    }

    /// Counters that stay readable while [`Self::run`] runs.
    pub fn stats(&self) -> Arc<ArchiveStats> {
        self.stats.clone()
    }

    /// Archives until `shutdown` is cancelled, then commits what it has read and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let config = &*self.config;
        let topic = &config.kafka.topic;
        let (raw, quarantine) = open_tables(config).await?;
        let consumer = Consumer::archiver(&self.brokers, &config.kafka.group_id, topic)?;
        let Some(partitions) = consumer.wait_for_partitions(&shutdown).await else {
            return Ok(());
        };
        let mut tables = Tables::load(config, raw, quarantine, &partitions).await?;
        let starts = tables.resume_at(&partitions);
        consumer.assign(&starts)?;
        tracing::info!(%topic, partitions = partitions.len(), raw_offsets = ?tables.raw.offsets(), "archiver resuming");

        let policy = ChunkPolicy {
            max_wait: config.archive.commit_interval,
            max_messages: config.archive.commit_max_events,
            poll: Duration::from_millis(50),
        };
        let validator = Validator::new(&config.source).with_views(&config.views)?;
        let (reader, mut chunks) = ChunkReader::spawn(
            Arc::new(consumer),
            validator,
            policy,
            shutdown.clone(),
            ("archiver", 2),
        );
        let mut read = BTreeMap::new();
        let mut report = Report::new();
        let mut outcome = Ok(());
        while let Some(chunk) = chunks.recv().await {
            let stats = &self.stats;
            stats
                .consumed
                .fetch_add(chunk.messages as u64, Ordering::Relaxed);
            read.extend(&chunk.upto);
            report.maybe_log(stats, &read);
            tables.add_partitions(&chunk.discovered);
            if let Err(error) = tables.write(chunk, stats).await {
                outcome = Err(error);
                shutdown.cancel();
                break;
            }
        }
        if outcome.is_ok() {
            outcome = tables.seal(&read).await;
        }
        drop(chunks);
        reader.join().await?;
        outcome
    }
}

/// Opens (or creates) the raw and quarantine tables of `config`'s source.
async fn open_tables(config: &Config) -> Result<(DeltaTable, DeltaTable)> {
    let lake = Lake::new(&config.lake)?;
    let source = &config.source;
    let raw_schema = schema::raw_schema(source);
    let raw = lake::open_or_create(&lake.raw(&source.name), &raw_schema, &[EVENT_DATE]).await?;
    let quarantine = lake::open_or_create(
        &lake.quarantine(&source.name),
        &schema::quarantine_schema(),
        &[INGEST_DATE],
    )
    .await?;
    Ok((raw, quarantine))
}

/// The two tables the archiver appends to, and the ids deduplication has seen.
struct Tables {
    raw: OffsetTable,
    quarantine: OffsetTable,
    seen: SeenIds,
    id_field: String,
}

impl Tables {
    async fn load(
        config: &Config,
        raw: DeltaTable,
        quarantine: DeltaTable,
        partitions: &[i32],
    ) -> Result<Self> {
        let topic = &config.kafka.topic;
        let min_files = config.archive.compact_min_files;
        let raw_schema = schema::raw_schema(&config.source);
        let raw = OffsetTable::load(raw, (raw_schema, EVENT_DATE), topic, partitions)
            .await?
            .with_compaction("raw", min_files)?;
        let quarantine_schema = schema::quarantine_schema();
        let quarantine = OffsetTable::load(
            quarantine,
            (quarantine_schema, INGEST_DATE),
            topic,
            partitions,
        )
        .await?
        .with_compaction("quarantine", min_files)?;
        Ok(Self {
            raw,
            quarantine,
            seen: SeenIds::new(config.archive.dedup_max_dates),
            id_field: config.source.id_field.clone(),
        })
    }

    /// Partitions added to the topic while the archiver runs: both tables record them.
    fn add_partitions(&mut self, partitions: &[i32]) {
        if !partitions.is_empty() {
            self.raw.add_partitions(partitions);
            self.quarantine.add_partitions(partitions);
        }
    }

    /// The first offset to read per partition: after the last offset both tables hold.
    fn resume_at(&self, partitions: &[i32]) -> BTreeMap<i32, i64> {
        partitions
            .iter()
            .map(|&p| {
                let held = self
                    .raw
                    .offset(p)
                    .unwrap_or(-1)
                    .min(self.quarantine.offset(p).unwrap_or(-1));
                (p, held + 1)
            })
            .collect()
    }

    async fn write(&mut self, chunk: Chunk, stats: &ArchiveStats) -> Result<()> {
        let Chunk {
            validated, upto, ..
        } = chunk;
        let Self {
            raw,
            quarantine,
            seen,
            id_field,
        } = self;
        let events = not_yet_held(&validated.events, KAFKA_PARTITION, KAFKA_OFFSET, raw);
        let valid = events.num_rows();
        let events = deduplicate(events, seen, raw, id_field).await?;
        let kept = events.num_rows() as u64;
        let timer = (kept > 0).then(|| {
            metrics::COMMIT_SECONDS
                .with_label_values(&["raw"])
                .start_timer()
        });
        raw.append(events, &upto).await?;
        drop(timer);

        let rejects = not_yet_held(&validated.rejects, "partition", "offset", quarantine);
        let rejected = rejects.num_rows() as u64;
        let timer = (rejected > 0).then(|| {
            metrics::COMMIT_SECONDS
                .with_label_values(&["quarantine"])
                .start_timer()
        });
        quarantine.append(rejects, &upto).await?;
        drop(timer);
        metrics::ARCHIVED
            .with_label_values(&["archived"])
            .inc_by(kept);
        metrics::ARCHIVED
            .with_label_values(&["duplicate"])
            .inc_by(valid as u64 - kept);
        metrics::ARCHIVED
            .with_label_values(&["quarantined"])
            .inc_by(rejected);

        stats.archived.fetch_add(kept, Ordering::Relaxed);
        stats
            .duplicates
            .fetch_add(valid as u64 - kept, Ordering::Relaxed);
        stats.quarantined.fetch_add(rejected, Ordering::Relaxed);
        stats.commits.fetch_add(
            u64::from(kept > 0) + u64::from(rejected > 0),
            Ordering::Relaxed,
        );
        tracing::debug!(
            kept,
            duplicates = valid as u64 - kept,
            rejected,
            ?upto,
            "chunk archived"
        );
        Ok(())
    }

    /// On a clean stop, records every offset read in both tables, so that the next start
    /// re-reads nothing.
    async fn seal(&mut self, read: &BTreeMap<i32, i64>) -> Result<()> {
        self.raw.seal(read).await?;
        self.quarantine.seal(read).await
    }
}

/// A progress line every [`Report::EVERY`], so that an operator sees the archiver move.
struct Report {
    since: Instant,
    consumed: u64,
}

impl Report {
    const EVERY: Duration = Duration::from_secs(30);

    fn new() -> Self {
        Self {
            since: Instant::now(),
            consumed: 0,
        }
    }

    fn maybe_log(&mut self, stats: &ArchiveStats, read: &BTreeMap<i32, i64>) {
        let elapsed = self.since.elapsed();
        if elapsed < Self::EVERY {
            return;
        }
        let consumed = stats.consumed.load(Ordering::Relaxed);
        tracing::info!(
            rate = format!("{:.0}/s", (consumed - self.consumed) as f64 / elapsed.as_secs_f64()),
            consumed,
            archived = stats.archived.load(Ordering::Relaxed),
            duplicates = stats.duplicates.load(Ordering::Relaxed),
            quarantined = stats.quarantined.load(Ordering::Relaxed),
            offsets = ?read,
            "archiving"
        );
        *self = Self {
            since: Instant::now(),
            consumed,
        };
    }
}

/// The rows whose offset is beyond what `table` holds for their partition: after a restart,
/// the first chunk may repeat what a commit before the crash already stored.
fn not_yet_held(
    batch: &RecordBatch,
    partition_col: &str,
    offset_col: &str,
    table: &OffsetTable,
) -> RecordBatch {
    let keep = at_or_beyond(batch, (partition_col, offset_col), |p| {
        table.offset(p).map_or(0, |held| held + 1)
    });
    if keep.true_count() == batch.num_rows() {
        return batch.clone();
    }
    filter_record_batch(batch, &keep).expect("mask matches the batch")
}

/// Drops events whose (date, id) the raw table or an earlier row already holds.
async fn deduplicate(
    events: RecordBatch,
    seen: &mut SeenIds,
    raw: &OffsetTable,
    id_field: &str,
) -> Result<RecordBatch> {
    if events.num_rows() == 0 {
        return Ok(events);
    }
    let dates = events
        .column_by_name(EVENT_DATE)
        .expect("event_date column")
        .as_primitive::<Date32Type>();
    let needed: BTreeSet<i32> = dates.values().iter().copied().collect();
    for date in seen.dates_to_load(&needed) {
        let ids = crate::lake::stored_ids(raw.table(), id_field, date).await?;
        seen.load(date, ids.iter().flatten());
    }
    let ids = events.column(0).as_string::<i32>();
    let keep = seen.keep(ids, dates);
    if keep.true_count() == events.num_rows() {
        return Ok(events);
    }
    Ok(filter_record_batch(&events, &keep).expect("mask matches the batch"))
}
