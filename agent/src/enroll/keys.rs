//! The appliance's private key, made on the machine, and its PKCS#10
//! request. The key never leaves the box; the server signs only the public
//! half and puts the identity in the certificate itself.

use super::EnrollError;

/// A fresh ECDSA P-256 key and a certificate request for it.
pub struct NewKey {
    /// PKCS#8 PEM (`PRIVATE KEY`); never logged.
    pub key_pem: String,
    pub csr_pem: String,
    /// sha256 (hex) of the public key (SubjectPublicKeyInfo DER): what the
    /// server keeps for a pending machine.
    pub key_sha256: String,
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey")
            .field("csr_pem", &self.csr_pem)
            .finish_non_exhaustive()
    }
}

impl NewKey {
    /// Generates a key; `cn` names the request's subject (informational: the
    /// server decides the certificate's identity).
    pub fn generate(cn: &str) -> Result<NewKey, EnrollError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| EnrollError::Key(format!("cannot generate a key: {e}")))?;
        NewKey::from_key_pem(&key.serialize_pem(), cn)
    }

    /// The request for a key kept from an earlier attempt (a pending
    /// enrollment retried after the agent restarted).
    pub fn from_key_pem(key_pem: &str, cn: &str) -> Result<NewKey, EnrollError> {
        let key = rcgen::KeyPair::from_pem(key_pem)
            .map_err(|e| EnrollError::Key(format!("the kept key is not usable: {e}")))?;
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let csr_pem = params
            .serialize_request(&key)
            .and_then(|r| r.pem())
            .map_err(|e| EnrollError::Key(format!("cannot make a certificate request: {e}")))?;
        Ok(NewKey {
            key_pem: key_pem.to_string(),
            csr_pem,
            key_sha256: levee_proto::enroll::key_sha256(&key.public_key_der()),
        })
    }

    /// The short fingerprint the appliance prints on its console and ops
    /// compares with `levee appliance list` before `approve --fingerprint`.
    pub fn fingerprint(&self) -> String {
        levee_proto::enroll::short_fingerprint(&self.key_sha256)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_and_its_request() {
        let k = NewKey::generate("52:54:00:00:00:01").unwrap();
        assert!(k.key_pem.contains("BEGIN PRIVATE KEY"));
        assert!(k.csr_pem.contains("BEGIN CERTIFICATE REQUEST"));
        let again = NewKey::from_key_pem(&k.key_pem, "x").unwrap();
        assert_eq!(again.key_pem, k.key_pem);
        assert!(!format!("{k:?}").contains("PRIVATE"));
        // The fingerprint is the server's view of the same key.
        let checked = levee_proto::csr::check_csr_pem(&k.csr_pem).unwrap();
        assert_eq!(checked.key_sha256, k.key_sha256);
        assert_eq!(again.fingerprint(), k.fingerprint());
        assert_eq!(k.fingerprint().len(), 19);
    }
}
