//! The end-to-end checker shared by the tests that run the whole product: a client of the
//! HTTP API, producing to the broker, and comparing every query of every view with a direct
//! aggregation of what was produced.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::AsArray;
use arrow::datatypes::Date32Type;
use lambdaflow_common::config::Config;
use lambdaflow_common::query::{AnswerLimits, Query, Rollup, Value, answer};
use lambdaflow_common::sample::{Generator, Mix};
use lambdaflow_common::schema::EVENT_DATE;
use lambdaflow_common::state::{Dim, ViewState};
use lambdaflow_common::timestamp::{format_date, format_micros, now_micros};
use lambdaflow_common::validate::{Coordinates, Validator};
use lambdaflow_kafka::producer::Producer;
use serde_json::Value as Json;

use crate::{Process, direct_views, every_query};

/// The topic the end-to-end tests produce to.
pub const TOPIC: &str = "events";

/// The HTTP API of a running process.
pub struct Api {
    /// `http://host:port`.
    pub base: String,
    /// The client requests go through.
    pub client: reqwest::Client,
}

impl Api {
    /// An API at `base`.
    pub fn new(base: impl Into<String>) -> Self {
        Self {
            base: base.into(),
            client: reqwest::Client::new(),
        }
    }

    /// `GET path` → (status, JSON body); status 0 when nothing answered.
    pub async fn get(&self, path: &str) -> (u16, Json) {
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

    /// `POST path` with `body` → (status, JSON body).
    pub async fn post(&self, path: &str, body: &str) -> (u16, Json) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("POST");
        let status = r.status().as_u16();
        let body = r.bytes().await.unwrap();
        (status, serde_json::from_slice(&body).unwrap_or(Json::Null))
    }
}

