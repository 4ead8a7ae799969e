//! What the Kafka benchmarks share: a topic of generated shop events in the embedded
//! (librdkafka in-process) broker, and the peer every consumer of it is measured against — a
//! plain rdkafka `BaseConsumer` reading the whole topic. Included by path from other crates' benchmarks.

use std::time::Duration;

use lambdaflow_common::sample::{Generator, Mix, Sample};
use lambdaflow_common::timestamp::now_micros;
use lambdaflow_kafka::embedded::EmbeddedBroker;
use lambdaflow_kafka::producer::Producer;

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
    let mut generator = Generator::shop(
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

/// An embedded broker holding `samples` in [`TOPIC`], keyed by event id.
pub fn topic_of(samples: &[Sample]) -> EmbeddedBroker {
    let broker = EmbeddedBroker::start(&[(TOPIC, PARTITIONS)]).expect("embedded broker");
    let producer = Producer::bulk(broker.bootstrap_servers()).expect("producer");
    let mut pending = Vec::new();
    for s in samples {
        loop {
            match producer.queue(TOPIC, s.key.as_bytes(), &s.payload) {
                Ok(p) => break pending.push(p),
                Err(lambdaflow_kafka::Error::QueueFull) => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
    drop(pending);
    broker
}

/// Messages per second of the plain consumer peer
/// ([`lambdaflow_kafka::peer::plain_consumer_rate`]) reading all `n` messages of [`TOPIC`].
pub fn plain_consumer_rate(brokers: &str, n: usize) -> f64 {
    lambdaflow_kafka::peer::plain_consumer_rate(brokers, TOPIC, PARTITIONS, n)
}
