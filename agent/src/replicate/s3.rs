//! A direct S3 target (`url: s3://bucket[/prefix]`): the same replication
//! as to a Levee store, with what S3 offers instead of the store's
//! protocol. Requests are signed by `rusty-s3` (presigned SigV4 URLs, the
//! keys from the configuration only) and sent on the agent's own reqwest
//! client, so `ca_file`, the bandwidth cap and the part time limits apply.
//!
//! - Listing: `ListObjectsV2` under `<prefix>/<customer>/<repo>/<kind>/`.
//! - Create-only from this side: a file the bucket has is never sent again
//!   (checked with `HEAD` right before), except one that verification
//!   found corrupt; the appliance never deletes. Against an appliance
//!   whose keys are stolen only the bucket protects: versioning or Object
//!   Lock, checked at the start of each run ([`S3Target::append_only`]).
//! - Large files go up as multipart uploads; the upload id is kept in
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
use levee_proto::s3::{self as s3wire, S3Url};
use rusty_s3::{Credentials, S3Action, UrlStyle};
use serde::{Deserialize, Serialize};

use super::client::part_timeout;
use super::target::{Listing, ReadAt, Target};
use super::throttle::{Bucket, ThrottledBody};
use super::StoreError;
use crate::enroll::write_atomic;

/// How long a signed request stays valid (it is sent at once).
const SIGNED_FOR: Duration = Duration::from_secs(3600);

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
    http: reqwest::blocking::Client,
    bucket: rusty_s3::Bucket,
    creds: Credentials,
    loc: S3Url,
    ns: Namespace,
    throttle: Arc<Bucket>,
    total_sent: AtomicU64,
    /// `uploads.json`: key -> the upload in progress.
    uploads: PathBuf,
    /// Keys verification found corrupt: the only ones sent over again.
    repairable: Mutex<HashSet<String>>,
}

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
        let url = target.endpoints().first().copied().unwrap_or_default();
        let loc = S3Url::parse(url).map_err(local)?;
        let region = target.region.clone().unwrap_or_else(|| "us-east-1".into());
        let (endpoint, style) = match &target.endpoint {
            // Own endpoints (MinIO, Ceph, s3s...) rarely have a DNS name
            // per bucket: path style.
            Some(e) => (e.clone(), UrlStyle::Path),
            None => (
                format!("https://s3.{region}.amazonaws.com"),
                UrlStyle::VirtualHost,
            ),
        };
        let endpoint = url::Url::parse(&endpoint).map_err(|e| local(format!("endpoint: {e}")))?;
        let bucket = rusty_s3::Bucket::new(endpoint, style, loc.bucket.clone(), region)
            .map_err(|e| local(format!("endpoint: {e}")))?;
        let (Some(key), Some(secret)) = (&target.access_key_id, &target.secret_access_key) else {
            return Err(local("access_key_id and secret_access_key are required"));
        };
        let mut builder = crate::http_client::blocking(timeout).use_rustls_tls();
        if let Some(ca) = &target.ca_file {
            let pem = std::fs::read(ca).map_err(|e| local(format!("ca_file {ca}: {e}")))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| local(format!("ca_file {ca}: {e}")))?;
            if certs.is_empty() {
                return Err(local(format!("ca_file {ca}: no certificate in it")));
            }
            builder = builder.tls_built_in_root_certs(false);
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let http = builder.build().map_err(local)?;
        Ok(S3Target {
            http,
            bucket,
            creds: Credentials::new(key.clone(), secret.0.clone()),
            loc,
            ns,
            throttle,
            total_sent: AtomicU64::new(0),
            uploads: state_dir.join("uploads.json"),
            repairable: Mutex::new(HashSet::new()),
        })
    }

    fn key(&self, kind: FileKind, name: &str) -> String {
        self.loc.key(&self.ns, kind, name)
    }

    /// Sends a signed request; 5xx and transport failures are
    /// [`StoreError::Transport`] (try later), other refusals `Refused`.
    fn send(
        &self,
        method: reqwest::Method,
        url: url::Url,
        body: Option<Vec<u8>>,
    ) -> Result<reqwest::blocking::Response, StoreError> {
        let shown = redact(&url);
        let mut req = self.http.request(method, url.as_str());
        let counted = Arc::new(AtomicU64::new(0));
        if let Some(data) = body {
            let len = data.len() as u64;
            let b = ThrottledBody::new(data, self.throttle.clone(), counted.clone());
            req = req
                .timeout(part_timeout(len, self.throttle.rate()))
                .body(reqwest::blocking::Body::sized(b, len));
        }
        let result = req.send();
        self.total_sent
            .fetch_add(counted.load(Ordering::Relaxed), Ordering::Relaxed);
        let resp = result.map_err(|e| super::client::transport(&shown, e))?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(resp);
        }
        let text = resp.text().unwrap_or_default();
        let code = s3wire::error_code(&text).unwrap_or("").to_string();
        let message = s3wire::xml_value(&text, "Message")
            .unwrap_or("")
            .to_string();
        let message = format!("{code} {message}").trim().to_string();
        if status >= 500 {
            return Err(StoreError::Transport {
                url: shown,
                reason: format!("{status}: {message}"),
            });
        }
        Err(StoreError::Refused {
            url: shown,
            status,
            message,
        })
    }

    fn sign_bucket_query(&self, param: &str) -> url::Url {
        rusty_s3::signing::sign(
            &jiff::Timestamp::now(),
            rusty_s3::Method::Get,
            self.bucket.base_url().clone(),
            self.creds.key(),
            self.creds.secret(),
            None,
            self.bucket.region(),
            SIGNED_FOR.as_secs(),
            std::iter::once((param, "")),
            std::iter::empty(),
        )
    }

    /// Whether the bucket keeps what the appliance could destroy: Object
    /// Lock, else versioning. A server that does not know either request
    /// counts as neither.
    pub fn append_only(&self) -> Result<AppendOnly, StoreError> {
        let ask = |param: &str| -> Result<Option<String>, StoreError> {
            match self.send(reqwest::Method::GET, self.sign_bucket_query(param), None) {
                Ok(r) => Ok(Some(r.text().unwrap_or_default())),
                // Not configured (404) or not implemented (501: counted
                // as Transport by `send`).
                Err(StoreError::Refused { status: 404, .. }) => Ok(None),
                Err(StoreError::Transport { reason, .. }) if reason.starts_with("501") => Ok(None),
                Err(e) => Err(e),
            }
        };
        if ask("object-lock")?.is_some_and(|x| s3wire::object_lock_enabled(&x)) {
            return Ok(AppendOnly::ObjectLock);
        }
        if ask("versioning")?.is_some_and(|x| s3wire::versioning_enabled(&x)) {
            return Ok(AppendOnly::Versioning);
        }
        Ok(AppendOnly::No)
    }

    fn list_kind(&self, kind: FileKind) -> Result<BTreeMap<String, u64>, StoreError> {
        let prefix = self.loc.kind_prefix(&self.ns, kind);
        let mut out = BTreeMap::new();
        let mut token: Option<String> = None;
        loop {
            let mut action = self.bucket.list_objects_v2(Some(&self.creds));
            action.with_prefix(prefix.clone());
            if let Some(t) = token.take() {
                action.with_continuation_token(t);
            }
            let url = action.sign(SIGNED_FOR);
            let shown = redact(&url);
            let text = self
                .send(reqwest::Method::GET, url, None)?
                .text()
                .map_err(|e| super::client::transport(&shown, e))?;
            let page = rusty_s3::actions::ListObjectsV2::parse_response(&text)
                .map_err(|e| StoreError::Malformed(format!("{shown}: {e}")))?;
            for o in page.contents {
                if let Some(name) = o.key.strip_prefix(&prefix) {
                    if check_name(name).is_ok() {
                        out.insert(name.to_string(), o.size.unwrap_or(0));
                    }
                }
            }
            match page.next_continuation_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => return Ok(out),
            }
        }
    }

    fn exists(&self, key: &str) -> Result<bool, StoreError> {
        let url = self
            .bucket
            .head_object(Some(&self.creds), key)
            .sign(SIGNED_FOR);
        match self.send(reqwest::Method::HEAD, url, None) {
            Ok(_) => Ok(true),
            Err(StoreError::Refused { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn load_uploads(&self) -> BTreeMap<String, Upload> {
        std::fs::read(&self.uploads)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
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
        let url = self
            .bucket
            .put_object(Some(&self.creds), key)
            .sign(SIGNED_FOR);
        self.send(reqwest::Method::PUT, url, Some(data)).map(drop)
    }

    /// The parts an upload holds; `None` when the server no longer knows
    /// the upload.
    fn parts(&self, key: &str, id: &str) -> Result<Option<Vec<s3wire::Part>>, StoreError> {
        let mut out = Vec::new();
        let mut marker = None;
        loop {
            let mut action = self.bucket.list_parts(Some(&self.creds), key, id);
            if let Some(m) = marker {
                action.set_part_number_marker(m);
            }
            let url = action.sign(SIGNED_FOR);
            let shown = redact(&url);
            let text = match self.send(reqwest::Method::GET, url, None) {
                Ok(r) => r.text().map_err(|e| super::client::transport(&shown, e))?,
                Err(StoreError::Refused { status: 404, .. }) => return Ok(None),
                Err(e) => return Err(e),
            };
            let (parts, next) = s3wire::list_parts(&text);
            out.extend(parts);
            match next {
                Some(m) if m > marker.unwrap_or(0) => marker = Some(m),
                _ => return Ok(Some(out)),
            }
        }
    }

    fn create_upload(&self, key: &str) -> Result<String, StoreError> {
        let url = self
            .bucket
            .create_multipart_upload(Some(&self.creds), key)
            .sign(SIGNED_FOR);
        let shown = redact(&url);
        let text = self
            .send(reqwest::Method::POST, url, None)?
            .text()
            .map_err(|e| super::client::transport(&shown, e))?;
        let r = rusty_s3::actions::CreateMultipartUpload::parse_response(&text)
            .map_err(|e| StoreError::Malformed(format!("{shown}: {e}")))?;
        Ok(r.upload_id().to_string())
    }

    /// A multipart upload, resumed from the parts the server holds.
    fn put_parts(
        &self,
        key: &str,
        size: u64,
        part: u64,
        read: ReadAt<'_>,
    ) -> Result<(), StoreError> {
        let mut uploads = self.load_uploads();
        let known = uploads
            .get(key)
            .filter(|u| u.size == size && u.part == part)
            .cloned();
        // Parts the server holds, with their ETags (from the server, else
        // as kept when they were sent; a part with neither goes again).
        let mut done: BTreeMap<u16, (u64, String)> = BTreeMap::new();
        let mut id = String::new();
        if let Some(u) = known {
            if let Some(held) = self.parts(key, &u.upload_id)? {
                for p in held {
                    if let Some(e) = p.etag.or_else(|| u.etags.get(&p.number).cloned()) {
                        done.insert(p.number, (p.size, e));
                    }
                }
                id = u.upload_id;
            }
        }
        let id = if id.is_empty() {
            let id = self.create_upload(key)?;
            uploads.insert(
                key.to_string(),
                Upload {
                    upload_id: id.clone(),
                    size,
                    part,
                    etags: BTreeMap::new(),
                },
            );
            self.save_uploads(&uploads)?;
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
            let url = self
                .bucket
                .upload_part(Some(&self.creds), key, n, &id)
                .sign(SIGNED_FOR);
            let resp = self.send(reqwest::Method::PUT, url, Some(data))?;
            let etag = resp
                .headers()
                .get(reqwest::header::ETAG)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| StoreError::Malformed(format!("{key}: part {n} has no ETag")))?
                .to_string();
            done.insert(n, (len, etag.clone()));
            if let Some(u) = uploads.get_mut(key) {
                u.etags.insert(n, etag);
                self.save_uploads(&uploads)?;
            }
        }
        let etags: Vec<&str> = (1..=count)
            .filter_map(|n| done.get(&n).map(|(_, e)| e.as_str()))
            .collect();
        let action =
            self.bucket
                .complete_multipart_upload(Some(&self.creds), key, &id, etags.into_iter());
        let url = action.sign(SIGNED_FOR);
        let shown = redact(&url);
        let resp = self.send(reqwest::Method::POST, url, Some(action.body().into_bytes()))?;
        // S3 may answer 200 and put the error in the body.
        let text = resp
            .text()
            .map_err(|e| super::client::transport(&shown, e))?;
        if let Some(code) = s3wire::error_code(&text) {
            if code == "NoSuchUpload" {
                uploads.remove(key);
                let _ = self.save_uploads(&uploads);
            }
            return Err(StoreError::Refused {
                url: shown,
                status: 200,
                message: code.to_string(),
            });
        }
        uploads.remove(key);
        self.save_uploads(&uploads)
    }
}

/// A signed URL without its signature, for messages and logs.
fn redact(url: &url::Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.to_string()
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
        let part = part.max(5 << 20); // S3's smallest part but the last
        if size <= part {
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
        let url = self
            .bucket
            .get_object(Some(&self.creds), &key)
            .sign(SIGNED_FOR);
        let shown = redact(&url);
        let mut resp = self.send(reqwest::Method::GET, url, None)?;
        let mut out = Vec::new();
        resp.read_to_end(&mut out)
            .map_err(|e| super::client::transport(&shown, e))?;
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
