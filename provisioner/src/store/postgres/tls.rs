//! TLS to PostgreSQL with rustls, configured from the connection string as
//! libpq does: `sslmode` (`disable`, `allow`, `prefer`, `require`,
//! `verify-ca`, `verify-full`) and `sslrootcert=FILE`.
//!
//! The adapter between tokio-rustls and tokio-postgres is ours (a page of
//! code): `tokio-postgres-rustls` is unmaintained, and it and its forks
//! bring tokio-rustls's default provider (aws-lc-rs) while the workspace
//! keeps one rustls provider, ring.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<SslMode, String> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode `{other}` is not one of disable, allow, prefer, require, verify-ca, verify-full"
                ))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres negotiates: it knows no verification levels;
    /// those live in the rustls configuration.
    pub fn negotiation(self) -> PgSslMode {
        match self {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Allow | SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
        }
    }
}

/// The TLS settings of a connection string, and the string without them
/// (tokio-postgres does not know `verify-*` or `sslrootcert`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsParams {
    pub mode: SslMode,
    pub root_cert: Option<PathBuf>,
}

/// Splits `sslmode` and `sslrootcert` off a `postgres://` URL or a libpq
/// `key=value` string. The default mode is libpq's, `prefer`.
pub fn split_tls_params(conninfo: &str) -> Result<(String, TlsParams), String> {
    let mut mode = None;
    let mut root_cert = None;
    let mut take = |key: &str, value: String| -> Result<bool, String> {
        match key {
            "sslmode" => mode = Some(SslMode::parse(&value)?),
            "sslrootcert" => root_cert = Some(PathBuf::from(value)),
            _ => return Ok(false),
        }
        Ok(true)
    };
    let rest = if let Some((base, query)) = conninfo
        .starts_with("postgres://")
        .then_some(())
        .or_else(|| conninfo.starts_with("postgresql://").then_some(()))
        .and_then(|()| conninfo.split_once('?'))
    {
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if !take(k, percent_decode(v)?)? {
                kept.push(pair);
            }
        }
        if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        }
    } else if conninfo.contains("://") {
        conninfo.to_string()
    } else {
        let mut kept = Vec::new();
        for (k, v, raw) in key_values(conninfo)? {
            if !take(&k, v)? {
                kept.push(raw);
            }
        }
        kept.join(" ")
    };
    let mode = mode.unwrap_or(SslMode::Prefer);
    if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && root_cert.is_none() {
        return Err(format!(
            "sslmode={} needs sslrootcert=FILE: the CA certificate (PEM) that signed the database server's certificate",
            mode.as_str()
        ));
    }
    Ok((rest, TlsParams { mode, root_cert }))
}

/// `%XX` escapes of a URL query value.
fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad %-escape in `{s}`"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("`{s}` is not UTF-8 once decoded"))
}

