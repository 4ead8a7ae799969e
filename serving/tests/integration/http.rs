//! The HTTP API through `tower::ServiceExt::oneshot`, with events produced to librdkafka's
//! in-process mock cluster and read back to check what the broker acknowledged.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use lambdaflow_batch::lake::Lake;
use lambdaflow_batch::lake::reader::LakeReader;
use lambdaflow_batch::views::lock::BatchLock;
use lambdaflow_batch::views::records::History;
use lambdaflow_common::batch_view::BatchView;
use lambdaflow_common::config::Config;
use lambdaflow_common::state::ViewState;
use lambdaflow_common::validate::{Coordinates, Validated, Validator};
use lambdaflow_kafka::consumer::Consumer;
use lambdaflow_kafka::embedded::EmbeddedBroker;
use lambdaflow_kafka::producer::Producer;
use lambdaflow_serving::http::{AppState, app};
use lambdaflow_serving::speed_layer::Speeds;
use lambdaflow_speed::served::{Progress, Served, ViewPair};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::support::{call, caught_up, state_with};

fn state(broker: &EmbeddedBroker, max_body: usize, lake: &tempfile::TempDir) -> AppState {
    let mut config = Config::shop();
    config.serving.max_body_bytes = max_body;
    state_with(broker, lake, config)
}

fn post(body: impl Into<Body>, content_type: &str) -> Request<Body> {
    Request::post("/v1/events")
        .header("content-type", content_type)
        .body(body.into())
        .unwrap()
}

fn good(id: &str) -> Value {
    json!({"event_id": id, "event_time": "2026-01-02T03:04:05Z", "type": "view", "user_id": "u1", "country": "kr"})
}

/// `messages` validated at `now` as offsets 0, 1, … of partition 0.
fn validate_in_order(validator: &Validator, now: i64, messages: &[Vec<u8>]) -> Validated {
    let mut builder = validator.batch_builder("events", now);
    for (offset, payload) in messages.iter().enumerate() {
        let at = Coordinates {
            partition: 0,
            offset: offset as i64,
        };
        let _ = builder.push(Some(payload), at);
    }
    builder.finish()
}

/// Keys of every message on the topic, in partition order.
fn produced_keys(broker: &EmbeddedBroker) -> Vec<String> {
    let consumer = Consumer::reader(broker.bootstrap_servers(), "http-test", "events").unwrap();
    consumer.assign(&(0..4).map(|p| (p, 0)).collect()).unwrap();
    let mut keys = Vec::new();
    while let Some(Ok(m)) = consumer.poll_record(Duration::from_secs(2)) {
        keys.push(String::from_utf8(m.key.unwrap()).unwrap());
    }
    keys.sort();
    keys
}

