//! SQL that cannot silently lie about a view's finished values.
//!
//! A view table holds, per bucket and group, finished values beside the states they come
//! from. Two of those values cannot be added up across rows: a distinct count (a buyer seen in
//! two rows is one buyer, not two) and an average (an average of averages weighs every row
//! alike, whatever its count). `sum(buyers)` and `avg(avg_order)` would run and answer wrong
//! numbers without a word, so they are refused, with the exact form over the states in the
//! message, as Druid SQL plans such rollups onto its rollup columns. The same numbers made
//! from the states are refused alike: `sum(hll_estimate(buyers__hll))` (per-row estimates
//! added) and `avg(avg_order__sum / avg_order__count)` (per-row averages averaged). What stays
//! open: min and max of anything, `avg` of a distinct count (a mean per row, which is what it
//! says), every aggregate of counts, sums, minima and maxima, and the states rolled up through
//! their own functions (`hll_merge`, `sum` of each part).
//!
//! The check follows each aggregated value back through projections, aliases, subqueries,
//! `DISTINCT ON`, joins, unions and the outputs of inner aggregates that pass their rows' values
//! on (a per-group distinct count summed again is still distinct counts added) to the table it
//! was read from, on the logical plan before optimisation. Columns a condition only tests
//! (`CASE WHEN avg_order > 100 THEN orders END`) are not the value, and do not count. A value
//! keeps its kind through an inner selector too: the average of daily `max(avg_order)` is
//! refused as an average of averages, which errs on the side of saying so.

use std::collections::HashMap;

use datafusion::common::Column;
use datafusion::common::tree_node::TreeNode;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::logical_expr::expr::{AggregateFunction, WindowFunction};
use datafusion::logical_expr::utils::grouping_set_to_exprlist;
use datafusion::logical_expr::{Distinct, Expr, LogicalPlan, WindowFunctionDefinition};
use lambdaflow_common::config::Config;
use lambdaflow_common::layout::{Role, ViewLayout};

/// A column of a view table that no rollup may add up: a finished distinct count or average,
/// or a state that rolls up only through its own functions (a sketch, an average's parts).
#[derive(Debug, Clone)]
struct Finished {
    view: String,
    /// The column as the table names it.
    column: String,
    /// The finished column it stands for (itself, for a finished one).
    measure: String,
    role: Role,
    /// The exact rollup over the states, as SQL.
    exact: String,
}

/// The finished distinct counts and averages of every view, and their states, by (view,
/// column).
#[derive(Debug, Default)]
pub struct FinishedColumns(HashMap<(String, String), Finished>);

impl FinishedColumns {
    /// Every view's distinct-count and average columns and their states, with the exact
    /// rollup over the states.
    pub fn of(config: &Config) -> Self {
        let mut columns = HashMap::new();
        for view in &config.views {
            let Ok(layout) = ViewLayout::new(config.source_of(view), view) else {
                continue;
            };
            let state = |measure: usize, role: Role| {
                layout
                    .measures
                    .iter()
                    .find(|c| c.measure == measure && c.role == role)
                    .map(|c| c.name.clone())
            };
            for finished in &layout.measures {
                let (exact, states) = match finished.role {
                    Role::Estimate => {
                        let Some(hll) = state(finished.measure, Role::Sketch) else {
                            continue;
                        };
                        (format!("hll_estimate(hll_merge({hll}))"), vec![hll])
                    }
                    Role::Avg => {
                        let (Some(sum), Some(count)) = (
                            state(finished.measure, Role::AvgSum),
                            state(finished.measure, Role::AvgCount),
                        ) else {
                            continue;
                        };
                        (format!("sum({sum}) / sum({count})"), vec![sum, count])
                    }
                    _ => continue,
                };
                let of = |column: &str| {
                    let role = layout
                        .measures
                        .iter()
                        .find(|c| c.name == column)
                        .map_or(finished.role, |c| c.role);
                    Finished {
                        view: view.name.clone(),
                        column: column.to_owned(),
                        measure: finished.name.clone(),
                        role,
                        exact: exact.clone(),
                    }
                };
                for column in states.iter().chain([&finished.name]) {
                    columns.insert((view.name.clone(), column.clone()), of(column));
                }
            }
        }
        Self(columns)
    }

