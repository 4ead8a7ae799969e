//! Read-only SQL over the lake and the merged views (`POST /v1/sql`).
//!
//! Each request gets its own DataFusion session with a memory pool of its own, so one query
//! cannot starve another and nothing it registers outlives it. Tables are registered only when
//! the statement names them:
//! - each view as the merge of its batch and speed states at this moment, in the view
//!   table's layout (`common::table`): state columns included, so averages roll up from
//!   `<m>__sum`/`<m>__count` and distinct counts from `hll_estimate(hll_merge(<m>__hll))`;
//! - `raw_<source>` and `quarantine_<source>`, the Delta tables at their latest version.
//!
//! Only queries pass: the parsed statement must be a `SELECT`/`WITH` query (or an `EXPLAIN`
//! of one, `SHOW TABLES`, `SHOW COLUMNS`, `DESCRIBE`), checked on the AST before planning,
//! and the plan is checked again with DataFusion's own DDL/DML/statement guard. No table
//! reads a path or URL the statement names: URL tables are not enabled and `CREATE EXTERNAL
//! TABLE` and `COPY` are refused as statements. A query that adds up a view's distinct counts
//! or averages is refused with the exact form in the message ([`rollup`]).

mod rollup;

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use datafusion::common::{DataFusionError, ParamValues};
use datafusion::config::Dialect;
use datafusion::datasource::MemTable;
use datafusion::datasource::empty::EmptyTable;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use datafusion::sql::parser::Statement;
use datafusion::sql::sqlparser::ast::Statement as Sql;
use futures::StreamExt;
use lambdaflow_batch::lake::reader::{LakeReader, SourceTable};
use lambdaflow_common::config::{Config, ServingConfig};
use lambdaflow_common::layout::ViewLayout;
use lambdaflow_common::table::merged_batch;
use lambdaflow_common::view::fingerprint;

use crate::postgres::PgSessions;
use crate::speed_layer::Speeds;

/// Why a statement got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// Not a query.
    #[error("only queries are allowed (SELECT, WITH, EXPLAIN, SHOW, DESCRIBE); found {0}")]
    NotAQuery(String),
    /// The statement does not parse or plan, or fails on the data.
    #[error("{0}")]
    Invalid(String),
    /// The answer has more rows than allowed.
    #[error(
        "the answer has more than {0} rows; add a LIMIT or aggregate further (serving.sql_max_rows)"
    )]
    TooManyRows(usize),
    /// The query needed more memory than allowed.
    #[error(
        "the query needs more than {limit} bytes of memory (serving.sql_max_memory_bytes): {detail}"
    )]
    Memory {
        /// The limit in bytes.
        limit: usize,
        /// DataFusion's account of it.
        detail: String,
    },
    /// The query ran longer than allowed and was cancelled.
    #[error("the query ran longer than {} and was cancelled (serving.sql_timeout)", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// The views are not loaded yet; retrying later works.
    #[error("the speed layer is starting; retry in a moment")]
    Starting,
    /// The query adds up what cannot be added (a view's distinct counts or averages).
    #[error("{0}")]
    InexactRollup(String),
    /// The statement names a table the caller's token may not read.
    #[error(
        "table `{0}` holds every event's payload: reading it needs a token with the admin scope"
    )]
    Forbidden(String),
    /// The caller's token does not have the `query` scope.
    #[error("SQL needs a token with the query scope")]
    NoQueryScope,
    /// The view was redefined and its batch side is being recomputed.
    #[error("view `{0}` was redefined and is being recomputed under its new definition")]
    Rebuilding(String),
    /// Not the statement's fault: the lake could not be read, or a bug.
    #[error("{0}")]
    Internal(String),
}

/// A query's answer: its schema's columns and its rows in record batches.
#[derive(Debug)]
pub struct Answer {
    /// The columns, named and typed.
    pub schema: arrow::datatypes::SchemaRef,
    /// The rows.
    pub batches: Vec<RecordBatch>,
}

