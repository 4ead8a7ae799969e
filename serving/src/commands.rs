//! One function per CLI subcommand. Each long-running command stops cleanly when the token is
//! cancelled and returns an error when any of its parts failed.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::FutureExt;
use lambdaflow_batch::archive::{ArchiveStats, Archiver};
use lambdaflow_batch::lake::Lake;
use lambdaflow_batch::lake::reader::LakeReader;
use lambdaflow_batch::lake::retention::{Expire, Expired};
use lambdaflow_batch::lake::status::TableStatus;
use lambdaflow_batch::lake::vacuum::{Vacuum, Vacuumed};
use lambdaflow_batch::views::records::{RunRecord, Task, TaskState, Trigger};
use lambdaflow_batch::views::run::TaskProgress;
use lambdaflow_batch::views::schedule::Batches;
use lambdaflow_common::auth::{AuthConfig, AuthMode, Scope, TokenConfig, token_hash};
use lambdaflow_common::config::{Config, ServingConfig};
use lambdaflow_common::sample::{Mix, Shape};
use lambdaflow_common::view::fingerprint;
use lambdaflow_kafka::embedded::EmbeddedBroker;
use lambdaflow_kafka::producer::Producer;
use lambdaflow_kafka::settings::Cluster;
use lambdaflow_kafka::topic::ensure_topic;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::{Error, Result};
use crate::generate::{self, GenOptions};
use crate::http::guard::Guard;
use crate::http::{self, AppState};
use crate::postgres;
use crate::speed_layer::{self, Speeds};

/// Reads a config file and applies the `LAMBDAFLOW_*` environment.
pub fn load_config(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::ReadConfig {
        path: path.to_owned(),
        source,
    })?;
    Ok(Config::from_toml(
        &text,
        &path.display().to_string(),
        std::env::vars(),
    )?)
}

/// `lambdaflow check`: the config is valid; print what it declares.
pub fn check(config: &Config) -> String {
    let mut out = format!(
        "config ok: brokers {}, lake {}\n",
        config.kafka.brokers, config.lake.uri
    );
    for source in &config.sources {
        out.push_str(&format!(
            "source {}: topic `{}`, {} declared fields\n",
            source.name,
            source.topic,
            source.fields.len()
        ));
    }
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
            "view {} over {}: {} by [{}]{} -> {}\n",
            view.name,
            config.source_of(view).name,
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

/// The brokers to use, with the config's client properties: the embedded broker, started when
/// the config asks for it, or `kafka.brokers`, where each source's topic is created if missing.
pub async fn connect(config: &Config) -> Result<(Cluster, Option<EmbeddedBroker>)> {
    let partitions = config.kafka.partitions;
    if config.kafka.is_embedded() {
        let topics: Vec<(&str, i32)> = config
            .sources
            .iter()
            .map(|s| (s.topic.as_str(), partitions))
            .collect();
        let broker = EmbeddedBroker::start(&topics)?;
        let brokers = broker.bootstrap_servers().to_owned();
        tracing::info!(%brokers, ?topics, "embedded Kafka-protocol broker started");
        return Ok((
            Cluster::with_properties_of(brokers, &config.kafka),
            Some(broker),
        ));
    }
    let cluster = Cluster::with_properties_of(config.kafka.brokers.as_str(), &config.kafka);
    for source in &config.sources {
        ensure_topic(
            &cluster,
            &source.topic,
            partitions,
            config.kafka.replication_factor,
        )
        .await?;
    }
    Ok((cluster, None))
}

/// Tasks of one process: each failure or panic cancels the others, and the first error is
/// returned.
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
            let result = match std::panic::AssertUnwindSafe(task).catch_unwind().await {
                Ok(result) => result,
                Err(panic) => Err(Error::Panicked {
                    task: name,
                    message: panic_message(panic.as_ref()),
                }),
            };
            if let Err(error) = &result {
                let chain = chain(error);
                tracing::error!(task = name, "{chain}");
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
            let result = match handle.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error @ Error::Panicked { .. })) => Err(error),
                Ok(Err(error)) => Err(Error::Task {
                    task: name,
                    source: Box::new(error),
                }),
                Err(join) => Err(Error::Panicked {
                    task: name,
                    message: join.to_string(),
                }),
            };
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
        .map_err(|source| Error::Listen {
            what: "metrics",
            addr: listen.clone(),
            source,
        })?;
    tracing::info!(%listen, "serving /healthz and /metrics");
    let guard = Guard::new(&config.serving, |var| std::env::var(var).ok())?;
    let app = http::metrics::ops(Arc::new(guard));
    let shutdown = shutdown.clone();
    tasks.spawn("metrics", async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .map_err(Error::Serve)
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
    spawn_archivers(&mut tasks, &config, &brokers, &shutdown);
    tasks.join().await
}

