//! Alert rules: pure functions from a [`Snapshot`] of the fleet's state to
//! the conditions that hold now ([`Finding`]s). Nothing here reads the
//! store or the clock; [`super::engine`] gathers the snapshot, and
//! [`transitions`] turns findings plus the alerts already open into what
//! to open and what to resolve, so an alert opens once while its
//! condition holds and resolves once when it stops.
//!
//! A new kind (replication lag, offsite verification, quota) is one more
//! [`Rule`] in [`default_rules`], reading whatever it needs from the
//! snapshot.

use std::collections::{BTreeSet, HashMap, HashSet};

use levee_proto::runs::RunResult;
use serde::Serialize;

use crate::health::BackupHealth;
use crate::store::{Appliance, ApplianceState, Event, RunRecord, UpdateRecord, CHANNEL_CHECK_STEP};
use levee_proto::update::UpdateState;

/// Thresholds of the rules.
#[derive(Debug, Clone)]
pub struct RuleOptions {
    /// Backup runs of one stream that must fail in a row.
    pub failed_in_a_row: u64,
    /// Free space below this share of the disk opens `disk-full`...
    pub disk_free_below: f64,
    /// ...and it resolves only above this one (no flapping at the edge).
    pub disk_free_resolve: f64,
    /// A machine waiting for approval longer than this.
    pub pending_secs: i64,
    /// A certificate closer than this to its end has missed its renewal
    /// (the agent renews in the last 30 days).
    pub renewal_overdue_secs: i64,
    /// How far back events count (key conflicts, channel checks).
    pub event_window_secs: i64,
    /// Scheduled channel checks that must be refused in a row (with none
    /// verifying in between) to open `channel-check-failing`.
    pub channel_checks_failed: usize,
}

impl Default for RuleOptions {
    fn default() -> Self {
        RuleOptions {
            failed_in_a_row: 3,
            disk_free_below: 0.10,
            disk_free_resolve: 0.15,
            pending_secs: 86_400,
            renewal_overdue_secs: 20 * 86_400,
            event_window_secs: 86_400,
            channel_checks_failed: 2,
        }
    }
}

/// One appliance as the rules see it.
#[derive(Debug, Clone)]
pub struct ApplianceView {
    pub appliance: Appliance,
    /// Its customer's heartbeat interval.
    pub heartbeat_secs: u64,
    pub backup: BackupHealth,
    /// Its newest update run report, if any.
    pub last_update: Option<RunRecord>,
    /// Its newest update record (the rollout's view of its update).
    pub update: Option<UpdateRecord>,
    /// Its recent enrollment and channel-check events (within the
    /// window), oldest first.
    pub events: Vec<Event>,
}

/// The state the rules judge.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub now: i64,
    /// Since when this server has been listening for heartbeats: an
    /// appliance is not judged offline for the time the server itself was
    /// down (a restart would otherwise open an alert for every appliance).
    pub listening_since: i64,
    pub appliances: Vec<ApplianceView>,
    /// Alerts open now, by (kind, subject): rules with hysteresis keep an
    /// open alert open until it is clearly over.
    pub open: HashSet<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// A condition that holds now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub kind: &'static str,
    /// What it is about, e.g. `appliance:7`: one open alert per kind and
    /// subject.
    pub subject: String,
    pub appliance_id: Option<i64>,
    pub customer: Option<String>,
    pub severity: Severity,
    /// One line for a human.
    pub summary: String,
}

/// A rule: the conditions of its kind that hold in a snapshot.
pub trait Rule: Send + Sync {
    fn kind(&self) -> &'static str;
    fn check(&self, snap: &Snapshot) -> Vec<Finding>;
}

