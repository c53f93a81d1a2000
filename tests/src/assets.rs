//! The test guest: Debian's kernel plus a busybox initramfs that reports to
//! the server (built by `tests/assets/build-test-initramfs.sh`, once per
//! target directory, under a file lock so parallel tests share it).

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;

use crate::{require_tool, run, target_dir, workspace_root};

pub struct TestGuest {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// Builds the test guest if it is not there yet.
pub fn test_guest() -> anyhow::Result<TestGuest> {
    let dir = target_dir().join("test-assets").join("guest");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let _lock = crate::FileLock::acquire(&dir.join(".lock"))?;
    let guest = TestGuest {
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
    };
    // Built by this very script, or built again: a guest from an older
    // script (say, one that reported without a token) would fail the tests
    // for the wrong reason.
    let script = workspace_root().join("tests/assets/build-test-initramfs.sh");
    let wanted =
        std::fs::read(&script).with_context(|| format!("cannot read {}", script.display()))?;
    let stamp = dir.join("built-by.sh");
    let current = std::fs::read(&stamp).ok().as_deref() == Some(wanted.as_slice());
    if !current || !guest.kernel.exists() || !guest.initrd.exists() {
        for (tool, pkg) in [
            ("busybox", "busybox-static"),
            ("depmod", "kmod"),
            ("cpio", "cpio"),
        ] {
            require_tool(tool, pkg)?;
        }
        run(Command::new("bash").arg(&script).arg(&dir)).context("building the test guest")?;
        std::fs::write(&stamp, &wanted)
            .with_context(|| format!("cannot write {}", stamp.display()))?;
    }
    Ok(guest)
}
