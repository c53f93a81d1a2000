//! The local repository's rolling read-back ("scrub"), and repair of what
//! it finds from the offsite copies (issue 14: "a local pack that fails
//! its check is repaired from an offsite copy").
//!
//! The daemon calls [`scrub`] after each replication run. Each call reads
//! the next share of the local packs in name order (a cursor and a
//! fractional credit kept in `STATE/replication/local/verify.json`, as the
//! offsite read-back keeps its own), so every pack comes round at the
//! weekly rate [`LOCAL_SHARE_PER_WEEK`] however often the daemon runs.
//! A pack whose bytes no longer match its name, or whose blobs fail to
//! decrypt, is replaced by the first offsite copy that hashes to its name.
//! One that no target can give yet stays on a pending list and is tried
//! again on every later call, so a target that is down when the damage is
//! found does not let it slip until the cursor comes round again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::backup::backend::{FileKind, ReadBackend};
use levee_proto::config::CustomerConfig;
use levee_proto::runs::{ErrorTally, RunKind, RunReport, RunResult};
use serde::{Deserialize, Serialize};

use crate::backup::commands::check::read_pack;
use crate::enroll::{unix_now, write_atomic};
use crate::Repository;

/// Share of the local packs read back per week: every pack within four
/// weeks. Local reads cost disk time and CPU, not the customer's uplink,
/// so this is higher than the offsite default (10%).
pub const LOCAL_SHARE_PER_WEEK: f64 = 0.25;

/// What one [`scrub`] did; [`ScrubOutcome::report`] is its run report.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScrubOutcome {
    pub started_at: i64,
    pub ended_at: i64,
    /// Local packs, and those read back by this call.
    pub packs_total: u64,
    pub packs_read: u64,
    pub bytes_read: u64,
    /// Packs found damaged by this call, with what is wrong.
    pub damaged: Vec<(String, String)>,
    /// Packs replaced by their offsite copy (found now or earlier).
    pub repaired: Vec<String>,
    /// Damaged packs still waiting for a good copy, with why.
    pub unrepaired: Vec<(String, String)>,
    /// Why the read-back could not run at all.
    pub error: Option<String>,
}

impl ScrubOutcome {
    /// A `check` run: packs read in `files_total`, bytes read in
    /// `bytes_total`, packs repaired in `files_new`; damage repaired is a
    /// warning, damage left is a failure.
    pub fn report(&self) -> RunReport {
        let mut r = RunReport::new(RunKind::Check, self.started_at);
        r.ended_at = self.ended_at.max(self.started_at);
        r.sources = vec!["local repository read-back".into()];
        r.files_total = self.packs_read;
        r.bytes_total = self.bytes_read;
        r.files_new = self.repaired.len() as u64;
        let mut t = ErrorTally::default();
        if let Some(e) = &self.error {
            t.add(e);
        }
        for (p, why) in &self.unrepaired {
            t.add(&format!("damaged local pack {p} not repaired: {why}"));
        }
        for p in &self.repaired {
            t.add(&format!(
                "damaged local pack {p} repaired from its offsite copy"
            ));
        }
        t.into_report(&mut r);
        r.result = if self.error.is_some() || !self.unrepaired.is_empty() {
            RunResult::Failed
        } else if self.repaired.is_empty() {
            RunResult::Success
        } else {
            RunResult::Warning
        };
        r
    }
}

