//! Creating the topic on a real broker (the embedded one creates its own).

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::types::RDKafkaErrorCode;

use crate::error::{Error, Result};
use crate::settings::{self, Cluster};

/// Creates `topic` with `partitions` partitions of `replication_factor` replicas on `cluster`
/// unless it exists.
pub async fn ensure_topic(
    cluster: &Cluster,
    topic: &str,
    partitions: i32,
    replication_factor: i16,
) -> Result<()> {
    let brokers = cluster.brokers();
    let probe: BaseConsumer = settings::admin(cluster)
        .create()
        .map_err(Error::client(format!("connecting to {brokers}")))?;
    let name = topic.to_owned();
    let exists = tokio::task::spawn_blocking(move || {
        probe
            .fetch_metadata(Some(&name), Duration::from_secs(10))
            .map(|m| {
                m.topics()
                    .iter()
                    .any(|t| t.name() == name && t.error().is_none() && !t.partitions().is_empty())
            })
    })
    .await
    .map_err(|e| Error::Task {
        task: "reading topic metadata",
        message: e.to_string(),
    })?
    .map_err(Error::client(format!("reading metadata from {brokers}")))?;
    if exists {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = settings::admin(cluster)
        .create()
        .map_err(Error::client(format!("connecting to {brokers}")))?;
    let new = NewTopic::new(
        topic,
        partitions,
        TopicReplication::Fixed(i32::from(replication_factor)),
    );
    let results = admin
        .create_topics(
            [&new],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .map_err(Error::client(format!("creating topic {topic}")))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(Error::CreateTopic { topic, code }),
        }
    }
    tracing::info!(%topic, partitions, replication_factor, "created topic");
    Ok(())
}
