//! A consumer of one topic, assigned by hand.
//!
//! lambdaflow never lets the consumer group decide where to read: the archiver resumes after
//! the offsets its Delta tables hold and the speed layer after the batch watermark, so both
//! assign every partition themselves from start offsets. A start offset that is no longer on
//! the broker (retention deleted it) resumes at the earliest offset the broker holds
//! (`auto.offset.reset = earliest` in every consumer's [`settings`]): what was deleted is
//! reported as lost, and nothing the broker still holds is skipped.
//!
//! [`Consumer::poll_into`] is the one poll loop: it validates each message straight into the
//! caller's Arrow builder and returns the first and last offset read per partition;
//! [`ChunkReader`] runs it on a thread of its own and hands over one [`Chunk`] at a time. The
//! reader also finds partitions added to the topic while it runs (within
//! [`DISCOVER_EVERY`]) and assigns them from their beginning, and notices offsets the broker
//! deleted before they were read: a gap before the first offset read that the broker's
//! earliest retained offset explains is reported as lost, logged and counted
//! ([`crate::metrics::OFFSETS_LOST`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::AsArray;
use arrow::datatypes::{Int32Type, Int64Type};
use lambdaflow_common::timestamp::now_micros;
use lambdaflow_common::validate::{Coordinates, Validated, Validator};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Message, Timestamp};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::metrics;
use crate::settings::{self, Cluster};

/// How often a [`ChunkReader`] looks for partitions added to its topic.
pub const DISCOVER_EVERY: Duration = Duration::from_secs(3);

/// When [`Consumer::poll_into`] hands its messages back.
#[derive(Debug, Clone, Copy)]
pub struct ChunkPolicy {
    /// Longest a message waits in a chunk: the chunk ends this long after it started.
    pub max_wait: Duration,
    /// Most messages in one chunk.
    pub max_messages: usize,
    /// How long one poll of librdkafka's queue may block.
    pub poll: Duration,
}

/// What one [`Consumer::poll_into`] read.
#[derive(Debug, Default)]
pub struct Polled {
    /// The first offset read per partition.
    pub first: BTreeMap<i32, i64>,
    /// The last offset read per partition.
    pub upto: BTreeMap<i32, i64>,
    /// Messages read.
    pub messages: usize,
    /// Of those, messages the validator refused (they are in the builder's rejects).
    pub rejected: usize,
}

/// A chunk of validated messages and the last offset read per partition.
#[derive(Debug)]
pub struct Chunk {
    /// Valid events and rejects, as Arrow batches.
    pub validated: Validated,
    /// The last offset read per partition, including messages that gave no event.
    pub upto: BTreeMap<i32, i64>,
    /// Messages read.
    pub messages: usize,
    /// Partitions added to the topic since the reader started, now assigned from their
    /// beginning.
    pub discovered: Vec<i32>,
    /// Offset ranges (partition, first, last) the broker deleted before they were read.
    pub lost: Vec<LostRange>,
}

/// Offsets of one partition that the broker no longer held when they were to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LostRange {
    /// Partition.
    pub partition: i32,
    /// First offset lost.
    pub first: i64,
    /// Last offset lost.
    pub last: i64,
}

/// One message, copied out of librdkafka's buffers (tools and tests).
#[derive(Debug, Clone)]
pub struct Record {
    /// Partition.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
    /// The key, if any.
    pub key: Option<Vec<u8>>,
    /// The payload, if any.
    pub payload: Option<Vec<u8>>,
    /// The message timestamp, epoch milliseconds, if any.
    pub timestamp_ms: Option<i64>,
}

