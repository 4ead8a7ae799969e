//! Every call lambdaflow makes to Kafka, through librdkafka (`rdkafka`), in one crate.
//!
//! # Layout
//! - [`settings`]: the client settings of each role (archiver and speed consumers, the
//!   producer, plain readers) in one place.
//! - [`consumer`]: a consumer of one topic — partition discovery (again at any time), manual
//!   assignment from start offsets with an explicit [`consumer::OffsetReset`] policy for
//!   offsets the broker no longer holds, partition bounds, and [`consumer::Consumer::poll_into`],
//!   the one poll → validate → chunk loop of the archiver and the speed layer.
//! - [`producer`]: the idempotent producer of `POST /v1/events`, `gen` and the tests.
//! - [`topic`]: creating the topic on a real broker.
//! - [`metrics`]: offsets found missing from the broker, per component and partition.
//! - [`embedded`]: librdkafka's in-process mock cluster, for the demo and fast tests.
//! - `peer` (feature `peer`): the plain consumer the benchmarks compare against.
//!
//! Nothing else in the workspace names `rdkafka`: the archiver, the speed layer and the HTTP
//! collector see topics, partitions, offsets and payloads, never librdkafka's types.
//!
//! Data flow: broker → [`consumer::Consumer::poll_into`] → a
//! [`lambdaflow_common::validate::BatchBuilder`] (validated Arrow rows and rejects) plus the
//! last offset read per partition → the caller (archiver or speed layer).

pub mod consumer;
pub mod embedded;
pub mod error;
pub mod metrics;
#[cfg(feature = "peer")]
pub mod peer;
pub mod producer;
pub mod settings;
pub mod topic;

pub use error::{Error, Result};
