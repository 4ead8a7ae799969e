//! Harness for the end-to-end tests in `tests/`: a real tansu broker process, the real
//! `lambdaflow` binary (built by this package as `lambdaflow-e2e` from `serving/src/main.rs`,
//! found through `CARGO_BIN_EXE_lambdaflow-e2e`), and Delta tables read back through deltalake
//! and DataFusion.
//!
//! tansu must be on `PATH` (`.ci/run` installs it; see `CONTRIBUTING.md`).

pub mod cluster;
pub mod e2e;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use datafusion::prelude::SessionContext;
use lambdaflow_kafka::producer::Producer;

/// A free loopback port (bound and released; a race is possible but rare on a test machine).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("binding port 0")
        .local_addr()
        .expect("local addr")
        .port()
}

/// A child process killed when dropped, so a failing test leaves nothing behind.
#[derive(Debug)]
pub struct Process {
    child: Option<Child>,
    name: String,
}

impl Process {
    /// Starts `command` with stdout and stderr appended to `<log_dir>/<name>.log`.
    pub fn start(name: &str, command: &mut Command, log_dir: &Path) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_dir.join(format!("{name}.log")))
            .expect("opening the process log");
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Self {
            child: Some(child),
            name: name.to_owned(),
        }
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reaping the child");
        }
    }

    /// SIGTERM, then waits up to `deadline` for a clean exit; returns whether it exited 0.
    pub fn terminate(mut self, deadline: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let started = Instant::now();
        while started.elapsed() < deadline {
            if let Some(status) = child.try_wait().expect("polling the child") {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("{} did not stop within {deadline:?} of SIGTERM", self.name);
    }

    /// Waits up to `deadline` for the process to end on its own; its exit status, if it did.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let started = Instant::now();
        while started.elapsed() < deadline {
            if let Some(status) = child.try_wait().expect("polling the child") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A tansu broker on a free loopback port with in-memory storage.
#[derive(Debug)]
pub struct Tansu {
    /// `host:port` for Kafka clients.
    pub bootstrap: String,
    process: Process,
}

impl Tansu {
    /// Starts tansu with in-memory storage and waits until it accepts connections.
    pub fn start(log_dir: &Path) -> Self {
        Self::start_on(log_dir, free_port(), "memory://tansu/", log_dir)
    }

    /// Starts tansu on `port` with the storage engine `storage` (e.g. `sqlite://tansu.db`,
    /// resolved under `work_dir`, for a broker that keeps its data across a restart) and waits
    /// until it accepts connections.
    pub fn start_on(log_dir: &Path, port: u16, storage: &str, work_dir: &Path) -> Self {
        let url = format!("tcp://127.0.0.1:{port}");
        let process = Process::start(
            "tansu",
            Command::new(tansu_bin())
                .args([
                    "broker",
                    "--listener-url",
                    &url,
                    "--advertised-listener-url",
                    &url,
                ])
                .args(["--storage-engine", storage])
                .current_dir(work_dir),
            log_dir,
        );
        let bootstrap = format!("127.0.0.1:{port}");
        let started = Instant::now();
        while std::net::TcpStream::connect(&bootstrap).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "tansu did not listen on {bootstrap} within 30s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { bootstrap, process }
    }

    /// Stops the broker with SIGKILL.
    pub fn kill9(self) {
        self.process.kill9();
    }

    /// An idempotent producer to this broker that puts one message in each record batch:
    /// tansu 0.6 serves a fetch only from the first offset of a record batch, so with one
    /// message per batch a restarted consumer may resume at any offset (as Kafka allows).
    pub fn producer(&self) -> Producer {
        Producer::one_message_per_batch(&self.bootstrap).expect("producer")
    }

    /// Creates a topic with `partitions` partitions.
    pub fn create_topic(&self, topic: &str, partitions: u32) {
        let status = Command::new(tansu_bin())
            .args([
                "topic",
                "create",
                topic,
                "--partitions",
                &partitions.to_string(),
            ])
            .args(["--broker", &format!("tcp://{}", self.bootstrap)])
            .stdout(Stdio::null())
            .status()
            .expect("running tansu topic create");
        assert!(status.success(), "tansu topic create failed");
    }

    /// Deletes a topic and its messages.
    pub fn delete_topic(&self, topic: &str) {
        let status = Command::new(tansu_bin())
            .args(["topic", "delete", topic])
            .args(["--broker", &format!("tcp://{}", self.bootstrap)])
            .stdout(Stdio::null())
            .status()
            .expect("running tansu topic delete");
        assert!(status.success(), "tansu topic delete failed");
    }
}

fn tansu_bin() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("tansu"))
        .find(|p| p.is_file());
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|h| h.join("bin").join("tansu"));
    on_path
        .or(cargo_home.filter(|p| p.is_file()))
        .expect("tansu not found: install it with `cargo install tansu --version 0.6.0 --locked --features dynostore` (.ci/run does)")
}

