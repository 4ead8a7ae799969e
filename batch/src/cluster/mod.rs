//! Batch views on an Apache DataFusion Ballista cluster (`batch.engine =
//! "ballista://host:port"`).
//!
//! A view's plan is the same DataFrame as in a local run ([`crate::views::recompute`]); two
//! things differ. The session is a Ballista client, which ships the logical plan to the
//! scheduler and reads the result back, and the raw scan is a plain Parquet listing of the
//! pinned raw version's files for the dates the run computes ([`scan`]): delta-rs has no codec
//! that ships its Delta scan to another process, and a listing of exactly the files that version
//! references leaves out whatever a concurrent commit or a killed run put beside them.
//!
//! The scheduler and the executors are the `lambdaflow` binary itself ([`scheduler`],
//! [`executor`]), so the sketch functions ([`crate::views::sketch_udf`]) are known under the same
//! names to the client, to the scheduler (which plans the stages) and to every executor (which
//! decodes and runs the tasks), and every process reaches the lake through the same object
//! stores ([`stores`]) with the same settings (`AWS_*` for S3).

pub mod executor;
pub mod scan;
pub mod scheduler;
mod stores;

use std::sync::Arc;
use std::time::Duration;

use ballista::prelude::{SessionConfigExt, SessionContextExt};
use ballista_core::serde::protobuf::GetJobMetricsParams;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::physical_plan::{ExecutionPlan, collect};
use datafusion::prelude::{DataFrame, SessionConfig, SessionContext};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::views::sketch_udf;

/// How long a run waits for the scheduler to answer before it gives up, at its start.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The shape of one view's job on the cluster, from the scheduler: its stages and the tasks
/// (one per partition of a stage) they ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobShape {
    /// Stages of the job.
    pub stages: u64,
    /// Tasks over all stages.
    pub tasks: u64,
}

/// A client of the scheduler at `address` (`host:port`).
#[derive(Debug, Clone)]
pub struct Cluster {
    address: String,
}

impl Cluster {
    /// A client of the scheduler at `address` (`host:port`); nothing is connected yet.
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
        }
    }

    /// The scheduler's `host:port`.
    pub fn address(&self) -> &str {
        &self.address
    }

    fn unreachable(&self, message: impl ToString) -> Error {
        Error::Cluster {
            address: self.address.clone(),
            message: message.to_string(),
        }
    }

    async fn scheduler(&self) -> Result<SchedulerGrpcClient<tonic::transport::Channel>> {
        let endpoint = format!("http://{}", self.address);
        match tokio::time::timeout(CONNECT_TIMEOUT, SchedulerGrpcClient::connect(endpoint)).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => {
                Err(self.unreachable(format!("{e}: {:?}", std::error::Error::source(&e))))
            }
            Err(_) => {
                Err(self.unreachable(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs())))
            }
        }
    }

    /// Makes sure the scheduler answers, before a run takes the lock: a cluster that is down
    /// fails the run at once, naming the address, with nothing left behind.
    pub async fn check(&self) -> Result<()> {
        self.scheduler().await.map(drop)
    }

    /// A session whose queries run on the cluster, with the sketch functions registered.
    pub async fn session(&self) -> Result<SessionContext> {
        let runtime = RuntimeEnvBuilder::new()
            .with_object_store_registry(Arc::new(stores::LakeStores::default()))
            .build_arc()
            .map_err(|e| self.unreachable(e))?;
        let mut state = SessionStateBuilder::new()
            .with_default_features()
            .with_config(SessionConfig::new_with_ballista())
            .with_runtime_env(runtime)
            .build();
        sketch_udf::register(&mut state).map_err(|e| self.unreachable(e))?;
        SessionContext::remote_with_state(&format!("df://{}", self.address), state)
            .await
            .map_err(|e| self.unreachable(e))
    }

    /// Runs `frame` on the cluster and brings its rows back, with the job's shape.
    pub async fn collect(
        &self,
        ctx: &SessionContext,
        frame: DataFrame,
    ) -> datafusion::error::Result<(Vec<RecordBatch>, JobShape)> {
        let plan = frame.create_physical_plan().await?;
        let batches = collect(plan.clone(), ctx.task_ctx()).await?;
        let shape = match job_id(&plan) {
            Some(job) => self.shape(&job).await.unwrap_or_else(|e| {
                tracing::warn!(scheduler = %self.address, job = %job, error = %e, "the job's stages could not be read");
                JobShape::default()
            }),
            None => JobShape::default(),
        };
        Ok((batches, shape))
    }

    async fn shape(&self, job: &str) -> Result<JobShape> {
        let metrics = self
            .scheduler()
            .await?
            .get_job_metrics(GetJobMetricsParams {
                job_id: job.to_owned(),
            })
            .await
            .map_err(|e| self.unreachable(e.message()))?
            .into_inner();
        Ok(JobShape {
            stages: metrics.stages.len() as u64,
            tasks: metrics.stages.iter().map(|s| u64::from(s.partitions)).sum(),
        })
    }
}

/// The id of the Ballista job a plan ran as, if it ran on a cluster.
fn job_id(plan: &Arc<dyn ExecutionPlan>) -> Option<String> {
    use ballista_core::execution_plans::DistributedQueryExec;
    use datafusion_proto::protobuf::LogicalPlanNode;
    if let Some(exec) = plan.downcast_ref::<DistributedQueryExec<LogicalPlanNode>>() {
        return exec.job_id().map(|id| id.to_string());
    }
    plan.children().into_iter().find_map(job_id)
}

/// The functions every process of the cluster must know by name: DataFusion's own and the
/// sketch functions.
fn functions() -> ballista_core::registry::BallistaFunctionRegistry {
    let mut registry = ballista_core::registry::BallistaFunctionRegistry::default();
    for udaf in [sketch_udf::hll_sketch(), sketch_udf::hll_merge()] {
        registry
            .aggregate_functions
            .insert(udaf.name().to_owned(), Arc::new(udaf));
    }
    let estimate = sketch_udf::hll_estimate();
    registry
        .scalar_functions
        .insert(estimate.name().to_owned(), Arc::new(estimate));
    registry
}
