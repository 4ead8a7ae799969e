//! The fault suite: the real processes against a real broker (tansu), with faults injected
//! where a crash or an error hurts most, and every id accounted for, Jepsen-style: each
//! unique valid event produced must be in the raw table exactly once (lost = produced but
//! absent, duplicated = present more than once), the quarantine must hold every refused
//! message, and where the API runs, every query of every view must equal the truth. The
//! archiver scenarios run with both of the demo's sources on topics of different partition
//! counts, each accounted for on its own.
//!
//! Faults come from the object-store failpoints of `LAMBDAFLOW_FAULTS`
//! (`lambdaflow_batch::faults`): a crash (abort, the in-process SIGKILL) before a commit's
//! log entry is written — after its Parquet files are — or right after it; a put that fails
//! without writing or fails after it landed (the archiver must re-check the outcome, never
//! guess); slow puts. And process-level: `lambdaflow run` crashing in the middle of a batch
//! run, the broker killed and restarted, and two `serve` replicas with one leaving and
//! rejoining.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::AsArray;
use arrow::compute::cast;
use arrow::datatypes::DataType;
use lambdaflow_common::config::Config;
use lambdaflow_common::sample::{Generator, Mix, Shape};
use lambdaflow_common::source::SourceConfig;
use lambdaflow_kafka::producer::Producer;
use lambdaflow_tests::e2e::{
    Api, Truth, batch, check, messages, produce_to, shop, shop_config, test_config, wait_for,
};
use lambdaflow_tests::{Process, Tansu, free_port, query_table, scratch_dir};

const LAMBDAFLOW: &str = env!("CARGO_BIN_EXE_lambdaflow-e2e");
const PARTITIONS: u32 = 4;
/// The page hits' topic has fewer partitions than the shop's: the sources share nothing.
const PAGE_PARTITIONS: u32 = 3;

/// Every id produced, classified.
#[derive(Debug, PartialEq, Eq)]
struct Tally {
    lost: usize,
    duplicated: usize,
    unexpected: usize,
}

/// The (id, event date) of every row of the shop's raw table.
async fn raw_ids(lake: &Path) -> Vec<(String, String)> {
    raw_ids_of(lake, Config::shop().source()).await
}

/// The (id, event date) of every row of `source`'s raw table.
async fn raw_ids_of(lake: &Path, source: &SourceConfig) -> Vec<(String, String)> {
    let url = url::Url::from_directory_path(lake.join("raw").join(&source.name)).unwrap();
    let sql = format!(
        "SELECT {}, CAST(event_date AS VARCHAR) FROM t",
        source.id_field
    );
    let Some(batches) = query_table(&url, &sql).await else {
        return Vec::new();
    };
    let mut rows = Vec::new();
    for b in &batches {
        let ids = cast(b.column(0), &DataType::Utf8).unwrap();
        let dates = cast(b.column(1), &DataType::Utf8).unwrap();
        let (ids, dates) = (ids.as_string::<i32>(), dates.as_string::<i32>());
        rows.extend(
            (0..b.num_rows()).map(|i| (ids.value(i).to_owned(), dates.value(i).to_owned())),
        );
    }
    rows
}

/// The rows of the shop's quarantine table.
async fn quarantined(lake: &Path) -> usize {
    quarantined_of(lake, "events").await
}

/// The rows of `source`'s quarantine table.
async fn quarantined_of(lake: &Path, source: &str) -> usize {
    let url = url::Url::from_directory_path(lake.join("quarantine").join(source)).unwrap();
    query_table(&url, "SELECT count(*) FROM t")
        .await
        .map_or(0, |b| {
            b[0].column(0)
                .as_primitive::<arrow::datatypes::Int64Type>()
                .value(0) as usize
        })
}

fn tally(truth: &Truth, rows: &[(String, String)]) -> Tally {
    let mut counts: BTreeMap<&(String, String), usize> = BTreeMap::new();
    for row in rows {
        *counts.entry(row).or_default() += 1;
    }
    Tally {
        lost: truth
            .unique
            .iter()
            .filter(|id| !counts.contains_key(id))
            .count(),
        duplicated: counts.values().filter(|n| **n > 1).count(),
        unexpected: counts
            .keys()
            .filter(|id| !truth.unique.contains(*id))
            .count(),
    }
}

