//! Speed layer and query benchmarks, each next to its peer in the same run:
//! - speed layer events/s (consume, validate, deduplicate, filter, fold into three views)
//!   against a plain rdkafka consumer reading the same topic;
//! - produce-to-visible latency: from handing an event to the producer to its offset being
//!   folded into the state queries read;
//! - query latency over HTTP for a 30-day hourly query grouped by country, under an open-loop
//!   load of 2,000 queries/s from 16 connections;
//! - produce-to-visible latency again while 16 connections send the heaviest query the API
//!   accepts back to back, against the same latency without them.
//!
//! `cargo bench -p lambdaflow-serving --bench speed` (`LAMBDAFLOW_BENCH_EVENTS` sets the
//! event count, default 200,000). The broker is librdkafka's in-process mock cluster.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use lambdaflow_batch::lake::reader::LakeReader;
use lambdaflow_batch::views::schedule::Batches;
use lambdaflow_common::batch_view::BatchView;
use lambdaflow_common::config::Config;
use lambdaflow_common::sample::{Generator, Mix};
use lambdaflow_common::state::ViewState;
use lambdaflow_common::timestamp::{MICROS_PER_DAY, now_micros};
use lambdaflow_common::validate::{Coordinates, Validator};
use lambdaflow_kafka::producer::Producer;
use lambdaflow_serving::http::{AppState, app};
use lambdaflow_serving::speed_layer::Speeds;
use lambdaflow_speed::consume::{IdSink, RawIds, SpeedLayer};
use lambdaflow_speed::engine::Speed;
use lambdaflow_speed::error::RawIdsError;
use lambdaflow_speed::served::Served;
use tokio_util::sync::CancellationToken;

#[path = "../../batch/benches/peer/mod.rs"]
mod peer;
#[path = "../../batch/benches/results/mod.rs"]
mod results;

use peer::{PARTITIONS, TOPIC};
use results::{Better, record};

/// A fresh topic: nothing is stored yet.
struct NoRawIds;

