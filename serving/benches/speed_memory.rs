//! Speed-layer memory with the batch not running: shop events (1 % duplicates, 1 % late)
//! validated and folded into the demo views in micro-batches of 1,000 over three
//! partitions, as the speed layer does between two batch runs. After every million it prints
//! the process's resident memory and the speed layer's own byte counts — retained events in
//! memory and on disk, deduplication ids, view states — per event and per group. Then one
//! swap to a batch version covering the first half, timed, with every view's answer checked
//! against the one before the swap.
//!
//! `cargo bench -p lambdaflow-serving --bench speed_memory` (`LAMBDAFLOW_BENCH_EVENTS` sets
//! the event count, default 5,000,000). No broker: the events are generated in the process and
//! never stored, so the memory measured is the speed layer's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use lambdaflow_common::batch_view::BatchView;
use lambdaflow_common::config::Config;
use lambdaflow_common::query::{AnswerLimits, Query, Row, Value, answer};
use lambdaflow_common::sample::{Generator, Mix};
use lambdaflow_common::state::ViewState;
use lambdaflow_common::timestamp::now_micros;
use lambdaflow_common::validate::{Coordinates, Validator};
use lambdaflow_common::watermark::Watermark;
use lambdaflow_speed::engine::Speed;
use lambdaflow_speed::served::Served;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const PARTITIONS: i32 = 3;
const MICRO_BATCH: usize = 1_000;

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb / 1024.0
}

fn mb(bytes: impl Into<u64>) -> f64 {
    bytes.into() as f64 / (1 << 20) as f64
}

/// Every view's rows for the whole of it, over `parts`.
fn answers(config: &Config, parts: &[Vec<&ViewState>]) -> Vec<Vec<Row>> {
    config
        .views
        .iter()
        .zip(parts)
        .map(|(view, parts)| {
            answer(
                config.source(),
                view,
                parts,
                &Query::whole(view),
                &AnswerLimits::NONE,
            )
            .expect("no limits")
        })
        .collect()
}

fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
        _ => a == b,
    }
}

