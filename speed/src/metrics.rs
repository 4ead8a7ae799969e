//! The speed layer's Prometheus metrics, in the process's default registry (served by
//! `GET /metrics`). Counters are bumped by the Kafka adapter; offsets, heads, lag, versions and
//! group counts are gauges set from the [`Served`] state by [`observe`] when scraped, so they
//! are never stale by a scrape interval.

use std::sync::LazyLock;

use lambdaflow_common::config::Config;
use prometheus::{IntCounterVec, IntGaugeVec, register_int_counter_vec, register_int_gauge_vec};

use crate::served::Served;

/// Messages read from Kafka, by source.
pub static MESSAGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "lambdaflow_speed_messages_total",
        "Messages the speed layer read from Kafka, by source",
        &["source"],
    )
});

/// Valid events, duplicates included, by source.
pub static VALID: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "lambdaflow_speed_events_valid_total",
        "Valid events the speed layer read, duplicates included, by source",
        &["source"],
    )
});

/// Invalid events by source and reason code.
pub static INVALID: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "lambdaflow_speed_events_invalid_total",
        "Invalid events the speed layer read, by source and reason code",
        &["source", "reason"],
    )
});

/// Valid events dropped as duplicates of an earlier event, by source.
pub static DUPLICATES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "lambdaflow_speed_events_duplicate_total",
        "Valid events the speed layer dropped as duplicates, by source",
        &["source"],
    )
});

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register_int_counter_vec!(name, help, labels).expect("registered once")
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register_int_gauge_vec!(name, help, labels).expect("registered once")
}

static CONSUMED: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "lambdaflow_speed_consumed_offset",
        "Last offset the speed layer consumed, per source and partition",
        &["source", "partition"],
    )
});
static HEAD: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "lambdaflow_speed_head_offset",
        "Latest head read of each source's partition (the next offset to be written)",
        &["source", "partition"],
    )
});
static LAG: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "lambdaflow_speed_lag_messages",
        "Messages written to a source's partition that the speed layer has not consumed yet",
        &["source", "partition"],
    )
});
static BATCH_VERSION: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "lambdaflow_view_batch_version",
        "Version of the view table the batch side is loaded from (-1: none yet)",
        &["view"],
    )
});
static BATCH_GROUPS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "lambdaflow_view_batch_groups",
        "Groups (bucket, dimension values) on the batch side of a view",
        &["view"],
    )
});
static SPEED_GROUPS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "lambdaflow_view_speed_groups",
        "Groups (bucket, dimension values) on the speed side of a view",
        &["view"],
    )
});
/// 1 for a partition the speed layer does not consume because the broker's head is below the
/// offsets the lake holds (the topic was recreated or lost its data).
pub static HALTED: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "lambdaflow_speed_partition_halted",
        "1 for a source's partition not consumed because its topic went back below the lake's offsets",
        &["source", "partition"],
    )
});
static RETAINED: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "lambdaflow_speed_retained_events",
        "First occurrences the speed layer keeps since the lowest batch watermark, by source",
        &["source"],
    )
});
static RETAINED_BYTES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "lambdaflow_speed_retained_bytes",
        "Bytes of the Arrow buffers holding retained first occurrences not yet written to disk, by source",
        &["source"],
    )
});
static RETAINED_DISK_BYTES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "lambdaflow_speed_retained_disk_bytes",
        "Bytes of the local files holding retained first occurrences, by source",
        &["source"],
    )
});
static ID_BYTES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "lambdaflow_speed_dedup_id_bytes",
        "Bytes of memory the ids deduplication remembers take, by source",
        &["source"],
    )
});
static ID_DISK_BYTES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "lambdaflow_speed_dedup_id_disk_bytes",
        "Bytes of the local files holding the ids deduplication remembers, by source",
        &["source"],
    )
});
static STATE_BYTES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "lambdaflow_speed_state_bytes",
        "Heap bytes of a view's speed state",
        &["view"],
    )
});

/// Registers every counter of this module with `source`'s series, so that a scrape lists
/// them before any event.
pub fn register(source: &str) {
    for counter in [&*MESSAGES, &*VALID, &*DUPLICATES] {
        counter.with_label_values(&[source]);
    }
    LazyLock::force(&INVALID);
}

/// Sets the gauges from `served`, the speed layer of `config`'s one source: offsets, heads and
/// lag per partition, versions and groups per view, the retained events.
pub fn observe(config: &Config, served: &Served) {
    let source = config.source().name.as_str();
    register(source);
    lambdaflow_kafka::metrics::register();
    let progress = served.progress();
    let lag = progress.lag();
    for (p, head) in &progress.heads {
        let partition = [source, &p.to_string()];
        HEAD.with_label_values(&partition).set(*head);
        CONSUMED
            .with_label_values(&partition)
            .set(progress.consumed.get(p).copied().unwrap_or(-1));
        LAG.with_label_values(&partition)
            .set(lag.get(p).copied().unwrap_or(0));
    }
    let retained_gauges = [
        &*RETAINED,
        &*RETAINED_BYTES,
        &*RETAINED_DISK_BYTES,
        &*ID_BYTES,
        &*ID_DISK_BYTES,
    ];
    let Some(snapshot) = served.snapshot() else {
        for gauge in retained_gauges {
            gauge.with_label_values(&[source]).set(0);
        }
        return;
    };
    for (view, pair) in config.views.iter().zip(snapshot.pairs()) {
        let name = [view.name.as_str()];
        let version = pair
            .batch()
            .version
            .map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX));
        BATCH_VERSION.with_label_values(&name).set(version);
        BATCH_GROUPS
            .with_label_values(&name)
            .set(pair.batch().state.len() as i64);
        SPEED_GROUPS
            .with_label_values(&name)
            .set(pair.speed().len() as i64);
        STATE_BYTES
            .with_label_values(&name)
            .set(i64::try_from(pair.speed().heap_bytes()).unwrap_or(i64::MAX));
    }
    let retained = snapshot.retained();
    let values = [
        retained.events as u64,
        retained.memory_bytes as u64,
        retained.disk_bytes,
        retained.id_bytes as u64,
        retained.id_disk_bytes,
    ];
    for (gauge, value) in retained_gauges.into_iter().zip(values) {
        let value = i64::try_from(value).unwrap_or(i64::MAX);
        gauge.with_label_values(&[source]).set(value);
    }
}
