//! The HTTP API through `tower::ServiceExt::oneshot`, with events produced to librdkafka's
//! in-process mock cluster and read back to check what the broker acknowledged.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use lambdaflow_batch::history::History;
use lambdaflow_batch::lake::Lake;
use lambdaflow_batch::schedule::Batches;
use lambdaflow_common::config::Config;
use lambdaflow_serving::http::{AppState, app};
use lambdaflow_serving::kafka::{self, EmbeddedBroker};
use lambdaflow_speed::lambda::{BatchView, Shared, Speed};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

fn state(broker: &EmbeddedBroker, max_body: usize, lake: &tempfile::TempDir) -> AppState {
    let mut config = Config::demo();
    config.kafka.brokers = broker.bootstrap_servers().to_owned();
    config.serving.max_body_bytes = max_body;
    config.lake.uri = lake.path().display().to_string();
    let config = Arc::new(config);
    let batches = Batches::new(config.clone(), CancellationToken::new()).unwrap();
    let lambda = Shared::default();
    let empty = config
        .views
        .iter()
        .map(|_| Arc::new(BatchView::default()))
        .collect();
    Speed::new(config.clone(), lambda.clone(), empty).unwrap();
    lambda.write().unwrap().start_head = Some(Default::default());
    AppState::new(
        config,
        kafka::producer(broker.bootstrap_servers()).unwrap(),
        batches,
        lambda,
    )
}

async fn call(state: &AppState, request: Request<Body>) -> (StatusCode, Value) {
    let response = app(state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
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

/// Keys of every message on the topic, in partition order.
fn produced_keys(broker: &EmbeddedBroker) -> Vec<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap_servers())
        .set("group.id", "http-test")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..4 {
        tpl.add_partition_offset("events", p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut keys = Vec::new();
    while let Some(Ok(m)) = consumer.poll(Duration::from_secs(2)) {
        keys.push(String::from_utf8(m.key().unwrap().to_vec()).unwrap());
    }
    keys.sort();
    keys
}

#[tokio::test]
async fn events_are_validated_produced_and_acknowledged() {
    let broker = EmbeddedBroker::start("events", 4).unwrap();
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
async fn bad_requests_get_json_errors() {
    let broker = EmbeddedBroker::start("events", 4).unwrap();
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
    let broker = EmbeddedBroker::start("events", 1).unwrap();
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
    let broker = EmbeddedBroker::start("events", 1).unwrap();
    let lake = tempfile::tempdir().unwrap();
    let state = state(&broker, 1024, &lake);
    let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();
    let trigger = |body: &'static str| {
        Request::post("/v1/batch/runs")
            .body(Body::from(body))
            .unwrap()
    };

    let history = History::new(&Lake::new(&state.config.lake).unwrap()).unwrap();
    let held = history.lock("20260101T000000000Z-other").await.unwrap();
    let (status, reply) = call(&state, trigger("")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(reply["error"]["code"], "run_in_progress");
    assert_eq!(reply["error"]["id"], "20260101T000000000Z-other");
    held.release().await.unwrap();

    let (status, reply) = call(&state, trigger(r#"{"full": true}"#)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
    let id = reply["id"].as_str().unwrap().to_owned();
    let mut record = Value::Null;
    for _ in 0..600 {
        record = call(&state, get(&format!("/v1/batch/runs/{id}"))).await.1;
        if record["status"] == "succeeded" || record["status"] == "failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(record["status"], "succeeded", "{record}");
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

#[tokio::test]
async fn views_are_listed_and_bad_queries_are_named() {
    let broker = EmbeddedBroker::start("events", 1).unwrap();
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
