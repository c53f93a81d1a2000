//! One Levee offsite store target: its endpoints (nodes of one store) over
//! mutual TLS with the appliance's certificate, which of them are healthy,
//! and the protocol's requests (`levee_proto::offsite`). Files are spread
//! over the healthy endpoints; an endpoint that fails a request rests for
//! [`REST`] while the others carry on, and the file it was sending resumes
//! on the next one from what the store holds (the nodes share the files).

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use levee_proto::offsite::{
    DeletionRequest, FileKind, FileRef, Listed, Namespace, PREFIX, UPLOAD_LENGTH, UPLOAD_OFFSET,
};

use super::throttle::{self, Bucket};
use crate::enroll::Credential;

/// How long an endpoint that failed is left alone.
pub const REST: Duration = Duration::from_secs(30);

/// The slowest uplink a part's time limit allows for (below it, a part
/// times out and resumes on the next try from what the store holds).
const SLOWEST: u64 = 256 * 1024;

/// How long one part may take: a node that stops answering mid-part (a
/// cut link sends no reset) is given up on after this, not after the
/// client's whole-request limit.
pub(super) fn part_timeout(len: u64, rate: Option<u64>) -> Duration {
    let pace = rate.map_or(SLOWEST, |r| r.min(SLOWEST)).max(1);
    Duration::from_secs(30 + len / pace)
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No endpoint answered (the target is down or unreachable).
    #[error("{url}: {reason}")]
    Transport { url: String, reason: String },
    /// The store answered no.
    #[error("{url}: the store answered {status}: {message}")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    /// Another upload of the file holds it (a cut connection the store has
    /// not noticed yet): try the file later.
    #[error("{0}: another upload of this file is under way")]
    Busy(String),
    #[error("the store's answer is malformed: {0}")]
    Malformed(String),
    #[error("local file: {0}")]
    Local(String),
}

impl StoreError {
    pub fn is_transport(&self) -> bool {
        matches!(self, StoreError::Transport { .. })
    }
}

struct Endpoint {
    base: String,
    down_until: Option<Instant>,
}

/// A target's endpoints and their clients.
pub struct StoreClient {
    client: reqwest::blocking::Client,
    endpoints: Mutex<Vec<Endpoint>>,
    next: Mutex<usize>,
    ns: Namespace,
    bucket: Arc<Bucket>,
    /// Request-body bytes handed over, failed requests included.
    total_sent: std::sync::atomic::AtomicU64,
}

/// What the store holds of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remote {
    Complete(u64),
    Partial(u64),
    Absent,
}

impl StoreClient {
    /// A client for `urls` (`https://host:port`, the store's nodes) using
    /// `cred`'s certificate and trusting only the Levee CA.
    pub fn new(
        urls: &[&str],
        cred: &Credential,
        ns: Namespace,
        bucket: Arc<Bucket>,
        timeout: Duration,
    ) -> Result<StoreClient, StoreError> {
        let bad = |e: &dyn std::fmt::Display| StoreError::Local(format!("credential: {e}"));
        let ca_der = crate::enroll::single_certificate(&cred.ca_pem).map_err(|e| bad(&e))?;
        let ca = reqwest::Certificate::from_der(&ca_der).map_err(|e| bad(&e))?;
        let pem = format!("{}\n{}", cred.cert_pem.trim_end(), cred.key_pem);
        let identity = reqwest::Identity::from_pem(pem.as_bytes()).map_err(|e| bad(&e))?;
        let client = crate::http_client::blocking(timeout)
            .use_rustls_tls()
            .https_only(true)
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .identity(identity)
            .build()
            .map_err(|e| bad(&e))?;
        Ok(StoreClient {
            client,
            endpoints: Mutex::new(
                urls.iter()
                    .map(|u| Endpoint {
                        base: u.trim_end_matches('/').to_string(),
                        down_until: None,
                    })
                    .collect(),
            ),
            next: Mutex::new(0),
            ns,
            bucket,
            total_sent: Default::default(),
        })
    }

    /// The next healthy endpoint, round-robin; if all rest, the one whose
    /// rest ends first (a target that is down is still tried).
    fn pick(&self) -> (usize, String) {
        let eps = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let n = eps.len().max(1);
        for i in 0..n {
            let idx = (*next + i) % n;
            if eps
                .get(idx)
                .is_some_and(|e| e.down_until.is_none_or(|t| t <= now))
            {
                *next = idx + 1;
                return (idx, eps[idx].base.clone());
            }
        }
        let idx = (0..eps.len())
            .min_by_key(|i| eps[*i].down_until)
            .unwrap_or(0);
        (
            idx,
            eps.get(idx).map(|e| e.base.clone()).unwrap_or_default(),
        )
    }

    fn rest(&self, idx: usize, why: &str) {
        let mut eps = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = eps.get_mut(idx) {
            tracing::warn!(endpoint = %e.base, reason = %why, "offsite endpoint failed; using the others for {} s", REST.as_secs());
            e.down_until = Some(Instant::now() + REST);
        }
    }

