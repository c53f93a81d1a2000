//! The `--https` listener: mutual TLS with client certificates from the
//! server CA, and per-request authorization by the appliance id in the
//! certificate. No path or parameter names a customer or an appliance: the
//! certificate alone decides whose data a request sees.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use levee_proto::config::CustomerConfig;
use levee_proto::enroll::{
    paths, ApiError, Artifact, InstallImage, InstallPlan, InstallState, InstallStatus, RenewRequest,
};
use levee_proto::report::StatusReport;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::ca::{parse_appliance_uri, CaError, ServerCa};
use crate::boot::BootService;
use crate::listen::{self, Limits};
use crate::secrets::ServerKey;
use crate::store::{Appliance, ApplianceState, Heartbeat, ImageRecord, Profile, Store};

#[derive(Debug, thiserror::Error)]
pub enum HttpsError {
    #[error("TLS set-up: {0}")]
    Tls(String),
    #[error(transparent)]
    Ca(#[from] CaError),
}

/// What the mTLS handlers need.
#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<dyn Store>,
    pub ca: Arc<ServerCa>,
    /// Opens the sealed secrets of a configuration for its appliance.
    pub key: Arc<ServerKey>,
    /// The ETag last served to each appliance: a pull is logged when it
    /// hands an appliance a configuration it did not have, not on every
    /// repeat (an appliance that lost its cache, or a load test).
    pub served: Arc<std::sync::Mutex<std::collections::HashMap<i64, String>>>,
    /// Opened and serialized configurations, by customer.
    pub rendered: Arc<RenderedConfigs>,
    /// Which profile and image an appliance boots (its install plan
    /// installs that image), and the plain-HTTP base its artifacts are at.
    pub boot: BootService,
}

/// Opened, serialized configurations by customer, reused while the sealed
/// record is unchanged: opening the secrets, serializing and hashing on
/// every pull cost more than the store lookups themselves (bench-api).
#[derive(Default)]
pub struct RenderedConfigs(std::sync::Mutex<std::collections::HashMap<String, Rendered>>);

struct Rendered {
    sealed: CustomerConfig,
    body: Bytes,
    etag: String,
}

impl RenderedConfigs {
    /// The body and strong ETag (the hash of exactly these bytes) of
    /// `sealed` with its secrets opened.
    fn get_or_render(
        &self,
        key: &ServerKey,
        sealed: &CustomerConfig,
    ) -> Result<(Bytes, String), String> {
        let mut cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = cache.get(&sealed.customer).filter(|r| r.sealed == *sealed) {
            return Ok((r.body.clone(), r.etag.clone()));
        }
        let opened = key.open_config(sealed).map_err(|e| e.to_string())?;
        let body = Bytes::from(serde_json::to_vec(&opened).map_err(|e| e.to_string())?);
        let etag = format!("\"{}\"", hex::encode(Sha256::digest(&body)));
        cache.insert(
            sealed.customer.clone(),
            Rendered {
                sealed: sealed.clone(),
                body: body.clone(),
                etag: etag.clone(),
            },
        );
        Ok((body, etag))
    }
}

/// Who is on the other end of a TLS connection, from its certificate.
#[derive(Debug, Clone)]
pub struct Peer {
    /// From the URI SAN `levee:appliance:<id>`; `None` if the certificate
    /// (signed by our CA, but not an appliance's) names none.
    pub appliance_id: Option<i64>,
    /// sha256 of the certificate's DER (hex).
    pub fingerprint: String,
}

impl Peer {
    fn from_der(der: &[u8]) -> Peer {
        let appliance_id = x509_parser::parse_x509_certificate(der)
            .ok()
            .and_then(|(_, cert)| {
                let san = cert.subject_alternative_name().ok()??;
                san.value.general_names.iter().find_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(u) => parse_appliance_uri(u),
                    _ => None,
                })
            });
        Peer {
            appliance_id,
            fingerprint: hex::encode(Sha256::digest(der)),
        }
    }
}

