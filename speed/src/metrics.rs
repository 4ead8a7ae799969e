//! The speed layer's Prometheus counters, in the process's default registry (served by
//! `GET /metrics`). Offsets, heads and lag are read from [`crate::lambda::Lambda`] when
//! scraped, so they are never stale by a scrape interval.

use std::sync::LazyLock;

use prometheus::{IntCounter, IntCounterVec, register_int_counter, register_int_counter_vec};

/// Messages read from Kafka.
pub static MESSAGES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "lambdaflow_speed_messages_total",
        "Messages the speed layer read from Kafka"
    )
    .expect("registered once")
});

/// Valid events, duplicates included.
pub static VALID: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "lambdaflow_speed_events_valid_total",
        "Valid events the speed layer read, duplicates included"
    )
    .expect("registered once")
});

/// Invalid events by reason code.
pub static INVALID: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "lambdaflow_speed_events_invalid_total",
        "Invalid events the speed layer read, by reason code",
        &["reason"]
    )
    .expect("registered once")
});

/// Valid events dropped as duplicates of an earlier event.
pub static DUPLICATES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "lambdaflow_speed_events_duplicate_total",
        "Valid events the speed layer dropped as duplicates"
    )
    .expect("registered once")
});

/// Registers every metric of this module, so that a scrape lists them before any event.
pub fn register() {
    LazyLock::force(&MESSAGES);
    LazyLock::force(&VALID);
    LazyLock::force(&INVALID);
    LazyLock::force(&DUPLICATES);
}
