//! `/v1/views`: view definitions with their batch and speed status, and queries answered from
//! batch ⊕ speed (SPEC §6).
//!
//! A query takes the read lock of the shared state for its whole run, so it sees one (batch
//! version, speed state) pair per view even if a swap is waiting. Every answer carries its
//! consistency token: the batch watermark and the speed layer's consumed offsets.

use std::collections::{BTreeMap, HashMap};

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query as QueryParams, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use lambdaflow_common::query::{OrderKey, Query, Rollup, Row, Value, answer};
use lambdaflow_common::source::FieldType;
use lambdaflow_common::state::{Dim, ViewState};
use lambdaflow_common::timestamp::{format_micros, parse_rfc3339_micros};
use lambdaflow_common::view::{Granularity, ViewDef};
use lambdaflow_common::watermark::Watermark;
use lambdaflow_speed::lambda::{Lambda, ViewPair};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value as Json_, json};

use crate::http::AppState;
use crate::http::error::ApiError;

/// Most rows one answer may hold.
pub const MAX_LIMIT: usize = 100_000;

/// View routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/views", get(list))
        .route("/v1/views/{name}", get(one))
        .route("/v1/views/{name}/query", get(query_get).post(query_post))
}

fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::BadRequest {
        code,
        message: message.into(),
    }
}

fn find<'a>(state: &'a AppState, name: &str) -> Result<(usize, &'a ViewDef), ApiError> {
    state
        .config
        .views
        .iter()
        .enumerate()
        .find(|(_, v)| v.name == name)
        .ok_or_else(|| ApiError::NotFound(format!("no view `{name}`")))
}

fn read(state: &AppState) -> Result<std::sync::RwLockReadGuard<'_, Lambda>, ApiError> {
    let lambda = state.lambda.read().expect("not poisoned");
    if lambda.views.len() != state.config.views.len() {
        return Err(ApiError::Unavailable(
            "the speed layer is starting; retry in a moment".into(),
        ));
    }
    Ok(lambda)
}

fn offsets(map: &BTreeMap<i32, i64>) -> Json_ {
    map.iter()
        .map(|(p, o)| (p.to_string(), json!(o)))
        .collect::<Map<_, _>>()
        .into()
}

fn definition(view: &ViewDef) -> Json_ {
    json!({
        "name": view.name,
        "granularity": view.granularity.as_str(),
        "dimensions": view.dimensions,
        "filter": view.filter,
        "measures": view.measures.iter().map(|m| json!({"name": m.name, "agg": m.agg.as_str(), "field": m.field})).collect::<Vec<_>>(),
    })
}

fn status(view: &ViewDef, pair: &ViewPair, lambda: &Lambda) -> Json_ {
    let mut out = definition(view);
    let watermark = pair.batch.watermark.as_ref();
    let lag: Map<String, Json_> = lambda
        .consumed
        .iter()
        .map(|(p, o)| {
            let covered = watermark.map_or(-1, |w| w.next_offset(*p) - 1);
            (p.to_string(), json!((o - covered).max(0)))
        })
        .collect();
    out["batch_version"] = json!(pair.batch.version);
    out["watermark"] = json!(watermark);
    out["speed_offsets"] = offsets(&lambda.consumed);
    out["speed_lag_behind_batch"] = lag.into();
    out["rows"] = json!({"batch": pair.batch.state.len(), "speed": pair.speed.len()});
    let bytes = pair.speed.heap_bytes();
    out["speed_state_bytes"] = json!(bytes);
    out["speed_bytes_per_group"] = json!(bytes.checked_div(pair.speed.len()));
    out["caught_up"] = json!(lambda.caught_up());
    out
}

async fn list(State(state): State<AppState>) -> Result<Json<Json_>, ApiError> {
    let lambda = read(&state)?;
    let views: Vec<Json_> = state
        .config
        .views
        .iter()
        .zip(&lambda.views)
        .map(|(v, pair)| {
            let mut d = definition(v);
            d["watermark"] = json!(pair.batch.watermark);
            d
        })
        .collect();
    Ok(Json(json!({ "views": views })))
}

