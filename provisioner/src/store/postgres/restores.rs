//! PgStore: restore requests.

use levee_proto::restore_api::{RestoreState, RestoreStatus};
use tokio_postgres::Row;

use super::{execute, query, query_one, query_opt, PgStore};
use crate::store::restores::{
    allowed_from_params, cancel_outcome, move_outcome, restore_record, same_again,
    withdrawn_reason, RestoreMove, RESTORES_KEPT, RESTORE_COLUMNS,
};
use crate::store::runs::db_int;
use crate::store::{now, NewRestore, RestoreRecord, RestoreStore, Result};

fn restore_row(r: &Row) -> Result<RestoreRecord> {
    Ok(restore_record!(r, try_get))
}

impl PgStore {
    fn restore_of(&self, appliance: i64, id: i64) -> Result<Option<RestoreRecord>> {
        self.block(async {
            let c = self.conn().await?;
            let row = query_opt(
                &c,
                &format!(
                    "SELECT {RESTORE_COLUMNS} FROM restores WHERE id = $1 AND appliance_id = $2"
                ),
                &[&id, &appliance],
            )
            .await?;
            row.as_ref().map(restore_row).transpose()
        })
    }
}

impl RestoreStore for PgStore {
    fn add_restore(&self, appliance: i64, r: &NewRestore) -> Result<RestoreRecord> {
        let id: i64 = self.block(async {
            let c = self.conn().await?;
            let row = query_one(
                &c,
                "INSERT INTO restores (appliance_id, snapshot, path, target, credentials_of,
                   state, requested_at, files, bytes, errors)
                 VALUES ($1, $2, $3, $4, $5, 'requested', $6, 0, 0, 0) RETURNING id",
                &[
                    &appliance,
                    &r.snapshot,
                    &r.path,
                    &r.target,
                    &r.credentials_of,
                    &(now() as i64),
                ],
            )
            .await?;
            // Finished requests beyond the newest RESTORES_KEPT go.
            execute(
                &c,
                "DELETE FROM restores WHERE appliance_id = $1
                   AND state IN ('done', 'failed', 'cancelled')
                   AND id <= (SELECT id FROM restores WHERE appliance_id = $1
                              ORDER BY id DESC LIMIT 1 OFFSET $2)",
                &[&appliance, &RESTORES_KEPT],
            )
            .await?;
            Ok(row.try_get(0)?)
        })?;
        self.restore_of(appliance, id)?
            .ok_or_else(|| crate::store::StoreError::Corrupt(format!("restore {id} vanished")))
    }

    fn restores(&self, appliance: i64, limit: usize) -> Result<Vec<RestoreRecord>> {
        self.block(async {
            let c = self.conn().await?;
            let rows = query(
                &c,
                &format!(
                    "SELECT {RESTORE_COLUMNS} FROM restores WHERE appliance_id = $1
                     ORDER BY id DESC LIMIT $2"
                ),
                &[&appliance, &(limit as i64)],
            )
            .await?;
            rows.iter().map(restore_row).collect()
        })
    }

    fn pending_restores(&self, appliance: i64) -> Result<Vec<RestoreRecord>> {
        self.block(async {
            let c = self.conn().await?;
            let rows = query(
                &c,
                &format!(
                    "SELECT {RESTORE_COLUMNS} FROM restores
                     WHERE appliance_id = $1 AND state IN ('requested', 'running', 'cancelling')
                     ORDER BY id"
                ),
                &[&appliance],
            )
            .await?;
            rows.iter().map(restore_row).collect()
        })
    }

    fn set_restore_state(&self, appliance: i64, s: &RestoreStatus) -> Result<RestoreMove> {
        let Some(current) = self.restore_of(appliance, s.id)? else {
            return Ok(RestoreMove::NotFound);
        };
        if same_again(&current, s) && s.state.finished() {
            return Ok(RestoreMove::Moved(current));
        }
        let [f0, f1, f2] = allowed_from_params(s.state);
        let t = now() as i64;
        let (started, ended) = match s.state {
            RestoreState::Running => (Some(t), None),
            _ => (None, Some(t)),
        };
        let moved = self.block(async {
            let c = self.conn().await?;
            // The state condition in the statement: two statuses at once
            // cannot both move it. A progress report (`running`) of a
            // request ops is cancelling keeps it `cancelling`.
            execute(
                &c,
                "UPDATE restores SET
                   state = CASE WHEN state = 'cancelling' AND $3 = 'running' THEN state ELSE $3 END,
                   reason = $4,
                   started_at = COALESCE(started_at, $5), ended_at = COALESCE($6, ended_at),
                   files = $7, bytes = $8, errors = $9
                 WHERE id = $1 AND appliance_id = $2 AND state IN ($10, $11, $12)",
                &[
                    &s.id,
                    &appliance,
                    &s.state.as_str(),
                    &s.reason,
                    &started,
                    &ended,
                    &db_int(s.files),
                    &db_int(s.bytes),
                    &db_int(s.errors),
                    &f0,
                    &f1,
                    &f2,
                ],
            )
            .await
        })?;
        Ok(move_outcome(moved, self.restore_of(appliance, s.id)?))
    }

    fn cancel_restore(&self, appliance: i64, id: i64, operator: &str) -> Result<RestoreMove> {
        let reason = withdrawn_reason(operator);
        let moved = self.block(async {
            let c = self.conn().await?;
            // One statement: the appliance's `running` cannot slip in
            // between.
            execute(
                &c,
                "UPDATE restores SET
                   state = CASE state WHEN 'requested' THEN 'cancelled' ELSE 'cancelling' END,
                   ended_at = CASE state WHEN 'requested' THEN $3 ELSE ended_at END,
                   reason = CASE state WHEN 'requested' THEN $5 ELSE reason END,
                   cancel_asked_at = $3, cancel_asked_by = $4
                 WHERE id = $1 AND appliance_id = $2 AND state IN ('requested', 'running')",
                &[&id, &appliance, &(now() as i64), &operator, &reason],
            )
            .await
        })?;
        Ok(cancel_outcome(moved, self.restore_of(appliance, id)?))
    }
}
