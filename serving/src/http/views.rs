//! `/v1/views`: view definitions with their batch and speed status, and queries answered from
//! batch ⊕ speed.
//!
//! A query detaches one (batch version, speed state) pair from the served state (the batch
//! side shared, the speed groups in its range copied) and answers from that without holding
//! the lock the speed layer's fold takes, so a heavy query never delays freshness and a swap
//! meanwhile does not mix into its answer. Every answer carries its
//! consistency token: the batch watermark and the offsets the speed states are folded through.

use std::collections::BTreeMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query as QueryParams, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use lambdaflow_common::batch_view::BatchView;
use lambdaflow_common::query::{
    AnswerLimits, AsOfRequest, Layer, OrderBy, Query, QueryRequest, ResolvedQuery, Rollup, Row,
    Value, answer,
};
use lambdaflow_common::source::{FieldType, SourceConfig};
use lambdaflow_common::state::{Dim, ViewState};
use lambdaflow_common::timestamp::{format_micros, format_micros_in};
use lambdaflow_common::view::ViewDef;
use lambdaflow_common::watermark::Watermark;
use lambdaflow_speed::served::{Progress, Snapshot, ViewPair};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value as Json_, json};

use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::json::{ApiJson, JsonBody};
use crate::speed_layer::ViewAt;

/// View routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/views", get(list))
        .route("/v1/views/{name}", get(one))
        .route("/v1/views/{name}/query", get(query_get).post(query_post))
}

fn find<'a>(state: &'a AppState, name: &str) -> Result<(ViewAt, &'a ViewDef), ApiError> {
    let at = state
        .speeds
        .view(name)
        .ok_or_else(|| ApiError::NotFound(format!("no view `{name}`")))?;
    Ok((at, &state.config.views[at.global]))
}

/// The served state of the source at `source`, once its speed layer has loaded.
fn read(state: &AppState, source: usize) -> Result<Snapshot<'_>, ApiError> {
    state.speeds.served(source).snapshot().ok_or_else(|| {
        ApiError::Unavailable("the speed layer is starting; retry in a moment".into())
    })
}

fn offsets(map: &BTreeMap<i32, i64>) -> Json_ {
    map.iter()
        .map(|(p, o)| (p.to_string(), json!(o)))
        .collect::<Map<_, _>>()
        .into()
}

/// `view` as declared, with the source it reads (the only one when it names none).
fn definition(source: &SourceConfig, view: &ViewDef) -> Json_ {
    json!({
        "name": view.name,
        "source": source.name,
        "granularity": view.granularity.as_str(),
        "dimensions": view.dimensions,
        "filter": view.filter,
        "measures": view.measures.iter().map(|m| json!({"name": m.name, "agg": m.agg.as_str(), "field": m.field})).collect::<Vec<_>>(),
    })
}

fn status(
    source: &SourceConfig,
    view: &ViewDef,
    pair: &ViewPair,
    folded: &BTreeMap<i32, i64>,
    progress: &Progress,
    rebuilding: bool,
) -> Json_ {
    let mut out = definition(source, view);
    let watermark = pair.batch().watermark.as_ref();
    let lag: Map<String, Json_> = folded
        .iter()
        .map(|(p, o)| {
            let covered = watermark.map_or(-1, |w| w.next_offset(*p) - 1);
            (p.to_string(), json!((o - covered).max(0)))
        })
        .collect();
    out["batch_version"] = json!(pair.batch().version);
    out["watermark"] = json!(watermark);
    out["speed_offsets"] = offsets(folded);
    out["speed_lag_behind_batch"] = lag.into();
    out["rows"] = json!({"batch": pair.batch().state.len(), "speed": pair.speed().len()});
    let bytes = pair.speed().heap_bytes();
    out["speed_state_bytes"] = json!(bytes);
    out["speed_bytes_per_group"] = json!(bytes.checked_div(pair.speed().len()));
    out["caught_up"] = json!(progress.caught_up());
    out["rebuilding"] = json!(rebuilding);
    let lost = progress.uncovered(|p| pair.batch().next_offset(p));
    out["complete"] = json!(lost.is_empty());
    out["lost_offsets"] = lost_json(&lost);
    out["halted_partitions"] = progress
        .halted
        .iter()
        .map(|(p, reason)| (p.to_string(), json!(reason)))
        .collect::<Map<_, _>>()
        .into();
    out
}