/// The `key=value` pairs of a libpq string (values may be single-quoted),
/// each with its raw text so the others can be passed on unchanged.
fn key_values(s: &str) -> Result<Vec<(String, String, String)>, String> {
    let mut out = Vec::new();
    let mut chars = s.char_indices().peekable();
    loop {
        while chars.peek().is_some_and(|(_, c)| c.is_whitespace()) {
            chars.next();
        }
        let Some(&(start, _)) = chars.peek() else {
            break;
        };
        let mut key = String::new();
        while let Some(&(_, c)) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|(_, c)| c.is_whitespace()) {
            chars.next();
        }
        if chars.next().map(|(_, c)| c) != Some('=') {
            return Err(format!("`{key}` in the connection string has no `=value`"));
        }
        while chars.peek().is_some_and(|(_, c)| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        let mut end = s.len();
        if chars.peek().is_some_and(|(_, c)| *c == '\'') {
            chars.next();
            let mut closed = false;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            value.push(n);
                        }
                    }
                    '\'' => {
                        closed = true;
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            if !closed {
                return Err(format!("the value of `{key}` has no closing quote"));
            }
        } else {
            while let Some(&(i, c)) = chars.peek() {
                if c.is_whitespace() {
                    end = i;
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((key, value, s[start..end].to_string()));
    }
    Ok(out)
}

/// The rustls client configuration for `params` (ring provider), or `None`
/// for `disable`.
pub fn client_config(params: &TlsParams) -> Result<Option<rustls::ClientConfig>, String> {
    if params.mode == SslMode::Disable {
        return Ok(None);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match (&params.root_cert, params.mode) {
        (Some(path), mode) => {
            let roots = load_roots(path)?;
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            // libpq: with a root certificate, `require` verifies like
            // `verify-ca`; only `verify-full` also checks the host name.
            if mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(IgnoreName(webpki))
            }
        }
        // `prefer` and `require` without a CA: encrypted, not authenticated
        // (libpq's behaviour); the server's signature is still checked.
        (None, _) => Arc::new(AcceptAny(provider.clone())),
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Some(config))
}

fn load_roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(path).map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "sslrootcert {}: no PEM certificate in it",
            path.display()
        ));
    }
    Ok(roots)
}

/// `verify-ca`: the chain must lead to the CA; the name is not checked.
#[derive(Debug)]
struct IgnoreName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for IgnoreName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `require` without `sslrootcert`: any certificate (as libpq).
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// tokio-postgres's TLS hook over tokio-rustls; `None` never negotiates
/// (`sslmode=disable`).
#[derive(Clone)]
pub struct MakeRustls(Option<Arc<rustls::ClientConfig>>);

impl MakeRustls {
    pub fn new(config: Option<rustls::ClientConfig>) -> MakeRustls {
        MakeRustls(config.map(Arc::new))
    }
}

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<RustlsConnect> {
        let config = self
            .0
            .clone()
            .ok_or_else(|| io::Error::new(io::ErrorKind::Unsupported, "sslmode=disable: no TLS"))?;
        // A Unix socket has no name (and the store turns TLS off for it,
        // as libpq does); any other host must be a valid name or address.
        let name = match domain {
            "" => None,
            d => Some(ServerName::try_from(d.to_string()).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("`{d}` is not a host name for TLS: {e}"),
                )
            })?),
        };
        Ok(RustlsConnect {
            connector: tokio_rustls::TlsConnector::from(config),
            name,
        })
    }
}

pub struct RustlsConnect {
    connector: tokio_rustls::TlsConnector,
    name: Option<ServerName<'static>>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let name = self.name.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "TLS needs a host name, not a Unix socket",
                )
            })?;
            self.connector
                .connect(name, stream)
                .await
                .map(|s| RustlsStream(Box::new(s)))
        })
    }
}

