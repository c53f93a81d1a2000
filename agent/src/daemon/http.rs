//! The agent's HTTP client for its status report: reqwest (rustls), the
//! project's chosen client, in its blocking form so the daemon's loop stays
//! plain threads. `levee.url` is plain HTTP by design (the listener firmware
//! and iPXE use); the mutual-TLS channel after enrollment will use the same
//! crate with a client certificate.

use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);

/// POSTs `value` as JSON to `base` + `path`, with `Authorization: Bearer
/// token` when given (a pre-enrollment report is authenticated by the boot
/// script's enrollment token); Ok(status) for 2xx.
pub(super) fn post_json<T: serde::Serialize>(
    base: &str,
    path: &str,
    value: &T,
    token: Option<&str>,
) -> Result<u16, String> {
    if !base.starts_with("http://") && !base.starts_with("https://") {
        return Err(format!("`{base}` is not an http:// URL"));
    }
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let client = crate::http_client::blocking(TIMEOUT)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let mut request = client.post(&url).json(value);
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let response = request.send().map_err(|e| format!("POST {url}: {e}"))?;
    let code = response.status().as_u16();
    if response.status().is_success() {
        Ok(code)
    } else {
        Err(format!("POST {url}: HTTP {code}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn posts_to_a_local_server() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(2).any(|w| w == b"{\"") {
                let n = s.read(&mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                .unwrap();
            String::from_utf8(got).unwrap()
        });
        let code = post_json(
            &format!("http://127.0.0.1:{port}/"),
            "/api/v1/report",
            &serde_json::json!({"mac": "x"}),
            Some("t0ken"),
        )
        .unwrap();
        assert_eq!(code, 200);
        let request = server.join().unwrap();
        assert!(request.starts_with("POST /api/v1/report "));
        assert!(
            request
                .to_lowercase()
                .contains("authorization: bearer t0ken"),
            "{request}"
        );
    }
}
