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
const ZSTD_LEVEL: i32 = 3;

pub fn encode(key: &MasterKey, kind: BlobKind, id: BlobId, raw: &[u8]) -> EncodedBlob {
    let compressed = zstd::bulk::compress(raw, ZSTD_LEVEL).ok().filter(|c| c.len() + 16 < raw.len());
    let (compression, data) = match compressed {
        Some(c) => (Compression::Zstd, key.encrypt(&c)),
        None => (Compression::None, key.encrypt(raw)),
    };
    EncodedBlob { kind, compression, id, raw_length: raw.len() as u32, data }
}

/// Decrypts, decompresses and verifies a stored blob.
pub fn decode(key: &MasterKey, id: BlobId, compression: Compression, stored: &[u8]) -> Result<Vec<u8>, BlobError> {
    let plain = key.decrypt(stored).map_err(|_| BlobError::Decrypt(id))?;
    let raw = match compression {
        Compression::None => plain,
        Compression::Zstd => zstd::stream::decode_all(&plain[..]).map_err(|e| BlobError::Decompress(id, e))?,
    };
    if key.blob_id(&raw) != id {
        return Err(BlobError::Mismatch(id));
    }
    Ok(raw)
}
