//! What the machine says about itself in a status report.

use std::net::{Ipv4Addr, Ipv6Addr};

use std::path::Path;

use levee_proto::enroll::{DiskFact, HardwareFacts};
use levee_proto::report::StatusReport;

use super::BootArgs;

/// Where the appliance keeps its state; its file system's space is reported.
const STATE_DIR: &str = "/var/lib/levee";

pub(super) fn report(args: &BootArgs) -> StatusReport {
    let space = disk_space(STATE_DIR).or_else(|| disk_space("/"));
    StatusReport {
        mac: boot_mac(args).unwrap_or_default(),
        stage: Some("agent".into()),
        version: Some(env!("CARGO_PKG_VERSION").into()),
        boot_id: boot_id(),
        uptime_secs: std::fs::read_to_string("/proc/uptime")
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|u| u.parse().ok())),
        addresses: addresses(),
        image_version: image_version(),
        disk_free_bytes: space.map(|s| s.0),
        disk_total_bytes: space.map(|s| s.1),
        slot: args.slot.clone(),
    }
}

pub(super) fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
}

/// `IMAGE_VERSION=` of os-release, written by the image builder.
pub(super) fn image_version() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("IMAGE_VERSION="))
        .map(|v| v.trim_matches('"').to_string())
}

/// The boot interface: `BOOTIF=` when PXE gave one, else the interface of
/// the default route, else the first Ethernet port by name.
pub(super) fn boot_mac(args: &BootArgs) -> Option<String> {
    if let Some(mac) = &args.bootif {
        return Some(mac.clone());
    }
    let mac_of = |ifc: &str| {
        std::fs::read_to_string(format!("/sys/class/net/{ifc}/address"))
            .ok()
            .map(|s| s.trim().to_string())
    };
    let route = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    if let Some(ifc) = default_route_interface(&route) {
        return mac_of(&ifc);
    }
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| {
            std::fs::read_to_string(format!("/sys/class/net/{n}/type"))
                .is_ok_and(|t| t.trim() == "1")
        })
        .collect();
    names.sort();
    names.first().and_then(|n| mac_of(n))
}

/// What the machine says about itself at enrollment: its Ethernet MACs,
/// DMI serial and UUID, and its disks.
pub(super) fn hardware_facts() -> HardwareFacts {
    let dmi = |f: &str| {
        std::fs::read_to_string(format!("/sys/class/dmi/id/{f}"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    HardwareFacts {
        macs: macs(Path::new("/sys/class/net")),
        dmi_serial: dmi("product_serial"),
        dmi_uuid: dmi("product_uuid"),
        disks: disks(Path::new("/sys/block")),
    }
}

/// MACs of the Ethernet interfaces (type 1) under `sys_class_net`, sorted.
fn macs(sys_class_net: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(sys_class_net)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| {
                    std::fs::read_to_string(e.path().join("type")).is_ok_and(|t| t.trim() == "1")
                })
                .filter_map(|e| std::fs::read_to_string(e.path().join("address")).ok())
                .map(|a| a.trim().to_ascii_lowercase())
                .filter(|a| a.len() == 17 && a != "00:00:00:00:00:00")
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out.dedup();
    out
}

/// Whole disks under `sys_block` (`/sys/block`), without loop, RAM and
/// optical devices and device-mapper/md volumes; size from `size` (512-byte
/// sectors), model and serial from `device/` when the driver says.
fn disks(sys_block: &Path) -> Vec<DiskFact> {
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let mut out: Vec<DiskFact> = std::fs::read_dir(sys_block)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let skip = ["loop", "ram", "zram", "sr", "dm-", "md", "fd"];
                    if skip.iter().any(|p| name.starts_with(p)) {
                        return None;
                    }
                    let dir = e.path();
                    let sectors: u64 = read(&dir.join("size"))?.parse().ok()?;
                    Some(DiskFact {
                        size_bytes: sectors.saturating_mul(512),
                        model: read(&dir.join("device/model")),
                        serial: read(&dir.join("device/serial"))
                            .or_else(|| read(&dir.join("serial"))),
                        name,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn default_route_interface(proc_net_route: &str) -> Option<String> {
    proc_net_route.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[1] == "00000000").then(|| f[0].to_string())
    })
}

/// Global addresses of every interface but loopback, `10.0.0.5/24` style.
fn addresses() -> Vec<String> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below; every
    // pointer is checked for null before use.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut cur = head;
        while !cur.is_null() {
            let ifa = &*cur;
            cur = ifa.ifa_next;
            if ifa.ifa_addr.is_null() || ifa.ifa_flags & libc::IFF_LOOPBACK as u32 != 0 {
                continue;
            }
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let a = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
                    let prefix = if ifa.ifa_netmask.is_null() {
                        32
                    } else {
                        u32::from_be(
                            (*(ifa.ifa_netmask as *const libc::sockaddr_in))
                                .sin_addr
                                .s_addr,
                        )
                        .count_ones()
                    };
                    out.push(format!("{ip}/{prefix}"));
                }
                libc::AF_INET6 => {
                    let a = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
                    let prefix = if ifa.ifa_netmask.is_null() {
                        128
                    } else {
                        (*(ifa.ifa_netmask as *const libc::sockaddr_in6))
                            .sin6_addr
                            .s6_addr
                            .iter()
                            .map(|b| b.count_ones())
                            .sum()
                    };
                    out.push(format!("{ip}/{prefix}"));
                }
                _ => {}
            }
        }
        libc::freeifaddrs(head);
    }
    out.sort();
    out.dedup();
    out
}

