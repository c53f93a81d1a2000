//! PgStore: appliances.

use std::net::{IpAddr, Ipv4Addr};

use deadpool_postgres::GenericClient;
use levee_proto::report::StatusReport;
use levee_pxe::boot::MacAddr;
use levee_pxe::dhcp::Lease;
use tokio_postgres::Row;

use super::customers::{customer_row_at, require_customer};
use super::events::event;
use super::{corrupt, execute, opt_u64, query, query_one, query_opt, relaxed_tx, PgStore};
use crate::store::{
    approved_detail, check_approval, check_new_enrollment, check_registration, choose_key,
    conflict_detail, judge_pending_key, judge_report_token, judge_token, no_appliance, now,
    pending_key_detail, revoked_detail, Appliance, ApplianceState, ApplianceStore, CustomerRecord,
    Heartbeat, PendingKey, Registration, Result, StoreError, TokenCheck, TokenRow, TOKEN_KEEP_SECS,
};

pub(super) const APPLIANCE_COLS: &str =
    "id, mac, serial, profile, registered, first_seen, last_seen, last_report, last_report_at, \
     customer, state, state_reason, image_version, slot, last_heartbeat, revoked_at, replaced_by, replaces, \
     cert_fingerprint, cert_not_after, pending_key, reinstall, reenroll, key_conflict";

pub(super) fn appliance_row(row: &Row) -> Result<Appliance> {
    let mac: String = row.try_get(1)?;
    let report: Option<String> = row.try_get(7)?;
    let state: String = row.try_get(10)?;
    Ok(Appliance {
        id: row.try_get(0)?,
        mac: mac.parse().map_err(corrupt)?,
        serial: row.try_get(2)?,
        profile: row.try_get(3)?,
        registered: row.try_get(4)?,
        first_seen: row.try_get::<_, i64>(5)? as u64,
        last_seen: opt_u64(row, 6)?,
        last_report: report
            .map(|r| serde_json::from_str(&r))
            .transpose()
            .map_err(corrupt)?,
        last_report_at: opt_u64(row, 8)?,
        customer: row.try_get(9)?,
        state: ApplianceState::parse(&state)?,
        state_reason: row.try_get(11)?,
        image_version: row.try_get(12)?,
        slot: row.try_get(13)?,
        last_heartbeat: opt_u64(row, 14)?,
        revoked_at: opt_u64(row, 15)?,
        replaced_by: row.try_get(16)?,
        replaces: row.try_get(17)?,
        cert_fingerprint: row.try_get(18)?,
        cert_not_after: opt_u64(row, 19)?,
        pending_key: row.try_get(20)?,
        reinstall: row.try_get(21)?,
        reenroll: row.try_get(22)?,
        key_conflict: row.try_get(23)?,
    })
}

pub(super) async fn get_by_id(c: &impl GenericClient, id: i64) -> Result<Appliance> {
    let row = query_opt(c, by_id_sql(), &[&id])
        .await?
        .ok_or_else(|| no_appliance(format!("id {id}")))?;
    appliance_row(&row)
}

async fn get_by_id_for_update(c: &impl GenericClient, id: i64) -> Result<Appliance> {
    let row = query_opt(
        c,
        &format!("SELECT {APPLIANCE_COLS} FROM appliances WHERE id = $1 FOR UPDATE"),
        &[&id],
    )
    .await?
    .ok_or_else(|| no_appliance(format!("id {id}")))?;
    appliance_row(&row)
}

pub(super) async fn get_by_mac_for_update(
    c: &impl GenericClient,
    mac: MacAddr,
) -> Result<Option<Appliance>> {
    query_opt(
        c,
        &format!("SELECT {APPLIANCE_COLS} FROM appliances WHERE mac = $1 FOR UPDATE"),
        &[&mac.to_string()],
    )
    .await?
    .map(|r| appliance_row(&r))
    .transpose()
}