/// The rustls configuration: our server certificate for `host`, and client
/// certificates required, verified against our CA only.
pub fn tls_config(ca: &ServerCa, host: &str) -> Result<rustls::ServerConfig, HttpsError> {
    let (cert_pem, key_pem) = ca.server_cert(host)?;
    tls_config_pem(ca.pem(), &cert_pem, &key_pem)
}

/// [`tls_config`] from PEM: the CA that client certificates must chain to
/// (also sent after our certificate), our certificate and its key. A
/// server without the CA key (`levee store serve`) starts from its files.
pub fn tls_config_pem(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<rustls::ServerConfig, HttpsError> {
    let tls = |e: &dyn std::fmt::Display| HttpsError::Tls(e.to_string());
    let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| tls(&e))?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_der.clone()).map_err(|e| tls(&e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| tls(&e))?;
    let chain = vec![
        CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| tls(&e))?,
        ca_der,
    ];
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| tls(&e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| tls(&e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route(paths::CONFIG, get(config))
        .route(paths::HEARTBEAT, post(heartbeat))
        .route(paths::RENEW, post(renew))
        .route(paths::INSTALL, get(install_plan).post(install_status))
        .route(
            paths::RUNS,
            post(super::runs_api::post_run).layer(axum::extract::DefaultBodyLimit::max(
                levee_proto::runs::MAX_REPORT_BYTES,
            )),
        )
        .route(
            levee_proto::update::PATH,
            get(super::update_api::get_update).post(super::update_api::post_update),
        )
        .route(
            levee_proto::recovery_api::PATH,
            get(super::recovery_api::get_recovery)
                .post(super::recovery_api::post_recovery)
                .layer(axum::extract::DefaultBodyLimit::max(
                    levee_proto::recovery_api::MAX_BODY,
                )),
        )
        .route(
            levee_proto::restore_api::PATH,
            get(super::restore_api::get_restore)
                .post(super::restore_api::post_restore)
                .layer(axum::extract::DefaultBodyLimit::max(
                    levee_proto::restore_api::MAX_BODY,
                )),
        )
        .route(paths::TIME, get(time))
        .layer(axum::middleware::from_fn_with_state(
            "https",
            crate::metrics::track,
        ))
        .with_state(state)
}

/// Accepts TLS connections until `shutdown` under the caps and timeouts
/// of `limits` (see [`crate::listen`]); each connection is served with its
/// peer identity attached to every request. After `shutdown`, open
/// connections finish the request they are on and close (HTTP/1.1 and h2
/// graceful shutdown), and this returns once all have: the caller bounds
/// that wait with its grace period.
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    state: ApiState,
    limits: Limits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_app(listener, tls, router(state), limits, shutdown, "https").await
}

/// [`serve`] for any router of mTLS handlers (the API, the offsite store):
/// each request carries its [`Peer`]; `name` labels the listener in logs.
pub async fn serve_app(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
    name: &'static str,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let app = listen::stopping_app(app, &shutdown);
    let handle = |tcp: tokio::net::TcpStream, addr: std::net::SocketAddr| {
        let acceptor = acceptor.clone();
        let app = app.clone();
        let stop = shutdown.clone();
        async move {
            // A handshake under way finishes even when stopping (within
            // --tls-timeout): its request is then answered as the drain says.
            let stream = match listen::within(limits.tls_timeout, acceptor.accept(tcp)).await {
                Ok(s) => s,
                Err(reason) => {
                    warn!(peer = %addr, %reason, "TLS handshake refused");
                    return;
                }
            };
            let Some(der) = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
            else {
                // The verifier requires one; this is only defence in depth.
                warn!(peer = %addr, reason = "no client certificate", "https connection refused");
                return;
            };
            let peer = Peer::from_der(der);
            let app = app.layer(Extension(peer));
            listen::serve_connection(stream, addr, app, limits, stop, name).await
        }
    };
    listen::accept_loop(listener, limits, name, None, shutdown.clone(), handle).await
}

