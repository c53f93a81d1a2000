//! One `PUT` of a part, whatever keeps the files: the checks and the
//! body loop both backends share (where the part must start, the part's
//! room, usage and byte counts, a cut body, the answers), with a
//! [`PartSink`] per backend for where the bytes go (the directory's
//! locked partial file, [`super::server`]; the bucket's segments,
//! [`super::s3`]).

use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use levee_proto::offsite::{FileRef, UploadRange, UPLOAD_OFFSET};
use tracing::info;

use super::disk::Finish;
use super::server::{conflict, drain, finished, StoreState, MAX_DRAIN_BYTES, MAX_PART_BYTES};
use crate::enroll::https::api_error;

/// Where a part's bytes go as they arrive, on one backend.
pub(super) trait PartSink: Send + Sized {
    /// Takes the next bytes of the part (`Err`: the answer, e.g. an I/O
    /// error).
    async fn take(&mut self, chunk: Bytes) -> Result<(), Response>;

    /// The body ran past the part's room: undo what this part wrote where
    /// the backend can (the answer is 400 either way).
    async fn overrun(&mut self);

    /// The part ended before the file's end, or was cut: makes what
    /// arrived durable, so the appliance resumes after it.
    async fn keep(&mut self) -> Result<(), Response>;

    /// The file's last byte arrived: checks the hash and creates the file.
    async fn finish(self) -> Result<std::io::Result<Finish>, tokio::task::JoinError>;
}

/// The part `range` of `f`, of which the store holds `have` bytes, into
/// `sink`: 409 + `Upload-Offset` when the part does not start there;
/// else the body is taken as it arrives (at most the part's room: the
/// rest of the file, at most [`MAX_PART_BYTES`]), bytes of a cut body
/// included; 202 + `Upload-Offset` while the file is short, the finished
/// file's answer after its last byte.
pub(super) async fn receive(
    state: &StoreState,
    appliance: i64,
    f: &FileRef,
    range: UploadRange,
    have: u64,
    mut sink: impl PartSink,
    body: Body,
) -> Response {
    if have != range.offset {
        info!(appliance, file = %f.path(), have, offset = range.offset, "upload part does not start where the store is");
        // Released first (the directory's lock): another node may take
        // the upload over meanwhile.
        drop(sink);
        drain(body, MAX_DRAIN_BYTES).await;
        return conflict(
            have,
            &format!("the store holds {have} bytes of this file; send from there"),
        );
    }
    let room = (range.length - range.offset).min(MAX_PART_BYTES);
    let mut written = 0u64;
    let mut stream = body.into_data_stream();
    let mut cut = None;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                cut = Some(e.to_string());
                break;
            }
        };
        let n = chunk.len() as u64;
        if written + n > room {
            sink.overrun().await;
            return api_error(
                StatusCode::BAD_REQUEST,
                format!("the body runs past Upload-Length or the {MAX_PART_BYTES}-byte part limit"),
            );
        }
        if let Err(r) = sink.take(chunk).await {
            return r;
        }
        written += n;
        state.usage.add(&f.ns.customer, n);
        state.stats.bytes_received.fetch_add(n, Ordering::Relaxed);
    }
    let done = have + written;
    if done < range.length || cut.is_some() {
        if let Err(r) = sink.keep().await {
            return r;
        }
        if let Some(why) = cut {
            info!(appliance, file = %f.path(), kept = done, %why, "upload cut; its bytes so far are kept");
            return conflict(done, "the upload was cut");
        }
        let mut r = StatusCode::ACCEPTED.into_response();
        if let Ok(v) = HeaderValue::from_str(&done.to_string()) {
            r.headers_mut().insert(UPLOAD_OFFSET, v);
        }
        return r;
    }
    finished(state, appliance, f, sink.finish().await)
}
