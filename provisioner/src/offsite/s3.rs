//! The offsite store's files in S3 (`--store-backend s3://bucket[/prefix]`),
//! through the workspace's one S3 client (`levee_proto::s3::client`). Store nodes on one
//! bucket are endpoints of one target, as nodes on one directory are.
//!
//! ```text
//! <prefix>/<customer>/<repo>/.owner                         appliance id of the binding
//! <prefix>/<customer>/<repo>/<kind>/<sha256>                complete files (a direct S3 target's layout)
//! <prefix>/<customer>/<repo>/.partial/<sha256>.<length>/<start>-<end>   uploads under way
//! <prefix>/<customer>/<repo>/.deletions/<unix>-<rand>.json  deletion requests
//! <prefix>/<customer>/<repo>/.corrupt/<kind>.<sha256>.<unix>                   quarantined by verification
//! ```
//!
//! What the directory gets from `link(2)` and `flock(2)` rests here on the
//! names being hashes: a complete file is written only after its bytes
//! were hashed against its name and the store found no file of that name,
//! so two nodes that finish the same file at once write the same bytes.
//! An upload is kept as segments named by their byte range (each part's
//! bytes as they arrive, at most [`SEGMENT`] per object, and what arrived
//! of a part that was cut), so any node can resume it from the segments'
//! contiguous coverage; two nodes writing the same range write the same
//! bytes of the same file, and the hash at the end decides.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request as HttpRequest;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use levee_proto::offsite::{
    check_name, DeletionRequest, FileKind, FileRef, Listed, Namespace, UploadRange,
};
use levee_proto::s3::client::S3Error;
use sha2::{Digest, Sha256};
use tracing::warn;

use super::disk::{FileState, Finish, PruneReport};
use super::server::{drain, exists, io_error, StoreState, MAX_DRAIN_BYTES};
use crate::enroll::https::api_error;

/// Bytes per segment object of an upload in progress, and per part of the
/// multipart upload that writes a large complete file.
pub const SEGMENT: usize = 8 << 20;

/// How long one S3 request with a body may take.
const BODY_TIMEOUT: Duration = Duration::from_secs(300);

const OWNER: &str = ".owner";
const PARTIAL: &str = ".partial";
const DELETIONS: &str = ".deletions";
const CORRUPT: &str = ".corrupt";

/// The store's S3 settings (`--store-backend` and its keys).
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// `s3://bucket[/prefix]`.
    pub url: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub ca_file: Option<String>,
}

#[derive(Clone)]
pub struct S3Files {
    s3: Arc<levee_proto::s3::client::Client>,
    url: String,
}

fn io(e: S3Error) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// One segment of an upload: bytes `start..end` of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Segment {
    key: String,
    start: u64,
    end: u64,
}

/// How far the segments cover the file from byte 0 without a gap.
fn coverage(segs: &[Segment]) -> u64 {
    let mut cov = 0;
    for s in segs {
        if s.start > cov {
            break;
        }
        cov = cov.max(s.end);
    }
    cov
}

impl S3Files {
    /// A client for `o`; checks at once that the bucket answers (a store
    /// with wrong keys or endpoint fails at start, not at the first upload).
    pub fn open(o: &S3Options) -> anyhow::Result<S3Files> {
        let settings = levee_proto::s3::client::Settings {
            url: &o.url,
            endpoint: o.endpoint.as_deref(),
            region: o.region.as_deref(),
            access_key_id: o.access_key_id.as_deref(),
            secret_access_key: o.secret_access_key.as_deref(),
            ca_file: o.ca_file.as_deref(),
        };
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(600))
            .connect_timeout(Duration::from_secs(30))
            .pool_idle_timeout(Duration::from_secs(20))
            .no_proxy();
        let s3 = levee_proto::s3::client::Client::new(&settings, http)
            .map_err(|e| anyhow::anyhow!("--store-backend {}: {e}", o.url))?;
        let files = S3Files {
            s3: Arc::new(s3),
            url: o.url.clone(),
        };
        files
            .s3
            .list(&format!("{}{OWNER}", files.s3.location().base()))
            .map_err(|e| {
                anyhow::anyhow!("--store-backend {}: the bucket does not answer: {e}", o.url)
            })?;
        Ok(files)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn ns_key(&self, ns: &Namespace, tail: &str) -> String {
        format!("{}{tail}", self.s3.location().ns_prefix(ns))
    }

