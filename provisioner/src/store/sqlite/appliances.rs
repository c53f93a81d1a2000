//! SqliteStore: appliances.

use std::net::{IpAddr, Ipv4Addr};

use levee_proto::report::StatusReport;
use levee_pxe::boot::MacAddr;
use levee_pxe::dhcp::Lease;
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::customers::require_customer;
use super::events::event;
use super::{corrupt, mac_col, opt_u64, Cached, SqliteStore};
use crate::store::{approved_detail, conflict_detail, pending_key_detail, revoked_detail};
use crate::store::{
    check_approval, check_new_enrollment, check_registration, choose_key, judge_pending_key,
    judge_report_token, judge_token, no_appliance, now, Appliance, ApplianceState, ApplianceStore,
    Heartbeat, PendingKey, Registration, Result, StoreError, TokenCheck, TokenRow, TOKEN_KEEP_SECS,
};

pub(super) const APPLIANCE_COLS: &str =
    "id, mac, serial, profile, registered, first_seen, last_seen, last_report, last_report_at, \
     customer, state, state_reason, image_version, slot, last_heartbeat, revoked_at, replaced_by, replaces, \
     cert_fingerprint, cert_not_after, pending_key, reinstall, reenroll, key_conflict";

pub(super) fn get_by_id(conn: &Connection, id: i64) -> Result<Appliance> {
    conn.query_row_cached(
        &format!("SELECT {APPLIANCE_COLS} FROM appliances WHERE id = ?1"),
        [id],
        appliance_row,
    )
    .optional()?
    .ok_or_else(|| no_appliance(format!("id {id}")))
}

pub(super) fn get_by_mac(conn: &Connection, mac: MacAddr) -> Result<Option<Appliance>> {
    Ok(conn
        .query_row_cached(
            &format!("SELECT {APPLIANCE_COLS} FROM appliances WHERE mac = ?1"),
            [mac.to_string()],
            appliance_row,
        )
        .optional()?)
}

pub(super) fn appliance_row(row: &Row) -> rusqlite::Result<Appliance> {
    let report: Option<String> = row.get(7)?;
    Ok(Appliance {
        id: row.get(0)?,
        mac: mac_col(row, 1)?,
        serial: row.get(2)?,
        profile: row.get(3)?,
        registered: row.get::<_, i64>(4)? != 0,
        first_seen: row.get::<_, i64>(5)? as u64,
        last_seen: row.get::<_, Option<i64>>(6)?.map(|v| v as u64),
        last_report: report
            .map(|r| serde_json::from_str(&r))
            .transpose()
            .map_err(corrupt)?,
        last_report_at: opt_u64(row, 8)?,
        customer: row.get(9)?,
        state: ApplianceState::parse(&row.get::<_, String>(10)?).map_err(corrupt)?,
        state_reason: row.get(11)?,
        image_version: row.get(12)?,
        slot: row.get(13)?,
        last_heartbeat: opt_u64(row, 14)?,
        revoked_at: opt_u64(row, 15)?,
        replaced_by: row.get(16)?,
        replaces: row.get(17)?,
        cert_fingerprint: row.get(18)?,
        cert_not_after: opt_u64(row, 19)?,
        pending_key: row.get(20)?,
        reinstall: row.get::<_, i64>(21)? != 0,
        reenroll: row.get::<_, i64>(22)? != 0,
        key_conflict: row.get(23)?,
    })
}

