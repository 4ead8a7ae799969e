//! Backfill from files, as a user runs it beside a live deployment: `lambdaflow run` archives
//! events from tansu; an NDJSON, a CSV and a Parquet file (each with invalid records,
//! duplicates among themselves and copies of events already archived) are imported by
//! `lambdaflow import`, which is killed with SIGKILL part way and run again; then every view
//! answers what a direct aggregation of everything (Kafka and files) gives, the raw table holds
//! each event once and the quarantine every refused record once, and importing the same files
//! again changes nothing; copies of imported events arriving on Kafka afterwards are dropped
//! by the live archiver as duplicates.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, Float64Builder, Int64Builder, RecordBatch, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema};
use lambdaflow_tests::e2e::{
    Api, TOPIC, Truth, batch, check, messages, produce, sample, shop, shop_config, start_run,
    test_config, wait_for,
};
use lambdaflow_tests::{Process, Tansu, free_port, scratch_dir};
use serde_json::Value;

const PARTITIONS: u32 = 2;
const LAMBDAFLOW: &str = env!("CARGO_BIN_EXE_lambdaflow-e2e");

/// Rows per file: 1 M unless `LAMBDAFLOW_IMPORT_ROWS` says otherwise.
fn rows_per_file() -> usize {
    std::env::var("LAMBDAFLOW_IMPORT_ROWS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000)
}

/// The shop source's columns, in file order.
const COLUMNS: [&str; 10] = [
    "event_id",
    "event_time",
    "type",
    "user_id",
    "country",
    "product",
    "quantity",
    "amount",
    "email",
    "session",
];

/// `payload` as a JSON object, if it is one.
fn object(payload: &[u8]) -> Option<serde_json::Map<String, Value>> {
    match serde_json::from_slice(payload) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    }
}

/// A CSV cell of `value`: text as is, numbers as JSON writes them, absent as empty.
fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn write_ndjson(path: &Path, rows: &[Vec<u8>]) {
    let mut text = Vec::new();
    for row in rows {
        text.extend_from_slice(row);
        text.push(b'\n');
    }
    std::fs::write(path, text).unwrap();
}

/// One row per payload: an object's fields under the header, anything else a short row (a
/// record the importer refuses, as the validator refuses the payload).
fn write_csv(path: &Path, rows: &[Vec<u8>]) {
    let mut writer = csv::WriterBuilder::new()
        .flexible(true)
        .from_path(path)
        .unwrap();
    writer.write_record(COLUMNS).unwrap();
    for row in rows {
        match object(row) {
            Some(map) => writer
                .write_record(COLUMNS.iter().map(|c| cell(map.get(*c))))
                .unwrap(),
            None => writer.write_record(["not an event"]).unwrap(),
        }
    }
    writer.flush().unwrap();
}

/// Typed columns (quantity an integer, amount a float, the rest text); a payload that is not
/// a valid shop event is a row of nulls, which the importer refuses.
fn write_parquet(path: &Path, rows: &[Vec<u8>], valid: &dyn Fn(&[u8]) -> bool) {
    let schema = Arc::new(Schema::new(
        COLUMNS
            .iter()
            .map(|c| {
                let kind = match *c {
                    "quantity" => DataType::Int64,
                    "amount" => DataType::Float64,
                    _ => DataType::Utf8,
                };
                Field::new(*c, kind, true)
            })
            .collect::<Vec<_>>(),
    ));
    let mut writer = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(path).unwrap(),
        schema.clone(),
        None,
    )
    .unwrap();
    for chunk in rows.chunks(65_536) {
        let mut text: Vec<StringBuilder> =
            (0..COLUMNS.len()).map(|_| StringBuilder::new()).collect();
        let mut quantity = Int64Builder::new();
        let mut amount = Float64Builder::new();
        for row in chunk {
            let map = object(row).filter(|_| valid(row)).unwrap_or_default();
            for (i, column) in COLUMNS.iter().enumerate() {
                let value = map.get(*column);
                match *column {
                    "quantity" => quantity.append_option(value.and_then(Value::as_i64)),
                    "amount" => amount.append_option(value.and_then(Value::as_f64)),
                    _ => text[i].append_option(value.and_then(Value::as_str)),
                }
            }
        }
        let columns: Vec<ArrayRef> = COLUMNS
            .iter()
            .enumerate()
            .map(|(i, column)| -> ArrayRef {
                match *column {
                    "quantity" => Arc::new(quantity.finish()),
                    "amount" => Arc::new(amount.finish()),
                    _ => Arc::new(text[i].finish()),
                }
            })
            .collect();
        writer
            .write(&RecordBatch::try_new(schema.clone(), columns).unwrap())
            .unwrap();
    }
    writer.close().unwrap();
}

