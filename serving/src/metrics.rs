//! Prometheus metrics of the process (`GET /metrics`): request latency per route here; the
//! speed layer's counters and scrape-time gauges ([`lambdaflow_speed::metrics`]) and the batch
//! crate's ([`lambdaflow_batch::metrics`]) come from their own crates.

use std::sync::LazyLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{
    Encoder, HistogramVec, IntGauge, TextEncoder, register_histogram_vec, register_int_gauge,
};

use crate::speed_layer::SourceSpeed;

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

/// The allocator's view of the process's memory, read at every scrape: what live allocations
/// hold, and what the allocator keeps resident for them (fragmentation and freed pages not
/// yet returned included). Resident memory growing while allocated stays level is the
/// allocator's; both growing is data the process keeps.
static MEMORY: LazyLock<[IntGauge; 2]> = LazyLock::new(|| {
    [
        register_int_gauge!(
            "lambdaflow_memory_allocated_bytes",
            "Bytes in live heap allocations (jemalloc stats.allocated)"
        )
        .expect("registered once"),
        register_int_gauge!(
            "lambdaflow_memory_resident_bytes",
            "Bytes of physical memory the allocator holds (jemalloc stats.resident)"
        )
        .expect("registered once"),
    ]
});

/// Reads jemalloc's statistics into [`MEMORY`]; they are left as they were if jemalloc cannot
/// say (a process with another global allocator reads jemalloc's own, near nothing).
#[cfg(not(target_env = "msvc"))]
fn observe_allocator() {
    use tikv_jemalloc_ctl::{epoch, stats};
    let [allocated, resident] = &*MEMORY;
    if epoch::advance().is_err() {
        return;
    }
    if let Ok(bytes) = stats::allocated::read() {
        allocated.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
    if let Ok(bytes) = stats::resident::read() {
        resident.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
}

/// Where jemalloc is not the allocator, the gauges stay at zero.
#[cfg(target_env = "msvc")]
fn observe_allocator() {
    LazyLock::force(&MEMORY);
}

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

/// The text exposition of every metric, with each speed layer's gauges read from its served
/// state.
pub fn render(speeds: &[SourceSpeed]) -> String {
    lambdaflow_batch::metrics::register();
    LazyLock::force(&REQUEST_SECONDS);
    for speed in speeds {
        lambdaflow_speed::metrics::observe(&speed.config, &speed.served);
    }
    observe_allocator();
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&prometheus::gather(), &mut out)
        .expect("the text encoder writes to memory");
    String::from_utf8(out).expect("the text format is UTF-8")
}