/// Every rule, with `opts`.
pub fn default_rules(opts: &RuleOptions) -> Vec<Box<dyn Rule>> {
    let o = opts.clone();
    vec![
        per_appliance("offline", offline),
        per_appliance("backup-overdue", backup_overdue),
        {
            let n = o.failed_in_a_row;
            per_appliance("backup-failing", move |v, _| backup_failing(v, n))
        },
        per_appliance("install-failed", |v, _| install_failed(v)),
        per_appliance("update-failed", |v, _| update_failed(v)),
        {
            let o = o.clone();
            per_appliance("disk-full", move |v, s| disk_full(v, s, &o))
        },
        {
            let secs = o.pending_secs;
            per_appliance("enrollment-pending", move |v, s| pending(v, s, secs))
        },
        per_appliance("enrollment-key-conflict", |v, _| key_conflict(v)),
        {
            let secs = o.renewal_overdue_secs;
            per_appliance("renewal-failing", move |v, s| renewal(v, s, secs))
        },
        {
            let n = o.channel_checks_failed;
            per_appliance("channel-check-failing", move |v, s| {
                channel_check_failing(v, s, n)
            })
        },
    ]
}

/// All findings of `rules` in `snap`.
pub fn evaluate(rules: &[Box<dyn Rule>], snap: &Snapshot) -> Vec<Finding> {
    rules.iter().flat_map(|r| r.check(snap)).collect()
}

/// An open alert, as the store has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenAlert {
    pub id: i64,
    pub kind: String,
    pub subject: String,
}

/// What to do now.
#[derive(Debug, Default, PartialEq)]
pub struct Transitions {
    /// Conditions with no open alert: open one each.
    pub open: Vec<Finding>,
    /// Open alerts whose condition no longer holds: resolve them.
    pub resolve: Vec<i64>,
}

/// Findings against open alerts. `judged` are the kinds whose rules ran:
/// an open alert of a kind no rule judges (a rule removed, a newer
/// server's kind) is left alone rather than resolved by mistake.
pub fn transitions(
    findings: &[Finding],
    open: &[OpenAlert],
    judged: &BTreeSet<&str>,
) -> Transitions {
    let holding: HashSet<(&str, &str)> = findings
        .iter()
        .map(|f| (f.kind, f.subject.as_str()))
        .collect();
    let opened: HashSet<(&str, &str)> = open
        .iter()
        .map(|a| (a.kind.as_str(), a.subject.as_str()))
        .collect();
    let mut seen = HashSet::new();
    Transitions {
        open: findings
            .iter()
            .filter(|f| !opened.contains(&(f.kind, f.subject.as_str())))
            .filter(|f| seen.insert((f.kind, f.subject.clone())))
            .cloned()
            .collect(),
        resolve: open
            .iter()
            .filter(|a| judged.contains(a.kind.as_str()))
            .filter(|a| !holding.contains(&(a.kind.as_str(), a.subject.as_str())))
            .map(|a| a.id)
            .collect(),
    }
}

type Check = dyn Fn(&ApplianceView, &Snapshot) -> Option<(Severity, String)> + Send + Sync;

struct PerAppliance {
    kind: &'static str,
    check: Box<Check>,
}

fn per_appliance(
    kind: &'static str,
    check: impl Fn(&ApplianceView, &Snapshot) -> Option<(Severity, String)> + Send + Sync + 'static,
) -> Box<dyn Rule> {
    Box::new(PerAppliance {
        kind,
        check: Box::new(check),
    })
}

impl Rule for PerAppliance {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn check(&self, snap: &Snapshot) -> Vec<Finding> {
        snap.appliances
            .iter()
            .filter_map(|v| {
                let (severity, what) = (self.check)(v, snap)?;
                let a = &v.appliance;
                Some(Finding {
                    kind: self.kind,
                    subject: subject(a.id),
                    appliance_id: Some(a.id),
                    customer: a.customer.clone(),
                    severity,
                    summary: format!("appliance {} (id {}): {what}", a.mac, a.id),
                })
            })
            .collect()
    }
}

/// The subject of an appliance's alerts.
pub fn subject(id: i64) -> String {
    format!("appliance:{id}")
}

/// Enrolled and not retired: it owes heartbeats and backups.
fn in_service(a: &Appliance) -> bool {
    a.cert_fingerprint.is_some() && a.revoked_at.is_none() && a.state != ApplianceState::Retired
}

