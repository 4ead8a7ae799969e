//! The lake on S3-compatible storage: `lambdaflow run` with `lake.uri = "s3://…"` against a
//! real S3 server process (moto's, from PyPI; `.ci/run` installs it beside the Python readers),
//! configured the usual way through `AWS_*` variables with an endpoint override. Archive,
//! batch through the API, answers equal to the truth, SIGKILL and restart, a second batch, a
//! third on a Ballista cluster whose executors read the bucket: the same checks as on a local
//! lake, and the tables, the run history and the run lock live in the bucket.

use std::process::Command;
use std::time::Duration;

use lambdaflow_common::config::Config;
use lambdaflow_tests::cluster::BallistaCluster;
use lambdaflow_tests::e2e::{
    Api, TOPIC, Truth, batch, check, messages, produce, raw_version_read, shop, shop_config,
    swapped_in, test_config, wait_for,
};
use lambdaflow_tests::{Process, Tansu, free_port, python, scratch_dir};
use object_store::ObjectStoreExt;

const BUCKET: &str = "lambdaflow";
const BINARY: &str = env!("CARGO_BIN_EXE_lambdaflow-e2e");

/// moto's server (`moto.server.main`), with its object puts made one at a time. moto answers
/// requests on concurrent threads and checks `If-None-Match: *` and writes the object in two
/// steps, so two racing create-if-absent puts can both succeed, which S3 never lets happen;
/// serialised, they meet S3's contract, and the lock races below test the lock, not moto.
const MOTO: &str = "
import sys, threading
from moto.s3.responses import S3Response
one_at_a_time, put = threading.Lock(), S3Response.put_object
def serialised(self):
    with one_at_a_time:
        return put(self)
S3Response.put_object = serialised
from moto.server import main
main(sys.argv[1:])
";

