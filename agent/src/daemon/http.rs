//! A tiny blocking HTTP/1.1 client for one JSON POST: `levee.url` is plain
//! HTTP by design (firmware-era listener), and a few dozen lines keep the
//! agent free of an async stack at this stage.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);

/// `http://host[:port][/base]` split into (host, port, base path).
pub(super) fn parse_url(url: &str) -> Result<(String, u16, String), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("`{url}` is not an http:// URL"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            (h.to_string(), p.parse().map_err(|_| format!("bad port in `{url}`"))?)
        }
        _ => (authority.to_string(), 80),
    };
    if host.is_empty() {
        return Err(format!("no host in `{url}`"));
    }
    Ok((host, port, path.to_string()))
}

/// The request bytes for a JSON POST.
pub(super) fn request(host: &str, port: u16, path: &str, body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: levee-agent/{}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION"),
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

/// The status code of a response's first line.
pub(super) fn status(response: &[u8]) -> Result<u16, String> {
    let line = response.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next().and_then(|c| c.parse().ok())) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => Ok(code),
        _ => Err(format!("not an HTTP response: `{}`", line.trim())),
    }
}

/// POSTs `value` as JSON to `base` + `path`; Ok(status) for 2xx.
pub(super) fn post_json<T: serde::Serialize>(base: &str, path: &str, value: &T) -> Result<u16, String> {
    let (host, port, prefix) = parse_url(base)?;
    let body = serde_json::to_vec(value).map_err(|e| e.to_string())?;
    let addrs: Vec<_> = (host.trim_matches(|c| c == '[' || c == ']'), port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    let mut last = format!("{host} has no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, TIMEOUT) {
            Ok(mut s) => {
                s.set_read_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
                s.set_write_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
                s.write_all(&request(&host, port, &format!("{prefix}{path}"), &body)).map_err(|e| e.to_string())?;
                let mut resp = Vec::new();
                // Only the status line matters; bound what we read.
                s.take(64 * 1024).read_to_end(&mut resp).map_err(|e| e.to_string())?;
                let code = status(&resp)?;
                return if (200..300).contains(&code) { Ok(code) } else { Err(format!("HTTP {code}")) };
            }
            Err(e) => last = format!("cannot connect to {addr}: {e}"),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(parse_url("http://10.0.2.2:8080").unwrap(), ("10.0.2.2".into(), 8080, "".into()));
        assert_eq!(parse_url("http://srv/levee/").unwrap(), ("srv".into(), 80, "/levee".into()));
        assert_eq!(parse_url("http://[fd00::1]:81/x").unwrap(), ("[fd00::1]".into(), 81, "/x".into()));
        assert!(parse_url("https://srv").is_err());
    }

    #[test]
    fn request_and_status() {
        let r = String::from_utf8(request("h", 80, "/api/v1/report", b"{}")).unwrap();
        assert!(r.starts_with("POST /api/v1/report HTTP/1.1\r\n") && r.contains("Content-Length: 2\r\n") && r.ends_with("\r\n\r\n{}"));
        assert_eq!(status(b"HTTP/1.1 204 No Content\r\n\r\n"), Ok(204));
        assert!(status(b"garbage").is_err());
    }

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
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").unwrap();
            String::from_utf8(got).unwrap()
        });
        let code = post_json(&format!("http://127.0.0.1:{port}"), "/api/v1/report", &serde_json::json!({"mac": "x"})).unwrap();
        assert_eq!(code, 200);
        assert!(server.join().unwrap().starts_with("POST /api/v1/report "));
    }
}
