//! The one reader of the lake for the rest of the platform.
//!
//! The serving process reads four things from the lake: each view's batch side (at start, then
//! every new version the watcher sees), the raw ids of a date at a pinned raw version (the
//! speed layer's deduplication), the latest refused events (`GET /v1/quarantine`), and the raw
//! and quarantine tables for SQL. [`LakeReader`] offers exactly those, so that no other crate
//! opens a Delta table, and every read decides "not there yet" by the one rule,
//! [`super::is_missing`]: a missing table reads as empty, any other failure is an error.
//!
//! [`ViewWatch`] keeps each view table open between checks, so a check replays only the log
//! entries committed since the last one, and loads a view's rows only when its version moved.

use arrow::array::{Array, AsArray, RecordBatch, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int32Type, Int64Type, TimestampMicrosecondType};
use datafusion::prelude::SessionContext;
use deltalake::{DeltaTable, DeltaTableBuilder};
use lambdaflow_common::batch_view::BatchView;
use lambdaflow_common::config::{Config, LakeConfig};
use lambdaflow_common::query::AsOf;
use lambdaflow_common::schema::INGEST_TIME;
use lambdaflow_common::source::SourceConfig;
use lambdaflow_common::state::ViewState;
use lambdaflow_common::timestamp::format_micros;
use lambdaflow_common::view::ViewDef;
use url::Url;

use super::catalog::{self, CatalogTable};
use super::history::{AtTime, Log, held, oldest_held, stored_files, version_at};
use super::status::{TableStatus, status};
use super::{Lake, open, query_table, stored_ids};
use crate::error::{Error, Result};
use crate::views::watermark::{ViewCommit, raw_watermark, view_commit};

/// Reads the lake's tables for the serving side: views, raw ids, refused events, SQL tables.
#[derive(Debug, Clone)]
pub struct LakeReader {
    lake: Lake,
}

/// A table of the source that SQL can read as it is in the lake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceTable {
    /// `<lake>/raw/<source>/`, the master dataset.
    Raw,
    /// `<lake>/quarantine/<source>/`, the refused events.
    Quarantine,
}

/// One refused event of the quarantine table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantinedEvent {
    /// The message payload as received; `None` for a message without one.
    pub raw: Option<Vec<u8>>,
    /// Why it was refused.
    pub reason: String,
    /// The Kafka topic it was read from.
    pub topic: String,
    /// Its Kafka partition.
    pub partition: i32,
    /// Its Kafka offset.
    pub offset: i64,
    /// When the archiver read it, in microseconds since the epoch (UTC).
    pub ingest_time: i64,
}

impl LakeReader {
    /// A reader of the lake `config` names (the same resolution as the writers').
    pub fn new(config: &LakeConfig) -> Result<Self> {
        Ok(Self::from_lake(Lake::new(config)?))
    }

    /// A reader of `lake`.
    pub fn from_lake(lake: Lake) -> Self {
        Self { lake }
    }

    /// The lake read.
    pub fn lake(&self) -> &Lake {
        &self.lake
    }

    /// What each table of `config` holds and costs on storage ([`super::status`]).
    pub async fn status(&self, config: &Config) -> Result<Vec<TableStatus>> {
        status(config, &self.lake).await
    }

    /// Every table of `config` as the catalog lists it ([`super::catalog`]).
    pub async fn catalog(&self, config: &Config) -> Result<Vec<CatalogTable>> {
        catalog::catalog(config, &self.lake).await
    }

    /// The table SQL names `name`, with its history and lineage; `None` when `config` has none.
    pub async fn catalog_table(&self, config: &Config, name: &str) -> Result<Option<CatalogTable>> {
        catalog::table(config, &self.lake, name).await
    }

    /// `view`'s batch side at its latest version; empty before the view's first batch run.
    pub async fn view(&self, source: &SourceConfig, view: &ViewDef) -> Result<BatchView> {
        match open(&self.lake.view(&view.name), None).await? {
            Some(table) => read_view(source, view, &table).await,
            None => Ok(BatchView::default()),
        }
    }

