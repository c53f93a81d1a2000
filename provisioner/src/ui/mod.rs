//! The web panel (`levee serve --ui ADDR`): its own TLS listener for
//! browsers (the `--https` listener requires appliance certificates), the
//! pages embedded in the binary ([`assets`]) and the JSON API under
//! `/ui/api/` that they use and a script can use too.
//!
//! Who may do what:
//! - every API call but `login` needs a session ([`session`]): the
//!   `levee_session` cookie (`Secure`, `HttpOnly`, `SameSite=Strict`);
//! - every change (any method but GET) also needs the session's CSRF token
//!   in `X-CSRF-Token`, and an `Origin`, when sent, equal to the panel's own;
//! - read-only operators change nothing, checked here at the API (the
//!   pages only hide the buttons);
//! - an operator holding a one-time password must choose a new one first;
//! - logins are rate limited per client address and per operator name;
//! - every action (and every login) goes to the audit log, and actions on
//!   an appliance into its history (`levee appliance show`) too.

mod api;
pub mod assets;
mod auth;
mod customers;
mod fleet;
mod live;
pub mod password;
pub mod session;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::enroll::ca::ServerCa;
use crate::limit::{Limiter, Rate};
use crate::listen::{self, Limits};
use crate::secrets::ServerKey;
use crate::store::Store;

/// Where the panel's certificate comes from.
#[derive(Debug, Clone)]
pub enum UiTls {
    /// Issued by the Levee CA at start for these host names or addresses
    /// (browsers warn until the CA is trusted: `DATA_DIR/ca/ca.crt`).
    Ca { hosts: Vec<String> },
    /// An operator's own certificate chain and key (PEM files).
    Files { cert: PathBuf, key: PathBuf },
}

/// What `levee serve --ui` needs beyond the shared parts.
#[derive(Debug, Clone)]
pub struct UiOptions {
    pub tls: UiTls,
}

/// Everything the panel's handlers share.
#[derive(Clone)]
pub struct UiState {
    pub store: Arc<dyn Store>,
    pub key: Arc<ServerKey>,
    pub sessions: Arc<session::Sessions>,
    /// Login attempts per client address, and overall.
    pub login_by_ip: Arc<Limiter<std::net::IpAddr>>,
    /// Login attempts per operator name (guessing one account from many
    /// addresses).
    pub login_by_name: Arc<Limiter<String>>,
    pub fleet: Arc<fleet::FleetCache>,
    pub live: live::Live,
}

impl UiState {
    pub fn new(store: Arc<dyn Store>, key: Arc<ServerKey>, stop: &CancellationToken) -> UiState {
        let fleet: Arc<fleet::FleetCache> = Default::default();
        // The first page after start should not wait on the run reports'
        // aggregates (seconds with a million of them): compute them now.
        {
            let (fleet, store) = (fleet.clone(), store.clone());
            tokio::task::spawn_blocking(move || {
                if let Err(e) = fleet.refresh(store.as_ref()) {
                    tracing::debug!(error = %e.body, "panel: fleet not precomputed");
                }
            });
        }
        UiState {
            live: live::Live::start(store.clone(), fleet.clone(), stop.clone()),
            fleet,
            store,
            key,
            sessions: Default::default(),
            login_by_ip: Arc::new(Limiter::new(
                Rate {
                    burst: 10.0,
                    per_sec: 1.0 / 6.0,
                },
                Rate {
                    burst: 100.0,
                    per_sec: 5.0,
                },
            )),
            login_by_name: Arc::new(Limiter::new(
                Rate {
                    burst: 10.0,
                    per_sec: 1.0 / 6.0,
                },
                // Per name only: the address limiter holds the overall rate.
                Rate {
                    burst: 1e9,
                    per_sec: 1e9,
                },
            )),
        }
    }
}

/// An API error: a status and a message that says what to do, as
/// `{"error": "..."}` (plus `line`/`column` for configuration errors).
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: serde_json::Value,
}

