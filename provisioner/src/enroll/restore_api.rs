//! `/api/v1/restore` on the mTLS listener (issue 14; the protocol is in
//! `levee_proto::restore_api`). `GET`: the appliance's own unfinished
//! restore requests. `POST`: a step of one of them (running, done,
//! failed, cancelled) or its progress; the answer says where it stands
//! (`cancelling`: ops asked it to stop). The certificate names the
//! appliance; a request of another appliance is answered 404 as if it
//! did not exist, so one appliance learns nothing of another's.

use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use levee_proto::restore_api::{RestoreList, RestoreState, RestoreStatus};
use tracing::{debug, info, warn};

use super::https::{api_error, for_appliance, store_error, ApiState, Peer};
use crate::store::RestoreMove;

pub(super) async fn get_restore(
    State(st): State<ApiState>,
    Extension(peer): Extension<Peer>,
) -> Response {
    for_appliance(st, peer, move |st, a| {
        match st.store.pending_restores(a.id) {
            Ok(rows) => Json(RestoreList {
                requests: rows.iter().map(|r| r.request()).collect(),
            })
            .into_response(),
            Err(e) => store_error(&e),
        }
    })
    .await
}

pub(super) async fn post_restore(
    State(st): State<ApiState>,
    Extension(peer): Extension<Peer>,
    body: Bytes,
) -> Response {
    let status = match RestoreStatus::parse(&body) {
        Ok(s) => s,
        Err(e) => {
            warn!(appliance = ?peer.appliance_id, error = %e, "restore status refused");
            return api_error(StatusCode::BAD_REQUEST, e);
        }
    };
    for_appliance(st, peer, move |st, a| {
        match st.store.set_restore_state(a.id, &status) {
            Ok(RestoreMove::Moved(r)) => {
                // A progress report (every heartbeat interval while it
                // runs) is not a step: debug, not info.
                if status.state == RestoreState::Running && status.files > 0 {
                    debug!(
                        appliance = a.id, restore = r.id, state = %r.state,
                        files = r.files, bytes = r.bytes, "restore progress"
                    );
                } else {
                    info!(
                        appliance = a.id, mac = %a.mac, restore = r.id, state = %r.state,
                        files = r.files, bytes = r.bytes, errors = r.errors,
                        reason = r.reason.as_deref().unwrap_or("-"),
                        "restore request moved on"
                    );
                }
                Json(serde_json::json!({"ok": true, "state": r.state})).into_response()
            }
            Ok(RestoreMove::NotFound) => {
                warn!(
                    appliance = a.id,
                    restore = status.id,
                    "restore status for a request this appliance does not have"
                );
                api_error(
                    StatusCode::NOT_FOUND,
                    format!("no restore request {} for this appliance", status.id),
                )
            }
            Ok(RestoreMove::Refused(r)) => api_error(
                StatusCode::CONFLICT,
                format!(
                    "restore request {} is {}: it cannot become {}",
                    r.id,
                    r.state,
                    status.state.as_str()
                ),
            ),
            Err(e) => store_error(&e),
        }
    })
    .await
}
