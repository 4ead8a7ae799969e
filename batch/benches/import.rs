//! Import benchmark: `lambdaflow import` of a file of generated shop events, NDJSON and
//! Parquet, into an empty lake, next to DuckDB reading the same file into a Parquet copy in
//! the same run.
//!
//! `cargo bench -p lambdaflow-batch --bench import`. Environment:
//! - `LAMBDAFLOW_BENCH_EVENTS`: records per file (default 10,000,000);
//! - `LAMBDAFLOW_BENCH_DIR`: where the files and lakes go (default: a temporary directory);
//! - `LAMBDAFLOW_PYTHON`: a Python with `duckdb` (`.ci/run` makes one).
//!
//! The NDJSON file is written here (1% duplicates, 5% late, 1% invalid events); DuckDB's copy
//! of it (`read_json`, invalid lines skipped) is the Parquet file both sides then read. Ours
//! does more than the peer's copy: it hashes the file, validates every record, deduplicates,
//! quarantines the invalid ones and commits to two Delta tables; the peer only converts.

use std::io::Write;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lambdaflow_batch::import::Importer;
use lambdaflow_batch::import::files::resolve;
use lambdaflow_common::config::Config;
use lambdaflow_common::sample::{Generator, Mix};
use lambdaflow_common::timestamp::now_micros;

#[allow(dead_code, reason = "this benchmark records rates only")]
mod results;

use results::{Better, record};

/// DuckDB copies `argv[1]` (NDJSON or Parquet) to the Parquet file `argv[2]`.
const DUCKDB: &str = r#"
import json, sys, time
import duckdb

source, target = sys.argv[1], sys.argv[2]
con = duckdb.connect()
con.execute("SET enable_progress_bar = false")
read = (f"read_json('{source}', format = 'newline_delimited', ignore_errors = true)"
        if source.endswith(".ndjson") else f"read_parquet('{source}')")
started = time.perf_counter()
con.execute(f"COPY (SELECT * FROM {read}) TO '{target}' (FORMAT parquet)")
seconds = time.perf_counter() - started
rows = con.execute(f"SELECT count(*) FROM read_parquet('{target}')").fetchone()[0]
threads = con.execute("SELECT current_setting('threads')").fetchone()[0]
print(json.dumps({"seconds": seconds, "rows": rows, "threads": threads}))
"#;

fn duckdb(source: &std::path::Path, target: &std::path::Path) -> (Duration, u64, i64) {
    let python = std::env::var("LAMBDAFLOW_PYTHON").unwrap_or_else(|_| "python3".into());
    let peer = Command::new(&python)
        .args(["-c", DUCKDB])
        .arg(source)
        .arg(target)
        .output()
        .expect("running the DuckDB peer");
    assert!(
        peer.status.success(),
        "DuckDB peer failed (LAMBDAFLOW_PYTHON needs duckdb): {}",
        String::from_utf8_lossy(&peer.stderr)
    );
    let stdout = String::from_utf8_lossy(&peer.stdout);
    let reply: serde_json::Value = stdout
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no result from the DuckDB peer: {stdout}"));
    (
        Duration::from_secs_f64(reply["seconds"].as_f64().expect("seconds")),
        reply["rows"].as_u64().expect("rows"),
        reply["threads"].as_i64().expect("threads"),
    )
}

fn main() {
    let n: usize = std::env::var("LAMBDAFLOW_BENCH_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000_000);
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = std::env::var_os("LAMBDAFLOW_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&dir).expect("bench dir");
    let ndjson = dir.join("events.ndjson");
    let parquet = dir.join("events.parquet");

    let started = Instant::now();
    let mut generator = Generator::shop(
        42,
        3_000,
        Mix {
            duplicates: 0.01,
            late: 0.05,
            invalid: 0.01,
        },
    );
    let now = now_micros();
    let mut out = std::io::BufWriter::new(std::fs::File::create(&ndjson).expect("ndjson file"));
    for _ in 0..n {
        out.write_all(&generator.next_event(now).payload)
            .and_then(|()| out.write_all(b"\n"))
            .expect("writing the NDJSON file");
    }
    out.flush().expect("writing the NDJSON file");
    drop(out);
    println!(
        "wrote {n} NDJSON records in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let (duck_ndjson, parquet_rows, threads) = duckdb(&ndjson, &parquet);
    let (duck_parquet, _, _) = duckdb(&parquet, &dir.join("copy.parquet"));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let ours = |file: &std::path::Path, lake: &str| {
        let mut config = Config::shop();
        config.lake.uri = dir.join(lake).display().to_string();
        let config = Arc::new(config);
        runtime.block_on(async {
            let files = resolve(&[file.display().to_string()])
                .await
                .expect("the file");
            let started = Instant::now();
            let importer = Importer::new(&config, config.source())
                .await
                .expect("importer");
            let report = importer.import(&files, None).await.expect("import");
            (started.elapsed(), report)
        })
    };
    let (ours_ndjson, report) = ours(&ndjson, "lake-ndjson");
    assert_eq!(report.records as usize, n);
    println!("{report:?}");
    let (ours_parquet, report) = ours(&parquet, "lake-parquet");
    assert_eq!(report.records, parquet_rows);

    let peer = format!("DuckDB {threads} threads, a Parquet copy");
    println!();
    println!("| import of {n} records | seconds | M records/s | ratio to DuckDB |");
    println!("| --- | --- | --- | --- |");
    for (format, ours, duck, rows) in [
        ("NDJSON", ours_ndjson, duck_ndjson, n as u64),
        ("Parquet", ours_parquet, duck_parquet, parquet_rows),
    ] {
        record(
            "import",
            &format!("import of a {format} file, {} M records", rows / 1_000_000),
            rows as f64 / ours.as_secs_f64(),
            "events/s",
            Better::Higher,
            Some((&peer, rows as f64 / duck.as_secs_f64())),
        );
        for (name, t) in [("lambdaflow import", ours), (peer.as_str(), duck)] {
            println!(
                "| {format}: {name} | {:.2} | {:.2} | {:.2}x |",
                t.as_secs_f64(),
                rows as f64 / t.as_secs_f64() / 1e6,
                t.as_secs_f64() / duck.as_secs_f64()
            );
        }
    }
}
