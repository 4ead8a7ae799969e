//! What each statement of a Postgres connection gets: refused outright on a connection that
//! did not log in; `SET`, `SHOW <setting>` and transaction statements answered by
//! `datafusion-postgres`'s hooks (a read-only session needs nothing more of them); everything
//! else by [`Sandbox`], which runs it the way `/v1/sql` does.
//!
//! `datafusion-postgres` serves one shared `SessionContext`; here it holds no table and only
//! the `SET` hook writes its settings there, which no statement reads: the sandbox answers
//! every other statement, in a session of its own. The simple protocol's statements are
//! parsed once here first, so that a syntax error is reported as one and a message holds at
//! most [`MAX_STATEMENTS`] of them (each answer is held until the last is done). The extended
//! protocol plans a statement at Parse over the views' columns alone and runs it at Execute
//! ([`Extended`]), so that nothing is merged twice nor held between the two, and the answer is
//! encoded in the formats (text or binary) the client bound.
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement;
use datafusion::sql::sqlparser::ast::Statement as Sql;
use datafusion_postgres::arrow_pg::datatypes::df::deserialize_parameters_with_server_types;
use datafusion_postgres::arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch};
use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::hooks::{HookClient, QueryHook};
use datafusion_postgres::pgwire::api::portal::{Format, Portal};
use datafusion_postgres::pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use datafusion_postgres::pgwire::api::results::{QueryResponse, Response};
use datafusion_postgres::pgwire::api::stmt::QueryParser;
use datafusion_postgres::pgwire::api::store::PortalStore;
use datafusion_postgres::pgwire::api::{ClientInfo, ClientPortalStore, PgWireServerHandlers};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::PgWireBackendMessage;
use datafusion_postgres::pgwire::types::format::FormatOptions;
use datafusion_postgres::{DfSessionService, Parser};
use lambdaflow_common::auth::Scope;

use super::sessions::PgSessions;
use super::startup::TokenStartup;
use crate::http::AppState;
use crate::http::guard::Caller;
use crate::sql::{self, Answer, Catalog, SqlError, Tables, Views};

/// Statements one simple-protocol message may hold.
pub const MAX_STATEMENTS: usize = 16;

/// The handlers of every connection.
pub struct Handlers {
    simple: Arc<Simple>,
    extended: Arc<Extended>,
    startup: Arc<TokenStartup>,
}

impl Handlers {
    /// Handlers answering from `state`, refusing connections without TLS when `tls`.
    pub fn new(state: AppState, tls: bool) -> std::io::Result<Self> {
        let sessions = PgSessions::new(&state.config)
            .map_err(|e| std::io::Error::other(format!("pg_catalog: {e}")))?;
        let sandbox = Arc::new(Sandbox {
            state: state.clone(),
            sessions,
        });
        let hooks: Vec<Arc<dyn QueryHook>> = vec![
            Arc::new(LoggedIn),
            Arc::new(SetShowHook),
            Arc::new(TransactionStatementHook),
            sandbox.clone(),
        ];
        let service = Arc::new(DfSessionService::new_with_hooks(
            Arc::new(SessionContext::new()),
            hooks,
        ));
        Ok(Self {
            simple: Arc::new(Simple {
                service: service.clone(),
                parser: PostgresCompatibilityParser::new(),
            }),
            extended: Arc::new(Extended { service, sandbox }),
            startup: Arc::new(TokenStartup::new(state.guard.clone(), tls)),
        })
    }
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.simple.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.extended.clone()
    }

    fn startup_handler(&self) -> Arc<impl datafusion_postgres::pgwire::api::auth::StartupHandler> {
        self.startup.clone()
    }
}

/// Refuses every statement of a connection whose login was refused: pgwire goes on reading
/// its messages after the error.
struct LoggedIn;

impl LoggedIn {
    fn refusal<T>(client: &(dyn ClientInfo + Send + Sync)) -> Option<PgWireResult<T>> {
        client
            .session_extensions()
            .get::<Caller>()
            .is_none()
            .then(|| Err(error("28000", "not logged in".into())))
    }
}

#[async_trait]
impl QueryHook for LoggedIn {
    async fn handle_simple_query(
        &self,
        _statement: &Sql,
        _context: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        Self::refusal(&*client)
    }

