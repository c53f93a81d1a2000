//! The GPT layout and the `sfdisk` script that writes it.
//!
//! | # | label      | type           | size |
//! |---|------------|----------------|------|
//! | 1 | levee-bios | BIOS boot      | 1 MiB (GRUB's i386-pc core.img) |
//! | 2 | levee-esp  | EFI System     | 128 MiB (64 MiB on disks < 32 GiB): FAT32, GRUB for UEFI, grub.cfg, grubenv, kernel and initrd per slot |
//! | 3 | levee-a    | Linux data     | slot A: the squashfs root, raw |
//! | 4 | levee-b    | Linux data     | slot B, same size |
//! | 5 | levee-data | Linux data     | ext4, the rest: credential, configuration, repository, journal |
//!
//! Slot size: 2 GiB on disks of 32 GiB or more (real appliances; the image
//! is 64 MiB today, so updates have 30x room to grow), 1 GiB from 8 GiB,
//! and 256 MiB below that (test disks of 1-2 GiB). The data partition must
//! keep at least 256 MiB. Everything is MiB-aligned; the first MiB holds the
//! protective MBR (with GRUB's boot.img) and the GPT.

use serde::Serialize;

use super::InstallError;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Start and size of one partition, in MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Part {
    pub start_mib: u64,
    pub size_mib: u64,
}

/// The five partitions; `data.size_mib` is what is left (informational:
/// sfdisk gives it the rest of the disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Layout {
    pub bios: Part,
    pub esp: Part,
    pub a: Part,
    pub b: Part,
    pub data: Part,
}

pub const BIOS_BOOT: &str = "21686148-6449-6E6F-744E-656564454649";
pub const ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
pub const LINUX: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

/// Smallest data partition.
pub const MIN_DATA_MIB: u64 = 256;

impl Layout {
    /// The layout for a disk of `disk_bytes` holding a root of `rootfs_bytes`.
    pub fn for_disk(disk_bytes: u64, rootfs_bytes: u64) -> Result<Layout, InstallError> {
        let esp_mib = if disk_bytes >= 32 * GIB { 128 } else { 64 };
        let slot_mib = if disk_bytes >= 32 * GIB {
            2048
        } else if disk_bytes >= 8 * GIB {
            1024
        } else {
            256
        };
        if rootfs_bytes > slot_mib * MIB {
            return Err(InstallError::Layout(format!(
                "the root file system ({} MiB) does not fit a {slot_mib} MiB slot",
                rootfs_bytes.div_ceil(MIB)
            )));
        }
        let bios = Part {
            start_mib: 1,
            size_mib: 1,
        };
        let esp = Part {
            start_mib: 2,
            size_mib: esp_mib,
        };
        let a = Part {
            start_mib: esp.start_mib + esp_mib,
            size_mib: slot_mib,
        };
        let b = Part {
            start_mib: a.start_mib + slot_mib,
            size_mib: slot_mib,
        };
        let data_start = b.start_mib + slot_mib;
        // The backup GPT takes the last MiB (33 sectors, aligned down).
        let total_mib = disk_bytes / MIB;
        let data_mib = total_mib.saturating_sub(data_start + 1);
        if data_mib < MIN_DATA_MIB {
            return Err(InstallError::Layout(format!(
                "the disk ({total_mib} MiB) leaves {data_mib} MiB for data after boot and slots ({data_start} MiB); at least {MIN_DATA_MIB} MiB are needed"
            )));
        }
        Ok(Layout {
            bios,
            esp,
            a,
            b,
            data: Part {
                start_mib: data_start,
                size_mib: data_mib,
            },
        })
    }

    /// The smallest disk any layout accepts.
    pub fn min_disk_bytes() -> u64 {
        (1 + 1 + 64 + 2 * 256 + MIN_DATA_MIB + 1) * MIB
    }

    /// The `sfdisk` input that writes this layout as a new GPT.
    pub fn sfdisk_script(&self) -> String {
        let p = |part: &Part, ty: &str, name: &str| {
            format!(
                "start={}MiB, size={}MiB, type={ty}, name=\"{name}\"\n",
                part.start_mib, part.size_mib
            )
        };
        let mut s = String::from("label: gpt\n");
        s += &p(&self.bios, BIOS_BOOT, "levee-bios");
        s += &p(&self.esp, ESP, "levee-esp");
        s += &p(&self.a, LINUX, "levee-a");
        s += &p(&self.b, LINUX, "levee-b");
        s += &format!(
            "start={}MiB, type={LINUX}, name=\"levee-data\"\n",
            self.data.start_mib
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_scale_with_the_disk() {
        let small = Layout::for_disk(2 * GIB, 60 * MIB).unwrap();
        assert_eq!((small.esp.size_mib, small.a.size_mib), (64, 256));
        assert_eq!(small.data.start_mib, 2 + 64 + 512);
        let big = Layout::for_disk(1000 * GIB, 60 * MIB).unwrap();
        assert_eq!((big.esp.size_mib, big.a.size_mib), (128, 2048));
        assert!(Layout::for_disk(Layout::min_disk_bytes(), 60 * MIB).is_ok());
        assert!(Layout::for_disk(Layout::min_disk_bytes() - MIB, 60 * MIB).is_err());
        assert!(Layout::for_disk(2 * GIB, 300 * MIB).is_err());
        let s = small.sfdisk_script();
        assert!(
            s.starts_with("label: gpt\nstart=1MiB, size=1MiB, type=21686148"),
            "{s}"
        );
        assert!(s.contains("name=\"levee-data\""));
    }
}
