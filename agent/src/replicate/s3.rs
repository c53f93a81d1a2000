//! A direct S3 target (`url: s3://bucket[/prefix]`): the same replication
//! as to a Levee store, with what S3 offers instead of the store's
//! protocol. Requests go through `levee_proto::s3::client` (the workspace's one S3
//! client, shared with the offsite store's S3 backend: `rusty-s3` signs,
//! the agent's own reqwest client sends, the keys from the configuration
//! only), so `ca_file`, the bandwidth cap and the part time limits apply.
//!
//! - Listing: `ListObjectsV2` under `<prefix>/<customer>/<repo>/<kind>/`.
//! - Create-only from this side: a file the bucket has is never sent again
//!   (checked with `HEAD` right before), except one that verification
//!   found corrupt; the appliance never deletes. Against an appliance
//!   whose keys are stolen only the bucket protects: versioning or Object
//!   Lock, checked at the start of each run ([`S3Target::append_only`]).
//! - Files up to [`WHOLE_MAX`] (every pack) go up in one `PutObject`;
//!   larger ones as multipart uploads; the upload id is kept in
//!   `STATE/replication/<target>/uploads.json` (S3 servers need not list
//!   uploads in progress), the parts already there are asked for with
//!   `ListParts`, so a cut re-sends at most the part in flight.
//! - Verification reads a file back and hashes it against its name.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use levee_proto::config::OffsiteTarget;
use levee_proto::offsite::{check_name, DeletionRequest, FileKind, Namespace};
use levee_proto::s3 as s3wire;
use levee_proto::s3::client::S3Error;
use serde::{Deserialize, Serialize};

use super::client::part_timeout;
use super::target::{Listing, ReadAt, Target};
use super::throttle::{self, Bucket};
use super::StoreError;
use crate::enroll::write_atomic;

/// What keeps a bucket's history when the appliance's keys are misused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOnly {
    ObjectLock,
    Versioning,
    /// Neither: whoever holds the keys can delete or overwrite the copy.
    No,
}

/// One multipart upload in progress.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Upload {
    upload_id: String,
    size: u64,
    part: u64,
    /// ETags of the parts sent (servers may leave them out of ListParts).
    #[serde(default)]
    etags: BTreeMap<u16, String>,
}

pub struct S3Target {
    s3: levee_proto::s3::client::Client,
    ns: Namespace,
    throttle: Arc<Bucket>,
    total_sent: AtomicU64,
    /// `uploads.json`: key -> the upload in progress.
    uploads: PathBuf,
    /// Held while `uploads.json` is read, changed and written: several
    /// files go up at once ([`super::parallel`]).
    uploads_lock: Mutex<()>,
    /// Keys verification found corrupt: the only ones sent over again.
    repairable: Mutex<HashSet<String>>,
    /// Files up to this size go up in one `PutObject`, larger ones as
    /// multipart uploads ([`S3Target::with_whole_max`]).
    whole_max: u64,
}

/// Files up to this size go up in one `PutObject` unless the run says
/// otherwise: every pack (they close at 16 MiB,
/// `agent/src/backup/packer.rs`). A multipart upload costs the server a
/// second write of the whole file (s3s-fs joins the parts at the end);
/// rclone's `upload_cutoff` is 200 MiB. A cut re-sends such a file whole.
pub const WHOLE_MAX: u64 = 32 << 20;

fn local(e: impl std::fmt::Display) -> StoreError {
    StoreError::Local(e.to_string())
}

impl S3Target {
    /// A client for `target` (an `s3://` one) and namespace `ns`; upload
    /// ids are kept under `state_dir` (the target's replication state).
    pub fn new(
        target: &OffsiteTarget,
        ns: Namespace,
        throttle: Arc<Bucket>,
        timeout: Duration,
        state_dir: &Path,
    ) -> Result<S3Target, StoreError> {
        let settings = levee_proto::s3::client::Settings {
            url: target.endpoints().first().copied().unwrap_or_default(),
            endpoint: target.endpoint.as_deref(),
            region: target.region.as_deref(),
            access_key_id: target.access_key_id.as_deref(),
            secret_access_key: target.secret_access_key.as_ref().map(|s| s.0.as_str()),
            ca_file: target.ca_file.as_deref(),
        };
        let s3 =
            levee_proto::s3::client::Client::new(&settings, crate::http_client::blocking(timeout))
                .map_err(local)?;
        Ok(S3Target {
            s3,
            ns,
            throttle,
            total_sent: AtomicU64::new(0),
            uploads: state_dir.join("uploads.json"),
            uploads_lock: Mutex::new(()),
            repairable: Mutex::new(HashSet::new()),
            whole_max: WHOLE_MAX,
        })
    }

    /// Files up to `bytes` go up in one request; larger ones in parts
    /// that survive a cut.
    pub fn with_whole_max(mut self, bytes: u64) -> S3Target {
        self.whole_max = bytes;
        self
    }

