//! The archiver's promise, tested the hard way: a real tansu broker, the real `lambdaflow
//! archive` process killed with SIGKILL at random moments and restarted, and the raw and
//! quarantine tables read back through deltalake must hold exactly the unique valid events and
//! exactly the invalid ones — with no clear-text masked value anywhere under the lake.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use lambdaflow_common::timestamp::{date_of_micros, format_date, format_micros, now_micros};
use lambdaflow_kafka::producer::Producer;
use lambdaflow_tests::e2e::sample;
use lambdaflow_tests::{Process, Tansu, files_under, free_port, query_table, scratch_dir};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

const TOPIC: &str = "events";
const PARTITIONS: u32 = 4;
const WAVES: usize = 5;
const VALID_PER_WAVE: usize = 600;
const HOUR_US: i64 = 3_600_000_000;
/// Failpoints of the two-writer test: every data file put takes this long.
const SLOW_PARQUET: &str = "slow:.parquet#300";

/// What the test produced and therefore expects to find.
#[derive(Default)]
struct Truth {
    /// (id, UTC date) of every unique valid event.
    raw: BTreeSet<(String, String)>,
    /// Reason codes of every invalid event.
    reasons: Vec<String>,
    /// Payloads of valid events, for re-sending as duplicates.
    sent: Vec<(String, Vec<u8>)>,
}

fn event(id: &str, time_us: i64, email: &str, amount: f64) -> Vec<u8> {
    json!({
        "event_id": id, "event_time": format_micros(time_us), "type": "purchase",
        "user_id": format!("u{}", id.len()), "country": "kr", "amount": amount, "email": email,
    })
    .to_string()
    .into_bytes()
}

/// One wave: new valid events (some late), duplicates of earlier ones, ids reused on another
/// date (not duplicates), and one event of every invalid kind.
fn wave(w: usize, rng: &mut StdRng, truth: &mut Truth) -> Vec<(String, Vec<u8>)> {
    let now = now_micros();
    let mut out = Vec::new();
    for i in 0..VALID_PER_WAVE {
        let id = format!("w{w}-e{i}");
        let late = rng.random_bool(0.15);
        let time = if late {
            now - rng.random_range(HOUR_US..48 * HOUR_US)
        } else {
            now - rng.random_range(0..60_000_000)
        };
        let email = format!("secret-{w}-{i}@example.com");
        let payload = event(&id, time, &email, rng.random_range(1.0..500.0));
        truth
            .raw
            .insert((id.clone(), format_date(date_of_micros(time))));
        truth.sent.push((id.clone(), payload.clone()));
        out.push((id, payload));
    }
    for _ in 0..VALID_PER_WAVE / 10 {
        let (id, payload) = truth.sent[rng.random_range(0..truth.sent.len())].clone();
        out.push((id, payload));
    }
    for i in 0..5 {
        let id = format!("w{w}-e{i}");
        let time = now - 72 * HOUR_US;
        let email = format!("secret-again-{w}-{i}@example.com");
        truth
            .raw
            .insert((id.clone(), format_date(date_of_micros(time))));
        out.push((id.clone(), event(&id, time, &email, 1.0)));
    }
    let leak = format!("leak-{w}@example.com");
    let t = format_micros(now);
    let invalid: Vec<(&str, Vec<u8>)> = vec![
        ("malformed_json", format!("{{\"event_id\":\"m{w}\",\"email\":\"{leak}\",").into_bytes()),
        ("invalid_utf8", b"{\"event_id\":\"\xff\xfe\"}".to_vec()),
        ("not_an_object", format!("[{{\"email\":\"{leak}\"}}]").into_bytes()),
        ("too_large", {
            let mut p = event(&format!("big{w}"), now, &leak, 1.0);
            p.splice(1..1, format!("\"pad\":\"{}\",", "x".repeat(5000)).into_bytes());
            p
        }),
        ("missing_field:event_id", json!({"event_time": t, "type": "view", "user_id": "u", "country": "kr"}).to_string().into_bytes()),
        ("wrong_type:event_id", json!({"event_id": 5, "event_time": t, "type": "view", "user_id": "u", "country": "kr"}).to_string().into_bytes()),
        ("missing_field:country", json!({"event_id": "x", "event_time": t, "type": "view", "user_id": "u", "email": leak}).to_string().into_bytes()),
        ("wrong_type:amount", json!({"event_id": "x", "event_time": t, "type": "purchase", "user_id": "u", "country": "kr", "amount": "12", "email": leak}).to_string().into_bytes()),
        ("bad_timestamp", json!({"event_id": "x", "event_time": "noon", "type": "view", "user_id": "u", "country": "kr"}).to_string().into_bytes()),
        ("time_in_future", json!({"event_id": "x", "event_time": format_micros(now + 72 * HOUR_US), "type": "view", "user_id": "u", "country": "kr"}).to_string().into_bytes()),
    ];
    for (i, (reason, payload)) in invalid.into_iter().enumerate() {
        truth.reasons.push(reason.to_owned());
        out.push((format!("invalid-{w}-{i}"), payload));
    }
    out
}

