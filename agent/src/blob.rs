//! Turning a chunk or tree into what is stored in a pack and back: zstd
//! (kept only when it saves space), then AES-256-GCM.

use levee_proto::repo::{BlobId, BlobKind, Compression, MasterKey};

/// A blob ready for a pack.
pub struct EncodedBlob {
    pub kind: BlobKind,
    pub compression: Compression,
    pub id: BlobId,
    pub raw_length: u32,
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
}

/// zstd level 3: ~300 MB/s per core, most of level 19's gain on office data.
/// Measured on the benchmark data (docs/BENCHMARKS.md): level 2 output is
/// 2.6% larger and level 1 7.4%, which would make the repository larger
/// than restic's; the first backup's CPU is about half this compression.
const ZSTD_LEVEL: i32 = 3;

/// A zstd context to reuse: creating one per blob costs more than
/// compressing a small file.
pub fn compressor() -> Option<zstd::bulk::Compressor<'static>> {
    zstd::bulk::Compressor::new(ZSTD_LEVEL).ok()
}

pub fn encode(
    key: &MasterKey,
    kind: BlobKind,
    id: BlobId,
    raw: &[u8],
    z: Option<&mut zstd::bulk::Compressor<'static>>,
) -> EncodedBlob {
    let compressed = match z {
        Some(z) => z.compress(raw).ok(),
        None => zstd::bulk::compress(raw, ZSTD_LEVEL).ok(),
    }
    .filter(|c| c.len() + 16 < raw.len());
    let (compression, data) = match compressed {
        Some(c) => (Compression::Zstd, key.encrypt(&c)),
        None => (Compression::None, key.encrypt(raw)),
    };
    EncodedBlob {
        kind,
        compression,
        id,
        raw_length: raw.len() as u32,
        data,
    }
}

/// Decrypts, decompresses and verifies a stored blob.
pub fn decode(
    key: &MasterKey,
    id: BlobId,
    compression: Compression,
    stored: &[u8],
) -> Result<Vec<u8>, BlobError> {
    let plain = key.decrypt(stored).map_err(|_| BlobError::Decrypt(id))?;
    let raw = match compression {
        Compression::None => plain,
        Compression::Zstd => decompress(&plain).map_err(|e| BlobError::Decompress(id, e))?,
    };
    if key.blob_id(&raw) != id {
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
