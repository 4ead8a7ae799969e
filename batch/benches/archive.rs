//! Archiver benchmark: validator events/s on one core and archiver events/s end to end, each
//! next to a plain rdkafka consumer reading the same topic in the same run.
//!
//! `cargo bench -p lambdaflow-batch --bench archive` (set `LAMBDAFLOW_BENCH_EVENTS` to change
//! the event count). The broker is librdkafka's in-process mock cluster, so the numbers measure
//! lambdaflow and librdkafka, not a network.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use lambdaflow_batch::archive::Archiver;
use lambdaflow_common::config::Config;
use lambdaflow_common::sample::{Mix, ShopGenerator};
use lambdaflow_common::timestamp::now_micros;
use lambdaflow_common::validate::{Coordinates, Validator};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

const TOPIC: &str = "events";
/// The mock cluster keeps about 5 MiB per partition: enough partitions to hold every event.
const PARTITIONS: i32 = 12;

fn main() {
    let n: usize = std::env::var("LAMBDAFLOW_BENCH_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(TOPIC, PARTITIONS, 1).expect("topic");
    let brokers = cluster.bootstrap_servers();

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
    let samples: Vec<_> = (0..n).map(|_| generator.next_event(now)).collect();
    let bytes: usize = samples.iter().map(|s| s.payload.len()).sum();
    println!(
        "{n} events, {} bytes on average, {PARTITIONS} partitions",
        bytes / n
    );

    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    for s in &samples {
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

    // Best of three: the first read also pays for connections and metadata.
    let consumer_rate = (0..3)
        .map(|i| plain_consumer(&brokers, n, i))
        .fold(0.0, f64::max);
    println!(
        "plain rdkafka consumer:       {:>10.0} msgs/s (best of 3)",
        consumer_rate
    );

    let config = Config::demo();
    let validator = Validator::new(&config.source);
    let started = Instant::now();
    let mut builder = validator.batch_builder(TOPIC, now);
    for (i, s) in samples.iter().enumerate() {
        let _ = builder.push(
            Some(&s.payload),
            Coordinates {
                partition: 0,
                offset: i as i64,
            },
        );
    }
    let out = builder.finish();
    let validate_rate = n as f64 / started.elapsed().as_secs_f64();
    assert_eq!(out.events.num_rows() + out.rejects.num_rows(), n);
    println!(
        "validator (1 core):           {:>10.0} events/s  = {:.2}x the plain consumer",
        validate_rate,
        validate_rate / consumer_rate
    );

    let started = Instant::now();
    let mut fields = 0usize;
    for s in &samples {
        if let Ok(serde_json::Value::Object(m)) =
            serde_json::from_slice::<serde_json::Value>(&s.payload)
        {
            fields += m.len();
        }
    }
    let value_rate = n as f64 / started.elapsed().as_secs_f64();
    assert!(fields > 0);
    println!(
        "serde_json::Value parse only: {:>10.0} events/s  (validator = {:.2}x of it)",
        value_rate,
        validate_rate / value_rate
    );

    let archive_rate = archiver(&brokers, n);
    println!(
        "archiver end to end:          {:>10.0} events/s  = {:.2}x the plain consumer",
        archive_rate,
        archive_rate / consumer_rate
    );
    drop(cluster);
}

/// Connect, read the topic's metadata, assign every partition and read all messages: the same
/// start-up the archiver goes through, inside the same kind of clock.
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

fn archiver(brokers: &str, n: usize) -> f64 {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config::demo();
    config.kafka.brokers = brokers.to_owned();
    config.lake.uri = dir.path().join("lake").display().to_string();
    config.archive.commit_interval = Duration::from_millis(500);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let archiver = Archiver::new(Arc::new(config), brokers);
    let stats = archiver.stats();
    let token = CancellationToken::new();
    let started = Instant::now();
    let elapsed = runtime.block_on(async {
        let run = tokio::spawn(archiver.run(token.clone()));
        loop {
            let written = stats.archived.load(Ordering::Relaxed)
                + stats.duplicates.load(Ordering::Relaxed)
                + stats.quarantined.load(Ordering::Relaxed);
            if written as usize >= n {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "archived only {written} of {n}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let elapsed = started.elapsed();
        token.cancel();
        run.await.expect("archiver task").expect("archiver");
        elapsed
    });
    n as f64 / elapsed.as_secs_f64()
}
