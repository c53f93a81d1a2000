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

use super::https::{api_error, for_appliance, store_error, ApiState, Peer};
use crate::releases::rollout::offer_for;
use crate::store::CHANNEL_CHECK_STEP;

/// `GET /api/v1/update`: what the rollout says for this appliance now.
pub(super) async fn get_update(
    State(st): State<ApiState>,
    Extension(peer): Extension<Peer>,
) -> Response {
    for_appliance(st, peer, move |st, a| {
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
    let report = match UpdateReport::parse(&body) {
        Ok(r) => r,
        Err(e) => return api_error(StatusCode::BAD_REQUEST, e),
    };
    for_appliance(st, peer, move |st, a| {
        let reason = match (report.state, report.reason.as_deref()) {
            (UpdateState::RolledBack | UpdateState::Failed | UpdateState::CheckFailed, None) => {
                Some("no reason given")
            }
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
        if report.state.is_channel_check() {
            // About the channel, not a release: an event (which the
            // `channel-check-failing` alert reads) and a log line, no update
            // record (status counts releases).
            if report.state == UpdateState::CheckFailed {
                warn!(
                    appliance = a.id, mac = %a.mac, running = %report.version,
                    reason = reason.unwrap_or("-"),
                    "the appliance's scheduled check refused its release channel"
                );
            } else {
                debug!(appliance = a.id, mac = %a.mac, "the appliance's scheduled check verified its channel");
            }
            return match st.store.add_event(a.mac, CHANNEL_CHECK_STEP, &detail) {
                Ok(()) => Json(serde_json::json!({"ok": true, "blocked": false})).into_response(),
                Err(e) => store_error(&e),
            };
        }
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
