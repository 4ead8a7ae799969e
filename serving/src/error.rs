//! The one error type of the `lambdaflow` binary's library: what a command can fail with.
//! Each layer's own error is kept whole as the source, so `main` prints the whole chain.

use std::path::PathBuf;

/// What can stop a command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config file could not be read.
    #[error("reading config {path}: {source}")]
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
    /// The config is not valid.
    #[error(transparent)]
    Config(#[from] lambdaflow_common::Error),
    /// Kafka could not be reached or refused a request.
    #[error(transparent)]
    Kafka(#[from] lambdaflow_kafka::Error),
    /// The lake side (archiver, batch runs, lake reads) failed. Boxed: it is the largest
    /// error of the workspace, and every `Result` of this crate would carry its size.
    #[error(transparent)]
    Batch(Box<lambdaflow_batch::Error>),
    /// The speed layer failed.
    #[error(transparent)]
    Speed(#[from] lambdaflow_speed::Error),
    /// An address could not be listened on.
    #[error("listening on {addr} ({what}): {source}")]
    Listen {
        /// What the address is for.
        what: &'static str,
        /// The address.
        addr: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// Serving HTTP failed.
    #[error("serving HTTP: {0}")]
    Serve(#[source] std::io::Error),
    /// The API would listen beyond this host with no token asked of anyone.
    #[error(
        "refusing to serve the API on {addr} without authentication: anyone who can reach it could write events and read every table. Set [serving.auth] mode = \"tokens\" with tokens, listen on a loopback address, or set serving.allow_public_without_auth = true"
    )]
    PublicWithoutAuth {
        /// The address listened on.
        addr: std::net::SocketAddr,
    },
    /// A configured token cannot be used.
    #[error(transparent)]
    Token(#[from] crate::http::guard::TokenError),
    /// The demo's temporary data directory could not be made.
    #[error("creating the demo's data directory: {0}")]
    DataDir(#[source] std::io::Error),
    /// The demo was pointed at an outside broker.
    #[error(
        "the demo runs its own embedded broker; unset LAMBDAFLOW_KAFKA__BROKERS or use `lambdaflow run`"
    )]
    DemoNeedsEmbeddedBroker,
    /// `gen` was pointed at the embedded broker, which lives in another process.
    #[error(
        "`gen` needs a broker it can reach: the embedded one lives inside `run` or `demo`; \
         point LAMBDAFLOW_KAFKA__BROKERS at the address they print"
    )]
    GenNeedsBroker,
    /// `--source` names no source of the config, or names none where it has several.
    #[error("{command}: {why} (--source)")]
    UnknownSource {
        /// The command (`gen`, `import`).
        command: &'static str,
        /// What is wrong with the name.
        why: String,
    },
    /// `import` was stopped before every file was in; a new import resumes it.
    #[error(
        "import interrupted: what was committed stays, and the same import run again resumes after it"
    )]
    ImportInterrupted,
    /// A task of the process failed.
    #[error("{task} failed: {source}")]
    Task {
        /// Which task.
        task: &'static str,
        /// Why.
        #[source]
        source: Box<Error>,
    },
    /// A task of the process panicked.
    #[error("{task} task panicked: {message}")]
    Panicked {
        /// Which task.
        task: &'static str,
        /// The panic's message.
        message: String,
    },
}

impl From<lambdaflow_batch::Error> for Error {
    fn from(error: lambdaflow_batch::Error) -> Self {
        Self::Batch(Box::new(error))
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
