//! `lambdaflow`: the command line of the whole platform.

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use lambdaflow_batch::cluster::executor::ExecutorOptions;
use lambdaflow_common::sample::{Mix, Shape};
use lambdaflow_serving::cli::{BatchCommand, Cli, ClusterCommand, Command, LakeCommand};
use lambdaflow_serving::commands::{self, DemoOptions};
use lambdaflow_serving::generate::GenOptions;
use lambdaflow_serving::import::{self, ImportOptions};
use lambdaflow_serving::shutdown;
use tokio_util::sync::CancellationToken;

/// jemalloc returns freed memory to the system within seconds. glibc's malloc keeps what the
/// bursts of Delta log replays and batch runs free in its per-thread arenas, so a long-running
/// process grew by tens of megabytes a minute with a flat live heap (measured with heaptrack).
/// jemalloc is also `malloc` for the C code linked in (the workspace builds it unprefixed):
/// librdkafka's threads left glibc's arenas holding 2 MB more every minute with 29 MB in use
/// (glibc's `malloc_stats` in a soak).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("LAMBDAFLOW_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,buoyant_kernel=off,deltalake_core::writer::stats=error,lambdaflow=info,lambdaflow_serving=info,lambdaflow_batch=info,ballista_scheduler=info,ballista_executor=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    // jemalloc's own threads return freed pages on time, also from the arenas of threads that
    // sit idle between batch runs; without them an arena purges only when it allocates again.
    #[cfg(not(target_env = "msvc"))]
    if let Err(error) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!(%error, "jemalloc's background threads could not be started");
    }
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
    // Failpoints exist only in test builds (the `faults` feature): a production binary
    // ignores `LAMBDAFLOW_FAULTS`.
    #[cfg(feature = "faults")]
    lambdaflow_batch::faults::install_from_env()?;
    let token = CancellationToken::new();
    let _signals = shutdown::cancel_on_signal(token.clone());
    match command {
        Command::Demo {
            data_dir,
            listen,
            pg_listen,
            rate,
        } => {
            let options = DemoOptions {
                data_dir,
                listen,
                pg_listen,
                rate,
            };
            Ok(commands::demo(options, token).await?)
        }
        Command::Run(r) => {
            let config = r.config.load()?;
            if r.accept_topic_reset {
                commands::accept_topic_reset(config.clone()).await?;
            }
            Ok(commands::run(config, token, Vec::new()).await?)
        }
        Command::Archive(a) if a.accept_topic_reset => {
            Ok(commands::accept_topic_reset(a.worker.config.load()?).await?)
        }
        Command::Archive(a) => {
            let w = a.worker;
            Ok(commands::archive(w.config.load()?, w.metrics_listen, token).await?)
        }
        Command::Serve(c) => Ok(commands::serve(c.load()?, token).await?),
        Command::Batch {
            command: BatchCommand::Run { config, full },
        } => {
            let record = commands::batch_run(config.load()?, full, token).await?;
            println!("{}", serde_json::to_string_pretty(&record)?);
            Ok(())
        }
        Command::Batch {
            command: BatchCommand::Schedule(w),
        } => Ok(commands::batch_schedule(w.config.load()?, w.metrics_listen, token).await?),
        Command::Gen {
            config,
            source,
            shape,
            count,
            rate,
            duplicates,
            late,
            invalid,
            seed,
            heartbeat,
        } => {
            let config = config.load()?;
            let options = GenOptions {
                shape: Shape::named(&shape).expect("clap allows only the known shapes"),
                count: Some(count),
                rate,
                mix: Mix {
                    duplicates,
                    late,
                    invalid,
                },
                seed,
            };
            let (topic, acked) = commands::gen_events(
                &config,
                source.as_deref(),
                options,
                heartbeat.as_deref(),
                token,
            )
            .await?;
            println!("produced {acked} events to {topic}");
            Ok(())
        }
        Command::Import {
            config,
            source,
            no_batch,
            paths,
        } => {
            let options = ImportOptions {
                paths: &paths,
                source: source.as_deref(),
                no_batch,
            };
            let imported = import::import(config.load()?, options, token).await?;
            println!("{}", serde_json::to_string_pretty(&imported)?);
            Ok(())
        }
        Command::Check(c) => {
            print!("{}", commands::check(&*c.load()?));
            Ok(())
        }
        Command::Lake { command } => {
            let report = match command {
                LakeCommand::Status(config) => {
                    serde_json::to_string_pretty(&commands::lake_status(&*config.load()?).await?)?
                }
                LakeCommand::Vacuum { config, dry_run } => serde_json::to_string_pretty(
                    &commands::lake_vacuum(&*config.load()?, dry_run).await?,
                )?,
                LakeCommand::Expire { config, dry_run } => serde_json::to_string_pretty(
                    &commands::lake_expire(&*config.load()?, dry_run).await?,
                )?,
            };
            println!("{report}");
            Ok(())
        }
        Command::Cluster { command } => match command {
            ClusterCommand::Scheduler { bind, advertise } => {
                Ok(lambdaflow_batch::cluster::scheduler::run(bind, advertise).await?)
            }
            ClusterCommand::Executor {
                scheduler,
                slots,
                bind,
                advertise,
            } => {
                let slots = slots
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
                let options = ExecutorOptions {
                    scheduler,
                    slots,
                    bind,
                    advertise,
                };
                Ok(lambdaflow_batch::cluster::executor::run(options).await?)
            }
        },
    }
}
