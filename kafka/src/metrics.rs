//! What the consumers report about the broker itself, in the process's default registry:
//! registered here once, because the archiver and the speed layer may share a process.

use std::sync::LazyLock;

use prometheus::{IntCounterVec, register_int_counter_vec};

/// Offsets a consumer needed that the broker no longer held (deleted by retention before they
/// were read), by component (`archiver`, `speed`), topic and partition.
pub static OFFSETS_LOST: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "lambdaflow_offsets_lost_total",
        "Offsets a consumer needed that the broker no longer held, by component, topic and partition",
        &["component", "topic", "partition"]
    )
    .expect("registered once")
});

/// Registers the metrics of this module, so that a scrape lists them before anything is lost.
pub fn register() {
    LazyLock::force(&OFFSETS_LOST);
}
