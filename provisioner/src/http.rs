//! The plain-HTTP listener: what firmware, iPXE and un-enrolled machines ask
//! for. Boot scripts, image artifacts (with `Range`), iPXE binaries for UEFI
//! HTTP Boot, and status reports.
//!
//! Every response is logged once it has been sent, with its size and
//! duration, so an operator can see how far a stuck machine got.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use levee_proto::enroll::{EnrollmentRequest, MAX_ENROLL_BODY};
use levee_proto::report::{StatusReport, MAX_REPORT_BODY};
use levee_pxe::boot::MacAddr;
use tower::ServiceExt;
use tower_http::services::ServeFile;
use tracing::{debug, info, warn};

use crate::boot::BootService;
use crate::enroll::service::EnrollService;
use crate::images::image_dir;

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct HttpState {
    pub boot: BootService,
    pub enroll: EnrollService,
    /// Where the iPXE binaries are (`--ipxe-dir`).
    pub ipxe_dir: PathBuf,
    /// On a shared store: fetches an image file this server lacks from
    /// the fleet's other servers on its first request.
    pub images: Option<std::sync::Arc<crate::image_fetch::ImageFetcher>>,
}

/// iPXE binaries that UEFI HTTP Boot clients may fetch.
const IPXE_FILES: &[&str] = &[
    levee_pxe::dhcp::EFI_X64_BINARY,
    levee_pxe::dhcp::EFI_X64_SNP_BINARY,
    levee_pxe::dhcp::BIOS_BINARY,
];

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/boot/{file}", get(boot_script))
        .route("/images/{image}/{file}", get(image_file))
        .route("/ipxe/{file}", get(ipxe_file))
        .route("/releases/{channel}/{kind}/{file}", get(release_file))
        .route(
            levee_proto::paths::REPORT,
            post(report).layer(DefaultBodyLimit::max(MAX_REPORT_BODY)),
        )
        .route(
            levee_proto::enroll::paths::ENROLL,
            post(enroll).layer(DefaultBodyLimit::max(MAX_ENROLL_BODY)),
        )
        .route(levee_proto::enroll::paths::TIME, get(time))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(middleware::from_fn(log_response))
        .layer(middleware::from_fn_with_state(
            "http",
            crate::metrics::track,
        ))
        .with_state(state)
}

fn refuse(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, format!("{}\n", msg.into())).into_response()
}

async fn boot_script(
    State(st): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(file): Path<String>,
) -> Response {
    let Some(mac) = file.strip_suffix(".ipxe") else {
        return refuse(
            StatusCode::NOT_FOUND,
            "boot scripts are at /boot/<mac>.ipxe",
        );
    };
    let mac: MacAddr = match mac.parse() {
        Ok(m) => m,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let boot = st.boot.clone();
    let peer = Some(peer.ip());
    match tokio::task::spawn_blocking(move || boot.script(mac, peer)).await {
        Ok(script) => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            script,
        )
            .into_response(),
        Err(e) => refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("rendering failed: {e}"),
        ),
    }
}

/// Plain names only: the router already splits on `/`, this keeps `..` and
/// hidden staging directories out.
fn plain(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\', '\0'])
}

async fn image_file(
    State(st): State<HttpState>,
    Path((image, file)): Path<(String, String)>,
    req: Request,
) -> Response {
    if !plain(&image) || !plain(&file) {
        return refuse(StatusCode::BAD_REQUEST, "bad image or artifact name");
    }
    let path = image_dir(&st.boot.data_dir, &image).join(&file);
    if let Some(fetcher) = st.images.as_ref().filter(|_| !path.is_file()) {
        // A file of the fleet's images that this server lacks: fetched
        // (and checked against the database) before it is served.
        if let Err(e) = fetcher.ensure(&image, &file).await {
            warn!(%image, %file, error = %e, "image file not served");
            return refuse(StatusCode::NOT_FOUND, e.to_string());
        }
    }
    serve_file(path, req).await
}

