//! One function per CLI subcommand. Each long-running command stops cleanly when the token is
//! cancelled and returns an error when any of its parts failed.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use lambdaflow_batch::archive::Archiver;
use lambdaflow_batch::lake::reader::LakeReader;
use lambdaflow_batch::views::records::{RunRecord, Trigger};
use lambdaflow_batch::views::schedule::Batches;
use lambdaflow_common::config::Config;
use lambdaflow_common::sample::Mix;
use lambdaflow_speed::lambda::Shared;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::generate::{self, GenOptions};
use crate::http::{self, AppState};
use crate::kafka::{self, EmbeddedBroker};
use crate::lambda;

/// Reads a config file and applies the `LAMBDAFLOW_*` environment.
pub fn load_config(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    Ok(Config::from_toml(
        &text,
        &path.display().to_string(),
        std::env::vars(),
    )?)
}

/// `lambdaflow check`: the config is valid; print what it declares.
pub fn check(config: &Config) -> String {
    let mut out = format!(
        "config ok: topic `{}` on {}, lake {}, source `{}` with {} declared fields\n",
        config.kafka.topic,
        config.kafka.brokers,
        config.lake.uri,
        config.source.name,
        config.source.fields.len()
    );
    for view in &config.views {
        let measures: Vec<String> = view
            .measures
            .iter()
            .map(|m| match &m.field {
                Some(f) => format!("{}={}({f})", m.name, m.agg.as_str()),
                None => format!("{}={}", m.name, m.agg.as_str()),
            })
            .collect();
        out.push_str(&format!(
            "view {}: {} by [{}]{} -> {}\n",
            view.name,
            view.granularity.as_str(),
            view.dimensions.join(", "),
            view.filter
                .as_ref()
                .map(|f| format!(" where {f}"))
                .unwrap_or_default(),
            measures.join(", ")
        ));
    }
    out
}

/// The bootstrap servers to use, starting the embedded broker when the config asks for it and
/// creating the topic on a real one.
pub async fn connect(config: &Config) -> Result<(String, Option<EmbeddedBroker>)> {
    if config.kafka.is_embedded() {
        let broker = EmbeddedBroker::start(&config.kafka.topic, config.kafka.partitions)?;
        let brokers = broker.bootstrap_servers().to_owned();
        tracing::info!(%brokers, topic = %config.kafka.topic, "embedded Kafka-protocol broker started");
        return Ok((brokers, Some(broker)));
    }
    kafka::ensure_topic(&config.kafka, &config.kafka.brokers).await?;
    Ok((config.kafka.brokers.clone(), None))
}

/// Tasks of one process: each failure cancels the others, and the first error is returned.
struct Tasks {
    tracker: TaskTracker,
    shutdown: CancellationToken,
    handles: Vec<(&'static str, tokio::task::JoinHandle<Result<()>>)>,
}

impl Tasks {
    fn new(shutdown: CancellationToken) -> Self {
        Self {
            tracker: TaskTracker::new(),
            shutdown,
            handles: Vec::new(),
        }
    }

    fn spawn(
        &mut self,
        name: &'static str,
        task: impl Future<Output = Result<()>> + Send + 'static,
    ) {
        let shutdown = self.shutdown.clone();
        let handle = self.tracker.spawn(async move {
            let result = task.await;
            if let Err(error) = &result {
                tracing::error!(task = name, "{error:#}");
                shutdown.cancel();
            }
            result
        });
        self.handles.push((name, handle));
    }

