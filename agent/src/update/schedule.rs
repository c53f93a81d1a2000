//! The agent's own check of its release channel, on a schedule of its own
//! (about every 6 hours, with jitter), besides the checks the rollout's
//! offers prompt. It verifies the channel's metadata only (root chain,
//! timestamp, snapshot, targets) and installs nothing: which release an
//! appliance takes, and when, stays the server's staged-rollout decision.
//! What it adds is that a channel which stopped moving is noticed even if
//! the server never offers anything: an expired timestamp (`freeze`: a
//! replayed or stale channel, or a server that stopped re-signing), a
//! rolled-back or tampered channel, are logged and reported
//! (`check-failed`) within hours, not at the next offer.

use std::time::Duration;

use levee_proto::update::{UpdateReport, UpdateState as Wire};

use super::client::{self, ChannelOptions, Decision, Running};
use super::Refusal;

/// The default period: the timestamp lives a day and is renewed with 12
/// hours left, so a check every 6 hours sees a stopped channel at most
/// about 18 hours after its last renewal.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(6 * 3600);

/// When the next check is due, `rand` a random number: `every` give or
/// take 10%, so a fleet booted together does not check together.
pub fn next_delay(every: Duration, rand: u64) -> Duration {
    let spread = (every.as_millis() as u64 / 5).max(1);
    every - every / 10 + Duration::from_millis(rand % spread)
}

/// The first check after boot: within a tenth of the period (a boot is
/// when an appliance most likely missed something).
pub fn first_delay(every: Duration, rand: u64) -> Duration {
    Duration::from_millis(rand % (every.as_millis() as u64 / 10).max(1))
}

/// What a scheduled check found.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckOutcome {
    /// The channel verified; nothing newer than `release`.
    UpToDate { release: u64 },
    /// The channel verified and signs a newer release: it is taken when
    /// the rollout offers it, not before.
    Newer { release: u64, version: String },
    /// The channel's metadata was refused (or could not be fetched).
    Refused { kind: Refusal, detail: String },
}

impl CheckOutcome {
    /// The log line.
    pub fn describe(&self, channel: &str) -> String {
        match self {
            CheckOutcome::UpToDate { release } => {
                format!("scheduled check: channel {channel} verified, nothing newer than release {release}")
            }
            CheckOutcome::Newer { release, version } => format!(
                "scheduled check: channel {channel} verified; it signs release {release} ({version}), installed when the rollout offers it"
            ),
            CheckOutcome::Refused { kind, detail } => format!(
                "scheduled check: channel {channel} refused ({}): {detail}",
                kind.as_str()
            ),
        }
    }

    /// The report to send: a refusal the server should know of (an
    /// unreachable server hears nothing anyway), or `checked` when the
    /// channel verified and the server has not heard so since this boot or
    /// last heard a refusal (`heard`: what it last accepted from this
    /// boot, `Some(true)` a refusal): that clears its
    /// `channel-check-failing` alert without a report every period.
    pub fn report(
        &self,
        channel: &str,
        running: &Running,
        heard: Option<bool>,
    ) -> Option<UpdateReport> {
        let (state, reason) = match self {
            CheckOutcome::Refused { kind, .. } if *kind == Refusal::Unreachable => return None,
            CheckOutcome::Refused { kind, detail } => (
                Wire::CheckFailed,
                format!(
                    "scheduled check of channel {channel} refused ({}): {detail}",
                    kind.as_str()
                ),
            ),
            _ if heard == Some(false) => return None,
            ok => (Wire::Checked, ok.describe(channel)),
        };
        Some(UpdateReport {
            version: if running.version.is_empty() {
                "unknown".into()
            } else {
                running.version.clone()
            },
            release: running.release.unwrap_or(0),
            state,
            reason: Some(reason),
            slot: None,
        })
    }
}

/// Verifies the channel's metadata as an update would, without choosing
/// or downloading anything.
pub async fn check_channel(opts: &ChannelOptions, running: &Running) -> CheckOutcome {
    match client::check(opts, running, None).await {
        Ok(Decision::UpToDate { release }) => CheckOutcome::UpToDate { release },
        Ok(Decision::Update(o)) => CheckOutcome::Newer {
            release: o.release,
            version: o.version,
        },
        Err(e) => match e.refusal() {
            Some(kind) => CheckOutcome::Refused {
                kind,
                detail: match e {
                    super::UpdateError::Refused { detail, .. } => detail,
                    other => other.to_string(),
                },
            },
            None => CheckOutcome::Refused {
                kind: Refusal::Unreachable,
                detail: e.to_string(),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_spread_around_the_period() {
        let every = Duration::from_secs(6 * 3600);
        let all: Vec<Duration> = (0..1000u64)
            .map(|i| next_delay(every, i.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
            .collect();
        assert!(all
            .iter()
            .all(|d| *d >= every * 9 / 10 && *d < every * 11 / 10));
        assert!(*all.iter().max().unwrap() - *all.iter().min().unwrap() > every / 10);
        assert!(first_delay(every, u64::MAX) < every / 10);
        // Tiny periods (tests) still work.
        assert!(next_delay(Duration::from_millis(3), 7) <= Duration::from_millis(4));
        assert_eq!(first_delay(Duration::ZERO, 7), Duration::ZERO);
    }

    #[test]
    fn refusals_and_recoveries_are_reported() {
        let running = Running {
            version: "v1".into(),
            release: Some(3),
        };
        let freeze = CheckOutcome::Refused {
            kind: Refusal::Freeze,
            detail: "timestamp metadata is expired".into(),
        };
        let r = freeze.report("stable", &running, None).expect("a report");
        assert_eq!(
            (r.state, r.release, r.version.as_str()),
            (Wire::CheckFailed, 3, "v1")
        );
        assert!(r.reason.unwrap().contains("refused (freeze)"));
        // It passes the server's checks.
        levee_proto::update::UpdateReport::parse(
            &freeze
                .report("stable", &Running::default(), None)
                .unwrap()
                .to_bytes(),
        )
        .unwrap();
        let down = CheckOutcome::Refused {
            kind: Refusal::Unreachable,
            detail: "connection refused".into(),
        };
        assert!(down.report("stable", &running, None).is_none());
        // A channel that verifies: `checked` once after boot and once
        // after each refusal the server heard, not every period.
        let newer = CheckOutcome::Newer {
            release: 4,
            version: "v2".into(),
        };
        for heard in [None, Some(true)] {
            let r = newer.report("stable", &running, heard).expect("checked");
            assert_eq!((r.state, r.release), (Wire::Checked, 3));
            assert!(r.reason.unwrap().contains("channel stable verified"));
        }
        assert!(newer.report("stable", &running, Some(false)).is_none());
        let ok = CheckOutcome::UpToDate { release: 3 };
        levee_proto::update::UpdateReport::parse(
            &ok.report("stable", &Running::default(), None)
                .unwrap()
                .to_bytes(),
        )
        .unwrap();
        // Refusals are reported every time.
        assert!(freeze.report("stable", &running, Some(true)).is_some());
    }
}
