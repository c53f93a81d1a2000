//! The restore's work queue: batches of entries of one directory, handed to
//! workers so that no two of them create in the same directory at once
//! where another directory has work waiting.
//!
//! Why: creating a file takes its directory's lock for the whole of the
//! create (inode allocation included). Handing out single files put every
//! worker in the same directory (a listing is sorted), and on ext4 they
//! spun on that lock (`rwsem` spinning in `openat`/`renameat` was ~8% of a
//! restore's samples, and the restore used ~1 of 2 cores). A batch keeps
//! one directory's small files on one worker, which also keeps a frame's
//! members together (decoded once, then served from the frame cache).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};

/// Entries of one directory, restored in order by one worker.
pub struct Batch<J> {
    pub dir: Arc<str>,
    pub jobs: Vec<J>,
}

/// A bounded queue of batches; `take` prefers a batch whose directory no
/// worker is in.
pub struct Queue<J> {
    state: Mutex<State<J>>,
    /// Signalled when a batch is added, taken or finished, or on close.
    changed: Condvar,
    /// Jobs queued at most before `push` waits (bounds memory; the walker
    /// need not run far ahead of the writers).
    cap: usize,
}

struct State<J> {
    batches: VecDeque<Batch<J>>,
    queued: usize,
    /// Workers in each directory now.
    busy: HashMap<Arc<str>, usize>,
    closed: bool,
}

impl<J> Queue<J> {
    pub fn new(cap: usize) -> Self {
        Self {
            state: Mutex::new(State {
                batches: VecDeque::new(),
                queued: 0,
                busy: HashMap::new(),
                closed: false,
            }),
            changed: Condvar::new(),
            cap,
        }
    }

    /// Adds a batch, waiting while the queue is full.
    pub fn push(&self, batch: Batch<J>) {
        if batch.jobs.is_empty() {
            return;
        }
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        while s.queued >= self.cap {
            match self.changed.wait(s) {
                Ok(g) => s = g,
                Err(_) => return,
            }
        }
        s.queued += batch.jobs.len();
        s.batches.push_back(batch);
        self.changed.notify_all();
    }

    /// No more batches: `take` returns `None` once the queue is empty.
    pub fn close(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.closed = true;
        }
        self.changed.notify_all();
    }

    /// The next batch, preferring the oldest one whose directory is free;
    /// if every waiting batch is in a busy directory, the oldest (a worker
    /// idle is worse than a shared lock). The caller calls `done` after.
    pub fn take(&self) -> Option<Batch<J>> {
        let mut s = self.state.lock().ok()?;
        loop {
            if !s.batches.is_empty() {
                let i = s
                    .batches
                    .iter()
                    .position(|b| !s.busy.contains_key(&b.dir))
                    .unwrap_or(0);
                let b = s.batches.remove(i)?;
                s.queued -= b.jobs.len();
                *s.busy.entry(b.dir.clone()).or_insert(0) += 1;
                self.changed.notify_all();
                return Some(b);
            }
            if s.closed {
                return None;
            }
            s = self.changed.wait(s).ok()?;
        }
    }

    /// A worker has finished the batch it took in `dir`.
    pub fn done(&self, dir: &Arc<str>) {
        if let Ok(mut s) = self.state.lock() {
            if let Some(n) = s.busy.get_mut(dir) {
                *n -= 1;
                if *n == 0 {
                    s.busy.remove(dir);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(dir: &str, jobs: &[u32]) -> Batch<u32> {
        Batch {
            dir: Arc::from(dir),
            jobs: jobs.to_vec(),
        }
    }

    #[test]
    fn prefers_a_free_directory_then_the_oldest() {
        let q = Queue::new(100);
        q.push(batch("a", &[1, 2]));
        q.push(batch("a", &[3]));
        q.push(batch("b", &[4]));
        q.push(batch("c", &[]));
        q.close();
        let first = q.take().expect("a");
        assert_eq!(first.jobs, [1, 2]);
        // `a` is busy: `b` goes first although it is younger.
        let second = q.take().expect("b");
        assert_eq!(&*second.dir, "b");
        // Only `a` is left: taken though busy.
        let third = q.take().expect("a again");
        assert_eq!(third.jobs, [3]);
        q.done(&first.dir);
        q.done(&second.dir);
        q.done(&third.dir);
        assert!(q.take().is_none());
    }

    #[test]
    fn push_waits_for_room_and_every_job_is_taken_once() {
        let q = Queue::new(4);
        let seen = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    while let Some(b) = q.take() {
                        seen.lock().expect("lock").extend(b.jobs.iter().copied());
                        q.done(&b.dir);
                    }
                });
            }
            for i in 0..200u32 {
                q.push(batch(&format!("d{}", i % 7), &[i]));
            }
            q.close();
        });
        let mut seen = seen.into_inner().expect("lock");
        seen.sort_unstable();
        assert_eq!(seen, (0..200).collect::<Vec<_>>());
    }
}