impl RawIds for NoRawIds {
    fn ids<'a>(&'a self, _: u64, _: i32, _: IdSink<'a>) -> BoxFuture<'a, Result<(), RawIdsError>> {
        Box::pin(async { Ok(()) })
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn main() {
    let n = peer::event_count(200_000);
    let samples = peer::samples(n);
    let cluster = peer::topic_of(&samples);
    let brokers = cluster.bootstrap_servers().to_owned();
    println!("{n} events, {PARTITIONS} partitions");

    let plain = peer::plain_consumer_rate(&brokers, n);
    println!("plain rdkafka consumer: {plain:>10.0} msgs/s (best of 3)");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut config = Config::shop();
    config.kafka.brokers = brokers.clone();
    let config = Arc::new(config);
    let speed = (0..3)
        .map(|_| runtime.block_on(speed_layer(&config, &brokers, n)))
        .fold(0.0, f64::max);
    println!(
        "speed layer:            {speed:>10.0} events/s (best of 3) = {:.2}x the plain consumer",
        speed / plain
    );
    let consumer = Some(("plain rdkafka consumer", plain));
    record(
        "speed",
        "speed layer, consume to queryable",
        speed,
        "events/s",
        Better::Higher,
        consumer,
    );

    let (validate, fold) = fold_only(&config, &samples);
    println!(
        "  of which, on one core: validate {validate:>10.0} events/s, deduplicate + filter + fold into 3 views {fold:>10.0} events/s"
    );

    let latencies = runtime.block_on(produce_to_visible(&config, &brokers, empty_speed(&config)));
    record(
        "speed",
        "produce-to-visible p99",
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        "ms",
        Better::Lower,
        None,
    );
    println!(
        "produce-to-visible:     p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} events, one at a time)",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3,
        latencies.len()
    );

    let quiet = percentile(&latencies, 0.99);
    runtime.block_on(query_load(&config, &brokers));
    runtime.block_on(freshness_under_heavy_queries(&config, &brokers, quiet));
    drop(cluster);
}

/// The speed layer's two CPU stages without Kafka: validation, then deduplication, filters and
/// folding, in micro-batches of 20,000.
fn fold_only(config: &Arc<Config>, samples: &[lambdaflow_common::sample::Sample]) -> (f64, f64) {
    let n = samples.len();
    let validator = Validator::new(config.source());
    let now = now_micros();
    let started = Instant::now();
    let mut chunks = Vec::new();
    for (c, chunk) in samples.chunks(20_000).enumerate() {
        let mut builder = validator.batch_builder(TOPIC, now);
        for (i, s) in chunk.iter().enumerate() {
            let _ = builder.push(
                Some(&s.payload),
                Coordinates {
                    partition: 0,
                    offset: (c * 20_000 + i) as i64,
                },
            );
        }
        chunks.push(builder.finish().events);
    }
    let validate = n as f64 / started.elapsed().as_secs_f64();
    let (_shared, mut speed) = empty_speed(config);
    let started = Instant::now();
    for events in chunks {
        for date in speed.dates_to_load(&events) {
            speed.load_ids(date, []).unwrap();
        }
        speed.fold(events, &BTreeMap::new()).expect("fold");
    }
    (validate, n as f64 / started.elapsed().as_secs_f64())
}

fn empty_speed(config: &Arc<Config>) -> (Served, Speed) {
    let served = Served::new();
    let speed = Speed::before_any_batch(config.clone(), served.clone()).expect("speed");
    (served, speed)
}

/// Messages folded into the state queries read.
fn consumed(served: &Served) -> i64 {
    let snapshot = served.snapshot().expect("loaded");
    snapshot.folded().values().map(|o| o + 1).sum()
}

/// Start-up (metadata, assignment) to the last message folded, as the plain consumer.
async fn speed_layer(config: &Arc<Config>, brokers: &str, n: usize) -> f64 {
    let (shared, speed) = empty_speed(config);
    let (_swaps, rx) = tokio::sync::mpsc::channel(1);
    let layer = SpeedLayer::new(config.clone(), brokers, speed, Arc::new(NoRawIds), rx);
    let token = CancellationToken::new();
    let started = Instant::now();
    let run = tokio::spawn(layer.run(token.clone()));
    while (consumed(&shared) as usize) < n {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "speed layer stalled"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed();
    token.cancel();
    run.await.expect("task").expect("speed layer");
    n as f64 / elapsed.as_secs_f64()
}

async fn produce_to_visible(
    config: &Arc<Config>,
    brokers: &str,
    (shared, speed): (Served, Speed),
) -> Vec<Duration> {
    let (_swaps, rx) = tokio::sync::mpsc::channel(1);
    let layer = SpeedLayer::new(config.clone(), brokers, speed, Arc::new(NoRawIds), rx);
    let token = CancellationToken::new();
    let run = tokio::spawn(layer.run(token.clone()));
    let producer = Producer::one_message_per_batch(brokers).expect("producer");
    while !shared.progress().caught_up() || consumed(&shared) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut generator = Generator::shop(7, 1_000, Mix::default());
    let mut latencies = Vec::new();
    for _ in 0..1_000 {
        let s = generator.next_event(now_micros());
        let sent = Instant::now();
        let delivery = producer
            .send(TOPIC, s.key.as_bytes(), &s.payload)
            .await
            .expect("delivered");
        loop {
            let visible = shared
                .snapshot()
                .expect("loaded")
                .folded()
                .get(&delivery.partition)
                .is_some_and(|o| *o >= delivery.offset);
            if visible {
                break;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        latencies.push(sent.elapsed());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    token.cancel();
    run.await.expect("task").expect("speed layer");
    latencies.sort();
    latencies
}

const LOAD_SECONDS: f64 = 5.0;

/// Posts a query and reads the whole answer.
async fn post_query(client: &reqwest::Client, url: &str, body: &str) -> Vec<u8> {
    let r = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("query");
    assert!(r.status().is_success(), "{}", r.status());
    r.bytes().await.expect("body").to_vec()
}

/// Latencies of `body` posted to `url` at `rate` per second from 16 connections for
/// [`LOAD_SECONDS`], open loop: each query counts from when it was due, so queueing shows.
async fn open_loop(client: &reqwest::Client, url: &str, body: &str, rate: f64) -> Vec<Duration> {
    let connections = 16usize;
    let per_connection = Duration::from_secs_f64(connections as f64 / rate);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..connections {
        let (client, url, body) = (client.clone(), url.to_owned(), body.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut next = started + per_connection.mul_f64(c as f64 / connections as f64);
            // Queries not started by the end of the window are not sent (the shortfall shows
            // in the rate done).
            while next.duration_since(started).as_secs_f64() < LOAD_SECONDS
                && started.elapsed().as_secs_f64() < LOAD_SECONDS
            {
                tokio::time::sleep_until(next.into()).await;
                post_query(&client, &url, &body).await;
                latencies.push(Instant::now().duration_since(next));
                next += per_connection;
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.expect("load task"));
    }
    latencies.sort();
    latencies
}

/// Batch sides for every view: 600,000 events over the 30 days before now, so that every
/// hour has events in several countries, folded by the speed layer's own engine. Returns the
/// states in config order and the days' bounds.
fn thirty_days(config: &Arc<Config>) -> (Vec<ViewState>, i64, i64) {
    let validator = Validator::new(config.source());
    let mut generator = Generator::shop(3, 5_000, Mix::default());
    let end = now_micros();
    let start = end - 30 * MICROS_PER_DAY;
    let (shared, mut speed) = empty_speed(config);
    for chunk in 0..30 {
        let mut builder = validator.batch_builder(TOPIC, end);
        for i in 0..20_000i64 {
            let t = start + (chunk * 20_000 + i) * (end - start) / 600_000;
            let s = generator.next_event(t);
            let _ = builder.push(
                Some(&s.payload),
                Coordinates {
                    partition: 0,
                    offset: chunk * 20_000 + i,
                },
            );
        }
        let events = builder.finish().events;
        for date in speed.dates_to_load(&events) {
            speed.load_ids(date, []).expect("load ids");
        }
        speed.fold(events, &BTreeMap::new()).expect("fold");
    }
    let snapshot = shared.snapshot().expect("loaded");
    let states = snapshot.pairs().iter().map(|p| p.speed().clone()).collect();
    (states, start, end)
}

/// A speed layer whose views have `batches` as their batch sides, covering no offset.
fn speed_over(config: &Arc<Config>, batches: Vec<ViewState>) -> (Served, Speed) {
    let (shared, mut speed) = empty_speed(config);
    let swap = batches
        .into_iter()
        .map(|state| {
            Some(Arc::new(BatchView {
                version: Some(1),
                watermark: Some(Default::default()),
                state,
                ..BatchView::default()
            }))
        })
        .collect();
    speed
        .swap(swap, &lambdaflow_speed::engine::RawIdSets::default())
        .expect("swap");
    (shared, speed)
}

/// The API's state over `shared`, with an empty lake in a temporary directory.
fn api_over(config: &Arc<Config>, brokers: &str, shared: Served) -> (AppState, tempfile::TempDir) {
    let lake = tempfile::tempdir().expect("temp dir");
    let mut config = (**config).clone();
    config.lake.uri = lake.path().display().to_string();
    let config = Arc::new(config);
    let batches = Batches::new(config.clone(), CancellationToken::new()).expect("batches");
    let reader = Arc::new(LakeReader::new(&config.lake).expect("lake reader"));
    let speeds = Speeds::new(&config, vec![shared]);
    let state = AppState::new(
        config,
        Producer::new(brokers).expect("producer"),
        batches,
        reader,
        speeds,
    )
    .expect("auth is off");
    (state, lake)
}

/// The API on a loopback port; its address.
async fn listen(state: AppState) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        axum::serve(listener, app(state)).await.expect("serve");
    });
    (addr, server)
}

/// A batch side of 30 days of hourly groups (every hour has events in several countries), a
/// speed side of the last hour, and the API on a loopback port under open-loop load.
async fn query_load(config: &Arc<Config>, brokers: &str) {
    let view = &config.views[0];
    let (batches, start, end) = thirty_days(config);
    let groups = batches[0].len();
    let (shared, _speed) = speed_over(config, batches);
    let (state, _lake) = api_over(config, brokers, shared);
    let answer_only = {
        let snapshot = state.speeds.served(0).snapshot().expect("loaded");
        let pair = snapshot.pair(0);
        let query = lambdaflow_common::query::Query {
            from: Some(start),
            to: Some(end),
            rollup: lambdaflow_common::query::Rollup::Buckets(
                lambdaflow_common::view::Granularity::Hour,
            ),
            group_by: vec![0],
            filters: Vec::new(),
            measures: (0..view.measures.len()).collect(),
            order_by: Vec::new(),
            limit: None,
        };
        let started = Instant::now();
        for _ in 0..100 {
            std::hint::black_box(lambdaflow_common::query::answer(
                state.config.source(),
                view,
                &[&pair.batch().state, pair.speed()],
                &query,
                &lambdaflow_common::query::AnswerLimits::NONE,
            ))
            .expect("no limits");
        }
        started.elapsed() / 100
    };
    let body = serde_json::json!({
        "from": lambdaflow_common::timestamp::format_micros(start),
        "to": lambdaflow_common::timestamp::format_micros(end),
        "granularity": "hour",
        "group_by": ["country"],
    })
    .to_string();
    let in_process = {
        use tower::ServiceExt;
        let router = app(state.clone());
        let started = Instant::now();
        for _ in 0..100 {
            let request = axum::http::Request::post("/v1/views/sales_by_country/query")
                .header("content-type", "application/json")
                .body(axum::body::Body::from(body.clone()))
                .expect("request");
            let response = router.clone().oneshot(request).await.expect("response");
            axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .expect("body");
        }
        started.elapsed() / 100
    };
    let (addr, server) = listen(state).await;
    let url = format!("http://{addr}/v1/views/sales_by_country/query");
    let client = reqwest::Client::new();
    let rows = {
        let v: serde_json::Value =
            serde_json::from_slice(&post_query(&client, &url, &body).await).expect("json");
        v["rows"].as_array().map_or(0, Vec::len)
    };
    let mut p99s = Vec::new();
    for rate in [200.0, 2_000.0] {
        let latencies = open_loop(&client, &url, &body, rate).await;
        p99s.push((
            rate,
            latencies.len() as f64 / LOAD_SECONDS,
            percentile(&latencies, 0.99),
        ));
        println!(
            "query (30 days hourly by country: {groups} batch groups -> {rows} rows) at {rate:.0} queries/s offered: {:.0} done/s; p50 {:.2} ms, p99 {:.2} ms",
            latencies.len() as f64 / LOAD_SECONDS,
            percentile(&latencies, 0.5).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        );
    }
    let mut direct = Vec::new();
    for _ in 0..200 {
        let sent = Instant::now();
        let r = client
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .expect("healthz");
        r.bytes().await.expect("body");
        direct.push(sent.elapsed());
    }
    direct.sort();
    println!(
        "query handler in process, no HTTP: {:.2} ms per query, of which merging and finalising states {:.2} ms",
        in_process.as_secs_f64() * 1e3,
        answer_only.as_secs_f64() * 1e3
    );
    println!(
        "peer: GET /healthz over the same client, p50 {:.2} ms, p99 {:.2} ms",
        percentile(&direct, 0.5).as_secs_f64() * 1e3,
        percentile(&direct, 0.99).as_secs_f64() * 1e3,
    );
    let healthz = percentile(&direct, 0.99).as_secs_f64() * 1e3;
    for (rate, done, p99) in p99s {
        record(
            "speed",
            &format!("query p99, {rows}-row answer, {rate:.0}/s offered ({done:.0}/s done)"),
            p99.as_secs_f64() * 1e3,
            "ms",
            Better::Lower,
            Some(("GET /healthz p99", healthz)),
        );
    }
    server.abort();
}

/// Produce-to-visible latency while 16 connections send the heaviest query the API accepts,
/// back to back: every bucket of 30 days of the view with the most groups, by each of its dimensions, every measure, sorted
/// by a measure, the default row limit. `quiet` is the p99 without that load, the peer.
async fn freshness_under_heavy_queries(config: &Arc<Config>, brokers: &str, quiet: Duration) {
    let (batches, _, _) = thirty_days(config);
    let heaviest = (0..batches.len())
        .max_by_key(|v| batches[*v].len())
        .expect("views");
    let (view, groups) = (&config.views[heaviest], batches[heaviest].len());
    let (shared, speed) = speed_over(config, batches);
    let (state, _lake) = api_over(config, brokers, shared.clone());
    let (addr, server) = listen(state).await;
    let url = format!("http://{addr}/v1/views/{}/query", view.name);
    let body = serde_json::json!({
        "granularity": view.granularity.as_str(),
        "group_by": view.dimensions,
        "order_by": [{"field": view.measures[0].name, "desc": true}],
    })
    .to_string();
    let stop = CancellationToken::new();
    let client = reqwest::Client::new();
    let mut load = Vec::new();
    for _ in 0..16 {
        let (client, url, body, stop) = (client.clone(), url.clone(), body.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut answered = Vec::new();
            while !stop.is_cancelled() {
                let sent = Instant::now();
                post_query(&client, &url, &body).await;
                answered.push(sent.elapsed());
            }
            answered
        }));
    }
    let started = Instant::now();
    let latencies = produce_to_visible(config, brokers, (shared, speed)).await;
    let elapsed = started.elapsed();
    stop.cancel();
    let mut answered = Vec::new();
    for task in load {
        answered.extend(task.await.expect("load task"));
    }
    answered.sort();
    server.abort();
    let p99 = percentile(&latencies, 0.99);
    println!(
        "produce-to-visible under 16 connections of the heaviest query ({groups} groups, {:.0} queries/s answered, p50 {:.0} ms): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        answered.len() as f64 / elapsed.as_secs_f64(),
        percentile(&answered, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3,
    );
    record(
        "speed",
        "produce-to-visible p99 under 16 connections of the heaviest query",
        p99.as_secs_f64() * 1e3,
        "ms",
        Better::Lower,
        Some((
            "produce-to-visible p99 without queries",
            quiet.as_secs_f64() * 1e3,
        )),
    );
}
