//! The `lambdaflow` binary's library: it wires the layers into processes and serves HTTP.
//!
//! # Layout
//! - [`cli`]: the command line, parsed by clap.
//! - [`commands`]: one function per CLI subcommand (`run`, `demo`, `archive`, `serve`, `gen`, …).
//! - [`http`]: the axum API, one module per resource, shared by `main` and the tests.
//! - [`lambda`]: batch views loaded per version, raw ids for deduplication, and the watcher
//!   that hands new versions to the speed layer, all read through the batch crate's
//!   `LakeReader` (this crate never opens a Delta table itself).
//! - [`sql`]: read-only SQL over the merged views and the lake tables, within limits; the
//!   only module that runs DataFusion.
//! - [`metrics`]: the Prometheus exposition: counters, request latency, scrape-time gauges.
//! - [`kafka`]: producer settings, topic creation, and [`kafka::EmbeddedBroker`].
//! - [`generate`]: producing synthetic shop events at a rate.
//! - [`shutdown`]: SIGINT/SIGTERM into one cancellation token.
//!
//! Every long-running piece is a task in one `TaskTracker` that stops when the shared
//! `CancellationToken` is cancelled; the process exits non-zero when any of them failed.

pub mod cli;
pub mod commands;
pub mod generate;
pub mod http;
pub mod kafka;
pub mod lambda;
pub mod metrics;
pub mod shutdown;
pub mod sql;
