//! The state queries read: per view, the loaded batch version and the speed state of the
//! offsets beyond its watermark, swapped together.
//!
//! One writer ([`Speed`], driven by the consumer loop) and many readers (queries, through
//! [`Shared`]). The speed side keeps every first occurrence of a valid event since the lowest
//! watermark of any view ("retained" Arrow batches), so that when a view gets a new batch
//! version its speed state is refolded from memory — no Kafka replay — and swapped with the
//! batch version under one write lock: a query holds the read lock for its whole run and sees
//! one (batch, speed) pair per view, never a mix.
//!
//! Deduplication (SPEC §3) is exact: an event is a first occurrence unless its (date, id) is
//! in the raw table at the lowest watermark's version or among the first occurrences retained
//! since; both together cover every offset before it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use arrow::array::{AsArray, BooleanArray, RecordBatch, UInt32Array};
use arrow::compute::{and, filter_record_batch, take_record_batch};
use arrow::datatypes::Date32Type;
use datafusion::common::DFSchema;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;
use lambdaflow_common::batch_view::BatchView;
use lambdaflow_common::config::Config;
use lambdaflow_common::dedup::SeenIds;
use lambdaflow_common::layout::parse_filter;
use lambdaflow_common::schema::{EVENT_DATE, KAFKA_OFFSET, KAFKA_PARTITION, raw_schema};
use lambdaflow_common::state::ViewState;
use lambdaflow_common::watermark::{Watermark, at_or_beyond};

use crate::error::{Error, Result};

/// One view as queries see it.
#[derive(Debug, Default)]
pub struct ViewPair {
    /// The batch side.
    pub batch: Arc<BatchView>,
    /// Events beyond the batch watermark.
    pub speed: ViewState,
}

/// What queries read, under one lock.
#[derive(Debug, Default)]
pub struct Lambda {
    /// Per view, in config order.
    pub views: Vec<ViewPair>,
    /// Last offset consumed per partition.
    pub consumed: BTreeMap<i32, i64>,
    /// The head of each partition when the speed layer started (the first offset not yet
    /// written), once read; caught up once every partition is consumed that far.
    pub start_head: Option<BTreeMap<i32, i64>>,
    /// The latest head read of each partition (the first offset not yet written), refreshed
    /// every few seconds: what the lag is measured against.
    pub heads: BTreeMap<i32, i64>,
    /// First occurrences retained in memory.
    pub retained_events: usize,
    /// Bytes of the Arrow buffers holding them.
    pub retained_bytes: usize,
}

impl Lambda {
    /// Whether the speed layer has consumed everything the topic held when it started.
    pub fn caught_up(&self) -> bool {
        self.start_head.as_ref().is_some_and(|heads| {
            heads
                .iter()
                .all(|(p, head)| *head == 0 || self.consumed.get(p).is_some_and(|o| o + 1 >= *head))
        })
    }
}

/// The shared state.
pub type Shared = Arc<RwLock<Lambda>>;

/// The writer side: validation output in, states out.
pub struct Speed {
    config: Arc<Config>,
    shared: Shared,
    filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    retained: Vec<RecordBatch>,
    seen: SeenIds,
    /// The lowest watermark over views: where retention and the raw ids start.
    floor: Watermark,
}

impl std::fmt::Debug for Speed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Speed")
            .field("retained", &self.retained.len())
            .field("floor", &self.floor)
            .finish_non_exhaustive()
    }
}

/// The lowest of the views' watermarks: per partition the smallest next offset, at the
/// smallest raw version.
fn floor(batches: &[Arc<BatchView>], partitions: &BTreeSet<i32>) -> Watermark {
    let raw_version = batches
        .iter()
        .map(|b| b.watermark.as_ref().map_or(0, |w| w.raw_version))
        .min()
        .unwrap_or(0);
    let offsets = partitions
        .iter()
        .map(|p| {
            let next = batches.iter().map(|b| b.next_offset(*p)).min().unwrap_or(0);
            (*p, next - 1)
        })
        .collect();
    Watermark {
        raw_version,
        offsets,
    }
}

impl Speed {
    /// A speed layer for `config` before any batch run: every view's batch side is empty, so
    /// the speed side covers every offset.
    pub fn before_any_batch(config: Arc<Config>, shared: Shared) -> Result<Self> {
        let empty = config
            .views
            .iter()
            .map(|_| Arc::new(BatchView::default()))
            .collect();
        Self::new(config, shared, empty)
    }