pub(super) async fn token_row(
    c: &impl GenericClient,
    token_sha256: &str,
    for_update: bool,
) -> Result<Option<TokenRow>> {
    let sql = if for_update {
        "SELECT mac, expires_at, used_at, ip FROM enroll_tokens WHERE token_sha256 = $1 FOR UPDATE"
    } else {
        "SELECT mac, expires_at, used_at, ip FROM enroll_tokens WHERE token_sha256 = $1"
    };
    query_opt(c, sql, &[&token_sha256])
        .await?
        .map(|r| {
            Ok(TokenRow {
                mac: r.try_get(0)?,
                expires_at: r.try_get::<_, i64>(1)? as u64,
                used_at: r.try_get::<_, Option<i64>>(2)?.map(|v| v as u64),
                ip: r.try_get(3)?,
            })
        })
        .transpose()
}

fn by_id_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| format!("SELECT {APPLIANCE_COLS} FROM appliances WHERE id = $1"))
}

pub(super) async fn get_by_mac(c: &impl GenericClient, mac: MacAddr) -> Result<Option<Appliance>> {
    query_opt(
        c,
        &format!("SELECT {APPLIANCE_COLS} FROM appliances WHERE mac = $1"),
        &[&mac.to_string()],
    )
    .await?
    .map(|r| appliance_row(&r))
    .transpose()
}

/// The appliance and its customer in one query: every mTLS request's
/// lookup, awaited on the server's runtime.
pub(super) async fn appliance_with_customer(
    store: &PgStore,
    id: i64,
) -> Result<Option<(Appliance, Option<CustomerRecord>)>> {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let sql = SQL.get_or_init(|| {
        let cols: Vec<String> = APPLIANCE_COLS
            .split(',')
            .map(|c| format!("a.{}", c.trim()))
            .collect();
        format!(
            "SELECT {}, c.name, c.config, c.created_at, c.updated_at
             FROM appliances a LEFT JOIN customers c ON c.name = a.customer WHERE a.id = $1",
            cols.join(", ")
        )
    });
    let c = store.conn().await?;
    let Some(row) = query_opt(&c, sql, &[&id]).await? else {
        return Ok(None);
    };
    let a = appliance_row(&row)?;
    let base = APPLIANCE_COLS.split(',').count();
    let has_customer = row.try_get::<_, Option<String>>(base)?.is_some();
    let customer = if has_customer {
        Some(customer_row_at(&row, base)?)
    } else {
        None
    };
    Ok(Some((a, customer)))
}

impl ApplianceStore for PgStore {
    fn register_appliance(&self, mac: MacAddr, reg: &Registration) -> Result<Appliance> {
        self.block(async {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            if let Some(cust) = reg.customer {
                require_customer(&tx, cust).await?;
            }
            check_registration(get_by_mac(&tx, mac).await?.as_ref(), mac, reg)?;
            execute(
                &tx,
                "INSERT INTO appliances (mac, serial, profile, customer, registered, first_seen)
                 VALUES ($1, $2, $3, $4, TRUE, $5)
                 ON CONFLICT(mac) DO UPDATE SET registered = TRUE,
                   serial = COALESCE(excluded.serial, appliances.serial),
                   profile = COALESCE(excluded.profile, appliances.profile),
                   customer = COALESCE(excluded.customer, appliances.customer)",
                &[
                    &mac.to_string(),
                    &reg.serial,
                    &reg.profile,
                    &reg.customer,
                    &(now() as i64),
                ],
            )
            .await?;
            let detail = match reg.customer {
                Some(cust) => format!("registered for customer {cust}"),
                None => "registered".to_string(),
            };
            event(&tx, mac, "registered", &detail).await?;
            let a = get_by_mac(&tx, mac)
                .await?
                .ok_or_else(|| StoreError::Corrupt("appliance vanished".into()))?;
            tx.commit().await?;
            Ok(a)
        })
    }

