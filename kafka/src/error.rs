//! The one error type of the Kafka crate.

/// What can go wrong talking to Kafka.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// librdkafka refused or failed a request.
    #[error("kafka ({context}): {source}")]
    Client {
        /// What was being done.
        context: String,
        /// What librdkafka said.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The broker refused to create the topic.
    #[error("creating topic {topic}: {code}")]
    CreateTopic {
        /// The topic.
        topic: String,
        /// The broker's error code.
        code: rdkafka::types::RDKafkaErrorCode,
    },
    /// The producer's local queue is full: wait for deliveries, then queue again.
    #[error("the producer's queue is full")]
    QueueFull,
    /// The producer went away before the broker acknowledged a message.
    #[error("the producer was dropped before delivery")]
    Dropped,
    /// A blocking Kafka call's thread ended without an answer (it panicked).
    #[error("{task} ended without an answer: {message}")]
    Task {
        /// Which call.
        task: &'static str,
        /// The panic message.
        message: String,
    },
}

impl Error {
    /// Wraps librdkafka's error with what was being done. A refused setting's value is
    /// replaced by `<redacted>`: it may be a password given in `[kafka.properties]`.
    pub fn client(context: impl Into<String>) -> impl FnOnce(rdkafka::error::KafkaError) -> Self {
        let context = context.into();
        move |source| {
            let source = match source {
                rdkafka::error::KafkaError::ClientConfig(code, description, key, value) => {
                    // librdkafka's own description quotes the value too.
                    let description = match value.is_empty() {
                        true => description,
                        false => description.replace(&value, "<redacted>"),
                    };
                    rdkafka::error::KafkaError::ClientConfig(
                        code,
                        description,
                        key,
                        "<redacted>".into(),
                    )
                }
                other => other,
            };
            Self::Client { context, source }
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
