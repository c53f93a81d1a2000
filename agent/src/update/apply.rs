//! An update's disk work: verify the offered release through TUF, write it
//! into the inactive slot and its ESP directory, verify it from disk, and
//! mark it try-once. The persisted state ([`decide::UpdateState`]) is saved
//! before each step that changes the disk (see `decide.rs` for what each
//! boot makes of it, and `slot.rs` for why a cut anywhere is safe).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::client::{self, ChannelOptions, Decision, Offer, Running, TargetRef};
use super::decide::{Pending, Phase, UpdateState};
use super::delta::{self, DeltaStats};
use super::fetch::{self, FetchOptions, Throttle};
use super::{slot, UpdateError};
use levee_proto::delta::ROOTFS_INDEX;
use levee_proto::image::{INITRD, KERNEL, ROOTFS};

/// `STATE/update/`.
pub fn update_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("update")
}

fn state_path(state_dir: &Path) -> PathBuf {
    update_dir(state_dir).join("state.json")
}

/// Where a trial boot that gives up writes why, for the old slot to report.
pub fn health_failure_path(state_dir: &Path) -> PathBuf {
    update_dir(state_dir).join("health-failure.txt")
}

/// The persisted state; a missing file is the empty state, a damaged one
/// an error (never silently forget an update under way).
pub fn load_state(state_dir: &Path) -> Result<UpdateState, UpdateError> {
    let path = state_path(state_dir);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| {
            UpdateError::Setup(format!("{}: damaged update state: {e}", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(UpdateState::default()),
        Err(e) => Err(UpdateError::Setup(format!("{}: {e}", path.display()))),
    }
}

pub fn save_state(state_dir: &Path, state: &UpdateState) -> Result<(), UpdateError> {
    let dir = update_dir(state_dir);
    std::fs::create_dir_all(&dir)
        .map_err(|e| UpdateError::Setup(format!("{}: {e}", dir.display())))?;
    let path = state_path(state_dir);
    let bytes = serde_json::to_vec_pretty(state)
        .map_err(|e| UpdateError::Setup(format!("update state: {e}")))?;
    super::write_atomic(&path, &bytes)
        .map_err(|e| UpdateError::Setup(format!("{}: {e}", path.display())))
}

/// Where the inactive slot's files go.
#[derive(Debug, Clone)]
pub struct SlotTarget {
    /// The slot partition (`/dev/disk/by-partlabel/levee-b`), or a file.
    pub rootfs: PathBuf,
    /// The mounted ESP.
    pub esp: PathBuf,
    /// The running slot's partition: the source of a delta update's
    /// chunks (`None`: full downloads only).
    pub seed: Option<PathBuf>,
}

/// Settings of one update.
pub struct ApplyOptions<'a> {
    pub state_dir: &'a Path,
    pub channel: &'a ChannelOptions,
    /// Bytes per second for downloads (`bandwidth_limit`); `None`: unlimited.
    pub bandwidth: Option<u64>,
    /// Longest time for one target's download (then it resumes later).
    pub timeout: Duration,
}

/// What to write where.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub running: &'a Running,
    pub running_slot: &'a str,
    /// The release the rollout offers.
    pub want: u64,
    /// The inactive slot.
    pub target_slot: &'a str,
    pub target: &'a SlotTarget,
}

/// What [`prepare`] did.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub offer: Offer,
    /// Bytes downloaded in this run (less than the total if resumed).
    pub downloaded: u64,
    /// How the rootfs came: by delta or in full, and its bytes.
    pub rootfs: RootfsTransfer,
}

/// How the rootfs was written, for the log and the `written` report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RootfsTransfer {
    /// The rootfs target's length.
    pub length: u64,
    /// Bytes received for it in this run (index and ranges, or the file).
    pub downloaded: u64,
    /// Set when the delta path wrote it.
    pub delta: Option<DeltaStats>,
    /// Why the delta path was not taken or failed (a full download).
    pub full_because: Option<String>,
}