async fn one(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Json_>, ApiError> {
    let (i, view) = find(&state, &name)?;
    let lambda = read(&state)?;
    Ok(Json(status(view, &lambda.views[i], &lambda)))
}

/// The body of `POST /v1/views/{name}/query`; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    from: Option<String>,
    to: Option<String>,
    granularity: Option<String>,
    group_by: Option<Vec<String>>,
    filters: Option<HashMap<String, Vec<Json_>>>,
    measures: Option<Vec<String>>,
    order_by: Option<Vec<OrderBy>>,
    limit: Option<usize>,
    layer: Option<String>,
}

/// Which side of the merge an answer reads: both (the default and the lambda invariant's
/// answer), or one alone, to see where the batch/speed seam lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layer {
    Merged,
    Batch,
    Speed,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OrderBy {
    field: String,
    #[serde(default)]
    desc: bool,
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
    let QueryParams(q) = params.map_err(|e| bad("invalid_query", e.body_text()))?;
    let request = QueryRequest {
        from: q.from,
        to: q.to,
        granularity: q.granularity,
        group_by: list_param(q.group_by),
        measures: list_param(q.measures),
        limit: q.limit,
        layer: q.layer,
        ..QueryRequest::default()
    };
    run(&state, &name, request)
}

async fn query_post(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Json<QueryRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge {
                limit: state.config.serving.max_body_bytes,
            }
        } else {
            bad("invalid_query", e.body_text())
        }
    })?;
    run(&state, &name, request)
}

