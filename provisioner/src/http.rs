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
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use levee_proto::report::StatusReport;
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
        .route(levee_proto::paths::REPORT, post(report))
        .route(levee_proto::enroll::paths::ENROLL, post(enroll))
        .route(levee_proto::enroll::paths::TIME, get(time))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(middleware::from_fn(log_response))
        .with_state(state)
}

fn refuse(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, format!("{}\n", msg.into())).into_response()
}

async fn boot_script(State(st): State<HttpState>, Path(file): Path<String>) -> Response {
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
    match tokio::task::spawn_blocking(move || boot.script(mac)).await {
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

async fn report(
    State(st): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response {
    let report: StatusReport = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            warn!(%peer, error = %e, "malformed status report");
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("malformed status report: {e}"),
            );
        }
    };
    let mac: MacAddr = match report.mac.parse() {
        Ok(m) => m,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e.to_string()),
    };
    info!(
        %mac, %peer,
        stage = report.stage.as_deref().unwrap_or("-"),
        version = report.version.as_deref().unwrap_or("-"),
        addresses = %report.addresses.join(","),
        "status report received"
    );
    let boot = st.boot.clone();
    let stored = tokio::task::spawn_blocking(move || {
        boot.store.record_report(&report, mac)?;
        boot.store.add_event(
            mac,
            "report",
            &format!(
                "{} {}",
                report.stage.as_deref().unwrap_or("report"),
                report.addresses.join(",")
            ),
        )
    })
    .await;
    match stored {
        Ok(Ok(())) => Json(serde_json::json!({"ok": true})).into_response(),
        Ok(Err(e)) => refuse(e.http_status(), e.to_string()),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// A JSON refusal, as the agent expects from the API endpoints.
fn api_error(status: StatusCode, msg: impl Into<String>) -> Response {
    (
        status,
        Json(levee_proto::enroll::ApiError { error: msg.into() }),
    )
        .into_response()
}

async fn enroll(State(st): State<HttpState>, body: Bytes) -> Response {
    let req: levee_proto::enroll::EnrollmentRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            let msg = format!("malformed enrollment request: {e}");
            warn!(mac = "-", reason = %msg, "enrollment refused");
            return api_error(StatusCode::BAD_REQUEST, msg);
        }
    };
    let service = st.enroll.clone();
    let now = crate::store::now();
    match tokio::task::spawn_blocking(move || service.enroll(&req, now)).await {
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
mod tests {
    use super::*;
    use crate::boot::default_cmdline;
    use crate::store::{ImageStore, Profile, SqliteStore, Transport};
    use axum::http::Request as HttpRequest;
    use std::sync::Arc;

    const MAC: &str = "52:54:00:00:00:42";

    fn state() -> (tempfile::TempDir, HttpState) {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let store = Arc::new(SqliteStore::open(&data).unwrap());
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("k"), b"0123456789").unwrap();
        std::fs::write(src.join("i"), b"initrd").unwrap();
        let image =
            crate::images::import_files(&data, store.as_ref(), "t", &src.join("k"), &src.join("i"))
                .unwrap();
        store
            .put_profile(&Profile {
                name: "default".into(),
                image: image.id,
                kernel: "vmlinuz".into(),
                initrd: "initrd.img".into(),
                cmdline: default_cmdline(false).into(),
                transport: Transport::Http,
            })
            .unwrap();
        let st = HttpState {
            boot: BootService {
                store: store.clone(),
                data_dir: data,
                public_url: "http://10.0.0.1".into(),
                tftp_host: "10.0.0.1".into(),
                ca_fingerprint: "ab".repeat(32),
            },
            enroll: EnrollService {
                store: store.clone(),
                ca: Arc::new(
                    crate::enroll::ca::ServerCa::open_or_create(&dir.path().join("ca")).unwrap(),
                ),
                https_url: Some("https://10.0.0.1:8443".into()),
            },
            ipxe_dir: dir.path().join("ipxe"),
        };
        (dir, st)
    }

    async fn call(st: &HttpState, req: HttpRequest<Body>) -> (StatusCode, String) {
        let mut req = req;
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([10, 0, 0, 9], 4242))));
        let resp = router(st.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    fn get(uri: &str) -> HttpRequest<Body> {
        HttpRequest::get(uri).body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn release_channels_are_served_read_only_and_keys_never() {
        let (_d, st) = state();
        let layout = crate::releases::Layout::new(&st.boot.data_dir);
        std::fs::create_dir_all(layout.metadata_dir("stable")).unwrap();
        std::fs::create_dir_all(layout.targets_dir("stable")).unwrap();
        std::fs::create_dir_all(layout.keys_dir()).unwrap();
        std::fs::write(layout.metadata_dir("stable").join("timestamp.json"), b"{}").unwrap();
        std::fs::write(
            layout.targets_dir("stable").join("ab.v.rootfs.squashfs"),
            b"0123456789",
        )
        .unwrap();
        std::fs::write(layout.keys_dir().join("timestamp.pem"), b"secret").unwrap();
        let (status, body) = call(&st, get("/releases/stable/metadata/timestamp.json")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "{}"));
        // Range, for resumable downloads.
        let req = HttpRequest::get("/releases/stable/targets/ab.v.rootfs.squashfs")
            .header(header::RANGE, "bytes=4-")
            .body(Body::empty())
            .unwrap();
        let (status, body) = call(&st, req).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::PARTIAL_CONTENT, "456789")
        );
        for uri in [
            "/releases/keys/metadata/timestamp.pem",
            "/releases/stable/keys/timestamp.pem",
            "/releases/stable/metadata/..%2F..%2Fkeys%2Ftimestamp.pem",
            "/releases/root/metadata/1.root.json",
            "/releases/Stable/metadata/timestamp.json",
        ] {
            let (status, body) = call(&st, get(uri)).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{uri}: {body}");
        }
        let req = HttpRequest::post("/releases/stable/metadata/timestamp.json")
            .body(Body::empty())
            .unwrap();
        let (status, _) = call(&st, req).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test]
    async fn a_machine_gets_its_own_script() {
        let (_d, st) = state();
        let (status, body) = call(&st, get(&format!("/boot/{MAC}.ipxe"))).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.starts_with("#!ipxe\n"), "{body}");
        assert!(body.contains("kernel http://10.0.0.1/images/t-"), "{body}");
        assert!(body.contains(&format!("levee.mac={MAC}")), "{body}");
        assert!(body.contains("levee.url=http://10.0.0.1 "), "{body}");
        // The script fetch is in the machine's history.
        let mac: MacAddr = MAC.parse().unwrap();
        let steps: Vec<String> = st
            .boot
            .store
            .events(mac, 10)
            .unwrap()
            .into_iter()
            .map(|e| e.step)
            .collect();
        assert_eq!(steps, ["script"]);
    }

    #[tokio::test]
    async fn a_script_carries_the_ca_and_a_one_time_token_for_its_mac() {
        let (_d, st) = state();
        let store = st.boot.store.clone();
        let mut p = store.profile("default").unwrap().unwrap();
        p.cmdline = "levee.ca={ca} levee.token={token}".into();
        store.put_profile(&p).unwrap();
        let (status, body) = call(&st, get(&format!("/boot/{MAC}.ipxe"))).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains(&format!("levee.ca={}", "ab".repeat(32))),
            "{body}"
        );
        let token = body
            .split_whitespace()
            .find_map(|w| w.strip_prefix("levee.token="))
            .expect("token on the command line");
        assert_eq!(token.len(), 64, "{body}");
        let mac = MAC.parse().unwrap();
        let now = crate::store::now();
        use crate::enroll::token::redeem;
        use crate::store::TokenCheck;
        let other = "52:54:00:00:00:43".parse().unwrap();
        assert_eq!(
            redeem(store.as_ref(), token, other, now).unwrap(),
            TokenCheck::OtherMac
        );
        assert_eq!(
            redeem(store.as_ref(), token, mac, now).unwrap(),
            TokenCheck::Valid
        );
        assert_eq!(
            redeem(store.as_ref(), token, mac, now).unwrap(),
            TokenCheck::Used
        );
        // Each rendering mints a fresh token.
        let (_, again) = call(&st, get(&format!("/boot/{MAC}.ipxe"))).await;
        assert!(!again.contains(token));
    }

    /// Registers MAC for customer acme with a token-carrying profile and
    /// returns the token from its rendered script.
    async fn script_token(st: &HttpState, mac: &str) -> String {
        let store = st.boot.store.clone();
        let mut p = store.profile("default").unwrap().unwrap();
        p.cmdline = "levee.ca={ca} levee.token={token}".into();
        store.put_profile(&p).unwrap();
        let (_, body) = call(st, get(&format!("/boot/{mac}.ipxe"))).await;
        body.split_whitespace()
            .find_map(|w| w.strip_prefix("levee.token="))
            .expect("token")
            .to_string()
    }

    fn register(st: &HttpState, mac: &str) {
        let store = &st.boot.store;
        let config = serde_json::from_value(serde_json::json!({
            "customer": "acme",
            "heartbeat_interval": "5m",
            "sources": [{"name": "f", "smb": "smb://u@h/s", "password": "sealed:v1:00"}],
        }))
        .unwrap();
        store.put_customer(&config).unwrap();
        store
            .register_appliance(
                mac.parse().unwrap(),
                &crate::store::Registration {
                    customer: Some("acme"),
                    ..Default::default()
                },
            )
            .unwrap();
    }

    fn csr() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap()
    }

    async fn enroll_call(
        st: &HttpState,
        token: &str,
        mac: &str,
        csr: &str,
    ) -> (StatusCode, String) {
        let body = serde_json::json!({
            "token": token, "mac": mac, "csr_pem": csr,
            "facts": {"macs": [mac], "dmi_serial": "S1", "disks": []},
        });
        let req = HttpRequest::post(levee_proto::enroll::paths::ENROLL)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        call(st, req).await
    }

    fn error_of(body: &str) -> String {
        serde_json::from_str::<levee_proto::enroll::ApiError>(body)
            .unwrap_or_else(|e| panic!("not a JSON error ({e}): {body}"))
            .error
    }

    #[tokio::test]
    async fn a_registered_machine_enrolls_once_with_its_token() {
        let (_d, st) = state();
        register(&st, MAC);
        let token = script_token(&st, MAC).await;
        let (status, body) = enroll_call(&st, &token, MAC, &csr()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let resp: levee_proto::enroll::EnrollmentResponse = serde_json::from_str(&body).unwrap();
        assert_eq!(resp.https_url, "https://10.0.0.1:8443");
        assert!((resp.server_time_unix - crate::store::now() as i64).abs() < 60);
        assert_eq!(
            crate::enroll::ca::pem_fingerprint(&resp.ca_pem).unwrap(),
            st.enroll.ca.fingerprint()
        );
        let a = st
            .boot
            .store
            .appliance(MAC.parse().unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(a.id, resp.appliance_id);
        assert_eq!(a.state, crate::store::ApplianceState::Enrolled);
        assert_eq!(
            a.cert_fingerprint,
            crate::enroll::ca::pem_fingerprint(&resp.certificate_pem)
        );
        // The same token again is a replay.
        let (status, body) = enroll_call(&st, &token, MAC, &csr()).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(error_of(&body).contains("already used"), "{body}");
    }

    #[tokio::test]
    async fn enrollment_refusals_say_why() {
        let (_d, st) = state();
        register(&st, MAC);
        let other = "52:54:00:00:00:43";
        let token = script_token(&st, MAC).await;
        let (status, body) = enroll_call(&st, &token, other, &csr()).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(error_of(&body).contains("another machine"), "{body}");

        let expired = "e".repeat(64);
        st.boot
            .store
            .put_token(
                &crate::enroll::token::token_hash(&expired),
                MAC.parse().unwrap(),
                crate::store::now() - 1,
            )
            .unwrap();
        let (status, body) = enroll_call(&st, &expired, MAC, &csr()).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(error_of(&body).contains("expired"), "{body}");

        let (status, body) = enroll_call(&st, "nope", MAC, &csr()).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(error_of(&body).contains("unknown"), "{body}");

        // A bad CSR is refused (the token was not the problem).
        let (status, body) = enroll_call(&st, &token, MAC, "garbage").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(error_of(&body).contains("certificate request"), "{body}");

        let (status, body) = call(
            &st,
            HttpRequest::post(levee_proto::enroll::paths::ENROLL)
                .body(Body::from("{"))
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(error_of(&body).contains("malformed"), "{body}");
    }

    #[tokio::test]
    async fn an_unapproved_machine_stays_pending() {
        let (_d, st) = state();
        let token = script_token(&st, MAC).await;
        let (status, body) = enroll_call(&st, &token, MAC, &csr()).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        let p: levee_proto::enroll::EnrollmentPending = serde_json::from_str(&body).unwrap();
        assert!(p.pending);
        assert_eq!(
            p.approve,
            format!("levee appliance approve {MAC} --customer NAME")
        );
        let a = st
            .boot
            .store
            .appliance(MAC.parse().unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(a.state, crate::store::ApplianceState::Pending);
        assert_eq!(a.cert_fingerprint, None);
        assert!(a.pending_key.is_some());
        let events = st.boot.store.events(MAC.parse().unwrap(), 50).unwrap();
        assert!(events.iter().any(|e| e.step == "pending-key"), "{events:?}");
    }

    #[tokio::test]
    async fn a_machine_without_a_profile_is_told_why() {
        let (_d, st) = state();
        let mac: MacAddr = MAC.parse().unwrap();
        st.boot
            .store
            .register_appliance(mac, &Default::default())
            .unwrap();
        st.boot
            .store
            .set_appliance_profile(mac, Some("gone"))
            .unwrap();
        let (status, body) = call(&st, get(&format!("/boot/{MAC}.ipxe"))).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains("will not boot") && body.contains("no boot profile `gone`"),
            "{body}"
        );
        let (status, body) = call(&st, get("/boot/not-a-mac.ipxe")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("not a MAC address"), "{body}");
    }

    #[tokio::test]
    async fn a_retired_machine_is_not_served() {
        use levee_pxe::boot::{BootDecision, BootPolicy, BootRequest};
        let (_d, st) = state();
        let mac: MacAddr = MAC.parse().unwrap();
        let a = st
            .boot
            .store
            .register_appliance(mac, &Default::default())
            .unwrap();
        st.boot.store.retire_appliance(a.id, "stolen").unwrap();
        let (_, body) = call(&st, get(&format!("/boot/{MAC}.ipxe"))).await;
        assert!(
            body.contains("will not boot") && body.contains("is retired (stolen)"),
            "{body}"
        );
        let req = BootRequest {
            mac,
            arch: levee_pxe::boot::Arch::Bios,
            stage: levee_pxe::boot::Stage::Ipxe,
        };
        match st.boot.decide(&req) {
            BootDecision::Ignore { reason } => assert!(reason.contains("retired"), "{reason}"),
            other => panic!("a retired machine was offered a boot: {other:?}"),
        }
    }

    #[tokio::test]
    async fn artifacts_are_served_with_ranges_and_stay_inside_the_store() {
        let (_d, st) = state();
        let image = st.boot.store.images().unwrap().remove(0).id;
        let mut req = get(&format!("/images/{image}/vmlinuz"));
        req.headers_mut()
            .insert(header::RANGE, "bytes=2-5".parse().unwrap());
        let (status, body) = call(&st, req).await;
        assert_eq!(status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(body, "2345");
        for bad in [
            "/images/..%2F..%2Fetc/passwd",
            "/images/.import-x/vmlinuz",
            "/images/x/..",
            "/ipxe/..%2Fetc",
        ] {
            let (status, _) = call(&st, get(bad)).await;
            assert!(status.is_client_error(), "{bad} gave {status}");
        }
    }

    #[tokio::test]
    async fn reports_are_recorded_and_bad_ones_refused_with_the_reason() {
        let (_d, st) = state();
        let post = |body: &str| {
            HttpRequest::post(levee_proto::paths::REPORT)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string()))
                .unwrap()
        };
        let (status, body) = call(&st, post("{\"mac\": 5}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("malformed status report"), "{body}");
        let (status, body) = call(&st, post("{\"mac\": \"zz\"}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("not a MAC address"), "{body}");
        let (status, _) = call(
            &st,
            post(&format!(
                "{{\"mac\":\"{MAC}\",\"stage\":\"agent\",\"addresses\":[\"10.0.0.9/24\"]}}"
            )),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let a = st
            .boot
            .store
            .appliance(MAC.parse().unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(a.last_report.unwrap().stage.as_deref(), Some("agent"));
    }
}
