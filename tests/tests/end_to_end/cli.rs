//! The command line as a user meets it: `check` on the shipped configs, errors that name what
//! is wrong, and non-zero exits.

use std::path::Path;
use std::process::{Command, Output};

use lambdaflow_tests::{free_port, scratch_dir};

fn lambdaflow(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lambdaflow-e2e"));
    command
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("running lambdaflow")
}

#[test]
fn check_accepts_every_shipped_config() {
    let mut configs: Vec<_> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
    configs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../common/src/demo.toml"));
    for config in configs {
        let out = lambdaflow(&["check", "--config", config.to_str().unwrap()], &[]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: {}",
            config.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("config ok") && stdout.contains("view sales_by_country"),
            "{stdout}"
        );
    }
}

#[test]
fn unknown_keys_and_bad_values_name_the_key_and_exit_non_zero() {
    let cases = [
        ("LAMBDAFLOW_KAFKA__BROKERZ", "x", "brokerz"),
        ("LAMBDAFLOW_SOURCE__MAX_FUTURE", "soon", "soon"),
        ("LAMBDAFLOW_KAFKA__PARTITIONS", "0", "kafka.partitions"),
    ];
    for (var, value, named) in cases {
        let out = lambdaflow(
            &["check", "--config", "deploy/lambdaflow.toml"],
            &[(var, value)],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{var}={value} was accepted");
        assert!(stderr.contains(named), "{var}={value}: {stderr}");
    }
    let out = lambdaflow(&["check", "--config", "no/such/file.toml"], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no/such/file.toml"));
}

#[test]
fn environment_overrides_reach_the_config() {
    let out = lambdaflow(
        &["check", "--config", "deploy/lambdaflow.toml"],
        &[
            ("LAMBDAFLOW_KAFKA__BROKERS", "kafka-1:9092"),
            ("LAMBDAFLOW_KAFKA__TOPIC", "clicks"),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        stdout.contains("brokers kafka-1:9092") && stdout.contains("source events: topic `clicks`"),
        "{stdout}"
    );
}

#[test]
fn batch_run_prints_its_record_or_fails_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let lake = lake.to_str().unwrap();
    let out = lambdaflow(
        &["batch", "run", "--config", "deploy/lambdaflow.toml"],
        &[("LAMBDAFLOW_LAKE__URI", lake)],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(record["status"], "succeeded");
    assert_eq!(record["trigger"], "cli");
    assert!(!record["views"].as_array().unwrap().is_empty());

    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, "not a directory").unwrap();
    let out = lambdaflow(
        &["batch", "run", "--config", "deploy/lambdaflow.toml"],
        &[("LAMBDAFLOW_LAKE__URI", blocker.to_str().unwrap())],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("error: lake uri"), "{stderr}");
}

/// A batch run is a graph of tasks: a publish failing once with a transient error is retried
/// and succeeds; a recompute failing for good fails its view alone (its publish is skipped,
/// every other view publishes, the lake is still vacuumed, the run fails naming it); a line
/// on stderr follows each task; the next run publishes everything.
#[test]
fn a_batch_run_retries_transient_failures_and_isolates_a_failed_view() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let lake = lake.to_str().unwrap();
    let demo = "common/src/demo.toml";
    let faults = "fail-task:publish:sales_by_country#1,break-task:recompute:traffic_by_minute#1";
    let out = lambdaflow(
        &["batch", "run", "--config", demo],
        &[
            ("LAMBDAFLOW_LAKE__URI", lake),
            ("LAMBDAFLOW_FAULTS", faults),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    for line in [
        "task publish:sales_by_country running (attempt 2)",
        "task publish:sales_by_country succeeded (attempt 2)",
        "task recompute:traffic_by_minute failed",
        "task publish:traffic_by_minute skipped",
        "task vacuum succeeded",
    ] {
        assert!(stderr.contains(line), "no `{line}` in {stderr}");
    }
    let runs = Path::new(lake).join("_lambdaflow/runs");
    let record = |id: Option<&str>| -> serde_json::Value {
        let mut files: Vec<_> = std::fs::read_dir(&runs)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        let file = match id {
            Some(id) => runs.join(format!("{id}.json")),
            None => files.last().unwrap().clone(),
        };
        serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap()
    };
    let failed = record(None);
    assert_eq!(failed["status"], "failed");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("traffic_by_minute"),
        "{failed}"
    );
    let tasks: std::collections::BTreeMap<String, serde_json::Value> = failed["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["id"].as_str().unwrap().to_owned(), t.clone()))
        .collect();
    let state = |id: &str| {
        (
            tasks[id]["state"].as_str().unwrap(),
            tasks[id]["attempts"].as_u64().unwrap(),
        )
    };
    assert_eq!(state("publish:sales_by_country"), ("succeeded", 2));
    assert_eq!(state("recompute:traffic_by_minute"), ("failed", 1));
    assert!(
        tasks["recompute:traffic_by_minute"]["error"]
            .as_str()
            .unwrap()
            .contains("permanent")
    );
    assert_eq!(state("publish:traffic_by_minute"), ("skipped", 0));
    assert_eq!(state("vacuum"), ("succeeded", 1));
    for view in ["products_by_day", "pages_by_minute", "devices_by_hour"] {
        for task in ["recompute", "publish"] {
            assert_eq!(
                state(&format!("{task}:{view}")),
                ("succeeded", 1),
                "{task}:{view}"
            );
        }
    }
    assert_eq!(state("expire:events"), ("succeeded", 1));
    assert_eq!(state("expire:pageviews"), ("succeeded", 1));
    assert_eq!(tasks.len(), 2 + 2 * 5 + 1);
    assert_eq!(failed["edges"].as_array().unwrap().len(), 3 * 5);
    let published: Vec<&str> = failed["views"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        published,
        [
            "sales_by_country",
            "products_by_day",
            "pages_by_minute",
            "devices_by_hour"
        ]
    );

    let out = lambdaflow(
        &["batch", "run", "--config", demo],
        &[("LAMBDAFLOW_LAKE__URI", lake)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let states: Vec<&str> = record["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap())
        .collect();
    assert!(states.iter().all(|s| *s == "succeeded"), "{record}");
    assert_eq!(record["views"].as_array().unwrap().len(), 5);
}

/// Writes into the lake at `lake` one raw event dated, and one refused message received,
/// `days_ago` days before today.
fn old_rows(config_path: &str, lake: &str, days_ago: i64) {
    use lambdaflow_common::schema::{EVENT_DATE, INGEST_DATE, quarantine_schema, raw_schema};
    use lambdaflow_common::timestamp::{MICROS_PER_DAY, now_micros};
    use lambdaflow_common::validate::{Coordinates, Validator};

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let config = lambdaflow_serving::commands::load_config(&root.join(config_path)).unwrap();
    let validator = Validator::new(config.source());
    let then = now_micros() - days_ago * MICROS_PER_DAY;
    let mut builder = validator.batch_builder(&config.source().topic, then);
    let json = serde_json::json!({
        "event_id": format!("old-{days_ago}"), "event_time": then / 1000, "type": "view",
        "user_id": "u1", "country": "KR",
    });
    for (offset, message) in [serde_json::to_vec(&json).unwrap(), b"not json".to_vec()]
        .iter()
        .enumerate()
    {
        let coordinates = Coordinates {
            partition: 0,
            offset: offset as i64,
        };
        let accepted = builder.push(Some(message), coordinates).is_ok();
        assert_eq!(
            accepted,
            offset == 0,
            "the event is accepted, the rest refused"
        );
    }
    let validated = builder.finish();
    assert_eq!(validated.events.num_rows(), 1);
    assert_eq!(validated.rejects.num_rows(), 1);
    let lake = lambdaflow_batch::lake::Lake::new(&lambdaflow_common::config::LakeConfig::at(
        lake.to_owned(),
    ))
    .unwrap();
    let tables = [
        (
            lake.raw(&config.source().name),
            raw_schema(config.source()),
            EVENT_DATE,
            validated.events,
        ),
        (
            lake.quarantine(&config.source().name),
            quarantine_schema(),
            INGEST_DATE,
            validated.rejects,
        ),
    ];
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        for (url, schema, date, rows) in tables {
            let table = lambdaflow_batch::lake::open_or_create(&url, &schema, &[date])
                .await
                .unwrap();
            table
                .write([rows])
                .with_partition_columns([date])
                .await
                .unwrap();
        }
    });
}

#[test]
fn lake_expire_lists_then_deletes_the_expired_dates() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let lake = lake.to_str().unwrap();
    for days_ago in [30, 2] {
        old_rows("deploy/lambdaflow.toml", lake, days_ago);
    }
    let expire = |args: &[&str]| {
        let mut all = vec!["lake", "expire", "--config", "deploy/lambdaflow.toml"];
        all.extend(args);
        let out = lambdaflow(
            &all,
            &[
                ("LAMBDAFLOW_LAKE__URI", lake),
                ("LAMBDAFLOW_RETENTION__RAW", "7d"),
                ("LAMBDAFLOW_RETENTION__QUARANTINE", "7d"),
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let dates = |table: &str| {
            let entry = report
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["table"] == table);
            entry.unwrap()["dates"].as_array().unwrap().len()
        };
        (dates("raw/events"), dates("quarantine/events"))
    };
    assert_eq!(
        expire(&["--dry-run"]),
        (1, 1),
        "the 30-day-old dates are listed"
    );
    assert_eq!(expire(&["--dry-run"]), (1, 1), "a dry run deletes nothing");
    assert_eq!(expire(&[]), (1, 1), "and then they are deleted");
    assert_eq!(expire(&[]), (0, 0), "only once");
}

#[test]
fn lake_status_and_vacuum_report_every_table() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let lake = lake.to_str().unwrap();
    old_rows("deploy/lambdaflow.toml", lake, 3);
    let lake_command = |args: &[&str]| {
        let mut all = vec!["lake"];
        all.extend(args);
        all.extend(["--config", "deploy/lambdaflow.toml"]);
        let out = lambdaflow(
            &all,
            &[
                ("LAMBDAFLOW_LAKE__URI", lake),
                ("LAMBDAFLOW_RETENTION__RAW", "30d"),
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        report.as_array().unwrap().clone()
    };
    let status = lake_command(&["status"]);
    let raw = status.iter().find(|t| t["table"] == "raw/events").unwrap();
    assert_eq!(raw["live_files"], 1, "{raw}");
    assert_eq!(raw["oldest_date"], raw["newest_date"]);
    assert!(raw["next_expiry"].is_string(), "raw has a retention: {raw}");
    assert!(raw["last_vacuum"].is_null());
    let views = status
        .iter()
        .filter(|t| t["table"].as_str().unwrap().starts_with("views/"));
    assert!(views.clone().count() >= 1);
    assert!(
        views.into_iter().all(|v| v["version"].is_null()),
        "no batch run yet"
    );

    let dry = lake_command(&["vacuum", "--dry-run"]);
    assert_eq!(dry.len(), 2, "raw and quarantine exist: {dry:?}");
    assert!(
        lake_command(&["status"])
            .iter()
            .all(|t| t["last_vacuum"].is_null())
    );
    let vacuumed = lake_command(&["vacuum"]);
    assert!(
        vacuumed.iter().all(|t| t["files"] == 0),
        "nothing is old enough: {vacuumed:?}"
    );
    let after = lake_command(&["status"]);
    let raw = after.iter().find(|t| t["table"] == "raw/events").unwrap();
    assert!(raw["last_vacuum"].is_string(), "{raw}");
}

#[test]
fn serve_and_run_refuse_an_api_beyond_loopback_without_tokens() {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../common/src/demo.toml");
    for command in ["serve", "run"] {
        let out = lambdaflow(
            &[command, "--config", demo.to_str().unwrap()],
            &[("LAMBDAFLOW_SERVING__LISTEN", "0.0.0.0:0")],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{command} served 0.0.0.0 without tokens"
        );
        assert!(
            stderr.contains("without authentication")
                && stderr.contains("allow_public_without_auth"),
            "{command}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_beyond_loopback_asks_for_the_token_it_prints() {
    let dir = scratch_dir();
    let port = free_port();
    let _demo = crate::demo::start(dir.path(), dir.path(), &format!("0.0.0.0:{port}"), 20);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    crate::demo::ready(&client, &base).await;
    let log = std::fs::read_to_string(dir.path().join("demo.log")).unwrap();
    let token = log
        .split("Authorization: Bearer ")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .unwrap_or_else(|| panic!("the demo printed no token: {log}"))
        .to_owned();
    assert_eq!(token.len(), 64, "32 random bytes in hex: {token}");
    let views = format!("{base}/v1/views");
    let anonymous = client.get(&views).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let wrong = client
        .get(&views)
        .bearer_auth("0".repeat(64))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let with_token = client.get(&views).bearer_auth(&token).send().await.unwrap();
    assert_eq!(with_token.status(), 200);
    let page = client.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(
        page.status(),
        200,
        "the dashboard page loads, then asks for the token"
    );
}

#[test]
fn gen_writes_the_count_acknowledged_to_its_heartbeat_file() {
    let dir = tempfile::tempdir().unwrap();
    let tansu = lambdaflow_tests::Tansu::start(dir.path());
    let beat = dir.path().join("gen.heartbeat");
    let out = lambdaflow(
        &[
            "gen",
            "--config",
            "deploy/lambdaflow.toml",
            "--count",
            "40",
            "--heartbeat",
            beat.to_str().unwrap(),
        ],
        &[("LAMBDAFLOW_KAFKA__BROKERS", tansu.bootstrap.as_str())],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("produced 40 events"));
    assert_eq!(std::fs::read_to_string(&beat).unwrap(), "40\n");
}