/// Which tables a statement may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tables {
    /// The merged views.
    Views,
    /// The views and the raw and quarantine tables, which hold every event's payload.
    All,
}

/// Functions that build a large value from a small argument (`repeat('x', 1e10)`,
/// `range(0, 1e10)`) allocate it outside the query's memory pool, where no limit sees it:
/// they are not in the session. The table functions `generate_series` and `range` stay: they
/// stream rows in batches that the row, memory and time limits do see.
const UNBOUNDED_FUNCTIONS: [&str; 7] = [
    "repeat",
    "lpad",
    "rpad",
    "range",
    "generate_series",
    "array_repeat",
    "array_resize",
];

/// Runs `sql` against the lake and the current merged views, within the limits of `serving`,
/// reading only `tables`.
pub async fn query(
    config: &Config,
    lake: &LakeReader,
    speeds: &Speeds,
    sql: &str,
    tables: Tables,
) -> Result<Answer, SqlError> {
    let limits = &config.serving;
    let run = async {
        // A state with no functions registered: parsing needs only its settings.
        let statement = SessionStateBuilder::new()
            .build()
            .sql_to_statement(sql, &Dialect::Generic)
            .map_err(|e| classify(e, limits))?;
        prepare(
            config,
            lake,
            speeds,
            statement,
            tables,
            Catalog::Sql,
            Views::Merged,
        )
        .await?
        .run(limits, None)
        .await
    };
    within_timeout(limits, run).await
}

/// `work` cancelled once it has run for `serving.sql_timeout`.
pub async fn within_timeout<T>(
    limits: &ServingConfig,
    work: impl Future<Output = Result<T, SqlError>>,
) -> Result<T, SqlError> {
    tokio::time::timeout(limits.sql_timeout, work)
        .await
        .unwrap_or(Err(SqlError::Timeout(limits.sql_timeout)))
}

/// Which catalogue of itself a session shows.
#[derive(Debug, Clone)]
pub enum Catalog {
    /// `information_schema` and `SHOW TABLES`.
    Sql,
    /// Also Postgres's `pg_catalog` and its functions, which `psql`'s `\d` and BI tools read:
    /// the server's own, whose object ids outlive the session ([`crate::postgres`]).
    Postgres(PgSessions),
}

/// What a session holds of each view it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Views {
    /// Its batch and speed states merged at this moment: to run the statement.
    Merged,
    /// Its columns and no rows: to plan a statement that runs later (the Postgres extended
    /// protocol describes a statement's answer before it binds and runs it), without merging
    /// anything or holding the merge until then.
    Columns,
}

/// A statement planned and checked in a session of its own, its tables registered: nothing
/// has run yet.
pub struct Prepared {
    ctx: SessionContext,
    plan: LogicalPlan,
}

/// Plans `statement` in a new session holding the tables it names, views as `views` says
/// (every table when it looks at the catalogue), refusing what is not a query, what `tables` does not cover and
/// what adds up what cannot be added.
pub async fn prepare(
    config: &Config,
    lake: &LakeReader,
    speeds: &Speeds,
    statement: Statement,
    tables: Tables,
    catalog: Catalog,
    views: Views,
) -> Result<Prepared, SqlError> {
    let limits = &config.serving;
    let ctx = session(limits, catalog, tables)?;
    read_only(&statement)?;
    let references = ctx
        .state()
        .resolve_table_references(&statement)
        .map_err(|e| classify(e, limits))?;
    // A look at the catalogue (`SHOW TABLES`, `information_schema`) sees every table; any
    // other statement gets only the tables it names, so a query on one view never pays for
    // merging the others or opening the lake. (Postgres's `pg_catalog` describes the tables
    // from the config alone: see `crate::postgres`.)
    let catalogue = matches!(&statement, Statement::Statement(s) if matches!(s.as_ref(), Sql::ShowTables { .. }))
        || references
            .iter()
            .any(|r| r.schema() == Some("information_schema"));
    let names: std::collections::BTreeSet<String> = if catalogue {
        let sources = config.sources.iter().filter(|_| tables == Tables::All);
        config
            .views
            .iter()
            .map(|v| v.name.clone())
            .chain(
                sources.flat_map(|s| [format!("raw_{}", s.name), format!("quarantine_{}", s.name)]),
            )
            .collect()
    } else {
        references.iter().map(|r| r.table().to_owned()).collect()
    };
    for name in &names {
        register(config, lake, speeds, &ctx, name, tables, views).await?;
    }
    let plan = ctx
        .state()
        .statement_to_plan(statement)
        .await
        .map_err(|e| classify(e, limits))?;
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(&plan)
        .map_err(|e| SqlError::NotAQuery(e.strip_backtrace()))?;
    rollup::FinishedColumns::of(config)
        .check(&plan)
        .map_err(SqlError::InexactRollup)?;
    Ok(Prepared { ctx, plan })
}

