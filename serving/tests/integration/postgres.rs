//! The SQL over the Postgres wire protocol, driven by real clients: Debian's `psql` and
//! Python's `psycopg` (from `LAMBDAFLOW_PYTHON`, which `bash .ci/run` sets up) against
//! [`lambdaflow_serving::postgres::Server`] on a loopback port, compared with `/v1/sql`.

use std::net::SocketAddr;
use std::time::Duration;

use chrono::DateTime;
use lambdaflow_common::config::Config;
use lambdaflow_kafka::embedded::EmbeddedBroker;
use lambdaflow_serving::http::{self, AppState};
use lambdaflow_serving::postgres;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::guard::{with_certificate, with_tokens};
use crate::http::{GOLDEN_SQL, sql, state_with_data};
use crate::support::{call, state_with};

/// The Postgres listener over `state` on a free loopback port (with TLS when the config has a
/// certificate), until the guard is dropped.
async fn listening(state: AppState) -> (SocketAddr, tokio_util::sync::DropGuard) {
    let tls = http::tls(&state.config)
        .await
        .unwrap()
        .map(|tls| tls.get_inner());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = postgres::Server::new(state, tls).unwrap();
    tokio::spawn(server.serve(listener, shutdown.clone()));
    (addr, shutdown.drop_guard())
}

/// What `program` printed when it ended (its exit status, stdout, stderr), a minute at most.
async fn output(command: &mut Command) -> (bool, String, String) {
    let out = tokio::time::timeout(Duration::from_secs(60), command.kill_on_drop(true).output())
        .await
        .expect("the client ran for a minute")
        .expect("starting the client");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `psql` with no startup file, unaligned rows without headers, fields split by `\x1f`.
fn psql(addr: SocketAddr, password: Option<&str>, command: &str) -> Command {
    psql_with(addr, "disable", password, command)
}

/// [`psql`] with the TLS mode `sslmode`.
fn psql_with(addr: SocketAddr, sslmode: &str, password: Option<&str>, command: &str) -> Command {
    let mut psql = Command::new("psql");
    psql.args([
        "-X",
        "-w",
        "-A",
        "-t",
        "-F",
        "\u{1f}",
        "-v",
        "ON_ERROR_STOP=1",
    ])
    .arg(format!(
        "host={} port={} user=analyst dbname=lambdaflow sslmode={sslmode} connect_timeout=10",
        addr.ip(),
        addr.port()
    ))
    .args(["-c", command])
    .env_remove("PGPASSWORD");
    if let Some(password) = password {
        psql.env("PGPASSWORD", password);
    }
    psql
}

/// Whether the `/v1/sql` JSON cell `want` and psql's text cell `got` are the same value.
fn same_text(want: &Value, got: &str) -> bool {
    match want {
        Value::Null => got.is_empty(),
        Value::Bool(b) => got == if *b { "t" } else { "f" },
        Value::Number(n) => got.parse::<f64>().ok() == n.as_f64(),
        Value::String(s) => match DateTime::parse_from_rfc3339(s) {
            Ok(t) => DateTime::parse_from_str(got, "%Y-%m-%d %H:%M:%S%.f%#z").is_ok_and(|g| g == t),
            Err(_) => got == s,
        },
        other => panic!("no psql form for {other}"),
    }
}

/// Whether the `/v1/sql` JSON cell `want` and the one psycopg read are the same value
/// (timestamps compared as instants, numbers as doubles).
fn same_json(want: &Value, got: &Value) -> bool {
    match (want, got) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::String(a), Value::String(b)) => {
            match (
                DateTime::parse_from_rfc3339(a),
                DateTime::parse_from_rfc3339(b),
            ) {
                (Ok(a), Ok(b)) => a == b,
                _ => a == b,
            }
        }
        _ => want == got,
    }
}

/// psycopg's reader: each statement in text and in binary results (extended protocol), one
/// with a bound parameter, a write, and the `\dt`-like catalogue query of BI tools.
const PSYCOPG: &str = r#"
import datetime, decimal, json, sys
import psycopg

conninfo, statements = sys.argv[1], json.loads(sys.argv[2])

def cell(v):
    if isinstance(v, (datetime.datetime, datetime.date)):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, (bytes, memoryview)):
        return bytes(v).hex()
    return v