/// Runs `sql` over the Delta table at `table_url`, registered as `t`. `None` if the table does
/// not exist yet.
pub async fn query_table(table_url: &url::Url, sql: &str) -> Option<Vec<RecordBatch>> {
    let table = deltalake::open_table(table_url.clone()).await.ok()?;
    let ctx = SessionContext::new();
    table
        .update_datafusion_session(&ctx.state())
        .expect("registering the object store");
    ctx.register_table("t", table.table_provider().await.expect("table provider"))
        .expect("registering the table");
    Some(
        ctx.sql(sql)
            .await
            .expect("planning")
            .collect()
            .await
            .expect("running the query"),
    )
}

/// A scratch directory for one test, kept after the test when `LAMBDAFLOW_TEST_KEEP` is set
/// so that its logs and lake can be inspected.
pub fn scratch_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("lambdaflow-test-")
        .disable_cleanup(std::env::var_os("LAMBDAFLOW_TEST_KEEP").is_some())
        .tempdir()
        .expect("creating a scratch directory")
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// Appends events to a lake's raw table the way the archiver does (validated, one commit per
/// chunk, a `txn` per partition), without a broker: for batch tests that need a raw table of a
/// known content quickly.
pub struct RawWriter {
    table: lambdaflow_batch::archive::commit::OffsetTable,
    validator: lambdaflow_common::validate::Validator,
    topic: String,
    partitions: i32,
    next_offset: std::collections::BTreeMap<i32, i64>,
}

impl RawWriter {
    /// Opens (creating) the raw table of `config`'s lake, with `partitions` Kafka partitions.
    pub async fn open(config: &lambdaflow_common::config::Config, partitions: i32) -> Self {
        use lambdaflow_common::schema::{EVENT_DATE, raw_schema};
        let lake = lambdaflow_batch::lake::Lake::new(&config.lake).expect("lake");
        let schema = raw_schema(config.source());
        let table = lambdaflow_batch::lake::open_or_create(
            &lake.raw(&config.source().name),
            &schema,
            &[EVENT_DATE],
        )
        .await
        .expect("raw table");
        let all: Vec<i32> = (0..partitions).collect();
        let table = lambdaflow_batch::archive::commit::OffsetTable::load(
            table,
            (schema, EVENT_DATE),
            &config.source().topic,
            &all,
        )
        .await
        .expect("raw offsets");
        Self {
            table,
            validator: lambdaflow_common::validate::Validator::new(config.source()),
            topic: config.source().topic.clone(),
            partitions,
            next_offset: Default::default(),
        }
    }

    /// Validates `payloads` (round-robin over partitions) and appends the valid ones in one
    /// commit; returns them as stored.
    pub async fn append(&mut self, payloads: &[Vec<u8>]) -> RecordBatch {
        let now = lambdaflow_common::timestamp::now_micros();
        let mut builder = self.validator.batch_builder(&self.topic, now);
        let mut upto = std::collections::BTreeMap::new();
        for (i, payload) in payloads.iter().enumerate() {
            let partition = i as i32 % self.partitions;
            let offset = self.next_offset.entry(partition).or_insert(0);
            let at = lambdaflow_common::validate::Coordinates {
                partition,
                offset: *offset,
            };
            // Invalid payloads go nowhere here; the quarantine is the archiver's business.
            let _ = builder.push(Some(payload), at);
            upto.insert(partition, *offset);
            *offset += 1;
        }
        let events = builder.finish().events;
        self.table
            .append(events.clone(), &upto)
            .await
            .expect("appending to the raw table");
        events
    }

