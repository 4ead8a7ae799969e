//! The lake layout of SPEC §4 and the opening of its tables.
//!
//! ```text
//! <lake>/raw/<source>/          master dataset, partitioned by event_date
//! <lake>/quarantine/<source>/   refused events, partitioned by ingest_date
//! <lake>/views/<view>/          batch views
//! <lake>/_lambdaflow/           run history and other platform state
//! ```

use arrow::array::{Array, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;
use deltalake::kernel::StructType;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use lambdaflow_common::config::LakeConfig;
use lambdaflow_common::schema::EVENT_DATE;
use lambdaflow_common::timestamp::format_date;
use url::Url;

use crate::error::{Error, Result};

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
        let err = |message: String| Error::LakeUri {
            uri: uri.to_owned(),
            message,
        };
        let mut root = match Url::parse(uri) {
            Ok(url) if url.scheme().len() > 1 => url,
            _ => {
                let path = std::path::absolute(uri).map_err(|e| err(e.to_string()))?;
                Url::from_directory_path(&path).map_err(|()| err("not an absolute path".into()))?
            }
        };
        if !root.path().ends_with('/') {
            root.set_path(&format!("{}/", root.path()));
        }
        if root.scheme() == "file" {
            let path = root
                .to_file_path()
                .map_err(|()| err("not a local path".into()))?;
            std::fs::create_dir_all(path.join(PLATFORM))
                .map_err(|e| err(format!("cannot create {}: {e}", path.display())))?;
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

/// Opens the Delta table at `url`, creating it with `schema` and `partition_by` if there is none.
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
            message: "not a local path".into(),
        })?;
        std::fs::create_dir_all(&path).map_err(|e| Error::LakeUri {
            uri: url.to_string(),
            message: format!("cannot create {}: {e}", path.display()),
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
    table
        .create()
        .with_columns(columns.fields().cloned())
        .with_partition_columns(partition_by.iter().copied())
        .await
        .map_err(delta)
}

/// The ids the raw table (at its loaded version) holds for one event date, read through DataFusion with partition
/// pruning so that only that date's files are opened.
pub async fn stored_ids(
    table: &DeltaTable,
    id_field: &str,
    date: i32,
) -> Result<arrow::array::StringArray> {
    let url = table.table_url().to_string();
    let query = |source| Error::Query {
        table: url.clone(),
        source,
    };
    let ctx = SessionContext::new();
    table
        .update_datafusion_session(&ctx.state())
        .map_err(|source| Error::Delta {
            table: url.clone(),
            source,
        })?;
    ctx.register_table("raw", table.table_provider().await.map_err(query)?)
        .map_err(query)?;
    let sql = format!(
        "SELECT \"{id_field}\" FROM raw WHERE {EVENT_DATE} = DATE '{}'",
        format_date(date)
    );
    let batches = ctx
        .sql(&sql)
        .await
        .map_err(query)?
        .collect()
        .await
        .map_err(query)?;
    let mut ids = arrow::array::StringBuilder::new();
    for batch in &batches {
        let column = cast(batch.column(0), &DataType::Utf8).map_err(|e| query(e.into()))?;
        for id in column.as_string::<i32>().iter().flatten() {
            ids.append_value(id);
        }
    }
    let ids = ids.finish();
    tracing::debug!(date = %format_date(date), ids = ids.len(), "loaded stored ids for deduplication");
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_paths_become_directory_urls() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::new(&LakeConfig {
            uri: dir.path().join("lake").display().to_string(),
        })
        .unwrap();
        assert!(lake.root().as_str().ends_with("/lake/"));
        assert!(lake.raw("events").as_str().ends_with("/lake/raw/events/"));
        assert!(dir.path().join("lake").is_dir());
    }

    #[test]
    fn urls_are_kept() {
        let lake = Lake::new(&LakeConfig {
            uri: "s3://bucket/prefix".into(),
        })
        .unwrap();
        assert_eq!(lake.view("v").as_str(), "s3://bucket/prefix/views/v/");
    }
}
