//! Pack files: encrypted blobs back to back, then the encrypted header that
//! lists them, then an 8-byte trailer (header length u32 LE, magic "LVP1").
//! The header being at the end lets a pack be written in one pass and its
//! contents recovered without the index (after a crash, or by `check`).
//!
//! Plaintext header: magic "LVPH", version u8, count u32 LE, then `count`
//! entries of 48 bytes: kind u8, compression u8, blob id [32], offset u32,
//! stored length u32 (ciphertext incl. nonce and tag), raw length u32, frame
//! member u16 LE (0: the blob is stored alone; k: it is the k-th blob of the
//! frame stored at offset/length, see [`super::frame`]). Version 1 headers
//! (46-byte entries, no member) are still read. Version 3 (format 2
//! repositories) is version 2 followed by zero bytes up to a Padmé length,
//! so the header's size does not tell how many blobs the pack holds.

use super::file_formats::{
    BLOB_ENTRY_LEN, BLOB_ENTRY_LEN_V1, PACK_HEADER_MAGIC, PACK_TRAILER_LEN, PACK_TRAILER_MAGIC,
    VERSION, VERSION_1, VERSION_3,
};
use super::id::BlobId;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PackError {
    #[error("pack header: bad magic")]
    BadMagic,
    #[error("pack header: unsupported version {0}")]
    Version(u8),
    #[error("pack header: truncated at byte {0}")]
    Truncated(usize),
    #[error("pack header entry {0}: unknown {1} value {2}")]
    BadField(usize, &'static str, u8),
    #[error("pack header: padding is not all zeros")]
    BadPadding,
    #[error("pack trailer: bad magic")]
    BadTrailer,
    #[error("pack trailer: header length {0} exceeds file size {1}")]
    HeaderTooLong(u32, u64),
    #[error("pack header entry {0}: blob at {1}+{2} lies outside the data area of {3} bytes")]
    OutOfBounds(usize, u32, u32, u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlobKind {
    /// File content chunk.
    Data = 0,
    /// Serialised directory ([`super::tree::Tree`]).
    Tree = 1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    None = 0,
    Zstd = 1,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobEntry {
    pub kind: BlobKind,
    pub compression: Compression,
    pub id: BlobId,
    pub offset: u32,
    pub length: u32,
    pub raw_length: u32,
    /// 0 if the blob is stored alone, else its 1-based place in the frame
    /// stored at `offset`/`length`.
    pub member: u16,
}

/// Entry length for a header or index of `version` (checked by the caller).
pub(crate) fn entry_len(version: u8) -> usize {
    if version == VERSION_1 {
        BLOB_ENTRY_LEN_V1
    } else {
        BLOB_ENTRY_LEN
    }
}

impl BlobEntry {
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.push(self.kind as u8);
        out.push(self.compression as u8);
        out.extend_from_slice(&self.id.0);
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.length.to_le_bytes());
        out.extend_from_slice(&self.raw_length.to_le_bytes());
        out.extend_from_slice(&self.member.to_le_bytes());
    }

    /// Parses one entry of a `version` header or index; `b` must hold at
    /// least [`entry_len`] bytes.
    pub fn parse(n: usize, b: &[u8], version: u8) -> Result<Self, PackError> {
        let kind = match b[0] {
            0 => BlobKind::Data,
            1 => BlobKind::Tree,
            v => return Err(PackError::BadField(n, "kind", v)),
        };
        let compression = match b[1] {
            0 => Compression::None,
            1 => Compression::Zstd,
            v => return Err(PackError::BadField(n, "compression", v)),
        };
        let mut id = [0u8; 32];
        id.copy_from_slice(&b[2..34]);
        Ok(Self {
            kind,
            compression,
            id: BlobId(id),
            offset: le32(&b[34..38]),
            length: le32(&b[38..42]),
            raw_length: le32(&b[42..46]),
            member: if version == VERSION_1 {
                0
            } else {
                u16::from_le_bytes([b[46], b[47]])
            },
        })
    }
}

pub(crate) fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackHeader {
    pub blobs: Vec<BlobEntry>,
}

impl PackHeader {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + self.blobs.len() * BLOB_ENTRY_LEN);
        out.extend_from_slice(&PACK_HEADER_MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&(self.blobs.len() as u32).to_le_bytes());
        for b in &self.blobs {
            b.write_to(&mut out);
        }
        out
    }

    /// Version 3: the version 2 bytes, then zeros up to [`padme`] of
    /// their length.
    pub fn to_bytes_padded(&self) -> Vec<u8> {
        let mut out = self.to_bytes();
        out[4] = VERSION_3;
        out.resize(padme(out.len() as u64) as usize, 0);
        out
    }

    pub fn parse(b: &[u8]) -> Result<Self, PackError> {
        if b.len() < 9 {
            return Err(PackError::Truncated(b.len()));
        }
        if b[..4] != PACK_HEADER_MAGIC {
            return Err(PackError::BadMagic);
        }
        let version = b[4];
        if version != VERSION && version != VERSION_1 && version != VERSION_3 {
            return Err(PackError::Version(version));
        }
        let count = le32(&b[5..9]) as usize;
        let mut body = &b[9..];
        let elen = entry_len(version);
        if body.len() / elen < count {
            return Err(PackError::Truncated(b.len()));
        }
        if version == VERSION_3 {
            let (entries, padding) = body.split_at(count * elen);
            if padding.iter().any(|&z| z != 0) {
                return Err(PackError::BadPadding);
            }
            body = entries;
        }
        if body.len() != count * elen {
            return Err(PackError::Truncated(b.len()));
        }
        let blobs = body
            .chunks_exact(elen)
            .enumerate()
            .map(|(n, e)| BlobEntry::parse(n, e, version))
            .collect::<Result<_, _>>()?;
        Ok(Self { blobs })
    }

    /// Checks that every blob lies inside the data area that precedes the
    /// encrypted header.
    pub fn check_bounds(&self, data_len: u64) -> Result<(), PackError> {
        for (n, b) in self.blobs.iter().enumerate() {
            if u64::from(b.offset) + u64::from(b.length) > data_len {
                return Err(PackError::OutOfBounds(n, b.offset, b.length, data_len));
            }
        }
        Ok(())
    }
}

