//! How a running restore learns that ops cancels it: the heartbeat
//! thread's word ([`CancelAsked`]) and the answers to its progress
//! reports, watched beside the restore ([`watch_while_running`]).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use levee_proto::restore_api::{RestoreState, RestoreStatus};

use super::{send, Sent};
use crate::backup::progress::Counters;
use crate::enroll::MtlsClient;

/// The request ops is cancelling, as the heartbeat answer said (`cancel`):
/// the heartbeat thread sets it, the restore running that request on the
/// job thread stops between files.
#[derive(Debug, Default)]
pub struct CancelAsked(AtomicI64);

impl CancelAsked {
    /// Request `id` is to stop.
    pub fn ask(&self, id: i64) {
        self.0.store(id, Ordering::SeqCst);
    }

    pub(crate) fn asked(&self, id: i64) -> bool {
        self.0.load(Ordering::SeqCst) == id
    }
}

/// How a running restore learns that ops cancels it.
#[derive(Debug, Clone, Copy)]
pub struct Watch<'a> {
    /// What the heartbeat thread says.
    pub cancel: &'a CancelAsked,
    /// Between progress reports (their answer says `cancelling` too): the
    /// heartbeat interval.
    pub every: Duration,
}

/// A running restore's counters, and its end for the watcher.
#[derive(Default)]
pub(super) struct Progress {
    pub(super) counters: Counters,
    ended: Mutex<bool>,
    wake: Condvar,
}

impl Progress {
    pub(super) fn end(&self) {
        if let Ok(mut e) = self.ended.lock() {
            *e = true;
        }
        self.wake.notify_all();
    }

    /// Waits up to `d`; whether the restore has ended.
    pub(super) fn wait(&self, d: Duration) -> bool {
        let Ok(ended) = self.ended.lock() else {
            return true;
        };
        match self.wake.wait_timeout_while(ended, d, |e| !*e) {
            Ok((e, _)) => *e,
            Err(_) => true,
        }
    }
}

/// Beside a running restore: stops it when the heartbeat thread says ops
/// cancels it, and every `watch.every` reports its progress (`running`
/// with the counts so far), whose answer says so too.
pub(super) fn watch_while_running(
    client: Option<&MtlsClient>,
    id: i64,
    p: &Progress,
    watch: Watch,
) {
    // The heartbeat's word is checked often; the server is asked each
    // interval.
    const LOOK: Duration = Duration::from_millis(200);
    let mut next_report = Instant::now() + watch.every;
    while !p.wait(LOOK) {
        let mut stop = watch.cancel.asked(id);
        if !stop && Instant::now() >= next_report {
            next_report = Instant::now() + watch.every;
            let c = &p.counters;
            let status = RestoreStatus {
                id,
                state: RestoreState::Running,
                reason: None,
                files: Counters::get(&c.files),
                bytes: Counters::get(&c.bytes_read),
                errors: Counters::get(&c.errors),
            };
            stop = matches!(
                send(client, &status),
                Sent::Refused | Sent::Taken(Some(RestoreState::Cancelling))
            );
        }
        if stop {
            tracing::info!("restore request {id}: ops cancelled it; stopping between files");
            p.counters.stop.store(true, Ordering::SeqCst);
            return;
        }
    }
}
