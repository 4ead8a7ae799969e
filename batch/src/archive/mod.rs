//! The archiver: Kafka → raw and quarantine Delta tables, exactly once.
//!
//! A consumer thread ([`lambdaflow_kafka::consumer::ChunkReader`]) polls every partition of
//! the topic (assigned by hand, starting after the offsets the tables hold) and validates
//! messages straight into Arrow builders. Every `commit_interval` or `commit_max_events` it
//! hands the chunk to the writer, which drops what
//! the tables already hold (after a restart), drops duplicates against the raw table's ids,
//! and appends to each table with the chunk's offsets in the same commit.
//!
//! A partition whose broker head is below the next offset the lake holds for it went back in
//! time (the topic was recreated, or lost its data): its new messages would all look already
//! archived. The archiver halts that partition (the others go on), says so in the log, the
//! metric `lambdaflow_topic_reset_detected` and [`ArchiveStats::topic_resets`], and resumes it
//! once an operator accepted the reset ([`accept_topic_reset`]), which starts a new epoch of
//! the partition's offsets in both tables.
//!
//! - [`commit`]: the idempotent appends keyed by Kafka offsets that make it exactly once;
//! - [`compact`]: the auto-compaction of the small files those appends leave.

pub mod commit;
pub mod compact;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow::array::AsArray;
use arrow::compute::filter_record_batch;
use arrow::record_batch::RecordBatch;
use deltalake::DeltaTable;
use lambdaflow_common::config::Config;
use lambdaflow_common::schema::{self, EVENT_DATE, INGEST_DATE, KAFKA_OFFSET, KAFKA_PARTITION};
use lambdaflow_common::source::SourceConfig;
use lambdaflow_common::timestamp::now_micros;
use lambdaflow_common::validate::Validator;
use lambdaflow_common::watermark::at_or_beyond;
use lambdaflow_dedup::SeenIds;
use lambdaflow_kafka::consumer::{Chunk, ChunkPolicy, ChunkReader, Consumer};
use lambdaflow_kafka::settings::Cluster;
use tokio_util::sync::CancellationToken;

use self::commit::{Labels, OffsetTable};
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
    /// Partitions halted because their topic went back in time, until the reset is accepted.
    resets: std::sync::Mutex<BTreeMap<i32, TopicReset>>,
}

impl ArchiveStats {
    /// The partitions halted because their topic went back in time: while any is listed, the
    /// archiver is not archiving everything (a readiness check should say so, with
    /// [`TopicReset`]'s message as the reason).
    pub fn topic_resets(&self) -> Vec<TopicReset> {
        self.resets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    fn set_resets(&self, resets: &BTreeMap<i32, TopicReset>) {
        *self
            .resets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = resets.clone();
    }
}

/// A partition whose broker head is below the offsets the lake holds for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicReset {
    /// The topic.
    pub topic: String,
    /// The Kafka partition.
    pub partition: i32,
    /// The next offset the lake expects (one past the last it holds).
    pub lake_next: i64,
    /// The broker's head of the partition (the next offset it will write).
    pub head: i64,
}

impl std::fmt::Display for TopicReset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "topic {} partition {} went back in time: the lake holds offsets up to {} but the broker's head is {} (was the topic recreated or its data lost?); \
             the partition is halted until `lambdaflow archive --config F --accept-topic-reset` records the reset",
            self.topic,
            self.partition,
            self.lake_next - 1,
            self.head
        )
    }
}

/// How often a halted partition is checked for an accepted reset.
const RESET_CHECK: Duration = Duration::from_secs(2);

/// Archives one topic into one lake. Build with [`Archiver::new`], then [`Archiver::run`].
#[derive(Debug)]
pub struct Archiver {
    config: Arc<Config>,
    cluster: Cluster,
    stats: Arc<ArchiveStats>,
}

impl Archiver {
    /// An archiver for `config`, reading from `cluster` (the resolved bootstrap servers and the
    /// client properties).
    pub fn new(config: Arc<Config>, cluster: impl Into<Cluster>) -> Self {
        Self {
            config,
            cluster: cluster.into(),
            stats: Arc::default(),
        }
    }

    /// Counters that stay readable while [`Self::run`] runs.
    pub fn stats(&self) -> Arc<ArchiveStats> {
        self.stats.clone()
    }

