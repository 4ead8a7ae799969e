//! A consumer of one topic, assigned by hand.
//!
//! lambdaflow never lets the consumer group decide where to read: the archiver resumes after
//! the offsets its Delta tables hold and the speed layer after the batch watermark, so both
//! assign every partition themselves from start offsets. What happens when a start offset is
//! no longer on the broker (retention deleted it) is a policy each role states explicitly
//! ([`OffsetReset`]).
//!
//! [`Consumer::poll_into`] is the one poll loop: it validates each message straight into the
//! caller's Arrow builder and returns the last offset read per partition; [`ChunkReader`]
//! runs it on a thread of its own and hands over one [`Chunk`] at a time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lambdaflow_common::timestamp::now_micros;
use lambdaflow_common::validate::{Coordinates, Validated, Validator};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::settings;

/// Where a partition resumes when its start offset is no longer on the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetReset {
    /// At the earliest offset the broker still holds.
    Earliest,
    /// At the partition's head: only messages written from now on.
    Latest,
}

impl OffsetReset {
    fn as_str(self) -> &'static str {
        match self {
            Self::Earliest => "earliest",
            Self::Latest => "latest",
        }
    }
}

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
}

/// A consumer of one topic.
pub struct Consumer {
    inner: BaseConsumer,
    topic: String,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Consumer {
    fn create(mut config: ClientConfig, topic: &str, reset: OffsetReset) -> Result<Self> {
        let brokers = config
            .get("bootstrap.servers")
            .unwrap_or_default()
            .to_owned();
        let inner = config
            .set("auto.offset.reset", reset.as_str())
            .create()
            .map_err(Error::client(format!("connecting to {brokers}")))?;
        Ok(Self {
            inner,
            topic: topic.to_owned(),
        })
    }

    /// The archiver's consumer of `topic` ([`settings::archiver`]); resumes at the earliest
    /// retained offset when its start offset is gone.
    pub fn archiver(brokers: &str, group_id: &str, topic: &str) -> Result<Self> {
        Self::create(
            settings::archiver(brokers, group_id),
            topic,
            OffsetReset::Earliest,
        )
    }

    /// The speed layer's consumer of `topic` ([`settings::speed`]); resumes at the head when
    /// its start offset is gone (librdkafka's default, stated here so it is a choice).
    pub fn speed(brokers: &str, group_id: &str, topic: &str) -> Result<Self> {
        Self::create(
            settings::speed(brokers, group_id),
            topic,
            OffsetReset::Latest,
        )
    }

    /// A plain reader of `topic` ([`settings::reader`]), for tools and tests.
    pub fn reader(brokers: &str, group_id: &str, topic: &str) -> Result<Self> {
        Self::create(
            settings::reader(brokers, group_id),
            topic,
            OffsetReset::Earliest,
        )
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
        self.inner
            .assign(&assignment)
            .map_err(Error::client(format!("assigning {}", self.topic)))
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
    /// each payload is validated straight into the builder's Arrow columns. Blocks the thread.
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
                    if builder.push(message.payload(), at).is_err() {
                        polled.rejected += 1;
                    }
                    polled.upto.insert(at.partition, at.offset);
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
                })
                .map_err(Error::client(format!("reading {}", self.topic))),
        )
    }
}

/// [`Consumer::poll_into`] on a blocking thread of its own, handing each non-empty chunk to a
/// channel until `shutdown` is cancelled or the receiver is dropped.
#[derive(Debug)]
pub struct ChunkReader {
    handle: tokio::task::JoinHandle<()>,
}

impl ChunkReader {
    /// Starts reading; chunks arrive on the returned receiver (`capacity` chunks may wait).
    /// Each chunk's builder is made at the moment the chunk starts: that moment is the
    /// validation time and the ingest time of its events.
    pub fn spawn(
        consumer: Arc<Consumer>,
        validator: Validator,
        policy: ChunkPolicy,
        shutdown: CancellationToken,
        capacity: usize,
    ) -> (Self, mpsc::Receiver<Chunk>) {
        let (tx, rx) = mpsc::channel(capacity);
        let handle = tokio::task::spawn_blocking(move || {
            let topic = consumer.topic().to_owned();
            while !shutdown.is_cancelled() {
                let mut builder = validator.batch_builder(&topic, now_micros());
                let polled = consumer.poll_into(&mut builder, &policy, &shutdown);
                if polled.messages == 0 {
                    continue;
                }
                let chunk = Chunk {
                    validated: builder.finish(),
                    upto: polled.upto,
                    messages: polled.messages,
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
