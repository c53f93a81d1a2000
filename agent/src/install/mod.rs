//! Install to disk: pick the disk, partition it (GPT: BIOS boot, ESP, slot
//! A, slot B, data), write the image into slot A, install GRUB with A/B
//! boot counting for BIOS and UEFI, carry the state directory over onto the
//! data partition, and leave everything unmounted and synced. Then the
//! caller reboots ([`reboot`]); once the installed system is healthy (its
//! first heartbeat got through) it calls [`commit_boot`].
//!
//! Layout: layout.rs. Boot loader and why GRUB: bootloader.rs. Boot
//! counting variables: grubenv.rs. Ops' view: docs/INSTALL.md.
//!
//! ```no_run
//! use levee_agent::install::{install, InstallOptions, InstallPlan};
//! let plan: InstallPlan = serde_json::from_str(&std::fs::read_to_string("plan.json")?)?;
//! let report = install(&plan, &InstallOptions::default(), &mut |line| eprintln!("{line}"))?;
//! eprintln!("installed {} on {}", report.image_version, report.disk);
//! levee_agent::install::reboot()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod bootloader;
pub mod disk;
mod error;
pub mod fetch;
pub mod grubenv;
pub mod layout;
pub mod plan;
mod sys;

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

pub use disk::{Content, Disk};
pub use error::InstallError;
pub use grubenv::GrubEnv;
pub use layout::Layout;
pub use plan::{Artifact, InstallImage, InstallPlan};

/// How to install (the plan says what).
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// Install on this disk instead of choosing one (operators, tests). The
    /// same safety rules apply: only a blank disk, or a Levee one for a
    /// reinstall.
    pub disk: Option<PathBuf>,
    /// The live state directory whose files go onto the data partition.
    pub state_dir: PathBuf,
    /// Choose the disk and the layout, check the plan, write nothing.
    pub dry_run: bool,
    /// `/sys/block`.
    pub sys_block: PathBuf,
    /// `/usr/lib/grub`.
    pub grub_lib: PathBuf,
    /// Scratch space and mount points (on tmpfs).
    pub work_dir: PathBuf,
}

impl Default for InstallOptions {
    fn default() -> Self {
        InstallOptions {
            disk: None,
            state_dir: PathBuf::from("/var/lib/levee"),
            dry_run: false,
            sys_block: PathBuf::from("/sys/block"),
            grub_lib: PathBuf::from("/usr/lib/grub"),
            work_dir: PathBuf::from("/run/levee/install"),
        }
    }
}

/// Seconds each step took.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Durations {
    pub select_disk: f64,
    pub partition: f64,
    pub rootfs: f64,
    pub boot: f64,
    pub state: f64,
    pub total: f64,
}

/// What [`install`] did.
#[derive(Debug, Clone, Serialize)]
pub struct InstallReport {
    /// The disk, e.g. `/dev/vda`.
    pub disk: String,
    pub disk_bytes: u64,
    /// Whether the disk held a Levee install that was wiped.
    pub wiped_levee_install: bool,
    /// The slot written (`a`).
    pub slot: String,
    pub image_version: String,
    pub rootfs_sha256: String,
    pub layout: Layout,
    /// The ESP's FAT volume id (what GRUB searches for).
    pub esp_uuid: String,
    /// Files carried over from the state directory.
    pub state_files: u64,
    pub dry_run: bool,
    pub durations: Durations,
}

fn secs(t: Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 1000.0).round() / 1000.0
}

/// Checks a plan before anything is touched; returns its image.
fn check_plan(plan: &InstallPlan) -> Result<&InstallImage, InstallError> {
    if !plan.install {
        return Err(InstallError::Plan(
            "the plan does not ask for an install".into(),
        ));
    }
    let image = plan
        .image
        .as_ref()
        .ok_or_else(|| InstallError::Plan("the plan names no image".into()))?;
    for (what, a) in [
        ("kernel", &image.kernel),
        ("initrd", &image.initrd),
        ("rootfs", &image.rootfs),
    ] {
        if a.sha256.len() != 64 || !a.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(InstallError::Plan(format!(
                "the {what}'s sha256 {:?} is not 64 hex digits",
                a.sha256
            )));
        }
        if a.size == 0 || a.url.is_empty() {
            return Err(InstallError::Plan(format!("the {what} has no URL or size")));
        }
    }
    if image.rootfs.size % 4096 != 0 {
        return Err(InstallError::Plan(format!(
            "rootfs size {} is not a multiple of 4 KiB (stage 1 checks the padded squashfs)",
            image.rootfs.size
        )));
    }
    bootloader::slot_cfg("a", &image.rootfs.sha256, &image.cmdline)?;
    Ok(image)
}

