//! `bandwidth_limit` for replication: one token bucket for every upload of
//! every target (and one for the back-fill's downloads, [`read_paced`]) ([`crate::update::fetch::Throttle`], bursts of at most one
//! second), charged for request-body bytes as reqwest reads them.

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::update::fetch::Throttle;

/// Bytes handed over per read: small enough that the wait after each
/// stays short and the rate smooth.
const STEP: usize = 16 * 1024;

/// The shared bucket; `None` inside means unlimited.
#[derive(Debug)]
pub struct Bucket(Mutex<Option<Throttle>>, Option<u64>);

impl Bucket {
    /// `rate` bytes per second; `None`: unlimited.
    pub fn new(rate: Option<u64>) -> Bucket {
        Bucket(Mutex::new(Throttle::new(rate)), rate.filter(|r| *r > 0))
    }

    /// The rate, bytes per second; `None`: unlimited.
    pub fn rate(&self) -> Option<u64> {
        self.1
    }

    /// Takes `n` bytes' worth, sleeping as long as the rate asks.
    pub fn take(&self, n: usize) {
        let wait = match self.0.lock() {
            Ok(mut t) => t.as_mut().map(|t| t.take(n, Instant::now())),
            Err(_) => None,
        };
        if let Some(w) = wait.filter(|w| !w.is_zero()) {
            std::thread::sleep(w);
        }
    }
}

/// Reads `r` to its end into `out`, paying `bucket` for every byte as it
/// arrives (downloads under the cap: the back-fill).
pub fn read_paced(r: &mut impl Read, bucket: &Bucket, out: &mut Vec<u8>) -> std::io::Result<()> {
    let mut buf = vec![0u8; STEP];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        bucket.take(n);
        out.extend_from_slice(&buf[..n]);
    }
}

/// A request body that pays the bucket for every byte it hands over and
/// counts them.
pub struct ThrottledBody {
    data: Vec<u8>,
    pos: usize,
    bucket: Arc<Bucket>,
    counted: Arc<AtomicU64>,
}

impl ThrottledBody {
    pub fn new(data: Vec<u8>, bucket: Arc<Bucket>, counted: Arc<AtomicU64>) -> ThrottledBody {
        ThrottledBody {
            data,
            pos: 0,
            bucket,
            counted,
        }
    }
}

impl Read for ThrottledBody {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(STEP).min(self.data.len() - self.pos);
        if n == 0 {
            return Ok(0);
        }
        self.bucket.take(n);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        self.counted.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// A request body of `data` that pays `bucket` and counts into `counted`.
/// Without a cap the bytes go to the connection as they are, counted whole
/// when handed over: reqwest reads a `Read` body in 8 KiB pieces, each
/// handed from this thread to its connection thread, and `perf` put about
/// 40% of an uncapped replication's samples in those hand-overs (futex
/// waits and wake-ups; docs/BENCHMARKS.md). With a cap they are paced
/// through a [`ThrottledBody`], counted as reqwest reads them.
pub fn body(
    data: Vec<u8>,
    bucket: &Arc<Bucket>,
    counted: Arc<AtomicU64>,
) -> reqwest::blocking::Body {
    let len = data.len() as u64;
    if bucket.rate().is_none() {
        counted.fetch_add(len, Ordering::Relaxed);
        return reqwest::blocking::Body::from(data);
    }
    reqwest::blocking::Body::sized(ThrottledBody::new(data, bucket.clone(), counted), len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_paced_at_the_rate() {
        // 1 MiB at 512 KiB/s: the first second's burst, then ~1 s of waits.
        let bucket = Arc::new(Bucket::new(Some(512 * 1024)));
        let counted = Arc::new(AtomicU64::new(0));
        let mut body = ThrottledBody::new(vec![7; 1 << 20], bucket, counted.clone());
        let start = Instant::now();
        let mut out = Vec::new();
        body.read_to_end(&mut out).unwrap();
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(out.len(), 1 << 20);
        assert_eq!(counted.load(Ordering::Relaxed), 1 << 20);
        assert!((0.9..1.5).contains(&secs), "{secs} s");
    }
}
