//! PgStore: an enrollment with a token of a known machine in one
//! transaction (see `store/enrollment.rs`), of two round trips, run as one
//! task on the store's runtime beside its connection:
//! 1. `BEGIN`, the token and the machine's row, both locked (`FOR
//!    UPDATE`), sent together;
//! 2. after the checks and the signing, the token redeemed, the row (seen,
//!    certificate, state), the history and `COMMIT`, sent together.
//!
//! Measured before (docs/BENCHMARKS.md): the lookup, then a transaction
//! of five round trips, each message waking the request's blocking thread
//! and the connection's thread in turn.

use deadpool_postgres::Object;
use futures_util::future::{try_join3, try_join4};

use super::appliances::{appliance_row, get_by_mac_for_update, token_row, APPLIANCE_COLS};
use super::{corrupt, execute, query_opt, Conns, PgStore};
use crate::store::enrollment::may_record;
use crate::store::{
    judge_token, revoked_detail, Issuable, KnownEnrolled, KnownEnrollment, Result, Signer,
    StoreError, TokenCheck,
};

impl PgStore {
    pub(super) fn enroll_in_one_transaction(
        &self,
        e: &KnownEnrollment,
        issuable: Issuable,
        sign: Signer,
    ) -> Result<KnownEnrolled> {
        let (conns, e) = (self.conns.clone(), e.clone());
        let done = self.run_as_task(enroll(conns, e, issuable, sign))?;
        if let KnownEnrolled::Issued { appliance, .. } = &done {
            // This server's next request for it must not wait for the
            // notification.
            drop(self.api_cache.forget(Some(appliance.id)));
        }
        Ok(done)
    }
}

async fn enroll(
    conns: Conns,
    e: KnownEnrollment,
    issuable: Issuable,
    sign: Signer,
) -> Result<KnownEnrolled> {
    let tx = OpenTx(Some(conns.conn().await?));
    let c = tx.client();
    // A second request with the same token, or for the same machine,
    // waits here for this one's commit.
    let ((), token, known) = try_join3(
        async { c.batch_execute("BEGIN").await.map_err(StoreError::from) },
        token_row(c, &e.token_sha256, true),
        get_by_mac_for_update(c, e.mac),
    )
    .await?;
    let Some(a) = known else {
        return tx.end("ROLLBACK", KnownEnrolled::NotIssuable).await;
    };
    let Some(revoked) = may_record(&a, e.at, &issuable) else {
        return tx.end("ROLLBACK", KnownEnrolled::NotIssuable).await;
    };
    let verdict = judge_token(token, e.mac, e.at, e.peer);
    if verdict != TokenCheck::Valid {
        return tx.end("ROLLBACK", KnownEnrolled::Refused(verdict)).await;
    }
    let cert = match sign(a.id) {
        Ok(cert) => cert,
        Err(m) => return tx.end("ROLLBACK", KnownEnrolled::SignFailed(m)).await,
    };
    let at = e.at as i64;
    let detail = format!("certificate sha256 {}", cert.fingerprint);
    let mut steps = vec!["enroll-facts"];
    let mut details = vec![e.facts.clone()];
    match &revoked {
        Some(old) => {
            steps.extend(["cert-revoked", "reenrolled"]);
            details.extend([revoked_detail(old), detail]);
        }
        None => {
            steps.push("enrolled");
            details.push(detail);
        }
    }
    let record_sql = format!(
        "UPDATE appliances SET last_seen = $2, cert_fingerprint = $3, cert_not_after = $4,
           state = 'enrolled', state_reason = NULL, pending_key = NULL, key_conflict = NULL,
           reenroll = FALSE
         WHERE id = $1 RETURNING {APPLIANCE_COLS}"
    );
    // All sent at once; should one fail, PostgreSQL aborts the transaction
    // and turns the COMMIT into a rollback.
    let (_, row, _, ()) = try_join4(
        execute(
            c,
            "UPDATE enroll_tokens SET used_at = $2 WHERE token_sha256 = $1",
            &[&e.token_sha256, &at],
        ),
        query_opt(
            c,
            &record_sql,
            &[&a.id, &at, &cert.fingerprint, &(cert.not_after as i64)],
        ),
        execute(
            c,
            "INSERT INTO events (mac, at, step, detail)
             SELECT $1, $2, s.step, s.detail
             FROM unnest($3::text[], $4::text[]) WITH ORDINALITY AS s(step, detail, n)
             ORDER BY s.n",
            &[&e.mac.to_string(), &at, &steps, &details],
        ),
        async { c.batch_execute("COMMIT").await.map_err(StoreError::from) },
    )
    .await?;
    tx.release();
    let row = row.ok_or_else(|| corrupt(format!("appliance {} vanished while locked", a.id)))?;
    Ok(KnownEnrolled::Issued {
        appliance: appliance_row(&row)?,
        revoked,
        cert,
    })
}

/// A pooled connection inside a transaction begun by hand (so that BEGIN
/// and COMMIT travel with the statements). Unless ended, it is dropped
/// from the pool when this is (PostgreSQL then rolls back): no connection
/// goes back to the pool inside a transaction.
struct OpenTx(Option<Object>);

impl OpenTx {
    fn client(&self) -> &Object {
        self.0
            .as_ref()
            .expect("a transaction's connection is there until it ends")
    }

    /// Ends the transaction with `sql` (`ROLLBACK`) and answers `then`.
    async fn end(self, sql: &str, then: KnownEnrolled) -> Result<KnownEnrolled> {
        self.client()
            .batch_execute(sql)
            .await
            .map_err(StoreError::from)?;
        self.release();
        Ok(then)
    }

    /// The transaction ended: the connection goes back to the pool.
    fn release(mut self) {
        drop(self.0.take());
    }
}

impl Drop for OpenTx {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            drop(Object::take(c));
        }
    }
}
