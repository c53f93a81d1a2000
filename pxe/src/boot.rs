//! What a boot decision is made of, and who makes it.
//!
//! The DHCP side works out *which machine* asks (MAC), *which firmware*
//! (architecture from option 93) and *which stage* (firmware PXE, iPXE, or
//! UEFI HTTP Boot). It then asks a [`BootPolicy`], implemented by the
//! provisioner from its database, whether that machine boots and where its
//! iPXE script is. Keeping the policy a trait lets tests drive the DHCP code
//! with a closure (as pixiecore's `Booter` does).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An Ethernet MAC address. Displays as `aa:bb:cc:dd:ee:ff`, the form used
/// in URLs, logs and the database.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a string is not a MAC address.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a MAC address: expected six hex pairs such as 52:54:00:12:34:56")]
pub struct ParseMacError(pub String);

impl FromStr for MacAddr {
    type Err = ParseMacError;

    /// Accepts `:` or `-` separators (or none), any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex: String = s.chars().filter(|c| *c != ':' && *c != '-').collect();
        let bad = || ParseMacError(s.to_string());
        if hex.len() != 12 || !hex.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 6];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Client firmware architecture, from DHCP option 93 (RFC 4578, IANA
/// "Processor Architecture Types").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// 0: x86 BIOS.
    Bios,
    /// 6, 7 and 9: x86/x64 UEFI (7 and 9 are both used for x64 in the wild).
    UefiX64,
    /// 16: x64 UEFI HTTP Boot.
    UefiX64Http,
    /// 11: arm64 UEFI.
    UefiArm64,
    /// 19: arm64 UEFI HTTP Boot.
    UefiArm64Http,
    /// Anything else, with its code.
    Other(u16),
}

impl Arch {
    /// Maps an option 93 code. A missing option means BIOS, as in PXE 2.1.
    pub fn from_code(code: u16) -> Arch {
        match code {
            0 => Arch::Bios,
            6 | 7 | 9 => Arch::UefiX64,
            16 => Arch::UefiX64Http,
            11 => Arch::UefiArm64,
            19 => Arch::UefiArm64Http,
            other => Arch::Other(other),
        }
    }

    /// Whether this firmware fetches its boot file over HTTP rather than TFTP.
    pub fn is_http_boot(self) -> bool {
        matches!(self, Arch::UefiX64Http | Arch::UefiArm64Http)
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Arch::Bios => f.write_str("bios"),
            Arch::UefiX64 => f.write_str("uefi-x64"),
            Arch::UefiX64Http => f.write_str("uefi-x64-http"),
            Arch::UefiArm64 => f.write_str("uefi-arm64"),
            Arch::UefiArm64Http => f.write_str("uefi-arm64-http"),
            Arch::Other(code) => write!(f, "arch-{code}"),
        }
    }
}

/// Which program is asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The firmware's own PXE client: it gets an iPXE binary.
    Firmware,
    /// iPXE (user class "iPXE" or option 175): it gets its boot script.
    Ipxe,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Firmware => "firmware",
            Stage::Ipxe => "ipxe",
        })
    }
}

/// A PXE client asking to boot, as the DHCP layer understood it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootRequest {
    pub mac: MacAddr,
    pub arch: Arch,
    pub stage: Stage,
}

/// The policy's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootDecision {
    /// Boot this machine; iPXE fetches its script from `script_url`
    /// (`http://...` or `tftp://...`).
    Boot { script_url: String },
    /// Do not answer; `reason` goes to the log so an operator sees why.
    Ignore { reason: String },
}

/// Decides whether and how a machine boots. The provisioner implements it
/// from its store; tests implement it with a closure.
pub trait BootPolicy: Send + Sync + 'static {
    fn decide(&self, request: &BootRequest) -> BootDecision;
}

impl<F> BootPolicy for F
where
    F: Fn(&BootRequest) -> BootDecision + Send + Sync + 'static,
{
    fn decide(&self, request: &BootRequest) -> BootDecision {
        self(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trips_in_any_common_spelling() {
        for s in ["52:54:00:AB:cd:01", "52-54-00-ab-cd-01", "525400abcd01"] {
            let mac: MacAddr = s.parse().unwrap();
            assert_eq!(mac.to_string(), "52:54:00:ab:cd:01");
        }
        assert!("52:54:00:ab:cd".parse::<MacAddr>().is_err());
        assert!("52:54:00:ab:cd:zz".parse::<MacAddr>().is_err());
        assert!("52:54:00:ab:cd:0é".parse::<MacAddr>().is_err());
    }

    #[test]
    fn arch_codes_map_to_firmware_families() {
        assert_eq!(Arch::from_code(0), Arch::Bios);
        assert_eq!(Arch::from_code(7), Arch::UefiX64);
        assert_eq!(Arch::from_code(9), Arch::UefiX64);
        assert!(Arch::from_code(16).is_http_boot());
        assert_eq!(Arch::from_code(11), Arch::UefiArm64);
        assert_eq!(Arch::from_code(42), Arch::Other(42));
    }
}
