//! `ls` and the `snapshots` listing helpers.

use levee_proto::repo::{Node, NodeKind};
use serde::Serialize;

use crate::backup::commands::restore::{find_node, walk};
use crate::backup::repository::{RepoError, Repository};

#[derive(Debug, Clone, Serialize)]
pub struct LsEntry {
    pub path: String,
    #[serde(flatten)]
    pub node: Node,
}

/// Every node below `path` (default: the whole snapshot), depth-first.
pub fn ls(
    repo: &Repository,
    snapshot: &str,
    path: Option<&str>,
) -> Result<Vec<LsEntry>, RepoError> {
    let (loaded, _) = repo.load_index_recovering()?;
    let index = &loaded.index;
    let (_, snap) = repo.find_snapshot(snapshot, false)?;
    let mut out = Vec::new();
    let mut f = |p: &str, n: &Node| {
        let mut n = n.clone();
        n.content.clear();
        out.push(LsEntry {
            path: format!("/{p}"),
            node: n,
        });
    };
    match path.map(|p| p.trim_matches('/')).filter(|p| !p.is_empty()) {
        None => walk(repo, index, &repo.load_tree(index, &snap.tree)?, "", &mut f)?,
        Some(p) => {
            let Some(n) = find_node(repo, index, &snap.tree, p)? else {
                return Err(RepoError::NoSnapshot(format!("{snapshot}:{p}")));
            };
            f(p, &n);
            if n.kind == NodeKind::Dir {
                if let Some(id) = n.subtree {
                    walk(repo, index, &repo.load_tree(index, &id)?, p, &mut f)?;
                }
            }
        }
    }
    Ok(out)
}
