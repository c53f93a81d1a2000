//! Turning a chunk or tree into what is stored in a pack and back: zstd
//! (kept only when it saves space), then AES-256-GCM. Small chunks go in
//! frames of several blobs, compressed and encrypted together
//! (`levee_proto::repo::frame` says why).

use levee_proto::repo::{frame, BlobId, BlobKind, Compression, FrameError, MasterKey};

/// One blob inside an [`EncodedBlob`].
#[derive(Debug, Clone)]
pub struct BlobMeta {
    pub kind: BlobKind,
    pub id: BlobId,
    pub raw_length: u32,
    /// 0 for a blob stored alone, else its 1-based place in the frame.
    pub member: u16,
}

/// What goes into a pack as one encrypted piece: a single blob, or a frame
/// of several.
pub struct EncodedBlob {
    pub compression: Compression,
    pub blobs: Vec<BlobMeta>,
    pub data: Vec<u8>,
}

/// A chunk waiting to be encoded.
pub struct RawBlob {
    pub kind: BlobKind,
    pub id: BlobId,
    pub data: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob {0}: cannot decrypt (corrupted)")]
    Decrypt(BlobId),
    #[error("blob {0}: cannot decompress: {1}")]
    Decompress(BlobId, std::io::Error),
    #[error("blob {0}: contents do not match the id (corrupted)")]
    Mismatch(BlobId),
    #[error("blob {0}: {1} (corrupted)")]
    Frame(BlobId, FrameError),
}

/// zstd level 2, chosen by measurement on ~2 GB of `/usr` with small blobs
/// in frames (docs/BENCHMARKS.md): level 2 takes 18% less CPU for the whole
/// first backup than level 3 (10.1 against 12.3 CPU-seconds) for a
/// repository 4% larger (683 against 655 MB), which is still smaller than
/// level 3 without frames (687 MB) and than restic's (702 MB). Compression
/// was half of the backup's CPU at level 3. Data that is mostly large,
/// compressible files gains nothing from frames and comes out ~3% larger
/// than at level 3.
const ZSTD_LEVEL: i32 = 2;

/// A zstd context to reuse: creating one per blob costs more than
/// compressing a small file.
pub fn compressor() -> Option<zstd::bulk::Compressor<'static>> {
    zstd::bulk::Compressor::new(ZSTD_LEVEL).ok()
}

fn compress_and_encrypt(
    key: &MasterKey,
    raw: &[u8],
    z: Option<&mut zstd::bulk::Compressor<'static>>,
) -> (Compression, Vec<u8>) {
    let compressed = match z {
        Some(z) => z.compress(raw).ok(),
        None => zstd::bulk::compress(raw, ZSTD_LEVEL).ok(),
    }
    .filter(|c| c.len() + 16 < raw.len());
    match compressed {
        Some(c) => (Compression::Zstd, key.encrypt(&c)),
        None => (Compression::None, key.encrypt(raw)),
    }
}

/// Encodes one blob to be stored alone.
pub fn encode(
    key: &MasterKey,
    kind: BlobKind,
    id: BlobId,
    raw: &[u8],
    z: Option<&mut zstd::bulk::Compressor<'static>>,
) -> EncodedBlob {
    let (compression, data) = compress_and_encrypt(key, raw, z);
    EncodedBlob {
        compression,
        blobs: vec![BlobMeta {
            kind,
            id,
            raw_length: raw.len() as u32,
            member: 0,
        }],
        data,
    }
}

/// Encodes blobs (at most `FRAME_MAX_MEMBERS`) as one frame.
pub fn encode_frame(
    key: &MasterKey,
    members: &[RawBlob],
    z: Option<&mut zstd::bulk::Compressor<'static>>,
) -> EncodedBlob {
    let raws: Vec<&[u8]> = members.iter().map(|m| m.data.as_slice()).collect();
    let (compression, data) = compress_and_encrypt(key, &frame::build(&raws), z);
    EncodedBlob {
        compression,
        blobs: members
            .iter()
            .zip(1u16..)
            .map(|(m, k)| BlobMeta {
                kind: m.kind,
                id: m.id,
                raw_length: m.data.len() as u32,
                member: k,
            })
            .collect(),
        data,
    }
}

