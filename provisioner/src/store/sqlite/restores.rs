//! SqliteStore: restore requests.

use levee_proto::restore_api::{RestoreState, RestoreStatus};
use rusqlite::{params, OptionalExtension, Row};

use super::{Cached, SqliteStore};
use crate::store::restores::{
    allowed_from_params, cancel_outcome, move_outcome, restore_record, same_again,
    withdrawn_reason, RestoreMove, RESTORES_KEPT, RESTORE_COLUMNS,
};
use crate::store::{now, NewRestore, RestoreRecord, RestoreStore, Result};

fn restore_row(r: &Row) -> rusqlite::Result<RestoreRecord> {
    Ok(restore_record!(r, get))
}

impl SqliteStore {
    fn restore_of(&self, appliance: i64, id: i64) -> Result<Option<RestoreRecord>> {
        Ok(self
            .lock()
            .query_row_cached(
                &format!(
                    "SELECT {RESTORE_COLUMNS} FROM restores WHERE id = ?1 AND appliance_id = ?2"
                ),
                params![id, appliance],
                restore_row,
            )
            .optional()?)
    }
}

impl RestoreStore for SqliteStore {
    fn add_restore(&self, appliance: i64, r: &NewRestore) -> Result<RestoreRecord> {
        let id: i64 = {
            let conn = self.lock();
            let id = conn.query_row_cached(
                "INSERT INTO restores (appliance_id, snapshot, path, target, credentials_of,
                   state, requested_at, files, bytes, errors)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'requested', ?6, 0, 0, 0) RETURNING id",
                params![
                    appliance,
                    r.snapshot,
                    r.path,
                    r.target,
                    r.credentials_of,
                    now() as i64
                ],
                |row| row.get(0),
            )?;
            // Finished requests beyond the newest RESTORES_KEPT go.
            conn.execute_cached(
                "DELETE FROM restores WHERE appliance_id = ?1
                   AND state IN ('done', 'failed', 'cancelled')
                   AND id <= (SELECT id FROM restores WHERE appliance_id = ?1
                              ORDER BY id DESC LIMIT 1 OFFSET ?2)",
                params![appliance, RESTORES_KEPT],
            )?;
            id
        };
        self.restore_of(appliance, id)?
            .ok_or_else(|| crate::store::StoreError::Corrupt(format!("restore {id} vanished")))
    }

    fn restores(&self, appliance: i64, limit: usize) -> Result<Vec<RestoreRecord>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {RESTORE_COLUMNS} FROM restores WHERE appliance_id = ?1
             ORDER BY id DESC LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![appliance, limit as i64], restore_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn pending_restores(&self, appliance: i64) -> Result<Vec<RestoreRecord>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {RESTORE_COLUMNS} FROM restores
             WHERE appliance_id = ?1 AND state IN ('requested', 'running', 'cancelling')
             ORDER BY id"
        ))?;
        let rows = stmt.query_map(params![appliance], restore_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn set_restore_state(&self, appliance: i64, s: &RestoreStatus) -> Result<RestoreMove> {
        let Some(current) = self.restore_of(appliance, s.id)? else {
            return Ok(RestoreMove::NotFound);
        };
        if same_again(&current, s) && s.state.finished() {
            return Ok(RestoreMove::Moved(current));
        }
        let from = allowed_from_params(s.state);
        let t = now() as i64;
        let (started, ended) = match s.state {
            RestoreState::Running => (Some(t), None),
            _ => (None, Some(t)),
        };
        // The state condition in the statement: two statuses at once
        // cannot both move it. A progress report (`running`) of a request
        // ops is cancelling keeps it `cancelling`.
        let moved = self.lock().execute_cached(
            "UPDATE restores SET
               state = CASE WHEN state = 'cancelling' AND ?3 = 'running' THEN state ELSE ?3 END,
               reason = ?4,
               started_at = COALESCE(started_at, ?5), ended_at = COALESCE(?6, ended_at),
               files = ?7, bytes = ?8, errors = ?9
             WHERE id = ?1 AND appliance_id = ?2 AND state IN (?10, ?11, ?12)",
            params![
                s.id,
                appliance,
                s.state.as_str(),
                s.reason,
                started,
                ended,
                crate::store::runs::db_int(s.files),
                crate::store::runs::db_int(s.bytes),
                crate::store::runs::db_int(s.errors),
                from[0],
                from[1],
                from[2],
            ],
        )?;
        Ok(move_outcome(
            moved as u64,
            self.restore_of(appliance, s.id)?,
        ))
    }

    fn cancel_restore(&self, appliance: i64, id: i64, operator: &str) -> Result<RestoreMove> {
        // One statement: the appliance's `running` cannot slip in between.
        let moved = self.lock().execute_cached(
            "UPDATE restores SET
               state = CASE state WHEN 'requested' THEN 'cancelled' ELSE 'cancelling' END,
               ended_at = CASE state WHEN 'requested' THEN ?3 ELSE ended_at END,
               reason = CASE state WHEN 'requested' THEN ?5 ELSE reason END,
               cancel_asked_at = ?3, cancel_asked_by = ?4
             WHERE id = ?1 AND appliance_id = ?2 AND state IN ('requested', 'running')",
            params![
                id,
                appliance,
                now() as i64,
                operator,
                withdrawn_reason(operator)
            ],
        )?;
        Ok(cancel_outcome(
            moved as u64,
            self.restore_of(appliance, id)?,
        ))
    }
}