impl ApplianceStore for SqliteStore {
    fn register_appliance(&self, mac: MacAddr, reg: &Registration) -> Result<Appliance> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        if let Some(c) = reg.customer {
            require_customer(&tx, c)?;
        }
        check_registration(get_by_mac(&tx, mac)?.as_ref(), mac, reg)?;
        tx.execute_cached(
            "INSERT INTO appliances (mac, serial, profile, customer, registered, first_seen)
             VALUES (?1, ?2, ?3, ?4, 1, ?5)
             ON CONFLICT(mac) DO UPDATE SET registered = 1,
               serial = COALESCE(excluded.serial, serial),
               profile = COALESCE(excluded.profile, profile),
               customer = COALESCE(excluded.customer, customer)",
            params![
                mac.to_string(),
                reg.serial,
                reg.profile,
                reg.customer,
                now() as i64
            ],
        )?;
        let detail = match reg.customer {
            Some(c) => format!("registered for customer {c}"),
            None => "registered".to_string(),
        };
        event(&tx, mac, "registered", &detail)?;
        let a = get_by_mac(&tx, mac)?
            .ok_or_else(|| StoreError::Corrupt("appliance vanished".into()))?;
        tx.commit()?;
        Ok(a)
    }

    fn approve_appliance(
        &self,
        mac: MacAddr,
        customer: &str,
        fingerprint: Option<&str>,
    ) -> Result<Appliance> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        require_customer(&tx, customer)?;
        let a = check_approval(get_by_mac(&tx, mac)?, mac, customer)?;
        let key = choose_key(&a, fingerprint)?;
        tx.execute_cached(
            "UPDATE appliances SET registered = 1, customer = ?2, pending_key = ?3, key_conflict = NULL WHERE id = ?1",
            params![a.id, customer, key],
        )?;
        event(
            &tx,
            mac,
            "approved",
            &approved_detail(customer, key.as_deref()),
        )?;
        let a = get_by_id(&tx, a.id)?;
        tx.commit()?;
        Ok(a)
    }

    fn set_appliance_state(
        &self,
        id: i64,
        state: ApplianceState,
        reason: Option<&str>,
    ) -> Result<Appliance> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let a = get_by_id(&tx, id)?;
        if a.revoked_at.is_some() && state != ApplianceState::Retired {
            return Err(StoreError::Invalid(format!(
                "appliance {} (id {id}) is retired",
                a.mac
            )));
        }
        tx.execute_cached(
            "UPDATE appliances SET state = ?2, state_reason = ?3,
               reinstall = CASE WHEN ?2 = 'installed' THEN 0 ELSE reinstall END WHERE id = ?1",
            params![id, state.as_str(), reason],
        )?;
        let detail = match reason {
            Some(r) => format!("{}: {r}", state.as_str()),
            None => state.as_str().to_string(),
        };
        event(&tx, a.mac, "state", &detail)?;
        let a = get_by_id(&tx, id)?;
        tx.commit()?;
        Ok(a)
    }

    fn record_heartbeat(&self, id: i64, hb: &Heartbeat) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let a = get_by_id(&tx, id)?;
        tx.execute_cached(
            "UPDATE appliances SET last_heartbeat = ?2, last_seen = ?2,
               image_version = COALESCE(?3, image_version), slot = COALESCE(?4, slot) WHERE id = ?1",
            params![id, now() as i64, hb.image_version, hb.slot],
        )?;
        let changed = (hb.image_version.is_some()
            && hb.image_version != a.image_version.as_deref())
            || (hb.slot.is_some() && hb.slot != a.slot.as_deref());
        if changed {
            let detail = format!(
                "image {} on slot {}",
                hb.image_version
                    .or(a.image_version.as_deref())
                    .unwrap_or("-"),
                hb.slot.or(a.slot.as_deref()).unwrap_or("-")
            );
            event(&tx, a.mac, "heartbeat", &detail)?;
        }
        if a.state == ApplianceState::Installing && hb.slot.is_some() {
            tx.execute_cached(
                "UPDATE appliances SET state = 'installed', state_reason = NULL, reinstall = 0 WHERE id = ?1",
                params![id],
            )?;
            event(&tx, a.mac, "state", &crate::store::came_back_detail(hb))?;
        }
        tx.commit()?;
        Ok(())
    }

    fn keep_pending_key(&self, id: i64, key_sha256: &str) -> Result<(Appliance, PendingKey)> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let a = get_by_id(&tx, id)?;
        let verdict = judge_pending_key(a.pending_key.as_deref(), key_sha256);
        match verdict {
            PendingKey::Same => return Ok((a, verdict)),
            PendingKey::Kept => {
                tx.execute_cached(
                    "UPDATE appliances SET pending_key = ?2 WHERE id = ?1",
                    params![id, key_sha256],
                )?;
                event(&tx, a.mac, "pending-key", &pending_key_detail(key_sha256))?;
            }
            PendingKey::Conflict => {
                tx.execute_cached(
                    "UPDATE appliances SET key_conflict = ?2 WHERE id = ?1",
                    params![id, key_sha256],
                )?;
                event(&tx, a.mac, "key-conflict", &conflict_detail(&a, key_sha256))?;
            }
        }
        let a = get_by_id(&tx, id)?;
        tx.commit()?;
        Ok((a, verdict))
    }

    fn set_reenroll(&self, id: i64, armed: bool) -> Result<Appliance> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let a = get_by_id(&tx, id)?;
        crate::store::check_not_retired(&a)?;
        tx.execute_cached(
            "UPDATE appliances SET reenroll = ?2 WHERE id = ?1",
            params![id, armed as i64],
        )?;
        event(&tx, a.mac, "reenroll", crate::store::reenroll_detail(armed))?;
        let a = get_by_id(&tx, id)?;
        tx.commit()?;
        Ok(a)
    }

    fn set_reinstall(&self, id: i64, reinstall: bool) -> Result<Appliance> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let a = get_by_id(&tx, id)?;
        crate::store::check_not_retired(&a)?;
        tx.execute_cached(
            "UPDATE appliances SET reinstall = ?2 WHERE id = ?1",
            params![id, reinstall as i64],
        )?;
        event(
            &tx,
            a.mac,
            "reinstall",
            crate::store::reinstall_detail(reinstall),
        )?;
        let a = get_by_id(&tx, id)?;
        tx.commit()?;
        Ok(a)
    }

    fn replace_appliance(&self, old: i64, new_mac: MacAddr) -> Result<Appliance> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let o = get_by_id(&tx, old)?;
        let plan = crate::store::plan_replace(&o, get_by_mac(&tx, new_mac)?.as_ref(), new_mac)?;
        let t = now() as i64;
        let new_id = tx.query_row_cached(
            "INSERT INTO appliances (mac, profile, customer, registered, first_seen, replaces)
             VALUES (?1, ?2, ?3, 1, ?4, ?5)
             ON CONFLICT(mac) DO UPDATE SET registered = 1, profile = excluded.profile,
               customer = excluded.customer, replaces = excluded.replaces
             RETURNING id",
            params![new_mac.to_string(), o.profile, o.customer, t, o.id],
            |r| r.get::<_, i64>(0),
        )?;
        tx.execute_cached(
            "UPDATE appliances SET state = 'retired', state_reason = ?2, revoked_at = ?3, replaced_by = ?4 WHERE id = ?1",
            params![o.id, plan.old_reason, t, new_id],
        )?;
        event(&tx, o.mac, "replaced", &plan.old_reason)?;
        event(&tx, new_mac, "replaces", &plan.new_detail)?;
        let n = get_by_id(&tx, new_id)?;
        tx.commit()?;
        Ok(n)
    }

    fn retire_appliance(&self, id: i64, reason: &str) -> Result<Appliance> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let a = get_by_id(&tx, id)?;
        if a.revoked_at.is_some() {
            return Err(StoreError::Invalid(format!(
                "appliance {} (id {id}) is already retired",
                a.mac
            )));
        }
        tx.execute_cached(
            "UPDATE appliances SET state = 'retired', state_reason = ?2, revoked_at = ?3 WHERE id = ?1",
            params![id, reason, now() as i64],
        )?;
        event(&tx, a.mac, "retired", reason)?;
        let a = get_by_id(&tx, id)?;
        tx.commit()?;
        Ok(a)
    }

    fn appliance_by_id(&self, id: i64) -> Result<Option<Appliance>> {
        Ok(self
            .lock()
            .query_row_cached(
                &format!("SELECT {APPLIANCE_COLS} FROM appliances WHERE id = ?1"),
                [id],
                appliance_row,
            )
            .optional()?)
    }

    fn appliance_seen(&self, mac: MacAddr) -> Result<Appliance> {
        {
            let conn = self.lock();
            let t = now() as i64;
            conn.execute_cached(
                "INSERT INTO appliances (mac, registered, first_seen, last_seen) VALUES (?1, 0, ?2, ?2)
                 ON CONFLICT(mac) DO UPDATE SET last_seen = excluded.last_seen",
                params![mac.to_string(), t],
            )?;
        }
        self.appliance(mac)?
            .ok_or_else(|| StoreError::Corrupt("appliance vanished".into()))
    }

    fn set_appliance_profile(&self, mac: MacAddr, profile: Option<&str>) -> Result<()> {
        let n = self.lock().execute_cached(
            "UPDATE appliances SET profile = ?2 WHERE mac = ?1",
            params![mac.to_string(), profile],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound {
                what: "appliance",
                name: mac.to_string(),
                hint: ": register it with `levee appliance add --mac MAC`",
            });
        }
        Ok(())
    }

    fn appliance(&self, mac: MacAddr) -> Result<Option<Appliance>> {
        Ok(self
            .lock()
            .query_row_cached(
                &format!("SELECT {APPLIANCE_COLS} FROM appliances WHERE mac = ?1"),
                [mac.to_string()],
                appliance_row,
            )
            .optional()?)
    }

    fn appliances(&self) -> Result<Vec<Appliance>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT {APPLIANCE_COLS} FROM appliances ORDER BY id"
        ))?;
        let rows = stmt.query_map([], appliance_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn remove_appliance(&self, mac: MacAddr) -> Result<()> {
        let conn = self.lock();
        if conn.execute_cached("DELETE FROM appliances WHERE mac = ?1", [mac.to_string()])? == 0 {
            return Err(StoreError::NotFound {
                what: "appliance",
                name: mac.to_string(),
                hint: "",
            });
        }
        conn.execute_cached("DELETE FROM events WHERE mac = ?1", [mac.to_string()])?;
        Ok(())
    }

    fn record_report(&self, report: &StatusReport, mac: MacAddr) -> Result<bool> {
        let json = serde_json::to_string(report).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let t = now() as i64;
        let n = self.lock().execute_cached(
            "UPDATE appliances SET last_seen = ?2, last_report = ?3, last_report_at = ?2 WHERE mac = ?1",
            params![mac.to_string(), t, json],
        )?;
        Ok(n > 0)
    }

    fn record_certificate(
        &self,
        id: i64,
        fingerprint: &str,
        not_after: u64,
        enrolled: bool,
    ) -> Result<Appliance> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let a = get_by_id(&tx, id)?;
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
        tx.execute_cached(
            "UPDATE appliances SET cert_fingerprint = ?2, cert_not_after = ?3 WHERE id = ?1",
            params![id, fingerprint, not_after as i64],
        )?;
        let detail = format!("certificate sha256 {fingerprint}");
        if enrolled {
            tx.execute_cached(
                "UPDATE appliances SET state = 'enrolled', state_reason = NULL, pending_key = NULL,
                   key_conflict = NULL, reenroll = 0 WHERE id = ?1",
                params![id],
            )?;
            if let Some(old) = &revoked {
                event(&tx, a.mac, "cert-revoked", &revoked_detail(old))?;
                event(&tx, a.mac, "reenrolled", &detail)?;
            } else {
                event(&tx, a.mac, "enrolled", &detail)?;
            }
        } else {
            event(&tx, a.mac, "renewed", &detail)?;
        }
        let a = get_by_id(&tx, id)?;
        tx.commit()?;
        Ok(a)
    }

    fn put_token(
        &self,
        token_sha256: &str,
        mac: MacAddr,
        expires_at: u64,
        ip: Option<IpAddr>,
    ) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let at = now();
        tx.execute_cached(
            "DELETE FROM enroll_tokens WHERE expires_at < ?1",
            params![at.saturating_sub(TOKEN_KEEP_SECS) as i64],
        )?;
        // One live token per MAC: a new boot script invalidates the older.
        tx.execute_cached(
            "DELETE FROM enroll_tokens WHERE mac = ?1 AND used_at IS NULL",
            params![mac.to_string()],
        )?;
        tx.execute_cached(
            "INSERT INTO enroll_tokens (token_sha256, mac, created_at, expires_at, ip) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                token_sha256,
                mac.to_string(),
                at as i64,
                expires_at as i64,
                ip.map(|i| i.to_string())
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn take_token(
        &self,
        token_sha256: &str,
        mac: MacAddr,
        at: u64,
        peer: Option<IpAddr>,
    ) -> Result<TokenCheck> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let row = token_row(&tx, token_sha256)?;
        let verdict = judge_token(row, mac, at, peer);
        if verdict == TokenCheck::Valid {
            tx.execute_cached(
                "UPDATE enroll_tokens SET used_at = ?2 WHERE token_sha256 = ?1",
                params![token_sha256, at as i64],
            )?;
        }
        tx.commit()?;
        Ok(verdict)
    }

    fn report_token_ok(&self, token_sha256: &str, mac: MacAddr, at: u64) -> Result<bool> {
        let conn = self.lock();
        Ok(judge_report_token(token_row(&conn, token_sha256)?, mac, at))
    }

    fn leases(&self) -> Result<Vec<Lease>> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT mac, ip, expires FROM leases")?;
        let rows = stmt.query_map([], |r| {
            let ip: String = r.get(1)?;
            Ok(Lease {
                mac: mac_col(r, 0)?,
                ip: ip.parse::<Ipv4Addr>().map_err(corrupt)?,
                expires_unix: r.get::<_, i64>(2)? as u64,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn save_lease(&self, lease: &Lease) -> Result<()> {
        let conn = self.lock();
        // An address belongs to one MAC at a time: drop any stale holder.
        conn.execute_cached(
            "DELETE FROM leases WHERE ip = ?1 AND mac <> ?2",
            params![lease.ip.to_string(), lease.mac.to_string()],
        )?;
        conn.execute_cached(
            "INSERT INTO leases (mac, ip, expires) VALUES (?1, ?2, ?3)
             ON CONFLICT(mac) DO UPDATE SET ip = excluded.ip, expires = excluded.expires",
            params![
                lease.mac.to_string(),
                lease.ip.to_string(),
                lease.expires_unix as i64
            ],
        )?;
        Ok(())
    }
}

fn token_row(conn: &Connection, token_sha256: &str) -> Result<Option<TokenRow>> {
    Ok(conn
        .query_row_cached(
            "SELECT mac, expires_at, used_at, ip FROM enroll_tokens WHERE token_sha256 = ?1",
            params![token_sha256],
            |r| {
                Ok(TokenRow {
                    mac: r.get(0)?,
                    expires_at: r.get::<_, i64>(1)? as u64,
                    used_at: r.get::<_, Option<i64>>(2)?.map(|v| v as u64),
                    ip: r.get(3)?,
                })
            },
        )
        .optional()?)
}
