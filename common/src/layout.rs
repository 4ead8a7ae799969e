//! How a view is stored, and how its filter reads: one layout both layers compile from the
//! view's definition ([`crate::view`]).
//!
//! A view row is a bucket, the dimension values, and per measure one or more columns. State
//! columns are monoids that batch and speed merge ([`Role::is_state`]); final columns are
//! derived from them (an average, a sketch's estimate) so that plain Delta readers see values,
//! not only states. Column names are fixed here: `<measure>` for the value, `<measure>__sum`
//! and `<measure>__count` for an average's state, `<measure>__hll` for a sketch.
//!
//! The filter is SQL parsed by DataFusion against the declared fields, so that the batch
//! query and the speed layer's vectorised evaluation share one expression and one meaning.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::common::DFSchema;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::{Expr, ExprSchemable, Volatility};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;

use crate::error::{FilterError, LayoutError};
use crate::schema::{EVENT_DATE, event_fields, field_type, timestamp_type};
use crate::source::{FieldType, SourceConfig};
use crate::view::{AggKind, ViewDef};

/// The bucket column: event time truncated to the view's granularity, UTC.
pub const BUCKET: &str = "bucket";

/// What a view column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Number of events (state and value).
    Count,
    /// Sum of non-null values (state and value).
    Sum,
    /// Smallest non-null value (state and value).
    Min,
    /// Largest non-null value (state and value).
    Max,
    /// Sum of an average's non-null values, as float (state).
    AvgSum,
    /// Number of an average's non-null values (state).
    AvgCount,
    /// The average, `AvgSum / AvgCount` (final).
    Avg,
    /// HyperLogLog sketch bytes (state).
    Sketch,
    /// The sketch's estimate (final).
    Estimate,
}

impl Role {
    /// Whether the column is a mergeable state (as opposed to one derived from states).
    pub fn is_state(self) -> bool {
        !matches!(self, Self::Avg | Self::Estimate)
    }
}

/// One column of a view table holding (part of) a measure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeasureColumn {
    /// Column name.
    pub name: String,
    /// Index of the measure in [`ViewDef::measures`].
    pub measure: usize,
    /// What the column holds.
    pub role: Role,
    /// The source field aggregated, if any.
    pub field: Option<String>,
    /// Arrow type.
    pub data_type: DataType,
}

/// A view's columns, derived once from its definition and the source fields.
#[derive(Debug, Clone)]
pub struct ViewLayout {
    /// Dimension names and types, in declared order.
    pub dimensions: Vec<(String, DataType)>,
    /// Measure columns, in declared order.
    pub measures: Vec<MeasureColumn>,
    /// The Delta table's schema: bucket, dimensions, measure columns, `event_date`.
    pub schema: SchemaRef,
}