    fn file_key(&self, f: &FileRef) -> String {
        self.s3.location().key(&f.ns, f.kind, &f.name)
    }

    /// `.partial/<sha256>.`: every upload of the file, any length. The
    /// kind is left out to keep keys short (s3s-fs keeps a file named by
    /// the key's base64, within the 255-byte limit of a file name); a
    /// name is the hash of the bytes, so it names one file whatever its
    /// kind.
    fn partial_prefix(&self, f: &FileRef) -> String {
        self.ns_key(&f.ns, &format!("{PARTIAL}/{}.", f.name))
    }

    fn put_bytes(&self, key: &str, data: Vec<u8>) -> std::io::Result<()> {
        self.s3.put(key, data.into(), BODY_TIMEOUT).map_err(io)
    }

    pub fn owner(&self, ns: &Namespace) -> std::io::Result<Option<i64>> {
        Ok(self
            .s3
            .get_bytes(&self.ns_key(ns, OWNER))
            .map_err(io)?
            .and_then(|b| String::from_utf8_lossy(&b).trim().parse().ok()))
    }

    /// Binds an unbound namespace; the owner after. S3 has no create-only
    /// write that every server offers, so two first writes at the same
    /// moment through two nodes would both write and the later one wins;
    /// the namespace is a repository's random id, known only to the
    /// appliance that made it before its first upload.
    pub fn claim(&self, ns: &Namespace, appliance: i64) -> std::io::Result<i64> {
        if let Some(o) = self.owner(ns)? {
            return Ok(o);
        }
        self.put_bytes(&self.ns_key(ns, OWNER), appliance.to_string().into_bytes())?;
        Ok(self.owner(ns)?.unwrap_or(appliance))
    }

    pub fn rebind(&self, ns: &Namespace, appliance: i64) -> std::io::Result<()> {
        self.put_bytes(&self.ns_key(ns, OWNER), appliance.to_string().into_bytes())
    }

    /// The segments of the uploads of `f`, by length, sorted by start.
    fn uploads(&self, f: &FileRef) -> std::io::Result<BTreeMap<u64, Vec<Segment>>> {
        let prefix = self.partial_prefix(f);
        let mut out: BTreeMap<u64, Vec<Segment>> = BTreeMap::new();
        for o in self.s3.list(&prefix).map_err(io)? {
            let Some(rest) = o.key.strip_prefix(&prefix) else {
                continue;
            };
            let Some((length, range)) = rest.split_once('/') else {
                continue;
            };
            let parsed = (|| {
                let (a, b) = range.split_once('-')?;
                Some((length.parse().ok()?, a.parse().ok()?, b.parse().ok()?))
            })();
            if let Some((length, start, end)) = parsed {
                out.entry(length).or_default().push(Segment {
                    key: o.key.clone(),
                    start,
                    end,
                });
            }
        }
        for segs in out.values_mut() {
            segs.sort_by_key(|s| (s.start, s.end));
        }
        Ok(out)
    }

    pub fn state(&self, f: &FileRef) -> std::io::Result<FileState> {
        if let Some(n) = self.s3.head(&self.file_key(f)).map_err(io)? {
            return Ok(FileState::Complete(n));
        }
        Ok(match self.uploads(f)?.values().next() {
            Some(segs) => FileState::Partial(coverage(segs)),
            None => FileState::Absent,
        })
    }

