//! The target writer: downloads one signed target straight into its place
//! (a slot partition, or a file on the ESP), resumable with HTTP `Range`,
//! under a bandwidth cap, hashing every byte against the sha256 and length
//! that the TUF targets metadata signs, then reading it all back from disk
//! to check it again.
//!
//! Progress lives in `/var/lib/levee/update/<name>.progress` and is written
//! only after the bytes it counts were synced, so it never claims more than
//! the disk holds. A resumed download re-hashes what is already there
//! before asking for the rest: the final sum always covers every byte.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::client::TargetRef;
use super::{Refusal, UpdateError};

/// Bytes between two progress records (each after a sync).
pub(crate) const CHECKPOINT: u64 = 8 << 20;

/// A token bucket: `rate` bytes per second, bursts up to one second's worth.
#[derive(Debug)]
pub struct Throttle {
    rate: u64,
    tokens: f64,
    last: Instant,
}

impl Throttle {
    /// `None`: unlimited.
    pub fn new(rate: Option<u64>) -> Option<Throttle> {
        rate.filter(|r| *r > 0).map(|rate| Throttle {
            rate,
            tokens: rate as f64,
            last: Instant::now(),
        })
    }

    /// How long to wait before `n` bytes may pass (and takes them).
    pub fn take(&mut self, n: usize, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate as f64).min(self.rate as f64);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate as f64)
        }
    }
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Progress {
    sha256: String,
    length: u64,
    /// Bytes at the start of the destination that are synced and belong
    /// to this target.
    done: u64,
}

/// What one download did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fetched {
    /// Bytes received over the network (less than the length if resumed).
    pub downloaded: u64,
    /// Where a resumed download started.
    pub resumed_at: u64,
}

/// Options of the writer.
pub struct FetchOptions<'a> {
    /// `/var/lib/levee/update`.
    pub progress_dir: &'a Path,
    pub throttle: Option<&'a mut Throttle>,
    pub timeout: Duration,
    /// Called with (bytes done, total) now and then.
    pub progress: &'a mut dyn FnMut(u64, u64),
}

pub(crate) fn io<'p>(
    what: &str,
    path: &'p Path,
) -> impl FnOnce(std::io::Error) -> UpdateError + 'p {
    let what = what.to_string();
    move |e| UpdateError::Setup(format!("{what} {}: {e}", path.display()))
}

/// Downloads `target` into `dest` from offset 0 (a block device or a file;
/// a file is created, never truncated below what a resume needs), resuming
/// a download of the same target cut earlier.
pub fn fetch_into(
    target: &TargetRef,
    dest: &Path,
    opts: FetchOptions<'_>,
) -> Result<Fetched, UpdateError> {
    std::fs::create_dir_all(opts.progress_dir).map_err(io("creating", opts.progress_dir))?;
    let progress_path = progress_path(opts.progress_dir, target);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dest)
        .map_err(io("opening", dest))?;
    let capacity = capacity(&file, dest)?;
    if capacity.is_some_and(|c| c < target.length) {
        return Err(UpdateError::Setup(format!(
            "{} ({} bytes) is too small for {} ({} bytes)",
            dest.display(),
            capacity.unwrap_or(0),
            target.name,
            target.length
        )));
    }
    let saved: Option<Progress> = std::fs::read(&progress_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(|p: &Progress| {
            p.sha256 == target.sha256 && p.length == target.length && p.done <= p.length
        });
    let mut hasher = Sha256::new();
    let mut done = 0;
    if let Some(p) = saved {
        // Re-hash what an earlier run wrote: the sum covers every byte.
        hash_range(&file, dest, p.done, &mut hasher)?;
        done = p.done;
    }
    let resumed_at = done;
    let mut downloaded = 0;
    if done < target.length {
        let client = http_client(opts.timeout)?;
        let mut req = client.get(&target.url);
        if done > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={done}-"));
        }
        let mut resp = req.send().map_err(|e| unreachable(&target.url, e))?;
        match resp.status().as_u16() {
            206 => {}
            200 if done > 0 => {
                // The server ignored the range: start over.
                hasher = Sha256::new();
                done = 0;
            }
            200 => {}
            s => {
                return Err(UpdateError::refused(
                    Refusal::Unreachable,
                    format!("{}: HTTP {s}", target.url),
                ))
            }
        }
        let mut buf = vec![0u8; 256 << 10];
        let mut throttle = opts.throttle;
        let mut since_checkpoint = 0;
        loop {
            let n = match resp.read(&mut buf) {
                Ok(n) => n,
                Err(e) => {
                    // Keep what arrived: the next run resumes after it.
                    checkpoint(&file, dest, &progress_path, target, done)?;
                    return Err(unreachable(
                        &target.url,
                        format!(
                            "{e} at {done} of {} bytes (resumed next time)",
                            target.length
                        ),
                    ));
                }
            };
            if n == 0 {
                break;
            }
            if done + n as u64 > target.length {
                return Err(UpdateError::refused(
                    Refusal::EndlessData,
                    format!(
                        "{} is longer than the {} bytes its signed metadata says",
                        target.url, target.length
                    ),
                ));
            }
            if let Some(t) = throttle.as_deref_mut() {
                std::thread::sleep(t.take(n, Instant::now()));
            }
            file.write_all_at(&buf[..n], done)
                .map_err(io("writing", dest))?;
            hasher.update(&buf[..n]);
            done += n as u64;
            downloaded += n as u64;
            since_checkpoint += n as u64;
            if since_checkpoint >= CHECKPOINT {
                since_checkpoint = 0;
                checkpoint(&file, dest, &progress_path, target, done)?;
                (opts.progress)(done, target.length);
            }
        }
    }
    if done != target.length {
        checkpoint(&file, dest, &progress_path, target, done)?;
        return Err(UpdateError::refused(
            Refusal::Unreachable,
            format!(
                "{}: the transfer ended at {done} of {} bytes (resumed next time)",
                target.url, target.length
            ),
        ));
    }
    let sum = hex::encode(hasher.finalize());
    if sum != target.sha256 {
        let _ = std::fs::remove_file(&progress_path);
        return Err(UpdateError::refused(
            Refusal::ArbitraryPackage,
            format!(
                "{}: sha256 {sum}, the signed metadata says {}",
                target.name, target.sha256
            ),
        ));
    }
    file.sync_all().map_err(io("syncing", dest))?;
    let _ = std::fs::remove_file(&progress_path);
    (opts.progress)(done, target.length);
    Ok(Fetched {
        downloaded,
        resumed_at,
    })
}

