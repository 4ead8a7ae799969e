//! `lambdaflow gen` and the demo's producers: synthetic events of one shape (the shop's, or a
//! web tracker's) to Kafka at a rate.

use std::path::Path;
use std::time::Duration;

use futures::future::try_join_all;
use lambdaflow_common::sample::{Generator, Mix, Shape};
use lambdaflow_common::timestamp::now_micros;
use lambdaflow_kafka::producer::{Pending, Producer};
use lambdaflow_kafka::{Error, Result};
use tokio_util::sync::CancellationToken;

/// What to produce.
#[derive(Debug, Clone, Copy)]
pub struct GenOptions {
    /// The shape of the events.
    pub shape: Shape,
    /// How many messages; `None` for no end.
    pub count: Option<u64>,
    /// Messages per second; `None` for as fast as the broker takes them.
    pub rate: Option<f64>,
    /// Fractions of duplicates, late and invalid events.
    pub mix: Mix,
    /// Seed of the generator.
    pub seed: u64,
}

/// How often the heartbeat file is rewritten while events are acknowledged.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// Produces until `count` messages were acknowledged or `shutdown` is cancelled; returns how
/// many were acknowledged. With a `heartbeat` file, the count acknowledged so far is written
/// to it at most every second while it grows, so that a healthcheck can tell a generator that
/// produces from one that is stuck by the file's age.
pub async fn produce(
    producer: &Producer,
    topic: &str,
    options: GenOptions,
    heartbeat: Option<&Path>,
    shutdown: &CancellationToken,
) -> Result<u64> {
    let mut generator = Generator::new(options.shape, options.seed, 3_000, options.mix);
    let started = tokio::time::Instant::now();
    let mut sent: u64 = 0;
    let mut acked: u64 = 0;
    let mut pending = Vec::new();
    let mut beat = Heartbeat::new(heartbeat);
    while options.count.is_none_or(|n| sent < n) && !shutdown.is_cancelled() {
        beat.after(acked).await;
        if let Some(rate) = options.rate {
            let due = started + Duration::from_secs_f64(sent as f64 / rate);
            if due > tokio::time::Instant::now() {
                acked += settle(&mut pending).await?;
                tokio::select! {
                    () = tokio::time::sleep_until(due) => {}
                    () = shutdown.cancelled() => break,
                }
            }
        }
        let sample = generator.next_event(now_micros());
        loop {
            match producer.queue(topic, sample.key.as_bytes(), &sample.payload) {
                Ok(delivery) => break pending.push(delivery),
                Err(Error::QueueFull) => {
                    acked += settle(&mut pending).await?;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err(e) => return Err(e),
            }
        }
        sent += 1;
        if pending.len() >= 50_000 {
            acked += settle(&mut pending).await?;
        }
    }
    acked += settle(&mut pending).await?;
    producer.flush(Duration::from_secs(30))?;
    beat.write(acked).await;
    Ok(acked)
}

/// The heartbeat file of [`produce`].
struct Heartbeat<'a> {
    path: Option<&'a Path>,
    last: tokio::time::Instant,
    written: u64,
}

impl<'a> Heartbeat<'a> {
    fn new(path: Option<&'a Path>) -> Self {
        Self {
            path,
            last: tokio::time::Instant::now(),
            written: 0,
        }
    }

    /// Writes `acked` when it grew and a second has passed since the last write.
    async fn after(&mut self, acked: u64) {
        if acked > self.written && self.last.elapsed() >= HEARTBEAT_EVERY {
            self.write(acked).await;
        }
    }

    /// Writes `acked`; a failure is logged (the healthcheck then sees a stale file).
    async fn write(&mut self, acked: u64) {
        let Some(path) = self.path else { return };
        if let Err(e) = tokio::fs::write(path, format!("{acked}\n")).await {
            tracing::warn!(path = %path.display(), error = %e, "writing the heartbeat file failed");
        }
        self.last = tokio::time::Instant::now();
        self.written = acked;
    }
}

/// Waits for every pending delivery; the first refusal is the error.
async fn settle(pending: &mut Vec<Pending>) -> Result<u64> {
    let delivered = try_join_all(pending.drain(..)).await?;
    Ok(delivered.len() as u64)
}
