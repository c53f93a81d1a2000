//! Trees: one directory's entries, stored as a blob (JSON, then compressed
//! and encrypted like any chunk), so an unchanged directory dedups to the
//! same blob. Entries are sorted by name.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::id::BlobId;

#[derive(Debug, thiserror::Error)]
#[error("tree: {0}")]
pub struct TreeError(#[from] serde_json::Error);

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    File,
    Dir,
    Symlink,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}
fn is_zero32(v: &u32) -> bool {
    *v == 0
}

/// One directory entry. Times are Unix nanoseconds (SMB gives 100 ns).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub kind: NodeKind,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    /// Unix permission bits (local sources); 0 when the source has none.
    #[serde(default, skip_serializing_if = "is_zero32")]
    pub mode: u32,
    #[serde(default)]
    pub mtime_ns: i64,
    #[serde(default)]
    pub atime_ns: i64,
    /// Change time (POSIX ctime / SMB ChangeTime).
    #[serde(default)]
    pub ctime_ns: i64,
    /// Creation time where the source gives one (SMB), else 0.
    #[serde(default)]
    pub btime_ns: i64,
    /// Windows FILE_ATTRIBUTE_* bits from an SMB source.
    #[serde(default, skip_serializing_if = "is_zero32")]
    pub attributes: u32,
    /// Inode or SMB file id; part of the unchanged-file test.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub file_id: u64,
    #[serde(default, skip_serializing_if = "is_zero32")]
    pub uid: u32,
    #[serde(default, skip_serializing_if = "is_zero32")]
    pub gid: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content: Vec<BlobId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtree: Option<BlobId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
    /// Raw Windows security descriptor, hex, where the source exposes one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_descriptor: Option<String>,
    /// Extended attributes (local sources), name -> value in hex, including
    /// POSIX ACLs as `system.posix_acl_access` / `system.posix_acl_default`.
    /// Hex like `security_descriptor`: values are mostly short (ACLs are tens
    /// of bytes), trees are zstd-compressed, and it needs no new dependency.
    /// Omitted when empty, so trees without xattrs keep their bytes (and ids).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, String>,
}

impl Node {
    pub fn new(name: String, kind: NodeKind) -> Self {
        Self {
            name,
            kind,
            size: 0,
            mode: 0,
            mtime_ns: 0,
            atime_ns: 0,
            ctime_ns: 0,
            btime_ns: 0,
            attributes: 0,
            file_id: 0,
            uid: 0,
            gid: 0,
            content: Vec::new(),
            subtree: None,
            link_target: None,
            security_descriptor: None,
            xattrs: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

impl Tree {
    pub fn parse(b: &[u8]) -> Result<Self, TreeError> {
        Ok(serde_json::from_slice(b)?)
    }
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("tree serialises")
    }
    pub fn find(&self, name: &str) -> Option<&Node> {
        self.nodes
            .binary_search_by(|n| n.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.nodes[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xattrs_round_trip_and_are_omitted_when_empty() {
        let mut n = Node::new("f".into(), NodeKind::File);
        let plain = Tree {
            nodes: vec![n.clone()],
        };
        let bytes = plain.to_bytes();
        assert!(!String::from_utf8_lossy(&bytes).contains("xattrs"));
        n.xattrs.insert("user.ü".into(), "00ff".into());
        let t = Tree { nodes: vec![n] };
        assert_eq!(Tree::parse(&t.to_bytes()).expect("parses"), t);
        // A tree written before xattrs existed still reads.
        let old = br#"{"nodes":[{"name":"f","kind":"file","mtime_ns":1}]}"#;
        let t = Tree::parse(old).expect("parses");
        assert!(t.nodes[0].xattrs.is_empty());
    }
}
