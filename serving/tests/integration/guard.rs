//! The API in public: every route asks for its scope, writes refuse what a cross-site page can
//! send, and TLS works end to end over a real socket.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use lambdaflow_common::auth::{AuthConfig, AuthMode, Scope, TokenConfig, token_hash};
use lambdaflow_common::config::Config;
use lambdaflow_kafka::embedded::EmbeddedBroker;
use lambdaflow_serving::http::{self, AppState};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::support::{call, state_with};

/// Tokens `ingest-token`, `query-token` and `admin-token`, one scope each.
pub(crate) fn with_tokens(mut config: Config) -> Config {
    let token = |scope: Scope| TokenConfig {
        name: scope.as_str().into(),
        sha256: Some(hex::encode(token_hash(&format!(
            "{}-token",
            scope.as_str()
        )))),
        env: None,
        scopes: vec![scope],
    };
    config.serving.auth = AuthConfig {
        mode: AuthMode::Tokens,
        tokens: vec![
            token(Scope::Ingest),
            token(Scope::Query),
            token(Scope::Admin),
        ],
    };
    config
}

/// `config` serving with a self-signed certificate for `localhost`, written with its key to
/// `dir`; the certificate's PEM, for clients to trust.
pub(crate) fn with_certificate(mut config: Config, dir: &std::path::Path) -> (Config, String) {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    config.serving.tls_cert = Some(cert);
    config.serving.tls_key = Some(key);
    (config, made.cert.pem())
}

fn request(method: &str, path: &str, token: Option<&str>) -> Request<Body> {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    if method == "POST" {
        request = request.header("content-type", "application/json");
    }
    let body = match path {
        "/v1/sql" => json!({"sql": "SELECT 1"}).to_string(),
        "/v1/events" => json!({"event_id": "a", "event_time": "2026-01-02T03:04:05Z", "type": "view", "user_id": "u", "country": "kr"}).to_string(),
        _ if method == "POST" => "{}".into(),
        _ => String::new(),
    };
    request.body(Body::from(body)).unwrap()
}

/// Every route with the scope it needs.
const ROUTES: [(&str, &str, Scope); 12] = [
    ("POST", "/v1/events", Scope::Ingest),
    ("GET", "/v1/views", Scope::Query),
    ("GET", "/v1/views/sales_by_country", Scope::Query),
    ("GET", "/v1/views/sales_by_country/query", Scope::Query),
    ("POST", "/v1/views/sales_by_country/query", Scope::Query),
    ("POST", "/v1/sql", Scope::Query),
    ("GET", "/v1/batch/runs", Scope::Admin),
    ("POST", "/v1/batch/runs", Scope::Admin),
    ("GET", "/v1/batch/runs/nope", Scope::Admin),
    ("GET", "/v1/quarantine", Scope::Admin),
    ("GET", "/v1/lake", Scope::Admin),
    ("GET", "/metrics", Scope::Admin),
];

