//! A clean stop for HTTP/1.1 keep-alive clients.
//!
//! Closing an idle kept-alive connection races with a client that is just
//! sending its next request on it: that request is cut (hyper's
//! "connection closed before message completed"). So a stopping listener
//! closes its socket at once, and for [`DRAIN`] keeps serving the open
//! connections with `Connection: close` on every answer, so busy clients
//! get their answer and reconnect (to a closed port, a clean refusal);
//! only then are the remaining (idle) connections closed gracefully.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tokio_util::sync::CancellationToken;

/// How long open connections are drained before they are closed.
pub const DRAIN: Duration = Duration::from_secs(1);

/// Middleware (`from_fn_with_state(stop, close_when_stopping)`): once
/// `stop` is cancelled, every answer asks the client to close.
pub async fn close_when_stopping(
    State(stop): State<CancellationToken>,
    req: Request,
    next: Next,
) -> Response {
    let mut resp = next.run(req).await;
    if stop.is_cancelled() {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Serves plain HTTP on `listener` until `stop`, then closes the listener
/// at once (a client connecting now is refused cleanly, instead of sitting
/// in the accept queue to be reset when the socket closes), drains the
/// open connections (see the module doc) and waits for them; the caller
/// bounds that wait with its grace period. Each request carries
/// `ConnectInfo<SocketAddr>`, as axum's own server gives.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    stop: CancellationToken,
) -> std::io::Result<()> {
    use axum::extract::ConnectInfo;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;

    let app = app.layer(axum::middleware::from_fn_with_state(
        stop.clone(),
        close_when_stopping,
    ));
    let connections = tokio_util::task::TaskTracker::new();
    let serve = |tcp: tokio::net::TcpStream, addr: std::net::SocketAddr| {
        let app = app.clone().layer(axum::Extension(ConnectInfo(addr)));
        let stop = stop.clone();
        connections.spawn(async move {
            let svc = hyper_util::service::TowerToHyperService::new(app);
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(tcp), svc);
            tokio::pin!(conn);
            let ended = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.cancelled() => match tokio::time::timeout(DRAIN, conn.as_mut()).await {
                    Ok(r) => r,
                    Err(_) => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                },
            };
            if let Err(e) = ended {
                tracing::debug!(peer = %addr, error = %e, "http connection ended");
            }
        });
    };
    loop {
        let (tcp, addr) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(error = %e, "http accept failed");
                    // Out of descriptors, say: do not spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        serve(tcp, addr);
    }
    // Connections the kernel completed but we had not accepted yet would be
    // reset when the socket closes: take them in and answer them too.
    while let Some((tcp, addr)) = accept_now(&listener).await {
        serve(tcp, addr);
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// A connection already waiting in `listener`'s queue, without waiting.
pub async fn accept_now(
    listener: &tokio::net::TcpListener,
) -> Option<(tokio::net::TcpStream, std::net::SocketAddr)> {
    tokio::select! {
        biased;
        accepted = listener.accept() => accepted.ok(),
        () = std::future::ready(()) => None,
    }
}
