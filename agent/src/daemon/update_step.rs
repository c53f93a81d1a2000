//! The daemon's side of updates, driven from the heartbeat loop: on boot,
//! what became of a pending update (trial, rollback, cut write); after
//! each heartbeat, the health check that commits the boot, the rollout's
//! offer, the download into the inactive slot (on a thread of its own)
//! and the reboot inside the update window. Every decision is
//! `update::decide`'s; this file does the I/O and the reports.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use levee_proto::config::CustomerConfig;
use levee_proto::update::{UpdateOffer, UpdateReport, UpdateState as Wire, UpdateWindow};

use super::install_step::{commit_step, reboot_step};
use super::BootArgs;
use crate::enroll::MtlsClient;
use crate::update::apply::{self, ApplyOptions, Request, SlotTarget};
use crate::update::decide::{self, BootFinding, Now, Phase, SlotRelease, Step, UpdateState};
use crate::update::schedule::{self, CheckOutcome};
use crate::update::{ChannelOptions, Running, TransportOptions};

/// How long a trial boot of a new slot may take to pass its health check
/// before it gives up and reboots into the old slot (`levee.health=SECS`
/// overrides it).
pub const HEALTH_DEADLINE: Duration = Duration::from_secs(600);

/// After a failed attempt at a release, how long before the next.
const RETRY_AFTER: Duration = Duration::from_secs(900);

/// What the job thread shares with the updater: whether a job runs, and
/// whether the updater holds new jobs back (while it reboots).
#[derive(Clone, Default)]
pub(super) struct JobGate {
    pub busy: Arc<AtomicBool>,
    pub hold: Arc<AtomicBool>,
}

/// What one heartbeat pass knows.
pub(super) struct Tick<'a> {
    pub client: &'a MtlsClient,
    /// The heartbeat was accepted (with `version` as the running image).
    pub heartbeat_ok: bool,
    pub version: Option<&'a str>,
    /// The configuration was pulled over mTLS during this boot.
    pub config_pulled: bool,
    pub config: Option<&'a CustomerConfig>,
    /// The rollout's offer from the heartbeat answer.
    pub offered: Option<&'a UpdateOffer>,
    /// The server's plain-HTTP base (the release channels).
    pub server_url: &'a str,
}

type Work = JoinHandle<(UpdateState, Result<Option<apply::Prepared>, String>)>;
type Check = JoinHandle<(CheckOutcome, String, Running)>;

pub(super) struct Updates {
    state_dir: PathBuf,
    who: String,
    running: Option<String>,
    state: UpdateState,
    trial: Option<decide::Pending>,
    committed: bool,
    booted: Instant,
    deadline: Duration,
    gate: JobGate,
    work: Option<Work>,
    failed: Option<(u64, Instant)>,
    /// The backup repository opened during this boot (checked once).
    repo_ok: bool,
    /// The release (and version) the running worker tries.
    attempt: Option<(u64, String)>,
    /// Rollback reports the server accepted during this pass.
    acked_rollbacks: Vec<u64>,
    /// Held from the decision to reboot until the reboot: commands started
    /// meanwhile wait (see `crate::activity`).
    quiet: Option<crate::activity::Held>,
    /// The reboot waits for a command; said once.
    said_waiting: bool,
    /// The agent's own channel check (`update::schedule`): its period
    /// (`None`: off), when it is due next, and the one running.
    check_every: Option<Duration>,
    next_check: Instant,
    check: Option<Check>,
    /// The last channel-check outcome the server accepted from this boot
    /// (`Some(true)`: a refusal), so a verified check is reported only
    /// when it tells the server something.
    check_heard: Option<bool>,
}

