//! Several uploads at once per target: the plan's files go up kind by
//! kind ([`super::plan::UPLOAD_ORDER`]), and within a kind up to
//! `streams` files travel at the same time on their own threads. A kind
//! starts only when the one before it is done, so packs and index files
//! are on the target before any snapshot that references them, as with
//! one stream. The bandwidth cap is the one token bucket every stream
//! pays into (`super::throttle`), so it caps their total; each file is
//! still resumable on its own and fails over across the target's
//! endpoints on its own (`super::target::Target::upload`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use levee_proto::offsite::FileKind;

use super::plan::{LocalFile, UPLOAD_ORDER};
use super::target::Target;
use super::{StoreError, TargetOutcome};

/// `read(file, offset, len)`: local bytes of a file being uploaded.
pub type ReadFile<'a> = &'a (dyn Fn(&LocalFile, u64, usize) -> Result<Vec<u8>, String> + Sync);

/// Whether an error ends the target's run: every endpoint failed (the
/// retry schedule catches it up), or the customer's quota is reached.
fn stops_the_run(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Transport { .. } | StoreError::Refused { status: 413, .. }
    )
}

/// Uploads `uploads` (in [`UPLOAD_ORDER`]) to `client`, `streams` files at
/// a time within a kind; counts into `out`. A snapshot is held back when
/// any file before it failed. Stops after the kind in which the target
/// went down or the quota was reached (files already in flight finish).
pub fn upload_all(
    client: &dyn Target,
    uploads: &[LocalFile],
    streams: usize,
    part: u64,
    read: ReadFile<'_>,
    out: &mut TargetOutcome,
) {
    let mut data_complete = true;
    for kind in UPLOAD_ORDER {
        let files: Vec<&LocalFile> = uploads.iter().filter(|f| f.kind == kind).collect();
        if files.is_empty() {
            continue;
        }
        if kind == FileKind::Snapshots && !data_complete {
            for f in files {
                out.errors.push(format!(
                    "snapshot {} held back: some of its data did not reach the target",
                    f.name
                ));
            }
            return;
        }
        let results = upload_kind(client, &files, streams, part, read);
        out.bytes_uploaded = client.total_sent();
        let mut stop = false;
        for (f, r) in files.iter().zip(results) {
            match r {
                Some(Ok(())) => {
                    out.files_uploaded += 1;
                    out.files_present += 1;
                    out.bytes_present += f.size;
                }
                Some(Err(e)) => {
                    data_complete = false;
                    stop |= stops_the_run(&e);
                    out.errors
                        .push(format!("{} {}: {e}", f.kind.as_str(), f.name));
                }
                // Not started: the run stopped before it.
                None => data_complete = false,
            }
        }
        if stop {
            return;
        }
    }
}