    /// Archives until `shutdown` is cancelled, then commits what it has read and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        // A partition's accepted reset starts it again from the new epoch: the tables and the
        // assignment are loaded afresh.
        while self.run_once(&shutdown).await? {
            tracing::info!(topic = %self.config.source().topic, "a topic reset was accepted: resuming every partition");
        }
        Ok(())
    }

    /// One run over a fixed assignment; `true` when it stopped to resume a partition whose
    /// reset was accepted meanwhile.
    async fn run_once(&self, shutdown: &CancellationToken) -> Result<bool> {
        let config = &*self.config;
        let topic = &config.source().topic;
        let (raw, quarantine) = open_tables(config).await?;
        let consumer = Consumer::archiver(&self.cluster, &config.kafka.group_id, topic)?;
        let Some(partitions) = consumer.wait_for_partitions(shutdown).await else {
            return Ok(false);
        };
        let consumer = Arc::new(consumer);
        let mut tables = Tables::load(config, raw, quarantine, &partitions).await?;
        let mut halted = BTreeMap::new();
        for &p in &partitions {
            if let Some(reset) = tables.went_back(&consumer, p).await {
                halt(&config.source().name, &reset);
                halted.insert(p, reset);
            }
        }
        self.stats.set_resets(&halted);
        let starts: BTreeMap<i32, i64> = tables
            .resume_at(&partitions)
            .into_iter()
            .filter(|(p, _)| !halted.contains_key(p))
            .collect();
        consumer.assign(&starts)?;
        tracing::info!(%topic, partitions = partitions.len(), halted = halted.len(), raw_offsets = ?tables.raw.offsets(), "archiver resuming");

        let policy = ChunkPolicy {
            max_wait: config.archive.commit_interval,
            max_messages: config.archive.commit_max_events,
            poll: Duration::from_millis(50),
        };
        let validator = Validator::new(config.source()).with_views(&config.views)?;
        let stop = shutdown.child_token();
        let (reader, mut chunks) = ChunkReader::spawn(
            consumer.clone(),
            validator,
            policy,
            stop.clone(),
            ("archiver", 2),
        );
        let mut read = BTreeMap::new();
        let mut report = Report::new();
        let mut outcome = Ok(());
        let mut resume = false;
        let mut check = tokio::time::interval(RESET_CHECK);
        loop {
            let chunk = tokio::select! {
                chunk = chunks.recv() => chunk,
                _ = check.tick(), if !halted.is_empty() && !resume => {
                    if tables.accepted(&halted).await {
                        resume = true;
                        stop.cancel();
                    }
                    continue;
                }
            };
            let Some(mut chunk) = chunk else { break };
            let stats = &self.stats;
            stats
                .consumed
                .fetch_add(chunk.messages as u64, Ordering::Relaxed);
            // The consumer read offsets below what the lake holds: after a restart that is
            // the tail of the last chunk again, unless the topic went back in time.
            let behind: Vec<i32> = chunk
                .upto
                .iter()
                .filter(|(p, o)| !halted.contains_key(*p) && **o < tables.next(**p) - 1)
                .map(|(p, _)| *p)
                .collect();
            for p in behind {
                if let Some(reset) = tables.went_back(&consumer, p).await {
                    halt(&config.source().name, &reset);
                    if let Err(error) = consumer.pause(&[p]) {
                        tracing::warn!(%error, partition = p, "could not pause the partition");
                    }
                    halted.insert(p, reset);
                    self.stats.set_resets(&halted);
                }
            }
            if !halted.is_empty() {
                chunk = without(chunk, &halted);
            }
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
        for p in halted.keys() {
            metrics::TOPIC_RESET
                .with_label_values(&["archiver", &self.config.source().name, &p.to_string()])
                .set(0);
        }
        self.stats.set_resets(&BTreeMap::new());
        outcome.map(|()| resume && !shutdown.is_cancelled())
    }
}

/// Says that `reset`'s partition is halted: the log, the metric.
fn halt(source: &str, reset: &TopicReset) {
    tracing::error!(
        topic = %reset.topic,
        partition = reset.partition,
        lake_offset = reset.lake_next - 1,
        broker_head = reset.head,
        "{reset}"
    );
    metrics::TOPIC_RESET
        .with_label_values(&["archiver", source, &reset.partition.to_string()])
        .set(1);
}