    fn approve_appliance(
        &self,
        mac: MacAddr,
        customer: &str,
        fingerprint: Option<&str>,
    ) -> Result<Appliance> {
        let _forget = self.api_cache.forget(None);
        self.block(async {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            require_customer(&tx, customer).await?;
            let a = check_approval(get_by_mac_for_update(&tx, mac).await?, mac, customer)?;
            let key = choose_key(&a, fingerprint)?;
            execute(
                &tx,
                "UPDATE appliances SET registered = TRUE, customer = $2, pending_key = $3, key_conflict = NULL WHERE id = $1",
                &[&a.id, &customer, &key],
            )
            .await?;
            event(&tx, mac, "approved", &approved_detail(customer, key.as_deref())).await?;
            let a = get_by_id(&tx, a.id).await?;
            tx.commit().await?;
            Ok(a)
        })
    }

    fn set_appliance_state(
        &self,
        id: i64,
        state: ApplianceState,
        reason: Option<&str>,
    ) -> Result<Appliance> {
        let _forget = self.api_cache.forget(Some(id));
        self.block(async {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            let a = get_by_id(&tx, id).await?;
            if a.revoked_at.is_some() && state != ApplianceState::Retired {
                return Err(StoreError::Invalid(format!(
                    "appliance {} (id {id}) is retired",
                    a.mac
                )));
            }
            execute(
                &tx,
                "UPDATE appliances SET state = $2, state_reason = $3,
                   reinstall = reinstall AND $2 <> 'installed' WHERE id = $1",
                &[&id, &state.as_str(), &reason],
            )
            .await?;
            let detail = match reason {
                Some(r) => format!("{}: {r}", state.as_str()),
                None => state.as_str().to_string(),
            };
            event(&tx, a.mac, "state", &detail).await?;
            let a = get_by_id(&tx, id).await?;
            tx.commit().await?;
            Ok(a)
        })
    }

