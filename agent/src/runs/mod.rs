//! Run reports from the appliance to the server: every backup, restore,
//! prune and check run becomes a [`levee_proto::runs::RunReport`]
//! ([`build`]), goes into the spool under the state dir ([`Spool`]), and
//! is sent from there in order over mTLS ([`send_with`]) by the daemon, at
//! once after a scheduled job and again at every heartbeat. Runs by hand
//! (`levee-agent backup ...` on an enrolled appliance) are spooled the
//! same way and go with the daemon's next flush.

pub mod build;
mod spool;

use levee_proto::runs::RunReport;

pub use spool::{Flushed, SendError, Spool, SpoolError, MAX_SPOOLED, SPOOL_DIR};

use crate::enroll::{EnrollError, MtlsClient};

/// The spool's sender over `client`: `POST /api/v1/runs`. A report the
/// server refuses as invalid (400, 413, 422) is dropped; anything else
/// that fails is tried again later.
pub fn send_with(client: &MtlsClient) -> impl FnMut(&RunReport) -> Result<(), SendError> + '_ {
    move |r| match client.post_run(r) {
        Ok(()) => Ok(()),
        Err(
            e @ EnrollError::Refused {
                status: 400 | 413 | 422,
                ..
            },
        ) => Err(SendError::Refused(e.to_string())),
        Err(e) => Err(SendError::Transient(e.to_string())),
    }
}

/// Sends the spool of the appliance in `state_dir` with its stored
/// credential (loaded now: the heartbeat loop may have renewed it).
/// `Ok(None)` when the appliance has no credential (not enrolled).
pub fn flush_with_stored_credential(
    state_dir: &std::path::Path,
) -> Result<Option<Flushed>, String> {
    let cred = match crate::enroll::Credential::load(state_dir) {
        Ok(Some(c)) => c,
        Ok(None) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let client = MtlsClient::new(&cred).map_err(|e| e.to_string())?;
    Spool::new(state_dir)
        .flush(send_with(&client))
        .map(Some)
        .map_err(|e| e.to_string())
}