/// Spawns one archiver per source of `config`; returns their counters, in source order. An
/// archiver that ends stops the process (and with it, in `archive`, the metrics server): a
/// process archiving only some of its sources would look healthy while the others fall behind.
fn spawn_archivers(
    tasks: &mut Tasks,
    config: &Config,
    brokers: &Cluster,
    shutdown: &CancellationToken,
) -> Vec<Arc<ArchiveStats>> {
    let mut stats = Vec::new();
    for source in &config.sources {
        let archiver = Archiver::new(Arc::new(config.scoped(source)), brokers);
        stats.push(archiver.stats());
        let shutdown = shutdown.clone();
        tasks.spawn("archiver", async move {
            let outcome = archiver.run(shutdown.clone()).await;
            shutdown.cancel();
            Ok(outcome?)
        });
    }
    stats
}

/// `lambdaflow archive --accept-topic-reset`: records in the lake that the partitions whose
/// topic went back in time start a new epoch, prints them, and exits.
pub async fn accept_topic_reset(config: Arc<Config>) -> Result<()> {
    let (brokers, _broker) = connect(&config).await?;
    for source in &config.sources {
        let scoped = config.scoped(source);
        let accepted = lambdaflow_batch::archive::accept_topic_reset(&scoped, &brokers).await?;
        if accepted.is_empty() {
            println!(
                "no partition of topic {} is below the offsets the lake holds: nothing to accept",
                source.topic
            );
        }
        for (partition, epoch) in accepted {
            println!(
                "topic {} partition {partition}: reset accepted, offsets start again at 0 in epoch {epoch}",
                source.topic
            );
        }
    }
    Ok(())
}

/// `lambdaflow serve`: the speed layer and the HTTP API (batch runs it is asked for run in
/// this process).
pub async fn serve(config: Arc<Config>, shutdown: CancellationToken) -> Result<()> {
    check_exposure(&config).await?;
    let (brokers, _broker) = connect(&config).await?;
    let batches = Batches::new(config.clone(), shutdown.clone())?;
    let mut tasks = Tasks::new(shutdown.clone());
    let lake = Arc::new(LakeReader::new(&config.lake)?);
    let speeds = spawn_speed(&mut tasks, &config, &lake, &brokers, &shutdown).await?;
    rebuild_redefined(&speeds, &batches).await;
    let state = app_state(config, &brokers, batches.clone(), lake, speeds)?;
    spawn_postgres(&mut tasks, &state, &shutdown).await?;
    spawn_http(&mut tasks, state, shutdown).await?;
    let outcome = tasks.join().await;
    batches.drain().await;
    outcome
}

/// `lambdaflow batch run`: one run now, a line on stderr per task as its state changes; the
/// summary on stdout.
pub async fn batch_run(
    config: Arc<Config>,
    full: bool,
    shutdown: CancellationToken,
) -> Result<RunRecord> {
    batch_run_for(Trigger::Cli, config, full, shutdown).await
}

