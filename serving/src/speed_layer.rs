//! The speed layers as this process runs them, one per source: each started over its source's
//! batch views loaded from the lake, fed the raw ids its deduplication needs, and handed every
//! new view version for an atomic swap by a watcher. [`Speeds`] is what the API reads: every
//! source's served state and where each view's states are. Every read of the lake goes through
//! the batch crate's [`LakeReader`]; this module only wires it to the speed layer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use lambdaflow_batch::lake::reader::{LakeReader, ViewWatch};
use lambdaflow_common::batch_view::BatchView;
use lambdaflow_common::config::Config;
use lambdaflow_common::view::ViewDef;
use lambdaflow_kafka::settings::Cluster;
use lambdaflow_speed::consume::{IdSink, RawIds, SpeedLayer, Swap};
use lambdaflow_speed::engine::Speed;
use lambdaflow_speed::error::RawIdsError;
use lambdaflow_speed::served::Served;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::Result;

/// How often view tables are checked for a new version.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Loads the latest version of `view`'s table; an empty batch side when there is none yet.
pub async fn load_batch_view(
    config: &Config,
    lake: &LakeReader,
    view: &ViewDef,
) -> Result<BatchView> {
    Ok(lake.view(config.source_of(view), view).await?)
}

/// One source's speed layer as the API reads it.
#[derive(Clone)]
pub struct SourceSpeed {
    /// The deployment [scoped](Config::scoped) to the source: its views in config order.
    pub config: Arc<Config>,
    /// Its (batch, speed) pairs, one per view of `config`, and its Kafka progress.
    pub served: Served,
}

/// Where a view's states are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewAt {
    /// Its source's position among the deployment's sources.
    pub source: usize,
    /// Its position among its source's views: its pair in that source's snapshot.
    pub index: usize,
    /// Its position among the deployment's views.
    pub global: usize,
}

/// Every source's speed layer, in config order, and where each view's states are.
#[derive(Clone)]
pub struct Speeds {
    sources: Arc<[SourceSpeed]>,
    views: Arc<HashMap<String, ViewAt>>,
}

impl Speeds {
    /// The speed layers of `config`'s sources: `served[i]` is the state of `config.sources[i]`.
    pub fn new(config: &Config, served: Vec<Served>) -> Self {
        assert_eq!(
            served.len(),
            config.sources.len(),
            "one served state per source"
        );
        let sources: Vec<SourceSpeed> = config
            .sources
            .iter()
            .zip(served)
            .map(|(source, served)| SourceSpeed {
                config: Arc::new(config.scoped(source)),
                served,
            })
            .collect();
        let position = |views: &[ViewDef], name: &str| views.iter().position(|v| v.name == name);
        let views = config
            .views
            .iter()
            .enumerate()
            .map(|(global, view)| {
                let of = &config.source_of(view).name;
                let source = sources
                    .iter()
                    .position(|s| &s.config.source().name == of)
                    .expect("every view's source is one of the config's");
                let index = position(&sources[source].config.views, &view.name)
                    .expect("a scoped config keeps its source's views");
                let at = ViewAt {
                    source,
                    index,
                    global,
                };
                (view.name.clone(), at)
            })
            .collect();
        Self {
            sources: sources.into(),
            views: Arc::new(views),
        }
    }

    /// Every source's speed layer, in config order.
    pub fn sources(&self) -> &[SourceSpeed] {
        &self.sources
    }

    /// Where the view called `name` is, if there is one.
    pub fn view(&self, name: &str) -> Option<ViewAt> {
        self.views.get(name).copied()
    }

    /// The served state of the source at `source`.
    pub fn served(&self, source: usize) -> &Served {
        &self.sources[source].served
    }
}

