//! The slot switch: the boot environment changes of an update as pure
//! functions of the grubenv, the slot GRUB will boot as a pure function
//! of it (mirroring `GRUB_CFG` in install/bootloader.rs), and the writes of
//! an update's files into the inactive slot and its ESP directory.
//!
//! Order of an update, so that a power cut anywhere leaves GRUB choosing a
//! complete slot (the table is in docs/UPDATES.md and in the tests below):
//! 1. [`unbootable`]: the target slot `_OK=0` (it is about to be torn);
//! 2. rootfs into the slot partition, kernel and initrd to `.part` files,
//!    all verified from disk, renamed into `levee/<slot>/`, `slot.cfg`;
//! 3. [`try_once`]: `_OK=1 _TRY=1`, first in `ORDER`.
//!
//! Each grubenv write rewrites both copies in place, one after the other
//! (install/grubenv.rs), so one copy is always whole.

use std::path::{Path, PathBuf};

use crate::install::grubenv::{self, GrubEnv};
use crate::install::InstallError;

fn key(slot: &str) -> String {
    slot.to_ascii_uppercase()
}

/// Step 1: the slot about to be written is not bootable; the running slot
/// comes first.
pub fn unbootable(env: &GrubEnv, slot: &str, running: &str) -> GrubEnv {
    let mut e = env.clone();
    e.set(&format!("{}_OK", key(slot)), "0");
    e.set(&format!("{}_TRY", key(slot)), "0");
    e.set("ORDER", &format!("{} {}", key(running), key(slot)));
    e
}

/// Step 3: the written slot gets one try and comes first; if it never
/// commits, GRUB falls back to `running` on the boot after.
pub fn try_once(env: &GrubEnv, slot: &str, running: &str) -> GrubEnv {
    let mut e = env.clone();
    e.set(&format!("{}_OK", key(slot)), "1");
    e.set(&format!("{}_TRY", key(slot)), "1");
    e.set("ORDER", &format!("{} {}", key(slot), key(running)));
    e
}

/// After a rollback, on the old slot: the failed slot is not bootable and
/// the running one is first again.
pub fn after_rollback(env: &GrubEnv, failed: &str, running: &str) -> GrubEnv {
    unbootable(env, failed, running)
}

/// The slot GRUB boots with this environment (`a` or `b`), and the
/// environment it saves before booting: the same rules as `GRUB_CFG`.
pub fn grub_choice(env: Option<&GrubEnv>) -> (String, Option<GrubEnv>) {
    let Some(env) = env else {
        return ("a".into(), None);
    };
    let order: Vec<String> = env
        .get("ORDER")
        .unwrap_or("A B")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let ok = |s: &str| env.get(&format!("{s}_OK")) == Some("1");
    let tries = |s: &str| {
        env.get(&format!("{s}_TRY"))
            .and_then(|t| t.parse::<u8>().ok())
            .filter(|t| (1..=3).contains(t))
    };
    let mut saved = env.clone();
    for s in order.iter().filter(|s| *s == "A" || *s == "B") {
        if let (true, Some(t)) = (ok(s), tries(s)) {
            saved.set(&format!("{s}_TRY"), &(t - 1).to_string());
            return (s.to_ascii_lowercase(), Some(saved));
        }
    }
    let first_ok = order
        .iter()
        .filter(|s| *s == "A" || *s == "B")
        .find(|s| ok(s))
        .map(|s| s.to_ascii_lowercase())
        .unwrap_or_else(|| "a".into());
    (first_ok, Some(saved))
}

/// Reads, changes and writes the environment on the ESP at `esp`.
pub fn rewrite(esp: &Path, f: impl FnOnce(&GrubEnv) -> GrubEnv) -> Result<(), InstallError> {
    let (env, _) = grubenv::read(esp)?;
    grubenv::write(esp, &f(&env))
}

/// `levee/<slot>/` on the ESP.
pub fn slot_dir(esp: &Path, slot: &str) -> PathBuf {
    esp.join("levee").join(slot)
}