impl RootfsTransfer {
    /// One line: how, how many bytes, and why not by delta.
    pub fn summary(&self) -> String {
        let pct = |n: u64| n as f64 * 100.0 / self.length.max(1) as f64;
        match (&self.delta, &self.full_because) {
            (Some(d), _) => format!(
                "rootfs by delta: {} of {} bytes downloaded ({:.1}%: index {} bytes, {} bytes in {} ranges), {} bytes reused from the running slot{}",
                self.downloaded,
                self.length,
                pct(self.downloaded),
                d.index_bytes,
                d.fetched,
                d.ranges,
                d.reused,
                if d.resumed_chunk > 0 {
                    format!(", resumed at chunk {} of {}", d.resumed_chunk, d.chunks)
                } else {
                    String::new()
                }
            ),
            (None, why) => format!(
                "rootfs in full: {} of {} bytes downloaded in this run ({:.1}%){}",
                self.downloaded,
                self.length,
                pct(self.downloaded),
                why.as_ref()
                    .map(|w| format!("; no delta: {w}"))
                    .unwrap_or_default()
            ),
        }
    }
}

/// Verifies release `want` of the channel and writes it into `slot`
/// (never the running one), leaving it marked try-once and `state`'s
/// pending update at [`Phase::Written`]. `Ok(None)`: nothing newer to do.
pub fn prepare(
    opts: &ApplyOptions<'_>,
    state: &mut UpdateState,
    req: &Request<'_>,
    log: &mut dyn FnMut(&str),
) -> Result<Option<Prepared>, UpdateError> {
    let Request {
        running,
        running_slot,
        want,
        target_slot,
        target,
    } = *req;
    if target_slot == running_slot {
        return Err(UpdateError::Setup(format!(
            "refusing to write the running slot {running_slot}"
        )));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| UpdateError::Setup(format!("runtime: {e}")))?;
    let offer = match rt.block_on(client::check(opts.channel, running, Some(want)))? {
        Decision::UpToDate { .. } => return Ok(None),
        Decision::Update(o) => *o,
    };
    log(&format!(
        "release {} ({}) verified against channel {}; writing slot {target_slot}",
        offer.release, offer.version, offer.channel
    ));
    state.pending = Some(Pending {
        version: offer.version.clone(),
        release: offer.release,
        slot: target_slot.to_string(),
        from_slot: running_slot.to_string(),
        from_version: running.version.clone(),
        phase: Phase::Writing,
    });
    state.set_slot(target_slot, None);
    save_state(opts.state_dir, state)?;
    let env_err = |e: crate::install::InstallError| UpdateError::Setup(e.to_string());
    slot::rewrite(&target.esp, |e| {
        slot::unbootable(e, target_slot, running_slot)
    })
    .map_err(env_err)?;

    let progress_dir = update_dir(opts.state_dir);
    let mut throttle = Throttle::new(opts.bandwidth);
    let mut downloaded = 0;
    let get = |artifact: &str| {
        offer.targets.get(artifact).ok_or_else(|| {
            UpdateError::refused(
                super::Refusal::Incomplete,
                format!("release {} has no signed {artifact}", offer.release),
            )
        })
    };
    // The rootfs straight into the slot partition: by delta if it can.
    let rootfs = get(ROOTFS)?;
    let transfer = write_rootfs(
        &offer,
        rootfs,
        target,
        &progress_dir,
        &mut throttle,
        opts.timeout,
        log,
    )?;
    downloaded += transfer.downloaded;
    log(&transfer.summary());
    // Kernel and initrd to `.part` files on the ESP, then renamed.
    for (artifact, name) in [(KERNEL, "vmlinuz"), (INITRD, "initrd.img")] {
        let t = get(artifact)?;
        let dst = slot::boot_file(&target.esp, target_slot, name);
        if let Some(dir) = dst.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| UpdateError::Setup(format!("{}: {e}", dir.display())))?;
        }
        let part = fetch::part_path(&dst);
        // The running slot's copy, when it is the same file (a release
        // that changed only the rootfs): copied, not downloaded.
        let running_copy = slot::boot_file(&target.esp, running_slot, name);
        if copy_if_same(&running_copy, t, &part) {
            log(&format!(
                "{name}: the same as slot {running_slot}'s, copied (0 bytes downloaded)"
            ));
        } else {
            let mut quiet = |_, _| {};
            let f = fetch::fetch_into(
                t,
                &part,
                FetchOptions {
                    progress_dir: &progress_dir,
                    throttle: throttle.as_mut(),
                    timeout: opts.timeout,
                    progress: &mut quiet,
                },
            )?;
            downloaded += f.downloaded;
        }
        fetch::verify_on_disk(t, &part)?;
        fetch::replace_file(&dst, &part)?;
    }
    slot::write_slot_cfg(
        &target.esp,
        target_slot,
        &rootfs.sha256,
        &offer.image.cmdline,
    )
    .map_err(env_err)?;
    slot::rewrite(&target.esp, |e| {
        slot::try_once(e, target_slot, running_slot)
    })
    .map_err(env_err)?;
    if let Some(p) = state.pending.as_mut() {
        p.phase = Phase::Written;
    }
    save_state(opts.state_dir, state)?;
    log(&format!(
        "slot {target_slot} holds release {} ({}), verified from disk, marked to be tried once ({downloaded} bytes downloaded)",
        offer.release, offer.version
    ));
    Ok(Some(Prepared {
        offer,
        downloaded,
        rootfs: transfer,
    }))
}

