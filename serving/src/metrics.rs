//! Prometheus metrics of the process (`GET /metrics`): request latency per route here; the
//! speed layer's counters and scrape-time gauges ([`lambdaflow_speed::metrics`]) and the batch
//! crate's ([`lambdaflow_batch::metrics`]) come from their own crates.

use std::sync::LazyLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use lambdaflow_common::config::Config;
use lambdaflow_speed::served::Served;
use prometheus::{Encoder, HistogramVec, TextEncoder, register_histogram_vec};

static REQUEST_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "lambdaflow_http_request_seconds",
        "Seconds to answer an HTTP request, by route template, method and status",
        &["route", "method", "status"],
        vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0
        ]
    )
    .expect("registered once")
});

/// Times every request by its route template (not its path, so view names and run ids do
/// not multiply the series).
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    // A label value per method a client makes up would grow the series without end.
    let method = match *request.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        _ => "other",
    };
    let started = Instant::now();
    let response = next.run(request).await;
    REQUEST_SECONDS
        .with_label_values(&[route.as_str(), method, response.status().as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// The text exposition of every metric, with the speed layer's gauges read from `served`.
pub fn render(config: &Config, served: &Served) -> String {
    lambdaflow_batch::metrics::register();
    LazyLock::force(&REQUEST_SECONDS);
    lambdaflow_speed::metrics::observe(config, served);
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&prometheus::gather(), &mut out)
        .expect("the text encoder writes to memory");
    String::from_utf8(out).expect("the text format is UTF-8")
}
