//! The server CA (`DATA_DIR/ca/`): created on first start, then reused, so
//! the fingerprint in boot scripts stays valid across restarts.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use levee_proto::csr::CheckedCsr;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber, SubjectPublicKeyInfo,
};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

/// How long an appliance certificate is valid.
pub const CLIENT_CERT_DAYS: i64 = 90;
/// Appliance certificates start this far in the past: the CA's clock and a
/// verifier's may differ, and nothing is gained by being exact.
pub const BACKDATE: Duration = Duration::days(1);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a usable CA file: {source}")]
    Load { path: PathBuf, source: rcgen::Error },
    #[error("the stored CA certificate or key is not usable: {0}")]
    Stored(rcgen::Error),
    #[error("could not create a certificate: {0}")]
    Create(rcgen::Error),
    #[error("the certificate request is not valid: {0}")]
    BadCsr(rcgen::Error),
    #[error(transparent)]
    Csr(#[from] levee_proto::csr::CsrError),
    #[error("`{0}` is not a host name or IP address for the server certificate")]
    BadHost(String),
}

/// An issued certificate and what the store keeps about it.
#[derive(Debug, Clone)]
pub struct Issued {
    pub pem: String,
    /// sha256 of the DER, lowercase hex: what the store records and the
    /// HTTPS listener compares against.
    pub fingerprint: String,
    pub not_after_unix: i64,
}

/// An appliance's certificate request, checked and parsed, waiting for
/// its appliance id ([`ServerCa::client_request`]).
pub struct ClientRequest(SubjectPublicKeyInfo);

pub struct ServerCa {
    /// The CA certificate exactly as stored (its hash is `levee.ca=`).
    pem: String,
    fingerprint: String,
    /// Rebuilt from the stored certificate; used only as the issuer name and
    /// key identifier when signing.
    issuer: Certificate,
    key: KeyPair,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// sha256 of a PEM certificate's DER, lowercase hex.
pub fn pem_fingerprint(pem: &str) -> Option<String> {
    let der = pem_der(pem)?;
    Some(hex::encode(Sha256::digest(der)))
}

/// The DER of the first certificate in a PEM text.
fn pem_der(pem: &str) -> Option<Vec<u8>> {
    let p = pem::parse(pem).ok()?;
    (p.tag() == "CERTIFICATE").then(|| p.into_contents())
}

impl ServerCa {
    /// Loads the CA from `dir`, creating it (key mode 0600) if absent.
    pub fn open_or_create(dir: &Path) -> Result<ServerCa, CaError> {
        let cert_path = dir.join("ca.crt");
        let key_path = dir.join("ca.key");
        if !cert_path.exists() {
            Self::create(dir, &cert_path, &key_path)?;
        }
        let pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
        let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
        Self::from_pem(&pem, &key_pem).map_err(|e| match e {
            CaError::Stored(source) => CaError::Load {
                path: dir.to_path_buf(),
                source,
            },
            other => other,
        })
    }

    /// A CA from its certificate and key (PEM), as stored in the database
    /// (see [`crate::fleet`]) or in `DATA_DIR/ca/`.
    pub fn from_pem(pem: &str, key_pem: &str) -> Result<ServerCa, CaError> {
        let key = KeyPair::from_pem(key_pem).map_err(CaError::Stored)?;
        let params = CertificateParams::from_ca_cert_pem(pem).map_err(CaError::Stored)?;
        let issuer = params.self_signed(&key).map_err(CaError::Stored)?;
        let fingerprint =
            pem_fingerprint(pem).ok_or(CaError::Stored(rcgen::Error::CouldNotParseCertificate))?;
        Ok(ServerCa {
            pem: pem.to_string(),
            fingerprint,
            issuer,
            key,
        })
    }

    /// A new CA: its certificate and key, PEM.
    pub fn generate() -> Result<(String, String), CaError> {
        let key = KeyPair::generate().map_err(CaError::Create)?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "Levee server CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + Duration::days(365 * 20);
        let cert = params.self_signed(&key).map_err(CaError::Create)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    fn create(dir: &Path, cert_path: &Path, key_path: &Path) -> Result<(), CaError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let (cert_pem, key_pem) = Self::generate()?;
        // Key first, then the certificate: a crash in between leaves no
        // certificate, so the next start creates both again.
        write_private(key_path, key_pem.as_bytes())?;
        let tmp = dir.join("ca.crt.tmp");
        std::fs::write(&tmp, cert_pem).map_err(io(&tmp))?;
        std::fs::rename(&tmp, cert_path).map_err(io(cert_path))?;
        Ok(())
    }

