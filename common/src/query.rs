//! View queries: resolving what a client asked ([`QueryRequest`]) against a view into a checked
//! [`Query`], and answering it from states: select groups by time and dimension values, merge
//! the parts (batch ⊕ speed) per group, roll buckets up to the asked granularity and groups up
//! to the asked dimensions, finalise the measures, order and limit.
//!
//! Pure: the request is plain data however it arrived (a JSON body, a query string), a refusal
//! is a [`QueryError`] with the API's code, the parts are [`ViewState`]s however they were
//! obtained, and the answer is a list of [`Row`]s for the HTTP layer to render.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono_tz::Tz;
use serde::Deserialize;
use serde_json::Value as Json;

use crate::source::{FieldType, SourceConfig};
use crate::state::{Dim, Num, State, ViewState};
use crate::timestamp::{parse_rfc3339_micros, zoned_day_start};
use crate::view::{AggKind, Granularity, ViewDef};

/// Most rows one answer may hold.
pub const MAX_LIMIT: usize = 100_000;

/// The bucket width of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rollup {
    /// Buckets of this granularity (the view's or a coarser one), UTC-aligned.
    Buckets(Granularity),
    /// Days from midnight to midnight in `zone`, rolled up from the view's buckets of `kept`
    /// width; a bucket that a local midnight cuts is refused, never split.
    ZonedDays {
        /// The IANA time zone.
        zone: Tz,
        /// The view's granularity.
        kept: Granularity,
    },
    /// One bucket over all time: rows carry no bucket.
    All,
}

impl Rollup {
    /// The API spelling of the answer's bucket width: a granularity, or `all`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Buckets(g) => g.as_str(),
            Self::ZonedDays { .. } => "day",
            Self::All => "all",
        }
    }
}

/// What to order rows by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderKey {
    /// The bucket start.
    Bucket,
    /// The `i`-th grouped dimension.
    Dimension(usize),
    /// The `i`-th selected measure.
    Measure(usize),
}

/// A condition on one dimension's value: one of some values, none of others, within bounds.
/// Every part given must hold; null is within no bound.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// The value must be one of these.
    pub one_of: Option<Vec<Dim>>,
    /// The value must be none of these.
    pub none_of: Vec<Dim>,
    /// Lower bound, and whether it is included.
    pub low: Option<(Dim, bool)>,
    /// Upper bound, and whether it is included.
    pub high: Option<(Dim, bool)>,
}

impl Filter {
    /// The filter that accepts exactly `values`.
    pub fn one_of(values: Vec<Dim>) -> Self {
        Self {
            one_of: Some(values),
            ..Self::default()
        }
    }

    /// Whether `value` meets the condition.
    pub fn accepts(&self, value: &Dim) -> bool {
        let within = |bound: &Option<(Dim, bool)>, above: bool| match bound {
            None => true,
            Some((b, inclusive)) => match dim_order(value, b) {
                None => false,
                Some(Ordering::Equal) => *inclusive,
                Some(o) => (o == Ordering::Greater) == above,
            },
        };
        self.one_of.as_ref().is_none_or(|v| v.contains(value))
            && !self.none_of.contains(value)
            && within(&self.low, true)
            && within(&self.high, false)
    }
}

/// The order of two values of one dimension; `None` for null or values of different types.
fn dim_order(a: &Dim, b: &Dim) -> Option<Ordering> {
    match (a, b) {
        (Dim::Int(a), Dim::Int(b)) => Some(a.cmp(b)),
        (Dim::Float(a), Dim::Float(b)) => f64::from_bits(*a).partial_cmp(&f64::from_bits(*b)),
        (Dim::Str(a), Dim::Str(b)) => Some(a.cmp(b)),
        (Dim::Bool(a), Dim::Bool(b)) => Some(a.cmp(b)),
        _ => None,
    }
}

/// A filter as asked: a list of accepted values, or an object of conditions.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum FilterRequest {
    /// The value must be one of these (`null` for null).
    Values(Vec<Json>),
    /// `{"in": [..], "not": [..], "gt"|"gte": v, "lt"|"lte": v}`, every key optional.
    Condition(FilterCondition),
}

/// The object form of a [`FilterRequest`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterCondition {
    /// Accepted values.
    #[serde(rename = "in")]
    pub one_of: Option<Vec<Json>>,
    /// Refused values.
    pub not: Option<Vec<Json>>,
    /// Exclusive lower bound.
    pub gt: Option<Json>,
    /// Inclusive lower bound.
    pub gte: Option<Json>,
    /// Exclusive upper bound.
    pub lt: Option<Json>,
    /// Inclusive upper bound.
    pub lte: Option<Json>,
}

/// A checked query over one view.
#[derive(Debug, Clone)]
pub struct Query {
    /// First bucket start included (epoch microseconds).
    pub from: Option<i64>,
    /// First bucket start excluded.
    pub to: Option<i64>,
    /// Bucket width of the answer.
    pub rollup: Rollup,
    /// Indexes into the view's dimensions to group by.
    pub group_by: Vec<usize>,
    /// Dimension index → the condition its value must meet (a group matches if every one
    /// holds).
    pub filters: Vec<(usize, Filter)>,
    /// Indexes into the view's measures to compute.
    pub measures: Vec<usize>,
    /// Order; bucket then grouped dimensions when empty. `true` means descending.
    pub order_by: Vec<(OrderKey, bool)>,
    /// Most rows returned.
    pub limit: Option<usize>,
}

/// What a client asks of a view, every key optional: the body of
/// `POST /v1/views/{name}/query`, or its query-string form with lists split.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// First time included, RFC 3339 with an offset.
    pub from: Option<String>,
    /// First time excluded, RFC 3339 with an offset.
    pub to: Option<String>,
    /// `minute`, `hour`, `day` (no finer than the view's) or `all`; the view's when absent.
    pub granularity: Option<String>,
    /// Dimensions to group by; none when absent.
    pub group_by: Option<Vec<String>>,
    /// Dimension → accepted values as JSON values of the dimension's type, or conditions
    /// ([`FilterRequest`]).
    pub filters: Option<HashMap<String, FilterRequest>>,
    /// Measures to compute; all when absent.
    pub measures: Option<Vec<String>>,
    /// Order keys: `bucket`, a grouped dimension or a selected measure.
    pub order_by: Option<Vec<OrderBy>>,
    /// Most rows returned, at most [`MAX_LIMIT`].
    pub limit: Option<usize>,
    /// `merged` (the default), `batch` or `speed`.
    pub layer: Option<String>,
    /// A batch version of the view to answer from alone, instead of the latest batch ⊕ speed.
    pub as_of: Option<AsOfRequest>,
    /// The IANA time zone whose midnights start day buckets (UTC's when absent).
    pub tz: Option<String>,
}

