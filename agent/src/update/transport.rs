//! `tough::Transport` over the workspace's reqwest (not tough's own `http`
//! feature, which brings a second reqwest and a second TLS stack).
//!
//! Defences that belong to the transport rather than to TUF's checks:
//! - endless data: every response is cut at `max_bytes` (tough also limits
//!   each metadata file; targets are limited by their signed length), and a
//!   `Content-Length` above it is refused before a byte is read;
//! - slow retrieval: a connect timeout, a read timeout between chunks, a
//!   deadline for the whole file, and a minimum average rate once a grace
//!   period has passed, so a server trickling bytes cannot hold the agent.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tough::{Transport, TransportError, TransportErrorKind};

/// What `Transport::fetch` returns (tough does not re-export its alias).
type TransportStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<Bytes, TransportError>> + Send>>;
use url::Url;

/// Limits of one transport.
#[derive(Debug, Clone, Copy)]
pub struct TransportOptions {
    pub connect_timeout: Duration,
    /// Longest silence between two chunks.
    pub read_timeout: Duration,
    /// Longest time for one whole file.
    pub deadline: Duration,
    /// Largest file accepted.
    pub max_bytes: u64,
    /// After `grace`, the average rate must stay above this (bytes/s).
    pub min_rate: u64,
    pub grace: Duration,
}

impl TransportOptions {
    /// For metadata: small files, quickly.
    pub const METADATA: TransportOptions = TransportOptions {
        connect_timeout: Duration::from_secs(10),
        read_timeout: Duration::from_secs(20),
        deadline: Duration::from_secs(60),
        max_bytes: 16 << 20,
        min_rate: 1024,
        grace: Duration::from_secs(10),
    };
}

/// The transport: one reqwest client, HTTP(S) only.
#[derive(Debug, Clone)]
pub struct HttpTransport {
    client: reqwest::Client,
    opts: TransportOptions,
}

impl HttpTransport {
    pub fn new(opts: TransportOptions) -> Result<HttpTransport, String> {
        let client = crate::http_client::asynchronous()
            .connect_timeout(opts.connect_timeout)
            .read_timeout(opts.read_timeout)
            .timeout(opts.deadline)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(HttpTransport { client, opts })
    }
}

/// Why the transport gave up on a file; tough wraps it, the agent's report
/// names it.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("endless data: {url} is larger than {max} bytes")]
    TooLarge { url: String, max: u64 },
    #[error("slow retrieval: {url} sent {bytes} bytes in {secs:.0} s, under {min_rate} bytes/s")]
    TooSlow {
        url: String,
        bytes: u64,
        secs: f64,
        min_rate: u64,
    },
    #[error("slow retrieval: {url} took longer than {secs} s")]
    Deadline { url: String, secs: u64 },
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: {reason}")]
    Http { url: String, reason: String },
}

fn terr(kind: TransportErrorKind, url: &Url, e: FetchError) -> TransportError {
    TransportError::new_with_cause(kind, url.as_str(), e)
}

/// Reads the response chunk by chunk, enforcing size, rate and deadline.
struct Body {
    resp: reqwest::Response,
    url: Url,
    opts: TransportOptions,
    started: Instant,
    read: u64,
}

impl Body {
    async fn next(&mut self) -> Option<Result<Bytes, TransportError>> {
        let url = self.url.clone();
        let left = self
            .opts
            .deadline
            .checked_sub(self.started.elapsed())
            .unwrap_or_default();
        let chunk = match tokio::time::timeout(left, self.resp.chunk()).await {
            Err(_) => {
                let e = FetchError::Deadline {
                    url: url.to_string(),
                    secs: self.opts.deadline.as_secs(),
                };
                return Some(Err(terr(TransportErrorKind::Other, &url, e)));
            }
            Ok(Err(e)) => {
                let e = if e.is_timeout() {
                    FetchError::Deadline {
                        url: url.to_string(),
                        secs: self.opts.read_timeout.as_secs(),
                    }
                } else {
                    FetchError::Http {
                        url: url.to_string(),
                        reason: e.to_string(),
                    }
                };
                return Some(Err(terr(TransportErrorKind::Other, &url, e)));
            }
            Ok(Ok(None)) => return None,
            Ok(Ok(Some(c))) => c,
        };
        self.read += chunk.len() as u64;
        if self.read > self.opts.max_bytes {
            let e = FetchError::TooLarge {
                url: url.to_string(),
                max: self.opts.max_bytes,
            };
            return Some(Err(terr(TransportErrorKind::Other, &url, e)));
        }
        let secs = self.started.elapsed().as_secs_f64();
        if self.started.elapsed() > self.opts.grace
            && (self.read as f64) < secs * self.opts.min_rate as f64
        {
            let e = FetchError::TooSlow {
                url: url.to_string(),
                bytes: self.read,
                secs,
                min_rate: self.opts.min_rate,
            };
            return Some(Err(terr(TransportErrorKind::Other, &url, e)));
        }
        Some(Ok(chunk))
    }
}

#[async_trait::async_trait]
impl Transport for HttpTransport {
    async fn fetch(&self, url: Url) -> Result<TransportStream, TransportError> {
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(TransportError::new(
                TransportErrorKind::UnsupportedUrlScheme,
                url,
            ));
        }
        let started = Instant::now();
        let resp = self.client.get(url.clone()).send().await.map_err(|e| {
            let kind = if e.is_timeout() {
                FetchError::Deadline {
                    url: url.to_string(),
                    secs: self.opts.deadline.as_secs(),
                }
            } else {
                FetchError::Http {
                    url: url.to_string(),
                    reason: e.to_string(),
                }
            };
            terr(TransportErrorKind::Other, &url, kind)
        })?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::FORBIDDEN {
            // TUF 5.3.2: a missing next root version ends the chain walk.
            let e = FetchError::Status {
                url: url.to_string(),
                status: status.as_u16(),
            };
            return Err(terr(TransportErrorKind::FileNotFound, &url, e));
        }
        if !status.is_success() {
            let e = FetchError::Status {
                url: url.to_string(),
                status: status.as_u16(),
            };
            return Err(terr(TransportErrorKind::Other, &url, e));
        }
        if let Some(len) = resp.content_length().filter(|l| *l > self.opts.max_bytes) {
            let _ = len;
            let e = FetchError::TooLarge {
                url: url.to_string(),
                max: self.opts.max_bytes,
            };
            return Err(terr(TransportErrorKind::Other, &url, e));
        }
        let body = Body {
            resp,
            url,
            opts: self.opts,
            started,
            read: 0,
        };
        let stream =
            futures::stream::unfold(
                body,
                |mut b| async move { b.next().await.map(|item| (item, b)) },
            );
        Ok(Box::pin(stream))
    }
}