    /// The CA's private key, PEM (to seal it into the database).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// sha256 of the CA certificate (lowercase hex): `levee.ca=`.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// A certificate for the `--https` listener, for `host` (a DNS name or
    /// an IP address: the public URL's host). Returns (certificate PEM, key PEM).
    pub fn server_cert(&self, host: &str) -> Result<(String, String), CaError> {
        self.server_cert_names(&[host.to_string()])
    }

    /// A server certificate for several host names or addresses (the web
    /// panel's `--ui-host`s); the first is its common name.
    pub fn server_cert_names(&self, hosts: &[String]) -> Result<(String, String), CaError> {
        let mut sans = Vec::new();
        for host in hosts {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            sans.push(match host.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    host.to_string()
                        .try_into()
                        .map_err(|_| CaError::BadHost(host.to_string()))?,
                ),
            });
        }
        let host = hosts
            .first()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .ok_or_else(|| CaError::BadHost(String::new()))?;
        let key = KeyPair::generate().map_err(CaError::Create)?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, host);
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.serial_number = Some(random_serial());
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + Duration::days(365);
        let cert = params
            .signed_by(&key, &self.issuer, &self.key)
            .map_err(CaError::Create)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Signs an appliance's certificate request. Only the request's public
    /// key is used: the identity (CN `appliance-<id>`, URI SAN
    /// `levee:appliance:<id>`) and validity are the server's. The request
    /// must pass [`levee_proto::csr::check_csr_pem`]: a P-256 key that
    /// signed it.
    pub fn issue_client(&self, csr_pem: &str, appliance_id: i64) -> Result<Issued, CaError> {
        let checked = levee_proto::csr::check_csr_pem(csr_pem)?;
        self.sign_client(ServerCa::client_request(&checked)?, appliance_id)
    }

    /// The key of a request [`levee_proto::csr::check_csr_pem`] accepted
    /// (which verified its signature: not verified again here, an ECDSA
    /// verification costs more than the signing), waiting for its
    /// appliance's id. What fails here is the request's fault.
    pub fn client_request(csr: &CheckedCsr) -> Result<ClientRequest, CaError> {
        Ok(ClientRequest(
            SubjectPublicKeyInfo::from_der(&csr.spki_der).map_err(CaError::BadCsr)?,
        ))
    }

    /// Signs the key of a request [`ServerCa::client_request`] accepted
    /// for appliance `appliance_id`.
    pub fn sign_client(&self, key: ClientRequest, appliance_id: i64) -> Result<Issued, CaError> {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("appliance-{appliance_id}"));
        params.subject_alt_names = vec![SanType::URI(
            appliance_uri(appliance_id)
                .try_into()
                .map_err(CaError::Create)?,
        )];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(random_serial());
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        let not_after = now + Duration::days(CLIENT_CERT_DAYS);
        params.not_after = not_after;
        let cert = params
            .signed_by(&key.0, &self.issuer, &self.key)
            .map_err(CaError::Create)?;
        Ok(Issued {
            fingerprint: hex::encode(Sha256::digest(cert.der())),
            pem: cert.pem(),
            not_after_unix: not_after.unix_timestamp(),
        })
    }
}

impl ServerCa {
    /// A panel operator's client certificate (URI SAN
    /// `levee:operator:<name>`, client authentication only, one year),
    /// with a new P-256 key made here: `levee operator cert` writes both
    /// for the operator to import into a browser or give to curl. The
    /// store records its fingerprint, so a newer certificate or the
    /// operator's removal revokes it.
    pub fn issue_operator(&self, name: &str) -> Result<(Issued, String), CaError> {
        let key = KeyPair::generate().map_err(CaError::Create)?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("operator-{name}"));
        params.subject_alt_names = vec![SanType::URI(
            operator_uri(name).try_into().map_err(CaError::Create)?,
        )];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(random_serial());
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        let not_after = now + Duration::days(OPERATOR_CERT_DAYS);
        params.not_after = not_after;
        let cert = params
            .signed_by(&key, &self.issuer, &self.key)
            .map_err(CaError::Create)?;
        let issued = Issued {
            fingerprint: hex::encode(Sha256::digest(cert.der())),
            pem: cert.pem(),
            not_after_unix: not_after.unix_timestamp(),
        };
        Ok((issued, key.serialize_pem()))
    }
}

