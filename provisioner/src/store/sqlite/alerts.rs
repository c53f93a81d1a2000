//! SqliteStore: alerts, webhooks, deliveries.

use levee_pxe::boot::MacAddr;
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{mac_col, Cached, SqliteStore};
use crate::store::{
    now, Alert, AlertStore, Delivery, Event, NewAlert, Result, Webhook, ALERT_EVENT_STEPS,
    RESOLVED_KEPT_SECS,
};

const ALERT_COLUMNS: &str =
    "a.id, a.kind, a.subject, a.appliance_id, a.customer, a.severity, a.summary, a.opened_at, a.resolved_at";
const WEBHOOK_COLUMNS: &str = "w.id, w.url, w.customer, w.secret, w.created_at";

fn alert_row(r: &Row, at: usize) -> rusqlite::Result<Alert> {
    Ok(Alert {
        id: r.get(at)?,
        kind: r.get(at + 1)?,
        subject: r.get(at + 2)?,
        appliance_id: r.get(at + 3)?,
        customer: r.get(at + 4)?,
        severity: r.get(at + 5)?,
        summary: r.get(at + 6)?,
        opened_at: r.get::<_, i64>(at + 7)? as u64,
        resolved_at: r.get::<_, Option<i64>>(at + 8)?.map(|t| t as u64),
    })
}

fn webhook_row(r: &Row, at: usize) -> rusqlite::Result<Webhook> {
    Ok(Webhook {
        id: r.get(at)?,
        url: r.get(at + 1)?,
        customer: r.get(at + 2)?,
        secret_sealed: r.get(at + 3)?,
        created_at: r.get::<_, i64>(at + 4)? as u64,
    })
}

/// Queues `event` of `alert` to every webhook that wants it.
fn queue(conn: &Connection, alert: &Alert, event: &str) -> rusqlite::Result<()> {
    conn.execute_cached(
        "INSERT INTO alert_deliveries (webhook_id, alert_id, event, created_at, next_at)
         SELECT id, ?1, ?2, ?3, ?3 FROM webhooks WHERE customer IS NULL OR customer = ?4",
        params![alert.id, event, now() as i64, alert.customer],
    )?;
    Ok(())
}

fn get_alert(conn: &Connection, id: i64) -> rusqlite::Result<Alert> {
    conn.query_row_cached(
        &format!("SELECT {ALERT_COLUMNS} FROM alerts a WHERE a.id = ?1"),
        [id],
        |r| alert_row(r, 0),
    )
}

impl AlertStore for SqliteStore {
    fn open_alerts(&self) -> Result<Vec<Alert>> {
        self.alerts(false, usize::MAX)
    }

