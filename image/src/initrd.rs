//! Stage 1: a busybox-static initramfs with `/init` (stage1/init.sh), the
//! listed NIC, storage and file system modules, packed by our own cpio
//! writer and compressed with zstd (the Debian kernel has RD_ZSTD).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::cpio::{self, Entry};
use crate::error::ImageError;
use crate::kernel::Kernel;
use crate::manifest::Manifest;
use crate::util;

const INIT: &str = include_str!("../stage1/init.sh");
const UDHCPC: &str = include_str!("../stage1/udhcpc.script");
/// Module options of the hardware watchdogs (`/etc/modprobe.d/`).
const WATCHDOG_CONF: &str = include_str!("../stage1/watchdog.conf");

/// Hash of stage 1's own files, for the cache key.
pub fn digest() -> String {
    util::sha256_hex(format!("{INIT}\0{UDHCPC}").as_bytes())
}

/// Writes the compressed initramfs to `out`; `scratch` is an empty
/// directory of this build.
pub fn build(
    manifest: &Manifest,
    kernel: &Kernel,
    busybox_deb: &Path,
    scratch: &Path,
    epoch: u64,
    out: &Path,
) -> Result<(), ImageError> {
    util::require("zstd", "zstd")?;
    let bb = scratch.join("busybox");
    util::run(Command::new("dpkg-deb").arg("-x").arg(busybox_deb).arg(&bb))?;
    let busybox = ["bin/busybox", "usr/bin/busybox"]
        .iter()
        .map(|p| bb.join(p))
        .find(|p| p.is_file())
        .ok_or_else(|| ImageError::Tool {
            command: format!("dpkg-deb -x {}", busybox_deb.display()),
            status: "unexpected".into(),
            stderr: "the package holds no bin/busybox".into(),
        })?;

    let mods = scratch.join("modules");
    let files = kernel.resolve(manifest, &manifest.initrd_modules)?;
    kernel.install(&files, &mods)?;

    let dir = |p: &str| Entry::Dir {
        path: p.into(),
        mode: 0o755,
    };
    let mut entries = vec![
        dir("bin"),
        dir("dev"),
        dir("etc"),
        dir("lib"),
        dir("newroot"),
        dir("proc"),
        dir("run"),
        dir("sys"),
        Entry::CharDev {
            path: "dev/console".into(),
            mode: 0o600,
            major: 5,
            minor: 1,
        },
        Entry::CharDev {
            path: "dev/null".into(),
            mode: 0o666,
            major: 1,
            minor: 3,
        },
        Entry::File {
            path: "init".into(),
            mode: 0o755,
            data: INIT.as_bytes().to_vec(),
        },
        Entry::File {
            path: "etc/udhcpc.script".into(),
            mode: 0o755,
            data: UDHCPC.as_bytes().to_vec(),
        },
        dir("etc/modprobe.d"),
        Entry::File {
            path: "etc/modprobe.d/levee-watchdog.conf".into(),
            mode: 0o644,
            data: WATCHDOG_CONF.as_bytes().to_vec(),
        },
        Entry::File {
            path: "etc/levee-modules".into(),
            mode: 0o644,
            data: manifest
                .initrd_modules
                .iter()
                .map(|m| format!("{}\n", m.name))
                .collect::<String>()
                .into_bytes(),
        },
        Entry::File {
            path: "bin/busybox".into(),
            mode: 0o755,
            data: read(&busybox)?,
        },
    ];
    for rel in util::walk(&mods.join("lib"))? {
        let path = format!("lib/{}", rel.display());
        let full = mods.join("lib").join(&rel);
        if full.is_dir() {
            entries.push(Entry::Dir { path, mode: 0o755 });
        } else {
            entries.push(Entry::File {
                path,
                mode: 0o644,
                data: read(&full)?,
            });
        }
    }
    let archive = cpio::write(entries, epoch);

    let file = std::fs::File::create(out).map_err(ImageError::io(out))?;
    let mut child = Command::new("zstd")
        .args(["-q", "-19", "-T1", "-c"])
        .stdin(Stdio::piped())
        .stdout(file)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(ImageError::io("zstd"))?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| ImageError::io("zstd")(std::io::Error::other("no stdin")))?;
    stdin.write_all(&archive).map_err(ImageError::io("zstd"))?;
    drop(stdin);
    let res = child.wait_with_output().map_err(ImageError::io("zstd"))?;
    if !res.status.success() {
        return Err(ImageError::Tool {
            command: "zstd -19".into(),
            status: res.status.to_string(),
            stderr: util::tail(&res.stderr, 10),
        });
    }
    Ok(())
}

fn read(p: &Path) -> Result<Vec<u8>, ImageError> {
    std::fs::read(p).map_err(ImageError::io(p))
}
