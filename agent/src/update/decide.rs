//! What the agent does about updates, as pure functions of its persisted
//! update state, the boot it is running and what the server offers: no
//! I/O here, so every case (and every power cut between two steps) is a
//! unit test.
//!
//! The persisted state (`/var/lib/levee/update/state.json`) says which
//! slot holds which release and whether an update is under way. It is
//! written before each step that changes the disk, so whatever was cut,
//! the next boot knows what it was doing.

use serde::{Deserialize, Serialize};

/// An update under way: the new release written (or being written) to
/// `slot`, the system running `from_slot`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub version: String,
    pub release: u64,
    /// The slot being written (the inactive one when it started).
    pub slot: String,
    pub from_slot: String,
    pub from_version: String,
    pub phase: Phase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Targets being downloaded into the slot (its `_OK` is 0).
    Writing,
    /// Written, verified and marked try-once; waiting for the window.
    Written,
    /// The reboot into the new slot was started.
    Rebooting,
}

/// Everything the agent keeps about updates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateState {
    #[serde(default)]
    pub pending: Option<Pending>,
    /// Release numbers of what each slot holds, when known.
    #[serde(default)]
    pub slot_a: Option<SlotRelease>,
    #[serde(default)]
    pub slot_b: Option<SlotRelease>,
    /// Releases that rolled back here and the server does not know of
    /// yet: refused whatever it offers. Once it accepted the report it
    /// blocks the release for this appliance until ops `unblock` it, and
    /// its offers decide ([`UpdateState::server_knows_rollback`]).
    #[serde(default)]
    pub rolled_back: Vec<u64>,
    /// A report not yet accepted by the server (sent again until it is).
    #[serde(default)]
    pub unsent: Option<levee_proto::update::UpdateReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRelease {
    pub version: String,
    pub release: u64,
}

impl UpdateState {
    pub fn slot(&self, slot: &str) -> Option<&SlotRelease> {
        match slot {
            "a" => self.slot_a.as_ref(),
            "b" => self.slot_b.as_ref(),
            _ => None,
        }
    }
    /// The server accepted the rollback report of `release`: it blocks the
    /// release for this appliance from now on, until `levee release
    /// unblock` (which must then work: the appliance tries it again).
    /// Call only after the offer in hand was acted on, since an offer
    /// made before the server had the report would still name it.
    pub fn server_knows_rollback(&mut self, release: u64) {
        self.rolled_back.retain(|r| *r != release);
    }

    pub fn set_slot(&mut self, slot: &str, r: Option<SlotRelease>) {
        match slot {
            "a" => self.slot_a = r,
            "b" => self.slot_b = r,
            _ => {}
        }
    }
}

/// The other slot.
pub fn other(slot: &str) -> &'static str {
    if slot == "a" {
        "b"
    } else {
        "a"
    }
}

/// What a boot finds about a pending update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootFinding {
    /// Nothing pending, or still waiting for the window on the old slot.
    Nothing,
    /// Running the new slot on its one try: health check, then commit.
    Trial(Pending),
    /// Back on the old slot after the reboot into the new one: the new
    /// slot did not commit. Report and block it.
    RolledBack { pending: Pending, reason: String },
    /// A write was cut (power, crash) before the slot was complete: start
    /// over; the slot was never marked bootable.
    WriteCut(Pending),
}

/// Looks at the pending update after a boot from `running` (`None`: a
/// network boot, where no update applies). `health_failure`: the reason
/// the new slot's health check recorded before it gave up, if it did.
pub fn on_boot(
    state: &UpdateState,
    running: Option<&str>,
    health_failure: Option<&str>,
) -> BootFinding {
    let (Some(p), Some(running)) = (state.pending.as_ref(), running) else {
        return BootFinding::Nothing;
    };
    match p.phase {
        Phase::Writing => BootFinding::WriteCut(p.clone()),
        _ if running == p.slot => BootFinding::Trial(p.clone()),
        Phase::Written => BootFinding::Nothing,
        Phase::Rebooting => BootFinding::RolledBack {
            pending: p.clone(),
            reason: match health_failure {
                Some(r) => format!("slot {} failed its health check: {r}", p.slot),
                None => format!(
                    "slot {} did not commit (it did not boot, hung, or was reset before its health check passed); the boot loader went back to slot {running}",
                    p.slot
                ),
            },
        },
    }
}

/// What to do at a step of the service loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Idle(String),
    /// Verify the offered release against TUF and write it to `slot`.
    Fetch {
        release: u64,
        slot: String,
    },
    /// Reboot into the written slot.
    Reboot,
    /// Written, but not now (outside the window, a job runs).
    Wait(String),
}

/// Inputs of [`step`] beside the persisted state.
#[derive(Debug, Clone, Default)]
pub struct Now<'a> {
    /// The running slot (`None`: network boot, never updates).
    pub running: Option<&'a str>,
    /// Whether this boot is committed (a trial boot does nothing else).
    pub committed: bool,
    /// The release the server's rollout offers now.
    pub offered: Option<u64>,
    /// The running release, when known.
    pub running_release: Option<u64>,
    pub in_window: bool,
    /// A backup, restore or replication runs.
    pub busy: bool,
}

