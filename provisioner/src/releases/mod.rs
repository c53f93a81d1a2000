//! Release channels: one TUF repository per channel under one root, built
//! and signed with tough's editor, served read-only by `levee serve`.
//!
//! On disk (`DATA_DIR/releases/`):
//! - `root/N.root.json`: the root chain shared by all channels (also copied
//!   into every channel's metadata so any TUF client finds it there);
//! - `keys/snapshot.pem`, `keys/timestamp.pem`: the online keys;
//! - `<channel>/metadata/`: `N.root.json`, `N.targets.json`,
//!   `N.snapshot.json`, `timestamp.json` (consistent snapshots);
//! - `<channel>/targets/<sha256>.<version>.<artifact>`.
//!
//! Expiries, and why (docs/UPDATES.md has the long form):
//! - timestamp: 1 day, re-signed by `levee serve` when under 12 h remain. A
//!   freeze attack (replaying old, validly signed metadata to hide a new
//!   release) works only until the replayed timestamp expires, so an
//!   appliance learns of a fix at most a day late; a shorter life would
//!   turn a server outage of a few hours into refused updates.
//! - snapshot: 7 days, re-signed when under 3 days remain (online key).
//! - targets: 365 days by default (`--expires-days`), signed offline at
//!   each publish or promote; `release status` warns 30 days ahead.
//! - root: 365 days; renewed with `keys rotate-root`.

pub mod channel;
pub mod keys;
pub mod prune;
pub mod refresh;
pub mod rollout;
pub mod root;

use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, Utc};

pub use channel::{ChannelState, PublishOptions, Published, ReleaseEntry};

pub const TIMESTAMP_LIFETIME: Duration = Duration::days(1);
pub const TIMESTAMP_RENEW_BEFORE: Duration = Duration::hours(12);
pub const SNAPSHOT_LIFETIME: Duration = Duration::days(7);
pub const SNAPSHOT_RENEW_BEFORE: Duration = Duration::days(3);
pub const TARGETS_DEFAULT_DAYS: i64 = 365;
pub const ROOT_DEFAULT_DAYS: i64 = 365;

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("{0}")]
    Tuf(String),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Channel(#[from] levee_proto::release::ChannelNameError),
    #[error(transparent)]
    Image(#[from] crate::images::ImageError),
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ReleaseError + '_ {
    move |source| ReleaseError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where everything of the release channels lives.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(data_dir: &Path) -> Layout {
        Layout {
            dir: data_dir.join("releases"),
        }
    }
    pub fn keys_dir(&self) -> PathBuf {
        self.dir.join("keys")
    }
    pub fn snapshot_key(&self) -> keys::PemKey {
        keys::PemKey::new(self.keys_dir().join("snapshot.pem"))
    }
    pub fn timestamp_key(&self) -> keys::PemKey {
        keys::PemKey::new(self.keys_dir().join("timestamp.pem"))
    }
    pub fn root_dir(&self) -> PathBuf {
        self.dir.join("root")
    }
    pub fn channel_dir(&self, channel: &str) -> PathBuf {
        self.dir.join(channel)
    }
    pub fn metadata_dir(&self, channel: &str) -> PathBuf {
        self.channel_dir(channel).join("metadata")
    }
    pub fn targets_dir(&self, channel: &str) -> PathBuf {
        self.channel_dir(channel).join("targets")
    }

    /// Channels that have been published to, sorted.
    pub fn channels(&self) -> Result<Vec<String>, ReleaseError> {
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&self.dir)(e)),
        };
        let mut out: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| levee_proto::release::validate_channel(n).is_ok())
            .filter(|n| self.metadata_dir(n).join("timestamp.json").is_file())
            .collect();
        out.sort();
        Ok(out)
    }

    /// The root chain: `(version, path)` sorted by version.
    pub fn root_chain(&self) -> Result<Vec<(u64, PathBuf)>, ReleaseError> {
        let dir = self.root_dir();
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ReleaseError::Usage(format!(
                    "no release keys in {}: run `levee release keys init` first",
                    self.dir.display()
                )))
            }
            Err(e) => return Err(io_err(&dir)(e)),
        };
        let mut chain: Vec<(u64, PathBuf)> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let n = name.strip_suffix(".root.json")?.parse::<u64>().ok()?;
                Some((n, e.path()))
            })
            .collect();
        chain.sort();
        if chain.is_empty() {
            return Err(ReleaseError::Usage(format!(
                "no root metadata in {}: run `levee release keys init` first",
                dir.display()
            )));
        }
        Ok(chain)
    }

    /// The newest root metadata: its path and parsed form.
    pub fn latest_root(
        &self,
    ) -> Result<(PathBuf, tough::schema::Signed<tough::schema::Root>), ReleaseError> {
        let chain = self.root_chain()?;
        let (_, path) = chain.last().cloned().expect("root_chain is never empty");
        let root = read_json(&path)?;
        Ok((path, root))
    }

    /// Takes the release lock (publish, promote, re-signing and rotation
    /// must not interleave); released on drop.
    pub fn lock(&self) -> Result<LockGuard, ReleaseError> {
        std::fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let path = self.dir.join(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        // SAFETY: flock on a descriptor we own; blocking is what we want.
        let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX) };
        if rc != 0 {
            return Err(io_err(&path)(std::io::Error::last_os_error()));
        }
        Ok(LockGuard { _file: file })
    }
}

/// Holds the release lock until dropped.
pub struct LockGuard {
    _file: std::fs::File,
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ReleaseError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ReleaseError::Tuf(format!("{}: not valid metadata: {e}", path.display())))
}

/// Writes `bytes` to `dir/name` atomically (temporary file, fsync, rename,
/// fsync of the directory): a reader sees the old file or the new one,
/// never a torn one, also across a power cut.
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), ReleaseError> {
    use std::io::Write;
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let dst = dir.join(name);
    let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &dst).map_err(io_err(&dst))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The serialised form tough writes (and hashes) for a signed role.
pub(crate) fn role_bytes<T: serde::Serialize>(signed: &T) -> Result<Vec<u8>, ReleaseError> {
    let mut buf = serde_json::to_vec_pretty(signed)
        .map_err(|e| ReleaseError::Tuf(format!("cannot serialise metadata: {e}")))?;
    buf.push(b'\n');
    Ok(buf)
}

/// Runs an async release operation from the synchronous CLI.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
        .block_on(f)
}

pub(crate) fn days(n: i64) -> Duration {
    Duration::days(n)
}

pub(crate) fn now() -> DateTime<Utc> {
    Utc::now()
}