    async fn join(self) -> Result<()> {
        self.tracker.close();
        let mut first = Ok(());
        for (name, handle) in self.handles {
            let result = handle
                .await
                .with_context(|| format!("{name} task panicked"))
                .and_then(|r| r.with_context(|| format!("{name} failed")));
            if first.is_ok() {
                first = result;
            }
        }
        first
    }
}

/// Serves `/healthz` and `/metrics` on `listen` beside the work of a process without the API.
async fn spawn_ops(
    tasks: &mut Tasks,
    config: &Arc<Config>,
    listen: Option<String>,
    shutdown: &CancellationToken,
) -> Result<()> {
    let Some(listen) = listen else {
        return Ok(());
    };
    let listener = TcpListener::bind(&listen)
        .await
        .with_context(|| format!("binding the metrics address {listen}"))?;
    tracing::info!(%listen, "serving /healthz and /metrics");
    let app = http::metrics::ops(config.clone());
    let shutdown = shutdown.clone();
    tasks.spawn("metrics", async move {
        Ok(axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await?)
    });
    Ok(())
}

/// `lambdaflow archive`: Kafka → raw and quarantine tables until stopped.
pub async fn archive(
    config: Arc<Config>,
    metrics_listen: Option<String>,
    shutdown: CancellationToken,
) -> Result<()> {
    let (brokers, _broker) = connect(&config).await?;
    let mut tasks = Tasks::new(shutdown.clone());
    spawn_ops(&mut tasks, &config, metrics_listen, &shutdown).await?;
    let archiver = Archiver::new(config, brokers);
    let stop = shutdown.clone();
    tasks.spawn("archiver", async move {
        let outcome = archiver.run(stop.clone()).await;
        // The archiver is the process's work: when it ends, so does the metrics server.
        stop.cancel();
        Ok(outcome?)
    });
    tasks.join().await
}

/// `lambdaflow serve`: the speed layer and the HTTP API (batch runs it is asked for run in
/// this process).
pub async fn serve(config: Arc<Config>, shutdown: CancellationToken) -> Result<()> {
    let (brokers, _broker) = connect(&config).await?;
    let batches = Batches::new(config.clone(), shutdown.clone())?;
    let lake = Arc::new(LakeReader::new(&config.lake)?);
    let mut tasks = Tasks::new(shutdown.clone());
    let lambda = spawn_speed(&mut tasks, &config, &lake, &brokers, &shutdown).await?;
    spawn_http(
        &mut tasks,
        config,
        &brokers,
        batches.clone(),
        lake,
        lambda,
        shutdown,
    )
    .await?;
    let outcome = tasks.join().await;
    batches.drain().await;
    outcome
}

/// `lambdaflow batch run`: one run now; the summary on stdout.
pub async fn batch_run(
    config: Arc<Config>,
    full: bool,
    shutdown: CancellationToken,
) -> Result<RunRecord> {
    let batches = Batches::new(config, shutdown)?;
    Ok(batches.run(Trigger::Cli, full).await?)
}

/// `lambdaflow batch schedule`: runs on the cron schedule until stopped.
pub async fn batch_schedule(
    config: Arc<Config>,
    metrics_listen: Option<String>,
    shutdown: CancellationToken,
) -> Result<()> {
    let batches = Batches::new(config.clone(), shutdown.clone())?;
    let mut tasks = Tasks::new(shutdown.clone());
    spawn_ops(&mut tasks, &config, metrics_listen, &shutdown).await?;
    let stop = shutdown.clone();
    tasks.spawn("batch schedule", async move {
        let outcome = batches.schedule().await;
        stop.cancel();
        Ok(outcome?)
    });
    tasks.join().await
}

/// `lambdaflow run` (and the core of `demo`): archiver and HTTP API in one process, plus a
/// generator when `generator` is given.
pub async fn run(
    config: Arc<Config>,
    shutdown: CancellationToken,
    generator: Option<GenOptions>,
) -> Result<()> {
    let (brokers, broker) = connect(&config).await?;
    let batches = Batches::new(config.clone(), shutdown.clone())?;
    let mut tasks = Tasks::new(shutdown.clone());
    let archiver = Archiver::new(config.clone(), brokers.clone());
    tasks.spawn("archiver", {
        let shutdown = shutdown.clone();
        async move { Ok(archiver.run(shutdown).await?) }
    });
    tasks.spawn("batch scheduler", {
        let batches = batches.clone();
        async move { Ok(batches.schedule().await?) }
    });
    let lake = Arc::new(LakeReader::new(&config.lake)?);
    let lambda = spawn_speed(&mut tasks, &config, &lake, &brokers, &shutdown).await?;
    let addr = spawn_http(
        &mut tasks,
        config.clone(),
        &brokers,
        batches.clone(),
        lake,
        lambda,
        shutdown.clone(),
    )
    .await?;
    if let Some(options) = generator {
        let producer = kafka::producer(&brokers)?;
        let topic = config.kafka.topic.clone();
        let shutdown = shutdown.clone();
        tasks.spawn("generator", async move {
            generate::produce(&producer, &topic, options, &shutdown)
                .await
                .map(drop)
        });
    }
    println!(
        "lambdaflow is running: API http://{addr}/  broker {brokers}  topic {}  lake {}",
        config.kafka.topic, config.lake.uri
    );
    let outcome = tasks.join().await;
    batches.drain().await;
    drop(broker);
    outcome
}

async fn spawn_speed(
    tasks: &mut Tasks,
    config: &Arc<Config>,
    lake: &Arc<LakeReader>,
    brokers: &str,
    shutdown: &CancellationToken,
) -> Result<Shared> {
    let (shared, task) = lambda::start(
        config.clone(),
        lake.clone(),
        brokers.to_owned(),
        shutdown.clone(),
    )
    .await?;
    tasks.spawn("speed layer", task);
    Ok(shared)
}

async fn spawn_http(
    tasks: &mut Tasks,
    config: Arc<Config>,
    brokers: &str,
    batches: Arc<Batches>,
    lake: Arc<LakeReader>,
    lambda: Shared,
    shutdown: CancellationToken,
) -> Result<SocketAddr> {
    let listener = TcpListener::bind(&config.serving.listen)
        .await
        .with_context(|| format!("listening on {}", config.serving.listen))?;
    let addr = listener.local_addr()?;
    let state = AppState::new(config, kafka::producer(brokers)?, batches, lake, lambda);
    state.set_ready();
    tracing::info!(%addr, "HTTP API listening");
    tasks.spawn("http", async move {
        Ok(http::serve(listener, state, shutdown).await?)
    });
    Ok(addr)
}

/// Options of `lambdaflow demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where the lake goes; a temporary directory (removed at exit) when `None`.
    pub data_dir: Option<PathBuf>,
    /// Listen address of the API, overriding the demo config's.
    pub listen: Option<String>,
    /// Generator rate in events per second.
    pub rate: f64,
}