async fn list(State(state): State<AppState>) -> Result<Json<Json_>, ApiError> {
    let mut views = vec![Json_::Null; state.config.views.len()];
    for (s, speed) in state.speeds.sources().iter().enumerate() {
        let snapshot = read(&state, s)?;
        for (view, pair) in speed.config.views.iter().zip(snapshot.pairs()) {
            let at = state.speeds.view(&view.name).expect("a view of the config");
            let mut d = definition(speed.config.source(), view);
            d["watermark"] = json!(pair.batch().watermark);
            views[at.global] = d;
        }
    }
    Ok(Json(json!({ "views": views })))
}

async fn one(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Json_>, ApiError> {
    let (at, view) = find(&state, &name)?;
    let progress = state.speeds.served(at.source).progress();
    let snapshot = read(&state, at.source)?;
    let pair = snapshot.pair(at.index);
    let rebuilding = state.rebuilding(at, pair.batch());
    Ok(Json(status(
        state.config.source_of(view),
        view,
        pair,
        snapshot.folded(),
        &progress,
        rebuilding,
    )))
}

impl JsonBody for QueryRequest {
    const INVALID: &'static str = "invalid_query";
    const EXPECTED: &'static str =
        "a query object such as {\"group_by\": [..], \"measures\": [..]}";
}

/// Query-string form: lists are comma-separated.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryString {
    from: Option<String>,
    to: Option<String>,
    granularity: Option<String>,
    group_by: Option<String>,
    measures: Option<String>,
    limit: Option<usize>,
    layer: Option<String>,
    as_of: Option<String>,
    /// The body form's `filters` object, as JSON text.
    filters: Option<String>,
    /// Comma-separated keys, each descending with a leading `-`.
    order_by: Option<String>,
    tz: Option<String>,
}

fn list_param(text: Option<String>) -> Option<Vec<String>> {
    text.map(|t| {
        t.split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    })
}

async fn query_get(
    State(state): State<AppState>,
    Path(name): Path<String>,
    params: Result<QueryParams<QueryString>, QueryRejection>,
) -> Result<Response, ApiError> {
    let QueryParams(q) = params?;
    let filters = q
        .filters
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .map_err(|e| {
            ApiError::bad(
                "invalid_query",
                format!("`filters` must be a JSON object such as {{\"country\":[\"KR\"]}}: {e}"),
            )
        })?;
    let order_by = list_param(q.order_by).map(|keys| {
        keys.into_iter()
            .map(|key| match key.strip_prefix('-') {
                Some(field) => OrderBy {
                    field: field.to_owned(),
                    desc: true,
                },
                None => OrderBy {
                    field: key,
                    desc: false,
                },
            })
            .collect()
    });
    let request = QueryRequest {
        from: q.from,
        to: q.to,
        granularity: q.granularity,
        group_by: list_param(q.group_by),
        measures: list_param(q.measures),
        limit: q.limit,
        layer: q.layer,
        as_of: q.as_of.as_deref().map(AsOfRequest::from_param),
        filters,
        order_by,
        tz: q.tz,
    };
    answer_off_the_runtime(state, name, request).await
}

async fn query_post(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<QueryRequest>,
) -> Result<Response, ApiError> {
    answer_off_the_runtime(state, name, request).await
}

