//! The update part of the mTLS API: the rollout's offer (in the heartbeat
//! answer and at `GET /api/v1/update`) and the appliance's reports
//! (`POST /api/v1/update`). Only the certificate names the appliance.

use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use levee_proto::update::{UpdateAnswer, UpdateReport, UpdateState};
use tracing::{debug, info, warn};

use super::https::{api_error, authorize, blocking, store_error, ApiState, Peer};
use crate::releases::rollout::offer_for;

/// Longest reason kept from a report (the rest is cut): it is shown to
/// ops, and an appliance must not be able to fill the database.
const MAX_REASON: usize = 2000;

/// `GET /api/v1/update`: what the rollout says for this appliance now.
pub(super) async fn get_update(
    State(st): State<ApiState>,
    Extension(peer): Extension<Peer>,
) -> Response {
    blocking(move || {
        let a = match authorize(st.store.as_ref(), &peer) {
            Ok(a) => a,
            Err(r) => return *r,
        };
        match offer_for(st.store.as_ref(), &a, None) {
            Ok(Ok(offer)) => {
                debug!(appliance = a.id, release = offer.release, "update offered");
                Json(UpdateAnswer {
                    update: Some(offer),
                    reason: None,
                })
                .into_response()
            }
            Ok(Err(reason)) => Json(UpdateAnswer {
                update: None,
                reason: Some(reason),
            })
            .into_response(),
            Err(e) => store_error(&e),
        }
    })
    .await
}

/// `POST /api/v1/update`: one step of this appliance's update.
pub(super) async fn post_update(
    State(st): State<ApiState>,
    Extension(peer): Extension<Peer>,
    body: Bytes,
) -> Response {
    let mut report: UpdateReport = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                format!("malformed update report: {e}"),
            )
        }
    };
    if report.version.is_empty() || report.version.len() > 128 || report.release == 0 {
        return api_error(
            StatusCode::BAD_REQUEST,
            "an update report needs the version (1-128 characters) and release number (> 0)",
        );
    }
    if report.slot.as_deref().is_some_and(|s| s != "a" && s != "b") {
        return api_error(StatusCode::BAD_REQUEST, "slot must be `a` or `b`");
    }
    if let Some(r) = report.reason.as_mut() {
        if r.len() > MAX_REASON {
            let mut cut = MAX_REASON;
            while !r.is_char_boundary(cut) {
                cut -= 1;
            }
            r.truncate(cut);
        }
    }
    blocking(move || {
        let a = match authorize(st.store.as_ref(), &peer) {
            Ok(a) => a,
            Err(r) => return *r,
        };
        let reason = match (report.state, report.reason.as_deref()) {
            (UpdateState::RolledBack | UpdateState::Failed, None) => Some("no reason given"),
            (_, r) => r,
        };
        let detail = format!(
            "{} {} (release {}){}{}",
            report.state.as_str(),
            report.version,
            report.release,
            report
                .slot
                .as_deref()
                .map(|s| format!(", slot {s}"))
                .unwrap_or_default(),
            reason.map(|r| format!(": {r}")).unwrap_or_default(),
        );
        let stored = st
            .store
            .record_update(
                a.id,
                &report.version,
                report.release,
                report.state,
                reason,
                report.slot.as_deref(),
            )
            .and_then(|rec| {
                st.store.add_event(a.mac, "update", &detail)?;
                Ok(rec)
            });
        match stored {
            Ok(rec) => {
                match report.state {
                    UpdateState::RolledBack => warn!(
                        appliance = a.id, mac = %a.mac, version = %report.version,
                        reason = reason.unwrap_or("-"),
                        "update rolled back: release blocked for this appliance until `levee release unblock`"
                    ),
                    UpdateState::Failed => warn!(
                        appliance = a.id, mac = %a.mac, version = %report.version,
                        reason = reason.unwrap_or("-"), "update failed"
                    ),
                    s => info!(appliance = a.id, mac = %a.mac, version = %report.version, state = s.as_str(), "update"),
                }
                Json(serde_json::json!({"ok": true, "blocked": rec.blocked})).into_response()
            }
            Err(e) => store_error(&e),
        }
    })
    .await
}