/// `GET /api/v1/time` (mutual TLS): the server's clock. The agent sets its
/// clock from this answer's `Date` header, authenticated by the session
/// (its certificate check relaxed to the server certificate's validity
/// window: agent `enroll/timesync.rs`); the body says the same for a
/// human. Any certificate of our CA may ask: it reveals nothing.
async fn time() -> Json<levee_proto::enroll::ServerTime> {
    Json(levee_proto::enroll::ServerTime {
        unix: crate::store::now() as i64,
    })
}

pub(crate) fn api_error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(ApiError { error: msg.into() })).into_response()
}

/// A store failure: 503 with `Retry-After` while the database is out of
/// reach (the agent retries), else 500.
pub(crate) fn store_error(e: &crate::store::StoreError) -> Response {
    let mut r = api_error(e.http_status(), e.to_string());
    if e.is_unavailable() {
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("2"));
    }
    r
}

/// The appliance this request is from, if it may be served: its
/// certificate must be the one recorded for it, and it must not be revoked.
pub(crate) fn authorize(store: &dyn Store, peer: &Peer) -> Result<Appliance, Box<Response>> {
    authorize_with(peer, |id| Ok(store.appliance_by_id(id)?.map(|a| (a, ())))).map(|(a, ())| a)
}

/// [`authorize`] with the appliance (and what comes with it, `T`) loaded by
/// `load`: the configuration endpoint loads the customer in the same query.
fn authorize_with<T>(
    peer: &Peer,
    load: impl FnOnce(i64) -> Result<Option<(Appliance, T)>, crate::store::StoreError>,
) -> Result<(Appliance, T), Box<Response>> {
    let refuse = |id: Option<i64>, status: StatusCode, reason: String| {
        warn!(appliance = ?id, cert = %peer.fingerprint, %reason, "mTLS request refused");
        Box::new(api_error(status, reason))
    };
    let Some(id) = peer.appliance_id else {
        return Err(refuse(
            None,
            StatusCode::FORBIDDEN,
            "the certificate names no appliance".into(),
        ));
    };
    let (a, extra) = match load(id) {
        Ok(Some(found)) => found,
        Ok(None) => {
            return Err(refuse(
                Some(id),
                StatusCode::FORBIDDEN,
                format!("appliance {id} does not exist"),
            ))
        }
        // The store logs an outage once; not once per request.
        Err(e) if e.is_unavailable() => return Err(Box::new(store_error(&e))),
        Err(e) => return Err(refuse(Some(id), e.http_status(), e.to_string())),
    };
    if a.revoked_at.is_some() {
        return Err(refuse(
            Some(id),
            StatusCode::FORBIDDEN,
            format!("appliance {id} is retired: its certificate is revoked"),
        ));
    }
    if a.cert_fingerprint.as_deref() != Some(peer.fingerprint.as_str()) {
        return Err(refuse(
            Some(id),
            StatusCode::FORBIDDEN,
            format!("this certificate of appliance {id} has been superseded (re-enrolled or renewed): it is revoked"),
        ));
    }
    Ok((a, extra))
}

