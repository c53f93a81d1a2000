//! `levee release rollout|pause|resume|unblock` and the fleet half of
//! `levee release status`: staged rollouts kept in the central store.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use levee_proto::update::UpdateState;
use serde::Serialize;

use crate::releases::{self, channel, Layout};
use crate::store::{Appliance, ApplianceRef, Rollout, Store, UpdateRecord};

/// Starts or widens `channel`'s rollout of `version`.
pub fn start(
    ctx: &super::Ctx,
    layout: &Layout,
    ch: &str,
    version: &str,
    percent: u8,
    json: bool,
) -> anyhow::Result<()> {
    let state = releases::block_on(channel::state(layout, ch))?.with_context(|| {
        format!("channel `{ch}` has no releases (levee release publish IMAGE_DIR --channel {ch})")
    })?;
    let Some(entry) = state.release(version) else {
        let known: Vec<&str> = state.releases.iter().map(|r| r.version.as_str()).collect();
        bail!(
            "channel `{ch}` does not offer {version}; it offers: {} (publish or promote it first)",
            known.join(", ")
        );
    };
    let store = ctx.open_store()?;
    if let Some(cur) = store.rollout(ch)?.filter(|c| c.release > entry.release) {
        bail!(
            "channel `{ch}` already rolls out release {} ({}); a rollout never goes back to an older release (appliances refuse to downgrade)",
            cur.release,
            cur.version
        );
    }
    let r = store.set_rollout(ch, version, entry.release, percent)?;
    if json {
        return super::print_json(&r);
    }
    println!(
        "channel `{ch}`: rolling out {} (release {}) to {}% of its appliances{}",
        r.version,
        r.release,
        r.percent,
        if r.paused {
            " (paused: `levee release resume` to continue)"
        } else {
            ""
        }
    );
    Ok(())
}

/// Pauses or resumes a channel's rollout.
pub fn pause(ctx: &super::Ctx, ch: &str, paused: bool, json: bool) -> anyhow::Result<()> {
    levee_proto::release::validate_channel(ch)?;
    let r = ctx.open_store()?.set_rollout_paused(ch, paused)?;
    if json {
        return super::print_json(&r);
    }
    if paused {
        println!(
            "channel `{ch}`: rollout of {} paused; no appliance starts it until `levee release resume {ch}` (updates under way finish)",
            r.version
        );
    } else {
        println!(
            "channel `{ch}`: rollout of {} (release {}) resumed at {}%",
            r.version, r.release, r.percent
        );
    }
    Ok(())
}

/// Lets an appliance try a version again that rolled back on it.
pub fn unblock(
    ctx: &super::Ctx,
    version: &str,
    appliance: ApplianceRef,
    json: bool,
) -> anyhow::Result<()> {
    let store = ctx.open_store()?;
    let a = store
        .find_appliance(appliance)?
        .ok_or_else(|| crate::store::no_appliance(appliance))?;
    let rec = store.unblock_update(a.id, version)?;
    store.add_event(a.mac, "update", &format!("unblocked {version}"))?;
    if json {
        return super::print_json(&rec);
    }
    println!(
        "appliance {} (id {}): {version} unblocked; it is offered again while its channel's rollout includes it",
        a.mac, a.id
    );
    Ok(())
}

/// How the fleet stands on one release.
#[derive(Debug, Default, Serialize)]
pub struct Fleet {
    /// Appliances whose last heartbeat names this version.
    pub on: usize,
    pub updating: usize,
    pub committed: usize,
    pub rolled_back: usize,
    pub failed: usize,
    /// Each rollback: which appliance, why, and whether it is still blocked.
    pub rollbacks: Vec<Rollback>,
}

#[derive(Debug, Serialize)]
pub struct Rollback {
    pub mac: String,
    pub appliance_id: i64,
    pub reason: String,
    pub blocked: bool,
}

/// Per release number: the fleet's counts.
pub fn fleet(store: &dyn Store) -> anyhow::Result<(BTreeMap<String, usize>, BTreeMap<u64, Fleet>)> {
    let appliances: BTreeMap<i64, Appliance> = store
        .appliances()?
        .into_iter()
        .filter(|a| a.revoked_at.is_none())
        .map(|a| (a.id, a))
        .collect();
    let mut on: BTreeMap<String, usize> = BTreeMap::new();
    for a in appliances.values() {
        if let Some(v) = a.image_version() {
            *on.entry(v.to_string()).or_default() += 1;
        }
    }
    let mut by_release: BTreeMap<u64, Fleet> = BTreeMap::new();
    for u in store.update_records(None)? {
        let Some(a) = appliances.get(&u.appliance_id) else {
            continue;
        };
        count(by_release.entry(u.release).or_default(), &u, a);
    }
    Ok((on, by_release))
}

fn count(f: &mut Fleet, u: &UpdateRecord, a: &Appliance) {
    match u.state {
        s if s.in_progress() => f.updating += 1,
        UpdateState::Committed => f.committed += 1,
        UpdateState::Failed => f.failed += 1,
        // Channel checks are never update records (update_api.rs).
        s if s.is_channel_check() => f.failed += 1,
        _ => {
            f.rolled_back += 1;
            f.rollbacks.push(Rollback {
                mac: a.mac.to_string(),
                appliance_id: a.id,
                reason: u.reason.clone().unwrap_or_default(),
                blocked: u.blocked,
            });
        }
    }
}

/// The rollout line of `status`.
pub fn describe(r: &Rollout) -> String {
    format!(
        "rollout: {} (release {}) to {}%{}",
        r.version,
        r.release,
        r.percent,
        if r.paused { ", PAUSED" } else { "" }
    )
}

/// The updates part of `levee appliance show`: its rollout bucket, what the
/// rollout decides for it now, and its update records.
pub fn appliance_updates(
    store: &dyn Store,
    a: &Appliance,
) -> anyhow::Result<(serde_json::Value, Vec<String>)> {
    let bucket = crate::releases::rollout::bucket(a.id);
    let decision = crate::releases::rollout::offer_for(store, a, None)?;
    let records = store.update_records(Some(a.id))?;
    let mut lines = vec![match &decision {
        Ok(o) => format!(
            "  updates:        bucket {bucket}; offered {} (release {}) in channel {}",
            o.version, o.release, o.channel
        ),
        Err(why) => format!("  updates:        bucket {bucket}; no offer: {why}"),
    }];
    for r in &records {
        lines.push(format!(
            "    release {} ({}): {}{}{}, {}",
            r.release,
            r.version,
            r.state.as_str(),
            r.slot
                .as_deref()
                .map(|s| format!(" (slot {s})"))
                .unwrap_or_default(),
            if r.blocked { ", BLOCKED" } else { "" },
            r.reason.as_deref().unwrap_or("-")
        ));
    }
    let json = serde_json::json!({
        "bucket": bucket,
        "offer": decision.as_ref().ok(),
        "no_offer": decision.as_ref().err(),
        "records": records,
    });
    Ok((json, lines))
}