/// Answers on a blocking thread: a query over many groups takes milliseconds of CPU that the
/// runtime's workers, which also serve the other requests, should not wait for. At most
/// `serving.query_max_concurrent` answers run at once (by default one core fewer than the
/// machine has), so heavy queries leave the speed layer a core and freshness holds; the others
/// wait their turn within `serving.query_timeout`, which counts from the request's arrival.
async fn answer_off_the_runtime(
    state: AppState,
    name: String,
    request: QueryRequest,
) -> Result<Response, ApiError> {
    let timeout = state.config.serving.query_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let slot = tokio::time::timeout_at(deadline, state.query_slots.clone().acquire_owned())
        .await
        .map_err(|_| {
            ApiError::Timeout(format!(
                "the query waited {} for one of the serving.query_max_concurrent query slots; retry shortly",
                humantime::format_duration(timeout)
            ))
        })?
        .map_err(|e| ApiError::Internal(format!("the query slots are closed: {e}")))?;
    let limits = AnswerLimits {
        max_groups: state.config.serving.query_max_groups,
        deadline: Some((deadline.into_std(), timeout)),
    };
    let past = match request.as_of {
        Some(_) => Some(
            tokio::time::timeout_at(deadline, past_version(&state, &name, &request))
                .await
                .map_err(|_| {
                    ApiError::Timeout(format!(
                        "reading the view's past version took longer than {} (serving.query_timeout)",
                        humantime::format_duration(timeout)
                    ))
                })??,
        ),
        None => None,
    };
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        run(&state, &name, request, past, &limits)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("the query task failed: {e}")))?
}

/// Lost offset ranges as `{"<partition>": [[first, last], …]}`.
fn lost_json(lost: &BTreeMap<i32, Vec<(i64, i64)>>) -> Json_ {
    lost.iter()
        .map(|(p, ranges)| {
            let ranges: Vec<[i64; 2]> = ranges.iter().map(|(f, l)| [*f, *l]).collect();
            (p.to_string(), json!(ranges))
        })
        .collect::<Map<_, _>>()
        .into()
}

/// The batch version of view `name` that `request`'s `as_of` names, read from the lake.
async fn past_version(
    state: &AppState,
    name: &str,
    request: &QueryRequest,
) -> Result<BatchView, ApiError> {
    let (at, view) = find(state, name)?;
    let source = state.config.source_of(view);
    let resolved = Query::resolve(source, view, request)?;
    let as_of = resolved.as_of.expect("called for a request with as_of");
    let definition = &state.definitions[at.global];
    Ok(state
        .lake
        .view_as_of(source, view, definition, as_of)
        .await?)
}

/// Answers `request` on view `name` within `limits`: from `past` alone when the request asked
/// for a past version, else from the served (batch, speed) pair.
fn run(
    state: &AppState,
    name: &str,
    request: QueryRequest,
    past: Option<BatchView>,
    limits: &AnswerLimits,
) -> Result<Response, ApiError> {
    let serving = &state.config.serving;
    let (at, view) = find(state, name)?;
    let source = state.config.source_of(view);
    let ResolvedQuery {
        mut query, layer, ..
    } = Query::resolve(source, view, &request)?;
    // One row past the limit tells whether the answer was cut.
    let limit = query.limit.unwrap_or(serving.query_default_limit);
    query.limit = Some(limit + 1);
    let progress = state.speeds.served(at.source).progress();
    let (pair, folded) = match past {
        Some(batch) => (
            ViewPair::new(std::sync::Arc::new(batch), ViewState::new()),
            BTreeMap::new(),
        ),
        None => {
            let snapshot = read(state, at.source)?;
            let pair = match layer {
                Layer::Batch => snapshot.detach(at.index, |_| false),
                Layer::Merged | Layer::Speed => {
                    snapshot.detach(at.index, |(bucket, dims)| query.selects(bucket, dims))
                }
            };
            (pair, snapshot.folded().clone())
        }
    };
    if layer != Layer::Batch && state.rebuilding(at, pair.batch()) {
        return Err(ApiError::Rebuilding(view.name.clone()));
    }
    let lost = match layer {
        Layer::Batch => BTreeMap::new(),
        Layer::Merged | Layer::Speed => progress.uncovered(|p| pair.batch().next_offset(p)),
    };
    let parts: &[&ViewState] = match layer {
        Layer::Merged => &[&pair.batch().state, pair.speed()],
        Layer::Batch => &[&pair.batch().state],
        Layer::Speed => &[pair.speed()],
    };
    let mut rows = answer(source, view, parts, &query, limits)?;
    let truncated = rows.len() > limit;
    rows.truncate(limit);
    let rendered = Rows {
        rows: &rows,
        view,
        query: &query,
        timestamps: view
            .dimensions
            .iter()
            .map(|d| {
                source
                    .field(d)
                    .is_some_and(|f| f.kind == FieldType::Timestamp)
            })
            .collect(),
    };
    let body = serde_json::to_vec(&AnswerOut {
        view: &view.name,
        granularity: query.rollup.as_str(),
        tz: match query.rollup {
            Rollup::ZonedDays { zone, .. } => Some(zone.name()),
            _ => None,
        },
        rows: rendered,
        truncated,
        watermark: pair.batch().watermark.as_ref(),
        batch_version: pair.batch().version,
        speed_offsets: &folded,
        complete: lost.is_empty(),
        lost_offsets: (!lost.is_empty()).then(|| lost_json(&lost)),
    })?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// The body of an answer, serialised in one pass.
#[derive(Serialize)]
struct AnswerOut<'a> {
    view: &'a str,
    granularity: &'static str,
    /// The zone of day buckets, when asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    tz: Option<&'static str>,
    rows: Rows<'a>,
    /// Set when `limit` (or `serving.query_default_limit`) cut rows off the answer.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    truncated: bool,
    watermark: Option<&'a Watermark>,
    batch_version: Option<u64>,
    #[serde(serialize_with = "partition_keys")]
    speed_offsets: &'a BTreeMap<i32, i64>,
    /// False when offsets the answer should count were deleted from Kafka before the speed
    /// layer read them and no batch version covers them yet.
    complete: bool,
    /// Those offsets per partition, when there are any.
    #[serde(skip_serializing_if = "Option::is_none")]
    lost_offsets: Option<Json_>,
}

