//! Small system helpers: running tools, mounting, partition device names.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::InstallError;

/// Runs a tool to completion; its stdout on success, else an error with
/// its stderr.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String, InstallError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| InstallError::Command {
            command: command.clone(),
            detail: format!("cannot start it: {e}"),
        })?;
    if !out.status.success() {
        return Err(InstallError::Command {
            command,
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The device node of partition `n` of `disk` (`/dev/vda` -> `/dev/vda3`,
/// `/dev/nvme0n1` -> `/dev/nvme0n1p3`).
pub(crate) fn partition_path(disk: &Path, n: u32) -> PathBuf {
    let s = disk.to_string_lossy();
    if s.ends_with(|c: char| c.is_ascii_digit()) {
        PathBuf::from(format!("{s}p{n}"))
    } else {
        PathBuf::from(format!("{s}{n}"))
    }
}

/// Waits for device nodes to appear (devtmpfs makes them once the kernel
/// has re-read the partition table).
pub(crate) fn wait_for(paths: &[PathBuf], timeout: Duration) -> Result<(), InstallError> {
    let deadline = Instant::now() + timeout;
    loop {
        if paths.iter().all(|p| p.exists()) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let missing: Vec<String> = paths
                .iter()
                .filter(|p| !p.exists())
                .map(|p| p.display().to_string())
                .collect();
            return Err(InstallError::Layout(format!(
                "partition devices did not appear: {}",
                missing.join(", ")
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Where `dev` is mounted, if it is (by `/proc/mounts`, comparing
/// canonical device paths).
pub(crate) fn mount_point_of(dev: &Path) -> Option<PathBuf> {
    let want = std::fs::canonicalize(dev).ok()?;
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (src, dst) = (f.next()?, f.next()?);
        let src = std::fs::canonicalize(src).ok()?;
        (src == want).then(|| PathBuf::from(dst.replace("\\040", " ")))
    })
}

/// A mount that is undone (and synced) when it drops.
pub(crate) struct Mount {
    pub path: PathBuf,
    active: bool,
}

impl Mount {
    pub(crate) fn new(dev: &Path, path: &Path, fstype: &str) -> Result<Mount, InstallError> {
        std::fs::create_dir_all(path).map_err(InstallError::io(path, "creating mount point"))?;
        run(
            "mount",
            &[
                "-t",
                fstype,
                &dev.to_string_lossy(),
                &path.to_string_lossy(),
            ],
        )?;
        Ok(Mount {
            path: path.to_path_buf(),
            active: true,
        })
    }

    /// Unmounts now, reporting failure.
    pub(crate) fn unmount(mut self) -> Result<(), InstallError> {
        self.active = false;
        sync();
        run("umount", &[&self.path.to_string_lossy()]).map(|_| ())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.active {
            sync();
            let _ = Command::new("umount").arg(&self.path).status();
        }
    }
}

pub(crate) fn sync() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// Reads `levee.slot=` from a kernel command line.
pub(crate) fn cmdline_slot(cmdline: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("levee.slot="))
        .map(|s| s.trim_matches('"').to_ascii_lowercase())
}