impl Updates {
    /// Looks at what the last boot left (see `decide::on_boot`).
    pub(super) fn start(state_dir: &Path, args: &BootArgs, who: &str, gate: JobGate) -> Updates {
        let mut state = apply::load_state(state_dir).unwrap_or_else(|e| {
            tracing::warn!("{who}: {e}; starting with an empty update state");
            UpdateState::default()
        });
        let failure_path = apply::health_failure_path(state_dir);
        let failure = std::fs::read_to_string(&failure_path).ok();
        let running = args.slot.clone();
        let mut trial = None;
        match decide::on_boot(&state, running.as_deref(), failure.as_deref()) {
            BootFinding::Nothing => {}
            BootFinding::Trial(p) => {
                tracing::info!(
                    "{who}: trial boot of release {} ({}) in slot {}: health check within {} s, else back to slot {}",
                    p.release, p.version, p.slot, args.health_secs.map(Duration::from_secs).unwrap_or(HEALTH_DEADLINE).as_secs(), p.from_slot
                );
                trial = Some(p);
            }
            BootFinding::RolledBack { pending, reason } => {
                tracing::warn!(
                    "{who}: update to release {} ({}) rolled back: {reason}",
                    pending.release,
                    pending.version
                );
                let fixed = with_esp(&pending.from_slot, |esp| {
                    crate::update::slot::rewrite(esp, |e| {
                        crate::update::slot::after_rollback(e, &pending.slot, &pending.from_slot)
                    })
                    .map_err(|e| e.to_string())
                });
                if let Err(e) = fixed {
                    tracing::warn!(
                        "{who}: cannot clear slot {} in the boot environment: {e}",
                        pending.slot
                    );
                }
                state.rolled_back.push(pending.release);
                state.set_slot(&pending.slot, None);
                state.pending = None;
                state.unsent = Some(UpdateReport {
                    version: pending.version.clone(),
                    release: pending.release,
                    state: Wire::RolledBack,
                    reason: Some(reason),
                    slot: Some(pending.slot.clone()),
                });
                let _ = std::fs::remove_file(&failure_path);
            }
            BootFinding::WriteCut(p) => tracing::warn!(
                "{who}: writing release {} to slot {} was cut; resuming it",
                p.release,
                p.slot
            ),
        }
        if let Err(e) = apply::save_state(state_dir, &state) {
            tracing::warn!("{who}: {e}");
        }
        Updates {
            state_dir: state_dir.to_path_buf(),
            who: who.to_string(),
            running,
            state,
            trial,
            committed: args.slot.is_none(),
            booted: Instant::now(),
            deadline: args
                .health_secs
                .map(Duration::from_secs)
                .unwrap_or(HEALTH_DEADLINE),
            gate,
            work: None,
            failed: None,
            repo_ok: false,
            attempt: None,
            acked_rollbacks: Vec::new(),
            quiet: None,
            said_waiting: false,
            check_every: match args.update_check_secs {
                Some(0) => None,
                Some(s) => Some(Duration::from_secs(s)),
                None => Some(schedule::DEFAULT_EVERY),
            },
            next_check: Instant::now()
                + schedule::first_delay(
                    args.update_check_secs
                        .map_or(schedule::DEFAULT_EVERY, Duration::from_secs),
                    rand::random(),
                ),
            check: None,
            check_heard: None,
        }
    }

    fn save(&self) {
        if let Err(e) = apply::save_state(&self.state_dir, &self.state) {
            tracing::warn!("{}: {e}", self.who);
        }
    }

    fn report(&mut self, client: &MtlsClient, r: UpdateReport) {
        self.flush(client);
        if self.state.unsent.is_some() && r.state.in_progress() {
            // The server is unreachable: keep the older report (a rollback
            // or a result), not a step that the next one supersedes.
            return;
        }
        self.state.unsent = Some(r);
        self.flush(client);
    }

    /// Sends the report the server has not accepted yet.
    fn flush(&mut self, client: &MtlsClient) {
        let Some(r) = self.state.unsent.clone() else {
            return;
        };
        match client.post_update(&r) {
            Ok(()) => {
                self.state.unsent = None;
                if r.state == Wire::RolledBack {
                    self.acked_rollbacks.push(r.release);
                }
            }
            Err(e) => tracing::warn!(
                "{}: cannot report update {} `{}` yet: {e}",
                self.who,
                r.version,
                r.state.as_str()
            ),
        }
        self.save();
    }

    /// One pass after a heartbeat attempt.
    pub(super) fn tick(&mut self, t: &Tick<'_>) {
        self.flush(t.client);
        if !self.committed {
            self.health(t);
        }
        if self.committed {
            self.poll_work(t.client);
            // One TUF client at a time: the check and an update share the
            // channel's trusted state.
            self.scheduled_check(t);
            if self.work.is_none() && self.check.is_none() {
                self.advance(t);
            }
        }
        // The server blocks a release whose rollback it accepted; from the
        // next heartbeat on its offers decide (this pass's offer predates
        // the report, so the release stayed refused until now).
        if !self.acked_rollbacks.is_empty() {
            for r in std::mem::take(&mut self.acked_rollbacks) {
                self.state.server_knows_rollback(r);
            }
            self.save();
        }
    }