impl Prepared {
    /// The checked plan, its parameters (`$1`...) not yet bound.
    pub fn plan(&self) -> &LogicalPlan {
        &self.plan
    }

    /// Runs the plan with `params` bound, holding its answer to `serving.sql_max_rows`.
    pub async fn run(
        self,
        limits: &ServingConfig,
        params: Option<ParamValues>,
    ) -> Result<Answer, SqlError> {
        let plan = match params {
            Some(params) => self
                .plan
                .replace_params_with_values(&params)
                .map_err(|e| classify(e, limits))?,
            None => self.plan,
        };
        let frame = self
            .ctx
            .execute_logical_plan(plan)
            .await
            .map_err(|e| classify(e, limits))?;
        let schema = Arc::new(frame.schema().as_arrow().clone());
        let mut stream = frame
            .execute_stream()
            .await
            .map_err(|e| classify(e, limits))?;
        let mut batches = Vec::new();
        let mut rows = 0;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| classify(e, limits))?;
            rows += batch.num_rows();
            if rows > limits.sql_max_rows {
                return Err(SqlError::TooManyRows(limits.sql_max_rows));
            }
            batches.push(batch);
        }
        Ok(Answer { schema, batches })
    }
}

fn session(
    limits: &ServingConfig,
    catalog: Catalog,
    tables: Tables,
) -> Result<SessionContext, SqlError> {
    // No spilling: the memory limit is a hard limit, and a query never writes temporary files
    // on the serving host.
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_limit(limits.sql_max_memory_bytes, 1.0)
        .with_disk_manager_builder(
            DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
        )
        .build_arc()
        .map_err(|e| SqlError::Internal(e.to_string()))?;
    match catalog {
        Catalog::Sql => {
            let mut ctx = SessionContext::new_with_config_rt(session_config(), runtime);
            functions(&mut ctx).map_err(|e| SqlError::Internal(e.to_string()))?;
            Ok(ctx)
        }
        Catalog::Postgres(sessions) => sessions
            .session(runtime, tables)
            .map_err(|e| SqlError::Internal(format!("pg_catalog: {e}"))),
    }
}

/// The settings of every SQL session.
pub(crate) fn session_config() -> SessionConfig {
    SessionConfig::new()
        .with_information_schema(true)
        .with_target_partitions(2)
}

/// Gives `ctx` the sketch functions and takes away the ones that allocate beyond its limits.
pub(crate) fn functions(ctx: &mut SessionContext) -> Result<(), DataFusionError> {
    lambdaflow_batch::views::sketch_udf::register(ctx)?;
    for name in UNBOUNDED_FUNCTIONS {
        ctx.deregister_udf(name);
    }
    Ok(())
}

