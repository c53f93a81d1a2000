//! SqliteStore: events.

use levee_pxe::boot::MacAddr;
use rusqlite::{params, Connection};

use super::{Cached, SqliteStore, EVENTS_KEPT};
use crate::store::{now, Event, EventStore, Result};

/// Appends a history entry inside a transaction (trimming is left to
/// [`EventStore::add_event`], which runs far more often).
pub(super) fn event(
    conn: &Connection,
    mac: MacAddr,
    step: &str,
    detail: &str,
) -> rusqlite::Result<()> {
    conn.execute_cached(
        "INSERT INTO events (mac, at, step, detail) VALUES (?1, ?2, ?3, ?4)",
        params![mac.to_string(), now() as i64, step, detail],
    )?;
    Ok(())
}

impl EventStore for SqliteStore {
    fn add_event(&self, mac: MacAddr, step: &str, detail: &str) -> Result<()> {
        let conn = self.lock();
        let mac = mac.to_string();
        let id = conn.query_row_cached(
            "INSERT INTO events (mac, at, step, detail) VALUES (?1, ?2, ?3, ?4) RETURNING id",
            params![mac, now() as i64, step, detail],
            |r| r.get::<_, i64>(0),
        )?;
        // Cheap trim: ids grow monotonically, so everything older than the
        // last EVENTS_KEPT ids of this machine can go.
        if id % 50 == 0 {
            conn.execute_cached(
                "DELETE FROM events WHERE mac = ?1 AND id <= (
                   SELECT id FROM events WHERE mac = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
                params![mac, EVENTS_KEPT],
            )?;
        }
        Ok(())
    }

    fn events(&self, mac: MacAddr, limit: usize) -> Result<Vec<Event>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT at, step, detail FROM (
               SELECT id, at, step, detail FROM events WHERE mac = ?1 ORDER BY id DESC LIMIT ?2)
             ORDER BY id",
        )?;
        let rows = stmt.query_map(params![mac.to_string(), limit as i64], |r| {
            Ok(Event {
                at: r.get::<_, i64>(0)? as u64,
                step: r.get(1)?,
                detail: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}