    /// Request-body bytes sent so far, parts lost to a cut included.
    pub fn total_sent(&self) -> u64 {
        self.total_sent.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn endpoint_count(&self) -> usize {
        self.endpoints.lock().map(|e| e.len()).unwrap_or(1)
    }

    /// Runs `req` on endpoints in turn until one answers (at most one try
    /// per endpoint, and at least two tries).
    fn on_some_endpoint<T>(
        &self,
        mut req: impl FnMut(&str) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let tries = self.endpoint_count().max(2);
        let mut last = None;
        for _ in 0..tries {
            let (idx, base) = self.pick();
            match req(&base) {
                Err(e) if e.is_transport() => {
                    self.rest(idx, &e.to_string());
                    last = Some(e);
                }
                other => return other,
            }
        }
        Err(last.unwrap_or(StoreError::Malformed("no endpoints".into())))
    }

    fn url(&self, base: &str, tail: &str) -> String {
        format!("{base}{PREFIX}{}/{tail}", self.ns.path())
    }

    fn file(&self, kind: FileKind, name: &str) -> FileRef {
        FileRef {
            ns: self.ns.clone(),
            kind,
            name: name.into(),
        }
    }

    /// Everything the target holds, by kind.
    pub fn list_all(&self) -> Result<BTreeMap<FileKind, BTreeMap<String, u64>>, StoreError> {
        let mut out = BTreeMap::new();
        for kind in FileKind::ALL {
            let listed: Vec<Listed> = self.on_some_endpoint(|base| {
                let url = self.url(base, &format!("{}/", kind.as_str()));
                let resp = self
                    .client
                    .get(&url)
                    .send()
                    .map_err(|e| transport(&url, e))?;
                match resp.status().as_u16() {
                    // A namespace nobody wrote yet.
                    404 => Ok(Vec::new()),
                    s if (200..300).contains(&s) => resp
                        .json()
                        .map_err(|e| StoreError::Malformed(format!("{url}: {e}"))),
                    _ => Err(refused(&url, resp)),
                }
            })?;
            out.insert(kind, listed.into_iter().map(|l| (l.name, l.size)).collect());
        }
        Ok(out)
    }

    fn head(&self, base: &str, kind: FileKind, name: &str) -> Result<Remote, StoreError> {
        let url = format!("{base}{}", self.file(kind, name).path());
        let resp = self
            .client
            .head(&url)
            .send()
            .map_err(|e| transport(&url, e))?;
        let num = |h: &str| {
            resp.headers()
                .get(h)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
        };
        match resp.status().as_u16() {
            200 => Ok(Remote::Complete(num("levee-size").unwrap_or(0))),
            404 => Ok(num(UPLOAD_OFFSET).map_or(Remote::Absent, Remote::Partial)),
            _ => Err(refused(&url, resp)),
        }
    }

    /// Uploads one file of `size` bytes in parts of `part` bytes, resuming
    /// after what the store holds; `read(offset, len)` gives local bytes.
    /// Returns the request-body bytes sent. An endpoint that fails is
    /// rested and the file carries on from the next one.
    pub fn upload(
        &self,
        kind: FileKind,
        name: &str,
        size: u64,
        part: u64,
        read: &dyn Fn(u64, usize) -> Result<Vec<u8>, String>,
    ) -> Result<u64, StoreError> {
        let mut sent = 0u64;
        let tries = self.endpoint_count().max(2) * 2;
        let mut last = None;
        for _ in 0..tries {
            let (idx, base) = self.pick();
            match self.upload_on(&base, kind, name, size, part, read, &mut sent) {
                Ok(()) => return Ok(sent),
                Err(e) if e.is_transport() => {
                    self.rest(idx, &e.to_string());
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(StoreError::Malformed("no endpoints".into())))
    }

    #[allow(clippy::too_many_arguments)]
    fn upload_on(
        &self,
        base: &str,
        kind: FileKind,
        name: &str,
        size: u64,
        part: u64,
        read: &dyn Fn(u64, usize) -> Result<Vec<u8>, String>,
        sent: &mut u64,
    ) -> Result<(), StoreError> {
        let mut offset = match self.head(base, kind, name)? {
            Remote::Complete(_) => return Ok(()),
            Remote::Partial(n) if n <= size => n,
            _ => 0,
        };
        let url = format!("{base}{}", self.file(kind, name).path());
        loop {
            let len = part.max(1).min(size - offset);
            let data = read(offset, len as usize).map_err(StoreError::Local)?;
            let counted = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let body = throttle::body(data, &self.bucket, counted.clone());
            let result = self
                .client
                .put(&url)
                .timeout(part_timeout(len, self.bucket.rate()))
                .header(UPLOAD_OFFSET, offset.to_string())
                .header(UPLOAD_LENGTH, size.to_string())
                .body(body)
                .send();
            let n = counted.load(std::sync::atomic::Ordering::Relaxed);
            *sent += n;
            self.total_sent
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            let resp = result.map_err(|e| transport(&url, e))?;
            let status = resp.status().as_u16();
            let at = resp
                .headers()
                .get(UPLOAD_OFFSET)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            match (status, at) {
                (200 | 201, _) => return Ok(()),
                (202, Some(n)) if n > offset && n < size => offset = n,
                // The store holds a different amount (a part cut earlier,
                // or sent through another node): go on from there.
                (409, Some(n)) if n <= size => offset = n,
                (409, None) if resp.headers().contains_key("levee-size") => return Ok(()),
                (409, None) if resp.headers().contains_key(reqwest::header::RETRY_AFTER) => {
                    return Err(StoreError::Busy(url))
                }
                _ => return Err(refused(&url, resp)),
            }
            if offset >= size {
                return Ok(());
            }
        }
    }

    /// Asks the store to delete files after its grace period.
    pub fn request_deletion(&self, req: &DeletionRequest) -> Result<(), StoreError> {
        let body = req.to_bytes();
        self.on_some_endpoint(|base| {
            let url = self.url(base, "deletions");
            let resp = self
                .client
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
                .send()
                .map_err(|e| transport(&url, e))?;
            if resp.status().is_success() {
                Ok(())
            } else {
                Err(refused(&url, resp))
            }
        })
    }

    /// Has the store re-read `name` and check it against the name; a file
    /// that fails is quarantined by the store (and so missing: upload it
    /// again). `Ok(false)`: it was corrupt.
    pub fn verify(&self, kind: FileKind, name: &str) -> Result<bool, StoreError> {
        self.on_some_endpoint(|base| {
            let url = format!("{base}{}", self.file(kind, name).path());
            let resp = self
                .client
                .post(&url)
                .send()
                .map_err(|e| transport(&url, e))?;
            if !resp.status().is_success() {
                return Err(refused(&url, resp));
            }
            resp.json::<levee_proto::offsite::Verified>()
                .map(|v| v.ok)
                .map_err(|e| StoreError::Malformed(format!("{url}: {e}")))
        })
    }

    /// Reads a whole file back (restores from offsite).
    pub fn download(&self, kind: FileKind, name: &str) -> Result<Vec<u8>, StoreError> {
        self.download_with(kind, name, None)
    }

    /// [`download`](Self::download), the body read at `pace` (when given):
    /// the back-fill's share of `bandwidth_limit`, taken as the bytes
    /// arrive, so the link is never filled by a whole pack at once.
    pub fn download_with(
        &self,
        kind: FileKind,
        name: &str,
        pace: Option<&Bucket>,
    ) -> Result<Vec<u8>, StoreError> {
        self.on_some_endpoint(|base| {
            let url = format!("{base}{}", self.file(kind, name).path());
            let mut resp = self
                .client
                .get(&url)
                .send()
                .map_err(|e| transport(&url, e))?;
            if !resp.status().is_success() {
                return Err(refused(&url, resp));
            }
            let mut out = Vec::new();
            match pace {
                Some(b) => super::throttle::read_paced(&mut resp, b, &mut out),
                None => resp.read_to_end(&mut out).map(drop),
            }
            .map_err(|e| transport(&url, e))?;
            Ok(out)
        })
    }

    /// A raw request to the first endpoint (tests of what the store refuses).
    pub fn raw(&self, method: reqwest::Method, tail: &str) -> Result<(u16, String), StoreError> {
        let (_, base) = self.pick();
        let url = self.url(&base, tail);
        let resp = self
            .client
            .request(method, &url)
            .header(UPLOAD_OFFSET, "0")
            .header(UPLOAD_LENGTH, "1")
            .body("x")
            .send()
            .map_err(|e| transport(&url, e))?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().unwrap_or_default()))
    }
}

pub(super) fn transport(url: &str, e: impl std::error::Error) -> StoreError {
    StoreError::Transport {
        url: url.to_string(),
        reason: levee_proto::error_chain(&e),
    }
}

fn refused(url: &str, resp: reqwest::blocking::Response) -> StoreError {
    let status = resp.status().as_u16();
    let body = resp.text().unwrap_or_default();
    let message = serde_json::from_str::<levee_proto::enroll::ApiError>(&body)
        .map(|e| e.error)
        .unwrap_or_else(|_| body.chars().take(200).collect());
    // 5xx: the node is in trouble; another may do better.
    if status >= 500 {
        return StoreError::Transport {
            url: url.to_string(),
            reason: format!("{status}: {message}"),
        };
    }
    StoreError::Refused {
        url: url.to_string(),
        status,
        message,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_part_may_take_as_long_as_the_cap_or_a_slow_uplink_needs() {
        use super::*;
        assert_eq!(part_timeout(8 << 20, None), Duration::from_secs(30 + 32));
        assert_eq!(
            part_timeout(8 << 20, Some(64 * 1024)),
            Duration::from_secs(30 + 128)
        );
        assert_eq!(
            part_timeout(8 << 20, Some(100 << 20)),
            Duration::from_secs(30 + 32)
        );
    }
}
