//! PgStore: alerts, webhooks, deliveries (as in the SQLite store; claims
//! skip rows another server has locked).

use deadpool_postgres::GenericClient;
use levee_pxe::boot::MacAddr;
use tokio_postgres::Row;

use super::{corrupt, execute, query, query_opt, PgStore};
use crate::store::{
    now, Alert, AlertStore, Delivery, Event, NewAlert, Result, Webhook, ALERT_EVENT_STEPS,
    RESOLVED_KEPT_SECS,
};

const ALERT_COLUMNS: &str =
    "a.id, a.kind, a.subject, a.appliance_id, a.customer, a.severity, a.summary, a.opened_at, a.resolved_at";
const WEBHOOK_COLUMNS: &str = "w.id, w.url, w.customer, w.secret, w.created_at";

fn alert_row(r: &Row, at: usize) -> Result<Alert> {
    Ok(Alert {
        id: r.try_get(at)?,
        kind: r.try_get(at + 1)?,
        subject: r.try_get(at + 2)?,
        appliance_id: r.try_get(at + 3)?,
        customer: r.try_get(at + 4)?,
        severity: r.try_get(at + 5)?,
        summary: r.try_get(at + 6)?,
        opened_at: r.try_get::<_, i64>(at + 7)? as u64,
        resolved_at: r.try_get::<_, Option<i64>>(at + 8)?.map(|t| t as u64),
    })
}

fn webhook_row(r: &Row, at: usize) -> Result<Webhook> {
    Ok(Webhook {
        id: r.try_get(at)?,
        url: r.try_get(at + 1)?,
        customer: r.try_get(at + 2)?,
        secret_sealed: r.try_get(at + 3)?,
        created_at: r.try_get::<_, i64>(at + 4)? as u64,
    })
}

async fn queue(c: &impl GenericClient, alert: &Alert, event: &str) -> Result<()> {
    execute(
        c,
        "INSERT INTO alert_deliveries (webhook_id, alert_id, event, created_at, next_at)
         SELECT id, $1, $2, $3, $3 FROM webhooks WHERE customer IS NULL OR customer = $4",
        &[&alert.id, &event, &(now() as i64), &alert.customer],
    )
    .await?;
    Ok(())
}

async fn get_alert(c: &impl GenericClient, id: i64) -> Result<Alert> {
    let row = query_opt(
        c,
        &format!("SELECT {ALERT_COLUMNS} FROM alerts a WHERE a.id = $1"),
        &[&id],
    )
    .await?
    .ok_or_else(|| corrupt(format!("alert {id} vanished")))?;
    alert_row(&row, 0)
}

async fn find_webhook(
    c: &impl GenericClient,
    url: &str,
    customer: Option<&str>,
) -> Result<Option<Webhook>> {
    query_opt(
        c,
        &format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks w
             WHERE w.url = $1 AND w.customer IS NOT DISTINCT FROM $2"
        ),
        &[&url, &customer],
    )
    .await?
    .map(|r| webhook_row(&r, 0))
    .transpose()
}

impl AlertStore for PgStore {
    fn open_alerts(&self) -> Result<Vec<Alert>> {
        self.alerts(false, i64::MAX as usize)
    }

    fn alerts(&self, resolved: bool, limit: usize) -> Result<Vec<Alert>> {
        self.block(async {
            let c = self.conn().await?;
            query(
                &c,
                &format!(
                    "SELECT {ALERT_COLUMNS} FROM alerts a WHERE $1 OR a.resolved_at IS NULL
                     ORDER BY a.id DESC LIMIT $2"
                ),
                &[&resolved, &(limit.min(i64::MAX as usize) as i64)],
            )
            .await?
            .iter()
            .map(|r| alert_row(r, 0))
            .collect()
        })
    }

    fn open_alert(&self, a: &NewAlert) -> Result<Option<Alert>> {
        self.block(async {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            let row = query_opt(
                &tx,
                "INSERT INTO alerts (kind, subject, appliance_id, customer, severity, summary, opened_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (kind, subject) WHERE resolved_at IS NULL DO NOTHING RETURNING id",
                &[&a.kind, &a.subject, &a.appliance_id, &a.customer, &a.severity, &a.summary, &(now() as i64)],
            )
            .await?;
            let Some(row) = row else { return Ok(None) };
            let alert = get_alert(&tx, row.try_get(0)?).await?;
            queue(&tx, &alert, "opened").await?;
            tx.commit().await?;
            Ok(Some(alert))
        })
    }

    fn resolve_alert(&self, id: i64) -> Result<Option<Alert>> {
        self.block(async {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            let t = now();
            let changed = execute(
                &tx,
                "UPDATE alerts SET resolved_at = $2 WHERE id = $1 AND resolved_at IS NULL",
                &[&id, &(t as i64)],
            )
            .await?;
            if changed == 0 {
                return Ok(None);
            }
            let alert = get_alert(&tx, id).await?;
            queue(&tx, &alert, "resolved").await?;
            execute(
                &tx,
                "DELETE FROM alerts WHERE resolved_at < $1",
                &[&(t.saturating_sub(RESOLVED_KEPT_SECS) as i64)],
            )
            .await?;
            tx.commit().await?;
            Ok(Some(alert))
        })
    }

