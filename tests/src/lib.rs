//! Harness for Levee's boot and end-to-end tests.
//!
//! Each test builds its own world: a network namespace with a bridge and tap
//! devices ([`net::TestNet`]), `levee serve` running inside it as the only
//! DHCP/TFTP/HTTP server ([`server::LeveeServer`]), and QEMU machines booting
//! from it ([`vm::Vm`]). Everything is torn down when the handles drop, and
//! when the test is killed ([`guard`]). Logs (server output, serial
//! consoles) stream to `target/test-logs/<test>/` ([`log_dir`]) as they are
//! written, and are printed when a test fails. Each test has one deadline
//! ([`deadline`]) that all its waits share.
//!
//! Tools are never optional: a missing one fails the test with the package
//! to install, because a skipped boot test proves nothing.

pub mod assets;
pub mod guard;
pub mod http;
pub mod image;
pub mod net;
pub mod release;
pub mod s3;
pub mod samba;
pub mod server;
pub mod vm;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
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

/// An exclusive lock on a file, held while it lives: shares caches (the
/// image, the test guest) between parallel test processes. std's
/// `File::lock` (flock on Linux) is the one lock helper of the harness.
pub struct FileLock {
    _file: std::fs::File,
}

impl FileLock {
    pub fn acquire(path: &Path) -> anyhow::Result<FileLock> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("open {}", path.display()))?;
        f.lock()
            .with_context(|| format!("lock {}", path.display()))?;
        Ok(FileLock { _file: f })
    }
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

/// Polls `check` until it returns `Some`, `timeout` passes or the test's
/// [`deadline`] does, whichever is first; the error names `what` it waited
/// for. The guest signals readiness; we never sleep for a fixed time instead.
pub fn wait_until<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    let own = start + timeout;
    let test = deadline();
    loop {
        if let Some(v) = check()? {
            return Ok(v);
        }
        let now = Instant::now();
        if now >= test {
            bail!(
                "the test's deadline ({} s after it started) passed after {:.0} s waiting for {what}",
                test_deadline().as_secs(),
                start.elapsed().as_secs_f64()
            );
        }
        if now >= own {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// How long a test may run in all: 900 s (or what [`set_test_deadline`]
/// chose), or `LEVEE_TEST_DEADLINE_SECS`. `.config/nextest.toml`
/// terminates a test 60 s after this, so a test that overruns fails on its
/// own first and prints its logs.
pub fn test_deadline() -> Duration {
    std::env::var("LEVEE_TEST_DEADLINE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .or_else(|| OWN_DEADLINE.get().copied())
        .unwrap_or(Duration::from_secs(900))
}

static OWN_DEADLINE: OnceLock<Duration> = OnceLock::new();

/// A test's own deadline, set before its first wait: only for the update
/// tests, one of which installs the base disk the others wait for before
/// each boots its scenario under TCG (two to four boots);
/// `.config/nextest.toml` gives them the same plus 60 s.
pub fn set_test_deadline(d: Duration) {
    let _ = OWN_DEADLINE.set(d);
}

/// The instant this test must be done by: its process's start (nextest runs
/// one test per process) plus [`test_deadline`]. Every wait is cut there.
pub fn deadline() -> Instant {
    static DEADLINE: OnceLock<Instant> = OnceLock::new();
    *DEADLINE.get_or_init(|| {
        let age = process_age().unwrap_or(Duration::ZERO);
        Instant::now() + test_deadline().saturating_sub(age)
    })
}

/// Time since this process started, from /proc (field 22 of stat is the
/// start in clock ticks after boot).
fn process_age() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let start: f64 = stat
        .rsplit_once(") ")?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks > 0.0).then(|| Duration::from_secs_f64((uptime - start / ticks).max(0.0)))
}

/// The running test's name, safe for paths (libtest names the test's
/// thread after it: `module::test`); the process name outside a test.
pub fn test_name() -> String {
    let thread = std::thread::current();
    let name = match thread.name() {
        Some(n) if n != "main" => n.to_string(),
        _ => std::env::args()
            .next()
            .and_then(|a| {
                Path::new(&a)
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| "test".into()),
    };
    name.replace("::", ".")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `target/test-logs/<test>/`: where this test's servers and VMs write their
/// logs as they run, so a test killed at its deadline still leaves them.
/// Emptied when a test process first asks for it.
pub fn log_dir() -> PathBuf {
    static CLEARED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    let dir = target_dir().join("test-logs").join(test_name());
    let mut cleared = CLEARED.lock().unwrap_or_else(|p| p.into_inner());
    if !cleared.contains(&dir) {
        let _ = std::fs::remove_dir_all(&dir);
        cleared.push(dir.clone());
    }
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// A new file in [`log_dir`] named `stem.log`, or `stem-2.log`, ... when
/// the test already has one (two servers, two VMs with one MAC).
pub fn log_file(stem: &str) -> PathBuf {
    let dir = log_dir();
    let mut path = dir.join(format!("{stem}.log"));
    let mut n = 2;
    while path.exists() {
        path = dir.join(format!("{stem}-{n}.log"));
        n += 1;
    }
    path
}

/// QEMU's accelerator: TCG, since KVM on these machines cannot boot a normal
/// guest. `LEVEE_QEMU_ACCEL=kvm` opts in where it works.
pub fn qemu_accel() -> String {
    std::env::var("LEVEE_QEMU_ACCEL").unwrap_or_else(|_| "tcg".into())
}
