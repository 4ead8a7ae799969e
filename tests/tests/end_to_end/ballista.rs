//! The batch layer on an Apache DataFusion Ballista cluster started as users start it: a
//! `lambdaflow cluster scheduler` and two `lambdaflow cluster executor --slots 1` processes on
//! localhost. A run on the cluster must publish the same view tables, cell for cell and sketch
//! for sketch, as a local run over a copy of the same raw table, full and incremental; a
//! scheduler that is down fails the run at once, naming its address, with no lock left behind;
//! an executor killed mid-run either has its tasks run elsewhere or fails the run cleanly.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use lambdaflow_batch::lake::Lake;
use lambdaflow_batch::views::records::{History, Mode, RunRecord, RunStatus};
use lambdaflow_common::config::{Config, DEMO_CONFIG};
use lambdaflow_common::sample::{Generator, Mix};
use lambdaflow_common::timestamp::now_micros;
use lambdaflow_tests::cluster::BallistaCluster;
use lambdaflow_tests::{
    Process, RawWriter, copy_dir, free_port, query_table, scratch_dir, sorted_rows,
};

const PARTITIONS: i32 = 4;
const BINARY: &str = env!("CARGO_BIN_EXE_lambdaflow-e2e");

fn config_for(lake: &Path) -> Config {
    let mut config = Config::shop();
    config.lake.uri = lake.display().to_string();
    config
}

fn batch_run(config_file: &Path, lake: &Path, engine: &str) -> Command {
    let mut command = Command::new(BINARY);
    command
        .args(["batch", "run", "--config"])
        .arg(config_file)
        .env("LAMBDAFLOW_LAKE__URI", lake)
        .env("LAMBDAFLOW_BATCH__ENGINE", engine);
    command
}

/// Runs `batch run` to completion on `engine`; panics unless it exits 0.
fn batch_run_ok(config_file: &Path, lake: &Path, engine: &str, logs: &Path, name: &str) {
    let status = batch_run(config_file, lake, engine)
        .stdout(std::fs::File::create(logs.join(format!("{name}.out"))).unwrap())
        .stderr(std::fs::File::create(logs.join(format!("{name}.log"))).unwrap())
        .status()
        .unwrap();
    assert!(status.success(), "{name} failed; see {}", logs.display());
}

/// Every row of `batches` as text, sorted, floats to 12 significant digits: the cluster's
/// tasks meet the files in another order than a local run.
fn exact(batches: &[RecordBatch]) -> Vec<String> {
    sorted_rows(batches, 12)
}

async fn assert_same_views(config: &Config, ours: &Lake, theirs: &Lake, step: &str) {
    for view in &config.views {
        let sql = "SELECT * FROM t";
        let cluster = exact(&query_table(&ours.view(&view.name), sql).await.unwrap());
        let local = exact(&query_table(&theirs.view(&view.name), sql).await.unwrap());
        assert!(!local.is_empty(), "{} is empty", view.name);
        assert_eq!(
            cluster, local,
            "{step}: {} differs from a local run",
            view.name
        );
    }
}

async fn last_run(lake: &Lake) -> RunRecord {
    History::new(lake).unwrap().list(1).await.unwrap().remove(0)
}

fn lock_files(lake: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(lake.join("_lambdaflow"))
        .map(|dir| {
            dir.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with("batch.lock")
                })
                .collect()
        })
        .unwrap_or_default()
}

fn payloads(generator: &mut Generator, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|_| generator.next_event(now_micros()).payload)
        .collect()
}

/// Two lakes over one raw table: the cluster's, which the test appends to, and a local one
/// that gets a copy of its raw table before each comparison.
struct Twins {
    config_file: PathBuf,
    logs: PathBuf,
    cluster_dir: PathBuf,
    local_dir: PathBuf,
    config: Config,
    lake: Lake,
    local_lake: Lake,
}

impl Twins {
    fn new(dir: &Path) -> Self {
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let config_file = dir.join("lambdaflow.toml");
        std::fs::write(&config_file, DEMO_CONFIG).unwrap();
        let (cluster_dir, local_dir) = (dir.join("cluster"), dir.join("local"));
        let config = config_for(&cluster_dir);
        let lake = Lake::new(&config.lake).unwrap();
        let local_lake = Lake::new(&config_for(&local_dir).lake).unwrap();
        Self {
            config_file,
            logs,
            cluster_dir,
            local_dir,
            config,
            lake,
            local_lake,
        }
    }

    /// Copies the cluster lake's raw table over the local lake's.
    fn copy_raw(&self) {
        copy_dir(&self.cluster_dir.join("raw"), &self.local_dir.join("raw"));
    }

    /// `batch run` on the cluster lake with `engine`, to completion.
    fn run_cluster_lake(&self, engine: &str, name: &str) {
        batch_run_ok(
            &self.config_file,
            &self.cluster_dir,
            engine,
            &self.logs,
            name,
        );
    }

    /// `batch run` on the local lake, locally, to completion.
    fn run_local_lake(&self, name: &str) {
        batch_run_ok(
            &self.config_file,
            &self.local_dir,
            "local",
            &self.logs,
            name,
        );
    }

    /// Copies the raw table, runs the cluster lake on `engine` and the local one locally, and
    /// compares every view.
    async fn run_both(&self, engine: &str, step: &str) {
        self.copy_raw();
        self.run_cluster_lake(engine, &format!("cluster-{step}"));
        self.run_local_lake(&format!("local-{step}"));
        self.assert_same_views(step).await;
    }

