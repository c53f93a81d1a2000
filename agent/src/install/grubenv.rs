//! GRUB's environment block (`grubenv`): exactly 1024 bytes, a header line,
//! `KEY=value` lines, `#` padding. GRUB's `save_env` rewrites the file's
//! blocks in place; so does this module (never truncate-and-write, which
//! is what `grub-editenv` does and what leaves a torn or empty block after
//! a power cut). Two copies live on the ESP (`/levee/grubenv` and
//! `/levee/grubenv.bak`); each is written completely, with fsync, before
//! the other, so one of them is always whole.
//!
//! The boot-counting variables (see bootloader.rs for the GRUB side):
//! `ORDER` (slots by preference, e.g. `A B`), `A_OK`/`B_OK` (`1`: the slot
//! holds a bootable image), `A_TRY`/`B_TRY` (boots left before GRUB gives
//! up on the slot: `3`, `2`, `1`, `0`; each boot takes one and saves it
//! before starting the kernel; a health commit sets the running slot's back
//! to [`TRIES`]; an update gives a new slot `1` to try it once).

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::InstallError;

pub const SIZE: usize = 1024;
const HEADER: &str = "# GRUB Environment Block\n";
/// Boots a committed slot gets before GRUB falls back to the other one.
pub const TRIES: u8 = 3;
/// Where the two copies live on the ESP.
pub const PRIMARY: &str = "levee/grubenv";
pub const BACKUP: &str = "levee/grubenv.bak";

/// The variables of one block, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GrubEnv {
    pub vars: Vec<(String, String)>,
}

impl GrubEnv {
    /// Parses a block; refuses a short, zeroed or headerless one.
    pub fn parse(block: &[u8]) -> Result<GrubEnv, String> {
        if block.len() != SIZE {
            return Err(format!("{} bytes instead of {SIZE}", block.len()));
        }
        let Some(body) = block.strip_prefix(HEADER.as_bytes()) else {
            return Err("no GRUB environment header (zeroed or torn block)".into());
        };
        let mut env = GrubEnv::default();
        for line in body.split(|&b| b == b'\n') {
            if line.is_empty() || line[0] == b'#' {
                continue;
            }
            let line = std::str::from_utf8(line).map_err(|_| "a line is not UTF-8".to_string())?;
            let Some((k, v)) = line.split_once('=') else {
                return Err(format!("a line without `=`: {line:?}"));
            };
            env.vars.push((k.to_string(), v.to_string()));
        }
        Ok(env)
    }

    /// The 1024-byte block. Variables must fit the first 512 bytes, so a
    /// rewrite changes one sector only.
    pub fn render(&self) -> Result<Vec<u8>, String> {
        let mut s = String::from(HEADER);
        for (k, v) in &self.vars {
            if k.is_empty() || k.contains(['=', '\n', '\\']) || v.contains(['\n', '\\']) {
                return Err(format!("variable {k:?}={v:?} cannot be stored"));
            }
            s.push_str(&format!("{k}={v}\n"));
        }
        if s.len() > SIZE / 2 {
            return Err(format!("{} bytes of variables, over 512", s.len()));
        }
        let mut b = s.into_bytes();
        b.resize(SIZE, b'#');
        Ok(b)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn set(&mut self, key: &str, value: &str) {
        match self.vars.iter_mut().find(|(k, _)| k == key) {
            Some(kv) => kv.1 = value.to_string(),
            None => self.vars.push((key.to_string(), value.to_string())),
        }
    }

    /// The block a fresh install writes: slot A good with all its tries,
    /// slot B empty.
    pub fn fresh() -> GrubEnv {
        let mut e = GrubEnv::default();
        e.set("ORDER", "A B");
        e.set("A_OK", "1");
        e.set("A_TRY", &TRIES.to_string());
        e.set("B_OK", "0");
        e.set("B_TRY", "0");
        e
    }

    /// Marks `slot` (`a` or `b`) good: bootable with all its tries back.
    pub fn commit(&mut self, slot: &str) {
        let s = slot.to_ascii_uppercase();
        self.set(&format!("{s}_OK"), "1");
        self.set(&format!("{s}_TRY"), &TRIES.to_string());
    }
}

/// Which copy a read came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EnvCopy {
    Primary,
    Backup,
}

