//! The store's one handler: parse (`levee_proto::offsite`), authorize by
//! the certificate's appliance and the namespace's binding, then act on
//! [`Files`] (a directory or an S3 bucket). Appliances can create files and read their own; nothing they
//! send deletes or replaces a file.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Extension, Request as HttpRequest, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use futures_util::StreamExt;
use levee_proto::offsite::{
    DeletionRequest, FileRef, Namespace, Request, UploadRange, UPLOAD_LENGTH, UPLOAD_OFFSET,
};
use tracing::{info, warn};

use super::disk::{Disk, FileState, Finish};
use super::files::Files;
use crate::enroll::https::{api_error, authorize, Peer};
use crate::store::{Appliance, Store};

/// Counters for operators (and the tests that count resent bytes).
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Request-body bytes written to upload files.
    pub bytes_received: AtomicU64,
    pub files_created: AtomicU64,
}

#[derive(Clone)]
pub struct StoreState {
    pub store: Arc<dyn Store>,
    pub files: Files,
    pub stats: Arc<StoreStats>,
    /// Customers' usage, for their quotas.
    pub usage: Arc<super::quota::Usage>,
}

/// Largest part of a file one PUT may carry.
pub const MAX_PART_BYTES: u64 = 256 << 20;

pub fn router(state: StoreState) -> Router {
    Router::new().fallback(handle).with_state(state)
}

pub(super) fn io_error(e: std::io::Error) -> Response {
    warn!(error = %e, "offsite store I/O failed");
    api_error(StatusCode::INTERNAL_SERVER_ERROR, format!("store I/O: {e}"))
}

