//! The batch layer as users meet it: `lambdaflow batch run` processes killed with SIGKILL at
//! random moments while a reader keeps reading the views, then a run that completes; the views
//! must equal those of a clean run over a copy of the raw table, no reader may ever see a view
//! that disagrees with the raw version its watermark names, and the tables must read the same
//! through Python `deltalake` and DuckDB's `delta_scan`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow::array::AsArray;
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use datafusion::prelude::SessionContext;
use lambdaflow_batch::lake::Lake;
use lambdaflow_batch::views::watermark::view_commit;
use lambdaflow_common::config::{Config, DEMO_CONFIG};
use lambdaflow_common::sample::{Generator, Mix};
use lambdaflow_common::timestamp::now_micros;
use lambdaflow_tests::{
    Process, RawWriter, copy_dir, python, query_table, scratch_dir, sorted_rows,
};
use rand::{Rng, SeedableRng};

const PARTITIONS: i32 = 4;

fn config_for(lake: &Path) -> Config {
    let mut config = Config::shop();
    config.lake.uri = lake.display().to_string();
    config
}

fn payloads(generator: &mut Generator, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|_| generator.next_event(now_micros()).payload)
        .collect()
}

fn batch_run(config_file: &Path, lake: &Path, log_dir: &Path, name: &str) -> Process {
    Process::start(
        name,
        Command::new(env!("CARGO_BIN_EXE_lambdaflow-e2e"))
            .args(["batch", "run", "--config"])
            .arg(config_file)
            .env("LAMBDAFLOW_LAKE__URI", lake),
        log_dir,
    )
}

/// Runs `batch run` to completion; panics unless it exits 0.
fn batch_run_ok(config_file: &Path, lake: &Path, log_dir: &Path, name: &str) -> Duration {
    let started = Instant::now();
    let status = Command::new(env!("CARGO_BIN_EXE_lambdaflow-e2e"))
        .args(["batch", "run", "--config"])
        .arg(config_file)
        .env("LAMBDAFLOW_LAKE__URI", lake)
        .stdout(std::fs::File::create(log_dir.join(format!("{name}.out"))).unwrap())
        .stderr(std::fs::File::create(log_dir.join(format!("{name}.log"))).unwrap())
        .status()
        .unwrap();
    assert!(status.success(), "{name} failed; see {}", log_dir.display());
    started.elapsed()
}

fn count_of(batch: &RecordBatch, column: &str, value: &str) -> u64 {
    let c = arrow::compute::cast(batch.column_by_name(column).unwrap(), &DataType::Utf8).unwrap();
    c.as_string::<i32>()
        .iter()
        .filter(|v| *v == Some(value))
        .count() as u64
}

