//! Backup schedules as a pure function: which configured job is due next
//! ([`next_due`]: configuration, last run times and "now" in, a time out).
//! The agent sleeps until that time and runs the job; the server computes
//! the same time from the run reports to tell when a backup is overdue, so
//! both sides share this one implementation.
//!
//! Semantics, for a schedule's last run time `last` (its start, Unix
//! seconds) and `now`:
//! - `every: 4h`: due at `last + 4h`; never run: due now.
//! - `at: "01:30"` (appliance local time, `utc_offset` seconds east of UTC)
//!   on `days` (`mon`..`sun`, default every day): due at the first such slot
//!   after `last`. A slot missed while the appliance was off is run once when
//!   it comes back (the returned time is then <= now), not once per missed
//!   slot. Never run: the first slot at or after `now`.
//!
//! ```
//! use levee_proto::schedule::next_run;
//! let s: levee_proto::config::Schedule =
//!     serde_json::from_value(serde_json::json!({"name": "n", "every": "4h"})).unwrap();
//! assert_eq!(next_run(&s, Some(1_000), 2_000, 0).unwrap(), 1_000 + 4 * 3600);
//! ```

use std::collections::HashMap;

use serde::Serialize;

use crate::config::{parse_duration, CustomerConfig, Schedule};

/// Shortest `every` the configuration allows.
pub const MIN_EVERY_SECS: u64 = 5 * 60;

const DAY: i64 = 86_400;
const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("schedule {0}: give exactly one of `at` and `every`")]
    AtOrEvery(String),
    #[error("schedule {0}: bad time of day {1:?} (want HH:MM)")]
    BadAt(String, String),
    #[error("schedule {0}: bad day {1:?} (want mon, tue, wed, thu, fri, sat or sun)")]
    BadDay(String, String),
    #[error("schedule {0}: bad interval {1:?} (want e.g. 30m, 4h, 1d; at least 5m)")]
    BadEvery(String, String),
    #[error("schedule {0}: no such source {1:?}")]
    NoSource(String, String),
    #[error("no schedule named {0:?}")]
    NoSchedule(String),
}

/// The next job to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Due {
    /// The schedule's name (its `Schedule::name`).
    pub schedule: String,
    /// When it is due, Unix seconds; <= now means run it now.
    pub at: i64,
}

/// Monday = 0 .. Sunday = 6 for days since 1970-01-01 (a Thursday).
fn weekday(days: i64) -> usize {
    (days + 3).rem_euclid(7) as usize
}

fn parse_at(s: &Schedule, at: &str) -> Result<i64, ScheduleError> {
    let bad = || ScheduleError::BadAt(s.name.clone(), at.to_string());
    let (h, m) = at.trim().split_once(':').ok_or_else(bad)?;
    let (h, m): (i64, i64) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if !(0..24).contains(&h) || !(0..60).contains(&m) {
        return Err(bad());
    }
    Ok(h * 3600 + m * 60)
}

/// Allowed weekdays; empty `days` means all.
fn parse_days(s: &Schedule) -> Result<[bool; 7], ScheduleError> {
    if s.days.is_empty() {
        return Ok([true; 7]);
    }
    let mut out = [false; 7];
    for d in &s.days {
        let i = DAY_NAMES
            .iter()
            .position(|n| n.eq_ignore_ascii_case(d.trim()))
            .ok_or_else(|| ScheduleError::BadDay(s.name.clone(), d.clone()))?;
        out[i] = true;
    }
    Ok(out)
}

/// Checks a schedule's fields (the same rules [`next_run`] applies).
pub fn validate(s: &Schedule) -> Result<(), ScheduleError> {
    next_run(s, None, 0, 0).map(|_| ())
}