/// Runs a store-bound handler off the async runtime.
pub(super) async fn blocking(f: impl FnOnce() -> Response + Send + 'static) -> Response {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// Runs `f` on the blocking pool (see [`blocking`]) for the appliance the
/// client certificate names, once [`authorize`] has accepted it; a refusal
/// is the answer.
pub(super) async fn for_appliance(
    st: ApiState,
    peer: Peer,
    f: impl FnOnce(&ApiState, Appliance) -> Response + Send + 'static,
) -> Response {
    blocking(move || match authorize(st.store.as_ref(), &peer) {
        Ok(a) => f(&st, a),
        Err(r) => *r,
    })
    .await
}

/// `GET /api/v1/config`: the appliance's customer configuration, secrets
/// opened (it needs the SMB password), with a strong ETag.
async fn config(state: State<ApiState>, peer: Extension<Peer>, headers: HeaderMap) -> Response {
    let r = config_response(state, peer, headers).await;
    crate::metrics::config_pull(match r.status() {
        StatusCode::OK => "served",
        StatusCode::NOT_MODIFIED => "not_modified",
        _ => "refused",
    });
    r
}

async fn config_response(
    State(st): State<ApiState>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
) -> Response {
    // The one store call awaited on the async workers (see
    // `Store::appliance_with_customer_async`); the rest is in memory.
    let loaded = match peer.appliance_id {
        Some(id) => {
            st.store
                .appliance_with_customer_async(id, &peer.fingerprint)
                .await
        }
        None => Ok(None),
    };
    {
        let (a, record) = match authorize_with(&peer, move |_| loaded) {
            Ok(found) => found,
            Err(r) => return *r,
        };
        let Some(customer) = a.customer.as_deref() else {
            return api_error(StatusCode::FORBIDDEN, "this appliance has no customer yet");
        };
        let Some(record) = record else {
            return api_error(
                StatusCode::NOT_FOUND,
                format!("customer {customer} does not exist"),
            );
        };
        let (body, etag) = match st.rendered.get_or_render(&st.key, &record.config) {
            Ok(r) => r,
            Err(e) => return api_error(StatusCode::INTERNAL_SERVER_ERROR, e),
        };
        let matches = headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
        if matches {
            return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
        }
        let new_to_it = st
            .served
            .lock()
            .map(|mut m| m.insert(a.id, etag.clone()).as_ref() != Some(&etag))
            .unwrap_or(true);
        if new_to_it {
            info!(appliance = a.id, %customer, %etag, "configuration served");
        } else {
            debug!(appliance = a.id, %customer, "configuration served again");
        }
        (
            [
                (header::ETAG, etag),
                (header::CONTENT_TYPE, "application/json".into()),
            ],
            body,
        )
            .into_response()
    }
}

/// `POST /api/v1/heartbeat`: a status report from an enrolled appliance.
async fn heartbeat(
    State(st): State<ApiState>,
    Extension(peer): Extension<Peer>,
    body: Bytes,
) -> Response {
    // The same caps as a pre-enrollment report: what ops sees is bounded.
    let report = match StatusReport::parse(&body) {
        Ok(r) => r,
        Err(e) => return api_error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    for_appliance(st, peer, move |st, a| {
        let hb = Heartbeat {
            image_version: report.image_version.as_deref(),
            slot: report.slot.as_deref(),
        };
        // The report is filed under the certificate's appliance, whatever
        // MAC it claims.
        let stored = st
            .store
            .record_heartbeat(a.id, &hb)
            .and_then(|()| st.store.record_report(&report, a.mac));
        match stored {
            Ok(_) => {
                crate::metrics::heartbeat();
                debug!(appliance = a.id, mac = %a.mac, slot = ?report.slot, "heartbeat");
                // The rollout's word rides on the answer; a failure to
                // decide never fails the heartbeat itself.
                let update = match crate::releases::rollout::offer_for(
                    st.store.as_ref(),
                    &a,
                    report.image_version.as_deref(),
                ) {
                    Ok(Ok(offer)) => {
                        debug!(appliance = a.id, release = offer.release, "update offered");
                        Some(offer)
                    }
                    Ok(Err(why)) => {
                        debug!(appliance = a.id, %why, "no update offered");
                        None
                    }
                    Err(e) => {
                        warn!(appliance = a.id, error = %e, "cannot decide on an update");
                        None
                    }
                };
                // A restore ops asked for rides on it too (the oldest
                // unfinished one); a failure to look never fails it.
                let restore = match st.store.pending_restores(a.id) {
                    Ok(rows) => rows.first().map(|r| r.request()),
                    Err(e) => {
                        warn!(appliance = a.id, error = %e, "cannot look up restore requests");
                        None
                    }
                };
                Json(levee_proto::update::HeartbeatAnswer {
                    ok: true,
                    server_time_unix: Some(crate::store::now() as i64),
                    update,
                    restore,
                })
                .into_response()
            }
            Err(e) => store_error(&e),
        }
    })
    .await
}

/// `POST /api/v1/renew`: a new certificate for a new key; the presented one
/// stops working once the new one is recorded.
async fn renew(
    State(st): State<ApiState>,
    Extension(peer): Extension<Peer>,
    body: Bytes,
) -> Response {
    let req: RenewRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                format!("malformed renewal request: {e}"),
            )
        }
    };
    for_appliance(st, peer, move |st, a| {
        let now = crate::store::now();
        if let Err(reason) = renewal_allowed(a.cert_not_after, now) {
            warn!(appliance = a.id, %reason, "renewal refused");
            return api_error(StatusCode::CONFLICT, reason);
        }
        if st.boot.limits.renewals.check(&a.id).is_err() {
            warn!(appliance = a.id, "renewal rate-limited");
            return api_error(
                StatusCode::TOO_MANY_REQUESTS,
                "too many renewals for this appliance: try again in an hour",
            );
        }
        let issued = match st.ca.issue_client(&req.csr_pem, a.id) {
            Ok(i) => i,
            Err(e @ (CaError::BadCsr(_) | CaError::Csr(_))) => {
                return api_error(StatusCode::BAD_REQUEST, e.to_string())
            }
            Err(e) => return api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
        let not_after = u64::try_from(issued.not_after_unix).unwrap_or(0);
        if let Err(e) = st
            .store
            .record_certificate(a.id, &issued.fingerprint, not_after, false)
        {
            return api_error(StatusCode::FORBIDDEN, e.to_string());
        }
        info!(appliance = a.id, "certificate renewed");
        Json(levee_proto::enroll::EnrollmentResponse {
            certificate_pem: issued.pem,
            ca_pem: st.ca.pem().to_string(),
            https_url: String::new(),
            appliance_id: a.id,
            server_time_unix: crate::store::now() as i64,
        })
        .into_response()
    })
    .await
}

