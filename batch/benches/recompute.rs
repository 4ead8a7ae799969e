//! Batch recompute benchmark: a full recompute of the three demo views from a raw table of
//! generated shop events, next to DuckDB running the equivalent SQL over the same Parquet
//! files in the same run.
//!
//! `cargo bench -p lambdaflow-batch --bench recompute`. Environment:
//! - `LAMBDAFLOW_BENCH_EVENTS`: raw events (default 10,000,000), spread over 30 days;
//! - `LAMBDAFLOW_BENCH_DIR`: keep the lake there and reuse its raw table on the next run;
//! - `LAMBDAFLOW_PYTHON`: a Python with `duckdb` and `deltalake` (`.ci/run` makes one);
//! - `LAMBDAFLOW_BENCH_CLUSTER=1`: also on a Ballista cluster of one scheduler and two
//!   one-slot executors, each a process of this benchmark's binary (`lambdaflow cluster`'s code)
//!   on localhost, with each run's stages and tasks and a per-task time.
//!
//! Both sides read every raw file and write their results (lambdaflow: three Delta view
//! tables; DuckDB: three Parquet files); DuckDB's `approx_count_distinct` stands in for our
//! sketch, and its buckets are taken on the UTC time as a plain `TIMESTAMP` (on a
//! `TIMESTAMPTZ` DuckDB goes through its ICU calendar and is about three times slower, which
//! would flatter us). Each side runs three times; the median is reported.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lambdaflow_batch::archive::commit::OffsetTable;
use lambdaflow_batch::lake::{Lake, open_or_create};
use lambdaflow_batch::views::records::History;
use lambdaflow_batch::views::run::BatchRun;
use lambdaflow_common::config::Config;
use lambdaflow_common::sample::{Generator, Mix};
use lambdaflow_common::schema::{EVENT_DATE, raw_schema};
use lambdaflow_common::timestamp::{MICROS_PER_DAY, now_micros};
use lambdaflow_common::validate::{Coordinates, Validator};

mod results;

use results::{Better, record};

const PARTITIONS: i32 = 8;
const CHUNK: usize = 500_000;
const DAYS: i64 = 30;
const RUNS: usize = 3;

/// The demo views in DuckDB's SQL, each written to Parquet.
const DUCKDB: &str = r#"
import json, statistics, sys, time
import duckdb
from deltalake import DeltaTable

raw, out, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
files = DeltaTable(raw).file_uris()
src = "read_parquet({}, hive_partitioning = true)".format(json.dumps(files).replace('"', "'"))
queries = {
    "sales_by_country": f"""SELECT time_bucket(INTERVAL 1 hour, event_time::TIMESTAMP) AS bucket, country,
        count(*) AS orders, sum(amount) AS revenue, max(amount) AS max_order, min(amount) AS min_order,
        sum(amount) AS avg_order__sum, count(amount) AS avg_order__count,
        sum(amount) / count(amount) AS avg_order, approx_count_distinct(user_id) AS buyers
        FROM {src} WHERE type = 'purchase' GROUP BY ALL""",
    "traffic_by_minute": f"""SELECT time_bucket(INTERVAL 1 minute, event_time::TIMESTAMP) AS bucket, type,
        count(*) AS events, approx_count_distinct(user_id) AS visitors
        FROM {src} GROUP BY ALL""",
    "products_by_day": f"""SELECT time_bucket(INTERVAL 1 day, event_time::TIMESTAMP) AS bucket, product, country,
        count(*) AS orders, sum(quantity) AS units, sum(amount) AS revenue
        FROM {src} WHERE type = 'purchase' GROUP BY ALL""",
}
times = []
for _ in range(runs):
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    started = time.perf_counter()
    for name, sql in queries.items():
        con.execute(f"COPY ({sql}) TO '{out}/{name}.parquet' (FORMAT parquet)")
    times.append(time.perf_counter() - started)
    con.close()
