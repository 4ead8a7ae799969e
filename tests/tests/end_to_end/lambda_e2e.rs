//! The whole product against a real broker: `lambdaflow run` (archiver, speed layer, batch
//! scheduler, API) with tansu; events produced in waves with duplicates, late and invalid
//! ones; batch runs triggered through the API; `run` killed with SIGKILL and restarted. At
//! every step every view answers, at every granularity and group_by subset, what a direct
//! aggregation of the produced events gives, and `approx_distinct` does not move when a batch
//! run moves events from the speed side to the batch side.

use std::time::Duration;

use lambdaflow_common::config::Config;
use lambdaflow_tests::e2e::{
    Api, TOPIC, Truth, batch, check, messages, produce, produce_strays, sample, shop, shop_config,
    start_run, test_config, wait_for,
};
use lambdaflow_tests::{Tansu, free_port, scratch_dir};

const PARTITIONS: u32 = 4;
const LAMBDAFLOW: &str = env!("CARGO_BIN_EXE_lambdaflow-e2e");

/// The process's counters (speed layer, archiver, batch runs) equal what the produced
/// messages hold, and SQL over the merged views and the raw table agrees with them.
async fn counters_and_sql_agree_with_the_truth(
    api: &Api,
    config: &Config,
    produced: &[(i32, i64, Vec<u8>)],
) {
    let mut truth = Truth::default();
    truth.add(config, produced);
    let (valid, unique) = (truth.valid, truth.unique.len());
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
                    sample(
                        &text,
                        "lambdaflow_archiver_events_total",
                        &[("outcome", o), ("source", "events")],
                    )
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
        counter("lambdaflow_speed_messages_total", &[("source", "events")]) as usize,
        produced.len()
    );
    assert_eq!(
        counter(
            "lambdaflow_speed_events_valid_total",
            &[("source", "events")]
        ) as usize,
        valid
    );
    assert_eq!(
        counter(
            "lambdaflow_speed_events_duplicate_total",
            &[("source", "events")]
        ) as usize,
        valid - unique
    );
    for (reason, n) in &truth.reasons {
        assert_eq!(
            counter(
                "lambdaflow_speed_events_invalid_total",
                &[("reason", reason), ("source", "events")]
            ) as usize,
            *n,
            "{reason}"
        );
    }
    assert_eq!(
        counter(
            "lambdaflow_archiver_events_total",
            &[("outcome", "archived"), ("source", "events")]
        ) as usize,
        unique
    );
    assert_eq!(
        counter(
            "lambdaflow_archiver_events_total",
            &[("outcome", "duplicate"), ("source", "events")]
        ) as usize,
        valid - unique
    );
    assert!(
        counter(
            "lambdaflow_archiver_commit_seconds_count",
            &[("source", "events"), ("table", "raw")]
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
                &[("partition", &p.to_string()), ("source", "events")]
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
    let text = test_config(&tansu.bootstrap, &lake.display().to_string(), port);
    let config_file = dir.path().join("lambdaflow.toml");
    std::fs::write(&config_file, &text).unwrap();
    let config = shop_config(&text);
    let api = Api::new(format!("http://127.0.0.1:{port}"));
    let producer = tansu.producer();
    let mut generator = shop(11, 300);
    let mut wave = |n: usize| messages(&mut generator, n);

    let run = start_run(LAMBDAFLOW, &config_file, &logs, "run-1");
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
            if measure.agg == lambdaflow_common::view::AggKind::ApproxDistinct {
                assert_eq!(
                    before[v][m], after[v][m],
                    "{}.{} moved when the batch took over from the speed layer",
                    view.name, measure.name
                );
            }
        }
    }

    let second = produce(&producer, &wave(300)).await;
    produced.extend(second.iter().cloned());
    // Copies of some of them on other partitions: each counts once, whichever copy the
    // archiver stores.
    produced.extend(produce_strays(&producer, &second[..40], PARTITIONS as i32).await);
    check(
        &api,
        &config,
        &produced,
        "late events, duplicates and copies on other partitions on top of a batch",
    )
    .await;

    counters_and_sql_agree_with_the_truth(&api, &config, &produced).await;

    run.kill9();
    produced.extend(produce(&producer, &wave(150)).await);
    let _run = start_run(LAMBDAFLOW, &config_file, &logs, "run-2");
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