/// One kind's files over `streams` threads; `None` for a file not started
/// because the run stopped (target down, quota) before it.
fn upload_kind(
    client: &dyn Target,
    files: &[&LocalFile],
    streams: usize,
    part: u64,
    read: ReadFile<'_>,
) -> Vec<Option<Result<(), StoreError>>> {
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let results: Mutex<Vec<Option<Result<(), StoreError>>>> =
        Mutex::new((0..files.len()).map(|_| None).collect());
    let worker = || loop {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(f) = files.get(i) else {
            return;
        };
        let r = client
            .upload(f.kind, &f.name, f.size, part, &|offset, len| {
                read(f, offset, len)
            })
            .map(drop);
        if r.as_ref().is_err_and(stops_the_run) {
            stop.store(true, Ordering::Relaxed);
        }
        if let Ok(mut all) = results.lock() {
            all[i] = Some(r);
        }
    };
    let n = streams.clamp(1, files.len().max(1));
    if n == 1 {
        worker();
    } else {
        std::thread::scope(|s| {
            for _ in 0..n {
                s.spawn(worker);
            }
        });
    }
    results.into_inner().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replicate::target::{Listing, ReadAt};
    use levee_proto::offsite::DeletionRequest;
    use std::sync::atomic::AtomicU64;
    use std::time::Duration;

    /// A target that records when each upload starts and ends, and fails
    /// the files named in `fail`.
    #[derive(Default)]
    struct Recorder {
        log: Mutex<Vec<(String, bool)>>,
        in_flight: AtomicUsize,
        most: AtomicUsize,
        sent: AtomicU64,
        fail: Vec<String>,
    }

    impl Target for Recorder {
        fn list_all(&self) -> Result<Listing, StoreError> {
            Ok(Listing::new())
        }
        fn upload(
            &self,
            kind: FileKind,
            name: &str,
            size: u64,
            _part: u64,
            read: ReadAt<'_>,
        ) -> Result<u64, StoreError> {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            self.log
                .lock()
                .expect("log")
                .push((format!("{}/{name}", kind.as_str()), true));
            let _ = read(0, size as usize);
            std::thread::sleep(Duration::from_millis(100));
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            self.log
                .lock()
                .expect("log")
                .push((format!("{}/{name}", kind.as_str()), false));
            self.sent.fetch_add(size, Ordering::SeqCst);
            if self.fail.iter().any(|f| f == name) {
                return Err(StoreError::Transport {
                    url: name.into(),
                    reason: "down".into(),
                });
            }
            Ok(size)
        }
        fn verify(&self, _: FileKind, _: &str) -> Result<bool, StoreError> {
            Ok(true)
        }
        fn download(&self, _: FileKind, _: &str) -> Result<Vec<u8>, StoreError> {
            Ok(Vec::new())
        }
        fn request_deletion(&self, _: &DeletionRequest) -> Result<bool, StoreError> {
            Ok(true)
        }
        fn total_sent(&self) -> u64 {
            self.sent.load(Ordering::SeqCst)
        }
    }

    fn files() -> Vec<LocalFile> {
        let f = |kind, name: &str| LocalFile {
            kind,
            name: name.into(),
            size: 10,
        };
        let mut v = vec![f(FileKind::Config, "c"), f(FileKind::Keys, "k")];
        v.extend((0..8).map(|i| f(FileKind::Data, &format!("p{i}"))));
        v.push(f(FileKind::Index, "i"));
        v.push(f(FileKind::Snapshots, "s"));
        v
    }

    #[test]
    fn kinds_go_in_order_and_files_of_a_kind_in_parallel() {
        let t = Recorder::default();
        let mut out = TargetOutcome::default();
        upload_all(&t, &files(), 4, 8, &|_, _, _| Ok(Vec::new()), &mut out);
        assert!(out.ok(), "{:?}", out.errors);
        assert_eq!((out.files_uploaded, out.bytes_uploaded), (12, 120));
        // Never more than the streams; more than one at once (each
        // upload takes 100 ms, so the threads overlap even on a loaded
        // machine).
        let most = t.most.load(Ordering::SeqCst);
        assert!((2..=4).contains(&most), "{most} uploads at once");
        let log = t.log.lock().expect("log");
        let pos = |what: &str, start: bool| {
            log.iter()
                .position(|(n, s)| n == what && *s == start)
                .expect("logged")
        };
        let last_pack_end = (0..8).map(|i| pos(&format!("data/p{i}"), false)).max();
        assert!(last_pack_end < Some(pos("index/i", true)), "{log:?}");
        assert!(pos("index/i", false) < pos("snapshots/s", true), "{log:?}");
    }

    #[test]
    fn a_failed_pack_holds_the_snapshot_back_and_a_down_target_stops_the_run() {
        let t = Recorder {
            fail: vec!["p3".into()],
            ..Default::default()
        };
        let mut out = TargetOutcome::default();
        upload_all(&t, &files(), 4, 8, &|_, _, _| Ok(Vec::new()), &mut out);
        assert!(
            out.errors.iter().any(|e| e.contains("data p3")),
            "{:?}",
            out.errors
        );
        let log = t.log.lock().expect("log");
        assert!(
            !log.iter()
                .any(|(n, _)| n.starts_with("index/") || n.starts_with("snapshots/")),
            "{log:?}"
        );
    }
}