/// When schedule `s` is next due, given its last run (start, Unix seconds).
pub fn next_run(
    s: &Schedule,
    last_run: Option<i64>,
    now: i64,
    utc_offset: i32,
) -> Result<i64, ScheduleError> {
    match (&s.at, &s.every) {
        (None, Some(every)) => {
            if !s.days.is_empty() {
                return Err(ScheduleError::AtOrEvery(s.name.clone()));
            }
            let secs = parse_duration(every)
                .filter(|n| *n >= MIN_EVERY_SECS && *n <= i64::MAX as u64 / 2)
                .ok_or_else(|| ScheduleError::BadEvery(s.name.clone(), every.clone()))?;
            Ok(match last_run {
                Some(l) => l.saturating_add(secs as i64),
                None => now,
            })
        }
        (Some(at), None) => {
            let tod = parse_at(s, at)?;
            let days = parse_days(s)?;
            let off = i64::from(utc_offset);
            // First slot strictly after `last`, or at/after `now` if never run.
            let after = match last_run {
                Some(l) => l,
                None => now - 1,
            };
            let day0 = (after + off).div_euclid(DAY);
            for d in day0..=day0 + 7 {
                let t = d * DAY + tod - off;
                if days[weekday(d)] && t > after {
                    return Ok(t);
                }
            }
            // Unreachable: parse_days allows at least one day, and any 8
            // consecutive days hold every weekday.
            Err(ScheduleError::BadDay(s.name.clone(), String::new()))
        }
        _ => Err(ScheduleError::AtOrEvery(s.name.clone())),
    }
}

