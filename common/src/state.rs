//! Aggregate states: the monoids both layers keep per view, bucket and dimension values.
//!
//! A [`ViewState`] is a map from a group (bucket, dimension values) to one [`State`] per
//! measure. The speed layer folds validated events into one ([`ViewState::fold`]); the
//! serving layer loads a batch view table into another ([`ViewState::from_view_batch`]); a
//! query merges both per group ([`ViewState::merge_into`]) before it rolls groups up and
//! finalises values. Every state is a commutative monoid (count, sum, min, max, (sum, count),
//! HyperLogLog registers), so the split between the two sides never changes an answer.
//!
//! Null conventions are those of SQL, as the batch layer's DataFusion plan has them: `sum`,
//! `min` and `max` of no non-null value are null; `count` and an average's count are 0.

use std::cmp::Ordering;
use std::collections::HashMap;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit, TimestampMicrosecondType};
use arrow::error::ArrowError;

use crate::error::LayoutError;
use crate::layout::{BUCKET, Role, ViewLayout};
use crate::sketch::{Sketch, SketchError, for_each_hash};
use crate::source::{FieldType, SourceConfig};
use crate::view::{AggKind, ViewDef};

/// Why a batch could not be folded or loaded.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A column is missing or of an unexpected type.
    #[error("column `{column}`: {message}")]
    Column {
        /// The column.
        column: String,
        /// What was wrong.
        message: String,
    },
    /// The view's columns cannot be laid out (its definition was not checked).
    #[error("view `{view}`: {source}")]
    Layout {
        /// The view.
        view: String,
        /// Which column is in the way.
        #[source]
        source: LayoutError,
    },
    /// A stored sketch is unreadable.
    #[error(transparent)]
    Sketch(#[from] SketchError),
    /// An Arrow kernel failed.
    #[error(transparent)]
    Arrow(#[from] ArrowError),
}

/// A dimension value: hashable and ordered, floats by their bits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dim {
    /// Null or absent.
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer, or a timestamp in epoch microseconds.
    Int(i64),
    /// A float, as `f64::to_bits` of its canonical form (`-0.0` as `0.0`).
    Float(u64),
    /// A string.
    Str(Box<str>),
}

/// A number of a sum, min or max.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Num {
    /// Integers and timestamps (epoch microseconds).
    Int(i64),
    /// Floats.
    Float(f64),
}

impl Num {
    fn cmp(self, other: Num) -> Ordering {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => a.cmp(&b),
            (a, b) => a.as_f64().total_cmp(&b.as_f64()),
        }
    }

    fn add(self, other: Num) -> Num {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => Num::Int(a.wrapping_add(b)),
            (a, b) => Num::Float(a.as_f64() + b.as_f64()),
        }
    }

    /// The value as a float.
    pub fn as_f64(self) -> f64 {
        match self {
            Num::Int(v) => v as f64,
            Num::Float(v) => v,
        }
    }
}

/// One measure's mergeable state.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Number of events.
    Count(i64),
    /// Sum of non-null values; `None` while there is none.
    Sum(Option<Num>),
    /// Smallest non-null value.
    Min(Option<Num>),
    /// Largest non-null value.
    Max(Option<Num>),
    /// Sum and count of non-null values.
    Avg {
        /// Sum, `None` while `count` is 0.
        sum: Option<f64>,
        /// Number of non-null values.
        count: i64,
    },
    /// HyperLogLog sketch of the non-null values.
    Distinct(Sketch),
}

impl State {
    fn empty(agg: AggKind) -> Self {
        match agg {
            AggKind::Count => State::Count(0),
            AggKind::Sum => State::Sum(None),
            AggKind::Min => State::Min(None),
            AggKind::Max => State::Max(None),
            AggKind::Avg => State::Avg {
                sum: None,
                count: 0,
            },
            AggKind::ApproxDistinct => State::Distinct(Sketch::new()),
        }
    }

