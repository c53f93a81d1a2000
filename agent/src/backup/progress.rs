//! Counters that commands update from any thread and a display (the CLI's
//! progress bar, the daemon's status report) reads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Default)]
pub struct Counters {
    pub files: AtomicU64,
    pub dirs: AtomicU64,
    pub files_unchanged: AtomicU64,
    pub bytes_total: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_new: AtomicU64,
    pub bytes_stored: AtomicU64,
    pub blobs_new: AtomicU64,
    pub errors: AtomicU64,
    /// Expected total for the current phase, 0 if unknown.
    pub expected: AtomicU64,
    pub done: AtomicU64,
    pub phase: Mutex<String>,
    pub error_messages: Mutex<Vec<String>>,
    /// Set by another thread to stop the command at its next item (a
    /// restore: between files; one being written is finished). Rides here
    /// because every command already shares this handle with its watchers.
    pub stop: std::sync::atomic::AtomicBool,
}

impl Counters {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
    pub fn set_phase(&self, p: &str) {
        if let Ok(mut g) = self.phase.lock() {
            *g = p.to_string();
        }
    }
    pub fn error(&self, msg: String) {
        tracing::warn!("{msg}");
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut g) = self.error_messages.lock() {
            g.push(msg);
        }
    }
    /// Whether [`Counters::stop`] was set.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
    pub fn errors(&self) -> Vec<String> {
        self.error_messages
            .lock()
            .map(|g| g.clone())
            .unwrap_or_default()
    }
}
