//! The speed layer's Kafka side: consume every partition from the lowest batch watermark,
//! validate in micro-batches, load the raw ids deduplication needs, fold, and apply batch
//! swaps between micro-batches.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use lambdaflow_common::config::Config;
use lambdaflow_common::timestamp::{format_date, now_micros};
use lambdaflow_common::validate::{Coordinates, Validated, Validator};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use arrow::array::AsArray;

use crate::error::{Error, Result};
use lambdaflow_common::batch_view::BatchView;

use crate::lambda::Speed;
use crate::metrics;

/// Longest a consumed message waits before it is folded: the floor of produce-to-visible
/// latency.
const MICRO_BATCH: Duration = Duration::from_millis(20);
/// Most messages in one micro-batch.
const MICRO_BATCH_MAX: usize = 20_000;

/// Why the raw ids of a date could not be read: the lake adapter's own error, kept whole.
pub type RawIdsError = Box<dyn std::error::Error + Send + Sync>;

/// Where deduplication reads the ids the raw table holds for a date at a version.
pub trait RawIds: Send + Sync {
    /// The ids of `date` (days since the epoch) in the raw table at `version`.
    fn ids(&self, version: u64, date: i32) -> BoxFuture<'_, Result<Vec<String>, RawIdsError>>;
}

/// New batch versions, one entry per view (`None`: unchanged).
pub type Swap = Vec<Option<Arc<BatchView>>>;

/// The running speed layer.
pub struct SpeedLayer {
    config: Arc<Config>,
    brokers: String,
    speed: Speed,
    raw_ids: Arc<dyn RawIds>,
    swaps: mpsc::Receiver<Swap>,
}

impl std::fmt::Debug for SpeedLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpeedLayer")
            .field("brokers", &self.brokers)
            .finish_non_exhaustive()
    }
}

struct Micro {
    validated: Validated,
    consumed: BTreeMap<i32, i64>,
}

impl SpeedLayer {
    /// A speed layer reading `brokers`, folding into `speed`, swapping what `swaps` sends.
    pub fn new(
        config: Arc<Config>,
        brokers: impl Into<String>,
        speed: Speed,
        raw_ids: Arc<dyn RawIds>,
        swaps: mpsc::Receiver<Swap>,
    ) -> Self {
        Self {
            config,
            brokers: brokers.into(),
            speed,
            raw_ids,
            swaps,
        }
    }

