//! The peer every Kafka benchmark measures lambdaflow's consumers against: a plain
//! `BaseConsumer` that connects, reads the topic's metadata, assigns every partition and reads
//! all messages — the start-up every measured consumer goes through too.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// Messages per second of the plain consumer reading all `n` messages of `partitions`
/// partitions of `topic`. Best of three, since the first read also pays for connections.
///
/// # Panics
/// When the consumer cannot be made or `n` messages do not arrive within two minutes.
pub fn plain_consumer_rate(brokers: &str, topic: &str, partitions: i32, n: usize) -> f64 {
    (0..3)
        .map(|run| plain_consumer(brokers, topic, partitions, n, run))
        .fold(0.0, f64::max)
}

fn plain_consumer(brokers: &str, topic: &str, partitions: i32, n: usize, run: usize) -> f64 {
    let started = Instant::now();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("bench-plain-{run}"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "50")
        .set("queued.min.messages", "200000")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .expect("metadata");
    consumer.assign(&tpl).expect("assign");
    let mut read = 0usize;
    let mut bytes = 0usize;
    while read < n {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            bytes += m.payload().map_or(0, <[u8]>::len);
            read += 1;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "only {read} of {n} messages arrived"
        );
    }
    assert!(bytes > 0);
    n as f64 / started.elapsed().as_secs_f64()
}