    /// The refusal for the first aggregate of `plan` (or of a subquery in it) that adds up
    /// distinct counts or averages, or averages averages.
    pub fn check(&self, plan: &LogicalPlan) -> Result<(), String> {
        if self.0.is_empty() {
            return Ok(());
        }
        let mut refusal = None;
        let _ = plan.apply_with_subqueries(|node| {
            let aggregates: Vec<(&str, &[Expr])> = match node {
                LogicalPlan::Aggregate(aggregate) => aggregate
                    .aggr_expr
                    .iter()
                    .filter_map(|e| aggregate_call(e))
                    .collect(),
                LogicalPlan::Window(window) => window
                    .window_expr
                    .iter()
                    .filter_map(|e| match unalias(e) {
                        Expr::WindowFunction(function) => {
                            let WindowFunction { fun, params } = function.as_ref();
                            match fun {
                                WindowFunctionDefinition::AggregateUDF(udf) => {
                                    Some((udf.name(), params.args.as_slice()))
                                }
                                WindowFunctionDefinition::WindowUDF(_) => None,
                            }
                        }
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            let Some(input) = node.inputs().first().copied() else {
                return Ok(TreeNodeRecursion::Continue);
            };
            for (function, args) in aggregates {
                let mut columns = Vec::new();
                for arg in args {
                    value_columns(arg, &mut columns);
                }
                let origins: Vec<&Finished> = columns
                    .into_iter()
                    .flat_map(|column| self.origins_of_column(input, column))
                    .collect();
                if let Some(message) = refuses(function, &origins) {
                    refusal = Some(message);
                    return Ok(TreeNodeRecursion::Stop);
                }
            }
            Ok(TreeNodeRecursion::Continue)
        });
        refusal.map_or(Ok(()), Err)
    }

    fn origins_of_column(&self, plan: &LogicalPlan, column: &Column) -> Vec<&Finished> {
        match plan.schema().maybe_index_of_column(column) {
            Some(index) => self.origins(plan, index),
            None => Vec::new(),
        }
    }

    /// The finished view columns that output column `index` of `plan` passes on unaggregated.
    fn origins(&self, plan: &LogicalPlan, index: usize) -> Vec<&Finished> {
        let through = |input: &LogicalPlan, expr: &Expr| {
            let mut columns = Vec::new();
            value_columns(expr, &mut columns);
            columns
                .into_iter()
                .flat_map(|c| self.origins_of_column(input, c))
                .collect()
        };
        match plan {
            LogicalPlan::TableScan(scan) => {
                let name = scan.projected_schema.field(index).name();
                self.0
                    .get(&(scan.table_name.table().to_owned(), name.clone()))
                    .into_iter()
                    .collect()
            }
            LogicalPlan::Projection(projection) => projection
                .expr
                .get(index)
                .map(|e| through(&projection.input, e))
                .unwrap_or_default(),
            LogicalPlan::Aggregate(aggregate) => {
                // Group columns first, aggregate values last; a value that passes its
                // argument's rows on (a sum of distinct counts, a merged sketch) is traced.
                let values = aggregate.aggr_expr.len();
                let first_value = aggregate.schema.fields().len() - values;
                if index >= first_value {
                    return match aggregate_call(&aggregate.aggr_expr[index - first_value]) {
                        Some((function, args)) if PASSES_ROWS_ON.contains(&function) => args
                            .iter()
                            .flat_map(|arg| through(&aggregate.input, arg))
                            .collect(),
                        _ => Vec::new(),
                    };
                }
                grouping_set_to_exprlist(&aggregate.group_expr)
                    .ok()
                    .and_then(|groups| groups.get(index).copied())
                    .map(|e| through(&aggregate.input, e))
                    .unwrap_or_default()
            }
            LogicalPlan::Distinct(Distinct::On(on)) => on
                .select_expr
                .get(index)
                .map(|e| through(&on.input, e))
                .unwrap_or_default(),
            LogicalPlan::Union(union) => union
                .inputs
                .iter()
                .flat_map(|input| self.origins(input, index))
                .collect(),
            _ => {
                // Every other node passes its inputs' columns on by name (joins, subquery
                // aliases by position) or makes new ones (window results, unnest).
                let (qualifier, field) = plan.schema().qualified_field(index);
                let inputs = plan.inputs();
                if let [input] = inputs.as_slice()
                    && input.schema().fields().len() == plan.schema().fields().len()
                {
                    return self.origins(input, index);
                }
                inputs
                    .iter()
                    .find_map(|input| {
                        input
                            .schema()
                            .index_of_column_by_name(qualifier, field.name())
                            .map(|i| self.origins(input, i))
                    })
                    .unwrap_or_default()
            }
        }
    }
}

fn unalias(expr: &Expr) -> &Expr {
    match expr {
        Expr::Alias(alias) => unalias(&alias.expr),
        other => other,
    }
}

/// Aggregates whose value is one of their argument's values, or a sum or merge of them: what
/// they output is still the kind of column they read.
const PASSES_ROWS_ON: &[&str] = &[
    "sum",
    "min",
    "max",
    "hll_merge",
    "first_value",
    "last_value",
    "any_value",
    "nth_value",
];

/// The aggregate function called by `expr` (under any alias), and its arguments.
fn aggregate_call(expr: &Expr) -> Option<(&str, &[Expr])> {
    match unalias(expr) {
        Expr::AggregateFunction(AggregateFunction { func, params }) => {
            Some((func.name(), params.args.as_slice()))
        }
        _ => None,
    }
}

/// The columns whose values can flow into `expr`'s value: not those only tested by a
/// condition (`CASE WHEN avg_order > 100 THEN orders END` carries `orders`, not `avg_order`),
/// a comparison or a predicate, whose value is a truth, not the column's.
fn value_columns<'a>(expr: &'a Expr, out: &mut Vec<&'a Column>) {
    match expr {
        Expr::Column(column) => out.push(column),
        Expr::Case(case) => {
            for (_, then) in &case.when_then_expr {
                value_columns(then, out);
            }
            if let Some(otherwise) = &case.else_expr {
                value_columns(otherwise, out);
            }
        }
        // Comparisons, matches and logic (the operators with a negation, and AND, OR).
        Expr::BinaryExpr(binary)
            if binary.op.negate().is_some() || binary.op.is_logic_operator() => {}
        Expr::Not(_)
        | Expr::IsNull(_)
        | Expr::IsNotNull(_)
        | Expr::IsTrue(_)
        | Expr::IsFalse(_)
        | Expr::IsUnknown(_)
        | Expr::IsNotTrue(_)
        | Expr::IsNotFalse(_)
        | Expr::IsNotUnknown(_)
        | Expr::Like(_)
        | Expr::SimilarTo(_)
        | Expr::Between(_)
        | Expr::InList(_)
        | Expr::InSubquery(_)
        | Expr::Exists(_) => {}
        other => {
            let _ = other.apply_children(|child| {
                value_columns(child, out);
                Ok(TreeNodeRecursion::Continue)
            });
        }
    }
}

/// Why `function` over columns from `origins` would answer a wrong number, and what to write
/// instead.
fn refuses(function: &str, origins: &[&Finished]) -> Option<String> {
    if !matches!(function, "sum" | "avg") {
        return None;
    }
    for finished in origins {
        let Finished {
            view,
            column,
            measure,
            role,
            exact,
        } = finished;
        let why = match (function, role) {
            ("sum", Role::Estimate | Role::Sketch) => format!(
                "adds distinct counts of different rows of `{view}`, counting a value once per row it is in"
            ),
            ("sum", Role::Avg) => format!("adds averages of different rows of `{view}`"),
            ("avg", Role::Avg) => format!(
                "averages averages of rows of `{view}` as if each row held as many values as any other"
            ),
            ("sum" | "avg", Role::AvgSum)
                if origins.iter().any(|other| {
                    other.role == Role::AvgCount && other.view == *view && other.measure == *measure
                }) =>
            {
                format!(
                    "works on each row's average of `{view}` (its sum over its count), weighing every row alike"
                )
            }
            _ => continue,
        };
        let call = match role {
            Role::Estimate | Role::Avg => format!("`{function}({column})`"),
            _ => format!("`{function}` over `{column}`"),
        };
        return Some(format!(
            "{call} {why}: write `{exact}` for the exact `{measure}` of the coarser group \
             (its state columns are readable under their own names)"
        ));
    }
    None
}