async fn ipxe_file(
    State(st): State<HttpState>,
    Path(file): Path<String>,
    req: Request,
) -> Response {
    if !IPXE_FILES.contains(&file.as_str()) {
        return refuse(StatusCode::NOT_FOUND, format!("no iPXE binary `{file}`"));
    }
    serve_file(st.ipxe_dir.join(file), req).await
}

/// A channel's TUF metadata or target, read-only (with `Range` for the
/// agent's resumable downloads). Only `metadata/` and `targets/` of a valid
/// channel name: the signing keys beside the channels are never reachable.
async fn release_file(
    State(st): State<HttpState>,
    Path((channel, kind, file)): Path<(String, String, String)>,
    req: Request,
) -> Response {
    use levee_proto::release::{paths, validate_channel};
    if validate_channel(&channel).is_err() || !plain(&file) {
        return refuse(StatusCode::NOT_FOUND, "no such release file");
    }
    let layout = crate::releases::Layout::new(&st.boot.data_dir);
    let dir = match kind.as_str() {
        paths::METADATA => layout.metadata_dir(&channel),
        paths::TARGETS => layout.targets_dir(&channel),
        _ => return refuse(StatusCode::NOT_FOUND, "no such release file"),
    };
    serve_file(dir.join(file), req).await
}

/// `ServeFile` does `Range`, `If-Modified-Since` and HEAD correctly; no need
/// to write our own.
async fn serve_file(path: PathBuf, req: Request) -> Response {
    match ServeFile::new(path).oneshot(req).await {
        Ok(resp) => resp.map(Body::new),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `POST /api/v1/report`: a status report from a machine that is not
/// enrolled (stage 1, a pending agent). Authenticated by its MAC's
/// enrollment token (`Authorization: Bearer <levee.token>`), accepted while
/// that token is live or was redeemed within the hour; size-capped per
/// field, rate-limited, and only for machines the server knows: reports
/// never create appliances. Enrolled appliances heartbeat over mTLS.
async fn report(
    State(st): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let report = match StatusReport::parse(&body) {
        Ok(r) => r,
        Err(e) => {
            warn!(%peer, error = %e, "status report refused");
            return refuse(StatusCode::BAD_REQUEST, e.to_string());
        }
    };
    let mac: MacAddr = match report.mac.parse() {
        Ok(m) => m,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("{e}")),
    };
    let Some(token) = bearer(&headers) else {
        warn!(%mac, %peer, "status report without a token refused");
        return refuse(
            StatusCode::UNAUTHORIZED,
            "status reports need `Authorization: Bearer <levee.token>` (the machine's enrollment token); enrolled appliances heartbeat over mutual TLS",
        );
    };
    if st.boot.limits.reports.check(&mac).is_err() {
        debug!(%mac, %peer, "status report rate-limited");
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "5")],
            "too many status reports: slow down\n",
        )
            .into_response();
    }
    let hash = crate::enroll::token::token_hash(&token);
    let boot = st.boot.clone();
    let stored = tokio::task::spawn_blocking(move || {
        let store = &boot.store;
        if !store.report_token_ok(&hash, mac, crate::store::now())? {
            return Ok(Err((
                StatusCode::FORBIDDEN,
                format!("the token is not {mac}'s live enrollment token (nor one redeemed within the hour): boot the machine again for a fresh one"),
            )));
        }
        if !store.record_report(&report, mac)? {
            return Ok(Err((
                StatusCode::NOT_FOUND,
                format!("{mac} is not a known machine: reports do not create appliances"),
            )));
        }
        crate::metrics::boot_event("report");
        store.add_event(
            mac,
            "report",
            &format!(
                "{} {}",
                report.stage.as_deref().unwrap_or("report"),
                report.addresses.join(",")
            ),
        )?;
        info!(
            %mac, %peer,
            stage = report.stage.as_deref().unwrap_or("-"),
            version = report.version.as_deref().unwrap_or("-"),
            addresses = %report.addresses.join(","),
            "status report received"
        );
        Ok::<_, crate::store::StoreError>(Ok(()))
    })
    .await;
    match stored {
        Ok(Ok(Ok(()))) => Json(serde_json::json!({"ok": true})).into_response(),
        Ok(Ok(Err((status, msg)))) => {
            warn!(%mac, %peer, reason = %msg, "status report refused");
            refuse(status, msg)
        }
        Ok(Err(e)) => refuse(e.http_status(), e.to_string()),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The token of an `Authorization: Bearer` header.
fn bearer(headers: &axum::http::HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && token.len() <= 128)
        .then(|| token.to_string())
}