/// `chunk` without the rows and offsets of the `halted` partitions.
fn without(chunk: Chunk, halted: &BTreeMap<i32, TopicReset>) -> Chunk {
    let keep = |batch: &RecordBatch, partition_col: &str| {
        let partitions = batch
            .column_by_name(partition_col)
            .expect("partition column")
            .as_primitive::<arrow::datatypes::Int32Type>();
        let mask: arrow::array::BooleanArray = partitions
            .values()
            .iter()
            .map(|p| Some(!halted.contains_key(p)))
            .collect();
        filter_record_batch(batch, &mask).expect("mask matches the batch")
    };
    let mut chunk = chunk;
    chunk.validated.events = keep(&chunk.validated.events, KAFKA_PARTITION);
    chunk.validated.rejects = keep(&chunk.validated.rejects, "partition");
    chunk.upto.retain(|p, _| !halted.contains_key(p));
    chunk
}

/// Records, in both tables, that every partition of `config`'s topic whose broker head is
/// below the next offset the table holds went back in time on purpose (a recreated topic, lost
/// data): each starts a new epoch, read from offset 0. Partitions that did not go back are
/// left alone, so running it twice changes nothing. Returns the partitions given a new epoch,
/// with it.
pub async fn accept_topic_reset(config: &Config, cluster: &Cluster) -> Result<BTreeMap<i32, u32>> {
    let topic = &config.source().topic;
    let (raw, quarantine) = open_tables(config).await?;
    let consumer = Consumer::reader(cluster, &config.kafka.group_id, topic)?;
    let partitions = consumer
        .partitions(Duration::from_secs(10))
        .ok_or_else(|| Error::TopicUnavailable {
            topic: topic.clone(),
            brokers: cluster.brokers().to_owned(),
        })?;
    let consumer = Arc::new(consumer);
    let mut tables = Tables::load(config, raw, quarantine, &partitions).await?;
    let mut heads = BTreeMap::new();
    for &p in &partitions {
        heads.insert(p, head(&consumer, p).await?);
    }
    let mut accepted = BTreeMap::new();
    for (name, table) in [
        ("raw", &mut tables.raw),
        ("quarantine", &mut tables.quarantine),
    ] {
        let back: Vec<i32> = heads
            .iter()
            .filter(|(p, head)| **head < table.next(**p))
            .map(|(p, _)| *p)
            .collect();
        for (p, epoch) in table.begin_epochs(&back).await? {
            tracing::warn!(%topic, partition = p, table = name, epoch, broker_head = heads[&p], "topic reset accepted: the partition's offsets start again at 0 in a new epoch");
            let newest = accepted.entry(p).or_insert(epoch);
            *newest = (*newest).max(epoch);
        }
    }
    Ok(accepted)
}

/// The broker's head of `partition`, read off the async runtime (it blocks).
async fn head(consumer: &Arc<Consumer>, partition: i32) -> Result<i64> {
    let consumer = consumer.clone();
    let bounds =
        tokio::task::spawn_blocking(move || consumer.bounds(partition, Duration::from_secs(5)))
            .await
            .map_err(|e| Error::Task {
                task: "reading a partition's bounds",
                message: e.to_string(),
            })??;
    Ok(bounds.1)
}

/// Opens (or creates) the raw and quarantine tables of `config`'s source.
async fn open_tables(config: &Config) -> Result<(DeltaTable, DeltaTable)> {
    let lake = Lake::new(&config.lake)?;
    let source = config.source();
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
    source: SourceConfig,
}

impl Tables {
    async fn load(
        config: &Config,
        raw: DeltaTable,
        quarantine: DeltaTable,
        partitions: &[i32],
    ) -> Result<Self> {
        let topic = &config.source().topic;
        let min_files = config.archive.compact_min_files;
        let labels = |table| Labels {
            source: config.source().name.clone(),
            table,
        };
        let raw_schema = schema::raw_schema(config.source());
        let raw = OffsetTable::load(raw, (raw_schema, EVENT_DATE), topic, partitions)
            .await?
            .with_compaction(labels("raw"), min_files)?;
        let quarantine_schema = schema::quarantine_schema();
        let quarantine = OffsetTable::load(
            quarantine,
            (quarantine_schema, INGEST_DATE),
            topic,
            partitions,
        )
        .await?
        .with_compaction(labels("quarantine"), min_files)?;
        Ok(Self {
            raw,
            quarantine,
            seen: SeenIds::new(
                config.archive.dedup_dir.as_deref(),
                config.archive.dedup_max_dates,
            )?,
            source: config.source().clone(),
        })
    }

