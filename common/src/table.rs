//! A view's merged states as one Arrow batch in the view table's layout ([`ViewLayout`]):
//! what SQL reads as the view. The state columns are those of the Delta view table, so a
//! query rolls averages up from `<m>__sum` and `<m>__count` and distinct counts from the
//! `<m>__hll` sketches exactly as it would over the batch table alone.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Float64Builder, Int64Builder,
    RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, TimeUnit};
use arrow::error::ArrowError;

use crate::layout::{Role, ViewLayout};
use crate::query::{AnswerLimits, Query, Value, finalise, merge};
use crate::source::SourceConfig;
use crate::state::{Dim, Num, State, ViewState};
use crate::view::ViewDef;

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// The groups of `parts` merged, one row per (bucket, dimension values), ordered by bucket
/// then dimensions, in `layout.schema`.
pub fn merged_batch(
    source: &SourceConfig,
    view: &ViewDef,
    layout: &ViewLayout,
    parts: &[&ViewState],
) -> Result<RecordBatch, ArrowError> {
    let all = Query::whole(view);
    let mut groups: Vec<_> = merge(view, parts, &all, &AnswerLimits::NONE)
        .expect("a merge without limits is never refused")
        .into_iter()
        .collect();
    groups.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));

    let buckets: Vec<i64> = groups.iter().map(|((b, _), _)| b.unwrap_or(0)).collect();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(layout.schema.fields().len());
    columns.push(Arc::new(
        TimestampMicrosecondBuilder::with_capacity(buckets.len())
            .with_timezone("UTC")
            .extend_from(buckets.iter().copied().map(Some)),
    ));
    for (d, (_, data_type)) in layout.dimensions.iter().enumerate() {
        columns.push(dimension(
            data_type,
            groups.iter().map(|((_, dims), _)| dims[d]),
        )?);
    }
    for column in &layout.measures {
        let states = groups
            .iter()
            .map(|(_, states)| states[column.measure].as_ref());
        columns.push(measure(
            source,
            view,
            column.measure,
            column.role,
            &column.data_type,
            states,
        ));
    }
    let mut dates = Date32Builder::with_capacity(buckets.len());
    for b in &buckets {
        dates.append_value(i32::try_from(b.div_euclid(MICROS_PER_DAY)).unwrap_or(i32::MAX));
    }
    columns.push(Arc::new(dates.finish()));
    RecordBatch::try_new(layout.schema.clone(), columns)
}

trait ExtendFrom<T> {
    fn extend_from(self, values: impl Iterator<Item = Option<T>>) -> ArrayRef;
}

impl ExtendFrom<i64> for TimestampMicrosecondBuilder {
    fn extend_from(mut self, values: impl Iterator<Item = Option<i64>>) -> ArrayRef {
        for v in values {
            self.append_option(v);
        }
        Arc::new(self.finish())
    }
}

fn dimension<'a>(
    data_type: &DataType,
    values: impl Iterator<Item = &'a Dim>,
) -> Result<ArrayRef, ArrowError> {
    let int = |d: &Dim| match d {
        Dim::Int(i) => Some(*i),
        _ => None,
    };
    Ok(match data_type {
        DataType::Utf8 => {
            let mut b = StringBuilder::new();
            for d in values {
                b.append_option(match d {
                    Dim::Str(s) => Some(&**s),
                    _ => None,
                });
            }
            Arc::new(b.finish())
        }
        DataType::Int64 => {
            let mut b = Int64Builder::new();
            values.for_each(|d| b.append_option(int(d)));
            Arc::new(b.finish())
        }
        DataType::Float64 => {
            let mut b = Float64Builder::new();
            for d in values {
                b.append_option(match d {
                    Dim::Float(bits) => Some(f64::from_bits(*bits)),
                    _ => None,
                });
            }
            Arc::new(b.finish())
        }
        DataType::Boolean => {
            let mut b = BooleanBuilder::new();
            for d in values {
                b.append_option(match d {
                    Dim::Bool(v) => Some(*v),
                    _ => None,
                });
            }
            Arc::new(b.finish())
        }
        DataType::Timestamp(TimeUnit::Microsecond, tz) => TimestampMicrosecondBuilder::new()
            .with_timezone_opt(tz.clone())
            .extend_from(values.map(int)),
        other => {
            return Err(ArrowError::NotYetImplemented(format!(
                "dimension of type {other}"
            )));
        }
    })
}