pub struct RustlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    /// No channel binding: SCRAM then authenticates without it, as libpq
    /// does with `channel_binding=prefer` against a server that lacks it.
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_come_off_urls_and_key_value_strings() {
        let (rest, p) =
            split_tls_params("postgres://u@db.example:5432/levee?sslmode=verify-full&sslrootcert=/etc/ca%20x.pem&application_name=a")
                .unwrap();
        assert_eq!(
            rest,
            "postgres://u@db.example:5432/levee?application_name=a"
        );
        assert_eq!(p.mode, SslMode::VerifyFull);
        assert_eq!(p.root_cert.as_deref(), Some(Path::new("/etc/ca x.pem")));
        let (rest, p) = split_tls_params("host=/run/pg dbname=levee sslmode='require'").unwrap();
        assert_eq!(rest, "host=/run/pg dbname=levee");
        assert_eq!((p.mode, p.root_cert), (SslMode::Require, None));
        let (rest, p) = split_tls_params("postgres://u@h/levee").unwrap();
        assert_eq!(
            (rest.as_str(), p.mode),
            ("postgres://u@h/levee", SslMode::Prefer)
        );
    }

    #[test]
    fn verification_without_a_ca_and_unknown_modes_are_refused() {
        let e = split_tls_params("postgres://h/db?sslmode=verify-full").unwrap_err();
        assert!(e.contains("needs sslrootcert=FILE"), "{e}");
        let e = split_tls_params("host=h sslmode=strict").unwrap_err();
        assert!(e.contains("sslmode `strict`"), "{e}");
        let e = split_tls_params("host=h dbname='x").unwrap_err();
        assert!(e.contains("closing quote"), "{e}");
    }

    /// A CA and a server certificate for `host` signed by it (PEM each).
    fn test_ca(host: &str) -> (String, String, String) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().expect("key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).expect("CA");
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec![host.to_string()])
            .expect("params")
            .signed_by(&key, &ca_cert, &ca_key)
            .expect("server cert");
        (ca_cert.pem(), cert.pem(), key.serialize_pem())
    }

    fn url(pg: &crate::store::testing::PgServer, host: &str, query: &str) -> String {
        format!("{}?{query}", pg.tcp_url(host, "tls"))
    }

    fn refusal(url: &str) -> String {
        match crate::store::PgStore::connect(url) {
            Ok(_) => panic!("{url} connected"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn verify_full_accepts_the_server_and_refuses_a_wrong_ca_or_host() {
        use crate::store::testing::{PgOptions, PgServer};
        let (ca, cert, key) = test_ca("localhost");
        let (other_ca, _, _) = test_ca("localhost");
        let pg = PgServer::start_with(PgOptions {
            tls: Some((cert, key)),
            ..Default::default()
        });
        pg.psql("CREATE DATABASE tls");
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_file = dir.path().join("ca.pem");
        let other_file = dir.path().join("other.pem");
        std::fs::write(&ca_file, &ca).expect("write");
        std::fs::write(&other_file, &other_ca).expect("write");

        let good = url(
            &pg,
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={}", ca_file.display()),
        );
        let store = crate::store::PgStore::connect(&good).expect("verify-full");
        // The pooled connection is encrypted.
        let ssl = pg.query(
            "tls",
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE s.ssl AND a.application_name = 'levee'",
        );
        assert_ne!(ssl, "0", "no TLS connection from levee");
        drop(store);

        let e = refusal(&url(
            &pg,
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={}", other_file.display()),
        ));
        assert!(e.contains("not signed by the CA in sslrootcert"), "{e}");
        let e = refusal(&url(
            &pg,
            "127.0.0.1",
            &format!("sslmode=verify-full&sslrootcert={}", ca_file.display()),
        ));
        assert!(e.contains("does not name the host"), "{e}");
        // verify-ca checks the chain only.
        crate::store::PgStore::connect(&url(
            &pg,
            "127.0.0.1",
            &format!("sslmode=verify-ca&sslrootcert={}", ca_file.display()),
        ))
        .expect("verify-ca by address");
        let e = refusal(&url(
            &pg,
            "127.0.0.1",
            &format!("sslmode=verify-ca&sslrootcert={}", other_file.display()),
        ));
        assert!(e.contains("not signed by the CA in sslrootcert"), "{e}");
    }

    #[test]
    fn require_refuses_a_server_without_tls() {
        use crate::store::testing::{PgOptions, PgServer};
        let pg = PgServer::start_with(PgOptions {
            tcp: true,
            ..Default::default()
        });
        pg.psql("CREATE DATABASE tls");
        let e = refusal(&url(&pg, "127.0.0.1", "sslmode=require"));
        assert!(e.contains("server does not support TLS"), "{e}");
        assert!(e.contains("sslmode=require or verify-*"), "{e}");
        // prefer (libpq's default) falls back to a plain connection.
        crate::store::PgStore::connect(&url(&pg, "127.0.0.1", "sslmode=prefer")).expect("prefer");
    }
}
