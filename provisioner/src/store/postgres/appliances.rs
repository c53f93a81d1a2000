//! PgStore: appliances.

use std::net::Ipv4Addr;

use levee_proto::report::StatusReport;
use levee_pxe::boot::MacAddr;
use levee_pxe::dhcp::Lease;
use postgres::{GenericClient, Row};

use super::customers::{customer_row_at, require_customer};
use super::events::event;
use super::{corrupt, opt_u64, relaxed, PgStore};
use crate::store::{
    check_approval, judge_token, no_appliance, now, Appliance, ApplianceState, ApplianceStore,
    CustomerRecord, Heartbeat, Registration, Result, StoreError, TokenCheck, TOKEN_KEEP_SECS,
};

pub(super) const APPLIANCE_COLS: &str =
    "id, mac, serial, profile, registered, first_seen, last_seen, last_report, last_report_at, \
     customer, state, state_reason, image_version, slot, last_heartbeat, revoked_at, replaced_by, replaces, \
     cert_fingerprint, cert_not_after, pending_key, reinstall";

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
    })
}

pub(super) fn get_by_id<C: GenericClient>(c: &mut C, id: i64) -> Result<Appliance> {
    let row = c
        .query_opt(
            &format!("SELECT {APPLIANCE_COLS} FROM appliances WHERE id = $1"),
            &[&id],
        )?
        .ok_or_else(|| no_appliance(format!("id {id}")))?;
    appliance_row(&row)
}

pub(super) fn get_by_mac<C: GenericClient>(c: &mut C, mac: MacAddr) -> Result<Option<Appliance>> {
    c.query_opt(
        &format!("SELECT {APPLIANCE_COLS} FROM appliances WHERE mac = $1"),
        &[&mac.to_string()],
    )?
    .map(|r| appliance_row(&r))
    .transpose()
}