    /// The health check: the agent runs (we are here), the data partition
    /// is mounted, the configuration was pulled over mTLS, a heartbeat
    /// naming the running version was accepted, and the backup repository
    /// opens. Then the slot is committed.
    fn health(&mut self, t: &Tick<'_>) {
        let who = self.who.clone();
        let mut missing = Vec::new();
        if !t.heartbeat_ok {
            missing.push("no heartbeat accepted".to_string());
        }
        if !t.config_pulled {
            missing.push("no configuration pulled".to_string());
        }
        if self.running.is_some() && !is_mount_point(&self.state_dir) {
            missing.push(format!("{} is not mounted", self.state_dir.display()));
        }
        // The repository is a trial's question (may the new image be
        // kept?); a damaged repository must not keep an old slot from
        // committing, and so from taking the update that may fix it.
        if self.trial.is_some() && !self.repo_ok {
            match repository_opens(&self.state_dir) {
                Ok(()) => self.repo_ok = true,
                Err(e) => missing.push(e),
            }
        }
        if let Some(p) = &self.trial {
            if t.version != Some(p.version.as_str()) {
                missing.push(format!(
                    "the running image says version {}, the update installed {}",
                    t.version.unwrap_or("-"),
                    p.version
                ));
            }
        }
        if missing.is_empty() {
            match commit_step() {
                Ok(outcome) => {
                    self.committed = true;
                    tracing::info!(
                        "{who}: boot slot {} committed ({outcome:?})",
                        self.running.as_deref().unwrap_or("-")
                    );
                    if let Some(p) = self.trial.take() {
                        self.state.set_slot(
                            &p.slot,
                            Some(SlotRelease {
                                version: p.version.clone(),
                                release: p.release,
                            }),
                        );
                        self.state.pending = None;
                        let _ = std::fs::remove_file(apply::health_failure_path(&self.state_dir));
                        tracing::info!(
                            "{who}: update to release {} ({}) committed",
                            p.release,
                            p.version
                        );
                        self.report(
                            t.client,
                            UpdateReport {
                                version: p.version,
                                release: p.release,
                                state: Wire::Committed,
                                reason: None,
                                slot: Some(p.slot),
                            },
                        );
                    }
                }
                Err(e) => tracing::warn!("{who}: cannot commit boot slot: {e}"),
            }
            return;
        }
        let Some(p) = &self.trial else { return };
        if self.booted.elapsed() < self.deadline {
            return;
        }
        let reason = format!(
            "not healthy after {} s: {}",
            self.deadline.as_secs(),
            missing.join("; ")
        );
        tracing::warn!(
            "{who}: trial of release {} in slot {} {reason}; rebooting into slot {}",
            p.release,
            p.slot,
            p.from_slot
        );
        let path = apply::health_failure_path(&self.state_dir);
        if let Err(e) = crate::update::write_atomic(&path, reason.as_bytes()) {
            tracing::warn!("{who}: {}: {e}", path.display());
        }
        if let Err(e) = reboot_step() {
            tracing::warn!("{who}: reboot failed: {e}");
        }
    }

    /// Collects a finished download.
    fn poll_work(&mut self, client: &MtlsClient) {
        if !self.work.as_ref().is_some_and(|w| w.is_finished()) {
            return;
        }
        let Some(w) = self.work.take() else { return };
        let attempt = self.attempt.take().unwrap_or_default();
        let Ok((state, result)) = w.join() else {
            tracing::warn!("{}: the update worker panicked", self.who);
            self.failed = Some((attempt.0, Instant::now()));
            return;
        };
        self.state = state;
        let slot = self.state.pending.as_ref().map(|p| p.slot.clone());
        match result {
            // The reason of a `written` report says how the rootfs came
            // (delta or full) and its bytes, for `appliance show`.
            Ok(Some(p)) => self.report(
                client,
                UpdateReport {
                    version: p.offer.version.clone(),
                    release: p.offer.release,
                    state: Wire::Written,
                    reason: Some(p.rootfs.summary()),
                    slot,
                },
            ),
            Ok(None) => {}
            Err(reason) => {
                // The release tried (the TUF check may have failed before
                // anything was pending): retried after RETRY_AFTER.
                let (release, version) = attempt;
                tracing::warn!("{}: update failed: {reason}", self.who);
                self.failed = Some((release, Instant::now()));
                if release > 0 {
                    self.report(
                        client,
                        UpdateReport {
                            version,
                            release,
                            state: Wire::Failed,
                            reason: Some(reason),
                            slot: None,
                        },
                    );
                }
            }
        }
    }

