//! Delta download of a release's rootfs: chunk the running slot with the
//! parameters of the new release's signed chunk index
//! ([`levee_proto::delta`]), copy the chunks it already has into the
//! inactive slot, and fetch only the others with `Range` requests on the
//! rootfs target (adjacent chunks coalesced, at most [`MAX_RANGE`] per
//! request), each chunk checked against its sha256 in the index before it
//! is written. The caller then checks the whole target's signed sha256
//! from disk ([`super::fetch::verify_on_disk`]) and falls back to the full
//! download on any failure.
//!
//! Resumable like the full download: `update/<target>.delta` records,
//! after a sync, how many chunks of the new file are written; a resumed
//! run plans only the rest (the final whole-file check covers every byte).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use levee_proto::delta::{self, ChunkId, ChunkIndex, IndexBuilder, Op};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::client::TargetRef;
use super::fetch::{self, io, unreachable, FetchOptions, CHECKPOINT};
use super::{Refusal, UpdateError};

/// Largest `Range` request: small enough that a checkpoint follows soon
/// after, large enough that requests stay few.
pub const MAX_RANGE: u64 = 4 << 20;

/// What a delta download did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaStats {
    /// Bytes received over the network: the index and the ranges.
    pub downloaded: u64,
    /// Bytes of the index.
    pub index_bytes: u64,
    /// Bytes of the new rootfs copied from the running slot (this run).
    pub reused: u64,
    /// Bytes of the new rootfs fetched (this run).
    pub fetched: u64,
    /// `Range` requests made.
    pub ranges: usize,
    /// Chunks of the new rootfs and the chunk a resumed run started at.
    pub chunks: usize,
    pub resumed_chunk: usize,
}

#[derive(Debug, Serialize, Deserialize)]
struct DeltaProgress {
    sha256: String,
    /// Chunks at the start of the destination that are synced.
    next_chunk: usize,
}

pub(crate) fn progress_path(dir: &Path, target: &TargetRef) -> PathBuf {
    dir.join(format!("{}.delta", fetch::sanitize(&target.name)))
}

/// Forgets a delta's progress (after the target was written another way,
/// or failed its final check).
pub fn forget(dir: &Path, target: &TargetRef) {
    let _ = std::fs::remove_file(progress_path(dir, target));
}

