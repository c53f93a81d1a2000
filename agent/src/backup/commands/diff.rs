//! `diff A B`: what changed between two snapshots. Identical subtrees share
//! a blob id and are skipped without being read.

use std::collections::BTreeMap;

use levee_proto::repo::{BlobId, Node, NodeKind};
use serde::Serialize;

use crate::backup::index::MasterIndex;
use crate::backup::repository::{RepoError, Repository};
use crate::backup::source::join;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Change {
    /// "+" added, "-" removed, "M" content changed, "U" metadata only.
    pub change: String,
    pub path: String,
}

pub fn diff(repo: &Repository, a: &str, b: &str) -> Result<Vec<Change>, RepoError> {
    let (loaded, _) = repo.load_index_recovering()?;
    let index = &loaded.index;
    let (_, sa) = repo.find_snapshot(a, false)?;
    let (_, sb) = repo.find_snapshot(b, false)?;
    let mut out = Vec::new();
    diff_trees(repo, index, Some(sa.tree), Some(sb.tree), "", &mut out)?;
    Ok(out)
}

fn children(
    repo: &Repository,
    index: &MasterIndex,
    t: Option<BlobId>,
) -> Result<BTreeMap<String, Node>, RepoError> {
    Ok(match t {
        Some(id) => repo
            .load_tree(index, &id)?
            .nodes
            .into_iter()
            .map(|n| (n.name.clone(), n))
            .collect(),
        None => BTreeMap::new(),
    })
}

fn all(
    repo: &Repository,
    index: &MasterIndex,
    t: Option<BlobId>,
    base: &str,
    sign: &str,
    out: &mut Vec<Change>,
) -> Result<(), RepoError> {
    for (name, n) in children(repo, index, t)? {
        let p = join(base, &name);
        out.push(Change {
            change: sign.into(),
            path: format!("/{p}"),
        });
        if n.kind == NodeKind::Dir {
            all(repo, index, n.subtree, &p, sign, out)?;
        }
    }
    Ok(())
}

fn diff_trees(
    repo: &Repository,
    index: &MasterIndex,
    a: Option<BlobId>,
    b: Option<BlobId>,
    base: &str,
    out: &mut Vec<Change>,
) -> Result<(), RepoError> {
    if a == b {
        return Ok(());
    }
    let ca = children(repo, index, a)?;
    let cb = children(repo, index, b)?;
    let mut names: Vec<&String> = ca.keys().chain(cb.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        let p = join(base, name);
        match (ca.get(name), cb.get(name)) {
            (Some(x), None) => {
                out.push(Change {
                    change: "-".into(),
                    path: format!("/{p}"),
                });
                if x.kind == NodeKind::Dir {
                    all(repo, index, x.subtree, &p, "-", out)?;
                }
            }
            (None, Some(y)) => {
                out.push(Change {
                    change: "+".into(),
                    path: format!("/{p}"),
                });
                if y.kind == NodeKind::Dir {
                    all(repo, index, y.subtree, &p, "+", out)?;
                }
            }
            (Some(x), Some(y)) => {
                if x.kind == NodeKind::Dir && y.kind == NodeKind::Dir {
                    diff_trees(repo, index, x.subtree, y.subtree, &p, out)?;
                } else if x.kind != y.kind
                    || x.content != y.content
                    || x.link_target != y.link_target
                {
                    out.push(Change {
                        change: "M".into(),
                        path: format!("/{p}"),
                    });
                } else if x != y {
                    out.push(Change {
                        change: "U".into(),
                        path: format!("/{p}"),
                    });
                }
            }
            (None, None) => {}
        }
    }
    Ok(())
}
