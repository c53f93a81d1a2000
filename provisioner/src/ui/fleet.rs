//! The fleet page's data: every appliance as one row (customer, state,
//! online, image, slot, last heartbeat, last backup and its result,
//! overdue), filtered, sorted and paginated on the server, so a fleet of
//! ten thousand costs the browser one page of rows.
//!
//! The rows are computed once per change of the fleet (the store's
//! [`change_stamp`](crate::store::OperatorStore::change_stamp)) and per
//! few seconds (online turns offline with time alone), then served from
//! memory: a page is a filter and a sort of that list. While the panel is
//! in use, [`super::live`] recomputes them in the background as the fleet
//! changes, so requests do not wait on that. What the run
//! reports say (aggregates over every stored run, the expensive part) is
//! read again only when reports arrived.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use levee_proto::runs::RunKind;
use serde::{Deserialize, Serialize};

use super::auth::{authed, may_view};
use super::{blocking, ApiResult, UiState};
use crate::cli::backups::Fleet;
use crate::store::{now, short_key, ChangeStamp, Store};

/// Heartbeat interval assumed for machines without a customer (as the CLI).
/// Rows a page holds at most.
pub const MAX_PER_PAGE: usize = 500;
/// Seconds a computed fleet may be reused while nothing changed.
const REUSE_SECS: u64 = 5;

/// One appliance on the fleet page.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub id: i64,
    pub mac: String,
    pub serial: Option<String>,
    pub customer: Option<String>,
    pub state: String,
    pub online: bool,
    pub image_version: Option<String>,
    pub slot: Option<String>,
    pub last_heartbeat: Option<u64>,
    pub last_backup_at: Option<i64>,
    pub last_success_at: Option<i64>,
    /// Result of the newest backup run.
    pub last_result: Option<String>,
    pub scheduled: bool,
    pub overdue: bool,
    /// Failed backups in a row (the worst schedule).
    pub failing: u64,
    /// Short fingerprint of the key a pending machine enrolls with.
    pub key: Option<String>,
    pub key_conflict: Option<String>,
}

/// What the run reports say about every appliance: the expensive part
/// (aggregates over every stored run), read again only when reports
/// arrived, and then at most every [`RUNS_REUSE_SECS`].
struct RunFacts {
    last_run: i64,
    at: u64,
    fleet: Fleet,
    /// Result of each appliance's newest backup run.
    latest: HashMap<i64, String>,
}

/// Seconds the run facts are reused while reports keep arriving: under a
/// steady stream of reports the fleet page's backup columns lag by at most
/// this, and the page stays fast.
const RUNS_REUSE_SECS: u64 = 10;

/// The rows as computed, the change stamp they are of, and when.
type Computed = (ChangeStamp, u64, Arc<Vec<Row>>);

#[derive(Default)]
pub struct FleetCache {
    runs: Mutex<Option<Arc<RunFacts>>>,
    rows: Mutex<Option<Computed>>,
    /// When the rows were last asked for (Unix seconds).
    asked: std::sync::atomic::AtomicU64,
}

/// Rows this old are still served at once while the refresher (see
/// [`super::live`]) recomputes them in the background; older ones (the
/// panel was idle) are recomputed before answering.
const SERVE_STALE_SECS: u64 = 30;
/// The refresher keeps the rows fresh while they were asked for within
/// this.
const WANTED_SECS: u64 = 60;

impl FleetCache {
    /// The fleet's rows for a request: the last computed ones when they are
    /// recent (the refresher recomputes them within a second of a change,
    /// so a request never waits on a recomputation then), else computed
    /// now.
    pub fn rows(&self, store: &dyn Store) -> ApiResult<Arc<Vec<Row>>> {
        let t = now();
        self.asked.store(t, std::sync::atomic::Ordering::Relaxed);
        if let Some((_, at, rows)) = &*self.rows.lock().unwrap_or_else(|p| p.into_inner()) {
            if t.saturating_sub(*at) < SERVE_STALE_SECS {
                return Ok(rows.clone());
            }
        }
        self.refresh(store)
    }

    /// Whether someone asked for the rows lately (the refresher works only
    /// then).
    pub fn wanted(&self) -> bool {
        now().saturating_sub(self.asked.load(std::sync::atomic::Ordering::Relaxed)) < WANTED_SECS
    }

    /// Recomputes the rows when the store changed or they aged: the
    /// appliances' own columns at every change (a heartbeat), the backup
    /// columns when run reports arrived (see [`RUNS_REUSE_SECS`]).
    pub fn refresh(&self, store: &dyn Store) -> ApiResult<Arc<Vec<Row>>> {
        let stamp = store.change_stamp()?;
        let t = now();
        if let Some((s, at, rows)) = &*self.rows.lock().unwrap_or_else(|p| p.into_inner()) {
            if *s == stamp && t.saturating_sub(*at) < REUSE_SECS {
                return Ok(rows.clone());
            }
        }
        let runs = self.run_facts(store, &stamp, t)?;
        let rows = Arc::new(compute(store, &runs, t)?);
        *self.rows.lock().unwrap_or_else(|p| p.into_inner()) = Some((stamp, t, rows.clone()));
        Ok(rows)
    }

