//! The appliance image built by `levee image build`, once per test process
//! and cached across processes under the target directory (a file lock
//! shares it between parallel test binaries). Used by tests/image.rs and
//! tests/install.rs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::{binary, require_tool, target_dir, workspace_root};

/// Where this test keeps its image, cache and lock.
pub fn work_dir() -> PathBuf {
    target_dir().join("levee-image-test")
}

pub fn tools() -> anyhow::Result<()> {
    for (tool, package) in [
        ("mmdebstrap", "mmdebstrap"),
        ("mksquashfs", "squashfs-tools"),
        ("zstd", "zstd"),
        ("depmod", "kmod"),
        ("strip", "binutils"),
        ("qemu-system-x86_64", "qemu-system-x86"),
    ] {
        require_tool(tool, package)?;
    }
    Ok(())
}

/// An exclusive flock held while it lives.
pub struct FileLock {
    _file: std::fs::File,
}

impl FileLock {
    pub fn acquire(path: &Path) -> anyhow::Result<FileLock> {
        use std::os::fd::AsRawFd;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!(
                "flock {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(FileLock { _file: f })
    }
}

/// Runs `levee image build` into `out` with the given cache and lock.
pub fn levee_build(
    out: &Path,
    cache: &Path,
    lock: &Path,
) -> anyhow::Result<(serde_json::Value, Duration)> {
    tools()?;
    let start = Instant::now();
    let output = Command::new(binary("levee")?)
        .args(["image", "build", "--json", "--manifest"])
        .arg(workspace_root().join("image/appliance.yaml"))
        .arg("--out")
        .arg(out)
        .arg("--agent")
        .arg(binary("levee-agent")?)
        .arg("--cache-dir")
        .arg(cache)
        .arg("--lock")
        .arg(lock)
        .env_remove("SOURCE_DATE_EPOCH")
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run levee image build")?;
    if !output.status.success() {
        bail!("levee image build failed ({})", output.status);
    }
    let image: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("image.json on stdout")?;
    Ok((image, start.elapsed()))
}

/// The image shared by this process's tests.
pub fn image() -> anyhow::Result<&'static (PathBuf, serde_json::Value)> {
    static IMAGE: OnceLock<Result<(PathBuf, serde_json::Value), String>> = OnceLock::new();
    let r = IMAGE.get_or_init(|| {
        let dir = work_dir();
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let _lock = FileLock::acquire(&dir.join("build.lock")).map_err(|e| format!("{e:#}"))?;
        let out = dir.join("out");
        let (image, took) = levee_build(&out, &dir.join("cache"), &dir.join("appliance.lock"))
            .map_err(|e| format!("{e:#}"))?;
        eprintln!("image built in {:.1} s", took.as_secs_f64());
        Ok((out, image))
    });
    r.as_ref().map_err(|e| anyhow::anyhow!("{e}"))
}
