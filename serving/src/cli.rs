//! The command line of the whole platform, parsed by clap. In the library so that
//! the deploy tests parse the commands of `deploy/docker-compose.yml` with the real parser.

use std::path::PathBuf;
use std::sync::Arc;

use crate::error::Result;
use clap::{Parser, Subcommand};

/// Exact, fresh analytics over event streams: Kafka → Delta master dataset → batch views ⊕
/// speed layer → one API.
#[derive(Debug, Parser)]
#[command(name = "lambdaflow", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Everything in one process: embedded broker, archiver, API and a generator per source.
    Demo {
        /// Keep the lake here instead of in a temporary directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// API listen address (default 127.0.0.1:8080). Beyond loopback, with no auth
        /// configured, the demo makes a token with every scope and prints it.
        #[arg(long)]
        listen: Option<String>,
        /// Postgres wire protocol listen address (default 127.0.0.1:5433, or a free loopback
        /// port when that one is taken).
        #[arg(long)]
        pg_listen: Option<String>,
        /// Generated events per second, to each source.
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
    },
    /// Archiver, serving and batch scheduler in one process (single node).
    Run(RunArgs),
    /// Kafka → raw and quarantine Delta tables, exactly once.
    Archive(ArchiveArgs),
    /// Speed layer and HTTP API.
    Serve(ConfigArg),
    /// The batch layer.
    Batch {
        #[command(subcommand)]
        command: BatchCommand,
    },
    /// Produce synthetic events to a source's topic.
    Gen {
        #[command(flatten)]
        config: ConfigArg,
        /// The source whose topic receives the events (needed when the config has several).
        #[arg(long)]
        source: Option<String>,
        /// The events' shape: `shop` (the demo's `events` source) or `pages` (its `pageviews`).
        #[arg(long, default_value = "shop", value_parser = ["shop", "pages"])]
        shape: String,
        /// How many events.
        #[arg(long)]
        count: u64,
        /// Events per second (default: as fast as the broker takes them).
        #[arg(long)]
        rate: Option<f64>,
        /// Fraction of events sent twice.
        #[arg(long, default_value_t = 0.0)]
        duplicates: f64,
        /// Fraction of events hours to days late.
        #[arg(long, default_value_t = 0.0)]
        late: f64,
        /// Fraction of invalid events.
        #[arg(long, default_value_t = 0.0)]
        invalid: f64,
        /// Seed for reproducible streams.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// A file the count of events acknowledged so far is written to, at most every second
        /// while it grows: its age tells a producing generator from a stuck one (a container
        /// healthcheck).
        #[arg(long)]
        heartbeat: Option<std::path::PathBuf>,
    },
    /// Backfill from files: NDJSON, CSV (header row) or Parquet records validated into a
    /// source's raw and quarantine tables exactly once per file content, then a batch run.
    Import {
        #[command(flatten)]
        config: ConfigArg,
        /// The source the records are events of (needed when the config has several).
        #[arg(long)]
        source: Option<String>,
        /// Do not start a batch run once the files are in (imported events count from the
        /// next one).
        #[arg(long)]
        no_batch: bool,
        /// Files, directories, globs (quote them) or `s3://bucket/prefix`.
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Validate a config file and print its views.
    Check(ConfigArg),
    /// The lake's lifecycle: storage status, vacuum, retention.
    Lake {
        #[command(subcommand)]
        command: LakeCommand,
    },
    /// The processes of an Apache DataFusion Ballista cluster that runs the batch views
    /// (`batch.engine = "ballista://host:port"`).
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum ClusterCommand {
    /// The scheduler: plans each view's job into stages and hands their tasks to executors.
    Scheduler {
        /// Listen address, for batch runs and executors.
        #[arg(long, default_value = "127.0.0.1:50050")]
        bind: std::net::SocketAddr,
        /// The host name executors and clients reach the scheduler by (default: the bind
        /// address).
        #[arg(long)]
        advertise: Option<String>,
    },
    /// An executor: runs the tasks it is given and serves their output; it reads the lake
    /// with the same settings as the other commands (`AWS_*` for S3).
    Executor {
        /// The scheduler's `host:port`.
        #[arg(long)]
        scheduler: String,
        /// Tasks run at once (default: the cores).
        #[arg(long)]
        slots: Option<usize>,
        /// Listen address of its result service; its task service listens on the next port.
        #[arg(long, default_value = "127.0.0.1:50051")]
        bind: std::net::SocketAddr,
        /// The host name the scheduler and the other executors reach it by (default: the bind
        /// address).
        #[arg(long)]
        advertise: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum LakeCommand {
    /// Per table: version, live files and bytes, bytes on storage, dates held, last vacuum and
    /// next expiry.
    Status(ConfigArg),
    /// Delete the files and log entries no reader needs any more, as every batch run does
    /// last; prints what was deleted.
    Vacuum {
        #[command(flatten)]
        config: ConfigArg,
        /// List the data files that would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete the date partitions older than their table's retention, as every batch run does
    /// first; prints what expired.
    Expire {
        #[command(flatten)]
        config: ConfigArg,
        /// List what would expire; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum BatchCommand {
    /// One batch run now; exit 0 on success.
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Recompute every date of every view, not only the dates with new raw rows.
        #[arg(long)]
        full: bool,
    },
    /// Batch runs on the configured cron schedule until stopped.
    Schedule(WorkerArgs),
}

/// A process without the API: its config, and where to serve `/healthz` and `/metrics`.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// The config.
    #[command(flatten)]
    pub config: ConfigArg,
    /// Serve `/healthz` and `/metrics` (Prometheus) on this address.
    #[arg(long)]
    pub metrics_listen: Option<String>,
}

/// `lambdaflow run`'s arguments.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The config.
    #[command(flatten)]
    pub config: ConfigArg,
    /// Before starting, record in the lake that the partitions whose broker head is below the
    /// offsets the lake holds start a new epoch (as `archive --accept-topic-reset`).
    #[arg(long)]
    pub accept_topic_reset: bool,
}

/// `lambdaflow archive`'s arguments.
#[derive(Debug, clap::Args)]
pub struct ArchiveArgs {
    /// The config and the metrics address.
    #[command(flatten)]
    pub worker: WorkerArgs,
    /// Record in the lake that the partitions whose broker head is below the offsets the lake
    /// holds (a recreated topic, lost data) start a new epoch from offset 0, then exit. A
    /// running archiver resumes those partitions by itself.
    #[arg(long)]
    pub accept_topic_reset: bool,
}

#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// The TOML config file.
    #[arg(long, short)]
    pub config: PathBuf,
}

impl ConfigArg {
    /// Reads and checks the config file.
    pub fn load(&self) -> Result<Arc<lambdaflow_common::config::Config>> {
        Ok(Arc::new(crate::commands::load_config(&self.config)?))
    }
}