impl ViewLayout {
    /// Lays out `view`'s columns; fails when it names an undeclared field or when two
    /// columns would share a name.
    pub fn new(source: &SourceConfig, view: &ViewDef) -> Result<Self, LayoutError> {
        let kind = |name: &str| {
            source
                .field(name)
                .map(|f| f.kind)
                .ok_or_else(|| LayoutError::UndeclaredField {
                    field: name.to_owned(),
                })
        };
        let mut dimensions = Vec::new();
        for d in &view.dimensions {
            dimensions.push((d.clone(), field_type(kind(d)?)));
        }
        let mut measures = Vec::new();
        for (i, m) in view.measures.iter().enumerate() {
            let field_kind = m.field.as_deref().map(kind).transpose()?;
            let column = |suffix: &str, role, data_type| MeasureColumn {
                name: format!("{}{suffix}", m.name),
                measure: i,
                role,
                field: m.field.clone(),
                data_type,
            };
            let value_type = field_kind.map(field_type).unwrap_or(DataType::Int64);
            match m.agg {
                AggKind::Count => measures.push(column("", Role::Count, DataType::Int64)),
                AggKind::Sum => {
                    let t = if field_kind == Some(FieldType::Int) {
                        DataType::Int64
                    } else {
                        DataType::Float64
                    };
                    measures.push(column("", Role::Sum, t));
                }
                AggKind::Min => measures.push(column("", Role::Min, value_type)),
                AggKind::Max => measures.push(column("", Role::Max, value_type)),
                AggKind::Avg => measures.extend([
                    column("__sum", Role::AvgSum, DataType::Float64),
                    column("__count", Role::AvgCount, DataType::Int64),
                    column("", Role::Avg, DataType::Float64),
                ]),
                AggKind::ApproxDistinct => measures.extend([
                    column("__hll", Role::Sketch, DataType::Binary),
                    column("", Role::Estimate, DataType::Int64),
                ]),
            }
        }
        let mut fields = vec![Field::new(BUCKET, timestamp_type(), true)];
        fields.extend(
            dimensions
                .iter()
                .map(|(n, t)| Field::new(n, t.clone(), true)),
        );
        fields.extend(
            measures
                .iter()
                .map(|c| Field::new(&c.name, c.data_type.clone(), true)),
        );
        fields.push(Field::new(EVENT_DATE, DataType::Date32, true));
        let mut names = HashSet::new();
        for f in &fields {
            if !names.insert(f.name().as_str()) {
                return Err(LayoutError::DuplicateColumn {
                    column: f.name().clone(),
                });
            }
        }
        Ok(Self {
            dimensions,
            measures,
            schema: Arc::new(Schema::new(fields)),
        })
    }
}

/// The schema a filter is read against: the id, the time and every declared field.
pub fn filter_schema(source: &SourceConfig) -> SchemaRef {
    Arc::new(Schema::new(event_fields(source)))
}

/// Parses a view filter into a DataFusion expression over [`filter_schema`]: it must be a
/// deterministic boolean expression over declared fields, with no aggregates or subqueries,
/// calling only immutable functions: a stable one such as `now()` would be folded to the run's
/// start by the batch layer and to another instant (or refused) by the speed layer.
pub fn parse_filter(source: &SourceConfig, sql: &str) -> Result<Expr, FilterError> {
    let schema =
        DFSchema::try_from(filter_schema(source).as_ref().clone()).map_err(FilterError::Schema)?;
    let parse = |source| FilterError::Parse {
        sql: sql.to_owned(),
        source,
    };
    let expr = SessionContext::new()
        .parse_sql_expr(sql, &schema)
        .map_err(parse)?;
    let mut nested = false;
    let mut changing = None;
    expr.apply(|e| {
        if let Expr::ScalarFunction(call) = e
            && call.func.signature().volatility != Volatility::Immutable
        {
            changing.get_or_insert_with(|| call.func.name().to_owned());
        }
        nested |= matches!(
            e,
            Expr::AggregateFunction(_)
                | Expr::WindowFunction(_)
                | Expr::ScalarSubquery(_)
                | Expr::Exists(_)
                | Expr::InSubquery(_)
        );
        Ok(TreeNodeRecursion::Continue)
    })
    .map_err(FilterError::Inspect)?;
    if let Some(function) = changing {
        return Err(FilterError::NotImmutable {
            sql: sql.to_owned(),
            function,
        });
    }
    if nested {
        return Err(FilterError::NotPerEvent {
            sql: sql.to_owned(),
        });
    }
    match expr.get_type(&schema) {
        Ok(DataType::Boolean) => Ok(expr),
        Ok(data_type) => Err(FilterError::NotBoolean {
            sql: sql.to_owned(),
            data_type,
        }),
        Err(e) => Err(parse(e)),
    }
}

/// Every view's filter, compiled for evaluation over validated events (the raw table's
/// columns), so that the validator can tell which events a filter cannot decide.
///
/// An immutable filter can still fail on one value: `abs(quantity)` of `i64::MIN` overflows,
/// `quantity % 0` divides by zero. Such an event would stop every batch run over its date and
/// every speed fold of its micro-batch; instead the validator finds it here and quarantines it
/// as `unprocessable:view_filter`, so neither layer ever sees it.
#[derive(Clone)]
pub struct ViewFilters {
    filters: Vec<Arc<dyn PhysicalExpr>>,
}

