//! Repository locks: `locks/<random>` JSON files saying who is working on
//! the repository since when. Backups take one so prune's time fence knows
//! which packs a running backup might still rely on; prunes take one so two
//! prunes never run at once. A lock is alive while its process is (checked
//! through /proc on the same host, so a SIGKILLed run frees it at once) and
//! its heartbeat, rewritten every 5 minutes, is less than 30 minutes old.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::backup::backend::local::LocalBackend;
use crate::backup::backend::{BackendError, FileKind, ReadBackend, WriteBackend};
use crate::util::now_ns;

const REFRESH: Duration = Duration::from_secs(300);
/// A lock whose heartbeat is older than this is dead (other hosts only).
pub const STALE_NS: i64 = 30 * 60 * 1_000_000_000;
/// A backup refuses to commit if its own heartbeat is older than this, so a
/// prune that declared it dead can never race its snapshot.
const FENCE_NS: i64 = 15 * 60 * 1_000_000_000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LockInfo {
    pub kind: String,
    pub hostname: String,
    pub pid: u32,
    /// Process start time (clock ticks since boot), to tell a reused pid.
    pub pid_start: u64,
    pub start_ns: i64,
    pub heartbeat_ns: i64,
}

pub struct Lock {
    be: Arc<LocalBackend>,
    name: String,
    pub info: LockInfo,
    /// Dropping it wakes the heartbeat thread at once (no sleep to sit out).
    stop: Option<crossbeam_channel::Sender<()>>,
    last_ok: Arc<AtomicI64>,
    thread: Option<JoinHandle<()>>,
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn proc_start(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22 (starttime), counted after the parenthesised command name.
    let rest = s.get(s.rfind(')')? + 2..)?;
    rest.split(' ').nth(19)?.parse().ok()
}

impl LockInfo {
    /// Whether the lock's owner may still be working.
    pub fn is_alive(&self, now: i64) -> bool {
        if self.hostname == hostname() {
            return proc_start(self.pid) == Some(self.pid_start);
        }
        now - self.heartbeat_ns < STALE_NS
    }
}

impl Lock {
    pub fn acquire(be: Arc<LocalBackend>, kind: &str) -> Result<Self, BackendError> {
        let pid = std::process::id();
        let now = now_ns();
        let info = LockInfo {
            kind: kind.into(),
            hostname: hostname(),
            pid,
            pid_start: proc_start(pid).unwrap_or(0),
            start_ns: now,
            heartbeat_ns: now,
        };
        let mut r = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut r);
        let name = hex::encode(r);
        be.write(
            FileKind::Lock,
            &name,
            &serde_json::to_vec(&info).unwrap_or_default(),
        )?;
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let last_ok = Arc::new(AtomicI64::new(now));
        let thread = {
            let (be, name, mut info, last_ok) =
                (be.clone(), name.clone(), info.clone(), last_ok.clone());
            std::thread::spawn(move || {
                // Wakes every REFRESH, or at once when the Lock is dropped
                // (a sleep loop made every command wait up to its period).
                while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(REFRESH)
                {
                    info.heartbeat_ns = now_ns();
                    // Only a lock file that still exists is refreshed: if a
                    // prune removed it, this run has been fenced out.
                    if be.size(FileKind::Lock, &name).is_ok()
                        && be
                            .write(
                                FileKind::Lock,
                                &name,
                                &serde_json::to_vec(&info).unwrap_or_default(),
                            )
                            .is_ok()
                    {
                        last_ok.store(info.heartbeat_ns, Ordering::Relaxed);
                    }
                }
            })
        };
        Ok(Self {
            be,
            name,
            info,
            stop: Some(stop),
            last_ok,
            thread: Some(thread),
        })
    }

    /// True if this lock still protects its holder (see [`FENCE_NS`]).
    pub fn still_valid(&self) -> bool {
        now_ns() - self.last_ok.load(Ordering::Relaxed) < FENCE_NS
            && self.be.size(FileKind::Lock, &self.name).is_ok()
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = self.be.remove(FileKind::Lock, &self.name);
    }
}

/// All locks, with their file names; unreadable ones are skipped (a lock
/// being written is not yet visible under its name).
pub fn list_locks(be: &LocalBackend) -> Result<Vec<(String, LockInfo)>, BackendError> {
    let mut out = Vec::new();
    for (name, _) in be.list(FileKind::Lock)? {
        if let Ok(b) = be.read(FileKind::Lock, &name) {
            if let Ok(i) = serde_json::from_slice::<LockInfo>(&b) {
                out.push((name, i));
            }
        }
    }
    Ok(out)
}
