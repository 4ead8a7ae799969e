//! What the API's test modules share: an app over a config with no data, and one request
//! through it.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use lambdaflow_batch::lake::reader::LakeReader;
use lambdaflow_batch::views::schedule::Batches;
use lambdaflow_common::config::Config;
use lambdaflow_common::state::ViewState;
use lambdaflow_kafka::embedded::EmbeddedBroker;
use lambdaflow_kafka::producer::Producer;
use lambdaflow_serving::http::{AppState, app};
use lambdaflow_serving::speed_layer::Speeds;
use lambdaflow_speed::served::{Progress, Served, ViewPair};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// An app over `config`, its Kafka pointed at `broker` and its lake at `lake`; no data.
pub fn state_with(
    broker: &EmbeddedBroker,
    lake: &tempfile::TempDir,
    mut config: Config,
) -> AppState {
    config.kafka.brokers = broker.bootstrap_servers().to_owned();
    config.lake.uri = lake.path().display().to_string();
    let config = Arc::new(config);
    let producer =
        Producer::for_events(broker.bootstrap_servers(), config.source().max_event_bytes).unwrap();
    let batches = Batches::new(config.clone(), CancellationToken::new()).unwrap();
    let empty = config
        .views
        .iter()
        .map(|_| ViewPair::new(Arc::default(), ViewState::new()))
        .collect();
    let lake = Arc::new(LakeReader::new(&config.lake).unwrap());
    let served = Served::from_parts(empty, Default::default(), caught_up());
    let speeds = Speeds::new(&config, vec![served]);
    AppState::new(config, producer, batches, lake, speeds).unwrap()
}

/// Progress of a speed layer that has consumed everything there was when it started.
pub fn caught_up() -> Progress {
    Progress {
        start_head: Some(Default::default()),
        ..Progress::default()
    }
}

pub async fn call(state: &AppState, request: Request<Body>) -> (StatusCode, Value) {
    let response = app(state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}