/// Chooses the disk (or checks the operator's) and what it holds.
fn select_disk(plan: &InstallPlan, opts: &InstallOptions) -> Result<(Disk, Content), InstallError> {
    let min = plan.min_disk_bytes.max(Layout::min_disk_bytes());
    let (disks, named) = match &opts.disk {
        Some(d) => (vec![disk::named(&opts.sys_block, d)?], true),
        None => (disk::list(&opts.sys_block)?, false),
    };
    let probed: Vec<disk::Probed> = disks
        .into_iter()
        .map(|d| {
            let content = if d.size == 0 {
                Ok(Content::Blank)
            } else {
                disk::probe(&d).map_err(|e| e.to_string())
            };
            disk::Probed { disk: d, content }
        })
        .collect();
    disk::choose(&probed, min, plan.reinstall, named)
}

/// Installs `plan`'s image; `log` receives one line per step.
pub fn install(
    plan: &InstallPlan,
    opts: &InstallOptions,
    log: &mut dyn FnMut(&str),
) -> Result<InstallReport, InstallError> {
    let total = Instant::now();
    let image = check_plan(plan)?;
    let t = Instant::now();
    let (disk, content) = select_disk(plan, opts)?;
    let layout = Layout::for_disk(disk.size, image.rootfs.size)?;
    let mut durations = Durations {
        select_disk: secs(t),
        ..Durations::default()
    };
    let wiped = content == Content::Levee;
    log(&format!(
        "install: image {} onto {} ({}, {}){}",
        image.version,
        disk.dev.display(),
        disk::human(disk.size),
        if wiped {
            "a Levee install, reinstalling"
        } else {
            "blank"
        },
        if opts.dry_run {
            " [dry run: nothing is written]"
        } else {
            ""
        }
    ));
    log(&format!(
        "install: layout: BIOS boot 1 MiB, ESP {} MiB, slots A/B {} MiB each, data {} MiB",
        layout.esp.size_mib, layout.a.size_mib, layout.data.size_mib
    ));
    let mut report = InstallReport {
        disk: disk.dev.display().to_string(),
        disk_bytes: disk.size,
        wiped_levee_install: wiped,
        slot: "a".into(),
        image_version: image.version.clone(),
        rootfs_sha256: image.rootfs.sha256.to_ascii_lowercase(),
        layout,
        esp_uuid: String::new(),
        state_files: 0,
        dry_run: opts.dry_run,
        durations: Durations::default(),
    };
    if opts.dry_run {
        durations.total = secs(total);
        report.durations = durations;
        return Ok(report);
    }

    let work = &opts.work_dir;
    std::fs::create_dir_all(work).map_err(InstallError::io(work, "creating"))?;
    // The state first, into RAM: on a reinstall the old data partition may
    // be what is mounted there.
    let snapshot = work.join("state");
    let _ = std::fs::remove_dir_all(&snapshot);
    std::fs::create_dir_all(&snapshot).map_err(InstallError::io(&snapshot, "creating"))?;
    if opts.state_dir.is_dir() {
        copy_tree(&opts.state_dir, &snapshot)?;
    }
    if wiped {
        unmount_disk(&disk)?;
    }

    // Partitions and file systems.
    let t = Instant::now();
    sfdisk(&disk.dev, &layout.sfdisk_script())?;
    let parts: Vec<PathBuf> = (1..=5).map(|n| sys::partition_path(&disk.dev, n)).collect();
    let _ = sys::run("udevadm", &["settle", "--timeout=10"]);
    sys::wait_for(&parts, Duration::from_secs(15))?;
    let (bios, esp, slot_a, slot_b, data) = (&parts[0], &parts[1], &parts[2], &parts[3], &parts[4]);
    let volume_id: u32 = rand::random();
    let esp_uuid = format!("{:04X}-{:04X}", volume_id >> 16, volume_id & 0xFFFF);
    sys::run(
        "mkfs.vfat",
        &[
            "-F",
            "32",
            "-n",
            "LEVEE-ESP",
            "-i",
            &format!("{volume_id:08X}"),
            &esp.to_string_lossy(),
        ],
    )?;
    sys::run(
        "mkfs.ext4",
        &["-F", "-q", "-L", "levee-data", &data.to_string_lossy()],
    )?;
    zero_start(bios, layout.bios.size_mib << 20)?;
    zero_start(slot_b, 1 << 20)?;
    durations.partition = secs(t);
    log(&format!(
        "install: partitioned {} (ESP volume id {esp_uuid}) in {:.1} s",
        disk.dev.display(),
        durations.partition
    ));

    // Slot A.
    let t = Instant::now();
    write_rootfs(&image.rootfs, slot_a)?;
    durations.rootfs = secs(t);
    log(&format!(
        "install: slot A written and re-read: {} bytes, sha256 {} ({:.1} s)",
        image.rootfs.size, report.rootfs_sha256, durations.rootfs
    ));

    // The ESP: kernel and initrd of slot A, environment, GRUB.
    let t = Instant::now();
    let esp_mount = sys::Mount::new(esp, &work.join("esp"), "vfat")?;
    let slot_dir = esp_mount.path.join("levee/a");
    std::fs::create_dir_all(&slot_dir).map_err(InstallError::io(&slot_dir, "creating"))?;
    let b_dir = esp_mount.path.join("levee/b");
    std::fs::create_dir_all(&b_dir).map_err(InstallError::io(&b_dir, "creating"))?;
    for (a, name) in [(&image.kernel, "vmlinuz"), (&image.initrd, "initrd.img")] {
        let path = slot_dir.join(name);
        let mut f = File::create(&path).map_err(InstallError::io(&path, "creating"))?;
        fetch::copy_verified(a, name, &mut f)?;
        f.sync_all().map_err(InstallError::io(&path, "syncing"))?;
    }
    bootloader::write_synced(
        &slot_dir.join("slot.cfg"),
        bootloader::slot_cfg("a", &report.rootfs_sha256, &image.cmdline)?.as_bytes(),
    )?;
    grubenv::write(&esp_mount.path, &GrubEnv::fresh())?;
    bootloader::install(&bootloader::Target {
        grub_lib: &opts.grub_lib,
        disk: &disk.dev,
        bios_part: bios,
        bios_part_bytes: layout.bios.size_mib << 20,
        bios_lba: layout.bios.start_mib * 2048,
        esp: &esp_mount.path,
        esp_uuid: &esp_uuid,
        work,
    })?;
    esp_mount.unmount()?;
    durations.boot = secs(t);
    log(&format!(
        "install: GRUB installed for BIOS and UEFI, slot A kernel and initrd on the ESP ({:.1} s)",
        durations.boot
    ));

    // The state onto the data partition.
    let t = Instant::now();
    let data_mount = sys::Mount::new(data, &work.join("data"), "ext4")?;
    report.state_files = copy_tree(&snapshot, &data_mount.path)?;
    data_mount.unmount()?;
    let _ = std::fs::remove_dir_all(&snapshot);
    sys::sync();
    durations.state = secs(t);
    log(&format!(
        "install: {} state files from {} onto the data partition",
        report.state_files,
        opts.state_dir.display()
    ));
    durations.total = secs(total);
    report.esp_uuid = esp_uuid;
    report.durations = durations;
    log(&format!(
        "install: done: {} on {} slot a in {:.1} s; reboot to start it",
        report.image_version, report.disk, report.durations.total
    ));
    Ok(report)
}