/// Where the read-back keeps its place and its pending repairs.
fn state_file(state: &Path) -> PathBuf {
    state.join("replication").join("local").join("verify.json")
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ScrubState {
    cursor: usize,
    #[serde(default)]
    credit: f64,
    #[serde(default)]
    at: Option<i64>,
    /// Damaged packs not repaired yet, with the damage found.
    #[serde(default)]
    pending: BTreeMap<String, String>,
}

fn load(state: &Path) -> ScrubState {
    std::fs::read(state_file(state))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn save(state: &Path, s: &ScrubState) -> Result<(), String> {
    let path = state_file(state);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let bytes = serde_json::to_vec(s).map_err(|e| e.to_string())?;
    write_atomic(&path, &bytes, 0o600).map_err(|e| format!("{}: {e}", path.display()))
}

/// The share owed since the last call (`share` = `None`: what
/// [`LOCAL_SHARE_PER_WEEK`] owes since the last call, one day's worth on
/// the first).
pub fn scrub(
    state: &Path,
    config: &CustomerConfig,
    repo: &Repository,
    share: Option<f64>,
) -> ScrubOutcome {
    let now = unix_now();
    let mut out = ScrubOutcome {
        started_at: now,
        ..Default::default()
    };
    let mut st = load(state);
    let share = share
        .unwrap_or_else(|| super::share_for_run(LOCAL_SHARE_PER_WEEK, st.at.map(|at| now - at)));
    st.at = Some(now);
    match read_back(repo, &mut st, share, &mut out) {
        Ok(()) => {}
        Err(e) => out.error = Some(format!("local read-back: {e}")),
    }
    for (pack, why) in &out.damaged {
        tracing::warn!(%pack, "local pack failed its read-back: {why}");
        st.pending.insert(pack.clone(), why.clone());
    }
    if !st.pending.is_empty() {
        repair(state, config, repo, &mut st, &mut out);
    }
    if let Err(e) = save(state, &st) {
        tracing::warn!("local read-back state not saved: {e}");
    }
    out.ended_at = unix_now();
    out
}

/// Reads the next `share` of the local packs, in name order from the
/// cursor; damaged ones go to `out.damaged`.
fn read_back(
    repo: &Repository,
    st: &mut ScrubState,
    share: f64,
    out: &mut ScrubOutcome,
) -> Result<(), String> {
    let mut packs = repo.be.list(FileKind::Pack).map_err(|e| e.to_string())?;
    packs.sort();
    out.packs_total = packs.len() as u64;
    if packs.is_empty() || share <= 0.0 {
        return Ok(());
    }
    let (start, n) = super::rolling_batch(packs.len(), share, &mut st.credit, st.cursor);
    for i in 0..n {
        let (name, size) = &packs[(start + i) % packs.len()];
        out.packs_read += 1;
        out.bytes_read += size;
        // Pack headers name their blobs; the index is not needed to find
        // damage, only to narrow it (what `check --read-data` does).
        let why = match read_pack(repo, name, *size, None) {
            Ok((_, _, errs, bad)) if errs.is_empty() && bad.is_empty() => None,
            Ok((_, _, errs, bad)) => Some(
                errs.into_iter()
                    .chain(bad.iter().map(|(id, e)| format!("blob {id}: {e}")))
                    .take(3)
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            Err(e) => Some(e),
        };
        if let Some(why) = why {
            out.damaged.push((name.to_string(), why));
        }
    }
    st.cursor = (start + n) % packs.len();
    Ok(())
}

/// Replaces every pending damaged pack with an offsite copy.
fn repair(
    state: &Path,
    config: &CustomerConfig,
    repo: &Repository,
    st: &mut ScrubState,
    out: &mut ScrubOutcome,
) {
    let packs: Vec<String> = st.pending.keys().cloned().collect();
    match super::repair_from_offsite(state, config, &repo.path, &repo.config.id, &packs) {
        Ok(r) => {
            for p in r.packs {
                st.pending.remove(&p);
                out.repaired.push(p);
            }
            out.unrepaired = r.failed;
        }
        Err(e) => {
            out.unrepaired = packs.into_iter().map(|p| (p, e.clone())).collect();
        }
    }
    // A pack pruned away since it was found damaged needs no repair.
    if let Ok(list) = repo.be.list(FileKind::Pack) {
        let present: std::collections::HashSet<String> = list.into_iter().map(|(n, _)| n).collect();
        st.pending.retain(|p, _| present.contains(p));
        out.unrepaired.retain(|(p, _)| present.contains(p));
    }
}

#[cfg(test)]
mod tests {
    use super::super::rolling_batch;

    /// Daily calls at a weekly share read every pack once per
    /// 1/share weeks, in order, with no pack read twice in a round.
    #[test]
    fn daily_shares_come_round_every_pack() {
        let (len, per_day) = (10, super::LOCAL_SHARE_PER_WEEK / 7.0);
        let (mut cursor, mut credit) = (0, 0.0);
        let mut seen = vec![0u32; len];
        for _ in 0..28 {
            let (start, n) = rolling_batch(len, per_day, &mut credit, cursor);
            for i in 0..n {
                seen[(start + i) % len] += 1;
            }
            cursor = (start + n) % len;
        }
        assert_eq!(seen, vec![1; len], "four weeks at 25% a week: once each");
        assert_eq!(rolling_batch(0, 1.0, &mut credit, 3), (0, 0));
    }
}
