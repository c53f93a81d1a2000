//! The boot loader: GRUB 2 for both firmware types, with A/B boot counting.
//!
//! **Why GRUB and not systemd-boot.** Appliances boot BIOS and UEFI alike
//! (older 1U boxes and many VMs are BIOS-only). systemd-boot is UEFI-only,
//! so it would need a second loader and a second boot-counting scheme for
//! BIOS. GRUB runs on both from one GPT disk with one shared `grub.cfg`
//! and one environment block, measured on this machine under SeaBIOS and
//! OVMF (BOOT-NOTES.md, "Disks, A/B slots and boot counting"). Its cost:
//! GRUB script has no arithmetic, so tries are counted with an if-chain, and
//! the environment block must be rewritten in place (grubenv.rs).
//!
//! What goes where:
//! - UEFI: `grub-mkimage -O x86_64-efi` -> `EFI/BOOT/BOOTX64.EFI` on the ESP
//!   (the removable-media path: no NVRAM boot entry is needed, so a
//!   replaced mainboard still boots).
//! - BIOS: `grub-mkimage -O i386-pc` (with `biosdisk`) -> the 1 MiB BIOS
//!   boot partition; `boot.img`'s first 440 bytes go into the MBR (the
//!   disk signature, the protective partition entry and 0x55AA stay), with
//!   core.img's LBA at 0x5C, `90 90` at 0x66 (skip the boot-drive check),
//!   and core.img's second-sector LBA in its own blocklist at 0x1F4.
//! - Both images embed the modules they need and an early config that finds
//!   the ESP by its FAT volume id and sets `prefix=($root)/boot/grub`, so
//!   both read the one `/boot/grub/grub.cfg` below.
//! - Per slot on the ESP: `/levee/<slot>/vmlinuz`, `initrd.img`, and
//!   `slot.cfg`, which sets the slot's kernel command line (root partition
//!   label, the squashfs sha256 stage 1 checks, `levee.slot=`, the image's
//!   arguments, `panic=10`). An update rewrites only the inactive slot's
//!   directory and the environment block.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{sys, InstallError};

/// Modules embedded in both images (the ones missing from a platform's
/// directory are left out).
const MODULES: &[&str] = &[
    "part_gpt",
    "fat",
    "ext2",
    "search",
    "search_fs_uuid",
    "normal",
    "configfile",
    "linux",
    "echo",
    "test",
    "loadenv",
    "sleep",
    "reboot",
    "serial",
    "terminal",
    "gzio",
];
const BIOS_MODULES: &[&str] = &["biosdisk"];
const EFI_MODULES: &[&str] = &["efi_gop", "all_video"];

/// The shared GRUB configuration (one for all slots and both firmware
/// types). Boot counting, RAUC style:
/// 1. safe defaults, then `load_env` from the primary copy, else the backup
///    (a zeroed or torn block makes `load_env` fail);
/// 2. the first slot in ORDER with `_OK=1` and tries left is chosen and its
///    try count lowered through an if-chain (no arithmetic in GRUB script);
/// 3. `save_env` to both copies before the kernel starts, so a crash, hang
///    (`panic=10` brings it back) or power cut has used that try;
/// 4. a slot whose kernel or initrd does not load costs its try and reboots
///    at once, so the next boot falls back;
/// 5. when no slot has tries left, the first good slot boots anyway: a
///    box that cannot commit (no server) must still run.
pub const GRUB_CFG: &str = r#"# Levee boot loader configuration, written by `levee-agent install`.
# Boot counting: see docs/INSTALL.md. Do not edit by hand.
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=0

set ORDER="A B"
set A_OK=0
set A_TRY=0
set B_OK=0
set B_TRY=0
set levee_env=""
if load_env --file /levee/grubenv ORDER A_OK A_TRY B_OK B_TRY; then
  set levee_env=primary
elif load_env --file /levee/grubenv.bak ORDER A_OK A_TRY B_OK B_TRY; then
  set levee_env=backup
  echo "levee: the primary boot environment is unreadable; using the backup copy"
