//! A view's batch side at one version of its table: what the lake reader loads and the speed
//! layer pairs with its own state.

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
}

impl BatchView {
    /// The first offset of `partition` this version does not cover (0 before any batch run).
    pub fn next_offset(&self, partition: i32) -> i64 {
        self.watermark
            .as_ref()
            .map_or(0, |w| w.next_offset(partition))
    }
}
