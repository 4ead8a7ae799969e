//! An Apache DataFusion Ballista cluster started as users start it: one `lambdaflow cluster
//! scheduler` and two `lambdaflow cluster executor --slots 1` processes on localhost, for the
//! tests that run the batch layer on it.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{Process, free_port};

/// A scheduler and two one-slot executors, stopped when dropped.
pub struct BallistaCluster {
    /// The `batch.engine` that runs on this cluster: `ballista://127.0.0.1:PORT`.
    pub engine: String,
    _scheduler: Process,
    /// The executors, `executor-0` and `executor-1` in the logs; a test may kill one.
    pub executors: Vec<Process>,
}

impl BallistaCluster {
    /// Starts the cluster from `binary` with its logs in `logs` and waits until both
    /// executors have registered with the scheduler.
    pub async fn start(binary: &str, logs: &Path) -> Self {
        let port = free_port();
        let scheduler = Process::start(
            "scheduler",
            Command::new(binary).args([
                "cluster",
                "scheduler",
                "--bind",
                &format!("127.0.0.1:{port}"),
            ]),
            logs,
        );
        let executors = (0..2)
            .map(|i| {
                // Its task service takes the port after the one it serves results on.
                let bind = loop {
                    let p = free_port();
                    if std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
                        break p;
                    }
                };
                Process::start(
                    &format!("executor-{i}"),
                    Command::new(binary).args([
                        "cluster",
                        "executor",
                        "--scheduler",
                        &format!("127.0.0.1:{port}"),
                        "--slots",
                        "1",
                        "--bind",
                        &format!("127.0.0.1:{bind}"),
                    ]),
                    logs,
                )
            })
            .collect();
        let cluster = Self {
            engine: format!("ballista://127.0.0.1:{port}"),
            _scheduler: scheduler,
            executors,
        };
        cluster.wait_for_executors(logs).await;
        cluster
    }

    /// Waits until both executors have registered, as their logs say.
    async fn wait_for_executors(&self, logs: &Path) {
        let started = Instant::now();
        loop {
            let registered = (0..2)
                .filter(|i| {
                    std::fs::read_to_string(logs.join(format!("executor-{i}.log")))
                        .is_ok_and(|log| log.contains("registration succeed"))
                })
                .count();
            if registered == 2 {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the executors did not register with the scheduler; see {}",
                logs.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
