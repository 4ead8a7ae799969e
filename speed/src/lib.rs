//! The speed layer: in-memory aggregates of the events beyond the batch watermark, and the
//! (batch, speed) pairs queries read.
//!
//! # Layout
//! - [`lambda`]: the sans-IO core — per view the loaded batch version and the speed state of
//!   the offsets beyond its watermark, first-occurrence deduplication, folding validated Arrow
//!   micro-batches into [`lambdaflow_common::state::ViewState`]s, and the atomic swap when a
//!   view gets a new batch version.
//! - [`consume`]: the Kafka adapter — consume from the lowest watermark, validate with the
//!   shared validator, read the raw ids deduplication needs through [`consume::RawIds`].
//! - [`metrics`]: counters of messages, valid, invalid and duplicate events.
//!
//! It depends on `lambdaflow-common` only, never on the batch crate: the serving crate loads
//! batch views and raw ids and hands them in.

pub mod consume;
pub mod error;
pub mod lambda;
pub mod metrics;

pub use error::{Error, Result};
