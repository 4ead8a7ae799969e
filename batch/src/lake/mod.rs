//! The lake: its layout (`raw/`, `quarantine/`, `views/`), opening and creating its tables, and the one rule for
//! "this table does not exist yet" ([`is_missing`]).
//!
//! ```text
//! <lake>/raw/<source>/          master dataset, partitioned by event_date
//! <lake>/quarantine/<source>/   refused events, partitioned by ingest_date
//! <lake>/views/<view>/          batch views
//! <lake>/_lambdaflow/           run history and other platform state
//! ```
//!
//! It exists so that the lake has one home: the writers ([`crate::archive`],
//! [`crate::views`]) open their tables here, and every reader outside this crate goes through
//! [`reader::LakeReader`], so that no other crate opens a Delta table or decides on its own
//! what a missing table is. The lifecycle of every table lambdaflow writes ([`tables`]) lives
//! here too: [`retention`] deletes the date partitions a table no longer keeps, [`vacuum`]
//! deletes the files and log entries no reader needs any more, and [`status`] reports what
//! each table holds and costs.

pub mod catalog;
pub mod history;
pub mod reader;
pub mod retention;
pub mod status;
pub mod vacuum;

use std::collections::BTreeSet;

use arrow::array::{Array, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::prelude::SessionContext;
use deltalake::kernel::StructType;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError, TableProperty};
use futures::{StreamExt, TryStreamExt};
use lambdaflow_common::config::{Config, LakeConfig};
use lambdaflow_common::retention::Retention;
use lambdaflow_common::schema::{EVENT_DATE, INGEST_DATE};
use lambdaflow_common::timestamp::format_date;
use url::Url;

use crate::error::{Error, Result};
use crate::views::watermark::parse_date;

/// The directory of the platform's own files under the lake root.
const PLATFORM: &str = "_lambdaflow";

/// The lake root, always ending in `/` so that table paths join under it.
#[derive(Debug, Clone)]
pub struct Lake {
    root: Url,
}

impl Lake {
    /// Resolves `lake.uri`: a URL (`file://`, `s3://`, `memory://`) or a local path, relative to
    /// the working directory. Local roots are created if missing.
    pub fn new(config: &LakeConfig) -> Result<Self> {
        let uri = config.uri.as_str();
        let invalid = |reason: &'static str| Error::LakeUri {
            uri: uri.to_owned(),
            reason,
        };
        let mut root = match Url::parse(uri) {
            Ok(url) if url.scheme().len() > 1 => url,
            _ => {
                let path = std::path::absolute(uri).map_err(|source| Error::LakeDir {
                    uri: uri.to_owned(),
                    path: uri.into(),
                    source,
                })?;
                Url::from_directory_path(&path).map_err(|()| invalid("not an absolute path"))?
            }
        };
        if !root.path().ends_with('/') {
            root.set_path(&format!("{}/", root.path()));
        }
        if root.scheme() == "file" {
            let path = root
                .to_file_path()
                .map_err(|()| invalid("not a local path"))?;
            std::fs::create_dir_all(path.join(PLATFORM)).map_err(|source| Error::LakeDir {
                uri: uri.to_owned(),
                path: path.clone(),
                source,
            })?;
        }
        Ok(Self { root })
    }

    /// The root URL.
    pub fn root(&self) -> &Url {
        &self.root
    }

    /// `<lake>/raw/<source>/`
    pub fn raw(&self, source: &str) -> Url {
        self.join(&format!("raw/{source}/"))
    }

    /// `<lake>/quarantine/<source>/`
    pub fn quarantine(&self, source: &str) -> Url {
        self.join(&format!("quarantine/{source}/"))
    }

    /// `<lake>/views/<view>/`
    pub fn view(&self, view: &str) -> Url {
        self.join(&format!("views/{view}/"))
    }

    /// `<lake>/_lambdaflow/`: batch run history and the run lock.
    pub fn platform(&self) -> Url {
        self.join(&format!("{PLATFORM}/"))
    }

    fn join(&self, relative: &str) -> Url {
        self.root
            .join(relative)
            .expect("config names are plain identifiers")
    }
}