    fn alerts(&self, resolved: bool, limit: usize) -> Result<Vec<Alert>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {ALERT_COLUMNS} FROM alerts a WHERE ?1 OR a.resolved_at IS NULL
             ORDER BY a.id DESC LIMIT ?2"
        ))?;
        let rows = stmt.query_map(
            params![resolved, limit.min(i64::MAX as usize) as i64],
            |r| alert_row(r, 0),
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn open_alert(&self, a: &NewAlert) -> Result<Option<Alert>> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let id: Option<i64> = tx
            .query_row_cached(
                "INSERT INTO alerts (kind, subject, appliance_id, customer, severity, summary, opened_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (kind, subject) WHERE resolved_at IS NULL DO NOTHING RETURNING id",
                params![a.kind, a.subject, a.appliance_id, a.customer, a.severity, a.summary, now() as i64],
                |r| r.get(0),
            )
            .optional()?;
        let Some(id) = id else { return Ok(None) };
        let alert = get_alert(&tx, id)?;
        queue(&tx, &alert, "opened")?;
        tx.commit()?;
        Ok(Some(alert))
    }

    fn resolve_alert(&self, id: i64) -> Result<Option<Alert>> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let t = now();
        let changed = tx.execute_cached(
            "UPDATE alerts SET resolved_at = ?2 WHERE id = ?1 AND resolved_at IS NULL",
            params![id, t as i64],
        )?;
        if changed == 0 {
            return Ok(None);
        }
        let alert = get_alert(&tx, id)?;
        queue(&tx, &alert, "resolved")?;
        tx.execute_cached(
            "DELETE FROM alerts WHERE resolved_at < ?1",
            [t.saturating_sub(RESOLVED_KEPT_SECS) as i64],
        )?;
        tx.commit()?;
        Ok(Some(alert))
    }

    fn set_webhook(
        &self,
        url: &str,
        customer: Option<&str>,
        secret_sealed: &str,
    ) -> Result<(Webhook, bool)> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let find = |tx: &Connection| {
            tx.query_row_cached(
                &format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks w WHERE w.url = ?1 AND w.customer IS ?2"),
                params![url, customer],
                |r| webhook_row(r, 0),
            )
            .optional()
        };
        if let Some(w) = find(&tx)? {
            return Ok((w, false));
        }
        tx.execute_cached(
            "INSERT INTO webhooks (url, customer, secret, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![url, customer, secret_sealed, now() as i64],
        )?;
        let w = find(&tx)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?;
        tx.commit()?;
        Ok((w, true))
    }

    fn webhooks(&self) -> Result<Vec<Webhook>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks w ORDER BY w.id"
        ))?;
        let rows = stmt.query_map([], |r| webhook_row(r, 0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn remove_webhook(&self, url: &str, customer: Option<&str>) -> Result<bool> {
        let conn = self.lock();
        Ok(conn.execute_cached(
            "DELETE FROM webhooks WHERE url = ?1 AND customer IS ?2",
            params![url, customer],
        )? > 0)
    }

    fn claim_deliveries(&self, now: u64, lease: u64, limit: usize) -> Result<Vec<Delivery>> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // Due, and nothing earlier for the same webhook and alert waiting:
        // a resolution never overtakes its opening.
        let ids: Vec<i64> = tx
            .prepare_cached(
                "UPDATE alert_deliveries SET next_at = ?2 WHERE id IN (
                   SELECT d.id FROM alert_deliveries d WHERE d.next_at <= ?1
                     AND NOT EXISTS (SELECT 1 FROM alert_deliveries e
                       WHERE e.webhook_id = d.webhook_id AND e.alert_id = d.alert_id AND e.id < d.id)
                   ORDER BY d.id LIMIT ?3)
                 RETURNING id",
            )?
            .query_map(params![now as i64, (now + lease) as i64, limit as i64], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut out = Vec::new();
        for id in ids {
            out.push(tx.query_row_cached(
                &format!(
                    "SELECT d.id, d.event, d.attempts, d.created_at, {WEBHOOK_COLUMNS}, {ALERT_COLUMNS}
                     FROM alert_deliveries d JOIN webhooks w ON w.id = d.webhook_id
                     JOIN alerts a ON a.id = d.alert_id WHERE d.id = ?1"
                ),
                [id],
                |r| {
                    Ok(Delivery {
                        id: r.get(0)?,
                        event: r.get(1)?,
                        attempts: r.get::<_, i64>(2)? as u32,
                        created_at: r.get::<_, i64>(3)? as u64,
                        webhook: webhook_row(r, 4)?,
                        alert: alert_row(r, 9)?,
                    })
                },
            )?);
        }
        tx.commit()?;
        out.sort_by_key(|d| d.id);
        Ok(out)
    }

    fn delivery_done(&self, id: i64) -> Result<()> {
        self.lock()
            .execute_cached("DELETE FROM alert_deliveries WHERE id = ?1", [id])?;
        Ok(())
    }

    fn delivery_failed(&self, id: i64, error: &str, next_at: u64) -> Result<()> {
        self.lock().execute_cached(
            "UPDATE alert_deliveries SET attempts = attempts + 1, last_error = ?2, next_at = ?3
             WHERE id = ?1",
            params![id, error, next_at as i64],
        )?;
        Ok(())
    }

    fn alert_events(&self, since: u64) -> Result<Vec<(MacAddr, Event)>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT mac, at, step, detail FROM events
             WHERE step IN (?1, ?2, ?3, ?4, ?5, ?6) AND at >= ?7 ORDER BY id",
        )?;
        let [a, b, c, d, e, f] = ALERT_EVENT_STEPS;
        let rows = stmt.query_map(params![a, b, c, d, e, f, since as i64], |r| {
            Ok((
                mac_col(r, 0)?,
                Event {
                    at: r.get::<_, i64>(1)? as u64,
                    step: r.get(2)?,
                    detail: r.get(3)?,
                },
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}
