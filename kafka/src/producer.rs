//! The producer: `POST /v1/events`, `gen`, the demo's generator and the tests hand messages
//! to it keyed by event id, so that copies of an event share a partition.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::FutureExt;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};

use crate::error::{Error, Result};
use crate::settings::{self, Cluster};

/// Where the broker stored an acknowledged message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Partition.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
}

/// A queued message: resolves once the broker acknowledged (or refused) it.
#[must_use = "a queued message is only known to be stored once this resolves"]
pub struct Pending {
    inner: DeliveryFuture,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").finish_non_exhaustive()
    }
}

impl Future for Pending {
    type Output = Result<Delivery>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.poll_unpin(cx).map(|outcome| match outcome {
            Ok(Ok(d)) => Ok(Delivery {
                partition: d.partition,
                offset: d.offset,
            }),
            Ok(Err((source, _))) => Err(Error::Client {
                context: "delivering a message".into(),
                source,
            }),
            Err(_) => Err(Error::Dropped),
        })
    }
}

/// An idempotent producer ([`settings::producer`] unless made otherwise).
#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer").finish_non_exhaustive()
    }
}

impl Producer {
    fn create(config: &ClientConfig) -> Result<Self> {
        let brokers = config.get("bootstrap.servers").unwrap_or_default();
        Ok(Self {
            inner: config.create().map_err(Error::client(format!(
                "creating a Kafka producer for {brokers}"
            )))?,
        })
    }

    /// The idempotent producer of the product.
    pub fn new(cluster: impl Into<Cluster>) -> Result<Self> {
        Self::create(&settings::producer(&cluster.into()))
    }

    /// The idempotent producer of the product, able to send every event the validator
    /// accepts: up to `max_event_bytes` of payload plus its key
    /// ([`settings::producer_for_events`]).
    pub fn for_events(cluster: impl Into<Cluster>, max_event_bytes: usize) -> Result<Self> {
        Self::create(&settings::producer_for_events(
            &cluster.into(),
            max_event_bytes,
        ))
    }

    /// An idempotent producer with one message per record batch
    /// ([`settings::producer_one_per_batch`]).
    pub fn one_message_per_batch(cluster: impl Into<Cluster>) -> Result<Self> {
        Self::create(&settings::producer_one_per_batch(&cluster.into()))
    }

    /// A producer for filling a topic fast ([`settings::bulk_producer`]).
    pub fn bulk(cluster: impl Into<Cluster>) -> Result<Self> {
        Self::create(&settings::bulk_producer(&cluster.into()))
    }

    /// Queues `payload` under `key`; [`Error::QueueFull`] when librdkafka's local queue is
    /// full (await some [`Pending`]s, then queue again).
    pub fn queue(&self, topic: &str, key: &[u8], payload: &[u8]) -> Result<Pending> {
        self.queue_at(topic, key, payload, None)
    }

    /// Queues `payload` under `key` with the message timestamp `timestamp_ms` (epoch
    /// milliseconds; librdkafka's clock when `None`). The timestamp is the "now" every layer
    /// validates the event against; [`Error::QueueFull`] as for [`Producer::queue`].
    pub fn queue_at(
        &self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        timestamp_ms: Option<i64>,
    ) -> Result<Pending> {
        let mut record = FutureRecord::to(topic).key(key).payload(payload);
        if let Some(ms) = timestamp_ms {
            record = record.timestamp(ms);
        }
        match self.inner.send_result(record) {
            Ok(inner) => Ok(Pending { inner }),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                Err(Error::QueueFull)
            }
            Err((source, _)) => Err(Error::Client {
                context: format!("producing to {topic}"),
                source,
            }),
        }
    }

    /// Queues `payload` under `key`, waiting while the local queue is full, and waits for the
    /// broker's acknowledgement.
    pub async fn send(&self, topic: &str, key: &[u8], payload: &[u8]) -> Result<Delivery> {
        loop {
            match self.queue(topic, key, payload) {
                Ok(pending) => return pending.await,
                Err(Error::QueueFull) => tokio::time::sleep(Duration::from_millis(2)).await,
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends `payload` under `key` to `partition` itself, whatever the key's partition, and
    /// waits for the acknowledgement: what a producer with another partitioner does.
    pub async fn send_to(
        &self,
        topic: &str,
        partition: i32,
        key: &[u8],
        payload: &[u8],
    ) -> Result<Delivery> {
        let record = FutureRecord::to(topic)
            .partition(partition)
            .key(key)
            .payload(payload);
        let inner = self
            .inner
            .send_result(record)
            .map_err(|(source, _)| Error::Client {
                context: format!("producing to {topic} partition {partition}"),
                source,
            })?;
        Pending { inner }.await
    }

    /// Waits up to `timeout` for every queued message to be delivered.
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        self.inner
            .flush(timeout)
            .map_err(Error::client("flushing the producer"))
    }
}
