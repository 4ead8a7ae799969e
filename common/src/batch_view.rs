//! A view's batch side at one version of its table: what the lake reader loads and the speed
//! layer pairs with its own state.

use std::collections::BTreeMap;

use crate::state::ViewState;
use crate::watermark::Watermark;

/// A view's batch side at one version of its table.
#[derive(Debug, Default)]
pub struct BatchView {
    /// The view table version loaded; `None` before the first batch run.
    pub version: Option<u64>,
    /// What it covers; `None` (nothing) before the first batch run.
    pub watermark: Option<Watermark>,
    /// Its rows as states.
    pub state: ViewState,
    /// The fingerprint of the definition it was computed under
    /// ([`crate::view::fingerprint`]); `None` when unknown.
    pub definition: Option<String>,
    /// The epoch each Kafka partition's offsets currently count in, as the raw table said
    /// when this was loaded (absent: epoch 0). After a topic reset the watermark of a view
    /// computed before it is of an older epoch and covers nothing of the new one.
    pub epochs: BTreeMap<i32, u32>,
}

impl BatchView {
    /// The first offset of `partition` this version does not cover (0 before any batch run,
    /// and 0 when the partition's current epoch is newer than the watermark's).
    pub fn next_offset(&self, partition: i32) -> i64 {
        let current = self.epochs.get(&partition).copied().unwrap_or(0);
        self.watermark
            .as_ref()
            .map_or(0, |w| w.next_offset_at(partition, current))
    }

    /// Whether this version was computed under another definition than `current` (a
    /// [`crate::view::fingerprint`]): the view was redefined since, and its states must not be
    /// merged with ones folded under `current`. An unknown definition counts as the same.
    pub fn redefined(&self, current: &str) -> bool {
        self.definition.as_deref().is_some_and(|d| d != current)
    }

    /// This batch side with the raw table's current epochs (`LakeReader::raw_epochs`).
    #[must_use]
    pub fn with_epochs(mut self, epochs: BTreeMap<i32, u32>) -> Self {
        self.epochs = epochs;
        self
    }
}