    /// The complete size, or what an upload of `length` bytes holds.
    fn upload_state(&self, f: &FileRef, length: u64) -> std::io::Result<Result<u64, u64>> {
        if let Some(n) = self.s3.head(&self.file_key(f)).map_err(io)? {
            return Ok(Err(n));
        }
        Ok(Ok(self
            .uploads(f)?
            .get(&length)
            .map_or(0, |segs| coverage(segs))))
    }

    /// Keeps bytes `start..start + data.len()` of an upload of `length`.
    fn put_segment(
        &self,
        f: &FileRef,
        length: u64,
        start: u64,
        data: Vec<u8>,
    ) -> std::io::Result<()> {
        let end = start + data.len() as u64;
        let key = format!("{}{length}/{start}-{end}", self.partial_prefix(f));
        self.put_bytes(&key, data)
    }

    /// The last part arrived (`tail`, from byte `tail_at`): hashes the
    /// segments and the tail against the name and writes the complete
    /// file, unless one exists; the upload's segments go either way but
    /// when S3 fails.
    fn finish(
        &self,
        f: &FileRef,
        length: u64,
        tail_at: u64,
        tail: &[u8],
    ) -> std::io::Result<Finish> {
        let segs = self.uploads(f)?.remove(&length).unwrap_or_default();
        let key = self.file_key(f);
        let mut w = Writer::new(self, &key, length);
        let mut h = Sha256::new();
        let mut at = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        for s in &segs {
            if at >= tail_at {
                break;
            }
            if s.start > at || s.end <= at {
                continue;
            }
            let mut r = self
                .s3
                .get(&s.key)
                .map_err(io)?
                .ok_or_else(|| std::io::Error::other(format!("{}: segment gone", s.key)))?;
            // Bytes another segment already gave (two nodes wrote
            // overlapping ranges of the same file).
            let mut skip = at - s.start;
            let mut pos = s.start;
            loop {
                let n = r.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                let mut chunk = &buf[..n];
                let skipped = (skip as usize).min(chunk.len());
                chunk = &chunk[skipped..];
                skip -= skipped as u64;
                pos += skipped as u64;
                let room = tail_at.saturating_sub(pos) as usize;
                let chunk = &chunk[..chunk.len().min(room)];
                h.update(chunk);
                w.write(chunk)?;
                pos += chunk.len() as u64;
            }
            at = at.max(pos.min(tail_at));
        }
        if at != tail_at {
            w.abort();
            return Err(std::io::Error::other(format!(
                "{}: the upload's segments cover {at} bytes, not {tail_at}",
                f.path()
            )));
        }
        h.update(tail);
        w.write(tail)?;
        let got = hex::encode(h.finalize());
        let done = if got != f.name {
            w.abort();
            Finish::Mismatch(got)
        } else if self.s3.head(&key).map_err(io)?.is_some() {
            w.abort();
            Finish::Exists
        } else {
            w.complete()?;
            Finish::Created
        };
        for s in segs {
            self.s3.delete(&s.key).map_err(io)?;
        }
        Ok(done)
    }

    /// Re-reads a complete file; one that fails its name is copied to
    /// `.corrupt/` (kept for ops) and removed, so the appliance can upload
    /// it again. `None`: no such file.
    pub fn verify(&self, f: &FileRef, now: u64) -> std::io::Result<Option<bool>> {
        let key = self.file_key(f);
        let Some(bytes) = self.s3.get_bytes(&key).map_err(io)? else {
            return Ok(None);
        };
        if hex::encode(Sha256::digest(&bytes)) == f.name {
            return Ok(Some(true));
        }
        let aside = self.ns_key(
            &f.ns,
            &format!("{CORRUPT}/{}.{}.{now}", f.kind.as_str(), f.name),
        );
        self.put_bytes(&aside, bytes)?;
        self.s3.delete(&key).map_err(io)?;
        Ok(Some(false))
    }