    fn set_webhook(
        &self,
        url: &str,
        customer: Option<&str>,
        secret_sealed: &str,
    ) -> Result<(Webhook, bool)> {
        self.block(async {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            if let Some(w) = find_webhook(&tx, url, customer).await? {
                return Ok((w, false));
            }
            execute(
                &tx,
                "INSERT INTO webhooks (url, customer, secret, created_at) VALUES ($1, $2, $3, $4)",
                &[&url, &customer, &secret_sealed, &(now() as i64)],
            )
            .await?;
            let w = find_webhook(&tx, url, customer)
                .await?
                .ok_or_else(|| corrupt("webhook vanished"))?;
            tx.commit().await?;
            Ok((w, true))
        })
    }

    fn webhooks(&self) -> Result<Vec<Webhook>> {
        self.block(async {
            let c = self.conn().await?;
            query(
                &c,
                &format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks w ORDER BY w.id"),
                &[],
            )
            .await?
            .iter()
            .map(|r| webhook_row(r, 0))
            .collect()
        })
    }

    fn remove_webhook(&self, url: &str, customer: Option<&str>) -> Result<bool> {
        self.block(async {
            let c = self.conn().await?;
            Ok(execute(
                &c,
                "DELETE FROM webhooks WHERE url = $1 AND customer IS NOT DISTINCT FROM $2",
                &[&url, &customer],
            )
            .await?
                > 0)
        })
    }

    fn claim_deliveries(&self, now: u64, lease: u64, limit: usize) -> Result<Vec<Delivery>> {
        self.block(async {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            let rows = query(
                &tx,
                &format!(
                    "WITH due AS (
                       SELECT d.id FROM alert_deliveries d WHERE d.next_at <= $1
                         AND NOT EXISTS (SELECT 1 FROM alert_deliveries e
                           WHERE e.webhook_id = d.webhook_id AND e.alert_id = d.alert_id AND e.id < d.id)
                       ORDER BY d.id LIMIT $3 FOR UPDATE SKIP LOCKED),
                     claimed AS (
                       UPDATE alert_deliveries SET next_at = $2 WHERE id IN (SELECT id FROM due)
                       RETURNING id, webhook_id, alert_id, event, attempts, created_at)
                     SELECT d.id, d.event, d.attempts, d.created_at, {WEBHOOK_COLUMNS}, {ALERT_COLUMNS}
                     FROM claimed d JOIN webhooks w ON w.id = d.webhook_id
                     JOIN alerts a ON a.id = d.alert_id ORDER BY d.id"
                ),
                &[&(now as i64), &((now + lease) as i64), &(limit as i64)],
            )
            .await?;
            let out = rows
                .iter()
                .map(|r| {
                    Ok(Delivery {
                        id: r.try_get(0)?,
                        event: r.try_get(1)?,
                        attempts: r.try_get::<_, i64>(2)? as u32,
                        created_at: r.try_get::<_, i64>(3)? as u64,
                        webhook: webhook_row(r, 4)?,
                        alert: alert_row(r, 9)?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            tx.commit().await?;
            Ok(out)
        })
    }

    fn delivery_done(&self, id: i64) -> Result<()> {
        self.block(async {
            let c = self.conn().await?;
            execute(&c, "DELETE FROM alert_deliveries WHERE id = $1", &[&id]).await?;
            Ok(())
        })
    }

    fn delivery_failed(&self, id: i64, error: &str, next_at: u64) -> Result<()> {
        self.block(async {
            let c = self.conn().await?;
            execute(
                &c,
                "UPDATE alert_deliveries SET attempts = attempts + 1, last_error = $2, next_at = $3
                 WHERE id = $1",
                &[&id, &error, &(next_at as i64)],
            )
            .await?;
            Ok(())
        })
    }

    fn alert_events(&self, since: u64) -> Result<Vec<(MacAddr, Event)>> {
        self.block(async {
            let c = self.conn().await?;
            let [a, b, d, e, f, g] = ALERT_EVENT_STEPS;
            query(
                &c,
                "SELECT mac, at, step, detail FROM events
                 WHERE step IN ($1, $2, $3, $4, $5, $6) AND at >= $7 ORDER BY id",
                &[&a, &b, &d, &e, &f, &g, &(since as i64)],
            )
            .await?
            .iter()
            .map(|r| {
                let mac: String = r.try_get(0)?;
                Ok((
                    mac.parse().map_err(corrupt)?,
                    Event {
                        at: r.try_get::<_, i64>(1)? as u64,
                        step: r.try_get(2)?,
                        detail: r.try_get(3)?,
                    },
                ))
            })
            .collect()
        })
    }
}
