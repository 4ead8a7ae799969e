//! The dashboard in a real browser: `lambdaflow demo` runs, a batch run is triggered, and
//! headless Chromium, driven through chromedriver's WebDriver API, loads `GET /` and must show
//! a chart with data points for every view, the batch/speed seam, the batch run and the
//! quarantine; the latest run's task graph; then a query typed into the SQL workbench and run shows its rows (and a refused
//! rollup its error), a table opened from the catalog shows its rows, a view's filter picker
//! narrows its chart, and a longer time window coarsens a chart's buckets. A screenshot is
//! kept in `target/test-artifacts/dashboard.png`.
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

/// One WebDriver session's page.
struct Page<'a> {
    http: &'a Http,
    session: &'a str,
}

impl Page<'_> {
    async fn element(&self, css: &str) -> String {
        let (status, found) = self
            .http
            .post(
                &format!("{}/element", self.session),
                &json!({"using": "css selector", "value": css}),
            )
            .await;
        assert_eq!(status, 200, "{css}: {found}");
        found["value"]
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{css}: {found}"))
            .to_owned()
    }

    async fn click(&self, css: &str) {
        let element = self.element(css).await;
        let (status, reply) = self
            .http
            .post(
                &format!("{}/element/{element}/click", self.session),
                &json!({}),
            )
            .await;
        assert_eq!(status, 200, "clicking {css}: {reply}");
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.element(css).await;
        let url = format!("{}/element/{element}", self.session);
        let (status, reply) = self.http.post(&format!("{url}/clear"), &json!({})).await;
        assert_eq!(status, 200, "clearing {css}: {reply}");
        let (status, reply) = self
            .http
            .post(&format!("{url}/value"), &json!({ "text": text }))
            .await;
        assert_eq!(status, 200, "typing into {css}: {reply}");
    }

    /// Runs `script` until `done` holds of what it returns (30 s at most), and returns that;
    /// on time out, says what it returned last and what the page's error line said.
    async fn wait_for(&self, what: &str, done: impl Fn(&Value) -> bool, script: &str) -> Value {
        let run = |script: &str| {
            let body = json!({ "script": script, "args": [] });
            async move {
                let url = format!("{}/execute/sync", self.session);
                self.http.post(&url, &body).await.1["value"].clone()
            }
        };
        let started = Instant::now();
        loop {
            let value = run(script).await;
            if done(&value) {
                return value;
            }
            if started.elapsed() > Duration::from_secs(30) {
                let error = run(r#"return document.getElementById("error").textContent;"#).await;
                panic!("timed out waiting for {what}: last {value}, page error {error}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

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
    let _demo = crate::demo::start(dir.path(), &logs, &format!("127.0.0.1:{port}"), 300);
    let http = Http(reqwest::Client::new());
    crate::demo::ready(&http.0, &base).await;
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

    let page = Page {
        http: &http,
        session: &session,
    };
    // The latest run's graph: a box per task (two sources' retention, five views' recompute
    // and publish, vacuum), in its state.
    let dag = page
        .wait_for(
            "the latest run's tasks",
            |d| d["tasks"].as_u64() == Some(13),
            r##"const tasks = [...document.querySelectorAll("#dag g.task")];
               return { tasks: tasks.length, states: tasks.map((t) => t.dataset.state),
                        edges: document.querySelectorAll("#dag path").length };"##,
        )
        .await;
    assert_eq!(dag["edges"], 15, "{dag}");
    assert!(
        dag["states"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| ["succeeded", "running", "pending"].contains(&s.as_str().unwrap())),
        "{dag}"
    );
    // The SQL workbench: a query typed and run shows its rows and offers them as CSV.
    page.type_into(
        "#sql-text",
        "SELECT country, sum(orders) AS orders FROM sales_by_country GROUP BY country ORDER BY country",
    )
    .await;
    page.click("#sql-run").await;
    let table = r##"
        const rows = [...document.querySelectorAll("#sql-table tr")];
        return {
            header: rows.length ? [...rows[0].querySelectorAll("th")].map((c) => c.textContent) : [],
            rows: rows.length - 1,
            csv: !document.getElementById("sql-csv").hidden,
            error: document.getElementById("sql-error").textContent,
            text: document.getElementById("sql-text").value,
        };"##;
    let result = page
        .wait_for(
            "the workbench's rows",
            |r| r["rows"].as_u64() > Some(0),
            table,
        )
        .await;
    assert_eq!(result["header"], json!(["country", "orders"]), "{result}");
    assert_eq!(result["csv"], true, "{result}");
    // CSV cells: formula-like text is quoted as text, numbers sent as text are left alone.
    let cells = page
        .wait_for(
            "CSV cells",
            Value::is_array,
            r#"return ["=cmd()", "-12.5", "+3e2", "-x", "plain, with comma", -4].map(csvCell);"#,
        )
        .await;
    assert_eq!(
        cells,
        json!([
            "'=cmd()",
            "-12.5",
            "+3e2",
            "'-x",
            "\"plain, with comma\"",
            "-4"
        ])
    );
    // A rollup that would lie is refused, and the page says why.
    page.type_into("#sql-text", "SELECT sum(buyers) FROM sales_by_country")
        .await;
    page.click("#sql-run").await;
    let refused = page
        .wait_for(
            "the workbench's error",
            |r| r["error"].as_str().is_some_and(|e| !e.is_empty()),
            table,
        )
        .await;
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("inexact_rollup"),
        "{refused}"
    );
    // The table browser: a name from the catalog opens that table in the workbench.
    page.wait_for(
        "the catalog",
        |found| found == &json!(true),
        r#"return !!document.querySelector('#tables a[data-table="raw_events"]');"#,
    )
    .await;
    page.click(r#"#tables a[data-table="raw_events"]"#).await;
    let opened = page
        .wait_for(
            "raw_events' rows",
            |r| r["rows"].as_u64() > Some(0) && r["error"] == "",
            table,
        )
        .await;
    assert_eq!(opened["text"], r#"SELECT * FROM "raw_events" LIMIT 100"#);
    // The filter picker: one country's events alone.
    page.wait_for(
        "the filter picker's values",
        |found| found == &json!(true),
        r#"return !!document.querySelector('select.filter[data-view="sales_by_country"] option[data-dimension="country"]');"#,
    )
    .await;
    page.click(r#"select.filter[data-view="sales_by_country"] option[data-dimension="country"]"#)
        .await;
    let chart = |view: &str| {
        format!(
            r#"const chart = document.querySelector('svg.chart[data-view="{view}"]');
               return {{ meta: document.getElementById("meta-{view}").textContent,
                         points: Number(chart.dataset.points) }};"#
        )
    };
    page.wait_for(
        "the filtered chart",
        |r| {
            r["meta"]
                .as_str()
                .is_some_and(|m| m.contains("· country = "))
                && r["points"].as_u64() > Some(0)
        },
        &chart("sales_by_country"),
    )
    .await;
    // A week of a per-minute view is drawn by the hour.
    page.click(r#"#range option[value="604800000"]"#).await;
    page.wait_for(
        "hourly buckets for a week",
        |r| r["meta"].as_str().is_some_and(|m| m.ends_with("by hour")),
        &chart("traffic_by_minute"),
    )
    .await;

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