    async fn handle_extended_parse_query(
        &self,
        _statement: &Sql,
        _context: &SessionContext,
        client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        Self::refusal(client)
    }

    async fn handle_extended_query(
        &self,
        _statement: &Sql,
        _plan: &LogicalPlan,
        _params: &ParamValues,
        _context: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        Self::refusal(&*client)
    }
}

/// Runs statements as `/v1/sql` does, for the caller the connection authenticated.
struct Sandbox {
    state: AppState,
    sessions: PgSessions,
}

impl Sandbox {
    /// `statement` planned and checked for the connection's caller, over `views`.
    async fn prepare(
        &self,
        statement: &Sql,
        views: Views,
        client: &(dyn ClientInfo + Send + Sync),
    ) -> Result<sql::Prepared, SqlError> {
        let tables = match client.session_extensions().get::<Caller>() {
            Some(caller) if caller.may(Scope::Admin) => Tables::All,
            Some(caller) if caller.may(Scope::Query) => Tables::Views,
            _ => return Err(SqlError::NoQueryScope),
        };
        let state = &self.state;
        sql::prepare(
            &state.config,
            &state.lake,
            &state.speeds,
            Statement::Statement(Box::new(statement.clone())),
            tables,
            Catalog::Postgres(self.sessions.clone()),
            views,
        )
        .await
    }

    /// The answer to `statement` with `params` bound, in `format`, within the SQL limits.
    async fn answer(
        &self,
        statement: &Sql,
        params: Option<ParamValues>,
        format: &Format,
        client: &(dyn ClientInfo + Send + Sync),
    ) -> PgWireResult<Response> {
        let limits = &self.state.config.serving;
        let Ok(_slot) = self.state.sql_slots.clone().try_acquire_owned() else {
            return Err(error(
                "53000",
                format!(
                    "{} SQL queries are running, the most allowed at once (serving.sql_max_concurrent); retry shortly",
                    limits.sql_max_concurrent
                ),
            ));
        };
        let answer = sql::within_timeout(limits, async {
            self.prepare(statement, Views::Merged, client)
                .await?
                .run(limits, params)
                .await
        })
        .await
        .map_err(refusal)?;
        let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
        encode(answer, format, options).map(Response::Query)
    }
}

#[async_trait]
impl QueryHook for Sandbox {
    async fn handle_simple_query(
        &self,
        statement: &Sql,
        _context: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        Some(
            self.answer(statement, None, &Format::UnifiedText, &*client)
                .await,
        )
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Sql,
        _context: &SessionContext,
        client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        let limits = &self.state.config.serving;
        let prepared =
            sql::within_timeout(limits, self.prepare(statement, Views::Columns, client)).await;
        Some(prepared.map(|p| p.plan().clone()).map_err(refusal))
    }

    /// Not reached: [`Extended`] runs every statement the sandbox planned at Parse, and the
    /// sandbox plans only queries. Refused rather than left to the shared context.
    async fn handle_extended_query(
        &self,
        statement: &Sql,
        _plan: &LogicalPlan,
        _params: &ParamValues,
        _context: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        Some(Err(refusal(SqlError::NotAQuery(statement.to_string()))))
    }
}

/// The simple protocol: `datafusion-postgres`'s, once the message parsed and counted.
struct Simple {
    service: Arc<DfSessionService>,
    parser: PostgresCompatibilityParser,
}

#[async_trait]
impl SimpleQueryHandler for Simple {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo
            + ClientPortalStore
            + futures::Sink<PgWireBackendMessage>
            + Unpin
            + Send
            + Sync,
        C::PortalStore: PortalStore,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as futures::Sink<PgWireBackendMessage>>::Error>,
    {
        let statements = self
            .parser
            .parse(query)
            .map_err(|e| error("42601", e.to_string()))?;
        if statements.len() > MAX_STATEMENTS {
            return Err(error(
                "54000",
                format!(
                    "{} statements in one message; at most {MAX_STATEMENTS} are run together",
                    statements.len()
                ),
            ));
        }
        SimpleQueryHandler::do_query(&*self.service, client, query).await
    }
}