/// `as_of` as asked: `{"version": N}`, or an RFC 3339 time (the last version committed at or
/// before it).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum AsOfRequest {
    /// A view table version.
    Version(VersionRef),
    /// A time, RFC 3339 with an offset.
    Time(String),
}

impl AsOfRequest {
    /// The query-string form: digits are a version, anything else a time.
    pub fn from_param(text: &str) -> Self {
        match text.parse() {
            Ok(version) if text.bytes().all(|b| b.is_ascii_digit()) => {
                Self::Version(VersionRef { version })
            }
            _ => Self::Time(text.to_owned()),
        }
    }
}

/// `{"version": N}` of [`AsOfRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionRef {
    /// The view table version.
    pub version: u64,
}

/// Which batch version a time-travel query reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    /// That view table version.
    Version(u64),
    /// The last version committed at or before this time (microseconds since the epoch).
    Time(i64),
}

/// One order key of a [`QueryRequest`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderBy {
    /// `bucket`, a grouped dimension or a selected measure.
    pub field: String,
    /// Descending.
    #[serde(default)]
    pub desc: bool,
}

/// Which side of the merge an answer reads: both (the default and the lambda invariant's
/// answer), or one alone, to see where the batch/speed seam lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// Batch ⊕ speed.
    Merged,
    /// The batch view alone.
    Batch,
    /// The speed layer alone.
    Speed,
}

/// A request resolved against its view: the checked query and the layer it reads.
#[derive(Debug, Clone)]
pub struct ResolvedQuery {
    /// What to compute.
    pub query: Query,
    /// Which parts to compute it over.
    pub layer: Layer,
    /// The batch version to read instead of the latest; the layer is then [`Layer::Batch`].
    pub as_of: Option<AsOf>,
}

/// Why a request cannot be resolved against a view. [`QueryError::code`] is the API's
/// machine-readable code; the message says what was wrong and what to ask instead.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueryError {
    /// `layer` is not one of the three.
    #[error("layer `{layer}`: use merged, batch or speed")]
    UnknownLayer {
        /// What was asked.
        layer: String,
    },
    /// `from` or `to` is not an RFC 3339 time.
    #[error(
        "`{key}` must be an RFC 3339 time with an offset, e.g. 2026-11-20T00:00:00Z; got `{text}`"
    )]
    InvalidTime {
        /// `from` or `to`.
        key: &'static str,
        /// What was given.
        text: String,
    },
    /// `from` is not before `to`.
    #[error("`from` must be before `to`")]
    EmptyRange,
    /// `as_of` with a layer other than batch: a past version has no speed side.
    #[error(
        "`as_of` answers from that batch version alone; drop `layer` or set it to batch (got `{layer}`)"
    )]
    AsOfLayer {
        /// The layer asked.
        layer: String,
    },
    /// `granularity` is not one of the spellings.
    #[error("granularity `{granularity}`: use minute, hour, day or all")]
    UnknownGranularity {
        /// What was asked.
        granularity: String,
    },
    /// `granularity` is finer than the view keeps.
    #[error(
        "view `{view}` is kept by {}; ask for that or a coarser granularity",
        .kept.as_str()
    )]
    FinerThanView {
        /// The view.
        view: String,
        /// The view's granularity.
        kept: Granularity,
    },
    /// `tz` is not an IANA time zone name.
    #[error("tz `{tz}` is not an IANA time zone name such as `America/New_York` or `UTC`")]
    UnknownZone {
        /// What was asked.
        tz: String,
    },
    /// `tz` with buckets it does not move.
    #[error(
        "tz sets where day buckets start: ask for granularity day (minute and hour buckets stay UTC-aligned; all has no buckets)"
    )]
    ZoneWithoutDays,
    /// The zone's offset today is not a whole number of the view's buckets.
    #[error(
        "view `{view}` is kept by {}: {tz} is UTC{offset}, so its midnights fall inside the view's buckets; ask for UTC days or a view kept by a finer granularity",
        .kept.as_str()
    )]
    ZoneOffsetUnaligned {
        /// The view.
        view: String,
        /// The zone asked.
        tz: String,
        /// The view's granularity.
        kept: Granularity,
        /// The zone's offset, as `+05:45`.
        offset: String,
    },
    /// A local midnight of `tz` falls inside one of the view's buckets.
    #[error(
        "view `{view}` is kept by {}: a midnight in {tz} falls inside its bucket at {}, which cannot be split between two days; ask for UTC days or a view kept by a finer granularity",
        .kept.as_str(),
        crate::timestamp::format_micros(*.bucket)
    )]
    ZoneSplitsBucket {
        /// The view.
        view: String,
        /// The zone asked.
        tz: String,
        /// The view's granularity.
        kept: Granularity,
        /// The first bucket found cut.
        bucket: i64,
    },
    /// `group_by` or `filters` names something that is not a dimension of the view.
    #[error("`{key}`: view `{view}` has no dimension `{dimension}` (it has {dimensions:?})")]
    UnknownDimension {
        /// `group_by` or `filters`.
        key: &'static str,
        /// The view.
        view: String,
        /// What was named.
        dimension: String,
        /// The view's dimensions.
        dimensions: Vec<String>,
    },
    /// A filter value is not of its dimension's type.
    #[error("{}", filter_value_message(.dimension, .value, .kind))]
    InvalidFilterValue {
        /// The dimension.
        dimension: String,
        /// The value given.
        value: Json,
        /// The dimension's declared type.
        kind: Option<FieldType>,
    },
    /// A filter's condition is malformed.
    #[error("filter `{dimension}`: {message}")]
    InvalidFilter {
        /// The dimension.
        dimension: String,
        /// What was wrong.
        message: String,
    },
    /// `measures` names something that is not a measure of the view.
    #[error("view `{view}` has no measure `{measure}`")]
    UnknownMeasure {
        /// The view.
        view: String,
        /// What was named.
        measure: String,
    },
    /// `order_by` names neither the bucket, a grouped dimension nor a selected measure.
    #[error("order_by `{field}`: order by bucket, a grouped dimension or a selected measure")]
    InvalidOrder {
        /// What was named.
        field: String,
    },
    /// `limit` is over [`MAX_LIMIT`].
    #[error("limit is at most {MAX_LIMIT}")]
    LimitTooLarge {
        /// What was asked.
        limit: usize,
    },
    /// `group_by` or `measures` names something twice.
    #[error("`{key}` names `{name}` twice")]
    Repeated {
        /// `group_by` or `measures`.
        key: &'static str,
        /// The name repeated.
        name: String,
    },
    /// The answer would hold more groups than allowed.
    #[error(
        "the answer has more than {limit} groups; narrow the time range, group by fewer dimensions or use a coarser granularity (serving.query_max_groups)"
    )]
    TooManyGroups {
        /// The limit.
        limit: usize,
    },
    /// The answer took longer than allowed.
    #[error("the query ran longer than {} and was stopped (serving.query_timeout)", humantime::format_duration(*.after))]
    Timeout {
        /// The limit.
        after: std::time::Duration,
    },
}