    pub fn list(&self, ns: &Namespace, kind: FileKind) -> std::io::Result<Vec<Listed>> {
        let prefix = self.s3.location().kind_prefix(ns, kind);
        let mut out: Vec<Listed> = self
            .s3
            .list(&prefix)
            .map_err(io)?
            .into_iter()
            .filter_map(|o| {
                let name = o.key.strip_prefix(&prefix)?;
                check_name(name).ok()?;
                Some(Listed {
                    name: name.to_string(),
                    size: o.size,
                })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub fn add_deletion(
        &self,
        ns: &Namespace,
        req: &DeletionRequest,
        now: u64,
    ) -> std::io::Result<()> {
        let key = self.ns_key(
            ns,
            &format!("{DELETIONS}/{now}-{:016x}.json", rand::random::<u64>()),
        );
        self.put_bytes(&key, req.to_bytes())
    }

    /// Bytes of every object under a customer (complete files, uploads in
    /// progress, deletion requests, quarantined files), as the directory
    /// walk counts them.
    pub fn usage(&self, customer: &str) -> std::io::Result<u64> {
        let prefix = format!("{}{customer}/", self.s3.location().base());
        Ok(self
            .s3
            .list(&prefix)
            .map_err(io)?
            .iter()
            .map(|o| o.size)
            .sum())
    }

    /// Carries out deletion requests older than `grace_secs` and drops
    /// uploads whose newest segment is that old (see [`super::prune`]).
    pub fn prune(&self, now: u64, grace_secs: u64, dry_run: bool) -> std::io::Result<PruneReport> {
        let base = self.s3.location().base();
        let mut r = PruneReport::default();
        // Upload (its key up to the length) -> newest segment, its keys.
        let mut partials: BTreeMap<String, (i64, Vec<String>)> = BTreeMap::new();
        for o in self.s3.list(&base).map_err(io)? {
            let Some(rest) = o.key.strip_prefix(&base) else {
                continue;
            };
            let parts: Vec<&str> = rest.splitn(4, '/').collect();
            let [customer, repo, dir, tail] = parts[..] else {
                continue;
            };
            let Ok(ns) = Namespace::new(customer, repo) else {
                continue;
            };
            match dir {
                DELETIONS => {
                    self.prune_request(&ns, &o.key, tail, now, grace_secs, dry_run, &mut r)?
                }
                PARTIAL => {
                    let upload = o.key.rsplit_once('/').map_or(o.key.as_str(), |(u, _)| u);
                    let e = partials.entry(upload.to_string()).or_default();
                    e.0 = e.0.max(o.modified.unwrap_or(i64::MAX));
                    e.1.push(o.key.clone());
                }
                _ => {}
            }
        }
        for (_, (newest, keys)) in partials {
            let old = u64::try_from(newest).is_ok_and(|t| t.saturating_add(grace_secs) <= now);
            if old {
                r.partials_dropped += 1;
                if !dry_run {
                    for k in keys {
                        self.s3.delete(&k).map_err(io)?;
                    }
                }
            }
        }
        Ok(r)
    }

    #[allow(clippy::too_many_arguments)]
    fn prune_request(
        &self,
        ns: &Namespace,
        key: &str,
        name: &str,
        now: u64,
        grace_secs: u64,
        dry_run: bool,
        r: &mut PruneReport,
    ) -> std::io::Result<()> {
        let Some(at) = name.split('-').next().and_then(|t| t.parse::<u64>().ok()) else {
            return Ok(());
        };
        if at.saturating_add(grace_secs) > now {
            r.requests_waiting += 1;
            return Ok(());
        }
        let parsed = self
            .s3
            .get_bytes(key)
            .map_err(io)?
            .map(|b| DeletionRequest::parse(&b));
        let Some(Ok(req)) = parsed else {
            warn!(request = key, "unreadable deletion request left in place");
            return Ok(());
        };
        for item in &req.files {
            let f = FileRef {
                ns: ns.clone(),
                kind: item.kind,
                name: item.name.clone(),
            };
            let k = self.file_key(&f);
            if let Some(size) = self.s3.head(&k).map_err(io)? {
                r.files_deleted += 1;
                r.bytes_freed += size;
                if !dry_run {
                    self.s3.delete(&k).map_err(io)?;
                }
            }
        }
        r.requests_done += 1;
        if !dry_run {
            self.s3.delete(key).map_err(io)?;
        }
        Ok(())
    }

    /// A file's bytes, streamed as S3 sends them; `None`: no such file.
    pub fn read(&self, f: &FileRef) -> std::io::Result<Option<(u64, reqwest::blocking::Response)>> {
        let Some(r) = self.s3.get(&self.file_key(f)).map_err(io)? else {
            return Ok(None);
        };
        let len = r.content_length().unwrap_or(0);
        Ok(Some((len, r)))
    }
}

/// Writes a complete file: one `PutObject` when it fits a segment, else a
/// multipart upload of [`SEGMENT`]-byte parts, started with the first.
struct Writer<'a> {
    files: &'a S3Files,
    key: &'a str,
    whole: bool,
    buf: Vec<u8>,
    upload: Option<(String, Vec<String>)>,
}

impl<'a> Writer<'a> {
    fn new(files: &'a S3Files, key: &'a str, length: u64) -> Writer<'a> {
        Writer {
            files,
            key,
            whole: length <= SEGMENT as u64,
            buf: Vec::new(),
            upload: None,
        }
    }

    fn write(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            let room = if self.whole {
                data.len()
            } else {
                SEGMENT - self.buf.len()
            };
            let n = room.min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if !self.whole && self.buf.len() == SEGMENT {
                self.send_part()?;
            }
        }
        Ok(())
    }

