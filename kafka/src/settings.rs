//! The librdkafka settings of every client lambdaflow creates, in one place, so that a
//! setting's reason is written once and every role is visible side by side.

use rdkafka::ClientConfig;

/// Settings every client shares: where the brokers are.
fn base(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    config
}

/// Settings every consumer shares: a start offset the broker no longer holds resumes at the
/// earliest one it does (never at the head, which would skip retained messages no batch
/// covers); the consumers report the deleted range as lost.
fn consumer(brokers: &str, group_id: String) -> ClientConfig {
    let mut config = base(brokers);
    config
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest");
    config
}

/// The archiver's consumer: offsets live in the lake (`txn` actions), never in the consumer
/// group, so nothing is committed or stored.
pub fn archiver(brokers: &str, group_id: &str) -> ClientConfig {
    let mut config = consumer(brokers, format!("{group_id}-archiver"));
    config
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "50")
        .set("queued.min.messages", "200000");
    config
}

/// The speed layer's consumer: starts from the batch watermark, commits nothing; short fetch
/// waits keep produce-to-visible latency low.
pub fn speed(brokers: &str, group_id: &str) -> ClientConfig {
    let mut config = consumer(brokers, format!("{group_id}-speed"));
    config
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "10")
        // With librdkafka's default (100,000) the consumer stalled for ~0.9 s once its
        // queue drained mid-topic; a deeper prefetch keeps the fold fed.
        .set("queued.min.messages", "200000");
    config
}

/// A plain reader (tools and tests reading a topic back): librdkafka's defaults, no commits.
pub fn reader(brokers: &str, group_id: &str) -> ClientConfig {
    consumer(brokers, group_id.to_owned())
}

/// A metadata and admin client: no settings beyond the brokers.
pub fn admin(brokers: &str) -> ClientConfig {
    base(brokers)
}

/// The idempotent producer: retries never duplicate or reorder messages within a partition.
pub fn producer(brokers: &str) -> ClientConfig {
    let mut config = base(brokers);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("message.timeout.ms", "30000");
    config
}

/// The idempotent producer, with `message.max.bytes` raised so that an event of
/// `max_event_bytes` fits with its key (the event id, never longer than the payload) and the
/// record framing; librdkafka's default (1,000,000) would refuse larger valid events forever.
/// A broker keeps its own limit (Kafka's `message.max.bytes`, a topic's `max.message.bytes`).
pub fn producer_for_events(brokers: &str, max_event_bytes: usize) -> ClientConfig {
    let mut config = producer(brokers);
    config.set(
        "message.max.bytes",
        max_message_bytes(max_event_bytes).to_string(),
    );
    config
}

/// The `message.max.bytes` that fits a payload and a key of `max_event_bytes` each plus 64 KiB
/// of framing: at least librdkafka's default, at most its maximum.
pub fn max_message_bytes(max_event_bytes: usize) -> usize {
    max_event_bytes
        .saturating_mul(2)
        .saturating_add(64 * 1024)
        .clamp(1_000_000, 1_000_000_000)
}

/// An idempotent producer that puts one message in each record batch. Some Kafka-protocol
/// brokers (tansu 0.6) serve a fetch only from the first offset of a record batch; with one
/// message per batch a restarted consumer may resume at any offset, as Kafka allows.
pub fn producer_one_per_batch(brokers: &str) -> ClientConfig {
    let mut config = base(brokers);
    config
        .set("enable.idempotence", "true")
        .set("batch.num.messages", "1")
        .set("linger.ms", "0");
    config
}

/// A producer for filling a topic as fast as possible (benchmarks and tests): a deep local
/// queue, small lingering.
pub fn bulk_producer(brokers: &str) -> ClientConfig {
    let mut config = base(brokers);
    config
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000");
    config
}
