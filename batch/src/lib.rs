//! The lake side of lambdaflow: everything that writes Delta tables, and the one reader of
//! them for the rest of the platform.
//!
//! # Layout
//! - [`lake`]: where each table lives under the lake root, opening or creating it, and the one
//!   rule for a table that is not there yet ([`lake::is_missing`]); [`lake::reader`] is the
//!   [`LakeReader`](lake::reader::LakeReader) the serving side reads views, raw ids, refused
//!   events and SQL tables through.
//! - [`archive`]: the archiver — Kafka → validated, deduplicated, masked events in the raw
//!   table and refused ones in the quarantine table, exactly once; [`archive::commit`] makes
//!   the idempotent Delta appends keyed by Kafka offsets (`txn` actions), [`archive::compact`]
//!   merges the small files they leave.
//! - [`import`]: backfill from NDJSON, CSV and Parquet files into the raw and quarantine
//!   tables, through the same validator and deduplication, exactly once per file content
//!   (`txn` actions keyed by the file's hash).
//! - [`views`]: the batch views — [`views::run`] brings every view up to the raw table's
//!   version and publishes it with its watermark; [`views::recompute`] is a view as a
//!   DataFusion plan, [`views::sketch_udf`] the HyperLogLog functions it uses,
//!   [`views::watermark`] reads what a table covers and what changed; [`views::schedule`]
//!   runs on the cron schedule or on request, never two at once; [`views::records`] and
//!   [`views::lock`] are the run records and the run lock under `<lake>/_lambdaflow/`.
//! - [`cluster`]: the view plans on an Apache DataFusion Ballista cluster (`batch.engine`), and
//!   the scheduler and executor processes that know our functions and the lake.
//! - `faults` (cargo feature `faults`, for the fault suite only): failpoints in the object
//!   store (`LAMBDAFLOW_FAULTS`).
//! - [`metrics`]: archiver commit latency and outcomes, batch run durations and rows.
//! - [`error`]: the crate's one [`Error`].
//!
//! Data flow: Kafka messages → [`lambdaflow_common::validate`] → dedup against the raw table's
//! ids ([`lambdaflow_dedup`]) → one Delta commit per table per chunk, each carrying, per
//! Kafka partition, the last offset it covers. A restart resumes from those offsets, never from
//! consumer-group offsets, so a crash between a Parquet write and its commit, or between the two
//! tables' commits, neither loses nor repeats an event. A batch run reads the raw table at one
//! version and writes each view with the offsets that version covers (its watermark); the
//! serving side reads the views, their watermarks and the raw ids back through
//! [`lake::reader`] and nothing else.

pub mod archive;
pub mod cluster;
pub mod error;
#[cfg(feature = "faults")]
pub mod faults;
pub mod import;
pub mod lake;
pub mod metrics;
pub mod views;

pub use error::{Error, Result};
