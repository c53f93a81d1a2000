//! What the agent asks over plain HTTP (`levee.url=`): the enrollment.
//! Nothing here is trusted until the CA pin matches. (The server's clock
//! is not taken from here: see `timesync.rs`.)

use levee_proto::enroll::{paths, EnrollmentPending, EnrollmentRequest, EnrollmentResponse};
use sha2::{Digest, Sha256};

use super::{client_builder, refusal, transport, EnrollError};

/// The answer to one enrollment request.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    /// A certificate (not yet checked against the CA pin: [`check_ca`]).
    Enrolled(Box<EnrollmentResponse>),
    /// 202: waiting for ops to approve the machine; retry with the same key.
    Pending(EnrollmentPending),
}

/// `POST {http_url}/api/v1/enroll`.
pub fn request_enrollment(http_url: &str, req: &EnrollmentRequest) -> Result<Attempt, EnrollError> {
    let url = format!("{}{}", http_url.trim_end_matches('/'), paths::ENROLL);
    let client = client_builder().build().map_err(|e| transport(&url, e))?;
    let resp = client
        .post(&url)
        .json(req)
        .send()
        .map_err(|e| transport(&url, e))?;
    match resp.status().as_u16() {
        200 => resp
            .json::<EnrollmentResponse>()
            .map(|r| Attempt::Enrolled(Box::new(r)))
            .map_err(|e| transport(&url, format!("malformed enrollment response: {e}"))),
        202 => resp
            .json::<EnrollmentPending>()
            .map(Attempt::Pending)
            .map_err(|e| transport(&url, format!("malformed pending response: {e}"))),
        _ => Err(refusal(&url, resp)),
    }
}

/// The DER of the one certificate in `ca_pem`, which must hold exactly
/// one PEM `CERTIFICATE` block and nothing else but whitespace: a TLS
/// stack given the text trusts every certificate in it, so a second one
/// (an attacker's CA after the real one) would be trusted unpinned.
pub fn single_certificate(ca_pem: &str) -> Result<Vec<u8>, String> {
    const BEGIN: &str = "-----BEGIN ";
    let text = ca_pem.trim();
    let blocks = text.matches(BEGIN).count();
    if blocks != 1 {
        return Err(format!(
            "expected exactly one PEM certificate, found {blocks} PEM blocks"
        ));
    }
    if !text.starts_with("-----BEGIN CERTIFICATE-----") {
        return Err("text before the PEM certificate, or not a certificate".into());
    }
    if !text.ends_with("-----END CERTIFICATE-----") {
        return Err("text after the PEM certificate".into());
    }
    let block = pem::parse(text).map_err(|e| format!("not a PEM certificate: {e}"))?;
    let der = block.into_contents();
    match x509_parser::parse_x509_certificate(&der) {
        Ok(([], _)) => Ok(der),
        Ok(_) => Err("bytes after the certificate inside the PEM block".into()),
        Err(e) => Err(format!("not an X.509 certificate: {e}")),
    }
}

/// sha256 (lowercase hex) of the DER of the one certificate in `pem`
/// (`None` unless it is exactly one: see [`single_certificate`]).
pub fn ca_sha256(ca_pem: &str) -> Option<String> {
    let der = single_certificate(ca_pem).ok()?;
    Some(hex::encode(Sha256::digest(der)))
}

/// The CA a server sent must be exactly one certificate, the one
/// `levee.ca=` names, before the agent trusts anything it says.
pub fn check_ca(ca_pem: &str, expected_sha256: &str) -> Result<(), EnrollError> {
    let der = single_certificate(ca_pem).map_err(|reason| EnrollError::CaNotSingle { reason })?;
    let got = hex::encode(Sha256::digest(der));
    if got.eq_ignore_ascii_case(expected_sha256.trim()) {
        Ok(())
    } else {
        Err(EnrollError::CaMismatch {
            expected: expected_sha256.to_string(),
            got,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca(name: &str) -> rcgen::Certificate {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap()
    }

    fn pin(cert: &rcgen::Certificate) -> String {
        hex::encode(Sha256::digest(cert.der()))
    }

    #[test]
    fn the_ca_pin_is_the_sha256_of_the_der() {
        let cert = ca("real");
        let pin = pin(&cert);
        assert_eq!(ca_sha256(&cert.pem()).as_deref(), Some(pin.as_str()));
        check_ca(&cert.pem(), &pin).unwrap();
        check_ca(&cert.pem(), &pin.to_ascii_uppercase()).unwrap();
        // Surrounding whitespace is harmless.
        check_ca(&format!("\n{}\n\n", cert.pem()), &pin).unwrap();
        let other = "0".repeat(64);
        let err = check_ca(&cert.pem(), &other).unwrap_err();
        assert!(matches!(err, EnrollError::CaMismatch { .. }));
        assert!(err.to_string().contains("refusing to trust"), "{err}");
        assert!(check_ca("garbage", &pin).is_err());
    }

    #[test]
    fn an_attacker_ca_after_the_real_one_is_refused() {
        let real = ca("real");
        let attacker = ca("attacker");
        let pin = pin(&real);
        for text in [
            format!("{}{}", real.pem(), attacker.pem()),
            format!("{}\n{}", real.pem(), attacker.pem()),
            format!("{}{}", attacker.pem(), real.pem()),
        ] {
            let err = check_ca(&text, &pin).unwrap_err();
            assert!(matches!(err, EnrollError::CaNotSingle { .. }), "{err}");
            assert!(err.to_string().contains("found 2 PEM blocks"), "{err}");
            assert!(err.to_string().contains("refusing to trust"), "{err}");
            assert_eq!(ca_sha256(&text), None);
        }
    }

    #[test]
    fn junk_around_the_certificate_is_refused() {
        let real = ca("real");
        let pin = pin(&real);
        let pem = real.pem();
        let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let cases = [
            (format!("{pem}junk"), "after"),
            (format!("junk\n{pem}"), "before"),
            (format!("{pem}{key}"), "2 PEM blocks"),
            (key.clone(), "not a certificate"),
            (String::new(), "found 0"),
        ];
        for (text, why) in cases {
            let err = check_ca(&text, &pin).unwrap_err().to_string();
            assert!(err.contains(why), "{why}: {err}");
        }
        // A certificate with extra bytes inside its own block.
        let mut der = real.der().to_vec();
        der.extend_from_slice(b"trailing");
        let padded = pem::encode(&pem::Pem::new("CERTIFICATE", der));
        let err = check_ca(&padded, &pin).unwrap_err().to_string();
        assert!(err.contains("bytes after the certificate"), "{err}");
        // Not a certificate at all, under the right label.
        let fake = pem::encode(&pem::Pem::new("CERTIFICATE", b"nope".to_vec()));
        let err = check_ca(&fake, &pin).unwrap_err().to_string();
        assert!(err.contains("not an X.509 certificate"), "{err}");
    }
}
