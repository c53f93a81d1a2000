//! The journal of the requests this appliance started
//! (`STATE/restores.json`): what makes a request run once, and what says
//! a restore was cut by a restart.

use std::collections::BTreeMap;
use std::path::Path;

use levee_proto::restore_api::{RestoreState, RestoreStatus};
use serde::{Deserialize, Serialize};

use crate::enroll::write_atomic;

/// The requests this appliance started, by id (in the state directory).
pub const JOURNAL: &str = "restores.json";
/// Entries kept in the journal (the newest ids).
const KEPT: usize = 200;

/// One request as this appliance last saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub state: RestoreState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default)]
    pub files: u64,
    #[serde(default)]
    pub bytes: u64,
    #[serde(default)]
    pub errors: u64,
    /// The server has this final state (nothing more to send).
    #[serde(default)]
    pub told: bool,
}

impl Entry {
    pub(super) fn status(&self, id: i64) -> RestoreStatus {
        RestoreStatus {
            id,
            state: self.state,
            reason: self.reason.clone(),
            files: self.files,
            bytes: self.bytes,
            errors: self.errors,
        }
    }

    pub(super) fn new(state: RestoreState, reason: Option<String>) -> Entry {
        Entry {
            state,
            reason,
            files: 0,
            bytes: 0,
            errors: 0,
            told: false,
        }
    }
}

pub(super) type Journal = BTreeMap<i64, Entry>;

pub(super) fn load(state: &Path) -> Journal {
    let path = state.join(JOURNAL);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
            // A journal we cannot read must not let a request run twice
            // unnoticed; it can only lose the memory of old requests.
            tracing::warn!(
                "{} is not readable ({e}); starting a new one",
                path.display()
            );
            Journal::new()
        }),
        Err(_) => Journal::new(),
    }
}

pub(super) fn save(state: &Path, journal: &mut Journal) -> Result<(), String> {
    while journal.len() > KEPT {
        journal.pop_first();
    }
    let path = state.join(JOURNAL);
    let bytes = serde_json::to_vec_pretty(journal).map_err(|e| e.to_string())?;
    write_atomic(&path, &bytes, 0o600).map_err(|e| format!("{}: {e}", path.display()))
}