/// `lambdaflow demo`: the built-in shop config, the embedded broker, a lake in a data dir and
/// a generator, all in one process.
pub async fn demo(options: DemoOptions, shutdown: CancellationToken) -> Result<()> {
    let mut config = Config::from_toml(
        lambdaflow_common::config::DEMO_CONFIG,
        "built-in demo config",
        std::env::vars(),
    )?;
    let temp = match &options.data_dir {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("lambdaflow-demo-")
                .tempdir()?,
        ),
    };
    let data_dir = options
        .data_dir
        .clone()
        .unwrap_or_else(|| temp.as_ref().expect("temp dir").path().to_path_buf());
    config.lake.uri = data_dir.join("lake").display().to_string();
    if let Some(listen) = options.listen {
        config.serving.listen = listen;
    }
    if !config.kafka.is_embedded() {
        bail!(
            "the demo runs its own embedded broker; unset LAMBDAFLOW_KAFKA__BROKERS or use `lambdaflow run`"
        );
    }
    let generator = GenOptions {
        count: None,
        rate: Some(options.rate),
        mix: Mix {
            duplicates: 0.02,
            late: 0.05,
            invalid: 0.01,
        },
        seed: rand::random(),
    };
    run(Arc::new(config), shutdown, Some(generator)).await
}

/// `lambdaflow gen`: produce synthetic events to the configured broker.
pub async fn gen_events(
    config: &Config,
    options: GenOptions,
    shutdown: CancellationToken,
) -> Result<u64> {
    if config.kafka.is_embedded() {
        bail!(
            "`gen` needs a broker it can reach: the embedded one lives inside `run` or `demo`; \
             point LAMBDAFLOW_KAFKA__BROKERS at the address they print"
        );
    }
    kafka::ensure_topic(&config.kafka, &config.kafka.brokers).await?;
    let producer = kafka::producer(&config.kafka.brokers)?;
    generate::produce(&producer, &config.kafka.topic, options, &shutdown).await
}