fn main() {
    let n: usize = std::env::var("LAMBDAFLOW_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000_000);
    let config = Arc::new(Config::shop());
    let served = Served::new();
    let mut speed = Speed::before_any_batch(config.clone(), served.clone()).expect("speed");
    let validator = Validator::new(config.source());
    let mix = Mix {
        duplicates: 0.01,
        late: 0.01,
        invalid: 0.0,
    };
    let mut generator = Generator::shop(7, 10_000, mix);
    let now = now_micros();
    let mut next = [0i64; PARTITIONS as usize];
    let mut half: Option<(Vec<ViewState>, BTreeMap<i32, i64>)> = None;
    let rss_start = rss_mb();
    println!(
        "{n} events, batch not running; spill directory {}",
        speed.spill_dir().display()
    );
    println!(
        "{:>9} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10} {:>8} {:>12}",
        "events",
        "rss MB",
        "Δrss MB",
        "mem MB",
        "disk MB",
        "ids MB",
        "states MB",
        "groups",
        "events/s"
    );
    let mut rss_at_million = Vec::new();
    let started = Instant::now();
    let mut folded = 0;
    while folded < n {
        let mut builder = validator.batch_builder("events", now);
        let mut upto = BTreeMap::new();
        for _ in 0..MICRO_BATCH.min(n - folded) {
            let sample = generator.next_event(now);
            let partition = (folded % PARTITIONS as usize) as i32;
            let offset = next[partition as usize];
            next[partition as usize] += 1;
            upto.insert(partition, offset);
            let _ = builder.push(Some(&sample.payload), Coordinates { partition, offset });
            folded += 1;
        }
        let events = builder.finish().events;
        for date in speed.dates_to_load(&events) {
            speed.load_ids(date, []).expect("ids");
        }
        speed.fold(events, &upto).expect("fold");
        if half.is_none() && folded >= n / 2 {
            let snapshot = served.snapshot().expect("loaded");
            let states = snapshot.pairs().iter().map(|p| p.speed().clone()).collect();
            half = Some((states, upto_all(&next)));
        }
        if folded % 1_000_000 == 0 || folded == n {
            let snapshot = served.snapshot().expect("loaded");
            let retained = snapshot.retained();
            let states: usize = snapshot
                .pairs()
                .iter()
                .map(|p| p.speed().heap_bytes())
                .sum();
            let groups: usize = snapshot.pairs().iter().map(|p| p.speed().len()).sum();
            let rss = rss_mb();
            rss_at_million.push((folded, rss));
            println!(
                "{:>9} {:>9.1} {:>9.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>8} {:>12.0}",
                folded,
                rss,
                rss - rss_start,
                mb(retained.memory_bytes as u64),
                mb(retained.disk_bytes),
                mb(retained.id_bytes as u64),
                mb(states as u64),
                groups,
                folded as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    let snapshot = served.snapshot().expect("loaded");
    let retained = snapshot.retained();
    let groups: usize = snapshot.pairs().iter().map(|p| p.speed().len()).sum();
    let states: usize = snapshot
        .pairs()
        .iter()
        .map(|p| p.speed().heap_bytes())
        .sum();
    println!(
        "per event: {:.1} B ids, {:.1} B retained on disk, {:.2} B retained in memory; per group: {:.0} B of state ({groups} groups)",
        retained.id_bytes as f64 / n as f64,
        retained.disk_bytes as f64 / n as f64,
        retained.memory_bytes as f64 / n as f64,
        states as f64 / groups.max(1) as f64,
    );
    if let [.., (e1, r1), (e2, r2)] = rss_at_million[..] {
        println!(
            "RSS growth over the last {:.1} M events: {:.1} MB per million",
            (e2 - e1) as f64 / 1e6,
            (r2 - r1) / ((e2 - e1) as f64 / 1e6)
        );
    }
    if rss_at_million.len() > 2 {
        let (e1, r1) = rss_at_million[1];
        let (e2, r2) = *rss_at_million.last().expect("several");
        println!(
            "RSS growth from {:.0} M to {:.0} M events: {:.1} MB per million",
            e1 as f64 / 1e6,
            e2 as f64 / 1e6,
            (r2 - r1) / ((e2 - e1) as f64 / 1e6)
        );
    }

    let before = answers(
        &config,
        &snapshot
            .pairs()
            .iter()
            .map(|p| vec![p.speed()])
            .collect::<Vec<_>>(),
    );
    drop(snapshot);
    let (half_states, offsets) = half.expect("half way recorded");
    let batches: Vec<Option<Arc<BatchView>>> = half_states
        .into_iter()
        .map(|state| {
            Some(Arc::new(BatchView {
                version: Some(1),
                watermark: Some(Watermark {
                    raw_version: 1,
                    offsets: offsets.clone(),
                    ..Watermark::default()
                }),
                state,
                ..BatchView::default()
            }))
        })
        .collect();
    let started = Instant::now();
    let mut raw = speed.swap_needs(&batches).expect("swap needs");
    for (version, date) in raw.needed() {
        raw.check(version, date, []);
    }
    speed.swap(batches, &raw).expect("swap");
    let swap = started.elapsed();
    let snapshot = served.snapshot().expect("loaded");
    let after = answers(
        &config,
        &snapshot
            .pairs()
            .iter()
            .map(|p| vec![&p.batch().state, p.speed()])
            .collect::<Vec<_>>(),
    );
    let exact = before.iter().zip(&after).all(|(b, a)| {
        b.len() == a.len()
            && b.iter().zip(a).all(|(b, a)| {
                b.bucket == a.bucket
                    && b.dimensions == a.dimensions
                    && b.values.iter().zip(&a.values).all(|(b, a)| same(b, a))
            })
    });
    println!(
        "swap to a batch version at {:.2} M events: {:.2} s, {} events left retained, answers {}",
        n as f64 / 2e6,
        swap.as_secs_f64(),
        snapshot.retained().events,
        if exact { "exact" } else { "DIFFERENT" }
    );
    assert!(
        exact,
        "batch ⊕ speed after the swap differs from speed before it"
    );
}

/// The last offset of every partition, given the next offset of each.
fn upto_all(next: &[i64]) -> BTreeMap<i32, i64> {
    next.iter()
        .enumerate()
        .map(|(p, n)| (p as i32, n - 1))
        .collect()
}
