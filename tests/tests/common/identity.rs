//! A real appliance identity made from inside a host of the test network,
//! as the agent makes its own: the token and CA pin from the machine's
//! boot script, a key made here, enrollment over plain HTTP, the pin
//! checked. Shared by the test binaries that need one (`#[path]` module).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{ensure, Context};
use levee_agent::enroll::{self, Attempt, Credential, NewKey, ServerInfo};
use levee_proto::enroll::EnrollmentRequest;
use levee_tests::net::{Host, SERVER_IP};

/// `GET path` from `addr` (host:port) on a new plain connection; the body.
pub fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {SERVER_IP}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    ensure!(out.starts_with("HTTP/1.1 200"), "GET {path}: {out}");
    Ok(out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}

/// Enrolls `mac` with the server's plain-HTTP listener `http` (host:port),
/// from inside `host`.
pub fn enroll_from(host: &Host, mac: &str, http: &str) -> anyhow::Result<Credential> {
    let (mac, http) = (mac.to_string(), http.to_string());
    host.thread(move || {
        let script = http_get(&http, &format!("/boot/{mac}.ipxe"))?;
        let arg = |k: &str| {
            script
                .split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .map(str::to_string)
                .with_context(|| format!("no {k} in the boot script: {script}"))
        };
        let (pin, token) = (arg("levee.ca=")?, arg("levee.token=")?);
        let key = NewKey::generate(&mac)?;
        let req = EnrollmentRequest {
            token,
            mac: mac.clone(),
            csr_pem: key.csr_pem.clone(),
            facts: Default::default(),
        };
        let url = format!("http://{http}");
        let Attempt::Enrolled(resp) = enroll::request_enrollment(&url, &req)? else {
            anyhow::bail!("the enrollment of {mac} is pending: was the machine registered?");
        };
        enroll::check_ca(&resp.ca_pem, &pin)?;
        Ok(Credential {
            key_pem: key.key_pem,
            cert_pem: resp.certificate_pem,
            ca_pem: resp.ca_pem,
            server: ServerInfo {
                http_url: url,
                https_url: resp.https_url,
                appliance_id: resp.appliance_id,
            },
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("enrolling thread panicked"))?
}