    /// Folds `other` (a state of the same measure) in.
    pub fn merge(&mut self, other: &State) {
        fn pick(mine: &mut Option<Num>, theirs: Option<Num>, keep: Ordering) {
            if let Some(t) = theirs
                && mine.is_none_or(|m| t.cmp(m) == keep)
            {
                *mine = Some(t);
            }
        }
        match (self, other) {
            (State::Count(a), State::Count(b)) => *a += b,
            (State::Sum(a), State::Sum(b)) => {
                *a = match (*a, *b) {
                    (Some(x), Some(y)) => Some(x.add(y)),
                    (x, y) => x.or(y),
                }
            }
            (State::Min(a), State::Min(b)) => pick(a, *b, Ordering::Less),
            (State::Max(a), State::Max(b)) => pick(a, *b, Ordering::Greater),
            (State::Avg { sum, count }, State::Avg { sum: s, count: c }) => {
                *sum = match (*sum, *s) {
                    (Some(x), Some(y)) => Some(x + y),
                    (x, y) => x.or(y),
                };
                *count += c;
            }
            (State::Distinct(a), State::Distinct(b)) => a.merge(b),
            (mine, theirs) => {
                panic!("merging states of different measures: {mine:?} and {theirs:?}")
            }
        }
    }

    /// Bytes held beyond the enum itself.
    pub fn heap_bytes(&self) -> usize {
        match self {
            State::Distinct(s) => s.heap_bytes(),
            _ => 0,
        }
    }
}

/// A group: the bucket start (epoch microseconds) and the dimension values in declared order.
pub type GroupKey = (i64, Box<[Dim]>);

/// Per group, one state per measure of a view.
#[derive(Debug, Clone, Default)]
pub struct ViewState {
    index: HashMap<GroupKey, usize>,
    keys: Vec<GroupKey>,
    states: Vec<Box<[State]>>,
}

impl ViewState {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of groups.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there is no group.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Every group with its states, in no particular order.
    pub fn groups(&self) -> impl Iterator<Item = (&GroupKey, &[State])> {
        self.keys.iter().zip(self.states.iter().map(|s| &**s))
    }

    /// A copy of the groups whose keys `keep` selects.
    pub fn select(&self, mut keep: impl FnMut(&GroupKey) -> bool) -> ViewState {
        let mut out = ViewState::new();
        for (key, states) in self.groups().filter(|(key, _)| keep(key)) {
            out.index.insert(key.clone(), out.keys.len());
            out.keys.push(key.clone());
            out.states.push(states.into());
        }
        out
    }

    /// Approximate bytes held: keys, states and sketches.
    pub fn heap_bytes(&self) -> usize {
        let per_group = std::mem::size_of::<GroupKey>() * 2 + std::mem::size_of::<usize>();
        self.groups()
            .map(|((_, dims), states)| {
                per_group
                    + dims.len() * std::mem::size_of::<Dim>()
                    + dims
                        .iter()
                        .map(|d| if let Dim::Str(s) = d { s.len() } else { 0 })
                        .sum::<usize>()
                    + std::mem::size_of_val(states)
                    + states.iter().map(State::heap_bytes).sum::<usize>()
            })
            .sum()
    }

    fn group(&mut self, view: &ViewDef, key: GroupKey) -> usize {
        if let Some(i) = self.index.get(&key) {
            return *i;
        }
        let i = self.keys.len();
        self.index.insert(key.clone(), i);
        self.keys.push(key);
        self.states
            .push(view.measures.iter().map(|m| State::empty(m.agg)).collect());
        i
    }

    /// Folds `other` into `self`.
    pub fn merge_into(&mut self, view: &ViewDef, other: &ViewState) {
        for (key, states) in other.groups() {
            let g = self.group(view, key.clone());
            for (mine, theirs) in self.states[g].iter_mut().zip(states) {
                mine.merge(theirs);
            }
        }
    }

