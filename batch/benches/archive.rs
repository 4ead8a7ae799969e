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
use lambdaflow_common::timestamp::now_micros;
use lambdaflow_common::validate::{Coordinates, Validator};
use tokio_util::sync::CancellationToken;

mod peer;
#[allow(dead_code, reason = "this benchmark records rates only")]
mod results;

use peer::{PARTITIONS, TOPIC};
use results::{Better, record};

fn main() {
    let n = peer::event_count(200_000);
    let samples = peer::samples(n);
    let bytes: usize = samples.iter().map(|s| s.payload.len()).sum();
    println!(
        "{n} events, {} bytes on average, {PARTITIONS} partitions",
        bytes / n
    );
    let cluster = peer::topic_of(&samples);
    let brokers = cluster.bootstrap_servers().to_owned();
    let now = now_micros();

    let consumer_rate = peer::plain_consumer_rate(&brokers, n);
    println!(
        "plain rdkafka consumer:       {:>10.0} msgs/s (best of 3)",
        consumer_rate
    );

    let config = Config::shop();
    let validator = Validator::new(config.source());
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
    let consumer = Some(("plain rdkafka consumer", consumer_rate));
    record(
        "archive",
        "validator, one core",
        validate_rate,
        "events/s",
        Better::Higher,
        consumer,
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
    record(
        "archive",
        "archiver, Kafka to Delta",
        archive_rate,
        "events/s",
        Better::Higher,
        consumer,
    );
    drop(cluster);
}

fn archiver(brokers: &str, n: usize) -> f64 {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config::shop();
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