/// Whether a certificate valid until `not_after` may be renewed at `now`:
/// only in the last third of its life (the agent renews in its last 30 of
/// 90 days), so a stolen credential cannot be kept alive by renewing it
/// over and over, and a renewal costs the CA a signature at most once in
/// sixty days per appliance.
pub fn renewal_allowed(not_after: Option<u64>, now: u64) -> Result<(), String> {
    let life = super::ca::CLIENT_CERT_DAYS as u64 * 86_400;
    let Some(not_after) = not_after else {
        return Err("no certificate is recorded for this appliance".into());
    };
    let opens = not_after.saturating_sub(life / 3);
    if now < opens {
        return Err(format!(
            "renewal opens in the certificate's last third: in {} day(s)",
            (opens - now).div_ceil(86_400)
        ));
    }
    Ok(())
}

/// The plan for appliance `a` of a customer whose configuration says
/// `to_disk` / `min_disk_size`: the image of the profile it boots, with
/// artifact URLs on the plain-HTTP listener (integrity comes from the
/// sha256s, delivered here over mutual TLS).
pub fn plan_for(
    public_url: &str,
    a: &Appliance,
    settings: &levee_proto::config::InstallSettings,
    profile: &Profile,
    image: &ImageRecord,
) -> Result<InstallPlan, String> {
    let min_disk_bytes =
        levee_proto::config::parse_size(&settings.min_disk_size).ok_or_else(|| {
            format!(
                "the customer's install.min_disk_size `{}` is not a size",
                settings.min_disk_size
            )
        })?;
    let artifact = |file: &str| {
        image.manifest.artifacts.get(file).map(|art| Artifact {
            url: format!("{public_url}/images/{}/{file}", image.id),
            sha256: art.sha256.clone(),
            size: art.size,
        })
    };
    let image = match (
        artifact(&profile.kernel),
        artifact(&profile.initrd),
        artifact(levee_proto::image::ROOTFS),
    ) {
        (Some(kernel), Some(initrd), Some(rootfs)) => Some(InstallImage {
            version: image.version.clone(),
            kernel,
            initrd,
            rootfs,
            cmdline: image.manifest.cmdline.clone(),
        }),
        _ => None,
    };
    Ok(InstallPlan {
        install: settings.to_disk,
        reinstall: a.reinstall,
        min_disk_bytes,
        image,
    })
}