    fn advance(&mut self, t: &Tick<'_>) {
        let window = t
            .config
            .and_then(|c| c.update_window.as_deref())
            .and_then(|w| UpdateWindow::parse(w).ok());
        let now_unix = crate::enroll::unix_now();
        let running = self.running.clone();
        let now = Now {
            running: running.as_deref(),
            committed: self.committed,
            offered: t.offered.map(|o| o.release),
            running_release: running
                .as_deref()
                .and_then(|s| self.state.slot(s))
                .map(|s| s.release),
            in_window: window.is_none_or(|w| w.contains_unix(now_unix)),
            busy: self.gate.busy.load(Ordering::SeqCst),
        };
        match decide::step(&self.state, &now) {
            Step::Idle(_) | Step::Wait(_) => {}
            Step::Fetch { release, slot } => {
                if self
                    .failed
                    .is_some_and(|(r, at)| r == release && at.elapsed() < RETRY_AFTER)
                {
                    return;
                }
                self.spawn_fetch(t, release, slot);
            }
            Step::Reboot => self.reboot(t.client),
        }
    }

    fn channel_options(&self, t: &Tick<'_>, config: &CustomerConfig) -> ChannelOptions {
        ChannelOptions {
            server_url: t.server_url.to_string(),
            channel: config.update_channel.clone(),
            state_dir: self.state_dir.join("tuf").join(&config.update_channel),
            baked_root: PathBuf::from(levee_proto::release::BAKED_ROOT),
            transport: TransportOptions::METADATA,
        }
    }

