//! The speed layer's Kafka side: consume every partition from the lowest batch watermark,
//! validate in micro-batches, load the raw ids deduplication needs, fold, and apply batch
//! swaps between micro-batches.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::AsArray;
use futures::future::BoxFuture;
use lambdaflow_common::batch_view::BatchView;
use lambdaflow_common::config::Config;
use lambdaflow_common::timestamp::format_date;
use lambdaflow_common::validate::Validator;
use lambdaflow_kafka::consumer::{Chunk, ChunkPolicy, ChunkReader, Consumer};
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
        // Events a view filter cannot evaluate are rejected (`unprocessable:view_filter`) and
        // counted with the other rejects, as the archiver quarantines them.
        let validator = Validator::new(&self.config.source)
            .with_views(&self.config.views)
            .map_err(Error::Filter)?;
        let topic = &self.config.kafka.topic;
        let consumer = Consumer::speed(&self.brokers, &self.config.kafka.group_id, topic)?;
        let Some(partitions) = consumer.wait_for_partitions(&shutdown).await else {
            return Ok(());
        };
        let starts = self.speed.start(&partitions);
        consumer.assign(&starts)?;
        tracing::info!(%topic, from = ?starts, "speed layer consuming");

        let consumer = Arc::new(consumer);
        let heads = Heads {
            consumer: consumer.clone(),
            served: self.speed.served().clone(),
            shutdown: shutdown.clone(),
        };
        let mut heads = Some(tokio::task::spawn_blocking(move || heads.run(&starts)));
        let (reader, mut chunks) =
            ChunkReader::spawn(consumer, validator, MICRO_BATCH, shutdown.clone(), 4);

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
                    if let Err(e) = self.speed.swap(swap) {
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

    async fn fold(&mut self, chunk: Chunk) -> Result<()> {
        metrics::MESSAGES.inc_by(chunk.messages as u64);
        metrics::VALID.inc_by(chunk.validated.events.num_rows() as u64);
        if let Some(reasons) = chunk.validated.rejects.column_by_name("reason") {
            for reason in reasons.as_string::<i32>().iter().flatten() {
                metrics::INVALID.with_label_values(&[reason]).inc();
            }
        }
        let events = chunk.validated.events;
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
        let folded = self.speed.fold(events, &chunk.upto)?;
        metrics::DUPLICATES.inc_by(folded.duplicates as u64);
        Ok(())
    }
}

fn task_outcome(joined: Result<Result<()>, tokio::task::JoinError>) -> Result<()> {
    joined.map_err(|e| Error::Task {
        task: "partition heads",
        message: e.to_string(),
    })?
}

/// Reads the partition heads: once at start (readiness means catching up with them), then
/// every [`HEADS_EVERY`] for the lag, publishing each into the served progress.
struct Heads {
    consumer: Arc<Consumer>,
    served: Served,
    shutdown: CancellationToken,
}

impl Heads {
    fn run(self, starts: &BTreeMap<i32, i64>) -> Result<()> {
        let mut heads = BTreeMap::new();
        for (&p, &start) in starts {
            let (low, high) = self.consumer.bounds(p, Duration::from_secs(10))?;
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
        self.served.publish(|progress| {
            progress.heads = heads.clone();
            progress.start_head = Some(heads);
        });
        let mut last = Instant::now();
        while !self.shutdown.is_cancelled() {
            std::thread::sleep(Duration::from_millis(100));
            if last.elapsed() < HEADS_EVERY {
                continue;
            }
            last = Instant::now();
            let mut heads = BTreeMap::new();
            for &p in starts.keys() {
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
