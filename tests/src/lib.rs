//! Harness for Levee's boot and end-to-end tests.
//!
//! Each test builds its own world: a network namespace with a bridge and tap
//! devices ([`net::TestNet`]), `levee serve` running inside it as the only
//! DHCP/TFTP/HTTP server ([`server::LeveeServer`]), and QEMU machines booting
//! from it ([`vm::Vm`]). Everything is torn down when the handles drop, and
//! logs (server output, serial consoles) are printed only when a test fails.
//!
//! Tools are never optional: a missing one fails the test with the package
//! to install, because a skipped boot test proves nothing.

pub mod assets;
pub mod http;
pub mod image;
pub mod net;
pub mod server;
pub mod vm;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The workspace root (this crate lives in `tests/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Cargo's target directory, honouring `CARGO_TARGET_DIR`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// A workspace binary built by `cargo build` (the README's test command
/// builds them before running the tests).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    for profile in ["debug", "release"] {
        let path = target_dir().join(profile).join(name);
        if path.exists() {
            return Ok(path);
        }
    }
    bail!(
        "{name} is not built in {}: run `cargo build --workspace --bins` first (the README's test command does)",
        target_dir().display()
    )
}

/// Fails with the Debian package to install when a tool is missing.
pub fn require_tool(tool: &str, package: &str) -> anyhow::Result<()> {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join(tool).is_file()))
        .unwrap_or(false);
    if !found {
        bail!("`{tool}` is missing: install it with `apt-get install {package}` (the README's test command does)");
    }
    Ok(())
}

/// Runs a command to completion and fails with its output if it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `check` until it returns `Some` or `timeout` passes. The guest
/// signals readiness; we never sleep for a fixed time instead.
pub fn wait_until<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check()? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// QEMU's accelerator: TCG, since KVM on these machines cannot boot a normal
/// guest. `LEVEE_QEMU_ACCEL=kvm` opts in where it works.
pub fn qemu_accel() -> String {
    std::env::var("LEVEE_QEMU_ACCEL").unwrap_or_else(|_| "tcg".into())
}