/// Where a boot file of a slot goes.
pub fn boot_file(esp: &Path, slot: &str, name: &str) -> PathBuf {
    slot_dir(esp, slot).join(name)
}

/// Writes `slot.cfg` for the new image (after kernel and initrd are in
/// place): write to a temporary file, sync, rename.
pub fn write_slot_cfg(
    esp: &Path,
    slot: &str,
    rootfs_sha256: &str,
    image_cmdline: &str,
) -> Result<(), InstallError> {
    let cfg = crate::install::bootloader::slot_cfg(slot, rootfs_sha256, image_cmdline)?;
    let dir = slot_dir(esp, slot);
    std::fs::create_dir_all(&dir).map_err(InstallError::io(&dir, "creating"))?;
    let tmp = dir.join("slot.cfg.part");
    crate::install::bootloader::write_synced(&tmp, cfg.as_bytes())?;
    let dst = dir.join("slot.cfg");
    std::fs::rename(&tmp, &dst).map_err(InstallError::io(&dst, "renaming into"))?;
    grubenv::sync_dir(&dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The environment after GRUB booted `slot` of a fresh install and the
    /// agent committed it.
    fn committed_a() -> GrubEnv {
        let (_, e) = grub_choice(Some(&GrubEnv::fresh()));
        let mut e = e.unwrap();
        e.commit("a");
        e
    }

    #[test]
    fn choice_follows_grub_cfg() {
        assert_eq!(grub_choice(None).0, "a");
        let (s, saved) = grub_choice(Some(&GrubEnv::fresh()));
        assert_eq!((s.as_str(), saved.unwrap().get("A_TRY")), ("a", Some("2")));
        // No tries left anywhere: the first good slot anyway.
        let mut e = GrubEnv::fresh();
        e.set("A_TRY", "0");
        assert_eq!(grub_choice(Some(&e)).0, "a");
    }

    /// The power-cut table: after each step of an update (and a cut
    /// between any two), GRUB boots a slot that is complete.
    #[test]
    fn every_cut_boots_a_complete_slot() {
        let start = committed_a();
        // Cut before step 1, or during the write after it: slot a.
        assert_eq!(grub_choice(Some(&start)).0, "a");
        let s1 = unbootable(&start, "b", "a");
        assert_eq!(grub_choice(Some(&s1)).0, "a");
        // Step 3 done: b gets exactly one try...
        let s3 = try_once(&s1, "b", "a");
        let (slot, after_try) = grub_choice(Some(&s3));
        assert_eq!(slot, "b");
        let after_try = after_try.unwrap();
        assert_eq!(after_try.get("B_TRY"), Some("0"));
        // ...and without a commit the next boot is a again.
        assert_eq!(grub_choice(Some(&after_try)).0, "a");
        // With a commit, b stays.
        let mut committed = after_try.clone();
        committed.commit("b");
        assert_eq!(grub_choice(Some(&committed)).0, "b");
        assert_eq!(
            grub_choice(Some(&grub_choice(Some(&committed)).1.unwrap())).0,
            "b"
        );
        // After a rollback b is out of the picture, also once a's tries
        // run out.
        let mut rolled = after_rollback(&after_try, "b", "a");
        rolled.set("A_TRY", "0");
        assert_eq!(grub_choice(Some(&rolled)).0, "a");
    }

    #[test]
    fn environment_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("levee")).unwrap();
        grubenv::write(dir.path(), &committed_a()).unwrap();
        rewrite(dir.path(), |e| try_once(e, "b", "a")).unwrap();
        let (e, _) = grubenv::read(dir.path()).unwrap();
        assert_eq!(
            (e.get("ORDER"), e.get("B_OK"), e.get("B_TRY")),
            (Some("B A"), Some("1"), Some("1"))
        );
        write_slot_cfg(dir.path(), "b", "ab12", "quiet").unwrap();
        let cfg = std::fs::read_to_string(boot_file(dir.path(), "b", "slot.cfg")).unwrap();
        assert!(cfg.contains("levee.root=PARTLABEL=levee-b levee.sha256=ab12 levee.slot=b"));
    }
}
