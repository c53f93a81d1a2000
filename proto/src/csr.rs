//! Certificate requests as enrollment and renewal carry them, checked
//! before anything is signed: pure parsing, no I/O, so the fuzzer reaches
//! it (fuzz target `enroll_request`).
//!
//! Only what `levee-agent` makes is accepted: an ECDSA P-256 key
//! (id-ecPublicKey on prime256v1, an uncompressed point), signed with
//! ecdsa-with-SHA256. The key type is read from the key itself, not from a
//! label, and the request's signature must verify with that key, which
//! proves the sender holds the private half. Anything else (RSA, P-384, a
//! P-384 key labelled P-256, a compressed point, trailing data) is refused
//! with a message naming what is wrong.
//!
//! ```
//! use levee_proto::csr::{check_csr_pem, CsrError};
//! assert!(matches!(check_csr_pem("garbage"), Err(CsrError::Pem(_))));
//! ```

use sha2::{Digest, Sha256};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ECDSA_WITH_SHA256,
};
use x509_parser::prelude::FromDer;

/// Largest certificate request accepted, PEM text (a P-256 request is
/// about 400 bytes).
pub const MAX_CSR_PEM: usize = 8 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("the certificate request is {0} bytes; at most {MAX_CSR_PEM} are accepted")]
    TooLarge(usize),
    #[error("the certificate request is not one PEM `CERTIFICATE REQUEST` block: {0}")]
    Pem(String),
    #[error("the certificate request is not valid PKCS#10 DER: {0}")]
    Der(String),
    #[error("the certificate request's key is {0}; only ECDSA P-256 keys (what levee-agent makes) are accepted")]
    KeyType(String),
    #[error("the certificate request is signed with {0}; only ecdsa-with-SHA256 is accepted")]
    SignatureAlgorithm(String),
    #[error("the certificate request's signature does not verify with its own key")]
    Signature,
}

/// A request that passed [`check_csr_pem`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedCsr {
    /// The request, DER.
    pub der: Vec<u8>,
    /// The key's SubjectPublicKeyInfo, DER.
    pub spki_der: Vec<u8>,
    /// sha256 of `spki_der`, lowercase hex: the key's identity in the store
    /// and, shortened, on the appliance's console
    /// ([`crate::enroll::short_fingerprint`]).
    pub key_sha256: String,
}

/// Parses and checks a PEM certificate request (see the module docs).
pub fn check_csr_pem(text: &str) -> Result<CheckedCsr, CsrError> {
    if text.len() > MAX_CSR_PEM {
        return Err(CsrError::TooLarge(text.len()));
    }
    let (rest, pem) = x509_parser::pem::parse_x509_pem(text.as_bytes())
        .map_err(|e| CsrError::Pem(e.to_string()))?;
    if pem.label != "CERTIFICATE REQUEST" && pem.label != "NEW CERTIFICATE REQUEST" {
        return Err(CsrError::Pem(format!("found a `{}` block", pem.label)));
    }
    if !rest.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(CsrError::Pem("more follows the first block".into()));
    }
    check_csr_der(&pem.contents)
}

/// [`check_csr_pem`] on DER.
pub fn check_csr_der(der: &[u8]) -> Result<CheckedCsr, CsrError> {
    let (rest, csr) =
        X509CertificationRequest::from_der(der).map_err(|e| CsrError::Der(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CsrError::Der(format!(
            "{} bytes after the request",
            rest.len()
        )));
    }
    let spki = &csr.certification_request_info.subject_pki;
    if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY {
        return Err(CsrError::KeyType(format!(
            "of algorithm {}",
            spki.algorithm.algorithm.to_id_string()
        )));
    }
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    if curve.as_ref() != Some(&OID_EC_P256) {
        return Err(CsrError::KeyType(match curve {
            Some(c) => format!("on curve {}", c.to_id_string()),
            None => "on no named curve".into(),
        }));
    }
    let point: &[u8] = &spki.subject_public_key.data;
    if spki.subject_public_key.unused_bits != 0 || point.len() != 65 || point[0] != 4 {
        return Err(CsrError::KeyType(format!(
            "a {}-byte point, not an uncompressed P-256 point",
            point.len()
        )));
    }
    if csr.signature_algorithm.algorithm != OID_SIG_ECDSA_WITH_SHA256 {
        return Err(CsrError::SignatureAlgorithm(
            csr.signature_algorithm.algorithm.to_id_string(),
        ));
    }
    // ring checks that the point is on the curve, then the signature.
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, point)
        .verify(
            csr.certification_request_info.raw,
            &csr.signature_value.data,
        )
        .map_err(|_| CsrError::Signature)?;
    Ok(CheckedCsr {
        der: der.to_vec(),
        spki_der: spki.raw.to_vec(),
        key_sha256: hex::encode(Sha256::digest(spki.raw)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr(alg: &'static rcgen::SignatureAlgorithm) -> (rcgen::KeyPair, String) {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let pem = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        (key, pem)
    }

    #[test]
    fn p256_requests_pass_and_name_their_key() {
        let (key, pem) = csr(&rcgen::PKCS_ECDSA_P256_SHA256);
        let c = check_csr_pem(&pem).unwrap();
        assert_eq!(c.spki_der, key.public_key_der());
        assert_eq!(
            c.key_sha256,
            hex::encode(Sha256::digest(key.public_key_der()))
        );
    }

    #[test]
    fn other_key_types_are_refused_by_the_key_itself() {
        let (_, p384) = csr(&rcgen::PKCS_ECDSA_P384_SHA384);
        let err = check_csr_pem(&p384).unwrap_err();
        assert!(matches!(err, CsrError::KeyType(_)), "{err}");
        assert!(err.to_string().contains("1.3.132.0.34"), "{err}");
        let (_, ed) = csr(&rcgen::PKCS_ED25519);
        assert!(matches!(check_csr_pem(&ed), Err(CsrError::KeyType(_))));
    }

    #[test]
    fn a_request_whose_signature_does_not_verify_is_refused() {
        let (_, pem) = csr(&rcgen::PKCS_ECDSA_P256_SHA256);
        let mut der = x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .unwrap()
            .1
            .contents;
        // Flip a bit of the subject's key: the signature no longer matches
        // (or the point leaves the curve).
        let n = der.len();
        let i = der
            .windows(2)
            .position(|w| w == [0x00, 0x04])
            .expect("the point")
            + 10;
        assert!(i < n);
        der[i] ^= 1;
        assert!(matches!(
            check_csr_der(&der),
            Err(CsrError::Signature | CsrError::KeyType(_) | CsrError::Der(_))
        ));
    }

    #[test]
    fn garbage_and_other_blocks_are_refused() {
        assert!(matches!(check_csr_pem(""), Err(CsrError::Pem(_))));
        let (_, pem) = csr(&rcgen::PKCS_ECDSA_P256_SHA256);
        let twice = format!("{pem}{pem}");
        assert!(matches!(check_csr_pem(&twice), Err(CsrError::Pem(_))));
        let cert = pem.replace("CERTIFICATE REQUEST", "CERTIFICATE");
        assert!(matches!(check_csr_pem(&cert), Err(CsrError::Pem(_))));
        assert!(matches!(
            check_csr_pem(&"x".repeat(MAX_CSR_PEM + 1)),
            Err(CsrError::TooLarge(_))
        ));
        assert!(matches!(
            check_csr_der(&[0x30, 0x03, 1, 2, 3]),
            Err(CsrError::Der(_))
        ));
    }
}
