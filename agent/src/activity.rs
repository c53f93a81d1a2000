//! Work that the reboot into an update must wait for, across processes.
//!
//! The daemon's own scheduled jobs run on its job thread (`JobGate`); a
//! backup, restore, prune or repair started from the command line is
//! another process. Those commands hold a shared `flock` on
//! [`LOCK_PATH`] while they run; the daemon takes it exclusively, without
//! waiting, before it reboots into an update, and keeps it until the
//! reboot, so a command started meanwhile waits instead of being cut. The
//! kernel drops the lock of a process that dies, so nothing goes stale.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

/// On the appliance's tmpfs: gone at every boot.
pub const LOCK_PATH: &str = "/run/levee/activity.lock";

/// A held lock (shared for a command, exclusive for the reboot).
#[derive(Debug)]
pub struct Held {
    _file: File,
}

/// The directory must exist: stage 1 makes `/run/levee` on every boot of
/// an appliance, so a command run on another host locks nothing there.
fn open(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
}

fn flock(f: &File, op: libc::c_int) -> std::io::Result<bool> {
    loop {
        // SAFETY: flock(2) on a descriptor this function's caller owns.
        if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(false),
            _ => return Err(e),
        }
    }
}

/// For a command that must not be cut by an update's reboot: the shared
/// lock, held until the value drops. If the daemon is about to reboot,
/// `waiting` is called once and this waits (the reboot ends the process).
pub fn hold(path: &Path, waiting: impl FnOnce()) -> std::io::Result<Held> {
    let file = open(path)?;
    if !flock(&file, libc::LOCK_SH | libc::LOCK_NB)? {
        waiting();
        flock(&file, libc::LOCK_SH)?;
    }
    Ok(Held { _file: file })
}

/// For the reboot: the exclusive lock if no command holds the shared one
/// (`None`: something runs, try again later).
pub fn quiet(path: &Path) -> std::io::Result<Option<Held>> {
    let file = open(path)?;
    Ok(flock(&file, libc::LOCK_EX | libc::LOCK_NB)?.then_some(Held { _file: file }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_command_holds_the_reboot_back_and_the_reboot_holds_commands() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("activity.lock");
        let restore = hold(&path, || panic!("nothing reboots")).unwrap();
        let backup = hold(&path, || panic!("nothing reboots")).unwrap();
        assert!(quiet(&path).unwrap().is_none(), "two commands run");
        drop(restore);
        assert!(quiet(&path).unwrap().is_none(), "one command runs");
        drop(backup);
        let reboot = quiet(&path).unwrap().expect("nothing runs");
        assert!(
            hold(&dir.path().join("no-such-dir/activity.lock"), || {}).is_err(),
            "off the appliance there is no lock to hold"
        );
        // A command started now waits for the reboot.
        let (tx, rx) = std::sync::mpsc::channel();
        let p = path.clone();
        let t = std::thread::spawn(move || {
            let waited = std::cell::Cell::new(false);
            let h = hold(&p, || waited.set(true)).unwrap();
            tx.send(waited.get()).unwrap();
            drop(h);
        });
        assert!(rx
            .recv_timeout(std::time::Duration::from_millis(300))
            .is_err());
        drop(reboot);
        assert!(rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap());
        t.join().unwrap();
    }
}