    fn send_part(&mut self) -> std::io::Result<()> {
        let s3 = &self.files.s3;
        if self.upload.is_none() {
            self.upload = Some((s3.create_multipart(self.key).map_err(io)?, Vec::new()));
        }
        let Some((id, etags)) = self.upload.as_mut() else {
            return Ok(());
        };
        let n = u16::try_from(etags.len() + 1)
            .map_err(|_| std::io::Error::other("more than 65535 parts"))?;
        let data = std::mem::take(&mut self.buf);
        etags.push(
            s3.upload_part(self.key, n, id, data.into(), BODY_TIMEOUT)
                .map_err(io)?,
        );
        Ok(())
    }

    fn complete(mut self) -> std::io::Result<()> {
        if self.whole {
            let data = std::mem::take(&mut self.buf);
            return self.files.put_bytes(self.key, data);
        }
        if !self.buf.is_empty() {
            self.send_part()?;
        }
        let Some((id, etags)) = self.upload.take() else {
            return self.files.put_bytes(self.key, Vec::new());
        };
        let etags: Vec<&str> = etags.iter().map(String::as_str).collect();
        self.files
            .s3
            .complete_multipart(self.key, &id, &etags, &|xml| (xml.into(), BODY_TIMEOUT))
            .map_err(io)
    }

    /// Drops the multipart upload, if one was started (best effort: a
    /// leftover is S3's to expire, `docs/OFFSITE.md`).
    fn abort(mut self) {
        if let Some((id, _)) = self.upload.take() {
            if let Err(e) = self.files.s3.abort_multipart(self.key, &id) {
                warn!(key = self.key, error = %e, "aborting a multipart upload failed");
            }
        }
    }
}

