//! Everything a test starts dies with the test, however the test ends.
//!
//! Three layers, because each alone has a hole:
//! - [`spawn`] puts each child (QEMU, `levee serve`, dnsmasq, ...) in its own
//!   process group, so the harness kills the child and whatever it forked
//!   with one `kill(-pgid)`;
//! - and gives it `PR_SET_PDEATHSIG` = SIGKILL, so the kernel kills it when
//!   the test's thread dies, even by SIGKILL (which runs no `Drop`);
//! - a guard process, started on first use in its own process group (out of
//!   reach of nextest's group kill), holds the read end of a pipe and the
//!   list of process groups and network namespaces the test made. When the
//!   test process dies for any reason the pipe closes, and the guard kills
//!   those groups (grandchildren included, which PDEATHSIG does not reach)
//!   and deletes those namespaces. It is a shell loop so no extra binary has
//!   to be built first.
//!
//! A namespace left behind anyway (the guard itself SIGKILLed) is removed by
//! [`sweep_stale_netns`] on the next run.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use anyhow::Context;

/// The guard's loop: records what to clean up until stdin closes, then
/// cleans up. Ignores the signals nextest sends to the test's group.
const GUARD_SCRIPT: &str = r#"
trap '' TERM INT HUP
groups=' '
nets=' '
while read -r op arg; do
  case "$op" in
    group) groups="$groups$arg " ;;
    ungroup) groups=$(printf '%s' "$groups" | sed "s/ $arg / /") ;;
    netns) nets="$nets$arg " ;;
    unnetns) nets=$(printf '%s' "$nets" | sed "s/ $arg / /") ;;
  esac
done
# procps kill: dash's builtin takes neither `--` nor a negative pid.
for g in $groups; do /bin/kill -s KILL -- "-$g" 2>/dev/null; done
for n in $nets; do
  for p in $(ip netns pids "$n" 2>/dev/null); do /bin/kill -s KILL "$p" 2>/dev/null; done
  ip netns del "$n" 2>/dev/null
done
exit 0
"#;

struct Guard {
    stdin: Mutex<ChildStdin>,
}

fn guard() -> anyhow::Result<&'static Guard> {
    static GUARD: OnceLock<Result<Guard, String>> = OnceLock::new();
    GUARD
        .get_or_init(|| {
            let mut cmd = Command::new("sh");
            cmd.arg("-c")
                .arg(GUARD_SCRIPT)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            // SAFETY: setpgid is async-signal-safe; it only moves the child
            // out of the test's process group.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::setpgid(0, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let mut child = cmd
                .spawn()
                .map_err(|e| format!("cannot start the test's guard (sh): {e}"))?;
            let stdin = child.stdin.take().ok_or("guard has no stdin")?;
            // The guard outlives us by design; its exit is reaped by init.
            std::mem::forget(child);
            Ok(Guard {
                stdin: Mutex::new(stdin),
            })
        })
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

fn tell(line: &str) -> anyhow::Result<()> {
    let g = guard()?;
    let mut stdin = g.stdin.lock().unwrap_or_else(|p| p.into_inner());
    writeln!(stdin, "{line}").context("telling the test's guard")?;
    stdin.flush().context("telling the test's guard")
}

/// Spawns `cmd` in its own process group with PDEATHSIG, and registers the
/// group with the guard. Stop it with [`kill`].
pub fn spawn(cmd: &mut Command) -> anyhow::Result<Child> {
    guard()?;
    // SAFETY: setpgid and prctl are async-signal-safe syscalls.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() == 1 {
                return Err(std::io::Error::other("test process exited"));
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    tell(&format!("group {}", child.id()))?;
    Ok(child)
}

/// Kills `child`'s whole process group, reaps the child and tells the guard
/// the group is gone (so a reused pgid is never killed later).
pub fn kill(child: &mut Child) {
    let pid = child.id() as i32;
    // SAFETY: kill(2) on the process group this harness created.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    let _ = child.wait();
    let _ = tell(&format!("ungroup {pid}"));
}

/// Registers a network namespace for deletion when the test process dies.
pub fn own_netns(name: &str) -> anyhow::Result<()> {
    tell(&format!("netns {name}"))
}

/// The namespace was deleted by its owner.
pub fn disown_netns(name: &str) {
    let _ = tell(&format!("unnetns {name}"));
}

/// Kills every process in a namespace and deletes it.
pub fn delete_netns(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                // SAFETY: plain kill(2) on a pid that lives in our namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    let _ = Command::new("ip").args(["netns", "del", name]).status();
}

/// Namespace names this harness makes: `levee-<test>-<pid>-<n>`, the pid
/// being the test process that owns it.
pub const NETNS_PREFIX: &str = "levee-";

/// Deletes namespaces whose owning test process is gone: left-overs of an
/// earlier run whose guard could not clean up.
pub fn sweep_stale_netns() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if let Some(owner) = netns_owner(name) {
            if !std::path::Path::new(&format!("/proc/{owner}")).exists() {
                eprintln!("removing network namespace {name} left by an earlier run");
                delete_netns(name);
            }
        }
    }
}

/// The owning pid in a name made by this harness (`...-<pid>-<n>`, or
/// `...-<pid>-<n>-h<m>` for a second host).
fn netns_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NETNS_PREFIX)?;
    let parts: Vec<&str> = rest.split('-').collect();
    let tail = match parts.last()? {
        p if p.starts_with('h') => &parts[..parts.len() - 1],
        _ => &parts[..],
    };
    if tail.len() < 2 {
        return None;
    }
    tail[tail.len() - 2].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::netns_owner;

    #[test]
    fn owner_is_read_from_the_name() {
        assert_eq!(netns_owner("levee-pxe-bios-1234-0"), Some(1234));
        assert_eq!(netns_owner("levee-pxe-bios-1234-0-h2"), Some(1234));
        assert_eq!(netns_owner("other-1234-0"), None);
        assert_eq!(netns_owner("levee-x"), None);
    }
}