/// Writes the rootfs into the slot: by delta when the release has a chunk
/// index, the running slot is known and no full download is under way;
/// otherwise, or if the delta fails in any way (including the final
/// whole-file check), in full. Verified from disk either way.
fn write_rootfs(
    offer: &Offer,
    rootfs: &TargetRef,
    target: &SlotTarget,
    progress_dir: &Path,
    throttle: &mut Option<Throttle>,
    timeout: Duration,
    log: &mut dyn FnMut(&str),
) -> Result<RootfsTransfer, UpdateError> {
    let mut report = progress_logger(ROOTFS, log);
    let why_not = match (offer.targets.get(ROOTFS_INDEX), &target.seed) {
        (None, _) => Some(format!("release {} has no chunk index", offer.release)),
        (_, None) => Some("the running slot's partition was not found".to_string()),
        _ if fetch::progress_path(progress_dir, rootfs).exists() => {
            Some("a full download is under way".to_string())
        }
        (Some(index), Some(seed)) => {
            let attempt = delta::fetch_delta(
                rootfs,
                index,
                seed,
                &target.rootfs,
                FetchOptions {
                    progress_dir,
                    throttle: throttle.as_mut(),
                    timeout,
                    progress: &mut report,
                },
            )
            .and_then(|stats| {
                fetch::verify_on_disk(rootfs, &target.rootfs)
                    .inspect_err(|_| delta::forget(progress_dir, rootfs))?;
                Ok(stats)
            });
            match attempt {
                Ok(stats) => {
                    return Ok(RootfsTransfer {
                        length: rootfs.length,
                        downloaded: stats.downloaded,
                        delta: Some(stats),
                        full_because: None,
                    })
                }
                Err(e) => Some(format!(
                    "the delta failed ({e}); fell back to the full download"
                )),
            }
        }
    };
    drop(report);
    if let Some(w) = &why_not {
        log(&format!("{ROOTFS}: {w}"));
    }
    let mut report = progress_logger(ROOTFS, log);
    let f = fetch::fetch_into(
        rootfs,
        &target.rootfs,
        FetchOptions {
            progress_dir,
            throttle: throttle.as_mut(),
            timeout,
            progress: &mut report,
        },
    )?;
    fetch::verify_on_disk(rootfs, &target.rootfs)?;
    delta::forget(progress_dir, rootfs);
    Ok(RootfsTransfer {
        length: rootfs.length,
        downloaded: f.downloaded,
        delta: None,
        full_because: why_not,
    })
}

/// Copies `from` to `to` if it has the target's signed length and sha256;
/// false (nothing copied that counts) otherwise. The copy is checked from
/// disk afterwards like a download.
fn copy_if_same(from: &Path, t: &TargetRef, to: &Path) -> bool {
    use sha2::Digest;
    let same = std::fs::metadata(from).is_ok_and(|m| m.len() == t.length)
        && std::fs::read(from).is_ok_and(|b| hex::encode(sha2::Sha256::digest(&b)) == t.sha256);
    same && std::fs::copy(from, to).is_ok_and(|n| n == t.length)
}

/// Logs a download's progress every 25%.
fn progress_logger<'l>(what: &'l str, log: &'l mut dyn FnMut(&str)) -> impl FnMut(u64, u64) + 'l {
    let mut last_pct = 0;
    move |done: u64, total: u64| {
        let pct = done * 100 / total.max(1);
        if pct >= last_pct + 25 || done == total {
            last_pct = pct;
            log(&format!("{what}: {done} of {total} bytes ({pct}%)"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_damage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_state(dir.path()).unwrap(), UpdateState::default());
        let mut s = UpdateState::default();
        s.rolled_back.push(4);
        s.set_slot(
            "b",
            Some(super::super::decide::SlotRelease {
                version: "v3".into(),
                release: 3,
            }),
        );
        save_state(dir.path(), &s).unwrap();
        assert_eq!(load_state(dir.path()).unwrap(), s);
        std::fs::write(state_path(dir.path()), b"{").unwrap();
        assert!(load_state(dir.path()).is_err());
    }
}
