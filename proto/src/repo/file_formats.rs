//! Frozen magic numbers and format versions. Changing any of these makes old
//! repositories unreadable: add a new version instead.

/// Plaintext pack header (inside its encryption), followed by a version byte.
pub const PACK_HEADER_MAGIC: [u8; 4] = *b"LVPH";
/// Last 4 bytes of every pack file.
pub const PACK_TRAILER_MAGIC: [u8; 4] = *b"LVP1";
/// Length of the pack trailer: u32 LE header length + magic.
pub const PACK_TRAILER_LEN: usize = 8;
/// Plaintext index file (inside its encryption).
pub const INDEX_MAGIC: [u8; 4] = *b"LVIX";
/// Version byte written after the pack header and index magics: 2 since
/// small blobs can share a frame (entries carry a frame member number).
pub const VERSION: u8 = 2;
/// The first version, still read: entries without a member number.
pub const VERSION_1: u8 = 1;
/// Size of one blob entry in a version 2 pack header or index file.
pub const BLOB_ENTRY_LEN: usize = 1 + 1 + 32 + 4 + 4 + 4 + 2;
/// Size of one blob entry in version 1.
pub const BLOB_ENTRY_LEN_V1: usize = BLOB_ENTRY_LEN - 2;
/// Most blobs one frame may hold (the in-memory index has 8 bits for it).
pub const FRAME_MAX_MEMBERS: usize = 255;
/// AES-256-GCM nonce length; every encrypted object starts with its nonce.
pub const NONCE_LEN: usize = 12;
/// AES-GCM tag length; every encrypted object ends with its tag.
pub const TAG_LEN: usize = 16;
/// Bytes an encryption adds to its plaintext.
pub const CRYPTO_OVERHEAD: usize = NONCE_LEN + TAG_LEN;
/// XAES-256-GCM nonce length (format 2).
pub const XNONCE_LEN: usize = 24;
/// First bytes of a format 2 `config` file; a format 1 config is plain JSON.
pub const CONFIG_MAGIC: [u8; 4] = *b"LVCF";
/// Repository format of repositories created before the encrypted config:
/// AES-256-GCM with 96-bit nonces, the seeded gear table, unpadded packs.
pub const FORMAT_1: u8 = 1;
/// Encrypted, authenticated config; XAES-256-GCM; keyed gear table; padded
/// pack headers and packs.
pub const FORMAT_2: u8 = 2;
/// Pack header version with zero padding after the entries (format 2).
pub const VERSION_3: u8 = 3;
