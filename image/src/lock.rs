//! The lock file: the exact package set of an image (name, version,
//! sha256 of the .deb) plus the build's SOURCE_DATE_EPOCH. Written by the
//! first build, read by every later one, re-resolved with `--refresh-lock`.
//!
//! Format, one record a line, sorted, so it diffs well in review:
//! ```text
//! epoch 1767225600
//! kernel linux-image-6.1.0-56-amd64 6.1.192-2 <sha256>
//! stage1 busybox-static 1:1.35.0-4+deb12u1+b1 <sha256>
//! package libc6 2.36-9+deb12u10 <sha256>
//! ```

use std::path::Path;

use crate::error::ImageError;

/// One pinned package.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pin {
    pub name: String,
    pub version: String,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    pub epoch: u64,
    /// The kernel package (unpacked, not installed).
    pub kernel: Pin,
    /// busybox-static for stage 1 (unpacked, not installed).
    pub stage1: Pin,
    /// Packages installed in the root file system, sorted by name.
    pub packages: Vec<Pin>,
}

impl Lock {
    pub fn parse(path: &Path, text: &str) -> Result<Lock, ImageError> {
        let bad = |n: usize, m: &str| ImageError::Lock {
            path: path.into(),
            message: format!("line {}: {m}", n + 1),
        };
        let (mut epoch, mut kernel, mut stage1, mut packages) = (None, None, None, Vec::new());
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let f: Vec<&str> = line.split_whitespace().collect();
            match f.as_slice() {
                ["epoch", e] => {
                    epoch = Some(e.parse().map_err(|_| bad(n, "epoch is not a number"))?)
                }
                [kind @ ("kernel" | "stage1" | "package"), name, version, sha] => {
                    if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(bad(n, "sha256 is not 64 hex digits"));
                    }
                    let pin = Pin {
                        name: name.to_string(),
                        version: version.to_string(),
                        sha256: sha.to_string(),
                    };
                    match *kind {
                        "kernel" => kernel = Some(pin),
                        "stage1" => stage1 = Some(pin),
                        _ => packages.push(pin),
                    }
                }
                _ => {
                    return Err(bad(
                        n,
                        "expected `epoch N` or `kernel|stage1|package NAME VERSION SHA256`",
                    ))
                }
            }
        }
        packages.sort();
        Ok(Lock {
            epoch: epoch.ok_or_else(|| bad(0, "no `epoch` line"))?,
            kernel: kernel.ok_or_else(|| bad(0, "no `kernel` line"))?,
            stage1: stage1.ok_or_else(|| bad(0, "no `stage1` line"))?,
            packages,
        })
    }

    pub fn load(path: &Path) -> Result<Option<Lock>, ImageError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Lock::parse(path, &text).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ImageError::Io {
                path: path.into(),
                source: e,
            }),
        }
    }

    pub fn to_text(&self) -> String {
        let mut s = String::from(
            "# Levee image lock: the exact packages of the image. Written by the first\n\
             # `levee image build`; `--refresh-lock` re-resolves it from the mirror.\n",
        );
        s += &format!("epoch {}\n", self.epoch);
        let line = |kind: &str, p: &Pin| format!("{kind} {} {} {}\n", p.name, p.version, p.sha256);
        s += &line("kernel", &self.kernel);
        s += &line("stage1", &self.stage1);
        let mut pkgs = self.packages.clone();
        pkgs.sort();
        for p in &pkgs {
            s += &line("package", p);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let sha = "ab".repeat(32);
        let pin = |n: &str| Pin {
            name: n.into(),
            version: "1:2.3-4".into(),
            sha256: sha.clone(),
        };
        let lock = Lock {
            epoch: 42,
            kernel: pin("linux-image-6.1.0-1-amd64"),
            stage1: pin("busybox-static"),
            packages: vec![pin("a"), pin("b")],
        };
        let text = lock.to_text();
        assert_eq!(Lock::parse(Path::new("x.lock"), &text).unwrap(), lock);
    }

    #[test]
    fn bad_line_is_named() {
        let err = Lock::parse(Path::new("x.lock"), "epoch 1\nkernel a b c\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("x.lock") && err.contains("line 2"), "{err}");
    }
}