/// Writes `target` into `dest` from `seed` (the running slot) and the
/// server, guided by the signed chunk index `index_ref`.
pub fn fetch_delta(
    target: &TargetRef,
    index_ref: &TargetRef,
    seed: &Path,
    dest: &Path,
    opts: FetchOptions<'_>,
) -> Result<DeltaStats, UpdateError> {
    if seed == dest {
        return Err(UpdateError::Setup(format!(
            "the delta source and destination are both {}",
            seed.display()
        )));
    }
    std::fs::create_dir_all(opts.progress_dir).map_err(io("creating", opts.progress_dir))?;
    let client = fetch::http_client(opts.timeout)?;
    let raw = fetch_index(&client, index_ref)?;
    let index = ChunkIndex::parse(&raw).map_err(|e| {
        UpdateError::refused(Refusal::Incomplete, format!("{}: {e}", index_ref.name))
    })?;
    if index.length != target.length {
        return Err(UpdateError::refused(
            Refusal::Incomplete,
            format!(
                "{} describes {} bytes, {} is {} bytes",
                index_ref.name, index.length, target.name, target.length
            ),
        ));
    }
    let have = chunk_seed(seed, &index)?;

    let progress_path = progress_path(opts.progress_dir, target);
    let from_chunk = std::fs::read(&progress_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<DeltaProgress>(&b).ok())
        .filter(|p| p.sha256 == target.sha256 && p.next_chunk <= index.chunks.len())
        .map_or(0, |p| p.next_chunk);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dest)
        .map_err(io("opening", dest))?;
    if let Some(c) = fetch::capacity(&file, dest)?.filter(|c| *c < target.length) {
        return Err(UpdateError::Setup(format!(
            "{} ({c} bytes) is too small for {} ({} bytes)",
            dest.display(),
            target.name,
            target.length
        )));
    }
    let seed_file = File::open(seed).map_err(io("opening", seed))?;
    let (ops, _) = delta::plan(&index, &have, from_chunk, MAX_RANGE);
    let starts: Vec<u64> = index.offsets().map(|(at, _)| at).collect();
    let mut stats = DeltaStats {
        downloaded: raw.len() as u64,
        index_bytes: raw.len() as u64,
        chunks: index.chunks.len(),
        resumed_chunk: from_chunk,
        ..Default::default()
    };
    let mut throttle = opts.throttle;
    let mut since_checkpoint = 0u64;
    for op in ops {
        let (end, at) = match op {
            Op::Copy { chunk, from } => {
                let c = index.chunks[chunk];
                let mut buf = vec![0u8; c.len as usize];
                seed_file
                    .read_exact_at(&mut buf, from)
                    .map_err(io("reading", seed))?;
                if ChunkId::of(&buf) != c.id {
                    return Err(UpdateError::Setup(format!(
                        "{} changed while it was read (chunk at {from})",
                        seed.display()
                    )));
                }
                file.write_all_at(&buf, starts[chunk])
                    .map_err(io("writing", dest))?;
                stats.reused += c.len as u64;
                since_checkpoint += c.len as u64;
                (chunk + 1, starts[chunk])
            }
            Op::Fetch {
                first,
                end,
                start,
                len,
            } => {
                let body = fetch_range(&client, target, start, len, throttle.as_deref_mut())?;
                for (i, c) in index.chunks.iter().enumerate().take(end).skip(first) {
                    let off = (starts[i] - start) as usize;
                    let bytes = &body[off..off + c.len as usize];
                    let got = ChunkId::of(bytes);
                    if got != c.id {
                        // Earlier ops are written: keep them for a resume.
                        checkpoint(&file, dest, &progress_path, target, first)?;
                        return Err(UpdateError::refused(
                            Refusal::ArbitraryPackage,
                            format!(
                                "{}: chunk {i} (bytes {}..{}) has sha256 {got}, the signed index says {}",
                                target.name,
                                starts[i],
                                starts[i] + c.len as u64,
                                c.id
                            ),
                        ));
                    }
                }
                file.write_all_at(&body, start)
                    .map_err(io("writing", dest))?;
                stats.fetched += len;
                stats.downloaded += len;
                stats.ranges += 1;
                since_checkpoint += len;
                (end, start)
            }
        };
        if since_checkpoint >= CHECKPOINT {
            since_checkpoint = 0;
            checkpoint(&file, dest, &progress_path, target, end)?;
            (opts.progress)(at, target.length);
        }
    }
    file.sync_all().map_err(io("syncing", dest))?;
    let _ = std::fs::remove_file(&progress_path);
    (opts.progress)(target.length, target.length);
    Ok(stats)
}

/// The signed index: at most [`delta::MAX_INDEX_BYTES`], length and
/// sha256 as the targets metadata says.
fn fetch_index(client: &reqwest::blocking::Client, r: &TargetRef) -> Result<Vec<u8>, UpdateError> {
    if r.length > delta::MAX_INDEX_BYTES as u64 {
        return Err(UpdateError::refused(
            Refusal::EndlessData,
            format!(
                "{} is signed as {} bytes, over the {}-byte limit",
                r.name,
                r.length,
                delta::MAX_INDEX_BYTES
            ),
        ));
    }
    let resp = client
        .get(&r.url)
        .send()
        .map_err(|e| unreachable(&r.url, e))?;
    if !resp.status().is_success() {
        return Err(unreachable(&r.url, format!("HTTP {}", resp.status())));
    }
    let mut bytes = Vec::new();
    resp.take(r.length + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| unreachable(&r.url, e))?;
    let sum = hex::encode(Sha256::digest(&bytes));
    if bytes.len() as u64 != r.length || sum != r.sha256 {
        return Err(UpdateError::refused(
            Refusal::ArbitraryPackage,
            format!(
                "{}: {} bytes with sha256 {sum}, the signed metadata says {} bytes, {}",
                r.name,
                bytes.len(),
                r.length,
                r.sha256
            ),
        ));
    }
    Ok(bytes)
}