/// (free, total) bytes of the file system holding `path`.
fn disk_space(path: &str) -> Option<(u64, u64)> {
    let c = std::ffi::CString::new(path).ok()?;
    // SAFETY: statvfs writes into the zeroed struct we pass.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    let frsize = s.f_frsize as u64;
    Some((s.f_bavail as u64 * frsize, s.f_blocks as u64 * frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_route_is_found() {
        let t = "Iface\tDestination\tGateway\tFlags\nens3\t0002000A\t00000000\t0001\nens4\t00000000\t0202000A\t0003\n";
        assert_eq!(default_route_interface(t).as_deref(), Some("ens4"));
        assert_eq!(default_route_interface("Iface\tDestination\n"), None);
    }

    #[test]
    fn disks_and_macs_from_sysfs() {
        let d = tempfile::tempdir().unwrap();
        let put = |p: &str, v: &str| {
            let p = d.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, v).unwrap();
        };
        put("block/vda/size", "41943040\n");
        put("block/vda/serial", "VDA-1\n");
        put("block/sda/size", "2048\n");
        put("block/sda/device/model", "QEMU HARDDISK   \n");
        put("block/loop0/size", "100\n");
        put("block/sr0/size", "100\n");
        let disks = disks(&d.path().join("block"));
        assert_eq!(disks.len(), 2, "{disks:?}");
        assert_eq!(disks[0].name, "sda");
        assert_eq!(disks[0].model.as_deref(), Some("QEMU HARDDISK"));
        assert_eq!(disks[1].size_bytes, 20 << 30);
        assert_eq!(disks[1].serial.as_deref(), Some("VDA-1"));
        put("net/ens3/type", "1\n");
        put("net/ens3/address", "52:54:00:AB:CD:EF\n");
        put("net/lo/type", "772\n");
        put("net/lo/address", "00:00:00:00:00:00\n");
        assert_eq!(macs(&d.path().join("net")), ["52:54:00:ab:cd:ef"]);
    }

    #[test]
    fn report_has_stage_and_version() {
        let r = report(&BootArgs {
            bootif: Some("52:54:00:00:00:01".into()),
            slot: Some("a".into()),
            ..Default::default()
        });
        assert_eq!(r.slot.as_deref(), Some("a"));
        assert_eq!(r.mac, "52:54:00:00:00:01");
        assert_eq!(r.stage.as_deref(), Some("agent"));
        assert!(r.disk_total_bytes.is_some());
    }
}