else
  set A_OK=1
  echo "levee: no readable boot environment; booting slot A"
fi

set SLOT=""
for S in $ORDER; do
  if [ -z "$SLOT" ]; then
    if [ "$S" = A ]; then
      if [ "$A_OK" = 1 ]; then
        if [ "$A_TRY" = 3 ]; then set A_TRY=2; set SLOT=A
        elif [ "$A_TRY" = 2 ]; then set A_TRY=1; set SLOT=A
        elif [ "$A_TRY" = 1 ]; then set A_TRY=0; set SLOT=A
        fi
      fi
    elif [ "$S" = B ]; then
      if [ "$B_OK" = 1 ]; then
        if [ "$B_TRY" = 3 ]; then set B_TRY=2; set SLOT=B
        elif [ "$B_TRY" = 2 ]; then set B_TRY=1; set SLOT=B
        elif [ "$B_TRY" = 1 ]; then set B_TRY=0; set SLOT=B
        fi
      fi
    fi
  fi
done
if [ -z "$SLOT" ]; then
  echo "levee: no slot has boot tries left; booting the first good slot anyway"
  for S in $ORDER; do
    if [ -z "$SLOT" ]; then
      if [ "$S" = A ]; then if [ "$A_OK" = 1 ]; then set SLOT=A; fi; fi
      if [ "$S" = B ]; then if [ "$B_OK" = 1 ]; then set SLOT=B; fi; fi
    fi
  done
fi
if [ -z "$SLOT" ]; then set SLOT=A; fi

if [ -n "$levee_env" ]; then
  save_env --file /levee/grubenv ORDER A_OK A_TRY B_OK B_TRY
  save_env --file /levee/grubenv.bak ORDER A_OK A_TRY B_OK B_TRY
fi

if [ "$SLOT" = B ]; then set levee_dir=/levee/b; else set levee_dir=/levee/a; fi
echo "levee: booting slot $SLOT (ORDER=$ORDER A_OK=$A_OK A_TRY=$A_TRY B_OK=$B_OK B_TRY=$B_TRY env=$levee_env)"
set levee_cmdline=""
source $levee_dir/slot.cfg
if linux $levee_dir/vmlinuz $levee_cmdline; then
  if initrd $levee_dir/initrd.img; then
    boot
  fi
fi
echo "levee: slot $SLOT does not load; rebooting to fall back"
sleep 3
reboot
"#;

/// The early config embedded in both images.
pub fn early_cfg(esp_uuid: &str) -> String {
    format!("search --no-floppy --fs-uuid --set=root {esp_uuid}\nset prefix=($root)/boot/grub\n")
}

/// A slot's `slot.cfg`. The command line must not hold quotes or
/// backslashes (it is a single-quoted GRUB word).
pub fn slot_cfg(
    slot: &str,
    rootfs_sha256: &str,
    image_cmdline: &str,
) -> Result<String, InstallError> {
    if image_cmdline.contains(['\'', '\\', '\n', '"', '$', ';']) {
        return Err(InstallError::Plan(format!(
            "the image's kernel command line holds a character GRUB would interpret: {image_cmdline:?}"
        )));
    }
    let cmdline = format!(
        "levee.root=PARTLABEL=levee-{slot} levee.sha256={rootfs_sha256} levee.slot={slot} {} panic=10",
        image_cmdline.trim()
    );
    Ok(format!(
        "set levee_cmdline='{}'\n",
        cmdline.split_whitespace().collect::<Vec<_>>().join(" ")
    ))
}

/// Patches a disk's sector 0 with boot.img so the BIOS loads core.img
/// from `core_lba` (pure, for tests).
pub fn patch_mbr(mbr: &mut [u8], boot_img: &[u8], core_lba: u64) -> Result<(), InstallError> {
    if mbr.len() != 512 || boot_img.len() != 512 {
        return Err(InstallError::Bootloader(
            "boot.img and the MBR must be 512 bytes".into(),
        ));
    }
    mbr[..0x1B8].copy_from_slice(&boot_img[..0x1B8]);
    mbr[0x5C..0x64].copy_from_slice(&core_lba.to_le_bytes());
    mbr[0x66] = 0x90;
    mbr[0x67] = 0x90;
    Ok(())
}