/// A JSON refusal, as the agent expects from the API endpoints.
fn api_error(status: StatusCode, msg: impl Into<String>) -> Response {
    (
        status,
        Json(levee_proto::enroll::ApiError { error: msg.into() }),
    )
        .into_response()
}

async fn enroll(
    State(st): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response {
    let peer = Some(peer.ip());
    let (req, csr) = match EnrollmentRequest::parse(&body) {
        Ok(r) => r,
        Err(e) => {
            let msg = e.to_string();
            warn!(mac = "-", peer = ?peer, reason = %msg, "enrollment refused");
            crate::metrics::enrollment("refused");
            return api_error(StatusCode::BAD_REQUEST, msg);
        }
    };
    let service = st.enroll.clone();
    let now = crate::store::now();
    match tokio::task::spawn_blocking(move || service.enroll(&req, &csr, peer, now)).await {
        Ok(Ok(resp)) => Json(resp).into_response(),
        Ok(Err(r)) => match r.approve {
            Some(approve) if r.is_pending() => (
                StatusCode::ACCEPTED,
                Json(levee_proto::enroll::EnrollmentPending {
                    error: r.message,
                    pending: true,
                    approve,
                }),
            )
                .into_response(),
            _ => api_error(r.status, r.message),
        },
        Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `GET /api/v1/time`: the server's clock, for people and scripts. The
/// agent does not set its clock from it (unauthenticated: anyone on the
/// LAN could answer); it uses the mutual-TLS listener's (see
/// `enroll::https`).
async fn time() -> Json<levee_proto::enroll::ServerTime> {
    Json(levee_proto::enroll::ServerTime {
        unix: crate::store::now() as i64,
    })
}

/// Wraps every response body so that one line is logged when it has been
/// sent (or abandoned), with size and duration.
async fn log_response(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_else(|| "-".into());
    let target = format!("{} {}", req.method(), req.uri().path());
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    // ServeFile streams without an exact size hint; Content-Length is what
    // the client was promised.
    let expected = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    resp.map(|inner| {
        let expected = expected.or(inner.size_hint().exact());
        Body::new(LoggedBody {
            inner,
            expected,
            bytes: 0,
            started,
            peer,
            target,
            status,
            finished: false,
        })
    })
}

struct LoggedBody {
    inner: Body,
    /// Clients such as iPXE close the connection as soon as they have
    /// Content-Length bytes, before the body is polled to its end.
    expected: Option<u64>,
    bytes: u64,
    started: Instant,
    peer: String,
    target: String,
    status: u16,
    finished: bool,
}

impl http_body::Body for LoggedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) => self.finished = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        let ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let complete = self.finished
            || self.inner.is_end_stream()
            || self.expected.is_some_and(|n| self.bytes >= n);
        let (peer, target, status, bytes) = (&self.peer, &self.target, self.status, self.bytes);
        if target.ends_with("/healthz") {
            debug!(%peer, %target, status, bytes, "http served");
        } else if complete {
            info!(%peer, %target, status, bytes, ms = format!("{ms:.1}"), "http served");
        } else {
            warn!(%peer, %target, status, bytes, ms = format!("{ms:.1}"), "http response abandoned by the client");
        }
    }
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
