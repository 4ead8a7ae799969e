//! The serving crate's integration tests, linked into one test binary: every test binary links
//! DataFusion, deltalake and librdkafka, so each one more costs a link and half a gigabyte.

mod guard;
mod http;
mod postgres;
mod support;