async fn produce(producer: &Producer, messages: &[(String, Vec<u8>)]) {
    let deliveries: Vec<_> = messages
        .iter()
        .map(|(key, payload)| {
            producer
                .queue(TOPIC, key.as_bytes(), payload)
                .expect("queueing a message")
        })
        .collect();
    for d in deliveries {
        d.await.expect("the broker acknowledged");
    }
}

async fn raw_rows(lake: &url::Url) -> Vec<(String, String)> {
    let sql = "SELECT event_id, CAST(event_date AS VARCHAR) AS d FROM t";
    let Some(batches) = query_table(&lake.join("raw/events/").unwrap(), sql).await else {
        return Vec::new();
    };
    let mut rows = Vec::new();
    for b in &batches {
        let ids = cast(b.column(0), &DataType::Utf8).unwrap();
        let dates = cast(b.column(1), &DataType::Utf8).unwrap();
        for i in 0..b.num_rows() {
            rows.push((
                ids.as_string::<i32>().value(i).to_owned(),
                dates.as_string::<i32>().value(i).to_owned(),
            ));
        }
    }
    rows
}

async fn quarantine_reasons(lake: &url::Url) -> Vec<String> {
    let Some(batches) = query_table(
        &lake.join("quarantine/events/").unwrap(),
        "SELECT reason FROM t",
    )
    .await
    else {
        return Vec::new();
    };
    let mut reasons: Vec<String> = batches
        .iter()
        .flat_map(|b| {
            let c = cast(b.column(0), &DataType::Utf8).unwrap();
            (0..c.len()).map(move |i| c.as_string::<i32>().value(i).to_owned())
        })
        .collect();
    reasons.sort();
    reasons
}

fn start_archiver(
    bin: &std::path::Path,
    config: &std::path::Path,
    logs: &std::path::Path,
    metrics_port: u16,
) -> Process {
    start_named_archiver("archive", bin, config, logs, metrics_port, "")
}

fn start_named_archiver(
    name: &str,
    bin: &std::path::Path,
    config: &std::path::Path,
    logs: &std::path::Path,
    metrics_port: u16,
    faults: &str,
) -> Process {
    Process::start(
        name,
        Command::new(bin)
            .args(["archive", "--config"])
            .arg(config)
            .arg("--metrics-listen")
            .arg(format!("127.0.0.1:{metrics_port}"))
            .env("LAMBDAFLOW_LOG", "info")
            .env("LAMBDAFLOW_FAULTS", faults),
        logs,
    )
}