/// The next thing to do.
pub fn step(state: &UpdateState, now: &Now) -> Step {
    let Some(running) = now.running else {
        return Step::Idle("booted from the network: updates apply to installed appliances".into());
    };
    if !now.committed {
        return Step::Idle("this boot is not committed yet".into());
    }
    if let Some(p) = &state.pending {
        return match p.phase {
            Phase::Writing => Step::Fetch {
                release: p.release,
                slot: p.slot.clone(),
            },
            Phase::Written | Phase::Rebooting if !now.in_window => {
                Step::Wait("outside the update window".into())
            }
            Phase::Written | Phase::Rebooting if now.busy => {
                Step::Wait("a backup, restore or replication runs".into())
            }
            Phase::Written | Phase::Rebooting => Step::Reboot,
        };
    }
    let Some(release) = now.offered else {
        return Step::Idle("no update offered".into());
    };
    if state.rolled_back.contains(&release) {
        return Step::Idle(format!("release {release} rolled back here before"));
    }
    if now.running_release.is_some_and(|r| r >= release) {
        return Step::Idle(format!(
            "release {release} is not newer than the running one"
        ));
    }
    Step::Fetch {
        release,
        slot: other(running).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(phase: Phase) -> Pending {
        Pending {
            version: "v2".into(),
            release: 2,
            slot: "b".into(),
            from_slot: "a".into(),
            from_version: "v1".into(),
            phase,
        }
    }

    fn with(p: Option<Pending>) -> UpdateState {
        UpdateState {
            pending: p,
            ..Default::default()
        }
    }

    #[test]
    fn boots_after_each_phase() {
        assert_eq!(on_boot(&with(None), Some("a"), None), BootFinding::Nothing);
        // Network boot: nothing applies.
        let s = with(Some(pending(Phase::Rebooting)));
        assert_eq!(on_boot(&s, None, None), BootFinding::Nothing);
        // Cut while writing: start over, whichever slot booted.
        let s = with(Some(pending(Phase::Writing)));
        assert!(matches!(
            on_boot(&s, Some("a"), None),
            BootFinding::WriteCut(_)
        ));
        // Written, cut before the reboot started: wait for the window.
        let s = with(Some(pending(Phase::Written)));
        assert_eq!(on_boot(&s, Some("a"), None), BootFinding::Nothing);
        // A cut after the grubenv switch but before `Rebooting` was
        // recorded boots the new slot: that is its trial.
        assert!(matches!(
            on_boot(&s, Some("b"), None),
            BootFinding::Trial(_)
        ));
        let s = with(Some(pending(Phase::Rebooting)));
        assert!(matches!(
            on_boot(&s, Some("b"), None),
            BootFinding::Trial(_)
        ));
        match on_boot(&s, Some("a"), None) {
            BootFinding::RolledBack { reason, .. } => {
                assert!(reason.contains("did not commit"), "{reason}")
            }
            f => panic!("{f:?}"),
        }
        match on_boot(&s, Some("a"), Some("no heartbeat accepted in 600 s")) {
            BootFinding::RolledBack { reason, .. } => {
                assert!(reason.contains("health check") && reason.contains("600 s"))
            }
            f => panic!("{f:?}"),
        }
    }

    #[test]
    fn steps() {
        let now = Now {
            running: Some("a"),
            committed: true,
            offered: Some(2),
            running_release: Some(1),
            in_window: true,
            busy: false,
        };
        let none = with(None);
        assert_eq!(
            step(&none, &now),
            Step::Fetch {
                release: 2,
                slot: "b".into()
            }
        );
        assert!(matches!(
            step(
                &none,
                &Now {
                    running: None,
                    ..now.clone()
                }
            ),
            Step::Idle(_)
        ));
        assert!(matches!(
            step(
                &none,
                &Now {
                    committed: false,
                    ..now.clone()
                }
            ),
            Step::Idle(_)
        ));
        assert!(matches!(
            step(
                &none,
                &Now {
                    offered: None,
                    ..now.clone()
                }
            ),
            Step::Idle(_)
        ));
        // Never downgrade, never the same release again.
        let r = step(
            &none,
            &Now {
                running_release: Some(2),
                ..now.clone()
            },
        );
        assert!(
            matches!(r, Step::Idle(ref m) if m.contains("not newer")),
            "{r:?}"
        );
        let r = step(
            &none,
            &Now {
                running_release: Some(5),
                ..now.clone()
            },
        );
        assert!(matches!(r, Step::Idle(_)));
        // A rolled-back release is not tried again.
        let blocked = UpdateState {
            rolled_back: vec![2],
            ..Default::default()
        };
        assert!(matches!(step(&blocked, &now), Step::Idle(ref m) if m.contains("rolled back")));
        // Once the server has the report, its offers decide (after an
        // `unblock` it offers the release again).
        let mut known = blocked.clone();
        known.server_knows_rollback(2);
        assert!(matches!(step(&known, &now), Step::Fetch { release: 2, .. }));
        // Written: reboot only inside the window and when no job runs.
        let written = with(Some(pending(Phase::Written)));
        assert_eq!(step(&written, &now), Step::Reboot);
        assert!(matches!(
            step(
                &written,
                &Now {
                    in_window: false,
                    ..now.clone()
                }
            ),
            Step::Wait(_)
        ));
        assert!(matches!(
            step(
                &written,
                &Now {
                    busy: true,
                    ..now.clone()
                }
            ),
            Step::Wait(_)
        ));
        // Writing (resumed after a restart): fetch the same release again.
        let writing = with(Some(pending(Phase::Writing)));
        assert_eq!(
            step(
                &writing,
                &Now {
                    offered: None,
                    ..now.clone()
                }
            ),
            Step::Fetch {
                release: 2,
                slot: "b".into()
            }
        );
    }
}
