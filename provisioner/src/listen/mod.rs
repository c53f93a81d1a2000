//! What both TCP listeners of `levee serve` (plain HTTP and the mutual-TLS
//! API) do before and around a request: connection caps per listener and
//! per client ([`caps`]), timeouts on TLS handshakes, request heads and
//! idle keep-alive ([`conn`]), and an accept loop that backs off when
//! accepting fails (out of descriptors, say) instead of spinning a core.
//!
//! The handlers never see any of this; a listener hands each accepted
//! connection to [`serve_connection`] (after its TLS handshake, bounded by
//! [`within`]).

mod caps;
mod conn;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

pub use caps::{Caps, ClientKey, Permit, Refused};
pub use conn::{serve_connection, stopping_app, within, Expiry};

/// The limits of one listener (`levee serve --max-conns ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open connections per listener.
    pub max_conns: usize,
    /// Open connections per client address (IPv4, or IPv6 /64).
    pub max_conns_per_ip: usize,
    /// From a request head's first byte to its last.
    pub header_timeout: Duration,
    /// From accept to a finished TLS handshake.
    pub tls_timeout: Duration,
    /// A kept-alive connection with nothing to do; also the longest silence
    /// during a request.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    /// Generous for appliances and firmware on a LAN (a request head is one
    /// packet; the agent closes pooled connections after 20 s idle), tight
    /// enough that a slow client ties up little.
    fn default() -> Self {
        Limits {
            max_conns: 512,
            max_conns_per_ip: 16,
            header_timeout: Duration::from_secs(10),
            tls_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// A flag's duration: `500ms`, `10s`, `2m`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration: write e.g. 500ms, 10s or 2m"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (ms, s or m)")),
    };
    if d.is_zero() {
        return Err(format!("`{s}`: a timeout of zero would close everything"));
    }
    Ok(d)
}

/// What a refused plain-HTTP client reads before the connection closes.
pub const BUSY_HTTP: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

/// Accepts on `listener` until `stop`, holds each connection to the caps
/// of `limits` and runs `handle` for it on its own task. Connections over
/// a cap are closed at once (after `busy`, written without waiting, if
/// given). After `stop`, the socket closes at once, connections the kernel
/// had already completed are still taken in, and this returns when every
/// connection has ended: the caller bounds that wait.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    limits: Limits,
    name: &'static str,
    busy: Option<&'static [u8]>,
    stop: CancellationToken,
    handle: F,
) -> std::io::Result<()>
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let caps = Caps::new(limits.max_conns, limits.max_conns_per_ip);
    let connections = tokio_util::task::TaskTracker::new();
    let mut refusals = RefusalLog::default();
    let take = |tcp: TcpStream, addr: SocketAddr, refusals: &mut RefusalLog| match caps
        .acquire(addr.ip())
    {
        Ok(permit) => {
            let served = handle(tcp, addr);
            connections.spawn(async move {
                served.await;
                drop(permit);
            });
        }
        Err(why) => {
            if let Some(msg) = busy {
                let _ = tcp.try_write(msg);
            }
            refusals.note(name, addr, why, &limits);
        }
    };
    let mut backoff = Backoff::default();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, addr)) => {
                backoff.reset();
                take(tcp, addr, &mut refusals);
            }
            Err(e) if per_connection(&e) => {
                debug!(listener = name, error = %e, "accept: connection gone")
            }
            Err(e) => {
                let pause = backoff.next();
                if backoff.first() {
                    warn!(listener = name, error = %e, "cannot accept connections; retrying with growing pauses (up to 1 s) until it works");
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
    // Connections the kernel completed but we had not accepted yet would
    // be reset when the socket closes: take them in and answer them too.
    while let Some((tcp, addr)) = accept_now(&listener).await {
        take(tcp, addr, &mut refusals);
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Errors that concern one connection (the client gave up between SYN
/// and accept), not the listener: accept again at once.
fn per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    ) || e.raw_os_error() == Some(libc::EPROTO)
}

/// Pauses after failed accepts: 10 ms, doubling to 1 s; reset by success.
#[derive(Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let ms = 10u64 << (self.failures - 1).min(7);
        Duration::from_millis(ms.min(1000))
    }

    fn first(&self) -> bool {
        self.failures == 1
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Logs refused connections at warn at most every 10 s (an attacker must
/// not flood the journal), with the count since the last line.
#[derive(Default)]
struct RefusalLog {
    last: Option<tokio::time::Instant>,
    since: u64,
}

impl RefusalLog {
    fn note(&mut self, name: &str, addr: SocketAddr, why: Refused, limits: &Limits) {
        self.since += 1;
        let now = tokio::time::Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(10))
        {
            debug!(listener = name, peer = %addr, ?why, "connection refused");
            return;
        }
        let cap = match why {
            Refused::Listener => format!("--max-conns {}", limits.max_conns),
            Refused::Client => format!(
                "--max-conns-per-ip {} for {}",
                limits.max_conns_per_ip,
                ClientKey::of(addr.ip())
            ),
        };
        warn!(listener = name, peer = %addr, refused = self.since, "connections refused: {cap} reached");
        self.last = Some(now);
        self.since = 0;
    }
}

/// The plain-HTTP listener: `app` on every connection, each request
/// carrying `ConnectInfo<SocketAddr>` as axum's own server gives.
pub async fn serve_plain(
    listener: TcpListener,
    app: axum::Router,
    limits: Limits,
    stop: CancellationToken,
) -> std::io::Result<()> {
    use axum::extract::ConnectInfo;
    let app = stopping_app(app, &stop);
    let handle = |tcp: TcpStream, addr: SocketAddr| {
        let app = app.clone().layer(axum::Extension(ConnectInfo(addr)));
        serve_connection(tcp, addr, app, limits, stop.clone(), "http")
    };
    accept_loop(
        listener,
        limits,
        "http",
        Some(BUSY_HTTP),
        stop.clone(),
        handle,
    )
    .await
}

/// A connection already waiting in `listener`'s queue, without waiting.
pub async fn accept_now(listener: &TcpListener) -> Option<(TcpStream, SocketAddr)> {
    tokio::select! {
        biased;
        accepted = listener.accept() => accepted.ok(),
        () = std::future::ready(()) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_refuse_nonsense() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("0s").unwrap_err().contains("zero"));
        assert!(parse_duration("10h").unwrap_err().contains("unit"));
        assert!(parse_duration("soon").unwrap_err().contains("500ms"));
    }

    #[test]
    fn backoff_grows_to_a_second_and_resets() {
        let mut b = Backoff::default();
        let pauses: Vec<u64> = (0..10).map(|_| b.next().as_millis() as u64).collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        b.reset();
        assert_eq!(b.next(), Duration::from_millis(10));
        assert!(b.first());
    }

    #[test]
    fn only_per_connection_errors_skip_the_pause() {
        use std::io::{Error, ErrorKind};
        assert!(per_connection(&Error::from(ErrorKind::ConnectionAborted)));
        assert!(!per_connection(&Error::from_raw_os_error(libc::EMFILE)));
        assert!(!per_connection(&Error::from_raw_os_error(libc::ENFILE)));
        assert!(!per_connection(&Error::from_raw_os_error(libc::ENOBUFS)));
    }
}
