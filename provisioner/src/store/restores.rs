//! Restores ops asked appliances to run (issue 14;
//! `levee_proto::restore_api`): what to restore where, and where each
//! request stands (requested, running, cancelling, done, failed,
//! cancelled and why). Only the appliance a request is for moves it on;
//! ops withdraws it ([`RestoreStore::cancel_restore`]). The moves are
//! those of [`RestoreState`]; every other is refused.

use levee_proto::restore_api::{RestoreRequest, RestoreState, RestoreStatus};
use serde::Serialize;

use super::Result;

/// Requests kept per appliance (older finished ones are trimmed).
pub const RESTORES_KEPT: i64 = 100;

/// A new request, as `levee appliance restore` checked it.
#[derive(Debug, Clone)]
pub struct NewRestore<'a> {
    pub snapshot: &'a str,
    pub path: Option<&'a str>,
    pub target: &'a str,
    pub credentials_of: Option<&'a str>,
}

/// One stored request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestoreRecord {
    pub id: i64,
    pub appliance_id: i64,
    pub snapshot: String,
    pub path: Option<String>,
    pub target: String,
    pub credentials_of: Option<String>,
    pub state: String,
    pub reason: Option<String>,
    pub requested_at: u64,
    pub started_at: Option<u64>,
    pub ended_at: Option<u64>,
    pub files: u64,
    pub bytes: u64,
    pub errors: u64,
    /// When ops asked to withdraw it (`levee appliance restore --cancel`).
    pub cancel_asked_at: Option<u64>,
    /// The operator who asked.
    pub cancel_asked_by: Option<String>,
}

impl RestoreRecord {
    /// What the appliance gets.
    pub fn request(&self) -> RestoreRequest {
        RestoreRequest {
            id: self.id,
            snapshot: self.snapshot.clone(),
            path: self.path.clone(),
            target: self.target.clone(),
            credentials_of: self.credentials_of.clone(),
            cancel: self.state == RestoreState::Cancelling.as_str(),
        }
    }
}

/// What [`RestoreStore::set_restore_state`] and
/// [`RestoreStore::cancel_restore`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreMove {
    /// Moved on (or already in that state: a status sent again; a progress
    /// report of a request being cancelled stays `cancelling`).
    Moved(RestoreRecord),
    /// No such request of this appliance.
    NotFound,
    /// The request is in a state it cannot leave that way.
    Refused(RestoreRecord),
}

/// The states a request may be in for an appliance to move it to `to`
/// (its own state included: a status sent again changes nothing; `running`
/// on a `cancelling` request is a progress report and keeps it
/// `cancelling`). At most [`FROM_MAX`] states.
pub(crate) fn allowed_from(to: RestoreState) -> &'static [&'static str] {
    match to {
        // Ops' states, never an appliance's.
        RestoreState::Requested | RestoreState::Cancelling => &[],
        RestoreState::Running | RestoreState::Done | RestoreState::Failed => {
            &["requested", "running", "cancelling"]
        }
        // Only what was started can stop; a request ops withdrew before it
        // started is already `cancelled`.
        RestoreState::Cancelled => &["running", "cancelling"],
    }
}

/// The longest list [`allowed_from`] returns.
pub(crate) const FROM_MAX: usize = 3;

/// [`allowed_from`] as exactly [`FROM_MAX`] statement parameters (the
/// missing ones match no state).
pub(crate) fn allowed_from_params(to: RestoreState) -> [&'static str; FROM_MAX] {
    let from = allowed_from(to);
    std::array::from_fn(|i| from.get(i).copied().unwrap_or(""))
}

/// The reason a request withdrawn before it started carries.
pub(crate) fn withdrawn_reason(operator: &str) -> String {
    format!("withdrawn by {operator} before the appliance started it; nothing was written")
}

/// Whether a request already in `current` took the status `s` before
/// (then answering it again is right).
pub(crate) fn same_again(current: &RestoreRecord, s: &RestoreStatus) -> bool {
    current.state == s.state.as_str()
}

/// The columns [`restore_record!`] reads, in order.
pub(crate) const RESTORE_COLUMNS: &str =
    "id, appliance_id, snapshot, path, target, credentials_of, \
     state, reason, requested_at, started_at, ended_at, files, bytes, errors, \
     cancel_asked_at, cancel_asked_by";

/// Decodes one row of [`RESTORE_COLUMNS`] for both stores (`$get`: `get`
/// for rusqlite, `try_get` for tokio-postgres).
macro_rules! restore_record {
    ($r:expr, $get:ident) => {{
        let r = $r;
        let u = |v: Option<i64>| v.map(|v| v.max(0) as u64);
        $crate::store::RestoreRecord {
            id: r.$get(0)?,
            appliance_id: r.$get(1)?,
            snapshot: r.$get(2)?,
            path: r.$get(3)?,
            target: r.$get(4)?,
            credentials_of: r.$get(5)?,
            state: r.$get(6)?,
            reason: r.$get(7)?,
            requested_at: r.$get::<_, i64>(8)?.max(0) as u64,
            started_at: u(r.$get(9)?),
            ended_at: u(r.$get(10)?),
            files: r.$get::<_, i64>(11)?.max(0) as u64,
            bytes: r.$get::<_, i64>(12)?.max(0) as u64,
            errors: r.$get::<_, i64>(13)?.max(0) as u64,
            cancel_asked_at: u(r.$get(14)?),
            cancel_asked_by: r.$get(15)?,
        }
    }};
}
pub(crate) use restore_record;

/// Restore requests.
pub trait RestoreStore {
    /// Stores a request for appliance `appliance` (state `requested`).
    fn add_restore(&self, appliance: i64, r: &NewRestore) -> Result<RestoreRecord>;
    /// The appliance's requests, newest first (at most `limit`).
    fn restores(&self, appliance: i64, limit: usize) -> Result<Vec<RestoreRecord>>;
    /// The appliance's unfinished requests (requested, running,
    /// cancelling), oldest first: what it is given.
    fn pending_restores(&self, appliance: i64) -> Result<Vec<RestoreRecord>>;
    /// Moves request `s.id` of appliance `appliance` on (see [`RestoreMove`]);
    /// a request of another appliance is [`RestoreMove::NotFound`].
    fn set_restore_state(&self, appliance: i64, s: &RestoreStatus) -> Result<RestoreMove>;
    /// Ops withdraws request `id` of appliance `appliance` (`operator`
    /// asks): `requested` becomes `cancelled` (it never runs), `running`
    /// becomes `cancelling` (the appliance stops between files and reports
    /// `cancelled`); already `cancelling`: [`RestoreMove::Moved`] unchanged;
    /// finished: [`RestoreMove::Refused`].
    fn cancel_restore(&self, appliance: i64, id: i64, operator: &str) -> Result<RestoreMove>;
}

/// What an appliance's status did: `moved` rows, then the request as it is.
pub(crate) fn move_outcome(moved: u64, row: Option<RestoreRecord>) -> RestoreMove {
    match (moved, row) {
        (_, None) => RestoreMove::NotFound,
        (0, Some(r)) => RestoreMove::Refused(r),
        (_, Some(r)) => RestoreMove::Moved(r),
    }
}

/// What a cancel that moved nothing found: already being cancelled (the
/// same answer again), or a state it cannot leave.
pub(crate) fn cancel_outcome(moved: u64, row: Option<RestoreRecord>) -> RestoreMove {
    match (moved, row) {
        (_, None) => RestoreMove::NotFound,
        (0, Some(r)) if r.state != RestoreState::Cancelling.as_str() => RestoreMove::Refused(r),
        (_, Some(r)) => RestoreMove::Moved(r),
    }
}