/// One table lambdaflow writes, as its lifecycle sees it.
#[derive(Debug, Clone)]
pub struct LakeTable {
    /// Its path relative to the lake root (`raw/events`, `views/revenue`): its name in
    /// reports, metrics and the vacuum records.
    pub name: String,
    /// Where it is.
    pub url: Url,
    /// The date partition column it ages out by.
    pub date_column: &'static str,
    /// How long it keeps each date.
    pub retention: Retention,
    /// The source whose events it holds, or aggregates.
    pub source: String,
    /// The view it holds; `None` for the raw and quarantine tables.
    pub view: Option<String>,
}

/// Every table of `config` in `lake`: each source's raw and quarantine tables, then the views
/// in config order.
pub fn tables(config: &Config, lake: &Lake) -> Vec<LakeTable> {
    let mut tables = Vec::new();
    for source in &config.sources {
        let name = &source.name;
        tables.push(LakeTable {
            name: format!("raw/{name}"),
            url: lake.raw(name),
            date_column: EVENT_DATE,
            retention: config.retention.raw,
            source: name.clone(),
            view: None,
        });
        tables.push(LakeTable {
            name: format!("quarantine/{name}"),
            url: lake.quarantine(name),
            date_column: INGEST_DATE,
            retention: config.retention.quarantine,
            source: name.clone(),
            view: None,
        });
    }
    tables.extend(config.views.iter().map(|view| LakeTable {
        name: format!("views/{}", view.name),
        url: lake.view(&view.name),
        date_column: EVENT_DATE,
        retention: view.retention,
        source: config.source_of(view).name.clone(),
        view: Some(view.name.clone()),
    }));
    tables
}

/// Whether `error`, from opening or loading a table, means that there is no table there yet.
/// The one rule for every reader of the lake: a table that is not there is empty, while any
/// other failure (permissions, the network, a corrupt log, a version that is gone) is an
/// error, never an empty table.
///
/// "Not there" is either of:
/// - no commit under `_delta_log/` (delta-rs' `NotATable`): an empty directory or prefix, the
///   only form an object store (S3) has;
/// - a local table directory that does not exist: the Delta kernel's `InvalidTableLocation`
///   "Path does not exist". The kernel says the same of a directory it may not look into, so
///   [`open`] asks the file system first and reports that case as [`Error::LocalTable`].
pub fn is_missing(error: &DeltaTableError) -> bool {
    match error {
        DeltaTableError::NotATable(_) => true,
        // The kernel's error type is not re-exported by deltalake: known by its message.
        DeltaTableError::KernelError(kernel) => kernel.to_string().starts_with(KERNEL_NO_PATH),
        _ => false,
    }
}

/// How the Delta kernel's error for a local table directory that does not exist begins.
const KERNEL_NO_PATH: &str = "Invalid table location: Path does not exist";

/// Opens the Delta table at `url` at its latest version (or at `version`); `None` when there
/// is no table there ([`is_missing`]).
pub async fn open(url: &Url, version: Option<u64>) -> Result<Option<DeltaTable>> {
    let delta = |source| Error::Delta {
        table: url.to_string(),
        source,
    };
    if url.scheme() == "file"
        && let Ok(path) = url.to_file_path()
        && let Err(source) = std::fs::metadata(&path)
        && source.kind() != std::io::ErrorKind::NotFound
    {
        return Err(Error::LocalTable { path, source });
    }
    let mut builder = DeltaTableBuilder::from_url(url.clone()).map_err(delta)?;
    if let Some(version) = version {
        builder = builder.with_version(version);
    }
    match builder.load().await {
        Ok(table) => Ok(Some(table)),
        Err(error) if is_missing(&error) => Ok(None),
        Err(error) => Err(delta(error)),
    }
}

