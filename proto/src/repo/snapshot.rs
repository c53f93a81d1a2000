//! Snapshot files: one per backup, JSON inside the file's encryption. The
//! file's id is the SHA-256 of its encrypted bytes.

use serde::{Deserialize, Serialize};

use super::id::{BlobId, PackId};

#[derive(Debug, thiserror::Error)]
#[error("snapshot: {0}")]
pub struct SnapshotError(#[from] serde_json::Error);

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotSummary {
    pub files: u64,
    pub dirs: u64,
    pub files_unchanged: u64,
    pub bytes_total: u64,
    pub bytes_read: u64,
    pub bytes_new: u64,
    pub blobs_new: u64,
    pub errors: u64,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Snapshot {
    pub version: u8,
    /// Unix nanoseconds when the backup started.
    pub time_ns: i64,
    pub hostname: String,
    /// Sources as given (local path or smb:// URL without password).
    pub paths: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Root directory: its children are one node per source path.
    pub tree: BlobId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<PackId>,
    #[serde(default)]
    pub summary: SnapshotSummary,
    pub program: String,
}

impl Snapshot {
    pub fn parse(b: &[u8]) -> Result<Self, SnapshotError> {
        Ok(serde_json::from_slice(b)?)
    }
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("snapshot serialises")
    }
}
