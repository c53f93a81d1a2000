//! PgStore: rollouts and update records.

use levee_proto::update::UpdateState;
use tokio_postgres::Row;

use super::{query, query_one, query_opt, PgStore};
use crate::store::rollouts::{check_percent, no_rollout, parse_state};
use crate::store::{now, Result, Rollout, RolloutStore, StoreError, UpdateRecord};

const ROLLOUT_COLS: &str = "channel, version, release_no, percent, paused, updated_at";
const UPDATE_COLS: &str = "appliance, release_no, version, state, reason, slot, blocked, at";

fn rollout_row(r: &Row) -> Result<Rollout> {
    Ok(Rollout {
        channel: r.try_get(0)?,
        version: r.try_get(1)?,
        release: r.try_get::<_, i64>(2)? as u64,
        percent: r.try_get::<_, i32>(3)?.clamp(0, 100) as u8,
        paused: r.try_get(4)?,
        updated_at: r.try_get::<_, i64>(5)? as u64,
    })
}

fn update_row(r: &Row) -> Result<UpdateRecord> {
    Ok(UpdateRecord {
        appliance_id: r.try_get(0)?,
        release: r.try_get::<_, i64>(1)? as u64,
        version: r.try_get(2)?,
        state: parse_state(r.try_get(3)?)?,
        reason: r.try_get(4)?,
        slot: r.try_get(5)?,
        blocked: r.try_get(6)?,
        at: r.try_get::<_, i64>(7)? as u64,
    })
}

impl RolloutStore for PgStore {
    fn set_rollout(
        &self,
        channel: &str,
        version: &str,
        release: u64,
        percent: u8,
    ) -> Result<Rollout> {
        check_percent(percent)?;
        self.block(async {
            let c = self.conn().await?;
            let row = query_one(
                &c,
                &format!(
                    "INSERT INTO rollouts ({ROLLOUT_COLS}) VALUES ($1, $2, $3, $4, FALSE, $5)
                     ON CONFLICT (channel) DO UPDATE SET version = excluded.version,
                       release_no = excluded.release_no, percent = excluded.percent,
                       paused = CASE WHEN rollouts.release_no = excluded.release_no
                                     THEN rollouts.paused ELSE FALSE END,
                       updated_at = excluded.updated_at
                     RETURNING {ROLLOUT_COLS}"
                ),
                &[
                    &channel,
                    &version,
                    &(release as i64),
                    &(percent as i32),
                    &(now() as i64),
                ],
            )
            .await?;
            rollout_row(&row)
        })
    }

    fn set_rollout_paused(&self, channel: &str, paused: bool) -> Result<Rollout> {
        self.block(async {
            let c = self.conn().await?;
            let row = query_opt(
                &c,
                &format!(
                    "UPDATE rollouts SET paused = $2, updated_at = $3 WHERE channel = $1
                     RETURNING {ROLLOUT_COLS}"
                ),
                &[&channel, &paused, &(now() as i64)],
            )
            .await?;
            row.as_ref()
                .map(rollout_row)
                .transpose()?
                .ok_or_else(|| no_rollout(channel))
        })
    }

    fn rollout(&self, channel: &str) -> Result<Option<Rollout>> {
        self.block(async {
            let c = self.conn().await?;
            let row = query_opt(
                &c,
                &format!("SELECT {ROLLOUT_COLS} FROM rollouts WHERE channel = $1"),
                &[&channel],
            )
            .await?;
            row.as_ref().map(rollout_row).transpose()
        })
    }

    fn rollouts(&self) -> Result<Vec<Rollout>> {
        self.block(async {
            let c = self.conn().await?;
            query(
                &c,
                &format!("SELECT {ROLLOUT_COLS} FROM rollouts ORDER BY channel"),
                &[],
            )
            .await?
            .iter()
            .map(rollout_row)
            .collect()
        })
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
        self.block(async {
            let c = self.conn().await?;
            let row = query_one(
                &c,
                &format!(
                    "INSERT INTO updates ({UPDATE_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     ON CONFLICT (appliance, release_no) DO UPDATE SET version = excluded.version,
                       state = excluded.state, reason = excluded.reason,
                       slot = COALESCE(excluded.slot, updates.slot),
                       blocked = updates.blocked OR excluded.blocked, at = excluded.at
                     RETURNING {UPDATE_COLS}"
                ),
                &[
                    &appliance_id,
                    &(release as i64),
                    &version,
                    &state.as_str(),
                    &reason,
                    &slot,
                    &blocked,
                    &(now() as i64),
                ],
            )
            .await?;
            update_row(&row)
        })
    }

    fn update_records(&self, appliance_id: Option<i64>) -> Result<Vec<UpdateRecord>> {
        self.block(async {
            let c = self.conn().await?;
            query(
                &c,
                &format!(
                    "SELECT {UPDATE_COLS} FROM updates WHERE $1::BIGINT IS NULL OR appliance = $1
                     ORDER BY appliance, release_no"
                ),
                &[&appliance_id],
            )
            .await?
            .iter()
            .map(update_row)
            .collect()
        })
    }

    fn unblock_update(&self, appliance_id: i64, version: &str) -> Result<UpdateRecord> {
        self.block(async {
            let c = self.conn().await?;
            let row = query_opt(
                &c,
                &format!(
                    "UPDATE updates SET blocked = FALSE, at = $3
                     WHERE appliance = $1 AND version = $2 AND blocked
                     RETURNING {UPDATE_COLS}"
                ),
                &[&appliance_id, &version, &(now() as i64)],
            )
            .await?;
            match row {
                Some(r) => update_row(&r),
                None => Err(StoreError::Invalid(format!(
                    "version {version} is not blocked for appliance {appliance_id} (only a rolled-back update is)"
                ))),
            }
        })
    }
}