/// Padmé (Nikitin et al., PETS 2019): `len` rounded up so that only its
/// top ~log2(log2(len)) bits vary, which leaks O(log log len) bits of the
/// length for at most ~1/(2 log2 len) overhead (under 3% for 16 MiB packs;
/// ~1.5% on average).
pub fn padme(len: u64) -> u64 {
    if len < 2 {
        return len;
    }
    let e = 63 - u64::from(len.leading_zeros()); // floor(log2 len)
    let s = 64 - u64::from(e.leading_zeros()); // floor(log2 e) + 1
    let mask = (1u64 << (e - s)) - 1;
    (len + mask) & !mask
}

/// The trailer for an encrypted header of `header_len` bytes.
pub fn trailer(header_len: u32) -> [u8; PACK_TRAILER_LEN] {
    let mut t = [0u8; PACK_TRAILER_LEN];
    t[..4].copy_from_slice(&header_len.to_le_bytes());
    t[4..].copy_from_slice(&PACK_TRAILER_MAGIC);
    t
}

/// Reads the trailer (last 8 bytes of a pack of `file_len` bytes) and returns
/// where the encrypted header starts and how long it is.
pub fn parse_trailer(t: &[u8], file_len: u64) -> Result<(u64, u32), PackError> {
    if t.len() != PACK_TRAILER_LEN || t[4..] != PACK_TRAILER_MAGIC {
        return Err(PackError::BadTrailer);
    }
    let len = le32(&t[..4]);
    let end = file_len
        .checked_sub(PACK_TRAILER_LEN as u64)
        .ok_or(PackError::BadTrailer)?;
    let start = end
        .checked_sub(u64::from(len))
        .ok_or(PackError::HeaderTooLong(len, file_len))?;
    Ok((start, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padme_values() {
        // Padmé's published examples, and its bound.
        assert_eq!(padme(9), 10);
        assert_eq!(padme(1000), 1024);
        assert_eq!(padme(16 * 1024 * 1024 + 1), 16 * 1024 * 1024 + 512 * 1024);
        for l in [2u64, 3, 100, 4097, 1 << 20, 17_000_000, 40_000_000] {
            let p = padme(l);
            assert!(p >= l && p - l <= l / 8, "{l} -> {p}");
            assert_eq!(padme(p), p);
        }
    }

    #[test]
    fn padded_header_round_trip() {
        let h = PackHeader {
            blobs: vec![
                BlobEntry {
                    kind: BlobKind::Data,
                    compression: Compression::Zstd,
                    id: BlobId([5; 32]),
                    offset: 0,
                    length: 10,
                    raw_length: 20,
                    member: 0,
                };
                17
            ],
        };
        let b = h.to_bytes_padded();
        assert_eq!(b.len() as u64, padme(b.len() as u64));
        assert_eq!(PackHeader::parse(&b).unwrap(), h);
        let mut bad = b.clone();
        *bad.last_mut().unwrap() = 1;
        assert_eq!(PackHeader::parse(&bad), Err(PackError::BadPadding));
    }
}
