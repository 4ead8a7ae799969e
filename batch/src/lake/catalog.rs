//! The catalog: every table a deployment keeps, under the name SQL reads it by, with its columns
//! in SQL types, its partitioning, size and recent commits, and where its rows came from.
//!
//! Analysts look here before they write a query, so a table's columns are exactly the ones SQL
//! sees: a view's are the merged table's (`common::layout`), which is also its Delta table's
//! layout; raw and quarantine columns are their Delta tables' as DataFusion reads them. Lineage
//! is read from the same records the platform itself trusts: a view's from the lambdaflow
//! record of its latest commit (the raw version and offsets it covers, the run that wrote it),
//! the raw table's from its archiver `txn`s (the offsets it holds).

use arrow::datatypes::{DataType, Schema, TimeUnit};
use deltalake::DeltaTable;
use lambdaflow_common::config::Config;
use lambdaflow_common::layout::ViewLayout;
use lambdaflow_common::schema::{EVENT_DATE, INGEST_DATE, quarantine_schema, raw_schema};
use lambdaflow_common::view::fingerprint;
use serde::Serialize;
use serde_json::{Value, json};

use super::history::{self, Commit, millis_text};
use super::{Lake, LakeTable, open, tables};
use crate::error::{Error, Result};
use crate::views::watermark::{raw_watermark, view_commit};

/// Commits listed in one table's history.
pub const HISTORY: usize = 20;

/// One table of the catalog.
#[derive(Debug, Clone, Serialize)]
pub struct CatalogTable {
    /// The name SQL reads it by: the view's name, `raw_<source>`, `quarantine_<source>`.
    pub name: String,
    /// `raw`, `quarantine` or `view`.
    pub kind: &'static str,
    /// The source whose events it holds or aggregates.
    pub source: String,
    /// Its path under the lake root.
    pub path: String,
    /// Its Delta version; `None` before its first commit.
    pub version: Option<u64>,
    /// Its columns, in order.
    pub columns: Vec<Column>,
    /// Its partition columns.
    pub partition_by: Vec<String>,
    /// Data files of its latest version.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// When its latest version was committed (RFC 3339).
    pub last_commit: Option<String>,
    /// Its latest commits, newest first (only for one table asked by name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<Commit>>,
    /// Where its rows come from (only for one table asked by name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lineage: Option<Value>,
}

/// A column, typed as SQL names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// Its SQL type ([`sql_type`]).
    #[serde(rename = "type")]
    pub sql_type: String,
    /// Whether it may hold nulls.
    pub nullable: bool,
}

/// The SQL type of an Arrow type, in the spelling DataFusion's SQL accepts in a `CAST`.
pub fn sql_type(data_type: &DataType) -> String {
    match data_type {
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int8 => "TINYINT".into(),
        DataType::Int16 => "SMALLINT".into(),
        DataType::Int32 => "INT".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::UInt8 => "TINYINT UNSIGNED".into(),
        DataType::UInt16 => "SMALLINT UNSIGNED".into(),
        DataType::UInt32 => "INT UNSIGNED".into(),
        DataType::UInt64 => "BIGINT UNSIGNED".into(),
        DataType::Float16 | DataType::Float32 => "REAL".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "VARCHAR".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "BYTEA".into(),
        DataType::FixedSizeBinary(_) => "BYTEA".into(),
        DataType::Date32 | DataType::Date64 => "DATE".into(),
        DataType::Timestamp(_, Some(_)) => "TIMESTAMP WITH TIME ZONE".into(),
        DataType::Timestamp(_, None) => "TIMESTAMP".into(),
        DataType::Time32(_) | DataType::Time64(TimeUnit::Microsecond | TimeUnit::Nanosecond) => {
            "TIME".into()
        }
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => format!("DECIMAL({p},{s})"),
        DataType::List(item) | DataType::LargeList(item) => {
            format!("{}[]", sql_type(item.data_type()))
        }
        DataType::Dictionary(_, value) => sql_type(value),
        other => other.to_string(),
    }
}

fn columns(schema: &Schema) -> Vec<Column> {
    schema
        .fields()
        .iter()
        .map(|f| Column {
            name: f.name().clone(),
            sql_type: sql_type(f.data_type()),
            nullable: f.is_nullable(),
        })
        .collect()
}

/// Every table of `config`: each source's raw and quarantine tables, then the views.
pub async fn catalog(config: &Config, lake: &Lake) -> Result<Vec<CatalogTable>> {
    let mut out = Vec::new();
    for table in tables(config, lake) {
        out.push(describe(config, &table, false).await?);
    }
    Ok(out)
}

