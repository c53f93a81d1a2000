//! Which disk to install on. The rule: the largest whole disk of at least
//! the plan's minimum size that is blank (its first and last MiB all zeros
//! and `blkid -p` finding no signature). A disk holding a Levee install
//! (a GPT with our partition labels) is taken only for a reinstall; a disk
//! holding anything else is never touched.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::InstallError;

const MIB: u64 = 1 << 20;

/// Partition labels that mark a Levee install.
pub const LABELS: [&str; 5] = [
    "levee-bios",
    "levee-esp",
    "levee-a",
    "levee-b",
    "levee-data",
];

/// A whole disk from `/sys/block`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Kernel name, e.g. `vda`.
    pub name: String,
    /// Device node, e.g. `/dev/vda`.
    pub dev: PathBuf,
    pub size: u64,
    pub removable: bool,
}

/// What a disk holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Nothing: zeros at both ends, no signature.
    Blank,
    /// A Levee install (GPT with our labels).
    Levee,
    /// Anything else, and what it is.
    Foreign(String),
}

/// Kernel name prefixes of devices that are never install targets.
fn virtual_kind(name: &str) -> Option<&'static str> {
    [
        ("loop", "loop device"),
        ("ram", "RAM disk"),
        ("zram", "compressed RAM disk"),
        ("sr", "optical drive"),
        ("md", "software RAID"),
        ("dm-", "device-mapper volume"),
        ("nbd", "network block device"),
        ("fd", "floppy"),
    ]
    .into_iter()
    .find(|(p, _)| name.starts_with(p))
    .map(|(_, k)| k)
}

/// Whole disks under `sys_block` (normally `/sys/block`), virtual ones left
/// out.
pub fn list(sys_block: &Path) -> Result<Vec<Disk>, InstallError> {
    let mut disks = Vec::new();
    let entries =
        std::fs::read_dir(sys_block).map_err(InstallError::io(sys_block, "listing disks"))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if virtual_kind(&name).is_some() {
            continue;
        }
        let read = |f: &str| std::fs::read_to_string(e.path().join(f)).unwrap_or_default();
        let sectors: u64 = read("size").trim().parse().unwrap_or(0);
        disks.push(Disk {
            dev: PathBuf::from("/dev").join(&name),
            size: sectors * 512,
            removable: read("removable").trim() == "1",
            name,
        });
    }
    disks.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(disks)
}

/// The disk named by an operator (`--disk /dev/sdb`), looked up in
/// `sys_block` for its size.
pub fn named(sys_block: &Path, dev: &Path) -> Result<Disk, InstallError> {
    let real = std::fs::canonicalize(dev).map_err(InstallError::io(dev, "resolving the disk"))?;
    let name = real
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let sys = sys_block.join(&name);
    if !sys.exists() {
        return Err(InstallError::NoDisk(format!(
            "{}: not a whole disk (no {})",
            dev.display(),
            sys.display()
        )));
    }
    let read = |f: &str| std::fs::read_to_string(sys.join(f)).unwrap_or_default();
    let sectors: u64 = read("size").trim().parse().unwrap_or(0);
    Ok(Disk {
        name,
        dev: real,
        size: sectors * 512,
        removable: read("removable").trim() == "1",
    })
}

/// Looks at a disk's content: its first and last MiB, then `blkid -p`.
pub fn probe(disk: &Disk) -> Result<Content, InstallError> {
    let f = File::open(&disk.dev).map_err(InstallError::io(&disk.dev, "opening the disk"))?;
    let n = MIB.min(disk.size) as usize;
    let mut first = vec![0u8; n];
    f.read_exact_at(&mut first, 0)
        .map_err(InstallError::io(&disk.dev, "reading the first MiB"))?;
    let mut last = vec![0u8; n];
    f.read_exact_at(&mut last, disk.size - n as u64)
        .map_err(InstallError::io(&disk.dev, "reading the last MiB"))?;
    let content = classify(&first, &last);
    if content != Content::Blank {
        return Ok(content);
    }
    Ok(match blkid(&disk.dev) {
        Some(found) => Content::Foreign(format!("blkid finds {found}")),
        None => Content::Blank,
    })
}