impl ApiError {
    pub fn new(status: StatusCode, msg: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: serde_json::json!({ "error": msg.into() }),
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> ApiError {
        use crate::store::StoreError;
        let status = match &e {
            StoreError::NotFound { .. } => StatusCode::NOT_FOUND,
            StoreError::Invalid(_) => StatusCode::BAD_REQUEST,
            e => e.http_status(),
        };
        ApiError::new(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Runs store work off the async workers (see [`crate::store::Store`]).
pub async fn blocking<T: Send + 'static>(
    state: &UiState,
    f: impl FnOnce(&dyn Store) -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || f(store.as_ref()))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
}

/// The panel's routes: pages at `/`, the API under `/ui/api/`.
pub fn router(state: UiState) -> Router {
    let api = Router::new()
        .route("/login", post(auth::login))
        .route("/logout", post(auth::logout))
        .route("/me", get(auth::me))
        .route("/password", post(auth::change_password))
        .route("/fleet", get(fleet::list))
        .route("/pending", get(fleet::pending))
        .route("/appliances/{id}", get(api::appliance))
        .route("/appliances/{id}/{action}", post(api::act))
        .route("/customers", get(customers::list).post(customers::apply))
        .route("/customers/{name}", get(customers::show))
        .route("/alerts", get(api::alerts))
        .route("/profiles", get(api::profiles))
        .route("/images", get(api::images))
        .route("/audit", get(api::audit))
        .route("/operators", get(api::operators))
        .route("/live", get(live::events))
        .layer(axum::extract::DefaultBodyLimit::max(256 * 1024));
    Router::new()
        .nest("/ui/api", api)
        .fallback(assets::serve)
        .layer(axum::middleware::from_fn(assets::security_headers))
        .with_state(state)
}

/// The panel's TLS settings: a certificate from the Levee CA for the given
/// names, or the operator's own files. A client certificate is asked for
/// but optional: one the Levee CA issued to an operator (`levee operator
/// cert`) logs in without a password ([`auth::login`]); a certificate from
/// any other issuer fails the handshake; browsers without one go on to
/// the password login.
pub fn tls_config(ca: &ServerCa, tls: &UiTls) -> anyhow::Result<rustls::ServerConfig> {
    let (cert_pem, key_pem) = match tls {
        UiTls::Ca { hosts } => {
            let (cert, key) = ca
                .server_cert_names(hosts)
                .context("issuing the panel's certificate")?;
            (format!("{cert}{}", ca.pem()), key)
        }
        UiTls::Files { cert, key } => (
            std::fs::read_to_string(cert)
                .with_context(|| format!("--ui-cert {}", cert.display()))?,
            std::fs::read_to_string(key).with_context(|| format!("--ui-key {}", key.display()))?,
        ),
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .context("the panel's certificate is not PEM")?;
    anyhow::ensure!(
        !chain.is_empty(),
        "the panel's certificate file holds no certificate"
    );
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .context("the panel's key is not a PEM private key")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).context("the Levee CA")?)
        .context("the Levee CA")?;
    let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .context("client certificate verifier")?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_client_cert_verifier(clients)
        .with_single_cert(chain, key)
        .context("the panel's certificate and key do not match")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Serves the panel on `listener` until `stop`, with the caps and timeouts
/// every listener has.
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    state: UiState,
    limits: Limits,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let app = listen::stopping_app(router(state), &stop);
    let handle = |tcp: tokio::net::TcpStream, addr: SocketAddr| {
        let acceptor = acceptor.clone();
        let app = app.clone();
        let stop = stop.clone();
        async move {
            let stream = match listen::within(limits.tls_timeout, acceptor.accept(tcp)).await {
                Ok(s) => s,
                Err(reason) => {
                    warn!(peer = %addr, %reason, "panel: TLS handshake refused");
                    return;
                }
            };
            let cert = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|der| ClientCert::from_der(der));
            let app = app
                .layer(Extension(ClientAddr(addr)))
                .layer(Extension(cert));
            listen::serve_connection(stream, addr, app, limits, stop, "ui").await
        }
    };
    listen::accept_loop(listener, limits, "ui", None, stop.clone(), handle).await
}

/// The client's address (login rate limits).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// The client certificate of the connection (verified against the Levee
/// CA during the handshake), when the client sent one.
#[derive(Debug, Clone)]
pub struct ClientCert {
    /// From the URI SAN `levee:operator:<name>`; `None` for any other
    /// certificate of the CA (an appliance's never logs in).
    pub operator: Option<String>,
    /// sha256 of the certificate's DER (hex): compared with the one the
    /// store holds for that operator.
    pub fingerprint: String,
}

impl ClientCert {
    fn from_der(der: &[u8]) -> ClientCert {
        use sha2::Digest;
        let operator = x509_parser::parse_x509_certificate(der)
            .ok()
            .and_then(|(_, cert)| {
                let san = cert.subject_alternative_name().ok()??;
                san.value.general_names.iter().find_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(u) => {
                        crate::enroll::ca::parse_operator_uri(u).map(str::to_string)
                    }
                    _ => None,
                })
            });
        ClientCert {
            operator,
            fingerprint: hex::encode(sha2::Sha256::digest(der)),
        }
    }
}

/// The panel as a service of `levee serve` (see [`crate::serve::run_with`]).
pub fn service(listener: TcpListener, options: UiOptions) -> crate::serve::Service {
    Box::new(move |shared: crate::serve::Shared| {
        Box::pin(async move {
            let tls = tls_config(&shared.ca, &options.tls)?;
            let state = UiState::new(shared.store.clone(), shared.key.clone(), &shared.stop);
            tracing::info!(listen = %listener.local_addr()?, "panel listening");
            serve(listener, tls, state, shared.limits, shared.stop)
                .await
                .context("panel server failed")
        })
    })
}
