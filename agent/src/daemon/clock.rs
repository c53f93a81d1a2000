//! The daemon's clock step: from the mutual-TLS server's authenticated
//! time only (`enroll::server_clock`), at every start before the first
//! request that checks a certificate's validity, and again after a failed
//! heartbeat (a clock that was off may be why it failed).

use super::RunOptions;
use crate::enroll::{self, Credential};

/// Sets the clock from the server's authenticated time if it is off by
/// more than 2 s; logs and keeps the local clock when that time cannot be
/// had or is not acceptable. Returns the time stepped to, if any.
pub(super) fn step_clock(opts: &RunOptions, cred: &Credential, who: &str) -> Option<i64> {
    let server = match enroll::server_clock(cred, None) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(
                "{who}: cannot read the server's time over mutual TLS ({e}); keeping the local clock"
            );
            return None;
        }
    };
    let local = enroll::unix_now();
    let t =
        match enroll::authenticated_step(local, server.unix, server.not_before, server.not_after) {
            Ok(Some(t)) => t,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!("{who}: {e}");
                return None;
            }
        };
    if !opts.set_clock {
        tracing::info!(
            "{who}: clock is {}s off the server's; not setting it (disabled)",
            t - local
        );
        return Some(t);
    }
    match enroll::set_system_clock(t) {
        Ok(()) => tracing::info!(
            "{who}: clock set from the server (authenticated): was {local}, now {t} (Unix seconds; off by {}s)",
            t - local
        ),
        Err(e) => tracing::warn!(
            "{who}: clock is {}s off the server's and cannot be set: {e}; certificate checks may fail",
            t - local
        ),
    }
    Some(t)
}