fn ago(secs: i64) -> String {
    match secs.max(0) {
        d @ 0..=3599 => format!("{} min", d / 60),
        d @ 3600..=86_399 => format!("{} h", d / 3600),
        d => format!("{} days", d / 86_400),
    }
}

/// How long an appliance that is installing itself may stay silent: it
/// sends no heartbeat between its enrollment and its first boot from disk,
/// and an install under a slow link takes minutes (a failed install has an
/// alert of its own; this catches one that hangs).
pub const INSTALL_SILENCE_SECS: u64 = 30 * 60;

fn offline(v: &ApplianceView, s: &Snapshot) -> Option<(Severity, String)> {
    let a = &v.appliance;
    let heard = a.last_heartbeat.max(a.last_report_at).map(|t| t as i64);
    let silent_since = heard.unwrap_or(0).max(s.listening_since);
    let mut limit_secs = v.heartbeat_secs.saturating_mul(3);
    if a.state == ApplianceState::Installing {
        limit_secs = limit_secs.max(INSTALL_SILENCE_SECS);
    }
    let limit = i64::try_from(limit_secs).unwrap_or(i64::MAX);
    if !in_service(a) || s.now - silent_since <= limit {
        return None;
    }
    let last = heard;
    Some((
        Severity::Critical,
        match last {
            Some(t) => format!(
                "offline: no heartbeat for {} (interval {} s)",
                ago(s.now - t),
                v.heartbeat_secs
            ),
            None => "offline: no heartbeat since it enrolled".into(),
        },
    ))
}

fn backup_overdue(v: &ApplianceView, s: &Snapshot) -> Option<(Severity, String)> {
    let e = v
        .backup
        .next_expected
        .as_ref()
        .filter(|_| v.backup.overdue)?;
    Some((
        Severity::Critical,
        format!(
            "backup overdue: schedule {} was due {} ago",
            e.schedule,
            ago(s.now - e.at)
        ),
    ))
}

fn backup_failing(v: &ApplianceView, n: u64) -> Option<(Severity, String)> {
    let f = v.backup.failing.as_ref().filter(|f| f.count >= n)?;
    Some((
        Severity::Critical,
        format!(
            "backup failed {} times in a row (schedule {}, sources {})",
            f.count,
            f.job.as_deref().unwrap_or("by hand"),
            f.sources.join(", ")
        ),
    ))
}

fn install_failed(v: &ApplianceView) -> Option<(Severity, String)> {
    let a = &v.appliance;
    (a.state == ApplianceState::Failed).then(|| {
        (
            Severity::Critical,
            format!(
                "install failed: {}",
                a.state_reason.as_deref().unwrap_or("no reason given")
            ),
        )
    })
}

fn update_failed(v: &ApplianceView) -> Option<(Severity, String)> {
    if let Some(u) = &v.update {
        let what = match u.state {
            UpdateState::RolledBack => "rolled back",
            UpdateState::Failed => "failed",
            _ => return None,
        };
        return Some((
            Severity::Critical,
            format!(
                "update to {} {what}: {}",
                u.version,
                u.reason.as_deref().unwrap_or("no reason given")
            ),
        ));
    }
    let r = v
        .last_update
        .as_ref()
        .filter(|r| r.report.result == RunResult::Failed)?;
    let why = r
        .report
        .errors
        .first()
        .map(|e| e.message.as_str())
        .unwrap_or("no reason given");
    Some((
        Severity::Critical,
        format!("update failed or rolled back: {why}"),
    ))
}

fn disk_full(v: &ApplianceView, s: &Snapshot, o: &RuleOptions) -> Option<(Severity, String)> {
    let a = &v.appliance;
    if !in_service(a) {
        return None;
    }
    let r = a.last_report.as_ref()?;
    let (free, total) = (r.disk_free_bytes?, r.disk_total_bytes?);
    if total == 0 {
        return None;
    }
    let share = free as f64 / total as f64;
    let open = s.open.contains(&("disk-full".to_string(), subject(a.id)));
    let limit = if open {
        o.disk_free_resolve
    } else {
        o.disk_free_below
    };
    (share < limit).then(|| {
        (
            Severity::Warning,
            format!(
                "disk nearly full: {:.1}% free ({} of {} MiB)",
                share * 100.0,
                free >> 20,
                total >> 20
            ),
        )
    })
}

