//! The whole product against a real broker: `lambdaflow run` (archiver, speed layer, batch
//! scheduler, API) with tansu; events produced in waves with duplicates, late and invalid
//! ones; batch runs triggered through the API; `run` killed with SIGKILL and restarted. At
//! every step every view answers, at every granularity and group_by subset, what a direct
//! aggregation of the produced events gives, and `approx_distinct` does not move when a batch
//! run moves events from the speed side to the batch side.

use std::collections::BTreeMap;

use arrow::array::AsArray;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lambdaflow_common::config::{Config, DEMO_CONFIG};
use lambdaflow_common::query::{Query, Rollup, Value, answer};
use lambdaflow_common::sample::{Mix, ShopGenerator};
use lambdaflow_common::state::{Dim, ViewState};
use lambdaflow_common::timestamp::{format_micros, now_micros};
use lambdaflow_tests::{Process, Tansu, direct_views, every_query, free_port, scratch_dir};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value as Json;

const TOPIC: &str = "events";
const PARTITIONS: u32 = 4;

struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    async fn get(&self, path: &str) -> (u16, Json) {
        let response = self.client.get(format!("{}{path}", self.base)).send().await;
        match response {
            Ok(r) => {
                let status = r.status().as_u16();
                let body = r.bytes().await.unwrap_or_default();
                (status, serde_json::from_slice(&body).unwrap_or(Json::Null))
            }
            Err(_) => (0, Json::Null),
        }
    }

    async fn post(&self, path: &str, body: &str) -> (u16, Json) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .body(body.to_owned())
            .send()
            .await
            .expect("POST");
        let status = r.status().as_u16();
        let body = r.bytes().await.unwrap();
        (status, serde_json::from_slice(&body).unwrap_or(Json::Null))
    }
}

async fn wait_for<F: Future<Output = bool>>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> F,
) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn start_run(config: &Path, logs: &Path, name: &str) -> Process {
    Process::start(
        name,
        Command::new(env!("CARGO_BIN_EXE_lambdaflow-e2e"))
            .args(["run", "--config"])
            .arg(config),
        logs,
    )
}

