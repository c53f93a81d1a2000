//! Updates over the mutual-TLS API: the server's rollout decision for one
//! appliance, and the appliance's reports on how an update went.
//!
//! The server only says *which* release an appliance may move to now (its
//! staged rollout); the appliance takes everything else (files, hashes,
//! release order) from the channel's signed TUF metadata, so a server can
//! delay an update but never choose an unsigned or older image.
//!
//! ```
//! use levee_proto::update::{HeartbeatAnswer, UpdateWindow};
//! let a: HeartbeatAnswer = serde_json::from_str(r#"{"ok":true}"#).unwrap();
//! assert!(a.update.is_none());
//! let w = UpdateWindow::parse("22:00-04:00").unwrap();
//! assert!(w.contains(23 * 60) && w.contains(60) && !w.contains(12 * 60));
//! ```

use serde::{Deserialize, Serialize};

/// `GET` this appliance's [`UpdateAnswer`]; `POST` an [`UpdateReport`] (mTLS).
pub const PATH: &str = "/api/v1/update";

/// What the rollout lets one appliance do now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateOffer {
    pub channel: String,
    /// Image version of the release (for logs; the agent goes by `release`).
    pub version: String,
    /// The release number the channel's signed targets carry.
    pub release: u64,
}

/// The answer to `POST /api/v1/heartbeat`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatAnswer {
    pub ok: bool,
    /// The server's clock (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_time_unix: Option<i64>,
    /// Present when the rollout says this appliance should update now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateOffer>,
    /// A restore ops asked this appliance to run (the oldest unfinished
    /// one; `crate::restore_api`). Agents before it ignore the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<crate::restore_api::RestoreRequest>,
}

/// The answer to `GET /api/v1/update`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateAnswer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateOffer>,
    /// Why there is no offer (no rollout, paused, outside the percentage,
    /// blocked after a rollback, already on it), for logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Where an appliance's update to one release stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateState {
    /// Metadata verified, targets being downloaded into the inactive slot.
    Downloading,
    /// The slot is written and verified; waiting for the update window.
    Written,
    /// Rebooting into the new slot for its one try.
    Rebooting,
    /// The new slot passed its health check and is kept.
    Committed,
    /// The new slot did not commit; the appliance runs the old one again.
    /// The server blocks the release for this appliance until `unblock`.
    RolledBack,
    /// Refused or failed before the switch (e.g. a TUF refusal, a disk
    /// error); the running system was not touched. Retried later.
    Failed,
    /// The appliance's own scheduled check of its channel (not prompted by
    /// an offer) refused the channel's metadata, e.g. `freeze`: an expired
    /// timestamp. Nothing was downloaded; `version` and `release` are what
    /// the appliance runs (release 0: not known), `reason` the refusal.
    CheckFailed,
    /// The appliance's scheduled check verified its channel (sent after
    /// boot and after a `check-failed`, not every time): what clears the
    /// server's `channel-check-failing` alert. Same fields as
    /// `check-failed`.
    Checked,
}

impl UpdateState {
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateState::Downloading => "downloading",
            UpdateState::Written => "written",
            UpdateState::Rebooting => "rebooting",
            UpdateState::Committed => "committed",
            UpdateState::RolledBack => "rolled-back",
            UpdateState::Failed => "failed",
            UpdateState::CheckFailed => "check-failed",
            UpdateState::Checked => "checked",
        }
    }

    pub fn parse(s: &str) -> Option<UpdateState> {
        Some(match s {
            "downloading" => UpdateState::Downloading,
            "written" => UpdateState::Written,
            "rebooting" => UpdateState::Rebooting,
            "committed" => UpdateState::Committed,
            "rolled-back" => UpdateState::RolledBack,
            "failed" => UpdateState::Failed,
            "check-failed" => UpdateState::CheckFailed,
            "checked" => UpdateState::Checked,
            _ => return None,
        })
    }

    /// About the channel (the scheduled check), not about a release.
    pub fn is_channel_check(self) -> bool {
        matches!(self, UpdateState::CheckFailed | UpdateState::Checked)
    }

    /// Under way: neither finished nor given up.
    pub fn in_progress(self) -> bool {
        matches!(
            self,
            UpdateState::Downloading | UpdateState::Written | UpdateState::Rebooting
        )
    }
}

/// `POST /api/v1/update`: one step of an update, from the appliance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateReport {
    pub version: String,
    pub release: u64,
    pub state: UpdateState,
    /// Why (required in spirit for `rolled-back` and `failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The slot the update went to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
}

/// Longest `reason` kept from a report (longer ones are cut): it is shown
/// to ops, and an appliance must not be able to fill the database.
pub const MAX_REASON: usize = 2000;