    /// A speed layer for `config` over `batches` (one per view, in config order), publishing
    /// into `shared`.
    pub fn new(config: Arc<Config>, shared: Shared, batches: Vec<Arc<BatchView>>) -> Result<Self> {
        let schema = raw_schema(&config.source);
        let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
        let ctx = SessionContext::new();
        let mut filters = Vec::new();
        for view in &config.views {
            filters.push(match &view.filter {
                Some(sql) => {
                    let expr = parse_filter(&config.source, sql).map_err(Error::Filter)?;
                    Some(ctx.create_physical_expr(expr, &df_schema)?)
                }
                None => None,
            });
        }
        let partitions = batches
            .iter()
            .filter_map(|b| b.watermark.as_ref())
            .flat_map(|w| w.offsets.keys().copied())
            .collect();
        let floor = floor(&batches, &partitions);
        {
            let mut lambda = shared.write().expect("not poisoned");
            lambda.views = batches
                .into_iter()
                .map(|batch| ViewPair {
                    batch,
                    speed: ViewState::new(),
                })
                .collect();
        }
        Ok(Self {
            seen: SeenIds::new(config.archive.dedup_max_dates),
            config,
            shared,
            filters,
            retained: Vec::new(),
            floor,
        })
    }

    /// The state queries read.
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The raw version whose ids deduplication needs ([`Self::load_ids`]).
    pub fn raw_version(&self) -> u64 {
        self.floor.raw_version
    }

    /// The first offset to consume from each of `partitions`.
    pub fn start_offsets(&self, partitions: &[i32]) -> BTreeMap<i32, i64> {
        partitions
            .iter()
            .map(|p| (*p, self.floor.next_offset(*p)))
            .collect()
    }

    /// The event dates of `events` whose ids must be loaded before [`Self::fold`].
    pub fn dates_to_load(&mut self, events: &RecordBatch) -> Vec<i32> {
        let needed: BTreeSet<i32> = dates(events).values().iter().copied().collect();
        self.seen.dates_to_load(&needed)
    }

    /// Records the ids the raw table holds for `date` at [`Self::raw_version`]; the retained
    /// first occurrences of that date are added here.
    pub fn load_ids<'a>(&mut self, date: i32, raw_ids: impl IntoIterator<Item = &'a str>) {
        self.seen.load(date, raw_ids);
        let id_field = 0;
        for batch in &self.retained {
            let ds = dates(batch);
            let ids = batch.column(id_field).as_string::<i32>();
            self.seen.load(
                date,
                (0..batch.num_rows())
                    .filter(|i| ds.value(*i) == date)
                    .map(|i| ids.value(i)),
            );
        }
    }

    /// Folds validated events (raw-table columns, in offset order per partition) into every
    /// view: first occurrences only, and per view only offsets beyond its watermark.
    /// `consumed` is the last offset read per partition, including messages that gave nothing.
    pub fn fold(&mut self, events: RecordBatch, consumed: &BTreeMap<i32, i64>) -> Result<()> {
        let events_len = events.num_rows();
        let first = if events.num_rows() == 0 {
            events
        } else {
            let keep = self
                .seen
                .keep(events.column(0).as_string::<i32>(), dates(&events));
            if keep.true_count() == keep.len() {
                // The validator's builders reserve room for a thousand rows; a retained
                // micro-batch of a few events would keep all of it. Filtering copies to size
                // already; a batch kept whole is copied here.
                let all = UInt32Array::from_iter_values(0..events.num_rows() as u32);
                take_record_batch(&events, &all)?
            } else {
                filter_record_batch(&events, &keep)?
            }
        };
        crate::metrics::DUPLICATES.inc_by((events_len - first.num_rows()) as u64);
        let masks = self.masks(&first)?;
        let mut lambda = self.shared.write().expect("not poisoned");
        for ((pair, view), mask) in lambda.views.iter_mut().zip(&self.config.views).zip(&masks) {
            let mask = and(mask, &beyond(&first, |p| pair.batch.next_offset(p)))?;
            pair.speed.fold(&self.config.source, view, &first, &mask)?;
        }
        for (p, o) in consumed {
            let entry = lambda.consumed.entry(*p).or_insert(*o);
            *entry = (*entry).max(*o);
        }
        lambda.retained_events += first.num_rows();
        if first.num_rows() > 0 {
            lambda.retained_bytes += first.get_array_memory_size();
            drop(lambda);
            self.retained.push(first);
        }
        Ok(())
    }

    fn masks(&self, events: &RecordBatch) -> Result<Vec<BooleanArray>> {
        self.filters
            .iter()
            .map(|f| match f {
                None => Ok(BooleanArray::from(vec![true; events.num_rows()])),
                Some(expr) => {
                    let value = expr.evaluate(events)?.into_array(events.num_rows())?;
                    let mask = value.as_boolean();
                    // A null filter result excludes the event, as SQL's WHERE does.
                    Ok(mask.iter().map(|v| Some(v.unwrap_or(false))).collect())
                }
            })
            .collect()
    }

    /// Swaps in new batch versions (`None` keeps a view's current one): each changed view's
    /// speed state is refolded from the retained events beyond its new watermark, and both
    /// replace the old pair in one step. Retention and deduplication then start at the new
    /// lowest watermark; the caller reloads ids at [`Self::raw_version`] as they are asked for.
    pub fn swap(&mut self, batches: Vec<Option<Arc<BatchView>>>) -> Result<()> {
        let current: Vec<Arc<BatchView>> = {
            let lambda = self.shared.read().expect("not poisoned");
            lambda.views.iter().map(|v| v.batch.clone()).collect()
        };
        let next: Vec<Arc<BatchView>> = current
            .iter()
            .zip(&batches)
            .map(|(old, new)| new.clone().unwrap_or_else(|| old.clone()))
            .collect();
        let mut partitions: BTreeSet<i32> = self.floor.offsets.keys().copied().collect();
        partitions.extend(
            next.iter()
                .filter_map(|b| b.watermark.as_ref())
                .flat_map(|w| w.offsets.keys().copied()),
        );
        let floor = floor(&next, &partitions);
        if floor
            .offsets
            .iter()
            .any(|(p, o)| *o < self.floor.offsets.get(p).copied().unwrap_or(-1))
        {
            return Err(Error::WatermarkMovedBack {
                before: self.floor.clone(),
                after: floor,
            });
        }
        let changed: Vec<(usize, &Arc<BatchView>)> = batches
            .iter()
            .enumerate()
            .filter_map(|(i, new)| new.as_ref().map(|new| (i, new)))
            .collect();
        let mut states: Vec<ViewState> = changed.iter().map(|_| ViewState::new()).collect();
        for events in &self.retained {
            let masks = self.masks(events)?;
            for ((i, new), state) in changed.iter().zip(&mut states) {
                let mask = and(&masks[*i], &beyond(events, |p| new.next_offset(p)))?;
                state.fold(&self.config.source, &self.config.views[*i], events, &mask)?;
            }
        }
        let refolded: Vec<(usize, Arc<BatchView>, ViewState)> = changed
            .into_iter()
            .zip(states)
            .map(|((i, new), state)| (i, new.clone(), state))
            .collect();
        {
            let mut lambda = self.shared.write().expect("not poisoned");
            for (i, batch, speed) in refolded {
                lambda.views[i] = ViewPair { batch, speed };
            }
        }
        let mut kept = Vec::new();
        for events in self.retained.drain(..) {
            let mask = beyond(&events, |p| floor.next_offset(p));
            let events = filter_record_batch(&events, &mask)?;
            if events.num_rows() > 0 {
                kept.push(events);
            }
        }
        self.retained = kept;
        let mut lambda = self.shared.write().expect("not poisoned");
        lambda.retained_events = self.retained.iter().map(RecordBatch::num_rows).sum();
        lambda.retained_bytes = self
            .retained
            .iter()
            .map(RecordBatch::get_array_memory_size)
            .sum();
        drop(lambda);
        if floor.raw_version != self.floor.raw_version {
            self.seen = SeenIds::new(self.config.archive.dedup_max_dates);
        }
        self.floor = floor;
        Ok(())
    }
}

