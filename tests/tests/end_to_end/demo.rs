//! `lambdaflow demo` as the tests that drive it through its API start it.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use lambdaflow_tests::Process;

/// The demo (the test build of the binary) on `listen`, each source generating `rate` events
/// per second, its lake under `dir/data` and its output in `logs/demo.log`.
pub fn start(dir: &Path, logs: &Path, listen: &str, rate: u32) -> Process {
    Process::start(
        "demo",
        Command::new(env!("CARGO_BIN_EXE_lambdaflow-e2e"))
            .args(["demo", "--rate", &rate.to_string(), "--listen", listen])
            .args(["--pg-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir.join("data")),
        logs,
    )
}

/// Waits until `base` answers `/readyz` with 200, two minutes at most.
pub async fn ready(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let reply = client.get(format!("{base}/readyz")).send().await;
        if reply.is_ok_and(|r| r.status() == 200) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the demo at {base} never got ready"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