async fn handle(
    State(state): State<StoreState>,
    Extension(peer): Extension<Peer>,
    req: HttpRequest,
) -> Response {
    let parsed = match Request::parse(req.method().as_str(), req.uri().path()) {
        Ok(r) => r,
        Err(e @ levee_proto::offsite::OffsiteError::Method { .. }) => {
            return api_error(StatusCode::METHOD_NOT_ALLOWED, e.to_string())
        }
        Err(e) => return api_error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let (ns, writes) = match &parsed {
        Request::Head(f) | Request::Get(f) | Request::Verify(f) => (f.ns.clone(), false),
        Request::Put(f) => (f.ns.clone(), true),
        Request::List(ns, _) => (ns.clone(), false),
        Request::Delete(ns) => (ns.clone(), true),
    };
    let st = state.clone();
    let admitted = tokio::task::spawn_blocking(move || admit(&st, &peer, &ns, writes)).await;
    let appliance = match admitted {
        Ok(Ok(Some(a))) => a,
        // Reads of a namespace nobody has written: nothing there.
        Ok(Ok(None)) => return api_error(StatusCode::NOT_FOUND, "no such repository"),
        Ok(Err(r)) => return *r,
        Err(e) => return api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    match parsed {
        Request::Head(f) => head(&state, &f).await,
        Request::Get(f) => get(&state, &f).await,
        Request::List(ns, kind) => {
            let files = state.files.clone();
            match tokio::task::spawn_blocking(move || files.list(&ns, kind)).await {
                Ok(Ok(l)) => Json(l).into_response(),
                Ok(Err(e)) => io_error(e),
                Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
        Request::Put(f) => put(&state, appliance.id, f, req).await,
        Request::Verify(f) => {
            let (files, f2) = (state.files.clone(), f.clone());
            let now = crate::store::now();
            match tokio::task::spawn_blocking(move || files.verify(&f2, now)).await {
                Ok(Ok(Some(ok))) => {
                    if !ok {
                        warn!(appliance = appliance.id, file = %f.path(), "stored file does not match its name: quarantined for re-upload");
                    }
                    Json(levee_proto::offsite::Verified { ok }).into_response()
                }
                Ok(Ok(None)) => api_error(StatusCode::NOT_FOUND, "no such file"),
                Ok(Err(e)) => io_error(e),
                Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
        Request::Delete(ns) => delete(&state, appliance.id, ns, req).await,
    }
}

/// The appliance behind the certificate, if it may use `ns`: its own
/// customer's, and bound to it (a first write binds an unbound namespace;
/// the appliance that replaced the owner, directly or down a chain of
/// replacements, takes the binding over). `Ok(None)`: a read of an unbound
/// namespace.
fn admit(
    st: &StoreState,
    peer: &Peer,
    ns: &Namespace,
    writes: bool,
) -> Result<Option<Appliance>, Box<Response>> {
    let a = authorize(st.store.as_ref(), peer)?;
    let forbid = |why: String| {
        warn!(appliance = a.id, namespace = %ns.path(), %why, "offsite request refused");
        Box::new(api_error(StatusCode::FORBIDDEN, why))
    };
    if a.customer.as_deref() != Some(ns.customer.as_str()) {
        return Err(forbid(format!(
            "appliance {} does not serve customer {}",
            a.id, ns.customer
        )));
    }
    let io = |e: std::io::Error| Box::new(io_error(e));
    let owner = match st.files.owner(ns).map_err(io)? {
        Some(o) => o,
        None if writes => {
            let o = st.files.claim(ns, a.id).map_err(io)?;
            if o == a.id {
                info!(appliance = a.id, namespace = %ns.path(), "offsite namespace bound");
            }
            o
        }
        None => return Ok(None),
    };
    if owner == a.id {
        return Ok(Some(a));
    }
    let mut next = owner;
    for _ in 0..16 {
        let replaced_by = match st.store.appliance_by_id(next) {
            Ok(found) => found.and_then(|o| o.replaced_by),
            Err(e) => return Err(Box::new(crate::enroll::https::store_error(&e))),
        };
        match replaced_by {
            Some(id) if id == a.id => {
                st.files.rebind(ns, a.id).map_err(io)?;
                info!(appliance = a.id, previous = owner, namespace = %ns.path(), "offsite namespace rebound to the replacement");
                return Ok(Some(a));
            }
            Some(id) => next = id,
            None => break,
        }
    }
    Err(forbid(format!(
        "repository {} belongs to appliance {owner}",
        ns.path()
    )))
}

async fn head(state: &StoreState, f: &FileRef) -> Response {
    let (files, f2) = (state.files.clone(), f.clone());
    match tokio::task::spawn_blocking(move || files.state(&f2)).await {
        Ok(Ok(FileState::Complete(n))) => {
            (StatusCode::OK, [("levee-size", n.to_string())]).into_response()
        }
        Ok(Ok(FileState::Partial(n))) => {
            (StatusCode::NOT_FOUND, [(UPLOAD_OFFSET, n.to_string())]).into_response()
        }
        Ok(Ok(FileState::Absent)) => StatusCode::NOT_FOUND.into_response(),
        Ok(Err(e)) => io_error(e),
        Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn get(state: &StoreState, f: &FileRef) -> Response {
    let disk = match &state.files {
        Files::Dir(d) => d,
        Files::S3(s) => return super::s3::get(s, f).await,
    };
    match tokio::fs::File::open(disk.file_path(f)).await {
        Ok(file) => {
            let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
            let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
            (
                StatusCode::OK,
                [(header::CONTENT_LENGTH, len.to_string())],
                body,
            )
                .into_response()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            api_error(StatusCode::NOT_FOUND, "no such file")
        }
        Err(e) => io_error(e),
    }
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

pub(super) fn conflict(offset: u64, why: &str) -> Response {
    let mut r = api_error(StatusCode::CONFLICT, why);
    if let Ok(v) = HeaderValue::from_str(&offset.to_string()) {
        r.headers_mut().insert(UPLOAD_OFFSET, v);
    }
    r
}

/// A part of a file: appended at `Upload-Offset` if that is exactly what
/// the store holds; the last part checks the hash and creates the file.
/// Bytes that arrived before a cut stay (fsynced), so the appliance resumes
/// after them.
async fn put(state: &StoreState, appliance: i64, f: FileRef, req: HttpRequest) -> Response {
    let range = match UploadRange::parse(
        header(req.headers(), UPLOAD_OFFSET),
        header(req.headers(), UPLOAD_LENGTH),
    ) {
        Ok(r) => r,
        Err(e) => {
            warn!(appliance, file = %f.path(), error = %e, "upload refused");
            return api_error(StatusCode::BAD_REQUEST, e.to_string());
        }
    };
    if let Err(r) = within_quota(state, appliance, &f, range).await {
        // The agent is still sending the part: read it (to a bound) so it
        // gets this answer instead of a broken connection.
        drain(req.into_body(), MAX_DRAIN_BYTES).await;
        return *r;
    }
    match &state.files {
        Files::Dir(d) => put_dir(state, d.clone(), appliance, f, range, req).await,
        Files::S3(s) => super::s3::put(state, s, appliance, f, range, req).await,
    }
}

/// 409 for a part of a file that exists: files are never overwritten.
pub(super) fn exists(size: u64) -> Response {
    (
        StatusCode::CONFLICT,
        [("levee-size", size.to_string())],
        Json(levee_proto::enroll::ApiError {
            error: "the file exists; files are create-only and never overwritten".into(),
        }),
    )
        .into_response()
}

/// The answer to the last part, once the backend has checked the hash.
pub(super) fn finished(
    state: &StoreState,
    appliance: i64,
    f: &FileRef,
    result: Result<std::io::Result<Finish>, tokio::task::JoinError>,
) -> Response {
    match result {
        Ok(Ok(Finish::Created)) => {
            state.stats.files_created.fetch_add(1, Ordering::Relaxed);
            StatusCode::CREATED.into_response()
        }
        Ok(Ok(Finish::Exists)) => StatusCode::OK.into_response(),
        Ok(Ok(Finish::Mismatch(got))) => {
            warn!(appliance, file = %f.path(), %got, "upload does not match its name; dropped");
            api_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("the bytes hash to {got}, not to the file's name; send the file again"),
            )
        }
        Ok(Err(e)) => io_error(e),
        Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// A part on the directory backend: appended to the locked partial file.
async fn put_dir(
    state: &StoreState,
    disk: Disk,
    appliance: i64,
    f: FileRef,
    range: UploadRange,
    req: HttpRequest,
) -> Response {
    let (d2, f2) = (disk.clone(), f.clone());
    let opened = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
        if let FileState::Complete(n) = d2.state(&f2)? {
            return Ok(Err(n));
        }
        Ok(Ok(d2.open_partial(&f2, range.length)?))
    })
    .await;
    let file = match opened {
        Ok(Ok(Ok(Some(file)))) => file,
        Ok(Ok(Ok(None))) => {
            info!(appliance, file = %f.path(), "upload refused: another one of this file holds it");
            let mut r = api_error(
                StatusCode::CONFLICT,
                "another upload of this file is under way; retry later",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            drain(req.into_body(), MAX_DRAIN_BYTES).await;
            return r;
        }
        Ok(Ok(Err(n))) => {
            warn!(appliance, file = %f.path(), "refused to overwrite an existing offsite file");
            drain(req.into_body(), MAX_DRAIN_BYTES).await;
            return exists(n);
        }
        Ok(Err(e)) => return io_error(e),
        Err(e) => return api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let have = match file.metadata() {
        Ok(m) => m.len(),
        Err(e) => return io_error(e),
    };
    let sink = DirPart {
        disk,
        f: f.clone(),
        length: range.length,
        file: tokio::fs::File::from_std(file),
        have,
        written: 0,
    };
    super::part::receive(state, appliance, &f, range, have, sink, req.into_body()).await
}

/// A part on the directory: appended to the upload's locked partial file
/// (the lock goes with it).
struct DirPart {
    disk: Disk,
    f: FileRef,
    length: u64,
    file: tokio::fs::File,
    /// What the file held before this part, and what this part added.
    have: u64,
    written: u64,
}

impl super::part::PartSink for DirPart {
    async fn take(&mut self, chunk: bytes::Bytes) -> Result<(), Response> {
        tokio::io::AsyncWriteExt::write_all(&mut self.file, &chunk)
            .await
            .map_err(io_error)?;
        self.written += chunk.len() as u64;
        Ok(())
    }

    async fn overrun(&mut self) {
        let _ = self.file.set_len(self.have + self.written).await;
    }

    async fn keep(&mut self) -> Result<(), Response> {
        self.file.sync_all().await.map_err(io_error)
    }

    async fn finish(self) -> Result<std::io::Result<Finish>, tokio::task::JoinError> {
        let file = self.file.into_std().await;
        let (disk, f, length) = (self.disk, self.f, self.length);
        tokio::task::spawn_blocking(move || disk.finish(&f, length, &file)).await
    }
}

/// A refused part's body (over quota, or a 409) is read and dropped up to
/// this, so the agent reads the answer instead of a connection broken
/// mid-body; past it the connection is closed (the agent then
/// resynchronises with `HEAD`).
pub(super) const MAX_DRAIN_BYTES: usize = 64 << 20;

pub(super) async fn drain(body: Body, limit: usize) {
    let mut stream = body.into_data_stream();
    let mut seen = 0;
    while let Some(Ok(chunk)) = stream.next().await {
        seen += chunk.len();
        if seen > limit {
            return;
        }
    }
}

/// Refuses (413, naming quota and usage) a part of a file that would take
/// the customer past its quota; a file already complete passes (the
/// answer is then 409 as for any existing file).
async fn within_quota(
    state: &StoreState,
    appliance: i64,
    f: &FileRef,
    range: UploadRange,
) -> Result<(), Box<Response>> {
    let (st, f2) = (state.clone(), f.clone());
    let judged =
        tokio::task::spawn_blocking(move || -> Result<Result<(), String>, Box<Response>> {
            let customer = &f2.ns.customer;
            let quota = st
                .store
                .offsite_quota(customer)
                .map_err(|e| Box::new(crate::enroll::https::store_error(&e)))?;
            if quota.is_none() {
                return Ok(Ok(()));
            }
            let boxed = |e| Box::new(io_error(e));
            if matches!(st.files.state(&f2).map_err(boxed)?, FileState::Complete(_)) {
                return Ok(Ok(()));
            }
            let usage = st.usage.current(&st.files, customer).map_err(boxed)?;
            let need = range.length.saturating_sub(range.offset);
            Ok(super::quota::check(customer, quota, usage, need))
        })
        .await;
    match judged {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(why))) => {
            warn!(appliance, file = %f.path(), %why, "upload refused: over quota");
            Err(Box::new(api_error(StatusCode::PAYLOAD_TOO_LARGE, why)))
        }
        Ok(Err(r)) => Err(r),
        Err(e) => Err(Box::new(api_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string(),
        ))),
    }
}

async fn delete(state: &StoreState, appliance: i64, ns: Namespace, req: HttpRequest) -> Response {
    let body = match axum::body::to_bytes(req.into_body(), levee_proto::offsite::MAX_DELETION_BYTES)
        .await
    {
        Ok(b) => b,
        Err(e) => return api_error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let parsed = match DeletionRequest::parse(&body) {
        Ok(r) => r,
        Err(e) => return api_error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let files = state.files.clone();
    let n = parsed.files.len();
    let ns2 = ns.clone();
    let now = crate::store::now();
    match tokio::task::spawn_blocking(move || files.add_deletion(&ns2, &parsed, now)).await {
        Ok(Ok(())) => {
            info!(appliance, namespace = %ns.path(), files = n, "deletion request kept for its grace period");
            StatusCode::ACCEPTED.into_response()
        }
        Ok(Err(e)) => io_error(e),
        Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
