//! The speed layer: in-memory aggregates of the events beyond the batch watermark.
//!
//! It depends on `lambdaflow-common` only (validation, deduplication and view definitions),
//! never on the batch crate. The layer itself — consuming from the watermark, folding Arrow
//! micro-batches into monoid states and swapping them atomically with each new batch version —
//! is not part of this release; see the README's status section.