fn run(state: &AppState, name: &str, request: QueryRequest) -> Result<Response, ApiError> {
    let (i, view) = find(state, name)?;
    let (query, granularity, layer) = check(state, view, request)?;
    let lambda = read(state)?;
    let pair = &lambda.views[i];
    let parts: &[&ViewState] = match layer {
        Layer::Merged => &[&pair.batch.state, &pair.speed],
        Layer::Batch => &[&pair.batch.state],
        Layer::Speed => &[&pair.speed],
    };
    let rows = answer(&state.config.source, view, parts, &query);
    let rendered = Rows {
        rows: &rows,
        view,
        query: &query,
        timestamps: view
            .dimensions
            .iter()
            .map(|d| {
                state
                    .config
                    .source
                    .field(d)
                    .is_some_and(|f| f.kind == FieldType::Timestamp)
            })
            .collect(),
    };
    let body = serde_json::to_vec(&AnswerOut {
        view: &view.name,
        granularity,
        rows: rendered,
        watermark: pair.batch.watermark.as_ref(),
        batch_version: pair.batch.version,
        speed_offsets: &lambda.consumed,
    })
    .map_err(|e| ApiError::Internal(format!("rendering an answer: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// The body of an answer, serialised in one pass.
#[derive(Serialize)]
struct AnswerOut<'a> {
    view: &'a str,
    granularity: String,
    rows: Rows<'a>,
    watermark: Option<&'a Watermark>,
    batch_version: Option<u64>,
    #[serde(serialize_with = "partition_keys")]
    speed_offsets: &'a BTreeMap<i32, i64>,
}

fn partition_keys<S: Serializer>(
    offsets: &&BTreeMap<i32, i64>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_map(offsets.iter().map(|(p, o)| (p.to_string(), o)))
}

fn time(key: &str, text: Option<String>) -> Result<Option<i64>, ApiError> {
    text.map(|t| {
        parse_rfc3339_micros(&t).ok_or_else(|| {
            bad(
                "invalid_query",
                format!("`{key}` must be an RFC 3339 time with an offset, e.g. 2026-11-20T00:00:00Z; got `{t}`"),
            )
        })
    })
    .transpose()
}

fn dimension(view: &ViewDef, name: &str, key: &str) -> Result<usize, ApiError> {
    view.dimensions
        .iter()
        .position(|d| d == name)
        .ok_or_else(|| {
            bad(
                "unknown_dimension",
                format!(
                    "`{key}`: view `{}` has no dimension `{name}` (it has {:?})",
                    view.name, view.dimensions
                ),
            )
        })
}

fn check(
    state: &AppState,
    view: &ViewDef,
    r: QueryRequest,
) -> Result<(Query, String, Layer), ApiError> {
    let layer = match r.layer.as_deref() {
        None | Some("merged") => Layer::Merged,
        Some("batch") => Layer::Batch,
        Some("speed") => Layer::Speed,
        Some(other) => {
            return Err(bad(
                "invalid_query",
                format!("layer `{other}`: use merged, batch or speed"),
            ));
        }
    };
    let from = time("from", r.from)?;
    let to = time("to", r.to)?;
    if let (Some(f), Some(t)) = (from, to)
        && f >= t
    {
        return Err(bad("invalid_query", "`from` must be before `to`"));
    }
    let (rollup, granularity) = match r.granularity.as_deref() {
        None => (
            Rollup::Buckets(view.granularity),
            view.granularity.as_str().to_owned(),
        ),
        Some("all") => (Rollup::All, "all".to_owned()),
        Some(g) => {
            let parsed = match g {
                "minute" => Granularity::Minute,
                "hour" => Granularity::Hour,
                "day" => Granularity::Day,
                other => {
                    return Err(bad(
                        "invalid_granularity",
                        format!("granularity `{other}`: use minute, hour, day or all"),
                    ));
                }
            };
            if parsed < view.granularity {
                return Err(bad(
                    "invalid_granularity",
                    format!(
                        "view `{}` is kept by {}; ask for that or a coarser granularity",
                        view.name,
                        view.granularity.as_str()
                    ),
                ));
            }
            (Rollup::Buckets(parsed), g.to_owned())
        }
    };
    let group_by = r
        .group_by
        .unwrap_or_default()
        .iter()
        .map(|d| dimension(view, d, "group_by"))
        .collect::<Result<Vec<_>, _>>()?;
    let mut filters = Vec::new();
    for (name, values) in r.filters.unwrap_or_default() {
        let d = dimension(view, &name, "filters")?;
        let kind = state.config.source.field(&name).map(|f| f.kind);
        let values = values
            .iter()
            .map(|v| {
                dim_of(kind, v).ok_or_else(|| {
                    bad(
                        "invalid_filter",
                        format!("filter `{name}`: `{v}` is not a {kind:?} value").to_lowercase(),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        filters.push((d, values));
    }
    let measures = match r.measures {
        None => (0..view.measures.len()).collect(),
        Some(names) => names
            .iter()
            .map(|m| {
                view.measures
                    .iter()
                    .position(|x| &x.name == m)
                    .ok_or_else(|| {
                        bad(
                            "unknown_measure",
                            format!("view `{}` has no measure `{m}`", view.name),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    let mut order_by = Vec::new();
    for o in r.order_by.unwrap_or_default() {
        let key = if o.field == "bucket" {
            OrderKey::Bucket
        } else if let Some(i) = group_by.iter().position(|d| view.dimensions[*d] == o.field) {
            OrderKey::Dimension(i)
        } else if let Some(i) = measures
            .iter()
            .position(|m| view.measures[*m].name == o.field)
        {
            OrderKey::Measure(i)
        } else {
            return Err(bad(
                "invalid_order",
                format!(
                    "order_by `{}`: order by bucket, a grouped dimension or a selected measure",
                    o.field
                ),
            ));
        };
        order_by.push((key, o.desc));
    }
    if r.limit.is_some_and(|l| l > MAX_LIMIT) {
        return Err(bad(
            "invalid_query",
            format!("limit is at most {MAX_LIMIT}"),
        ));
    }
    Ok((
        Query {
            from,
            to,
            rollup,
            group_by,
            filters,
            measures,
            order_by,
            limit: r.limit,
        },
        granularity,
        layer,
    ))
}

fn dim_of(kind: Option<FieldType>, v: &Json_) -> Option<Dim> {
    Some(match (kind?, v) {
        (_, Json_::Null) => Dim::Null,
        (FieldType::String, Json_::String(s)) => Dim::Str(s.as_str().into()),
        (FieldType::Int, Json_::Number(n)) => Dim::Int(n.as_i64()?),
        (FieldType::Float, Json_::Number(n)) => {
            let f = n.as_f64()?;
            Dim::Float(if f == 0.0 { 0.0f64 } else { f }.to_bits())
        }
        (FieldType::Bool, Json_::Bool(b)) => Dim::Bool(*b),
        (FieldType::Timestamp, Json_::String(s)) => Dim::Int(parse_rfc3339_micros(s)?),
        _ => return None,
    })
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
        if let Some(b) = self.row.bucket {
            map.serialize_entry("bucket", &format_micros(b))?;
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