/// Produces every message, one per record batch (see the archiver test on tansu 0.6), and
/// returns where each landed.
async fn produce(
    producer: &FutureProducer,
    messages: &[(String, Vec<u8>)],
) -> Vec<(i32, i64, Vec<u8>)> {
    let mut out = Vec::new();
    for (key, payload) in messages {
        let delivery = producer
            .send(
                FutureRecord::to(TOPIC).key(key).payload(payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("the broker acknowledged");
        out.push((delivery.partition, delivery.offset, payload.clone()));
    }
    out
}

/// `(bucket, dimension values)` → measure values, as text keys and floats.
type Answer = BTreeMap<String, Vec<Option<f64>>>;

fn expected(config: &Config, v: usize, direct: &ViewState, query: &Query) -> Answer {
    let view = &config.views[v];
    answer(&config.source, view, &[direct], query)
        .into_iter()
        .map(|row| {
            let dims: Vec<String> = row
                .dimensions
                .iter()
                .map(|d| match d {
                    Dim::Str(s) => s.to_string(),
                    Dim::Null => "null".into(),
                    other => format!("{other:?}"),
                })
                .collect();
            let key = format!(
                "{}|{}",
                row.bucket.map(format_micros).unwrap_or_default(),
                dims.join("|")
            );
            let values = row
                .values
                .iter()
                .map(|v| match v {
                    Value::Null => None,
                    Value::Int(i) | Value::Time(i) => Some(*i as f64),
                    Value::Float(f) => Some(*f),
                })
                .collect();
            (key, values)
        })
        .collect()
}

fn served(config: &Config, v: usize, query: &Query, body: &Json) -> Answer {
    let view = &config.views[v];
    body["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("no rows in {body}"))
        .iter()
        .map(|row| {
            let dims: Vec<String> = query
                .group_by
                .iter()
                .map(|d| match &row[&view.dimensions[*d]] {
                    Json::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            let key = format!(
                "{}|{}",
                row["bucket"].as_str().unwrap_or_default(),
                dims.join("|")
            );
            let values = view
                .measures
                .iter()
                .map(|m| row[&m.name].as_f64())
                .collect();
            (key, values)
        })
        .collect()
}

/// Every query of view `v`, with the `GET` path that asks it.
fn queries(config: &Config, v: usize) -> Vec<(Query, String)> {
    let view = &config.views[v];
    every_query(view)
        .into_iter()
        .map(|query| {
            let names: Vec<&str> = query
                .group_by
                .iter()
                .map(|d| view.dimensions[*d].as_str())
                .collect();
            let granularity = match query.rollup {
                Rollup::Buckets(g) => g.as_str(),
                Rollup::All => "all",
            };
            let path = format!(
                "/v1/views/{}/query?granularity={granularity}&group_by={}",
                view.name,
                names.join(",")
            );
            (query, path)
        })
        .collect()
}

/// Every query of every view answers the truth over `produced`; returns the `all`-time
/// distinct counts per view, for comparison across a batch run.
async fn check(
    api: &Api,
    config: &Arc<Config>,
    produced: &[(i32, i64, Vec<u8>)],
    step: &str,
) -> Vec<Vec<Option<f64>>> {
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    for (p, o, _) in produced {
        let e = last.entry(*p).or_insert(*o);
        *e = (*e).max(*o);
    }
    wait_for(
        &format!("{step}: the speed layer to consume everything"),
        Duration::from_secs(60),
        || async {
            let (status, body) = api
                .get(&format!("/v1/views/{}", config.views[0].name))
                .await;
            status == 200
                && last.iter().all(|(p, o)| {
                    body["speed_offsets"][p.to_string()]
                        .as_i64()
                        .is_some_and(|c| c >= *o)
                })
        },
    )
    .await;
    let direct = direct_views(config, produced);
    let mut distinct = Vec::new();
    for (v, truth) in direct.iter().enumerate() {
        for (query, path) in queries(config, v) {
            let (status, body) = api.get(&path).await;
            assert_eq!(status, 200, "{step}: {path}: {body}");
            let want = expected(config, v, truth, &query);
            let got = served(config, v, &query, &body);
            assert_eq!(
                got.keys().collect::<Vec<_>>(),
                want.keys().collect::<Vec<_>>(),
                "{step}: {path}"
            );
            for (key, values) in &want {
                for (g, w) in got[key].iter().zip(values) {
                    let same = match (g, w) {
                        (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0),
                        (a, b) => a == b,
                    };
                    assert!(same, "{step}: {path} {key}: served {g:?}, expected {w:?}");
                }
            }
            if query.rollup == Rollup::All && query.group_by.is_empty() {
                distinct.push(got.values().next().cloned().unwrap_or_default());
            }
        }
    }
    distinct
}

async fn batch(api: &Api, config: &Config, step: &str) {
    let (status, body) = api.post("/v1/batch/runs", "").await;
    assert_eq!(status, 202, "{step}: {body}");
    let id = body["id"].as_str().unwrap().to_owned();
    wait_for(
        &format!("{step}: batch run {id}"),
        Duration::from_secs(60),
        || async {
            let (_, record) = api.get(&format!("/v1/batch/runs/{id}")).await;
            assert_ne!(record["status"], "failed", "{step}: {record}");
            record["status"] == "succeeded"
        },
    )
    .await;
    let (_, record) = api.get(&format!("/v1/batch/runs/{id}")).await;
    let raw_version = record["raw_version"].as_u64().unwrap();
    for view in &config.views {
        wait_for(
            &format!("{step}: {} to swap in raw version {raw_version}", view.name),
            Duration::from_secs(30),
            || async {
                let (_, body) = api.get(&format!("/v1/views/{}", view.name)).await;
                body["watermark"]["raw_version"].as_u64() == Some(raw_version)
            },
        )
        .await;
    }
}

/// The value of the sample `name{labels}` in a Prometheus text exposition (labels in the
/// exposition's alphabetical order).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let series = if labels.is_empty() {
        format!("{name} ")
    } else {
        let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        format!("{name}{{{}}} ", inner.join(","))
    };
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

/// The process's counters (speed layer, archiver, batch runs) equal what the produced
/// messages hold, and SQL over the merged views and the raw table agrees with them.
async fn counters_and_sql_agree_with_the_truth(
    api: &Api,
    config: &Config,
    produced: &[(i32, i64, Vec<u8>)],
) {
    let validator = lambdaflow_common::validate::Validator::new(&config.source);
    let mut builder = validator.batch_builder(TOPIC, now_micros());
    for (partition, offset, payload) in produced {
        let at = lambdaflow_common::validate::Coordinates {
            partition: *partition,
            offset: *offset,
        };
        let _ = builder.push(Some(payload), at);
    }
    let validated = builder.finish();
    let valid = validated.events.num_rows();
    let ids = validated.events.column(0).as_string::<i32>();
    let dates = validated
        .events
        .column_by_name("event_date")
        .unwrap()
        .as_primitive::<arrow::datatypes::Date32Type>();
    let unique = (0..valid)
        .map(|i| (ids.value(i), dates.value(i)))
        .collect::<std::collections::HashSet<_>>()
        .len();
    let mut reasons: BTreeMap<String, f64> = BTreeMap::new();
    for reason in validated
        .rejects
        .column_by_name("reason")
        .unwrap()
        .as_string::<i32>()
        .iter()
        .flatten()
    {
        *reasons.entry(reason.to_owned()).or_default() += 1.0;
    }
    let client = reqwest::Client::new();
    let metrics = || async {
        client
            .get(format!("{}/metrics", api.base))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .unwrap()
    };
    wait_for(
        "the archiver to store every message",
        Duration::from_secs(30),
        || async {
            let text = metrics().await;
            let handled: f64 = ["archived", "duplicate", "quarantined"]
                .iter()
                .filter_map(|o| {
                    sample(&text, "lambdaflow_archiver_events_total", &[("outcome", o)])
                })
                .sum();
            handled as usize == produced.len()
        },
    )
    .await;
    let text = metrics().await;
    let counter = |name: &str, labels: &[(&str, &str)]| {
        sample(&text, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?} in\n{text}"))
    };
    assert_eq!(
        counter("lambdaflow_speed_messages_total", &[]) as usize,
        produced.len()
    );
    assert_eq!(
        counter("lambdaflow_speed_events_valid_total", &[]) as usize,
        valid
    );
    assert_eq!(
        counter("lambdaflow_speed_events_duplicate_total", &[]) as usize,
        valid - unique
    );
    for (reason, n) in &reasons {
        assert_eq!(
            counter(
                "lambdaflow_speed_events_invalid_total",
                &[("reason", reason)]
            ),
            *n,
            "{reason}"
        );
    }
    assert_eq!(
        counter(
            "lambdaflow_archiver_events_total",
            &[("outcome", "archived")]
        ) as usize,
        unique
    );
    assert_eq!(
        counter(
            "lambdaflow_archiver_events_total",
            &[("outcome", "duplicate")]
        ) as usize,
        valid - unique
    );
    assert!(
        counter(
            "lambdaflow_archiver_commit_seconds_count",
            &[("table", "raw")]
        ) >= 1.0
    );
    assert_eq!(
        counter(
            "lambdaflow_batch_run_seconds_count",
            &[("status", "succeeded")]
        ),
        1.0
    );
    for p in 0..PARTITIONS {
        assert_eq!(
            counter(
                "lambdaflow_speed_lag_messages",
                &[("partition", &p.to_string())]
            ),
            0.0
        );
    }
    assert!(
        counter(
            "lambdaflow_http_request_seconds_count",
            &[
                ("method", "GET"),
                ("route", "/v1/views/{name}/query"),
                ("status", "200")
            ]
        ) >= 1.0
    );

    let (status, answer) = api
        .post(
            "/v1/sql",
            &serde_json::json!({"sql": "SELECT sum(events) AS events, hll_estimate(hll_merge(visitors__hll)) AS visitors FROM traffic_by_minute"}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["rows"][0][0].as_u64(),
        Some(unique as u64),
        "{answer}"
    );
    let (_, all) = api
        .get("/v1/views/traffic_by_minute/query?granularity=all&measures=visitors")
        .await;
    assert_eq!(answer["rows"][0][1], all["rows"][0]["visitors"]);
    let (status, raw) = api
        .post("/v1/sql", r#"{"sql": "SELECT count(*) FROM raw_events"}"#)
        .await;
    assert_eq!(status, 200, "{raw}");
    assert_eq!(raw["rows"][0][0].as_u64(), Some(unique as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_equal_the_truth_through_batches_late_events_and_a_kill() {
    let dir = scratch_dir();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let tansu = Tansu::start(&logs);
    tansu.create_topic(TOPIC, PARTITIONS);
    let port = free_port();
    let lake = dir.path().join("lake");
    let text = DEMO_CONFIG
        .replace(
            "brokers = \"embedded\"",
            &format!("brokers = \"{}\"", tansu.bootstrap),
        )
        .replace(
            "uri = \"file:///tmp/lambdaflow/lake\"",
            &format!("uri = \"{}\"", lake.display()),
        )
        .replace(
            "listen = \"127.0.0.1:8080\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        )
        .replace("schedule = \"0 */2 * * * *\"", "schedule = \"0 0 0 1 1 *\"")
        .replace("commit_interval = \"1s\"", "commit_interval = \"200ms\"");
    let config_file = dir.path().join("lambdaflow.toml");
    std::fs::write(&config_file, &text).unwrap();
    let config = Arc::new(Config::from_toml(&text, "test", std::iter::empty()).unwrap());
    let api = Api {
        base: format!("http://127.0.0.1:{port}"),
        client: reqwest::Client::new(),
    };
    let producer = tansu.producer();
    let mut generator = ShopGenerator::new(
        11,
        300,
        Mix {
            duplicates: 0.1,
            late: 0.2,
            invalid: 0.05,
        },
    );
    let mut wave = |n: usize| -> Vec<(String, Vec<u8>)> {
        (0..n)
            .map(|_| {
                let s = generator.next_event(now_micros());
                (s.key, s.payload)
            })
            .collect()
    };

    let run = start_run(&config_file, &logs, "run-1");
    wait_for("readiness", Duration::from_secs(60), || async {
        api.get("/readyz").await.0 == 200
    })
    .await;
    let mut produced = produce(&producer, &wave(300)).await;
    check(&api, &config, &produced, "speed only").await;

    let before = check(&api, &config, &produced, "before the first batch").await;
    batch(&api, &config, "first batch").await;
    let after = check(&api, &config, &produced, "after the first batch").await;
    for (v, view) in config.views.iter().enumerate() {
        for (m, measure) in view.measures.iter().enumerate() {
            if measure.agg == lambdaflow_common::config::AggKind::ApproxDistinct {
                assert_eq!(
                    before[v][m], after[v][m],
                    "{}.{} moved when the batch took over from the speed layer",
                    view.name, measure.name
                );
            }
        }
    }

    produced.extend(produce(&producer, &wave(300)).await);
    check(
        &api,
        &config,
        &produced,
        "late events and duplicates on top of a batch",
    )
    .await;

    counters_and_sql_agree_with_the_truth(&api, &config, &produced).await;

    run.kill9();
    produced.extend(produce(&producer, &wave(150)).await);
    let _run = start_run(&config_file, &logs, "run-2");
    wait_for(
        "readiness after the kill",
        Duration::from_secs(60),
        || async { api.get("/readyz").await.0 == 200 },
    )
    .await;
    check(&api, &config, &produced, "after SIGKILL and restart").await;

    batch(&api, &config, "second batch").await;
    check(&api, &config, &produced, "after the second batch").await;
}