/// Chunks the running slot as far as its squashfs image goes, with the
/// new index's sizes: the chunks found there by id, with their offsets.
fn chunk_seed(seed: &Path, index: &ChunkIndex) -> Result<HashMap<ChunkId, u64>, UpdateError> {
    let file = File::open(seed).map_err(io("opening", seed))?;
    let mut sb = [0u8; 96];
    file.read_exact_at(&mut sb, 0)
        .map_err(io("reading the superblock of", seed))?;
    let len = delta::squashfs_len(&sb)
        .ok_or_else(|| UpdateError::Setup(format!("{} holds no squashfs image", seed.display())))?;
    let wanted: std::collections::HashSet<ChunkId> = index.chunks.iter().map(|c| c.id).collect();
    let mut builder = IndexBuilder::new(index.min, index.avg, index.max);
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < len {
        let want = ((len - at) as usize).min(buf.len());
        let n = file
            .read_at(&mut buf[..want], at)
            .map_err(io("reading", seed))?;
        if n == 0 {
            break; // a file shorter than its padding: chunk what is there
        }
        builder.update(&buf[..n]);
        at += n as u64;
    }
    Ok(builder
        .finish()
        .offsets()
        .filter(|(_, c)| wanted.contains(&c.id))
        .map(|(at, c)| (c.id, at))
        .collect())
}

/// Bytes `start..start + len` of the target, exactly.
fn fetch_range(
    client: &reqwest::blocking::Client,
    target: &TargetRef,
    start: u64,
    len: u64,
    mut throttle: Option<&mut fetch::Throttle>,
) -> Result<Vec<u8>, UpdateError> {
    let last = start + len - 1;
    let mut resp = client
        .get(&target.url)
        .header(reqwest::header::RANGE, format!("bytes={start}-{last}"))
        .send()
        .map_err(|e| unreachable(&target.url, e))?;
    if resp.status().as_u16() != 206 {
        return Err(unreachable(
            &target.url,
            format!(
                "HTTP {} to a Range request (the delta needs ranges)",
                resp.status()
            ),
        ));
    }
    let mut body = vec![0u8; len as usize];
    let mut got = 0usize;
    while got < body.len() {
        let n = resp
            .read(&mut body[got..])
            .map_err(|e| unreachable(&target.url, e))?;
        if n == 0 {
            return Err(unreachable(
                &target.url,
                format!("range {start}-{last} ended after {got} of {len} bytes"),
            ));
        }
        if let Some(t) = throttle.as_deref_mut() {
            std::thread::sleep(t.take(n, std::time::Instant::now()));
        }
        got += n;
    }
    // More than asked for is a server that ignores the range's end.
    let mut extra = [0u8; 1];
    if resp
        .read(&mut extra)
        .map_err(|e| unreachable(&target.url, e))?
        != 0
    {
        return Err(UpdateError::refused(
            Refusal::EndlessData,
            format!(
                "{}: range {start}-{last} sent more than {len} bytes",
                target.url
            ),
        ));
    }
    Ok(body)
}

fn checkpoint(
    file: &File,
    dest: &Path,
    progress_path: &Path,
    target: &TargetRef,
    next_chunk: usize,
) -> Result<(), UpdateError> {
    file.sync_data().map_err(io("syncing", dest))?;
    let p = DeltaProgress {
        sha256: target.sha256.clone(),
        next_chunk,
    };
    let bytes = serde_json::to_vec(&p).map_err(|e| UpdateError::Setup(e.to_string()))?;
    super::write_atomic(progress_path, &bytes).map_err(io("writing", progress_path))
}