impl std::fmt::Debug for ViewFilters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewFilters")
            .field("filters", &self.filters.len())
            .finish()
    }
}

impl ViewFilters {
    /// Compiles the filters of `views` over `schema` (the raw table's schema of `source`).
    pub fn new(
        source: &SourceConfig,
        views: &[ViewDef],
        schema: &SchemaRef,
    ) -> Result<Self, FilterError> {
        let df_schema = DFSchema::try_from(schema.as_ref().clone()).map_err(FilterError::Schema)?;
        let ctx = SessionContext::new();
        let mut filters = Vec::new();
        for sql in views.iter().filter_map(|v| v.filter.as_deref()) {
            let expr = parse_filter(source, sql)?;
            let compiled = ctx
                .create_physical_expr(expr, &df_schema)
                .map_err(|source| FilterError::Compile {
                    sql: sql.to_owned(),
                    source,
                })?;
            filters.push(compiled);
        }
        Ok(Self { filters })
    }

    /// Whether there is no filter to evaluate.
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// The rows of `events` for which some filter fails to evaluate, in ascending order. The
    /// whole batch is evaluated at once; only when that fails is each row tried alone.
    pub fn failing_rows(&self, events: &RecordBatch) -> Vec<usize> {
        let mut failing = std::collections::BTreeSet::new();
        for filter in &self.filters {
            let decides = |batch: &RecordBatch| {
                filter
                    .evaluate(batch)
                    .and_then(|v| v.into_array(batch.num_rows()))
                    .is_ok()
            };
            if decides(events) {
                continue;
            }
            failing.extend((0..events.num_rows()).filter(|&row| !decides(&events.slice(row, 1))));
        }
        failing.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::tests::demo;

    #[test]
    fn demo_views_lay_out_states_and_values() {
        let (source, views) = demo();
        let sales = &views[0];
        let layout = ViewLayout::new(&source, sales).unwrap();
        let names: Vec<&str> = layout
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(
            names,
            [
                "bucket",
                "country",
                "orders",
                "revenue",
                "max_order",
                "min_order",
                "avg_order__sum",
                "avg_order__count",
                "avg_order",
                "buyers__hll",
                "buyers",
                "event_date"
            ]
        );
        let states: Vec<Role> = layout
            .measures
            .iter()
            .filter(|c| c.role.is_state())
            .map(|c| c.role)
            .collect();
        assert_eq!(
            states,
            [
                Role::Count,
                Role::Sum,
                Role::Max,
                Role::Min,
                Role::AvgSum,
                Role::AvgCount,
                Role::Sketch
            ]
        );
    }

    #[test]
    fn filters_are_checked_against_declared_fields() {
        let (source, _) = demo();
        assert!(parse_filter(&source, "type = 'purchase' AND amount > 10").is_ok());
        assert!(parse_filter(&source, "event_time >= '2026-01-01T00:00:00Z'").is_ok());
        assert!(parse_filter(&source, "lower(country) = 'kr'").is_ok());
        assert!(parse_filter(&source, "abs(amount) > 1").is_ok());
        for (sql, needle) in [
            ("colour = 'red'", "colour"),
            ("amount + 1", "not boolean"),
            ("random() > 0.5", "`random`"),
            ("event_time < now()", "`now`"),
            ("event_time < current_date()", "`current_date`"),
            ("event_time < current_time()", "`current_time`"),
            ("lower(type) = 'x' AND random() > 0.5", "`random`"),
            ("count(*) > 1", "per-event"),
            ("type = ", "filter"),
            ("kafka_offset > 3", "kafka_offset"),
        ] {
            let error = parse_filter(&source, sql).unwrap_err().to_string();
            assert!(error.contains(needle), "{sql}: {error}");
        }
    }
}