    /// The agent's own check of its channel, when due and no update runs:
    /// metadata only, on a thread of its own; a refusal is logged and
    /// reported (`check-failed`), a newer release only logged (the
    /// rollout decides when it is taken).
    fn scheduled_check(&mut self, t: &Tick<'_>) {
        let Some(every) = self.check_every else {
            return;
        };
        if let Some(h) = &self.check {
            if !h.is_finished() {
                return;
            }
            if let Some(Ok((outcome, channel, running))) = self.check.take().map(|h| h.join()) {
                let line = outcome.describe(&channel);
                match outcome {
                    CheckOutcome::Refused { .. } => tracing::warn!("{}: {line}", self.who),
                    _ => tracing::info!("{}: {line}", self.who),
                }
                // Sent directly, best effort: it must not displace a
                // rollback report waiting in `unsent`, and the next check
                // reports again.
                if let Some(r) = outcome.report(&channel, &running, self.check_heard) {
                    match t.client.post_update(&r) {
                        Ok(()) => self.check_heard = Some(r.state == Wire::CheckFailed),
                        Err(e) => {
                            tracing::warn!("{}: cannot report the channel check: {e}", self.who)
                        }
                    }
                }
            }
            self.next_check = Instant::now() + schedule::next_delay(every, rand::random());
            return;
        }
        if self.work.is_some() || Instant::now() < self.next_check {
            return;
        }
        let Some(config) = t.config else { return };
        let channel = self.channel_options(t, config);
        let running = Running {
            version: t.version.unwrap_or_default().to_string(),
            release: self
                .running
                .as_deref()
                .and_then(|s| self.state.slot(s))
                .map(|s| s.release),
        };
        let spawned = std::thread::Builder::new()
            .name("levee-update-check".into())
            .spawn(move || {
                let outcome = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(schedule::check_channel(&channel, &running)),
                    Err(e) => CheckOutcome::Refused {
                        kind: crate::update::Refusal::Unreachable,
                        detail: format!("runtime: {e}"),
                    },
                };
                (outcome, channel.channel, running)
            });
        match spawned {
            Ok(h) => self.check = Some(h),
            Err(e) => {
                tracing::warn!("{}: cannot start the channel check: {e}", self.who);
                self.next_check = Instant::now() + schedule::next_delay(every, rand::random());
            }
        }
    }

    fn spawn_fetch(&mut self, t: &Tick<'_>, release: u64, slot: String) {
        let Some(config) = t.config else { return };
        let Some(running_slot) = self.running.clone() else {
            return;
        };
        let channel = self.channel_options(t, config);
        let bandwidth = config
            .bandwidth_limit
            .as_deref()
            .and_then(levee_proto::config::parse_rate);
        let running = Running {
            version: t.version.unwrap_or_default().to_string(),
            release: self.state.slot(&running_slot).map(|s| s.release),
        };
        tracing::info!(
            "{}: update to release {release} offered; checking the signed channel {}",
            self.who,
            channel.channel
        );
        // Resuming a cut write, or the offered release.
        let offered_version = self
            .state
            .pending
            .as_ref()
            .map(|p| p.version.clone())
            .or_else(|| t.offered.map(|o| o.version.clone()))
            .unwrap_or_default();
        let _ = t.client.post_update(&UpdateReport {
            version: offered_version.clone(),
            release,
            state: Wire::Downloading,
            reason: None,
            slot: Some(slot.clone()),
        });
        let mut state = self.state.clone();
        let state_dir = self.state_dir.clone();
        let who = self.who.clone();
        let spawned = std::thread::Builder::new()
            .name("levee-update".into())
            .spawn(move || {
                // Found through /sys (no udev links needed), on the running disk.
                let target_rootfs =
                    crate::install::find_partition(&format!("levee-{slot}"), &running_slot)
                        .unwrap_or_else(|| {
                            PathBuf::from(format!("/dev/disk/by-partlabel/levee-{slot}"))
                        });
                // The running slot: the chunks a delta update reuses.
                let seed =
                    crate::install::find_partition(&format!("levee-{running_slot}"), &running_slot);
                let result = with_esp(&running_slot, |esp| {
                    let opts = ApplyOptions {
                        state_dir: &state_dir,
                        channel: &channel,
                        bandwidth,
                        timeout: Duration::from_secs(3600),
                    };
                    let target = SlotTarget {
                        rootfs: target_rootfs.clone(),
                        esp: esp.to_path_buf(),
                        seed: seed.clone(),
                    };
                    let req = Request {
                        running: &running,
                        running_slot: &running_slot,
                        want: release,
                        target_slot: &slot,
                        target: &target,
                    };
                    let mut say = |line: &str| tracing::info!("{who}: {line}");
                    apply::prepare(&opts, &mut state, &req, &mut say).map_err(|e| e.to_string())
                });
                (state, result)
            });
        match spawned {
            Ok(h) => {
                self.work = Some(h);
                self.attempt = Some((release, offered_version));
            }
            Err(e) => tracing::warn!("{}: cannot start the update worker: {e}", self.who),
        }
    }

    fn reboot(&mut self, client: &MtlsClient) {
        self.gate.hold.store(true, Ordering::SeqCst);
        if self.gate.busy.load(Ordering::SeqCst) {
            self.gate.hold.store(false, Ordering::SeqCst);
            return;
        }
        if self.quiet.is_none() {
            match crate::activity::quiet(Path::new(crate::activity::LOCK_PATH)) {
                Ok(Some(held)) => self.quiet = Some(held),
                Ok(None) => {
                    if !self.said_waiting {
                        tracing::info!(
                            "{}: the reboot into the update waits for a backup, restore, prune or repair started from the command line",
                            self.who
                        );
                        self.said_waiting = true;
                    }
                    self.gate.hold.store(false, Ordering::SeqCst);
                    return;
                }
                // Cannot tell (no /run/levee): the job gate is all we know.
                Err(e) => tracing::warn!("{}: {}: {e}", self.who, crate::activity::LOCK_PATH),
            }
        }
        let Some(p) = self.state.pending.as_mut() else {
            return;
        };
        p.phase = Phase::Rebooting;
        let r = UpdateReport {
            version: p.version.clone(),
            release: p.release,
            state: Wire::Rebooting,
            reason: None,
            slot: Some(p.slot.clone()),
        };
        tracing::info!(
            "{}: rebooting into slot {} for release {} ({})",
            self.who,
            p.slot,
            p.release,
            p.version
        );
        self.save();
        self.report(client, r);
        if let Err(e) = reboot_step() {
            tracing::warn!("{}: reboot failed: {e}", self.who);
            self.gate.hold.store(false, Ordering::SeqCst);
            self.quiet = None;
        }
    }
}

