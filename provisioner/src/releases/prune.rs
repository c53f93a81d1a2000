//! `levee release prune`: dropping old releases from a channel, and old
//! versioned metadata files, so a channel followed for years does not
//! grow without end (five targets and about 50 MB of files per release,
//! and a new `N.snapshot.json` every week from re-signing).
//!
//! What an appliance needs from a channel is its newest release (the
//! rollout's) and signed metadata that lists it; it never downloads the
//! release it runs again (a delta update chunks the running slot itself,
//! a rollback boots the old slot from its own disk, a new appliance
//! installs its boot profile's image). So a release may go once it is
//! neither among the newest `--keep` nor the one a rollout offers.
//! Removing a target is a targets-role change: it is signed with the
//! targets key like a publish, and clients see a higher targets version
//! (no rollback). Root metadata files are never removed: clients walk the
//! root chain from the version they hold.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use super::channel::{self, ReleaseEntry, SigningKeys};
use super::keys::PemKey;
use super::{io_err, Layout, ReleaseError};

/// What to keep, and how to sign.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// The newest releases kept (at least 1).
    pub keep: usize,
    /// Releases kept whatever their age (a rollout's).
    pub protect: BTreeSet<u64>,
    /// Needed only when a release is removed.
    pub targets_key: Option<PathBuf>,
    pub expires_days: i64,
    /// Versioned metadata files superseded for less than this stay: a
    /// client that read `timestamp.json` just before may still ask for
    /// the snapshot it names.
    pub metadata_grace: Duration,
    /// Say what would go, change nothing.
    pub dry_run: bool,
}

/// What [`prune`] removed (or, dry, would remove).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Pruned {
    pub channel: String,
    pub dry_run: bool,
    pub removed: Vec<ReleaseEntry>,
    /// Versions kept, oldest first.
    pub kept: Vec<String>,
    pub target_files_deleted: usize,
    pub bytes_freed: u64,
    pub metadata_files_deleted: Vec<String>,
    /// The targets version signed without the removed releases.
    pub targets_version: Option<u64>,
}

/// Prunes `channel` (held under the releases lock throughout).
pub async fn prune(
    layout: &Layout,
    channel_name: &str,
    opts: &PruneOptions,
) -> Result<Pruned, ReleaseError> {
    levee_proto::release::validate_channel(channel_name)?;
    let _lock = layout.lock()?;
    let repo = channel::load(layout, channel_name)
        .await?
        .ok_or_else(|| ReleaseError::Usage(format!("channel `{channel_name}` has no releases")))?;
    let state = channel::state_of(channel_name, &repo);
    let keep = opts.keep.max(1);
    let newest: BTreeSet<u64> = state
        .releases
        .iter()
        .rev()
        .take(keep)
        .map(|r| r.release)
        .collect();
    let (removed, kept): (Vec<ReleaseEntry>, Vec<ReleaseEntry>) = state
        .releases
        .iter()
        .cloned()
        .partition(|r| !newest.contains(&r.release) && !opts.protect.contains(&r.release));
    let mut out = Pruned {
        channel: channel_name.to_string(),
        dry_run: opts.dry_run,
        kept: kept.iter().map(|r| r.version.clone()).collect(),
        ..Default::default()
    };
    let targets_dir = layout.targets_dir(channel_name);
    let kept_files: BTreeSet<String> = kept
        .iter()
        .flat_map(|r| &r.artifacts)
        .map(|a| format!("{}.{}", a.sha256, a.target))
        .collect();
    let doomed: Vec<String> = removed
        .iter()
        .flat_map(|r| &r.artifacts)
        .map(|a| format!("{}.{}", a.sha256, a.target))
        .filter(|f| !kept_files.contains(f))
        .collect();
    for f in &doomed {
        if let Ok(m) = std::fs::metadata(targets_dir.join(f)) {
            out.bytes_freed += m.len();
            out.target_files_deleted += 1;
        }
    }
    if !removed.is_empty() && !opts.dry_run {
        let targets_key = opts.targets_key.clone().ok_or_else(|| {
            ReleaseError::Usage(format!(
                "removing {} release(s) from `{channel_name}` changes its signed targets: give the targets key with --targets-key FILE",
                removed.len()
            ))
        })?;
        PemKey::new(&targets_key).load()?;
        let (root_path, _) = layout.latest_root()?;
        let keys = SigningKeys {
            targets: targets_key,
            snapshot: layout.snapshot_key().path,
            timestamp: layout.timestamp_key().path,
        };
        let names: Vec<String> = removed
            .iter()
            .flat_map(|r| &r.artifacts)
            .map(|a| a.target.clone())
            .collect();
        let (staged, tv, _) = channel::sign_staged(
            layout,
            channel_name,
            Some(repo),
            &root_path,
            channel::TargetChanges {
                add: &[],
                remove: &names,
            },
            &keys,
            opts.expires_days,
        )
        .await?;
        // The metadata that no longer lists them first, then the files.
        staged.publish(layout)?;
        out.targets_version = Some(tv);
        for f in &doomed {
            let path = targets_dir.join(f);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
    }
    out.removed = removed;
    out.metadata_files_deleted = prune_metadata(layout, channel_name, opts)?;
    Ok(out)
}

/// Removes `N.targets.json` and `N.snapshot.json` below the versions the
/// channel now serves, each once the version after it has been served
/// for longer than the grace (the next file's modification time: the
/// moment this one stopped being named by new timestamps).
fn prune_metadata(
    layout: &Layout,
    channel_name: &str,
    opts: &PruneOptions,
) -> Result<Vec<String>, ReleaseError> {
    let dir = layout.metadata_dir(channel_name);
    let mut by_role: std::collections::BTreeMap<&'static str, Vec<(u64, String, SystemTime)>> =
        Default::default();
    for e in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
        let e = e.map_err(io_err(&dir))?;
        let Ok(name) = e.file_name().into_string() else {
            continue;
        };
        let Some((n, role)) = versioned(&name) else {
            continue;
        };
        // Unknown age counts as new: kept.
        let at = e
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or_else(|_| SystemTime::now());
        by_role.entry(role).or_default().push((n, name, at));
    }
    let cutoff = SystemTime::now()
        .checked_sub(opts.metadata_grace)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut deleted = Vec::new();
    for files in by_role.values_mut() {
        files.sort();
        for pair in files.windows(2) {
            let ((_, name, _), (_, _, next_at)) = (&pair[0], &pair[1]);
            if *next_at < cutoff {
                if !opts.dry_run {
                    let path = dir.join(name);
                    std::fs::remove_file(&path).map_err(io_err(&path))?;
                }
                deleted.push(name.clone());
            }
        }
    }
    Ok(deleted)
}

/// `N.targets.json` / `N.snapshot.json` -> (N, role); roots never match.
fn versioned(name: &str) -> Option<(u64, &'static str)> {
    let (n, rest) = name.split_once('.')?;
    let n: u64 = n.parse().ok()?;
    match rest {
        "targets.json" => Some((n, "targets")),
        "snapshot.json" => Some((n, "snapshot")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::versioned;

    #[test]
    fn only_versioned_targets_and_snapshots_are_candidates() {
        assert_eq!(versioned("12.targets.json"), Some((12, "targets")));
        assert_eq!(versioned("3.snapshot.json"), Some((3, "snapshot")));
        for keep in [
            "1.root.json",
            "timestamp.json",
            "targets.json",
            "x.targets.json",
            "-1.snapshot.json",
            "2.snapshot.json.tmp",
        ] {
            assert_eq!(versioned(keep), None, "{keep}");
        }
    }
}