fn measure<'a>(
    source: &SourceConfig,
    view: &ViewDef,
    m: usize,
    role: Role,
    data_type: &DataType,
    states: impl Iterator<Item = &'a State>,
) -> ArrayRef {
    match role {
        Role::Sketch => {
            let mut b = BinaryBuilder::new();
            let mut bytes = Vec::new();
            for state in states {
                match state {
                    State::Distinct(sketch) => {
                        bytes.clear();
                        sketch.write_bytes(&mut bytes);
                        b.append_value(&bytes);
                    }
                    _ => b.append_null(),
                }
            }
            Arc::new(b.finish())
        }
        Role::AvgSum => {
            let mut b = Float64Builder::new();
            for state in states {
                b.append_option(match state {
                    State::Avg { sum, .. } => *sum,
                    _ => None,
                });
            }
            Arc::new(b.finish())
        }
        Role::AvgCount => {
            let mut b = Int64Builder::new();
            for state in states {
                b.append_option(match state {
                    State::Avg { count, .. } => Some(*count),
                    _ => None,
                });
            }
            Arc::new(b.finish())
        }
        Role::Count | Role::Sum | Role::Min | Role::Max | Role::Avg | Role::Estimate => {
            let values = states.map(|s| finalise(source, view, m, s));
            match data_type {
                DataType::Float64 => {
                    let mut b = Float64Builder::new();
                    for v in values {
                        b.append_option(match v {
                            Value::Float(f) => Some(f),
                            Value::Int(i) => Some(Num::Int(i).as_f64()),
                            Value::Null | Value::Time(_) => None,
                        });
                    }
                    Arc::new(b.finish())
                }
                DataType::Timestamp(TimeUnit::Microsecond, tz) => {
                    TimestampMicrosecondBuilder::new()
                        .with_timezone_opt(tz.clone())
                        .extend_from(values.map(|v| match v {
                            Value::Time(t) | Value::Int(t) => Some(t),
                            Value::Null | Value::Float(_) => None,
                        }))
                }
                _ => {
                    let mut b = Int64Builder::new();
                    for v in values {
                        b.append_option(match v {
                            Value::Int(i) | Value::Time(i) => Some(i),
                            Value::Null | Value::Float(_) => None,
                        });
                    }
                    Arc::new(b.finish())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, AsArray, BooleanArray};
    use arrow::datatypes::Int64Type;

    use super::*;
    use crate::config::Config;
    use crate::sample::{Generator, Mix};
    use crate::timestamp::now_micros;
    use crate::validate::{Coordinates, Validator};

    /// Folds `n` generated events into two parts per view, split at `split`.
    fn parts(config: &Config, n: usize, split: usize) -> Vec<(ViewState, ViewState)> {
        let validator = Validator::new(config.source());
        let mut generator = Generator::shop(
            7,
            50,
            Mix {
                duplicates: 0.0,
                late: 0.3,
                invalid: 0.0,
            },
        );
        let now = now_micros();
        let mut builder = validator.batch_builder("events", now);
        for offset in 0..n {
            let sample = generator.next_event(now);
            let at = Coordinates {
                partition: 0,
                offset: offset as i64,
            };
            builder.push(Some(&sample.payload), at).unwrap();
        }
        let events = builder.finish().events;
        let first: BooleanArray = (0..events.num_rows()).map(|i| Some(i < split)).collect();
        let second: BooleanArray = (0..events.num_rows()).map(|i| Some(i >= split)).collect();
        config
            .views
            .iter()
            .map(|view| {
                let (mut a, mut b) = (ViewState::new(), ViewState::new());
                a.fold(config.source(), view, &events, &first).unwrap();
                b.fold(config.source(), view, &events, &second).unwrap();
                (a, b)
            })
            .collect()
    }

    #[test]
    fn merged_batch_loads_back_as_the_merged_state_with_final_values() {
        let config = Config::shop();
        for (view, (a, b)) in config.views.iter().zip(parts(&config, 2_000, 700)) {
            let layout = ViewLayout::new(config.source(), view).unwrap();
            let batch = merged_batch(config.source(), view, &layout, &[&a, &b]).unwrap();
            let mut whole = a.clone();
            whole.merge_into(view, &b);
            assert_eq!(batch.num_rows(), whole.len(), "{}", view.name);

            let mut loaded = ViewState::new();
            loaded
                .from_view_batch(config.source(), view, &batch)
                .unwrap();
            let sorted = |s: &ViewState| {
                let mut groups: Vec<_> = s.groups().map(|(k, v)| (k.clone(), v.to_vec())).collect();
                groups.sort_by(|x, y| x.0.cmp(&y.0));
                groups
            };
            assert_eq!(sorted(&loaded), sorted(&whole), "{}", view.name);

            let buckets = batch
                .column(0)
                .as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
            assert!(
                buckets.values().windows(2).all(|w| w[0] <= w[1]),
                "ordered by bucket"
            );
            for column in layout.measures.iter().filter(|c| c.role == Role::Estimate) {
                let estimates = batch
                    .column_by_name(&column.name)
                    .unwrap()
                    .as_primitive::<Int64Type>();
                assert_eq!(estimates.null_count(), 0);
                assert!(estimates.values().iter().all(|e| *e > 0));
            }
        }
    }
}