/// The message of [`QueryError::InvalidFilterValue`]: lower case throughout, as the API has
/// always said it.
fn filter_value_message(dimension: &str, value: &Json, kind: &Option<FieldType>) -> String {
    format!("filter `{dimension}`: `{value}` is not a {kind:?} value").to_lowercase()
}

impl QueryError {
    /// The API's machine-readable code for this refusal.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownLayer { .. }
            | Self::InvalidTime { .. }
            | Self::EmptyRange
            | Self::AsOfLayer { .. }
            | Self::LimitTooLarge { .. } => "invalid_query",
            Self::UnknownGranularity { .. } | Self::FinerThanView { .. } => "invalid_granularity",
            Self::UnknownZone { .. }
            | Self::ZoneWithoutDays
            | Self::ZoneOffsetUnaligned { .. }
            | Self::ZoneSplitsBucket { .. } => "invalid_tz",
            Self::UnknownDimension { .. } => "unknown_dimension",
            Self::InvalidFilterValue { .. } | Self::InvalidFilter { .. } => "invalid_filter",
            Self::UnknownMeasure { .. } => "unknown_measure",
            Self::InvalidOrder { .. } => "invalid_order",
            Self::Repeated { .. } => "repeated_name",
            Self::TooManyGroups { .. } => "too_many_groups",
            Self::Timeout { .. } => "query_timeout",
        }
    }
}

impl Query {
    /// Every group of `view` at its own granularity with every measure, in bucket then
    /// dimension order: the view's whole state as rows.
    pub fn whole(view: &ViewDef) -> Self {
        Self {
            from: None,
            to: None,
            rollup: Rollup::Buckets(view.granularity),
            group_by: (0..view.dimensions.len()).collect(),
            filters: Vec::new(),
            measures: (0..view.measures.len()).collect(),
            order_by: Vec::new(),
            limit: None,
        }
    }

    /// Whether the group of `bucket` and `dims` (a view's group key) lies in the query's time
    /// range and passes its filters.
    pub fn selects(&self, bucket: &i64, dims: &[Dim]) -> bool {
        !(self.from.is_some_and(|f| *bucket < f) || self.to.is_some_and(|t| *bucket >= t))
            && self
                .filters
                .iter()
                .all(|(d, filter)| filter.accepts(&dims[*d]))
    }