/// Decrypts and decompresses a stored frame (or lone blob) without
/// verifying any id: the caller takes members out with [`frame_member`].
pub fn decode_frame(
    key: &MasterKey,
    id: BlobId,
    compression: Compression,
    stored: &[u8],
) -> Result<Vec<u8>, BlobError> {
    decode_frame_keyed(key, id, compression, stored).map(|(p, _)| p)
}

/// [`decode_frame`], and whether the current key (not one retired by
/// `key rotate`) opened it.
pub fn decode_frame_keyed(
    key: &MasterKey,
    id: BlobId,
    compression: Compression,
    stored: &[u8],
) -> Result<(Vec<u8>, bool), BlobError> {
    let (plain, current) = key
        .decrypt_pack_data(stored)
        .map_err(|_| BlobError::Decrypt(id))?;
    let raw = match compression {
        Compression::None => plain,
        Compression::Zstd => decompress(&plain).map_err(|e| BlobError::Decompress(id, e))?,
    };
    Ok((raw, current))
}

/// [`decode_frame`] of a buffer the caller gives up (decrypted in place).
pub fn decode_frame_owned(
    key: &MasterKey,
    id: BlobId,
    compression: Compression,
    stored: Vec<u8>,
) -> Result<Vec<u8>, BlobError> {
    let (plain, _) = key
        .decrypt_pack_data_owned(stored)
        .map_err(|_| BlobError::Decrypt(id))?;
    match compression {
        Compression::None => Ok(plain),
        Compression::Zstd => decompress(&plain).map_err(|e| BlobError::Decompress(id, e)),
    }
}

/// [`decode`] of a buffer the caller gives up.
pub fn decode_owned(
    key: &MasterKey,
    id: BlobId,
    compression: Compression,
    member: u16,
    stored: Vec<u8>,
) -> Result<Vec<u8>, BlobError> {
    let raw = decode_frame_owned(key, id, compression, stored)?;
    if member != 0 {
        return frame_member(key, id, &raw, member);
    }
    if !key.id_matches(&raw, &id) {
        return Err(BlobError::Mismatch(id));
    }
    Ok(raw)
}

/// Blob `id`, member `member` of a decoded frame, verified against its id.
pub fn frame_member(
    key: &MasterKey,
    id: BlobId,
    frame_plain: &[u8],
    member: u16,
) -> Result<Vec<u8>, BlobError> {
    let raw = frame::member(frame_plain, member).map_err(|e| BlobError::Frame(id, e))?;
    if !key.id_matches(raw, &id) {
        return Err(BlobError::Mismatch(id));
    }
    Ok(raw.to_vec())
}

/// Decrypts, decompresses and verifies a stored blob.
pub fn decode(
    key: &MasterKey,
    id: BlobId,
    compression: Compression,
    member: u16,
    stored: &[u8],
) -> Result<Vec<u8>, BlobError> {
    let raw = decode_frame(key, id, compression, stored)?;
    if member != 0 {
        return frame_member(key, id, &raw, member);
    }
    if !key.id_matches(&raw, &id) {
        return Err(BlobError::Mismatch(id));
    }
    Ok(raw)
}

thread_local! {
    /// One zstd decompression context per thread: creating one per blob
    /// costs more than decompressing a small file.
    static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { std::cell::RefCell::new(None) };
}

fn decompress(data: &[u8]) -> std::io::Result<Vec<u8>> {
    // Our frames carry their content size; the cap guards a forged one.
    let size = match zstd::zstd_safe::get_frame_content_size(data) {
        Ok(Some(n)) if n <= 64 * 1024 * 1024 => n as usize,
        _ => return zstd::stream::decode_all(data),
    };
    DCTX.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new()?);
        }
        match d.as_mut() {
            Some(z) => z.decompress(data, size),
            None => zstd::stream::decode_all(data),
        }
    })
}
