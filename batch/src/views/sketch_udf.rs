//! The HyperLogLog sketch as DataFusion functions, so that batch queries build exactly the
//! sketches the speed layer builds ([`lambdaflow_common::sketch`]).
//!
//! - `hll_sketch(value)`: aggregate; the sketch of the non-null values, as canonical bytes.
//! - `hll_merge(sketch)`: aggregate; the union of sketches (what rolling buckets up needs).
//! - `hll_estimate(sketch)`: scalar; the estimated number of distinct values.
//!
//! Both aggregates run as a `GroupsAccumulator`: one sketch per group in a flat vector, updated
//! row by row from the column's hashes, with no per-group boxing.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BinaryBuilder, BooleanArray, Int64Array};
use arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{DataFusionError, Result, ScalarValue, exec_err};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, ColumnarValue, EmitTo, GroupsAccumulator,
    ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use lambdaflow_common::sketch::{Sketch, SketchError, for_each_hash};

/// Name of the aggregate that sketches values.
pub const HLL_SKETCH: &str = "hll_sketch";
/// Name of the aggregate that merges sketches.
pub const HLL_MERGE: &str = "hll_merge";
/// Name of the scalar function that estimates a sketch's distinct count.
pub const HLL_ESTIMATE: &str = "hll_estimate";

/// Registers the three functions with a session.
pub fn register(registry: &mut dyn FunctionRegistry) -> Result<()> {
    registry.register_udaf(Arc::new(hll_sketch()))?;
    registry.register_udaf(Arc::new(hll_merge()))?;
    registry.register_udf(Arc::new(hll_estimate()))?;
    Ok(())
}

/// `hll_sketch(value)`.
pub fn hll_sketch() -> AggregateUDF {
    AggregateUDF::from(SketchAgg {
        merge_input: false,
        signature: Signature::any(1, Volatility::Immutable),
    })
}

/// `hll_merge(sketch)`.
pub fn hll_merge() -> AggregateUDF {
    AggregateUDF::from(SketchAgg {
        merge_input: true,
        signature: Signature::any(1, Volatility::Immutable),
    })
}

/// `hll_estimate(sketch)`.
pub fn hll_estimate() -> ScalarUDF {
    ScalarUDF::from(Estimate {
        signature: Signature::any(1, Volatility::Immutable),
    })
}

fn sketch_error(e: SketchError) -> DataFusionError {
    DataFusionError::Execution(e.to_string())
}

/// Calls `each(row, sketch)` for every non-null sketch in a binary column.
fn for_each_sketch(array: &dyn Array, mut each: impl FnMut(usize, Sketch)) -> Result<()> {
    let mut visit = |i: usize, bytes: &[u8]| -> Result<()> {
        each(i, Sketch::from_bytes(bytes).map_err(sketch_error)?);
        Ok(())
    };
    match array.data_type() {
        DataType::Binary => {
            let a = array.as_binary::<i32>();
            (0..a.len())
                .filter(|i| a.is_valid(*i))
                .try_for_each(|i| visit(i, a.value(i)))
        }
        DataType::LargeBinary => {
            let a = array.as_binary::<i64>();
            (0..a.len())
                .filter(|i| a.is_valid(*i))
                .try_for_each(|i| visit(i, a.value(i)))
        }
        DataType::BinaryView => {
            let a = array.as_binary_view();
            (0..a.len())
                .filter(|i| a.is_valid(*i))
                .try_for_each(|i| visit(i, a.value(i)))
        }
        other => exec_err!("a sketch is binary, not {other}"),
    }
}

fn sketches_to_array(sketches: &[Sketch]) -> ArrayRef {
    let mut builder = BinaryBuilder::with_capacity(sketches.len(), sketches.len() * 16);
    let mut scratch = Vec::new();
    for s in sketches {
        scratch.clear();
        s.write_bytes(&mut scratch);
        builder.append_value(&scratch);
    }
    Arc::new(builder.finish())
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct SketchAgg {
    /// Whether the input is sketches to merge rather than values to hash.
    merge_input: bool,
    signature: Signature,
}

impl AggregateUDFImpl for SketchAgg {
    fn name(&self) -> &str {
        if self.merge_input {
            HLL_MERGE
        } else {
            HLL_SKETCH
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Binary)
    }

    fn is_nullable(&self) -> bool {
        false
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(SketchAccumulator {
            sketch: Sketch::new(),
            merge_input: self.merge_input,
        }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format_state_name(args.name, "sketch"),
            DataType::Binary,
            false,
        ))])
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        _args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(SketchGroups {
            sketches: Vec::new(),
            merge_input: self.merge_input,
        }))
    }

    fn default_value(&self, _data_type: &DataType) -> Result<ScalarValue> {
        Ok(ScalarValue::Binary(Some(Sketch::new().to_bytes())))
    }
}

/// One sketch for a query without groups.
#[derive(Debug)]
struct SketchAccumulator {
    sketch: Sketch,
    merge_input: bool,
}

