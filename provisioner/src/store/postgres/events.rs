//! PgStore: events.

use levee_pxe::boot::MacAddr;
use postgres::GenericClient;

use super::{relaxed, PgStore, EVENTS_KEPT};
use crate::store::{now, Event, EventStore, Result};

pub(super) fn event<C: GenericClient>(
    c: &mut C,
    mac: MacAddr,
    step: &str,
    detail: &str,
) -> Result<()> {
    c.execute(
        "INSERT INTO events (mac, at, step, detail) VALUES ($1, $2, $3, $4)",
        &[&mac.to_string(), &(now() as i64), &step, &detail],
    )?;
    Ok(())
}

impl EventStore for PgStore {
    fn add_event(&self, mac: MacAddr, step: &str, detail: &str) -> Result<()> {
        let mac = mac.to_string();
        self.with(|c| {
            relaxed(c, |tx| {
            let id: i64 = tx
                .query_one(
                    "INSERT INTO events (mac, at, step, detail) VALUES ($1, $2, $3, $4) RETURNING id",
                    &[&mac, &(now() as i64), &step, &detail],
                )?
                .try_get(0)?;
            // Cheap trim, as in the SQLite store.
            if id % 50 == 0 {
                tx.execute(
                    "DELETE FROM events WHERE mac = $1 AND id <= (
                       SELECT id FROM events WHERE mac = $1 ORDER BY id DESC LIMIT 1 OFFSET $2)",
                    &[&mac, &EVENTS_KEPT],
                )?;
            }
            Ok(())
            })
        })
    }

    fn events(&self, mac: MacAddr, limit: usize) -> Result<Vec<Event>> {
        self.with(|c| {
            c.query(
                "SELECT at, step, detail FROM (
                   SELECT id, at, step, detail FROM events WHERE mac = $1 ORDER BY id DESC LIMIT $2) e
                 ORDER BY id",
                &[&mac.to_string(), &(limit as i64)],
            )?
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
