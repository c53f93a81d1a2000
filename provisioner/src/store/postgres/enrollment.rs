//! PgStore: an enrollment with a token in one transaction (see
//! `store/enrollment.rs`). Statements that do not depend on each other's
//! answers are sent together (tokio-postgres pipelines the queries of
//! futures polled at once), so the whole enrollment is five round trips
//! and one durable commit, on one pooled connection, in one hop to the
//! store's runtime.

use futures_util::future::{try_join, try_join3};

use super::appliances::{appliance_row, token_row, APPLIANCE_COLS};
use super::events::event;
use super::{execute, query_one, PgStore};
use crate::store::enrollment::may_record;
use crate::store::{
    judge_token, revoked_detail, Appliance, Result, TokenCheck, TokenEnrolled, TokenEnrollment,
};

impl PgStore {
    pub(super) fn enroll_in_one_transaction(
        &self,
        e: &TokenEnrollment,
        issuable: &(dyn Fn(&Appliance) -> bool + Sync),
    ) -> Result<TokenEnrolled> {
        let _forget = self.api_cache.forget(Some(e.id));
        self.block(async {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            // FOR UPDATE: a second request with the same token waits here
            // and then finds it used.
            let verdict = judge_token(
                token_row(&tx, e.token_sha256, true).await?,
                e.mac,
                e.at,
                e.peer,
            );
            if verdict != TokenCheck::Valid {
                tx.rollback().await?;
                return Ok(TokenEnrolled::Refused(verdict));
            }
            let mac = e.mac.to_string();
            let at = e.at as i64;
            // The upsert locks the appliance's row until the commit, as
            // `record_certificate`'s FOR UPDATE does: two enrollments at
            // once cannot both use one re-enrollment.
            let seen_sql = format!(
                "INSERT INTO appliances (mac, registered, first_seen, last_seen) VALUES ($1, FALSE, $2, $2)
                 ON CONFLICT(mac) DO UPDATE SET last_seen = excluded.last_seen
                 RETURNING {APPLIANCE_COLS}"
            );
            let (_, seen) = try_join(
                execute(
                    &tx,
                    "UPDATE enroll_tokens SET used_at = $2 WHERE token_sha256 = $1",
                    &[&e.token_sha256, &at],
                ),
                query_one(&tx, &seen_sql, &[&mac, &at]),
            )
            .await?;
            let seen = appliance_row(&seen)?;
            let Some(revoked) = may_record(&seen, e, issuable) else {
                tx.commit().await?;
                return Ok(TokenEnrolled::Seen(seen));
            };
            let detail = format!("certificate sha256 {}", e.fingerprint);
            let record_sql = format!(
                "UPDATE appliances SET cert_fingerprint = $2, cert_not_after = $3, state = 'enrolled',
                   state_reason = NULL, pending_key = NULL, key_conflict = NULL, reenroll = FALSE
                 WHERE id = $1 RETURNING {APPLIANCE_COLS}"
            );
            // Sent together in this order, so the history reads facts, then
            // the enrollment (as with the separate calls).
            let outcome = async {
                match &revoked {
                    Some(old) => {
                        event(&tx, e.mac, "cert-revoked", &revoked_detail(old)).await?;
                        event(&tx, e.mac, "reenrolled", &detail).await
                    }
                    None => event(&tx, e.mac, "enrolled", &detail).await,
                }
            };
            let (row, (), ()) = try_join3(
                query_one(
                    &tx,
                    &record_sql,
                    &[&e.id, &e.fingerprint, &(e.not_after as i64)],
                ),
                event(&tx, e.mac, "enroll-facts", e.facts),
                outcome,
            )
            .await?;
            let appliance = appliance_row(&row)?;
            tx.commit().await?;
            Ok(TokenEnrolled::Issued { appliance, revoked })
        })
    }
}