/// Refuses every statement but a query and the catalogue's read-only views of itself.
fn read_only(statement: &Statement) -> Result<(), SqlError> {
    match statement {
        Statement::Statement(sql) => match sql.as_ref() {
            Sql::Query(_)
            | Sql::ShowTables { .. }
            | Sql::ShowColumns { .. }
            | Sql::ExplainTable { .. } => Ok(()),
            Sql::Explain { statement, .. } => read_only(&Statement::Statement(statement.clone())),
            other => Err(SqlError::NotAQuery(first_words(&other.to_string()))),
        },
        Statement::Explain(explain) => read_only(&explain.statement),
        Statement::CreateExternalTable(_) => {
            Err(SqlError::NotAQuery("CREATE EXTERNAL TABLE".into()))
        }
        Statement::CopyTo(_) => Err(SqlError::NotAQuery("COPY".into())),
        Statement::Reset(_) => Err(SqlError::NotAQuery("RESET".into())),
    }
}

/// The keywords a statement starts with, to name it in an error.
fn first_words(statement: &str) -> String {
    statement
        .split_whitespace()
        .take_while(|w| w.chars().all(|c| c.is_ascii_alphabetic()))
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Registers the table `name` if it is one of ours; DataFusion names any other as not found.
async fn register(
    config: &Config,
    lake: &LakeReader,
    speeds: &Speeds,
    ctx: &SessionContext,
    name: &str,
    tables: Tables,
    views: Views,
) -> Result<(), SqlError> {
    let internal = |e: &dyn std::fmt::Display| SqlError::Internal(format!("table `{name}`: {e}"));
    if let Some(at) = speeds.view(name) {
        let view = &config.views[at.global];
        let source = config.source_of(view);
        let layout = ViewLayout::new(source, view).map_err(|e| internal(&e))?;
        if views == Views::Columns {
            ctx.register_table(name, Arc::new(EmptyTable::new(layout.schema)))
                .map_err(|e| internal(&e))?;
            return Ok(());
        }
        let pair = {
            let Some(snapshot) = speeds.served(at.source).snapshot() else {
                return Err(SqlError::Starting);
            };
            snapshot.detach(at.index, |_| true)
        };
        if pair.batch().redefined(&fingerprint(source, view)) {
            return Err(SqlError::Rebuilding(view.name.clone()));
        }
        let batch = merged_batch(source, view, &layout, &[&pair.batch().state, pair.speed()])
            .map_err(|e| internal(&e))?;
        let table =
            MemTable::try_new(layout.schema, vec![vec![batch]]).map_err(|e| internal(&e))?;
        ctx.register_table(name, Arc::new(table))
            .map_err(|e| internal(&e))?;
        return Ok(());
    }
    let table = |prefix: &str| {
        let name = name.strip_prefix(prefix)?;
        config.sources.iter().find(|s| s.name == name)
    };
    let (source, table) = match (table("raw_"), table("quarantine_")) {
        (Some(source), _) => (source, SourceTable::Raw),
        (_, Some(source)) => (source, SourceTable::Quarantine),
        (None, None) => return Ok(()),
    };
    if tables == Tables::Views {
        return Err(SqlError::Forbidden(name.to_owned()));
    }
    // A table not there yet (nothing archived) is not registered: its name stays unknown.
    lake.register(ctx, name, source, table)
        .await
        .map_err(|e| internal(&e))?;
    Ok(())
}

/// Sorts DataFusion's errors into the statement's fault, a limit, or ours.
fn classify(error: DataFusionError, limits: &ServingConfig) -> SqlError {
    let root = error.find_root();
    match root {
        DataFusionError::ResourcesExhausted(detail) => SqlError::Memory {
            limit: limits.sql_max_memory_bytes,
            detail: detail.clone(),
        },
        DataFusionError::IoError(_)
        | DataFusionError::ObjectStore(_)
        | DataFusionError::Internal(_)
        | DataFusionError::External(_) => SqlError::Internal(root.to_string()),
        _ => SqlError::Invalid(error.strip_backtrace()),
    }
}