/// One batch run now, recorded as started by `trigger`, a line on stderr per task.
pub async fn batch_run_for(
    trigger: Trigger,
    config: Arc<Config>,
    full: bool,
    shutdown: CancellationToken,
) -> Result<RunRecord> {
    let batches = Batches::new(config, shutdown)?;
    let progress: TaskProgress = Arc::new(|task: &Task| {
        let state = serde_json::to_value(task.state).unwrap_or_default();
        let mut line = format!("task {} {}", task.id, state.as_str().unwrap_or_default());
        if task.attempts > 1 {
            line.push_str(&format!(" (attempt {})", task.attempts));
        }
        if let (Some(seconds), true) = (task.seconds(), task.finished_at.is_some()) {
            line.push_str(&format!(" in {seconds:.1} s"));
        }
        if task.state == TaskState::Succeeded && task.rows > 0 {
            line.push_str(&format!(", {} {}", task.rows, task.unit()));
        }
        if let (Some(error), false) = (&task.error, task.state == TaskState::Succeeded) {
            line.push_str(&format!(": {error}"));
        }
        eprintln!("{line}");
    });
    Ok(batches.run(trigger, full, Some(progress)).await?)
}

/// `lambdaflow lake expire`: retention applied now, outside a batch run.
pub async fn lake_expire(config: &Config, dry_run: bool) -> Result<Vec<Expired>> {
    let lake = Lake::new(&config.lake)?;
    Ok(Expire::new(config, &lake)
        .with_dry_run(dry_run)
        .run_alone()
        .await?)
}

/// `lambdaflow lake vacuum`: vacuum now, outside a batch run.
pub async fn lake_vacuum(config: &Config, dry_run: bool) -> Result<Vec<Vacuumed>> {
    let lake = Lake::new(&config.lake)?;
    Ok(Vacuum::new(config, &lake)
        .with_dry_run(dry_run)
        .run_alone()
        .await?)
}

