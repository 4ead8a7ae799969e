//! The `lambdaflow` binary's library: it wires the layers into processes and serves HTTP.
//!
//! # Layout
//! - [`cli`]: the command line, parsed by clap.
//! - [`commands`]: one function per CLI subcommand (`run`, `demo`, `archive`, `serve`, `gen`, …).
//! - [`error`]: the one error a command fails with, each layer's error kept as its source.
//! - [`http`]: the axum API, one module per resource, shared by `main` and the tests.
//! - [`speed_layer`]: the speed layer started over the batch views the lake holds, fed raw ids
//!   for deduplication and every new view version by a watcher.
//! - [`sql`]: read-only SQL over the merged views and the lake tables, within limits; the
//!   only module that runs DataFusion.
//! - [`postgres`]: the same SQL over the Postgres wire protocol (`serving.pg_listen`).
//! - [`metrics`]: the Prometheus exposition: counters, request latency, scrape-time gauges.
//! - [`generate`]: producing synthetic shop events at a rate.
//! - [`shutdown`]: SIGINT/SIGTERM into one cancellation token.
//!
//! Every long-running piece is a task in one `TaskTracker` that stops when the shared
//! `CancellationToken` is cancelled; the process exits non-zero when any of them failed.

pub mod cli;
pub mod commands;
pub mod error;
pub mod generate;
pub mod http;
pub mod import;
pub mod metrics;
pub mod postgres;
pub mod shutdown;
pub mod speed_layer;
pub mod sql;
