//! The archiver: Kafka → raw and quarantine Delta tables, exactly once.
//!
//! A consumer thread polls every partition of the topic (assigned by hand, starting after
//! the offsets the tables hold) and validates messages straight into Arrow builders. Every
//! `commit_interval` or `commit_max_events` it hands the chunk to the writer, which drops what
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
use lambdaflow_common::config::Config;
use lambdaflow_common::dedup::SeenIds;
use lambdaflow_common::schema::{self, EVENT_DATE, INGEST_DATE, KAFKA_OFFSET, KAFKA_PARTITION};
use lambdaflow_common::timestamp::now_micros;
use lambdaflow_common::validate::{Coordinates, Validated, Validator};
use lambdaflow_common::watermark::at_or_beyond;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::commit::OffsetTable;
use crate::error::{Error, Result};
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

/// One chunk of validated messages and the last offset read per partition.
struct Chunk {
    validated: Validated,
    upto: BTreeMap<i32, i64>,
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
        let topic = config.kafka.topic.clone();
        let lake = Lake::new(&config.lake)?;
        let raw_schema = schema::raw_schema(&config.source);
        let raw = lake::open_or_create(&lake.raw(&config.source.name), &raw_schema, &[EVENT_DATE])
            .await?;
        let quarantine_schema = schema::quarantine_schema();
        let quarantine = lake::open_or_create(
            &lake.quarantine(&config.source.name),
            &quarantine_schema,
            &[INGEST_DATE],
        )
        .await?;

        let consumer = consumer(&self.brokers, &config.kafka.group_id)?;
        let Some(partitions) = wait_for_partitions(&consumer, &topic, &shutdown).await? else {
            return Ok(());
        };
        let min_files = config.archive.compact_min_files;
        let mut raw = OffsetTable::load(raw, (raw_schema, EVENT_DATE), &topic, &partitions)
            .await?
            .with_compaction("raw", min_files)?;
        let mut quarantine = OffsetTable::load(
            quarantine,
            (quarantine_schema, INGEST_DATE),
            &topic,
            &partitions,
        )
        .await?
        .with_compaction("quarantine", min_files)?;

        let mut assignment = TopicPartitionList::new();
        for &p in &partitions {
            let held = raw
                .offset(p)
                .unwrap_or(-1)
                .min(quarantine.offset(p).unwrap_or(-1));
            let start = if held < 0 {
                Offset::Beginning
            } else {
                Offset::Offset(held + 1)
            };
            assignment
                .add_partition_offset(&topic, p, start)
                .map_err(|source| Error::Kafka {
                    context: "assigning partitions".into(),
                    source,
                })?;
        }
        consumer
            .assign(&assignment)
            .map_err(|source| Error::Kafka {
                context: format!("assigning {topic}"),
                source,
            })?;
        tracing::info!(%topic, partitions = partitions.len(), raw_offsets = ?raw.offsets(), "archiver resuming");

        let (tx, mut rx) = mpsc::channel::<Chunk>(2);
        let validator = Validator::new(&config.source);
        let limits = (
            config.archive.commit_interval,
            config.archive.commit_max_events,
        );
        let stats = self.stats.clone();
        let stop = shutdown.clone();
        let reader = tokio::task::spawn_blocking(move || {
            read_chunks(&consumer, &validator, &topic, limits, &stats, &stop, &tx)
        });

        let mut seen = SeenIds::new(config.archive.dedup_max_dates);
        let id_field = config.source.id_field.clone();
        let mut outcome = Ok(());
        let mut read = BTreeMap::new();
        let mut report = Report::new();
        while let Some(chunk) = rx.recv().await {
            read.extend(&chunk.upto);
            report.maybe_log(&self.stats, &read);
            if let Err(error) = self
                .write(chunk, &mut raw, &mut quarantine, &mut seen, &id_field)
                .await
            {
                outcome = Err(error);
                shutdown.cancel();
                break;
            }
        }
        if outcome.is_ok() {
            outcome = seal(&mut raw, &mut quarantine, &read).await;
        }
        drop(rx);
        reader.await.map_err(|e| Error::Task {
            task: "kafka reader",
            message: e.to_string(),
        })?;
        outcome
    }

    async fn write(
        &self,
        chunk: Chunk,
        raw: &mut OffsetTable,
        quarantine: &mut OffsetTable,
        seen: &mut SeenIds,
        id_field: &str,
    ) -> Result<()> {
        let Chunk { validated, upto } = chunk;
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

        let s = &self.stats;
        s.archived.fetch_add(kept, Ordering::Relaxed);
        s.duplicates
            .fetch_add(valid as u64 - kept, Ordering::Relaxed);
        s.quarantined.fetch_add(rejected, Ordering::Relaxed);
        s.commits.fetch_add(
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

/// On a clean stop, records every offset read in both tables, so that the next start re-reads
/// nothing.
async fn seal(
    raw: &mut OffsetTable,
    quarantine: &mut OffsetTable,
    read: &BTreeMap<i32, i64>,
) -> Result<()> {
    raw.seal(read).await?;
    quarantine.seal(read).await
}

fn consumer(brokers: &str, group_id: &str) -> Result<BaseConsumer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{group_id}-archiver"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "50")
        .set("queued.min.messages", "200000")
        .create()
        .map_err(|source| Error::Kafka {
            context: format!("connecting to {brokers}"),
            source,
        })
}

/// The topic's partition ids, waiting for the topic to exist. `None` if shut down first.
async fn wait_for_partitions(
    consumer: &BaseConsumer,
    topic: &str,
    shutdown: &CancellationToken,
) -> Result<Option<Vec<i32>>> {
    let mut logged = false;
    loop {
        let found = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .ok()
            .and_then(|m| {
                m.topics()
                    .iter()
                    .find(|t| t.name() == topic)
                    .map(|t| t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>())
            })
            .filter(|p| !p.is_empty());
        if let Some(mut partitions) = found {
            partitions.sort_unstable();
            return Ok(Some(partitions));
        }
        if !logged {
            tracing::info!(%topic, "waiting for the topic to exist");
            logged = true;
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// The consumer loop: poll, validate into the current chunk, hand full or old chunks over.
fn read_chunks(
    consumer: &BaseConsumer,
    validator: &Validator,
    topic: &str,
    (interval, max_events): (Duration, usize),
    stats: &ArchiveStats,
    shutdown: &CancellationToken,
    tx: &mpsc::Sender<Chunk>,
) {
    loop {
        let mut builder = validator.batch_builder(topic, now_micros());
        let mut upto = BTreeMap::new();
        let started = Instant::now();
        let stopping = loop {
            if shutdown.is_cancelled() {
                break true;
            }
            if builder.len() >= max_events || (!builder.is_empty() && started.elapsed() >= interval)
            {
                break false;
            }
            match consumer.poll(Duration::from_millis(50)) {
                Some(Ok(message)) => {
                    let at = Coordinates {
                        partition: message.partition(),
                        offset: message.offset(),
                    };
                    let _ = builder.push(message.payload(), at);
                    upto.insert(at.partition, at.offset);
                    stats.consumed.fetch_add(1, Ordering::Relaxed);
                }
                Some(Err(error)) => tracing::warn!(%error, "kafka consumer error"),
                None => {}
            }
        };
        if !builder.is_empty()
            && tx
                .blocking_send(Chunk {
                    validated: builder.finish(),
                    upto,
                })
                .is_err()
        {
            return;
        }
        if stopping {
            return;
        }
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