/// Reads `traffic_by_minute` and `sales_by_country` until `stop`, checking each version seen
/// against the raw totals of the raw version its watermark names.
async fn read_views(
    lake: Lake,
    truth: Arc<std::sync::Mutex<BTreeMap<u64, (u64, u64)>>>,
    stop: Arc<AtomicBool>,
    reads: Arc<AtomicU64>,
) {
    while !stop.load(Ordering::Relaxed) {
        for (view, column, pick) in [
            ("traffic_by_minute", "events", 0),
            ("sales_by_country", "orders", 1),
        ] {
            let Ok(table) = deltalake::open_table(lake.view(view)).await else {
                continue;
            };
            let Some(commit) = view_commit(&table).await.unwrap() else {
                continue;
            };
            let ctx = SessionContext::new();
            table.update_datafusion_session(&ctx.state()).unwrap();
            ctx.register_table("v", table.table_provider().await.unwrap())
                .unwrap();
            let sum = ctx
                .sql(&format!(
                    "SELECT CAST(COALESCE(SUM({column}), 0) AS BIGINT) FROM v"
                ))
                .await
                .unwrap()
                .collect()
                .await
                .unwrap();
            let seen = sum[0]
                .column(0)
                .as_primitive::<arrow::datatypes::Int64Type>()
                .value(0) as u64;
            let expected = truth.lock().unwrap()[&commit.watermark.raw_version];
            let expected = if pick == 0 { expected.0 } else { expected.1 };
            assert_eq!(
                seen,
                expected,
                "{view} at version {:?} (raw version {}) is partial",
                table.version(),
                commit.watermark.raw_version
            );
            reads.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_runs_publish_nothing_partial_and_the_next_run_equals_a_clean_one() {
    let seed: u64 = std::env::var("LAMBDAFLOW_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("LAMBDAFLOW_TEST_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = scratch_dir();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let config_file = dir.path().join("lambdaflow.toml");
    std::fs::write(&config_file, DEMO_CONFIG).unwrap();
    let lake_dir = dir.path().join("lake");
    let config = config_for(&lake_dir);
    let lake = Lake::new(&config.lake).unwrap();

    let mut generator = Generator::shop(
        seed,
        5_000,
        Mix {
            duplicates: 0.0,
            late: 0.3,
            invalid: 0.0,
        },
    );
    let mut raw = RawWriter::open(&config, PARTITIONS).await;
    let mut truth = BTreeMap::new();
    let mut totals = (0u64, 0u64);
    let first = raw.append(&payloads(&mut generator, 40_000)).await;
    totals = (
        totals.0 + first.num_rows() as u64,
        totals.1 + count_of(&first, "type", "purchase"),
    );
    truth.insert(raw.version(), totals);
    let clean = batch_run_ok(&config_file, &lake_dir, &logs, "first-run");

    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let truth = Arc::new(std::sync::Mutex::new(truth));
    let reader = tokio::spawn(read_views(
        lake.clone(),
        truth.clone(),
        stop.clone(),
        reads.clone(),
    ));
    for attempt in 0..4 {
        let more = raw.append(&payloads(&mut generator, 20_000)).await;
        totals = (
            totals.0 + more.num_rows() as u64,
            totals.1 + count_of(&more, "type", "purchase"),
        );
        truth.lock().unwrap().insert(raw.version(), totals);
        let process = batch_run(&config_file, &lake_dir, &logs, &format!("killed-{attempt}"));
        let wait = rng.random_range(50..(clean.as_millis() as u64 * 3 / 2).max(100));
        tokio::time::sleep(Duration::from_millis(wait)).await;
        process.kill9();
    }
    batch_run_ok(&config_file, &lake_dir, &logs, "final-run");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    reader.await.expect("the reader saw only whole views");
    assert!(reads.load(Ordering::Relaxed) > 0, "the reader read nothing");

    let clean_dir = dir.path().join("clean");
    let clean_config = config_for(&clean_dir);
    let clean_lake = Lake::new(&clean_config.lake).unwrap();
    copy_dir(&lake_dir.join("raw"), &clean_dir.join("raw"));
    batch_run_ok(&config_file, &clean_dir, &logs, "clean-run");
    for view in &config.views {
        let sql = "SELECT * FROM t";
        let ours = query_table(&lake.view(&view.name), sql).await.unwrap();
        let theirs = query_table(&clean_lake.view(&view.name), sql)
            .await
            .unwrap();
        let (ours, theirs) = (sorted_rows(&ours, 9), sorted_rows(&theirs, 9));
        assert!(!ours.is_empty(), "{} is empty", view.name);
        assert_eq!(ours, theirs, "{} differs from a clean run", view.name);
    }
    let history = lambdaflow_batch::views::records::History::new(&lake).unwrap();
    let runs = history.list(100).await.unwrap();
    assert_eq!(
        runs[0].status,
        lambdaflow_batch::views::records::RunStatus::Succeeded
    );
    assert!(
        runs.iter()
            .all(|r| r.status != lambdaflow_batch::views::records::RunStatus::Running),
        "a killed run is still recorded as running"
    );

    readable_from_python(&lake_dir, &totals, raw.version());
}

const READER: &str = r#"
import glob, json, os, sys
import duckdb, duckdb_extension_delta
from deltalake import DeltaTable

lake, views = sys.argv[1], json.loads(sys.argv[2])
con = duckdb.connect()
con.execute("SET enable_progress_bar = false")
ext = glob.glob(os.path.join(os.path.dirname(duckdb_extension_delta.__file__), "**", "*.duckdb_extension"), recursive=True)[0]
con.execute(f"LOAD '{ext}'")
out = {}
for view, column in views.items():
    path = os.path.join(lake, "views", view)
    table = DeltaTable(path)
    rows = table.to_pyarrow_table()
    commit = next(h for h in table.history() if "lambdaflow" in h)
    count, total = con.execute(f"SELECT count(*), sum({column}) FROM delta_scan('{path}')").fetchone()
    out[view] = {
        "deltalake_rows": rows.num_rows,
        "deltalake_sum": sum(v for v in rows.column(column).to_pylist() if v is not None),
        "duckdb_rows": count,
        "duckdb_sum": int(total),
        "raw_version": commit["lambdaflow"]["watermark"]["raw_version"],
        "has_sketches": all(isinstance(b, bytes) and len(b) > 0 for b in rows.column("buyers__hll").to_pylist()) if "buyers__hll" in rows.column_names else None,
    }
print(json.dumps(out))
"#;

fn readable_from_python(lake_dir: &Path, totals: &(u64, u64), raw_version: u64) {
    let views = serde_json::json!({"traffic_by_minute": "events", "sales_by_country": "orders"});
    let out = python()
        .args(["-c", READER])
        .arg(lake_dir)
        .arg(views.to_string())
        .output()
        .expect("running python: set LAMBDAFLOW_PYTHON or install python3");
    assert!(
        out.status.success(),
        "the Python readers failed (pip install deltalake duckdb==1.5.5 duckdb-extension-delta==1.5.5; .ci/run does): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "the Python readers printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    for (view, expected) in [
        ("traffic_by_minute", totals.0),
        ("sales_by_country", totals.1),
    ] {
        let v = &got[view];
        assert_eq!(v["deltalake_sum"], expected, "{view}: {v}");
        assert_eq!(v["duckdb_sum"], expected, "{view}: {v}");
        assert_eq!(v["deltalake_rows"], v["duckdb_rows"], "{view}: {v}");
        assert_eq!(v["raw_version"], raw_version, "{view}: {v}");
    }
    assert_eq!(got["sales_by_country"]["has_sketches"], true);
}
