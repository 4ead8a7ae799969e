//! The sans-IO core of lambdaflow: everything the archiver, the speed layer and the HTTP
//! collector must agree on, with no Kafka, Delta or Tokio in sight.
//!
//! # Layout
//! - [`config`]: the typed TOML config of one deployment (Kafka, lake, API, batch, archiver),
//!   with `LAMBDAFLOW_*` overrides, and the check that puts the source and the views together.
//! - [`source`]: the event source: id and time fields, declared fields and their cleaning.
//! - [`view`]: a view's definition (granularity, dimensions, filter, measures) and bucketing.
//! - [`retention`]: how long the raw, quarantine and view tables keep their dates.
//! - [`error`]: the config error, and why a view's layout or filter does not compile.
//! - [`schema`]: the Arrow schemas of the raw and quarantine tables, derived from the config.
//! - [`validate`]: message bytes in, a record batch of clean events and a batch of rejects out.
//! - [`reason`]: the reason codes an invalid event is quarantined with.
//! - [`mask`]: SHA-256 masking, also of quarantined payloads.
//! - [`sketch`]: the HyperLogLog sketch of `approx_distinct`, byte-identical across layers.
//! - [`timestamp`]: event-time parsing and UTC date arithmetic.
//! - [`layout`]: a view's table layout (state and value columns) and its parsed filter.
//! - [`state`]: the monoid states of a view per group; folded from events, loaded from a
//!   view table, merged.
//! - [`query`]: resolving a view query request against the view, and answering it from merged
//!   states.
//! - [`table`]: merged states as an Arrow batch in the view table's layout, for SQL.
//! - [`batch_view`]: a view's batch side at one table version (version, watermark, states).
//! - [`watermark`]: the Kafka offsets a batch view covers; where the speed layer starts.
//! - [`sample`]: synthetic shop events for the demo, `gen`, benchmarks and tests.
//!
//! Modules depend one way: `error` ← `source` ← `view` ← `layout` ← `config`; `schema` reads
//! `source`; `state`, `query` and `table` read the definitions and the layout; only tests load a
//! whole `config`.
//!
//! Data flows one way: bytes → [`validate::Validator`] → [`validate::Validated`] →
//! deduplication (`lambdaflow-dedup`) → whatever stores or aggregates the events.

pub mod auth;
pub mod batch_view;
pub mod config;
pub mod error;
mod humantime_serde;
pub mod layout;
pub mod mask;
pub mod query;
pub mod reason;
pub mod retention;
pub mod sample;
pub mod schema;
pub mod sketch;
pub mod source;
pub mod state;
pub mod table;
pub mod timestamp;
pub mod validate;
pub mod view;
pub mod watermark;

pub use error::{Error, Result};