print(json.dumps({"seconds": statistics.median(times), "threads": duckdb.connect().execute("SELECT current_setting('threads')").fetchone()[0]}))
"#;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(role) = args.iter().position(|a| a == CLUSTER_ROLE) {
        return cluster_process(&args[role + 1..]);
    }
    let n: usize = std::env::var("LAMBDAFLOW_BENCH_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000_000);
    let kept = std::env::var_os("LAMBDAFLOW_BENCH_DIR").map(std::path::PathBuf::from);
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = kept.clone().unwrap_or_else(|| temp.path().to_path_buf());
    let mut config = Config::shop();
    config.lake.uri = dir.join("lake").display().to_string();
    if let Some(parallelism) = std::env::var("LAMBDAFLOW_BENCH_PARALLELISM")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        config.batch.parallelism = parallelism;
    }
    println!("views recomputed at once: {}", config.batch.parallelism);
    let config = Arc::new(config);
    let lake = Lake::new(&config.lake).expect("lake");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");

    let raw_url = lake.raw(&config.source().name);
    let existing = runtime.block_on(async {
        let table = open_or_create(&raw_url, &raw_schema(config.source()), &[EVENT_DATE])
            .await
            .expect("raw table");
        table
            .snapshot()
            .expect("snapshot")
            .log_data()
            .iter()
            .map(|f| f.num_records().unwrap_or(0))
            .sum::<usize>()
    });
    if existing == 0 {
        let started = Instant::now();
        runtime.block_on(fill_raw(&config, n));
        println!(
            "wrote {n} raw events in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    } else {
        println!("reusing {existing} raw events in {}", dir.display());
    }
    let events = if existing == 0 { n } else { existing };

    let mut ours = Vec::new();
    for _ in 0..RUNS {
        let run = BatchRun::new(
            config.clone(),
            lake.clone(),
            History::new(&lake).expect("history"),
        )
        .with_full(true);
        let started = Instant::now();
        let record = runtime.block_on(run.run()).expect("batch run");
        ours.push(started.elapsed());
        assert_eq!(record.rows_read as usize, events * config.views.len());
    }
    ours.sort();
    let ours = ours[RUNS / 2];
    println!(
        "lambdaflow full recompute: {:.2} s (median of {RUNS})",
        ours.as_secs_f64()
    );

    let cluster = std::env::var("LAMBDAFLOW_BENCH_CLUSTER")
        .is_ok_and(|v| v == "1")
        .then(|| on_cluster(&runtime, &config, &lake, events));

    let out = dir.join("duckdb-out");
    std::fs::create_dir_all(&out).expect("duckdb output dir");
    let python = std::env::var("LAMBDAFLOW_PYTHON").unwrap_or_else(|_| "python3".into());
    let peer = Command::new(&python)
        .args(["-c", DUCKDB])
        .arg(raw_url.to_file_path().expect("local lake"))
        .arg(&out)
        .arg(RUNS.to_string())
        .output()
        .expect("running the DuckDB peer");
    assert!(
        peer.status.success(),
        "DuckDB peer failed (LAMBDAFLOW_PYTHON needs duckdb and deltalake): {}",
        String::from_utf8_lossy(&peer.stderr)
    );
    let stdout = String::from_utf8_lossy(&peer.stdout);
    let reply: serde_json::Value = stdout
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no result from the DuckDB peer: {stdout}"));
    let duck = Duration::from_secs_f64(reply["seconds"].as_f64().expect("seconds"));

    record(
        "recompute",
        &format!(
            "full recompute of the 3 demo views, {} M raw events",
            events / 1_000_000
        ),
        ours.as_secs_f64(),
        "s",
        Better::Lower,
        Some((
            &format!("DuckDB {} threads", reply["threads"]),
            duck.as_secs_f64(),
        )),
    );
    if let Some((t, _)) = &cluster {
        record(
            "recompute",
            &format!(
                "full recompute of the 3 demo views on Ballista (2 executors x 1 slot), {} M raw events",
                events / 1_000_000
            ),
            t.as_secs_f64(),
            "s",
            Better::Lower,
            Some((
                &format!("DuckDB {} threads", reply["threads"]),
                duck.as_secs_f64(),
            )),
        );
    }
    println!();
    println!(
        "| full recompute of the 3 demo views | seconds (median of {RUNS}) | M raw events/s | ratio to DuckDB |"
    );
    println!("| --- | --- | --- | --- |");
    let duck_name = format!("DuckDB {} threads (Parquet → Parquet)", reply["threads"]);
    let mut rows = vec![("lambdaflow (DataFusion → Delta)", ours)];
    if let Some((t, _)) = &cluster {
        rows.push(("lambdaflow on Ballista, 2 executors × 1 slot", *t));
    }
    rows.push((&duck_name, duck));
    for (name, t) in rows {
        println!(
            "| {name} | {:.2} | {:.2} | {:.2}x |",
            t.as_secs_f64(),
            events as f64 / t.as_secs_f64() / 1e6,
            t.as_secs_f64() / duck.as_secs_f64()
        );
    }
}

/// The argument that makes this binary a cluster process (`scheduler PORT` or `executor
/// SCHEDULER_PORT BIND_PORT`) instead of the benchmark.
const CLUSTER_ROLE: &str = "--cluster-process";