/// The configured job due first: earliest due time, ties in configuration
/// order. `last_runs` maps schedule names to their last run's start (Unix
/// seconds); `utc_offset` is the appliance's local offset east of UTC in
/// seconds. `None` when the configuration has no schedules.
pub fn next_due(
    config: &CustomerConfig,
    last_runs: &HashMap<String, i64>,
    now: i64,
    utc_offset: i32,
) -> Result<Option<Due>, ScheduleError> {
    let mut best: Option<Due> = None;
    for s in &config.schedules {
        let at = next_run(s, last_runs.get(&s.name).copied(), now, utc_offset)?;
        if best.as_ref().is_none_or(|b| at < b.at) {
            best = Some(Due {
                schedule: s.name.clone(),
                at,
            });
        }
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(at: Option<&str>, days: &[&str], every: Option<&str>) -> Schedule {
        Schedule {
            name: "s".into(),
            sources: vec![],
            at: at.map(Into::into),
            days: days.iter().map(|d| d.to_string()).collect(),
            every: every.map(Into::into),
        }
    }

    // 2026-11-26 is a Thursday; this is 10:00:00 UTC that day.
    const THU_10: i64 = 1_795_687_200;

    #[test]
    fn epoch_anchor() {
        assert_eq!(THU_10 % DAY, 10 * 3600);
        assert_eq!(DAY_NAMES[weekday(THU_10 / DAY)], "thu");
    }

    #[test]
    fn at_daily() {
        let s = sched(Some("01:30"), &[], None);
        // Never run: the next 01:30, tomorrow.
        let t = next_run(&s, None, THU_10, 0).unwrap();
        assert_eq!(t, THU_10 - 10 * 3600 + DAY + 5400);
        // Ran today at 01:30: tomorrow.
        let today = THU_10 - 10 * 3600 + 5400;
        assert_eq!(next_run(&s, Some(today), THU_10, 0).unwrap(), today + DAY);
        // Last ran three days ago: the missed slot is due now, once.
        let t = next_run(&s, Some(today - 3 * DAY), THU_10, 0).unwrap();
        assert_eq!(t, today - 2 * DAY);
        assert!(t <= THU_10);
        // Slot exactly now and never run: due now.
        assert_eq!(
            next_run(&sched(Some("10:00"), &[], None), None, THU_10, 0).unwrap(),
            THU_10
        );
    }

    #[test]
    fn at_days_of_week() {
        let s = sched(Some("22:00"), &["mon", "Wed"], None);
        // Thursday 10:00 -> next Monday 22:00 (4 days on).
        let mon = THU_10 - 10 * 3600 + 4 * DAY + 22 * 3600;
        assert_eq!(next_run(&s, None, THU_10, 0).unwrap(), mon);
        // After Monday's run -> Wednesday.
        assert_eq!(next_run(&s, Some(mon), mon + 60, 0).unwrap(), mon + 2 * DAY);
        // Only Thursday, already past today's 09:00 slot -> a week on.
        let thu = sched(Some("09:00"), &["thu"], None);
        let t = next_run(&thu, Some(THU_10 - 3600), THU_10, 0).unwrap();
        assert_eq!(t, THU_10 - 3600 + 7 * DAY);
    }

    #[test]
    fn at_local_offset() {
        // 01:30 at UTC+2 is 23:30 UTC the day before.
        let s = sched(Some("01:30"), &["fri"], None);
        let t = next_run(&s, None, THU_10, 2 * 3600).unwrap();
        assert_eq!(t, THU_10 - 10 * 3600 + 23 * 3600 + 1800);
        // Local weekday, not UTC weekday: Friday local is Thursday UTC here.
        assert_eq!(DAY_NAMES[weekday((t + 7200) / DAY)], "fri");
        assert_eq!(DAY_NAMES[weekday(t / DAY)], "thu");
    }

    #[test]
    fn every_interval() {
        let s = sched(None, &[], Some("4h"));
        assert_eq!(next_run(&s, None, THU_10, 0).unwrap(), THU_10);
        assert_eq!(
            next_run(&s, Some(THU_10), THU_10, 0).unwrap(),
            THU_10 + 4 * 3600
        );
        assert!(matches!(
            next_run(&sched(None, &[], Some("1m")), None, 0, 0),
            Err(ScheduleError::BadEvery(..))
        ));
    }

    #[test]
    fn invalid() {
        let e = |s: Schedule| next_run(&s, None, THU_10, 0).unwrap_err();
        assert!(matches!(
            e(sched(None, &[], None)),
            ScheduleError::AtOrEvery(_)
        ));
        assert!(matches!(
            e(sched(Some("1:00"), &[], Some("1h"))),
            ScheduleError::AtOrEvery(_)
        ));
        assert!(matches!(
            e(sched(None, &["mon"], Some("1h"))),
            ScheduleError::AtOrEvery(_)
        ));
        assert!(matches!(
            e(sched(Some("24:00"), &[], None)),
            ScheduleError::BadAt(..)
        ));
        assert!(matches!(
            e(sched(Some("noon"), &[], None)),
            ScheduleError::BadAt(..)
        ));
        assert!(matches!(
            e(sched(Some("12:00"), &["funday"], None)),
            ScheduleError::BadDay(..)
        ));
    }

    fn config(schedules: Vec<Schedule>) -> CustomerConfig {
        serde_json::from_value(serde_json::json!({
            "customer": "acme",
            "sources": [{"name": "a", "path": "/nonexistent-a"}],
        }))
        .map(|mut c: CustomerConfig| {
            c.schedules = schedules;
            c
        })
        .unwrap()
    }

    #[test]
    fn next_due_picks_earliest() {
        let mut nightly = sched(Some("01:00"), &[], None);
        nightly.name = "nightly".into();
        let mut hourly = sched(None, &[], Some("1h"));
        hourly.name = "hourly".into();
        let c = config(vec![nightly, hourly]);
        let mut last = HashMap::new();
        // Hourly never ran: due now.
        let d = next_due(&c, &last, THU_10, 0).unwrap().unwrap();
        assert_eq!((d.schedule.as_str(), d.at), ("hourly", THU_10));
        last.insert("hourly".to_string(), THU_10);
        let d = next_due(&c, &last, THU_10 + 60, 0).unwrap().unwrap();
        assert_eq!((d.schedule.as_str(), d.at), ("hourly", THU_10 + 3600));
        // Nightly's missed slot (ran two days ago) comes first.
        last.insert("nightly".to_string(), THU_10 - 2 * DAY);
        let d = next_due(&c, &last, THU_10 + 60, 0).unwrap().unwrap();
        assert_eq!(d.schedule, "nightly");
        assert!(d.at <= THU_10);
        assert_eq!(next_due(&config(vec![]), &last, THU_10, 0).unwrap(), None);
    }
}