/// How long an operator's client certificate is valid.
pub const OPERATOR_CERT_DAYS: i64 = 365;

/// The URI SAN that names a panel operator in their client certificate.
pub fn operator_uri(name: &str) -> String {
    format!("levee:operator:{name}")
}

/// The operator named by a URI SAN, if it is one of ours.
pub fn parse_operator_uri(uri: &str) -> Option<&str> {
    uri.strip_prefix("levee:operator:")
        .filter(|n| !n.is_empty())
}

/// The URI SAN that names an appliance in its certificate.
pub fn appliance_uri(id: i64) -> String {
    format!("levee:appliance:{id}")
}

/// The appliance id in a URI SAN, if it is one of ours.
pub fn parse_appliance_uri(uri: &str) -> Option<i64> {
    uri.strip_prefix("levee:appliance:")?.parse().ok()
}

/// A positive 128-bit serial (top bit clear, so DER does not need a pad byte
/// and no parser reads it as negative).
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

/// Writes a private file (0600 from the start, never readable by others).
fn write_private(path: &Path, data: &[u8]) -> Result<(), CaError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.write_all(data).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_ca_is_created_once_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ServerCa::open_or_create(&dir.path().join("ca")).expect("create");
        let mode = std::fs::metadata(dir.path().join("ca/ca.key"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = ServerCa::open_or_create(&dir.path().join("ca")).expect("reopen");
        assert_eq!(ca.fingerprint(), again.fingerprint());
        assert_eq!(ca.fingerprint().len(), 64);
        // The fingerprint is of the stored certificate's DER.
        let pem = std::fs::read_to_string(dir.path().join("ca/ca.crt")).expect("crt");
        assert_eq!(pem_fingerprint(&pem).as_deref(), Some(ca.fingerprint()));
    }

    #[test]
    fn a_csr_becomes_a_client_certificate_for_the_appliance() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ServerCa::open_or_create(dir.path()).expect("create");
        let key = KeyPair::generate().expect("key");
        let mut req = CertificateParams::default();
        req.distinguished_name
            .push(DnType::CommonName, "admin-please");
        let csr = req
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem");
        let issued = ca.issue_client(&csr, 42).expect("issue");
        let der = pem_der(&issued.pem).expect("der");
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("parse");
        // The requested name is ignored; the server's identity is used.
        assert_eq!(
            cert.subject().to_string(),
            "CN=appliance-42",
            "subject is the server's choice"
        );
        let now = OffsetDateTime::now_utc().unix_timestamp();
        assert!(
            cert.validity().not_before.timestamp() <= now - 3600,
            "backdated"
        );
        assert!(cert.validity().not_after.timestamp() > now + 80 * 86400);
        // Reloading the CA still signs certificates that chain to the same CA.
        let reloaded = ServerCa::open_or_create(dir.path()).expect("reopen");
        assert!(reloaded.issue_client(&csr, 43).is_ok());
        assert!(matches!(
            ca.issue_client("not a csr", 1),
            Err(CaError::Csr(_))
        ));
        // Only P-256, what the agent makes.
        let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("key");
        let csr = req
            .serialize_request(&p384)
            .expect("csr")
            .pem()
            .expect("pem");
        assert!(matches!(ca.issue_client(&csr, 44), Err(CaError::Csr(_))));
    }

    #[test]
    fn server_certificates_name_the_public_host() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ServerCa::open_or_create(dir.path()).expect("create");
        assert!(ca.server_cert("127.0.0.1").is_ok());
        assert!(ca.server_cert("levee.example").is_ok());
        assert!(ca.server_cert("[::1]").is_ok());
    }
}
