//! Downloads artifacts, streaming, with sha256 and size checks.

use std::io::{Read, Write};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::plan::Artifact;
use super::InstallError;

/// Opens an artifact's URL (`http(s)://` or `file://`) for reading.
pub fn open(url: &str) -> Result<Box<dyn Read>, InstallError> {
    let fail = |reason: String| InstallError::Download {
        url: url.to_string(),
        reason,
    };
    if let Some(path) = url.strip_prefix("file://") {
        let f = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
        return Ok(Box::new(f));
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(fail("not an http://, https:// or file:// URL".into()));
    }
    let client = reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .timeout(Duration::from_secs(30 * 60))
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let resp = client.get(url).send().map_err(|e| fail(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(fail(format!("HTTP {}", resp.status())));
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