/// Writes the GPT with sfdisk (wiping old signatures on the disk and in
/// the new partitions).
fn sfdisk(disk: &Path, script: &str) -> Result<(), InstallError> {
    let command = format!("sfdisk {}", disk.display());
    let fail = |detail: String| InstallError::Command {
        command: command.clone(),
        detail,
    };
    let mut child = Command::new("sfdisk")
        .args(["--quiet", "--wipe", "always", "--wipe-partitions", "always"])
        .arg(disk)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot start it: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| fail(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Zeroes the first `len` bytes of a device.
fn zero_start(dev: &Path, len: u64) -> Result<(), InstallError> {
    let f = OpenOptions::new()
        .write(true)
        .open(dev)
        .map_err(InstallError::io(dev, "opening"))?;
    f.write_all_at(&vec![0u8; len as usize], 0)
        .map_err(InstallError::io(dev, "zeroing"))?;
    f.sync_all().map_err(InstallError::io(dev, "syncing"))
}

/// Streams the root into its slot, then re-reads it from the device and
/// checks the sum and the squashfs size stage 1 will hash.
fn write_rootfs(rootfs: &Artifact, slot: &Path) -> Result<(), InstallError> {
    let mut f = OpenOptions::new()
        .write(true)
        .open(slot)
        .map_err(InstallError::io(slot, "opening the slot"))?;
    fetch::copy_verified(rootfs, "rootfs.squashfs", &mut f)?;
    f.sync_all()
        .map_err(InstallError::io(slot, "syncing the slot"))?;
    drop(f);
    let mut f = File::open(slot).map_err(InstallError::io(slot, "re-opening the slot"))?;
    // Drop the cached pages so the re-read comes from the disk.
    // SAFETY: posix_fadvise on a descriptor we own; advisory only.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    let mut sb = [0u8; 48];
    f.read_exact(&mut sb)
        .map_err(InstallError::io(slot, "reading the superblock"))?;
    if &sb[..4] != b"hsqs" {
        return Err(InstallError::Checksum {
            what: format!("slot {}", slot.display()),
            expected: "a squashfs".into(),
            got: "no squashfs magic".into(),
        });
    }
    let used = u64::from_le_bytes(sb[40..48].try_into().unwrap_or([0; 8]));
    let padded = used.div_ceil(4096) * 4096;
    if padded != rootfs.size {
        return Err(InstallError::Plan(format!(
            "the squashfs uses {used} bytes ({padded} padded to 4 KiB) but the artifact is {} bytes: stage 1 would hash a different length",
            rootfs.size
        )));
    }
    f.seek(SeekFrom::Start(0))
        .map_err(InstallError::io(slot, "seeking"))?;
    let got = fetch::sha256_prefix(&mut f, rootfs.size)
        .map_err(InstallError::io(slot, "re-reading the slot"))?;
    if !got.eq_ignore_ascii_case(&rootfs.sha256) {
        return Err(InstallError::Checksum {
            what: format!("slot {} re-read", slot.display()),
            expected: rootfs.sha256.clone(),
            got,
        });
    }
    Ok(())
}

/// Unmounts every mounted partition of `disk` (a reinstall from a network
/// boot may have the old data partition mounted).
fn unmount_disk(disk: &Disk) -> Result<(), InstallError> {
    let mounts = std::fs::read_to_string("/proc/mounts")
        .map_err(InstallError::io("/proc/mounts", "reading"))?;
    let prefix = disk.dev.to_string_lossy().into_owned();
    let mut targets: Vec<String> = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (src, dst) = (f.next()?, f.next()?);
            let real = std::fs::canonicalize(src).ok()?;
            let real = real.to_string_lossy();
            // The disk itself or one of its partitions (vda3, nvme0n1p3),
            // not another disk sharing the prefix (vdaa).
            let rest = real.strip_prefix(prefix.as_str())?;
            let rest = rest.strip_prefix('p').unwrap_or(rest);
            rest.chars()
                .all(|c| c.is_ascii_digit())
                .then(|| dst.replace("\\040", " "))
        })
        .collect();
    // Deepest first.
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for t in targets {
        sys::run("umount", &[&t])?;
    }
    Ok(())
}

