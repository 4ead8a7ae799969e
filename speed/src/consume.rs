//! The speed layer's Kafka side: consume every partition from the lowest batch watermark,
//! validate in micro-batches, load the raw ids deduplication needs, fold, and apply batch
//! swaps between micro-batches.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{AsArray, StringArray};
use futures::future::BoxFuture;
use lambdaflow_common::batch_view::BatchView;
use lambdaflow_common::config::Config;
use lambdaflow_common::timestamp::format_date;
use lambdaflow_common::validate::Validator;
use lambdaflow_kafka::consumer::{Chunk, ChunkPolicy, ChunkReader, Consumer};
use lambdaflow_kafka::settings::Cluster;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::engine::Speed;
use crate::error::{Error, RawIdsError, Result};
use crate::metrics;
use crate::served::Served;

/// Micro-batches: a consumed message waits at most 20 ms before it is folded (the floor of
/// produce-to-visible latency), and a micro-batch holds at most 20,000 messages.
const MICRO_BATCH: ChunkPolicy = ChunkPolicy {
    max_wait: Duration::from_millis(20),
    max_messages: 20_000,
    poll: Duration::from_millis(5),
};

/// How often the partition heads behind the lag metrics are read.
const HEADS_EVERY: Duration = Duration::from_secs(2);

/// Takes a part of a date's raw ids.
pub type IdSink<'a> = &'a mut (dyn FnMut(&StringArray) -> Result<(), RawIdsError> + Send);

/// Where deduplication reads the ids the raw table holds for a date at a version.
pub trait RawIds: Send + Sync {
    /// Hands the ids of `date` (days since the epoch) in the raw table at `version` to
    /// `each`, a part at a time, so that a day of ids is never held at once.
    fn ids<'a>(
        &'a self,
        version: u64,
        date: i32,
        each: IdSink<'a>,
    ) -> BoxFuture<'a, Result<(), RawIdsError>>;
}

/// New batch versions, one entry per view (`None`: unchanged).
pub type Swap = Vec<Option<Arc<BatchView>>>;

/// The running speed layer.
pub struct SpeedLayer {
    config: Arc<Config>,
    cluster: Cluster,
    speed: Speed,
    raw_ids: Arc<dyn RawIds>,
    swaps: mpsc::Receiver<Swap>,
}

impl std::fmt::Debug for SpeedLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpeedLayer")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

impl SpeedLayer {
    /// A speed layer reading `cluster`, folding into `speed`, swapping what `swaps` sends.
    pub fn new(
        config: Arc<Config>,
        cluster: impl Into<Cluster>,
        speed: Speed,
        raw_ids: Arc<dyn RawIds>,
        swaps: mpsc::Receiver<Swap>,
    ) -> Self {
        Self {
            config,
            cluster: cluster.into(),
            speed,
            raw_ids,
            swaps,
        }
    }

    /// Consumes until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<()> {
        // Events a view filter cannot evaluate are rejected (`unprocessable:view_filter`) and
        // counted with the other rejects, as the archiver quarantines them.
        let validator = Validator::new(self.config.source())
            .with_views(&self.config.views)
            .map_err(Error::Filter)?;
        let topic = &self.config.source().topic;
        let consumer = Consumer::speed(&self.cluster, &self.config.kafka.group_id, topic)?;
        let Some(partitions) = consumer.wait_for_partitions(&shutdown).await else {
            return Ok(());
        };
        let starts = self.speed.start(&partitions);
        let consumer = Arc::new(consumer);
        let starts = self.check_bounds(&consumer, starts).await?;
        consumer.assign(&starts)?;
        tracing::info!(%topic, from = ?starts, "speed layer consuming");

        let heads = Heads {
            consumer: consumer.clone(),
            served: self.speed.served().clone(),
            shutdown: shutdown.clone(),
        };
        let mut heads = Some(tokio::task::spawn_blocking(move || heads.run()));
        let (reader, mut chunks) = ChunkReader::spawn(
            consumer,
            validator,
            MICRO_BATCH,
            shutdown.clone(),
            ("speed", 4),
        );

