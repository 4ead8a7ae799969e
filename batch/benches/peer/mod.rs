//! What the Kafka benchmarks share: a topic of generated shop events in librdkafka's
//! in-process broker, and the peer every consumer of it is measured against — a plain rdkafka
//! `BaseConsumer` reading the whole topic. Included by path from other crates' benchmarks.

use std::time::{Duration, Instant};

use lambdaflow_common::sample::{Mix, Sample, ShopGenerator};
use lambdaflow_common::timestamp::now_micros;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

/// The topic every benchmark reads.
pub const TOPIC: &str = "events";
/// The mock cluster keeps about 5 MiB per partition: enough partitions to hold every event.
pub const PARTITIONS: i32 = 12;

/// `LAMBDAFLOW_BENCH_EVENTS`, or `default`.
pub fn event_count(default: usize) -> usize {
    std::env::var("LAMBDAFLOW_BENCH_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// `n` shop events as of now: 1% duplicates, 5% late, 1% invalid.
pub fn samples(n: usize) -> Vec<Sample> {
    let mut generator = ShopGenerator::new(
        42,
        3_000,
        Mix {
            duplicates: 0.01,
            late: 0.05,
            invalid: 0.01,
        },
    );
    let now = now_micros();
    (0..n).map(|_| generator.next_event(now)).collect()
}

/// A mock cluster holding `samples` in [`TOPIC`], keyed by event id.
pub fn topic_of(
    samples: &[Sample],
) -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(TOPIC, PARTITIONS, 1).expect("topic");
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    for s in samples {
        while let Err((e, _)) = producer.send(BaseRecord::to(TOPIC).key(&s.key).payload(&s.payload))
        {
            assert!(
                matches!(e, rdkafka::error::KafkaError::MessageProduction(_)),
                "{e}"
            );
            producer.poll(Duration::from_millis(1));
        }
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
    cluster
}

/// Messages per second of a plain consumer that connects, reads the topic's metadata, assigns
/// every partition and reads all `n` messages: the start-up every measured consumer goes
/// through too. Best of three, since the first read also pays for connections.
pub fn plain_consumer_rate(brokers: &str, n: usize) -> f64 {
    (0..3)
        .map(|run| plain_consumer(brokers, n, run))
        .fold(0.0, f64::max)
}

fn plain_consumer(brokers: &str, n: usize, run: usize) -> f64 {
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
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(TOPIC, p, Offset::Beginning)
            .expect("partition");
    }
    consumer
        .fetch_metadata(Some(TOPIC), Duration::from_secs(5))
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