def answer(cur):
    return {"columns": [d.name for d in cur.description],
            "rows": [[cell(v) for v in row] for row in cur.fetchall()]}

out = {}
with psycopg.connect(conninfo) as conn:
    for binary in (False, True):
        answers = []
        for sql in statements:
            with conn.cursor(binary=binary) as cur:
                cur.execute(sql)
                answers.append(answer(cur))
        out["binary" if binary else "text"] = answers
    for binary in (False, True):
        with conn.cursor(binary=binary) as cur:
            cur.execute("SELECT country, orders FROM sales_by_country WHERE country = %s AND orders >= %s ORDER BY bucket", ("DE", 1))
            out["params_binary" if binary else "params"] = answer(cur)
    with conn.cursor() as cur:
        cur.execute("SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' ORDER BY 1")
        out["pg_class"] = [r[0] for r in cur.fetchall()]
    for key, sql in (("write", "DELETE FROM sales_by_country"), ("syntax", "SELEC 1")):
        try:
            conn.rollback()
            conn.execute(sql)
            out[key] = None
        except psycopg.Error as e:
            out[key] = [e.sqlstate, str(e)]
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_and_psycopg_get_the_answers_of_the_http_api() {
    let broker = EmbeddedBroker::start(&[("events", 1)]).unwrap();
    let lake = tempfile::tempdir().unwrap();
    let state = state_with_data(&broker, &lake).await;
    let mut http = Vec::new();
    for statement in GOLDEN_SQL {
        let (status, answer) = call(&state, sql(statement)).await;
        assert_eq!(status, 200, "{statement}: {answer}");
        http.push(answer);
    }
    let (addr, _server) = listening(state).await;

    for (statement, want) in GOLDEN_SQL.iter().zip(&http) {
        let (ok, out, err) = output(&mut psql(addr, None, statement)).await;
        assert!(ok, "psql: {statement}: {err}");
        let rows: Vec<Vec<&str>> = out
            .lines()
            .map(|line| line.split('\u{1f}').collect())
            .collect();
        let want_rows = want["rows"].as_array().unwrap();
        assert_eq!(rows.len(), want_rows.len(), "psql: {statement}:\n{out}");
        for (got, want) in rows.iter().zip(want_rows) {
            let want = want.as_array().unwrap();
            assert_eq!(got.len(), want.len(), "psql: {statement}: {got:?}");
            for (g, w) in got.iter().zip(want) {
                assert!(same_text(w, g), "psql: {statement}: {g:?} is not {w}");
            }
        }
    }

    let (ok, out, err) = output(&mut psql(addr, None, "\\dt")).await;
    assert!(ok, "psql \\dt: {err}");
    let listed: Vec<&str> = out
        .lines()
        .filter_map(|line| line.split('\u{1f}').nth(1))
        .collect();
    for table in [
        "sales_by_country",
        "traffic_by_minute",
        "raw_events",
        "quarantine_events",
    ] {
        assert!(listed.contains(&table), "\\dt lists {table}:\n{out}");
    }
    let (ok, out, err) = output(&mut psql(addr, None, "\\d sales_by_country")).await;
    assert!(ok, "psql \\d: {err}");
    for column in ["bucket", "country", "orders", "buyers__hll"] {
        assert!(
            out.contains(column),
            "\\d sales_by_country shows {column}:\n{out}{err}"
        );
    }

    let (ok, _, err) = output(&mut psql(addr, None, "CREATE TABLE t (a INT)")).await;
    assert!(!ok, "psql ran a CREATE TABLE");
    assert!(err.contains("only queries are allowed"), "{err}");
    let many = vec!["SELECT 1"; postgres::MAX_STATEMENTS + 1].join("; ");
    let (ok, _, err) = output(&mut psql(addr, None, &many)).await;
    assert!(!ok && err.contains("statements in one message"), "{err}");
    let (ok, _, err) = output(&mut psql(
        addr,
        None,
        "SELECT country, sum(buyers) FROM sales_by_country GROUP BY country",
    ))
    .await;
    assert!(
        !ok && err.contains("hll_merge"),
        "a sum of distinct counts: {err}"
    );

    let conninfo = format!(
        "host={} port={} user=analyst dbname=lambdaflow sslmode=disable",
        addr.ip(),
        addr.port()
    );
    let python = std::env::var("LAMBDAFLOW_PYTHON")
        .expect("LAMBDAFLOW_PYTHON: a Python with psycopg (bash .ci/run sets it up)");
    let (ok, out, err) = output(
        Command::new(python)
            .args(["-c", PSYCOPG, &conninfo])
            .arg(serde_json::to_string(&GOLDEN_SQL).unwrap()),
    )
    .await;
    assert!(ok, "psycopg: {err}");
    let got: Value = serde_json::from_str(&out).unwrap();
    for format in ["text", "binary"] {
        for ((statement, want), got) in GOLDEN_SQL
            .iter()
            .zip(&http)
            .zip(got[format].as_array().unwrap())
        {
            let names: Vec<&Value> = want["columns"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| &c["name"])
                .collect();
            let got_names: Vec<&Value> = got["columns"].as_array().unwrap().iter().collect();
            assert_eq!(names, got_names, "psycopg {format}: {statement}");
            let (want, got) = (
                want["rows"].as_array().unwrap(),
                got["rows"].as_array().unwrap(),
            );
            assert_eq!(want.len(), got.len(), "psycopg {format}: {statement}");
            for (w, g) in want.iter().zip(got) {
                let (w, g) = (w.as_array().unwrap(), g.as_array().unwrap());
                assert!(
                    w.len() == g.len() && w.iter().zip(g).all(|(w, g)| same_json(w, g)),
                    "psycopg {format}: {statement}: {g:?} is not {w:?}"
                );
            }
        }
    }
    let de: Vec<&Value> = http[0]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row[1] == "DE")
        .collect();
    assert!(!de.is_empty());
    assert_eq!(
        got["params"]["rows"],
        json!(
            de.iter()
                .map(|row| json!([row[1], row[2]]))
                .collect::<Vec<_>>()
        )
    );
    let pg_class: Vec<&str> = got["pg_class"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(pg_class.contains(&"sales_by_country"), "{pg_class:?}");
    assert_eq!(got["params_binary"], got["params"]);
    assert_eq!(got["write"][0], "25006", "a DELETE: {}", got["write"]);
    assert_eq!(
        got["syntax"][0], "42601",
        "a syntax error: {}",
        got["syntax"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_is_a_token_with_the_query_scope() {
    let broker = EmbeddedBroker::start(&[("events", 1)]).unwrap();
    let lake = tempfile::tempdir().unwrap();
    let state = state_with(&broker, &lake, with_tokens(Config::shop()));
    let (addr, _server) = listening(state).await;

    let (ok, _, err) = output(&mut psql(addr, Some("not-a-token"), "SELECT 1")).await;
    assert!(!ok, "a wrong password was let in");
    assert!(
        err.to_lowercase()
            .contains("password authentication failed"),
        "{err}"
    );
    let (ok, _, err) = output(&mut psql(addr, None, "SELECT 1")).await;
    assert!(!ok, "no password was let in: {err}");

    let (ok, out, err) = output(&mut psql(addr, Some("query-token"), "SELECT 1 + 1")).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "2");
    let (ok, _, err) = output(&mut psql(
        addr,
        Some("query-token"),
        "SELECT count(*) FROM raw_events",
    ))
    .await;
    assert!(!ok && err.contains("admin scope"), "{err}");
    let (ok, _, err) = output(&mut psql(addr, Some("ingest-token"), "SELECT 1")).await;
    assert!(!ok && err.contains("query scope"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_certificate_it_speaks_tls_only() {
    let broker = EmbeddedBroker::start(&[("events", 1)]).unwrap();
    let lake = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = with_certificate(with_tokens(Config::shop()), dir.path());
    let (addr, _server) = listening(state_with(&broker, &lake, config)).await;

    let (ok, out, err) = output(&mut psql_with(
        addr,
        "require",
        Some("query-token"),
        "SELECT 40 + 2",
    ))
    .await;
    assert!(ok, "over TLS: {err}");
    assert_eq!(out.trim(), "42");
    let (ok, _, err) = output(&mut psql(addr, Some("query-token"), "SELECT 1")).await;
    assert!(!ok, "a connection without TLS was served");
    assert!(err.contains("TLS only"), "{err}");
}
