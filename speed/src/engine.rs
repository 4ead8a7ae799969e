//! The speed layer's sans-IO core: first-occurrence deduplication, folding validated Arrow
//! micro-batches into every view's speed state, and the swap when a view gets a new batch
//! version. No Kafka and no lake here: the adapter ([`crate::consume`]) feeds it events and
//! the raw ids deduplication needs, and counts what it reports.
//!
//! The speed side keeps every first occurrence of a valid event since the lowest watermark of
//! any view ("retained" Arrow batches, on local disk: [`crate::spill`]), so that when a view
//! gets a new batch version its speed state is refolded from them — no Kafka replay — while
//! the old pair keeps serving, and swapped with the batch version in one step of the
//! [`Served`] state: a query holding a snapshot sees one (batch, speed) pair per view, never a
//! mix. Memory then follows the number of groups in the states, plus the ids deduplication
//! remembers (about 1.3 bytes an id in memory and 16 on local disk, see [`SeenIds`]).
//!
//! Deduplication is exact: an event is a first occurrence unless its (date, id) is
//! in the raw table at the lowest watermark's version or among the first occurrences retained
//! since; both together cover every offset before it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use arrow::array::{AsArray, BooleanArray, RecordBatch, UInt32Array};
use arrow::compute::{and, filter_record_batch, take_record_batch};
use arrow::datatypes::Date32Type;
use datafusion::common::DFSchema;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;
use lambdaflow_common::batch_view::BatchView;
use lambdaflow_common::config::Config;
use lambdaflow_common::layout::parse_filter;
use lambdaflow_common::schema::{EVENT_DATE, KAFKA_OFFSET, KAFKA_PARTITION, raw_schema};
use lambdaflow_common::state::ViewState;
use lambdaflow_common::timestamp::now_micros;
use lambdaflow_common::watermark::{Watermark, at_or_beyond};
use lambdaflow_dedup::{KeyHash, Loading, SeenIds, id_hash};

use crate::error::{Error, Result};
use crate::served::{Retained, Served, ViewPair, Views};
use crate::spill::{SEGMENT_ROWS, Spill};

/// Rows Arrow's builders reserve room for before they first grow.
const BUILDER_ROWS: usize = 1024;

/// What one [`Speed::fold`] did, for the adapter to count.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Folded {
    /// Valid events handed in.
    pub events: usize,
    /// Of those, duplicates of an earlier event (dropped).
    pub duplicates: usize,
}

/// The writer side: validation output in, states out.
pub struct Speed {
    config: Arc<Config>,
    served: Served,
    filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    retained: Spill,
    seen: SeenIds,
    /// The lowest watermark over views: where retention and the raw ids start.
    floor: Watermark,
}

impl std::fmt::Debug for Speed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Speed")
            .field("retained", &self.retained)
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
    // The epoch each partition's offsets count in now: the newest any view was loaded with.
    let epochs = partitions
        .iter()
        .filter_map(|p| {
            let epoch = batches
                .iter()
                .filter_map(|b| b.epochs.get(p).copied())
                .max()?;
            (epoch > 0).then_some((*p, epoch))
        })
        .collect();
    Watermark {
        raw_version,
        offsets,
        epochs,
    }
}

impl Speed {
    /// A speed layer for `config` before any batch run: every view's batch side is empty, so
    /// the speed side covers every offset.
    pub fn before_any_batch(config: Arc<Config>, served: Served) -> Result<Self> {
        let empty = config
            .views
            .iter()
            .map(|_| Arc::new(BatchView::default()))
            .collect();
        Self::new(config, served, empty)
    }