/// The test config against `tansu`, the shop on `topic` and the page hits on `pages-<topic>`,
/// its lake under `dir`, its API on `port`, with
/// chunks of at most 100 messages so that a wave spans several commits, and a compaction of
/// every date partition with two small files, so that compactions interleave with the commits
/// of every scenario (the raw table's log: version 0 creates it, 1 and 2 are chunks, and
/// version 3, the 4th put, compacts today's two files).
fn config_text(tansu: &Tansu, topic: &str, dir: &Path, port: u16) -> String {
    let lake = dir.join("lake");
    test_config(&tansu.bootstrap, &lake.display().to_string(), port)
        .replace("topic = \"events\"", &format!("topic = \"{topic}\""))
        .replace(
            "topic = \"pageviews\"",
            &format!("topic = \"pages-{topic}\""),
        )
        .replace(
            "commit_max_events = 100000",
            "commit_max_events = 100\ncompact_min_files = 2",
        )
}

/// A scratch directory for one scenario and its `logs` folder.
fn scratch() -> (tempfile::TempDir, PathBuf) {
    let dir = scratch_dir();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    (dir, logs)
}

/// Writes `text` as the scenario's config file; returns its path and the parsed config.
fn write_config(dir: &Path, text: &str) -> (PathBuf, Arc<Config>) {
    let file = dir.join("lambdaflow.toml");
    std::fs::write(&file, text).unwrap();
    (file, shop_config(text))
}

/// Prints the scenario's accounting (the closing notes quote it) and requires every id of
/// `truth` to be in the raw table exactly once.
fn account(name: &str, truth: &Truth, counted: Tally) {
    println!(
        "{name}: {} messages, {} unique valid ids, {} refused; lost {}, duplicated {}, unexpected {}",
        truth.messages,
        truth.unique.len(),
        truth.rejects(),
        counted.lost,
        counted.duplicated,
        counted.unexpected
    );
    assert_eq!(
        counted,
        Tally {
            lost: 0,
            duplicated: 0,
            unexpected: 0
        },
        "{name}"
    );
}

fn lambdaflow(args: &[&str], config: &Path) -> Command {
    let mut command = Command::new(LAMBDAFLOW);
    command.args(args).arg("--config").arg(config);
    command
}

fn log_of(logs: &Path, name: &str) -> String {
    std::fs::read_to_string(logs.join(format!("{name}.log"))).unwrap_or_default()
}

/// Produces 300 messages to each source's topic, adding them to its truth.
async fn wave(producer: &Producer, sources: &mut [(Config, Generator, Truth)]) {
    for (config, generator, truth) in sources.iter_mut() {
        let topic = &config.source().topic;
        let produced = produce_to(producer, topic, &messages(generator, 300)).await;
        truth.add(config, &produced);
    }
}

