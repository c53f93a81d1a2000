//! The credential in the state dir (`/var/lib/levee` on the data
//! partition):
//!
//! ```text
//! credential/key.pem      the private key (0600)
//! credential/cert.pem     its certificate from the server CA
//! credential/ca.pem       the server CA (pinned by levee.ca= at enrollment)
//! credential/server.json  {http_url, https_url, appliance_id}
//! ```
//!
//! Every file is written atomically (temp, fsync, rename, directory fsync).
//! A renewal replaces key and certificate together: both are staged in
//! `credential/next/` first and rolled forward on load if a crash cut the
//! move short, so key and certificate never mismatch.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors reading or writing the credential.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CredentialError + '_ {
    move |source| CredentialError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where the appliance's server is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// Plain-HTTP base (`levee.url=` at enrollment): the clock comes from
    /// here before the first mTLS request.
    pub http_url: String,
    /// The mutual-TLS API.
    pub https_url: String,
    pub appliance_id: i64,
}

/// An enrolled appliance's identity.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub key_pem: String,
    pub cert_pem: String,
    pub ca_pem: String,
    pub server: ServerInfo,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

const DIR: &str = "credential";
const KEY: &str = "key.pem";
const CERT: &str = "cert.pem";
const CA: &str = "ca.pem";
const SERVER: &str = "server.json";
const NEXT: &str = "next";

impl Credential {
    /// `STATE/credential`.
    pub fn dir(state_dir: &Path) -> PathBuf {
        state_dir.join(DIR)
    }

    /// Loads the credential; `Ok(None)` when the appliance has none yet.
    /// Finishes a renewal that a crash interrupted.
    pub fn load(state_dir: &Path) -> Result<Option<Credential>, CredentialError> {
        let dir = Credential::dir(state_dir);
        if !dir.join(SERVER).exists() {
            return Ok(None);
        }
        roll_forward(&dir)?;
        let read = |name: &str| {
            let p = dir.join(name);
            fs::read_to_string(&p).map_err(io(&p))
        };
        let server_path = dir.join(SERVER);
        let server: ServerInfo =
            serde_json::from_str(&read(SERVER)?).map_err(|e| CredentialError::Invalid {
                path: server_path,
                reason: e.to_string(),
            })?;
        Ok(Some(Credential {
            key_pem: read(KEY)?,
            cert_pem: read(CERT)?,
            ca_pem: read(CA)?,
            server,
        }))
    }

    /// Writes every file; `server.json` last, since its presence is what
    /// [`Credential::load`] takes as "enrolled".
    pub fn save(&self, state_dir: &Path) -> Result<(), CredentialError> {
        let dir = Credential::dir(state_dir);
        create_private_dir(&dir)?;
        write_atomic(&dir.join(KEY), self.key_pem.as_bytes(), 0o600)?;
        write_atomic(&dir.join(CERT), self.cert_pem.as_bytes(), 0o644)?;
        write_atomic(&dir.join(CA), self.ca_pem.as_bytes(), 0o644)?;
        let server =
            serde_json::to_vec_pretty(&self.server).map_err(|e| CredentialError::Invalid {
                path: dir.join(SERVER),
                reason: e.to_string(),
            })?;
        write_atomic(&dir.join(SERVER), &server, 0o644)
    }

    /// Replaces key and certificate together (a renewal).
    pub fn replace_identity(
        &mut self,
        state_dir: &Path,
        key_pem: &str,
        cert_pem: &str,
    ) -> Result<(), CredentialError> {
        let dir = Credential::dir(state_dir);
        let next = dir.join(NEXT);
        create_private_dir(&next)?;
        write_atomic(&next.join(KEY), key_pem.as_bytes(), 0o600)?;
        // Its presence marks the staging as complete.
        write_atomic(&next.join(CERT), cert_pem.as_bytes(), 0o644)?;
        roll_forward(&dir)?;
        self.key_pem = key_pem.to_string();
        self.cert_pem = cert_pem.to_string();
        Ok(())
    }

    /// (not_before, not_after) of the certificate, Unix seconds.
    pub fn validity(&self) -> Result<(i64, i64), String> {
        cert_validity(&self.cert_pem)
    }
}

/// Moves a complete staged identity (`next/cert.pem` present) into place;
/// drops an incomplete one.
fn roll_forward(dir: &Path) -> Result<(), CredentialError> {
    let next = dir.join(NEXT);
    if !next.exists() {
        return Ok(());
    }
    let staged_cert = next.join(CERT);
    let staged_key = next.join(KEY);
    if staged_cert.exists() {
        if staged_key.exists() {
            fs::rename(&staged_key, dir.join(KEY)).map_err(io(&staged_key))?;
        }
        fs::rename(&staged_cert, dir.join(CERT)).map_err(io(&staged_cert))?;
        sync_dir(dir)?;
    }
    fs::remove_dir_all(&next).map_err(io(&next))?;
    sync_dir(dir)
}