/// `lambdaflow lake status`: what each table holds and costs on storage.
pub async fn lake_status(config: &Config) -> Result<Vec<TableStatus>> {
    Ok(LakeReader::new(&config.lake)?.status(config).await?)
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
/// generator for each (topic, options) of `generators`.
pub async fn run(
    config: Arc<Config>,
    shutdown: CancellationToken,
    generators: Vec<(String, GenOptions)>,
) -> Result<()> {
    check_exposure(&config).await?;
    let (brokers, broker) = connect(&config).await?;
    let batches = Batches::new(config.clone(), shutdown.clone())?;
    let mut tasks = Tasks::new(shutdown.clone());
    let archive_stats = spawn_archivers(&mut tasks, &config, &brokers, &shutdown);
    tasks.spawn("batch scheduler", {
        let batches = batches.clone();
        async move { Ok(batches.schedule().await?) }
    });
    let lake = Arc::new(LakeReader::new(&config.lake)?);
    let speeds = spawn_speed(&mut tasks, &config, &lake, &brokers, &shutdown).await?;
    rebuild_redefined(&speeds, &batches).await;
    let state = app_state(config.clone(), &brokers, batches.clone(), lake, speeds)?
        .with_archivers(archive_stats);
    let pg_addr = spawn_postgres(&mut tasks, &state, &shutdown).await?;
    let addr = spawn_http(&mut tasks, state, shutdown.clone()).await?;
    for (topic, options) in generators {
        let producer = Producer::new(&brokers)?;
        let shutdown = shutdown.clone();
        tasks.spawn("generator", async move {
            Ok(
                generate::produce(&producer, &topic, options, None, &shutdown)
                    .await
                    .map(drop)?,
            )
        });
    }
    let topics: Vec<&str> = config.sources.iter().map(|s| s.topic.as_str()).collect();
    let postgres = pg_addr
        .map(|addr| format!("  SQL postgres://{addr}/lambdaflow"))
        .unwrap_or_default();
    println!(
        "lambdaflow is running: API http://{addr}/{postgres}  broker {}  topics {}  lake {}",
        brokers.brokers(),
        topics.join(", "),
        config.lake.uri
    );
    let outcome = tasks.join().await;
    batches.drain().await;
    drop(broker);
    outcome
}

/// Starts a batch run when a view's loaded batch version was computed under another
/// definition than the config's: until it publishes, the API answers that view with 503
/// `view_rebuilding` rather than merge states of two definitions.
async fn rebuild_redefined(speeds: &Speeds, batches: &Arc<Batches>) {
    let mut redefined: Vec<String> = Vec::new();
    for speed in speeds.sources() {
        let Some(snapshot) = speed.served.snapshot() else {
            continue;
        };
        let source = speed.config.source();
        redefined.extend(
            speed
                .config
                .views
                .iter()
                .zip(snapshot.pairs())
                .filter(|(view, pair)| pair.batch().redefined(&fingerprint(source, view)))
                .map(|(view, _)| view.name.clone()),
        );
    }
    if redefined.is_empty() {
        return;
    }
    match batches.submit(Trigger::Redefinition, false).await {
        Ok(id) => {
            tracing::warn!(views = ?redefined, run = %id, "views were redefined: recomputing them; they answer 503 view_rebuilding until the run publishes")
        }
        Err(error) => {
            tracing::warn!(views = ?redefined, %error, "views were redefined but no batch run could be started for them now; the next run recomputes them")
        }
    }
}

/// Starts one speed layer per source, each a task of its own.
async fn spawn_speed(
    tasks: &mut Tasks,
    config: &Config,
    lake: &Arc<LakeReader>,
    brokers: &Cluster,
    shutdown: &CancellationToken,
) -> Result<Speeds> {
    let (speeds, started) = speed_layer::start_all(config, lake, brokers, shutdown).await?;
    for task in started {
        tasks.spawn("speed layer", task);
    }
    Ok(speeds)
}

/// The API's state: the producer of `POST /v1/events` for `brokers`, batch runs through
/// `batches`, the lake through `lake`, answers from `speeds`.
fn app_state(
    config: Arc<Config>,
    brokers: &Cluster,
    batches: Arc<Batches>,
    lake: Arc<LakeReader>,
    speeds: Speeds,
) -> Result<AppState> {
    let largest = config.sources.iter().map(|s| s.max_event_bytes).max();
    let producer = Producer::for_events(brokers, largest.unwrap_or_default())?;
    Ok(AppState::new(config, producer, batches, lake, speeds)?)
}

/// Refuses, before anything starts, an API that would listen beyond this host with no token
/// asked of anyone, unless the config says so.
async fn check_exposure(config: &Config) -> Result<()> {
    let serving = &config.serving;
    if serving.auth.mode != AuthMode::None || serving.allow_public_without_auth {
        return Ok(());
    }
    match beyond_loopback(serving).await? {
        Some(addr) => Err(Error::PublicWithoutAuth { addr }),
        None => Ok(()),
    }
}

/// The first address the API or the Postgres listener would listen on that other hosts can
/// reach, if any.
async fn beyond_loopback(serving: &ServingConfig) -> Result<Option<SocketAddr>> {
    for listen in std::iter::once(&serving.listen).chain(&serving.pg_listen) {
        if let Some(addr) = reachable(listen).await? {
            return Ok(Some(addr));
        }
    }
    Ok(None)
}

/// The first address `listen` resolves to that other hosts can reach, if any.
async fn reachable(listen: &str) -> Result<Option<SocketAddr>> {
    let mut addrs = tokio::net::lookup_host(listen)
        .await
        .map_err(|source| Error::Listen {
            what: "listen address",
            addr: listen.to_owned(),
            source,
        })?;
    Ok(addrs.find(|addr| !addr.ip().is_loopback()))
}

/// The demo's answer to listening beyond this host (as in a container) with no auth
/// configured: a fresh token with every scope, returned to be printed once, rather than an
/// API that anyone who reaches it may write to. `None` when the API stays on loopback or the
/// config already decides.
async fn demo_token(config: &mut Config) -> Result<Option<String>> {
    let serving = &mut config.serving;
    if serving.auth.mode != AuthMode::None
        || serving.allow_public_without_auth
        || beyond_loopback(serving).await?.is_none()
    {
        return Ok(None);
    }
    let token = hex::encode(rand::random::<[u8; 32]>());
    serving.auth = AuthConfig {
        mode: AuthMode::Tokens,
        tokens: vec![TokenConfig {
            name: "demo".to_owned(),
            sha256: Some(hex::encode(token_hash(&token))),
            env: None,
            scopes: vec![Scope::Ingest, Scope::Query, Scope::Admin],
        }],
    };
    Ok(Some(token))
}

async fn spawn_http(
    tasks: &mut Tasks,
    state: AppState,
    shutdown: CancellationToken,
) -> Result<SocketAddr> {
    let listen = state.config.serving.listen.clone();
    let listening = |source| Error::Listen {
        what: "HTTP API",
        addr: listen.clone(),
        source,
    };
    let tls = http::tls(&state.config).await.map_err(Error::Serve)?;
    let listener = TcpListener::bind(&listen).await.map_err(listening)?;
    let addr = listener.local_addr().map_err(listening)?;
    state.set_ready();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let auth = state.config.serving.auth.mode;
    tracing::info!(%addr, scheme, ?auth, "HTTP API listening");
    tasks.spawn("http", async move {
        http::serve(listener, state, tls, shutdown)
            .await
            .map_err(Error::Serve)
    });
    Ok(addr)
}

/// Serves the SQL over the Postgres wire protocol on `serving.pg_listen`, when set; the
/// address it listens on.
async fn spawn_postgres(
    tasks: &mut Tasks,
    state: &AppState,
    shutdown: &CancellationToken,
) -> Result<Option<SocketAddr>> {
    let Some(listen) = state.config.serving.pg_listen.clone() else {
        return Ok(None);
    };
    let listening = |source| Error::Listen {
        what: "Postgres wire protocol",
        addr: listen.clone(),
        source,
    };
    let tls = http::tls(&state.config)
        .await
        .map_err(Error::Serve)?
        .map(|tls| tls.get_inner());
    let encrypted = tls.is_some();
    let server = postgres::Server::new(state.clone(), tls).map_err(Error::Serve)?;
    let listener = TcpListener::bind(&listen).await.map_err(listening)?;
    let addr = listener.local_addr().map_err(listening)?;
    tracing::info!(%addr, tls = encrypted, "Postgres wire protocol listening");
    let shutdown = shutdown.clone();
    tasks.spawn("postgres", async move {
        server.serve(listener, shutdown).await;
        Ok(())
    });
    Ok(Some(addr))
}

/// Where the demo serves Postgres clients unless told otherwise.
pub const DEMO_PG_LISTEN: &str = "127.0.0.1:5433";

/// [`DEMO_PG_LISTEN`], or any free loopback port when something else (a Postgres, say)
/// already listens there: the demo's Postgres listener is an extra that must not keep the
/// demo from starting. The address taken is printed with the others.
async fn demo_pg_listen() -> String {
    match TcpListener::bind(DEMO_PG_LISTEN).await {
        Ok(_) => DEMO_PG_LISTEN.to_owned(),
        Err(error) => {
            tracing::warn!(%error, "{DEMO_PG_LISTEN} is taken: the demo serves Postgres clients on another port");
            "127.0.0.1:0".to_owned()
        }
    }
}

/// Options of `lambdaflow demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where the lake goes; a temporary directory (removed at exit) when `None`.
    pub data_dir: Option<PathBuf>,
    /// Listen address of the API, overriding the demo config's.
    pub listen: Option<String>,
    /// Listen address of the Postgres wire protocol; [`DEMO_PG_LISTEN`] when `None`.
    pub pg_listen: Option<String>,
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
                .tempdir()
                .map_err(Error::DataDir)?,
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
    config.serving.pg_listen = Some(match options.pg_listen {
        Some(listen) => listen,
        None => demo_pg_listen().await,
    });
    if !config.kafka.is_embedded() {
        return Err(Error::DemoNeedsEmbeddedBroker);
    }
    if let Some(token) = demo_token(&mut config).await? {
        println!(
            "the API listens beyond this host: every request but the dashboard page and health \
             checks needs `Authorization: Bearer {token}` (the dashboard asks for it)"
        );
    }
    // Each of the demo's sources gets events of its shape, at the demo's rate.
    let generators = config
        .sources
        .iter()
        .filter_map(|source| {
            let shape = match source.name.as_str() {
                "events" => Shape::Shop,
                "pageviews" => Shape::Pages,
                _ => return None,
            };
            let options = GenOptions {
                shape,
                count: None,
                rate: Some(options.rate),
                mix: Mix {
                    duplicates: 0.02,
                    late: 0.05,
                    invalid: 0.01,
                },
                seed: rand::random(),
            };
            Some((source.topic.clone(), options))
        })
        .collect();
    run(Arc::new(config), shutdown, generators).await
}