#[tokio::test]
async fn every_route_asks_for_its_scope() {
    let broker = EmbeddedBroker::start(&[("events", 1)]).unwrap();
    let lake = tempfile::tempdir().unwrap();
    let state = state_with(&broker, &lake, with_tokens(Config::shop()));
    for (method, path, scope) in ROUTES {
        let (status, reply) = call(&state, request(method, path, None)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {reply}");
        assert_eq!(reply["error"]["code"], "unauthorized");
        let (status, reply) = call(&state, request(method, path, Some("guess"))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {reply}");
        for other in [Scope::Ingest, Scope::Query, Scope::Admin] {
            let token = format!("{}-token", other.as_str());
            let (status, reply) = call(&state, request(method, path, Some(&token))).await;
            if other == scope {
                assert!(
                    status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                    "{method} {path} with {token}: {status} {reply}"
                );
            } else {
                assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}, {token}");
                assert_eq!(reply["error"]["code"], "forbidden");
                assert!(
                    reply["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains(scope.as_str())
                );
            }
        }
    }
    for path in ["/healthz", "/readyz", "/openapi.json", "/"] {
        let (status, _) = call(&state, request("GET", path, None)).await;
        assert!(
            status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
            "{path} is open: {status}"
        );
    }

    let sql = |text: &str, token: &str| {
        Request::post("/v1/sql")
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Body::from(json!({ "sql": text }).to_string()))
            .unwrap()
    };
    let (status, reply) = call(
        &state,
        sql("SELECT count(*) FROM raw_events", "query-token"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("admin")
    );
    let (status, reply) = call(
        &state,
        sql(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
            "query-token",
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert!(
        !reply.to_string().contains("raw_events"),
        "the catalogue shows a query token no lake table: {reply}"
    );

    let mut public = with_tokens(Config::shop());
    public.serving.metrics_public = true;
    let public = state_with(&broker, &lake, public);
    let (status, _) = call(&public, request("GET", "/metrics", None)).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn writes_refuse_other_content_types_and_other_origins() {
    let broker = EmbeddedBroker::start(&[("events", 1)]).unwrap();
    let lake = tempfile::tempdir().unwrap();
    let mut config = Config::shop();
    config.serving.allowed_origins = vec!["https://ops.example".into()];
    let state = state_with(&broker, &lake, config);
    let writes = [
        "/v1/events",
        "/v1/sql",
        "/v1/views/sales_by_country/query",
        "/v1/batch/runs",
    ];
    let post = |path: &str, content_type: Option<&str>, origin: Option<&str>| {
        let mut request = Request::post(path).header("host", "127.0.0.1:8080");
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.body(Body::from("{}")).unwrap()
    };
    for path in writes {
        for content_type in [
            None,
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
        ] {
            let (status, reply) = call(&state, post(path, content_type, None)).await;
            assert_eq!(
                status,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{path} {content_type:?}"
            );
            assert_eq!(reply["error"]["code"], "unsupported_media_type");
        }
        // What a form on another site sends.
        let form = post(
            path,
            Some("application/x-www-form-urlencoded"),
            Some("https://evil.example"),
        );
        let (status, reply) = call(&state, form).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {reply}");
        assert_eq!(reply["error"]["code"], "cross_origin");
        let (status, _) = call(&state, post(path, Some("application/json"), Some("null"))).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        for origin in ["http://127.0.0.1:8080", "https://ops.example"] {
            let (status, reply) =
                call(&state, post(path, Some("application/json"), Some(origin))).await;
            assert!(
                status != StatusCode::FORBIDDEN && status != StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{path} from {origin}: {status} {reply}"
            );
        }
    }
    let ndjson = post("/v1/events", Some("application/x-ndjson"), None);
    let (status, reply) = call(&state, ndjson).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
}

#[tokio::test]
async fn sql_is_held_to_its_concurrency_answer_size_and_functions() {
    let broker = EmbeddedBroker::start(&[("events", 1)]).unwrap();
    let lake = tempfile::tempdir().unwrap();
    let mut config = Config::shop();
    config.serving.sql_max_concurrent = 1;
    config.serving.sql_max_answer_bytes = 200;
    config.serving.sql_timeout = Duration::from_secs(2);
    let state = state_with(&broker, &lake, config);
    let sql = |text: &str| {
        Request::post("/v1/sql")
            .header("content-type", "application/json")
            .body(Body::from(json!({ "sql": text }).to_string()))
            .unwrap()
    };
    let slow = tokio::spawn({
        let state = state.clone();
        async move {
            call(
                &state,
                sql("SELECT count(*) FROM generate_series(1, 100000000000)"),
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let response = tower::ServiceExt::oneshot(http::app(state.clone()), sql("SELECT 1"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "1");
    let (status, _) = slow.await.unwrap();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    let (status, reply) = call(&state, sql("SELECT 1")).await;
    assert_eq!(status, StatusCode::OK, "a slot is free again: {reply}");

    let (status, reply) = call(&state, sql("SELECT * FROM generate_series(1, 100)")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(reply["error"]["code"], "answer_too_large", "{reply}");
    for unbounded in [
        "SELECT repeat('x', 1000000000)",
        "SELECT lpad('x', 1000000000)",
        "SELECT range(0, 1000000000)",
        "SELECT array_repeat(1, 1000000000)",
        "SELECT list_resize([1], 1000000000)",
    ] {
        let (status, reply) = call(&state, sql(unbounded)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{unbounded}: {reply}");
        assert_eq!(
            reply["error"]["code"], "invalid_sql",
            "{unbounded}: {reply}"
        );
    }
}

#[test]
fn tls_files_that_do_not_load_stop_the_start() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::shop();
    config.serving.tls_cert = Some(dir.path().join("missing.pem"));
    config.serving.tls_key = Some(dir.path().join("missing-key.pem"));
    let error = runtime.block_on(http::tls(&config)).unwrap_err();
    assert!(error.to_string().contains("missing.pem"), "{error}");
}

#[tokio::test]
async fn the_api_speaks_tls_with_the_configured_certificate() {
    let broker = EmbeddedBroker::start(&[("events", 1)]).unwrap();
    let lake = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (config, cert) = with_certificate(with_tokens(Config::shop()), dir.path());
    let state: AppState = state_with(&broker, &lake, config);
    let tls = http::tls(&state.config).await.unwrap();
    assert!(tls.is_some());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(http::serve(listener, state, tls, shutdown.clone()));

    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let root = reqwest::Certificate::from_pem(cert.as_bytes()).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(root)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = |path: &str| format!("https://localhost:{port}{path}");
    let health = client.get(url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let views = client
        .get(url("/v1/views"))
        .bearer_auth("query-token")
        .send()
        .await
        .unwrap();
    assert_eq!(views.status(), StatusCode::OK);
    let body: serde_json::Value = serde_json::from_slice(&views.bytes().await.unwrap()).unwrap();
    assert!(body["views"].as_array().is_some_and(|v| !v.is_empty()));

    let untrusting = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    assert!(
        untrusting.get(url("/healthz")).send().await.is_err(),
        "a client that does not trust the certificate gets no answer"
    );
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let cleartext = plain
        .get(format!("http://localhost:{port}/healthz"))
        .send()
        .await;
    assert!(
        cleartext.is_err() || !cleartext.unwrap().status().is_success(),
        "no plain HTTP on the TLS port"
    );
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(15), server)
        .await
        .expect("the server stops on shutdown")
        .unwrap()
        .unwrap();
}