    fn record_heartbeat(&self, id: i64, hb: &Heartbeat) -> Result<()> {
        self.block(async {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            let a = get_by_id(&tx, id).await?;
            execute(&tx,
                "UPDATE appliances SET last_heartbeat = $2, last_seen = $2,
                   image_version = COALESCE($3, image_version), slot = COALESCE($4, slot) WHERE id = $1",
                &[&id, &(now() as i64), &hb.image_version, &hb.slot],
            ).await?;
            let changed = (hb.image_version.is_some()
                && hb.image_version != a.image_version.as_deref())
                || (hb.slot.is_some() && hb.slot != a.slot.as_deref());
            if changed {
                let detail = format!(
                    "image {} on slot {}",
                    hb.image_version.or(a.image_version.as_deref()).unwrap_or("-"),
                    hb.slot.or(a.slot.as_deref()).unwrap_or("-")
                );
                event(&tx, a.mac, "heartbeat", &detail).await?;
            }
            if a.state == ApplianceState::Installing && hb.slot.is_some() {
                execute(&tx,
                    "UPDATE appliances SET state = 'installed', state_reason = NULL, reinstall = FALSE WHERE id = $1",
                    &[&id],
                ).await?;
                event(&tx, a.mac, "state", &crate::store::came_back_detail(hb)).await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn keep_pending_key(&self, id: i64, key_sha256: &str) -> Result<(Appliance, PendingKey)> {
        let _forget = self.api_cache.forget(Some(id));
        self.block(async {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            // FOR UPDATE: two first keys at once cannot both be kept.
            let a = get_by_id_for_update(&tx, id).await?;
            let verdict = judge_pending_key(a.pending_key.as_deref(), key_sha256);
            match verdict {
                PendingKey::Same => return Ok((a, verdict)),
                PendingKey::Kept => {
                    execute(
                        &tx,
                        "UPDATE appliances SET pending_key = $2 WHERE id = $1",
                        &[&id, &key_sha256],
                    )
                    .await?;
                    event(&tx, a.mac, "pending-key", &pending_key_detail(key_sha256)).await?;
                }
                PendingKey::Conflict => {
                    execute(
                        &tx,
                        "UPDATE appliances SET key_conflict = $2 WHERE id = $1",
                        &[&id, &key_sha256],
                    )
                    .await?;
                    event(&tx, a.mac, "key-conflict", &conflict_detail(&a, key_sha256)).await?;
                }
            }
            let a = get_by_id(&tx, id).await?;
            tx.commit().await?;
            Ok((a, verdict))
        })
    }

    fn set_reenroll(&self, id: i64, armed: bool) -> Result<Appliance> {
        let _forget = self.api_cache.forget(Some(id));
        self.block(async {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            let a = get_by_id(&tx, id).await?;
            crate::store::check_not_retired(&a)?;
            execute(
                &tx,
                "UPDATE appliances SET reenroll = $2 WHERE id = $1",
                &[&id, &armed],
            )
            .await?;
            event(&tx, a.mac, "reenroll", crate::store::reenroll_detail(armed)).await?;
            let a = get_by_id(&tx, id).await?;
            tx.commit().await?;
            Ok(a)
        })
    }

    fn set_reinstall(&self, id: i64, reinstall: bool) -> Result<Appliance> {
        self.block(async {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            let a = get_by_id(&tx, id).await?;
            crate::store::check_not_retired(&a)?;
            execute(
                &tx,
                "UPDATE appliances SET reinstall = $2 WHERE id = $1",
                &[&id, &reinstall],
            )
            .await?;
            event(
                &tx,
                a.mac,
                "reinstall",
                crate::store::reinstall_detail(reinstall),
            )
            .await?;
            let a = get_by_id(&tx, id).await?;
            tx.commit().await?;
            Ok(a)
        })
    }

    fn replace_appliance(&self, old: i64, new_mac: MacAddr) -> Result<Appliance> {
        let _forget = self.api_cache.forget(Some(old));
        self.block(async {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            let o = get_by_id(&tx, old).await?;
            let existing = get_by_mac(&tx, new_mac).await?;
            let plan = crate::store::plan_replace(&o, existing.as_ref(), new_mac)?;
            let t = now() as i64;
            let new_id: i64 = query_one(&tx,
                    "INSERT INTO appliances (mac, profile, customer, registered, first_seen, replaces)
                     VALUES ($1, $2, $3, TRUE, $4, $5)
                     ON CONFLICT(mac) DO UPDATE SET registered = TRUE, profile = excluded.profile,
                       customer = excluded.customer, replaces = excluded.replaces
                     RETURNING id",
                    &[&new_mac.to_string(), &o.profile, &o.customer, &t, &o.id],
                ).await?
                .try_get(0)?;
            execute(&tx,
                "UPDATE appliances SET state = 'retired', state_reason = $2, revoked_at = $3, replaced_by = $4 WHERE id = $1",
                &[&o.id, &plan.old_reason, &t, &new_id],
            ).await?;
            event(&tx, o.mac, "replaced", &plan.old_reason).await?;
            event(&tx, new_mac, "replaces", &plan.new_detail).await?;
            let n = get_by_id(&tx, new_id).await?;
            tx.commit().await?;
            Ok(n)
        })
    }

    fn retire_appliance(&self, id: i64, reason: &str) -> Result<Appliance> {
        let _forget = self.api_cache.forget(Some(id));
        self.block(async {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            let a = get_by_id(&tx, id).await?;
            if a.revoked_at.is_some() {
                return Err(StoreError::Invalid(format!("appliance {} (id {id}) is already retired", a.mac)));
            }
            execute(&tx,
                "UPDATE appliances SET state = 'retired', state_reason = $2, revoked_at = $3 WHERE id = $1",
                &[&id, &reason, &(now() as i64)],
            ).await?;
            event(&tx, a.mac, "retired", reason).await?;
            let a = get_by_id(&tx, id).await?;
            tx.commit().await?;
            Ok(a)
        })
    }

    fn appliance_by_id(&self, id: i64) -> Result<Option<Appliance>> {
        self.block(async {
            let c = self.conn().await?;
            query_opt(&c, by_id_sql(), &[&id])
                .await?
                .map(|r| appliance_row(&r))
                .transpose()
        })
    }

    fn appliance_with_customer(
        &self,
        id: i64,
    ) -> Result<Option<(Appliance, Option<CustomerRecord>)>> {
        self.block(appliance_with_customer(self, id))
    }

    fn appliance_seen(&self, mac: MacAddr) -> Result<Appliance> {
        // Seen-at is a record of what happened: no wait for the flush.
        self.block(async {
            let mut c = self.conn().await?;
            let tx = relaxed_tx(&mut c).await?;
            let t = now() as i64;
            let row = query_one(
                &tx,
                &format!(
                    "INSERT INTO appliances (mac, registered, first_seen, last_seen) VALUES ($1, FALSE, $2, $2)
                     ON CONFLICT(mac) DO UPDATE SET last_seen = excluded.last_seen
                     RETURNING {APPLIANCE_COLS}"
                ),
                &[&mac.to_string(), &t],
            )
            .await?;
            tx.commit().await?;
            appliance_row(&row)
        })
    }

    fn set_appliance_profile(&self, mac: MacAddr, profile: Option<&str>) -> Result<()> {
        self.block(async {
            let c = self.conn().await?;
            let n = execute(
                &c,
                "UPDATE appliances SET profile = $2 WHERE mac = $1",
                &[&mac.to_string(), &profile],
            )
            .await?;
            if n == 0 {
                return Err(StoreError::NotFound {
                    what: "appliance",
                    name: mac.to_string(),
                    hint: ": register it with `levee appliance register --mac MAC`",
                });
            }
            Ok(())
        })
    }

    fn appliance(&self, mac: MacAddr) -> Result<Option<Appliance>> {
        self.block(async {
            let c = self.conn().await?;
            get_by_mac(&c, mac).await
        })
    }

    fn appliances(&self) -> Result<Vec<Appliance>> {
        self.block(async {
            let c = self.conn().await?;
            query(
                &c,
                &format!("SELECT {APPLIANCE_COLS} FROM appliances ORDER BY id"),
                &[],
            )
            .await?
            .iter()
            .map(appliance_row)
            .collect()
        })
    }

    fn remove_appliance(&self, mac: MacAddr) -> Result<()> {
        let _forget = self.api_cache.forget(None);
        self.block(async {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            if execute(
                &tx,
                "DELETE FROM appliances WHERE mac = $1",
                &[&mac.to_string()],
            )
            .await?
                == 0
            {
                return Err(StoreError::NotFound {
                    what: "appliance",
                    name: mac.to_string(),
                    hint: "",
                });
            }
            execute(
                &tx,
                "DELETE FROM events WHERE mac = $1",
                &[&mac.to_string()],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn record_report(&self, report: &StatusReport, mac: MacAddr) -> Result<bool> {
        let json = serde_json::to_string(report).map_err(|e| StoreError::Invalid(e.to_string()))?;
        self.block(async {
            let c = self.conn().await?;
            let n = execute(&c,
                "UPDATE appliances SET last_seen = $2, last_report = $3, last_report_at = $2 WHERE mac = $1",
                &[&mac.to_string(), &(now() as i64), &json],
            ).await?;
            Ok(n > 0)
        })
    }

    fn record_certificate(
        &self,
        id: i64,
        fingerprint: &str,
        not_after: u64,
        enrolled: bool,
    ) -> Result<Appliance> {
        let _forget = self.api_cache.forget(Some(id));
        self.block(async {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            // FOR UPDATE: two enrollments at once cannot both use one
            // re-enrollment.
            let a = get_by_id_for_update(&tx, id).await?;
            if a.revoked_at.is_some() {
                return Err(StoreError::Invalid(format!(
                    "appliance {} (id {id}) is retired: its credential is revoked",
                    a.mac
                )));
            }
            let revoked = if enrolled {
                check_new_enrollment(&a, now())?
            } else {
                None
            };
            execute(&tx,
                "UPDATE appliances SET cert_fingerprint = $2, cert_not_after = $3 WHERE id = $1",
                &[&id, &fingerprint, &(not_after as i64)],
            ).await?;
            let detail = format!("certificate sha256 {fingerprint}");
            if enrolled {
                execute(&tx,
                    "UPDATE appliances SET state = 'enrolled', state_reason = NULL, pending_key = NULL,
                       key_conflict = NULL, reenroll = FALSE WHERE id = $1",
                    &[&id],
                ).await?;
                if let Some(old) = &revoked {
                    event(&tx, a.mac, "cert-revoked", &revoked_detail(old)).await?;
                    event(&tx, a.mac, "reenrolled", &detail).await?;
                } else {
                    event(&tx, a.mac, "enrolled", &detail).await?;
                }
            } else {
                event(&tx, a.mac, "renewed", &detail).await?;
            }
            let a = get_by_id(&tx, id).await?;
            tx.commit().await?;
            Ok(a)
        })
    }

    fn put_token(
        &self,
        token_sha256: &str,
        mac: MacAddr,
        expires_at: u64,
        ip: Option<IpAddr>,
    ) -> Result<()> {
        self.block(async {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            let at = now();
            execute(&tx,
                "DELETE FROM enroll_tokens WHERE expires_at < $1",
                &[&(at.saturating_sub(TOKEN_KEEP_SECS) as i64)],
            ).await?;
            // One live token per MAC: a new boot script invalidates the older.
            execute(&tx,
                "DELETE FROM enroll_tokens WHERE mac = $1 AND used_at IS NULL",
                &[&mac.to_string()],
            ).await?;
            execute(&tx,
                "INSERT INTO enroll_tokens (token_sha256, mac, created_at, expires_at, ip) VALUES ($1, $2, $3, $4, $5)",
                &[&token_sha256, &mac.to_string(), &(at as i64), &(expires_at as i64), &ip.map(|i| i.to_string())],
            ).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn take_token(
        &self,
        token_sha256: &str,
        mac: MacAddr,
        at: u64,
        peer: Option<IpAddr>,
    ) -> Result<TokenCheck> {
        self.block(async {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            // FOR UPDATE: a second request with the same token waits here and
            // then sees it used.
            let row = token_row(&tx, token_sha256, true).await?;
            let verdict = judge_token(row, mac, at, peer);
            if verdict == TokenCheck::Valid {
                execute(
                    &tx,
                    "UPDATE enroll_tokens SET used_at = $2 WHERE token_sha256 = $1",
                    &[&token_sha256, &(at as i64)],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(verdict)
        })
    }

    fn report_token_ok(&self, token_sha256: &str, mac: MacAddr, at: u64) -> Result<bool> {
        self.block(async {
            let c = self.conn().await?;
            Ok(judge_report_token(
                token_row(&c, token_sha256, false).await?,
                mac,
                at,
            ))
        })
    }

    fn leases(&self) -> Result<Vec<Lease>> {
        self.block(async {
            let c = self.conn().await?;
            query(&c, "SELECT mac, ip, expires FROM leases", &[])
                .await?
                .iter()
                .map(|r| {
                    let mac: String = r.try_get(0)?;
                    let ip: String = r.try_get(1)?;
                    Ok(Lease {
                        mac: mac.parse().map_err(corrupt)?,
                        ip: ip.parse::<Ipv4Addr>().map_err(corrupt)?,
                        expires_unix: r.try_get::<_, i64>(2)? as u64,
                    })
                })
                .collect()
        })
    }

    fn save_lease(&self, lease: &Lease) -> Result<()> {
        self.block(async {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            // An address belongs to one MAC at a time: drop any stale holder.
            execute(
                &tx,
                "DELETE FROM leases WHERE ip = $1 AND mac <> $2",
                &[&lease.ip.to_string(), &lease.mac.to_string()],
            )
            .await?;
            execute(
                &tx,
                "INSERT INTO leases (mac, ip, expires) VALUES ($1, $2, $3)
                 ON CONFLICT(mac) DO UPDATE SET ip = excluded.ip, expires = excluded.expires",
                &[
                    &lease.mac.to_string(),
                    &lease.ip.to_string(),
                    &(lease.expires_unix as i64),
                ],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }
}
