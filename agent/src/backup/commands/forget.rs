//! `forget`: drop snapshots by retention policy (restic's rules: per group
//! of host + paths, newest first, keep the newest snapshot of each of the
//! last N days/weeks/months). Only snapshot files are removed; `prune`
//! reclaims the space.

use std::collections::{BTreeMap, HashSet};

use levee_proto::repo::Snapshot;
use serde::{Deserialize, Serialize};

use crate::backup::backend::{FileKind, WriteBackend};
use crate::backup::commands::prune::PruneState;
use crate::backup::repository::{RepoError, Repository};
use crate::util::civil_from_days;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct ForgetOptions {
    /// Snapshot ids to forget outright (besides any policy).
    #[serde(default)]
    pub snapshots: Vec<String>,
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default)]
    pub keep_last: Option<usize>,
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default)]
    pub keep_daily: Option<usize>,
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default)]
    pub keep_weekly: Option<usize>,
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default)]
    pub keep_monthly: Option<usize>,
    /// Apply the policy to the readable snapshots even if some are damaged
    /// (else a damaged snapshot stops `forget`: name it to forget it).
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default)]
    pub skip_damaged: bool,
    /// Show what would be removed without removing it.
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default)]
    pub dry_run: bool,
}

impl ForgetOptions {
    fn has_policy(&self) -> bool {
        self.keep_last.is_some()
            || self.keep_daily.is_some()
            || self.keep_weekly.is_some()
            || self.keep_monthly.is_some()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ForgetResult {
    pub keep: Vec<String>,
    pub remove: Vec<String>,
}

/// Which snapshots the policy keeps; pure, for tests.
pub fn apply_policy(snaps: &[(String, Snapshot)], o: &ForgetOptions) -> HashSet<String> {
    type Group<'a> = Vec<&'a (String, Snapshot)>;
    let mut groups: BTreeMap<(String, Vec<String>), Group> = BTreeMap::new();
    for s in snaps {
        groups
            .entry((s.1.hostname.clone(), s.1.paths.clone()))
            .or_default()
            .push(s);
    }
    let mut keep = HashSet::new();
    for (_, mut g) in groups {
        g.sort_by_key(|s| std::cmp::Reverse(s.1.time_ns));
        let day = |s: &Snapshot| s.time_ns.div_euclid(86_400 * 1_000_000_000);
        // Weeks start on Monday: 1970-01-01 was a Thursday.
        let week = |s: &Snapshot| (day(s) + 3).div_euclid(7);
        let month = |s: &Snapshot| {
            let (y, m, _) = civil_from_days(day(s));
            y * 12 + i64::from(m)
        };
        type Bucket<'a> = &'a dyn Fn(&Snapshot) -> i64;
        let rules: [(Option<usize>, Bucket); 3] = [
            (o.keep_daily, &day),
            (o.keep_weekly, &week),
            (o.keep_monthly, &month),
        ];
        for (i, s) in g.iter().enumerate() {
            if o.keep_last.is_some_and(|n| i < n) {
                keep.insert(s.0.clone());
            }
        }
        for (n, bucket) in rules {
            let Some(n) = n else { continue };
            let mut last = None;
            let mut count = 0;
            for s in &g {
                let b = bucket(&s.1);
                if count < n && last != Some(b) {
                    keep.insert(s.0.clone());
                    count += 1;
                }
                last = Some(b);
            }
        }
    }
    keep
}

pub fn forget(repo: &Repository, o: &ForgetOptions) -> Result<ForgetResult, RepoError> {
    let (snaps, bad) = repo.snapshots()?;
    // By name: a snapshot that cannot be read can still be forgotten.
    let explicit: Vec<String> = o
        .snapshots
        .iter()
        .map(|spec| repo.snapshot_name(spec))
        .collect::<Result<_, _>>()?;
    let unnamed: Vec<_> = bad
        .iter()
        .filter(|(n, _)| !explicit.contains(n))
        .cloned()
        .collect();
    if o.has_policy() && !unnamed.is_empty() && !o.skip_damaged {
        return Err(crate::backup::repository::damaged(&unnamed));
    }
    let keep: HashSet<String> = if o.has_policy() {
        apply_policy(&snaps, o)
    } else {
        snaps.iter().map(|s| s.0.clone()).collect()
    };
    let mut res = ForgetResult {
        keep: Vec::new(),
        remove: Vec::new(),
    };
    for (name, _) in &snaps {
        if keep.contains(name) && !explicit.contains(name) {
            res.keep.push(name.clone());
        } else {
            res.remove.push(name.clone());
        }
    }
    for (name, _) in &bad {
        if explicit.contains(name) {
            res.remove.push(name.clone());
        }
    }
    if !o.dry_run {
        // The next prune frees what only these snapshots used in one run
        // instead of two (`PruneState::forgotten`).
        let roots: Vec<String> = snaps
            .iter()
            .filter(|(n, _)| res.remove.contains(n))
            .map(|(_, s)| s.tree.to_hex())
            .collect();
        if !roots.is_empty() {
            let mut state = PruneState::load(repo)?;
            state.forgotten.extend(roots);
            state.save(repo)?;
        }
        for name in &res.remove {
            repo.be.remove(FileKind::Snapshot, name)?;
        }
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;
    use levee_proto::repo::BlobId;

    fn snap(day: i64, hour: i64) -> (String, Snapshot) {
        let t = (day * 86_400 + hour * 3600) * 1_000_000_000;
        (
            format!("{day:03}-{hour:02}"),
            Snapshot {
                version: 1,
                time_ns: t,
                hostname: "h".into(),
                paths: vec!["/p".into()],
                tags: vec![],
                tree: BlobId([0; 32]),
                parent: None,
                summary: Default::default(),
                program: String::new(),
            },
        )
    }

    #[test]
    fn daily_weekly_monthly() {
        // Two snapshots a day for 100 days from 1970-01-01 (a Thursday).
        let snaps: Vec<_> = (0..100).flat_map(|d| [snap(d, 1), snap(d, 13)]).collect();
        let o = ForgetOptions {
            keep_daily: Some(3),
            ..Default::default()
        };
        let k = apply_policy(&snaps, &o);
        assert_eq!(
            k,
            ["099-13", "098-13", "097-13"]
                .iter()
                .map(|s| s.to_string())
                .collect()
        );
        let o = ForgetOptions {
            keep_last: Some(1),
            keep_weekly: Some(2),
            keep_monthly: Some(2),
            ..Default::default()
        };
        let k = apply_policy(&snaps, &o);
        // Last: 099-13 (Fri 1970-04-10); weekly: it and the previous week's
        // newest (094-13, Sun Apr 5); monthly: it and March's (089-13).
        assert!(
            k.contains("099-13") && k.contains("094-13") && k.contains("089-13"),
            "{k:?}"
        );
        assert_eq!(k.len(), 3);
    }
}
