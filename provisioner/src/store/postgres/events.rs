//! PgStore: events.

use deadpool_postgres::GenericClient;
use levee_pxe::boot::MacAddr;

use super::{execute, query, query_one, relaxed_tx, PgStore, EVENTS_KEPT};
use crate::store::{now, Event, EventStore, Result};

/// Appends a history entry inside a transaction (trimming is left to
/// [`EventStore::add_event`], which runs far more often).
pub(super) async fn event(
    c: &impl GenericClient,
    mac: MacAddr,
    step: &str,
    detail: &str,
) -> Result<()> {
    execute(
        c,
        "INSERT INTO events (mac, at, step, detail) VALUES ($1, $2, $3, $4)",
        &[&mac.to_string(), &(now() as i64), &step, &detail],
    )
    .await?;
    Ok(())
}

impl EventStore for PgStore {
    fn add_event(&self, mac: MacAddr, step: &str, detail: &str) -> Result<()> {
        let mac = mac.to_string();
        self.block(async {
            let mut c = self.conn().await?;
            let tx = relaxed_tx(&mut c).await?;
            let id: i64 = query_one(
                &tx,
                "INSERT INTO events (mac, at, step, detail) VALUES ($1, $2, $3, $4) RETURNING id",
                &[&mac, &(now() as i64), &step, &detail],
            )
            .await?
            .try_get(0)?;
            // Cheap trim, as in the SQLite store.
            if id % 50 == 0 {
                execute(
                    &tx,
                    "DELETE FROM events WHERE mac = $1 AND id <= (
                       SELECT id FROM events WHERE mac = $1 ORDER BY id DESC LIMIT 1 OFFSET $2)",
                    &[&mac, &EVENTS_KEPT],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn events(&self, mac: MacAddr, limit: usize) -> Result<Vec<Event>> {
        self.block(async {
            let c = self.conn().await?;
            query(&c,
                "SELECT at, step, detail FROM (
                   SELECT id, at, step, detail FROM events WHERE mac = $1 ORDER BY id DESC LIMIT $2) e
                 ORDER BY id",
                &[&mac.to_string(), &(limit as i64)],
            ).await?
            .iter()
            .map(|r| {
                Ok(Event {
                    at: r.try_get::<_, i64>(0)? as u64,
                    step: r.try_get(1)?,
                    detail: r.try_get(2)?,
                })
            })
            .collect()
        })
    }
}
