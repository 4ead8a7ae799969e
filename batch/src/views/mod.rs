//! The batch views: the second job of the lake side, recomputing each view from the raw table
//! and publishing it with the watermark it covers.
//!
//! - [`run`]: one batch run — every view brought up to the raw table's version and published
//!   with its watermark, each in one Delta commit;
//! - [`recompute`]: a view as a DataFusion plan over the raw table, with the HyperLogLog
//!   functions of [`sketch_udf`];
//! - [`watermark`]: what a table covers (the raw table's `txn` offsets, a view commit's
//!   record) and which event dates changed between two raw versions;
//! - [`schedule`]: runs on the cron schedule or on request, never two at once in a process;
//! - [`records`]: the run records under `<lake>/_lambdaflow/runs/` that the API and the CLI
//!   show; [`lock`]: the run lock that keeps runs of different processes from overlapping.
//!
//! Data flow: raw table at a pinned version → [`watermark`] (offsets, changed dates) →
//! [`recompute`] (DataFusion) → view table commit carrying a [`watermark::ViewCommit`], with
//! [`records`] tracking the run and [`lock`] held throughout.

pub mod lock;
pub mod recompute;
pub mod records;
pub mod run;
pub mod schedule;
pub mod sketch_udf;
pub mod watermark;