    /// Folds the rows of `events` (raw-table columns) selected by `selected` into the view.
    pub fn fold(
        &mut self,
        source: &SourceConfig,
        view: &ViewDef,
        events: &RecordBatch,
        selected: &BooleanArray,
    ) -> Result<(), StateError> {
        let rows: Vec<usize> = (0..events.num_rows())
            .filter(|i| selected.is_valid(*i) && selected.value(*i))
            .collect();
        if rows.is_empty() {
            return Ok(());
        }
        let time = column(events, &source.time_field)?;
        let time = timestamps(&time, &source.time_field)?;
        let dims: Vec<ArrayRef> = view
            .dimensions
            .iter()
            .map(|d| column(events, d))
            .collect::<Result<_, _>>()?;
        let mut group_of = vec![usize::MAX; events.num_rows()];
        for &row in &rows {
            let bucket = view.granularity.truncate(time.value(row));
            let key: Box<[Dim]> = dims.iter().map(|d| dim(d.as_ref(), row)).collect();
            group_of[row] = self.group(view, (bucket, key));
        }
        for (m, measure) in view.measures.iter().enumerate() {
            let Some(field) = &measure.field else {
                for &row in &rows {
                    if let State::Count(c) = &mut self.states[group_of[row]][m] {
                        *c += 1;
                    }
                }
                continue;
            };
            let values = column(events, field)?;
            if measure.agg == AggKind::ApproxDistinct {
                let states = &mut self.states;
                for_each_hash(values.as_ref(), |row, hash| {
                    if group_of[row] != usize::MAX
                        && let State::Distinct(s) = &mut states[group_of[row]][m]
                    {
                        s.insert_hash(hash);
                    }
                })?;
                continue;
            }
            let kind = source
                .field(field)
                .map(|f| f.kind)
                .ok_or_else(|| StateError::Column {
                    column: field.clone(),
                    message: "not a declared field".into(),
                })?;
            for &row in &rows {
                let Some(v) = num(values.as_ref(), row, kind) else {
                    continue;
                };
                let single = match measure.agg {
                    AggKind::Sum => State::Sum(Some(v)),
                    AggKind::Min => State::Min(Some(v)),
                    AggKind::Max => State::Max(Some(v)),
                    AggKind::Avg => State::Avg {
                        sum: Some(v.as_f64()),
                        count: 1,
                    },
                    AggKind::Count | AggKind::ApproxDistinct => unreachable!("handled above"),
                };
                self.states[group_of[row]][m].merge(&single);
            }
        }
        Ok(())
    }

    /// Loads the rows of a view table (as [`ViewLayout`] lays it out; strings and binaries
    /// may come back as views) into a state.
    pub fn from_view_batch(
        &mut self,
        source: &SourceConfig,
        view: &ViewDef,
        batch: &RecordBatch,
    ) -> Result<(), StateError> {
        let layout = ViewLayout::new(source, view).map_err(|source| StateError::Layout {
            view: view.name.clone(),
            source,
        })?;
        let typed = |name: &str, data_type: &DataType| -> Result<ArrayRef, StateError> {
            Ok(cast(&column(batch, name)?, data_type)?)
        };
        let bucket = typed(BUCKET, &crate::schema::timestamp_type())?;
        let bucket = timestamps(&bucket, BUCKET)?;
        let dims: Vec<ArrayRef> = layout
            .dimensions
            .iter()
            .map(|(d, t)| typed(d, t))
            .collect::<Result<_, _>>()?;
        let mut state_columns = Vec::new();
        for c in layout.measures.iter().filter(|c| c.role.is_state()) {
            let data_type = if c.data_type.is_temporal() {
                DataType::Int64
            } else {
                c.data_type.clone()
            };
            state_columns.push((c, typed(&c.name, &data_type)?));
        }
        for row in 0..batch.num_rows() {
            let key: Box<[Dim]> = dims.iter().map(|d| dim(d.as_ref(), row)).collect();
            let g = self.group(view, (bucket.value(row), key));
            let mut loaded: Vec<State> =
                view.measures.iter().map(|m| State::empty(m.agg)).collect();
            for (c, array) in &state_columns {
                let value = |kind| num(array.as_ref(), row, kind);
                let state = &mut loaded[c.measure];
                match (c.role, state) {
                    (Role::Count, State::Count(n)) if array.is_valid(row) => {
                        *n = array.as_primitive::<Int64Type>().value(row);
                    }
                    (Role::Sum, State::Sum(s)) => *s = value(kind_of(&c.data_type)),
                    (Role::Min, State::Min(s)) => *s = value(kind_of(&c.data_type)),
                    (Role::Max, State::Max(s)) => *s = value(kind_of(&c.data_type)),
                    (Role::AvgSum, State::Avg { sum, .. }) => {
                        *sum = value(FieldType::Float).map(Num::as_f64)
                    }
                    (Role::AvgCount, State::Avg { count, .. }) if array.is_valid(row) => {
                        *count = array.as_primitive::<Int64Type>().value(row);
                    }
                    (Role::Sketch, State::Distinct(s)) if array.is_valid(row) => {
                        *s = Sketch::from_bytes(array.as_binary::<i32>().value(row))?;
                    }
                    _ => {}
                }
            }
            for (mine, theirs) in self.states[g].iter_mut().zip(&loaded) {
                mine.merge(theirs);
            }
        }
        Ok(())
    }
}

