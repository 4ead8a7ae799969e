//! The one error type of the batch crate.

use std::path::PathBuf;

use chrono::{DateTime, Utc};

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
    /// The Ballista cluster could not be reached, or a cluster process could not start.
    #[error("Ballista scheduler at {address}: {message}")]
    Cluster {
        /// The scheduler's `host:port`.
        address: String,
        /// What went wrong.
        message: String,
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
    #[error("lake uri `{uri}`: {reason}")]
    LakeUri {
        /// The configured URI.
        uri: String,
        /// Why it cannot be used.
        reason: &'static str,
    },
    /// A local lake directory could not be created (or its path resolved).
    #[error("lake uri `{uri}`: cannot create {}: {source}", path.display())]
    LakeDir {
        /// The configured URI (or the table URL under it).
        uri: String,
        /// The directory.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
    /// A local table directory exists but cannot be looked into.
    #[error("cannot read the table directory {}: {source}", path.display())]
    LocalTable {
        /// The directory.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
    /// A view table's rows do not fit the view's definition.
    #[error("view table {table}: {source}")]
    ViewRows {
        /// The table's URL.
        table: String,
        /// What did not fit.
        #[source]
        source: lambdaflow_common::state::StateError,
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
    /// A view's filter cannot be compiled: its definition was not checked.
    #[error(transparent)]
    Filter(#[from] lambdaflow_common::error::FilterError),
    /// A view's columns cannot be laid out: its definition was not checked.
    #[error("view `{view}`: {source}")]
    Layout {
        /// The view.
        view: String,
        /// Which column is in the way.
        #[source]
        source: lambdaflow_common::error::LayoutError,
    },
    /// A JSON record lambdaflow wrote (a view commit's watermark, a run record, a raw commit
    /// entry) cannot be read back.
    #[error("{table}: unreadable {what}: {source}")]
    Unreadable {
        /// The table or directory holding it.
        table: String,
        /// Which record.
        what: String,
        /// What serde said.
        #[source]
        source: serde_json::Error,
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
    #[error(
        "batch run {running} is in progress{}; runs never overlap",
        .since.as_ref().map(|t| format!(" (since {})", t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))).unwrap_or_default()
    )]
    RunInProgress {
        /// The id of the run holding the lock.
        running: String,
        /// When it took the lock, if known (a run of this process still queued has not).
        since: Option<DateTime<Utc>>,
    },
    /// The topic has no partitions the broker would tell of.
    #[error("topic {topic} has no partitions on {brokers} (does it exist, is the broker up?)")]
    TopicUnavailable {
        /// The topic.
        topic: String,
        /// The bootstrap servers asked.
        brokers: String,
    },
    /// This run's batch lock was taken over (its heartbeat stopped for longer than the lock's
    /// time to live, so another run judged it dead): the run stops before publishing anything
    /// more, since another run may now be publishing the same views.
    #[error(
        "batch run {run_id} lost its lock to another run (generation {generation} is not its own); \
         it stops without publishing further views"
    )]
    LockLost {
        /// The run that lost the lock.
        run_id: String,
        /// The lock generation it found taken.
        generation: u64,
    },
    /// `LAMBDAFLOW_FAULTS` names a failpoint that does not parse.
    #[cfg(feature = "faults")]
    #[error("LAMBDAFLOW_FAULTS: `{entry}` is not <action>:<path part>#<n>")]
    FaultSpec {
        /// The entry that does not parse.
        entry: String,
    },
    /// Failpoints could not be installed: delta-rs has no store for `file://` to wrap.
    #[cfg(feature = "faults")]
    #[error("LAMBDAFLOW_FAULTS: no object store factory for file:// to wrap")]
    FaultStore,
    /// The process is stopping.
    #[error("cancelled: the process is stopping")]
    Cancelled,
    /// The views of some sources of a batch run failed (each source's error is in the run's
    /// record); the other sources' views published.
    #[error("{0}")]
    SourcesFailed(String),
    /// Some views of a source failed for good (each task's error is in the run's record); the
    /// source's other views published.
    #[error("views failed (the others published): {0}")]
    ViewsFailed(String),
    /// Deduplication's files on local disk could not be written or read.
    #[error(transparent)]
    Dedup(#[from] lambdaflow_dedup::Error),
    /// A failpoint of the fault suite failed a batch task ([`crate::faults`]).
    #[cfg(feature = "faults")]
    #[error("failpoint on task {task} ({})", if *.transient { "transient" } else { "permanent" })]
    Failpoint {
        /// The task.
        task: String,
        /// Whether the run may retry it.
        transient: bool,
    },
    /// A file to import could not be found, read or made sense of.
    #[error("import of {file}: {message}")]
    Import {
        /// The file, as named (empty when the error is not one file's).
        file: String,
        /// What went wrong.
        message: String,
    },
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
