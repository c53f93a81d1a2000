//! The appliance image built by `levee image build` once per `./dev/test`
//! run (`levee-test-image`, before the tests start) into a shared,
//! content-addressed directory that the tests only read. Used by
//! tests/image.rs, tests/install.rs and the e2e tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub use crate::FileLock;
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

/// Names the shared image directory for a `./dev/test` run; set by
/// `dev/test` after `levee-test-image` assembled it.
pub const IMAGE_ENV: &str = "LEVEE_TEST_IMAGE";

/// The content-addressed store of assembled images: each in
/// `images/<sha256 of its image.json>`, complete before it appears there
/// (built aside, renamed into place) and never written again.
pub fn images_dir() -> PathBuf {
    work_dir().join("images")
}

/// Assembles the image once: a build into a scratch directory, then a
/// rename to its content address (an identical image already there is
/// kept). Used by `levee-test-image` (once per `./dev/test` run) and by a
/// test process started outside `dev/test`.
pub fn assemble() -> anyhow::Result<(PathBuf, serde_json::Value, Duration)> {
    let dir = work_dir();
    let images = images_dir();
    std::fs::create_dir_all(&images)?;
    let _lock = FileLock::acquire(&dir.join("build.lock"))?;
    let scratch = tempfile::Builder::new()
        .prefix(".building-")
        .tempdir_in(&images)?;
    let out = scratch.path().join("out");
    let (image, took) = levee_build(&out, &dir.join("cache"), &dir.join("appliance.lock"))?;
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(std::fs::read(out.join("image.json"))?))
    };
    let dest = images.join(&digest);
    if !dest.join("image.json").exists() {
        std::fs::rename(&out, &dest)
            .with_context(|| format!("rename {} to {}", out.display(), dest.display()))?;
    }
    prune(&images, &dest);
    Ok((dest, image, took))
}

/// Keeps the newest few images (a bench or a second worktree may still use
/// a recent one); older ones only fill the disk.
fn prune(images: &Path, keep: &Path) {
    const KEEP: usize = 3;
    let Ok(entries) = std::fs::read_dir(images) else {
        return;
    };
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    found.sort();
    found.reverse();
    for (_, old) in found.into_iter().skip(KEEP) {
        if old != keep {
            let _ = std::fs::remove_dir_all(old);
        }
    }
}

/// The image shared by this run's tests, read-only: the one `dev/test`
/// assembled (named by `LEVEE_TEST_IMAGE`), or, for a test binary run by
/// hand, one assembled by this process on first use.
pub fn image() -> anyhow::Result<&'static (PathBuf, serde_json::Value)> {
    static IMAGE: OnceLock<Result<(PathBuf, serde_json::Value), String>> = OnceLock::new();
    let r = IMAGE.get_or_init(|| {
        if let Some(dir) = std::env::var_os(IMAGE_ENV) {
            let dir = PathBuf::from(dir);
            let json = std::fs::read(dir.join("image.json")).map_err(|e| {
                format!(
                    "{IMAGE_ENV}={}: no image.json ({e}); dev/test assembles it with levee-test-image",
                    dir.display()
                )
            })?;
            let image = serde_json::from_slice(&json).map_err(|e| e.to_string())?;
            return Ok((dir, image));
        }
        let (dir, image, took) = assemble().map_err(|e| format!("{e:#}"))?;
        eprintln!(
            "image assembled by this test process in {:.1} s: {} (dev/test assembles it once per run)",
            took.as_secs_f64(),
            dir.display()
        );
        Ok((dir, image))
    });
    r.as_ref().map_err(|e| anyhow::anyhow!("{e}"))
}