/// Runs `f` with the ESP mounted (see install::with_esp).
fn with_esp<T>(slot: &str, f: impl FnOnce(&Path) -> Result<T, String>) -> Result<T, String> {
    let mut out = None;
    crate::install::with_esp(slot, |esp| {
        out = Some(f(esp));
        Ok(())
    })
    .map_err(|e| e.to_string())?;
    out.unwrap_or_else(|| Err("the ESP was not mounted".into()))
}

/// The health check's repository step: a repository the appliance made
/// must open with its key (a new image that cannot read its backups must
/// not be kept). None yet (no backup has run) passes.
fn repository_opens(state_dir: &Path) -> Result<(), String> {
    let repo = state_dir.join(super::jobs::REPO_DIR);
    if !repo.exists() {
        return Ok(());
    }
    let key_path = state_dir.join(super::jobs::REPO_KEY);
    let key = std::fs::read_to_string(&key_path)
        .map_err(|e| format!("the repository key {}: {e}", key_path.display()))?;
    match crate::Repository::open(&repo, key.trim().as_bytes()) {
        Ok(_) | Err(crate::RepoError::NotARepository(_)) => Ok(()),
        Err(e) => Err(format!(
            "the backup repository {} does not open: {e}",
            repo.display()
        )),
    }
}

/// Whether `dir` is a mount point (its device differs from its parent's).
fn is_mount_point(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(me), Some(Ok(parent))) = (std::fs::metadata(dir), dir.parent().map(std::fs::metadata))
    else {
        return false;
    };
    me.dev() != parent.dev()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repository_step_of_the_health_check() {
        let dir = tempfile::tempdir().unwrap();
        // No repository yet: nothing to open.
        repository_opens(dir.path()).unwrap();
        let key = "ab".repeat(32);
        std::fs::create_dir_all(dir.path().join("credential")).unwrap();
        std::fs::write(dir.path().join(super::super::jobs::REPO_KEY), &key).unwrap();
        let repo = dir.path().join(super::super::jobs::REPO_DIR);
        let kdf = levee_proto::repo::KdfParams::with_memory(1024);
        crate::Repository::init(&repo, key.as_bytes(), kdf, "appliance", "test").unwrap();
        repository_opens(dir.path()).unwrap();
        // The wrong key (or a damaged repository) fails the check.
        std::fs::write(
            dir.path().join(super::super::jobs::REPO_KEY),
            "cd".repeat(32),
        )
        .unwrap();
        let e = repository_opens(dir.path()).unwrap_err();
        assert!(e.contains("does not open"), "{e}");
    }

    fn pending(phase: Phase) -> UpdateState {
        UpdateState {
            pending: Some(decide::Pending {
                version: "v2".into(),
                release: 2,
                slot: "b".into(),
                from_slot: "a".into(),
                from_version: "v1".into(),
                phase,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_boot_back_on_the_old_slot_records_and_queues_the_rollback() {
        let dir = tempfile::tempdir().unwrap();
        apply::save_state(dir.path(), &pending(Phase::Rebooting)).unwrap();
        std::fs::write(
            apply::health_failure_path(dir.path()),
            "not healthy after 600 s: no heartbeat accepted",
        )
        .unwrap();
        let args = BootArgs {
            slot: Some("a".into()),
            ..Default::default()
        };
        let u = Updates::start(dir.path(), &args, "test", JobGate::default());
        assert!(u.trial.is_none() && !u.committed);
        let saved = apply::load_state(dir.path()).unwrap();
        assert_eq!((saved.pending, saved.rolled_back.clone()), (None, vec![2]));
        let r = saved.unsent.expect("the rollback report waits to be sent");
        assert_eq!((r.state, r.release), (Wire::RolledBack, 2));
        assert!(r.reason.unwrap().contains("no heartbeat accepted"));
        assert!(!apply::health_failure_path(dir.path()).exists());
        // The same state on the new slot is its trial.
        apply::save_state(dir.path(), &pending(Phase::Rebooting)).unwrap();
        let args = BootArgs {
            slot: Some("b".into()),
            health_secs: Some(5),
            ..Default::default()
        };
        let u = Updates::start(dir.path(), &args, "test", JobGate::default());
        assert_eq!(u.trial.as_ref().map(|p| p.release), Some(2));
        assert_eq!(u.deadline, Duration::from_secs(5));
    }
}
