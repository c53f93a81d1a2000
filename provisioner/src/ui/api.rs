//! The panel's API beside the fleet and customers: one appliance's detail
//! and the actions on it, alerts, boot profiles, images, the audit log.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::Json;
use levee_pxe::boot::MacAddr;
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::info;

use super::auth::{authed, may_change, may_view};
use super::fleet::online;
use super::{blocking, ApiError, ApiResult, UiState};
use crate::cli::backups::Detail;
use crate::store::{short_key, Appliance, Store};

/// History entries shown on an appliance's page.
const HISTORY: usize = 200;

fn find(s: &dyn Store, id: i64) -> ApiResult<Appliance> {
    s.appliance_by_id(id)?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no appliance with id {id}")))
}

fn target(id: i64) -> String {
    format!("appliance:{id}")
}

/// `GET /ui/api/appliances/{id}`: the appliance, its backups and runs, its
/// history (boot, install, operators' actions) and its audit entries.
pub async fn appliance(
    State(state): State<UiState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> ApiResult<Json<Value>> {
    let a = authed(&state, &headers).await?;
    may_view(&a)?;
    let v = blocking(&state, move |s| {
        let a = find(s, id)?;
        let intervals: std::collections::HashMap<String, u64> = s
            .customers()?
            .into_iter()
            .filter_map(|c| {
                Some((
                    c.name,
                    levee_proto::config::parse_duration(&c.config.heartbeat_interval)?,
                ))
            })
            .collect();
        let is_online = online(&a, &intervals, crate::store::now());
        let backups = Detail::load(s, &a)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let events = s.events(a.mac, HISTORY)?;
        let audit = s.audit(Some(&target(id)), 100)?;
        let customers: Vec<String> = s.customers()?.into_iter().map(|c| c.name).collect();
        let mut appliance = serde_json::to_value(&a)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        appliance["online"] = is_online.into();
        appliance["key"] = a.pending_key.as_deref().map(short_key).into();
        appliance["key_conflict_short"] = a.key_conflict.as_deref().map(short_key).into();
        appliance["approved"] = a.approved().into();
        Ok(json!({
            "appliance": appliance,
            "backups": backups.json(),
            "events": events,
            "audit": audit,
            "customers": customers,
        }))
    })
    .await?;
    Ok(Json(v))
}

/// The body of an action; each action reads the fields it needs.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ActBody {
    /// approve: the customer.
    customer: Option<String>,
    /// approve: the fingerprint the machine's console shows.
    fingerprint: Option<String>,
    /// retire: why.
    reason: Option<String>,
    /// replace: the new machine's MAC.
    with: Option<String>,
    /// reinstall: withdraw the request.
    cancel: bool,
}

/// `POST /ui/api/appliances/{id}/{approve|reinstall|retire|replace}`.
pub async fn act(
    State(state): State<UiState>,
    method: Method,
    headers: HeaderMap,
    Path((id, action)): Path<(i64, String)>,
    body: Option<Json<ActBody>>,
) -> ApiResult<Json<Value>> {
    let who = authed(&state, &headers).await?;
    may_change(&who, &method, &headers)?;
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let operator = who.operator.name.clone();
    let v = blocking(&state, move |s| {
        let a = find(s, id)?;
        let bad = |m: &str| ApiError::new(StatusCode::BAD_REQUEST, m.to_string());
        let (after, detail) = match action.as_str() {
            "approve" => {
                let customer = body
                    .customer
                    .as_deref()
                    .filter(|c| !c.is_empty())
                    .ok_or_else(|| bad("approve: choose the customer"))?;
                let fp = body.fingerprint.as_deref().map(str::trim).filter(|f| !f.is_empty());
                let after = s.approve_appliance(a.mac, customer, fp)?;
                (after, format!("customer {customer}"))
            }
            "reinstall" => {
                let after = s.set_reinstall(a.id, !body.cancel)?;
                (after, if body.cancel { "withdrawn".into() } else { "requested".into() })
            }
            "retire" => {
                let reason = body
                    .reason
                    .as_deref()
                    .map(str::trim)
                    .filter(|r| !r.is_empty())
                    .unwrap_or("retired by operator");
                let reason = format!("{reason} (by {operator})");
                let after = s.retire_appliance(a.id, &reason)?;
                (after, reason)
            }
            "replace" => {
                let new: MacAddr = body
                    .with
                    .as_deref()
                    .unwrap_or_default()
                    .trim()
                    .parse()
                    .map_err(|_| bad("replace: give the new machine's MAC, e.g. 52:54:00:ab:cd:ef"))?;
                let n = s.replace_appliance(a.id, new)?;
                (n, format!("by {new}"))
            }
            other => {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("no action `{other}` (approve, reinstall, retire, replace)"),
                ))
            }
        };
        s.add_audit(&operator, &action, &target(id), &detail)?;
        s.add_event(a.mac, "operator", &format!("{operator}: {action} {detail}"))?;
        info!(operator = %operator, appliance = id, mac = %a.mac, action = %action, detail = %detail, "panel action");
        Ok(json!({"appliance": after, "action": action}))
    })
    .await?;
    Ok(Json(v))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct AlertQuery {
    resolved: bool,
}

pub async fn alerts(
    State(state): State<UiState>,
    headers: HeaderMap,
    Query(q): Query<AlertQuery>,
) -> ApiResult<Json<Value>> {
    let a = authed(&state, &headers).await?;
    may_view(&a)?;
    let v = blocking(&state, move |s| {
        Ok(json!({"alerts": s.alerts(q.resolved, 1000)?}))
    })
    .await?;
    Ok(Json(v))
}

pub async fn profiles(State(state): State<UiState>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    let a = authed(&state, &headers).await?;
    may_view(&a)?;
    let v = blocking(&state, |s| Ok(json!({"profiles": s.profiles()?}))).await?;
    Ok(Json(v))
}

pub async fn images(State(state): State<UiState>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    let a = authed(&state, &headers).await?;
    may_view(&a)?;
    let v = blocking(&state, |s| {
        let images: Vec<Value> = s
            .images()?
            .into_iter()
            .map(|i| {
                json!({
                    "id": i.id,
                    "name": i.name,
                    "version": i.version,
                    "imported_at": i.imported_at,
                    "release": i.manifest.release,
                    "packages": i.manifest.packages.len(),
                    "artifacts": i.manifest.artifacts,
                })
            })
            .collect();
        Ok(json!({"images": images}))
    })
    .await?;
    Ok(Json(v))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct AuditQuery {
    target: Option<String>,
    limit: Option<usize>,
}

pub async fn audit(
    State(state): State<UiState>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<Value>> {
    let a = authed(&state, &headers).await?;
    may_view(&a)?;
    let limit = q.limit.unwrap_or(200).min(5000);
    let v = blocking(&state, move |s| {
        Ok(json!({"audit": s.audit(q.target.as_deref().filter(|t| !t.is_empty()), limit)?}))
    })
    .await?;
    Ok(Json(v))
}

pub async fn operators(State(state): State<UiState>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    let a = authed(&state, &headers).await?;
    may_view(&a)?;
    let v = blocking(&state, |s| Ok(json!({"operators": s.operators()?}))).await?;
    Ok(Json(v))
}