/// Polls `check` every 100 ms until it holds; panics after `timeout`.
pub async fn wait_for<F: Future<Output = bool>>(
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

/// Starts `binary run --config config` (`binary` being the test's
/// `CARGO_BIN_EXE_lambdaflow-e2e`), logging to `logs`.
pub fn start_run(binary: &str, config: &Path, logs: &Path, name: &str) -> Process {
    Process::start(
        name,
        Command::new(binary).args(["run", "--config"]).arg(config),
        logs,
    )
}

/// Sends a copy of each of `messages` (partition, offset, payload, as [`produce`] returns
/// them) to the next partition of [`TOPIC`] (`partitions` in all), as a producer with another
/// partitioner would; returns the copies as stored.
pub async fn produce_strays(
    producer: &Producer,
    messages: &[(i32, i64, Vec<u8>)],
    partitions: i32,
) -> Vec<(i32, i64, Vec<u8>)> {
    let mut out = Vec::new();
    for (partition, offset, payload) in messages {
        let other = (partition + 1) % partitions;
        let key = format!("stray-{partition}-{offset}");
        let delivery = producer
            .send_to(TOPIC, other, key.as_bytes(), payload)
            .await
            .expect("the broker acknowledged");
        out.push((delivery.partition, delivery.offset, payload.clone()));
    }
    out
}

/// Produces every message (key, payload) to [`TOPIC`], each to its key's partition and one per
/// record batch (see the archiver test on tansu 0.6); returns where each landed: (partition,
/// offset, payload).
pub async fn produce(
    producer: &Producer,
    messages: &[(String, Vec<u8>)],
) -> Vec<(i32, i64, Vec<u8>)> {
    produce_to(producer, TOPIC, messages).await
}

/// [`produce`] to `topic`.
pub async fn produce_to(
    producer: &Producer,
    topic: &str,
    messages: &[(String, Vec<u8>)],
) -> Vec<(i32, i64, Vec<u8>)> {
    let mut out = Vec::new();
    for (key, payload) in messages {
        let delivery = producer
            .send(topic, key.as_bytes(), payload)
            .await
            .expect("the broker acknowledged");
        out.push((delivery.partition, delivery.offset, payload.clone()));
    }
    out
}

/// `(bucket, dimension values)` → measure values, as text keys and floats.
pub type Answer = BTreeMap<String, Vec<Option<f64>>>;

/// The answer to `query` over the direct aggregation `direct` of view `v`.
pub fn expected(config: &Config, v: usize, direct: &ViewState, query: &Query) -> Answer {
    let view = &config.views[v];
    answer(config.source(), view, &[direct], query, &AnswerLimits::NONE)
        .expect("no limits")
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

/// The answer `body` the API served for `query` on view `v`.
pub fn served(config: &Config, v: usize, query: &Query, body: &Json) -> Answer {
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
pub fn queries(config: &Config, v: usize) -> Vec<(Query, String)> {
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
                Rollup::ZonedDays { .. } => unreachable!("the truth is asked in UTC buckets"),
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
/// distinct counts per view, for comparison across a batch run. Messages of a negative
/// partition are records imported from files: they count, but the speed layer never sees them.
pub async fn check(
    api: &Api,
    config: &Arc<Config>,
    produced: &[(i32, i64, Vec<u8>)],
    step: &str,
) -> Vec<Vec<Option<f64>>> {
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    for (p, o, _) in produced.iter().filter(|(p, ..)| *p >= 0) {
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
            if body["truncated"] == true {
                // An answer past the row limit holds its first rows only.
                assert!(got.len() < want.len(), "{step}: {path}");
                assert!(got.keys().all(|k| want.contains_key(k)), "{step}: {path}");
            } else {
                assert_eq!(
                    got.keys().collect::<Vec<_>>(),
                    want.keys().collect::<Vec<_>>(),
                    "{step}: {path}"
                );
            }
            for (key, values) in want.iter().filter(|(k, _)| got.contains_key(*k)) {
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

/// Triggers a batch run through the API and waits until every view of `config`'s one source
/// has swapped in the raw version the run read for that source.
pub async fn batch(api: &Api, config: &Config, step: &str) {
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
    swapped_in(api, config, raw_version_read(&record, config), step).await;
}

/// The raw version a batch run's `record` read for `config`'s source.
pub fn raw_version_read(record: &serde_json::Value, config: &Config) -> u64 {
    let source = &config.source().name;
    let sources = record["sources"].as_array().unwrap();
    let read = sources.iter().find(|s| s["name"] == **source).unwrap();
    read["raw_version"].as_u64().unwrap()
}

/// Waits until every view of `config` serves the batch side computed from `raw_version`.
pub async fn swapped_in(api: &Api, config: &Config, raw_version: u64, step: &str) {
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
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
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

/// The shop of a test config (text): its `events` source and the views over it, what the
/// single-source tests produce to and check while the other source idles beside it.
pub fn shop_config(text: &str) -> Arc<Config> {
    let config = Config::from_toml(text, "test", std::iter::empty()).unwrap();
    Arc::new(config.scoped(config.source_named("events").unwrap()))
}

/// The demo config for a test: the broker at `bootstrap`, the lake at `lake` (a path or a
/// URL), the API on `port`, batch runs only when asked, and archiver commits every 200 ms.
pub fn test_config(bootstrap: &str, lake: &str, port: u16) -> String {
    lambdaflow_common::config::DEMO_CONFIG
        .replace(
            "brokers = \"embedded\"",
            &format!("brokers = \"{bootstrap}\""),
        )
        .replace(
            "uri = \"file:///tmp/lambdaflow/lake\"",
            &format!("uri = \"{lake}\""),
        )
        .replace(
            "listen = \"127.0.0.1:8080\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        )
        .replace("schedule = \"0 */2 * * * *\"", "schedule = \"0 0 0 1 1 *\"")
        .replace("commit_interval = \"1s\"", "commit_interval = \"200ms\"")
}

/// Shop events of `users` users: 10% duplicates, 20% late, 5% invalid.
pub fn shop(seed: u64, users: u32) -> Generator {
    Generator::shop(
        seed,
        users,
        Mix {
            duplicates: 0.1,
            late: 0.2,
            invalid: 0.05,
        },
    )
}

/// The next `n` messages of `generator` as of now, as (key, payload).
pub fn messages(generator: &mut Generator, n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|_| {
            let s = generator.next_event(now_micros());
            (s.key, s.payload)
        })
        .collect()
}

/// What was produced, as the process must count it and the lake must hold it.
#[derive(Debug, Default)]
pub struct Truth {
    /// Messages produced.
    pub messages: usize,
    /// Valid events, duplicates included.
    pub valid: usize,
    /// (event id, UTC event date) of every unique valid event.
    pub unique: BTreeSet<(String, String)>,
    /// Refused messages per reason code.
    pub reasons: BTreeMap<String, usize>,
}

impl Truth {
    /// Adds `produced` (partition, offset, payload), validated as `config` validates.
    pub fn add(&mut self, config: &Config, produced: &[(i32, i64, Vec<u8>)]) {
        let validator = Validator::new(config.source());
        let mut builder = validator.batch_builder(&config.source().topic, now_micros());
        for (partition, offset, payload) in produced {
            let at = Coordinates {
                partition: *partition,
                offset: *offset,
            };
            let _ = builder.push(Some(payload), at);
        }
        let validated = builder.finish();
        let ids = validated.events.column(0).as_string::<i32>();
        let dates = validated
            .events
            .column_by_name(EVENT_DATE)
            .expect("the raw schema has an event date")
            .as_primitive::<Date32Type>();
        for i in 0..validated.events.num_rows() {
            self.unique
                .insert((ids.value(i).to_owned(), format_date(dates.value(i))));
        }
        let reasons = validated
            .rejects
            .column_by_name("reason")
            .expect("the quarantine schema has a reason");
        for reason in reasons.as_string::<i32>().iter().flatten() {
            *self.reasons.entry(reason.to_owned()).or_default() += 1;
        }
        self.messages += produced.len();
        self.valid += validated.events.num_rows();
    }

    /// Refused messages.
    pub fn rejects(&self) -> usize {
        self.reasons.values().sum()
    }
}