/// One archiver scenario, over both of the demo's sources (the shop on a topic of
/// [`PARTITIONS`], the page hits on one of [`PAGE_PARTITIONS`]): the archiver runs with
/// `fault` while a wave is produced to each; if the fault crashes it, it must die by abort and
/// is restarted without the fault; a second wave follows; every source's tables must then hold
/// every id once. Returns, per source, what was produced and how the raw table holds it.
async fn archiver_scenario(
    tansu: &Tansu,
    root: &Path,
    logs: &Path,
    name: &str,
    fault: &str,
    crashes: bool,
) -> Vec<(String, Truth, Tally)> {
    let topic = format!("events-{name}");
    tansu.create_topic(&topic, PARTITIONS);
    tansu.create_topic(&format!("pages-{topic}"), PAGE_PARTITIONS);
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let text = config_text(tansu, &topic, &dir, free_port());
    let (config_file, _) = write_config(&dir, &text);
    let deployment = Config::from_toml(&text, "test", std::iter::empty()).unwrap();
    let seed = name.len() as u64 * 7919;
    let mut sources: Vec<(Config, Generator, Truth)> =
        [(Shape::Shop, "events"), (Shape::Pages, "pageviews")]
            .into_iter()
            .map(|(shape, source)| {
                let config = deployment.scoped(deployment.source_named(source).unwrap());
                let mix = Mix {
                    duplicates: 0.1,
                    late: 0.2,
                    invalid: 0.05,
                };
                (
                    config,
                    Generator::new(shape, seed, 150, mix),
                    Truth::default(),
                )
            })
            .collect();
    let producer = tansu.producer();

    let faulty = format!("{name}-faulty");
    let mut archiver = Process::start(
        &faulty,
        lambdaflow(&["archive"], &config_file).env("LAMBDAFLOW_FAULTS", fault),
        logs,
    );
    wave(&producer, &mut sources).await;
    if crashes {
        let status = archiver
            .wait_exit(Duration::from_secs(60))
            .unwrap_or_else(|| panic!("{name}: the failpoint never crashed the archiver"));
        assert_eq!(
            status.signal(),
            Some(6),
            "{name}: died by abort: {status:?}"
        );
        assert!(
            log_of(logs, &faulty).contains("failpoint: crashing"),
            "{name}"
        );
        archiver = Process::start(name, &mut lambdaflow(&["archive"], &config_file), logs);
    }
    wave(&producer, &mut sources).await;

    let lake = dir.join("lake");
    let started = Instant::now();
    for (config, _, truth) in &sources {
        let source = config.source();
        loop {
            let rows = raw_ids_of(&lake, source).await.len();
            let rejects = quarantined_of(&lake, &source.name).await;
            if rows >= truth.unique.len() && rejects >= truth.rejects() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "{name}: {}'s tables hold {rows}/{} raw and {rejects}/{} quarantined rows",
                source.name,
                truth.unique.len(),
                truth.rejects()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        archiver.terminate(Duration::from_secs(30)),
        "{name}: clean exit on SIGTERM"
    );
    if !crashes {
        let log = log_of(logs, &faulty);
        assert!(log.contains("failpoints installed"), "{name}");
        if fault.starts_with("fail") {
            assert!(
                log.contains("failpoint: failing the put"),
                "{name}: the fault fired"
            );
        }
        if name.contains("compaction") {
            assert!(
                log.contains("compaction failed; the files stay as they are"),
                "{name}: the failed put was a compaction's"
            );
        }
        if fault.starts_with("fail-after") {
            assert!(
                log.contains("the failed commit had landed"),
                "{name}: the archiver learned from the log that its commit landed"
            );
        }
    }
    let mut outcome = Vec::new();
    for (config, _, truth) in sources {
        let source = config.source();
        assert_eq!(
            quarantined_of(&lake, &source.name).await,
            truth.rejects(),
            "{name}: {}'s quarantine",
            source.name
        );
        let counted = tally(&truth, &raw_ids_of(&lake, source).await);
        outcome.push((source.name.clone(), truth, counted));
    }
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_archiver_loses_and_duplicates_nothing_under_store_faults() {
    let (dir, logs) = scratch();
    let tansu = Tansu::start(&logs);
    // Commit 1 of each table creates it; commit 2 is the first with rows.
    let scenarios = [
        (
            "crash-before-raw-commit",
            "crash-before:raw/events/_delta_log/#2",
            true,
        ),
        (
            "crash-after-raw-commit",
            "crash-after:raw/events/_delta_log/#3",
            true,
        ),
        (
            "crash-before-quarantine-commit",
            "crash-before:quarantine/events/_delta_log/#2",
            true,
        ),
        ("failed-put", "fail-before:raw/events/_delta_log/#2", false),
        (
            "put-failed-after-landing",
            "fail-after:raw/events/_delta_log/#2",
            false,
        ),
        ("slow-store", "slow:.parquet#150", false),
        (
            "crash-before-compaction-commit",
            "crash-before:raw/events/_delta_log/#4",
            true,
        ),
        (
            "failed-compaction-commit",
            "fail-before:raw/events/_delta_log/#4",
            false,
        ),
    ];
    for (name, fault, crashes) in scenarios {
        let outcome = archiver_scenario(&tansu, dir.path(), &logs, name, fault, crashes).await;
        for (source, truth, counted) in outcome {
            account(&format!("{name} ({fault}), {source}"), &truth, counted);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_crashing_in_a_batch_run_recovers_with_exact_answers() {
    let (dir, logs) = scratch();
    let tansu = Tansu::start(&logs);
    tansu.create_topic("events", PARTITIONS);
    let port = free_port();
    let (config_file, config) =
        write_config(dir.path(), &config_text(&tansu, "events", dir.path(), port));
    let api = Api::new(format!("http://127.0.0.1:{port}"));
    let producer = tansu.producer();
    let mut generator = shop(41, 150);
    let mut truth = Truth::default();

    // The third view's first rows: the first two views are published, the third not, when
    // the process dies, so the restarted process starts from views at different versions.
    let mut run = Process::start(
        "run-faulty",
        lambdaflow(&["run"], &config_file).env(
            "LAMBDAFLOW_FAULTS",
            "crash-before:views/products_by_day/_delta_log/#2",
        ),
        &logs,
    );
    wait_for("readiness", Duration::from_secs(60), || async {
        api.get("/readyz").await.0 == 200
    })
    .await;
    let mut produced = produce_to(&producer, "events", &messages(&mut generator, 300)).await;
    truth.add(&config, &produced);
    check(&api, &config, &produced, "before the batch").await;
    wait_for("the archiver", Duration::from_secs(60), || async {
        raw_ids(&dir.path().join("lake")).await.len() >= truth.unique.len()
    })
    .await;
    let (status, reply) = api.post("/v1/batch/runs", "").await;
    assert_eq!(status, 202, "{reply}");
    let killed = reply["id"].as_str().unwrap().to_owned();
    let exit = run
        .wait_exit(Duration::from_secs(60))
        .expect("the failpoint crashed run in the batch run");
    assert_eq!(exit.signal(), Some(6), "{exit:?}");

    produced.extend(produce_to(&producer, "events", &messages(&mut generator, 200)).await);
    truth.add(&config, &produced[produced.len() - 200..]);
    let _run = Process::start("run", &mut lambdaflow(&["run"], &config_file), &logs);
    wait_for(
        "readiness after the crash",
        Duration::from_secs(60),
        || async { api.get("/readyz").await.0 == 200 },
    )
    .await;
    let (_, sales) = api.get("/v1/views/sales_by_country").await;
    let (_, products) = api.get("/v1/views/products_by_day").await;
    assert!(
        sales["batch_version"].is_u64(),
        "the first views were published: {sales}"
    );
    assert!(
        products["batch_version"].is_null(),
        "the third was not: {products}"
    );
    check(
        &api,
        &config,
        &produced,
        "views at different versions after the crash",
    )
    .await;

    batch(&api, &config, "the batch after the crash").await;
    check(&api, &config, &produced, "after the batch").await;
    let (_, record) = api.get(&format!("/v1/batch/runs/{killed}")).await;
    assert_eq!(
        record["status"], "failed",
        "the crashed run is recorded as failed: {record}"
    );
    wait_for("the archiver", Duration::from_secs(60), || async {
        raw_ids(&dir.path().join("lake")).await.len() >= truth.unique.len()
    })
    .await;
    let counted = tally(&truth, &raw_ids(&dir.path().join("lake")).await);
    account("run crashing in a batch run", &truth, counted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_replicas_answer_alike_while_one_leaves_and_rejoins() {
    let (dir, logs) = scratch();
    let tansu = Tansu::start(&logs);
    tansu.create_topic("events", PARTITIONS);
    let (port_a, port_b) = (free_port(), free_port());
    let (config_file, config) = write_config(
        dir.path(),
        &config_text(&tansu, "events", dir.path(), port_a),
    );
    let replica = |name: &str, port: u16| {
        Process::start(
            name,
            lambdaflow(&["serve"], &config_file)
                .env("LAMBDAFLOW_SERVING__LISTEN", format!("127.0.0.1:{port}")),
            &logs,
        )
    };
    let (a, b) = (
        Api::new(format!("http://127.0.0.1:{port_a}")),
        Api::new(format!("http://127.0.0.1:{port_b}")),
    );
    let _archiver = Process::start(
        "archive",
        &mut lambdaflow(&["archive"], &config_file),
        &logs,
    );
    let _replica_a = replica("serve-a", port_a);
    let replica_b = replica("serve-b", port_b);
    for api in [&a, &b] {
        wait_for("readiness", Duration::from_secs(60), || async {
            api.get("/readyz").await.0 == 200
        })
        .await;
    }
    let producer = tansu.producer();
    let mut generator = shop(53, 150);
    let mut produced = produce_to(&producer, "events", &messages(&mut generator, 300)).await;
    check(&a, &config, &produced, "replica a").await;
    check(&b, &config, &produced, "replica b").await;

    // A batch run through one replica is swapped in by both.
    let mut truth = Truth::default();
    truth.add(&config, &produced);
    wait_for("the archiver", Duration::from_secs(60), || async {
        raw_ids(&dir.path().join("lake")).await.len() >= truth.unique.len()
    })
    .await;
    batch(&a, &config, "batch through replica a").await;
    batch_seen(&b, &a, &config).await;
    check(&b, &config, &produced, "replica b after a's batch").await;

    replica_b.kill9();
    produced.extend(produce_to(&producer, "events", &messages(&mut generator, 200)).await);
    check(&a, &config, &produced, "replica a while b is gone").await;
    let _replica_b = replica("serve-b-again", port_b);
    wait_for("b's readiness", Duration::from_secs(60), || async {
        b.get("/readyz").await.0 == 200
    })
    .await;
    check(&b, &config, &produced, "replica b rejoined").await;
    check(&a, &config, &produced, "replica a").await;
}

/// Waits until `replica` serves the batch versions `origin` serves.
async fn batch_seen(replica: &Api, origin: &Api, config: &Config) {
    for view in &config.views {
        let path = format!("/v1/views/{}", view.name);
        let (_, want) = origin.get(&path).await;
        wait_for(
            &format!("{} swapped in on the replica", view.name),
            Duration::from_secs(30),
            || async { replica.get(&path).await.1["batch_version"] == want["batch_version"] },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_restarting_loses_and_duplicates_nothing() {
    let (dir, logs) = scratch();
    // A durable engine: what the broker acknowledged survives its restart.
    let (broker_port, storage) = (free_port(), "sqlite://tansu.db");
    let tansu = Tansu::start_on(&logs, broker_port, storage, dir.path());
    tansu.create_topic("events", PARTITIONS);
    let port = free_port();
    let (config_file, config) =
        write_config(dir.path(), &config_text(&tansu, "events", dir.path(), port));
    let api = Api::new(format!("http://127.0.0.1:{port}"));
    let mut generator = shop(67, 150);
    let mut truth = Truth::default();

    let _run = Process::start("run", &mut lambdaflow(&["run"], &config_file), &logs);
    wait_for("readiness", Duration::from_secs(60), || async {
        api.get("/readyz").await.0 == 200
    })
    .await;
    let mut produced =
        produce_to(&tansu.producer(), "events", &messages(&mut generator, 300)).await;
    truth.add(&config, &produced);
    check(&api, &config, &produced, "before the broker restart").await;

    tansu.kill9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let tansu = Tansu::start_on(&logs, broker_port, storage, dir.path());
    let wave = produce_to(&tansu.producer(), "events", &messages(&mut generator, 300)).await;
    truth.add(&config, &wave);
    produced.extend(wave);
    check(&api, &config, &produced, "after the broker restart").await;
    batch(&api, &config, "a batch after the broker restart").await;
    check(&api, &config, &produced, "after the batch").await;

    let lake = dir.path().join("lake");
    wait_for("the archiver", Duration::from_secs(60), || async {
        raw_ids(&lake).await.len() >= truth.unique.len()
            && quarantined(&lake).await >= truth.rejects()
    })
    .await;
    assert_eq!(quarantined(&lake).await, truth.rejects());
    account(
        "broker restart",
        &truth,
        tally(&truth, &raw_ids(&lake).await),
    );
}
