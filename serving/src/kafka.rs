//! Kafka plumbing shared by the processes: producer settings, topic creation and the
//! embedded broker.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use lambdaflow_common::config::KafkaConfig;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;

/// An idempotent producer: retries never duplicate or reorder messages within a partition.
pub fn producer(brokers: &str) -> Result<FutureProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("message.timeout.ms", "30000")
        .create()
        .with_context(|| format!("creating a Kafka producer for {brokers}"))
}

/// Creates the topic with `kafka.partitions` partitions unless it exists.
pub async fn ensure_topic(kafka: &KafkaConfig, brokers: &str) -> Result<()> {
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .with_context(|| format!("connecting to {brokers}"))?;
    let topic = kafka.topic.clone();
    let exists = tokio::task::spawn_blocking(move || {
        probe
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .map(|m| {
                m.topics()
                    .iter()
                    .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
            })
    })
    .await?
    .with_context(|| format!("reading metadata from {brokers}"))?;
    if exists {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .with_context(|| format!("connecting to {brokers}"))?;
    let new = NewTopic::new(&kafka.topic, kafka.partitions, TopicReplication::Fixed(1));
    let results = admin
        .create_topics(
            [&new],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .with_context(|| format!("creating topic {}", kafka.topic))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => bail!("creating topic {topic}: {code}"),
        }
    }
    tracing::info!(topic = %kafka.topic, partitions = kafka.partitions, "created topic");
    Ok(())
}

/// librdkafka's in-process mock cluster, for the demo and fast tests.
///
/// The cluster is not `Send`, so it lives on a thread of its own until this handle is
/// dropped. It speaks the Kafka protocol on a loopback port that any client can use; it keeps
/// only about 5 MiB per partition, so old messages vanish (see the README).
#[derive(Debug)]
pub struct EmbeddedBroker {
    bootstrap: String,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EmbeddedBroker {
    /// Starts a one-broker cluster holding `topic` with `partitions` partitions.
    pub fn start(topic: &str, partitions: i32) -> Result<Self> {
        let (ready_tx, ready_rx) = mpsc::channel::<Result<String, String>>();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let topic = topic.to_owned();
        let thread = std::thread::Builder::new()
            .name("embedded-broker".into())
            .spawn(move || {
                let cluster = match MockCluster::new(1) {
                    Ok(c) => c,
                    Err(e) => return drop(ready_tx.send(Err(e.to_string()))),
                };
                if let Err(e) = cluster.create_topic(&topic, partitions, 1) {
                    return drop(ready_tx.send(Err(e.to_string())));
                }
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                let _ = stop_rx.recv();
            })?;
        let bootstrap = ready_rx
            .recv()
            .context("the embedded broker thread died while starting")?
            .map_err(anyhow::Error::msg)
            .context("starting the embedded broker")?;
        Ok(Self {
            bootstrap,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The `bootstrap.servers` of the cluster.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