/// Opens the Delta table at `url`, creating it with `schema` and `partition_by` if there is none
/// (with delta-rs' own log cleanup off: [`LOG_CLEANUP_PROPERTY`]); when another process
/// creates it at the same moment, the table it created.
pub async fn open_or_create(
    url: &Url,
    schema: &SchemaRef,
    partition_by: &[&str],
) -> Result<DeltaTable> {
    let delta = |source| Error::Delta {
        table: url.to_string(),
        source,
    };
    if url.scheme() == "file" {
        let path = url.to_file_path().map_err(|()| Error::LakeUri {
            uri: url.to_string(),
            reason: "not a local path",
        })?;
        std::fs::create_dir_all(&path).map_err(|source| Error::LakeDir {
            uri: url.to_string(),
            path: path.clone(),
            source,
        })?;
    }
    let table = DeltaTable::try_from_url(url.clone()).await.map_err(delta)?;
    if table.version().is_some() {
        return Ok(table);
    }
    let columns: StructType = schema
        .as_ref()
        .try_into_kernel()
        .map_err(|e| delta(e.into()))?;
    let created = table
        .create()
        .with_columns(columns.fields().cloned())
        .with_partition_columns(partition_by.iter().copied())
        .with_configuration_property(LOG_CLEANUP_PROPERTY, Some("false"))
        .await;
    match created {
        Ok(table) => Ok(table),
        // Another process (an archiver, an import) created it since we looked: its version 0
        // is the table, with the same columns from the same config.
        Err(error) => match DeltaTable::try_from_url(url.clone()).await {
            Ok(table) if table.version().is_some() => Ok(table),
            _ => Err(delta(error)),
        },
    }
}

/// The table property that lets delta-rs delete log entries after every commit: lambdaflow
/// turns it off, because that cleanup knows nothing of the versions its readers pin, and
/// cleans the log itself in [`vacuum`].
pub(crate) const LOG_CLEANUP_PROPERTY: TableProperty = TableProperty::EnableExpiredLogCleanup;

/// The dates (days since the epoch) of the `column` partitions of `table`'s live files at
/// its loaded version, read from the log without opening a data file.
pub fn partition_dates(table: &DeltaTable, column: &str) -> Result<BTreeSet<i32>> {
    let snapshot = table.snapshot().map_err(|source| Error::Delta {
        table: table.table_url().to_string(),
        source,
    })?;
    let mut dates = BTreeSet::new();
    for file in snapshot.log_data().iter() {
        let value = file.partition_values_map().get(column).cloned().flatten();
        if let Some(text) = value {
            dates.insert(parse_date(&text).ok_or_else(|| Error::Corrupt {
                table: table.table_url().to_string(),
                message: format!("bad {column} partition `{text}`"),
            })?);
        }
    }
    Ok(dates)
}

/// Runs `sql` over `table` (at its loaded version) registered as `name` in a session of its
/// own, and collects the answer.
pub(crate) async fn query_table(
    table: &DeltaTable,
    name: &str,
    sql: &str,
) -> Result<Vec<arrow::array::RecordBatch>> {
    let query = query_error(table);
    stream_table(table, name, sql)
        .await?
        .try_collect()
        .await
        .map_err(query)
}

fn query_error(table: &DeltaTable) -> impl Fn(datafusion::error::DataFusionError) -> Error {
    let url = table.table_url().to_string();
    move |source| Error::Query {
        table: url.clone(),
        source,
    }
}

/// Runs `sql` over `table` (at its loaded version) registered as `name` in a session of its
/// own, and streams the answer.
async fn stream_table(
    table: &DeltaTable,
    name: &str,
    sql: &str,
) -> Result<datafusion::physical_plan::SendableRecordBatchStream> {
    let query = query_error(table);
    let ctx = SessionContext::new();
    table
        .update_datafusion_session(&ctx.state())
        .map_err(|source| Error::Delta {
            table: table.table_url().to_string(),
            source,
        })?;
    ctx.register_table(name, table.table_provider().await.map_err(&query)?)
        .map_err(&query)?;
    ctx.sql(sql)
        .await
        .map_err(&query)?
        .execute_stream()
        .await
        .map_err(query)
}