        let outcome = loop {
            tokio::select! {
                joined = async { heads.as_mut().expect("guarded").await }, if heads.is_some() => {
                    heads = None;
                    if let Err(e) = task_outcome(joined) {
                        break Err(e);
                    }
                }
                chunk = chunks.recv() => {
                    let Some(chunk) = chunk else { break Ok(()) };
                    if let Err(e) = self.fold(chunk).await {
                        break Err(e);
                    }
                }
                Some(swap) = self.swaps.recv() => {
                    if let Err(e) = self.swap(swap).await {
                        break Err(e);
                    }
                }
            }
        };
        shutdown.cancel();
        drop(chunks);
        reader.join().await?;
        if let Some(heads) = heads {
            task_outcome(heads.await)?;
        }
        outcome
    }

    /// Reads every partition's bounds before consuming: offsets before the first one the
    /// broker holds are lost (retention), and a partition whose head is below its start (the
    /// topic was recreated, or lost its data) is not consumed at all — reading it would fold
    /// new events at offsets the lake already holds for old ones. Returns the starts of the
    /// partitions to consume; publishes the heads, the lost ranges and the halted partitions.
    async fn check_bounds(
        &self,
        consumer: &Arc<Consumer>,
        starts: BTreeMap<i32, i64>,
    ) -> Result<BTreeMap<i32, i64>> {
        let reader = consumer.clone();
        let partitions: Vec<i32> = starts.keys().copied().collect();
        let bounds = tokio::task::spawn_blocking(move || {
            partitions
                .into_iter()
                .map(|p| Ok((p, reader.bounds(p, Duration::from_secs(10))?)))
                .collect::<Result<BTreeMap<i32, (i64, i64)>>>()
        })
        .await
        .map_err(|e| Error::Task {
            task: "partition bounds",
            message: e.to_string(),
        })??;
        let topic = &self.config.source().topic;
        let mut consume = BTreeMap::new();
        let mut heads = BTreeMap::new();
        let mut halted = BTreeMap::new();
        let mut lost = Vec::new();
        for (p, start) in starts {
            let (low, high) = bounds[&p];
            if start > high {
                let reason = format!(
                    "topic {topic} partition {p} ends at offset {high} but the lake already holds offsets up to {}: the topic was recreated or lost its data; run `lambdaflow archive --accept-topic-reset` once the archiver has recorded the reset",
                    start - 1
                );
                tracing::error!(
                    partition = p,
                    lake_next = start,
                    broker_head = high,
                    "{reason}"
                );
                metrics::HALTED
                    .with_label_values(&[self.config.source().name.as_str(), &p.to_string()])
                    .set(1);
                halted.insert(p, reason);
                continue;
            }
            if start < low {
                tracing::warn!(
                    partition = p,
                    watermark_next = start,
                    first_kept = low,
                    "the broker no longer holds offsets the batch views do not cover: events before {low} in partition {p} are missing until a batch run covers them"
                );
                lost.push((p, start, low - 1));
            }
            heads.insert(p, high);
            consume.insert(p, start);
        }
        tracing::info!(head = ?heads, "speed layer start heads");
        self.speed.served().publish(|progress| {
            for (p, first, last) in lost {
                progress.add_lost(p, first, last);
            }
            progress.heads = heads.clone();
            progress.start_head = Some(heads);
            progress.halted = halted;
        });
        Ok(consume)
    }

    /// Applies new batch versions, with the raw ids the swap checks retained events against.
    async fn swap(&mut self, swap: Swap) -> Result<()> {
        let mut raw = self.speed.swap_needs(&swap)?;
        for (version, date) in raw.needed() {
            let mut check = |ids: &StringArray| {
                raw.check(version, date, ids.iter().flatten());
                Ok(())
            };
            raw_ids_of(&*self.raw_ids, version, date, &mut check).await?;
        }
        self.speed.swap(swap, &raw)
    }

    async fn fold(&mut self, chunk: Chunk) -> Result<()> {
        let source = [self.config.source().name.as_str()];
        metrics::MESSAGES
            .with_label_values(&source)
            .inc_by(chunk.messages as u64);
        if !chunk.lost.is_empty() {
            self.speed.served().publish(|progress| {
                for range in &chunk.lost {
                    progress.add_lost(range.partition, range.first, range.last);
                }
            });
        }
        metrics::VALID
            .with_label_values(&source)
            .inc_by(chunk.validated.events.num_rows() as u64);
        if let Some(reasons) = chunk.validated.rejects.column_by_name("reason") {
            for reason in reasons.as_string::<i32>().iter().flatten() {
                metrics::INVALID
                    .with_label_values(&[source[0], reason])
                    .inc();
            }
        }
        let events = chunk.validated.events;
        for date in self.speed.dates_to_load(&events) {
            let version = self.speed.raw_version();
            let mut loading = self.speed.loading_ids(date);
            let mut add = |ids: &StringArray| Ok(loading.add(ids.iter().flatten())?);
            raw_ids_of(&*self.raw_ids, version, date, &mut add).await?;
            self.speed.loaded_ids(loading)?;
        }
        let folded = self.speed.fold(events, &chunk.upto)?;
        metrics::DUPLICATES
            .with_label_values(&source)
            .inc_by(folded.duplicates as u64);
        Ok(())
    }
}

