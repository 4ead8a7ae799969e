//! The one error type of the batch crate.

/// What can go wrong while archiving or recomputing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Delta table could not be read or written.
    #[error("delta table {table}: {source}")]
    Delta {
        /// The table's URL.
        table: String,
        /// What delta-rs said.
        #[source]
        source: deltalake::DeltaTableError,
    },
    /// A query over a Delta table failed.
    #[error("query over {table}: {source}")]
    Query {
        /// The table's URL.
        table: String,
        /// What DataFusion said.
        #[source]
        source: datafusion::error::DataFusionError,
    },
    /// Kafka could not be reached or refused a request.
    #[error(transparent)]
    Kafka(#[from] lambdaflow_kafka::Error),
    /// The lake URI is not usable.
    #[error("lake uri `{uri}`: {message}")]
    LakeUri {
        /// The configured URI.
        uri: String,
        /// Why it cannot be used.
        message: String,
    },
    /// Another process committed offsets this one was about to commit.
    #[error(
        "table {table} already holds partition {partition} up to offset {found}, beyond {expected}: \
         is a second archiver running against the same lake?"
    )]
    ConcurrentWriter {
        /// The table's URL.
        table: String,
        /// Kafka partition.
        partition: i32,
        /// The offset this archiver expected the table to hold at most.
        expected: i64,
        /// The offset found.
        found: i64,
    },
    /// A commit kept failing.
    #[error("giving up on a commit to {table} after {attempts} attempts: {source}")]
    CommitRetriesExhausted {
        /// The table's URL.
        table: String,
        /// How many attempts were made.
        attempts: u32,
        /// The last error.
        #[source]
        source: deltalake::DeltaTableError,
    },
    /// A table holds something lambdaflow cannot read back.
    #[error("delta table {table}: {message}")]
    Corrupt {
        /// The table's URL.
        table: String,
        /// What was wrong.
        message: String,
    },
    /// A view's columns cannot be laid out: its definition was not checked.
    #[error("view `{view}`: {source}")]
    Layout {
        /// The view.
        view: String,
        /// Which column is in the way.
        #[source]
        source: lambdaflow_common::error::LayoutError,
    },
    /// The platform's own files under `<lake>/_lambdaflow/` could not be read or written.
    #[error("{context}: {source}")]
    Store {
        /// What was being done.
        context: String,
        /// What the object store said.
        #[source]
        source: object_store::Error,
    },
    /// Another batch run holds the lock.
    #[error("batch run {running} is in progress (since {since}); runs never overlap")]
    RunInProgress {
        /// The id of the run holding the lock.
        running: String,
        /// When it took the lock.
        since: String,
    },
    /// The process is stopping.
    #[error("cancelled: the process is stopping")]
    Cancelled,
    /// A background task panicked or was cancelled.
    #[error("{task} task failed: {message}")]
    Task {
        /// Which task.
        task: &'static str,
        /// The panic or cancellation message.
        message: String,
    },
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
