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

    /// What makes this tree unsafe to restore: names that are empty, `.`,
    /// `..`, or hold `/` or NUL, and names out of order or repeated (a
    /// symlink `a` followed by a directory `a` would make a restore write
    /// through the link). Backups write trees sorted by name with unique,
    /// plain names, so any problem here means damage or a crafted tree.
    pub fn problems(&self) -> Vec<TreeProblem> {
        let mut out = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if !name_is_plain(&n.name) {
                out.push(TreeProblem::BadName(n.name.clone()));
            }
            if let Some(prev) = i.checked_sub(1).map(|j| &self.nodes[j]) {
                match prev.name.cmp(&n.name) {
                    std::cmp::Ordering::Less => {}
                    std::cmp::Ordering::Equal => out.push(TreeProblem::Duplicate(n.name.clone())),
                    std::cmp::Ordering::Greater => out.push(TreeProblem::Unsorted(n.name.clone())),
                }
            }
        }
        out
    }

    /// Names that are the same file on a case-insensitive file system (an
    /// SMB share): `A` and `a`. Each group holds two or more names.
    pub fn case_collisions(&self) -> Vec<Vec<String>> {
        let mut by_folded: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for n in &self.nodes {
            by_folded
                .entry(n.name.to_lowercase())
                .or_default()
                .push(n.name.clone());
        }
        by_folded.into_values().filter(|v| v.len() > 1).collect()
    }
}

/// A name a restore may create in a directory: not empty, `.` or `..`, no
/// `/` or NUL.
pub fn name_is_plain(name: &str) -> bool {
    !(name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']))
}

/// A rule a tree breaks (see [`Tree::problems`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeProblem {
    BadName(String),
    Duplicate(String),
    Unsorted(String),
}

impl std::fmt::Display for TreeProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BadName(n) => write!(f, "unsafe name {n:?}"),
            Self::Duplicate(n) => write!(f, "name {n:?} appears twice"),
            Self::Unsorted(n) => write!(f, "name {n:?} is out of order"),
        }
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

    #[test]
    fn problems_name_bad_duplicate_and_unsorted_names() {
        let n = |name: &str| Node::new(name.into(), NodeKind::Dir);
        let ok = Tree {
            nodes: vec![n("A"), n("a"), n("b")],
        };
        assert!(ok.problems().is_empty());
        assert_eq!(
            ok.case_collisions(),
            vec![vec!["A".to_string(), "a".into()]]
        );
        let bad = Tree {
            nodes: vec![n("a"), n("a"), n(".."), n("x/y"), n("")],
        };
        assert_eq!(
            bad.problems(),
            vec![
                TreeProblem::Duplicate("a".into()),
                TreeProblem::BadName("..".into()),
                TreeProblem::Unsorted("..".into()),
                TreeProblem::BadName("x/y".into()),
                TreeProblem::BadName("".into()),
                TreeProblem::Unsorted("".into()),
            ]
        );
    }
}
