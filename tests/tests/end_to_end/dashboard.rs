//! The dashboard in a real browser: `lambdaflow demo` runs, a batch run is triggered, and
//! headless Chromium, driven through chromedriver's WebDriver API, loads `GET /` and must show
//! a chart with data points for every view, the batch/speed seam, the batch run and the
//! quarantine. A screenshot is kept in `target/test-artifacts/dashboard.png`.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use lambdaflow_tests::{Process, free_port, scratch_dir};
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

struct Http(reqwest::Client);

impl Http {
    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        match request.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let body = r.bytes().await.unwrap_or_default();
                (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
            }
            Err(_) => (0, Value::Null),
        }
    }

    async fn get(&self, url: &str) -> (u16, Value) {
        self.send(self.0.get(url)).await
    }

    async fn post(&self, url: &str, body: &Value) -> (u16, Value) {
        self.send(
            self.0
                .post(url)
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await
    }
}

async fn wait_until<F: Future<Output = Option<T>>, T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> F,
) -> T {
    let started = Instant::now();
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn artifact_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("test-artifacts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_dashboard_charts_every_view_in_chromium() {
    for program in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            std::path::Path::new(program).exists(),
            "{program} is missing: install Debian's chromium and chromium-driver (bash .ci/run does)"
        );
    }
    let dir = scratch_dir();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _demo = Process::start(
        "demo",
        Command::new(env!("CARGO_BIN_EXE_lambdaflow-e2e"))
            .args(["demo", "--rate", "300", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(dir.path().join("data")),
        &logs,
    );
    let http = Http(reqwest::Client::new());
    wait_until("the demo to be ready", Duration::from_secs(90), || async {
        (http.get(&format!("{base}/readyz")).await.0 == 200).then_some(())
    })
    .await;
    // Let the archiver commit a few chunks, then move them to the batch side.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, run) = http
        .post(&format!("{base}/v1/batch/runs"), &json!({}))
        .await;
    assert_eq!(status, 202, "{run}");
    let id = run["id"].as_str().unwrap().to_owned();
    wait_until("the batch run", Duration::from_secs(90), || async {
        let (_, record) = http.get(&format!("{base}/v1/batch/runs/{id}")).await;
        assert_ne!(record["status"], "failed", "{record}");
        (record["status"] == "succeeded").then_some(())
    })
    .await;
    wait_until(
        "the views to swap in the batch",
        Duration::from_secs(30),
        || async {
            let (_, view) = http.get(&format!("{base}/v1/views/sales_by_country")).await;
            view["batch_version"].as_u64()
        },
    )
    .await;

    let driver_port = free_port();
    let driver = format!("http://127.0.0.1:{driver_port}");
    let _chromedriver = Process::start(
        "chromedriver",
        Command::new(CHROMEDRIVER).arg(format!("--port={driver_port}")),
        &logs,
    );
    wait_until("chromedriver", Duration::from_secs(30), || async {
        let (_, status) = http.get(&format!("{driver}/status")).await;
        (status["value"]["ready"] == true).then_some(())
    })
    .await;
    let profile = dir.path().join("chromium-profile");
    let (status, session) = http
        .post(
            &format!("{driver}/session"),
            &json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": CHROMIUM,
                    "args": [
                        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync",
                        "--disable-dev-shm-usage", "--window-size=1400,1800",
                        format!("--user-data-dir={}", profile.display()),
                    ]
                }
            }}}),
        )
        .await;
    assert_eq!(status, 200, "{session}");
    let session = format!(
        "{driver}/session/{}",
        session["value"]["sessionId"].as_str().unwrap()
    );
    let (status, reply) = http
        .post(
            &format!("{session}/url"),
            &json!({ "url": format!("{base}/") }),
        )
        .await;
    assert_eq!(status, 200, "{reply}");

    let (_, listed) = http.get(&format!("{base}/v1/views")).await;
    let views = listed["views"].as_array().unwrap().len();
    assert_eq!(views, 5, "{listed}");
    let script = r##"
        const charts = [...document.querySelectorAll("svg.chart")];
        return {
            points: Object.fromEntries(charts.map((c) => [c.dataset.view, Number(c.dataset.points)])),
            seams: charts.filter((c) => c.querySelector("line[stroke-dasharray]")).length,
            runs: document.querySelectorAll("#runs td .badge.succeeded").length,
            quarantined: document.querySelectorAll("#quarantine .badge.reason").length,
            rates: Number(document.getElementById("rate").dataset.samples || 0),
            error: document.getElementById("error").textContent,
        };"##;
    let shown = wait_until(
        "every chart to show data",
        Duration::from_secs(60),
        || async {
            let (_, reply) = http
                .post(
                    &format!("{session}/execute/sync"),
                    &json!({ "script": script, "args": [] }),
                )
                .await;
            let shown = reply["value"].clone();
            let points = shown["points"].as_object()?;
            let ready = points.len() == views
                && points.values().all(|p| p.as_u64().is_some_and(|n| n > 0))
                && shown["seams"].as_u64() >= Some(1)
                && shown["runs"].as_u64() >= Some(1)
                && shown["quarantined"].as_u64() >= Some(1)
                && shown["rates"].as_u64() >= Some(2);
            ready.then_some(shown)
        },
    )
    .await;
    assert_eq!(shown["error"], "", "the page reported an error: {shown}");

    let (status, shot) = http.get(&format!("{session}/screenshot")).await;
    assert_eq!(status, 200);
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["value"].as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let artifacts = artifact_dir();
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::write(artifacts.join("dashboard.png"), &png).unwrap();
    http.send(http.0.delete(&session)).await;
}
