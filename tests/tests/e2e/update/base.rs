//! The installed release-1 disk every update scenario starts from: built
//! once by the first update test of a run (a real PXE install from `levee
//! serve`, as an appliance in the field gets it), cached under the target
//! directory like the shared test image, and only ever read afterwards
//! (scenarios boot qcow2 overlays of it and copy its server's data).
//!
//! One base per firmware, installed under it: `target/levee-update-base/`
//! (BIOS) and `target/levee-update-base-uefi/` (OVMF), each with its own
//! lock, so the two installs can run side by side. `<root>/<key>/`,
//! complete before it appears (built in a `.building-*` directory, then
//! renamed), holds:
//! - `disk.raw`: the disk as the installer left it, release 1 in slot A,
//!   shut down cleanly by its reboot and never booted (under UEFI no
//!   OVMF variables are kept: the installer puts GRUB on the removable-
//!   media path `EFI/BOOT/BOOTX64.EFI`, so each boot starts from a fresh
//!   copy of OVMF's variables, like a replaced mainboard);
//! - `data/`: the data directory of the server that installed it, copied
//!   after the server was stopped (the appliance's enrollment, its
//!   certificate's CA, the channel with release 1 published);
//! - `offline/`: the channel's offline keys (root keys, the targets key
//!   that publishes), as `levee release keys init` wrote them;
//! - `releases/<name>/`: the image directories of release 1 and of the
//!   scenarios' releases ([`Release`], [`releases`]), each baking in
//!   `offline/root.json`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context};
use levee_tests::image::image;
use levee_tests::net::{TestNet, SERVER_IP};
use levee_tests::release::{relabel, sha256_file, Tree};
use levee_tests::server::{DhcpMode, LeveeServer};
use levee_tests::vm::{Firmware, VmBuilder};
use levee_tests::{binary, run, target_dir, wait_until, FileLock};
use sha2::Digest;

use super::{
    apply_customer, publish, wait_after, BAD_HEALTH_SECS, DISK_BYTES, PROFILE_CMDLINE, STEP,
    TEST_ARGS,
};

/// Part of the cache key: change it when what this file builds changes
/// (the customer, the disk, the releases, their command lines), since the
/// key covers the image and the server binary, not this code.
const FORMAT: &str = "levee update base 2";

/// The appliance's MAC. Its enrollment is bound to it, so every
/// scenario's machine has it too (each in its own network namespace).
pub const MAC: &str = "52:54:00:0d:00:01";

/// The releases in a base, each an image directory `releases/<name>`
/// with version `<shared image's version>-<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Installed, and published as release 1.
    V1,
    /// The next release, good.
    V2,
    /// The one after it, good.
    V3,
    /// Release 1's root file system under another version: the health
    /// check of a trial boot of it fails (after `BAD_HEALTH_SECS`).
    Unhealthy,
    /// Its `/sbin/init` hangs.
    Hangs,
}

impl Release {
    fn name(self) -> &'static str {
        match self {
            Release::V1 => "u1",
            Release::V2 => "u2",
            Release::V3 => "u3",
            Release::Unhealthy => "u2-unhealthy",
            Release::Hangs => "u2-hangs",
        }
    }
}

/// The releases a base of `firmware` makes besides release 1: the UEFI
/// test only updates to v2, so its base squashes nothing else.
fn releases(firmware: Firmware) -> &'static [Release] {
    match firmware {
        // The hanging one last: it changes the tree.
        Firmware::Bios => &[Release::V2, Release::V3, Release::Unhealthy, Release::Hangs],
        Firmware::Uefi => &[Release::V2],
    }
}

pub struct Base {
    pub dir: PathBuf,
    pub firmware: Firmware,
    base_version: String,
}

impl Base {
    pub fn disk(&self) -> PathBuf {
        self.dir.join("disk.raw")
    }

    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn targets_key(&self) -> PathBuf {
        self.dir.join("offline").join("targets.pem")
    }

    pub fn release(&self, r: Release) -> PathBuf {
        self.dir.join("releases").join(r.name())
    }

