//! What queries read, sealed: per view a (batch version, speed state) pair that the speed
//! layer swaps as one, and the offsets the speed states are folded through.
//!
//! One writer (the speed layer's [`crate::engine::Speed`]) and many readers (the query API,
//! SQL, health and metrics). Readers take a [`Snapshot`] and see one pair per view for as long
//! as they hold it, never a batch version with a speed state of another; before the speed
//! layer has loaded the views there is no snapshot at all, so no reader has to test for it.
//! The speed layer's fold waits for every reader holding a snapshot, so long reads (answers,
//! SQL tables) [`Snapshot::detach`] the pair they need and work without the lock.
//!
//! Kafka progress (offsets consumed, partition heads, lag, caught up) is not part of the
//! snapshot: it changes with every message and is read by health checks and metrics, so it is
//! published apart as a [`Progress`] value on a `watch` channel.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use lambdaflow_common::batch_view::BatchView;
use lambdaflow_common::state::{GroupKey, ViewState};
use tokio::sync::watch;

/// One view as queries see it: a batch version and the speed state of the offsets beyond its
/// watermark.
#[derive(Debug, Default)]
pub struct ViewPair {
    batch: Arc<BatchView>,
    speed: ViewState,
}

impl ViewPair {
    /// The pair of `batch` and the speed state `speed` of the offsets beyond its watermark.
    pub fn new(batch: Arc<BatchView>, speed: ViewState) -> Self {
        Self { batch, speed }
    }

    /// The batch side.
    pub fn batch(&self) -> &BatchView {
        &self.batch
    }

    /// The batch side, shared.
    pub(crate) fn batch_arc(&self) -> &Arc<BatchView> {
        &self.batch
    }

    /// The speed side.
    pub fn speed(&self) -> &ViewState {
        &self.speed
    }

    pub(crate) fn speed_mut(&mut self) -> &mut ViewState {
        &mut self.speed
    }
}

/// What the speed layer keeps besides its states: the first occurrences since the lowest
/// watermark (for swaps) and the ids deduplication remembers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Retained {
    /// Events retained.
    pub events: usize,
    /// Bytes of the Arrow buffers holding the retained events still in memory.
    pub memory_bytes: usize,
    /// Bytes of the retained events written to local disk.
    pub disk_bytes: u64,
    /// Bytes of memory the ids deduplication remembers take (hash sets, filters, indexes).
    pub id_bytes: usize,
    /// Bytes of the sorted runs of ids on local disk.
    pub id_disk_bytes: u64,
}

/// The speed layer's progress through Kafka, published after every change.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Per partition, the offset ranges (first, last; merged, ascending) the broker deleted
    /// before the speed layer read them: their events are missing from its answers until a
    /// batch version covers them.
    pub lost: BTreeMap<i32, Vec<(i64, i64)>>,
    /// Partitions the speed layer does not consume, and why: the broker's head is below the
    /// offsets the lake already holds (the topic was recreated or lost its data).
    pub halted: BTreeMap<i32, String>,
    /// The last offset consumed per partition.
    pub consumed: BTreeMap<i32, i64>,
    /// The head of each partition when the speed layer started (the first offset not yet
    /// written), once read.
    pub start_head: Option<BTreeMap<i32, i64>>,
    /// The latest head read of each partition, refreshed every few seconds: what the lag is
    /// measured against.
    pub heads: BTreeMap<i32, i64>,
}

impl Progress {
    /// Whether the speed layer has consumed everything the topic held when it started.
    pub fn caught_up(&self) -> bool {
        self.start_head.as_ref().is_some_and(|heads| {
            heads
                .iter()
                .all(|(p, head)| *head == 0 || self.consumed.get(p).is_some_and(|o| o + 1 >= *head))
        })
    }

    /// Per partition with a known head: messages written that are not consumed yet.
    pub fn lag(&self) -> BTreeMap<i32, i64> {
        self.heads
            .iter()
            .map(|(p, head)| {
                let consumed = self.consumed.get(p).copied().unwrap_or(-1);
                (*p, (head - consumed - 1).max(0))
            })
            .collect()
    }

    /// The lost offset ranges of each partition that `covered` (the first offset per partition
    /// a batch version does not cover) leaves uncovered.
    pub fn uncovered(&self, covered: impl Fn(i32) -> i64) -> BTreeMap<i32, Vec<(i64, i64)>> {
        self.lost
            .iter()
            .filter_map(|(p, ranges)| {
                let next = covered(*p);
                let open: Vec<(i64, i64)> = ranges
                    .iter()
                    .filter(|(_, last)| *last >= next)
                    .map(|(first, last)| ((*first).max(next), *last))
                    .collect();
                (!open.is_empty()).then_some((*p, open))
            })
            .collect()
    }