    fn run_facts(
        &self,
        store: &dyn Store,
        stamp: &ChangeStamp,
        t: u64,
    ) -> ApiResult<Arc<RunFacts>> {
        if let Some(f) = &*self.runs.lock().unwrap_or_else(|p| p.into_inner()) {
            if f.last_run == stamp.last_run || t.saturating_sub(f.at) < RUNS_REUSE_SECS {
                return Ok(f.clone());
            }
        }
        let facts = Arc::new(RunFacts {
            last_run: stamp.last_run,
            at: t,
            fleet: Fleet::load(store, None).map_err(internal)?,
            latest: store
                .latest_runs(RunKind::Backup)?
                .into_iter()
                .map(|(id, r)| (id, r.report.result.as_str().to_string()))
                .collect(),
        });
        *self.runs.lock().unwrap_or_else(|p| p.into_inner()) = Some(facts.clone());
        Ok(facts)
    }
}

fn heartbeat_intervals(store: &dyn Store) -> ApiResult<HashMap<String, u64>> {
    Ok(crate::health::heartbeat_intervals(store)?)
}

pub use crate::health::online;

fn compute(store: &dyn Store, runs: &RunFacts, t: u64) -> ApiResult<Vec<Row>> {
    let intervals = heartbeat_intervals(store)?;
    Ok(store
        .appliances()?
        .iter()
        .map(|a| {
            let h = runs.fleet.health(a);
            Row {
                id: a.id,
                mac: a.mac.to_string(),
                serial: a.serial.clone(),
                customer: a.customer.clone(),
                state: a.state.to_string(),
                online: online(a, &intervals, t),
                image_version: a.image_version().map(str::to_string),
                slot: a.slot.clone(),
                last_heartbeat: a.last_heartbeat,
                last_backup_at: h.last_backup_at,
                last_success_at: h.last_success_at,
                last_result: runs.latest.get(&a.id).cloned(),
                scheduled: h.scheduled,
                overdue: h.overdue,
                failing: h.failing.map(|f| f.count).unwrap_or(0),
                key: a.pending_key.as_deref().map(short_key),
                key_conflict: a.key_conflict.as_deref().map(short_key),
            }
        })
        .collect())
}

fn internal(e: impl std::fmt::Display) -> super::ApiError {
    super::ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// `GET /ui/api/fleet?q=&state=&customer=&online=&overdue=&sort=&desc=&page=&per_page=`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct FleetQuery {
    /// Words that must all appear in the MAC, serial, customer, state or
    /// image version.
    pub q: String,
    pub state: Option<String>,
    pub customer: Option<String>,
    pub online: Option<bool>,
    pub overdue: Option<bool>,
    /// A column: id, mac, customer, state, online, image_version, slot,
    /// last_heartbeat, last_backup_at, last_result, overdue.
    pub sort: Option<String>,
    pub desc: bool,
    /// 1-based.
    pub page: Option<usize>,
    pub per_page: Option<usize>,
}

/// One page of the fleet.
#[derive(Debug, Serialize)]
pub struct Page<'a> {
    pub total: usize,
    pub page: usize,
    pub pages: usize,
    pub per_page: usize,
    pub rows: Vec<&'a Row>,
}

/// Filters, sorts and cuts a page (pure, for tests and the benchmark).
pub fn page<'a>(rows: &'a [Row], q: &FleetQuery) -> Result<Page<'a>, String> {
    let words: Vec<String> = q.q.split_whitespace().map(str::to_lowercase).collect();
    let mut hits: Vec<&Row> = rows
        .iter()
        .filter(|r| {
            q.state
                .as_ref()
                .is_none_or(|s| s.is_empty() || &r.state == s)
        })
        .filter(|r| {
            q.customer
                .as_ref()
                .is_none_or(|c| c.is_empty() || r.customer.as_ref() == Some(c))
        })
        .filter(|r| q.online.is_none_or(|o| r.online == o))
        .filter(|r| q.overdue.is_none_or(|o| r.overdue == o))
        .filter(|r| {
            if words.is_empty() {
                return true;
            }
            let hay = format!(
                "{} {} {} {} {}",
                r.mac,
                r.serial.as_deref().unwrap_or(""),
                r.customer.as_deref().unwrap_or(""),
                r.state,
                r.image_version.as_deref().unwrap_or("")
            )
            .to_lowercase();
            words.iter().all(|w| hay.contains(w.as_str()))
        })
        .collect();
    let sort = q.sort.as_deref().unwrap_or("id");
    let key: fn(&Row, &Row) -> std::cmp::Ordering = match sort {
        "id" => |a, b| a.id.cmp(&b.id),
        "mac" => |a, b| a.mac.cmp(&b.mac),
        "customer" => |a, b| a.customer.cmp(&b.customer),
        "state" => |a, b| a.state.cmp(&b.state),
        "online" => |a, b| a.online.cmp(&b.online),
        "image_version" => |a, b| a.image_version.cmp(&b.image_version),
        "slot" => |a, b| a.slot.cmp(&b.slot),
        "last_heartbeat" => |a, b| a.last_heartbeat.cmp(&b.last_heartbeat),
        "last_backup_at" => |a, b| a.last_backup_at.cmp(&b.last_backup_at),
        "last_result" => |a, b| a.last_result.cmp(&b.last_result),
        "overdue" => |a, b| a.overdue.cmp(&b.overdue),
        other => return Err(format!("cannot sort by `{other}`")),
    };
    // Ties in id order, so pages do not shuffle between requests.
    hits.sort_by(|a, b| {
        let o = key(a, b);
        let o = if q.desc { o.reverse() } else { o };
        o.then(a.id.cmp(&b.id))
    });
    let per_page = q.per_page.unwrap_or(50).clamp(1, MAX_PER_PAGE);
    let total = hits.len();
    let pages = total.div_ceil(per_page).max(1);
    let page = q.page.unwrap_or(1).clamp(1, pages);
    let rows = hits
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .collect();
    Ok(Page {
        total,
        page,
        pages,
        per_page,
        rows,
    })
}