/// Hands the ids the raw table (at its loaded version) holds for one event date to `each`, a
/// record batch at a time, read through DataFusion with partition pruning so that only that
/// date's files are opened. A day of ids is never held at once. Returns how many there were.
pub async fn stored_ids<E: From<Error>>(
    table: &DeltaTable,
    id_field: &str,
    date: i32,
    mut each: impl FnMut(&arrow::array::StringArray) -> Result<(), E>,
) -> Result<usize, E> {
    let query = query_error(table);
    let sql = format!(
        "SELECT \"{id_field}\" FROM raw WHERE {EVENT_DATE} = DATE '{}'",
        format_date(date)
    );
    let mut batches = stream_table(table, "raw", &sql).await?;
    let mut count = 0;
    while let Some(batch) = batches.next().await {
        let batch = batch.map_err(&query)?;
        let column = cast(batch.column(0), &DataType::Utf8).map_err(|e| query(e.into()))?;
        let ids = column.as_string::<i32>();
        count += ids.len() - ids.null_count();
        each(ids)?;
    }
    tracing::debug!(date = %format_date(date), ids = count, "loaded stored ids for deduplication");
    Ok(count)
}

/// `events` (raw rows) without those whose (date, id) `raw` or an earlier row already holds:
/// the deduplication of every writer of a raw table. Each date an event needs is loaded into
/// `seen` from `raw` first; dates before `oldest` make room first
/// ([`lambdaflow_dedup::SeenIds::dates_to_load`]).
pub async fn deduplicate(
    events: arrow::record_batch::RecordBatch,
    seen: &mut lambdaflow_dedup::SeenIds,
    raw: &DeltaTable,
    id_field: &str,
    oldest: Option<i32>,
) -> Result<arrow::record_batch::RecordBatch> {
    if events.num_rows() == 0 {
        return Ok(events);
    }
    let dates = events
        .column_by_name(EVENT_DATE)
        .expect("event_date column")
        .as_primitive::<arrow::datatypes::Date32Type>();
    let needed: BTreeSet<i32> = dates.values().iter().copied().collect();
    for date in seen.dates_to_load(&needed, oldest) {
        let mut loading = seen.loading(date);
        stored_ids(raw, id_field, date, |ids| {
            Ok::<(), Error>(loading.add(ids.iter().flatten())?)
        })
        .await?;
        seen.loaded(loading);
    }
    let ids = events.column(0).as_string::<i32>();
    let keep = seen.keep(ids, dates)?;
    if keep.true_count() == events.num_rows() {
        return Ok(events);
    }
    Ok(arrow::compute::filter_record_batch(&events, &keep).expect("mask matches the batch"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_paths_become_directory_urls() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::new(&LakeConfig::at(
            dir.path().join("lake").display().to_string(),
        ))
        .unwrap();
        assert!(lake.root().as_str().ends_with("/lake/"));
        assert!(lake.raw("events").as_str().ends_with("/lake/raw/events/"));
        assert!(dir.path().join("lake").is_dir());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn creators_at_the_same_moment_open_one_table() {
        use lambdaflow_common::schema::quarantine_schema;
        for _ in 0..8 {
            let dir = tempfile::tempdir().unwrap();
            let lake = Lake::new(&LakeConfig::at(dir.path().display().to_string())).unwrap();
            let url = lake.quarantine("events");
            let schema = quarantine_schema();
            let create = || open_or_create(&url, &schema, &[INGEST_DATE]);
            let (a, b) = tokio::join!(create(), create());
            for table in [a.unwrap(), b.unwrap()] {
                let columns = table.snapshot().unwrap().schema().fields().count();
                assert_eq!(columns, schema.fields().len());
            }
        }
    }

    #[test]
    fn only_no_table_there_counts_as_missing() {
        assert!(is_missing(&DeltaTableError::NotATable("no log".into())));
        for other in [
            DeltaTableError::InvalidVersion(3),
            DeltaTableError::InvalidTableLocation("s3://nowhere".into()),
            DeltaTableError::ObjectStore {
                source: object_store::Error::PermissionDenied {
                    path: "raw/events/_delta_log".into(),
                    source: "denied".into(),
                },
            },
        ] {
            assert!(!is_missing(&other), "{other}");
        }
    }

    #[test]
    fn urls_are_kept() {
        let lake = Lake::new(&LakeConfig::at("s3://bucket/prefix")).unwrap();
        assert_eq!(lake.view("v").as_str(), "s3://bucket/prefix/views/v/");
    }
}