/// `lambdaflow gen`: produce synthetic events to the topic of the source called `source` (the
/// only one when `None`) on the configured broker, writing the count acknowledged to
/// `heartbeat` as it grows; returns the topic and the events acknowledged.
pub async fn gen_events(
    config: &Config,
    source: Option<&str>,
    options: GenOptions,
    heartbeat: Option<&std::path::Path>,
    shutdown: CancellationToken,
) -> Result<(String, u64)> {
    if config.kafka.is_embedded() {
        return Err(Error::GenNeedsBroker);
    }
    let source = config
        .pick_source(source)
        .map_err(|why| Error::UnknownSource {
            command: "gen",
            why,
        })?;
    let kafka = &config.kafka;
    let cluster = Cluster::with_properties_of(kafka.brokers.as_str(), kafka);
    ensure_topic(
        &cluster,
        &source.topic,
        kafka.partitions,
        kafka.replication_factor,
    )
    .await?;
    let producer = Producer::new(&cluster)?;
    let acked = generate::produce(&producer, &source.topic, options, heartbeat, &shutdown).await?;
    Ok((source.topic.clone(), acked))
}

/// `error` and its sources, joined by `: `, as a log line.
fn chain(error: &Error) -> String {
    let mut out = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// The text of a panic's payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

#[cfg(test)]
mod tests {
    use lambdaflow_common::view::ViewDef;
    use lambdaflow_speed::served::Served;

    use super::*;

    #[tokio::test]
    async fn a_panicking_task_stops_the_others_and_fails_the_process() {
        let shutdown = CancellationToken::new();
        let mut tasks = Tasks::new(shutdown.clone());
        let stop = shutdown.clone();
        tasks.spawn("waiter", async move {
            stop.cancelled().await;
            Ok(())
        });
        tasks.spawn("archiver", async {
            tokio::task::yield_now().await;
            panic!("an index out of bounds");
        });
        let outcome = tokio::time::timeout(std::time::Duration::from_secs(10), tasks.join())
            .await
            .expect("the panic cancelled the waiter");
        match outcome {
            Err(Error::Panicked { task, message }) => {
                assert_eq!(task, "archiver");
                assert!(message.contains("an index out of bounds"), "{message}");
            }
            other => panic!("expected a panic error, got {other:?}"),
        }
        assert!(shutdown.is_cancelled());
    }

    #[tokio::test]
    async fn a_view_loaded_under_another_definition_starts_a_batch_run() {
        let lake = tempfile::tempdir().unwrap();
        let mut config = Config::shop();
        config.lake.uri = lake.path().display().to_string();
        let config = Arc::new(config);
        let batches = Batches::new(config.clone(), CancellationToken::new()).unwrap();
        let loaded = |definition: &dyn Fn(&ViewDef) -> Option<String>| {
            let pairs = config
                .views
                .iter()
                .map(|view| {
                    let batch = lambdaflow_common::batch_view::BatchView {
                        definition: definition(view),
                        ..Default::default()
                    };
                    lambdaflow_speed::served::ViewPair::new(Arc::new(batch), Default::default())
                })
                .collect();
            let served = Served::from_parts(pairs, Default::default(), Default::default());
            Speeds::new(&config, vec![served])
        };
        let current = |view: &ViewDef| Some(fingerprint(config.source_of(view), view));
        rebuild_redefined(&loaded(&current), &batches).await;
        rebuild_redefined(&loaded(&|_| None), &batches).await;
        batches.drain().await;
        assert!(batches.history().list(10).await.unwrap().is_empty());

        let older = |view: &ViewDef| (view.name == "traffic_by_minute").then(|| "older".to_owned());
        rebuild_redefined(&loaded(&older), &batches).await;
        batches.drain().await;
        let runs = batches.history().list(10).await.unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].trigger, Trigger::Redefinition);
    }

    #[tokio::test]
    async fn a_failing_task_names_itself() {
        let mut tasks = Tasks::new(CancellationToken::new());
        tasks.spawn("generator", async { Err(Error::GenNeedsBroker) });
        let error = tasks.join().await.unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("generator failed: `gen` needs a broker"),
            "{error}"
        );
    }
}