fn kind_of(data_type: &DataType) -> FieldType {
    match data_type {
        DataType::Float64 => FieldType::Float,
        _ => FieldType::Int,
    }
}

fn column(batch: &RecordBatch, name: &str) -> Result<ArrayRef, StateError> {
    batch
        .column_by_name(name)
        .cloned()
        .ok_or_else(|| StateError::Column {
            column: name.to_owned(),
            message: "missing".into(),
        })
}

fn timestamps<'a>(
    array: &'a ArrayRef,
    name: &str,
) -> Result<&'a arrow::array::TimestampMicrosecondArray, StateError> {
    match array.data_type() {
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            Ok(array.as_primitive::<TimestampMicrosecondType>())
        }
        other => Err(StateError::Column {
            column: name.to_owned(),
            message: format!("expected a microsecond timestamp, found {other}"),
        }),
    }
}

/// The dimension value of `row`.
pub fn dim(array: &dyn Array, row: usize) -> Dim {
    if array.is_null(row) {
        return Dim::Null;
    }
    match array.data_type() {
        DataType::Utf8 => Dim::Str(array.as_string::<i32>().value(row).into()),
        DataType::Utf8View => Dim::Str(array.as_string_view().value(row).into()),
        DataType::LargeUtf8 => Dim::Str(array.as_string::<i64>().value(row).into()),
        DataType::Int64 => Dim::Int(array.as_primitive::<Int64Type>().value(row)),
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            Dim::Int(array.as_primitive::<TimestampMicrosecondType>().value(row))
        }
        DataType::Float64 => {
            let v = array.as_primitive::<Float64Type>().value(row);
            Dim::Float(if v == 0.0 { 0.0f64 } else { v }.to_bits())
        }
        DataType::Boolean => Dim::Bool(array.as_boolean().value(row)),
        _ => Dim::Null,
    }
}