impl UpdateReport {
    /// Parses and checks a report from an appliance: a version of 1-128
    /// characters without control characters, a release above 0 (or 0 for
    /// `check-failed` and `checked`: the running release may be unknown), slot `a`
    /// or `b`; the reason is cut to [`MAX_REASON`] bytes and its control
    /// characters (newlines of an error chain, terminal escapes) become
    /// spaces, so it prints safely.
    pub fn parse(bytes: &[u8]) -> Result<UpdateReport, String> {
        let mut r: UpdateReport =
            serde_json::from_slice(bytes).map_err(|e| format!("malformed update report: {e}"))?;
        if r.version.is_empty()
            || r.version.chars().count() > 128
            || r.version.chars().any(char::is_control)
        {
            return Err(
                "an update report needs the version: 1-128 characters, no control characters"
                    .into(),
            );
        }
        if r.release == 0 && !r.state.is_channel_check() {
            return Err("an update report needs the release number (> 0)".into());
        }
        if r.slot.as_deref().is_some_and(|s| s != "a" && s != "b") {
            return Err("slot must be `a` or `b`".into());
        }
        if let Some(reason) = r.reason.as_mut() {
            if reason.len() > MAX_REASON {
                let mut cut = MAX_REASON;
                while !reason.is_char_boundary(cut) {
                    cut -= 1;
                }
                reason.truncate(cut);
            }
            if reason.chars().any(char::is_control) {
                *reason = reason
                    .chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .collect();
            }
        }
        Ok(r)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an update report serialises")
    }
}

/// The customer's `update_window`: `HH:MM-HH:MM` in UTC, the end not
/// included; it may cross midnight (`22:00-04:00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateWindow {
    /// Minutes after midnight.
    pub start: u16,
    pub end: u16,
}

impl UpdateWindow {
    pub fn parse(s: &str) -> Result<UpdateWindow, String> {
        let bad =
            || format!("`{s}` is not a window; expected HH:MM-HH:MM in UTC, e.g. 01:00-05:00");
        let (a, b) = s.trim().split_once('-').ok_or_else(bad)?;
        let minutes = |t: &str| -> Option<u16> {
            let (h, m) = t.trim().split_once(':')?;
            if h.len() != 2 || m.len() != 2 {
                return None;
            }
            let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60).then_some(h * 60 + m)
        };
        let (start, end) = (minutes(a).ok_or_else(bad)?, minutes(b).ok_or_else(bad)?);
        if start == end {
            return Err(format!(
                "`{s}` is an empty window; leave update_window out to allow any time"
            ));
        }
        Ok(UpdateWindow { start, end })
    }

    /// Whether `minute` (after midnight UTC, 0..1440) is inside.
    pub fn contains(&self, minute: u16) -> bool {
        if self.start < self.end {
            (self.start..self.end).contains(&minute)
        } else {
            minute >= self.start || minute < self.end
        }
    }

    /// Whether Unix time `t` is inside.
    pub fn contains_unix(&self, t: i64) -> bool {
        self.contains((t.rem_euclid(86_400) / 60) as u16)
    }
}

impl std::fmt::Display for UpdateWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start / 60,
            self.start % 60,
            self.end / 60,
            self.end % 60
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows() {
        let w = UpdateWindow::parse("01:00-05:00").unwrap();
        assert!(!w.contains(59));
        assert!(w.contains(60));
        assert!(w.contains(299));
        assert!(!w.contains(300));
        let n = UpdateWindow::parse("23:30-00:30").unwrap();
        assert!(n.contains(23 * 60 + 45) && n.contains(0) && n.contains(29));
        assert!(!n.contains(30) && !n.contains(23 * 60 + 29));
        assert_eq!(n.to_string(), "23:30-00:30");
        assert!(n.contains_unix(86_400 * 100 + 10 * 60));
        for bad in [
            "",
            "1:00-2:00",
            "01:00",
            "01:00-01:00",
            "24:00-01:00",
            "01:60-02:00",
        ] {
            assert!(UpdateWindow::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reports_are_checked() {
        let ok = br#"{"version":"v2","release":2,"state":"rolled-back","slot":"b","reason":"a\nb\u001b[31m"}"#;
        let r = UpdateReport::parse(ok).unwrap();
        assert_eq!(r.reason.as_deref(), Some("a b [31m"));
        assert_eq!(UpdateReport::parse(&r.to_bytes()).unwrap(), r);
        for bad in [
            &br#"{"version":"","release":2,"state":"written"}"#[..],
            br#"{"version":"v\u0007","release":2,"state":"written"}"#,
            br#"{"version":"v2","release":0,"state":"written"}"#,
            br#"{"version":"v2","release":2,"state":"written","slot":"c"}"#,
            br#"{"version":"v2","release":2,"state":"gone"}"#,
        ] {
            assert!(
                UpdateReport::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!(
            r#"{{"version":"v2","release":2,"state":"failed","reason":"{}"}}"#,
            "é".repeat(MAX_REASON)
        );
        let r = UpdateReport::parse(long.as_bytes()).unwrap();
        assert!(r.reason.unwrap().len() <= MAX_REASON);
    }

    #[test]
    fn states_round_trip() {
        for s in [
            UpdateState::Downloading,
            UpdateState::Written,
            UpdateState::Rebooting,
            UpdateState::Committed,
            UpdateState::RolledBack,
            UpdateState::Failed,
            UpdateState::CheckFailed,
            UpdateState::Checked,
        ] {
            assert_eq!(UpdateState::parse(s.as_str()), Some(s));
            let j = serde_json::to_string(&s).unwrap();
            assert_eq!(j, format!("\"{}\"", s.as_str()));
        }
    }
}