/// The config of these tests: the demo's, on `tansu` and a lake at `lake`, with small chunks.
fn archive_config(tansu: &Tansu, lake: &url::Url) -> String {
    lambdaflow_common::config::DEMO_CONFIG
        .replace(
            "brokers = \"embedded\"",
            &format!("brokers = \"{}\"", tansu.bootstrap),
        )
        .replace(
            "uri = \"file:///tmp/lambdaflow/lake\"",
            &format!("uri = \"{lake}\""),
        )
        .replace("commit_interval = \"1s\"", "commit_interval = \"250ms\"")
        .replace("commit_max_events = 100000", "commit_max_events = 300")
        .replace("max_event_bytes = 65536", "max_event_bytes = 4096")
}

/// (partition, offset) of every row of `table` (a raw or quarantine table of the lake).
async fn coordinates(table: &url::Url, partition: &str, offset: &str) -> Vec<(i32, i64)> {
    let sql = format!("SELECT CAST({partition} AS INT), CAST({offset} AS BIGINT) FROM t");
    let Some(batches) = query_table(table, &sql).await else {
        return Vec::new();
    };
    let mut rows = Vec::new();
    for b in &batches {
        let p = b.column(0).as_primitive::<arrow::datatypes::Int32Type>();
        let o = b.column(1).as_primitive::<arrow::datatypes::Int64Type>();
        rows.extend((0..b.num_rows()).map(|i| (p.value(i), o.value(i))));
    }
    rows
}

/// Every `txn` action in the Delta log under `table_dir`, in commit order, as
/// (version, app id, offset).
fn txn_history(table_dir: &std::path::Path) -> Vec<(u64, String, i64)> {
    let mut commits: Vec<(u64, std::path::PathBuf)> =
        std::fs::read_dir(table_dir.join("_delta_log"))
            .unwrap()
            .filter_map(|entry| {
                let path = entry.unwrap().path();
                let name = path.file_name()?.to_str()?;
                let version = name.strip_suffix(".json")?.parse().ok()?;
                Some((version, path))
            })
            .collect();
    commits.sort();
    let mut txns = Vec::new();
    for (version, path) in commits {
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let action: serde_json::Value = serde_json::from_str(line).unwrap();
            if let Some(txn) = action.get("txn") {
                txns.push((
                    version,
                    txn["appId"].as_str().unwrap().to_owned(),
                    txn["version"].as_i64().unwrap(),
                ));
            }
        }
    }
    txns
}

/// Asserts that no app id's `txn` version ever stays or goes back from one commit to a later one.
fn assert_txn_versions_rise(table_dir: &std::path::Path) {
    let mut last: BTreeMap<String, (u64, i64)> = BTreeMap::new();
    for (version, app, offset) in txn_history(table_dir) {
        if let Some((at, before)) = last.get(&app) {
            assert!(
                offset > *before,
                "{}: txn {app} went from {before} (commit {at}) to {offset} (commit {version})",
                table_dir.display()
            );
        }
        last.insert(app, (version, offset));
    }
}