/// Where a full download of `target` records its progress.
pub(crate) fn progress_path(dir: &Path, target: &TargetRef) -> PathBuf {
    dir.join(format!("{}.progress", sanitize(&target.name)))
}

/// The client of target downloads: `timeout` bounds one whole request.
pub(crate) fn http_client(timeout: Duration) -> Result<reqwest::blocking::Client, UpdateError> {
    reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(15))
        .timeout(timeout)
        .no_proxy()
        .user_agent(concat!("levee-agent/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| UpdateError::Setup(format!("HTTP client: {e}")))
}

/// Reads `target.length` bytes of `dest` back (past the page cache) and
/// checks them against the signed sha256.
pub fn verify_on_disk(target: &TargetRef, dest: &Path) -> Result<(), UpdateError> {
    let file = File::open(dest).map_err(io("opening", dest))?;
    drop_cache(&file);
    let mut hasher = Sha256::new();
    hash_range(&file, dest, target.length, &mut hasher)?;
    let sum = hex::encode(hasher.finalize());
    if sum != target.sha256 {
        return Err(UpdateError::refused(
            Refusal::ArbitraryPackage,
            format!(
                "{} read back from {}: sha256 {sum}, expected {} (a failing disk?)",
                target.name,
                dest.display(),
                target.sha256
            ),
        ));
    }
    Ok(())
}

fn checkpoint(
    file: &File,
    dest: &Path,
    progress_path: &Path,
    target: &TargetRef,
    done: u64,
) -> Result<(), UpdateError> {
    file.sync_data().map_err(io("syncing", dest))?;
    let p = Progress {
        sha256: target.sha256.clone(),
        length: target.length,
        done,
    };
    let bytes = serde_json::to_vec(&p).map_err(|e| UpdateError::Setup(e.to_string()))?;
    super::write_atomic(progress_path, &bytes).map_err(io("writing", progress_path))
}

fn hash_range(file: &File, path: &Path, len: u64, hasher: &mut Sha256) -> Result<(), UpdateError> {
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < len {
        let want = ((len - at) as usize).min(buf.len());
        let n = file
            .read_at(&mut buf[..want], at)
            .map_err(io("reading", path))?;
        if n == 0 {
            return Err(UpdateError::Setup(format!(
                "{} ends at {at} bytes, {len} expected",
                path.display()
            )));
        }
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    Ok(())
}

/// The size of a block device (`None` for a regular file: it grows).
pub(crate) fn capacity(file: &File, path: &Path) -> Result<Option<u64>, UpdateError> {
    use std::os::unix::fs::FileTypeExt;
    let meta = file.metadata().map_err(io("inspecting", path))?;
    if !meta.file_type().is_block_device() {
        return Ok(None);
    }
    let mut f = file;
    let end = std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0)).map_err(io("sizing", path))?;
    Ok(Some(end))
}

pub(crate) fn drop_cache(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: advisory call on a descriptor we own.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
}

pub(crate) fn unreachable(url: &str, e: impl std::fmt::Display) -> UpdateError {
    UpdateError::refused(Refusal::Unreachable, format!("{url}: {e}"))
}

