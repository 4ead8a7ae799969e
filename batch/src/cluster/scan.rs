//! The raw scan a cluster can run: the Parquet files of the pinned raw version, listed one by
//! one, for the dates a view computes.
//!
//! Listing the date directories instead would also read the files that version no longer
//! references (compacted, expired, or left by a killed write) and count their rows twice. A
//! listing of single files carries no partition values, so the scan has the raw columns without
//! `event_date`: the files of a date are its filter, and a view's plan only needs `event_date`
//! to filter dates ([`crate::views::recompute::view_frame`] is given none).

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use datafusion::catalog::TableProvider;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use deltalake::DeltaTable;
use lambdaflow_common::schema::EVENT_DATE;

use crate::error::{Error, Result};
use crate::views::watermark::parse_date;

/// The pinned raw version's data files, each with its date.
#[derive(Debug, Clone)]
pub struct RawFiles {
    files: Vec<(i32, ListingTableUrl)>,
    schema: SchemaRef,
}

impl RawFiles {
    /// The files `raw` references at its loaded version; `schema` is the raw table's.
    pub fn pinned(raw: &DeltaTable, schema: &Schema) -> Result<Self> {
        let table = raw.table_url().to_string();
        let corrupt = |message: String| Error::Corrupt {
            table: table.clone(),
            message,
        };
        let snapshot = raw.snapshot().map_err(|source| Error::Delta {
            table: table.clone(),
            source,
        })?;
        let mut files = Vec::new();
        for file in snapshot.log_data().iter() {
            let value = file
                .partition_values_map()
                .get(EVENT_DATE)
                .cloned()
                .flatten();
            let date = value
                .as_deref()
                .and_then(parse_date)
                .ok_or_else(|| corrupt(format!("file {} has no {EVENT_DATE}", file.path())))?;
            let url = raw
                .table_url()
                .join(&file.path())
                .map_err(|e| corrupt(format!("file {}: {e}", file.path())))?;
            let url = ListingTableUrl::parse(url.as_str())
                .map_err(|e| corrupt(format!("file {}: {e}", file.path())))?;
            files.push((date, url));
        }
        let fields = schema
            .fields()
            .iter()
            .filter(|f| f.name() != EVENT_DATE)
            .cloned()
            .collect::<Vec<_>>();
        Ok(Self {
            files,
            schema: Arc::new(Schema::new(fields)),
        })
    }

    /// A scan of the files of `dates` (every file when `None`); `None` when there is no file
    /// to read, as a listing of nothing cannot be planned.
    pub fn scan(&self, dates: Option<&BTreeSet<i32>>) -> Result<Option<Arc<dyn TableProvider>>> {
        let paths: Vec<ListingTableUrl> = self
            .files
            .iter()
            .filter(|(date, _)| dates.is_none_or(|d| d.contains(date)))
            .map(|(_, url)| url.clone())
            .collect();
        if paths.is_empty() {
            return Ok(None);
        }
        let table = paths[0].to_string();
        let options =
            ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
        let config = ListingTableConfig::new_with_multi_paths(paths)
            .with_listing_options(options)
            .with_schema(self.schema.clone());
        let listing =
            ListingTable::try_new(config).map_err(|source| Error::Query { table, source })?;
        Ok(Some(Arc::new(listing)))
    }
}
