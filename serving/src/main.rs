//! `lambdaflow`: the command line of the whole platform (SPEC §5).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use clap::{Parser, Subcommand};
use lambdaflow_common::sample::Mix;
use lambdaflow_serving::commands::{self, DemoOptions};
use lambdaflow_serving::generate::GenOptions;
use lambdaflow_serving::shutdown;
use tokio_util::sync::CancellationToken;

/// Exact, fresh analytics over event streams: Kafka → Delta master dataset → batch views ⊕
/// speed layer → one API.
#[derive(Debug, Parser)]
#[command(name = "lambdaflow", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Everything in one process: embedded broker, archiver, API and a generator of shop events.
    Demo {
        /// Keep the lake here instead of in a temporary directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// API listen address (default 127.0.0.1:8080).
        #[arg(long)]
        listen: Option<String>,
        /// Generated events per second.
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
    },
    /// Archiver, serving and batch scheduler in one process (single node).
    Run(ConfigArg),
    /// Kafka → raw and quarantine Delta tables, exactly once.
    Archive(ConfigArg),
    /// Speed layer and HTTP API.
    Serve(ConfigArg),
    /// The batch layer.
    Batch {
        #[command(subcommand)]
        command: BatchCommand,
    },
    /// Produce synthetic shop events to Kafka.
    Gen {
        #[command(flatten)]
        config: ConfigArg,
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
    },
    /// Validate a config file and print its views.
    Check(ConfigArg),
}

#[derive(Debug, Subcommand)]
enum BatchCommand {
    /// One batch run now; exit 0 on success.
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Recompute every date of every view, not only the dates with new raw rows.
        #[arg(long)]
        full: bool,
    },
    /// Batch runs on the configured cron schedule until stopped.
    Schedule(ConfigArg),
}

#[derive(Debug, clap::Args)]
struct ConfigArg {
    /// The TOML config file.
    #[arg(long, short)]
    config: PathBuf,
}

impl ConfigArg {
    fn load(&self) -> Result<Arc<lambdaflow_common::config::Config>> {
        Ok(Arc::new(commands::load_config(&self.config)?))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("LAMBDAFLOW_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,buoyant_kernel=off,deltalake_core::writer::stats=error,lambdaflow=info,lambdaflow_serving=info,lambdaflow_batch=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> Result<()> {
    let token = CancellationToken::new();
    let _signals = shutdown::cancel_on_signal(token.clone());
    match command {
        Command::Demo {
            data_dir,
            listen,
            rate,
        } => {
            commands::demo(
                DemoOptions {
                    data_dir,
                    listen,
                    rate,
                },
                token,
            )
            .await
        }
        Command::Run(c) => commands::run(c.load()?, token, None).await,
        Command::Archive(c) => commands::archive(c.load()?, token).await,
        Command::Serve(c) => commands::serve(c.load()?, token).await,
        Command::Batch {
            command: BatchCommand::Run { config, full },
        } => {
            let record = commands::batch_run(config.load()?, full, token).await?;
            println!("{}", serde_json::to_string_pretty(&record)?);
            Ok(())
        }
        Command::Batch {
            command: BatchCommand::Schedule(c),
        } => commands::batch_schedule(c.load()?, token).await,
        Command::Gen {
            config,
            count,
            rate,
            duplicates,
            late,
            invalid,
            seed,
        } => {
            let config = config.load()?;
            let options = GenOptions {
                count: Some(count),
                rate,
                mix: Mix {
                    duplicates,
                    late,
                    invalid,
                },
                seed,
            };
            let acked = commands::gen_events(&config, options, token).await?;
            println!("produced {acked} events to {}", config.kafka.topic);
            Ok(())
        }
        Command::Check(c) => {
            print!("{}", commands::check(&*c.load()?));
            Ok(())
        }
    }
}
