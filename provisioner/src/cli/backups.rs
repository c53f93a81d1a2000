//! Backup health in `levee appliance list` and `show`: the store's facts
//! about each appliance's runs, judged by [`crate::health`].

use std::collections::HashMap;

use crate::health::{assess, expected_since, repo_growth, BackupHealth, RepoGrowth};
use crate::store::{Appliance, BackupFacts, CustomerRecord, RunRecord, Store};

/// Runs listed by `levee appliance show`.
const SHOWN_RUNS: usize = 10;
/// Runs read for the repository's growth (the window's worth, usually).
const GROWTH_RUNS: usize = 500;

/// What judging every listed appliance needs, read once.
pub(crate) struct Fleet {
    customers: HashMap<String, CustomerRecord>,
    facts: HashMap<i64, BackupFacts>,
    now: i64,
}

impl Fleet {
    /// Reads the facts of every appliance, or of `only` one.
    pub(crate) fn load(store: &dyn Store, only: Option<i64>) -> anyhow::Result<Fleet> {
        Ok(Fleet {
            customers: store
                .customers()?
                .into_iter()
                .map(|c| (c.name.clone(), c))
                .collect(),
            facts: store.backup_facts(only)?,
            now: crate::store::now() as i64,
        })
    }

    pub(crate) fn health(&self, a: &Appliance) -> BackupHealth {
        let record = a.customer.as_ref().and_then(|c| self.customers.get(c));
        let none = BackupFacts::default();
        let facts = self.facts.get(&a.id).unwrap_or(&none);
        // Only an appliance that is in service owes backups.
        let config = record
            .filter(|_| a.revoked_at.is_none() && a.cert_fingerprint.is_some())
            .map(|r| &r.config);
        assess(
            config,
            facts,
            expected_since(a, record.map(|r| r.updated_at)),
            self.now,
        )
    }
}

/// The LAST BACKUP cell: age of the last good backup, and failures since.
pub(super) fn last_backup_cell(h: &BackupHealth) -> String {
    let good = super::ago(h.last_success_at.map(|t| t.max(0) as u64));
    match &h.failing {
        Some(f) => format!("{good} ({} failed)", f.count),
        None => good,
    }
}

/// The OVERDUE cell: `-` when nothing is scheduled, else `no`, or `yes`
/// with how late.
pub(super) fn overdue_cell(h: &BackupHealth, now: i64) -> String {
    match (&h.next_expected, h.overdue) {
        (None, _) => "-".into(),
        (Some(_), false) => "no".into(),
        (Some(e), true) => format!("yes ({} late)", late(now - e.at)),
    }
}

fn late(secs: i64) -> String {
    match secs.max(0) {
        d @ 0..=3599 => format!("{}m", d / 60),
        d @ 3600..=86_399 => format!("{}h", d / 3600),
        d => format!("{}d", d / 86_400),
    }
}

fn bytes(n: u64) -> String {
    levee_proto::config::format_size(n)
}

/// The backup section of `levee appliance show` and its JSON.
pub(crate) struct Detail {
    pub health: BackupHealth,
    pub growth: RepoGrowth,
    pub runs: Vec<RunRecord>,
}

impl Detail {
    pub(crate) fn load(store: &dyn Store, a: &Appliance) -> anyhow::Result<Detail> {
        let health = Fleet::load(store, Some(a.id))?.health(a);
        let runs = store.runs(a.id, GROWTH_RUNS)?;
        Ok(Detail {
            health,
            growth: repo_growth(&runs),
            runs: runs.into_iter().take(SHOWN_RUNS).collect(),
        })
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "health": self.health,
            "repository": self.growth,
            "runs": self.runs,
        })
    }

    pub(super) fn print(&self) {
        let h = &self.health;
        let now = crate::store::now() as i64;
        println!("backups:");
        println!("  last success:   {}", last_backup_cell(h));
        if let Some(f) = &h.failing {
            println!(
                "  failing:        {} run(s) in a row of schedule {} ({})",
                f.count,
                f.job.as_deref().unwrap_or("by hand"),
                f.sources.join(", ")
            );
        }
        match &h.next_expected {
            None => println!("  next expected:  - (no schedule)"),
            Some(e) => println!(
                "  next expected:  schedule {} {} (overdue: {})",
                e.schedule,
                if e.at > now {
                    format!("in {}", late(e.at - now))
                } else {
                    format!("{} ago", late(now - e.at))
                },
                overdue_cell(h, now)
            ),
        }
        match (self.growth.bytes, self.growth.per_day) {
            (Some(b), Some(d)) => println!(
                "  repository:     {} ({}{} a day)",
                bytes(b),
                if d < 0 { "-" } else { "+" },
                bytes(d.unsigned_abs())
            ),
            (Some(b), None) => println!("  repository:     {}", bytes(b)),
            _ => println!("  repository:     - (not reported yet)"),
        }
        if self.runs.is_empty() {
            println!("  runs:           none reported");
        }
        for r in &self.runs {
            let r = &r.report;
            // A replication run names its target (in `sources`) and says
            // what it uploaded and how far behind the target still is.
            let replication = r.kind == levee_proto::runs::RunKind::Replication;
            let what = match (&r.job, replication) {
                (_, true) => format!(
                    "to {}",
                    super::escape(r.sources.first().map_or("?", |t| t.as_str()))
                ),
                (Some(job), false) => super::escape(job),
                (None, false) => "(by hand)".into(),
            };
            let counts = if replication {
                format!(
                    "{} files uploaded, {}; target holds {} files",
                    r.files_new,
                    bytes(r.bytes_new),
                    r.files_total
                )
            } else {
                format!(
                    "{} files new of {}, {} new",
                    r.files_new,
                    r.files_total,
                    bytes(r.bytes_new)
                )
            };
            let mut line = format!(
                "  {}  {:<11} {:<8} {:<12} {:>6}s  {counts}",
                super::ago(Some(r.ended_at.max(0) as u64)),
                r.kind.as_str(),
                r.result.as_str(),
                what,
                r.duration_secs(),
            );
            if let Some(lag) = r.lag_secs.filter(|l| replication && *l > 0) {
                line.push_str(&format!(", {} behind", super::span(lag)));
            }
            if let Some(s) = &r.snapshot {
                line.push_str(&format!(", snapshot {}", &s[..s.len().min(12)]));
            }
            println!("{line}");
            for e in &r.errors {
                println!("      error ({}x): {}", e.count, e.message);
            }
            let more = r.error_count - r.errors.iter().map(|e| e.count).sum::<u64>();
            if more > 0 {
                println!("      and {more} more error(s)");
            }
        }
    }
}
