//! The errors of the common crate: [`Error`] for a configuration that cannot be used, and the
//! two ways a view definition can fail to compile — its table layout ([`LayoutError`]) and its
//! filter ([`FilterError`]) — which the config check, the batch layer and the speed layer
//! each wrap with their own context.

use arrow::datatypes::DataType;
use datafusion::error::DataFusionError;

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
    /// A view's columns cannot be laid out in one table.
    #[error("invalid config at `{key}`: {detail}")]
    Layout {
        /// The view's key path, `views.<name>`.
        key: String,
        /// Which column is in the way; part of the message, not a source, so that it is
        /// printed once.
        detail: LayoutError,
    },
    /// A view's filter is not a per-event boolean condition over declared fields.
    #[error("invalid config at `{key}`: {detail}")]
    Filter {
        /// The filter's key path, `views.<name>.filter`.
        key: String,
        /// What is wrong with the expression; part of the message, not a source.
        detail: FilterError,
    },
}

/// Why a view's columns cannot be laid out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// A dimension or a measure names a field the source does not declare.
    #[error("`{field}` is not a declared field")]
    UndeclaredField {
        /// The field named.
        field: String,
    },
    /// Two columns of the view table would share a name.
    #[error("column `{column}` would appear twice in the view table; rename the measure")]
    DuplicateColumn {
        /// The name used twice.
        column: String,
    },
}

/// Why a view filter cannot be compiled.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// The parsed expression cannot be planned for evaluation over the raw table's columns.
    #[error("filter `{sql}` cannot be compiled: {}", .source.strip_backtrace())]
    Compile {
        /// The filter's text.
        sql: String,
        /// What DataFusion said.
        #[source]
        source: DataFusionError,
    },
    /// The declared fields do not make a schema DataFusion accepts.
    #[error("{0}")]
    Schema(#[source] DataFusionError),
    /// The text is not an SQL expression over the declared fields.
    #[error("filter `{sql}`: {}", .source.strip_backtrace())]
    Parse {
        /// The filter's text.
        sql: String,
        /// What DataFusion said.
        #[source]
        source: DataFusionError,
    },
    /// The expression calls a function that may answer differently on another call or run
    /// (volatile like `random()`, or stable like `now()`).
    #[error(
        "filter `{sql}` calls `{function}`, which is not immutable (it may answer differently on another call or run); use only immutable functions so that both layers and every rerun give the filter the same answer"
    )]
    NotImmutable {
        /// The filter's text.
        sql: String,
        /// The first such function.
        function: String,
    },
    /// The expression could not be walked to look for aggregates and subqueries.
    #[error("{0}")]
    Inspect(#[source] DataFusionError),
    /// The expression needs more than one event to be decided.
    #[error("filter `{sql}` must be a per-event condition: no aggregates, windows or subqueries")]
    NotPerEvent {
        /// The filter's text.
        sql: String,
    },
    /// The expression is not a condition.
    #[error("filter `{sql}` is of type {data_type}, not boolean")]
    NotBoolean {
        /// The filter's text.
        sql: String,
        /// The type it has.
        data_type: DataType,
    },
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