    /// A speed layer for `config` over `batches` (one per view, in config order), publishing
    /// into `served`, which from then on has a snapshot.
    pub fn new(config: Arc<Config>, served: Served, batches: Vec<Arc<BatchView>>) -> Result<Self> {
        let schema = raw_schema(config.source());
        let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
        let ctx = SessionContext::new();
        let mut filters = Vec::new();
        for view in &config.views {
            filters.push(match &view.filter {
                Some(sql) => {
                    let expr = parse_filter(config.source(), sql).map_err(Error::Filter)?;
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
        *served.write_views() = Some(Views {
            pairs: batches
                .into_iter()
                .map(|batch| ViewPair::new(batch, ViewState::new()))
                .collect(),
            ..Views::default()
        });
        Ok(Self {
            seen: SeenIds::new(
                config.serving.speed_dir.as_deref(),
                config.archive.dedup_max_dates,
            )?,
            retained: Spill::new(config.serving.speed_dir.as_deref(), SEGMENT_ROWS)?,
            config,
            served,
            filters,
            floor,
        })
    }

    /// From now on, write retained first occurrences to disk every `rows` rows (default
    /// [`SEGMENT_ROWS`]).
    pub fn set_segment_rows(&mut self, rows: usize) {
        self.retained.set_segment_rows(rows);
    }

    /// The directory retained first occurrences are written to.
    pub fn spill_dir(&self) -> &std::path::Path {
        self.retained.dir()
    }

    /// What the speed side keeps besides its states.
    fn usage(&self) -> Retained {
        let spill = self.retained.usage();
        Retained {
            events: spill.rows,
            memory_bytes: spill.memory_bytes,
            disk_bytes: spill.disk_bytes,
            id_bytes: self.seen.bytes(),
            id_disk_bytes: self.seen.disk_bytes(),
        }
    }

    /// The state queries read.
    pub fn served(&self) -> &Served {
        &self.served
    }

    /// The raw version whose ids deduplication loads ([`Self::loading_ids`]).
    pub fn raw_version(&self) -> u64 {
        self.floor.raw_version
    }

    /// The first offset to consume from each of `partitions`. Offsets before them are
    /// covered by every view's batch side, so they count as consumed and folded from here on.
    pub fn start(&mut self, partitions: &[i32]) -> BTreeMap<i32, i64> {
        let starts: BTreeMap<i32, i64> = partitions
            .iter()
            .map(|p| (*p, self.floor.next_offset(*p)))
            .collect();
        let covered: BTreeMap<i32, i64> = starts
            .iter()
            .filter(|(_, start)| **start > 0)
            .map(|(p, start)| (*p, start - 1))
            .collect();
        self.advance(&covered);
        starts
    }

    /// Records `consumed` as folded (in the snapshot) and consumed (in the progress).
    fn advance(&self, consumed: &BTreeMap<i32, i64>) {
        if let Some(views) = self.served.write_views().as_mut() {
            for (p, o) in consumed {
                let entry = views.folded.entry(*p).or_insert(*o);
                *entry = (*entry).max(*o);
            }
        }
        self.served.publish(|progress| progress.consume(consumed));
    }

    /// The event dates of `events` whose ids must be loaded before [`Self::fold`].
    pub fn dates_to_load(&mut self, events: &RecordBatch) -> Vec<i32> {
        let mut needed = BTreeSet::new();
        let mut last = None;
        for date in dates(events).values().iter().copied() {
            // Runs of one date are the rule: one set insertion per run, not per row.
            if last != Some(date) {
                needed.insert(date);
                last = Some(date);
            }
        }
        let oldest = self.config.source().oldest_live_date(now_micros());
        self.seen.dates_to_load(&needed, oldest)
    }

    /// Starts loading `date`'s ids: the caller adds those the raw table holds at
    /// [`Self::raw_version`] ([`Loading::add`], a part at a time) and hands it to
    /// [`Self::loaded_ids`].
    pub fn loading_ids(&mut self, date: i32) -> Loading {
        self.seen.loading(date)
    }

    /// Adds the retained first occurrences of the loading date, and puts it in.
    pub fn loaded_ids(&mut self, mut loading: Loading) -> Result<()> {
        let date = loading.date();
        self.retained.scan(|batch| {
            let ds = dates(batch);
            let ids = batch.column(0).as_string::<i32>();
            loading.add(
                (0..batch.num_rows())
                    .filter(|i| ds.value(*i) == date)
                    .map(|i| ids.value(i)),
            )?;
            Ok(())
        })?;
        self.seen.loaded(loading);
        Ok(())
    }

    /// Records the ids the raw table holds for `date` at [`Self::raw_version`], and the
    /// retained first occurrences of that date, in one step.
    pub fn load_ids<'a>(
        &mut self,
        date: i32,
        raw_ids: impl IntoIterator<Item = &'a str>,
    ) -> Result<()> {
        let mut loading = self.loading_ids(date);
        loading.add(raw_ids)?;
        self.loaded_ids(loading)
    }

    /// Folds validated events (raw-table columns, in offset order per partition) into every
    /// view: first occurrences only, and per view only offsets beyond its watermark.
    /// `consumed` is the last offset read per partition, including messages that gave nothing.
    pub fn fold(&mut self, events: RecordBatch, consumed: &BTreeMap<i32, i64>) -> Result<Folded> {
        let events_len = events.num_rows();
        let first = if events.num_rows() == 0 {
            events
        } else {
            let keep = self
                .seen
                .keep(events.column(0).as_string::<i32>(), dates(&events))?;
            if keep.true_count() == keep.len() && events.num_rows() >= BUILDER_ROWS {
                // Past their first reservation, builders grow by doubling: at most half of
                // a batch this large is slack, and the spill bounds what is held.
                events
            } else if keep.true_count() == keep.len() {
                // Arrow's builders reserve room for 1,024 rows; a retained micro-batch of a
                // few events would keep all of it. Filtering copies to size already; a small
                // batch kept whole is copied here.
                let all = UInt32Array::from_iter_values(0..events.num_rows() as u32);
                take_record_batch(&events, &all)?
            } else {
                filter_record_batch(&events, &keep)?
            }
        };
        let folded = Folded {
            events: events_len,
            duplicates: events_len - first.num_rows(),
        };
        let masks = self.masks(&first)?;
        // Record batches share their buffers: the spill keeps the same rows the views fold.
        self.retained.push(first.clone())?;
        let usage = self.usage();
        {
            let mut guard = self.served.write_views();
            let views = guard.as_mut().expect("loaded by Speed::new");
            for ((pair, view), mask) in views.pairs.iter_mut().zip(&self.config.views).zip(&masks) {
                let mask = and(mask, &beyond(&first, |p| pair.batch().next_offset(p)))?;
                pair.speed_mut()
                    .fold(self.config.source(), view, &first, &mask)?;
            }
            for (p, o) in consumed {
                let entry = views.folded.entry(*p).or_insert(*o);
                *entry = (*entry).max(*o);
            }
            views.retained = usage;
        }
        self.served.publish(|progress| progress.consume(consumed));
        Ok(folded)
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

    /// What [`Self::swap`] to `batches` must know of the raw table: per changed view with a
    /// watermark, whether the raw table at the view's raw version holds each retained event
    /// beyond the watermark. The caller streams the raw ids of each [`RawIdSets::needed`]
    /// (version, date) through [`RawIdSets::check`]; only the retained ids are held, never the
    /// day's.
    pub fn swap_needs(&self, batches: &[Option<Arc<BatchView>>]) -> Result<RawIdSets> {
        let mut needs = RawIdSets::default();
        let watermarked: Vec<(&Arc<BatchView>, u64)> = batches
            .iter()
            .flatten()
            .filter_map(|new| Some((new, new.watermark.as_ref()?.raw_version)))
            .collect();
        if watermarked.is_empty() {
            return Ok(needs);
        }
        self.retained.scan(|events| {
            let dates = dates(events);
            let ids = events.column(0).as_string::<i32>();
            for (new, raw_version) in &watermarked {
                let mask = beyond(events, |p| new.next_offset(p));
                for i in (0..events.num_rows()).filter(|i| mask.value(*i)) {
                    needs
                        .sets
                        .entry((*raw_version, dates.value(i)))
                        .or_default()
                        .insert(id_hash(ids.value(i)), false);
                }
            }
            Ok(())
        })?;
        Ok(needs)
    }

    /// Swaps in new batch versions (`None` keeps a view's current one): each changed view's
    /// speed state is refolded from the retained events beyond its new watermark whose (date,
    /// id) the raw table at the view's raw version does not hold (`raw`, loaded for
    /// [`Self::swap_needs`]): a copy of an event that the archiver stored from another
    /// partition is counted by the batch side, so the speed side drops its own copy. Both
    /// replace the old pair in one step. Retention and deduplication then start at the new
    /// lowest watermark; the caller reloads ids at [`Self::raw_version`] as they are asked for.
    pub fn swap(&mut self, batches: Vec<Option<Arc<BatchView>>>, raw: &RawIdSets) -> Result<()> {
        let current: Vec<Arc<BatchView>> = self
            .served
            .snapshot()
            .expect("loaded by Speed::new")
            .pairs()
            .iter()
            .map(|pair| pair.batch_arc().clone())
            .collect();
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
        // A newer epoch (a topic reset was accepted) moves a partition forward whatever its
        // offsets; within one epoch an offset must not go back.
        let moved_back = floor.offsets.iter().any(|(p, o)| {
            let (now, before) = (floor.epoch(*p), self.floor.epoch(*p));
            now < before || (now == before && *o < self.floor.offsets.get(p).copied().unwrap_or(-1))
        });
        if moved_back {
            return Err(Error::WatermarkMovedBack {
                before: self.floor.clone(),
                after: floor,
            });
        }
        // Retained events of a partition whose epoch moved on were read in the old epoch: the
        // new batch versions cover none of their offsets, so they must not count again.
        let reset: BTreeSet<i32> = floor
            .offsets
            .keys()
            .copied()
            .filter(|p| floor.epoch(*p) > self.floor.epoch(*p))
            .collect();
        let current_epoch = |events: &RecordBatch| {
            beyond(events, |p| if reset.contains(&p) { i64::MAX } else { 0 })
        };
        let changed: Vec<(usize, &Arc<BatchView>)> = batches
            .iter()
            .enumerate()
            .filter_map(|(i, new)| new.as_ref().map(|new| (i, new)))
            .collect();
        let mut states: Vec<ViewState> = changed.iter().map(|_| ViewState::new()).collect();
        if !changed.is_empty() {
            self.retained.scan(|events| {
                let masks = self.masks(events)?;
                let epoch = current_epoch(events);
                for ((i, new), state) in changed.iter().zip(&mut states) {
                    let mut mask = and(&masks[*i], &beyond(events, |p| new.next_offset(p)))?;
                    mask = and(&mask, &epoch)?;
                    if let Some(watermark) = &new.watermark {
                        mask = and(&mask, &raw.absent(watermark.raw_version, events))?;
                    }
                    state.fold(self.config.source(), &self.config.views[*i], events, &mask)?;
                }
                Ok(())
            })?;
        }
        let refolded: Vec<(usize, Arc<BatchView>, ViewState)> = changed
            .into_iter()
            .zip(states)
            .map(|((i, new), state)| (i, new.clone(), state))
            .collect();
        {
            let mut guard = self.served.write_views();
            let views = guard.as_mut().expect("loaded by Speed::new");
            for (i, batch, speed) in refolded {
                views.pairs[i] = ViewPair::new(batch, speed);
            }
        }
        self.retained.retain(|events| {
            Ok(and(
                &current_epoch(events),
                &beyond(events, |p| floor.next_offset(p)),
            )?)
        })?;
        if floor.raw_version != self.floor.raw_version {
            self.seen.clear();
        }
        self.floor = floor;
        let usage = self.usage();
        if let Some(views) = self.served.write_views().as_mut() {
            views.retained = usage;
        }
        Ok(())
    }
}

/// Retained events' ids, per (raw version, event date), each with whether the raw table at
/// that version holds it: what [`Speed::swap`] checks retained events against.
#[derive(Debug, Default)]
pub struct RawIdSets {
    sets: HashMap<(u64, i32), HashMap<u128, bool, KeyHash>>,
}

impl RawIdSets {
    /// The (raw version, event date) pairs whose stored ids must be [`Self::check`]ed.
    pub fn needed(&self) -> Vec<(u64, i32)> {
        let mut needed: Vec<(u64, i32)> = self.sets.keys().copied().collect();
        needed.sort_unstable();
        needed
    }

    /// Records which of the retained ids the raw table at `version` holds for `date`, given a
    /// part of the ids it holds.
    pub fn check<'a>(&mut self, version: u64, date: i32, ids: impl IntoIterator<Item = &'a str>) {
        if let Some(set) = self.sets.get_mut(&(version, date)) {
            for id in ids {
                if let Some(held) = set.get_mut(&id_hash(id)) {
                    *held = true;
                }
            }
        }
    }

    /// Which rows of `events` the raw table at `version` does not hold.
    fn absent(&self, version: u64, events: &RecordBatch) -> BooleanArray {
        let ids = events.column(0).as_string::<i32>();
        let dates = dates(events);
        (0..events.num_rows())
            .map(|i| {
                let held = self
                    .sets
                    .get(&(version, dates.value(i)))
                    .and_then(|set| set.get(&id_hash(ids.value(i))))
                    .copied()
                    .unwrap_or(false);
                Some(!held)
            })
            .collect()
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
    use lambdaflow_common::query::{AnswerLimits, Query, Rollup, Value, answer};
    use lambdaflow_common::sample::{Generator, Mix};
    use lambdaflow_common::timestamp::now_micros;
    use lambdaflow_common::validate::{Coordinates, Validator};

    use super::*;

    /// The demo's `traffic_by_minute`: every event, no filter.
    const TRAFFIC: usize = 1;

    fn config() -> Arc<Config> {
        Arc::new(Config::shop())
    }

    /// Validated events with ids `rows[i].0` at (partition, offset) `rows[i].1`.
    fn events(config: &Config, rows: &[(&str, (i32, i64))]) -> RecordBatch {
        let validator = Validator::new(config.source());
        let mut builder = validator.batch_builder("events", now_micros());
        for (id, (partition, offset)) in rows {
            let payload = format!(
                r#"{{"event_id":"{id}","event_time":"2026-01-02T03:04:05Z","type":"view","user_id":"u-{id}","country":"kr"}}"#
            );
            builder
                .push(
                    Some(payload.as_bytes()),
                    Coordinates {
                        partition: *partition,
                        offset: *offset,
                    },
                )
                .unwrap();
        }
        builder.finish().events
    }

    fn fold(speed: &mut Speed, events: RecordBatch) -> Folded {
        for date in speed.dates_to_load(&events) {
            speed.load_ids(date, []).unwrap();
        }
        let consumed = last_offsets(&events);
        speed.fold(events, &consumed).unwrap()
    }

    fn last_offsets(events: &RecordBatch) -> BTreeMap<i32, i64> {
        let partitions = events
            .column_by_name(KAFKA_PARTITION)
            .unwrap()
            .as_primitive::<arrow::datatypes::Int32Type>();
        let offsets = events
            .column_by_name(KAFKA_OFFSET)
            .unwrap()
            .as_primitive::<arrow::datatypes::Int64Type>();
        let mut out = BTreeMap::new();
        for i in 0..events.num_rows() {
            let entry = out.entry(partitions.value(i)).or_insert(offsets.value(i));
            *entry = (*entry).max(offsets.value(i));
        }
        out
    }

    /// The `events` count of `traffic_by_minute` over `states`.
    fn traffic(config: &Config, states: &[&ViewState]) -> i64 {
        let query = Query {
            from: None,
            to: None,
            rollup: Rollup::All,
            group_by: Vec::new(),
            filters: Vec::new(),
            measures: vec![0],
            order_by: Vec::new(),
            limit: None,
        };
        let rows = answer(
            config.source(),
            &config.views[TRAFFIC],
            states,
            &query,
            &AnswerLimits::NONE,
        )
        .unwrap();
        match rows.first().map(|r| &r.values[0]) {
            None => 0,
            Some(Value::Int(n)) => *n,
            Some(other) => panic!("a count is an integer, got {other:?}"),
        }
    }

    fn speed_traffic(config: &Config, served: &Served) -> i64 {
        let snapshot = served.snapshot().unwrap();
        traffic(config, &[snapshot.pair(TRAFFIC).speed()])
    }

    fn batch_at(config: &Config, offsets: &[(i32, i64)], events: &RecordBatch) -> Arc<BatchView> {
        let mut state = ViewState::new();
        let all = BooleanArray::from(vec![true; events.num_rows()]);
        state
            .fold(config.source(), &config.views[TRAFFIC], events, &all)
            .unwrap();
        Arc::new(BatchView {
            version: Some(1),
            watermark: Some(Watermark {
                raw_version: 1,
                offsets: offsets.iter().copied().collect(),
                ..Watermark::default()
            }),
            state,
            ..BatchView::default()
        })
    }

    #[test]
    fn nothing_to_read_until_loaded() {
        let served = Served::new();
        assert!(served.snapshot().is_none());
        Speed::before_any_batch(config(), served.clone()).unwrap();
        let snapshot = served.snapshot().unwrap();
        assert_eq!(snapshot.pairs().len(), 3);
        assert!(snapshot.folded().is_empty());
    }

    #[test]
    fn fold_counts_first_occurrences_and_reports_duplicates() {
        let config = config();
        let served = Served::new();
        let mut speed = Speed::before_any_batch(config.clone(), served.clone()).unwrap();
        let folded = fold(
            &mut speed,
            events(&config, &[("a", (0, 0)), ("b", (1, 0)), ("a", (0, 1))]),
        );
        assert_eq!(
            folded,
            Folded {
                events: 3,
                duplicates: 1
            }
        );
        let folded = fold(&mut speed, events(&config, &[("b", (1, 1)), ("c", (0, 2))]));
        assert_eq!(
            folded,
            Folded {
                events: 2,
                duplicates: 1
            }
        );
        assert_eq!(speed_traffic(&config, &served), 3);
        let expected: BTreeMap<i32, i64> = [(0, 2), (1, 1)].into();
        assert_eq!(served.snapshot().unwrap().folded(), &expected);
        assert_eq!(served.progress().consumed, expected);
        assert_eq!(served.snapshot().unwrap().retained().events, 3);
    }

    #[test]
    fn ids_the_raw_table_holds_are_duplicates() {
        let config = config();
        let served = Served::new();
        let mut speed = Speed::before_any_batch(config.clone(), served.clone()).unwrap();
        let batch = events(&config, &[("a", (0, 5)), ("z", (0, 6))]);
        for date in speed.dates_to_load(&batch) {
            speed.load_ids(date, ["a"]).unwrap();
        }
        let folded = speed.fold(batch, &[(0, 6)].into()).unwrap();
        assert_eq!(folded.duplicates, 1);
        assert_eq!(speed_traffic(&config, &served), 1);
    }

    #[test]
    fn a_swap_refolds_only_offsets_beyond_the_new_watermark() {
        let config = config();
        let served = Served::new();
        let mut speed = Speed::before_any_batch(config.clone(), served.clone()).unwrap();
        let all = events(
            &config,
            &[("a", (0, 0)), ("b", (0, 1)), ("c", (0, 2)), ("d", (1, 0))],
        );
        fold(&mut speed, all.clone());
        assert_eq!(speed_traffic(&config, &served), 4);

        // The batch covers offsets 0 and 1 of partition 0 and nothing of partition 1.
        let covered = events(&config, &[("a", (0, 0)), ("b", (0, 1))]);
        let mut swap: Vec<Option<Arc<BatchView>>> = vec![None; config.views.len()];
        swap[TRAFFIC] = Some(batch_at(&config, &[(0, 1), (1, -1)], &covered));
        speed.swap(swap, &RawIdSets::default()).unwrap();

        let snapshot = served.snapshot().unwrap();
        let pair = snapshot.pair(TRAFFIC);
        assert_eq!(traffic(&config, &[&pair.batch().state]), 2);
        assert_eq!(traffic(&config, &[pair.speed()]), 2);
        assert_eq!(traffic(&config, &[&pair.batch().state, pair.speed()]), 4);
        // The other views still have no batch side and every event on the speed side.
        assert!(snapshot.pair(0).batch().watermark.is_none());
    }

    #[test]
    fn a_watermark_moving_back_is_refused() {
        let config = config();
        let served = Served::new();
        let mut speed = Speed::before_any_batch(config.clone(), served.clone()).unwrap();
        let all = events(&config, &[("a", (0, 0)), ("b", (0, 1)), ("c", (0, 2))]);
        fold(&mut speed, all.clone());
        let at = |offset| {
            config
                .views
                .iter()
                .map(|_| Some(batch_at(&config, &[(0, offset)], &all)))
                .collect::<Vec<_>>()
        };
        speed.swap(at(2), &RawIdSets::default()).unwrap();
        assert_eq!(speed.start(&[0]), [(0, 3)].into());
        let error = speed.swap(at(0), &RawIdSets::default()).unwrap_err();
        assert!(matches!(error, Error::WatermarkMovedBack { .. }), "{error}");

        // After an accepted topic reset the offsets start again in a newer epoch: forward.
        let reset: Vec<_> = config
            .views
            .iter()
            .map(|_| {
                let mut batch = Arc::try_unwrap(batch_at(&config, &[(0, 0)], &all)).unwrap();
                if let Some(w) = batch.watermark.as_mut() {
                    w.epochs = [(0, 1)].into();
                }
                Some(Arc::new(batch.with_epochs([(0, 1)].into())))
            })
            .collect();
        speed.swap(reset, &RawIdSets::default()).unwrap();
        assert_eq!(speed.start(&[0]), [(0, 1)].into());
    }

    #[test]
    fn retained_micro_batches_hold_their_rows_not_their_builders_capacity() {
        let config = config();
        let served = Served::new();
        let mut speed = Speed::before_any_batch(config.clone(), served.clone()).unwrap();
        let validator = Validator::new(config.source());
        let mix = Mix {
            duplicates: 0.0,
            late: 0.0,
            invalid: 0.0,
        };
        let mut generator = Generator::shop(3, 100, mix);
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
                speed.load_ids(date, []).unwrap();
            }
            speed.fold(events, &[(0, offset)].into()).unwrap();
        }
        let retained = served.snapshot().unwrap().retained();
        assert_eq!(retained.events, 500);
        let per_event = retained.memory_bytes / 500;
        assert!(per_event < 4096, "{per_event} bytes retained per event");
    }

    #[test]
    fn retained_events_go_to_disk_and_a_swap_reads_them_back_without_copies_raw_holds() {
        let config = config();
        let served = Served::new();
        let mut speed = Speed::before_any_batch(config.clone(), served.clone()).unwrap();
        speed.set_segment_rows(4);
        let rows: Vec<(String, (i32, i64))> = (0..20).map(|o| (format!("e{o}"), (0, o))).collect();
        let rows: Vec<(&str, (i32, i64))> =
            rows.iter().map(|(id, at)| (id.as_str(), *at)).collect();
        let all = events(&config, &rows);
        for chunk in 0..5 {
            fold(&mut speed, all.slice(chunk * 4, 4));
        }
        let retained = served.snapshot().unwrap().retained();
        assert_eq!((retained.events, retained.memory_bytes), (20, 0));
        assert!(retained.disk_bytes > 0);
        assert!(retained.id_bytes > 0);
        assert_eq!(speed_traffic(&config, &served), 20);

        let batch = batch_at(&config, &[(0, 9)], &all.slice(0, 10));
        let mut swap = vec![None; config.views.len()];
        swap[TRAFFIC] = Some(batch.clone());
        let mut needs = speed.swap_needs(&swap).unwrap();
        let needed = needs.needed();
        assert_eq!(needed.len(), 1, "one date beyond the watermark: {needs:?}");
        // The raw table holds a copy of e12 (archived from another partition), e3 (below
        // the watermark, counted by the batch side anyway) and ids the speed layer never saw.
        let (version, date) = needed[0];
        needs.check(version, date, ["e12", "e3", "elsewhere"]);
        speed.swap(swap, &needs).unwrap();
        assert_eq!(
            speed_traffic(&config, &served),
            9,
            "offsets 10..20 refolded from disk, less e12"
        );
        assert_eq!(
            served.snapshot().unwrap().retained().events,
            20,
            "the floor is still 0"
        );
    }
}