/// Starts one speed layer per source of `config`; returns what the API reads and the tasks
/// that run each until `shutdown`.
pub async fn start_all(
    config: &Config,
    lake: &Arc<LakeReader>,
    brokers: &Cluster,
    shutdown: &CancellationToken,
) -> Result<(
    Speeds,
    Vec<impl Future<Output = Result<()>> + Send + 'static>,
)> {
    let mut served = Vec::new();
    let mut tasks = Vec::new();
    for source in &config.sources {
        let scoped = Arc::new(config.scoped(source));
        let (state, task) = start(scoped, lake.clone(), brokers.clone(), shutdown.clone()).await?;
        served.push(state);
        tasks.push(task);
    }
    Ok((Speeds::new(config, served), tasks))
}

/// Raw ids from the lake's raw table at a pinned version.
struct LakeRawIds {
    lake: Arc<LakeReader>,
    config: Arc<Config>,
}

impl RawIds for LakeRawIds {
    fn ids<'a>(
        &'a self,
        version: u64,
        date: i32,
        each: IdSink<'a>,
    ) -> BoxFuture<'a, Result<(), RawIdsError>> {
        Box::pin(self.lake.raw_ids(self.config.source(), version, date, each))
    }
}

/// Starts the speed layer of `config`'s one source and its batch watcher; returns the shared
/// state queries read and the task that runs both until `shutdown`.
async fn start(
    config: Arc<Config>,
    lake: Arc<LakeReader>,
    brokers: Cluster,
    shutdown: CancellationToken,
) -> Result<(Served, impl Future<Output = Result<()>> + Send + 'static)> {
    let (views, batches) = lake.watch_views(config.source(), &config.views).await?;
    // After an accepted topic reset only the raw table knows each partition's current epoch:
    // a view computed before it covers nothing of the new one.
    let epochs = lake
        .raw_epochs(config.source(), &config.source().topic)
        .await?;
    let batches = batches
        .into_iter()
        .map(|b| Arc::new(b.with_epochs(epochs.clone())))
        .collect();
    let served = Served::new();
    let speed = Speed::new(config.clone(), served.clone(), batches)?;
    let (swaps_tx, swaps_rx) = mpsc::channel(4);
    let raw_ids = Arc::new(LakeRawIds {
        lake: lake.clone(),
        config: config.clone(),
    });
    let layer = SpeedLayer::new(config.clone(), brokers, speed, raw_ids, swaps_rx);
    let task = async move {
        let watcher = watch(config, (lake, views), swaps_tx, shutdown.clone());
        let ((), speed) = tokio::join!(watcher, layer.run(shutdown.clone()));
        Ok(speed?)
    };
    Ok((served, task))
}

/// Checks every view table for a new version (reading only the log entries added since the
/// last check) and sends each new one to the speed layer, until `shutdown` or the speed layer
/// is gone; a version that cannot be read is retried at the next check.
async fn watch(
    config: Arc<Config>,
    (lake, mut views): (Arc<LakeReader>, ViewWatch),
    swaps: mpsc::Sender<Swap>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(WATCH_EVERY) => {}
        }
        let mut swap: Swap = vec![None; config.views.len()];
        for ((view, changed), slot) in config
            .views
            .iter()
            .zip(views.changed().await)
            .zip(&mut swap)
        {
            match changed {
                Ok(Some(batch)) => {
                    tracing::info!(view = %view.name, version = ?batch.version, raw_version = batch.watermark.as_ref().map(|w| w.raw_version), groups = batch.state.len(), "new batch version loaded");
                    *slot = Some(Arc::new(batch));
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(view = %view.name, %error, "could not load the view's new version; retrying")
                }
            }
        }
        if swap.iter().all(Option::is_none) {
            continue;
        }
        match lake
            .raw_epochs(config.source(), &config.source().topic)
            .await
        {
            Ok(epochs) => {
                for slot in swap.iter_mut().flatten() {
                    if slot.epochs != epochs {
                        let batch = Arc::get_mut(slot).expect("not shared yet");
                        batch.epochs = epochs.clone();
                    }
                }
            }
            Err(error) => {
                // The views' watermarks are used as they are: right unless a topic reset was
                // accepted since the speed layer started.
                tracing::warn!(%error, "could not read the raw table's epochs");
            }
        }
        if swaps.send(swap).await.is_err() {
            return;
        }
    }
}