fn cluster_process(args: &[String]) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let port = |i: usize| -> u16 { args[i].parse().expect("a port") };
    let result = match args[0].as_str() {
        "scheduler" => runtime.block_on(lambdaflow_batch::cluster::scheduler::run(
            ([127, 0, 0, 1], port(1)).into(),
            None,
        )),
        _ => runtime.block_on(lambdaflow_batch::cluster::executor::run(
            lambdaflow_batch::cluster::executor::ExecutorOptions {
                scheduler: format!("127.0.0.1:{}", port(1)),
                slots: 1,
                bind: ([127, 0, 0, 1], port(2)).into(),
                advertise: None,
            },
        )),
    };
    result.expect("cluster process");
}

/// A free loopback port whose next port is free too (an executor takes both).
fn free_ports() -> u16 {
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// The same full recompute on a scheduler and two one-slot executors, each a child process;
/// the median time and, of that run, its tasks and the time per task.
fn on_cluster(
    runtime: &tokio::runtime::Runtime,
    config: &Arc<Config>,
    lake: &Lake,
    events: usize,
) -> (Duration, u64) {
    struct Killed(Vec<std::process::Child>);
    impl Drop for Killed {
        fn drop(&mut self) {
            for child in &mut self.0 {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
    let me = std::env::current_exe().expect("this binary");
    let scheduler = free_ports();
    let spawn = |args: Vec<String>| {
        Command::new(&me)
            .arg(CLUSTER_ROLE)
            .args(args)
            .env("LAMBDAFLOW_LOG", "warn")
            .spawn()
            .expect("starting a cluster process")
    };
    let mut children = Killed(vec![spawn(vec!["scheduler".into(), scheduler.to_string()])]);
    std::thread::sleep(Duration::from_secs(2));
    for _ in 0..2 {
        let bind = free_ports();
        children.0.push(spawn(vec![
            "executor".into(),
            scheduler.to_string(),
            bind.to_string(),
        ]));
    }
    std::thread::sleep(Duration::from_secs(5));
    let mut config = (**config).clone();
    config.batch.engine = format!("ballista://127.0.0.1:{scheduler}");
    let config = Arc::new(config);
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        let run = BatchRun::new(
            config.clone(),
            lake.clone(),
            History::new(lake).expect("history"),
        )
        .with_full(true);
        let started = Instant::now();
        let record = runtime
            .block_on(run.run())
            .expect("batch run on the cluster");
        let took = started.elapsed();
        assert_eq!(record.rows_read as usize, events * config.views.len());
        let job = record
            .cluster
            .expect("a cluster run counts its stages and tasks");
        println!(
            "on the cluster: {:.2} s, {} stages, {} tasks, {:.3} s per task on 2 slots",
            took.as_secs_f64(),
            job.stages,
            job.tasks,
            took.as_secs_f64() * 2.0 / job.tasks as f64
        );
        runs.push((took, job.tasks));
    }
    runs.sort();
    runs[RUNS / 2]
}

/// Writes `n` valid events spread over [`DAYS`] days (5% hours to days late) in chunks of
/// [`CHUNK`], as the archiver would.
async fn fill_raw(config: &Config, n: usize) {
    let lake = Lake::new(&config.lake).expect("lake");
    let schema = raw_schema(config.source());
    let table = open_or_create(&lake.raw(&config.source().name), &schema, &[EVENT_DATE])
        .await
        .expect("raw table");
    let partitions: Vec<i32> = (0..PARTITIONS).collect();
    let mut raw = OffsetTable::load(
        table,
        (schema, EVENT_DATE),
        &config.source().topic,
        &partitions,
    )
    .await
    .expect("offsets");
    let validator = Validator::new(config.source());
    let mut generator = Generator::shop(
        7,
        200_000,
        Mix {
            duplicates: 0.0,
            late: 0.05,
            invalid: 0.0,
        },
    );
    let end = now_micros();
    let start = end - DAYS * MICROS_PER_DAY;
    let step = (end - start) / n as i64;
    let mut offsets = vec![0i64; PARTITIONS as usize];
    let mut written = 0;
    while written < n {
        let len = CHUNK.min(n - written);
        let mut builder = validator.batch_builder(&config.source().topic, end);
        let mut upto = std::collections::BTreeMap::new();
        for i in written..written + len {
            let sample = generator.next_event(start + i as i64 * step);
            let partition = (i % PARTITIONS as usize) as i32;
            let offset = &mut offsets[partition as usize];
            builder
                .push(
                    Some(&sample.payload),
                    Coordinates {
                        partition,
                        offset: *offset,
                    },
                )
                .expect("generated events are valid");
            upto.insert(partition, *offset);
            *offset += 1;
        }
        raw.append(builder.finish().events, &upto)
            .await
            .expect("append");
        written += len;
    }
}