/// Two archivers on one topic and one lake, as during a rolling deploy: whichever finds the
/// other's commits stops (`ConcurrentWriter`) and is restarted, as a supervisor would. Slow
/// Parquet puts widen the window between a writer's check of the table and its commit, so
/// that both pass the check and one commit loses to the other (`ConcurrentTransaction`). Every
/// (partition, offset) must be in the raw and quarantine tables exactly once, every unique
/// event once, and no `txn` version may ever go backwards in either table's history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_archivers_on_one_lake_store_every_offset_once() {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_lambdaflow-e2e"));
    let dir = scratch_dir();
    let logs = dir.path();
    let tansu = Tansu::start(logs);
    tansu.create_topic(TOPIC, PARTITIONS);
    let lake_dir = dir.path().join("lake");
    let lake = url::Url::from_directory_path(&lake_dir).unwrap();
    let config = dir.path().join("lambdaflow.toml");
    std::fs::write(&config, archive_config(&tansu, &lake)).unwrap();
    let producer = tansu.producer();
    let seed: u64 = std::env::var("LAMBDAFLOW_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed}, logs in {}", logs.display());
    let mut rng = StdRng::seed_from_u64(seed);
    let mut truth = Truth::default();

    let mut restarts = 0;
    let mut archivers: Vec<(String, Process)> = ["archive-a", "archive-b"]
        .into_iter()
        .map(|name| {
            let process = start_named_archiver(name, bin, &config, logs, free_port(), SLOW_PARQUET);
            (name.to_owned(), process)
        })
        .collect();
    let mut supervise = |archivers: &mut Vec<(String, Process)>| {
        for (name, process) in archivers.iter_mut() {
            if !process.is_running() {
                restarts += 1;
                *process =
                    start_named_archiver(name, bin, &config, logs, free_port(), SLOW_PARQUET);
            }
        }
    };
    let mut produced = 0;
    for w in 0..3 {
        let messages = wave(w, &mut rng, &mut truth);
        produced += messages.len();
        for part in messages.chunks(messages.len() / 4 + 1) {
            produce(&producer, part).await;
            supervise(&mut archivers);
            tokio::time::sleep(Duration::from_millis(rng.random_range(50..600))).await;
        }
    }
    let started = Instant::now();
    loop {
        supervise(&mut archivers);
        let raw = coordinates(
            &lake.join("raw/events/").unwrap(),
            "kafka_partition",
            "kafka_offset",
        )
        .await;
        let quarantined = coordinates(
            &lake.join("quarantine/events/").unwrap(),
            "partition",
            "offset",
        )
        .await;
        if raw.len() >= truth.raw.len() && quarantined.len() >= truth.reasons.len() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{} raw and {} quarantined rows of {} and {}; logs in {}",
            raw.len(),
            quarantined.len(),
            truth.raw.len(),
            truth.reasons.len(),
            logs.display()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (_, process) in archivers {
        // A process that finds the other's seal at its own stop exits non-zero: either is fine.
        process.terminate(Duration::from_secs(30));
    }

    for (table, partition, offset) in [
        ("raw/events/", "kafka_partition", "kafka_offset"),
        ("quarantine/events/", "partition", "offset"),
    ] {
        let rows = coordinates(&lake.join(table).unwrap(), partition, offset).await;
        let mut counts: BTreeMap<(i32, i64), usize> = BTreeMap::new();
        for row in &rows {
            *counts.entry(*row).or_default() += 1;
        }
        let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(5).collect();
        assert!(
            repeated.is_empty(),
            "{table}: offsets stored twice: {repeated:?}"
        );
        assert_txn_versions_rise(&lake_dir.join(table));
    }
    let stored: Vec<(String, String)> = raw_rows(&lake).await;
    let unique: BTreeSet<(String, String)> = stored.iter().cloned().collect();
    assert_eq!(stored.len(), unique.len(), "an event stored twice");
    assert_eq!(unique, truth.raw);
    let mut expected_reasons = truth.reasons.clone();
    expected_reasons.sort();
    assert_eq!(quarantine_reasons(&lake).await, expected_reasons);
    println!("{produced} messages, {restarts} restarts of an archiver that stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_survives_sigkill_with_exactly_once_results() {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_lambdaflow-e2e"));
    let dir = scratch_dir();
    let logs = dir.path();
    let test_started = Instant::now();
    let tansu = Tansu::start(logs);
    tansu.create_topic(TOPIC, PARTITIONS);
    let lake_dir = dir.path().join("lake");
    let lake = url::Url::from_directory_path(&lake_dir).unwrap();
    let config = dir.path().join("lambdaflow.toml");
    std::fs::write(&config, archive_config(&tansu, &lake)).unwrap();

    let producer = tansu.producer();
    let seed: u64 = std::env::var("LAMBDAFLOW_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!(
        "seed {seed} (set LAMBDAFLOW_TEST_SEED to replay), logs in {}",
        logs.display()
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let mut truth = Truth::default();

    let mut kills = 0;
    for w in 0..WAVES {
        println!("wave {w} at {:?}", test_started.elapsed());
        let metrics_port = free_port();
        let archiver = start_archiver(bin, &config, logs, metrics_port);
        let messages = wave(w, &mut rng, &mut truth);
        let (first, second) = messages.split_at(messages.len() / 2);
        produce(&producer, first).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..1200))).await;
        produce(&producer, second).await;
        if w + 1 < WAVES {
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..1500))).await;
            archiver.kill9();
            kills += 1;
            continue;
        }
        let expected_raw = truth.raw.len();
        let expected_q = truth.reasons.len();
        let started = Instant::now();
        loop {
            let (r, q) = (
                raw_rows(&lake).await.len(),
                quarantine_reasons(&lake).await.len(),
            );
            if r >= expected_raw && q >= expected_q {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "after {kills} kills the tables hold {r}/{expected_raw} raw and {q}/{expected_q} quarantined rows; logs in {}",
                logs.display()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        println!("caught up at {:?}", test_started.elapsed());
        tokio::time::sleep(Duration::from_secs(2)).await;
        // The archiver's own /healthz and /metrics, as Prometheus scrapes them in deploy/.
        let base = format!("http://127.0.0.1:{metrics_port}");
        let health = reqwest::get(format!("{base}/healthz")).await.unwrap();
        assert_eq!(health.status(), 200);
        let metrics = reqwest::get(format!("{base}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for outcome in ["archived", "quarantined"] {
            let handled = sample(
                &metrics,
                "lambdaflow_archiver_events_total",
                &[("outcome", outcome), ("source", "events")],
            );
            assert!(handled.is_some_and(|n| n > 0.0), "{outcome}: {metrics}");
        }
        let commits = sample(
            &metrics,
            "lambdaflow_archiver_commit_seconds_count",
            &[("source", "events"), ("table", "raw")],
        );
        assert!(commits.is_some_and(|n| n >= 1.0), "{metrics}");
        // The allocator's own account of the process's memory.
        let allocated = sample(&metrics, "lambdaflow_memory_allocated_bytes", &[]);
        let resident = sample(&metrics, "lambdaflow_memory_resident_bytes", &[]);
        assert!(
            allocated.is_some_and(|a| a > 1e6) && resident >= allocated,
            "{metrics}"
        );
        assert!(
            archiver.terminate(Duration::from_secs(30)),
            "the archiver did not exit cleanly on SIGTERM"
        );
    }

    let rows = raw_rows(&lake).await;
    let mut counts: BTreeMap<&(String, String), usize> = BTreeMap::new();
    for row in &rows {
        *counts.entry(row).or_default() += 1;
    }
    let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(repeated.is_empty(), "events stored twice: {repeated:?}");
    let stored: BTreeSet<(String, String)> = rows.into_iter().collect();
    let lost: Vec<_> = truth.raw.difference(&stored).take(5).collect();
    let extra: Vec<_> = stored.difference(&truth.raw).take(5).collect();
    assert!(
        lost.is_empty() && extra.is_empty(),
        "lost {lost:?}, unexpected {extra:?}"
    );

    let mut expected_reasons = truth.reasons.clone();
    expected_reasons.sort();
    assert_eq!(quarantine_reasons(&lake).await, expected_reasons);

    // Every masked value produced is an address at example.com: none may be in any file, be
    // it data, statistics or the log.
    for file in files_under(&lake_dir) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes.windows(12).any(|w| w == b"@example.com"),
            "a clear-text email in {}",
            file.display()
        );
    }
    let emails = query_table(&lake.join("raw/events/").unwrap(), "SELECT email FROM t")
        .await
        .unwrap();
    for b in &emails {
        let c = cast(b.column(0), &DataType::Utf8).unwrap();
        for v in c.as_string::<i32>().iter().flatten() {
            assert!(
                v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()),
                "unmasked email {v}"
            );
        }
    }
    let raws = query_table(
        &lake.join("quarantine/events/").unwrap(),
        "SELECT raw FROM t",
    )
    .await
    .unwrap();
    for b in &raws {
        let c = cast(b.column(0), &DataType::Binary).unwrap();
        for v in c.as_binary::<i32>().iter().flatten() {
            assert!(
                !v.windows(12).any(|w| w == b"@example.com"),
                "clear email in quarantine: {}",
                String::from_utf8_lossy(v)
            );
        }
    }
    println!(
        "{} unique events, {} rejects, {kills} SIGKILLs",
        truth.raw.len(),
        truth.reasons.len()
    );
}

