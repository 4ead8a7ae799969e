//! The lake side of lambdaflow: everything that writes Delta tables.
//!
//! # Layout
//! - [`lake`]: where each table lives under the lake root, and opening or creating it.
//! - [`archive`]: the archiver — Kafka → validated, deduplicated, masked events in the raw
//!   table and refused ones in the quarantine table, exactly once.
//! - [`commit`]: idempotent Delta appends keyed by Kafka offsets (`txn` actions).
//! - [`run`]: a batch run — every view brought up to the raw table's version and published
//!   with its watermark; [`recompute`] is a view as a DataFusion plan, [`sketch_udf`] the
//!   HyperLogLog functions it uses, [`watermark`] reads what a table covers and what changed.
//! - [`schedule`]: runs on the cron schedule or on request, never two at once.
//! - [`history`]: run records and the run lock under `<lake>/_lambdaflow/`.
//! - [`faults`]: failpoints in the object store (`LAMBDAFLOW_FAULTS`), for the fault suite.
//! - [`metrics`]: archiver commit latency and outcomes, batch run durations and rows.
//!
//! Data flow: Kafka messages → [`lambdaflow_common::validate`] → dedup against the raw table's
//! ids ([`lambdaflow_common::dedup`]) → one Delta commit per table per chunk, each carrying, per
//! Kafka partition, the last offset it covers. A restart resumes from those offsets, never from
//! consumer-group offsets, so a crash between a Parquet write and its commit, or between the two
//! tables' commits, neither loses nor repeats an event.

pub mod archive;
pub mod commit;
pub mod compact;
pub mod error;
pub mod faults;
pub mod history;
pub mod lake;
pub mod metrics;
pub mod recompute;
pub mod run;
pub mod schedule;
pub mod sketch_udf;
pub mod watermark;

pub use error::{Error, Result};
