//! The offsite store's files on disk (`DATA_DIR/offsite/` by default):
//!
//! ```text
//! <customer>/<repo>/.owner                  appliance id the namespace is bound to
//! <customer>/<repo>/<kind>/<sha256>         complete files (data/ fans out: data/xx/<sha256>)
//! <customer>/<repo>/.partial/<kind>.<sha256>.<length>   uploads under way
//! <customer>/<repo>/.deletions/<unix>-<rand>.json        deletion requests
//! ```
//!
//! Complete files appear only by `link(2)` of a fully written, fsynced,
//! hash-checked partial file: `link` fails when the name exists, so a file
//! is created once and never replaced, even by two store nodes sharing
//! this directory. Nothing here deletes a complete file except [`prune`].

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use levee_proto::offsite::{DeletionRequest, FileKind, FileRef, Listed, Namespace};
use sha2::{Digest, Sha256};

const OWNER: &str = ".owner";
const PARTIAL: &str = ".partial";
const DELETIONS: &str = ".deletions";

#[derive(Debug, Clone)]
pub struct Disk {
    root: PathBuf,
}

/// What the store holds of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileState {
    Complete(u64),
    /// An upload under way: this many bytes are durable.
    Partial(u64),
    Absent,
}

/// How a finished upload ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Finish {
    Created,
    /// Another upload (another node) created it first.
    Exists,
    /// The bytes do not hash to the name: the partial file is gone.
    Mismatch(String),
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn mkdirs(dir: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

use std::os::unix::fs::DirBuilderExt;

impl Disk {
    pub fn new(root: impl Into<PathBuf>) -> Disk {
        Disk { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn ns_dir(&self, ns: &Namespace) -> PathBuf {
        self.root.join(&ns.customer).join(&ns.repo)
    }

    pub fn file_path(&self, f: &FileRef) -> PathBuf {
        let dir = self.ns_dir(&f.ns).join(f.kind.as_str());
        match f.kind {
            FileKind::Data => dir.join(&f.name[..2]).join(&f.name),
            _ => dir.join(&f.name),
        }
    }

    fn partial_path(&self, f: &FileRef, length: u64) -> PathBuf {
        self.ns_dir(&f.ns)
            .join(PARTIAL)
            .join(format!("{}.{}.{length}", f.kind.as_str(), f.name))
    }

    /// The appliance a namespace is bound to.
    pub fn owner(&self, ns: &Namespace) -> std::io::Result<Option<i64>> {
        match fs::read_to_string(self.ns_dir(ns).join(OWNER)) {
            Ok(s) => Ok(s.trim().parse().ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Binds an unbound namespace to `appliance`; returns the owner after
    /// (someone else's if another request won the race).
    pub fn claim(&self, ns: &Namespace, appliance: i64) -> std::io::Result<i64> {
        let dir = self.ns_dir(ns);
        mkdirs(&dir)?;
        let tmp = dir.join(format!(".owner-{}", rand::random::<u64>()));
        fs::write(&tmp, appliance.to_string())?;
        File::open(&tmp)?.sync_all()?;
        let linked = fs::hard_link(&tmp, dir.join(OWNER));
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                sync_dir(&dir)?;
                Ok(appliance)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Ok(self.owner(ns)?.unwrap_or(appliance))
            }
            Err(e) => Err(e),
        }
    }

    /// Moves a namespace to the appliance that replaced its owner.
    pub fn rebind(&self, ns: &Namespace, appliance: i64) -> std::io::Result<()> {
        let dir = self.ns_dir(ns);
        let tmp = dir.join(format!(".owner-{}", rand::random::<u64>()));
        fs::write(&tmp, appliance.to_string())?;
        File::open(&tmp)?.sync_all()?;
        fs::rename(&tmp, dir.join(OWNER))?;
        sync_dir(&dir)
    }

    pub fn state(&self, f: &FileRef) -> std::io::Result<FileState> {
        match fs::metadata(self.file_path(f)) {
            Ok(m) => return Ok(FileState::Complete(m.len())),
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            Err(_) => {}
        }
        let prefix = format!("{}.{}.", f.kind.as_str(), f.name);
        let dir = self.ns_dir(&f.ns).join(PARTIAL);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FileState::Absent),
            Err(e) => return Err(e),
        };
        for e in entries {
            let e = e?;
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                return Ok(FileState::Partial(e.metadata()?.len()));
            }
        }
        Ok(FileState::Absent)
    }

    /// Opens (creating) the partial file of an upload of `length` bytes,
    /// locked against every other writer (this node's or another's on the
    /// same directory); `None` while someone else holds it.
    pub fn open_partial(&self, f: &FileRef, length: u64) -> std::io::Result<Option<File>> {
        let path = self.partial_path(f, length);
        if let Some(dir) = path.parent() {
            mkdirs(dir)?;
        }
        // Append: every part goes after what is there (the handler checks
        // that this is where the part starts).
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)?;
        // SAFETY: flock on a descriptor this function owns.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Ok(None);
            }
            return Err(e);
        }
        Ok(Some(file))
    }

    /// After the last byte of a partial file: checks its hash and links it
    /// into place (create-only), then removes the partial name.
    pub fn finish(&self, f: &FileRef, length: u64, mut file: &File) -> std::io::Result<Finish> {
        use std::io::Seek;
        file.sync_all()?;
        file.seek(std::io::SeekFrom::Start(0))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        let got = hex::encode(h.finalize());
        let partial = self.partial_path(f, length);
        if got != f.name {
            fs::remove_file(&partial)?;
            return Ok(Finish::Mismatch(got));
        }
        let dest = self.file_path(f);
        let dir = dest.parent().unwrap_or(&self.root).to_path_buf();
        mkdirs(&dir)?;
        let linked = fs::hard_link(&partial, &dest);
        fs::remove_file(&partial)?;
        match linked {
            Ok(()) => {
                sync_dir(&dir)?;
                Ok(Finish::Created)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Finish::Exists),
            Err(e) => Err(e),
        }
    }

    /// Re-reads a complete file and checks it against its name; one that
    /// fails is moved to `.corrupt/` (kept for ops, out of the listing), so
    /// the appliance can upload it again. `None`: no such file.
    pub fn verify(&self, f: &FileRef, now: u64) -> std::io::Result<Option<bool>> {
        let path = self.file_path(f);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        if hex::encode(h.finalize()) == f.name {
            return Ok(Some(true));
        }
        let dir = self.ns_dir(&f.ns).join(".corrupt");
        mkdirs(&dir)?;
        fs::rename(
            &path,
            dir.join(format!("{}.{}.{now}", f.kind.as_str(), f.name)),
        )?;
        if let Some(parent) = path.parent() {
            sync_dir(parent)?;
        }
        sync_dir(&dir)?;
        Ok(Some(false))
    }

    /// Complete files of a kind.
    pub fn list(&self, ns: &Namespace, kind: FileKind) -> std::io::Result<Vec<Listed>> {
        let dir = self.ns_dir(ns).join(kind.as_str());
        let mut out = Vec::new();
        let dirs = if kind == FileKind::Data {
            match fs::read_dir(&dir) {
                Ok(rd) => rd
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .collect::<Vec<_>>(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
                Err(e) => return Err(e),
            }
        } else {
            vec![dir]
        };
        for d in dirs {
            let rd = match fs::read_dir(&d) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for e in rd {
                let e = e?;
                let name = e.file_name().to_string_lossy().into_owned();
                if levee_proto::offsite::check_name(&name).is_ok() {
                    out.push(Listed {
                        name,
                        size: e.metadata()?.len(),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Keeps a deletion request for [`prune`] to carry out when due.
    pub fn add_deletion(
        &self,
        ns: &Namespace,
        req: &DeletionRequest,
        now: u64,
    ) -> std::io::Result<()> {
        let dir = self.ns_dir(ns).join(DELETIONS);
        mkdirs(&dir)?;
        let name = format!("{now}-{:016x}.json", rand::random::<u64>());
        let tmp = dir.join(format!(".tmp-{name}"));
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&req.to_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, dir.join(name))?;
        sync_dir(&dir)
    }

    /// Bytes of complete files under a customer (every repository).
    pub fn usage(&self, customer: &str) -> std::io::Result<u64> {
        fn walk(p: &Path) -> std::io::Result<u64> {
            let mut n = 0;
            let rd = match fs::read_dir(p) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
                Err(e) => return Err(e),
            };
            for e in rd {
                let e = e?;
                let t = e.file_type()?;
                if t.is_dir() {
                    n += walk(&e.path())?;
                } else if t.is_file() {
                    n += e.metadata()?.len();
                }
            }
            Ok(n)
        }
        walk(&self.root.join(customer))
    }
}

/// What [`prune`] did (or, dry, would do).
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PruneReport {
    pub requests_done: u64,
    pub requests_waiting: u64,
    pub files_deleted: u64,
    pub bytes_freed: u64,
    pub partials_dropped: u64,
}

/// Carries out the deletion requests older than `grace_secs` (all of them
/// with 0), and drops uploads abandoned for that long.
pub fn prune(
    disk: &Disk,
    now: u64,
    grace_secs: u64,
    dry_run: bool,
) -> std::io::Result<PruneReport> {
    let mut r = PruneReport::default();
    for ns in namespaces(disk)? {
        let dir = disk.ns_dir(&ns);
        let reqs = match fs::read_dir(dir.join(DELETIONS)) {
            Ok(rd) => rd.filter_map(|e| e.ok()).collect::<Vec<_>>(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        for e in reqs {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(at) = name.split('-').next().and_then(|t| t.parse::<u64>().ok()) else {
                continue;
            };
            if at.saturating_add(grace_secs) > now {
                r.requests_waiting += 1;
                continue;
            }
            let Ok(req) = fs::read(e.path())
                .map_err(|e| e.to_string())
                .and_then(|b| DeletionRequest::parse(&b).map_err(|e| e.to_string()))
            else {
                tracing::warn!(request = %e.path().display(), "unreadable deletion request left in place");
                continue;
            };
            for item in &req.files {
                let f = FileRef {
                    ns: ns.clone(),
                    kind: item.kind,
                    name: item.name.clone(),
                };
                let path = disk.file_path(&f);
                if let Ok(m) = fs::metadata(&path) {
                    r.files_deleted += 1;
                    r.bytes_freed += m.len();
                    if !dry_run {
                        fs::remove_file(&path)?;
                    }
                }
            }
            r.requests_done += 1;
            if !dry_run {
                fs::remove_file(e.path())?;
            }
        }
        if let Ok(rd) = fs::read_dir(dir.join(PARTIAL)) {
            for e in rd.filter_map(|e| e.ok()) {
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .is_some_and(|t| t.as_secs().saturating_add(grace_secs) <= now);
                if old {
                    r.partials_dropped += 1;
                    if !dry_run {
                        fs::remove_file(e.path())?;
                    }
                }
            }
        }
    }
    Ok(r)
}

/// Every namespace present.
pub fn namespaces(disk: &Disk) -> std::io::Result<Vec<Namespace>> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(disk.root()) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for c in rd.filter_map(|e| e.ok()) {
        let customer = c.file_name().to_string_lossy().into_owned();
        let Ok(repos) = fs::read_dir(c.path()) else {
            continue;
        };
        for r in repos.filter_map(|e| e.ok()) {
            if let Ok(ns) = Namespace::new(&customer, &r.file_name().to_string_lossy()) {
                out.push(ns);
            }
        }
    }
    out.sort_by_key(|n| n.path());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(data: &[u8]) -> FileRef {
        FileRef {
            ns: Namespace::new("acme", "00112233445566778899aabbccddeeff").unwrap(),
            kind: FileKind::Data,
            name: hex::encode(Sha256::digest(data)),
        }
    }

    #[test]
    fn files_are_created_once_and_checked_against_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::new(dir.path());
        let f = file(b"ciphertext");
        assert_eq!(disk.state(&f).unwrap(), FileState::Absent);
        let mut p = disk.open_partial(&f, 10).unwrap().unwrap();
        assert!(disk.open_partial(&f, 10).unwrap().is_none(), "locked");
        p.write_all(b"cipher").unwrap();
        assert_eq!(disk.state(&f).unwrap(), FileState::Partial(6));
        p.write_all(b"text").unwrap();
        assert_eq!(disk.finish(&f, 10, &p).unwrap(), Finish::Created);
        assert_eq!(disk.state(&f).unwrap(), FileState::Complete(10));
        assert_eq!(disk.list(&f.ns, FileKind::Data).unwrap()[0].size, 10);

        let mut bad = f.clone();
        bad.name = "00".repeat(32);
        let mut p = disk.open_partial(&bad, 3).unwrap().unwrap();
        p.write_all(b"abc").unwrap();
        assert!(matches!(
            disk.finish(&bad, 3, &p).unwrap(),
            Finish::Mismatch(_)
        ));
        assert_eq!(disk.state(&bad).unwrap(), FileState::Absent);
    }

    #[test]
    fn deletions_wait_for_their_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::new(dir.path());
        let f = file(b"x");
        let mut p = disk.open_partial(&f, 1).unwrap().unwrap();
        p.write_all(b"x").unwrap();
        disk.finish(&f, 1, &p).unwrap();
        let req = DeletionRequest {
            files: vec![levee_proto::offsite::DeletionItem {
                kind: f.kind,
                name: f.name.clone(),
            }],
        };
        disk.add_deletion(&f.ns, &req, 1000).unwrap();
        let r = prune(&disk, 1000 + 3600, 14 * 86_400, false).unwrap();
        assert_eq!((r.requests_waiting, r.files_deleted), (1, 0));
        assert_eq!(disk.state(&f).unwrap(), FileState::Complete(1));
        let r = prune(&disk, 1000 + 14 * 86_400, 14 * 86_400, false).unwrap();
        assert_eq!((r.requests_done, r.files_deleted, r.bytes_freed), (1, 1, 1));
        assert_eq!(disk.state(&f).unwrap(), FileState::Absent);
    }
}
