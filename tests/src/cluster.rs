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
    scheduler: Process,
    /// The executors, `executor-0` and `executor-1` in the logs; a test may kill one.
    pub executors: Vec<Process>,
}

impl BallistaCluster {
    /// Starts the cluster from `binary` with its logs in `logs` and waits until both
    /// executors have registered with the scheduler. A process that exits before (a port taken
    /// by another test between its pick and its bind) has the cluster started again on other
    /// ports, up to three times.
    pub async fn start(binary: &str, logs: &Path) -> Self {
        Self::start_with_env(binary, logs, &[]).await
    }

    /// [`Self::start`] with `env` set in every process of the cluster: the `AWS_*` settings
    /// of a lake in a bucket, read by the executors as by every other process.
    pub async fn start_with_env(binary: &str, logs: &Path, env: &[(&str, &str)]) -> Self {
        for _ in 0..3 {
            // Logs are appended to: only what this attempt writes counts.
            let seen: Vec<u64> = (0..2)
                .map(|i| executor_log(logs, i).metadata().map_or(0, |m| m.len()))
                .collect();
            let mut cluster = Self::spawn(binary, logs, env);
            if cluster.registered(logs, &seen).await {
                return cluster;
            }
        }
        panic!(
            "the cluster did not start three times over; see {}",
            logs.display()
        );
    }

    fn spawn(binary: &str, logs: &Path, env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let scheduler = Process::start(
            "scheduler",
            Command::new(binary).envs(env.iter().copied()).args([
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
                    Command::new(binary).envs(env.iter().copied()).args([
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
        Self {
            engine: format!("ballista://127.0.0.1:{port}"),
            scheduler,
            executors,
        }
    }

    /// Waits until both executors have registered, as their logs say: `false` as soon as a
    /// process of the cluster has exited.
    async fn registered(&mut self, logs: &Path, seen: &[u64]) -> bool {
        let started = Instant::now();
        loop {
            let registered = (0..2)
                .filter(|&i| {
                    std::fs::read(executor_log(logs, i)).is_ok_and(|log| {
                        String::from_utf8_lossy(&log[seen[i] as usize..])
                            .contains("registration succeed")
                    })
                })
                .count();
            if registered == 2 {
                return true;
            }
            if !self.scheduler.is_running() || !self.executors.iter_mut().all(Process::is_running) {
                return false;
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

fn executor_log(logs: &Path, i: usize) -> std::path::PathBuf {
    logs.join(format!("executor-{i}.log"))
}