/// moto's S3 server on a free port with the bucket created; its endpoint URL.
async fn start_moto(logs: &std::path::Path) -> (Process, String) {
    let s3_port = free_port();
    let s3 = Process::start(
        "moto",
        python().args(["-c", MOTO, "-H", "127.0.0.1", "-p", &s3_port.to_string()]),
        logs,
    );
    let endpoint = format!("http://127.0.0.1:{s3_port}");
    let http = reqwest::Client::new();
    wait_for(
        "the S3 server and the bucket",
        Duration::from_secs(60),
        || async {
            http.put(format!("{endpoint}/{BUCKET}"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        },
    )
    .await;
    (s3, endpoint)
}

/// The `AWS_*` settings that point `lambdaflow` at moto's S3 server at `endpoint`.
fn s3_settings(endpoint: &str) -> [(&'static str, &str); 5] {
    [
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_ACCESS_KEY_ID", "lambdaflow"),
        ("AWS_SECRET_ACCESS_KEY", "lambdaflow-secret"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ALLOW_HTTP", "true"),
    ]
}

/// Runs the ignored test `test` of this module in a child process (this test binary again)
/// whose environment names the lake in the bucket and the S3 settings, as `lambdaflow` reads
/// them; the child must have run exactly that one test, and passed it.
fn in_a_child(test: &str, endpoint: &str) {
    // Test names in the binary are paths below the crate: `s3_lake::<test>`.
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    let name = format!("{module}::{test}");
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", &name, "--ignored", "--nocapture"])
        .env("LAMBDAFLOW_TEST_S3_LAKE", format!("s3://{BUCKET}/lake"))
        .envs(s3_settings(endpoint))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "{name} in the bucket failed: {}",
        out.status
    );
    assert!(
        stdout.contains("test result: ok. 1 passed;"),
        "the child ran no test named {name}"
    );
}

/// Two batch runners race for a stale run lock in the bucket, 20 rounds: exactly one wins
/// each round. The race runs in a child process of this test binary
/// ([`lock_race_in_the_bucket`]), which reads the S3 settings from its environment as
/// `lambdaflow` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runners_racing_for_a_stale_lock_in_the_bucket_never_both_win() {
    let dir = scratch_dir();
    let (_s3, endpoint) = start_moto(dir.path()).await;
    in_a_child("lock_race_in_the_bucket", &endpoint);
}

/// The race of [`two_runners_racing_for_a_stale_lock_in_the_bucket_never_both_win`], run by
/// it in a child process with the S3 settings in the environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by two_runners_racing_for_a_stale_lock_in_the_bucket_never_both_win"]
async fn lock_race_in_the_bucket() {
    use lambdaflow_batch::error::Error;
    use lambdaflow_batch::lake::Lake;
    use lambdaflow_batch::views::lock::BatchLock;
    use lambdaflow_batch::views::records::History;

    let Ok(uri) = std::env::var("LAMBDAFLOW_TEST_S3_LAKE") else {
        return;
    };
    let lake = Lake::new(&lambdaflow_common::config::LakeConfig::at(uri.clone())).unwrap();
    let store = deltalake::DeltaTableBuilder::from_url(
        url::Url::parse(&format!("{uri}/_lambdaflow/")).unwrap(),
    )
    .unwrap()
    .build_storage()
    .unwrap()
    .object_store(None);
    // A lock left by a run that died, where this version and earlier ones look.
    let stale = serde_json::json!({
        "run_id": "20200101T000000000Z-dead", "since": "2020-01-01T00:00:00Z",
        "heartbeat": "2020-01-01T00:00:00Z", "pid": 1, "host": "",
    })
    .to_string();
    let lock = || BatchLock::new(History::new(&lake).unwrap());
    let (a, b) = (lock(), lock());
    for round in 0..20 {
        let listing = store.list_with_delimiter(None).await.unwrap();
        let next = listing
            .objects
            .iter()
            .filter_map(|o| {
                o.location
                    .filename()?
                    .strip_prefix("batch.lock.")?
                    .parse::<u64>()
                    .ok()
            })
            .max()
            .map_or(0, |n| n + 1);
        for path in ["batch.lock".to_owned(), format!("batch.lock.{next:020}")] {
            store
                .put(
                    &object_store::path::Path::from(path),
                    stale.clone().into_bytes().into(),
                )
                .await
                .unwrap();
        }
        let barrier = tokio::sync::Barrier::new(2);
        let take = |lock: &BatchLock, who: &'static str| {
            let (lock, barrier) = (lock.clone(), &barrier);
            async move {
                barrier.wait().await;
                lock.acquire(&format!("20260101T000000000Z-round{round}{who}"))
                    .await
            }
        };
        let (first, second) = tokio::join!(take(&a, "a"), take(&b, "b"));
        let mut winners = Vec::new();
        for taken in [first, second] {
            match taken {
                Ok(held) => winners.push(held),
                Err(Error::RunInProgress { .. }) => {}
                Err(other) => panic!("round {round}: {other}"),
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "round {round}: both runners took the lock"
        );
        println!("round {round}: one winner");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lake_on_s3_archives_batches_answers_and_survives_a_kill() {
    let dir = scratch_dir();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let tansu = Tansu::start(&logs);
    tansu.create_topic(TOPIC, 4);

    let (_s3, endpoint) = start_moto(&logs).await;
    let http = reqwest::Client::new();

    let port = free_port();
    let text = test_config(&tansu.bootstrap, &format!("s3://{BUCKET}/lake"), port);
    let config_file = dir.path().join("lambdaflow.toml");
    std::fs::write(&config_file, &text).unwrap();
    let config = shop_config(&text);
    let start = |name: &str| {
        Process::start(
            name,
            Command::new(BINARY)
                .args(["run", "--config"])
                .arg(&config_file)
                .envs(s3_settings(&endpoint))
                .current_dir(dir.path()),
            &logs,
        )
    };
    let api = Api::new(format!("http://127.0.0.1:{port}"));
    let producer = tansu.producer();
    let mut generator = shop(29, 200);
    let mut wave = |n: usize| messages(&mut generator, n);

    let run = start("run-1");
    wait_for("readiness", Duration::from_secs(60), || async {
        api.get("/readyz").await.0 == 200
    })
    .await;
    let mut produced = produce(&producer, &wave(200)).await;
    check(&api, &config, &produced, "s3: speed only").await;
    batch(&api, &config, "s3: first batch").await;
    check(&api, &config, &produced, "s3: after the first batch").await;

    let listing = http
        .get(format!("{endpoint}/{BUCKET}?list-type=2&prefix=lake/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for key in [
        "lake/raw/events/_delta_log/00000000000000000000.json",
        "lake/quarantine/events/_delta_log/00000000000000000000.json",
        "lake/views/sales_by_country/_delta_log/00000000000000000000.json",
        "lake/_lambdaflow/runs/",
    ] {
        assert!(listing.contains(key), "no {key} in the bucket:\n{listing}");
    }
    assert!(
        !dir.path().join("s3:").exists() && !dir.path().join(BUCKET).exists(),
        "nothing of the lake is written locally"
    );

    // The run lock lives in the bucket too: a lock another host holds refuses a run.
    let holder = serde_json::json!({
        "run_id": "20260101T000000000Z-elsewhere",
        "since": lambdaflow_batch::views::records::format_time(&std::time::SystemTime::now().into()),
        "heartbeat": lambdaflow_batch::views::records::format_time(&std::time::SystemTime::now().into()),
        "pid": 1,
        "host": "another-host",
    });
    let options: std::collections::HashMap<String, String> = s3_settings(&endpoint)
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let store_at = |path: &str| {
        let url = url::Url::parse(&format!("s3://{BUCKET}/lake/{path}")).unwrap();
        deltalake::DeltaTableBuilder::from_url(url)
            .unwrap()
            .with_storage_options(options.clone())
            .build_storage()
            .unwrap()
            .object_store(None)
    };
    let store = store_at("_lambdaflow/");
    let lock = object_store::path::Path::from("batch.lock");
    store
        .put(&lock, holder.to_string().into_bytes().into())
        .await
        .expect("writing a lock held elsewhere");
    let (status, refused) = api.post("/v1/batch/runs", "").await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"]["id"], "20260101T000000000Z-elsewhere");
    store.delete(&lock).await.expect("releasing it");

    // Through the same configuration, the bucket refuses a second writer of a Delta version:
    // creating a commit file that exists fails instead of overwriting it.
    let again = store_at("raw/events/")
        .put_opts(
            &object_store::path::Path::from("_delta_log/00000000000000000000.json"),
            b"{}".to_vec().into(),
            object_store::PutMode::Create.into(),
        )
        .await;
    assert!(
        matches!(again, Err(object_store::Error::AlreadyExists { .. })),
        "a conditional put over an existing commit: {again:?}"
    );

    run.kill9();
    produced.extend(produce(&producer, &wave(150)).await);
    let _run = start("run-2");
    wait_for(
        "readiness after the kill",
        Duration::from_secs(60),
        || async { api.get("/readyz").await.0 == 200 },
    )
    .await;
    check(&api, &config, &produced, "s3: after SIGKILL and restart").await;
    batch(&api, &config, "s3: second batch").await;
    check(&api, &config, &produced, "s3: after the second batch").await;

    // A batch run on a Ballista cluster whose executors read the raw table's files from the
    // bucket, through the same `AWS_*` settings: the views it publishes answer as exactly.
    produced.extend(produce(&producer, &wave(150)).await);
    check(&api, &config, &produced, "s3: a third wave").await;

    // The raw table in the bucket holds every first occurrence once: as many rows as the
    // unfiltered view counts events.
    let (_, all) = api
        .get("/v1/views/traffic_by_minute/query?granularity=all&measures=events")
        .await;
    let events = all["rows"][0]["events"].as_u64().unwrap();
    wait_for(
        "the archiver to catch up",
        Duration::from_secs(30),
        || async {
            let (status, raw) = api
                .post("/v1/sql", r#"{"sql": "SELECT count(*) FROM raw_events"}"#)
                .await;
            status == 200 && raw["rows"][0][0].as_u64() == Some(events)
        },
    )
    .await;

    let cluster = BallistaCluster::start_with_env(BINARY, &logs, &s3_settings(&endpoint)).await;
    let status = Command::new(BINARY)
        .args(["batch", "run", "--config"])
        .arg(&config_file)
        .envs(s3_settings(&endpoint))
        .env("LAMBDAFLOW_BATCH__ENGINE", &cluster.engine)
        .current_dir(dir.path())
        .stdout(std::fs::File::create(logs.join("cluster-run.out")).unwrap())
        .stderr(std::fs::File::create(logs.join("cluster-run.log")).unwrap())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "the run on the cluster failed; see {}",
        logs.display()
    );
    let (_, runs) = api.get("/v1/batch/runs?limit=1").await;
    let record = &runs["runs"][0];
    assert_eq!(record["status"], "succeeded", "{record}");
    assert_eq!(record["engine"], cluster.engine.as_str(), "{record}");
    assert!(record["cluster"]["tasks"].as_u64() > Some(0), "{record}");
    swapped_in(
        &api,
        &config,
        raw_version_read(record, &config),
        "s3: the cluster's run",
    )
    .await;
    check(
        &api,
        &config,
        &produced,
        "s3: after a run on a Ballista cluster",
    )
    .await;
}

/// Vacuum in the bucket: a file a killed writer left (never committed) is kept while younger
/// than `lake.vacuum_retention` and deleted once older, and the table reads the same. Run by
/// [`vacuum_collects_a_killed_writers_file_in_the_bucket`] in a child process with the S3
/// settings in the environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by vacuum_collects_a_killed_writers_file_in_the_bucket"]
async fn vacuum_in_the_bucket() {
    use std::collections::BTreeMap;
    use std::time::SystemTime;

    use lambdaflow_batch::archive::commit::OffsetTable;
    use lambdaflow_batch::lake::vacuum::Vacuum;
    use lambdaflow_batch::lake::{Lake, open_or_create, status::status};
    use lambdaflow_common::schema::{EVENT_DATE, raw_schema};
    use lambdaflow_common::timestamp::now_micros;
    use lambdaflow_common::validate::{Coordinates, Validator};

    let Ok(uri) = std::env::var("LAMBDAFLOW_TEST_S3_LAKE") else {
        return;
    };
    let mut config = Config::shop();
    config.lake.uri = uri.clone();
    let lake = Lake::new(&config.lake).unwrap();
    let schema = raw_schema(config.source());
    let url = lake.raw(&config.source().name);
    let table = open_or_create(&url, &schema, &[EVENT_DATE]).await.unwrap();
    let mut raw = OffsetTable::load(table, (schema, EVENT_DATE), &config.source().topic, &[0])
        .await
        .unwrap();
    let validator = Validator::new(config.source());
    let mut builder = validator.batch_builder(&config.source().topic, now_micros());
    let event = serde_json::json!({
        "event_id": "e1", "event_time": now_micros() / 1000, "type": "view",
        "user_id": "u1", "country": "KR",
    });
    builder
        .push(
            Some(&serde_json::to_vec(&event).unwrap()),
            Coordinates {
                partition: 0,
                offset: 0,
            },
        )
        .unwrap();
    raw.append(builder.finish().events, &BTreeMap::from([(0, 0)]))
        .await
        .unwrap();

    let store = deltalake::DeltaTableBuilder::from_url(url.clone())
        .unwrap()
        .build_storage()
        .unwrap()
        .object_store(None);
    let orphan = object_store::path::Path::from("event_date=2020-01-01/part-00000-killed.parquet");
    store
        .put(&orphan, b"written, never committed".to_vec().into())
        .await
        .unwrap();
    let in_hours = |hours: u64| SystemTime::now() + Duration::from_secs(hours * 3600);
    let raw_report = |report: Vec<lambdaflow_batch::lake::vacuum::Vacuumed>| {
        report
            .into_iter()
            .find(|v| v.table == "raw/events")
            .unwrap()
    };

    let soon = Vacuum::new(&config, &lake)
        .with_now(in_hours(1).into())
        .run()
        .await
        .unwrap();
    assert_eq!(raw_report(soon).files, 0);
    assert!(
        store.head(&orphan).await.is_ok(),
        "younger than vacuum_retention"
    );

    let later = Vacuum::new(&config, &lake)
        .with_now(in_hours(8 * 24).into())
        .run()
        .await
        .unwrap();
    assert_eq!(raw_report(later).files, 1);
    assert!(
        matches!(
            store.head(&orphan).await,
            Err(object_store::Error::NotFound { .. })
        ),
        "the killed writer's file is collected"
    );
    let tables = status(&config, &lake).await.unwrap();
    let raw = tables.iter().find(|t| t.table == "raw/events").unwrap();
    assert_eq!(raw.live_files, 1, "{raw:?}");
    assert!(raw.last_vacuum.is_some(), "{raw:?}");
    assert!(raw.storage_bytes > raw.live_bytes, "{raw:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vacuum_collects_a_killed_writers_file_in_the_bucket() {
    let dir = scratch_dir();
    let (_s3, endpoint) = start_moto(dir.path()).await;
    in_a_child("vacuum_in_the_bucket", &endpoint);
}

/// `lambdaflow import s3://bucket/prefix/` reads the objects of known formats under the prefix
/// with the `AWS_*` settings (the lake stays local), imports each record once, and a second
/// import of the same prefix finds the file already imported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_reads_files_under_an_s3_prefix() {
    let dir = scratch_dir();
    let (_s3, endpoint) = start_moto(dir.path()).await;
    let mut generator = shop(9, 100);
    let records: Vec<(i32, i64, Vec<u8>)> = messages(&mut generator, 2_000)
        .into_iter()
        .enumerate()
        .map(|(i, (_, payload))| (-1, i as i64, payload))
        .collect();
    let mut body = Vec::new();
    for (.., payload) in &records {
        body.extend_from_slice(payload);
        body.push(b'\n');
    }
    let http = reqwest::Client::new();
    for (key, body) in [
        ("in/events.ndjson", body),
        ("in/notes.txt", b"not data".to_vec()),
    ] {
        let put = http
            .put(format!("{endpoint}/{BUCKET}/{key}"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(put.status().is_success(), "{key}: {}", put.status());
    }
    let lake = dir.path().join("lake");
    let text = test_config("127.0.0.1:9", &lake.display().to_string(), free_port());
    let config_file = dir.path().join("lambdaflow.toml");
    std::fs::write(&config_file, &text).unwrap();
    let mut truth = Truth::default();
    truth.add(&shop_config(&text), &records);
    let import = || {
        let out = Command::new(BINARY)
            .args(["import", "--source", "events", "--no-batch", "--config"])
            .arg(&config_file)
            .arg(format!("s3://{BUCKET}/in/"))
            .envs(s3_settings(&endpoint))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let first = import();
    let files = first["import"]["files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{first}");
    assert_eq!(files[0]["file"], format!("s3://{BUCKET}/in/events.ndjson"));
    assert_eq!(files[0]["records"], records.len());
    assert_eq!(files[0]["archived"], truth.unique.len());
    assert_eq!(files[0]["quarantined"], truth.rejects());
    let again = import();
    assert_eq!(
        again["import"]["files"][0]["already_imported"], true,
        "{again}"
    );
}