/// Hands the ids the raw table holds for `date` at `version` to `each`.
async fn raw_ids_of(raw_ids: &dyn RawIds, version: u64, date: i32, each: IdSink<'_>) -> Result<()> {
    raw_ids
        .ids(version, date, each)
        .await
        .map_err(|source| Error::RawIds {
            date: format_date(date),
            source,
        })
}

fn task_outcome(joined: Result<Result<()>, tokio::task::JoinError>) -> Result<()> {
    joined.map_err(|e| Error::Task {
        task: "partition heads",
        message: e.to_string(),
    })?
}

/// Reads the head of every assigned partition (new ones included) every [`HEADS_EVERY`] for
/// the lag, publishing them into the served progress; a failed read keeps the last heads.
struct Heads {
    consumer: Arc<Consumer>,
    served: Served,
    shutdown: CancellationToken,
}

impl Heads {
    fn run(self) -> Result<()> {
        let mut last = Instant::now();
        while !self.shutdown.is_cancelled() {
            std::thread::sleep(Duration::from_millis(100));
            if last.elapsed() < HEADS_EVERY {
                continue;
            }
            last = Instant::now();
            let mut heads = BTreeMap::new();
            for p in self.consumer.assigned().into_keys() {
                match self.consumer.bounds(p, Duration::from_secs(1)) {
                    Ok((_, high)) => {
                        heads.insert(p, high);
                    }
                    Err(error) => {
                        tracing::debug!(%error, partition = p, "reading a partition head")
                    }
                }
            }
            self.served.publish(|progress| progress.heads.extend(heads));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use lambdaflow_common::watermark::Watermark;
    use lambdaflow_kafka::embedded::EmbeddedBroker;
    use lambdaflow_kafka::producer::Producer;

    use super::*;

    struct NoRawIds;

    impl RawIds for NoRawIds {
        fn ids<'a>(
            &'a self,
            _: u64,
            _: i32,
            _: IdSink<'a>,
        ) -> BoxFuture<'a, Result<(), RawIdsError>> {
            Box::pin(async { Ok(()) })
        }
    }

    /// `n` valid events of about 2 KB each produced to partition-keyed `events`.
    fn produce(brokers: &str, n: usize) {
        let producer = Producer::bulk(brokers).unwrap();
        let padding = "x".repeat(2_000);
        let pending: Vec<_> = (0..n)
            .map(|i| {
                let payload = format!(
                    r#"{{"event_id":"e{i}","event_time":"2026-01-02T03:04:05Z","type":"view","user_id":"u","country":"kr","product":"{padding}"}}"#
                );
                producer
                    .queue("events", format!("e{i}").as_bytes(), payload.as_bytes())
                    .unwrap()
            })
            .collect();
        producer.flush(Duration::from_secs(30)).unwrap();
        drop(pending);
    }

