//! The librdkafka settings of every client lambdaflow creates, in one place, so that a
//! setting's reason is written once and every role is visible side by side.
//!
//! Every client is made for a [`Cluster`]: the brokers, and the deployment's
//! `[kafka.properties]` (security, SASL, TLS, client tuning), which every client receives after
//! its role's own settings, so that an operator's property wins over a default of ours. The
//! properties lambdaflow relies on for its guarantees cannot be given there (the config refuses
//! them).

use std::collections::BTreeMap;

use lambdaflow_common::config::KafkaConfig;
use rdkafka::ClientConfig;

/// Where the brokers are and how to reach them: `kafka.brokers` (or the embedded broker's
/// address) and `[kafka.properties]`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Cluster {
    brokers: String,
    properties: BTreeMap<String, String>,
}

impl Cluster {
    /// The brokers at `brokers` (bootstrap servers), with no properties.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            properties: BTreeMap::new(),
        }
    }

    /// The brokers at `brokers` with `kafka`'s properties: `kafka.brokers` itself, or the
    /// address of the embedded broker started for it.
    pub fn with_properties_of(brokers: impl Into<String>, kafka: &KafkaConfig) -> Self {
        Self {
            brokers: brokers.into(),
            properties: kafka.properties.clone(),
        }
    }

    /// The bootstrap servers.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// Settings every client shares: where the brokers are.
    fn base(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        config
    }

    /// `config` with the properties set over it.
    fn finish(&self, mut config: ClientConfig) -> ClientConfig {
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }
}

/// Property values may hold secrets: only their keys are shown.
impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("brokers", &self.brokers)
            .field("properties", &self.properties.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl From<&str> for Cluster {
    fn from(brokers: &str) -> Self {
        Self::new(brokers)
    }
}

impl From<String> for Cluster {
    fn from(brokers: String) -> Self {
        Self::new(brokers)
    }
}

impl From<&String> for Cluster {
    fn from(brokers: &String) -> Self {
        Self::new(brokers.as_str())
    }
}

impl From<&Cluster> for Cluster {
    fn from(cluster: &Cluster) -> Self {
        cluster.clone()
    }
}

/// Settings every consumer shares: a start offset the broker no longer holds resumes at the
/// earliest one it does (never at the head, which would skip retained messages no batch
/// covers); the consumers report the deleted range as lost.
fn consumer(cluster: &Cluster, group_id: String) -> ClientConfig {
    let mut config = cluster.base();
    config
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest");
    config
}

/// The archiver's consumer: offsets live in the lake (`txn` actions), never in the consumer
/// group, so nothing is committed or stored.
pub fn archiver(cluster: &Cluster, group_id: &str) -> ClientConfig {
    let mut config = consumer(cluster, format!("{group_id}-archiver"));
    config
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "50")
        .set("queued.min.messages", "200000");
    cluster.finish(config)
}

/// The speed layer's consumer: starts from the batch watermark, commits nothing; short fetch
/// waits keep produce-to-visible latency low.
pub fn speed(cluster: &Cluster, group_id: &str) -> ClientConfig {
    let mut config = consumer(cluster, format!("{group_id}-speed"));
    config
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "10")
        // With librdkafka's default (100,000) the consumer stalled for ~0.9 s once its
        // queue drained mid-topic; a deeper prefetch keeps the fold fed.
        .set("queued.min.messages", "200000");
    cluster.finish(config)
}

/// A plain reader (tools and tests reading a topic back): librdkafka's defaults, no commits.
pub fn reader(cluster: &Cluster, group_id: &str) -> ClientConfig {
    cluster.finish(consumer(cluster, group_id.to_owned()))
}

/// A metadata and admin client: no settings beyond the brokers.
pub fn admin(cluster: &Cluster) -> ClientConfig {
    cluster.finish(cluster.base())
}

/// The idempotent producer: retries never duplicate or reorder messages within a partition.
pub fn producer(cluster: &Cluster) -> ClientConfig {
    let mut config = cluster.base();
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("message.timeout.ms", "30000");
    cluster.finish(config)
}

/// The idempotent producer, with `message.max.bytes` raised so that an event of
/// `max_event_bytes` fits with its key (the event id, never longer than the payload) and the
/// record framing; librdkafka's default (1,000,000) would refuse larger valid events forever.
/// A broker keeps its own limit (Kafka's `message.max.bytes`, a topic's `max.message.bytes`).
pub fn producer_for_events(cluster: &Cluster, max_event_bytes: usize) -> ClientConfig {
    let mut config = producer(cluster);
    config.set(
        "message.max.bytes",
        max_message_bytes(max_event_bytes).to_string(),
    );
    cluster.finish(config)
}