/// Copies a tree (files, directories, symlinks; permissions kept); returns
/// the number of files and links copied.
pub fn copy_tree(from: &Path, to: &Path) -> Result<u64, InstallError> {
    let mut n = 0;
    let entries = std::fs::read_dir(from).map_err(InstallError::io(from, "listing"))?;
    for e in entries {
        let e = e.map_err(InstallError::io(from, "listing"))?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let meta = std::fs::symlink_metadata(&src).map_err(InstallError::io(&src, "stat"))?;
        if meta.is_dir() {
            std::fs::create_dir_all(&dst).map_err(InstallError::io(&dst, "creating"))?;
            std::fs::set_permissions(&dst, meta.permissions())
                .map_err(InstallError::io(&dst, "setting permissions"))?;
            n += copy_tree(&src, &dst)?;
        } else if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&src).map_err(InstallError::io(&src, "readlink"))?;
            let _ = std::fs::remove_file(&dst);
            std::os::unix::fs::symlink(target, &dst).map_err(InstallError::io(&dst, "symlink"))?;
            n += 1;
        } else if meta.is_file() {
            std::fs::copy(&src, &dst).map_err(InstallError::io(&dst, "copying"))?;
            File::open(&dst)
                .and_then(|f| f.sync_all())
                .map_err(InstallError::io(&dst, "syncing"))?;
            n += 1;
        }
    }
    Ok(n)
}