fn partition_keys<S: Serializer>(
    offsets: &&BTreeMap<i32, i64>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_map(offsets.iter().map(|(p, o)| (p.to_string(), o)))
}

/// Answer rows serialised straight from the query's rows, without an intermediate JSON tree.
struct Rows<'a> {
    rows: &'a [Row],
    view: &'a ViewDef,
    query: &'a Query,
    /// Per view dimension, whether it is a timestamp field (rendered as RFC 3339).
    timestamps: Vec<bool>,
}

impl Serialize for Rows<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.rows.len()))?;
        for row in self.rows {
            seq.serialize_element(&RowOut { row, of: self })?;
        }
        seq.end()
    }
}

struct RowOut<'a> {
    row: &'a Row,
    of: &'a Rows<'a>,
}

impl Serialize for RowOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Rows {
            view,
            query,
            timestamps,
            ..
        } = self.of;
        let mut map = serializer.serialize_map(None)?;
        match (self.row.bucket, query.rollup) {
            (Some(b), Rollup::ZonedDays { zone, .. }) => {
                map.serialize_entry("bucket", &format_micros_in(b, zone))?;
            }
            (Some(b), _) => map.serialize_entry("bucket", &format_micros(b))?,
            (None, _) => {}
        }
        for (d, value) in query.group_by.iter().zip(&self.row.dimensions) {
            let name = &view.dimensions[*d];
            match value {
                Dim::Null => map.serialize_entry(name, &())?,
                Dim::Bool(b) => map.serialize_entry(name, b)?,
                Dim::Int(i) if timestamps[*d] => map.serialize_entry(name, &format_micros(*i))?,
                Dim::Int(i) => map.serialize_entry(name, i)?,
                Dim::Float(bits) => map.serialize_entry(name, &f64::from_bits(*bits))?,
                Dim::Str(s) => map.serialize_entry(name, &**s)?,
            }
        }
        for (m, value) in query.measures.iter().zip(&self.row.values) {
            let name = &view.measures[*m].name;
            match value {
                Value::Null => map.serialize_entry(name, &())?,
                Value::Int(i) => map.serialize_entry(name, i)?,
                Value::Float(f) if f.is_finite() => map.serialize_entry(name, f)?,
                Value::Float(_) => map.serialize_entry(name, &())?,
                Value::Time(t) => map.serialize_entry(name, &format_micros(*t))?,
            }
        }
        map.end()
    }
}
