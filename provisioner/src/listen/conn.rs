//! One connection's life under the timeouts, for both listeners.
//!
//! hyper's own `header_read_timeout` runs from the moment a connection
//! waits for a request head, idle keep-alive time included, so it cannot
//! tell a slow header from an idle connection. Here the bytes moved
//! ([`Watched`]) and the requests in flight ([`Tracked`]) drive one
//! [`Activity`] per connection, and a watchdog closes the connection when
//! [`Activity::deadline`] passes:
//!
//! - idle (nothing in flight, no request begun): `idle_timeout` after the
//!   last byte moved;
//! - a request head begun (a byte arrived while idle) but not complete:
//!   `header_timeout` after its first byte, however slowly it trickles;
//! - a request in flight: `idle_timeout` without a byte moved either way
//!   (a stalled body or a client that stopped reading the answer).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response};
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::Limits;

/// Why the watchdog closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Kept alive with nothing to do for `idle_timeout`.
    Idle,
    /// A request head not complete within `header_timeout`.
    Header,
    /// A request in flight, and no byte moved for `idle_timeout`.
    Stalled,
}

impl std::fmt::Display for Expiry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Expiry::Idle => "idle timeout",
            Expiry::Header => "request head not complete within the header timeout",
            Expiry::Stalled => "no byte moved for the idle timeout during a request",
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct State {
    in_flight: usize,
    last_io: Instant,
    /// When the first byte of a request head arrived, until it is served.
    head_since: Option<Instant>,
}

/// What one connection is doing, as far as the timeouts care.
#[derive(Debug)]
pub struct Activity {
    state: Mutex<State>,
    limits: Limits,
    /// Wakes the watchdog when a request head begins: its deadline
    /// (`header_timeout`) may come before the idle one it sleeps towards.
    head_began: tokio::sync::Notify,
}

impl Activity {
    pub fn new(limits: Limits) -> Arc<Activity> {
        Arc::new(Activity {
            state: Mutex::new(State {
                in_flight: 0,
                last_io: Instant::now(),
                head_since: None,
            }),
            limits,
            head_began: tokio::sync::Notify::new(),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn read(&self) {
        let now = Instant::now();
        let began = self.with(|s| {
            s.last_io = now;
            let began = s.in_flight == 0 && s.head_since.is_none();
            if began {
                s.head_since = Some(now);
            }
            began
        });
        if began {
            self.head_began.notify_one();
        }
    }

    fn wrote(&self) {
        let now = Instant::now();
        self.with(|s| s.last_io = now);
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.with(|s| {
            s.in_flight += 1;
            s.head_since = None;
        });
        InFlight(self.clone())
    }

    /// When the connection expires if nothing happens before, and why.
    pub fn deadline(&self) -> (Instant, Expiry) {
        let s = self.with(|s| *s);
        deadline(&s, &self.limits)
    }
}

/// The pure rule (see the module doc).
fn deadline(s: &State, limits: &Limits) -> (Instant, Expiry) {
    if s.in_flight > 0 {
        (s.last_io + limits.idle_timeout, Expiry::Stalled)
    } else if let Some(since) = s.head_since {
        (since + limits.header_timeout, Expiry::Header)
    } else {
        (s.last_io + limits.idle_timeout, Expiry::Idle)
    }
}

/// A request in flight, until its answer's body is dropped (sent or
/// abandoned).
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = Instant::now();
        self.0.with(|s| {
            s.in_flight = s.in_flight.saturating_sub(1);
            s.last_io = now;
        });
    }
}

/// Resolves when `activity`'s deadline has passed. Deadlines only move
/// later, except when a head begins (see [`Activity::head_began`]).
pub async fn watchdog(activity: &Activity) -> Expiry {
    loop {
        let (at, why) = activity.deadline();
        if at <= Instant::now() {
            return why;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(at) => {}
            _ = activity.head_began.notified() => {}
        }
    }
}

/// An I/O stream that reports the bytes it moves to an [`Activity`].
pub struct Watched<I> {
    io: I,
    activity: Arc<Activity>,
}

impl<I> Watched<I> {
    pub fn new(io: I, activity: Arc<Activity>) -> Watched<I> {
        Watched { io, activity }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The router as a hyper service that counts its requests in flight.
#[derive(Clone)]
struct Tracked {
    inner: hyper_util::service::TowerToHyperService<axum::Router>,
    activity: Arc<Activity>,
}

type Served = Result<Response<TrackedBody>, std::convert::Infallible>;

impl hyper::service::Service<Request<Incoming>> for Tracked {
    type Response = Response<TrackedBody>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Served> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let guard = self.activity.begin();
        let answer = self.inner.call(req);
        Box::pin(async move {
            let resp = answer.await?;
            Ok(resp.map(|body| TrackedBody {
                body,
                _guard: guard,
            }))
        })
    }
}

/// A response body that holds its request's [`InFlight`].
pub struct TrackedBody {
    body: Body,
    _guard: InFlight,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Serves HTTP/1.1 (or h2) on `io` with `app` under the timeouts of
/// `limits`, until the client closes, a timeout passes, or `stop`; after
/// `stop`, the connection is drained for [`crate::drain::DRAIN`] (`app`
/// carries [`crate::drain::close_when_stopping`], see [`stopping_app`]),
/// then what is still open (idle) is closed gracefully.
pub async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    app: axum::Router,
    limits: Limits,
    stop: CancellationToken,
    listener: &'static str,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::new(limits);
    let svc = Tracked {
        inner: hyper_util::service::TowerToHyperService::new(app),
        activity: activity.clone(),
    };
    let builder = auto::Builder::new(TokioExecutor::new());
    let io = TokioIo::new(Watched::new(io, activity.clone()));
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    let watch = watchdog(&activity);
    tokio::pin!(watch);
    let ended = tokio::select! {
        r = conn.as_mut() => r,
        why = &mut watch => {
            debug!(listener, %peer, reason = %why, "connection closed");
            return;
        }
        _ = stop.cancelled() => {
            // See crate::drain: answers now close their connection; what
            // is still open after the drain is idle.
            tokio::select! {
                r = tokio::time::timeout(crate::drain::DRAIN, conn.as_mut()) => match r {
                    Ok(r) => r,
                    Err(_) => {
                        conn.as_mut().graceful_shutdown();
                        tokio::select! {
                            r = conn.as_mut() => r,
                            _ = &mut watch => return,
                        }
                    }
                },
                _ = &mut watch => return,
            }
        }
    };
    if let Err(e) = ended {
        debug!(listener, %peer, error = %e, "connection ended");
    }
}

/// `app` with answers asking to close once `stop` is cancelled (the drain).
pub fn stopping_app(app: axum::Router, stop: &CancellationToken) -> axum::Router {
    app.layer(axum::middleware::from_fn_with_state(
        stop.clone(),
        crate::drain::close_when_stopping,
    ))
}

/// Runs a TLS handshake (or any set-up) within `timeout`.
pub async fn within<T, E: std::fmt::Display>(
    timeout: Duration,
    handshake: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "not complete within {} ms (--tls-timeout)",
            timeout.as_millis()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            ..Limits::default()
        }
    }