impl ApplianceStore for PgStore {
    fn register_appliance(&self, mac: MacAddr, reg: &Registration) -> Result<Appliance> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            if let Some(cust) = reg.customer {
                require_customer(&mut tx, cust)?;
            }
            if let Some(a) = get_by_mac(&mut tx, mac)? {
                if a.revoked_at.is_some() {
                    return Err(StoreError::Invalid(format!(
                        "appliance {mac} (id {}) is retired and its credential revoked: `levee appliance remove {mac}` first to register it afresh",
                        a.id
                    )));
                }
            }
            tx.execute(
                "INSERT INTO appliances (mac, serial, profile, customer, registered, first_seen)
                 VALUES ($1, $2, $3, $4, TRUE, $5)
                 ON CONFLICT(mac) DO UPDATE SET registered = TRUE,
                   serial = COALESCE(excluded.serial, appliances.serial),
                   profile = COALESCE(excluded.profile, appliances.profile),
                   customer = COALESCE(excluded.customer, appliances.customer)",
                &[&mac.to_string(), &reg.serial, &reg.profile, &reg.customer, &(now() as i64)],
            )?;
            let detail = match reg.customer {
                Some(cust) => format!("registered for customer {cust}"),
                None => "registered".to_string(),
            };
            event(&mut tx, mac, "registered", &detail)?;
            let a = get_by_mac(&mut tx, mac)?
                .ok_or_else(|| StoreError::Corrupt("appliance vanished".into()))?;
            tx.commit()?;
            Ok(a)
        })
    }

    fn approve_appliance(&self, mac: MacAddr, customer: &str) -> Result<Appliance> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            require_customer(&mut tx, customer)?;
            let a = check_approval(get_by_mac(&mut tx, mac)?, mac, customer)?;
            tx.execute(
                "UPDATE appliances SET registered = TRUE, customer = $2 WHERE id = $1",
                &[&a.id, &customer],
            )?;
            event(
                &mut tx,
                mac,
                "approved",
                &format!("approved for customer {customer}"),
            )?;
            let a = get_by_id(&mut tx, a.id)?;
            tx.commit()?;
            Ok(a)
        })
    }

    fn set_appliance_state(
        &self,
        id: i64,
        state: ApplianceState,
        reason: Option<&str>,
    ) -> Result<Appliance> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            let a = get_by_id(&mut tx, id)?;
            if a.revoked_at.is_some() && state != ApplianceState::Retired {
                return Err(StoreError::Invalid(format!(
                    "appliance {} (id {id}) is retired",
                    a.mac
                )));
            }
            tx.execute(
                "UPDATE appliances SET state = $2, state_reason = $3,
                   reinstall = reinstall AND $2 <> 'installed' WHERE id = $1",
                &[&id, &state.as_str(), &reason],
            )?;
            let detail = match reason {
                Some(r) => format!("{}: {r}", state.as_str()),
                None => state.as_str().to_string(),
            };
            event(&mut tx, a.mac, "state", &detail)?;
            let a = get_by_id(&mut tx, id)?;
            tx.commit()?;
            Ok(a)
        })
    }

    fn record_heartbeat(&self, id: i64, hb: &Heartbeat) -> Result<()> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            let a = get_by_id(&mut tx, id)?;
            tx.execute(
                "UPDATE appliances SET last_heartbeat = $2, last_seen = $2,
                   image_version = COALESCE($3, image_version), slot = COALESCE($4, slot) WHERE id = $1",
                &[&id, &(now() as i64), &hb.image_version, &hb.slot],
            )?;
            let changed = (hb.image_version.is_some()
                && hb.image_version != a.image_version.as_deref())
                || (hb.slot.is_some() && hb.slot != a.slot.as_deref());
            if changed {
                let detail = format!(
                    "image {} on slot {}",
                    hb.image_version.or(a.image_version.as_deref()).unwrap_or("-"),
                    hb.slot.or(a.slot.as_deref()).unwrap_or("-")
                );
                event(&mut tx, a.mac, "heartbeat", &detail)?;
            }
            if a.state == ApplianceState::Installing && hb.slot.is_some() {
                tx.execute(
                    "UPDATE appliances SET state = 'installed', state_reason = NULL, reinstall = FALSE WHERE id = $1",
                    &[&id],
                )?;
                event(&mut tx, a.mac, "state", &crate::store::came_back_detail(hb))?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn set_pending_key(&self, id: i64, key_sha256: &str) -> Result<Appliance> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            let a = get_by_id(&mut tx, id)?;
            tx.execute(
                "UPDATE appliances SET pending_key = $2 WHERE id = $1",
                &[&id, &key_sha256],
            )?;
            event(
                &mut tx,
                a.mac,
                "pending-key",
                &format!("waiting for approval with key sha256 {key_sha256}"),
            )?;
            let a = get_by_id(&mut tx, id)?;
            tx.commit()?;
            Ok(a)
        })
    }

    fn set_reinstall(&self, id: i64, reinstall: bool) -> Result<Appliance> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            let a = get_by_id(&mut tx, id)?;
            crate::store::check_not_retired(&a)?;
            tx.execute(
                "UPDATE appliances SET reinstall = $2 WHERE id = $1",
                &[&id, &reinstall],
            )?;
            event(
                &mut tx,
                a.mac,
                "reinstall",
                crate::store::reinstall_detail(reinstall),
            )?;
            let a = get_by_id(&mut tx, id)?;
            tx.commit()?;
            Ok(a)
        })
    }

    fn replace_appliance(&self, old: i64, new_mac: MacAddr) -> Result<Appliance> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            let o = get_by_id(&mut tx, old)?;
            let existing = get_by_mac(&mut tx, new_mac)?;
            let plan = crate::store::plan_replace(&o, existing.as_ref(), new_mac)?;
            let t = now() as i64;
            let new_id: i64 = tx
                .query_one(
                    "INSERT INTO appliances (mac, profile, customer, registered, first_seen, replaces)
                     VALUES ($1, $2, $3, TRUE, $4, $5)
                     ON CONFLICT(mac) DO UPDATE SET registered = TRUE, profile = excluded.profile,
                       customer = excluded.customer, replaces = excluded.replaces
                     RETURNING id",
                    &[&new_mac.to_string(), &o.profile, &o.customer, &t, &o.id],
                )?
                .try_get(0)?;
            tx.execute(
                "UPDATE appliances SET state = 'retired', state_reason = $2, revoked_at = $3, replaced_by = $4 WHERE id = $1",
                &[&o.id, &plan.old_reason, &t, &new_id],
            )?;
            event(&mut tx, o.mac, "replaced", &plan.old_reason)?;
            event(&mut tx, new_mac, "replaces", &plan.new_detail)?;
            let n = get_by_id(&mut tx, new_id)?;
            tx.commit()?;
            Ok(n)
        })
    }

    fn retire_appliance(&self, id: i64, reason: &str) -> Result<Appliance> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            let a = get_by_id(&mut tx, id)?;
            if a.revoked_at.is_some() {
                return Err(StoreError::Invalid(format!("appliance {} (id {id}) is already retired", a.mac)));
            }
            tx.execute(
                "UPDATE appliances SET state = 'retired', state_reason = $2, revoked_at = $3 WHERE id = $1",
                &[&id, &reason, &(now() as i64)],
            )?;
            event(&mut tx, a.mac, "retired", reason)?;
            let a = get_by_id(&mut tx, id)?;
            tx.commit()?;
            Ok(a)
        })
    }

    fn appliance_by_id(&self, id: i64) -> Result<Option<Appliance>> {
        self.query_prepared(
            &format!("SELECT {APPLIANCE_COLS} FROM appliances WHERE id = $1"),
            &[&id],
        )?
        .map(|r| appliance_row(&r))
        .transpose()
    }

    fn appliance_with_customer(
        &self,
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
        let Some(row) = self.query_prepared(sql, &[&id])? else {
            return Ok(None);
        };
        let a = appliance_row(&row)?;
        let base = APPLIANCE_COLS.split(',').count();
        let has_customer = row.try_get::<_, Option<String>>(base)?.is_some();
        let c = if has_customer {
            Some(customer_row_at(&row, base)?)
        } else {
            None
        };
        Ok(Some((a, c)))
    }

    fn appliance_seen(&self, mac: MacAddr) -> Result<Appliance> {
        // Seen-at is a record of what happened: no wait for the flush.
        self.with(|c| {
            relaxed(c, |tx| {
            let t = now() as i64;
            let row = tx.query_one(
                &format!(
                    "INSERT INTO appliances (mac, registered, first_seen, last_seen) VALUES ($1, FALSE, $2, $2)
                     ON CONFLICT(mac) DO UPDATE SET last_seen = excluded.last_seen
                     RETURNING {APPLIANCE_COLS}"
                ),
                &[&mac.to_string(), &t],
            )?;
            appliance_row(&row)
            })
        })
    }

    fn set_appliance_profile(&self, mac: MacAddr, profile: Option<&str>) -> Result<()> {
        self.with(|c| {
            let n = c.execute(
                "UPDATE appliances SET profile = $2 WHERE mac = $1",
                &[&mac.to_string(), &profile],
            )?;
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
        self.with(|c| get_by_mac(c, mac))
    }

    fn appliances(&self) -> Result<Vec<Appliance>> {
        self.with(|c| {
            c.query(
                &format!("SELECT {APPLIANCE_COLS} FROM appliances ORDER BY id"),
                &[],
            )?
            .iter()
            .map(appliance_row)
            .collect()
        })
    }

    fn remove_appliance(&self, mac: MacAddr) -> Result<()> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            if tx.execute("DELETE FROM appliances WHERE mac = $1", &[&mac.to_string()])? == 0 {
                return Err(StoreError::NotFound {
                    what: "appliance",
                    name: mac.to_string(),
                    hint: "",
                });
            }
            tx.execute("DELETE FROM events WHERE mac = $1", &[&mac.to_string()])?;
            tx.commit()?;
            Ok(())
        })
    }

    fn record_report(&self, report: &StatusReport, mac: MacAddr) -> Result<()> {
        let json = serde_json::to_string(report).map_err(|e| StoreError::Invalid(e.to_string()))?;
        self.with(|c| {
            c.execute(
                "INSERT INTO appliances (mac, registered, first_seen, last_seen, last_report, last_report_at)
                 VALUES ($1, FALSE, $2, $2, $3, $2)
                 ON CONFLICT(mac) DO UPDATE SET last_seen = $2, last_report = $3, last_report_at = $2",
                &[&mac.to_string(), &(now() as i64), &json],
            )?;
            Ok(())
        })
    }

    fn record_certificate(
        &self,
        id: i64,
        fingerprint: &str,
        not_after: u64,
        enrolled: bool,
    ) -> Result<Appliance> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            let a = get_by_id(&mut tx, id)?;
            if a.revoked_at.is_some() {
                return Err(StoreError::Invalid(format!(
                    "appliance {} (id {id}) is retired: its credential is revoked",
                    a.mac
                )));
            }
            tx.execute(
                "UPDATE appliances SET cert_fingerprint = $2, cert_not_after = $3 WHERE id = $1",
                &[&id, &fingerprint, &(not_after as i64)],
            )?;
            let detail = format!("certificate sha256 {fingerprint}");
            if enrolled {
                tx.execute(
                    "UPDATE appliances SET state = 'enrolled', state_reason = NULL, pending_key = NULL WHERE id = $1",
                    &[&id],
                )?;
                event(&mut tx, a.mac, "enrolled", &detail)?;
            } else {
                event(&mut tx, a.mac, "renewed", &detail)?;
            }
            let a = get_by_id(&mut tx, id)?;
            tx.commit()?;
            Ok(a)
        })
    }

    fn put_token(&self, token_sha256: &str, mac: MacAddr, expires_at: u64) -> Result<()> {
        self.with(|c| {
            let at = now();
            c.execute(
                "DELETE FROM enroll_tokens WHERE expires_at < $1",
                &[&(at.saturating_sub(TOKEN_KEEP_SECS) as i64)],
            )?;
            c.execute(
                "INSERT INTO enroll_tokens (token_sha256, mac, created_at, expires_at) VALUES ($1, $2, $3, $4)",
                &[&token_sha256, &mac.to_string(), &(at as i64), &(expires_at as i64)],
            )?;
            Ok(())
        })
    }

    fn take_token(&self, token_sha256: &str, mac: MacAddr, at: u64) -> Result<TokenCheck> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            // FOR UPDATE: a second request with the same token waits here and
            // then sees it used.
            let row = tx
                .query_opt(
                    "SELECT mac, expires_at, used_at FROM enroll_tokens WHERE token_sha256 = $1 FOR UPDATE",
                    &[&token_sha256],
                )?
                .map(|r| {
                    (
                        r.get::<_, String>(0),
                        r.get::<_, i64>(1) as u64,
                        r.get::<_, Option<i64>>(2).map(|v| v as u64),
                    )
                });
            let verdict = judge_token(row, mac, at);
            if verdict == TokenCheck::Valid {
                tx.execute(
                    "UPDATE enroll_tokens SET used_at = $2 WHERE token_sha256 = $1",
                    &[&token_sha256, &(at as i64)],
                )?;
            }
            tx.commit()?;
            Ok(verdict)
        })
    }

    fn leases(&self) -> Result<Vec<Lease>> {
        self.with(|c| {
            c.query("SELECT mac, ip, expires FROM leases", &[])?
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
        self.with(|c| {
            let mut tx = c.transaction()?;
            // An address belongs to one MAC at a time: drop any stale holder.
            tx.execute(
                "DELETE FROM leases WHERE ip = $1 AND mac <> $2",
                &[&lease.ip.to_string(), &lease.mac.to_string()],
            )?;
            tx.execute(
                "INSERT INTO leases (mac, ip, expires) VALUES ($1, $2, $3)
                 ON CONFLICT(mac) DO UPDATE SET ip = excluded.ip, expires = excluded.expires",
                &[
                    &lease.mac.to_string(),
                    &lease.ip.to_string(),
                    &(lease.expires_unix as i64),
                ],
            )?;
            tx.commit()?;
            Ok(())
        })
    }
}