    /// `view`'s batch side at table version `version`; empty when the table does not exist.
    pub async fn view_at(
        &self,
        source: &SourceConfig,
        view: &ViewDef,
        version: u64,
    ) -> Result<BatchView> {
        match open(&self.lake.view(&view.name), Some(version)).await? {
            Some(table) => read_view(source, view, &table).await,
            None => Ok(BatchView::default()),
        }
    }

    /// `view`'s batch side as it was at `as_of`: the version asked, or the last one committed at
    /// or before the time asked. Refused when that version was never made, holds no published
    /// batch version, is no longer held (vacuumed, its log cleaned up) or was computed under a
    /// definition other than `definition` (the fingerprint of the view as configured now).
    pub async fn view_as_of(
        &self,
        source: &SourceConfig,
        view: &ViewDef,
        definition: &str,
        as_of: AsOf,
    ) -> Result<BatchView, TravelError> {
        let url = self.lake.view(&view.name);
        let name = || view.name.clone();
        let Some(latest) = open(&url, None).await? else {
            return Err(TravelError::NoVersions { view: name() });
        };
        let newest = latest.version().unwrap_or(0);
        let log = Log::of(&latest).await?;
        let version = match as_of {
            AsOf::Version(v) if v > newest => {
                return Err(TravelError::NoSuchVersion {
                    view: name(),
                    version: v,
                    latest: newest,
                });
            }
            AsOf::Version(v) => Some(v),
            AsOf::Time(micros) => match version_at(&latest, &log, micros.div_euclid(1000)).await? {
                Some(AtTime::BeforeFirst) => {
                    return Err(TravelError::BeforeFirst {
                        view: name(),
                        at: format_micros(micros),
                    });
                }
                None | Some(AtTime::BeforeOldest) => None,
                Some(AtTime::Version(v)) => Some(v),
            },
        };
        // The latest version's files are live; an older one is held while its log replays
        // and vacuum left its files.
        if version == Some(newest) {
            return published(source, view, definition, &latest, newest).await;
        }
        let stored = stored_files(&latest).await?;
        let readable = match version {
            Some(v) if log.oldest().is_none_or(|o| v >= o) => held(&url, v, &stored).await?,
            _ => None,
        };
        match (readable, version) {
            (Some(table), Some(v)) => published(source, view, definition, &table, v).await,
            _ => Err(TravelError::Vacuumed {
                view: name(),
                version,
                oldest: oldest_held(&url, &log, newest, &stored).await?,
            }),
        }
    }

    /// Opens every view table of `views` and loads its batch side at its latest version (in
    /// `views` order); the [`ViewWatch`] then reports each later version.
    pub async fn watch_views(
        &self,
        source: &SourceConfig,
        views: &[ViewDef],
    ) -> Result<(ViewWatch, Vec<BatchView>)> {
        let mut watched = Vec::with_capacity(views.len());
        let mut loaded = Vec::with_capacity(views.len());
        for view in views {
            let url = self.lake.view(&view.name);
            let table = open(&url, None).await?;
            loaded.push(match &table {
                Some(table) => read_view(source, view, table).await?,
                None => BatchView::default(),
            });
            watched.push(Watched {
                view: view.clone(),
                url,
                version: table.as_ref().and_then(DeltaTable::version),
                table,
            });
        }
        let watch = ViewWatch {
            source: source.clone(),
            views: watched,
        };
        Ok((watch, loaded))
    }

    /// The epoch each Kafka partition's offsets currently count in, from the raw table's
    /// latest version (only partitions past epoch 0 are listed; none without a raw table).
    /// Right after an accepted topic reset only the raw table knows it: a batch view loaded
    /// before it carries a watermark of the older epoch, and
    /// [`BatchView::with_epochs`] makes that watermark cover nothing of the new one.
    pub async fn raw_epochs(
        &self,
        source: &SourceConfig,
        topic: &str,
    ) -> Result<std::collections::BTreeMap<i32, u32>> {
        let Some(raw) = open(&self.lake.raw(&source.name), None).await? else {
            return Ok(Default::default());
        };
        Ok(raw_watermark(&raw, topic).await?.epochs)
    }

