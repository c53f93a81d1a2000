//! What a replication run does, as a pure function of two listings: the
//! local repository's files that may travel and what the target holds.
//! Uploads come in dependency order (config and key slots, then packs,
//! then index files, then snapshots), so a target that is cut off at any
//! point never holds a snapshot whose data it lacks; deletions are the
//! target's files the local repository no longer has (after `forget` and
//! `prune`), asked for only once each.

use std::collections::{BTreeMap, HashSet};

use levee_proto::offsite::FileKind;

/// One local file that should be on the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalFile {
    pub kind: FileKind,
    /// SHA-256 of its bytes (the store's name for it).
    pub name: String,
    pub size: u64,
}

/// The order kinds go up in.
pub const UPLOAD_ORDER: [FileKind; 5] = [
    FileKind::Config,
    FileKind::Keys,
    FileKind::Data,
    FileKind::Index,
    FileKind::Snapshots,
];

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Missing on the target, in [`UPLOAD_ORDER`], by name within a kind.
    pub uploads: Vec<LocalFile>,
    /// On the target, gone locally, not yet asked for.
    pub deletions: Vec<(FileKind, String)>,
    /// Files and bytes already on the target.
    pub present_files: u64,
    pub present_bytes: u64,
}

/// `local`: what may travel; `remote`: the target's listing by kind (name
/// -> size); `requested`: deletions asked for in earlier runs. A remote
/// file of the wrong size counts as missing: the store would refuse it as
/// existing, so it is reported, not re-sent (see the caller).
pub fn plan(
    local: &[LocalFile],
    remote: &BTreeMap<FileKind, BTreeMap<String, u64>>,
    requested: &HashSet<String>,
) -> Plan {
    let mut p = Plan::default();
    let mut local_names: HashSet<(FileKind, &str)> = HashSet::new();
    for kind in UPLOAD_ORDER {
        let mut of_kind: Vec<&LocalFile> = local.iter().filter(|f| f.kind == kind).collect();
        of_kind.sort_by(|a, b| a.name.cmp(&b.name));
        for f in of_kind {
            local_names.insert((kind, f.name.as_str()));
            match remote.get(&kind).and_then(|m| m.get(&f.name)) {
                Some(size) => {
                    p.present_files += 1;
                    p.present_bytes += size;
                }
                None => p.uploads.push(f.clone()),
            }
        }
    }
    for (kind, names) in remote {
        // The config never goes: a repository has one for life.
        if *kind == FileKind::Config {
            continue;
        }
        for name in names.keys() {
            if !local_names.contains(&(*kind, name.as_str())) && !requested.contains(name) {
                p.deletions.push((*kind, name.clone()));
            }
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(kind: FileKind, name: &str) -> LocalFile {
        LocalFile {
            kind,
            name: name.into(),
            size: 10,
        }
    }

    #[test]
    fn missing_files_go_up_data_before_snapshots_and_gone_ones_are_asked_once() {
        let local = vec![
            f(FileKind::Snapshots, "s1"),
            f(FileKind::Index, "i1"),
            f(FileKind::Data, "p2"),
            f(FileKind::Data, "p1"),
            f(FileKind::Keys, "k1"),
            f(FileKind::Config, "c"),
        ];
        let mut remote: BTreeMap<FileKind, BTreeMap<String, u64>> = BTreeMap::new();
        remote
            .entry(FileKind::Data)
            .or_default()
            .insert("p1".into(), 10);
        remote
            .entry(FileKind::Data)
            .or_default()
            .insert("old".into(), 10);
        remote
            .entry(FileKind::Snapshots)
            .or_default()
            .insert("s0".into(), 10);
        let requested: HashSet<String> = ["s0".to_string()].into();
        let p = plan(&local, &remote, &requested);
        let order: Vec<&str> = p.uploads.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(order, ["c", "k1", "p2", "i1", "s1"]);
        assert_eq!(p.deletions, vec![(FileKind::Data, "old".to_string())]);
        assert_eq!((p.present_files, p.present_bytes), (1, 10));
    }
}