/// What [`commit_boot`] found and did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum CommitOutcome {
    /// Not booted from a disk slot (no `levee.slot=`): nothing to commit.
    NetworkBoot,
    /// The slot was already good with all its tries.
    AlreadyCommitted { slot: String },
    /// The slot is now marked good.
    Committed {
        slot: String,
        tries_left_before: String,
    },
}

/// Marks the running slot good in the boot environment (both copies,
/// rewritten in place, fsynced), mounting the ESP by its partition label
/// if it is not mounted. A no-op on a network boot. The daemon calls it
/// after its first successful heartbeat.
pub fn commit_boot() -> Result<CommitOutcome, InstallError> {
    let cmdline = std::fs::read_to_string("/proc/cmdline")
        .map_err(InstallError::io("/proc/cmdline", "reading"))?;
    let Some(slot) = sys::cmdline_slot(&cmdline) else {
        return Ok(CommitOutcome::NetworkBoot);
    };
    if slot != "a" && slot != "b" {
        return Err(InstallError::Plan(format!(
            "levee.slot={slot} is neither a nor b"
        )));
    }
    with_esp(&slot, |esp| {
        let (mut env, _) = grubenv::read(esp)?;
        let key = slot.to_ascii_uppercase();
        let before = env.get(&format!("{key}_TRY")).unwrap_or("").to_string();
        if env.get(&format!("{key}_OK")) == Some("1") && before == grubenv::TRIES.to_string() {
            return Ok(CommitOutcome::AlreadyCommitted { slot: slot.clone() });
        }
        env.commit(&slot);
        grubenv::write(esp, &env)?;
        Ok(CommitOutcome::Committed {
            slot: slot.clone(),
            tries_left_before: before,
        })
    })
}

/// The boot slots as the running system sees them.
#[derive(Debug, Clone, Serialize)]
pub struct SlotStatus {
    /// `levee.slot=` of this boot (`None`: a network boot).
    pub running: Option<String>,
    /// The ESP's device, if there is one.
    pub esp: Option<String>,
    pub env: Option<GrubEnv>,
    /// Which copy the environment was read from.
    pub copy: Option<grubenv::EnvCopy>,
}

/// Reads the running slot and the boot environment.
pub fn slot_status() -> Result<SlotStatus, InstallError> {
    let cmdline = std::fs::read_to_string("/proc/cmdline")
        .map_err(InstallError::io("/proc/cmdline", "reading"))?;
    let running = sys::cmdline_slot(&cmdline);
    let slot = running.clone().unwrap_or_else(|| "a".into());
    let Some(dev) = find_esp(&slot) else {
        return Ok(SlotStatus {
            running,
            esp: None,
            env: None,
            copy: None,
        });
    };
    let (env, copy) = with_esp(&slot, grubenv::read)?;
    Ok(SlotStatus {
        running,
        esp: Some(dev.display().to_string()),
        env: Some(env),
        copy: Some(copy),
    })
}

/// The ESP (`levee-esp`) device, preferring the one on the disk that holds
/// `levee-<slot>`.
fn find_esp(slot: &str) -> Option<PathBuf> {
    find_partition("levee-esp", slot)
}

/// The device of the partition labelled `label` (from `/sys`, so no udev
/// links are needed), preferring the one on the disk that holds
/// `levee-<slot>` (the running slot: an update writes the other slot of
/// the same disk).
pub fn find_partition(label: &str, slot: &str) -> Option<PathBuf> {
    let mut found = Vec::new();
    let mut slot_disk = None;
    for e in std::fs::read_dir("/sys/class/block").ok()?.flatten() {
        let uevent = std::fs::read_to_string(e.path().join("uevent")).unwrap_or_default();
        let field = |k: &str| {
            uevent
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(str::to_string)
        };
        let (Some(name), Some(dev)) = (field("PARTNAME="), field("DEVNAME=")) else {
            continue;
        };
        let parent = std::fs::canonicalize(e.path())
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf));
        if name == format!("levee-{slot}") {
            slot_disk = parent.clone();
        }
        if name == label {
            found.push((PathBuf::from("/dev").join(dev), parent));
        }
    }
    found.sort();
    found
        .iter()
        .find(|(_, p)| slot_disk.is_some() && *p == slot_disk)
        .or(found.first())
        .map(|(d, _)| d.clone())
}

