//! The certificate of a store that runs alone (`levee store serve`): made
//! on a machine that holds the Levee CA (`levee store cert HOST`), copied
//! to the store machine, which never holds the CA key. The certificate
//! file carries the chain (ours, then the CA's): the store sends both and
//! verifies the appliances' certificates against that CA, after checking
//! that it is the fleet's CA (in the database, or `DATA_DIR/ca/`).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::enroll::ca::{pem_fingerprint, CaError, ServerCa};

#[derive(Debug, thiserror::Error)]
pub enum StoreTlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} exists; move it away first (or give --cert/--key other names): a store's key is never overwritten")]
    Exists(PathBuf),
    #[error("{path}: {why}")]
    Bad { path: PathBuf, why: String },
    #[error("{path} is readable by group or others (mode {mode:o}): `chmod 600 {path}`")]
    KeyMode { path: PathBuf, mode: u32 },
    #[error("{path} was made by another CA (fingerprint {got}); this fleet's CA is {want}: make a new one with `levee store cert HOST` on a server of this fleet")]
    OtherCa {
        path: PathBuf,
        got: String,
        want: String,
    },
    #[error(transparent)]
    Ca(#[from] CaError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreTlsError + '_ {
    move |source| StoreTlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A store's certificate and key, as files hold them.
pub struct StoreCert {
    /// The store's certificate, PEM.
    pub cert_pem: String,
    /// The CA's certificate, PEM (the second in the file).
    pub ca_pem: String,
    pub key_pem: String,
}

/// Makes a store certificate for `hosts` (DNS names or IP addresses the
/// appliances use in their `urls:`), writes the chain to `cert` and the
/// key to `key` (mode 0600 from its creation). Refuses to overwrite either.
pub fn issue(
    ca: &ServerCa,
    hosts: &[String],
    cert: &Path,
    key: &Path,
) -> Result<(), StoreTlsError> {
    for p in [cert, key] {
        if p.exists() {
            return Err(StoreTlsError::Exists(p.to_path_buf()));
        }
    }
    let (cert_pem, key_pem) = ca.server_cert_names(hosts)?;
    let mut k = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(key)
        .map_err(io(key))?;
    k.write_all(key_pem.as_bytes()).map_err(io(key))?;
    k.sync_all().map_err(io(key))?;
    let chain = format!("{}{}", cert_pem, ca.pem());
    let mut c = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(cert)
        .map_err(io(cert))?;
    c.write_all(chain.as_bytes()).map_err(io(cert))?;
    c.sync_all().map_err(io(cert))?;
    Ok(())
}

/// Reads what [`issue`] wrote and checks it: two certificates, a key
/// readable by its owner only, and the CA is `fleet_ca` (PEM).
pub fn load(cert: &Path, key: &Path, fleet_ca: &str) -> Result<StoreCert, StoreTlsError> {
    let text = std::fs::read_to_string(cert).map_err(io(cert))?;
    let bad = |why: &str| StoreTlsError::Bad {
        path: cert.to_path_buf(),
        why: why.to_string(),
    };
    let blocks = pem::parse_many(&text).map_err(|e| bad(&format!("not PEM: {e}")))?;
    let certs: Vec<String> = blocks
        .iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(pem::encode)
        .collect();
    let [cert_pem, ca_pem] = certs.as_slice() else {
        return Err(bad(&format!(
            "{} certificate(s); expected the store's and the CA's, as `levee store cert` writes them",
            certs.len()
        )));
    };
    let got = pem_fingerprint(ca_pem).ok_or_else(|| bad("the CA certificate does not parse"))?;
    let want = pem_fingerprint(fleet_ca).ok_or_else(|| bad("the fleet's CA does not parse"))?;
    if got != want {
        return Err(StoreTlsError::OtherCa {
            path: cert.to_path_buf(),
            got,
            want,
        });
    }
    let meta = std::fs::metadata(key).map_err(io(key))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(StoreTlsError::KeyMode {
            path: key.to_path_buf(),
            mode,
        });
    }
    let key_pem = std::fs::read_to_string(key).map_err(io(key))?;
    Ok(StoreCert {
        cert_pem: cert_pem.clone(),
        ca_pem: ca_pem.clone(),
        key_pem,
    })
}

/// The server configuration for a loaded certificate (mutual TLS: the
/// appliances' certificates, verified against the CA).
pub fn server_config(c: &StoreCert) -> anyhow::Result<rustls::ServerConfig> {
    Ok(crate::enroll::https::tls_config_pem(
        &c.ca_pem,
        &c.cert_pem,
        &c.key_pem,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_files_load_and_wrong_ones_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ServerCa::open_or_create(&dir.path().join("ca")).expect("ca");
        let (cert, key) = (dir.path().join("s.crt"), dir.path().join("s.key"));
        issue(
            &ca,
            &["store.example".into(), "10.0.0.5".into()],
            &cert,
            &key,
        )
        .expect("issue");
        let mode = std::fs::metadata(&key).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let loaded = load(&cert, &key, ca.pem()).expect("load");
        assert!(server_config(&loaded).is_ok());
        // Never overwritten.
        assert!(matches!(
            issue(&ca, &["x".into()], &cert, &dir.path().join("k2")),
            Err(StoreTlsError::Exists(_))
        ));
        // Another fleet's CA.
        let other = ServerCa::open_or_create(&dir.path().join("other")).expect("ca");
        let e = load(&cert, &key, other.pem()).err().expect("refused");
        assert!(e.to_string().contains("another CA"), "{e}");
        // A key others can read.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = load(&cert, &key, ca.pem()).err().expect("refused");
        assert!(e.to_string().contains("chmod 600"), "{e}");
        // Only the store's certificate, no chain.
        std::fs::write(&cert, loaded.cert_pem).expect("write");
        let e = load(&cert, &key, ca.pem()).err().expect("refused");
        assert!(e.to_string().contains("1 certificate(s)"), "{e}");
    }
}