/// The `message.max.bytes` that fits a payload and a key of `max_event_bytes` each plus 64 KiB
/// of framing: at least librdkafka's default, at most its maximum.
pub fn max_message_bytes(max_event_bytes: usize) -> usize {
    max_event_bytes
        .saturating_mul(2)
        .saturating_add(64 * 1024)
        .clamp(1_000_000, 1_000_000_000)
}

/// An idempotent producer that puts one message in each record batch. Some Kafka-protocol
/// brokers (tansu 0.6) serve a fetch only from the first offset of a record batch; with one
/// message per batch a restarted consumer may resume at any offset, as Kafka allows.
pub fn producer_one_per_batch(cluster: &Cluster) -> ClientConfig {
    let mut config = cluster.base();
    config
        .set("enable.idempotence", "true")
        .set("batch.num.messages", "1")
        .set("linger.ms", "0");
    cluster.finish(config)
}

/// A producer for filling a topic as fast as possible (benchmarks and tests): a deep local
/// queue, small lingering.
pub fn bulk_producer(cluster: &Cluster) -> ClientConfig {
    let mut config = cluster.base();
    config
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000");
    cluster.finish(config)
}

#[cfg(test)]
mod tests {
    use lambdaflow_common::config::Config;

    use super::*;
    use crate::consumer::Consumer;
    use crate::embedded::EmbeddedBroker;
    use crate::producer::Producer;
    use crate::topic::ensure_topic;

    /// A cluster whose properties name a security protocol librdkafka does not have: every
    /// client made for it fails at creation, naming the property, which shows it was given.
    fn refused(config: &Config, brokers: &str) -> Cluster {
        let mut kafka = config.kafka.clone();
        kafka
            .properties
            .insert("security.protocol".into(), "carrier_pigeon".into());
        Cluster::with_properties_of(brokers, &kafka)
    }

    #[tokio::test]
    async fn every_client_receives_the_configured_properties() {
        let broker = EmbeddedBroker::start(&[("events", 1)]).unwrap();
        let config = Config::shop();
        let cluster = refused(&config, broker.bootstrap_servers());
        let says = |error: crate::Error| {
            let text = format!("{error}: {:?}", std::error::Error::source(&error));
            assert!(text.contains("security.protocol"), "{text}");
            assert!(
                !text.contains("carrier_pigeon"),
                "the value is redacted: {text}"
            );
        };
        says(Consumer::archiver(&cluster, "g", "events").unwrap_err());
        says(Consumer::speed(&cluster, "g", "events").unwrap_err());
        says(Consumer::reader(&cluster, "g", "events").unwrap_err());
        says(Producer::new(&cluster).unwrap_err());
        says(Producer::for_events(&cluster, 1 << 20).unwrap_err());
        says(ensure_topic(&cluster, "other", 1, 1).await.unwrap_err());

        // A property that tunes a default of ours wins over it; ours stay where none is given.
        let mut kafka = config.kafka.clone();
        kafka.properties.insert("linger.ms".into(), "50".into());
        kafka.properties.insert("client.id".into(), "shop-1".into());
        let tuned = Cluster::with_properties_of(broker.bootstrap_servers(), &kafka);
        let producer = producer(&tuned);
        assert_eq!(producer.get("linger.ms"), Some("50"));
        assert_eq!(producer.get("enable.idempotence"), Some("true"));
        for client in [
            archiver(&tuned, "g"),
            speed(&tuned, "g"),
            admin(&tuned),
            bulk_producer(&tuned),
        ] {
            assert_eq!(client.get("client.id"), Some("shop-1"));
            assert_eq!(
                client.get("bootstrap.servers"),
                Some(broker.bootstrap_servers())
            );
        }
        Producer::new(&tuned).unwrap();
        // TLS is built in: managed Kafka listens on SSL or SASL_SSL.
        kafka
            .properties
            .insert("security.protocol".into(), "SASL_SSL".into());
        kafka
            .properties
            .insert("sasl.mechanisms".into(), "PLAIN".into());
        for (key, value) in [("sasl.username", "shop"), ("sasl.password", "secret")] {
            kafka.properties.insert(key.into(), value.into());
        }
        Producer::new(Cluster::with_properties_of(
            broker.bootstrap_servers(),
            &kafka,
        ))
        .unwrap();
        let shown = format!("{tuned:?}");
        assert!(
            shown.contains("client.id") && !shown.contains("shop-1"),
            "{shown}"
        );
    }
}
