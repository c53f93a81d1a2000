//! `/api/v1/recovery` on the mTLS listener (issue 14; the protocol is in
//! `levee_proto::recovery_api`). `POST`: an appliance publishes its public
//! key and its repository's sealed recovery slot. `GET`: an appliance gets
//! its own grant and nothing else: the certificate names the appliance,
//! a revoked one (the replaced appliance) is refused by [`authorize`], and
//! a grant is sealed to the key its own appliance published, so even a
//! grant read from the database opens only on that appliance.

use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use levee_proto::recovery_api::{RecoveryAnswer, RecoveryGrant, RecoveryUpload};
use tracing::{info, warn};

use super::https::{api_error, for_appliance, store_error, ApiState, Peer};
use crate::store::Store;

pub(super) async fn post_recovery(
    State(st): State<ApiState>,
    Extension(peer): Extension<Peer>,
    body: Bytes,
) -> Response {
    let (upload, key) = match RecoveryUpload::parse(&body) {
        Ok(u) => u,
        Err(e) => {
            warn!(appliance = ?peer.appliance_id, error = %e, "recovery upload refused");
            return api_error(StatusCode::BAD_REQUEST, e.to_string());
        }
    };
    for_appliance(st, peer, move |st, a| {
        let slot = upload
            .repository
            .as_ref()
            .map(|r| (r.id.as_str(), r.sealed.as_str()));
        match st.store.put_recovery(a.id, &upload.appliance_key, slot) {
            Ok(()) => {
                info!(
                    appliance = a.id, mac = %a.mac, key = %key.fingerprint(),
                    repository = slot.map(|s| s.0).unwrap_or("-"),
                    "recovery key published"
                );
                Json(serde_json::json!({"ok": true})).into_response()
            }
            Err(e) => store_error(&e),
        }
    })
    .await
}

pub(super) async fn get_recovery(
    State(st): State<ApiState>,
    Extension(peer): Extension<Peer>,
) -> Response {
    for_appliance(st, peer, move |st, a| match answer(st.store.as_ref(), &a) {
        Ok(ans) => Json(ans).into_response(),
        Err(e) => store_error(&e),
    })
    .await
}

/// This appliance's grant; else, if it replaced an appliance that had
/// published a repository, why it should wait.
fn answer(store: &dyn Store, a: &crate::store::Appliance) -> crate::store::Result<RecoveryAnswer> {
    let own = store.recovery(a.id)?;
    if let (Some(g), Some(customer)) = (own.and_then(|r| r.grant), a.customer.as_ref()) {
        info!(appliance = a.id, mac = %a.mac, from = g.from, repository = %g.repository, "recovery grant served");
        return Ok(RecoveryAnswer {
            grant: Some(RecoveryGrant {
                customer: customer.clone(),
                repository: g.repository,
                sealed: g.sealed,
                from_appliance: g.from,
            }),
            waiting: None,
        });
    }
    let Some(old) = a.replaces else {
        return Ok(RecoveryAnswer::default());
    };
    let old_repo = store.recovery(old)?.and_then(|r| r.repository);
    Ok(RecoveryAnswer {
        grant: None,
        waiting: old_repo.map(|repo| {
            let old_mac = store
                .appliance_by_id(old)
                .ok()
                .flatten()
                .map_or_else(|| old.to_string(), |o| o.mac.to_string());
            format!(
                "this appliance replaced {old_mac}, whose repository {repo} it takes over once ops runs \
                 `levee appliance replace {old_mac} --with {} --recovery-key FILE`",
                a.mac
            )
        }),
    })
}
