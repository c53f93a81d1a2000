//! Downloads artifacts, streaming, with sha256 and size checks.

use std::io::{Read, Write};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::plan::Artifact;
use super::InstallError;

/// Opens an artifact's URL (`http(s)://` or `file://`) for reading. A
/// request that cannot be sent (no route, connection refused or reset) or
/// a 5xx answer is retried after each of [`crate::http_client::RETRY_DELAYS`]; nothing has
/// been read yet then, so the caller's writes are unaffected.
pub fn open(url: &str) -> Result<Box<dyn Read>, InstallError> {
    open_retrying(url, &crate::http_client::RETRY_DELAYS)
}

fn open_retrying(url: &str, delays: &[Duration]) -> Result<Box<dyn Read>, InstallError> {
    crate::http_client::retrying(delays, || open_once(url), |(_, transient)| *transient).map_err(
        |((e, _), attempts)| match e {
            InstallError::Download { url, reason } if attempts > 1 => InstallError::Download {
                url,
                reason: format!("{reason} (after {attempts} attempts)"),
            },
            e => e,
        },
    )
}

/// One attempt; the flag says whether another may succeed.
fn open_once(url: &str) -> Result<Box<dyn Read>, (InstallError, bool)> {
    let fail = |reason: String| InstallError::Download {
        url: url.to_string(),
        reason,
    };
    if let Some(path) = url.strip_prefix("file://") {
        let f = std::fs::File::open(path).map_err(|e| (fail(e.to_string()), false))?;
        return Ok(Box::new(f));
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err((
            fail("not an http://, https:// or file:// URL".into()),
            false,
        ));
    }
    // A whole rootfs streams through one request.
    let client = crate::http_client::blocking(Duration::from_secs(30 * 60))
        .build()
        .map_err(|e| (fail(e.to_string()), false))?;
    let resp = client.get(url).send().map_err(|e| {
        // Not a TLS or URL problem: the network or the server may be back
        // in a moment.
        let transient = e.is_connect() || e.is_timeout() || e.is_request();
        (fail(e.to_string()), transient)
    })?;
    if !resp.status().is_success() {
        let transient = resp.status().is_server_error();
        return Err((fail(format!("HTTP {}", resp.status())), transient));
    }
    Ok(Box::new(resp))
}

/// Fetches a small document (a plan, an image.json) into memory.
pub fn fetch_small(url: &str) -> Result<Vec<u8>, InstallError> {
    let mut r = open(url)?;
    let mut buf = Vec::new();
    r.by_ref()
        .take(16 << 20)
        .read_to_end(&mut buf)
        .map_err(|e| InstallError::Download {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
    Ok(buf)
}

/// Streams `artifact` into `out`, checking its size and sha256 on the way.
/// Returns the bytes written.
pub fn copy_verified(
    artifact: &Artifact,
    what: &str,
    out: &mut dyn Write,
) -> Result<u64, InstallError> {
    let mut input = open(&artifact.url)?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = input.read(&mut buf).map_err(|e| InstallError::Download {
            url: artifact.url.clone(),
            reason: e.to_string(),
        })?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > artifact.size {
            return Err(InstallError::Download {
                url: artifact.url.clone(),
                reason: format!("longer than the expected {} bytes", artifact.size),
            });
        }
        hash.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| InstallError::Download {
                url: artifact.url.clone(),
                reason: format!("writing {what}: {e}"),
            })?;
    }
    if total != artifact.size {
        return Err(InstallError::Download {
            url: artifact.url.clone(),
            reason: format!("{total} bytes instead of {}", artifact.size),
        });
    }
    let got = hex::encode(hash.finalize());
    if !got.eq_ignore_ascii_case(&artifact.sha256) {
        return Err(InstallError::Checksum {
            what: format!("{what} from {}", artifact.url),
            expected: artifact.sha256.clone(),
            got,
        });
    }
    Ok(total)
}

/// sha256 of the first `len` bytes of `r`.
pub fn sha256_prefix(r: &mut dyn Read, len: u64) -> std::io::Result<String> {
    let mut hash = Sha256::new();
    let mut left = len;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        r.read_exact(&mut buf[..want])?;
        hash.update(&buf[..want]);
        left -= want as u64;
    }
    Ok(hex::encode(hash.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn a_server_that_is_back_after_a_moment_is_reached() {
        // A port nobody listens on yet: the first attempts are refused.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let server = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
            let (mut c, _) = l.accept().unwrap();
            let mut req = [0u8; 1024];
            let _ = std::io::Read::read(&mut c, &mut req);
            c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                .unwrap();
        });
        let url = format!("http://127.0.0.1:{port}/x");
        let mut body = String::new();
        open_retrying(&url, &[Duration::from_millis(200); 10])
            .unwrap()
            .read_to_string(&mut body)
            .unwrap();
        assert_eq!(body, "ok");
        server.join().unwrap();
    }

    #[test]
    fn gives_up_after_the_last_delay_and_says_how_often_it_tried() {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/x");
        let err = open_retrying(&url, &[Duration::from_millis(10); 2])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("after 3 attempts"), "{err}");
        // Not retried: a URL scheme we do not speak.
        let err = open_retrying("ftp://x/y", &[Duration::from_millis(10); 2])
            .err()
            .unwrap()
            .to_string();
        assert!(!err.contains("attempts"), "{err}");
    }
}
