//! The staged-rollout decision for one appliance, as a pure function of the
//! channel's rollout and what the store knows of the appliance.
//!
//! Each appliance has a stable bucket 0-99 (a hash of its appliance id): a
//! rollout to `percent` reaches the appliances whose bucket is below it, so
//! raising 10 -> 50 -> 100 only ever adds appliances, and the same ones go
//! first for a given rollout percentage. A release that rolled back on an
//! appliance is never offered to it again until `levee release unblock`.

use levee_proto::update::{UpdateOffer, UpdateState};
use sha2::{Digest, Sha256};

use crate::store::{Appliance, Rollout, Store, UpdateRecord};

/// The appliance's rollout bucket, 0-99:
/// `u64::from_be_bytes(sha256("levee-rollout:" + decimal id)[..8]) % 100`.
pub fn bucket(appliance_id: i64) -> u8 {
    let digest = Sha256::digest(format!("levee-rollout:{appliance_id}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % 100) as u8
}

/// Whether a rollout to `percent` reaches this appliance.
pub fn reaches(appliance_id: i64, percent: u8) -> bool {
    bucket(appliance_id) < percent
}

/// What the rollout decides for one appliance: an offer, or why not.
pub fn decide(
    rollout: Option<&Rollout>,
    appliance_id: i64,
    running_version: Option<&str>,
    records: &[UpdateRecord],
) -> Result<UpdateOffer, String> {
    let Some(r) = rollout else {
        return Err("no rollout in its channel".into());
    };
    if running_version == Some(r.version.as_str()) {
        return Err(format!("already runs {}", r.version));
    }
    // A committed release at or above the rollout's: nothing older is
    // offered (the agent would refuse it too).
    if let Some(newer) = records
        .iter()
        .filter(|u| u.appliance_id == appliance_id)
        .find(|u| u.state == UpdateState::Committed && u.release >= r.release)
    {
        if newer.release == r.release || running_version.is_none() {
            return Err(format!("committed release {} already", newer.release));
        }
    }
    if let Some(u) = records
        .iter()
        .find(|u| u.appliance_id == appliance_id && u.release == r.release && u.blocked)
    {
        return Err(format!(
            "release {} ({}) rolled back here ({}); `levee release unblock {} --appliance ...` to retry",
            r.release,
            r.version,
            u.reason.as_deref().unwrap_or("no reason given"),
            r.version
        ));
    }
    if r.paused {
        return Err(format!("the rollout of {} is paused", r.version));
    }
    let b = bucket(appliance_id);
    if b >= r.percent {
        return Err(format!("outside the rollout's {}% (bucket {b})", r.percent));
    }
    Ok(UpdateOffer {
        channel: r.channel.clone(),
        version: r.version.clone(),
        release: r.release,
    })
}

/// The rollout's decision for `a`, which runs `running_version`.
pub fn offer_for(
    store: &dyn Store,
    a: &Appliance,
    running_version: Option<&str>,
) -> Result<Result<UpdateOffer, String>, crate::store::StoreError> {
    let Some(customer) = a.customer.as_deref() else {
        return Ok(Err("no customer".into()));
    };
    let Some(record) = store.customer(customer)? else {
        return Ok(Err(format!("customer {customer} does not exist")));
    };
    let channel = &record.config.update_channel;
    let r = store.rollout(channel)?;
    let records = store.update_records(Some(a.id))?;
    let running = running_version.or(a.image_version());
    Ok(decide(r.as_ref(), a.id, running, &records))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(percent: u8, paused: bool) -> Rollout {
        Rollout {
            channel: "stable".into(),
            version: "v2".into(),
            release: 2,
            percent,
            paused,
            updated_at: 0,
        }
    }

    fn record(id: i64, release: u64, state: UpdateState, blocked: bool) -> UpdateRecord {
        UpdateRecord {
            appliance_id: id,
            release,
            version: format!("v{release}"),
            state,
            reason: Some("health check failed".into()),
            slot: Some("b".into()),
            blocked,
            at: 0,
        }
    }

    #[test]
    fn buckets_are_stable_and_spread() {
        // Golden values: the formula is documented (docs/UPDATES.md) and
        // must not change under a running rollout.
        assert_eq!(bucket(1), bucket(1));
        let mut counts = [0u32; 10];
        for id in 1..=10_000 {
            counts[bucket(id) as usize / 10] += 1;
        }
        for c in counts {
            assert!((850..1150).contains(&c), "{counts:?}");
        }
        // Widening only adds appliances.
        for id in 1..500 {
            if reaches(id, 10) {
                assert!(reaches(id, 50) && reaches(id, 100));
            }
            assert!(reaches(id, 100));
        }
        let inside = (1..=1000).filter(|id| reaches(*id, 50)).count();
        assert!((400..600).contains(&inside), "{inside}");
    }

    #[test]
    fn decisions() {
        let inside = (1..).find(|id| bucket(*id) < 50).unwrap();
        let outside = (1..).find(|id| bucket(*id) >= 50).unwrap();
        let r = rollout(50, false);
        let offer = decide(Some(&r), inside, Some("v1"), &[]).unwrap();
        assert_eq!((offer.release, offer.version.as_str()), (2, "v2"));
        assert!(decide(Some(&r), outside, Some("v1"), &[])
            .unwrap_err()
            .contains("outside"));
        assert!(decide(None, inside, Some("v1"), &[]).is_err());
        assert!(decide(Some(&rollout(50, true)), inside, Some("v1"), &[])
            .unwrap_err()
            .contains("paused"));
        assert!(decide(Some(&r), inside, Some("v2"), &[])
            .unwrap_err()
            .contains("already"));
        // Blocked after a rollback, until unblocked.
        let blocked = [record(inside, 2, UpdateState::RolledBack, true)];
        let why = decide(Some(&r), inside, Some("v1"), &blocked).unwrap_err();
        assert!(why.contains("rolled back") && why.contains("health check failed"));
        let unblocked = [record(inside, 2, UpdateState::RolledBack, false)];
        assert!(decide(Some(&r), inside, Some("v1"), &unblocked).is_ok());
        // Another appliance's block is not ours.
        let theirs = [record(inside + 1, 2, UpdateState::RolledBack, true)];
        assert!(decide(Some(&r), inside, Some("v1"), &theirs).is_ok());
        // Committed already (heartbeat not in yet).
        let done = [record(inside, 2, UpdateState::Committed, false)];
        assert!(decide(Some(&r), inside, None, &done).is_err());
        // 100% reaches everyone.
        assert!(decide(Some(&rollout(100, false)), outside, Some("v1"), &[]).is_ok());
    }
}