fn dates(events: &RecordBatch) -> &arrow::array::Date32Array {
    events
        .column_by_name(EVENT_DATE)
        .expect("validated events carry event_date")
        .as_primitive::<Date32Type>()
}

/// Rows whose offset is at or beyond `next(partition)`.
fn beyond(events: &RecordBatch, next: impl Fn(i32) -> i64) -> BooleanArray {
    at_or_beyond(events, (KAFKA_PARTITION, KAFKA_OFFSET), next)
}

#[cfg(test)]
mod tests {
    use lambdaflow_common::sample::{Mix, ShopGenerator};
    use lambdaflow_common::timestamp::now_micros;
    use lambdaflow_common::validate::{Coordinates, Validator};

    use super::*;

    #[test]
    fn retained_micro_batches_hold_their_rows_not_their_builders_capacity() {
        let config = Arc::new(Config::demo());
        let shared = Shared::default();
        let mut speed = Speed::before_any_batch(config.clone(), shared.clone()).unwrap();
        let validator = Validator::new(&config.source);
        let mix = Mix {
            duplicates: 0.0,
            late: 0.0,
            invalid: 0.0,
        };
        let mut generator = ShopGenerator::new(3, 100, mix);
        let now = now_micros();
        for offset in 0..500 {
            let mut builder = validator.batch_builder("events", now);
            let sample = generator.next_event(now);
            let at = Coordinates {
                partition: 0,
                offset,
            };
            builder.push(Some(&sample.payload), at).unwrap();
            let events = builder.finish().events;
            for date in speed.dates_to_load(&events) {
                speed.load_ids(date, []);
            }
            speed.fold(events, &[(0, offset)].into()).unwrap();
        }
        let lambda = shared.read().unwrap();
        assert_eq!(lambda.retained_events, 500);
        let per_event = lambda.retained_bytes / 500;
        assert!(per_event < 4096, "{per_event} bytes retained per event");
    }
}
