//! Which iPXE binaries the server can hand to firmware, by architecture.

use std::path::{Path, PathBuf};

use crate::boot::Arch;

/// BIOS PXE: iPXE using the firmware's UNDI driver.
pub const BIOS_BINARY: &str = "undionly.kpxe";
/// x64 UEFI: iPXE with its own drivers (fallback).
pub const EFI_X64_BINARY: &str = "ipxe.efi";
/// x64 UEFI: iPXE on the firmware's own network driver (SNP), the UEFI twin
/// of `undionly.kpxe`. Preferred: a firmware that PXE-booted has a working
/// SNP, and iPXE skips probing and re-binding the NIC with its own driver
/// (a quarter of the size, and faster to start under OVMF; docs/BENCHMARKS.md).
pub const EFI_X64_SNP_BINARY: &str = "snponly.efi";

/// The iPXE binaries present in the configured directory (Debian's `ipxe`
/// package: `/usr/lib/ipxe`). Only files that exist count, so an
/// architecture without one is answered with nothing instead of a boot file
/// that cannot be fetched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpxeBinaries {
    dir: PathBuf,
    bios: Option<&'static str>,
    efi_x64: Option<&'static str>,
}

impl IpxeBinaries {
    /// Looks for `undionly.kpxe`, `ipxe.efi` and `snponly.efi` in `dir`.
    pub fn discover(dir: &Path) -> IpxeBinaries {
        let present = |name: &str| dir.join(name).is_file();
        IpxeBinaries::with_files(dir, |name| present(name))
    }

    /// As [`discover`](Self::discover), with the presence of each file
    /// decided by `present` (tests, or binaries served from memory).
    pub fn with_files(dir: &Path, present: impl Fn(&str) -> bool) -> IpxeBinaries {
        let bios = present(BIOS_BINARY).then_some(BIOS_BINARY);
        let efi_x64 = if present(EFI_X64_SNP_BINARY) {
            Some(EFI_X64_SNP_BINARY)
        } else {
            present(EFI_X64_BINARY).then_some(EFI_X64_BINARY)
        };
        IpxeBinaries {
            dir: dir.to_path_buf(),
            bios,
            efi_x64,
        }
    }

    /// The directory searched.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file name (relative to [`dir`](Self::dir)) to boot `arch` with,
    /// or `None` when no binary for it is present.
    pub fn for_arch(&self, arch: Arch) -> Option<&'static str> {
        match arch {
            Arch::Bios => self.bios,
            Arch::UefiX64 | Arch::UefiX64Http => self.efi_x64,
            // Debian ships no arm64 iPXE; other codes are unknown to us.
            Arch::UefiArm64 | Arch::UefiArm64Http | Arch::Other(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovers_present_files_and_prefers_snponly() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(BIOS_BINARY), b"x").unwrap();
        std::fs::write(dir.path().join(EFI_X64_BINARY), b"x").unwrap();
        let bins = IpxeBinaries::discover(dir.path());
        assert_eq!(bins.for_arch(Arch::Bios), Some(BIOS_BINARY));
        assert_eq!(bins.for_arch(Arch::UefiX64), Some(EFI_X64_BINARY));
        assert_eq!(bins.for_arch(Arch::UefiArm64), None);
        std::fs::write(dir.path().join(EFI_X64_SNP_BINARY), b"x").unwrap();
        let bins = IpxeBinaries::discover(dir.path());
        assert_eq!(bins.for_arch(Arch::UefiX64Http), Some(EFI_X64_SNP_BINARY));
        let none = IpxeBinaries::discover(&dir.path().join("missing"));
        assert_eq!(none.for_arch(Arch::Bios), None);
    }
}