    /// Consumes until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<()> {
        let topic = self.config.kafka.topic.clone();
        let kafka = |context: &str| {
            let context = context.to_owned();
            move |source| Error::Kafka { context, source }
        };
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", format!("{}-speed", self.config.kafka.group_id))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", "10")
            // With librdkafka's default (100,000) the consumer stalled for ~0.9 s once its
            // queue drained mid-topic; a deeper prefetch keeps the fold fed.
            .set("queued.min.messages", "200000")
            .create()
            .map_err(kafka("creating the speed consumer"))?;
        let partitions = loop {
            let found = consumer
                .fetch_metadata(Some(&topic), Duration::from_secs(5))
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
                break partitions;
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        };
        let starts = self.speed.start_offsets(&partitions);
        let mut assignment = TopicPartitionList::new();
        for (&p, &start) in &starts {
            let offset = if start == 0 {
                Offset::Beginning
            } else {
                Offset::Offset(start)
            };
            assignment
                .add_partition_offset(&topic, p, offset)
                .map_err(kafka("assigning partitions"))?;
        }
        consumer
            .assign(&assignment)
            .map_err(kafka("assigning partitions"))?;
        tracing::info!(%topic, from = ?starts, "speed layer consuming");
        {
            // Offsets before the start are covered by every view's batch side: the answers
            // already count through them.
            let mut lambda = self.speed.shared().write().expect("not poisoned");
            for (&p, &start) in &starts {
                if start > 0 {
                    let entry = lambda.consumed.entry(p).or_insert(start - 1);
                    *entry = (*entry).max(start - 1);
                }
            }
        }
        let consumer = Arc::new(consumer);
        // The heads decide readiness, not where to start: read them beside the consumption.
        let heads = {
            let (consumer, topic, shared) =
                (consumer.clone(), topic.clone(), self.speed.shared().clone());
            tokio::task::spawn_blocking(move || {
                let mut heads = BTreeMap::new();
                for (&p, &start) in &starts {
                    let (low, high) = consumer
                        .fetch_watermarks(&topic, p, Duration::from_secs(10))
                        .map_err(kafka("reading partition bounds"))?;
                    if start < low {
                        tracing::warn!(
                            partition = p,
                            watermark_next = start,
                            first_kept = low,
                            "the broker no longer holds offsets the batch views do not cover: events before {low} in partition {p} are missing until a batch run covers them"
                        );
                    }
                    heads.insert(p, high);
                }
                tracing::info!(head = ?heads, "speed layer start heads");
                let mut lambda = shared.write().expect("not poisoned");
                lambda.heads = heads.clone();
                lambda.start_head = Some(heads);
                Ok(())
            })
        };
        let refresher = {
            let (consumer, topic, shared, stop) = (
                consumer.clone(),
                topic.clone(),
                self.speed.shared().clone(),
                shutdown.clone(),
            );
            let partitions = partitions.clone();
            tokio::task::spawn_blocking(move || {
                refresh_heads(&consumer, &topic, &partitions, &shared, &stop);
            })
        };

        let (tx, mut rx) = mpsc::channel::<Micro>(4);
        let validator = Validator::new(&self.config.source);
        let stop = shutdown.clone();
        let reader_topic = topic.clone();
        let reader = tokio::task::spawn_blocking(move || {
            read_micro_batches(&consumer, &validator, &reader_topic, &stop, &tx);
        });
        let mut heads = std::pin::pin!(heads);
        let mut heads_pending = true;
        let mut outcome = Ok(());
        loop {
            tokio::select! {
                read = &mut heads, if heads_pending => {
                    heads_pending = false;
                    let read = read.map_err(|e| Error::Task { task: "partition heads", message: e.to_string() }).and_then(|r| r);
                    if let Err(e) = read {
                        outcome = Err(e);
                        break;
                    }
                }
                micro = rx.recv() => {
                    let Some(micro) = micro else { break };
                    if let Err(e) = self.fold(micro).await {
                        outcome = Err(e);
                        break;
                    }
                }
                Some(swap) = self.swaps.recv() => {
                    if let Err(e) = self.speed.swap(swap) {
                        outcome = Err(e);
                        break;
                    }
                }
            }
        }
        shutdown.cancel();
        drop(rx);
        reader.await.map_err(|e| Error::Task {
            task: "speed consumer",
            message: e.to_string(),
        })?;
        refresher.await.map_err(|e| Error::Task {
            task: "partition heads",
            message: e.to_string(),
        })?;
        outcome
    }

    async fn fold(&mut self, micro: Micro) -> Result<()> {
        metrics::VALID.inc_by(micro.validated.events.num_rows() as u64);
        if let Some(reasons) = micro.validated.rejects.column_by_name("reason") {
            for reason in reasons.as_string::<i32>().iter().flatten() {
                metrics::INVALID.with_label_values(&[reason]).inc();
            }
        }
        let events = micro.validated.events;
        for date in self.speed.dates_to_load(&events) {
            let version = self.speed.raw_version();
            let ids = self
                .raw_ids
                .ids(version, date)
                .await
                .map_err(|source| Error::RawIds {
                    date: format_date(date),
                    source,
                })?;
            self.speed.load_ids(date, ids.iter().map(String::as_str));
        }
        self.speed.fold(events, &micro.consumed)
    }
}

/// How often the partition heads behind the lag metrics are read.
const HEADS_EVERY: Duration = Duration::from_secs(2);

/// Reads the head of every partition every [`HEADS_EVERY`] into the shared state, until
/// `shutdown`; a failed read keeps the last heads.
fn refresh_heads(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: &[i32],
    shared: &crate::lambda::Shared,
    shutdown: &CancellationToken,
) {
    let mut last = Instant::now();
    while !shutdown.is_cancelled() {
        std::thread::sleep(Duration::from_millis(100));
        if last.elapsed() < HEADS_EVERY {
            continue;
        }
        last = Instant::now();
        let mut heads = BTreeMap::new();
        for &p in partitions {
            match consumer.fetch_watermarks(topic, p, Duration::from_secs(1)) {
                Ok((_, high)) => {
                    heads.insert(p, high);
                }
                Err(error) => tracing::debug!(%error, partition = p, "reading a partition head"),
            }
        }
        shared.write().expect("not poisoned").heads.extend(heads);
    }
}

fn read_micro_batches(
    consumer: &BaseConsumer,
    validator: &Validator,
    topic: &str,
    shutdown: &CancellationToken,
    tx: &mpsc::Sender<Micro>,
) {
    while !shutdown.is_cancelled() {
        let mut builder = validator.batch_builder(topic, now_micros());
        let mut consumed = BTreeMap::new();
        let started = Instant::now();
        let mut messages = 0;
        while started.elapsed() < MICRO_BATCH && messages < MICRO_BATCH_MAX {
            match consumer.poll(Duration::from_millis(5)) {
                Some(Ok(message)) => {
                    let at = Coordinates {
                        partition: message.partition(),
                        offset: message.offset(),
                    };
                    let _ = builder.push(message.payload(), at);
                    consumed.insert(at.partition, at.offset);
                    messages += 1;
                }
                Some(Err(error)) => tracing::warn!(%error, "kafka consumer error"),
                None => {}
            }
        }
        if consumed.is_empty() {
            continue;
        }
        metrics::MESSAGES.inc_by(messages as u64);
        let micro = Micro {
            validated: builder.finish(),
            consumed,
        };
        if tx.blocking_send(micro).is_err() {
            return;
        }
    }
}