fn create_private_dir(dir: &Path) -> Result<(), CredentialError> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io(dir))
}

fn sync_dir(dir: &Path) -> Result<(), CredentialError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// Writes `bytes` to `path` atomically with `mode`: a temp file beside it,
/// fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CredentialError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    // The mode given to open() is masked by the umask; make it exact.
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io(path))?;
    sync_dir(dir)
}

/// (not_before, not_after) of a PEM certificate, Unix seconds.
pub fn cert_validity(cert_pem: &str) -> Result<(i64, i64), String> {
    let der = pem::parse(cert_pem).map_err(|e| format!("certificate PEM: {e}"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.contents())
        .map_err(|e| format!("certificate: {e}"))?;
    let v = cert.validity();
    Ok((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// Whether to renew at `now`: when less than a third of the certificate's
/// lifetime remains (or it has expired).
pub fn renewal_due(not_before: i64, not_after: i64, now: i64) -> bool {
    if not_after <= not_before {
        return true;
    }
    let lifetime = not_after.saturating_sub(not_before);
    now >= not_after.saturating_sub(lifetime / 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Credential {
        Credential {
            key_pem: "KEY".into(),
            cert_pem: "CERT".into(),
            ca_pem: "CA".into(),
            server: ServerInfo {
                http_url: "http://10.0.0.1:8080".into(),
                https_url: "https://10.0.0.1:8443".into(),
                appliance_id: 7,
            },
        }
    }

    #[test]
    fn round_trip_with_private_key_mode() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Credential::load(dir.path()).unwrap(), None);
        let c = sample();
        c.save(dir.path()).unwrap();
        assert_eq!(Credential::load(dir.path()).unwrap(), Some(c.clone()));
        let mode = |n: &str| {
            fs::metadata(Credential::dir(dir.path()).join(n))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(KEY), 0o600);
        assert_eq!(mode("."), 0o700);
        let names: Vec<_> = fs::read_dir(Credential::dir(dir.path()))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(!names.iter().any(|n| n.contains("tmp")), "{names:?}");
        assert!(!format!("{c:?}").contains("KEY"));
    }

    #[test]
    fn a_renewal_replaces_key_and_certificate_together() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = sample();
        c.save(dir.path()).unwrap();
        c.replace_identity(dir.path(), "KEY2", "CERT2").unwrap();
        let loaded = Credential::load(dir.path()).unwrap().unwrap();
        assert_eq!(
            (loaded.key_pem.as_str(), loaded.cert_pem.as_str()),
            ("KEY2", "CERT2")
        );
        assert_eq!(loaded, c);

        // A crash after the key moved but before the certificate did: the
        // load finishes the move.
        let next = Credential::dir(dir.path()).join(NEXT);
        fs::create_dir_all(&next).unwrap();
        fs::write(Credential::dir(dir.path()).join(KEY), "KEY3").unwrap();
        fs::write(next.join(CERT), "CERT3").unwrap();
        let loaded = Credential::load(dir.path()).unwrap().unwrap();
        assert_eq!(
            (loaded.key_pem.as_str(), loaded.cert_pem.as_str()),
            ("KEY3", "CERT3")
        );
        // A crash while staging (no certificate yet): the old pair stays.
        fs::create_dir_all(&next).unwrap();
        fs::write(next.join(KEY), "KEY4").unwrap();
        let loaded = Credential::load(dir.path()).unwrap().unwrap();
        assert_eq!(
            (loaded.key_pem.as_str(), loaded.cert_pem.as_str()),
            ("KEY3", "CERT3")
        );
        assert!(!next.exists());
    }

    #[test]
    fn renewal_is_due_in_the_last_third() {
        let day = 86_400;
        assert!(!renewal_due(0, 90 * day, 0));
        assert!(!renewal_due(0, 90 * day, 59 * day));
        assert!(renewal_due(0, 90 * day, 60 * day));
        assert!(renewal_due(0, 90 * day, 100 * day));
        // The server backdates by a day: 91 days of lifetime.
        assert!(!renewal_due(-day, 90 * day, 59 * day));
        assert!(renewal_due(-day, 90 * day, 60 * day));
        assert!(renewal_due(10, 5, 0), "nonsense validity renews");
    }

    #[test]
    fn validity_of_a_real_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.not_before = rcgen::date_time_ymd(2026, 1, 1);
        p.not_after = rcgen::date_time_ymd(2026, 4, 1);
        let cert = p.self_signed(&key).unwrap();
        let (nb, na) = cert_validity(&cert.pem()).unwrap();
        assert_eq!(na - nb, 90 * 86_400);
        assert!(cert_validity("nope").is_err());
    }
}