    /// Resolves `request` against `view` of `source`: parses its times, granularity and filter
    /// values, and turns the names it uses into indexes of the view's dimensions and measures.
    /// Checks happen in the order of the request's keys: layer, times, granularity, group_by,
    /// filters, measures, order_by, limit, as_of.
    pub fn resolve(
        source: &SourceConfig,
        view: &ViewDef,
        request: &QueryRequest,
    ) -> Result<ResolvedQuery, QueryError> {
        let layer = match request.layer.as_deref() {
            None | Some("merged") => Layer::Merged,
            Some("batch") => Layer::Batch,
            Some("speed") => Layer::Speed,
            Some(other) => {
                return Err(QueryError::UnknownLayer {
                    layer: other.to_owned(),
                });
            }
        };
        let from = time("from", request.from.as_deref())?;
        let to = time("to", request.to.as_deref())?;
        if let (Some(f), Some(t)) = (from, to)
            && f >= t
        {
            return Err(QueryError::EmptyRange);
        }
        let rollup = match request.granularity.as_deref() {
            None => Rollup::Buckets(view.granularity),
            Some("all") => Rollup::All,
            Some(g) => {
                let parsed: Granularity =
                    g.parse().map_err(|()| QueryError::UnknownGranularity {
                        granularity: g.to_owned(),
                    })?;
                if parsed < view.granularity {
                    return Err(QueryError::FinerThanView {
                        view: view.name.clone(),
                        kept: view.granularity,
                    });
                }
                Rollup::Buckets(parsed)
            }
        };
        let rollup = match (rollup, request.tz.as_deref()) {
            (rollup, None) => rollup,
            (Rollup::Buckets(Granularity::Day), Some(name)) => {
                let zone: Tz = name.parse().map_err(|_| QueryError::UnknownZone {
                    tz: name.to_owned(),
                })?;
                check_zone_offsets(view, zone)?;
                Rollup::ZonedDays {
                    zone,
                    kept: view.granularity,
                }
            }
            (_, Some(name)) => {
                name.parse::<Tz>().map_err(|_| QueryError::UnknownZone {
                    tz: name.to_owned(),
                })?;
                return Err(QueryError::ZoneWithoutDays);
            }
        };
        let group_by = request
            .group_by
            .iter()
            .flatten()
            .map(|d| dimension(view, d, "group_by"))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(i) = first_repeat(&group_by) {
            return Err(QueryError::Repeated {
                key: "group_by",
                name: view.dimensions[group_by[i]].clone(),
            });
        }
        let mut filters = Vec::new();
        for (name, asked) in request.filters.iter().flatten() {
            let d = dimension(view, name, "filters")?;
            let kind = source.field(name).map(|f| f.kind);
            let value = |v: &Json| {
                dim_of(kind, v).ok_or_else(|| QueryError::InvalidFilterValue {
                    dimension: name.clone(),
                    value: v.clone(),
                    kind,
                })
            };
            let values = |list: &[Json]| list.iter().map(value).collect::<Result<Vec<_>, _>>();
            let bound = |exclusive: &Option<Json>, inclusive: &Option<Json>| {
                let (v, included) = match (exclusive, inclusive) {
                    (None, None) => return Ok(None),
                    (Some(v), None) => (v, false),
                    (None, Some(v)) => (v, true),
                    (Some(_), Some(_)) => {
                        return Err(QueryError::InvalidFilter {
                            dimension: name.clone(),
                            message: "give one lower bound and one upper bound at most (gt or gte, lt or lte)".into(),
                        });
                    }
                };
                // `null` reads as an absent bound, as everywhere in a request.
                Ok(Some((value(v)?, included)))
            };
            let filter = match asked {
                FilterRequest::Values(list) => Filter::one_of(values(list)?),
                FilterRequest::Condition(c) => Filter {
                    one_of: c.one_of.as_deref().map(values).transpose()?,
                    none_of: values(c.not.as_deref().unwrap_or_default())?,
                    low: bound(&c.gt, &c.gte)?,
                    high: bound(&c.lt, &c.lte)?,
                },
            };
            filters.push((d, filter));
        }
        let measures = match &request.measures {
            None => (0..view.measures.len()).collect(),
            Some(names) => names
                .iter()
                .map(|m| {
                    view.measures
                        .iter()
                        .position(|x| &x.name == m)
                        .ok_or_else(|| QueryError::UnknownMeasure {
                            view: view.name.clone(),
                            measure: m.clone(),
                        })
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        if let Some(i) = first_repeat(&measures) {
            return Err(QueryError::Repeated {
                key: "measures",
                name: view.measures[measures[i]].name.clone(),
            });
        }
        let mut order_by = Vec::new();
        for o in request.order_by.iter().flatten() {
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
                return Err(QueryError::InvalidOrder {
                    field: o.field.clone(),
                });
            };
            order_by.push((key, o.desc));
        }
        if let Some(limit) = request.limit.filter(|l| *l > MAX_LIMIT) {
            return Err(QueryError::LimitTooLarge { limit });
        }
        let as_of = match &request.as_of {
            None => None,
            Some(_) if layer != Layer::Batch && request.layer.is_some() => {
                return Err(QueryError::AsOfLayer {
                    layer: request.layer.clone().unwrap_or_default(),
                });
            }
            Some(AsOfRequest::Version(v)) => Some(AsOf::Version(v.version)),
            Some(AsOfRequest::Time(text)) => time("as_of", Some(text))?.map(AsOf::Time),
        };
        let layer = if as_of.is_some() { Layer::Batch } else { layer };
        Ok(ResolvedQuery {
            query: Query {
                from,
                to,
                rollup,
                group_by,
                filters,
                measures,
                order_by,
                limit: request.limit,
            },
            layer,
            as_of,
        })
    }
}

fn time(key: &'static str, text: Option<&str>) -> Result<Option<i64>, QueryError> {
    text.map(|t| {
        parse_rfc3339_micros(t).ok_or_else(|| QueryError::InvalidTime {
            key,
            text: t.to_owned(),
        })
    })
    .transpose()
}

/// The position of the first index that already came before it.
fn first_repeat(indexes: &[usize]) -> Option<usize> {
    let mut seen = std::collections::HashSet::with_capacity(indexes.len());
    indexes.iter().position(|i| !seen.insert(*i))
}

fn dimension(view: &ViewDef, name: &str, key: &'static str) -> Result<usize, QueryError> {
    view.dimensions
        .iter()
        .position(|d| d == name)
        .ok_or_else(|| QueryError::UnknownDimension {
            key,
            view: view.name.clone(),
            dimension: name.to_owned(),
            dimensions: view.dimensions.clone(),
        })
}

/// A filter value as the dimension value it matches, if it is of the dimension's type.
fn dim_of(kind: Option<FieldType>, v: &Json) -> Option<Dim> {
    Some(match (kind?, v) {
        (_, Json::Null) => Dim::Null,
        (FieldType::String, Json::String(s)) => Dim::Str(s.as_str().into()),
        (FieldType::Int, Json::Number(n)) => Dim::Int(n.as_i64()?),
        (FieldType::Float, Json::Number(n)) => {
            let f = n.as_f64()?;
            Dim::Float(if f == 0.0 { 0.0f64 } else { f }.to_bits())
        }
        (FieldType::Bool, Json::Bool(b)) => Dim::Bool(*b),
        (FieldType::Timestamp, Json::String(s)) => Dim::Int(parse_rfc3339_micros(s)?),
        _ => return None,
    })
}

/// A final measure value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// No value (e.g. the sum of only nulls).
    Null,
    /// Counts, integer sums and extremes, estimates.
    Int(i64),
    /// Float sums, extremes and averages.
    Float(f64),
    /// Extremes of timestamp fields (epoch microseconds).
    Time(i64),
}

impl Value {
    fn cmp(&self, other: &Value) -> Ordering {
        let key = |v: &Value| match v {
            Value::Null => None,
            Value::Int(i) | Value::Time(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
        };
        match (key(self), key(other)) {
            (Some(a), Some(b)) => a.total_cmp(&b),
            (a, b) => b.is_none().cmp(&a.is_none()).reverse(),
        }
    }
}

/// One answer row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Bucket start, absent for [`Rollup::All`].
    pub bucket: Option<i64>,
    /// Values of the grouped dimensions, in `group_by` order.
    pub dimensions: Vec<Dim>,
    /// Values of the selected measures, in `measures` order.
    pub values: Vec<Value>,
}

/// A rolled-up bucket and the grouped dimension values, borrowed from the parts.
pub(crate) type AnswerKey<'a> = (Option<i64>, Vec<&'a Dim>);