    async fn assert_same_views(&self, step: &str) {
        assert_same_views(&self.config, &self.lake, &self.local_lake, step).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_on_the_cluster_equal_a_local_run_full_and_incremental() {
    let dir = scratch_dir();
    let twins = Twins::new(dir.path());
    let cluster = BallistaCluster::start(BINARY, &twins.logs).await;
    let mut generator = Generator::shop(
        7,
        3_000,
        Mix {
            duplicates: 0.0,
            late: 0.3,
            invalid: 0.0,
        },
    );
    let mut raw = RawWriter::open(&twins.config, PARTITIONS).await;
    raw.append(&payloads(&mut generator, 30_000)).await;
    twins.run_both(&cluster.engine, "full").await;
    let record = last_run(&twins.lake).await;
    assert_eq!(record.status, RunStatus::Succeeded);
    assert_eq!(record.engine, cluster.engine);
    let job = record
        .cluster
        .expect("a cluster run counts its stages and tasks");
    assert!(job.stages >= 2 && job.tasks >= job.stages, "{job:?}");
    assert!(record.views.iter().all(|v| v.mode == Mode::Full));
    assert_eq!(last_run(&twins.local_lake).await.engine, "local");

    // Late events land in old dates too: the incremental run recomputes a subset of dates.
    raw.append(&payloads(&mut generator, 10_000)).await;
    twins.run_both(&cluster.engine, "incremental").await;
    let record = last_run(&twins.lake).await;
    let shop: Vec<_> = record
        .views
        .iter()
        .filter(|v| twins.config.views.iter().any(|d| d.name == v.name))
        .collect();
    assert_eq!(shop.len(), twins.config.views.len());
    assert!(
        shop.iter()
            .all(|v| v.mode == Mode::Incremental && v.cluster.is_some_and(|j| j.tasks > 0)),
        "{shop:?}"
    );
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_that_is_down_fails_the_run_at_once_naming_it() {
    let dir = scratch_dir();
    let config_file = dir.path().join("lambdaflow.toml");
    std::fs::write(&config_file, DEMO_CONFIG).unwrap();
    let lake_dir = dir.path().join("lake");
    let config = config_for(&lake_dir);
    let mut raw = RawWriter::open(&config, PARTITIONS).await;
    let mut generator = Generator::shop(3, 100, Mix::default());
    raw.append(&payloads(&mut generator, 1_000)).await;
    let address = format!("127.0.0.1:{}", free_port());

    let started = Instant::now();
    let out = batch_run(&config_file, &lake_dir, &format!("ballista://{address}"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the run succeeded without a cluster");
    assert!(
        stderr.contains(&address),
        "the error does not name the scheduler: {stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert!(
        lock_files(&lake_dir).is_empty(),
        "a lock was left: {:?}",
        lock_files(&lake_dir)
    );

    // Nothing stands in the way of the next run.
    let out = batch_run(&config_file, &lake_dir, "local")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_killed_mid_run_leaves_whole_views_or_none() {
    let dir = scratch_dir();
    let twins = Twins::new(dir.path());
    let logs = &twins.logs;
    let mut cluster = BallistaCluster::start(BINARY, logs).await;
    let mut generator = Generator::shop(11, 3_000, Mix::default());
    let mut raw = RawWriter::open(&twins.config, PARTITIONS).await;
    for _ in 0..4 {
        raw.append(&payloads(&mut generator, 20_000)).await;
    }
    twins.copy_raw();

    let mut run = Process::start(
        "cluster-run",
        &mut batch_run(&twins.config_file, &twins.cluster_dir, &cluster.engine),
        logs,
    );
    // Kill one executor as the run starts its jobs: the scheduler has tasks for it.
    let started = Instant::now();
    while !std::fs::read_to_string(logs.join("cluster-run.log"))
        .is_ok_and(|log| log.contains("batch run reading the raw table"))
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the run did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.executors.remove(0).kill9();
    let status = run
        .wait_exit(Duration::from_secs(240))
        .expect("the run neither finished nor failed within 4 minutes");
    let record = last_run(&twins.lake).await;
    twins.run_local_lake("local");
    match record.status {
        RunStatus::Succeeded => {
            assert!(status.success());
            let scheduler = std::fs::read_to_string(logs.join("scheduler.log")).unwrap();
            assert!(
                scheduler.contains("Removing executor"),
                "the scheduler never lost the executor: the kill came too late to matter"
            );
            twins.assert_same_views("executor killed").await;
        }
        RunStatus::Failed => {
            assert!(!status.success());
            // Every view is whole: either published by this run, equal to a local run, or
            // not published at all.
            for view in &record.views {
                let sql = "SELECT * FROM t";
                let cluster_rows = exact(
                    &query_table(&twins.lake.view(&view.name), sql)
                        .await
                        .unwrap(),
                );
                let local_rows = exact(
                    &query_table(&twins.local_lake.view(&view.name), sql)
                        .await
                        .unwrap(),
                );
                assert_eq!(cluster_rows, local_rows, "{} is partial", view.name);
            }
            // The lock is released: a local run over the same lake goes through.
            twins.run_cluster_lake("local", "after");
            twins.assert_same_views("after a failed cluster run").await;
        }
        other => panic!("the run ended {other:?}"),
    }
}
