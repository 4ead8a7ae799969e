//! Two sources on two topics of different partition counts in one `lambdaflow run` against
//! tansu: the demo's shop (`events`, 3 partitions) and its web tracker (`pageviews`, 2). Each
//! source's events are archived into its own tables and answered by its own views, exactly,
//! before and after batch runs; each source's events produced to the other's topic land in the
//! other's quarantine with the reason the other's validator gives; metrics, quarantine and SQL
//! name the source. And a deployment of ten sources and fifty views starts, archives, answers
//! and runs its batch views.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use lambdaflow_common::config::Config;
use lambdaflow_common::sample::{Generator, Mix, Shape};
use lambdaflow_common::timestamp::now_micros;
use lambdaflow_tests::e2e::{
    Api, Truth, batch, check, messages, produce_to, sample, start_run, test_config, wait_for,
};
use lambdaflow_tests::{Tansu, free_port, scratch_dir};

const LAMBDAFLOW: &str = env!("CARGO_BIN_EXE_lambdaflow-e2e");

/// Duplicates, late and invalid events of every kind, as the other end-to-end tests send.
const MIX: Mix = Mix {
    duplicates: 0.1,
    late: 0.2,
    invalid: 0.05,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sources_on_two_topics_answer_exactly_and_keep_apart() {
    let dir = scratch_dir();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let tansu = Tansu::start(&logs);
    tansu.create_topic("events", 3);
    tansu.create_topic("pageviews", 2);
    let port = free_port();
    let lake = dir.path().join("lake");
    let text = test_config(&tansu.bootstrap, &lake.display().to_string(), port);
    let config_file = dir.path().join("lambdaflow.toml");
    std::fs::write(&config_file, &text).unwrap();
    let deployment = Config::from_toml(&text, "test", std::iter::empty()).unwrap();
    let scoped = |name: &str| Arc::new(deployment.scoped(deployment.source_named(name).unwrap()));
    let (shop, pages) = (scoped("events"), scoped("pageviews"));
    let api = Api::new(format!("http://127.0.0.1:{port}"));
    let producer = tansu.producer();
    let mut shop_events = Generator::new(Shape::Shop, 41, 300, MIX);
    let mut page_hits = Generator::new(Shape::Pages, 43, 300, MIX);

    let _run = start_run(LAMBDAFLOW, &config_file, &logs, "run");
    wait_for("readiness", Duration::from_secs(60), || async {
        api.get("/readyz").await.0 == 200
    })
    .await;
    let mut to_shop = produce_to(&producer, "events", &messages(&mut shop_events, 300)).await;
    let mut to_pages = produce_to(&producer, "pageviews", &messages(&mut page_hits, 200)).await;
    // Each source's valid events on the other's topic: refused there, by the other's rules.
    let strays = |shape, seed| messages(&mut Generator::new(shape, seed, 10, Mix::default()), 5);
    to_pages.extend(produce_to(&producer, "pageviews", &strays(Shape::Shop, 47)).await);
    to_shop.extend(produce_to(&producer, "events", &strays(Shape::Pages, 53)).await);
    check(&api, &shop, &to_shop, "shop, speed only").await;
    check(&api, &pages, &to_pages, "pages, speed only").await;

    batch(&api, &shop, "shop, first batch").await;
    batch(&api, &pages, "pages, second batch").await;
    to_shop.extend(produce_to(&producer, "events", &messages(&mut shop_events, 200)).await);
    to_pages.extend(produce_to(&producer, "pageviews", &messages(&mut page_hits, 300)).await);
    check(&api, &shop, &to_shop, "shop, batch and speed").await;
    check(&api, &pages, &to_pages, "pages, batch and speed").await;
    batch(&api, &pages, "pages, third batch").await;
    check(&api, &shop, &to_shop, "shop, after the third batch").await;
    check(&api, &pages, &to_pages, "pages, after the third batch").await;

    let mut truths = BTreeMap::new();
    for (config, produced) in [(&shop, &to_shop), (&pages, &to_pages)] {
        let mut truth = Truth::default();
        truth.add(config, produced);
        truths.insert(config.source().name.clone(), truth);
    }
    assert!(truths["pageviews"].reasons["missing_field:hit_id"] >= 5);
    assert!(truths["events"].reasons["missing_field:event_id"] >= 5);
    wait_for(
        "the archivers to store every message",
        Duration::from_secs(30),
        || async {
            let text = metrics(&api).await;
            truths.iter().all(|(source, truth)| {
                let outcome = |o| {
                    sample(
                        &text,
                        "lambdaflow_archiver_events_total",
                        &[("outcome", o), ("source", source)],
                    )
                    .unwrap_or(0.0) as usize
                };
                outcome("archived") == truth.unique.len()
                    && outcome("quarantined") == truth.rejects()
            })
        },
    )
    .await;
    for (source, truth) in &truths {
        let (status, body) = api
            .get(&format!("/v1/quarantine?source={source}&limit=1000"))
            .await;
        assert_eq!(status, 200, "{body}");
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        for event in body["events"].as_array().unwrap() {
            *reasons
                .entry(event["reason"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
        assert_eq!(reasons, truth.reasons, "{source}");
        let sql = format!(r#"{{"sql": "SELECT count(*) FROM raw_{source}"}}"#);
        let (status, raw) = api.post("/v1/sql", &sql).await;
        assert_eq!(status, 200, "{raw}");
        assert_eq!(raw["rows"][0][0].as_u64(), Some(truth.unique.len() as u64));
    }
    let (status, body) = api.get("/v1/quarantine").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "source_required");
    let (status, body) = api.post("/v1/events", "{}").await;
    assert_eq!(status, 400, "{body}");
    let text = metrics(&api).await;
    for (source, partitions) in [("events", 3), ("pageviews", 2)] {
        for p in 0..partitions {
            let labels = [("partition", p.to_string()), ("source", source.to_owned())];
            let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let lag = sample(&text, "lambdaflow_speed_lag_messages", &labels);
            assert_eq!(lag, Some(0.0), "{source} partition {p}");
        }
    }
    let (_, views) = api.get("/v1/views").await;
    let sources: Vec<(&str, &str)> = views["views"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v["source"].as_str().unwrap()))
        .collect();
    let declared: Vec<(&str, &str)> = deployment
        .views
        .iter()
        .map(|v| (v.name.as_str(), deployment.source_of(v).name.as_str()))
        .collect();
    assert_eq!(sources, declared);
}

async fn metrics(api: &Api) -> String {
    reqwest::get(format!("{}/metrics", api.base))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .unwrap()
}

/// Ten sources of the shop's shape, each on its own topic of the embedded broker, with five
/// views each.
fn ten_sources(lake: &str, port: u16) -> String {
    let mut text = format!(
        r#"
[kafka]
brokers = "embedded"
partitions = 2
[lake]
uri = "{lake}"
[serving]
listen = "127.0.0.1:{port}"
[batch]
schedule = "0 0 0 1 1 *"
[archive]
commit_interval = "200ms"
"#
    );
    let views = [
        ("minute", r#""type""#),
        ("hour", r#""country""#),
        ("day", r#""product""#),
        ("hour", r#""type", "country""#),
        ("day", r#""country", "product""#),
    ];
    for s in 0..10 {
        text.push_str(&format!(
            r#"
[[sources]]
name = "shop{s}"
topic = "shop{s}"
fields = [
  {{ name = "type", type = "string", required = true, normalize = "lower" }},
  {{ name = "user_id", type = "string", required = true }},
  {{ name = "country", type = "string", required = true, normalize = "upper" }},
  {{ name = "product", type = "string" }},
  {{ name = "amount", type = "float" }},
]
"#
        ));
        for (v, (granularity, dimensions)) in views.iter().enumerate() {
            text.push_str(&format!(
                r#"
[[views]]
name = "shop{s}_v{v}"
source = "shop{s}"
granularity = "{granularity}"
dimensions = [{dimensions}]
measures = [{{ name = "events", agg = "count" }}, {{ name = "revenue", agg = "sum", field = "amount" }}]
"#
            ));
        }
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_sources_and_fifty_views_start_archive_and_answer() {
    const EVENTS: u64 = 40;
    let dir = scratch_dir();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let port = free_port();
    let lake = dir.path().join("lake");
    let text = ten_sources(&lake.display().to_string(), port);
    let config = Config::from_toml(&text, "test", std::iter::empty()).unwrap();
    assert_eq!((config.sources.len(), config.views.len()), (10, 50));
    let config_file = dir.path().join("lambdaflow.toml");
    std::fs::write(&config_file, &text).unwrap();
    let api = Api::new(format!("http://127.0.0.1:{port}"));
    let _run = start_run(LAMBDAFLOW, &config_file, &logs, "run");
    wait_for("readiness", Duration::from_secs(120), || async {
        api.get("/readyz").await.0 == 200
    })
    .await;
    let at_rest = memory(&api).await;

    for (s, source) in config.sources.iter().enumerate() {
        let mut generator = Generator::new(Shape::Shop, s as u64, 50, Mix::default());
        let events: Vec<serde_json::Value> = (0..EVENTS)
            .map(|_| serde_json::from_slice(&generator.next_event(now_micros()).payload).unwrap())
            .collect();
        let body = serde_json::Value::from(events).to_string();
        let (status, reply) = api
            .post(&format!("/v1/events/{}", source.name), &body)
            .await;
        assert_eq!(
            (status, reply["accepted"].as_u64()),
            (200, Some(EVENTS)),
            "{reply}"
        );
    }
    every_view_counts(&api, &config, "merged", EVENTS).await;
    wait_for(
        "every archiver to store its events",
        Duration::from_secs(60),
        || async {
            let text = metrics(&api).await;
            config.sources.iter().all(|s| {
                let labels = [("outcome", "archived"), ("source", s.name.as_str())];
                sample(&text, "lambdaflow_archiver_events_total", &labels) == Some(EVENTS as f64)
            })
        },
    )
    .await;
    let (status, run) = api.post("/v1/batch/runs", "").await;
    assert_eq!(status, 202, "{run}");
    let id = run["id"].as_str().unwrap().to_owned();
    wait_for("the batch run", Duration::from_secs(300), || async {
        let (_, record) = api.get(&format!("/v1/batch/runs/{id}")).await;
        assert_ne!(record["status"], "failed", "{record}");
        record["status"] == "succeeded"
    })
    .await;
    let (_, record) = api.get(&format!("/v1/batch/runs/{id}")).await;
    assert_eq!(record["sources"].as_array().unwrap().len(), 10, "{record}");
    assert_eq!(record["views"].as_array().unwrap().len(), 50, "{record}");
    every_view_counts(&api, &config, "batch", EVENTS).await;
    let busy = memory(&api).await;
    println!(
        "10 sources, 50 views: at rest {} MB resident, {} MB allocated; after {} events and a batch run {} MB resident, {} MB allocated",
        at_rest.0 / 1_000_000,
        at_rest.1 / 1_000_000,
        EVENTS * 10,
        busy.0 / 1_000_000,
        busy.1 / 1_000_000
    );
}

/// Waits until every view of `config` counts `events` over all time on `layer`.
async fn every_view_counts(api: &Api, config: &Config, layer: &str, events: u64) {
    for view in &config.views {
        let name = &view.name;
        let what = format!("{name} to count {events} events on the {layer} side");
        wait_for(&what, Duration::from_secs(60), || async {
            counted(api, name, layer).await == Some(events)
        })
        .await;
    }
}

/// The events `view` counts over all time, on `layer`.
async fn counted(api: &Api, view: &str, layer: &str) -> Option<u64> {
    let path = format!("/v1/views/{view}/query?granularity=all&measures=events&layer={layer}");
    api.get(&path).await.1["rows"][0]["events"].as_u64()
}

/// The process's (resident, allocated) bytes as its allocator reports them.
async fn memory(api: &Api) -> (u64, u64) {
    let text = metrics(api).await;
    let bytes = |name| sample(&text, name, &[]).unwrap_or_default() as u64;
    (
        bytes("lambdaflow_memory_resident_bytes"),
        bytes("lambdaflow_memory_allocated_bytes"),
    )
}