/// Points core.img's first-sector blocklist at its second sector.
pub fn patch_core(core: &mut [u8], core_lba: u64) -> Result<(), InstallError> {
    if core.len() < 512 {
        return Err(InstallError::Bootloader(
            "core.img is shorter than one sector".into(),
        ));
    }
    core[0x1F4..0x1FC].copy_from_slice(&(core_lba + 1).to_le_bytes());
    Ok(())
}

fn modules(dir: &Path, extra: &[&str]) -> Vec<String> {
    MODULES
        .iter()
        .chain(extra)
        .filter(|m| dir.join(format!("{m}.mod")).exists())
        .map(|m| m.to_string())
        .collect()
}

/// Where GRUB's files are and where to put them.
pub struct Target<'a> {
    /// `/usr/lib/grub` (holds `i386-pc/` and `x86_64-efi/`).
    pub grub_lib: &'a Path,
    pub disk: &'a Path,
    pub bios_part: &'a Path,
    pub bios_part_bytes: u64,
    /// LBA (512-byte sectors) where the BIOS boot partition starts.
    pub bios_lba: u64,
    /// The mounted ESP and its FAT volume id as GRUB shows it (`ABCD-1234`).
    pub esp: &'a Path,
    pub esp_uuid: &'a str,
    /// Scratch directory.
    pub work: &'a Path,
}

/// Installs GRUB for UEFI and BIOS and writes grub.cfg.
pub fn install(t: &Target<'_>) -> Result<(), InstallError> {
    let early = t.work.join("early.cfg");
    std::fs::write(&early, early_cfg(t.esp_uuid)).map_err(InstallError::io(&early, "writing"))?;
    let early_s = early.to_string_lossy().into_owned();

    // UEFI.
    let efi_dir = t.grub_lib.join("x86_64-efi");
    if !efi_dir.join("kernel.img").exists() {
        return Err(InstallError::Bootloader(format!(
            "{} is missing (package grub-efi-amd64-bin)",
            efi_dir.display()
        )));
    }
    let boot = t.esp.join("EFI/BOOT");
    std::fs::create_dir_all(&boot).map_err(InstallError::io(&boot, "creating"))?;
    let efi_out = boot.join("BOOTX64.EFI");
    let mut args: Vec<String> = ["-O", "x86_64-efi", "-d"].map(String::from).to_vec();
    args.push(efi_dir.to_string_lossy().into_owned());
    args.extend(["-p", "/boot/grub", "-c", early_s.as_str(), "-o"].map(String::from));
    args.push(efi_out.to_string_lossy().into_owned());
    args.extend(modules(&efi_dir, EFI_MODULES));
    sys::run(
        "grub-mkimage",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    )?;

    // BIOS.
    let pc_dir = t.grub_lib.join("i386-pc");
    let boot_img_path = pc_dir.join("boot.img");
    if !boot_img_path.exists() {
        return Err(InstallError::Bootloader(format!(
            "{} is missing (package grub-pc-bin)",
            boot_img_path.display()
        )));
    }
    let core_path = t.work.join("core.img");
    let mut args: Vec<String> = ["-O", "i386-pc", "-d"].map(String::from).to_vec();
    args.push(pc_dir.to_string_lossy().into_owned());
    args.extend(["-p", "/boot/grub", "-c", early_s.as_str(), "-o"].map(String::from));
    args.push(core_path.to_string_lossy().into_owned());
    args.extend(modules(&pc_dir, BIOS_MODULES));
    sys::run(
        "grub-mkimage",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    )?;
    let mut core = std::fs::read(&core_path).map_err(InstallError::io(&core_path, "reading"))?;
    if core.len() as u64 > t.bios_part_bytes {
        return Err(InstallError::Bootloader(format!(
            "core.img is {} bytes, larger than the BIOS boot partition ({} bytes)",
            core.len(),
            t.bios_part_bytes
        )));
    }
    patch_core(&mut core, t.bios_lba)?;
    let part = OpenOptions::new()
        .write(true)
        .open(t.bios_part)
        .map_err(InstallError::io(
            t.bios_part,
            "opening the BIOS boot partition",
        ))?;
    part.write_all_at(&core, 0)
        .map_err(InstallError::io(t.bios_part, "writing core.img"))?;
    part.sync_all()
        .map_err(InstallError::io(t.bios_part, "syncing"))?;

    let boot_img =
        std::fs::read(&boot_img_path).map_err(InstallError::io(&boot_img_path, "reading"))?;
    let disk = OpenOptions::new()
        .read(true)
        .write(true)
        .open(t.disk)
        .map_err(InstallError::io(t.disk, "opening the disk"))?;
    let mut mbr = [0u8; 512];
    disk.read_exact_at(&mut mbr, 0)
        .map_err(InstallError::io(t.disk, "reading the MBR"))?;
    patch_mbr(&mut mbr, &boot_img, t.bios_lba)?;
    disk.write_all_at(&mbr, 0)
        .map_err(InstallError::io(t.disk, "writing the MBR"))?;
    disk.sync_all()
        .map_err(InstallError::io(t.disk, "syncing"))?;

    // The shared configuration.
    let grub_dir = t.esp.join("boot/grub");
    std::fs::create_dir_all(&grub_dir).map_err(InstallError::io(&grub_dir, "creating"))?;
    write_synced(&grub_dir.join("grub.cfg"), GRUB_CFG.as_bytes())
}