/// A consumer of one topic.
pub struct Consumer {
    inner: BaseConsumer,
    topic: String,
    /// The partitions assigned and the offset each started from.
    assigned: Mutex<BTreeMap<i32, i64>>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Consumer {
    fn create(config: &ClientConfig, topic: &str) -> Result<Self> {
        let brokers = config.get("bootstrap.servers").unwrap_or_default();
        let inner = config
            .create()
            .map_err(Error::client(format!("connecting to {brokers}")))?;
        Ok(Self {
            inner,
            topic: topic.to_owned(),
            assigned: Mutex::default(),
        })
    }

    /// The archiver's consumer of `topic` ([`settings::archiver`]); resumes at the earliest
    /// retained offset when its start offset is gone.
    pub fn archiver(cluster: impl Into<Cluster>, group_id: &str, topic: &str) -> Result<Self> {
        Self::create(&settings::archiver(&cluster.into(), group_id), topic)
    }

    /// The speed layer's consumer of `topic` ([`settings::speed`]); resumes at the earliest
    /// retained offset when its start offset is gone, so that it skips only what the broker
    /// deleted (reported as lost), never what it still holds.
    pub fn speed(cluster: impl Into<Cluster>, group_id: &str, topic: &str) -> Result<Self> {
        Self::create(&settings::speed(&cluster.into(), group_id), topic)
    }

    /// A plain reader of `topic` ([`settings::reader`]), for tools and tests.
    pub fn reader(cluster: impl Into<Cluster>, group_id: &str, topic: &str) -> Result<Self> {
        Self::create(&settings::reader(&cluster.into(), group_id), topic)
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The topic's partition ids, sorted, from one metadata request; `None` while the topic
    /// does not exist, has no partitions or the broker does not answer within `timeout`.
    /// Blocks for at most `timeout`.
    pub fn partitions(&self, timeout: Duration) -> Option<Vec<i32>> {
        let metadata = self.inner.fetch_metadata(Some(&self.topic), timeout).ok()?;
        let topic = metadata.topics().iter().find(|t| t.name() == self.topic)?;
        let mut partitions: Vec<i32> = topic.partitions().iter().map(|p| p.id()).collect();
        partitions.sort_unstable();
        (!partitions.is_empty()).then_some(partitions)
    }

    /// The topic's partition ids, waiting (and saying so once) until the topic exists. `None`
    /// if `shutdown` came first.
    pub async fn wait_for_partitions(&self, shutdown: &CancellationToken) -> Option<Vec<i32>> {
        let mut logged = false;
        loop {
            if let Some(partitions) = self.partitions(Duration::from_secs(5)) {
                return Some(partitions);
            }
            if !logged {
                tracing::info!(topic = %self.topic, "waiting for the topic to exist");
                logged = true;
            }
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// Assigns exactly the partitions of `starts`, each to be read from its start offset (the
    /// first offset to read; 0 reads from the beginning, whatever the broker still holds).
    pub fn assign(&self, starts: &BTreeMap<i32, i64>) -> Result<()> {
        let assignment = self.assignment(starts)?;
        self.inner
            .assign(&assignment)
            .map_err(Error::client(format!("assigning {}", self.topic)))?;
        *self.assigned.lock().expect("not poisoned") = starts.clone();
        Ok(())
    }

    /// The partitions assigned and the offset each started from.
    pub fn assigned(&self) -> BTreeMap<i32, i64> {
        self.assigned.lock().expect("not poisoned").clone()
    }

    /// Assigns, from their beginning, the partitions the topic has now that are not assigned
    /// yet (partitions added while this consumer runs); returns them. Blocks for at most
    /// `timeout`; a metadata request that fails finds nothing.
    pub fn discover(&self, timeout: Duration) -> Result<Vec<i32>> {
        let Some(partitions) = self.partitions(timeout) else {
            return Ok(Vec::new());
        };
        let mut assigned = self.assigned.lock().expect("not poisoned");
        let new: BTreeMap<i32, i64> = partitions
            .into_iter()
            .filter(|p| !assigned.contains_key(p))
            .map(|p| (p, 0))
            .collect();
        if new.is_empty() {
            return Ok(Vec::new());
        }
        self.inner
            .incremental_assign(&self.assignment(&new)?)
            .map_err(Error::client(format!(
                "assigning new partitions of {}",
                self.topic
            )))?;
        assigned.extend(&new);
        tracing::info!(topic = %self.topic, partitions = ?new.keys().collect::<Vec<_>>(), "partitions added to the topic: consuming them from their beginning");
        Ok(new.into_keys().collect())
    }

    fn assignment(&self, starts: &BTreeMap<i32, i64>) -> Result<TopicPartitionList> {
        let mut assignment = TopicPartitionList::new();
        for (&partition, &start) in starts {
            let offset = if start <= 0 {
                Offset::Beginning
            } else {
                Offset::Offset(start)
            };
            assignment
                .add_partition_offset(&self.topic, partition, offset)
                .map_err(Error::client("assigning partitions"))?;
        }
        Ok(assignment)
    }

    /// Stops fetching `partitions` (of those assigned) for as long as this consumer lives: the
    /// archiver halts a partition whose topic went back in time.
    pub fn pause(&self, partitions: &[i32]) -> Result<()> {
        let mut list = TopicPartitionList::new();
        for &partition in partitions {
            list.add_partition(&self.topic, partition);
        }
        self.inner
            .pause(&list)
            .map_err(Error::client(format!("pausing {}", self.topic)))
    }

    /// The first offset the broker still holds in `partition` and its head (the next offset
    /// to be written). Blocks for at most `timeout`.
    pub fn bounds(&self, partition: i32, timeout: Duration) -> Result<(i64, i64)> {
        self.inner
            .fetch_watermarks(&self.topic, partition, timeout)
            .map_err(Error::client(format!(
                "reading the bounds of {} partition {partition}",
                self.topic
            )))
    }

    /// Polls messages into `builder` until `policy` ends the chunk or `shutdown` is cancelled:
    /// each payload is validated straight into the builder's Arrow columns, against the
    /// message's own timestamp (the builder's time only when it has none), so that the
    /// archiver, the speed layer and every replay reach one verdict. Blocks the thread.
    pub fn poll_into(
        &self,
        builder: &mut lambdaflow_common::validate::BatchBuilder<'_>,
        policy: &ChunkPolicy,
        shutdown: &CancellationToken,
    ) -> Polled {
        let started = Instant::now();
        let mut polled = Polled::default();
        while !shutdown.is_cancelled()
            && polled.messages < policy.max_messages
            && started.elapsed() < policy.max_wait
        {
            match self.inner.poll(policy.poll) {
                Some(Ok(message)) => {
                    let at = Coordinates {
                        partition: message.partition(),
                        offset: message.offset(),
                    };
                    // A refused message is kept in the builder's rejects with its reason.
                    let sent = message_time_us(message.timestamp());
                    if builder.push_message(message.payload(), at, sent).is_err() {
                        polled.rejected += 1;
                    }
                    if polled.upto.insert(at.partition, at.offset).is_none() {
                        polled.first.insert(at.partition, at.offset);
                    }
                    polled.messages += 1;
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, topic = %self.topic, "kafka consumer error")
                }
                None => {}
            }
        }
        polled
    }

    /// The ranges before each partition's `first` offset read that the broker deleted before
    /// they were read, given the offset `next` expected per partition; logged and counted for
    /// `component`. A gap the broker's earliest offset does not explain (compaction,
    /// transaction markers) is not a loss.
    fn lost(
        &self,
        component: &'static str,
        first: &BTreeMap<i32, i64>,
        next: &BTreeMap<i32, i64>,
    ) -> Vec<LostRange> {
        let mut lost = Vec::new();
        for (&partition, &first) in first {
            let expected = next.get(&partition).copied().unwrap_or(0);
            if first <= expected {
                continue;
            }
            let low = match self.bounds(partition, Duration::from_secs(2)) {
                Ok((low, _)) => low,
                Err(error) => {
                    tracing::warn!(%error, partition, "reading a partition's bounds after a gap");
                    continue;
                }
            };
            if low <= expected {
                continue;
            }
            let range = LostRange {
                partition,
                first: expected,
                last: low.min(first) - 1,
            };
            let count = range.last - range.first + 1;
            tracing::error!(
                component,
                topic = %self.topic,
                partition,
                first = range.first,
                last = range.last,
                "the broker deleted {count} offsets before they were read (retention): their events are lost to the {component}"
            );
            metrics::OFFSETS_LOST
                .with_label_values(&[component, self.topic.as_str(), &partition.to_string()])
                .inc_by(u64::try_from(count).unwrap_or(0));
            lost.push(range);
        }
        lost
    }

    /// The next message, copied, waiting at most `timeout`.
    pub fn poll_record(&self, timeout: Duration) -> Option<Result<Record>> {
        Some(
            self.inner
                .poll(timeout)?
                .map(|m| Record {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().map(<[u8]>::to_vec),
                    timestamp_ms: m.timestamp().to_millis(),
                })
                .map_err(Error::client(format!("reading {}", self.topic))),
        )
    }
}

/// Says which messages the validator accepted but a later stage could not handle
/// (`unprocessable:<stage>`): rare, and worth a look at the event or the view that refused it.
fn log_unprocessable(validated: &Validated) {
    let rejects = &validated.rejects;
    let (Some(reasons), Some(partitions), Some(offsets)) = (
        rejects.column_by_name("reason"),
        rejects.column_by_name("partition"),
        rejects.column_by_name("offset"),
    ) else {
        return;
    };
    let reasons = reasons.as_string::<i32>();
    let partitions = partitions.as_primitive::<Int32Type>();
    let offsets = offsets.as_primitive::<Int64Type>();
    for row in 0..rejects.num_rows() {
        let reason = reasons.value(row);
        if reason.starts_with("unprocessable:") {
            tracing::warn!(
                partition = partitions.value(row),
                offset = offsets.value(row),
                %reason,
                "an event the validator accepted cannot be processed; it is quarantined, ingestion goes on"
            );
        }
    }
}

/// A message's timestamp in UTC microseconds, the "now" its event is validated against;
/// `None` when it carries none.
fn message_time_us(timestamp: Timestamp) -> Option<i64> {
    timestamp
        .to_millis()
        .filter(|ms| *ms >= 0)
        .and_then(|ms| ms.checked_mul(1000))
}

/// [`Consumer::poll_into`] on a blocking thread of its own, handing each non-empty chunk to a
/// channel until `shutdown` is cancelled or the receiver is dropped.
#[derive(Debug)]
pub struct ChunkReader {
    handle: tokio::task::JoinHandle<()>,
}

impl ChunkReader {
    /// Starts reading; chunks arrive on the returned receiver (`capacity` chunks may wait).
    /// Each chunk's builder is made at the moment the chunk starts: that moment is the ingest
    /// time of its events (and their validation time only for messages without a timestamp).
    /// `component` names the reader in logs and metrics (`archiver`, `speed`).
    pub fn spawn(
        consumer: Arc<Consumer>,
        validator: Validator,
        policy: ChunkPolicy,
        shutdown: CancellationToken,
        (component, capacity): (&'static str, usize),
    ) -> (Self, mpsc::Receiver<Chunk>) {
        let (tx, rx) = mpsc::channel(capacity);
        let handle = tokio::task::spawn_blocking(move || {
            let topic = consumer.topic().to_owned();
            let mut next = consumer.assigned();
            let mut discovered_at = Instant::now();
            while !shutdown.is_cancelled() {
                let mut discovered = Vec::new();
                if discovered_at.elapsed() >= DISCOVER_EVERY {
                    discovered_at = Instant::now();
                    match consumer.discover(Duration::from_secs(2)) {
                        Ok(new) => {
                            next.extend(new.iter().map(|p| (*p, 0)));
                            discovered = new;
                        }
                        Err(error) => tracing::warn!(%error, %topic, "looking for new partitions"),
                    }
                }
                let mut builder = validator.batch_builder(&topic, now_micros());
                let polled = consumer.poll_into(&mut builder, &policy, &shutdown);
                let lost = consumer.lost(component, &polled.first, &next);
                for (p, last) in &polled.upto {
                    next.insert(*p, last + 1);
                }
                if polled.messages == 0 && discovered.is_empty() {
                    continue;
                }
                let validated = builder.finish();
                log_unprocessable(&validated);
                let chunk = Chunk {
                    validated,
                    upto: polled.upto,
                    messages: polled.messages,
                    discovered,
                    lost,
                };
                if tx.blocking_send(chunk).is_err() {
                    return;
                }
            }
        });
        (Self { handle }, rx)
    }

    /// Waits for the reader's thread to end (cancel the token or drop the receiver first); a
    /// panic on it is an error.
    pub async fn join(self) -> Result<()> {
        self.handle.await.map_err(|e| Error::Task {
            task: "kafka reader",
            message: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use lambdaflow_common::config::Config;

    use super::*;
    use crate::embedded::EmbeddedBroker;
    use crate::producer::Producer;

    #[tokio::test]
    async fn partitions_the_reader_was_not_given_are_found_and_read_from_their_beginning() {
        let broker = EmbeddedBroker::start(&[("events", 3)]).unwrap();
        let brokers = broker.bootstrap_servers();
        let producer = Producer::bulk(brokers).unwrap();
        let config = Config::shop();
        let pending: Vec<_> = (0..60)
            .map(|i| {
                let payload = format!(
                    r#"{{"event_id":"e{i}","event_time":"2026-01-02T03:04:05Z","type":"view","user_id":"u","country":"kr"}}"#
                );
                producer
                    .queue("events", format!("e{i}").as_bytes(), payload.as_bytes())
                    .unwrap()
            })
            .collect();
        producer.flush(Duration::from_secs(10)).unwrap();
        drop(pending);

        // Only partition 0 is known at start: 1 and 2 play partitions added while running.
        let consumer = Consumer::speed(brokers, "discovery-test", "events").unwrap();
        consumer.assign(&[(0, 0)].into()).unwrap();
        let policy = ChunkPolicy {
            max_wait: Duration::from_millis(50),
            max_messages: 1_000,
            poll: Duration::from_millis(5),
        };
        let shutdown = CancellationToken::new();
        let (reader, mut chunks) = ChunkReader::spawn(
            Arc::new(consumer),
            Validator::new(config.source()),
            policy,
            shutdown.clone(),
            ("speed", 4),
        );
        let mut discovered = Vec::new();
        // Messages read per partition: one past the last offset read (each starts at 0).
        let mut read: BTreeMap<i32, usize> = BTreeMap::new();
        let deadline = Instant::now() + DISCOVER_EVERY * 3;
        while read.values().sum::<usize>() < 60 && Instant::now() < deadline {
            let Ok(Some(chunk)) = tokio::time::timeout(Duration::from_secs(1), chunks.recv()).await
            else {
                continue;
            };
            discovered.extend(chunk.discovered);
            for (p, last) in chunk.upto {
                read.insert(p, usize::try_from(last + 1).unwrap());
            }
        }
        shutdown.cancel();
        drop(chunks);
        reader.join().await.unwrap();
        assert_eq!(discovered, vec![1, 2]);
        assert_eq!(
            read.values().sum::<usize>(),
            60,
            "read per partition: {read:?}"
        );
        assert_eq!(read.len(), 3, "read per partition: {read:?}");
    }
}
