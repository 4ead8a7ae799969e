//! The one error type of the speed crate.

use lambdaflow_common::watermark::Watermark;

/// What can go wrong in the speed layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A view filter could not be compiled.
    #[error("view filter: {0}")]
    Filter(#[source] lambdaflow_common::error::FilterError),
    /// Evaluating a filter failed.
    #[error("evaluating a view filter: {0}")]
    Query(#[from] datafusion::error::DataFusionError),
    /// An Arrow kernel failed.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// Folding events into states failed.
    #[error("folding events: {0}")]
    State(#[from] lambdaflow_common::state::StateError),
    /// Kafka could not be reached or refused a request.
    #[error(transparent)]
    Kafka(#[from] lambdaflow_kafka::Error),
    /// The raw ids of a date could not be read for deduplication.
    #[error("reading raw ids of {date} for deduplication: {source}")]
    RawIds {
        /// The date, `YYYY-MM-DD`.
        date: String,
        /// What the lake reader said.
        #[source]
        source: RawIdsError,
    },
    /// A new batch version covers less than the current one: the view tables were replaced
    /// by older ones. Restart the process to rebuild from the new watermark.
    #[error(
        "batch watermark moved back from {before:?} to {after:?}; restart to rebuild the speed layer"
    )]
    WatermarkMovedBack {
        /// The lowest watermark before.
        before: Watermark,
        /// The lowest watermark of the new versions.
        after: Watermark,
    },
    /// The local files of retained first occurrences could not be written or read.
    #[error("speed layer files at {}: {source}", path.display())]
    Spill {
        /// The file or directory.
        path: std::path::PathBuf,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
    /// Deduplication's files on local disk could not be written or read.
    #[error(transparent)]
    Dedup(#[from] lambdaflow_dedup::Error),
    /// A background task failed.
    #[error("{task} task failed: {message}")]
    Task {
        /// Which task.
        task: &'static str,
        /// The panic or cancellation message.
        message: String,
    },
}

/// Why the raw ids of a date could not be read: the lake adapter's own error, kept whole.
pub type RawIdsError = Box<dyn std::error::Error + Send + Sync>;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