pub async fn list(
    State(state): State<UiState>,
    headers: HeaderMap,
    Query(q): Query<FleetQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let a = authed(&state, &headers).await?;
    may_view(&a)?;
    let cache = state.fleet.clone();
    let rows = blocking(&state, move |s| cache.rows(s)).await?;
    let p = page(&rows, &q)
        .map_err(|e| super::ApiError::new(axum::http::StatusCode::BAD_REQUEST, e))?;
    Ok(Json(serde_json::to_value(p).map_err(internal)?))
}

/// Machines waiting for approval, with their key's fingerprint.
pub async fn pending(
    State(state): State<UiState>,
    headers: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    let a = authed(&state, &headers).await?;
    may_view(&a)?;
    let rows = blocking(&state, |s| {
        let customers: Vec<String> = s.customers()?.into_iter().map(|c| c.name).collect();
        let machines: Vec<serde_json::Value> = s
            .appliances()?
            .into_iter()
            .filter(|a| !a.approved() && a.revoked_at.is_none())
            .map(|a| {
                serde_json::json!({
                    "id": a.id,
                    "mac": a.mac.to_string(),
                    "serial": a.serial,
                    "first_seen": a.first_seen,
                    "last_seen": a.last_seen,
                    "key": a.pending_key.as_deref().map(short_key),
                    "key_sha256": a.pending_key,
                    "key_conflict": a.key_conflict.as_deref().map(short_key),
                    "key_conflict_sha256": a.key_conflict,
                    "customer": a.customer,
                })
            })
            .collect();
        Ok(serde_json::json!({"machines": machines, "customers": customers}))
    })
    .await?;
    Ok(Json(rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, customer: &str, online: bool) -> Row {
        Row {
            id,
            mac: format!("52:54:00:00:{:02x}:{:02x}", id / 256, id % 256),
            serial: None,
            customer: Some(customer.into()),
            state: "installed".into(),
            online,
            image_version: Some("1.0".into()),
            slot: Some("a".into()),
            last_heartbeat: Some(id as u64),
            last_backup_at: None,
            last_success_at: None,
            last_result: None,
            scheduled: true,
            overdue: id % 7 == 0,
            failing: 0,
            key: None,
            key_conflict: None,
        }
    }

    #[test]
    fn ten_thousand_rows_filter_sort_and_paginate() {
        let rows: Vec<Row> = (1..=10_000)
            .map(|i| row(i, if i % 2 == 0 { "acme" } else { "beta" }, i % 3 != 0))
            .collect();
        let p = page(&rows, &FleetQuery::default()).unwrap();
        assert_eq!(
            (p.total, p.pages, p.rows.len(), p.rows[0].id),
            (10_000, 200, 50, 1)
        );
        let q = FleetQuery {
            customer: Some("acme".into()),
            online: Some(false),
            sort: Some("last_heartbeat".into()),
            desc: true,
            page: Some(2),
            per_page: Some(100),
            ..Default::default()
        };
        let p = page(&rows, &q).unwrap();
        // Even and divisible by three: 6, 12, ..., 9996 (1666 of them).
        assert_eq!((p.total, p.pages, p.page), (1666, 17, 2));
        assert_eq!(p.rows[0].id, 9996 - 6 * 100);
        let q = FleetQuery {
            q: "00:27:10".into(),
            ..Default::default()
        };
        assert_eq!(page(&rows, &q).unwrap().rows[0].id, 10_000);
        let bad = FleetQuery {
            sort: Some("password".into()),
            ..Default::default()
        };
        assert!(page(&rows, &bad).is_err());
        let past = FleetQuery {
            page: Some(999),
            ..Default::default()
        };
        assert_eq!(page(&rows, &past).unwrap().page, 200, "clamped to the last");
    }
}
