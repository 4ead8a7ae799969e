//! Wiring the two layers for the API: batch view tables loaded into memory once per version,
//! the raw ids the speed layer's deduplication needs, and a watcher that hands every new view
//! version to the speed layer for an atomic swap.

use std::sync::Arc;
use std::time::Duration;

use datafusion::prelude::SessionContext;
use deltalake::{DeltaTable, DeltaTableBuilder};
use futures::future::BoxFuture;
use lambdaflow_batch::lake::{Lake, stored_ids};
use lambdaflow_batch::watermark::view_commit;
use lambdaflow_common::batch_view::BatchView;
use lambdaflow_common::config::Config;
use lambdaflow_common::state::ViewState;
use lambdaflow_common::view::ViewDef;
use lambdaflow_speed::consume::{RawIds, RawIdsError, SpeedLayer, Swap};
use lambdaflow_speed::engine::Speed;
use lambdaflow_speed::served::Served;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How often view tables are checked for a new version.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Loads the latest version of `view`'s table; an empty batch side when there is none yet.
pub async fn load_batch_view(
    config: &Config,
    lake: &Lake,
    view: &ViewDef,
) -> anyhow::Result<BatchView> {
    match deltalake::open_table(lake.view(&view.name)).await {
        Ok(table) => read_batch_view(config, view, &table).await,
        Err(_) => Ok(BatchView::default()),
    }
}

async fn read_batch_view(
    config: &Config,
    view: &ViewDef,
    table: &DeltaTable,
) -> anyhow::Result<BatchView> {
    let Some(commit) = view_commit(table).await? else {
        return Ok(BatchView::default());
    };
    let ctx = SessionContext::new();
    table.update_datafusion_session(&ctx.state())?;
    ctx.register_table("v", table.table_provider().await?)?;
    let mut state = ViewState::new();
    for batch in ctx.sql("SELECT * FROM v").await?.collect().await? {
        state.from_view_batch(&config.source, view, &batch)?;
    }
    Ok(BatchView {
        version: table.version(),
        watermark: Some(commit.watermark),
        state,
    })
}

/// Raw ids from the lake's raw table at a pinned version.
struct LakeRawIds {
    url: url::Url,
    id_field: String,
}

impl RawIds for LakeRawIds {
    fn ids(&self, version: u64, date: i32) -> BoxFuture<'_, Result<Vec<String>, RawIdsError>> {
        Box::pin(async move {
            let table = DeltaTableBuilder::from_url(self.url.clone())?
                .with_version(version)
                .load()
                .await;
            let table = match table {
                Ok(t) => t,
                // No raw table yet: nothing is stored.
                Err(_) if version == 0 => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            let ids = stored_ids(&table, &self.id_field, date).await?;
            Ok(ids.iter().flatten().map(str::to_owned).collect())
        })
    }
}

/// Starts the speed layer and the batch watcher; returns the shared state queries read and the
/// task that runs both until `shutdown`.
pub async fn start(
    config: Arc<Config>,
    brokers: String,
    shutdown: CancellationToken,
) -> anyhow::Result<(
    Served,
    impl Future<Output = anyhow::Result<()>> + Send + 'static,
)> {
    let lake = Lake::new(&config.lake)?;
    let mut batches = Vec::new();
    let mut tables = Vec::new();
    for view in &config.views {
        let table = deltalake::open_table(lake.view(&view.name)).await.ok();
        batches.push(Arc::new(match &table {
            Some(table) => read_batch_view(&config, view, table).await?,
            None => BatchView::default(),
        }));
        tables.push(table);
    }
    let served = Served::new();
    let speed = Speed::new(config.clone(), served.clone(), batches)?;
    let (swaps_tx, swaps_rx) = mpsc::channel(4);
    let raw_ids = Arc::new(LakeRawIds {
        url: lake.raw(&config.source.name),
        id_field: config.source.id_field.clone(),
    });
    let layer = SpeedLayer::new(config.clone(), brokers, speed, raw_ids, swaps_rx);
    let task = async move {
        let watcher = watch(config, lake, tables, swaps_tx, shutdown.clone());
        let (speed, watched) = tokio::join!(layer.run(shutdown.clone()), watcher);
        speed?;
        watched
    };
    Ok((served, task))
}

/// Checks every view table for a new version (reading only the log entries added since the
/// last check) and sends each new one to the speed layer.
async fn watch(
    config: Arc<Config>,
    lake: Lake,
    mut tables: Vec<Option<DeltaTable>>,
    swaps: mpsc::Sender<Swap>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut versions: Vec<Option<u64>> = tables
        .iter()
        .map(|t| t.as_ref().and_then(DeltaTable::version))
        .collect();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(WATCH_EVERY) => {}
        }
        let mut swap: Swap = vec![None; config.views.len()];
        for (i, view) in config.views.iter().enumerate() {
            let table = match &mut tables[i] {
                Some(table) => {
                    if let Err(error) = table.update_state().await {
                        tracing::warn!(view = %view.name, %error, "could not read the view's log; retrying");
                        continue;
                    }
                    table
                }
                slot @ None => match deltalake::open_table(lake.view(&view.name)).await {
                    Ok(table) => slot.insert(table),
                    Err(_) => continue,
                },
            };
            if table.version() == versions[i] {
                continue;
            }
            match read_batch_view(&config, view, table).await {
                Ok(batch) if batch.watermark.is_some() => {
                    tracing::info!(view = %view.name, version = ?batch.version, raw_version = batch.watermark.as_ref().map(|w| w.raw_version), groups = batch.state.len(), "new batch version loaded");
                    versions[i] = table.version();
                    swap[i] = Some(Arc::new(batch));
                }
                Ok(_) => versions[i] = table.version(),
                Err(error) => {
                    tracing::warn!(view = %view.name, %error, "could not load the new batch version; retrying")
                }
            }
        }
        if swap.iter().any(Option::is_some) && swaps.send(swap).await.is_err() {
            return Ok(());
        }
    }
}
