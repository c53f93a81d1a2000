//! `POST /api/v1/runs` on the mTLS listener: one run report from an
//! appliance, validated ([`RunReport::parse`]: size caps, no control
//! characters) and filed under the certificate's appliance. A resent
//! report (same id) is answered as accepted and stored once.

use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use levee_proto::runs::{RunReport, RunResult};
use tracing::{info, warn};

use super::https::{api_error, for_appliance, store_error, ApiState, Peer};

pub async fn post_run(
    State(st): State<ApiState>,
    Extension(peer): Extension<Peer>,
    body: Bytes,
) -> Response {
    let report = match RunReport::parse(&body) {
        Ok(r) => r,
        Err(e) => return api_error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    for_appliance(st, peer, move |st, a| {
        match st.store.record_run(a.id, &report) {
            Ok(new) => {
                let r = &report;
                if new {
                    crate::metrics::run(r.kind.as_str(), r.result.as_str());
                }
                if !new {
                    info!(appliance = a.id, run = %r.id, "run report received again; kept once");
                } else if r.result == RunResult::Failed {
                    warn!(
                        appliance = a.id, mac = %a.mac, run = %r.id, kind = r.kind.as_str(),
                        job = r.job.as_deref().unwrap_or("-"),
                        error = r.errors.first().map(|e| e.message.as_str()).unwrap_or("-"),
                        "run failed"
                    );
                } else {
                    info!(
                        appliance = a.id, mac = %a.mac, run = %r.id, kind = r.kind.as_str(),
                        job = r.job.as_deref().unwrap_or("-"), result = r.result.as_str(),
                        files_new = r.files_new, bytes_new = r.bytes_new,
                        snapshot = r.snapshot.as_deref().unwrap_or("-"),
                        "run reported"
                    );
                }
                Json(serde_json::json!({"ok": true, "new": new})).into_response()
            }
            Err(e) => store_error(&e),
        }
    })
    .await
}