/// Reads the environment from the ESP mounted at `esp`: the primary copy,
/// else the backup; the error names both problems.
pub fn read(esp: &Path) -> Result<(GrubEnv, EnvCopy), InstallError> {
    let one = |rel: &str| -> Result<GrubEnv, String> {
        let data = std::fs::read(esp.join(rel)).map_err(|e| e.to_string())?;
        GrubEnv::parse(&data)
    };
    match one(PRIMARY) {
        Ok(e) => Ok((e, EnvCopy::Primary)),
        Err(p) => match one(BACKUP) {
            Ok(e) => Ok((e, EnvCopy::Backup)),
            Err(b) => Err(InstallError::Env {
                path: esp.join(PRIMARY),
                reason: format!("unreadable ({p}), and so is the backup copy ({b})"),
            }),
        },
    }
}

/// Writes both copies: each in place when it is a whole 1024-byte file,
/// else created; fsync after each.
pub fn write(esp: &Path, env: &GrubEnv) -> Result<(), InstallError> {
    let block = env.render().map_err(|reason| InstallError::Env {
        path: esp.join(PRIMARY),
        reason,
    })?;
    for rel in [PRIMARY, BACKUP] {
        write_block(&esp.join(rel), &block)?;
    }
    Ok(())
}

/// Rewrites one copy in place (no truncation) and syncs it.
pub fn write_block(path: &Path, block: &[u8]) -> Result<(), InstallError> {
    let existing = std::fs::metadata(path).map(|m| m.len()).ok();
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(InstallError::io(path, "opening the boot environment"))?;
    f.write_all_at(block, 0)
        .map_err(InstallError::io(path, "writing the boot environment"))?;
    if existing.is_some_and(|l| l > SIZE as u64) {
        f.set_len(SIZE as u64)
            .map_err(InstallError::io(path, "trimming the boot environment"))?;
    }
    f.sync_all()
        .map_err(InstallError::io(path, "syncing the boot environment"))?;
    if existing.is_none() {
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
    }
    Ok(())
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), InstallError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(InstallError::io(dir, "syncing the directory"))
}

/// The two copies' paths under `esp`.
pub fn paths(esp: &Path) -> [PathBuf; 2] {
    [esp.join(PRIMARY), esp.join(BACKUP)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_round_trips_at_1024_bytes() {
        let e = GrubEnv::fresh();
        let b = e.render().unwrap();
        assert_eq!(b.len(), SIZE);
        assert!(b.starts_with(b"# GRUB Environment Block\nORDER=A B\nA_OK=1\nA_TRY=3\n"));
        assert!(b.ends_with(b"####"));
        assert_eq!(GrubEnv::parse(&b).unwrap(), e);
        assert!(GrubEnv::parse(&vec![0u8; SIZE]).is_err());
        assert!(GrubEnv::parse(&b[..512]).is_err());
        let mut big = GrubEnv::default();
        big.set("X", &"y".repeat(600));
        assert!(big.render().is_err());
    }

    #[test]
    fn writes_in_place_and_falls_back_to_the_backup() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let esp = dir.path();
        std::fs::create_dir_all(esp.join("levee")).unwrap();
        let mut e = GrubEnv::fresh();
        write(esp, &e).unwrap();
        let inode = std::fs::metadata(esp.join(PRIMARY)).unwrap().ino();
        // A boot takes a try; a commit gives them back, in the same file.
        e.set("A_TRY", "2");
        write(esp, &e).unwrap();
        assert_eq!(read(esp).unwrap(), (e.clone(), EnvCopy::Primary));
        e.commit("a");
        write(esp, &e).unwrap();
        assert_eq!(std::fs::metadata(esp.join(PRIMARY)).unwrap().ino(), inode);
        assert_eq!(std::fs::metadata(esp.join(PRIMARY)).unwrap().len(), 1024);
        assert_eq!(read(esp).unwrap().0.get("A_TRY"), Some("3"));
        // A torn primary (zeroed, as after a cut mid-write): the backup.
        std::fs::write(esp.join(PRIMARY), vec![0u8; SIZE]).unwrap();
        assert_eq!(read(esp).unwrap(), (e.clone(), EnvCopy::Backup));
        // Writing repairs the primary.
        write(esp, &e).unwrap();
        assert_eq!(read(esp).unwrap().1, EnvCopy::Primary);
        // Both gone: an error that says so.
        std::fs::write(esp.join(PRIMARY), b"junk").unwrap();
        std::fs::write(esp.join(BACKUP), b"").unwrap();
        let err = read(esp).unwrap_err().to_string();
        assert!(err.contains("backup copy"), "{err}");
    }
}
