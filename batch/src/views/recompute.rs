//! A view as a DataFusion plan over the raw table: filter, bucket, group, fold into states.
//!
//! The plan is built from the view's [`ViewLayout`] with the DataFrame API (no SQL text is
//! assembled), so column names from the config are never parsed. Buckets are integer
//! arithmetic on epoch microseconds (`t - t mod width`, as [`Granularity::truncate`]), which is
//! exact in UTC and cheaper than a time-zone-aware `date_trunc`. Every output column is cast to
//! the view table's type, so the result can be written as is.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::catalog::TableProvider;
use datafusion::common::{Column, ScalarValue};
use datafusion::functions::expr_fn::nullif;
use datafusion::functions_aggregate::expr_fn::{count, max, min, sum};
use datafusion::logical_expr::{Expr, cast, lit};
use datafusion::prelude::{DataFrame, SessionContext};
use lambdaflow_common::layout::{BUCKET, Role, ViewLayout, parse_filter};
use lambdaflow_common::schema::{EVENT_DATE, timestamp_type};
use lambdaflow_common::source::SourceConfig;
use lambdaflow_common::view::{Granularity, ViewDef};

use crate::views::sketch_udf::{hll_estimate, hll_sketch};

fn column(name: &str) -> Expr {
    Expr::Column(Column::from_name(name))
}

/// The bucket of `time`, as a timestamp: `t - (t mod w)`, with a floor for times before 1970.
pub fn bucket_expr(time: Expr, granularity: Granularity) -> Expr {
    let width = lit(granularity.micros());
    let micros = cast(time, DataType::Int64);
    let offset = ((micros.clone() % width.clone()) + width.clone()) % width;
    cast(micros - offset, timestamp_type())
}

/// The view's rows for the raw rows of `dates` (all dates when `None`), in the view table's
/// schema, as a DataFrame to collect or stream.
pub fn view_frame(
    ctx: &SessionContext,
    raw: Arc<dyn TableProvider>,
    source: &SourceConfig,
    view: &ViewDef,
    layout: &ViewLayout,
    dates: Option<&BTreeSet<i32>>,
) -> datafusion::error::Result<DataFrame> {
    let mut frame = ctx.read_table(raw)?;
    if let Some(dates) = dates {
        let list = dates
            .iter()
            .map(|d| lit(ScalarValue::Date32(Some(*d))))
            .collect();
        frame = frame.filter(column(EVENT_DATE).in_list(list, false))?;
    }
    if let Some(sql) = &view.filter {
        let filter = parse_filter(source, sql)
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
        frame = frame.filter(filter)?;
    }
    let mut groups = vec![bucket_expr(column(&source.time_field), view.granularity).alias(BUCKET)];
    groups.extend(layout.dimensions.iter().map(|(d, _)| column(d)));
    let field = |c: &lambdaflow_common::layout::MeasureColumn| {
        column(
            c.field
                .as_deref()
                .expect("checked: the measure has a field"),
        )
    };
    let aggregates: Vec<Expr> = layout
        .measures
        .iter()
        .filter(|c| c.role.is_state())
        .map(|c| {
            let state = match c.role {
                Role::Count => count(lit(1i64)),
                Role::Sum => sum(cast(field(c), c.data_type.clone())),
                Role::Min => min(field(c)),
                Role::Max => max(field(c)),
                Role::AvgSum => sum(cast(field(c), DataType::Float64)),
                Role::AvgCount => count(field(c)),
                Role::Sketch => hll_sketch().call(vec![field(c)]),
                Role::Avg | Role::Estimate => unreachable!("filtered to states"),
            };
            state.alias(&c.name)
        })
        .collect();
    let frame = frame.aggregate(groups, aggregates)?;
    let mut outputs = vec![cast(column(BUCKET), timestamp_type()).alias(BUCKET)];
    outputs.extend(
        layout
            .dimensions
            .iter()
            .map(|(d, t)| cast(column(d), t.clone()).alias(d)),
    );
    for c in &layout.measures {
        let value = match c.role {
            Role::Avg => {
                let state = |suffix: &str| column(&format!("{}__{suffix}", c.name));
                state("sum") / nullif(cast(state("count"), DataType::Float64), lit(0.0))
            }
            Role::Estimate => hll_estimate().call(vec![column(&format!("{}__hll", c.name))]),
            _ => column(&c.name),
        };
        outputs.push(cast(value, c.data_type.clone()).alias(&c.name));
    }
    outputs.push(cast(column(BUCKET), DataType::Date32).alias(EVENT_DATE));
    frame.select(outputs)
}