    /// Records offsets `first..=last` of `partition` as lost, merged with the ranges already
    /// known.
    pub(crate) fn add_lost(&mut self, partition: i32, first: i64, last: i64) {
        let ranges = self.lost.entry(partition).or_default();
        ranges.push((first, last));
        ranges.sort_unstable();
        let mut merged: Vec<(i64, i64)> = Vec::with_capacity(ranges.len());
        for &(first, last) in ranges.iter() {
            match merged.last_mut() {
                Some(prev) if first <= prev.1 + 1 => prev.1 = prev.1.max(last),
                _ => merged.push((first, last)),
            }
        }
        *ranges = merged;
    }

    /// Records `offsets` as consumed (an offset never moves back).
    pub(crate) fn consume(&mut self, offsets: &BTreeMap<i32, i64>) {
        for (p, o) in offsets {
            let entry = self.consumed.entry(*p).or_insert(*o);
            *entry = (*entry).max(*o);
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Views {
    pub(crate) pairs: Vec<ViewPair>,
    /// The last offset per partition whose events the speed states hold: an answer's
    /// consistency token.
    pub(crate) folded: BTreeMap<i32, i64>,
    pub(crate) retained: Retained,
}

#[derive(Debug)]
struct Inner {
    views: RwLock<Option<Views>>,
    progress: watch::Sender<Progress>,
}

/// The served state, shared by the speed layer (its one writer) and every reader.
#[derive(Debug, Clone)]
pub struct Served {
    inner: Arc<Inner>,
}

impl Default for Served {
    fn default() -> Self {
        Self::new()
    }
}

impl Served {
    /// An empty state: no snapshot until a speed layer loads the views.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                views: RwLock::new(None),
                progress: watch::Sender::new(Progress::default()),
            }),
        }
    }

    /// A state fixed at the given parts, with no speed layer behind it: for tools, tests and
    /// benchmarks that answer from states built elsewhere.
    pub fn from_parts(
        pairs: Vec<ViewPair>,
        folded: BTreeMap<i32, i64>,
        progress: Progress,
    ) -> Self {
        let served = Self::new();
        *served.write_views() = Some(Views {
            pairs,
            folded,
            retained: Retained::default(),
        });
        served.inner.progress.send_replace(progress);
        served
    }

    /// The views as they are now, held until the snapshot is dropped (a swap waits for it);
    /// `None` until the speed layer has loaded them.
    pub fn snapshot(&self) -> Option<Snapshot<'_>> {
        let guard = self.inner.views.read().expect("not poisoned");
        guard.is_some().then_some(Snapshot { guard })
    }

    /// Whether the views are loaded.
    pub fn is_loaded(&self) -> bool {
        self.inner.views.read().expect("not poisoned").is_some()
    }

    /// The latest Kafka progress.
    pub fn progress(&self) -> Progress {
        self.inner.progress.borrow().clone()
    }

    /// A receiver of every new Kafka progress.
    pub fn subscribe(&self) -> watch::Receiver<Progress> {
        self.inner.progress.subscribe()
    }

    pub(crate) fn write_views(&self) -> RwLockWriteGuard<'_, Option<Views>> {
        self.inner.views.write().expect("not poisoned")
    }

    pub(crate) fn publish(&self, change: impl FnOnce(&mut Progress)) {
        self.inner.progress.send_modify(change);
    }
}

/// A consistent read of every view.
#[derive(Debug)]
pub struct Snapshot<'a> {
    guard: RwLockReadGuard<'a, Option<Views>>,
}

impl Snapshot<'_> {
    fn views(&self) -> &Views {
        self.guard
            .as_ref()
            .expect("a snapshot exists only once loaded")
    }

    /// Every view, in config order.
    pub fn pairs(&self) -> &[ViewPair] {
        &self.views().pairs
    }

    /// The view at `index` in config order.
    pub fn pair(&self, index: usize) -> &ViewPair {
        &self.views().pairs[index]
    }

    /// View `index` taken out of the snapshot: the batch side shared (it never changes) and
    /// the speed groups `keep` selects copied. An answer built from it holds no lock, so the
    /// speed layer's fold waits for the copy, never for a long query.
    pub fn detach(&self, index: usize, keep: impl FnMut(&GroupKey) -> bool) -> ViewPair {
        let pair = self.pair(index);
        ViewPair::new(pair.batch.clone(), pair.speed.select(keep))
    }

    /// The last offset per partition whose events the speed states hold.
    pub fn folded(&self) -> &BTreeMap<i32, i64> {
        &self.views().folded
    }

    /// The first occurrences kept in memory for swaps.
    pub fn retained(&self) -> Retained {
        self.views().retained
    }
}
