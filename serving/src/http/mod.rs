//! The HTTP API: one module per resource, one [`AppState`], one [`app`] used by
//! `main` and by the tests (through `tower::ServiceExt::oneshot`, no socket needed).
//!
//! Errors have one home, [`error::ApiError`], which the lower layers' errors convert into;
//! request bodies are read by [`json::ApiJson`] (or [`json::RawBody`] for the collector), whose
//! rejections are `ApiError`s as well. Handlers stay thin: a view query is resolved by
//! `lambdaflow_common::query`, not here.

pub mod batch;
pub mod catalog;
pub mod dashboard;
pub mod error;
pub mod etag;
pub mod events;
pub mod guard;
pub mod health;
pub mod json;
pub mod lake;
pub mod metrics;
pub mod openapi;
pub mod quarantine;
pub mod sql;
pub mod views;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum_server::tls_rustls::RustlsConfig;
use lambdaflow_batch::archive::ArchiveStats;
use lambdaflow_batch::lake::reader::LakeReader;
use lambdaflow_batch::views::schedule::Batches;
use lambdaflow_common::batch_view::BatchView;
use lambdaflow_common::config::Config;
use lambdaflow_common::validate::Validator;
use lambdaflow_common::view::fingerprint;
use lambdaflow_kafka::producer::Producer;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::http::error::ApiError;
use crate::http::guard::{Guard, TokenError};
use crate::speed_layer::{Speeds, ViewAt};

/// What every handler may read.
#[derive(Clone)]
pub struct AppState {
    /// The deployment's config.
    pub config: Arc<Config>,
    /// Per source in config order, its validator, the same its archiver uses.
    pub validators: Arc<Vec<Validator>>,
    /// Producer for `POST /v1/events`.
    pub producer: Producer,
    /// Set once the process can answer queries (`/readyz`).
    pub ready: Arc<AtomicBool>,
    /// The archivers of this process, one per source, where it runs them (`run`, `demo`):
    /// `/readyz` reports the partitions they halted.
    pub archivers: Vec<Arc<ArchiveStats>>,
    /// Batch runs started through the API, and the run history.
    pub batches: Arc<Batches>,
    /// Per view in config order, the fingerprint of its definition: a batch version computed
    /// under another one is never merged with the speed side.
    pub definitions: Arc<Vec<String>>,
    /// The lake's tables as the API reads them (refused events, SQL over raw and quarantine).
    pub lake: Arc<LakeReader>,
    /// Per source, the (batch, speed) pairs queries read and the speed layer's Kafka progress.
    pub speeds: Speeds,
    /// Tokens, scopes, origins and content types, checked before any handler.
    pub guard: Arc<Guard>,
    /// One permit per `/v1/sql` query that may run at once.
    pub sql_slots: Arc<Semaphore>,
    /// One permit per view query that may be answered at once.
    pub query_slots: Arc<Semaphore>,
    /// `GET /openapi.json`, for this config's views.
    pub openapi: Arc<str>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("sources", &self.config.sources.len())
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Whether the view at `at`'s loaded batch version was computed under another definition
    /// than the config's (the view was redefined since that batch run).
    pub fn rebuilding(&self, at: ViewAt, batch: &BatchView) -> bool {
        batch.redefined(&self.definitions[at.global])
    }

    /// State for `config`, producing through `producer`, running batches through `batches`,
    /// reading the lake through `lake` and answering queries from `speeds`; not ready until
    /// [`Self::set_ready`] and the speed layer has caught up. Fails when a token the config
    /// names by environment variable is not set.
    pub fn new(
        config: Arc<Config>,
        producer: Producer,
        batches: Arc<Batches>,
        lake: Arc<LakeReader>,
        speeds: Speeds,
    ) -> Result<Self, TokenError> {
        let guard = Arc::new(Guard::new(&config.serving, |var| std::env::var(var).ok())?);
        let sql_slots = Arc::new(Semaphore::new(config.serving.sql_max_concurrent));
        let query_slots = Arc::new(Semaphore::new(
            config.serving.query_max_concurrent.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, |cores| (cores.get() - 1).max(1))
            }),
        ));
        let validators = config.sources.iter().map(Validator::new).collect();
        let definitions = config
            .views
            .iter()
            .map(|view| fingerprint(config.source_of(view), view))
            .collect();
        let openapi = openapi::document_for(&config).into();
        Ok(Self {
            openapi,
            config,
            validators: Arc::new(validators),
            definitions: Arc::new(definitions),
            producer,
            ready: Arc::default(),
            archivers: Vec::new(),
            batches,
            lake,
            speeds,
            guard,
            sql_slots,
            query_slots,
        })
    }

    /// The state with this process's archivers, whose halted partitions `/readyz` reports.
    #[must_use]
    pub fn with_archivers(mut self, stats: Vec<Arc<ArchiveStats>>) -> Self {
        self.archivers = stats;
        self
    }

    /// Marks the process ready for `/readyz`.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }
}

/// The whole API: every request passes the [`guard`] (token and scope, origin and content type
/// of writes), every route times itself for `/metrics`, every body is held to
/// `serving.max_body_bytes`, and every error, axum's own rejections included, has the JSON
/// shape of [`ApiError`].
pub fn app(state: AppState) -> Router {
    let guard = state.guard.clone();
    Router::new()
        .merge(dashboard::router())
        .merge(health::router())
        .merge(events::router(&state.config))
        .merge(batch::router())
        .merge(views::router())
        .merge(sql::router())
        .merge(quarantine::router())
        .merge(lake::router())
        .merge(catalog::router())
        .merge(metrics::router())
        .merge(openapi::router())
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(DefaultBodyLimit::max(state.config.serving.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(guard, guard::check))
        .layer(axum::middleware::map_response(error::json_errors))
        .layer(axum::middleware::from_fn(crate::metrics::track))
        .with_state(state)
}

/// The TLS settings of `[serving]`, read from its PEM files: `None` when the API speaks plain
/// HTTP. Read before the API listens, so that a missing or broken file stops the process at
/// start-up instead of serving plain text.
pub async fn tls(config: &Config) -> std::io::Result<Option<RustlsConfig>> {
    let (Some(cert), Some(key)) = (&config.serving.tls_cert, &config.serving.tls_key) else {
        return Ok(None);
    };
    RustlsConfig::from_pem_file(cert, key)
        .await
        .map(Some)
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "TLS certificate {} or key {}: {e}",
                    cert.display(),
                    key.display()
                ),
            )
        })
}

/// Serves `app` on `listener` (over TLS with `tls`) until `shutdown` is cancelled, then lets
/// requests in flight end.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    tls: Option<RustlsConfig>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = app(state);
    let Some(tls) = tls else {
        return axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
    };
    let handle = axum_server::Handle::new();
    tokio::spawn({
        let handle = handle.clone();
        async move {
            shutdown.cancelled().await;
            handle.graceful_shutdown(Some(Duration::from_secs(10)));
        }
    });
    axum_server::from_tcp_rustls(listener.into_std()?, tls)?
        .handle(handle)
        .serve(app.into_make_service())
        .await
}