/// Writes a whole file and syncs it.
pub(crate) fn write_synced(path: &Path, data: &[u8]) -> Result<(), InstallError> {
    let mut f = File::create(path).map_err(InstallError::io(path, "creating"))?;
    f.write_all(data)
        .map_err(InstallError::io(path, "writing"))?;
    f.sync_all().map_err(InstallError::io(path, "syncing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_mbr_and_core_per_the_recipe() {
        let boot: Vec<u8> = (0..512).map(|i| (i % 251) as u8).collect();
        let mut mbr = [0xEEu8; 512];
        patch_mbr(&mut mbr, &boot, 2048).unwrap();
        assert_eq!(&mbr[..0x5C], &boot[..0x5C]);
        assert_eq!(&mbr[0x5C..0x64], &2048u64.to_le_bytes());
        assert_eq!(&mbr[0x66..0x68], &[0x90, 0x90]);
        assert_eq!(&mbr[0x68..0x1B8], &boot[0x68..0x1B8]);
        assert!(
            mbr[0x1B8..].iter().all(|&b| b == 0xEE),
            "signature and table kept"
        );
        let mut core = vec![0u8; 4096];
        patch_core(&mut core, 2048).unwrap();
        assert_eq!(&core[0x1F4..0x1FC], &2049u64.to_le_bytes());
    }

    #[test]
    fn slot_cfg_carries_root_sum_slot_and_panic() {
        let c = slot_cfg("a", "ab12", "console=ttyS0,115200n8  net.ifnames=0").unwrap();
        assert_eq!(
            c,
            "set levee_cmdline='levee.root=PARTLABEL=levee-a levee.sha256=ab12 levee.slot=a console=ttyS0,115200n8 net.ifnames=0 panic=10'\n"
        );
        assert!(slot_cfg("a", "x", "init=/bin/sh'; reboot").is_err());
    }

    #[test]
    fn grub_cfg_counts_every_slot_down() {
        for s in ["A", "B"] {
            for (from, to) in [("3", "2"), ("2", "1"), ("1", "0")] {
                let line =
                    format!("[ \"${s}_TRY\" = {from} ]; then set {s}_TRY={to}; set SLOT={s}");
                assert!(GRUB_CFG.contains(&line), "{line}");
            }
        }
        assert!(GRUB_CFG.contains("save_env --file /levee/grubenv.bak"));
    }
}