/// How much work an answer may do.
#[derive(Debug, Clone, Copy)]
pub struct AnswerLimits {
    /// Most groups the answer may build.
    pub max_groups: usize,
    /// When the answer must be done, with the time limit it stands for.
    pub deadline: Option<(Instant, Duration)>,
}

impl AnswerLimits {
    /// No limit: for answers the process asks of itself.
    pub const NONE: Self = Self {
        max_groups: usize::MAX,
        deadline: None,
    };

    /// Fails once past the deadline.
    fn check_time(&self) -> Result<(), QueryError> {
        match self.deadline {
            Some((at, after)) if Instant::now() >= at => Err(QueryError::Timeout { after }),
            _ => Ok(()),
        }
    }
}

/// Groups of the parts of `view` selected by `query`, rolled up to its buckets and dimensions,
/// with the states of its measures merged; refused past `limits`.
pub(crate) fn merge<'a>(
    view: &ViewDef,
    parts: &[&'a ViewState],
    query: &Query,
    limits: &AnswerLimits,
) -> Result<HashMap<AnswerKey<'a>, Vec<Cow<'a, State>>>, QueryError> {
    // Keys and states borrow from the parts; a state is copied only when a second part (or a
    // second group rolled into the same key) has to be merged into it.
    let mut groups: HashMap<AnswerKey<'_>, Vec<Cow<'_, State>>> = HashMap::new();
    // Bucket start → the start of its zoned day: many groups share a bucket.
    let mut days: HashMap<i64, i64> = HashMap::new();
    for part in parts {
        for (seen, ((bucket, dims), states)) in part.groups().enumerate() {
            if seen % 4096 == 4095 {
                limits.check_time()?;
            }
            if !query.selects(bucket, dims) {
                continue;
            }
            let rolled = match query.rollup {
                Rollup::Buckets(g) => Some(g.truncate(*bucket)),
                Rollup::ZonedDays { zone, kept } => Some(match days.get(bucket) {
                    Some(day) => *day,
                    None => {
                        let day = zoned_day(*bucket, zone, kept, view)?;
                        days.insert(*bucket, day);
                        day
                    }
                }),
                Rollup::All => None,
            };
            let key = (rolled, query.group_by.iter().map(|d| &dims[*d]).collect());
            match groups.get_mut(&key) {
                Some(merged) => {
                    for (mine, m) in merged.iter_mut().zip(&query.measures) {
                        mine.to_mut().merge(&states[*m]);
                    }
                }
                None => {
                    if groups.len() >= limits.max_groups {
                        return Err(QueryError::TooManyGroups {
                            limit: limits.max_groups,
                        });
                    }
                    groups.insert(
                        key,
                        query
                            .measures
                            .iter()
                            .map(|m| Cow::Borrowed(&states[*m]))
                            .collect(),
                    );
                }
            }
        }
    }
    Ok(groups)
}

/// Refuses a zone whose offset, in this half-year or the next, puts its midnights inside the
/// buckets of `view` (Kathmandu's +05:45 for an hourly view, any offset for a daily one), the
/// same whatever data the view holds. Older offsets are checked bucket by bucket as answers
/// meet them ([`zoned_day`]).
fn check_zone_offsets(view: &ViewDef, zone: Tz) -> Result<(), QueryError> {
    use chrono::{Offset, TimeZone};
    let now = chrono::Utc::now().naive_utc();
    for at in [now, now + chrono::Duration::days(182)] {
        let seconds = zone.offset_from_utc_datetime(&at).fix().local_minus_utc();
        if i64::from(seconds) * 1_000_000 % view.granularity.micros() != 0 {
            let sign = if seconds < 0 { '-' } else { '+' };
            let minutes = seconds.unsigned_abs() / 60;
            return Err(QueryError::ZoneOffsetUnaligned {
                view: view.name.clone(),
                tz: zone.name().to_owned(),
                kept: view.granularity,
                offset: format!("{sign}{:02}:{:02}", minutes / 60, minutes % 60),
            });
        }
    }
    Ok(())
}

/// The start of the day in `zone` that holds the whole bucket of `kept` width starting at
/// `bucket`; refused when a midnight of `zone` falls inside it.
fn zoned_day(bucket: i64, zone: Tz, kept: Granularity, view: &ViewDef) -> Result<i64, QueryError> {
    let last = bucket.saturating_add(kept.micros() - 1);
    match (zoned_day_start(bucket, zone), zoned_day_start(last, zone)) {
        (Some(first), Some(end)) if first == end => Ok(first),
        _ => Err(QueryError::ZoneSplitsBucket {
            view: view.name.clone(),
            tz: zone.name().to_owned(),
            kept,
            bucket,
        }),
    }
}

/// Answers `query` over the merge of `parts`, within `limits`.
pub fn answer(
    source: &SourceConfig,
    view: &ViewDef,
    parts: &[&ViewState],
    query: &Query,
    limits: &AnswerLimits,
) -> Result<Vec<Row>, QueryError> {
    let groups = merge(view, parts, query, limits)?;
    limits.check_time()?;
    let mut rows: Vec<Row> = groups
        .into_iter()
        .map(|((bucket, dimensions), states)| Row {
            bucket,
            dimensions: dimensions.into_iter().cloned().collect(),
            values: states
                .iter()
                .zip(&query.measures)
                .map(|(s, m)| finalise(source, view, *m, s))
                .collect(),
        })
        .collect();
    let compare = |a: &Row, b: &Row| -> Ordering {
        if query.order_by.is_empty() {
            return a
                .bucket
                .cmp(&b.bucket)
                .then_with(|| a.dimensions.cmp(&b.dimensions));
        }
        for (key, desc) in &query.order_by {
            let o = match key {
                OrderKey::Bucket => a.bucket.cmp(&b.bucket),
                OrderKey::Dimension(i) => a.dimensions[*i].cmp(&b.dimensions[*i]),
                OrderKey::Measure(i) => a.values[*i].cmp(&b.values[*i]),
            };
            let o = if *desc { o.reverse() } else { o };
            if o != Ordering::Equal {
                return o;
            }
        }
        a.bucket
            .cmp(&b.bucket)
            .then_with(|| a.dimensions.cmp(&b.dimensions))
    };
    rows.sort_by(compare);
    if let Some(limit) = query.limit {
        rows.truncate(limit);
    }
    Ok(rows)
}

