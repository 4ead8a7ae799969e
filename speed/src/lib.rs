//! The speed layer: in-memory aggregates of the events beyond the batch watermark, and the
//! (batch, speed) pairs queries read.
//!
//! # Layout
//! - [`engine`]: the sans-IO core — first-occurrence deduplication, folding validated Arrow
//!   micro-batches into [`lambdaflow_common::state::ViewState`]s beyond each view's
//!   watermark, and the swap when a view gets a new batch version. It reports what it did
//!   ([`engine::Folded`]) and counts nothing itself.
//! - [`spill`]: the first occurrences kept until a batch version covers them, in Arrow IPC
//!   segments on local disk so that memory does not grow with the batch interval.
//! - [`served`]: what queries read, sealed — a [`served::Snapshot`] of every view's (batch,
//!   speed) pair, none before the views are loaded, and the Kafka [`served::Progress`]
//!   (consumed, heads, lag, caught up) on a `watch` channel.
//! - [`consume`]: the Kafka adapter — consume from the lowest watermark through
//!   `lambdaflow-kafka`, read the raw ids deduplication needs through [`consume::RawIds`],
//!   fold, apply swaps.
//! - [`metrics`]: counters of messages, valid, invalid and duplicate events, and the gauges
//!   read from the served state at scrape time.
//!
//! It depends on `lambdaflow-common` and `lambdaflow-kafka` only, never on the batch crate:
//! the serving crate loads batch views and raw ids and hands them in.

pub mod consume;
pub mod engine;
pub mod error;
pub mod metrics;
pub mod served;
pub mod spill;

pub use error::{Error, Result};