/// `blkid -p`'s finding, if any (exit status 2 means nothing was found; a
/// missing blkid leaves the zero check alone to decide).
fn blkid(dev: &Path) -> Option<String> {
    let out = Command::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(dev)
        .output()
        .ok()?;
    match out.status.code() {
        Some(0) => {
            let text = String::from_utf8_lossy(&out.stdout);
            let keys: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("TYPE=") || l.starts_with("PTTYPE="))
                .collect();
            Some(if keys.is_empty() {
                "a signature".to_string()
            } else {
                keys.join(" ")
            })
        }
        Some(2) => None,
        _ => Some(format!(
            "an unreadable device ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// Classifies a disk from its first and last MiB (pure, for tests).
pub fn classify(first: &[u8], last: &[u8]) -> Content {
    let zero = |b: &[u8]| b.iter().all(|&x| x == 0);
    if zero(first) && zero(last) {
        return Content::Blank;
    }
    if let Some(names) = gpt_names(first) {
        if ["levee-esp", "levee-a", "levee-data"]
            .iter()
            .all(|l| names.iter().any(|n| n == l))
        {
            return Content::Levee;
        }
        let shown = if names.is_empty() {
            "no named partitions".to_string()
        } else {
            format!("partitions {}", names.join(", "))
        };
        return Content::Foreign(format!("a GPT partition table ({shown})"));
    }
    if first.len() >= 512 && first[510] == 0x55 && first[511] == 0xAA {
        return Content::Foreign("an MBR partition table or boot sector".into());
    }
    if !zero(first) {
        Content::Foreign("data in its first MiB".into())
    } else {
        Content::Foreign("data in its last MiB".into())
    }
}

/// The partition names of a GPT whose header and entries lie in `first`
/// (512- or 4096-byte sectors), or `None` if there is no GPT header.
pub fn gpt_names(first: &[u8]) -> Option<Vec<String>> {
    for sector in [512usize, 4096] {
        let Some(h) = first.get(sector..sector + 92) else {
            continue;
        };
        if &h[..8] != b"EFI PART" {
            continue;
        }
        let u32_at = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
        let entries_lba = u64::from_le_bytes(h[72..80].try_into().ok()?);
        let count = u32_at(80) as usize;
        let size = u32_at(84) as usize;
        if size < 128 || count > 1024 {
            return Some(Vec::new());
        }
        let start = (entries_lba as usize).checked_mul(sector)?;
        let mut names = Vec::new();
        for i in 0..count {
            let Some(e) = first.get(start + i * size..start + (i + 1) * size) else {
                break;
            };
            if e[..16].iter().all(|&b| b == 0) {
                continue;
            }
            let units: Vec<u16> = e[56..128]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&u| u != 0)
                .collect();
            names.push(String::from_utf16_lossy(&units));
        }
        return Some(names);
    }
    None
}

/// A disk with what probing found (or why it could not be read).
#[derive(Debug, Clone)]
pub struct Probed {
    pub disk: Disk,
    pub content: Result<Content, String>,
}

/// Picks the disk (pure): the largest acceptable one, or an error naming
/// every disk and why it was refused.
pub fn choose(
    disks: &[Probed],
    min_bytes: u64,
    reinstall: bool,
    allow_removable: bool,
) -> Result<(Disk, Content), InstallError> {
    let mut reasons = Vec::new();
    let mut best: Option<(&Disk, &Content)> = None;
    for p in disks {
        let d = &p.disk;
        let refuse = match &p.content {
            _ if d.size == 0 => Some("no medium (size 0)".to_string()),
            _ if d.removable && !allow_removable => Some("removable".to_string()),
            _ if d.size < min_bytes => Some(format!(
                "too small ({} < the minimum {})",
                human(d.size),
                human(min_bytes)
            )),
            Err(e) => Some(format!("cannot be read ({e})")),
            Ok(Content::Foreign(what)) => {
                Some(format!("holds {what}; a disk in use is never touched"))
            }
            Ok(Content::Levee) if !reinstall => Some(
                "holds a Levee install; it is only wiped for a reinstall (levee appliance reinstall)"
                    .to_string(),
            ),
            Ok(_) => None,
        };
        match (refuse, &p.content) {
            (Some(why), _) => {
                reasons.push(format!("{} ({}): {why}", d.dev.display(), human(d.size)))
            }
            (None, Ok(c)) => {
                if best.is_none_or(|(b, _)| d.size > b.size) {
                    best = Some((d, c));
                }
            }
            (None, Err(_)) => {}
        }
    }
    match best {
        Some((d, c)) => Ok((d.clone(), c.clone())),
        None if reasons.is_empty() => Err(InstallError::NoDisk("the machine has no disk".into())),
        None => Err(InstallError::NoDisk(reasons.join("; "))),
    }
}

/// Bytes as GiB/MiB for messages.
pub fn human(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
    } else {
        format!("{} MiB", b / MIB)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(name: &str, size: u64) -> Disk {
        Disk {
            name: name.into(),
            dev: PathBuf::from("/dev").join(name),
            size,
            removable: false,
        }
    }

    /// A GPT (512-byte sectors) with the given names, in its first MiB.
    pub(crate) fn gpt(names: &[&str]) -> Vec<u8> {
        let mut b = vec![0u8; MIB as usize];
        b[510] = 0x55;
        b[511] = 0xAA;
        b[512..520].copy_from_slice(b"EFI PART");
        b[512 + 72..512 + 80].copy_from_slice(&2u64.to_le_bytes());
        b[512 + 80..512 + 84].copy_from_slice(&128u32.to_le_bytes());
        b[512 + 84..512 + 88].copy_from_slice(&128u32.to_le_bytes());
        for (i, n) in names.iter().enumerate() {
            let e = 1024 + i * 128;
            b[e] = 1; // non-zero type GUID
            for (j, u) in n.encode_utf16().enumerate() {
                b[e + 56 + 2 * j..e + 58 + 2 * j].copy_from_slice(&u.to_le_bytes());
            }
        }
        b
    }

    #[test]
    fn classifies_content() {
        let zero = vec![0u8; MIB as usize];
        assert_eq!(classify(&zero, &zero), Content::Blank);
        assert_eq!(classify(&gpt(&LABELS), &zero), Content::Levee);
        match classify(&gpt(&["EFI System", "root"]), &zero) {
            Content::Foreign(w) => assert!(w.contains("GPT") && w.contains("root"), "{w}"),
            c => panic!("{c:?}"),
        }
        let mut mbr = zero.clone();
        mbr[510] = 0x55;
        mbr[511] = 0xAA;
        assert!(matches!(classify(&mbr, &zero), Content::Foreign(w) if w.contains("MBR")));
        let mut tail = zero.clone();
        tail[100] = 1;
        assert!(matches!(classify(&zero, &tail), Content::Foreign(w) if w.contains("last MiB")));
    }

    #[test]
    fn chooses_the_largest_blank_disk_and_names_every_refusal() {
        let g = 1u64 << 30;
        let disks = vec![
            Probed {
                disk: disk("sda", 500 * g),
                content: Ok(Content::Foreign("a GPT partition table".into())),
            },
            Probed {
                disk: disk("sdb", 100 * g),
                content: Ok(Content::Blank),
            },
            Probed {
                disk: disk("sdc", 200 * g),
                content: Ok(Content::Blank),
            },
            Probed {
                disk: disk("sdd", g / 2),
                content: Ok(Content::Blank),
            },
            Probed {
                disk: disk("sde", 300 * g),
                content: Ok(Content::Levee),
            },
        ];
        let (d, c) = choose(&disks, g, false, false).unwrap();
        assert_eq!((d.name.as_str(), c), ("sdc", Content::Blank));
        let (d, c) = choose(&disks, g, true, false).unwrap();
        assert_eq!((d.name.as_str(), c), ("sde", Content::Levee));
        let err = choose(&disks[..1], g, true, false).unwrap_err().to_string();
        assert!(
            err.contains("/dev/sda") && err.contains("never touched"),
            "{err}"
        );
        let err = choose(&[disks[3].clone(), disks[4].clone()], g, false, false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/dev/sdd") && err.contains("too small"),
            "{err}"
        );
        assert!(
            err.contains("/dev/sde") && err.contains("reinstall"),
            "{err}"
        );
    }
}
