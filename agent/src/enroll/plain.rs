//! What the agent asks over plain HTTP (`levee.url=`): the enrollment and
//! the server's clock. Nothing here is trusted until the CA pin matches.

use levee_proto::enroll::{
    paths, EnrollmentPending, EnrollmentRequest, EnrollmentResponse, ServerTime,
};
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

/// sha256 (lowercase hex) of the DER of the first certificate in `pem`.
pub fn ca_sha256(ca_pem: &str) -> Option<String> {
    let der = pem::parse(ca_pem).ok()?;
    Some(hex::encode(Sha256::digest(der.contents())))
}

/// The CA a server sent must be the one `levee.ca=` names, before the
/// agent trusts anything it says.
pub fn check_ca(ca_pem: &str, expected_sha256: &str) -> Result<(), EnrollError> {
    let got = ca_sha256(ca_pem).unwrap_or_else(|| "(not a PEM certificate)".into());
    if got.eq_ignore_ascii_case(expected_sha256.trim()) {
        Ok(())
    } else {
        Err(EnrollError::CaMismatch {
            expected: expected_sha256.to_string(),
            got,
        })
    }
}

/// `GET {http_url}/api/v1/time`: the server's clock, Unix seconds.
pub fn server_time(http_url: &str) -> Result<i64, EnrollError> {
    let url = format!("{}{}", http_url.trim_end_matches('/'), paths::TIME);
    let client = client_builder().build().map_err(|e| transport(&url, e))?;
    let resp = client.get(&url).send().map_err(|e| transport(&url, e))?;
    if !resp.status().is_success() {
        return Err(refusal(&url, resp));
    }
    resp.json::<ServerTime>()
        .map(|t| t.unix)
        .map_err(|e| transport(&url, format!("malformed time: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_pin_is_the_sha256_of_the_der() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::default()
            .self_signed(&key)
            .unwrap();
        let pin = hex::encode(Sha256::digest(cert.der()));
        assert_eq!(ca_sha256(&cert.pem()).as_deref(), Some(pin.as_str()));
        check_ca(&cert.pem(), &pin).unwrap();
        check_ca(&cert.pem(), &pin.to_ascii_uppercase()).unwrap();
        let other = "0".repeat(64);
        let err = check_ca(&cert.pem(), &other).unwrap_err();
        assert!(matches!(err, EnrollError::CaMismatch { .. }));
        assert!(err.to_string().contains("refusing to trust"), "{err}");
        assert!(check_ca("garbage", &pin).is_err());
    }
}