    /// Partitions added to the topic while the archiver runs: both tables record them.
    fn add_partitions(&mut self, partitions: &[i32]) {
        if !partitions.is_empty() {
            self.raw.add_partitions(partitions);
            self.quarantine.add_partitions(partitions);
        }
    }

    /// The first offset of `partition` that neither table holds.
    fn next(&self, partition: i32) -> i64 {
        self.raw
            .next(partition)
            .max(self.quarantine.next(partition))
    }

    /// `Some` when `partition`'s broker head is below the next offset the tables hold for it:
    /// the topic went back in time. A head that cannot be read is logged and taken as fine.
    async fn went_back(&self, consumer: &Arc<Consumer>, partition: i32) -> Option<TopicReset> {
        let next = self.next(partition);
        if next == 0 {
            return None;
        }
        match head(consumer, partition).await {
            Ok(head) if head < next => Some(TopicReset {
                topic: consumer.topic().to_owned(),
                partition,
                lake_next: next,
                head,
            }),
            Ok(_) => None,
            Err(error) => {
                tracing::warn!(%error, partition, "could not read the partition's head to check for a topic reset");
                None
            }
        }
    }

    /// Whether every table has begun a newer epoch for one of the `halted` partitions (an
    /// operator accepted its reset), as the raw and quarantine logs now say.
    async fn accepted(&self, halted: &BTreeMap<i32, TopicReset>) -> bool {
        let mut any = false;
        for &p in halted.keys() {
            let mut newer = true;
            for table in [&self.raw, &self.quarantine] {
                match table.latest_epoch(p).await {
                    Ok(epoch) => newer &= epoch > table.epoch(p),
                    Err(error) => {
                        tracing::warn!(%error, partition = p, "could not check for an accepted topic reset");
                        newer = false;
                    }
                }
            }
            any |= newer;
        }
        any
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
            source,
        } = self;
        let events = not_yet_held(&validated.events, KAFKA_PARTITION, KAFKA_OFFSET, raw);
        let valid = events.num_rows();
        // An import beside the archiver stores ids its deduplication has not seen.
        if valid > 0 {
            match raw.dates_added_by_others().await? {
                Some(dates) => seen.forget(dates),
                None => seen.clear(),
            }
        }
        let oldest = source.oldest_live_date(now_micros());
        let events = lake::deduplicate(events, seen, raw.table(), &source.id_field, oldest).await?;
        let id_bytes =
            |place: &str| metrics::DEDUP_ID_BYTES.with_label_values(&[source.name.as_str(), place]);
        id_bytes("memory").set(i64::try_from(seen.bytes()).unwrap_or(i64::MAX));
        id_bytes("disk").set(i64::try_from(seen.disk_bytes()).unwrap_or(i64::MAX));
        let kept = events.num_rows() as u64;
        let timer = (kept > 0).then(|| {
            metrics::COMMIT_SECONDS
                .with_label_values(&[&source.name, "raw"])
                .start_timer()
        });
        raw.append(events, &upto).await?;
        drop(timer);

        let rejects = not_yet_held(&validated.rejects, "partition", "offset", quarantine);
        let rejected = rejects.num_rows() as u64;
        let timer = (rejected > 0).then(|| {
            metrics::COMMIT_SECONDS
                .with_label_values(&[&source.name, "quarantine"])
                .start_timer()
        });
        quarantine.append(rejects, &upto).await?;
        drop(timer);
        metrics::ARCHIVED
            .with_label_values(&[&source.name, "archived"])
            .inc_by(kept);
        metrics::ARCHIVED
            .with_label_values(&[&source.name, "duplicate"])
            .inc_by(valid as u64 - kept);
        metrics::ARCHIVED
            .with_label_values(&[&source.name, "quarantined"])
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
    let keep = at_or_beyond(batch, (partition_col, offset_col), |p| table.next(p));
    if keep.true_count() == batch.num_rows() {
        return batch.clone();
    }
    filter_record_batch(batch, &keep).expect("mask matches the batch")
}