    /// The raw table version after the last append.
    pub fn version(&self) -> u64 {
        self.table.table().version().expect("loaded")
    }
}

/// The Python interpreter with `deltalake`, `duckdb` and `duckdb_extension_delta`:
/// `LAMBDAFLOW_PYTHON`, or `python3`.
pub fn python() -> Command {
    Command::new(std::env::var("LAMBDAFLOW_PYTHON").unwrap_or_else(|_| "python3".into()))
}

/// Per view, the aggregation of every first occurrence among `messages` (partition, offset,
/// payload), computed in one piece by the speed layer's fold with no batch side: the answer
/// any split into batch ⊕ speed must give.
pub fn direct_views(
    config: &std::sync::Arc<lambdaflow_common::config::Config>,
    messages: &[(i32, i64, Vec<u8>)],
) -> Vec<lambdaflow_common::state::ViewState> {
    use lambdaflow_speed::engine::Speed;
    use lambdaflow_speed::served::Served;
    let served = Served::new();
    let mut speed = Speed::before_any_batch(config.clone(), served.clone()).expect("speed state");
    let mut ordered: Vec<_> = messages.iter().collect();
    ordered.sort_by_key(|(p, o, _)| (*p, *o));
    let validator = lambdaflow_common::validate::Validator::new(config.source());
    let mut builder = validator.batch_builder(
        &config.source().topic,
        lambdaflow_common::timestamp::now_micros(),
    );
    for (partition, offset, payload) in ordered {
        let at = lambdaflow_common::validate::Coordinates {
            partition: *partition,
            offset: *offset,
        };
        let _ = builder.push(Some(payload), at);
    }
    let events = builder.finish().events;
    for date in speed.dates_to_load(&events) {
        speed.load_ids(date, []).unwrap();
    }
    speed
        .fold(events, &Default::default())
        .expect("folding the truth");
    let snapshot = served.snapshot().expect("loaded");
    snapshot
        .pairs()
        .iter()
        .map(|pair| pair.speed().clone())
        .collect()
}

/// Every query a view answers with all its measures and no time range or filter: each
/// granularity from the view's up and `all`, times every subset of its dimensions.
pub fn every_query(
    view: &lambdaflow_common::view::ViewDef,
) -> Vec<lambdaflow_common::query::Query> {
    use lambdaflow_common::query::{Query, Rollup};
    use lambdaflow_common::view::Granularity;
    let rollups = [Granularity::Minute, Granularity::Hour, Granularity::Day]
        .into_iter()
        .filter(|g| *g >= view.granularity)
        .map(Rollup::Buckets)
        .chain([Rollup::All]);
    let subsets = 1usize << view.dimensions.len();
    rollups
        .flat_map(|rollup| {
            (0..subsets).map(move |mask| Query {
                from: None,
                to: None,
                rollup,
                group_by: (0..view.dimensions.len())
                    .filter(|d| mask & (1 << d) != 0)
                    .collect(),
                filters: Vec::new(),
                measures: (0..view.measures.len()).collect(),
                order_by: Vec::new(),
                limit: None,
            })
        })
        .collect()
}

/// Every row of `batches` as text, sorted: every cell exactly (sketches byte for byte) except
/// floats, which are given to `digits` significant digits, as a sum of floats depends on the
/// order it adds them in (two runs of one plan may differ in the last bit).
pub fn sorted_rows(batches: &[RecordBatch], digits: usize) -> Vec<String> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{DataType, Float64Type};
    use arrow::util::display::array_value_to_string;
    let mut rows = Vec::new();
    for b in batches {
        for i in 0..b.num_rows() {
            let cells: Vec<String> = b
                .columns()
                .iter()
                .map(|c| match c.data_type() {
                    DataType::Float64 if c.is_valid(i) => {
                        let value = c.as_primitive::<Float64Type>().value(i);
                        format!("{value:.*e}", digits - 1)
                    }
                    _ => array_value_to_string(c, i).expect("a printable cell"),
                })
                .collect();
            rows.push(cells.join("|"));
        }
    }
    rows.sort();
    rows
}

/// Copies the directory tree `from` into `to`, creating `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("creating the copy's directory");
    for entry in std::fs::read_dir(from)
        .expect("listing the directory")
        .flatten()
    {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copying a file");
        }
    }
}
