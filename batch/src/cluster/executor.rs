//! `lambdaflow cluster executor`: Ballista's executor, decoding tasks with the sketch
//! functions and reading the lake through its object stores.

use std::net::SocketAddr;
use std::sync::Arc;

use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::SessionConfig;

use super::stores::LakeStores;
use crate::error::{Error, Result};

/// An executor's settings.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// The scheduler's `host:port`.
    pub scheduler: String,
    /// Tasks run at once.
    pub slots: usize,
    /// Where the executor serves its results (Arrow Flight); its task service listens on the
    /// next port.
    pub bind: SocketAddr,
    /// The host the scheduler and the other executors reach it by (the bind address's when
    /// `None`).
    pub advertise: Option<String>,
}

/// Runs an executor until the process stops: it registers with the scheduler, runs the tasks
/// it is given and serves their output to the next stage and to the client.
pub async fn run(options: ExecutorOptions) -> Result<()> {
    let failed = |message: String| Error::Cluster {
        address: options.scheduler.clone(),
        message,
    };
    let (host, port) = options
        .scheduler
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
        .ok_or_else(|| failed("not of the form host:port".into()))?;
    let grpc_port = options
        .bind
        .port()
        .checked_add(1)
        .ok_or_else(|| failed(format!("no port after {}", options.bind.port())))?;
    let config = ExecutorProcessConfig {
        bind_host: options.bind.ip().to_string(),
        external_host: Some(
            options
                .advertise
                .clone()
                .unwrap_or_else(|| options.bind.ip().to_string()),
        ),
        port: options.bind.port(),
        grpc_port,
        scheduler_host: host,
        scheduler_port: port,
        vcores: options.slots.max(1),
        executor_heartbeat_interval_seconds: 5,
        // The scheduler has an executor delete a job's shuffle files 5 minutes after the job
        // ends; files a scheduler never asked to delete (it restarted meanwhile) are collected
        // hourly once a day old, and all of them when the executor stops.
        job_data_clean_up_interval_seconds: 3600,
        job_data_ttl_seconds: 86_400,
        override_function_registry: Some(Arc::new(super::functions())),
        override_runtime_producer: Some(Arc::new(runtime)),
        ..ExecutorProcessConfig::default()
    };
    tracing::info!(bind = %options.bind, scheduler = %options.scheduler, slots = config.vcores, "Ballista executor starting");
    start_executor_process(Arc::new(config))
        .await
        .map_err(|e| failed(e.to_string()))
}

fn runtime(
    _: &SessionConfig,
) -> datafusion::error::Result<Arc<datafusion::execution::runtime_env::RuntimeEnv>> {
    RuntimeEnvBuilder::new()
        .with_object_store_registry(Arc::new(LakeStores::default()))
        .build_arc()
}
