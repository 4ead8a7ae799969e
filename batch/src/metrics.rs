//! The archiver's and the batch runs' Prometheus metrics, in the process's default registry
//! (served by `GET /metrics` where the serving API runs in the same process).

use std::sync::LazyLock;

use prometheus::{
    HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, register_histogram_vec,
    register_int_counter, register_int_counter_vec, register_int_gauge_vec,
};

/// Seconds of one archiver commit, by table.
pub static COMMIT_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "lambdaflow_archiver_commit_seconds",
        "Seconds one archiver Delta commit took, by source and table (raw, quarantine)",
        &["source", "table"],
        vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0
        ]
    )
    .expect("registered once")
});

/// Messages the archiver handled, by outcome.
pub static ARCHIVED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "lambdaflow_archiver_events_total",
        "Messages the archiver handled, by source and outcome (archived, duplicate, quarantined)",
        &["source", "outcome"]
    )
    .expect("registered once")
});

/// 1 for each partition of a source's topic whose topic went back in time (its broker head below the lake's next
/// offset), until an operator accepts the reset.
pub static TOPIC_RESET: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "lambdaflow_topic_reset_detected",
        "1 while a partition is halted because its broker head is below the offsets the lake holds (the topic was recreated or lost data); run `lambdaflow archive --accept-topic-reset`",
        &["component", "source", "partition"]
    )
    .expect("registered once")
});

/// Auto-compactions of the archiver's tables, by table and outcome.
pub static COMPACTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "lambdaflow_archiver_compactions_total",
        "Auto-compactions (OPTIMIZE of one date partition) by source, table and outcome (succeeded, failed)",
        &["source", "table", "outcome"]
    )
    .expect("registered once")
});

/// The archiver's tables as of its last commit: Delta version and live data files.
pub static TABLE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "lambdaflow_archiver_table",
        "The archiver's tables as of its last commit, by source: Delta version (measure=version) and data files in the snapshot (measure=files)",
        &["source", "table", "measure"]
    )
    .expect("registered once")
});

/// Bytes the ids the archiver's deduplication remembers take, in memory and on local disk.
pub static DEDUP_ID_BYTES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "lambdaflow_archiver_dedup_id_bytes",
        "Bytes the ids the archiver's deduplication remembers take, by source and place (memory: hash sets, Bloom filters and indexes; disk: sorted runs)",
        &["source", "place"]
    )
    .expect("registered once")
});

/// Seconds of a batch run, by final status.
pub static RUN_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "lambdaflow_batch_run_seconds",
        "Seconds one batch run took, by final status (succeeded, failed)",
        &["status"],
        vec![
            0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0
        ]
    )
    .expect("registered once")
});

/// Raw rows read and view rows written by batch runs.
pub static RUN_ROWS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "lambdaflow_batch_rows_total",
        "Rows batch runs read from the raw table and wrote to view tables",
        &["kind"]
    )
    .expect("registered once")
});

/// When the last batch run of each final status ended, in Unix seconds.
pub static LAST_RUN: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "lambdaflow_batch_last_run_timestamp_seconds",
        "Unix time the last batch run with this final status ended",
        &["status"]
    )
    .expect("registered once")
});

/// Registers every metric of this module, so that a scrape lists them before any run.
pub fn register() {
    LazyLock::force(&COMMIT_SECONDS);
    LazyLock::force(&ARCHIVED);
    LazyLock::force(&TOPIC_RESET);
    LazyLock::force(&COMPACTIONS);
    LazyLock::force(&TABLE);
    LazyLock::force(&DEDUP_ID_BYTES);
    LazyLock::force(&RUN_SECONDS);
    LazyLock::force(&RUN_ROWS);
    LazyLock::force(&LAST_RUN);
}

/// Date partitions deleted by retention, by table.
pub static EXPIRED_DATES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "lambdaflow_lake_expired_dates_total",
        "Date partitions deleted by retention, by table (raw/<source>, quarantine/<source>, views/<view>)",
        &["table"]
    )
    .expect("registered once")
});

/// Data files deleted by vacuum, by table.
pub static VACUUMED_FILES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "lambdaflow_lake_vacuumed_files_total",
        "Data files deleted by vacuum (unreferenced for lake.vacuum_retention), by table",
        &["table"]
    )
    .expect("registered once")
});

/// Each table's Delta version, as of the last storage status (after every batch run and
/// every `GET /v1/lake`).
pub static LAKE_VERSION: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "lambdaflow_lake_version",
        "Delta version of each lake table, as of the last storage status",
        &["table"]
    )
    .expect("registered once")
});

/// Data files each table's latest version references.
pub static LAKE_LIVE_FILES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "lambdaflow_lake_live_files",
        "Data files the latest version of each lake table references",
        &["table"]
    )
    .expect("registered once")
});

/// Bytes of those files.
pub static LAKE_LIVE_BYTES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "lambdaflow_lake_live_bytes",
        "Bytes of the data files the latest version of each lake table references",
        &["table"]
    )
    .expect("registered once")
});

/// Bytes on storage under each table's root: live files, files awaiting vacuum, the log.
pub static LAKE_STORAGE_BYTES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "lambdaflow_lake_storage_bytes",
        "Bytes on storage under each lake table's root: live data files, files awaiting vacuum and the Delta log",
        &["table"]
    )
    .expect("registered once")
});

/// Files under each table's `_delta_log/`.
pub static LAKE_LOG_FILES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "lambdaflow_lake_log_files",
        "Files under each lake table's _delta_log/ (commits and checkpoints)",
        &["table"]
    )
    .expect("registered once")
});

/// Vacuums that failed after a batch run (its views stay published).
pub static VACUUM_FAILURES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "lambdaflow_lake_vacuum_failures_total",
        "Vacuums that failed at the end of a batch run (the views stay published; the next run tries again)"
    )
    .expect("registered once")
});
