//! Repository locks: `locks/<random>` files saying who is working on the
//! repository since when. Backups take one so prune's time fence knows
//! which packs a running backup might still rely on; prunes take one so two
//! prunes never run at once.
//!
//! A lock file is JSON `{"info": {...}, "mac": "<hex>"}`, the MAC an HMAC
//! with the repository's MAC key over the info's bytes as stored (domain
//! `levee lock v1`), so someone who can write to the store but holds no
//! key cannot plant a lock that stalls prune forever or forge a dead one.
//! A file that fails the check is no lock: it is ignored, reported, and
//! `unlock` removes it.
//!
//! A lock is alive while its process is: on the same boot of the same
//! machine (same `boot_id`, so two hosts that share a hostname never judge
//! each other by pid) through /proc, pid plus process start time, so a
//! SIGKILLed run is seen dead at once; elsewhere while its heartbeat,
//! rewritten every 5 minutes, is less than 30 minutes old and not more than
//! [`MAX_SKEW_NS`] in the future (a heartbeat from the future would
//! otherwise keep a lock alive forever). Each process has a random id, the
//! lock's identity beside hostname and pid.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use levee_proto::repo::crypto::MasterKey;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::backup::backend::local::LocalBackend;
use crate::backup::backend::{BackendError, FileKind, ReadBackend, WriteBackend};
use crate::util::now_ns;

const REFRESH: Duration = Duration::from_secs(300);
/// A lock whose heartbeat is older than this is dead (other hosts only).
pub const STALE_NS: i64 = 30 * 60 * 1_000_000_000;
/// How far another host's clock may run ahead of ours; a heartbeat further
/// in the future is implausible and the lock counts as stale.
pub const MAX_SKEW_NS: i64 = 10 * 60 * 1_000_000_000;
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
    /// The kernel's boot id: pid and start time mean something only on
    /// the same boot of the same machine.
    #[serde(default)]
    pub boot_id: String,
    /// Random per process: the lock's owner, whatever the hostname says.
    #[serde(default)]
    pub process_id: String,
    pub start_ns: i64,
    pub heartbeat_ns: i64,
}

/// The stored form: the info as bytes and their MAC.
#[derive(Serialize, Deserialize)]
struct LockFile {
    info: serde_json::Value,
    mac: String,
}

fn mac(key: &MasterKey, info: &[u8]) -> String {
    let mut m = b"levee lock v1\0".to_vec();
    m.extend_from_slice(info);
    key.blob_id(&m).to_hex()
}

/// A lock file's bytes: `info` and its MAC.
pub fn seal(key: &MasterKey, info: &LockInfo) -> Vec<u8> {
    let bytes = serde_json::to_vec(info).unwrap_or_default();
    let value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    serde_json::to_vec(&LockFile {
        mac: mac(key, &serde_json::to_vec(&value).unwrap_or_default()),
        info: value,
    })
    .unwrap_or_default()
}

/// Why a lock file is not a lock.
fn open(key: &MasterKey, b: &[u8]) -> Result<LockInfo, String> {
    let f: LockFile = serde_json::from_slice(b).map_err(|e| format!("not a lock file ({e})"))?;
    let bytes = serde_json::to_vec(&f.info).unwrap_or_default();
    let good = mac(key, &bytes);
    // A plain comparison: how long it takes is not observable through a
    // lock file.
    if good != f.mac {
        return Err("its MAC does not match (forged, damaged, or another repository's)".into());
    }
    serde_json::from_value(f.info).map_err(|e| format!("bad lock info ({e})"))
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

fn boot_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    })
}

/// This process's random id (16 bytes, hex).
pub fn process_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let mut r = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut r);
        hex::encode(r)
    })
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
        if !self.boot_id.is_empty() && self.boot_id == boot_id() {
            return proc_start(self.pid) == Some(self.pid_start);
        }
        now - self.heartbeat_ns < STALE_NS && self.heartbeat_ns - now <= MAX_SKEW_NS
    }
}