/// The value of measure `m` of `view` from its state.
pub fn finalise(source: &SourceConfig, view: &ViewDef, m: usize, state: &State) -> Value {
    let measure = &view.measures[m];
    let timestamp = measure
        .field
        .as_deref()
        .and_then(|f| source.field(f))
        .is_some_and(|f| f.kind == FieldType::Timestamp);
    let number = |n: Option<Num>| match n {
        None => Value::Null,
        Some(Num::Int(i)) if timestamp => Value::Time(i),
        Some(Num::Int(i)) => Value::Int(i),
        Some(Num::Float(f)) => Value::Float(f),
    };
    match (measure.agg, state) {
        (AggKind::Count, State::Count(n)) => Value::Int(*n),
        (AggKind::Sum, State::Sum(s)) => number(*s),
        (AggKind::Min, State::Min(s)) | (AggKind::Max, State::Max(s)) => number(*s),
        (
            AggKind::Avg,
            State::Avg {
                sum: Some(s),
                count,
            },
        ) if *count > 0 => Value::Float(s / *count as f64),
        (AggKind::Avg, State::Avg { .. }) => Value::Null,
        (AggKind::ApproxDistinct, State::Distinct(s)) => Value::Int(s.estimate() as i64),
        (agg, state) => panic!("state {state:?} does not belong to a {agg:?} measure"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::Config;

    /// Resolves the JSON `request` against the demo's `sales_by_country` (hourly, by country).
    fn resolve(request: Json) -> Result<ResolvedQuery, QueryError> {
        let config = Config::shop();
        let request: QueryRequest = serde_json::from_value(request).unwrap();
        Query::resolve(config.source(), &config.views[0], &request)
    }

    fn refusal(request: Json) -> (&'static str, String) {
        let error = resolve(request).unwrap_err();
        (error.code(), error.to_string())
    }

    /// Folds shop `events` (JSON) into view `index` of the shop config, filters aside.
    fn folded(index: usize, events: &[Json]) -> (Config, ViewState) {
        let config = Config::shop();
        let source = config.source();
        let validator = crate::validate::Validator::new(source);
        let now = parse_rfc3339_micros("2025-11-03T12:00:00Z").unwrap();
        let mut builder = validator.batch_builder("events", now);
        for (offset, event) in events.iter().enumerate() {
            let at = crate::validate::Coordinates {
                partition: 0,
                offset: offset as i64,
            };
            builder
                .push(Some(&serde_json::to_vec(event).unwrap()), at)
                .unwrap();
        }
        let out = builder.finish();
        let all = arrow::array::BooleanArray::from(vec![true; out.events.num_rows()]);
        let mut state = ViewState::new();
        state
            .fold(source, &config.views[index], &out.events, &all)
            .unwrap();
        (config, state)
    }

    fn shop_event(id: usize, at: &str) -> Json {
        json!({"event_id": format!("e{id}"), "event_time": at, "type": "purchase",
               "user_id": "u", "country": "KR", "amount": 1.0})
    }

    /// (bucket, orders) per row of `request` over view `index` holding `events`.
    fn days(index: usize, events: &[&str], request: Json) -> Result<Vec<(i64, i64)>, QueryError> {
        let events: Vec<Json> = events
            .iter()
            .enumerate()
            .map(|(i, at)| shop_event(i, at))
            .collect();
        let (config, state) = folded(index, &events);
        let view = &config.views[index];
        let request: QueryRequest = serde_json::from_value(request).unwrap();
        let query = Query::resolve(config.source(), view, &request)?.query;
        let rows = answer(
            config.source(),
            view,
            &[&state],
            &query,
            &AnswerLimits::NONE,
        )?;
        Ok(rows
            .into_iter()
            .map(|r| match r.values[..] {
                [Value::Int(n)] => (r.bucket.unwrap(), n),
                _ => panic!("{r:?}"),
            })
            .collect())
    }

    #[test]
    fn day_buckets_start_at_midnight_in_the_zone_asked() {
        let at = |t: &str| parse_rfc3339_micros(t).unwrap();
        // Around New York's return to standard time (2025-11-02 has 25 hours there).
        let events = [
            "2025-11-01T23:30:00-04:00",
            "2025-11-02T00:30:00-04:00",
            "2025-11-02T23:30:00-05:00",
            "2025-11-03T00:30:00-05:00",
        ];
        let ny = json!({"granularity": "day", "tz": "America/New_York", "measures": ["orders"]});
        assert_eq!(
            days(0, &events, ny).unwrap(),
            [
                (at("2025-11-01T00:00:00-04:00"), 1),
                (at("2025-11-02T00:00:00-04:00"), 2),
                (at("2025-11-03T00:00:00-05:00"), 1),
            ]
        );
        let utc = json!({"granularity": "day", "measures": ["orders"]});
        assert_eq!(
            days(0, &events, utc.clone()).unwrap(),
            [
                (at("2025-11-02T00:00:00Z"), 2),
                (at("2025-11-03T00:00:00Z"), 2)
            ]
        );
        let named_utc = json!({"granularity": "day", "tz": "UTC", "measures": ["orders"]});
        assert_eq!(days(0, &events, named_utc), days(0, &events, utc));

        // Kolkata's midnight is 18:30 UTC: inside an hour bucket, on a minute's edge.
        let kolkata = json!({"granularity": "day", "tz": "Asia/Kolkata", "measures": ["events"]});
        let hourly = json!({"granularity": "day", "tz": "Asia/Kolkata", "measures": ["orders"]});
        let late = ["2025-11-02T18:15:00Z", "2025-11-02T18:45:00Z"];
        let error = days(0, &late, hourly).unwrap_err();
        assert_eq!(error.code(), "invalid_tz");
        assert!(
            error.to_string().contains("kept by hour")
                && error.to_string().contains("Asia/Kolkata"),
            "{error}"
        );
        assert_eq!(
            days(1, &late, kolkata).unwrap(),
            [
                (at("2025-11-02T00:00:00+05:30"), 1),
                (at("2025-11-03T00:00:00+05:30"), 1),
            ]
        );
        // New York kept local mean time (-04:56:02) until 1883: its midnights then fell
        // inside hour buckets, which only the buckets themselves tell.
        let ny = json!({"granularity": "day", "tz": "America/New_York", "measures": ["orders"]});
        let error = days(0, &["1880-06-01T04:30:00Z"], ny).unwrap_err();
        assert!(
            matches!(error, QueryError::ZoneSplitsBucket { .. }),
            "{error:?}"
        );
        assert!(
            error.to_string().contains("1880-06-01T04:00:00Z"),
            "{error}"
        );
        // A view kept by UTC day answers UTC days, and no other zone's.
        let daily = |tz: &str| json!({"granularity": "day", "tz": tz, "measures": ["orders"]});
        assert_eq!(
            days(2, &late, daily("Etc/UTC")).unwrap(),
            [(at("2025-11-02T00:00:00Z"), 2)]
        );
        assert_eq!(
            days(2, &late, daily("Europe/Paris")).unwrap_err().code(),
            "invalid_tz"
        );
    }

    #[test]
    fn tz_is_refused_where_it_moves_nothing_or_names_no_zone() {
        for (request, message) in [
            (
                json!({"granularity": "day", "tz": "Mars/Olympus"}),
                "tz `Mars/Olympus` is not an IANA time zone name",
            ),
            (
                json!({"granularity": "hour", "tz": "Europe/Paris"}),
                "ask for granularity day",
            ),
            (
                json!({"granularity": "all", "tz": "UTC"}),
                "ask for granularity day",
            ),
            (json!({"tz": "Europe/Paris"}), "ask for granularity day"),
            (
                json!({"granularity": "hour", "tz": "nowhere"}),
                "not an IANA",
            ),
        ] {
            let (code, got) = refusal(request.clone());
            assert_eq!(code, "invalid_tz", "{request}");
            assert!(got.contains(message), "{request}: {got}");
        }
    }

    #[test]
    fn an_empty_request_asks_for_every_measure_by_the_views_buckets() {
        let resolved = resolve(json!({})).unwrap();
        assert_eq!(resolved.layer, Layer::Merged);
        let q = resolved.query;
        assert_eq!((q.from, q.to), (None, None));
        assert_eq!(q.rollup, Rollup::Buckets(Granularity::Hour));
        assert_eq!(q.rollup.as_str(), "hour");
        assert!(q.group_by.is_empty() && q.filters.is_empty() && q.order_by.is_empty());
        assert_eq!(q.measures, [0, 1, 2, 3, 4, 5]);
        assert_eq!(q.limit, None);
    }

    #[test]
    fn a_full_request_resolves_names_to_indexes() {
        let resolved = resolve(json!({
            "from": "2026-01-01T00:00:00Z",
            "to": "2026-01-02T09:00:00+09:00",
            "granularity": "day",
            "group_by": ["country"],
            "filters": {"country": ["kr", null]},
            "measures": ["revenue", "orders"],
            "order_by": [{"field": "orders", "desc": true}, {"field": "country"}, {"field": "bucket"}],
            "limit": 100_000,
            "layer": "speed",
        }))
        .unwrap();
        assert_eq!(resolved.layer, Layer::Speed);
        let q = resolved.query;
        assert_eq!(q.from, parse_rfc3339_micros("2026-01-01T00:00:00Z"));
        assert_eq!(q.to, Some(q.from.unwrap() + 86_400_000_000));
        assert_eq!(q.rollup, Rollup::Buckets(Granularity::Day));
        assert_eq!(q.group_by, [0]);
        assert_eq!(
            q.filters,
            [(0, Filter::one_of(vec![Dim::Str("kr".into()), Dim::Null]))]
        );
        assert_eq!(q.measures, [1, 0]);
        assert_eq!(
            q.order_by,
            [
                (OrderKey::Measure(1), true),
                (OrderKey::Dimension(0), false),
                (OrderKey::Bucket, false)
            ]
        );
        assert_eq!(q.limit, Some(MAX_LIMIT));
    }

    #[test]
    fn layers_and_all_time_are_spelled_out() {
        for (layer, expected) in [
            ("merged", Layer::Merged),
            ("batch", Layer::Batch),
            ("speed", Layer::Speed),
        ] {
            assert_eq!(resolve(json!({"layer": layer})).unwrap().layer, expected);
        }
        let q = resolve(json!({"granularity": "all"})).unwrap().query;
        assert_eq!((q.rollup, q.rollup.as_str()), (Rollup::All, "all"));
        let q = resolve(json!({"granularity": "hour"})).unwrap().query;
        assert_eq!(q.rollup, Rollup::Buckets(Granularity::Hour));
    }

    #[test]
    fn as_of_reads_one_batch_version_alone() {
        let at = |body| resolve(body).map(|r| (r.as_of, r.layer));
        assert_eq!(
            at(json!({"as_of": {"version": 3}})),
            Ok((Some(AsOf::Version(3)), Layer::Batch))
        );
        assert_eq!(
            at(json!({"as_of": "2026-11-20T01:00:00+01:00", "layer": "batch"})),
            Ok((
                Some(AsOf::Time(
                    parse_rfc3339_micros("2026-11-20T00:00:00Z").unwrap()
                )),
                Layer::Batch
            ))
        );
        assert_eq!(at(json!({})), Ok((None, Layer::Merged)));
        let refused = at(json!({"as_of": {"version": 3}, "layer": "merged"})).unwrap_err();
        assert_eq!(refused.code(), "invalid_query");
        assert!(refused.to_string().contains("drop `layer`"), "{refused}");
        let refused = at(json!({"as_of": "yesterday"})).unwrap_err();
        assert!(refused.to_string().contains("`as_of`"), "{refused}");
        assert!(
            serde_json::from_value::<QueryRequest>(json!({"as_of": {"version": 1, "v": 2}}))
                .is_err()
        );
        assert_eq!(
            AsOfRequest::from_param("12"),
            AsOfRequest::Version(VersionRef { version: 12 })
        );
        assert_eq!(
            AsOfRequest::from_param("+12"),
            AsOfRequest::Time("+12".into())
        );
    }

    #[test]
    fn filters_exclude_values_and_bound_ranges() {
        let str = |s: &str| Dim::Str(s.into());
        let filter = |body: Json| {
            let request: QueryRequest =
                serde_json::from_value(json!({ "filters": { "country": body } })).unwrap();
            let config = Config::shop();
            Query::resolve(config.source(), &config.views[0], &request).map(|r| r.query.filters)
        };
        let not = filter(json!({"not": ["US", null]})).unwrap();
        let f = &not[0].1;
        assert!(f.accepts(&str("KR")) && !f.accepts(&str("US")) && !f.accepts(&Dim::Null));
        let range = filter(json!({"gte": "DE", "lt": "US"})).unwrap();
        let f = &range[0].1;
        assert!(f.accepts(&str("DE")) && f.accepts(&str("KR")));
        assert!(!f.accepts(&str("US")) && !f.accepts(&str("AT")) && !f.accepts(&Dim::Null));
        let both = filter(json!({"in": ["DE", "KR", "US"], "not": ["KR"], "lte": "KR"})).unwrap();
        let f = &both[0].1;
        assert!(f.accepts(&str("DE")) && !f.accepts(&str("KR")) && !f.accepts(&str("US")));
        assert!(!f.accepts(&str("FR")), "not in the list");

        let code = |body: Json| {
            let error = filter(body).unwrap_err();
            (error.code(), error.to_string())
        };
        let (c, m) = code(json!({"gt": "A", "gte": "B"}));
        assert_eq!(c, "invalid_filter");
        assert!(m.contains("one lower bound"), "{m}");
        let open = filter(json!({"lt": null})).unwrap();
        assert!(open[0].1.accepts(&Dim::Null), "a null bound is no bound");
        assert_eq!(code(json!({"not": [3]})).0, "invalid_filter");
        let unknown: Result<QueryRequest, _> =
            serde_json::from_value(json!({"filters": {"country": {"like": "K%"}}}));
        assert!(unknown.is_err());
    }

    #[test]
    fn filter_values_take_their_dimensions_type() {
        let config = Config::shop();
        let products = &config.views[2];
        assert_eq!(products.dimensions, ["product", "country"]);
        let request: QueryRequest =
            serde_json::from_value(json!({"filters": {"country": ["DE"]}})).unwrap();
        let q = Query::resolve(config.source(), products, &request)
            .unwrap()
            .query;
        assert_eq!(
            q.filters,
            [(1, Filter::one_of(vec![Dim::Str("DE".into())]))]
        );
        assert_eq!(
            dim_of(Some(FieldType::Float), &json!(-0.0)),
            Some(Dim::Float(0.0f64.to_bits()))
        );
        assert_eq!(dim_of(Some(FieldType::Int), &json!(1.5)), None);
        assert_eq!(
            dim_of(Some(FieldType::Bool), &json!(true)),
            Some(Dim::Bool(true))
        );
        assert_eq!(
            dim_of(Some(FieldType::Timestamp), &json!("1970-01-01T00:00:01Z")),
            Some(Dim::Int(1_000_000))
        );
        assert_eq!(dim_of(None, &json!("x")), None);
    }

    #[test]
    fn each_refusal_has_its_code_and_message() {
        let cases = [
            (
                json!({"layer": "both"}),
                "invalid_query",
                "layer `both`: use merged, batch or speed",
            ),
            (
                json!({"from": "yesterday"}),
                "invalid_query",
                "`from` must be an RFC 3339 time with an offset, e.g. 2026-11-20T00:00:00Z; got `yesterday`",
            ),
            (
                json!({"to": "2026-01-01T00:00:00"}),
                "invalid_query",
                "`to` must be an RFC 3339 time with an offset, e.g. 2026-11-20T00:00:00Z; got `2026-01-01T00:00:00`",
            ),
            (
                json!({"from": "2026-01-02T00:00:00Z", "to": "2026-01-02T00:00:00Z"}),
                "invalid_query",
                "`from` must be before `to`",
            ),
            (
                json!({"granularity": "week"}),
                "invalid_granularity",
                "granularity `week`: use minute, hour, day or all",
            ),
            (
                json!({"granularity": "minute"}),
                "invalid_granularity",
                "view `sales_by_country` is kept by hour; ask for that or a coarser granularity",
            ),
            (
                json!({"group_by": ["product"]}),
                "unknown_dimension",
                "`group_by`: view `sales_by_country` has no dimension `product` (it has [\"country\"])",
            ),
            (
                json!({"filters": {"product": ["x"]}}),
                "unknown_dimension",
                "`filters`: view `sales_by_country` has no dimension `product` (it has [\"country\"])",
            ),
            (
                json!({"filters": {"country": [7]}}),
                "invalid_filter",
                "filter `country`: `7` is not a some(string) value",
            ),
            (
                json!({"filters": {"country": ["KR", true]}}),
                "invalid_filter",
                "filter `country`: `true` is not a some(string) value",
            ),
            (
                json!({"measures": ["profit"]}),
                "unknown_measure",
                "view `sales_by_country` has no measure `profit`",
            ),
            (
                json!({"order_by": [{"field": "country"}]}),
                "invalid_order",
                "order_by `country`: order by bucket, a grouped dimension or a selected measure",
            ),
            (
                json!({"measures": ["orders"], "order_by": [{"field": "revenue"}]}),
                "invalid_order",
                "order_by `revenue`: order by bucket, a grouped dimension or a selected measure",
            ),
            (
                json!({"limit": 100_001}),
                "invalid_query",
                "limit is at most 100000",
            ),
        ];
        for (request, code, message) in cases {
            assert_eq!(
                refusal(request.clone()),
                (code, message.to_owned()),
                "{request}"
            );
        }
    }

    #[test]
    fn the_first_bad_key_is_named() {
        let (code, _) = refusal(json!({"layer": "x", "granularity": "week"}));
        assert_eq!(code, "invalid_query");
        let (code, _) = refusal(json!({"granularity": "week", "measures": ["profit"]}));
        assert_eq!(code, "invalid_granularity");
    }

    #[test]
    fn unknown_request_keys_are_refused_by_serde() {
        let error = serde_json::from_value::<QueryRequest>(json!({"fields": []})).unwrap_err();
        assert!(error.to_string().contains("fields"), "{error}");
    }
}