/// Runs `f` on the ESP's mount point, mounting it (and unmounting after)
/// if needed.
pub fn with_esp<T>(
    slot: &str,
    f: impl FnOnce(&Path) -> Result<T, InstallError>,
) -> Result<T, InstallError> {
    let dev = find_esp(slot).ok_or_else(|| InstallError::Env {
        path: PathBuf::from("/dev/disk/by-partlabel/levee-esp"),
        reason: "no partition labelled levee-esp".into(),
    })?;
    if let Some(mp) = sys::mount_point_of(&dev) {
        return f(&mp);
    }
    let m = sys::Mount::new(&dev, Path::new("/run/levee/esp"), "vfat")?;
    let r = f(&m.path);
    m.unmount()?;
    r
}

/// Reboots the machine: through systemd when it runs, else directly (after
/// a sync). Returns only if both fail.
pub fn reboot() -> Result<(), InstallError> {
    sys::sync();
    if Command::new("systemctl")
        .arg("reboot")
        .status()
        .is_ok_and(|s| s.success())
    {
        return Ok(());
    }
    // SAFETY: reboot(2) with a valid command; we are root and have synced.
    let r = unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    Err(InstallError::Command {
        command: "reboot(2)".into(),
        detail: format!("returned {r}: {}", std::io::Error::last_os_error()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> InstallPlan {
        let a = |n: &str| Artifact {
            url: format!("http://server/{n}"),
            sha256: "ab".repeat(32),
            size: 8192,
        };
        InstallPlan {
            install: true,
            reinstall: false,
            min_disk_bytes: 0,
            image: Some(InstallImage {
                version: "v1".into(),
                kernel: a("vmlinuz"),
                initrd: a("initrd.img"),
                rootfs: a("rootfs.squashfs"),
                cmdline: "console=ttyS0".into(),
            }),
        }
    }

    #[test]
    fn plan_json_has_the_agreed_field_names() {
        let v = serde_json::to_value(plan()).unwrap();
        for k in ["install", "reinstall", "min_disk_bytes", "image"] {
            assert!(v.get(k).is_some(), "{k}");
        }
        for k in ["version", "kernel", "initrd", "rootfs", "cmdline"] {
            assert!(v["image"].get(k).is_some(), "{k}");
        }
        for k in ["url", "sha256", "size"] {
            assert!(v["image"]["kernel"].get(k).is_some(), "{k}");
        }
        let back: InstallPlan = serde_json::from_value(v).unwrap();
        assert_eq!(back, plan());
    }

    #[test]
    fn bad_plans_are_refused_before_any_disk_is_looked_at() {
        let mut p = plan();
        p.install = false;
        assert!(check_plan(&p)
            .unwrap_err()
            .to_string()
            .contains("does not ask"));
        let mut p = plan();
        p.image = None;
        assert!(check_plan(&p).is_err());
        let mut p = plan();
        if let Some(i) = p.image.as_mut() {
            i.rootfs.sha256 = "xyz".into();
        }
        assert!(check_plan(&p).unwrap_err().to_string().contains("64 hex"));
        let mut p = plan();
        if let Some(i) = p.image.as_mut() {
            i.rootfs.size = 4097;
        }
        assert!(check_plan(&p).unwrap_err().to_string().contains("4 KiB"));
    }

    #[test]
    fn copies_state_trees() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(a.path().join("tls")).unwrap();
        std::fs::write(a.path().join("tls/key.pem"), b"k").unwrap();
        std::fs::write(a.path().join("config.json"), b"{}").unwrap();
        std::os::unix::fs::symlink("config.json", a.path().join("current")).unwrap();
        assert_eq!(copy_tree(a.path(), b.path()).unwrap(), 3);
        assert_eq!(std::fs::read(b.path().join("tls/key.pem")).unwrap(), b"k");
        assert_eq!(
            std::fs::read_link(b.path().join("current")).unwrap(),
            Path::new("config.json")
        );
    }

    #[test]
    fn reads_the_slot_from_the_command_line() {
        assert_eq!(
            sys::cmdline_slot("levee.root=PARTLABEL=levee-b levee.slot=b panic=10\n"),
            Some("b".into())
        );
        assert_eq!(sys::cmdline_slot("levee.root=http://x/r"), None);
    }
}