/// The number at `row` of a numeric or timestamp column, read as `kind`.
fn num(array: &dyn Array, row: usize, kind: FieldType) -> Option<Num> {
    if array.is_null(row) {
        return None;
    }
    Some(match array.data_type() {
        DataType::Int64 if kind == FieldType::Float => {
            Num::Float(array.as_primitive::<Int64Type>().value(row) as f64)
        }
        DataType::Int64 => Num::Int(array.as_primitive::<Int64Type>().value(row)),
        DataType::Float64 => Num::Float(array.as_primitive::<Float64Type>().value(row)),
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            Num::Int(array.as_primitive::<TimestampMicrosecondType>().value(row))
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::query::{AnswerLimits, Query, Rollup, answer};
    use crate::validate::{Coordinates, Validator};

    /// A view that sums, bounds and averages both numeric fields of the demo source.
    fn numeric_view() -> ViewDef {
        serde_json::from_value(json!({
            "name": "numbers",
            "granularity": "minute",
            "dimensions": ["country", "product"],
            "filter": "abs(quantity) >= 0 OR quantity IS NULL",
            "measures": [
                {"name": "n", "agg": "count"},
                {"name": "qty", "agg": "sum", "field": "quantity"},
                {"name": "qty_min", "agg": "min", "field": "quantity"},
                {"name": "qty_max", "agg": "max", "field": "quantity"},
                {"name": "qty_avg", "agg": "avg", "field": "quantity"},
                {"name": "amt", "agg": "sum", "field": "amount"},
                {"name": "amt_min", "agg": "min", "field": "amount"},
                {"name": "amt_avg", "agg": "avg", "field": "amount"},
                {"name": "users", "agg": "approx_distinct", "field": "user_id"},
            ],
        }))
        .unwrap()
    }

    fn hostile() -> impl Strategy<Value = Vec<u8>> {
        let text = prop_oneof![
            any::<String>(),
            Just(String::new()),
            Just("NaN".to_owned()),
            Just("-0".to_owned()),
            Just("x".repeat(3000)),
        ];
        let time = prop_oneof![
            Just(json!("0001-01-01T00:00:00Z")),
            Just(json!("9999-12-31T23:59:59.999999Z")),
            Just(json!(-62_135_596_800_000_i64)),
            Just(json!(253_402_300_799_999_i64)),
            Just(json!("1969-12-31T23:59:59.999999Z")),
            any::<i64>().prop_map(|v| json!(v)),
            any::<String>().prop_map(|v| json!(v)),
        ];
        let int = prop_oneof![
            Just(json!(i64::MAX)),
            Just(json!(i64::MIN)),
            any::<i64>().prop_map(|v| json!(v)),
            Just(Value::Null),
        ];
        let float = prop_oneof![
            Just(json!(1e308)),
            Just(json!(-1e308)),
            Just(json!(f64::MAX)),
            Just(json!(5e-324)),
            Just(json!(-0.0)),
            Just(json!(u64::MAX)),
            any::<f64>().prop_map(|v| json!(v)),
            Just(json!("NaN")),
        ];
        (
            text.clone(),
            time,
            text.clone(),
            text.clone(),
            (text, int, float, 0usize..140),
        )
            .prop_map(
                |(id, time, user, country, (product, quantity, amount, depth))| {
                    let mut event = json!({
                        "event_id": id,
                        "event_time": time,
                        "type": "purchase",
                        "user_id": user,
                        "country": country,
                        "product": product,
                        "quantity": quantity,
                        "amount": amount,
                    })
                    .to_string();
                    event.pop();
                    event.push_str(&format!(
                        ",\"deep\":{}0{}}}",
                        "[".repeat(depth),
                        "]".repeat(depth)
                    ));
                    event.into_bytes()
                },
            )
    }

    fn cases() -> u32 {
        std::env::var("LAMBDAFLOW_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]
        /// Whatever the validator accepts, folding, merging and answering never fail or panic
        /// (`LAMBDAFLOW_FUZZ_CASES=100000` for a long run).
        #[test]
        fn every_accepted_event_folds_and_answers(events in proptest::collection::vec(hostile(), 1..8)) {
            let (mut source, mut views) = crate::view::tests::demo();
            source.keep_undeclared = true;
            source.max_future = std::time::Duration::from_secs(10_000 * 366 * 86_400);
            views.push(numeric_view());
            let validator = Validator::new(&source).with_views(&views).unwrap();
            let mut builder = validator.batch_builder("events", 1_763_856_000_000_000);
            for (offset, payload) in events.iter().enumerate() {
                let at = Coordinates { partition: 0, offset: offset as i64 };
                let _ = builder.push(Some(payload), at);
            }
            let out = builder.finish();
            prop_assert_eq!(out.events.num_rows() + out.rejects.num_rows(), events.len());
            let all = BooleanArray::from(vec![true; out.events.num_rows()]);
            for view in &views {
                let mut state = ViewState::new();
                state.fold(&source, view, &out.events, &all).unwrap();
                let mut twice = state.clone();
                twice.merge_into(view, &state);
                for rollup in [Rollup::Buckets(view.granularity), Rollup::All] {
                    let query = Query {
                        from: None,
                        to: None,
                        rollup,
                        group_by: (0..view.dimensions.len()).collect(),
                        filters: Vec::new(),
                        measures: (0..view.measures.len()).collect(),
                        order_by: Vec::new(),
                        limit: None,
                    };
                    answer(&source, view, &[&state, &twice], &query, &AnswerLimits::NONE).unwrap();
                }
            }
        }
    }
}