    pub fn version(&self, r: Release) -> String {
        format!("{}-{}", self.base_version, r.name())
    }
}

/// The base of `firmware` for this shared image and server binary: the
/// cached one, or one this test builds while the others wait on the lock.
pub fn get(firmware: Firmware) -> anyhow::Result<Base> {
    let t0 = Instant::now();
    let (image_dir, shared) = image()?;
    let base_version = shared["version"]
        .as_str()
        .context("image.json has no version")?
        .to_string();
    let root = target_dir().join(match firmware {
        Firmware::Bios => "levee-update-base",
        Firmware::Uefi => "levee-update-base-uefi",
    });
    std::fs::create_dir_all(&root)?;
    let base = Base {
        dir: root.join(key(image_dir)?),
        firmware,
        base_version,
    };
    if base.dir.exists() {
        eprintln!("update base: reusing {}", base.dir.display());
        return Ok(base);
    }
    let _lock = FileLock::acquire(&root.join("build.lock"))?;
    if base.dir.exists() {
        eprintln!(
            "update base: installed by another test while this one waited {:.1} s: {}",
            t0.elapsed().as_secs_f64(),
            base.dir.display()
        );
        return Ok(base);
    }
    // Only the lock's holder builds: a scratch directory found now is a
    // killed build's.
    for e in std::fs::read_dir(&root)?.flatten() {
        if e.file_name().to_string_lossy().starts_with(".building-") {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    build(&root, &base, image_dir, shared)?;
    prune(&root, &base.dir);
    eprintln!(
        "update base: release 1 installed over PXE ({firmware:?}) and cached in {:.1} s: {}",
        t0.elapsed().as_secs_f64(),
        base.dir.display()
    );
    Ok(base)
}

/// The shared image (its `image.json` names every artifact's sha256), the
/// `levee` binary (the cached data directory must be one this server
/// wrote) and [`FORMAT`].
fn key(image_dir: &Path) -> anyhow::Result<String> {
    let mut h = sha2::Sha256::new();
    h.update(FORMAT);
    h.update(std::fs::read(image_dir.join("image.json")).context("the shared image.json")?);
    h.update(sha256_file(&binary("levee")?)?);
    Ok(hex::encode(h.finalize()))
}

/// Keeps the newest two bases (another worktree's run may still use the
/// one before); older ones only fill the disk.
fn prune(root: &Path, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter(|e| e.path().is_dir())
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    found.sort();
    found.reverse();
    for (_, old) in found.into_iter().skip(2) {
        if old != keep {
            let _ = std::fs::remove_dir_all(old);
        }
    }
}

/// Server, channel keys, release 1 imported as the boot image, customer
/// `acme` following `stable`; the other releases squashed while the blank
/// machine boots over PXE under the base's firmware, installs release 1
/// and reboots (which ends QEMU); then the server stopped, and all of it
/// renamed into place.
fn build(
    root: &Path,
    base: &Base,
    image_dir: &Path,
    shared: &serde_json::Value,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let scratch = tempfile::Builder::new()
        .prefix(".building-")
        .tempdir_in(root)?;
    let out = scratch.path();
    // The unpacked tree and the machine's files are not part of the base.
    let work = tempfile::Builder::new()
        .prefix("levee-update-base-")
        .tempdir()?;
    let server = LeveeServer::new()?;
    let offline = out.join("offline");
    let offline_s = offline.to_str().context("path")?;
    server.cli(&["release", "keys", "init", "--offline-dir", offline_s])?;
    let tree = Tree::unpack(image_dir, shared, &work.path().join("tree"))?;
    tree.trust_root(&offline.join("root.json"))?;
    let cmdline = format!(
        "{} {TEST_ARGS}",
        shared["cmdline"].as_str().context("cmdline")?
    );
    let releases_dir = out.join("releases");
    let v1 = releases_dir.join(Release::V1.name());
    tree.squash(&base.version(Release::V1), &cmdline, &v1)?;
    eprintln!(
        "update base: release 1 unpacked and re-squashed in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let v1_s = v1.to_str().context("path")?;
    server.cli(&["image", "import", v1_s, "--profile", "default"])?;
    server.cli(&["profile", "set", "default", "--cmdline", PROFILE_CMDLINE])?;
    apply_customer(&server, work.path())?;
    server.cli(&["appliance", "register", "--mac", MAC, "--customer", "acme"])?;
    let net = TestNet::new(match base.firmware {
        Firmware::Bios => "e2eub",
        Firmware::Uefi => "e2eubu",
    })?;
    server.start(
        &net,
        DhcpMode::Full,
        &["--https", &format!("{SERVER_IP}:8443")],
    )?;
    publish(&server, &v1, &offline.join("targets.pem"))?;

    let squash = {
        let wanted: Vec<(Release, String)> = releases(base.firmware)
            .iter()
            .map(|r| (*r, base.version(*r)))
            .collect();
        let dir = releases_dir.clone();
        let cmdline = cmdline.clone();
        std::thread::spawn(move || make_releases(&tree, &dir, &wanted, &cmdline))
    };
    let disk = out.join("disk.raw");
    std::fs::File::create(&disk)?.set_len(DISK_BYTES)?;
    // `-no-reboot`: QEMU exits at the installer's reboot, once systemd
    // has stopped everything and unmounted the disk's file systems. So
    // the base is a clean disk with release 1 installed and never
    // booted, and each scenario's first boot is the installed system's
    // first (GRUB's try of slot A, then its commit), as in the field.
    let vm = VmBuilder {
        memory_mib: 1024,
        disks: vec![disk.clone()],
        allow_reboot: false,
        watchdog: true,
        ..VmBuilder::new(base.firmware, MAC)
    }
    .start(&net, work.path())?;
    wait_after(&vm, "rebooting into the installed system", 0)?;
    wait_until(STEP, "QEMU to exit at the installer's reboot", || {
        Ok(vm.exited().then_some(()))
    })?;
    ensure!(
        vm.console().contains("reboot: Restarting system"),
        "QEMU exited before the installer's reboot was done"
    );
    eprintln!(
        "{:>6.1} s after QEMU start: the installer's reboot ended QEMU",
        vm.started.elapsed().as_secs_f64()
    );
    squash
        .join()
        .map_err(|_| anyhow::anyhow!("the squash thread panicked"))??;
    // Stops `levee serve` (and everything else in the namespace) before
    // its data directory is copied.
    drop(net);
    run(std::process::Command::new("cp")
        .arg("-a")
        .arg(server.data_dir())
        .arg(out.join("data")))?;
    std::fs::rename(out, &base.dir)
        .with_context(|| format!("rename {} to {}", out.display(), base.dir.display()))?;
    // Renamed away: the scratch handle must not delete it.
    let _ = scratch.keep();
    Ok(())
}

/// The releases `wanted` (release and version) into `releases/<name>`,
/// in their order (a hanging one must come last: it changes the tree).
fn make_releases(
    tree: &Tree,
    releases: &Path,
    wanted: &[(Release, String)],
    cmdline: &str,
) -> anyhow::Result<()> {
    let t = Instant::now();
    let out = |r: Release| releases.join(r.name());
    for (r, version) in wanted {
        match r {
            Release::V1 => anyhow::bail!("release 1 is made before the install"),
            Release::V2 | Release::V3 => {
                tree.squash(version, cmdline, &out(*r))?;
            }
            Release::Unhealthy => {
                let health = format!("{cmdline} levee.health={BAD_HEALTH_SECS}");
                relabel(&out(Release::V1), version, &health, &out(*r))?;
            }
            Release::Hangs => {
                tree.hang_init()?;
                tree.squash(version, cmdline, &out(*r))?;
            }
        }
    }
    let names: Vec<&str> = wanted.iter().map(|(r, _)| r.name()).collect();
    eprintln!(
        "update base: releases {} made in {:.1} s",
        names.join(", "),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