/// The table SQL names `name`, with its history and lineage; `None` when there is none.
pub async fn table(config: &Config, lake: &Lake, name: &str) -> Result<Option<CatalogTable>> {
    for table in tables(config, lake) {
        if sql_name(&table) == name {
            return describe(config, &table, true).await.map(Some);
        }
    }
    Ok(None)
}

fn sql_name(table: &LakeTable) -> String {
    match &table.view {
        Some(view) => view.clone(),
        None => table.name.replacen('/', "_", 1),
    }
}

async fn describe(config: &Config, table: &LakeTable, detail: bool) -> Result<CatalogTable> {
    let source = config
        .source_named(&table.source)
        .expect("the tables of a config are of its sources");
    let view = table
        .view
        .as_ref()
        .and_then(|name| config.views.iter().find(|v| &v.name == name));
    let kind = match (&table.view, table.date_column) {
        (Some(_), _) => "view",
        (None, EVENT_DATE) => "raw",
        (None, _) => "quarantine",
    };
    let delta = open(&table.url, None).await?;
    let schema = match (view, &delta) {
        (Some(view), _) => {
            ViewLayout::new(source, view)
                .map_err(|e| Error::Corrupt {
                    table: table.url.to_string(),
                    message: format!("the view's layout: {e}"),
                })?
                .schema
        }
        (None, Some(delta)) => provider_schema(delta).await?,
        (None, None) if kind == "raw" => raw_schema(source),
        (None, None) => quarantine_schema(),
    };
    let mut entry = CatalogTable {
        name: sql_name(table),
        kind,
        source: source.name.clone(),
        path: table.name.clone(),
        version: None,
        columns: columns(&schema),
        partition_by: vec![
            if kind == "quarantine" {
                INGEST_DATE
            } else {
                EVENT_DATE
            }
            .to_owned(),
        ],
        files: 0,
        bytes: 0,
        last_commit: None,
        history: None,
        lineage: None,
    };
    let Some(delta) = delta else {
        if detail {
            entry.history = Some(Vec::new());
            entry.lineage = Some(lineage(config, table, None).await?);
        }
        return Ok(entry);
    };
    let snapshot = delta.snapshot().map_err(|source| Error::Delta {
        table: table.url.to_string(),
        source,
    })?;
    entry.partition_by = snapshot.metadata().partition_columns().to_vec();
    for file in snapshot.log_data().iter() {
        entry.files += 1;
        entry.bytes += u64::try_from(file.size()).unwrap_or(0);
    }
    entry.version = delta.version();
    if let Some(version) = entry.version {
        entry.last_commit = history::commit(&delta, version)
            .await?
            .map(|c| millis_text(c.timestamp));
    }
    if detail {
        let commits = history::recent(&delta, HISTORY).await?;
        entry.history = Some(commits);
        entry.lineage = Some(lineage(config, table, Some(&delta)).await?);
    }
    Ok(entry)
}

/// The columns DataFusion reads from `delta` (partition columns included).
async fn provider_schema(delta: &DeltaTable) -> Result<arrow::datatypes::SchemaRef> {
    let provider = delta
        .table_provider()
        .await
        .map_err(|source| Error::Query {
            table: delta.table_url().to_string(),
            source,
        })?;
    Ok(provider.schema())
}

/// Where `table`'s rows come from, read from its latest version `delta`.
async fn lineage(config: &Config, table: &LakeTable, delta: Option<&DeltaTable>) -> Result<Value> {
    let source = config
        .source_named(&table.source)
        .expect("the tables of a config are of its sources");
    let views: Vec<&str> = config
        .views_of(&source.name)
        .map(|v| v.name.as_str())
        .collect();
    if let Some(name) = &table.view {
        let view = config
            .views
            .iter()
            .find(|v| &v.name == name)
            .expect("a view of the config");
        let commit = match delta {
            Some(delta) => view_commit(delta).await?,
            None => None,
        };
        let current = fingerprint(source, view);
        return Ok(json!({
            "reads": format!("raw_{}", source.name),
            "topic": source.topic,
            "definition": view,
            "raw_version": commit.as_ref().map(|c| c.watermark.raw_version),
            "offsets": commit.as_ref().map(|c| &c.watermark.offsets),
            "run_id": commit.as_ref().map(|c| &c.run_id),
            "computed_under_current_definition": commit.as_ref().map(|c| c.definition == current),
        }));
    }
    if table.date_column == EVENT_DATE {
        let watermark = match delta {
            Some(delta) => Some(raw_watermark(delta, &source.topic).await?),
            None => None,
        };
        return Ok(json!({
            "topic": source.topic,
            "offsets": watermark.as_ref().map(|w| &w.offsets),
            "epochs": watermark.as_ref().map(|w| &w.epochs),
            "feeds": views,
        }));
    }
    Ok(json!({ "topic": source.topic }))
}
