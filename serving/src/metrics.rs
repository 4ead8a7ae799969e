//! Prometheus metrics of the process (`GET /metrics`): the speed layer's and the batch
//! crate's counters, request latency per route, and gauges read from the shared state at
//! scrape time (offsets, heads and lag per partition, batch versions and groups per view).

use std::sync::LazyLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use lambdaflow_common::config::Config;
use lambdaflow_speed::lambda::Shared;
use prometheus::{
    Encoder, HistogramVec, IntGauge, IntGaugeVec, TextEncoder, register_histogram_vec,
    register_int_gauge, register_int_gauge_vec,
};

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

fn gauge_vec(name: &str, help: &str, label: &str) -> IntGaugeVec {
    register_int_gauge_vec!(name, help, &[label]).expect("registered once")
}

static CONSUMED: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "lambdaflow_speed_consumed_offset",
        "Last offset the speed layer consumed, per partition",
        "partition",
    )
});
static HEAD: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "lambdaflow_speed_head_offset",
        "Latest head read of each partition (the next offset to be written)",
        "partition",
    )
});
static LAG: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "lambdaflow_speed_lag_messages",
        "Messages written to a partition that the speed layer has not consumed yet",
        "partition",
    )
});
static BATCH_VERSION: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "lambdaflow_view_batch_version",
        "Version of the view table the batch side is loaded from (-1: none yet)",
        "view",
    )
});
static BATCH_GROUPS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "lambdaflow_view_batch_groups",
        "Groups (bucket, dimension values) on the batch side of a view",
        "view",
    )
});
static SPEED_GROUPS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "lambdaflow_view_speed_groups",
        "Groups (bucket, dimension values) on the speed side of a view",
        "view",
    )
});
static RETAINED: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "lambdaflow_speed_retained_events",
        "First occurrences the speed layer keeps since the lowest batch watermark"
    )
    .expect("registered once")
});
static RETAINED_BYTES: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "lambdaflow_speed_retained_bytes",
        "Bytes of the Arrow buffers holding the retained first occurrences"
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
    let method = request.method().clone();
    let started = Instant::now();
    let response = next.run(request).await;
    REQUEST_SECONDS
        .with_label_values(&[route.as_str(), method.as_str(), response.status().as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// The text exposition of every metric, with the scrape-time gauges read from `lambda`.
pub fn render(config: &Config, lambda: &Shared) -> String {
    lambdaflow_speed::metrics::register();
    lambdaflow_batch::metrics::register();
    LazyLock::force(&REQUEST_SECONDS);
    {
        let lambda = lambda.read().expect("not poisoned");
        for (p, head) in &lambda.heads {
            let partition = p.to_string();
            let consumed = lambda.consumed.get(p).copied().unwrap_or(-1);
            HEAD.with_label_values(&[partition.as_str()]).set(*head);
            CONSUMED
                .with_label_values(&[partition.as_str()])
                .set(consumed);
            LAG.with_label_values(&[partition.as_str()])
                .set((head - consumed - 1).max(0));
        }
        for (view, pair) in config.views.iter().zip(&lambda.views) {
            let name = [view.name.as_str()];
            let version = pair
                .batch
                .version
                .map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX));
            BATCH_VERSION.with_label_values(&name).set(version);
            BATCH_GROUPS
                .with_label_values(&name)
                .set(pair.batch.state.len() as i64);
            SPEED_GROUPS
                .with_label_values(&name)
                .set(pair.speed.len() as i64);
        }
        RETAINED.set(lambda.retained_events as i64);
        RETAINED_BYTES.set(i64::try_from(lambda.retained_bytes).unwrap_or(i64::MAX));
    }
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&prometheus::gather(), &mut out)
        .expect("the text encoder writes to memory");
    String::from_utf8(out).expect("the text format is UTF-8")
}
