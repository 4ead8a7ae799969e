//! Results for the benchmark report: each benchmark records what it measured beside the peer
//! it ran against in the same process, as one JSON line appended to the file named by
//! `LAMBDAFLOW_BENCH_RESULTS` (unset: nothing is written). `bench/report.sh` runs every
//! benchmark with it set and turns the lines into a Markdown table and an SVG chart.
//! Included by path from every benchmark.

use std::io::Write;

/// Whether more of a unit is better (rates) or worse (seconds, milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    /// Rates: events per second.
    Higher,
    /// Times and latencies.
    Lower,
}

/// Records `ours` (in `unit`) for `what` in benchmark `bench`, against `peer` measured in the
/// same run (`None` when the number has no peer, e.g. a latency).
pub fn record(
    bench: &str,
    what: &str,
    ours: f64,
    unit: &str,
    better: Better,
    peer: Option<(&str, f64)>,
) {
    let Some(path) = std::env::var_os("LAMBDAFLOW_BENCH_RESULTS") else {
        return;
    };
    let line = serde_json::json!({
        "bench": bench,
        "what": what,
        "value": ours,
        "unit": unit,
        "higher_is_better": better == Better::Higher,
        "peer": peer.map(|(name, _)| name),
        "peer_value": peer.map(|(_, value)| value),
    });
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("opening LAMBDAFLOW_BENCH_RESULTS");
    writeln!(file, "{line}").expect("writing a benchmark result");
}
