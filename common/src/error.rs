//! The one error type of the common crate: everything here fails only on bad configuration.

/// What can go wrong while loading or checking a configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config file is not valid TOML or does not match the config structure.
    #[error("config {origin}: {detail}")]
    Parse {
        /// Where the text came from (a path, or "built-in").
        origin: String,
        /// What the TOML parser or deserializer said; part of the message, not a source, so
        /// that it is printed once.
        detail: toml::de::Error,
    },
    /// An environment override names a key path that cannot be applied.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable's name.
        var: String,
        /// Why it could not be applied.
        message: String,
    },
    /// The config parses but one of its values is inconsistent with the rest.
    #[error("invalid config at `{key}`: {message}")]
    Invalid {
        /// The key path, e.g. `views.sales.measures.revenue`.
        key: String,
        /// What is wrong and what to do about it.
        message: String,
    },
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