    /// Hands the ids the raw table holds for event date `date` (days since the epoch) at raw
    /// table version `version` to `each`, a record batch at a time; none when there is no raw
    /// table yet.
    pub async fn raw_ids<E: From<Error>>(
        &self,
        source: &SourceConfig,
        version: u64,
        date: i32,
        each: impl FnMut(&StringArray) -> Result<(), E>,
    ) -> Result<(), E> {
        let Some(table) = open(&self.lake.raw(&source.name), Some(version)).await? else {
            return Ok(());
        };
        stored_ids(&table, &source.id_field, date, each).await?;
        Ok(())
    }

    /// The latest `limit` refused events of `source`: newest ingestion first, and within one
    /// ingestion time, latest offset first. None when there is no quarantine table yet.
    pub async fn latest_quarantined(
        &self,
        source: &SourceConfig,
        limit: usize,
    ) -> Result<Vec<QuarantinedEvent>> {
        let url = self.lake.quarantine(&source.name);
        let Some(table) = open(&url, None).await? else {
            return Ok(Vec::new());
        };
        let sql = format!(
            "SELECT raw, reason, topic, \"partition\", \"offset\", {INGEST_TIME} FROM quarantine \
             ORDER BY {INGEST_TIME} DESC, \"offset\" DESC LIMIT {limit}"
        );
        let batches = query_table(&table, "quarantine", &sql).await?;
        let query = |source| Error::Query {
            table: url.to_string(),
            source,
        };
        let mut events = Vec::with_capacity(limit);
        for batch in &batches {
            events.extend(quarantined(batch).map_err(|e| query(e.into()))?);
        }
        Ok(events)
    }

    /// The latest version of `source`'s quarantine table, with when its log entry was written
    /// and its entity tag, from a listing of its log without reading the table: what changes
    /// whenever [`Self::latest_quarantined`] may, a table deleted and made again included.
    /// `None` when there is no table yet.
    pub async fn quarantine_version(
        &self,
        source: &SourceConfig,
    ) -> Result<Option<(u64, chrono::DateTime<chrono::Utc>, Option<String>)>> {
        let url = self.lake.quarantine(&source.name);
        let delta = |source| Error::Delta {
            table: url.to_string(),
            source,
        };
        let table = match DeltaTableBuilder::from_url(url.clone()).and_then(|b| b.build()) {
            Ok(table) => table,
            Err(error) if super::is_missing(&error) => return Ok(None),
            Err(error) => return Err(delta(error)),
        };
        Ok(Log::of(&table).await?.latest_stamp())
    }

    /// Registers `source`'s `table` in `ctx` as `name`, at its latest version. `false` (and
    /// nothing registered) when the table does not exist yet.
    pub async fn register(
        &self,
        ctx: &SessionContext,
        name: &str,
        source: &SourceConfig,
        table: SourceTable,
    ) -> Result<bool> {
        let url = match table {
            SourceTable::Raw => self.lake.raw(&source.name),
            SourceTable::Quarantine => self.lake.quarantine(&source.name),
        };
        let Some(table) = open(&url, None).await? else {
            return Ok(false);
        };
        let query = |source| Error::Query {
            table: url.to_string(),
            source,
        };
        table
            .update_datafusion_session(&ctx.state())
            .map_err(|source| Error::Delta {
                table: url.to_string(),
                source,
            })?;
        let provider = table.table_provider().await.map_err(query)?;
        ctx.register_table(name, provider).map_err(query)?;
        Ok(true)
    }
}