fn import(config_file: &Path, files: &[PathBuf], logs: &Path, name: &str) -> Command {
    let mut command = Command::new(LAMBDAFLOW);
    command
        .args(["import", "--source", "events", "--no-batch", "--config"])
        .arg(config_file)
        .args(files)
        .stderr(std::fs::File::create(logs.join(format!("{name}.log"))).unwrap());
    command
}

/// Runs an import to its end; its report.
fn import_all(config_file: &Path, files: &[PathBuf], logs: &Path, name: &str) -> Value {
    let out = import(config_file, files, logs, name).output().unwrap();
    assert!(
        out.status.success(),
        "{name} failed; see {}",
        logs.join(format!("{name}.log")).display()
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn commits(table: &Path) -> usize {
    std::fs::read_dir(table.join("_delta_log"))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .count()
        })
        .unwrap_or(0)
}

/// Messages the archiver has handled: archived, dropped as duplicates or quarantined.
async fn archiver_handled(client: &reqwest::Client, api: &Api) -> usize {
    let Ok(response) = client.get(format!("{}/metrics", api.base)).send().await else {
        return 0;
    };
    let text = response.text().await.unwrap_or_default();
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
    handled as usize
}

async fn sql_count(api: &Api, sql: &str) -> u64 {
    let (status, answer) = api
        .post("/v1/sql", &serde_json::json!({ "sql": sql }).to_string())
        .await;
    assert_eq!(status, 200, "{sql}: {answer}");
    answer["rows"][0][0].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_files_count_once_through_a_kill_and_a_second_import() {
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
    let _run = start_run(LAMBDAFLOW, &config_file, &logs, "run");
    wait_for("readiness", Duration::from_secs(60), || async {
        api.get("/readyz").await.0 == 200
    })
    .await;

    // Events archived from Kafka first.
    let mut generator = shop(21, 2_000);
    let mut everything = produce(&tansu.producer(), &messages(&mut generator, 300)).await;
    let client = reqwest::Client::new();
    wait_for(
        "the archiver to store every message",
        Duration::from_secs(60),
        || async { archiver_handled(&client, &api).await == everything.len() },
    )
    .await;
    let archived: Vec<Vec<u8>> = everything.iter().map(|(_, _, p)| p.clone()).collect();

    // Three files of the same stream, each with copies of archived events spread through it.
    let rows = rows_per_file();
    let validator = lambdaflow_common::validate::Validator::new(config.source());
    let valid = |payload: &[u8]| {
        validator
            .check(Some(payload), lambdaflow_common::timestamp::now_micros())
            .is_ok()
    };
    let mut files = Vec::new();
    for (n, name) in ["events.ndjson", "events.csv", "events.parquet"]
        .into_iter()
        .enumerate()
    {
        let mut payloads: Vec<Vec<u8>> = messages(&mut generator, rows - 100)
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        for k in 0..100 {
            let at = (k * 7_919 + n * 13) % payloads.len();
            payloads.insert(at, archived[(k * 3 + n) % archived.len()].clone());
        }
        let path = dir.path().join(name);
        match n {
            0 => write_ndjson(&path, &payloads),
            1 => write_csv(&path, &payloads),
            _ => write_parquet(&path, &payloads, &valid),
        }
        everything.extend(
            payloads
                .into_iter()
                .enumerate()
                .map(|(i, p)| (-1, (n * rows + i) as i64, p)),
        );
        files.push(path);
    }
    let mut truth = Truth::default();
    truth.add(&config, &everything);

    // Killed once the raw table has taken a few of its commits, then run again.
    let raw_table = lake.join("raw/events");
    let before = commits(&raw_table);
    let mut killed = Process::start(
        "import-killed",
        Command::new(LAMBDAFLOW)
            .args(["import", "--source", "events", "--no-batch", "--config"])
            .arg(&config_file)
            .args(&files),
        &logs,
    );
    let started = std::time::Instant::now();
    while commits(&raw_table) < before + 2 {
        assert!(killed.is_running(), "the import ended before it was killed");
        assert!(started.elapsed() < Duration::from_secs(300), "no commits");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    killed.kill9();
    let resumed = import_all(&config_file, &files, &logs, "import-resumed");
    let report = &resumed["import"];
    assert_eq!(report["files"].as_array().unwrap().len(), 3, "{report}");
    assert!(resumed["batch_run"].is_null());

    let raw_count = sql_count(&api, "SELECT count(*) FROM raw_events").await;
    assert_eq!(
        raw_count as usize,
        truth.unique.len(),
        "each event once in raw"
    );
    let distinct = sql_count(
        &api,
        "SELECT count(*) FROM (SELECT DISTINCT event_id, event_date FROM raw_events)",
    )
    .await;
    assert_eq!(distinct, raw_count);
    let quarantined = sql_count(&api, "SELECT count(*) FROM quarantine_events").await;
    assert_eq!(
        quarantined as usize,
        truth.rejects(),
        "each refused record once"
    );
    let from_files = sql_count(
        &api,
        "SELECT count(*) FROM quarantine_events WHERE topic LIKE '%events.%' AND \"partition\" = -1",
    )
    .await;
    assert!(from_files > 0 && from_files < quarantined);

    // The same files again: nothing read, nothing added.
    let version = commits(&raw_table);
    let again = import_all(&config_file, &files, &logs, "import-again");
    for file in again["import"]["files"].as_array().unwrap() {
        assert_eq!(file["already_imported"], true, "{file}");
        assert_eq!(file["archived"], 0, "{file}");
    }
    assert_eq!(commits(&raw_table), version);

    // Copies of imported events arrive on Kafka after the import: the live archiver, whose
    // deduplication loaded today's ids before the import, must drop them too.
    let copies: Vec<(String, Vec<u8>)> = everything
        .iter()
        .filter(|(p, o, payload)| *p == -1 && *o % 5_000 == 7 && valid(payload))
        .filter(|(.., payload)| !archived.contains(payload))
        .map(|(_, o, payload)| (format!("copy-{o}"), payload.clone()))
        .collect();
    assert!(copies.len() >= 10);
    let kafka = everything.iter().filter(|(p, ..)| *p >= 0).count();
    everything.extend(produce(&tansu.producer(), &copies).await);
    wait_for(
        "the archiver to handle the copies",
        Duration::from_secs(60),
        || async { archiver_handled(&client, &api).await == kafka + copies.len() },
    )
    .await;

    // Imported events count from the next batch version on.
    batch(&api, &config, "after the import").await;
    check(&api, &config, &everything, "after the import").await;
    assert_eq!(
        sql_count(&api, "SELECT count(*) FROM raw_events").await,
        raw_count
    );
}

/// Two imports of one file at once, with no broker: whichever way their commits interleave, the
/// raw table ends with every unique event once and the quarantine with every refused record
/// once, at least one import succeeds, and one that stops says another import of the file
/// moved under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_imports_of_one_file_at_once_store_it_once() {
    let dir = scratch_dir();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let lake = dir.path().join("lake");
    let text = test_config("127.0.0.1:9", &lake.display().to_string(), free_port());
    let config_file = dir.path().join("lambdaflow.toml");
    std::fs::write(&config_file, &text).unwrap();
    let config = shop_config(&text);
    let mut generator = shop(5, 500);
    let records: Vec<(i32, i64, Vec<u8>)> = messages(&mut generator, 300_000)
        .into_iter()
        .enumerate()
        .map(|(i, (_, payload))| (-1, i as i64, payload))
        .collect();
    let file = dir.path().join("twice.ndjson");
    let payloads: Vec<Vec<u8>> = records.iter().map(|(.., p)| p.clone()).collect();
    write_ndjson(&file, &payloads);
    let mut truth = Truth::default();
    truth.add(&config, &records);

    let files = [file];
    let start = |name| {
        import(&config_file, &files, &logs, name)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let (mut first, mut second) = (start("first"), start("second"));
    let outcomes = [first.wait().unwrap(), second.wait().unwrap()];
    assert!(outcomes.iter().any(|s| s.success()), "{outcomes:?}");
    for (status, name) in outcomes.iter().zip(["first", "second"]) {
        if !status.success() {
            let log = std::fs::read_to_string(logs.join(format!("{name}.log"))).unwrap();
            assert!(log.contains("another import of the same file"), "{log}");
        }
    }
    let count = |table: &str, sql: &str| {
        let url = url::Url::from_directory_path(lake.join(table)).unwrap();
        let sql = sql.to_owned();
        async move {
            let batches = lambdaflow_tests::query_table(&url, &sql).await.unwrap();
            arrow::compute::cast(batches[0].column(0), &DataType::Int64)
                .unwrap()
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .unwrap()
                .value(0) as usize
        }
    };
    assert_eq!(
        count("raw/events", "SELECT count(*) FROM t").await,
        truth.unique.len()
    );
    assert_eq!(
        count("quarantine/events", "SELECT count(*) FROM t").await,
        truth.rejects()
    );
}
