//! SQL that cannot silently lie about a view's finished values.
//!
//! A view table holds, per bucket and group, finished values beside the states they come
//! from. Two of those values cannot be added up across rows: a distinct count (a buyer seen in
//! two rows is one buyer, not two) and an average (an average of averages weighs every row
//! alike, whatever its count). `sum(buyers)` and `avg(avg_order)` would run and answer wrong
//! numbers without a word, so they are refused, with the exact form over the states in the
//! message, as Druid SQL plans such rollups onto its rollup columns. What stays open: min and
//! max of anything, `avg` of a distinct count (a mean per row, which is what it says), every
//! aggregate of counts, sums, minima and maxima, and every state column under its own name.
//!
//! The check follows each aggregated column back through projections, aliases, subqueries,
//! joins and unions to the table it was read from, on the logical plan before optimisation.

use std::collections::HashMap;

use datafusion::common::Column;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::logical_expr::expr::{AggregateFunction, WindowFunction};
use datafusion::logical_expr::utils::grouping_set_to_exprlist;
use datafusion::logical_expr::{Expr, LogicalPlan, WindowFunctionDefinition};
use lambdaflow_common::config::Config;
use lambdaflow_common::layout::{Role, ViewLayout};

/// A finished column of a view table that no rollup may add up.
#[derive(Debug, Clone)]
struct Finished {
    view: String,
    column: String,
    role: Role,
    /// The exact rollup over the states, as SQL.
    exact: String,
}

/// The finished distinct counts and averages of every view, by (view, column).
#[derive(Debug, Default)]
pub struct FinishedColumns(HashMap<(String, String), Finished>);

impl FinishedColumns {
    /// Every view's distinct-count and average columns, with the states they roll up from.
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
            for column in &layout.measures {
                let exact = match column.role {
                    Role::Estimate => state(column.measure, Role::Sketch)
                        .map(|hll| format!("hll_estimate(hll_merge({hll}))")),
                    Role::Avg => state(column.measure, Role::AvgSum)
                        .zip(state(column.measure, Role::AvgCount))
                        .map(|(sum, count)| format!("sum({sum}) / sum({count})")),
                    _ => None,
                };
                if let Some(exact) = exact {
                    columns.insert(
                        (view.name.clone(), column.name.clone()),
                        Finished {
                            view: view.name.clone(),
                            column: column.name.clone(),
                            role: column.role,
                            exact,
                        },
                    );
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
                    .filter_map(|e| match unalias(e) {
                        Expr::AggregateFunction(AggregateFunction { func, params }) => {
                            Some((func.name(), params.args.as_slice()))
                        }
                        _ => None,
                    })
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
                for column in args.iter().flat_map(|a| a.column_refs()) {
                    for finished in self.origins_of_column(input, column) {
                        if let Some(message) = refuses(function, finished) {
                            refusal = Some(message);
                            return Ok(TreeNodeRecursion::Stop);
                        }
                    }
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
            expr.column_refs()
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
            LogicalPlan::Aggregate(aggregate) => grouping_set_to_exprlist(&aggregate.group_expr)
                .ok()
                .and_then(|groups| groups.get(index).copied())
                .map(|e| through(&aggregate.input, e))
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

/// Why `function` over `finished` would answer a wrong number, and what to write instead.
fn refuses(function: &str, finished: &Finished) -> Option<String> {
    let Finished {
        view,
        column,
        role,
        exact,
    } = finished;
    let why = match (function, role) {
        ("sum", Role::Estimate) => format!(
            "adds distinct counts of different rows of `{view}`, counting a value once per row it is in"
        ),
        ("sum", Role::Avg) => format!("adds averages of different rows of `{view}`"),
        ("avg", Role::Avg) => format!(
            "averages averages of rows of `{view}` as if each row held as many values as any other"
        ),
        _ => return None,
    };
    Some(format!(
        "`{function}({column})` {why}: write `{exact}` for the exact value of the coarser group \
         (the state columns of `{column}` are readable under their own names)"
    ))
}
