//! SqliteStore: rollouts and update records.

use levee_proto::update::UpdateState;
use rusqlite::{params, OptionalExtension, Row};

use super::{Cached, SqliteStore};
use crate::store::rollouts::{check_percent, no_rollout, parse_state};
use crate::store::{now, Result, Rollout, RolloutStore, StoreError, UpdateRecord};

const ROLLOUT_COLS: &str = "channel, version, release_no, percent, paused, updated_at";
const UPDATE_COLS: &str = "appliance, release_no, version, state, reason, slot, blocked, at";

fn rollout_row(r: &Row) -> rusqlite::Result<Rollout> {
    Ok(Rollout {
        channel: r.get(0)?,
        version: r.get(1)?,
        release: r.get::<_, i64>(2)? as u64,
        percent: r.get::<_, i64>(3)?.clamp(0, 100) as u8,
        paused: r.get(4)?,
        updated_at: r.get::<_, i64>(5)? as u64,
    })
}

fn update_row(r: &Row) -> rusqlite::Result<(UpdateRecord, String)> {
    let state: String = r.get(3)?;
    Ok((
        UpdateRecord {
            appliance_id: r.get(0)?,
            release: r.get::<_, i64>(1)? as u64,
            version: r.get(2)?,
            // Parsed below, where a bad value can be an error of ours.
            state: UpdateState::Failed,
            reason: r.get(4)?,
            slot: r.get(5)?,
            blocked: r.get(6)?,
            at: r.get::<_, i64>(7)? as u64,
        },
        state,
    ))
}

fn finish((mut rec, state): (UpdateRecord, String)) -> Result<UpdateRecord> {
    rec.state = parse_state(&state)?;
    Ok(rec)
}

impl RolloutStore for SqliteStore {
    fn set_rollout(
        &self,
        channel: &str,
        version: &str,
        release: u64,
        percent: u8,
    ) -> Result<Rollout> {
        check_percent(percent)?;
        Ok(self.lock().query_row_cached(
            &format!(
                "INSERT INTO rollouts ({ROLLOUT_COLS}) VALUES (?1, ?2, ?3, ?4, 0, ?5)
                 ON CONFLICT(channel) DO UPDATE SET version = excluded.version,
                   release_no = excluded.release_no, percent = excluded.percent,
                   paused = CASE WHEN rollouts.release_no = excluded.release_no
                                 THEN rollouts.paused ELSE 0 END,
                   updated_at = excluded.updated_at
                 RETURNING {ROLLOUT_COLS}"
            ),
            params![channel, version, release as i64, percent, now() as i64],
            rollout_row,
        )?)
    }

    fn set_rollout_paused(&self, channel: &str, paused: bool) -> Result<Rollout> {
        self.lock()
            .query_row_cached(
                &format!(
                    "UPDATE rollouts SET paused = ?2, updated_at = ?3 WHERE channel = ?1
                     RETURNING {ROLLOUT_COLS}"
                ),
                params![channel, paused, now() as i64],
                rollout_row,
            )
            .optional()?
            .ok_or_else(|| no_rollout(channel))
    }

    fn rollout(&self, channel: &str) -> Result<Option<Rollout>> {
        Ok(self
            .lock()
            .query_row_cached(
                &format!("SELECT {ROLLOUT_COLS} FROM rollouts WHERE channel = ?1"),
                params![channel],
                rollout_row,
            )
            .optional()?)
    }

    fn rollouts(&self) -> Result<Vec<Rollout>> {
        let conn = self.lock();
        let mut st = conn.prepare(&format!(
            "SELECT {ROLLOUT_COLS} FROM rollouts ORDER BY channel"
        ))?;
        let rows = st.query_map([], rollout_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn record_update(
        &self,
        appliance_id: i64,
        version: &str,
        release: u64,
        state: UpdateState,
        reason: Option<&str>,
        slot: Option<&str>,
    ) -> Result<UpdateRecord> {
        let blocked = state == UpdateState::RolledBack;
        let row = self.lock().query_row_cached(
            &format!(
                "INSERT INTO updates ({UPDATE_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT(appliance, release_no) DO UPDATE SET version = excluded.version,
                   state = excluded.state, reason = excluded.reason,
                   slot = COALESCE(excluded.slot, updates.slot),
                   blocked = MAX(updates.blocked, excluded.blocked), at = excluded.at
                 RETURNING {UPDATE_COLS}"
            ),
            params![
                appliance_id,
                release as i64,
                version,
                state.as_str(),
                reason,
                slot,
                blocked,
                now() as i64
            ],
            update_row,
        )?;
        finish(row)
    }

    fn update_records(&self, appliance_id: Option<i64>) -> Result<Vec<UpdateRecord>> {
        let conn = self.lock();
        let mut st = conn.prepare(&format!(
            "SELECT {UPDATE_COLS} FROM updates WHERE ?1 IS NULL OR appliance = ?1
             ORDER BY appliance, release_no"
        ))?;
        let rows = st.query_map(params![appliance_id], update_row)?;
        rows.map(|r| finish(r?)).collect()
    }

    fn unblock_update(&self, appliance_id: i64, version: &str) -> Result<UpdateRecord> {
        let row = self
            .lock()
            .query_row_cached(
                &format!(
                    "UPDATE updates SET blocked = 0, at = ?3
                     WHERE appliance = ?1 AND version = ?2 AND blocked = 1
                     RETURNING {UPDATE_COLS}"
                ),
                params![appliance_id, version, now() as i64],
                update_row,
            )
            .optional()?;
        match row {
            Some(r) => finish(r),
            None => Err(StoreError::Invalid(format!(
                "version {version} is not blocked for appliance {appliance_id} (only a rolled-back update is)"
            ))),
        }
    }
}
