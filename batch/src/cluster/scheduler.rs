//! `lambdaflow cluster scheduler`: Ballista's scheduler, with the sketch functions in the
//! sessions it plans with and the lake's object stores in their runtime.

use std::net::SocketAddr;
use std::sync::Arc;

use ballista_core::utils::default_session_builder;
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::start_server;
use datafusion::execution::SessionState;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::SessionConfig;

use super::stores::LakeStores;
use crate::error::{Error, Result};
use crate::views::sketch_udf;

/// Serves the scheduler on `bind` until the process stops. `advertise` is the host executors
/// and clients are told to reach it by (the bind address's when `None`).
pub async fn run(bind: SocketAddr, advertise: Option<String>) -> Result<()> {
    let failed = |message: String| Error::Cluster {
        address: bind.to_string(),
        message,
    };
    let mut config = SchedulerConfig::default()
        .with_hostname(advertise.unwrap_or_else(|| bind.ip().to_string()))
        .with_port(bind.port())
        .with_override_session_builder(Arc::new(session));
    config.bind_host = bind.ip().to_string();
    // An executor that stops sending heartbeats (every 5 s) is given up after 20 s and its
    // tasks run elsewhere, instead of Ballista's default 3 minutes.
    config.executor_timeout_seconds = 20;
    config.expire_dead_executor_interval_seconds = 5;
    config.no_executors_grace_period_seconds = 20;
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(|e| failed(e.to_string()))?;
    tracing::info!(%bind, "Ballista scheduler listening");
    start_server(cluster, bind, Arc::new(config))
        .await
        .map_err(|e| failed(e.to_string()))
}

/// Ballista's default session, with the sketch functions and the lake's object stores.
fn session(config: SessionConfig) -> datafusion::error::Result<SessionState> {
    let state = default_session_builder(config)?;
    let runtime = RuntimeEnvBuilder::new()
        .with_object_store_registry(Arc::new(LakeStores::default()))
        .build_arc()?;
    let mut state = SessionStateBuilder::new_from_existing(state)
        .with_runtime_env(runtime)
        .build();
    sketch_udf::register(&mut state)?;
    Ok(state)
}
