//! What the session of each Postgres statement starts from: the functions and type names of
//! `pg_catalog`, set up once, and a `pg_catalog` whose object ids hold for the life of the
//! server.
//!
//! Clients look a table up by name in one statement and read its columns by its `oid` in the
//! next (`psql`'s `\d`, DBeaver, Grafana). `datafusion-pg-catalog` hands out oids from a
//! counter as it first meets each table, so a `pg_catalog` built per session would number the
//! same table differently from one statement to the next. Each statement still runs in a
//! session of its own, with tables of its own, but its `pg_catalog` schema is one of two built
//! here once, over a catalogue of every table's name and columns (no data): one that lists the
//! views, for callers with the `query` scope, and one that also lists the raw and quarantine
//! tables. Setting `pg_catalog` up (its static tables, some sixty UDFs) costs far more than a
//! small query, so sessions are cloned from a template that has it.

use std::sync::Arc;

use datafusion::catalog::{
    CatalogProvider, CatalogProviderList, MemoryCatalogProvider, MemoryCatalogProviderList,
    MemorySchemaProvider, SchemaProvider,
};
use datafusion::common::DataFusionError;
use datafusion::datasource::empty::EmptyTable;
use datafusion::execution::SessionState;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::SessionContext;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::{
    PgCatalogSchemaProvider, PgCatalogStaticTables,
};
use datafusion_postgres::datafusion_pg_catalog::setup_pg_catalog;
use lambdaflow_common::config::Config;
use lambdaflow_common::layout::ViewLayout;
use lambdaflow_common::schema::{quarantine_schema, raw_schema};

use crate::sql::{self, Tables};

/// The catalogue in which a statement's tables are registered.
const CATALOG: &str = "datafusion";

/// The session template and the two `pg_catalog` schemas of a server.
#[derive(Clone)]
pub struct PgSessions {
    template: Arc<SessionState>,
    views: Arc<dyn SchemaProvider>,
    all: Arc<dyn SchemaProvider>,
}

impl std::fmt::Debug for PgSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSessions").finish_non_exhaustive()
    }
}

impl PgSessions {
    /// The sessions of `config`'s tables.
    pub fn new(config: &Config) -> Result<Self, DataFusionError> {
        let mut template = SessionContext::new_with_config(sql::session_config());
        setup_pg_catalog(&template, CATALOG, EmptyContextProvider).map_err(|e| *e)?;
        sql::functions(&mut template)?;
        let statics = Arc::new(PgCatalogStaticTables::try_new()?);
        let views = Arc::new(MemorySchemaProvider::new());
        let all = Arc::new(MemorySchemaProvider::new());
        for view in &config.views {
            let layout = ViewLayout::new(config.source_of(view), view)
                .map_err(|e| DataFusionError::Plan(format!("view `{}`: {e}", view.name)))?;
            let table = Arc::new(EmptyTable::new(layout.schema));
            views.register_table(view.name.clone(), table.clone())?;
            all.register_table(view.name.clone(), table)?;
        }
        for source in &config.sources {
            all.register_table(
                format!("raw_{}", source.name),
                Arc::new(EmptyTable::new(raw_schema(source))),
            )?;
            all.register_table(
                format!("quarantine_{}", source.name),
                Arc::new(EmptyTable::new(quarantine_schema())),
            )?;
        }
        Ok(Self {
            template: Arc::new(template.state()),
            views: pg_catalog(views, statics.clone())?,
            all: pg_catalog(all, statics)?,
        })
    }

    /// A session with no table yet, on `runtime`, whose `pg_catalog` describes what a caller
    /// reading `tables` may read.
    pub fn session(
        &self,
        runtime: Arc<RuntimeEnv>,
        tables: Tables,
    ) -> Result<SessionContext, DataFusionError> {
        let pg_catalog = match tables {
            Tables::Views => self.views.clone(),
            Tables::All => self.all.clone(),
        };
        let catalogs = catalog_list(Arc::new(MemorySchemaProvider::new()), Some(pg_catalog))?;
        let state = SessionStateBuilder::new_from_existing((*self.template).clone())
            .with_runtime_env(runtime)
            .with_catalog_list(catalogs)
            .build();
        Ok(SessionContext::new_with_state(state))
    }
}

/// A catalogue list holding `public` (and `pg_catalog`) as the schemas of catalog
/// [`CATALOG`].
fn catalog_list(
    public: Arc<MemorySchemaProvider>,
    pg_catalog: Option<Arc<dyn SchemaProvider>>,
) -> Result<Arc<dyn CatalogProviderList>, DataFusionError> {
    let catalog = Arc::new(MemoryCatalogProvider::new());
    catalog.register_schema("public", public)?;
    if let Some(pg_catalog) = pg_catalog {
        catalog.register_schema("pg_catalog", pg_catalog)?;
    }
    let catalogs: Arc<dyn CatalogProviderList> = Arc::new(MemoryCatalogProviderList::new());
    catalogs.register_catalog(CATALOG.into(), catalog);
    Ok(catalogs)
}

/// A `pg_catalog` describing `public`.
fn pg_catalog(
    public: Arc<MemorySchemaProvider>,
    statics: Arc<PgCatalogStaticTables>,
) -> Result<Arc<dyn SchemaProvider>, DataFusionError> {
    Ok(Arc::new(PgCatalogSchemaProvider::try_new(
        catalog_list(public, None)?,
        statics,
        EmptyContextProvider,
    )?))
}
