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