fn pending(v: &ApplianceView, s: &Snapshot, secs: i64) -> Option<(Severity, String)> {
    let a = &v.appliance;
    let waiting = a.state == ApplianceState::Pending
        && a.pending_key.is_some()
        && a.cert_fingerprint.is_none()
        && a.revoked_at.is_none();
    let since = s.now - a.first_seen as i64;
    (waiting && since > secs).then(|| {
        (
            Severity::Warning,
            format!(
                "waiting for approval for {}: levee appliance approve {} --customer NAME",
                ago(since),
                a.mac
            ),
        )
    })
}

/// Two different keys for one machine within the window (a pending
/// machine's key replaced), or a conflict the enrollment path recorded as
/// such (another key refused). Enrolling since (ops chose a key) settles
/// what came before.
fn key_conflict(v: &ApplianceView) -> Option<(Severity, String)> {
    let mut keys = BTreeSet::new();
    let mut flagged = None;
    for e in &v.events {
        match e.step.as_str() {
            "enrolled" | "reenrolled" => {
                keys.clear();
                flagged = None;
            }
            "pending-key" => {
                if let Some(k) = e.detail.rsplit(' ').next() {
                    keys.insert(k.to_string());
                }
            }
            "key-conflict" => flagged = Some(e.detail.clone()),
            _ => {}
        }
    }
    let what = flagged.or_else(|| {
        (keys.len() > 1).then(|| {
            format!(
                "{} different keys presented within a day: someone else may be enrolling as this machine",
                keys.len()
            )
        })
    })?;
    Some((
        Severity::Critical,
        format!("enrollment key conflict: {what}"),
    ))
}

fn renewal(v: &ApplianceView, s: &Snapshot, secs: i64) -> Option<(Severity, String)> {
    let a = &v.appliance;
    let left = a.cert_not_after? as i64 - s.now;
    (in_service(a) && left < secs).then(|| {
        (
            if left < 7 * 86_400 {
                Severity::Critical
            } else {
                Severity::Warning
            },
            format!(
                "certificate renewal failing: the certificate ends in {}",
                ago(left)
            ),
        )
    })
}

/// The appliance's own scheduled checks of its release channel keep being
/// refused (`check-failed` reports, e.g. `freeze`: the channel's timestamp
/// expired, so the server stopped re-signing or someone replays old
/// metadata): at least `n` in a row within the window, none verifying
/// since. A `checked` report (the agent sends one after a refusal once a
/// check verifies again) resolves it. An update stuck this way is silent
/// otherwise: no offer fails, the appliance just never learns of releases.
fn channel_check_failing(v: &ApplianceView, s: &Snapshot, n: usize) -> Option<(Severity, String)> {
    if !in_service(&v.appliance) {
        return None;
    }
    let refused: Vec<&Event> = v
        .events
        .iter()
        .rev()
        .filter(|e| e.step == CHANNEL_CHECK_STEP)
        .take_while(|e| e.detail.starts_with(UpdateState::CheckFailed.as_str()))
        .collect();
    let last = refused.first().filter(|_| refused.len() >= n.max(1))?;
    // The detail is `check-failed VERSION (release N): REASON`.
    let why = last
        .detail
        .split_once("): ")
        .map_or(last.detail.as_str(), |(_, r)| r);
    Some((
        Severity::Critical,
        format!(
            "release channel check failing: {} scheduled checks in a row refused, the last {} ago: {why}",
            refused.len(),
            ago(s.now - last.at as i64)
        ),
    ))
}

/// The kinds `rules` judge.
pub fn kinds(rules: &[Box<dyn Rule>]) -> BTreeSet<&'static str> {
    rules.iter().map(|r| r.kind()).collect()
}

/// Views by appliance id (the engine builds them; tests too).
pub type Views = HashMap<i64, ApplianceView>;

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
