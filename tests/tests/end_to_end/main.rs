//! The end-to-end suite, linked into one test binary: every test binary links DataFusion,
//! deltalake and librdkafka, so each one more costs a link and half a gigabyte. One module per
//! area; `cargo test --test end_to_end faults::` runs one of them.

mod api_fuzz;
mod archive_exactly_once;
mod ballista;
mod batch_views;
mod cli;
mod dashboard;
mod demo;
mod deploy;
mod faults;
mod import;
mod lambda_e2e;
mod lambda_invariant;
mod readme;
mod s3_lake;
mod sources;