/// The extended protocol: parsing and describing as `datafusion-postgres` does (the plan
/// comes from [`Sandbox`]), executing a query in the sandbox with the formats the client
/// bound.
struct Extended {
    service: Arc<DfSessionService>,
    sandbox: Arc<Sandbox>,
}

#[async_trait]
impl ExtendedQueryHandler for Extended {
    type Statement = <DfSessionService as ExtendedQueryHandler>::Statement;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Parser> {
        self.service.query_parser()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo
            + ClientPortalStore
            + futures::Sink<PgWireBackendMessage>
            + Unpin
            + Send
            + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as futures::Sink<PgWireBackendMessage>>::Error>,
    {
        match &portal.statement.statement {
            (_, Some((statement, plan))) if is_query(statement) => {
                let params = bound_parameters(portal, plan, &self.service.query_parser())?;
                self.sandbox
                    .answer(
                        statement,
                        Some(params),
                        &portal.result_column_format,
                        &*client,
                    )
                    .await
            }
            _ => ExtendedQueryHandler::do_query(&*self.service, client, portal, max_rows).await,
        }
    }
}

/// Whether the sandbox answers `statement` with rows (the rest is `SET`, `SHOW <setting>`,
/// transactions, or refused).
fn is_query(statement: &Sql) -> bool {
    matches!(
        statement,
        Sql::Query(_)
            | Sql::Explain { .. }
            | Sql::ShowTables { .. }
            | Sql::ShowColumns { .. }
            | Sql::ExplainTable { .. }
    )
}

/// The portal's parameters, decoded as the client says they are typed, else as the types
/// Parse described to it (listed in the order of the placeholders' numbers), else as the plan
/// infers them.
fn bound_parameters(
    portal: &Portal<<DfSessionService as ExtendedQueryHandler>::Statement>,
    plan: &LogicalPlan,
    parser: &Parser,
) -> PgWireResult<ParamValues> {
    let bound = portal.parameter_len();
    let mut placeholders = Vec::new();
    for (id, ty) in plan
        .get_parameter_types()
        .map_err(|e| error("42P18", e.strip_backtrace()))?
    {
        let position = id
            .strip_prefix('$')
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| (1..=bound).contains(n))
            .ok_or_else(|| {
                error(
                    "08P01",
                    format!("parameter {id} is not one of the {bound} the client bound"),
                )
            })?;
        placeholders.push((position, ty));
    }
    placeholders.sort_by_key(|(position, _)| *position);
    let described = parser.get_parameter_types(&portal.statement.statement)?;
    let mut inferred = vec![None; bound];
    let mut server = vec![None; bound];
    for ((position, ty), wire) in placeholders.iter().zip(described.iter()) {
        inferred[position - 1] = ty.as_ref();
        server[position - 1] = Some(wire);
    }
    deserialize_parameters_with_server_types(portal, &inferred, &server)
}

/// `answer` as Postgres rows, each column in `format`.
fn encode(
    answer: Answer,
    format: &Format,
    options: Arc<FormatOptions>,
) -> PgWireResult<QueryResponse> {
    let fields = Arc::new(arrow_schema_to_pg_fields(
        &answer.schema,
        format,
        Some(options),
    )?);
    let rows = {
        let fields = fields.clone();
        answer
            .batches
            .into_iter()
            .flat_map(move |batch| encode_recordbatch(fields.clone(), batch))
    };
    Ok(QueryResponse::new(fields, futures::stream::iter(rows)))
}

/// The Postgres error for a statement that got no answer, with the SQLSTATE a client can act
/// on.
fn refusal(error_: SqlError) -> PgWireError {
    let code = match &error_ {
        SqlError::NotAQuery(_) => "25006",
        SqlError::Invalid(_) => "42000",
        SqlError::TooManyRows(_) => "54000",
        SqlError::Memory { .. } => "53200",
        SqlError::Timeout(_) => "57014",
        SqlError::Starting => "57P03",
        SqlError::InexactRollup(_) => "42803",
        SqlError::Forbidden(_) | SqlError::NoQueryScope => "42501",
        SqlError::Rebuilding(_) => "55000",
        SqlError::Internal(_) => "XX000",
    };
    error(code, error_.to_string())
}

fn error(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_owned(),
        code.to_owned(),
        message,
    )))
}