/// A topic deleted and recreated: its offsets start again below those the lake holds. The
/// archiver halts the partitions and says so (log, metric) instead of dropping the new events
/// as already archived; `archive --accept-topic-reset` records a new epoch, and the running
/// archiver archives every new event once. The archiver is stopped while the topic is
/// deleted: librdkafka 2.12.1 crashes (SIGSEGV in its metadata cache, `rd_kafka_metadata_cache_find`)
/// when tansu deletes a topic a client has assigned, so the restart a supervisor would do
/// follows the delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_topic_halts_the_archiver_until_the_reset_is_accepted() {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_lambdaflow-e2e"));
    let dir = scratch_dir();
    let logs = dir.path();
    let tansu = Tansu::start(logs);
    tansu.create_topic(TOPIC, 2);
    let lake_dir = dir.path().join("lake");
    let lake = url::Url::from_directory_path(&lake_dir).unwrap();
    let config = dir.path().join("lambdaflow.toml");
    std::fs::write(&config, archive_config(&tansu, &lake)).unwrap();
    let producer = tansu.producer();
    let now = now_micros();
    let events = |prefix: &str, n: usize| -> Vec<(String, Vec<u8>)> {
        (0..n)
            .map(|i| {
                let id = format!("{prefix}{i}");
                let payload = event(&id, now, "a@example.com", 1.0);
                (id, payload)
            })
            .collect()
    };
    let metrics_port = free_port();
    let archiver = start_archiver(bin, &config, logs, metrics_port);
    produce(&producer, &events("before-", 60)).await;
    let wait_rows = |n: usize, what: &'static str| {
        let lake = lake.clone();
        async move {
            let started = Instant::now();
            while raw_rows(&lake).await.len() < n {
                assert!(started.elapsed() < Duration::from_secs(60), "{what}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    };
    wait_rows(60, "the first 60 events archived").await;

    assert!(archiver.terminate(Duration::from_secs(30)));
    tansu.delete_topic(TOPIC);
    tansu.create_topic(TOPIC, 2);
    produce(&producer, &events("after-", 10)).await;
    let archiver = start_archiver(bin, &config, logs, metrics_port);
    let metrics_url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let started = Instant::now();
    loop {
        let Ok(reply) = reqwest::get(&metrics_url).await else {
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        };
        let text = reply.text().await.unwrap();
        let halted = ["0", "1"].iter().all(|p| {
            sample(
                &text,
                "lambdaflow_topic_reset_detected",
                &[
                    ("component", "archiver"),
                    ("partition", p),
                    ("source", "events"),
                ],
            ) == Some(1.0)
        });
        if halted {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no reset detected; logs in {}",
            logs.display()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let log = std::fs::read_to_string(logs.join("archive.log")).unwrap();
    assert!(log.contains("went back in time") && log.contains("--accept-topic-reset"));
    assert_eq!(
        raw_rows(&lake).await.len(),
        60,
        "nothing archived while halted"
    );

    let accepted = Command::new(bin)
        .args(["archive", "--accept-topic-reset", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&accepted.stdout);
    assert!(
        accepted.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&accepted.stderr)
    );
    assert!(
        said.contains("partition 0: reset accepted")
            && said.contains("partition 1: reset accepted"),
        "{said}"
    );
    wait_rows(70, "the 10 events of the recreated topic archived").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(archiver.terminate(Duration::from_secs(30)));
    let rows = raw_rows(&lake).await;
    let unique: BTreeSet<_> = rows.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!((rows.len(), unique.len()), (70, 70), "every event once");
}