#[tokio::test]
async fn events_are_validated_produced_and_acknowledged() {
    let broker = EmbeddedBroker::start(&[("events", 4)]).unwrap();
    let lake = tempfile::tempdir().unwrap();
    let state = state(&broker, 1 << 20, &lake);

    let body = json!([good("a"), {"event_id": "b"}, good("c"), 7]).to_string();
    let (status, reply) = call(&state, post(body, "application/json")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(reply["accepted"], 2);
    assert_eq!(reply["rejected"], 2);
    assert_eq!(
        reply["errors"],
        json!([{"index": 1, "reason": "missing_field:event_time"}, {"index": 3, "reason": "not_an_object"}])
    );

    let ndjson = format!("{}\n\n{{broken\n{}\n", good("d"), good("e"));
    let (status, reply) = call(&state, post(ndjson, "application/x-ndjson")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(reply["accepted"], 2);
    assert_eq!(
        reply["errors"],
        json!([{"index": 1, "reason": "malformed_json"}])
    );

    assert_eq!(produced_keys(&broker), vec!["a", "c", "d", "e"]);
}

#[tokio::test]
async fn events_may_name_their_source_and_an_unknown_source_is_404() {
    let broker = EmbeddedBroker::start(&[("events", 4)]).unwrap();
    let lake = tempfile::tempdir().unwrap();
    let state = state(&broker, 1 << 20, &lake);
    let to = |source: &str, body: String| {
        Request::post(format!("/v1/events/{source}"))
            .header("content-type", "application/x-ndjson")
            .body(Body::from(body))
            .unwrap()
    };

    let (status, reply) = call(&state, to("events", good("named").to_string())).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["accepted"], 1);
    let (status, reply) = call(&state, to("payments", good("lost").to_string())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(reply["error"]["code"], "not_found");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`payments`"),
        "{reply}"
    );
    assert_eq!(produced_keys(&broker), vec!["named"]);
}

#[tokio::test]
async fn bad_requests_get_json_errors() {
    let broker = EmbeddedBroker::start(&[("events", 4)]).unwrap();
    let lake = tempfile::tempdir().unwrap();
    let state = state(&broker, 256, &lake);

    let big = json!([good("a"), good("b"), good("c")]).to_string();
    let (status, reply) = call(&state, post(big, "application/json")).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply["error"]["code"], "payload_too_large");

    let (status, reply) = call(&state, post("[{\"a\":1}", "application/json")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(reply["error"]["code"], "malformed_json");

    let (status, reply) = call(
        &state,
        Request::get("/v1/nothing").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(reply["error"]["code"], "not_found");

    let (status, _) = call(
        &state,
        Request::get("/v1/events").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(produced_keys(&broker).is_empty());
}

#[tokio::test]
async fn readiness_follows_the_state() {
    let broker = EmbeddedBroker::start(&[("events", 1)]).unwrap();
    let lake = tempfile::tempdir().unwrap();
    let state = state(&broker, 1024, &lake);
    let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();
    assert_eq!(call(&state, get("/healthz")).await.0, StatusCode::OK);
    assert_eq!(
        call(&state, get("/readyz")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    state.set_ready();
    assert_eq!(call(&state, get("/readyz")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn batch_runs_are_triggered_listed_and_never_overlap() {
    let broker = EmbeddedBroker::start(&[("events", 1)]).unwrap();
    let lake = tempfile::tempdir().unwrap();
    let state = state(&broker, 1024, &lake);
    let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();
    let trigger = |body: &'static str| {
        Request::post("/v1/batch/runs")
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap()
    };

    let history = History::new(&Lake::new(&state.config.lake).unwrap()).unwrap();
    let held = BatchLock::new(history)
        .acquire("20260101T000000000Z-other")
        .await
        .unwrap();
    let (status, reply) = call(&state, trigger("")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(reply["error"]["code"], "run_in_progress");
    assert_eq!(reply["error"]["id"], "20260101T000000000Z-other");
    held.release().await.unwrap();

    let record = batch_run(&state, r#"{"full": true}"#).await;
    let id = record["id"].as_str().unwrap().to_owned();
    assert_eq!(record["full"], true);
    assert_eq!(record["trigger"], "api");
    assert_eq!(record["watermark"]["raw_version"], 0);
    assert_eq!(record["views"].as_array().unwrap().len(), 3);

    let (status, list) = call(&state, get("/v1/batch/runs?limit=5")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["runs"][0]["id"], id.as_str());

    for (request, status, code) in [
        (
            trigger("{\"full\": 1}"),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            trigger("{\"fast\": true}"),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            get("/v1/batch/runs?limit=0"),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            get("/v1/batch/runs?limit=x"),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            get("/v1/batch/runs/..%2Fetc"),
            StatusCode::BAD_REQUEST,
            "invalid_run_id",
        ),
        (
            get("/v1/batch/runs/20990101T000000000Z-000000"),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ] {
        let (got, reply) = call(&state, request).await;
        assert_eq!(
            (got, reply["error"]["code"].as_str()),
            (status, Some(code)),
            "{reply}"
        );
    }
}

/// Starts a batch run through the API with `body` and waits for its record, which must say it
/// succeeded.
async fn batch_run(state: &AppState, body: &'static str) -> Value {
    let trigger = Request::post("/v1/batch/runs")
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    let (status, reply) = call(state, trigger).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
    let path = format!("/v1/batch/runs/{}", reply["id"].as_str().unwrap());
    let mut record = Value::Null;
    for _ in 0..600 {
        record = call(state, Request::get(&path).body(Body::empty()).unwrap())
            .await
            .1;
        if record["status"] == "succeeded" || record["status"] == "failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(record["status"], "succeeded", "{record}");
    record
}

#[tokio::test]
async fn the_catalog_names_every_table_as_sql_reads_it_with_history_and_lineage() {
    let broker = EmbeddedBroker::start(&[("events", 1)]).unwrap();
    let lake = tempfile::tempdir().unwrap();
    let state = state_with_data(&broker, &lake).await;
    let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();
    let record = batch_run(&state, "{}").await;
    let (status, catalog) = call(&state, get("/v1/catalog")).await;
    assert_eq!(status, StatusCode::OK, "{catalog}");
    let tables = catalog["tables"].as_array().unwrap();
    let names: Vec<&str> = tables.iter().map(|t| t["name"].as_str().unwrap()).collect();
    let mut expected = vec!["raw_events", "quarantine_events"];
    expected.extend(state.config.views.iter().map(|v| v.name.as_str()));
    assert_eq!(names, expected);

    for table in tables {
        let name = table["name"].as_str().unwrap();
        assert!(table.get("history").is_none() && table.get("lineage").is_none());
        assert!(
            table["version"].is_u64() && table["files"].as_u64() > Some(0),
            "{table}"
        );
        assert!(table["last_commit"].is_string(), "{table}");
        // SQL's information_schema lists the same columns, in order, with the same types.
        let (status, info) = call(
            &state,
            sql(&format!(
                "SELECT column_name, data_type, is_nullable FROM information_schema.columns \
                 WHERE table_name = '{name}' ORDER BY ordinal_position"
            )),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{info}");
        let from_sql: Vec<Value> = info["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let sql_type = match r[1].as_str().unwrap() {
                    "Utf8" | "Utf8View" => "VARCHAR",
                    "Int32" => "INT",
                    "Int64" => "BIGINT",
                    "Float64" => "DOUBLE",
                    "Boolean" => "BOOLEAN",
                    "Date32" => "DATE",
                    "Binary" | "BinaryView" => "BYTEA",
                    t if t.starts_with("Timestamp(") && t.contains("UTC") => {
                        "TIMESTAMP WITH TIME ZONE"
                    }
                    other => panic!("{name}: no SQL type known for {other}"),
                };
                json!({"name": r[0], "type": sql_type, "nullable": r[2] == "YES"})
            })
            .collect();
        assert_eq!(table["columns"], json!(from_sql), "{name}");
    }

    let (status, view) = call(&state, get("/v1/catalog/sales_by_country")).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    let outcome = record["views"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "sales_by_country")
        .unwrap();
    assert_eq!(view["version"], outcome["version"]);
    assert_eq!(view["history"][0]["version"], outcome["version"]);
    assert_eq!(view["history"][0]["run_id"], record["id"]);
    assert_eq!(view["kind"], "view");
    let lineage = &view["lineage"];
    assert_eq!(lineage["reads"], "raw_events");
    assert_eq!(lineage["raw_version"], record["watermark"]["raw_version"]);
    assert_eq!(lineage["offsets"], record["watermark"]["offsets"]);
    assert_eq!(lineage["run_id"], record["id"]);
    assert_eq!(lineage["computed_under_current_definition"], true);
    assert_eq!(lineage["definition"]["name"], "sales_by_country");

    let (status, raw) = call(&state, get("/v1/catalog/raw_events")).await;
    assert_eq!(status, StatusCode::OK, "{raw}");
    assert_eq!(raw["lineage"]["topic"], "events");
    assert_eq!(raw["lineage"]["offsets"], record["watermark"]["offsets"]);
    assert!(
        raw["lineage"]["feeds"]
            .as_array()
            .unwrap()
            .contains(&json!("sales_by_country"))
    );
    assert_eq!(raw["partition_by"], json!(["event_date"]));
    let (status, missing) = call(&state, get("/v1/catalog/raw_nope")).await;
    assert_eq!(
        (status, missing["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );

    if let Some(python) = std::env::var_os("LAMBDAFLOW_PYTHON") {
        let mut detail = Vec::new();
        for name in &names {
            detail.push(call(&state, get(&format!("/v1/catalog/{name}"))).await.1);
        }
        as_delta_logs_say(&python, lake.path(), &detail);
    }
}

/// Reads each catalog entry's table with Python's `deltalake` and compares: version, column
/// names, partition columns, file count, and the versions and operations of its history.
fn as_delta_logs_say(python: &std::ffi::OsStr, lake: &std::path::Path, entries: &[Value]) {
    const READER: &str = r#"
import json, os, sys
from deltalake import DeltaTable
lake, paths = sys.argv[1], json.loads(sys.argv[2])
out = {}
for path in paths:
    t = DeltaTable(os.path.join(lake, path))
    out[path] = {
        "version": t.version(),
        "columns": [f.name for f in t.schema().fields],
        "partition_by": t.metadata().partition_columns,
        "files": len(t.file_uris()),
        "history": [[h["version"], h.get("operation")] for h in t.history(5)],
    }
print(json.dumps(out))
"#;
    let paths: Vec<&str> = entries
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    let got = python_reads(python, READER, lake, &paths);
    for entry in entries {
        let delta = &got[entry["path"].as_str().unwrap()];
        let columns: Vec<&Value> = entry["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| &c["name"])
            .collect();
        let mut names: Vec<&Value> = delta["columns"].as_array().unwrap().iter().collect();
        let mut ours = columns.clone();
        names.sort_by_key(|v| v.as_str());
        ours.sort_by_key(|v| v.as_str());
        assert_eq!(ours, names, "{}: columns", entry["name"]);
        assert_eq!(entry["version"], delta["version"], "{}", entry["name"]);
        assert_eq!(entry["partition_by"], delta["partition_by"]);
        assert_eq!(entry["files"], delta["files"], "{}", entry["name"]);
        let ours: Vec<Value> = entry["history"]
            .as_array()
            .unwrap()
            .iter()
            .take(5)
            .map(|h| json!([h["version"], h["operation"]]))
            .collect();
        assert_eq!(json!(ours), delta["history"], "{}: history", entry["name"]);
    }
}

#[tokio::test]
async fn a_query_as_of_a_past_version_reads_that_batch_version_alone() {
    let broker = EmbeddedBroker::start(&[("events", 1)]).unwrap();
    let lake = tempfile::tempdir().unwrap();
    let state = state_with_data(&broker, &lake).await;
    let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();
    let post = |path: &str, body: Value| {
        Request::post(path)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let query = |body: Value| post("/v1/views/sales_by_country/query", body);

    let (status, reply) = call(&state, query(json!({"as_of": {"version": 0}}))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no batch version yet"),
        "{reply}"
    );

    let record = batch_run(&state, "{}").await;
    let outcome = record["views"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "sales_by_country")
        .unwrap();
    let version = outcome["version"].as_u64().unwrap();

    let body =
        json!({"group_by": ["country"], "granularity": "all", "as_of": {"version": version}});
    let (status, past) = call(&state, query(body)).await;
    assert_eq!(status, StatusCode::OK, "{past}");
    assert_eq!(past["batch_version"], version);
    assert_eq!(past["watermark"], record["watermark"]);
    assert_eq!(past["speed_offsets"], json!({}));
    assert_eq!(past["complete"], true);
    let orders: i64 = past["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["orders"].as_i64().unwrap())
        .sum();
    assert!(orders > 0, "{past}");
    let path = format!(
        "/v1/views/sales_by_country/query?group_by=country&granularity=all&as_of={version}"
    );
    assert_eq!(
        call(&state, get(&path)).await,
        (StatusCode::OK, past.clone())
    );
    let now = chrono::Utc::now().to_rfc3339();
    let (status, at_time) = call(
        &state,
        query(json!({"group_by": ["country"], "granularity": "all", "as_of": now})),
    )
    .await;
    assert_eq!((status, &at_time), (StatusCode::OK, &past));

    for (body, status, code, says) in [
        (
            json!({"as_of": {"version": version + 1}}),
            StatusCode::NOT_FOUND,
            "not_found",
            "its latest is",
        ),
        (
            json!({"as_of": "2001-01-01T00:00:00Z"}),
            StatusCode::NOT_FOUND,
            "not_found",
            "had no batch version at",
        ),
        (
            json!({"as_of": {"version": version}, "layer": "merged"}),
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "drop `layer`",
        ),
        (
            json!({"as_of": "last tuesday"}),
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "`as_of`",
        ),
        (
            json!({"as_of": {"version": -1}}),
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "",
        ),
    ] {
        let (got, reply) = call(&state, query(body.clone())).await;
        assert_eq!(
            (got, reply["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}: {reply}"
        );
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{body}: {message}");
    }
}

#[tokio::test]
async fn queries_filter_by_exclusion_and_range_in_both_forms() {
    let broker = EmbeddedBroker::start(&[("events", 1)]).unwrap();
    let lake = tempfile::tempdir().unwrap();
    let state = state_with_data(&broker, &lake).await;
    let post = |body: Value| {
        Request::post("/v1/views/sales_by_country/query")
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let get = |params: &str| {
        Request::get(format!("/v1/views/sales_by_country/query?{params}"))
            .body(Body::empty())
            .unwrap()
    };
    let countries = |answer: &Value| -> Vec<String> {
        answer["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["country"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = call(
        &state,
        post(json!({"granularity": "all", "group_by": ["country"]})),
    )
    .await;
    assert_eq!(countries(&all.1), ["DE", "US"], "{}", all.1);

    let body = json!({
        "granularity": "all",
        "group_by": ["country"],
        "filters": {"country": {"not": ["US"]}},
        "order_by": [{"field": "orders", "desc": true}, {"field": "country"}],
    });
    let (status, excluded) = call(&state, post(body)).await;
    assert_eq!(status, StatusCode::OK, "{excluded}");
    assert_eq!(countries(&excluded), ["DE"]);
    // The GET form: `filters` as JSON text, `order_by` with `-` for descending.
    let (status, same) = call(
        &state,
        get("granularity=all&group_by=country&filters=%7B%22country%22%3A%7B%22not%22%3A%5B%22US%22%5D%7D%7D&order_by=-orders,country"),
    )
    .await;
    assert_eq!((status, &same), (StatusCode::OK, &excluded));

    let range = json!({"granularity": "all", "group_by": ["country"], "filters": {"country": {"gt": "DE", "lte": "US"}}});
    let (status, ranged) = call(&state, post(range)).await;
    assert_eq!(status, StatusCode::OK, "{ranged}");
    assert_eq!(countries(&ranged), ["US"]);

    for (request, code) in [
        (get("filters=%7Bnot%20json"), "invalid_query"),
        (get("order_by=-nope"), "invalid_order"),
        (
            post(json!({"filters": {"country": {"gt": "A", "gte": "B"}}})),
            "invalid_filter",
        ),
    ] {
        let (status, reply) = call(&state, request).await;
        assert_eq!(
            (status, reply["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some(code)),
            "{reply}"
        );
    }
}

#[tokio::test]
async fn views_are_listed_and_bad_queries_are_named() {
    let broker = EmbeddedBroker::start(&[("events", 1)]).unwrap();
    let lake = tempfile::tempdir().unwrap();
    let state = state(&broker, 1 << 16, &lake);
    let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();
    let query = |body: Value| {
        Request::post("/v1/views/sales_by_country/query")
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap()
    };

    let (status, views) = call(&state, get("/v1/views")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(views["views"].as_array().unwrap().len(), 3);
    assert_eq!(views["views"][0]["measures"][5]["agg"], "approx_distinct");
    assert_eq!(
        views["views"][0]["source"], "events",
        "each view names its source"
    );
    let (status, one) = call(&state, get("/v1/views/traffic_by_minute")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["watermark"], Value::Null);
    assert_eq!(one["rows"]["speed"], 0);
    assert_eq!(one["speed_bytes_per_group"], Value::Null);

    let (status, answer) = call(&state, query(json!({"granularity": "day", "group_by": ["country"], "order_by": [{"field": "orders", "desc": true}], "limit": 5}))).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["rows"], json!([]));
    assert_eq!(answer["granularity"], "day");
    let (status, _) = call(&state, get("/v1/views/sales_by_country/query?granularity=all&group_by=country&measures=orders,buyers")).await;
    assert_eq!(status, StatusCode::OK);

    for (request, status, code, needle) in [
        (
            get("/v1/views/nope"),
            StatusCode::NOT_FOUND,
            "not_found",
            "nope",
        ),
        (
            get("/v1/views/nope/query"),
            StatusCode::NOT_FOUND,
            "not_found",
            "nope",
        ),
        (
            query(json!({"granularity": "minute"})),
            StatusCode::BAD_REQUEST,
            "invalid_granularity",
            "hour",
        ),
        (
            query(json!({"granularity": "week"})),
            StatusCode::BAD_REQUEST,
            "invalid_granularity",
            "week",
        ),
        (
            query(json!({"group_by": ["colour"]})),
            StatusCode::BAD_REQUEST,
            "unknown_dimension",
            "colour",
        ),
        (
            query(json!({"filters": {"product": ["x"]}})),
            StatusCode::BAD_REQUEST,
            "unknown_dimension",
            "product",
        ),
        (
            query(json!({"filters": {"country": [7]}})),
            StatusCode::BAD_REQUEST,
            "invalid_filter",
            "country",
        ),
        (
            query(json!({"measures": ["profit"]})),
            StatusCode::BAD_REQUEST,
            "unknown_measure",
            "profit",
        ),
        (
            query(json!({"from": "yesterday"})),
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "yesterday",
        ),
        (
            query(json!({"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"})),
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "before",
        ),
        (
            query(json!({"order_by": [{"field": "country"}]})),
            StatusCode::BAD_REQUEST,
            "invalid_order",
            "country",
        ),
        (
            query(json!({"limit": 100_001})),
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "limit",
        ),
        (
            query(json!({"fields": []})),
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "fields",
        ),
        (
            get("/v1/views/sales_by_country/query?limit=x"),
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "limit",
        ),
    ] {
        let (got, reply) = call(&state, request).await;
        assert_eq!(got, status, "{reply}");
        assert_eq!(reply["error"]["code"], code, "{reply}");
        assert!(
            reply["error"]["message"].as_str().unwrap().contains(needle),
            "{reply}"
        );
    }
}

#[tokio::test]
async fn view_queries_are_held_to_their_limits() {
    let broker = EmbeddedBroker::start(&[("events", 1)]).unwrap();
    let lake = tempfile::tempdir().unwrap();
    let state = state_with_data(&broker, &lake).await;
    let limited = |change: &dyn Fn(&mut lambdaflow_common::config::ServingConfig)| {
        let mut config = (*state.config).clone();
        change(&mut config.serving);
        AppState {
            config: Arc::new(config),
            ..state.clone()
        }
    };
    let query = |body: Value| {
        Request::post("/v1/views/sales_by_country/query")
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    for (body, needle) in [
        (
            json!({"measures": ["orders", "revenue", "orders"]}),
            "orders",
        ),
        (json!({"group_by": ["country", "country"]}), "country"),
    ] {
        let (status, reply) = call(&state, query(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
        assert_eq!(reply["error"]["code"], "repeated_name");
        assert!(reply["error"]["message"].as_str().unwrap().contains(needle));
    }

    let by_country = json!({"granularity": "all", "group_by": ["country"]});
    let (status, whole) = call(&state, query(by_country.clone())).await;
    assert_eq!(status, StatusCode::OK, "{whole}");
    let rows = whole["rows"].as_array().unwrap().len();
    assert!(rows >= 2, "{whole}");
    assert!(whole.get("truncated").is_none(), "{whole}");

    let fewer = limited(&|s| s.query_default_limit = rows - 1);
    let (_, cut) = call(&fewer, query(by_country.clone())).await;
    assert_eq!(cut["rows"].as_array().unwrap().len(), rows - 1);
    assert_eq!(cut["truncated"], true);
    assert_eq!(cut["rows"][0], whole["rows"][0], "the first rows in order");
    let asked = json!({"granularity": "all", "group_by": ["country"], "limit": rows});
    let (_, asked) = call(&fewer, query(asked)).await;
    assert_eq!(asked["rows"], whole["rows"], "an explicit limit wins");

    let few_groups = limited(&|s| s.query_max_groups = rows - 1);
    let (status, reply) = call(&few_groups, query(by_country)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
    assert_eq!(reply["error"]["code"], "too_many_groups");
    let (status, _) = call(&few_groups, query(json!({"granularity": "all"}))).await;
    assert_eq!(status, StatusCode::OK, "one group is under the limit");

    let no_time = limited(&|s| s.query_timeout = Duration::ZERO);
    let (status, reply) = call(&no_time, query(json!({}))).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{reply}");
    assert_eq!(reply["error"]["code"], "query_timeout");

    // A query waits for a free answer slot within its time limit; past it, 504.
    let short = limited(&|s| s.query_timeout = Duration::from_millis(300));
    let slots = short.query_slots.clone();
    let busy = slots
        .clone()
        .acquire_many_owned(u32::try_from(slots.available_permits()).unwrap())
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let (status, reply) = call(&short, query(json!({}))).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{reply}");
    assert_eq!(reply["error"]["code"], "query_timeout");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("query_max_concurrent"),
        "{reply}"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    let waiting = tokio::spawn({
        let short = short.clone();
        async move { call(&short, query(json!({}))).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(busy);
    let (status, reply) = waiting.await.unwrap();
    assert_eq!(
        status,
        StatusCode::OK,
        "a slot freed in time answers: {reply}"
    );
}

/// Fixed events (times, users, amounts) so that answers are the same on every run: 40 valid
/// events over two days and three refused messages, validated as of 2026-11-23.
fn fixed_messages() -> Vec<Vec<u8>> {
    let start = 1_763_596_800_000_i64; // 2025-11-20T00:00:00Z in epoch milliseconds
    let mut messages: Vec<Vec<u8>> = (0..40)
        .map(|i: i64| {
            let country = ["kr", "us", "de"][(i % 3) as usize];
            json!({
                "event_id": format!("e{i}"),
                "event_time": start + i * 71 * 60_000 + i * i * 1_000,
                "type": if i % 3 == 0 { "view" } else { "purchase" },
                "user_id": format!("u{}", i % 7),
                "country": country,
                "product": format!("p{}", i % 4),
                "amount": (i % 5) as f64 * 2.5 + 1.0,
                "quantity": i % 3,
            })
            .to_string()
            .into_bytes()
        })
        .collect();
    messages.insert(5, b"{broken".to_vec());
    messages.insert(
        17,
        br#"{"event_id":"x","event_time":"soon","type":"view","user_id":"u","country":"kr"}"#
            .to_vec(),
    );
    messages.insert(30, br#"["not","an","object"]"#.to_vec());
    messages
}

/// A state whose views hold `fixed_messages`, the first 25 valid events on the batch side and
/// the rest on the speed side, and whose lake holds them in the raw and quarantine tables.
pub(crate) async fn state_with_data(broker: &EmbeddedBroker, lake: &tempfile::TempDir) -> AppState {
    state_with_data_at(broker, lake, caught_up()).await
}

/// [`state_with_data`] with the speed layer's Kafka `progress`.
async fn state_with_data_at(
    broker: &EmbeddedBroker,
    lake: &tempfile::TempDir,
    progress: Progress,
) -> AppState {
    use lambdaflow_batch::archive::commit::OffsetTable;
    use lambdaflow_batch::lake::open_or_create;
    use lambdaflow_common::schema::{EVENT_DATE, INGEST_DATE, quarantine_schema, raw_schema};

    use lambdaflow_speed::engine::Speed;

    let state = state(broker, 1 << 20, lake);
    let config = state.config.clone();
    let now = 1_763_856_000_000_000; // 2025-11-23T00:00:00Z in microseconds
    let validator = Validator::new(config.source());
    let messages = fixed_messages();
    let validated = validate_in_order(&validator, now, &messages);
    let upto = [(0, messages.len() as i64 - 1)].into();
    let lake_root = Lake::new(&config.lake).unwrap();
    for (url, schema, partition_by, batch) in [
        (
            lake_root.raw("events"),
            raw_schema(config.source()),
            EVENT_DATE,
            &validated.events,
        ),
        (
            lake_root.quarantine("events"),
            quarantine_schema(),
            INGEST_DATE,
            &validated.rejects,
        ),
    ] {
        let table = open_or_create(&url, &schema, &[partition_by])
            .await
            .unwrap();
        let mut table = OffsetTable::load(table, (schema, partition_by), "events", &[0])
            .await
            .unwrap();
        table.append(batch.clone(), &upto).await.unwrap();
    }

    // Each side folded as the speed layer folds: view filters applied, duplicates dropped.
    let fold = |events: arrow::array::RecordBatch| {
        let served = Served::new();
        let mut speed = Speed::before_any_batch(config.clone(), served.clone()).unwrap();
        for date in speed.dates_to_load(&events) {
            speed.load_ids(date, []).unwrap();
        }
        speed.fold(events, &Default::default()).unwrap();
        let snapshot = served.snapshot().unwrap();
        snapshot
            .pairs()
            .iter()
            .map(|pair| pair.speed().clone())
            .collect::<Vec<ViewState>>()
    };
    let events = &validated.events;
    let batch = fold(events.slice(0, 25));
    let speed = fold(events.slice(25, events.num_rows() - 25));
    let pairs = batch
        .into_iter()
        .zip(speed)
        .map(|(batch, speed)| {
            let batch = BatchView {
                version: Some(1),
                watermark: None,
                state: batch,
                ..BatchView::default()
            };
            ViewPair::new(Arc::new(batch), speed)
        })
        .collect();
    let folded = progress.consumed.clone();
    AppState {
        speeds: Speeds::new(
            &state.config,
            vec![Served::from_parts(pairs, folded, progress)],
        ),
        ..state
    }
}

pub(crate) fn sql(text: &str) -> Request<Body> {
    Request::post("/v1/sql")
        .header("content-type", "application/json")
        .body(Body::from(json!({ "sql": text }).to_string()))
        .unwrap()
}

/// Compares `got` with the golden file `name`; `LAMBDAFLOW_BLESS=1` rewrites the file.
fn golden(name: &str, got: &Value) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    let text = serde_json::to_string_pretty(got).unwrap() + "\n";
    if std::env::var_os("LAMBDAFLOW_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with LAMBDAFLOW_BLESS=1 to create it",
            path.display()
        )
    });
    assert!(
        want == text,
        "{} differs from the answer; run with LAMBDAFLOW_BLESS=1 if the change is intended:\n{text}",
        path.display()
    );
}

/// The statements whose `/v1/sql` answers over [`state_with_data`] are `tests/golden/sql.json`.
pub(crate) const GOLDEN_SQL: [&str; 7] = [
    "SELECT bucket, country, orders, revenue, max_order, min_order, avg_order, buyers \
     FROM sales_by_country ORDER BY bucket, country",
    "SELECT country, sum(orders) AS orders, sum(revenue) AS revenue, \
     sum(avg_order__sum) / sum(avg_order__count) AS avg_order, \
     hll_estimate(hll_merge(buyers__hll)) AS buyers \
     FROM sales_by_country GROUP BY country ORDER BY country",
    "WITH daily AS (SELECT date_trunc('day', bucket) AS day, sum(events) AS events \
     FROM traffic_by_minute GROUP BY 1) SELECT * FROM daily ORDER BY day",
    "SELECT event_date, count(*) AS events, count(DISTINCT user_id) AS users, \
     sum(amount) AS amount FROM raw_events GROUP BY event_date ORDER BY event_date",
    "SELECT reason, \"offset\", CAST(raw AS VARCHAR) AS raw FROM quarantine_events ORDER BY \"offset\"",
    "SELECT buyers__hll IS NOT NULL AS has_sketch, bucket FROM sales_by_country ORDER BY bucket LIMIT 1",
    "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name",
];

#[tokio::test]
async fn sql_answers_over_merged_views_and_lake_tables() {
    let broker = EmbeddedBroker::start(&[("events", 1)]).unwrap();
    let lake = tempfile::tempdir().unwrap();
    let state = state_with_data(&broker, &lake).await;

    let statements = GOLDEN_SQL;
    let mut answers = Vec::new();
    for statement in statements {
        let (status, answer) = call(&state, sql(statement)).await;
        assert_eq!(status, StatusCode::OK, "{statement}: {answer}");
        answers.push(json!({ "sql": statement, "answer": answer }));
    }
    golden("sql.json", &Value::Array(answers.clone()));

    // The SQL rollup and the query API agree on the merged view, sketches included.
    let (status, api) = call(
        &state,
        Request::get("/v1/views/sales_by_country/query?granularity=all&group_by=country&measures=orders,revenue,avg_order,buyers")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let rolled = answers[1]["answer"]["rows"].as_array().unwrap();
    let api_rows = api["rows"].as_array().unwrap();
    assert_eq!(rolled.len(), api_rows.len());
    for (sql_row, api_row) in rolled.iter().zip(api_rows) {
        assert_eq!(sql_row[0], api_row["country"]);
        assert_eq!(sql_row[1], api_row["orders"]);
        assert_eq!(sql_row[4], api_row["buyers"]);
        for (i, m) in [(2, "revenue"), (3, "avg_order")] {
            let (a, b) = (sql_row[i].as_f64().unwrap(), api_row[m].as_f64().unwrap());
            assert!((a - b).abs() <= 1e-9 * a.abs().max(1.0), "{m}: {a} vs {b}");
        }
    }
    // Each side alone through the query API adds up to the merge.
    let total = |layer: &'static str| {
        let state = state.clone();
        async move {
            let uri = format!(
                "/v1/views/sales_by_country/query?granularity=all&measures=orders&layer={layer}"
            );
            call(&state, Request::get(uri).body(Body::empty()).unwrap())
                .await
                .1["rows"][0]["orders"]
                .as_i64()
                .unwrap()
        }
    };
    assert_eq!(
        total("batch").await + total("speed").await,
        total("merged").await
    );
    assert!(total("batch").await > 0 && total("speed").await > 0);
}

#[tokio::test]
async fn sql_refuses_all_but_queries_and_enforces_its_limits() {
    let broker = EmbeddedBroker::start(&[("events", 1)]).unwrap();
    let lake = tempfile::tempdir().unwrap();
    let mut state = state_with_data(&broker, &lake).await;
    let mut config = (*state.config).clone();
    config.serving.sql_max_rows = 10;
    config.serving.sql_timeout = Duration::from_millis(300);
    config.serving.sql_max_memory_bytes = 2 << 20;
    state.config = Arc::new(config);

    let deep = format!("{{\"sql\": {}1{}}}", "[".repeat(10_000), "]".repeat(10_000));
    for (request, status, code, needle) in [
        (
            sql("CREATE TABLE t AS SELECT 1"),
            400,
            "not_a_query",
            "CREATE TABLE",
        ),
        (
            sql("CREATE VIEW v AS SELECT 1"),
            400,
            "not_a_query",
            "CREATE VIEW",
        ),
        (
            sql("DROP TABLE raw_events"),
            400,
            "not_a_query",
            "DROP TABLE",
        ),
        (
            sql("INSERT INTO raw_events VALUES (1)"),
            400,
            "not_a_query",
            "INSERT",
        ),
        (sql("DELETE FROM raw_events"), 400, "not_a_query", "DELETE"),
        (
            sql("UPDATE raw_events SET amount = 0"),
            400,
            "not_a_query",
            "UPDATE",
        ),
        (
            sql("COPY (SELECT 1) TO '/tmp/out.csv'"),
            400,
            "not_a_query",
            "COPY",
        ),
        (
            sql("SET datafusion.execution.batch_size = 1"),
            400,
            "not_a_query",
            "SET",
        ),
        (
            sql("CREATE EXTERNAL TABLE p STORED AS CSV LOCATION '/etc/passwd'"),
            400,
            "not_a_query",
            "CREATE EXTERNAL TABLE",
        ),
        (
            sql("EXPLAIN DROP TABLE raw_events"),
            400,
            "not_a_query",
            "DROP",
        ),
        (
            sql("SELECT * FROM '/etc/passwd'"),
            400,
            "invalid_sql",
            "not found",
        ),
        (sql("SELECT * FROM nowhere"), 400, "invalid_sql", "nowhere"),
        (
            sql("SELECT nope FROM sales_by_country"),
            400,
            "invalid_sql",
            "nope",
        ),
        (sql("SELEC 1"), 400, "invalid_sql", "SELEC"),
        (sql("SELECT 1; SELECT 2"), 400, "invalid_sql", "single"),
        (sql(""), 400, "invalid_sql", ""),
        (
            sql("SELECT * FROM generate_series(1, 11)"),
            400,
            "row_limit_exceeded",
            "10 rows",
        ),
        (
            sql("SELECT value % 500000 AS k, count(*) FROM generate_series(1, 2000000) GROUP BY k"),
            400,
            "memory_limit_exceeded",
            "memory",
        ),
        (
            sql("SELECT count(*) FROM generate_series(1, 100000000000)"),
            504,
            "query_timeout",
            "300ms",
        ),
        (
            Request::post("/v1/sql")
                .header("content-type", "application/json")
                .body(Body::from("SELECT 1"))
                .unwrap(),
            400,
            "invalid_json",
            "sql",
        ),
        (
            Request::post("/v1/sql")
                .header("content-type", "application/json")
                .body(Body::from(r#"{"sql": "SELECT 1", "x": 1}"#))
                .unwrap(),
            400,
            "invalid_json",
            "x",
        ),
        (
            Request::post("/v1/sql")
                .header("content-type", "application/json")
                .body(Body::from(deep))
                .unwrap(),
            400,
            "invalid_json",
            "expected",
        ),
        (
            Request::get("/v1/sql").body(Body::empty()).unwrap(),
            405,
            "method_not_allowed",
            "",
        ),
    ] {
        let started = std::time::Instant::now();
        let (got, reply) = call(&state, request).await;
        assert_eq!(got.as_u16(), status, "{reply}");
        assert_eq!(reply["error"]["code"], code, "{reply}");
        assert!(
            reply["error"]["message"].as_str().unwrap().contains(needle),
            "{reply}"
        );
        assert!(started.elapsed() < Duration::from_secs(10), "{reply}");
    }
    let (status, answer) = call(&state, sql("SELECT * FROM generate_series(1, 10)")).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["rows"].as_array().unwrap().len(), 10);
    assert_eq!(
        answer["columns"],
        json!([{"name": "value", "type": "Int64"}])
    );
}

/// Adding up a view's distinct counts or averages answers a wrong number, so SQL refuses it
/// wherever the column comes from (aliases, CTEs, subqueries, joins, unions, windows) and names
/// the exact form; that form, put in its place, answers what the query API answers for the
/// coarser group; and every rollup that is exact still runs.
#[tokio::test]
async fn sql_refuses_rollups_that_would_lie_and_names_the_exact_form() {
    let broker = EmbeddedBroker::start(&[("events", 1)]).unwrap();
    let lake = tempfile::tempdir().unwrap();
    let state = state_with_data(&broker, &lake).await;
    let hll = "hll_estimate(hll_merge(buyers__hll))";
    let avg = "sum(avg_order__sum) / sum(avg_order__count)";
    let by_country = |select: &str| {
        format!(
            "SELECT country, {select} AS v FROM sales_by_country GROUP BY country ORDER BY country"
        )
    };
    // (statement, the refused call, the exact form, the measure it stands for)
    let wrong = [
        (by_country("sum(buyers)"), "sum(buyers)", hll, "buyers"),
        (
            by_country("avg(avg_order)"),
            "avg(avg_order)",
            avg,
            "avg_order",
        ),
        (
            by_country("sum(avg_order)"),
            "sum(avg_order)",
            avg,
            "avg_order",
        ),
        (
            by_country("SUM(DISTINCT buyers)"),
            "sum(buyers)",
            hll,
            "buyers",
        ),
        (by_country("sum(buyers * 1)"), "sum(buyers)", hll, "buyers"),
    ];
    let api = |measure: &str| {
        let uri = format!(
            "/v1/views/sales_by_country/query?granularity=all&group_by=country&measures={measure}"
        );
        let state = state.clone();
        async move {
            let (status, api) = call(&state, Request::get(uri).body(Body::empty()).unwrap()).await;
            assert_eq!(status, StatusCode::OK, "{api}");
            api["rows"].as_array().unwrap().clone()
        }
    };
    for (statement, refused, exact, measure) in &wrong {
        let (status, reply) = call(&state, sql(statement)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{statement}: {reply}");
        assert_eq!(reply["error"]["code"], "inexact_rollup", "{reply}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("`{refused}`")) && message.contains(&format!("`{exact}`")),
            "{statement}: {message}"
        );
        let (status, fixed) = call(&state, sql(&by_country(exact))).await;
        assert_eq!(status, StatusCode::OK, "{exact}: {fixed}");
        let rows = fixed["rows"].as_array().unwrap();
        let expected = api(measure).await;
        assert_eq!(rows.len(), expected.len());
        assert!(!rows.is_empty());
        for (row, truth) in rows.iter().zip(&expected) {
            assert_eq!(row[0], truth["country"]);
            let (a, b) = (row[1].as_f64().unwrap(), truth[*measure].as_f64().unwrap());
            assert!(
                (a - b).abs() <= 1e-9 * b.abs().max(1.0),
                "{exact}: {a} vs {b}"
            );
        }
    }
    // The same column reached another way is refused alike.
    let hidden = [
        "SELECT sum(b) FROM (SELECT buyers AS b FROM sales_by_country) AS t",
        "WITH t AS (SELECT country, buyers + 0 AS b FROM sales_by_country) \
         SELECT country, sum(b) FROM t GROUP BY country",
        "SELECT bucket, sum(buyers) OVER (ORDER BY bucket) FROM sales_by_country",
        "SELECT sum(x) FROM (SELECT buyers AS x FROM sales_by_country UNION ALL SELECT 1) AS u",
        "SELECT a.country, sum(b.buyers) FROM sales_by_country a \
         JOIN sales_by_country b ON a.country = b.country GROUP BY a.country",
        "SELECT 1 WHERE 0 < (SELECT sum(buyers) FROM sales_by_country)",
        "SELECT avg(avg_order) FROM (SELECT country, avg_order FROM sales_by_country \
         GROUP BY country, avg_order) AS t",
        "SELECT avg(visitors) FROM traffic_by_minute WHERE false \
         UNION ALL SELECT sum(avg_order) FROM sales_by_country",
        // The same wrong numbers made from the states.
        "SELECT country, sum(hll_estimate(buyers__hll)) FROM sales_by_country GROUP BY country",
        "SELECT avg(avg_order__sum / avg_order__count) FROM sales_by_country",
        // Exact per-group values added up again across groups.
        "SELECT sum(b) FROM (SELECT country, hll_estimate(hll_merge(buyers__hll)) AS b \
         FROM sales_by_country GROUP BY country) AS t",
        "SELECT sum(m) FROM (SELECT country, max(buyers) AS m FROM sales_by_country \
         GROUP BY country) AS t",
        "SELECT avg(a) FROM (SELECT country, sum(avg_order__sum) / sum(avg_order__count) AS a \
         FROM sales_by_country GROUP BY country) AS t",
        "SELECT sum(b) FROM (SELECT DISTINCT ON (country) country, buyers + 0 AS b \
         FROM sales_by_country ORDER BY country, bucket) AS t",
    ];
    for statement in hidden {
        let (status, reply) = call(&state, sql(statement)).await;
        assert_eq!(
            (status, &reply["error"]["code"]),
            (StatusCode::BAD_REQUEST, &json!("inexact_rollup")),
            "{statement}: {reply}"
        );
    }
    // What is exact, or says what it is, runs.
    let exact = [
        by_country("sum(orders)"),
        by_country("sum(revenue)"),
        by_country("max(max_order)"),
        by_country("min(min_order)"),
        by_country("max(buyers)"),
        by_country("avg(buyers)"),
        by_country("min(avg_order)"),
        by_country("count(buyers)"),
        by_country(hll),
        by_country(avg),
        "SELECT sum(avg_order__count), sum(avg_order__sum) FROM sales_by_country".to_owned(),
        "SELECT sum(b) FROM (SELECT count(*) AS b FROM sales_by_country GROUP BY buyers) AS t"
            .to_owned(),
        "SELECT country, buyers, avg_order FROM sales_by_country ORDER BY bucket, country"
            .to_owned(),
        // A finished value that a condition only tests is not what is added up.
        "SELECT sum(CASE WHEN avg_order > 100 THEN orders ELSE 0 END) FROM sales_by_country"
            .to_owned(),
        "SELECT sum(orders) FILTER (WHERE buyers > 1) FROM sales_by_country".to_owned(),
        "SELECT max(b) FROM (SELECT country, hll_estimate(hll_merge(buyers__hll)) AS b \
         FROM sales_by_country GROUP BY country) AS t"
            .to_owned(),
    ];
    for statement in exact {
        let (status, reply) = call(&state, sql(&statement)).await;
        assert_eq!(status, StatusCode::OK, "{statement}: {reply}");
    }
}

/// `tz` starts day buckets at the zone's midnight and renders them with its offset; the days
/// hold every event once (their total equals the UTC days'), and a zone whose midnight cuts
/// the view's buckets is refused.
#[tokio::test]
async fn day_buckets_in_a_named_zone_carry_its_offset() {
    let broker = EmbeddedBroker::start(&[("events", 1)]).unwrap();
    let lake = tempfile::tempdir().unwrap();
    let state = state_with_data(&broker, &lake).await;
    let get = |uri: String| {
        let state = state.clone();
        async move { call(&state, Request::get(uri).body(Body::empty()).unwrap()).await }
    };
    let base = "/v1/views/sales_by_country/query?granularity=day&measures=orders";
    let (status, zoned) = get(format!("{base}&tz=America/Los_Angeles")).await;
    assert_eq!(status, StatusCode::OK, "{zoned}");
    assert_eq!(zoned["tz"], "America/Los_Angeles");
    let (_, utc) = get(base.to_owned()).await;
    assert!(utc.get("tz").is_none());
    let total = |answer: &Value| -> i64 {
        let rows = answer["rows"].as_array().unwrap();
        rows.iter().map(|r| r["orders"].as_i64().unwrap()).sum()
    };
    assert!(total(&utc) > 0);
    assert_eq!(total(&zoned), total(&utc));
    for row in zoned["rows"].as_array().unwrap() {
        let bucket = row["bucket"].as_str().unwrap();
        assert!(
            bucket.ends_with("T00:00:00-08:00") || bucket.ends_with("T00:00:00-07:00"),
            "{bucket}"
        );
    }
    let (status, refused) = get(format!("{base}&tz=Asia/Kathmandu")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(refused["error"]["code"], "invalid_tz", "{refused}");
    let (status, refused) = call(
        &state,
        Request::post("/v1/views/sales_by_country/query")
            .header("content-type", "application/json")
            .body(Body::from(r#"{"granularity": "hour", "tz": "Asia/Seoul"}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(refused["error"]["code"], "invalid_tz", "{refused}");
}

/// The lists a dashboard polls answer 304 to the ETag of their last answer until what they
/// list changes: a new refusal in the quarantine table, a new or updated run record.
#[tokio::test]
async fn polled_lists_answer_304_until_they_change() {
    use lambdaflow_batch::archive::commit::OffsetTable;
    use lambdaflow_batch::lake::open_or_create;
    use lambdaflow_common::schema::{INGEST_DATE, quarantine_schema};

    let broker = EmbeddedBroker::start(&[("events", 1)]).unwrap();
    let lake = tempfile::tempdir().unwrap();
    let state = state_with_data(&broker, &lake).await;
    let get = |path: &'static str, tag: Option<String>| {
        let state = state.clone();
        async move {
            let mut request = Request::get(path);
            if let Some(tag) = tag {
                request = request.header("if-none-match", tag);
            }
            let response = app(state)
                .oneshot(request.body(Body::empty()).unwrap())
                .await
                .unwrap();
            let status = response.status();
            let tag = response.headers()["etag"].to_str().unwrap().to_owned();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            (status, tag, body)
        }
    };
    for path in ["/v1/quarantine?limit=5", "/v1/batch/runs"] {
        let (status, tag, body) = get(path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(!body.is_empty());
        let (status, again, body) = get(path, Some(tag.clone())).await;
        assert_eq!((status, &again), (StatusCode::NOT_MODIFIED, &tag), "{path}");
        assert!(body.is_empty(), "{path}: a 304 has no body");
        let (status, _, _) = get(path, Some("W/\"stale\"".into())).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }

    let (_, quarantine_tag, _) = get("/v1/quarantine?limit=5", None).await;
    let config = state.config.clone();
    let mut messages = fixed_messages();
    messages.push(b"{not json".to_vec());
    let validated = validate_in_order(
        &Validator::new(config.source()),
        1_763_856_000_000_000,
        &messages,
    );
    let url = Lake::new(&config.lake).unwrap().quarantine("events");
    let schema = quarantine_schema();
    let table = open_or_create(&url, &schema, &[INGEST_DATE]).await.unwrap();
    let mut table = OffsetTable::load(table, (schema, INGEST_DATE), "events", &[0])
        .await
        .unwrap();
    let last = messages.len() as i64 - 1;
    table
        .append(validated.rejects.clone(), &[(0, last)].into())
        .await
        .unwrap();
    let (status, moved, body) = get("/v1/quarantine?limit=5", Some(quarantine_tag.clone())).await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(moved, quarantine_tag);
    let listed: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(listed["events"][0]["offset"], last, "{listed}");

    let (_, runs_tag, _) = get("/v1/batch/runs", None).await;
    let run = batch_run(&state, "{}").await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let (status, moved, body) = get("/v1/batch/runs", Some(runs_tag.clone())).await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(moved, runs_tag);
    let listed: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(listed["runs"][0]["id"], run["id"], "{listed}");
}

#[tokio::test]
async fn quarantine_lists_the_latest_refusals_with_reasons() {
    let broker = EmbeddedBroker::start(&[("events", 1)]).unwrap();
    let empty_lake = tempfile::tempdir().unwrap();
    let empty = state(&broker, 1 << 20, &empty_lake);
    let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();
    let (status, reply) = call(&empty, get("/v1/quarantine")).await;
    assert_eq!((status, reply), (StatusCode::OK, json!({"events": []})));

    let lake = tempfile::tempdir().unwrap();
    let state = state_with_data(&broker, &lake).await;
    let (status, reply) = call(&state, get("/v1/quarantine?limit=2")).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let events = reply["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["reason"], "not_an_object");
    assert_eq!(events[0]["offset"], 30);
    assert_eq!(events[0]["raw"], r#"["not","an","object"]"#);
    assert_eq!(events[1]["reason"], "bad_timestamp");
    assert_eq!(events[1]["ingest_time"], "2025-11-23T00:00:00Z");
    let (_, all) = call(&state, get("/v1/quarantine")).await;
    assert_eq!(all["events"].as_array().unwrap().len(), 3);
    assert_eq!(all["events"][2]["reason"], "malformed_json");

    for (path, code) in [
        ("/v1/quarantine?limit=0", "invalid_limit"),
        ("/v1/quarantine?limit=1001", "invalid_limit"),
        ("/v1/quarantine?limit=ten", "invalid_request"),
        ("/v1/quarantine?since=today", "invalid_request"),
    ] {
        let (status, reply) = call(&state, get(path)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {reply}");
        assert_eq!(reply["error"]["code"], code, "{path}: {reply}");
    }
}

#[tokio::test]
async fn lake_status_lists_every_table_and_sets_its_gauges() {
    let broker = EmbeddedBroker::start(&[("events", 1)]).unwrap();
    let lake = tempfile::tempdir().unwrap();
    let state = state_with_data(&broker, &lake).await;
    let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();
    let (status, reply) = call(&state, get("/v1/lake")).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let tables = reply["tables"].as_array().unwrap();
    let names: Vec<&str> = tables
        .iter()
        .map(|t| t["table"].as_str().unwrap())
        .collect();
    let mut expected = vec!["raw/events".to_owned(), "quarantine/events".to_owned()];
    expected.extend(
        state
            .config
            .views
            .iter()
            .map(|v| format!("views/{}", v.name)),
    );
    assert_eq!(names, expected);
    let raw = &tables[0];
    assert!(
        raw["version"].is_u64() && raw["live_files"].as_u64().unwrap() >= 1,
        "{raw}"
    );
    assert!(
        raw["storage_bytes"].as_u64().unwrap() > raw["live_bytes"].as_u64().unwrap(),
        "the log is on storage too: {raw}"
    );
    assert!(raw["oldest_date"].as_str().unwrap() <= raw["newest_date"].as_str().unwrap());
    assert_eq!(raw["next_expiry"], Value::Null, "kept forever");

    let response = app(state.clone()).oneshot(get("/metrics")).await.unwrap();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let scraped = String::from_utf8(body.to_vec()).unwrap();
    assert!(
        scraped.contains("lambdaflow_lake_storage_bytes{table=\"raw/events\"}"),
        "{scraped}"
    );
}

#[tokio::test]
async fn metrics_are_prometheus_text_with_scrape_time_gauges() {
    let broker = EmbeddedBroker::start(&[("events", 1)]).unwrap();
    let lake = tempfile::tempdir().unwrap();
    let progress = Progress {
        heads: [(0, 50), (1, 7)].into(),
        consumed: [(0, 42)].into(),
        ..caught_up()
    };
    let state = state_with_data_at(&broker, &lake, progress).await;
    let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();
    call(&state, get("/v1/views/sales_by_country/query")).await;
    let response = app(state.clone()).oneshot(get("/metrics")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let text = String::from_utf8(body.to_vec()).unwrap();
    for line in [
        "lambdaflow_speed_lag_messages{partition=\"0\",source=\"events\"} 7",
        "lambdaflow_speed_lag_messages{partition=\"1\",source=\"events\"} 7",
        "lambdaflow_speed_consumed_offset{partition=\"0\",source=\"events\"} 42",
        "lambdaflow_speed_head_offset{partition=\"0\",source=\"events\"} 50",
        "lambdaflow_view_batch_version{view=\"sales_by_country\"} 1",
        "# TYPE lambdaflow_speed_events_valid_total counter",
        "# TYPE lambdaflow_speed_events_duplicate_total counter",
        "# TYPE lambdaflow_speed_messages_total counter",
        "# TYPE lambdaflow_http_request_seconds histogram",
        "# TYPE lambdaflow_speed_retained_bytes gauge",
    ] {
        assert!(text.contains(line), "missing `{line}` in\n{text}");
    }
    assert!(text.contains(
        "lambdaflow_http_request_seconds_count{method=\"GET\",route=\"/v1/views/{name}/query\",status=\"200\"}"
    ));
    let groups = text
        .lines()
        .find(|l| l.starts_with("lambdaflow_view_speed_groups{view=\"sales_by_country\"}"))
        .unwrap();
    let expected = state
        .speeds
        .served(0)
        .snapshot()
        .unwrap()
        .pair(0)
        .speed()
        .len();
    assert!(groups.ends_with(&format!(" {expected}")), "{groups}");
}

#[tokio::test]
async fn every_documented_route_is_served_and_every_error_is_json() {
    let broker = EmbeddedBroker::start(&[("events", 1)]).unwrap();
    let lake = tempfile::tempdir().unwrap();
    let state = state_with_data(&broker, &lake).await;
    let document: Value =
        serde_json::from_str(lambdaflow_serving::http::openapi::DOCUMENT).unwrap();
    let (status, served) = call(
        &state,
        Request::get("/openapi.json").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = state.config.views.iter().map(|v| v.name.as_str()).collect();
    let view_path = &served["paths"]["/v1/views/{name}/query"];
    for method in ["get", "post"] {
        assert_eq!(
            view_path[method]["parameters"][0]["schema"],
            json!({"type": "string", "enum": names}),
            "{method}: the served document names this config's views"
        );
    }
    assert_eq!(
        served["paths"]["/v1/events/{source}"]["post"]["parameters"][0]["schema"],
        json!({"type": "string", "enum": [state.config.source().name]}),
        "the served document names this config's source"
    );
    assert_eq!(
        served["paths"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        document["paths"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>()
    );

    let methods = ["get", "post", "put", "delete", "patch"];
    let mut operations = 0;
    for (path, item) in document["paths"].as_object().unwrap() {
        let uri = path
            .replace("{name}", "sales_by_country")
            .replace("{table}", "raw_events")
            .replace("{source}", &state.config.source().name)
            .replace("{id}", "20990101T000000000Z-000000");
        for method in methods {
            let documented = item.get(method).is_some();
            operations += usize::from(documented);
            let request = Request::builder()
                .method(method.to_uppercase().as_str())
                .uri(&uri)
                .header("content-type", "application/json")
                .body(Body::from("{}"))
                .unwrap();
            let response = app(state.clone()).oneshot(request).await.unwrap();
            let status = response.status();
            let content_type = response
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            if documented {
                assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
                let reply: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                assert_ne!(
                    reply["error"]["message"], "no such route",
                    "{method} {path}"
                );
            } else {
                assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            }
            if status.is_client_error() || status.is_server_error() {
                assert!(
                    content_type.starts_with("application/json"),
                    "{method} {path}: {content_type}"
                );
                let reply: Value = serde_json::from_slice(&body).unwrap();
                assert!(
                    reply["error"]["code"].is_string(),
                    "{method} {path}: {reply}"
                );
                assert!(
                    reply["error"]["message"].is_string(),
                    "{method} {path}: {reply}"
                );
            }
        }
    }
    assert_eq!(operations, 19, "the document lists every operation once");

    // Bodies over the limit, deep documents, broken JSON and arrays for objects on every route
    // that reads a body.
    let mut small = state.clone();
    let mut config = (*small.config).clone();
    config.serving.max_body_bytes = 1024;
    small.config = Arc::new(config);
    let deep = format!(
        "{{\"filters\": {{\"country\": {}{}}}}}",
        "[".repeat(300),
        "]".repeat(300)
    );
    for path in [
        "/v1/sql",
        "/v1/views/sales_by_country/query",
        "/v1/batch/runs",
        "/v1/events",
        "/v1/events/events",
    ] {
        let big = format!("{{\"sql\": \"{}\"}}", "x".repeat(4096));
        for (body, status, code) in [
            (big, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            (deep.clone(), StatusCode::BAD_REQUEST, ""),
            ("{\"sql\": ".to_owned(), StatusCode::BAD_REQUEST, ""),
            // serde would read a struct from an array of its fields.
            ("[\"SELECT 1\"]".to_owned(), StatusCode::BAD_REQUEST, ""),
        ] {
            let request = Request::post(path)
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap();
            let (got, reply) = call(&small, request).await;
            if path.starts_with("/v1/events") && got == StatusCode::OK {
                // The collector answers per event: a broken document is a rejected event.
                assert_eq!(reply["rejected"], 1, "{path}: {reply}");
                continue;
            }
            assert_eq!(got, status, "{path}: {reply}");
            assert!(reply["error"]["code"].is_string(), "{path}: {reply}");
            if !code.is_empty() {
                assert_eq!(reply["error"]["code"], code, "{path}: {reply}");
            }
        }
    }
    let deep_query = Request::post("/v1/views/sales_by_country/query")
        .header("content-type", "application/json")
        .body(Body::from(deep))
        .unwrap();
    let (status, reply) = call(&small, deep_query).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("recursion limit"),
        "{reply}"
    );
    let (status, _) = call(
        &state,
        Request::get("/healthz").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "the process is still up");
}

#[tokio::test]
async fn the_dashboard_is_one_self_contained_page() {
    let broker = EmbeddedBroker::start(&[("events", 1)]).unwrap();
    let lake = tempfile::tempdir().unwrap();
    let state = state(&broker, 1024, &lake);
    let response = app(state)
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/html; charset=utf-8"
    );
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let page = String::from_utf8(body.to_vec()).unwrap();
    for used in [
        "/v1/views",
        "/metrics",
        "/v1/batch/runs",
        "/v1/quarantine",
        "layer",
    ] {
        assert!(page.contains(used), "the page reads {used}");
    }
    for external in ["http://", "https://", "//cdn"] {
        let outside = page
            .match_indices(external)
            .any(|(i, _)| !page[i..].starts_with("http://www.w3.org/2000/svg"));
        assert!(
            !outside,
            "the page loads nothing from outside the machine ({external})"
        );
    }
}

#[tokio::test]
async fn answers_say_when_offsets_were_lost_and_a_halted_partition_is_not_ready() {
    let broker = EmbeddedBroker::start(&[("events", 1)]).unwrap();
    let lake = tempfile::tempdir().unwrap();
    let lost = Progress {
        lost: [(0, vec![(5, 9)])].into(),
        ..caught_up()
    };
    let state = state_with_data_at(&broker, &lake, lost).await;
    state.set_ready();
    let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();
    let (status, answer) = call(&state, get("/v1/views/sales_by_country/query")).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["complete"], false);
    assert_eq!(answer["lost_offsets"], json!({"0": [[5, 9]]}));
    let (_, batch_only) = call(&state, get("/v1/views/sales_by_country/query?layer=batch")).await;
    assert_eq!(batch_only["complete"], true);
    assert!(batch_only.get("lost_offsets").is_none(), "{batch_only}");
    let (_, status) = call(&state, get("/v1/views/sales_by_country")).await;
    assert_eq!(status["complete"], false);
    assert_eq!(status["lost_offsets"], json!({"0": [[5, 9]]}));
    assert_eq!(call(&state, get("/readyz")).await.0, StatusCode::OK);

    let halted = Progress {
        halted: [(0, "the topic was recreated".to_owned())].into(),
        ..caught_up()
    };
    let state = state_with_data_at(&broker, &lake, halted).await;
    state.set_ready();
    let (status, body) = call(&state, get("/readyz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("partition 0") && message.contains("recreated"),
        "{message}"
    );
    let (_, status) = call(&state, get("/v1/views/sales_by_country")).await;
    assert_eq!(
        status["halted_partitions"],
        json!({"0": "the topic was recreated"})
    );
}

#[tokio::test]
async fn a_redefined_view_answers_503_until_its_batch_side_is_recomputed() {
    let broker = EmbeddedBroker::start(&[("events", 1)]).unwrap();
    let lake = tempfile::tempdir().unwrap();
    let base = state(&broker, 1 << 20, &lake);
    let at = |definition: &str| {
        let pairs = base
            .config
            .views
            .iter()
            .map(|_| {
                let batch = BatchView {
                    version: Some(4),
                    watermark: None,
                    state: ViewState::new(),
                    definition: Some(definition.to_owned()),
                    ..BatchView::default()
                };
                ViewPair::new(Arc::new(batch), ViewState::new())
            })
            .collect();
        let served = Served::from_parts(pairs, Default::default(), caught_up());
        AppState {
            speeds: Speeds::new(&base.config, vec![served]),
            ..base.clone()
        }
    };
    let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();

    let stale = at("computed under an older filter");
    let (status, body) = call(&stale, get("/v1/views/sales_by_country/query")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "view_rebuilding");
    let (status, body) = call(&stale, sql("SELECT count(*) FROM sales_by_country")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "view_rebuilding");
    let (_, status) = call(&stale, get("/v1/views/sales_by_country")).await;
    assert_eq!(status["rebuilding"], true);
    // The batch side alone is still readable, as what it is.
    let (status, _) = call(&stale, get("/v1/views/sales_by_country/query?layer=batch")).await;
    assert_eq!(status, StatusCode::OK);

    let current = at(&base.definitions[0]);
    let (status, body) = call(&current, get("/v1/views/sales_by_country/query")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, status) = call(&current, get("/v1/views/sales_by_country")).await;
    assert_eq!(status["rebuilding"], false);
}

#[tokio::test]
async fn an_event_up_to_max_event_bytes_is_accepted_whatever_its_size() {
    let broker = EmbeddedBroker::start(&[("events", 4)]).unwrap();
    let lake = tempfile::tempdir().unwrap();
    let mut config = Config::shop();
    config.sources[0].max_event_bytes = 2_000_000;
    config.serving.max_body_bytes = 4 << 20;
    let state = state_with(&broker, &lake, config);
    let mut event = good("big");
    event["product"] = "p".repeat(1_500_000).into();
    let (status, reply) = call(&state, post(event.to_string(), "application/json")).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["accepted"], 1);
    assert_eq!(produced_keys(&broker), vec!["big"]);
}

/// The collector validates at the request's arrival time and produces each event with that
/// time as its message timestamp, which every layer then validates against.
#[tokio::test]
async fn collected_events_carry_their_arrival_time() {
    let broker = EmbeddedBroker::start(&[("events", 1)]).unwrap();
    let lake = tempfile::tempdir().unwrap();
    let state = state(&broker, 1 << 20, &lake);
    let before = lambdaflow_common::timestamp::now_micros() / 1000;
    let (status, reply) = call(&state, post(good("a").to_string(), "application/json")).await;
    let after = lambdaflow_common::timestamp::now_micros() / 1000;
    assert_eq!((status, &reply["accepted"]), (StatusCode::OK, &json!(1)));
    let consumer = Consumer::reader(broker.bootstrap_servers(), "ts-read", "events").unwrap();
    consumer.assign(&[(0, 0)].into()).unwrap();
    let record = consumer
        .poll_record(Duration::from_secs(5))
        .unwrap()
        .unwrap();
    let sent = record.timestamp_ms.unwrap();
    assert!(
        (before..=after).contains(&sent),
        "{before} <= {sent} <= {after}"
    );
}

/// A Kafka message's timestamp, not the reader's clock, is the "now" of `max_future` and
/// `max_past`: both consumers (the archiver's and the speed layer's, through the one poll
/// loop) refuse an event whose message was sent long before its event time, although the
/// wall clock says the event is in the past.
#[tokio::test]
async fn both_consumers_judge_an_event_by_its_message_timestamp() {
    use lambdaflow_kafka::consumer::{ChunkPolicy, ChunkReader};

    let broker = EmbeddedBroker::start(&[("events", 1)]).unwrap();
    let mut source = Config::shop().source().clone();
    source.max_past = Some(Duration::from_secs(400 * 86_400));
    let producer = Producer::new(broker.bootstrap_servers()).unwrap();
    let sent_ms = 1_600_000_000_000_i64; // 2020-09-13
    let day_ms = 86_400_000_i64;
    let event = |id: &str, time_ms: i64| {
        json!({"event_id": id, "event_time": time_ms, "type": "view", "user_id": "u", "country": "kr"})
            .to_string()
    };
    // (id, event time, verdict): max_future is 1 day and max_past 400 days of the message's
    // timestamp, each bound included.
    let cases = [
        ("future", sent_ms + 2 * day_ms, Some("time_in_future")),
        ("edge_future", sent_ms + day_ms, None),
        ("edge_past", sent_ms - 400 * day_ms, None),
        ("old", sent_ms - 400 * day_ms - 1, Some("time_too_old")),
        ("fine", sent_ms - 5 * day_ms, None),
    ];
    for (id, time_ms, _) in cases {
        producer
            .queue_at(
                "events",
                id.as_bytes(),
                event(id, time_ms).as_bytes(),
                Some(sent_ms),
            )
            .unwrap()
            .await
            .unwrap();
    }
    let policy = ChunkPolicy {
        max_wait: Duration::from_secs(3),
        max_messages: cases.len(),
        poll: Duration::from_millis(50),
    };
    for consumer in [
        Consumer::archiver(broker.bootstrap_servers(), "ts-test", "events").unwrap(),
        Consumer::speed(broker.bootstrap_servers(), "ts-test", "events").unwrap(),
    ] {
        consumer.assign(&[(0, 0)].into()).unwrap();
        let shutdown = CancellationToken::new();
        let (reader, mut chunks) = ChunkReader::spawn(
            Arc::new(consumer),
            Validator::new(&source),
            policy,
            shutdown.clone(),
            ("test", 1),
        );
        let chunk = chunks.recv().await.unwrap();
        shutdown.cancel();
        drop(chunks);
        reader.join().await.unwrap();
        assert_eq!(chunk.messages, cases.len());
        let rejects = &chunk.validated.rejects;
        let reasons = arrow::array::AsArray::as_string::<i32>(rejects.column(1).as_ref());
        let offsets = arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(
            rejects.column(4).as_ref(),
        );
        let got: Vec<(usize, &str)> = (0..rejects.num_rows())
            .map(|i| (offsets.value(i) as usize, reasons.value(i)))
            .collect();
        let want: Vec<(usize, &str)> = cases
            .iter()
            .enumerate()
            .filter_map(|(i, (_, _, reason))| reason.map(|r| (i, r)))
            .collect();
        assert_eq!(got, want);
        assert_eq!(chunk.validated.events.num_rows(), 3);
    }
}

/// Valid events as hostile as the contract allows: ids and dimension values of any Unicode
/// (control characters, NUL, thousands of bytes), times at both ends of years 1 to 9999 and
/// around the epoch, integers near `i64::MAX` whose sums overflow, floats near `f64::MAX`
/// whose sums overflow to infinity, subnormals and negative zero, number-like strings, and
/// deep arrays and objects in undeclared fields.
mod hostile {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "\\PC{0,12}",
            Just(String::new()),
            Just("NaN".to_owned()),
            Just("-Infinity".to_owned()),
            Just("-0".to_owned()),
            Just("ß\u{0}\u{1F600}\u{202E}".to_owned()),
            Just("x".repeat(5_000)),
        ]
    }

    fn time() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(json!("0001-01-01T00:00:00Z")),
            Just(json!("9999-12-31T23:59:59.999999Z")),
            Just(json!("0001-01-01T09:00:00+09:00")),
            Just(json!("1969-12-31T23:59:59.999999Z")),
            Just(json!(-62_135_596_800_000_i64)),
            Just(json!(253_402_300_799_999_i64)),
            Just(json!(0)),
            (-62_135_596_800_000_i64..=253_402_300_799_999).prop_map(|ms| json!(ms)),
        ]
    }

    fn int() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(json!(i64::MAX)),
            Just(json!(i64::MIN)),
            Just(json!(i64::MAX - 1)),
            Just(json!(-1)),
            any::<i64>().prop_map(|v| json!(v)),
            Just(Value::Null),
        ]
    }

    fn float() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(json!(1e308)),
            Just(json!(-1e308)),
            Just(json!(f64::MAX)),
            Just(json!(f64::MIN)),
            Just(json!(f64::MIN_POSITIVE)),
            Just(json!(5e-324)),
            Just(json!(-0.0)),
            Just(json!(u64::MAX)),
            Just(json!(i64::MIN)),
            any::<f64>().prop_map(|v| json!(v)),
            Just(Value::Null),
        ]
    }

    fn deep() -> impl Strategy<Value = String> {
        (0usize..120, any::<bool>()).prop_map(|(depth, arrays)| {
            if arrays {
                format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
            } else {
                format!("{}1{}", "{\"k\":".repeat(depth), "}".repeat(depth))
            }
        })
    }

    /// An event: its id and the rest of its payload.
    #[derive(Debug, Clone)]
    pub struct Event {
        id: String,
        rest: String,
    }

    impl Event {
        /// The payload, its id prefixed with `n` so that ids are unique in a test.
        pub fn payload(&self, n: usize) -> Vec<u8> {
            let id = serde_json::to_string(&format!("{n}:{}", self.id)).unwrap();
            format!("{{\"event_id\":{id},{}", self.rest).into_bytes()
        }
    }

    /// One event.
    pub fn event() -> impl Strategy<Value = Event> {
        (
            (text(), time(), text(), text()),
            (text(), text(), int(), float()),
            (deep(), text(), time()),
        )
            .prop_map(
                |(
                    (id, time, kind, user),
                    (country, product, quantity, amount),
                    (deep, key, seen_at),
                )| {
                    let mut event = json!({
                        "event_time": time,
                        "type": kind,
                        "user_id": user,
                        "country": country,
                        "product": product,
                        "quantity": quantity,
                        "amount": amount,
                        "seen_at": seen_at,
                    });
                    if ![
                        "event_id",
                        "event_time",
                        "type",
                        "user_id",
                        "country",
                        "product",
                        "quantity",
                        "amount",
                        "email",
                        "seen_at",
                    ]
                    .contains(&key.as_str())
                    {
                        event[key] = json!("undeclared");
                    }
                    let mut rest = event.to_string();
                    rest.remove(0);
                    rest.pop();
                    rest.push_str(",\"nested\":");
                    rest.push_str(&deep);
                    rest.push('}');
                    Event { id, rest }
                },
            )
    }
}

/// The demo's config with undeclared fields kept, no effective `max_future` (so that year
/// 9999 is valid) and a view that sums, bounds and averages the integer and float fields.
fn hostile_config() -> Config {
    let mut config = Config::shop();
    config.sources[0].keep_undeclared = true;
    config.sources[0].max_future = Duration::from_secs(10_000 * 366 * 86_400);
    config.views.push(
        serde_json::from_value(json!({
            "name": "hostile_by_day",
            "granularity": "day",
            "dimensions": ["country", "product"],
            "filter": "lower(type) <> 'never' AND abs(quantity) >= 0",
            "measures": [
                {"name": "n", "agg": "count"},
                {"name": "qty", "agg": "sum", "field": "quantity"},
                {"name": "qty_min", "agg": "min", "field": "quantity"},
                {"name": "qty_max", "agg": "max", "field": "quantity"},
                {"name": "qty_avg", "agg": "avg", "field": "quantity"},
                {"name": "amt", "agg": "sum", "field": "amount"},
                {"name": "amt_max", "agg": "max", "field": "amount"},
                {"name": "amt_avg", "agg": "avg", "field": "amount"},
                {"name": "products", "agg": "approx_distinct", "field": "product"},
            ],
        }))
        .unwrap(),
    );
    config.sources[0]
        .fields
        .push(serde_json::from_value(json!({"name": "seen_at", "type": "timestamp"})).unwrap());
    config.views.push(
        serde_json::from_value(json!({
            "name": "hostile_by_value",
            "granularity": "minute",
            "dimensions": ["amount", "quantity", "seen_at"],
            "measures": [
                {"name": "n", "agg": "count"},
                {"name": "first_seen", "agg": "min", "field": "seen_at"},
                {"name": "last_seen", "agg": "max", "field": "seen_at"},
                {"name": "users", "agg": "approx_distinct", "field": "user_id"},
            ],
        }))
        .unwrap(),
    );
    config.check().unwrap();
    config
}

/// Every stage after the validator takes `messages`: the archive's raw and quarantine
/// commits, a full batch run, the speed fold, the query API on batch ⊕ speed, SQL over the
/// views and the lake tables. No stage may fail or panic, and batch and speed agree on every
/// count, integer sum and extreme.
async fn through_every_stage(messages: Vec<Vec<u8>>) {
    use lambdaflow_batch::archive::commit::OffsetTable;
    use lambdaflow_batch::lake::open_or_create;
    use lambdaflow_batch::views::run::BatchRun;
    use lambdaflow_common::query::{AnswerLimits, Query, Value as Answer, answer};
    use lambdaflow_common::schema::{EVENT_DATE, INGEST_DATE, quarantine_schema, raw_schema};

    use lambdaflow_serving::speed_layer::load_batch_view;
    use lambdaflow_speed::engine::Speed;

    let broker = EmbeddedBroker::start(&[("events", 1)]).unwrap();
    let lake = tempfile::tempdir().unwrap();
    let state = state_with(&broker, &lake, hostile_config());
    let config = state.config.clone();
    // As the archiver and the speed layer validate: with the views' filters.
    let validator = Validator::new(config.source())
        .with_views(&config.views)
        .unwrap();
    let validated = validate_in_order(&validator, 1_763_856_000_000_000, &messages);
    assert_eq!(
        validated.events.num_rows() + validated.rejects.num_rows(),
        messages.len()
    );
    // Every generated event is valid; only a stage that cannot take one refuses it.
    let reasons = arrow::array::AsArray::as_string::<i32>(validated.rejects.column(1).as_ref());
    for reason in reasons.iter().flatten() {
        assert_eq!(reason, "unprocessable:view_filter");
    }
    // Ids are unique per (id, date) so that the archive's dedup keeps every event. Two
    // commits, each followed by a batch run: a full one, then an incremental one.
    let upto = [(0, messages.len() as i64 - 1)].into();
    let lake_root = Lake::new(&config.lake).unwrap();
    let mut tables = Vec::new();
    for (url, schema, partition_by) in [
        (
            lake_root.raw("events"),
            raw_schema(config.source()),
            EVENT_DATE,
        ),
        (
            lake_root.quarantine("events"),
            quarantine_schema(),
            INGEST_DATE,
        ),
    ] {
        let table = open_or_create(&url, &schema, &[partition_by])
            .await
            .unwrap();
        tables.push(
            OffsetTable::load(table, (schema, partition_by), "events", &[0])
                .await
                .unwrap(),
        );
    }
    let half = validated.events.num_rows() / 2;
    let mut raw_version = None;
    for (events, rejects) in [
        (validated.events.slice(0, half), None),
        (
            validated
                .events
                .slice(half, validated.events.num_rows() - half),
            Some(&validated.rejects),
        ),
    ] {
        let last = events.num_rows() as i64 + i64::from(rejects.is_some()) * 1_000_000;
        let upto = [(0, last)].into();
        tables[0].append(events, &upto).await.unwrap();
        if let Some(rejects) = rejects {
            tables[1].append(rejects.clone(), &upto).await.unwrap();
        }
        let history = History::new(&lake_root).unwrap();
        let record = BatchRun::new(config.clone(), lake_root.clone(), history)
            .run()
            .await
            .unwrap();
        assert!(record.error.is_none(), "{record:?}");
        raw_version = record.raw_version;
    }

    // The speed layer, deduplicating against the raw table's ids of every date it sees.
    let reader = LakeReader::new(&config.lake).unwrap();
    let served = Served::new();
    let mut speed = Speed::before_any_batch(config.clone(), served.clone()).unwrap();
    for date in speed.dates_to_load(&validated.events) {
        let mut ids = 0;
        reader
            .raw_ids(config.source(), raw_version.unwrap(), date, |part| {
                ids += arrow::array::Array::len(part);
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            })
            .await
            .unwrap();
        assert!(ids > 0, "no ids stored for date {date}");
        speed.load_ids(date, []).unwrap();
    }
    speed.fold(validated.events.clone(), &upto).unwrap();
    let snapshot = served.snapshot().unwrap();

    let mut pairs = Vec::new();
    for (view, pair) in config.views.iter().zip(snapshot.pairs()) {
        let batch = load_batch_view(&config, &reader, view).await.unwrap();
        let query = Query::whole(view);
        let whole = |part| answer(config.source(), view, &[part], &query, &AnswerLimits::NONE);
        let from_batch = whole(&batch.state).unwrap();
        let from_speed = whole(pair.speed()).unwrap();
        assert_eq!(from_batch.len(), from_speed.len(), "{}", view.name);
        for (b, s) in from_batch.iter().zip(&from_speed) {
            assert_eq!((b.bucket, &b.dimensions), (s.bucket, &s.dimensions));
            for (x, y) in b.values.iter().zip(&s.values) {
                if !matches!((x, y), (Answer::Float(_), Answer::Float(_))) {
                    assert_eq!(x, y, "{}: batch and speed differ", view.name);
                }
            }
        }
        pairs.push(ViewPair::new(Arc::new(batch), pair.speed().clone()));
    }
    if let Some(python) = std::env::var_os("LAMBDAFLOW_PYTHON") {
        readable_from_python(&python, lake.path(), &config, validated.events.num_rows());
    }
    let served = Served::from_parts(pairs, Default::default(), caught_up());
    let state = AppState {
        speeds: Speeds::new(&state.config, vec![served]),
        ..state
    };
    let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();
    for view in &config.views {
        let dims = view.dimensions.join(",");
        for granularity in ["all", "day", view.granularity.as_str()] {
            let uri = format!(
                "/v1/views/{}/query?granularity={granularity}&group_by={dims}",
                view.name
            );
            let (status, body) = call(&state, get(&uri)).await;
            assert_eq!(status, StatusCode::OK, "{uri}: {body}");
        }
        let (status, body) = call(&state, sql(&format!("SELECT * FROM {}", view.name))).await;
        assert_eq!(status, StatusCode::OK, "{}: {body}", view.name);
    }
    for statement in [
        "SELECT * FROM raw_events",
        "SELECT sum(quantity), sum(amount), avg(amount), min(event_time), max(event_time), \
         count(DISTINCT event_id) FROM raw_events",
        "SELECT event_date, country, count(*) FROM raw_events GROUP BY 1, 2",
        "SELECT * FROM quarantine_events",
    ] {
        let (status, body) = call(&state, sql(statement)).await;
        assert_eq!(status, StatusCode::OK, "{statement}: {body}");
    }
}

/// External Delta readers (Python `deltalake` and DuckDB's `delta_scan`) read the raw table
/// and every view table whole.
const EXTERNAL_READER: &str = r#"
import glob, json, os, sys
import duckdb, duckdb_extension_delta
from deltalake import DeltaTable

lake, tables = sys.argv[1], json.loads(sys.argv[2])
con = duckdb.connect()
con.execute("SET enable_progress_bar = false")
ext = glob.glob(os.path.join(os.path.dirname(duckdb_extension_delta.__file__), "**", "*.duckdb_extension"), recursive=True)[0]
con.execute(f"LOAD '{ext}'")
out = {}
for table in tables:
    path = os.path.join(lake, table)
    rows = DeltaTable(path).to_pyarrow_table()
    rows.to_pylist()
    (count,) = con.execute(f"SELECT count(*) FROM delta_scan('{path}')").fetchone()
    con.execute(f"SELECT CAST(COLUMNS(*) AS VARCHAR) FROM delta_scan('{path}')").fetchall()
    out[table] = [rows.num_rows, count]
print(json.dumps(out))
"#;

/// Runs the Python `script` with the lake root and the table paths (a JSON list) as arguments
/// and returns the JSON it prints.
fn python_reads(
    python: &std::ffi::OsStr,
    script: &str,
    lake: &std::path::Path,
    tables: &[impl serde::Serialize],
) -> Value {
    let out = std::process::Command::new(python)
        .args(["-c", script])
        .arg(lake)
        .arg(json!(tables).to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the Python readers failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "the Python readers printed no JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn readable_from_python(
    python: &std::ffi::OsStr,
    lake: &std::path::Path,
    config: &Config,
    raw_rows: usize,
) {
    let mut tables = vec!["raw/events".to_owned()];
    tables.extend(config.views.iter().map(|v| format!("views/{}", v.name)));
    let got = python_reads(python, EXTERNAL_READER, lake, &tables);
    assert_eq!(got["raw/events"], json!([raw_rows, raw_rows]), "{got}");
    for table in &tables {
        assert_eq!(got[table][0], got[table][1], "{table}: {got}");
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: std::env::var("LAMBDAFLOW_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(6),
        max_shrink_iters: 40,
        .. proptest::prelude::ProptestConfig::default()
    })]
    #[test]
    fn hostile_valid_events_pass_every_stage(
        events in proptest::collection::vec(hostile::event(), 1..24)
    ) {
        // Unique ids, so that the archive keeps every event and batch and speed see the same.
        let messages = events.iter().enumerate().map(|(n, e)| e.payload(n)).collect();
        tokio::runtime::Runtime::new().unwrap().block_on(through_every_stage(messages));
    }
}