/// Why a past version of a view cannot answer ([`LakeReader::view_as_of`]).
#[derive(Debug, thiserror::Error)]
pub enum TravelError {
    /// The view has no table yet: no batch run has published it.
    #[error("view `{view}` has no batch version yet")]
    NoVersions {
        /// The view.
        view: String,
    },
    /// The version asked is past the latest.
    #[error("view `{view}` has no version {version}; its latest is {latest}")]
    NoSuchVersion {
        /// The view.
        view: String,
        /// What was asked.
        version: u64,
        /// The latest version.
        latest: u64,
    },
    /// The time asked is before the view's first version.
    #[error("view `{view}` had no batch version at {at}")]
    BeforeFirst {
        /// The view.
        view: String,
        /// The time asked, RFC 3339.
        at: String,
    },
    /// The version asked (or the one current at the time asked) is no longer held.
    #[error(
        "{} of view `{view}` is no longer held (vacuumed); the oldest version held is {oldest}",
        .version.map_or_else(|| "the version current then".to_owned(), |v| format!("version {v}"))
    )]
    Vacuumed {
        /// The view.
        view: String,
        /// The version, when one was asked.
        version: Option<u64>,
        /// The oldest version that can still be read.
        oldest: u64,
    },
    /// The version holds no batch version published by a run (the table's creation, or a
    /// commit before its first publish).
    #[error("version {version} of view `{view}` holds no published batch version")]
    Unpublished {
        /// The view.
        view: String,
        /// The version.
        version: u64,
    },
    /// The version was computed under another definition of the view.
    #[error(
        "version {version} of view `{view}` was computed under another definition of the view; ask for a version published since it was last redefined"
    )]
    OtherDefinition {
        /// The view.
        view: String,
        /// The version.
        version: u64,
    },
    /// The lake could not be read.
    #[error(transparent)]
    Lake(#[from] Error),
}

/// The view tables of one process, kept open between checks for new versions.
#[derive(Debug)]
pub struct ViewWatch {
    source: SourceConfig,
    views: Vec<Watched>,
}

#[derive(Debug)]
struct Watched {
    view: ViewDef,
    url: Url,
    /// `None` until the table exists.
    table: Option<DeltaTable>,
    /// The version last loaded (or seen without a lambdaflow commit).
    version: Option<u64>,
}

impl ViewWatch {
    /// Brings every view table up to its latest version (reading only the log entries added
    /// since the last check) and loads the views whose version moved. One entry per view, in
    /// the order given to [`LakeReader::watch_views`]: `Ok(Some(_))` a new version published
    /// by a batch run, `Ok(None)` nothing new, `Err(_)` the table could not be read (the next
    /// check tries again).
    pub async fn changed(&mut self) -> Vec<Result<Option<BatchView>>> {
        let mut out = Vec::with_capacity(self.views.len());
        for watched in &mut self.views {
            out.push(watched.check(&self.source).await);
        }
        out
    }
}

impl Watched {
    async fn check(&mut self, source: &SourceConfig) -> Result<Option<BatchView>> {
        let table = match &mut self.table {
            Some(table) => {
                table.update_state().await.map_err(|source| Error::Delta {
                    table: self.url.to_string(),
                    source,
                })?;
                table
            }
            slot @ None => match open(&self.url, None).await? {
                Some(table) => slot.insert(table),
                None => return Ok(None),
            },
        };
        if table.version() == self.version {
            return Ok(None);
        }
        let batch = read_view(source, &self.view, table).await?;
        self.version = table.version();
        Ok(batch.watermark.is_some().then_some(batch))
    }
}

/// `view`'s batch side at `version`, the loaded version of `table`, refused when no run
/// published it or a run published it under a definition other than `definition`.
async fn published(
    source: &SourceConfig,
    view: &ViewDef,
    definition: &str,
    table: &DeltaTable,
    version: u64,
) -> Result<BatchView, TravelError> {
    let Some(commit) = view_commit(table).await? else {
        return Err(TravelError::Unpublished {
            view: view.name.clone(),
            version,
        });
    };
    if commit.definition != definition {
        return Err(TravelError::OtherDefinition {
            view: view.name.clone(),
            version,
        });
    }
    Ok(view_rows(source, view, table, commit).await?)
}

/// `view`'s batch side at the loaded version of `table`: its rows as states, with the
/// watermark of the lambdaflow commit that published them (empty when there is none).
async fn read_view(source: &SourceConfig, view: &ViewDef, table: &DeltaTable) -> Result<BatchView> {
    match view_commit(table).await? {
        Some(commit) => view_rows(source, view, table, commit).await,
        None => Ok(BatchView::default()),
    }
}

