//! The lake side of lambdaflow: everything that writes Delta tables.
//!
//! # Layout
//! - [`lake`]: where each table lives under the lake root, and opening or creating it.
//! - [`archive`]: the archiver — Kafka → validated, deduplicated, masked events in the raw
//!   table and refused ones in the quarantine table, exactly once.
//! - [`commit`]: idempotent Delta appends keyed by Kafka offsets (`txn` actions).
//!
//! Data flow: Kafka messages → [`lambdaflow_common::validate`] → dedup against the raw table's
//! ids ([`lambdaflow_common::dedup`]) → one Delta commit per table per chunk, each carrying, per
//! Kafka partition, the last offset it covers. A restart resumes from those offsets, never from
//! consumer-group offsets, so a crash between a Parquet write and its commit, or between the two
//! tables' commits, neither loses nor repeats an event.

pub mod archive;
pub mod commit;
pub mod error;
pub mod lake;

pub use error::{Error, Result};
