//! The server's time, authenticated: one mutual-TLS request whose
//! certificate check does not depend on the local clock (which may be
//! anything after a dead RTC battery), and the answer's `Date` header.
//!
//! The server certificate is checked in full (chain to the pinned CA,
//! signature, name, and the handshake's proof of its key) at a time inside
//! its own validity window, so a local clock that is off does not fail it;
//! that relaxation is for this one request only. The `Date` the server
//! sends inside that session is then accepted only if it falls inside the
//! same window ([`super::clock::authenticated_step`]). Plain-HTTP time is
//! never used: anyone on the LAN could forge it.

use std::sync::{Arc, Mutex};

use levee_proto::enroll::paths;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::credential::Credential;
use super::{transport, EnrollError};

/// The server's `Date` and the validity window of the certificate it
/// proved, Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerClock {
    pub unix: i64,
    pub not_before: i64,
    pub not_after: i64,
}

/// Checks the server's certificate as webpki does, but at a time clamped
/// into the certificate's own validity window instead of the local clock;
/// remembers that window.
#[derive(Debug)]
struct WindowVerifier {
    inner: Arc<WebPkiServerVerifier>,
    window: Mutex<Option<(i64, i64)>>,
}

impl ServerCertVerifier for WindowVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let (_, cert) = x509_parser::parse_x509_certificate(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        let nb = cert.validity().not_before.timestamp();
        let na = cert.validity().not_after.timestamp();
        if nb > na || nb < 0 {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::BadEncoding,
            ));
        }
        let local = now.as_secs() as i64;
        let at = local.clamp(nb, na) as u64;
        let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(at));
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            at,
        )?;
        *self.window.lock().unwrap_or_else(|p| p.into_inner()) = Some((nb, na));
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `GET {https_url}/api/v1/time` over mutual TLS with `cred`; the server's
/// `Date` and its certificate's window. `now` stands in for the local
/// clock in the certificate check (tests show a clock years off does not
/// matter); `None` is the system clock.
pub fn server_clock(cred: &Credential, now: Option<i64>) -> Result<ServerClock, EnrollError> {
    let base = cred.server.https_url.trim_end_matches('/');
    let url = format!("{base}{}", paths::TIME);
    let bad = |e: &dyn std::fmt::Display| EnrollError::Key(format!("credential not usable: {e}"));
    let ca = super::single_certificate(&cred.ca_pem).map_err(|e| bad(&format!("ca.pem: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca)).map_err(|e| bad(&e))?;
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| bad(&e))?;
    let verifier = Arc::new(WindowVerifier {
        inner,
        window: Mutex::new(None),
    });
    let certs = CertificateDer::pem_slice_iter(cred.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&format!("cert.pem: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(cred.key_pem.as_bytes())
        .map_err(|e| bad(&format!("key.pem: {e}")))?;
    let time: Arc<dyn rustls::time_provider::TimeProvider> = match now {
        Some(now) => Arc::new(FixedTime(now)),
        None => Arc::new(rustls::time_provider::DefaultTimeProvider),
    };
    let mut tls = rustls::ClientConfig::builder_with_details(provider, time)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&e))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_client_auth_cert(certs, key)
        .map_err(|e| bad(&e))?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let client = super::client_builder()
        .https_only(true)
        .use_preconfigured_tls(tls)
        .build()
        .map_err(|e| transport(&url, e))?;
    let resp = client
        .get(&url)
        .send()
        .map_err(|e| transport(&url, levee_proto::error_chain(&e)))?;
    let date = resp
        .headers()
        .get(reqwest::header::DATE)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| transport(&url, "the answer has no Date header"))?;
    let unix = httpdate::parse_http_date(date)
        .map_err(|e| transport(&url, format!("unreadable Date `{date}`: {e}")))?
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| transport(&url, format!("Date `{date}` is before 1970")))?
        .as_secs() as i64;
    let (not_before, not_after) = verifier
        .window
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .ok_or_else(|| transport(&url, "no server certificate was checked"))?;
    Ok(ServerClock {
        unix,
        not_before,
        not_after,
    })
}

/// A stand-in local clock for the certificate check.
#[derive(Debug)]
struct FixedTime(i64);

impl rustls::time_provider::TimeProvider for FixedTime {
    fn current_time(&self) -> Option<UnixTime> {
        Some(UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            self.0.max(0) as u64,
        )))
    }
}
