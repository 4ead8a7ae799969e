//! Answering a view query from states: select groups by time and dimension values, merge the
//! parts (batch ⊕ speed) per group, roll buckets up to the asked granularity and groups up to
//! the asked dimensions, finalise the measures, order and limit.
//!
//! Pure: the parts are [`ViewState`]s however they were obtained, and the answer is a list of
//! [`Row`]s for the HTTP layer to render.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::HashMap;

use crate::source::{FieldType, SourceConfig};
use crate::state::{Dim, Num, State, ViewState};
use crate::view::{AggKind, Granularity, ViewDef};

/// The bucket width of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rollup {
    /// Buckets of this granularity (the view's or a coarser one).
    Buckets(Granularity),
    /// One bucket over all time: rows carry no bucket.
    All,
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
    /// Dimension index → accepted values (a group matches if its value is one of them).
    pub filters: Vec<(usize, Vec<Dim>)>,
    /// Indexes into the view's measures to compute.
    pub measures: Vec<usize>,
    /// Order; bucket then grouped dimensions when empty. `true` means descending.
    pub order_by: Vec<(OrderKey, bool)>,
    /// Most rows returned.
    pub limit: Option<usize>,
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

/// Groups of the parts selected by `query`, rolled up to its buckets and dimensions, with the
/// states of its measures merged.
pub(crate) fn merge<'a>(
    parts: &[&'a ViewState],
    query: &Query,
) -> HashMap<AnswerKey<'a>, Vec<Cow<'a, State>>> {
    // Keys and states borrow from the parts; a state is copied only when a second part (or a
    // second group rolled into the same key) has to be merged into it.
    let mut groups: HashMap<AnswerKey<'_>, Vec<Cow<'_, State>>> = HashMap::new();
    for part in parts {
        for ((bucket, dims), states) in part.groups() {
            if query.from.is_some_and(|f| *bucket < f) || query.to.is_some_and(|t| *bucket >= t) {
                continue;
            }
            if !query
                .filters
                .iter()
                .all(|(d, accepted)| accepted.contains(&dims[*d]))
            {
                continue;
            }
            let rolled = match query.rollup {
                Rollup::Buckets(g) => Some(g.truncate(*bucket)),
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
    groups
}

/// Answers `query` over the merge of `parts`.
pub fn answer(
    source: &SourceConfig,
    view: &ViewDef,
    parts: &[&ViewState],
    query: &Query,
) -> Vec<Row> {
    let groups = merge(parts, query);
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
    rows
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