/// `GET /api/v1/install`: this appliance's install plan.
async fn install_plan(State(st): State<ApiState>, Extension(peer): Extension<Peer>) -> Response {
    for_appliance(st, peer, move |st, a| {
        let Some(customer) = a.customer.as_deref() else {
            return api_error(StatusCode::FORBIDDEN, "this appliance has no customer yet");
        };
        let record = match st.store.customer(customer) {
            Ok(Some(r)) => r,
            Ok(None) => {
                return api_error(
                    StatusCode::NOT_FOUND,
                    format!("customer {customer} does not exist"),
                )
            }
            Err(e) => return store_error(&e),
        };
        let plan = st.boot.resolve(a.mac).and_then(|(profile, image)| {
            plan_for(
                &st.boot.public_url,
                &a,
                &record.config.install,
                &profile,
                &image,
            )
        });
        match plan {
            Ok(plan) => {
                info!(
                    appliance = a.id, mac = %a.mac, install = plan.install, reinstall = plan.reinstall,
                    image = plan.image.as_ref().map(|i| i.version.as_str()).unwrap_or("-"),
                    "install plan served"
                );
                Json(plan).into_response()
            }
            Err(reason) => {
                warn!(appliance = a.id, mac = %a.mac, %reason, "no install plan");
                api_error(StatusCode::CONFLICT, reason)
            }
        }
    })
    .await
}

/// `POST /api/v1/install`: the agent says where its install stands; the
/// state (and for `failed` its reason) is kept for `levee appliance show`.
async fn install_status(
    State(st): State<ApiState>,
    Extension(peer): Extension<Peer>,
    body: Bytes,
) -> Response {
    let status: InstallStatus = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                format!("malformed install status: {e}"),
            )
        }
    };
    for_appliance(st, peer, move |st, a| {
        let state = match status.state {
            InstallState::Installing => ApplianceState::Installing,
            InstallState::Installed => ApplianceState::Installed,
            InstallState::Failed => ApplianceState::Failed,
        };
        let reason = match (status.state, status.reason.as_deref()) {
            (InstallState::Failed, None) => Some("no reason given"),
            (_, r) => r,
        };
        let detail = format!(
            "{}: disk {}, slot {}, image {}",
            status.state.as_str(),
            status.disk.as_deref().unwrap_or("-"),
            status.slot.as_deref().unwrap_or("-"),
            status.image_version.as_deref().unwrap_or("-"),
        );
        let stored = st
            .store
            .add_event(a.mac, "install", &detail)
            .and_then(|()| st.store.set_appliance_state(a.id, state, reason));
        match stored {
            Ok(_) => {
                match status.state {
                    InstallState::Failed => warn!(
                        appliance = a.id, mac = %a.mac, reason = reason.unwrap_or("-"),
                        "install failed"
                    ),
                    s => info!(appliance = a.id, mac = %a.mac, state = s.as_str(), %detail, "install status"),
                }
                Json(serde_json::json!({"ok": true})).into_response()
            }
            Err(e) => store_error(&e),
        }
    })
    .await
}