    #[test]
    fn idle_header_and_stall_deadlines() {
        let t0 = Instant::now();
        let mut s = State {
            in_flight: 0,
            last_io: t0,
            head_since: None,
        };
        let l = limits();
        assert_eq!(
            deadline(&s, &l),
            (t0 + Duration::from_secs(30), Expiry::Idle)
        );
        // A trickled head: its bytes do not push the deadline on.
        s.head_since = Some(t0);
        s.last_io = t0 + Duration::from_secs(9);
        assert_eq!(
            deadline(&s, &l),
            (t0 + Duration::from_secs(10), Expiry::Header)
        );
        // Served: only silence counts now.
        s.head_since = None;
        s.in_flight = 1;
        assert_eq!(
            deadline(&s, &l),
            (t0 + Duration::from_secs(39), Expiry::Stalled)
        );
    }

    #[tokio::test]
    async fn a_head_begun_while_idle_is_cut_at_the_header_timeout_not_the_idle_one() {
        let a = Activity::new(Limits {
            header_timeout: Duration::from_millis(100),
            idle_timeout: Duration::from_secs(30),
            ..Limits::default()
        });
        let started = Instant::now();
        let (woke, ()) = tokio::join!(watchdog(&a), async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            a.read();
        });
        assert_eq!(woke, Expiry::Header);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(150) && took < Duration::from_secs(2),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn a_request_ends_the_head_phase_and_its_answer_restarts_idle() {
        let a = Activity::new(Limits {
            header_timeout: Duration::from_millis(100),
            idle_timeout: Duration::from_millis(300),
            ..Limits::default()
        });
        a.read();
        assert_eq!(a.deadline().1, Expiry::Header);
        let guard = a.begin();
        assert_eq!(a.deadline().1, Expiry::Stalled);
        // Bytes of the body read while in flight do not open a new head.
        a.read();
        assert_eq!(a.deadline().1, Expiry::Stalled);
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(guard);
        let (at, why) = a.deadline();
        assert_eq!(why, Expiry::Idle);
        assert!(at >= Instant::now() + Duration::from_millis(250));
        // The watchdog fires at the deadline, not before.
        let woke = watchdog(&a).await;
        assert_eq!(woke, Expiry::Idle);
        assert!(Instant::now() >= at);
    }
}