impl Accumulator for SketchAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        if self.merge_input {
            for_each_sketch(values[0].as_ref(), |_, s| self.sketch.merge(&s))
        } else {
            for_each_hash(values[0].as_ref(), |_, h| self.sketch.insert_hash(h))
                .map_err(sketch_error)
        }
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Binary(Some(self.sketch.to_bytes())))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.sketch.heap_bytes()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![self.evaluate()?])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        for_each_sketch(states[0].as_ref(), |_, s| self.sketch.merge(&s))
    }
}

/// One sketch per group, indexed by group.
struct SketchGroups {
    sketches: Vec<Sketch>,
    merge_input: bool,
}

fn passes(filter: Option<&BooleanArray>, row: usize) -> bool {
    filter.is_none_or(|f| f.is_valid(row) && f.value(row))
}

impl SketchGroups {
    fn merge_sketches(
        &mut self,
        values: &dyn Array,
        groups: &[usize],
        filter: Option<&BooleanArray>,
    ) -> Result<()> {
        let sketches = &mut self.sketches;
        for_each_sketch(values, |row, s| {
            if passes(filter, row) {
                sketches[groups[row]].merge(&s);
            }
        })
    }
}

impl GroupsAccumulator for SketchGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.sketches.resize_with(total_num_groups, Sketch::new);
        if self.merge_input {
            return self.merge_sketches(values[0].as_ref(), group_indices, opt_filter);
        }
        let sketches = &mut self.sketches;
        for_each_hash(values[0].as_ref(), |row, hash| {
            if passes(opt_filter, row) {
                sketches[group_indices[row]].insert_hash(hash);
            }
        })
        .map_err(sketch_error)
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        Ok(sketches_to_array(&emit_to.take_needed(&mut self.sketches)))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        Ok(vec![self.evaluate(emit_to)?])
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.sketches.resize_with(total_num_groups, Sketch::new);
        self.merge_sketches(values[0].as_ref(), group_indices, None)
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let mut rows = vec![Sketch::new(); values[0].len()];
        if self.merge_input {
            for_each_sketch(values[0].as_ref(), |row, s| {
                if passes(opt_filter, row) {
                    rows[row] = s;
                }
            })?;
        } else {
            for_each_hash(values[0].as_ref(), |row, hash| {
                if passes(opt_filter, row) {
                    rows[row].insert_hash(hash);
                }
            })
            .map_err(sketch_error)?;
        }
        Ok(vec![sketches_to_array(&rows)])
    }

    fn size(&self) -> usize {
        // An estimate that costs O(1): sparse sketches of a few entries dominate large group
        // counts; the exact sum would walk every group after every batch.
        self.sketches.capacity() * (std::mem::size_of::<Sketch>() + 32)
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Estimate {
    signature: Signature,
}

impl ScalarUDFImpl for Estimate {
    fn name(&self) -> &str {
        HLL_ESTIMATE
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let input = arrays[0].as_ref();
        let mut out = vec![None; input.len()];
        for_each_sketch(input, |row, s| out[row] = Some(s.estimate() as i64))?;
        Ok(ColumnarValue::Array(Arc::new(Int64Array::from(out))))
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, StringArray};
    use arrow::record_batch::RecordBatch;
    use datafusion::prelude::SessionContext;

    use super::*;

    #[tokio::test]
    async fn grouped_sketches_equal_sketches_built_directly() {
        let mut ctx = SessionContext::new();
        register(&mut ctx).unwrap();
        let users: Vec<String> = (0..5_000).map(|i| format!("u{}", i % 1_700)).collect();
        let groups: Vec<i64> = (0..5_000).map(|i| i % 3).collect();
        let batch = RecordBatch::try_from_iter([
            ("g", Arc::new(Int64Array::from(groups.clone())) as ArrayRef),
            ("u", Arc::new(StringArray::from(users.clone())) as ArrayRef),
        ])
        .unwrap();
        ctx.register_batch("t", batch).unwrap();
        let rows = ctx
            .sql("SELECT g, hll_sketch(u) AS s, hll_estimate(hll_sketch(u)) AS n FROM t GROUP BY g ORDER BY g")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let total = ctx
            .sql("SELECT hll_estimate(hll_merge(s)) AS n, hll_merge(s) AS s FROM (SELECT hll_sketch(u) AS s FROM t GROUP BY g)")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let mut whole = Sketch::new();
        for g in 0..3 {
            let mut expected = Sketch::new();
            for (u, _) in users.iter().zip(&groups).filter(|(_, gi)| **gi == g) {
                expected.insert_str(u);
                whole.insert_str(u);
            }
            let sketches = rows[0].column(1).as_binary::<i32>();
            assert_eq!(sketches.value(g as usize), expected.to_bytes().as_slice());
            let estimates = rows[0]
                .column(2)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap();
            assert_eq!(estimates.value(g as usize), expected.estimate() as i64);
        }
        assert_eq!(
            total[0].column(1).as_binary::<i32>().value(0),
            whole.to_bytes().as_slice()
        );
        let n = total[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0);
        assert!((1_650..1_750).contains(&n), "{n}");
    }
}