    fn key(&self, kind: FileKind, name: &str) -> String {
        self.s3.location().key(&self.ns, kind, name)
    }

    /// A throttled request body of `data`, counted into `total_sent`
    /// (what was handed over, also when the request fails), and its time
    /// limit.
    fn body(&self, data: Vec<u8>) -> (reqwest::blocking::Body, Duration, Arc<AtomicU64>) {
        let counted = Arc::new(AtomicU64::new(0));
        let (b, timeout) = self.counted_body(data, counted.clone());
        (b, timeout, counted)
    }

    fn counted_body(
        &self,
        data: Vec<u8>,
        counted: Arc<AtomicU64>,
    ) -> (reqwest::blocking::Body, Duration) {
        let len = data.len() as u64;
        (
            throttle::body(data, &self.throttle, counted),
            part_timeout(len, self.throttle.rate()),
        )
    }

    fn count(&self, counted: &AtomicU64) {
        self.total_sent
            .fetch_add(counted.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Whether the bucket keeps what the appliance could destroy: Object
    /// Lock, else versioning. A server that does not know either request
    /// counts as neither.
    pub fn append_only(&self) -> Result<AppendOnly, StoreError> {
        let ask = |param: &str| self.s3.bucket_setting(param).map_err(store_error);
        if ask("object-lock")?.is_some_and(|x| s3wire::object_lock_enabled(&x)) {
            return Ok(AppendOnly::ObjectLock);
        }
        if ask("versioning")?.is_some_and(|x| s3wire::versioning_enabled(&x)) {
            return Ok(AppendOnly::Versioning);
        }
        Ok(AppendOnly::No)
    }

    fn list_kind(&self, kind: FileKind) -> Result<BTreeMap<String, u64>, StoreError> {
        let prefix = self.s3.location().kind_prefix(&self.ns, kind);
        let mut out = BTreeMap::new();
        for o in self.s3.list(&prefix).map_err(store_error)? {
            if let Some(name) = o.key.strip_prefix(&prefix) {
                if check_name(name).is_ok() {
                    out.insert(name.to_string(), o.size);
                }
            }
        }
        Ok(out)
    }

    fn exists(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.s3.head(key).map_err(store_error)?.is_some())
    }

    fn load_uploads(&self) -> BTreeMap<String, Upload> {
        std::fs::read(&self.uploads)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Changes `uploads.json` under [`S3Target::uploads_lock`].
    fn edit_uploads(
        &self,
        change: impl FnOnce(&mut BTreeMap<String, Upload>),
    ) -> Result<(), StoreError> {
        let _held = self.uploads_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut u = self.load_uploads();
        change(&mut u);
        self.save_uploads(&u)
    }

    fn save_uploads(&self, u: &BTreeMap<String, Upload>) -> Result<(), StoreError> {
        if let Some(dir) = self.uploads.parent() {
            std::fs::create_dir_all(dir).map_err(|e| local(format!("{}: {e}", dir.display())))?;
        }
        let b = serde_json::to_vec(u).map_err(local)?;
        write_atomic(&self.uploads, &b, 0o600).map_err(local)
    }

    fn put_whole(&self, key: &str, size: u64, read: ReadAt<'_>) -> Result<(), StoreError> {
        let data = read(0, size as usize).map_err(StoreError::Local)?;
        let (body, timeout, counted) = self.body(data);
        let r = self.s3.put(key, body, timeout);
        self.count(&counted);
        r.map_err(store_error)
    }

    /// A multipart upload, resumed from the parts the server holds.
    fn put_parts(
        &self,
        key: &str,
        size: u64,
        part: u64,
        read: ReadAt<'_>,
    ) -> Result<(), StoreError> {
        let known = self
            .load_uploads()
            .get(key)
            .filter(|u| u.size == size && u.part == part)
            .cloned();
        // Parts the server holds, with their ETags (from the server, else
        // as kept when they were sent; a part with neither goes again).
        let mut done: BTreeMap<u16, (u64, String)> = BTreeMap::new();
        let mut id = String::new();
        if let Some(u) = known {
            if let Some(held) = self.s3.list_parts(key, &u.upload_id).map_err(store_error)? {
                for p in held {
                    if let Some(e) = p.etag.or_else(|| u.etags.get(&p.number).cloned()) {
                        done.insert(p.number, (p.size, e));
                    }
                }
                id = u.upload_id;
            }
        }
        let id = if id.is_empty() {
            let id = self.s3.create_multipart(key).map_err(store_error)?;
            self.edit_uploads(|u| {
                u.insert(
                    key.to_string(),
                    Upload {
                        upload_id: id.clone(),
                        size,
                        part,
                        etags: BTreeMap::new(),
                    },
                );
            })?;
            id
        } else {
            tracing::info!(key, parts = done.len(), "resuming an S3 multipart upload");
            id
        };
        let count = size.div_ceil(part);
        let count = u16::try_from(count)
            .map_err(|_| local(format!("{size} bytes in more than 65535 parts")))?;
        for n in 1..=count {
            let offset = u64::from(n - 1) * part;
            let len = part.min(size - offset);
            if done.get(&n).is_some_and(|(s, _)| *s == len) {
                continue;
            }
            let data = read(offset, len as usize).map_err(StoreError::Local)?;
            let (body, timeout, counted) = self.body(data);
            let etag = self.s3.upload_part(key, n, &id, body, timeout);
            self.count(&counted);
            let etag = etag.map_err(store_error)?;
            done.insert(n, (len, etag.clone()));
            self.edit_uploads(|u| {
                if let Some(up) = u.get_mut(key) {
                    up.etags.insert(n, etag);
                }
            })?;
        }
        let etags: Vec<&str> = (1..=count)
            .filter_map(|n| done.get(&n).map(|(_, e)| e.as_str()))
            .collect();
        let counted = Arc::new(AtomicU64::new(0));
        let completed = self.s3.complete_multipart(key, &id, &etags, &|xml| {
            self.counted_body(xml, counted.clone())
        });
        self.count(&counted);
        match completed {
            Err(e @ S3Error::Refused { .. }) => {
                if matches!(&e, S3Error::Refused { code, .. } if code == "NoSuchUpload") {
                    let _ = self.edit_uploads(|u| {
                        u.remove(key);
                    });
                }
                return Err(store_error(e));
            }
            r => r.map_err(store_error)?,
        }
        self.edit_uploads(|u| {
            u.remove(key);
        })
    }
}

/// The agent's error for an S3 one (same kinds: try later, refused,
/// malformed).
fn store_error(e: S3Error) -> StoreError {
    match e {
        S3Error::Transport { url, reason } => StoreError::Transport { url, reason },
        S3Error::Refused {
            url,
            status,
            message,
            ..
        } => StoreError::Refused {
            url,
            status,
            message,
        },
        S3Error::Malformed(m) => StoreError::Malformed(m),
        S3Error::Settings(m) => StoreError::Local(m),
    }
}

impl Target for S3Target {
    fn list_all(&self) -> Result<Listing, StoreError> {
        let mut out = Listing::new();
        for kind in FileKind::ALL {
            out.insert(kind, self.list_kind(kind)?);
        }
        Ok(out)
    }

    fn upload(
        &self,
        kind: FileKind,
        name: &str,
        size: u64,
        part: u64,
        read: ReadAt<'_>,
    ) -> Result<u64, StoreError> {
        let key = self.key(kind, name);
        let before = self.total_sent();
        let repair = self
            .repairable
            .lock()
            .map(|r| r.contains(&key))
            .unwrap_or(false);
        // Create-only: never replace what the bucket has (the name is the
        // content's hash), unless it failed verification.
        if !repair && self.exists(&key)? {
            return Ok(0);
        }
        let part = part.max(levee_proto::s3::client::MIN_PART); // S3's smallest part but the last
        if size <= part.max(self.whole_max) {
            self.put_whole(&key, size, read)?;
        } else {
            self.put_parts(&key, size, part, read)?;
        }
        if let Ok(mut r) = self.repairable.lock() {
            r.remove(&key);
        }
        Ok(self.total_sent() - before)
    }

    fn verify(&self, kind: FileKind, name: &str) -> Result<bool, StoreError> {
        let key = self.key(kind, name);
        let ok = match self.download(kind, name) {
            Ok(bytes) => levee_proto::repo::crypto::file_id(&bytes).to_hex() == name,
            Err(StoreError::Refused { status: 404, .. }) => false,
            Err(e) => return Err(e),
        };
        if !ok {
            if let Ok(mut r) = self.repairable.lock() {
                r.insert(key);
            }
        }
        Ok(ok)
    }

    fn download(&self, kind: FileKind, name: &str) -> Result<Vec<u8>, StoreError> {
        let key = self.key(kind, name);
        let mut resp =
            self.s3
                .get(&key)
                .map_err(store_error)?
                .ok_or_else(|| StoreError::Refused {
                    url: key.clone(),
                    status: 404,
                    message: "no such object".into(),
                })?;
        let mut out = Vec::new();
        resp.read_to_end(&mut out)
            .map_err(|e| store_error(levee_proto::s3::client::transport(&key, e)))?;
        Ok(out)
    }

    fn request_deletion(&self, _req: &DeletionRequest) -> Result<bool, StoreError> {
        // The appliance never deletes from a bucket: forgotten files stay
        // until ops remove them (lifecycle rules, `docs/OFFSITE.md`).
        Ok(false)
    }

    fn total_sent(&self) -> u64 {
        self.total_sent.load(Ordering::Relaxed)
    }
}