/// A `PUT` of a part on the S3 backend (after the quota check): refused
/// (409) for a file the bucket has; else the shared part handling
/// ([`super::part::receive`]) into segments ([`S3Part`]): what arrived of
/// a cut part is kept too; the last part is hashed with the segments
/// before it and the file is written.
pub async fn put(
    state: &StoreState,
    files: &S3Files,
    appliance: i64,
    f: FileRef,
    range: UploadRange,
    req: HttpRequest,
) -> Response {
    let (fs, f2) = (files.clone(), f.clone());
    let held = tokio::task::spawn_blocking(move || fs.upload_state(&f2, range.length)).await;
    let have = match held {
        Ok(Ok(Ok(n))) => n,
        Ok(Ok(Err(size))) => {
            warn!(appliance, file = %f.path(), "refused to overwrite an existing offsite file");
            drain(req.into_body(), MAX_DRAIN_BYTES).await;
            return exists(size);
        }
        Ok(Err(e)) => return io_error(e),
        Err(e) => return api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let sink = S3Part {
        files: files.clone(),
        f: f.clone(),
        length: range.length,
        buf: Vec::new(),
        flushed_to: have,
    };
    super::part::receive(state, appliance, &f, range, have, sink, req.into_body()).await
}

/// A part on S3: its bytes become segments of about [`SEGMENT`] bytes as
/// they arrive; the last part's tail (up to [`SEGMENT`]) stays in memory
/// for the hash at the end.
struct S3Part {
    files: S3Files,
    f: FileRef,
    length: u64,
    /// Bytes not yet in a segment, from byte `flushed_to` of the file.
    buf: Vec<u8>,
    flushed_to: u64,
}

impl S3Part {
    /// Writes what is buffered as a segment.
    async fn flush(&mut self) -> Result<(), Response> {
        let start = self.flushed_to;
        let buf = std::mem::take(&mut self.buf);
        self.flushed_to += buf.len() as u64;
        let (fs, f, length) = (self.files.clone(), self.f.clone(), self.length);
        match tokio::task::spawn_blocking(move || fs.put_segment(&f, length, start, buf)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(io_error(e)),
            Err(e) => Err(api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        }
    }
}

impl super::part::PartSink for S3Part {
    async fn take(&mut self, chunk: bytes::Bytes) -> Result<(), Response> {
        self.buf.extend_from_slice(&chunk);
        if self.buf.len() > SEGMENT {
            self.flush().await?;
        }
        Ok(())
    }

    /// Segments already written stay: they hold the file's bytes, and the
    /// hash at the end decides.
    async fn overrun(&mut self) {}

    async fn keep(&mut self) -> Result<(), Response> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.flush().await
    }

    async fn finish(self) -> Result<std::io::Result<Finish>, tokio::task::JoinError> {
        let S3Part {
            files,
            f,
            length,
            buf,
            flushed_to,
        } = self;
        tokio::task::spawn_blocking(move || files.finish(&f, length, flushed_to, &buf)).await
    }
}

/// `GET` of a file on the S3 backend: streamed from S3 as it arrives.
pub async fn get(files: &S3Files, f: &FileRef) -> Response {
    let (fs, f2) = (files.clone(), f.clone());
    let (len, mut resp) = match tokio::task::spawn_blocking(move || fs.read(&f2)).await {
        Ok(Ok(Some(r))) => r,
        Ok(Ok(None)) => return api_error(StatusCode::NOT_FOUND, "no such file"),
        Ok(Err(e)) => return io_error(e),
        Err(e) => return api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; 256 << 10];
        loop {
            match resp.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if tx
                        .blocking_send(Ok(bytes::Bytes::copy_from_slice(&buf[..n])))
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    let body = Body::from_stream(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    (
        StatusCode::OK,
        [(header::CONTENT_LENGTH, len.to_string())],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_cover_from_zero_without_gaps_and_may_overlap() {
        let s = |start, end| Segment {
            key: String::new(),
            start,
            end,
        };
        assert_eq!(coverage(&[]), 0);
        assert_eq!(coverage(&[s(0, 8), s(8, 10)]), 10);
        assert_eq!(coverage(&[s(0, 3), s(0, 8), s(8, 9)]), 9);
        assert_eq!(coverage(&[s(0, 8), s(9, 10)]), 8);
        assert_eq!(coverage(&[s(2, 8)]), 0);
    }
}