impl Lock {
    pub fn acquire(
        be: Arc<LocalBackend>,
        key: &MasterKey,
        kind: &str,
    ) -> Result<Self, BackendError> {
        let pid = std::process::id();
        let now = now_ns();
        let info = LockInfo {
            kind: kind.into(),
            hostname: hostname(),
            pid,
            pid_start: proc_start(pid).unwrap_or(0),
            boot_id: boot_id().to_string(),
            process_id: process_id().to_string(),
            start_ns: now,
            heartbeat_ns: now,
        };
        let mut r = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut r);
        let name = hex::encode(r);
        be.write(FileKind::Lock, &name, &seal(key, &info))?;
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let last_ok = Arc::new(AtomicI64::new(now));
        let thread = {
            let (be, name, mut info, last_ok, key) = (
                be.clone(),
                name.clone(),
                info.clone(),
                last_ok.clone(),
                key.clone(),
            );
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
                        && be.write(FileKind::Lock, &name, &seal(&key, &info)).is_ok()
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

/// Lock files that are no lock (their MAC fails, or they do not parse):
/// name and why. Ignored by everyone; `unlock` removes them.
pub type BadLock = (String, String);
/// A lock and its file name.
pub type NamedLock = (String, LockInfo);

/// All authenticated locks, with their file names, and the files that are
/// not locks. A lock being written is not yet visible under its name.
pub fn list_locks(
    be: &LocalBackend,
    key: &MasterKey,
) -> Result<(Vec<NamedLock>, Vec<BadLock>), BackendError> {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for (name, _) in be.list(FileKind::Lock)? {
        match be.read(FileKind::Lock, &name) {
            Ok(b) => match open(key, &b) {
                Ok(i) => out.push((name, i)),
                Err(why) => {
                    tracing::warn!(lock = %name, "ignored: {why}");
                    bad.push((name, why));
                }
            },
            // Removed between list and read: its owner finished.
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    Ok((out, bad))
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct UnlockReport {
    /// Stale locks removed: name, kind, host, pid.
    pub removed: Vec<String>,
    /// Files that were no lock (MAC failed), removed.
    pub removed_invalid: Vec<String>,
    /// Live locks left in place.
    pub alive: Vec<String>,
}

fn describe(name: &str, l: &LockInfo) -> String {
    format!(
        "{name}: {} by pid {} on {:?} (process {})",
        l.kind, l.pid, l.hostname, l.process_id
    )
}

/// Removes stale locks and files that are no lock. A live lock is never
/// removed (its owner is running on this machine, or its heartbeat is
/// fresh): that is the safety check, as removing it would let a prune
/// delete packs a running backup relies on.
pub fn unlock(be: &LocalBackend, key: &MasterKey) -> Result<UnlockReport, BackendError> {
    let now = now_ns();
    let (locks, bad) = list_locks(be, key)?;
    let mut r = UnlockReport::default();
    for (name, l) in &locks {
        if l.is_alive(now) {
            r.alive.push(describe(name, l));
        } else {
            be.remove(FileKind::Lock, name)?;
            r.removed.push(describe(name, l));
        }
    }
    for (name, why) in bad {
        be.remove(FileKind::Lock, &name)?;
        r.removed_invalid.push(format!("{name}: {why}"));
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(heartbeat_ns: i64) -> LockInfo {
        LockInfo {
            kind: "backup".into(),
            hostname: hostname(),
            pid: std::process::id(),
            pid_start: 0,
            boot_id: "another machine".into(),
            process_id: process_id().into(),
            start_ns: heartbeat_ns,
            heartbeat_ns,
        }
    }

    #[test]
    fn future_heartbeats_are_bounded_and_boot_id_decides_pid_checks() {
        let now = now_ns();
        assert!(info(now).is_alive(now));
        assert!(info(now + MAX_SKEW_NS / 2).is_alive(now));
        assert!(!info(now + MAX_SKEW_NS + 1).is_alive(now));
        assert!(!info(i64::MAX / 2).is_alive(now));
        assert!(!info(now - STALE_NS).is_alive(now));
        // Same hostname and pid, other machine: judged by heartbeat, not by
        // our /proc (pid_start 0 would read as dead here).
        let mut mine = info(now);
        assert!(mine.is_alive(now));
        mine.boot_id = boot_id().into();
        assert!(!mine.is_alive(now), "pid_start 0 is not this process");
        mine.pid_start = proc_start(std::process::id()).expect("own start");
        assert!(mine.is_alive(now));
    }

    #[test]
    fn lock_files_are_authenticated() {
        let key = MasterKey::generate();
        let l = info(now_ns());
        let sealed = seal(&key, &l);
        assert_eq!(open(&key, &sealed), Ok(l.clone()));
        assert!(open(&MasterKey::generate(), &sealed).is_err());
        let forged = String::from_utf8(sealed)
            .expect("json")
            .replace("backup", "prune");
        assert!(open(&key, forged.as_bytes()).is_err());
        // The old plaintext format is no lock.
        assert!(open(&key, &serde_json::to_vec(&l).expect("json")).is_err());
    }
}