pub(crate) fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Writes `bytes` to `path` for tests and small files: temp, sync, rename.
pub(crate) fn replace_file(path: &Path, from: &Path) -> Result<(), UpdateError> {
    std::fs::rename(from, path).map_err(io("renaming into", path))?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// The `.part` file beside `path` a download goes to before its rename.
pub(crate) fn part_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".part");
    PathBuf::from(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A tiny HTTP/1.1 server for `body` honouring `Range: bytes=N-`; the
    /// first `cut_after` requests are cut after `cut_at` bytes.
    fn serve(body: Vec<u8>, cut_first: usize, cut_at: usize) -> (String, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/t", l.local_addr().unwrap());
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                let n = h.fetch_add(1, Ordering::SeqCst);
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut from = 0usize;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                        from = v.trim().trim_end_matches('-').parse().unwrap();
                    }
                }
                let part = &body[from..];
                let status = if from > 0 {
                    "206 Partial Content"
                } else {
                    "200 OK"
                };
                let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    part.len()
                );
                let send = if n < cut_first {
                    &part[..cut_at.min(part.len())]
                } else {
                    part
                };
                let _ = s.write_all(send);
            }
        });
        (url, hits)
    }

    fn target(url: &str, body: &[u8]) -> TargetRef {
        TargetRef {
            name: "v2.rootfs.squashfs".into(),
            url: url.into(),
            length: body.len() as u64,
            sha256: hex::encode(Sha256::digest(body)),
        }
    }

    fn opts<'a>(dir: &'a Path, cb: &'a mut dyn FnMut(u64, u64)) -> FetchOptions<'a> {
        FetchOptions {
            progress_dir: dir,
            throttle: None,
            timeout: Duration::from_secs(10),
            progress: cb,
        }
    }

    #[test]
    fn a_cut_download_resumes_where_the_disk_says() {
        let body: Vec<u8> = (0..(CHECKPOINT as usize * 2 + 12_345))
            .map(|i| (i * 7) as u8)
            .collect();
        // The first answer is cut after a checkpoint's worth and a bit.
        let (url, hits) = serve(body.clone(), 1, CHECKPOINT as usize + 5000);
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("slot");
        let t = target(&url, &body);
        let mut cb = |_, _| {};
        let e = fetch_into(&t, &dest, opts(dir.path(), &mut cb)).unwrap_err();
        assert!(e.to_string().contains("resumed next time"), "{e}");
        let f = fetch_into(&t, &dest, opts(dir.path(), &mut cb)).unwrap();
        // Resumed from the last synced checkpoint or later, not from zero.
        assert!(f.resumed_at >= CHECKPOINT, "{f:?}");
        assert_eq!(f.downloaded, body.len() as u64 - f.resumed_at);
        assert_eq!(hits.load(Ordering::SeqCst), 2);
        assert_eq!(std::fs::read(&dest).unwrap(), body);
        verify_on_disk(&t, &dest).unwrap();
        assert!(!dir.path().join("v2.rootfs.squashfs.progress").exists());
    }

    #[test]
    fn wrong_bytes_and_too_many_bytes_are_refused() {
        let body = vec![7u8; 10_000];
        let (url, _) = serve(body.clone(), 0, 0);
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("slot");
        let mut cb = |_, _| {};
        let mut t = target(&url, &body);
        t.sha256 = hex::encode(Sha256::digest(b"other"));
        let e = fetch_into(&t, &dest, opts(dir.path(), &mut cb)).unwrap_err();
        assert_eq!(e.refusal(), Some(Refusal::ArbitraryPackage), "{e}");
        let mut t = target(&url, &body);
        t.length = 5000;
        let e = fetch_into(&t, &dest, opts(dir.path(), &mut cb)).unwrap_err();
        assert_eq!(e.refusal(), Some(Refusal::EndlessData), "{e}");
        // A disk that changed after the write is caught on read-back.
        let t = target(&url, &body);
        fetch_into(&t, &dest, opts(dir.path(), &mut cb)).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&dest)
            .unwrap()
            .write_all_at(b"x", 100)
            .unwrap();
        let e = verify_on_disk(&t, &dest).unwrap_err();
        assert_eq!(e.refusal(), Some(Refusal::ArbitraryPackage));
    }

    #[test]
    fn the_throttle_holds_the_rate() {
        let mut t = Throttle::new(Some(1000)).unwrap();
        let start = Instant::now();
        // One second's burst passes at once, the next 500 bytes wait 0.5 s.
        assert_eq!(t.take(1000, start), Duration::ZERO);
        let w = t.take(500, start);
        assert!((w.as_secs_f64() - 0.5).abs() < 0.01, "{w:?}");
        assert!(Throttle::new(None).is_none());
        assert!(Throttle::new(Some(0)).is_none());
    }
}
