//! Each machine's history: one line per step of its life.

use levee_pxe::boot::MacAddr;
use serde::Serialize;

use super::Result;

/// One step in a machine's boot history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub at: u64,
    pub step: String,
    pub detail: String,
}

/// Each machine's history: one line per step of its life.
pub trait EventStore {
    /// Appends to a machine's history (the oldest entries beyond a few
    /// hundred are dropped so a machine in a boot loop cannot fill the disk).
    fn add_event(&self, mac: MacAddr, step: &str, detail: &str) -> Result<()>;
    fn events(&self, mac: MacAddr, limit: usize) -> Result<Vec<Event>>;
}
