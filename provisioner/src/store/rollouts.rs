//! Staged rollouts of releases and each appliance's updates: which release
//! a channel rolls out to what share of its appliances, paused or not, and
//! per appliance and release how its update went (a rollback blocks that
//! release for that appliance until ops unblock it).

use levee_proto::update::UpdateState;
use serde::Serialize;

use super::Result;

/// A channel's rollout: `release` (image `version`) to `percent` of the
/// appliances following `channel`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rollout {
    pub channel: String,
    pub version: String,
    pub release: u64,
    /// 1-100.
    pub percent: u8,
    /// Paused: no appliance is offered the release until `resume`
    /// (updates already under way finish).
    pub paused: bool,
    pub updated_at: u64,
}

/// How one appliance's update to one release went (its latest report).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpdateRecord {
    pub appliance_id: i64,
    pub release: u64,
    pub version: String,
    pub state: UpdateState,
    pub reason: Option<String>,
    pub slot: Option<String>,
    /// Rolled back and not unblocked: never offered to it again.
    pub blocked: bool,
    pub at: u64,
}

/// Staged rollouts and the appliances' update reports.
pub trait RolloutStore {
    /// Starts or changes `channel`'s rollout (one per channel: a new
    /// release replaces the old one). Keeps `paused` as it was unless the
    /// release changes, which un-pauses.
    fn set_rollout(
        &self,
        channel: &str,
        version: &str,
        release: u64,
        percent: u8,
    ) -> Result<Rollout>;
    /// Pauses or resumes `channel`'s rollout; `NotFound` without one.
    fn set_rollout_paused(&self, channel: &str, paused: bool) -> Result<Rollout>;
    fn rollout(&self, channel: &str) -> Result<Option<Rollout>>;
    /// All rollouts, by channel.
    fn rollouts(&self) -> Result<Vec<Rollout>>;
    /// Records an appliance's report on its update to `release`, replacing
    /// its previous one for that release. `rolled-back` blocks the release
    /// for it; nothing but [`RolloutStore::unblock_update`] unblocks.
    fn record_update(
        &self,
        appliance_id: i64,
        version: &str,
        release: u64,
        state: UpdateState,
        reason: Option<&str>,
        slot: Option<&str>,
    ) -> Result<UpdateRecord>;
    /// Every appliance's records (`None`), or one appliance's; by
    /// appliance, then release.
    fn update_records(&self, appliance_id: Option<i64>) -> Result<Vec<UpdateRecord>>;
    /// Lifts the block of `version` for an appliance; `Invalid` if it is
    /// not blocked.
    fn unblock_update(&self, appliance_id: i64, version: &str) -> Result<UpdateRecord>;
}

pub(crate) fn check_percent(percent: u8) -> Result<()> {
    if (1..=100).contains(&percent) {
        Ok(())
    } else {
        Err(super::StoreError::Invalid(format!(
            "rollout percentage {percent} is not 1-100"
        )))
    }
}

pub(crate) fn no_rollout(channel: &str) -> super::StoreError {
    super::StoreError::NotFound {
        what: "rollout of channel",
        name: channel.to_string(),
        hint: ": start one with `levee release rollout CHANNEL VERSION --percent 10`",
    }
}

pub(crate) fn parse_state(s: &str) -> Result<UpdateState> {
    UpdateState::parse(s)
        .ok_or_else(|| super::StoreError::Corrupt(format!("unknown update state `{s}`")))
}