/// `view`'s batch side at the loaded version of `table`, published by `commit`.
async fn view_rows(
    source: &SourceConfig,
    view: &ViewDef,
    table: &DeltaTable,
    commit: ViewCommit,
) -> Result<BatchView> {
    let url = table.table_url().to_string();
    let batches = query_table(table, "v", "SELECT * FROM v").await?;
    let mut state = ViewState::new();
    for batch in &batches {
        state
            .from_view_batch(source, view, batch)
            .map_err(|source| Error::ViewRows {
                table: url.clone(),
                source,
            })?;
    }
    Ok(BatchView {
        version: table.version(),
        watermark: Some(commit.watermark),
        state,
        definition: Some(commit.definition),
        ..BatchView::default()
    })
}

/// The rows of a quarantine query's `batch` (columns in the order the query selects them).
fn quarantined(batch: &RecordBatch) -> Result<Vec<QuarantinedEvent>, arrow::error::ArrowError> {
    let column = |i: usize, t: &DataType| cast(batch.column(i), t);
    let raw = column(0, &DataType::Binary)?;
    let reason = column(1, &DataType::Utf8)?;
    let topic = column(2, &DataType::Utf8)?;
    let partition = column(3, &DataType::Int32)?;
    let offset = column(4, &DataType::Int64)?;
    let time = column(5, batch.schema().field(5).data_type())?;
    let (raw, reason, topic) = (
        raw.as_binary::<i32>(),
        reason.as_string::<i32>(),
        topic.as_string::<i32>(),
    );
    let (partition, offset, time) = (
        partition.as_primitive::<Int32Type>(),
        offset.as_primitive::<Int64Type>(),
        time.as_primitive::<TimestampMicrosecondType>(),
    );
    Ok((0..batch.num_rows())
        .map(|row| QuarantinedEvent {
            raw: (!raw.is_null(row)).then(|| raw.value(row).to_vec()),
            reason: reason.value(row).to_owned(),
            topic: topic.value(row).to_owned(),
            partition: partition.value(row),
            offset: offset.value(row),
            ingest_time: time.value(row),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::SessionContext;
    use lambdaflow_common::config::{Config, LakeConfig};

    use super::*;

    fn reader(dir: &tempfile::TempDir) -> (Config, LakeReader) {
        let config = Config::shop();
        let lake = LakeConfig::at(dir.path().display().to_string());
        (config, LakeReader::new(&lake).unwrap())
    }

    #[tokio::test]
    async fn tables_not_there_yet_read_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let (config, reader) = reader(&dir);
        let view = reader
            .view(config.source(), &config.views[0])
            .await
            .unwrap();
        assert!(view.version.is_none() && view.watermark.is_none());
        let mut ids = 0;
        reader
            .raw_ids(config.source(), 0, 20_000, |part| {
                ids += part.len();
                Ok::<_, Error>(())
            })
            .await
            .unwrap();
        assert_eq!(ids, 0);
        let refused = reader.latest_quarantined(config.source(), 10).await;
        assert!(refused.unwrap().is_empty());
        let ctx = SessionContext::new();
        let registered = reader
            .register(&ctx, "raw_events", config.source(), SourceTable::Raw)
            .await
            .unwrap();
        assert!(!registered);
        let (mut watch, views) = reader
            .watch_views(config.source(), &config.views)
            .await
            .unwrap();
        assert_eq!(views.len(), config.views.len());
        assert!(watch.changed().await.iter().all(|c| matches!(c, Ok(None))));
    }

    #[tokio::test]
    async fn a_table_that_cannot_be_read_is_an_error_not_an_empty_table() {
        let dir = tempfile::tempdir().unwrap();
        let (config, reader) = reader(&dir);
        let log = dir
            .path()
            .join(format!("views/{}/_delta_log", config.views[0].name));
        std::fs::create_dir_all(&log).unwrap();
        std::fs::write(log.join("00000000000000000000.json"), "not a delta log").unwrap();
        let error = reader.view(config.source(), &config.views[0]).await;
        assert!(matches!(error, Err(Error::Delta { .. })), "{error:?}");
    }
}