    /// Runs a speed layer over `batches` until `done` holds for its served state (or 30 s).
    async fn run_until(
        brokers: &str,
        batches: Vec<Arc<BatchView>>,
        done: impl Fn(&Served) -> bool,
    ) -> Served {
        let mut config = Config::shop();
        config.kafka.brokers = brokers.to_owned();
        let config = Arc::new(config);
        let served = Served::new();
        let speed = Speed::new(config.clone(), served.clone(), batches).unwrap();
        let (_swaps, rx) = mpsc::channel(1);
        let layer = SpeedLayer::new(config, brokers, speed, Arc::new(NoRawIds), rx);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(layer.run(shutdown.clone()));
        let started = Instant::now();
        while !done(&served) && started.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        shutdown.cancel();
        task.await.unwrap().unwrap();
        served
    }

    fn folded_events(served: &Served) -> usize {
        let snapshot = served.snapshot().unwrap();
        let pair = snapshot.pair(1);
        pair.speed()
            .groups()
            .map(|(_, states)| match &states[0] {
                lambdaflow_common::state::State::Count(n) => *n as usize,
                other => panic!("traffic's first measure is a count, got {other:?}"),
            })
            .sum()
    }

    #[tokio::test]
    async fn offsets_deleted_by_retention_are_lost_and_the_rest_is_still_read() {
        let broker = EmbeddedBroker::start(&[("events", 1)]).unwrap();
        let brokers = broker.bootstrap_servers().to_owned();
        // The embedded broker keeps about 5 MiB per partition: 4,000 events of 2 KB overflow it.
        produce(&brokers, 4_000);
        let consumer = Consumer::reader(&brokers, "probe", "events").unwrap();
        let (low, high) = consumer.bounds(0, Duration::from_secs(5)).unwrap();
        assert!(low > 0, "the broker kept every offset ({low}..{high})");

        // The views cover offsets 0..=10: the speed layer starts at 11, which retention deleted.
        let batch = Arc::new(BatchView {
            version: Some(1),
            watermark: Some(Watermark {
                raw_version: 1,
                offsets: [(0, 10)].into(),
                ..Watermark::default()
            }),
            ..BatchView::default()
        });
        let batches = vec![batch.clone(), batch.clone(), batch];
        let served = run_until(&brokers, batches, |s| {
            s.progress().caught_up() && !s.progress().lost.is_empty()
        })
        .await;
        let progress = served.progress();
        assert_eq!(progress.lost, [(0, vec![(11, low - 1)])].into());
        assert_eq!(progress.uncovered(|_| 11), progress.lost);
        assert!(
            progress.uncovered(|_| low).is_empty(),
            "a batch through {low} covers the loss"
        );
        // Every offset the broker still held was read; none was skipped to the head.
        assert_eq!(folded_events(&served), usize::try_from(high - low).unwrap());
    }

    #[tokio::test]
    async fn a_partition_below_the_lakes_offsets_is_halted_and_not_read() {
        let broker = EmbeddedBroker::start(&[("events", 1)]).unwrap();
        let brokers = broker.bootstrap_servers().to_owned();
        produce(&brokers, 10);
        // The views cover offsets up to 999: the lake saw a longer topic than this one.
        let batch = Arc::new(BatchView {
            version: Some(3),
            watermark: Some(Watermark {
                raw_version: 7,
                offsets: [(0, 999)].into(),
                ..Watermark::default()
            }),
            ..BatchView::default()
        });
        let served = run_until(&brokers, vec![batch.clone(), batch.clone(), batch], |s| {
            !s.progress().halted.is_empty()
        })
        .await;
        let progress = served.progress();
        let reason = progress.halted.get(&0).expect("partition 0 halted");
        assert!(reason.contains("ends at offset 10"), "{reason}");
        assert!(reason.contains("--accept-topic-reset"), "{reason}");
        assert_eq!(folded_events(&served), 0);
        assert!(!progress.consumed.contains_key(&0) || progress.consumed[&0] == 999);
    }
}
