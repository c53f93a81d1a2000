//! The store test suite, written once against `&dyn Store` and run on
//! SQLite (a temp dir) and on PostgreSQL (a server the test starts itself).

use std::net::Ipv4Addr;

use levee_proto::config::CustomerConfig;
use levee_proto::image::{Artifact, ImageManifest};
use levee_proto::report::StatusReport;
use levee_pxe::boot::MacAddr;
use levee_pxe::dhcp::Lease;

use super::*;

// Run reports and alerts: their cases are in suite_fleet.rs.
#[path = "suite_fleet.rs"]
mod fleet_cases;
use fleet_cases::{
    alerts_open_once_and_queue_deliveries_in_order, operators_and_the_audit_log,
    runs_are_kept_once_bounded_and_summed_up, servers_of_a_fleet_are_recorded,
};
// An enrollment with a token as one unit: suite_enroll.rs.
#[path = "suite_enroll.rs"]
mod enroll_cases;
use enroll_cases::{
    an_enrollment_with_a_token_is_one_unit, recovery_rows_keep_keys_slots_and_grants,
    restore_requests_are_withdrawn_or_stopped_and_refuse_impossible_moves,
    restore_requests_move_on_once_and_only_for_their_appliance,
};

fn pending_keys_are_kept_until_enrollment(s: &dyn Store) {
    let (k1, k2) = ("a1".repeat(32), "b2".repeat(32));
    let a = s.appliance_seen(mac(50)).expect("seen");
    assert_eq!((a.pending_key.as_deref(), a.reinstall), (None, false));
    let (a, v) = s.keep_pending_key(a.id, &k1).expect("pending key");
    assert_eq!(
        (a.pending_key.as_deref(), v),
        (Some(k1.as_str()), PendingKey::Kept)
    );
    let (_, v) = s.keep_pending_key(a.id, &k1).expect("retry");
    assert_eq!(v, PendingKey::Same);
    // Another key (a new boot, or someone else with a fresh token) does
    // not replace it: refused and recorded as the conflict.
    let (a, v) = s.keep_pending_key(a.id, &k2).expect("pending key");
    assert_eq!(v, PendingKey::Conflict);
    assert_eq!(a.pending_key.as_deref(), Some(k1.as_str()));
    assert_eq!(a.key_conflict.as_deref(), Some(k2.as_str()));
    s.put_customer(&customer("acme", "5m")).expect("customer");
    // With a conflict, ops must say which key; a wrong one is refused.
    let err = s
        .approve_appliance(mac(50), "acme", None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("--fingerprint"), "{err}");
    let err = s
        .approve_appliance(mac(50), "acme", Some("c3c3-c3c3-c3c3-c3c3"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not match"), "{err}");
    assert!(!s
        .appliance(mac(50))
        .expect("get")
        .expect("there")
        .approved());
    let a = s
        .approve_appliance(mac(50), "acme", Some(&short_key(&k2)))
        .expect("approve");
    assert_eq!(
        a.pending_key.as_deref(),
        Some(k2.as_str()),
        "the chosen key"
    );
    assert_eq!(a.key_conflict, None);
    let a = s
        .record_certificate(a.id, "f1", now() + 1000, true)
        .expect("enroll");
    assert_eq!(a.pending_key, None, "enrollment forgets it");
    let steps: Vec<_> = s.events(mac(50), 50).expect("events");
    assert!(steps
        .iter()
        .any(|e| e.step == "pending-key" && e.detail.contains(&k1)));
    assert!(steps
        .iter()
        .any(|e| e.step == "key-conflict" && e.detail.contains(&k2)));
    assert!(s.keep_pending_key(9999, "k").is_err());
    // Without a conflict, a fingerprint is checked when given.
    let b = s.appliance_seen(mac(52)).expect("seen");
    s.keep_pending_key(b.id, &k1).expect("keep");
    assert!(s
        .approve_appliance(mac(52), "acme", Some(&short_key(&k2)))
        .is_err());
    s.approve_appliance(mac(52), "acme", Some(&short_key(&k1)))
        .expect("approve");
}

fn reinstall_is_one_shot_and_a_slot_completes_an_install(s: &dyn Store) {
    s.put_customer(&customer("acme", "5m")).expect("customer");
    let a = register_for(s, 51, "acme");
    let a = s.set_reinstall(a.id, true).expect("reinstall");
    assert!(a.reinstall);
    // Installing keeps the request; a heartbeat without a slot (still
    // booted from the network) does not complete the install.
    s.set_appliance_state(a.id, ApplianceState::Installing, None)
        .expect("installing");
    s.record_heartbeat(
        a.id,
        &Heartbeat {
            image_version: Some("v1"),
            slot: None,
        },
    )
    .expect("heartbeat");
    let a = s.appliance_by_id(a.id).expect("get").expect("there");
    assert_eq!((a.state, a.reinstall), (ApplianceState::Installing, true));
    // Back from disk: a heartbeat with a slot.
    s.record_heartbeat(
        a.id,
        &Heartbeat {
            image_version: Some("v1"),
            slot: Some("a"),
        },
    )
    .expect("heartbeat");
    let a = s.appliance_by_id(a.id).expect("get").expect("there");
    assert_eq!((a.state, a.reinstall), (ApplianceState::Installed, false));
    assert_eq!(a.slot.as_deref(), Some("a"));
    let last = s.events(mac(51), 1).expect("events").remove(0);
    assert!(last.detail.contains("came back from disk"), "{last:?}");
    // A later heartbeat of an installed appliance changes nothing.
    s.record_heartbeat(
        a.id,
        &Heartbeat {
            image_version: Some("v1"),
            slot: Some("a"),
        },
    )
    .expect("heartbeat");
    assert_eq!(
        s.appliance_by_id(a.id).expect("get").expect("there").state,
        ApplianceState::Installed
    );
    // Reported `installed` also clears the request; `failed` does not.
    s.set_reinstall(a.id, true).expect("reinstall");
    let a = s
        .set_appliance_state(a.id, ApplianceState::Failed, Some("disk gone"))
        .expect("failed");
    assert!(a.reinstall);
    let a = s
        .set_appliance_state(a.id, ApplianceState::Installed, None)
        .expect("installed");
    assert!(!a.reinstall);
    s.retire_appliance(a.id, "gone").expect("retire");
    assert!(s.set_reinstall(a.id, true).is_err());
}

fn certificates_are_recorded_and_replaced(s: &dyn Store) {
    s.put_customer(&customer("acme", "5m")).expect("customer");
    let a = register_for(s, 7, "acme");
    assert_eq!(a.cert_fingerprint, None);
    let live = now() + 1000;
    let a = s
        .record_certificate(a.id, "f1", live, true)
        .expect("enroll");
    assert_eq!(a.state, ApplianceState::Enrolled);
    assert_eq!(a.cert_fingerprint.as_deref(), Some("f1"));
    assert_eq!(a.cert_not_after, Some(live));
    assert!(a.has_live_cert(now()));
    s.set_appliance_state(a.id, ApplianceState::Installed, None)
        .expect("state");
    // A renewal replaces the certificate and keeps the state.
    let a = s
        .record_certificate(a.id, "f2", live, false)
        .expect("renew");
    assert_eq!(a.state, ApplianceState::Installed);
    assert_eq!(a.cert_fingerprint.as_deref(), Some("f2"));
    // A new enrollment over a live certificate: only once ops armed it.
    let err = s.record_certificate(a.id, "evil", live, true).unwrap_err();
    assert!(err.to_string().contains("reenroll"), "{err}");
    assert_eq!(
        s.appliance_by_id(a.id)
            .expect("get")
            .expect("there")
            .cert_fingerprint
            .as_deref(),
        Some("f2")
    );
    let a = s.set_reenroll(a.id, true).expect("arm");
    assert!(a.reenroll);
    let a = s
        .record_certificate(a.id, "f3", live, true)
        .expect("re-enroll");
    assert_eq!(
        (a.cert_fingerprint.as_deref(), a.reenroll),
        (Some("f3"), false)
    );
    assert!(
        s.record_certificate(a.id, "f4", live, true).is_err(),
        "one only"
    );
    let steps: Vec<String> = s
        .events(mac(7), 50)
        .expect("events")
        .into_iter()
        .map(|e| e.step)
        .collect();
    for step in [
        "enrolled",
        "renewed",
        "reenroll",
        "cert-revoked",
        "reenrolled",
    ] {
        assert!(steps.contains(&step.to_string()), "{step}: {steps:?}");
    }
    s.retire_appliance(a.id, "gone").expect("retire");
    assert!(matches!(
        s.record_certificate(a.id, "f5", 300, true),
        Err(StoreError::Invalid(_))
    ));
    assert!(s.set_reenroll(a.id, true).is_err(), "retired");
}

fn tokens_are_one_use_bound_and_short_lived(s: &dyn Store) {
    // Near the real clock: put_token drops rows long expired by it.
    let t0 = now();
    s.put_token("aa", mac(1), t0 + 900, None).expect("put");
    s.put_token("cc", mac(2), t0 + 900, None).expect("put");
    assert_eq!(
        s.take_token("zz", mac(1), t0, None).expect("take"),
        TokenCheck::Unknown
    );
    // The wrong MAC does not burn the token for its own machine.
    assert_eq!(
        s.take_token("cc", mac(1), t0, None).expect("take"),
        TokenCheck::OtherMac
    );
    assert_eq!(
        s.take_token("cc", mac(2), t0, None).expect("take"),
        TokenCheck::Valid
    );
    assert_eq!(
        s.take_token("aa", mac(1), t0 + 10, None).expect("take"),
        TokenCheck::Valid
    );
    assert_eq!(
        s.take_token("aa", mac(1), t0 + 11, None).expect("take"),
        TokenCheck::Used
    );
    s.put_token("bb", mac(1), t0 + 900, None).expect("put");
    assert_eq!(
        s.take_token("bb", mac(1), t0 + 900, None).expect("take"),
        TokenCheck::Expired
    );
    assert_eq!(
        s.take_token("bb", mac(1), t0 + 2000, None).expect("take"),
        TokenCheck::Expired
    );
}

fn one_live_token_per_mac_bound_to_its_lease(s: &dyn Store) {
    let t0 = now();
    let ip: std::net::IpAddr = "10.0.0.7".parse().expect("ip");
    let other: std::net::IpAddr = "10.0.0.8".parse().expect("ip");
    s.put_token("t1", mac(3), t0 + 900, None).expect("put");
    s.put_token("t2", mac(3), t0 + 900, Some(ip)).expect("put");
    // The newer token invalidated the older.
    assert_eq!(
        s.take_token("t1", mac(3), t0, None).expect("take"),
        TokenCheck::Unknown
    );
    // Bound to the leased address: from another, refused and not burnt.
    assert_eq!(
        s.take_token("t2", mac(3), t0, Some(other)).expect("take"),
        TokenCheck::OtherAddress
    );
    assert_eq!(
        s.take_token("t2", mac(3), t0, None).expect("take"),
        TokenCheck::OtherAddress
    );
    assert!(s.report_token_ok("t2", mac(3), t0).expect("report"), "live");
    assert_eq!(
        s.take_token("t2", mac(3), t0 + 5, Some(ip)).expect("take"),
        TokenCheck::Valid
    );
    // A redeemed token authenticates reports for an hour, for its MAC only.
    assert!(s.report_token_ok("t2", mac(3), t0 + 60).expect("report"));
    assert!(!s.report_token_ok("t2", mac(4), t0 + 60).expect("report"));
    assert!(!s
        .report_token_ok("t2", mac(3), t0 + 5 + REPORT_GRACE_SECS)
        .expect("report"));
    assert!(!s.report_token_ok("nope", mac(3), t0).expect("report"));
    // A used token is not dropped by the next one (its hour of reports).
    s.put_token("t3", mac(3), t0 + 900, None).expect("put");
    assert!(s.report_token_ok("t2", mac(3), t0 + 60).expect("report"));
    assert!(!s.report_token_ok("t3", mac(3), t0 + 900).expect("expired"));
}

/// Registers `mac(n)` for `customer`, nothing else set.
fn register_for(s: &dyn Store, n: u8, customer: &str) -> Appliance {
    s.register_appliance(
        mac(n),
        &Registration {
            customer: Some(customer),
            ..Default::default()
        },
    )
    .expect("register")
}

fn mac(n: u8) -> MacAddr {
    format!("52:54:00:00:01:{n:02x}").parse().expect("test MAC")
}

pub(super) fn image(id: &str) -> ImageRecord {
    ImageRecord {
        id: id.into(),
        name: "test".into(),
        version: "1".into(),
        manifest: ImageManifest {
            name: "test".into(),
            version: "1".into(),
            release: String::new(),
            packages: Default::default(),
            artifacts: [(
                "vmlinuz".to_string(),
                Artifact {
                    sha256: "00".repeat(32),
                    size: 1,
                },
            )]
            .into(),
            cmdline: String::new(),
        },
        imported_at: 1,
    }
}

fn customer(name: &str, heartbeat: &str) -> CustomerConfig {
    serde_json::from_value(serde_json::json!({
        "customer": name,
        "heartbeat_interval": heartbeat,
        "sources": [{"name": "f", "smb": "smb://u@h/s", "password": "sealed:v1:00"}],
    }))
    .expect("test config")
}

fn profile_needs_an_existing_image(s: &dyn Store) {
    let p = Profile {
        name: "default".into(),
        image: "nope".into(),
        kernel: "vmlinuz".into(),
        initrd: "initrd.img".into(),
        cmdline: String::new(),
        transport: Transport::Http,
    };
    let err = s.put_profile(&p).unwrap_err().to_string();
    assert!(err.contains("image `nope` does not exist"), "{err}");
    s.put_image(&image("nope")).unwrap();
    s.put_profile(&p).unwrap();
    assert_eq!(s.profile("default").unwrap(), Some(p.clone()));
    assert_eq!(s.profiles().unwrap(), vec![p]);
    assert_eq!(s.images().unwrap().len(), 1);
    s.delete_profile("default").unwrap();
    assert!(s.delete_profile("default").is_err());
}

fn appliances_are_registered_seen_and_report(s: &dyn Store) {
    let m = mac(1);
    let a = s.appliance_seen(m).unwrap();
    assert!(!a.registered);
    assert_eq!(a.state, ApplianceState::Pending);
    let a = s
        .register_appliance(
            m,
            &Registration {
                serial: Some("SN1"),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(a.registered);
    assert_eq!(a.serial.as_deref(), Some("SN1"));
    let report = StatusReport {
        mac: m.to_string(),
        stage: Some("agent".into()),
        image_version: Some("2026.11".into()),
        ..Default::default()
    };
    assert!(s.record_report(&report, m).unwrap());
    // Reports never create appliances.
    assert!(!s.record_report(&report, mac(98)).unwrap());
    assert!(s.appliance(mac(98)).unwrap().is_none());
    let a = s.appliance(m).unwrap().unwrap();
    assert_eq!(a.last_report, Some(report));
    assert_eq!(a.image_version(), Some("2026.11"));
    assert_eq!(s.appliance_by_id(a.id).unwrap().unwrap().mac, m);
    assert_eq!(
        s.find_appliance(ApplianceRef::Id(a.id))
            .unwrap()
            .unwrap()
            .mac,
        m
    );
    s.set_appliance_profile(m, Some("x")).unwrap();
    assert!(s.set_appliance_profile(mac(99), None).is_err());
    s.remove_appliance(m).unwrap();
    assert!(s.appliance(m).unwrap().is_none());
    assert!(s.events(m, 10).unwrap().is_empty());
}

fn events_are_kept_in_order(s: &dyn Store) {
    let m = mac(2);
    for i in 0..120 {
        s.add_event(m, "dhcp", &i.to_string()).unwrap();
    }
    let ev = s.events(m, 3).unwrap();
    let last: Vec<_> = ev.iter().map(|e| e.detail.as_str()).collect();
    assert_eq!(last, ["117", "118", "119"]);
}

fn an_address_is_leased_to_one_mac_at_a_time(s: &dyn Store) {
    let ip = Ipv4Addr::new(10, 0, 0, 5);
    s.save_lease(&Lease {
        mac: mac(10),
        ip,
        expires_unix: 10,
    })
    .unwrap();
    s.save_lease(&Lease {
        mac: mac(11),
        ip,
        expires_unix: 20,
    })
    .unwrap();
    let leases = s.leases().unwrap();
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].mac, mac(11));
}

fn customers_are_created_and_updated(s: &dyn Store) {
    assert!(s.customer("acme").unwrap().is_none());
    let first = s.put_customer(&customer("acme", "5m")).unwrap();
    assert_eq!(first.created_at, first.updated_at);
    let second = s.put_customer(&customer("acme", "1m")).unwrap();
    assert_eq!(second.created_at, first.created_at);
    assert_eq!(second.config.heartbeat_interval, "1m");
    s.put_customer(&customer("beta", "5m")).unwrap();
    let names: Vec<_> = s.customers().unwrap().into_iter().map(|c| c.name).collect();
    assert_eq!(names, ["acme", "beta"]);
    assert!(s.put_customer(&customer("../evil", "5m")).is_err());
    // The offsite quota is set beside the configuration and outlives apply.
    assert_eq!(s.offsite_quota("acme").unwrap(), None);
    s.set_offsite_quota("acme", Some(10 << 30)).unwrap();
    s.put_customer(&customer("acme", "2m")).unwrap();
    assert_eq!(s.offsite_quota("acme").unwrap(), Some(10 << 30));
    s.set_offsite_quota("acme", None).unwrap();
    assert_eq!(s.offsite_quota("acme").unwrap(), None);
    assert!(s.set_offsite_quota("nobody", Some(1)).is_err());
    assert!(s.offsite_quota("nobody").is_err());
}

fn an_appliance_comes_with_its_customer(s: &dyn Store) {
    assert!(s.appliance_with_customer(999_999).unwrap().is_none());
    s.put_customer(&customer("acme", "5m")).unwrap();
    let with = register_for(s, 30, "acme");
    let (a, c) = s.appliance_with_customer(with.id).unwrap().unwrap();
    assert_eq!(a, with);
    assert_eq!(c, s.customer("acme").unwrap());
    let without = s
        .register_appliance(mac(31), &Registration::default())
        .unwrap();
    let (a, c) = s.appliance_with_customer(without.id).unwrap().unwrap();
    assert_eq!(a, without);
    assert!(c.is_none());
}

fn registration_needs_a_known_customer(s: &dyn Store) {
    let reg = Registration {
        customer: Some("nobody"),
        ..Default::default()
    };
    let err = s.register_appliance(mac(20), &reg).unwrap_err().to_string();
    assert!(err.contains("customer `nobody` does not exist"), "{err}");
    assert!(
        s.appliance(mac(20)).unwrap().is_none(),
        "a refused registration leaves nothing"
    );
    s.put_customer(&customer("acme", "5m")).unwrap();
    let a = s
        .register_appliance(
            mac(20),
            &Registration {
                customer: Some("acme"),
                ..reg
            },
        )
        .unwrap();
    assert!(a.approved());
    assert_eq!(a.customer.as_deref(), Some("acme"));
    // Registering again without a customer keeps it.
    let a = s
        .register_appliance(
            mac(20),
            &Registration {
                serial: Some("S"),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(a.customer.as_deref(), Some("acme"));
    // Registering it for another customer is refused, as `approve` is:
    // its certificate would receive the other customer's secrets.
    s.put_customer(&customer("beta", "5m")).unwrap();
    let err = s
        .register_appliance(
            mac(20),
            &Registration {
                customer: Some("beta"),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("already serves customer acme"), "{err}");
    assert_eq!(
        s.appliance(mac(20)).unwrap().unwrap().customer.as_deref(),
        Some("acme")
    );
}

fn pending_machines_wait_for_approval(s: &dyn Store) {
    s.put_customer(&customer("acme", "5m")).unwrap();
    let a = s.appliance_seen(mac(30)).unwrap();
    assert!(!a.approved());
    assert!(
        s.approve_appliance(mac(31), "acme", None).is_err(),
        "never seen"
    );
    assert!(s.approve_appliance(mac(30), "nobody", None).is_err());
    let a = s.approve_appliance(mac(30), "acme", None).unwrap();
    assert!(a.approved());
    s.put_customer(&customer("beta", "5m")).unwrap();
    let err = s
        .approve_appliance(mac(30), "beta", None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("already serves customer acme"), "{err}");
    s.approve_appliance(mac(30), "acme", None).unwrap();
    let steps: Vec<_> = s
        .events(mac(30), 10)
        .unwrap()
        .into_iter()
        .map(|e| e.step)
        .collect();
    assert!(steps.contains(&"approved".to_string()), "{steps:?}");
}

fn states_and_heartbeats_make_history(s: &dyn Store) {
    s.put_customer(&customer("acme", "1m")).unwrap();
    let a = register_for(s, 40, "acme");
    s.set_appliance_state(a.id, ApplianceState::Enrolled, None)
        .unwrap();
    let f = s
        .set_appliance_state(
            a.id,
            ApplianceState::Failed,
            Some("no disk of at least 16GiB"),
        )
        .unwrap();
    assert_eq!(f.state, ApplianceState::Failed);
    assert_eq!(f.state_reason.as_deref(), Some("no disk of at least 16GiB"));
    assert!(!f.online(60, now()));
    s.record_heartbeat(
        a.id,
        &Heartbeat {
            image_version: Some("v1"),
            slot: Some("a"),
        },
    )
    .unwrap();
    s.record_heartbeat(
        a.id,
        &Heartbeat {
            image_version: Some("v1"),
            slot: Some("a"),
        },
    )
    .unwrap();
    s.record_heartbeat(
        a.id,
        &Heartbeat {
            image_version: Some("v2"),
            slot: Some("b"),
        },
    )
    .unwrap();
    let a = s.appliance_by_id(a.id).unwrap().unwrap();
    assert_eq!(
        (a.image_version.as_deref(), a.slot.as_deref()),
        (Some("v2"), Some("b"))
    );
    assert!(a.online(60, now()));
    assert!(!a.online(60, now() + 181));
    let ev = s.events(mac(40), 50).unwrap();
    let details: Vec<_> = ev
        .iter()
        .map(|e| format!("{} {}", e.step, e.detail))
        .collect();
    assert_eq!(
        details,
        [
            "registered registered for customer acme",
            "state enrolled",
            "state failed: no disk of at least 16GiB",
            "heartbeat image v1 on slot a",
            "heartbeat image v2 on slot b",
        ]
    );
    assert!(s
        .set_appliance_state(9999, ApplianceState::Enrolled, None)
        .is_err());
}

fn replace_hands_over_and_revokes(s: &dyn Store) {
    s.put_customer(&customer("acme", "5m")).unwrap();
    s.put_customer(&customer("beta", "5m")).unwrap();
    let orphan = s.appliance_seen(mac(49)).unwrap();
    assert!(
        s.replace_appliance(orphan.id, mac(48)).is_err(),
        "no customer to hand over"
    );
    let old = s
        .register_appliance(
            mac(50),
            &Registration {
                customer: Some("acme"),
                profile: Some("p"),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(s.replace_appliance(old.id, mac(50)).is_err(), "itself");
    let other = register_for(s, 52, "beta");
    assert!(
        s.replace_appliance(old.id, other.mac).is_err(),
        "serves another customer"
    );
    let new = s.replace_appliance(old.id, mac(51)).unwrap();
    assert_eq!(new.customer.as_deref(), Some("acme"));
    assert_eq!(new.profile.as_deref(), Some("p"));
    assert_eq!(new.replaces, Some(old.id));
    assert!(new.approved());
    let old = s.appliance_by_id(old.id).unwrap().unwrap();
    assert!(old.revoked_at.is_some());
    assert_eq!(old.state, ApplianceState::Retired);
    assert_eq!(old.replaced_by, Some(new.id));
    assert!(!old.approved());
    assert!(
        s.replace_appliance(old.id, mac(53)).is_err(),
        "already replaced"
    );
    assert!(
        s.register_appliance(old.mac, &Registration::default())
            .is_err(),
        "retired MAC"
    );
}

fn retire_revokes(s: &dyn Store) {
    s.put_customer(&customer("acme", "5m")).unwrap();
    let a = register_for(s, 60, "acme");
    let r = s.retire_appliance(a.id, "stolen").unwrap();
    assert_eq!(r.state, ApplianceState::Retired);
    assert!(r.revoked_at.is_some());
    assert!(s.retire_appliance(a.id, "again").is_err());
    assert!(s
        .set_appliance_state(a.id, ApplianceState::Enrolled, None)
        .is_err());
    assert!(s.approve_appliance(a.mac, "acme", None).is_err());
    let last = s.events(a.mac, 1).unwrap().remove(0);
    assert_eq!(
        (last.step.as_str(), last.detail.as_str()),
        ("retired", "stolen")
    );
}

fn rollouts_and_update_records(s: &dyn Store) {
    use levee_proto::update::UpdateState::*;
    assert!(s.rollout("stable").expect("rollout").is_none());
    assert!(
        s.set_rollout_paused("stable", true).is_err(),
        "no rollout yet"
    );
    assert!(s.set_rollout("stable", "v2", 2, 0).is_err());
    assert!(s.set_rollout("stable", "v2", 2, 101).is_err());
    let r = s.set_rollout("stable", "v2", 2, 10).expect("rollout");
    assert_eq!((r.release, r.percent, r.paused), (2, 10, false));
    assert!(s.set_rollout_paused("stable", true).expect("pause").paused);
    // Widening a paused rollout keeps it paused; a new release starts anew.
    let r = s.set_rollout("stable", "v2", 2, 50).expect("widen");
    assert_eq!((r.percent, r.paused), (50, true));
    let r = s.set_rollout("stable", "v3", 3, 10).expect("next");
    assert_eq!((r.version.as_str(), r.paused), ("v3", false));
    s.set_rollout("beta", "v4", 4, 100).expect("beta");
    let all: Vec<_> = s
        .rollouts()
        .expect("all")
        .into_iter()
        .map(|r| r.channel)
        .collect();
    assert_eq!(all, ["beta", "stable"]);

    s.put_customer(&customer("acme", "5m")).expect("customer");
    let a = register_for(s, 60, "acme");
    let b = register_for(s, 61, "acme");
    s.record_update(a.id, "v2", 2, Downloading, None, Some("b"))
        .expect("downloading");
    let rec = s
        .record_update(
            a.id,
            "v2",
            2,
            RolledBack,
            Some("health check: no heartbeat"),
            None,
        )
        .expect("rolled back");
    assert_eq!(
        (rec.state, rec.blocked, rec.slot.as_deref()),
        (RolledBack, true, Some("b"))
    );
    // A later report does not lift the block; only unblock does.
    let rec = s
        .record_update(a.id, "v2", 2, Failed, Some("x"), None)
        .expect("failed");
    assert!(rec.blocked);
    s.record_update(b.id, "v2", 2, Committed, None, Some("b"))
        .expect("committed");
    assert_eq!(s.update_records(None).expect("all").len(), 2);
    let mine = s.update_records(Some(a.id)).expect("mine");
    assert_eq!((mine.len(), mine[0].reason.as_deref()), (1, Some("x")));
    assert!(s.unblock_update(b.id, "v2").is_err(), "not blocked");
    assert!(!s.unblock_update(a.id, "v2").expect("unblock").blocked);
    assert!(s.unblock_update(a.id, "v2").is_err(), "twice");
    // Removing an appliance removes its records.
    s.remove_appliance(mac(61)).expect("remove");
    assert_eq!(s.update_records(None).expect("all").len(), 1);
}

/// Each case a test of its own on each store, so one failure hides no
/// other: `on_sqlite::NAME` and `on_postgres::NAME`. Every PostgreSQL case
/// gets its own server (it dies with its test, see
/// [`crate::store::testing`]).
macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            use crate::store::SqliteStore;
            $(
                #[test]
                fn $name() {
                    let dir = tempfile::tempdir().expect("temp dir");
                    let s = SqliteStore::open(dir.path()).expect("open SQLite");
                    super::$name(&s);
                }
            )*
        }

        mod on_postgres {
            use crate::store::testing::PgServer;
            use crate::store::PgStore;
            $(
                #[test]
                fn $name() {
                    let pg = PgServer::start();
                    let s = PgStore::connect(&pg.create_db("levee")).expect("connect");
                    super::$name(&s);
                }
            )*
        }
    };
}

cases!(
    profile_needs_an_existing_image,
    appliances_are_registered_seen_and_report,
    events_are_kept_in_order,
    an_address_is_leased_to_one_mac_at_a_time,
    customers_are_created_and_updated,
    registration_needs_a_known_customer,
    pending_machines_wait_for_approval,
    states_and_heartbeats_make_history,
    replace_hands_over_and_revokes,
    retire_revokes,
    tokens_are_one_use_bound_and_short_lived,
    one_live_token_per_mac_bound_to_its_lease,
    certificates_are_recorded_and_replaced,
    pending_keys_are_kept_until_enrollment,
    an_appliance_comes_with_its_customer,
    reinstall_is_one_shot_and_a_slot_completes_an_install,
    runs_are_kept_once_bounded_and_summed_up,
    rollouts_and_update_records,
    alerts_open_once_and_queue_deliveries_in_order,
    operators_and_the_audit_log,
    an_enrollment_with_a_token_is_one_unit,
    recovery_rows_keep_keys_slots_and_grants,
    restore_requests_move_on_once_and_only_for_their_appliance,
    restore_requests_are_withdrawn_or_stopped_and_refuse_impossible_moves,
    servers_of_a_fleet_are_recorded,
);

mod postgres_only {
    use super::*;
    use crate::store::testing::PgServer;

    /// The store works from every place `levee serve` calls it: async
    /// tasks and spawn_blocking on the multi-thread runtime, and a
    /// current-thread runtime (tests).
    #[test]
    fn works_from_every_runtime_context() {
        let pg = PgServer::start();
        let s = std::sync::Arc::new(PgStore::connect(&pg.create_db("async")).unwrap());
        let multi = tokio::runtime::Runtime::new().unwrap();
        let s2 = s.clone();
        multi.block_on(async move {
            s2.appliance_seen(mac(1)).unwrap();
            let s3 = s2.clone();
            tokio::task::spawn_blocking(move || s3.appliance_seen(mac(2)).unwrap())
                .await
                .unwrap();
            let s4 = s2.clone();
            tokio::spawn(async move { s4.appliance_seen(mac(3)).unwrap() })
                .await
                .unwrap();
        });
        let single = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        single.block_on(async { s.appliance_seen(mac(4)).unwrap() });
        assert_eq!(s.appliances().unwrap().len(), 4);
    }

    #[test]
    fn reconnecting_does_not_run_the_migrations_again() {
        let pg = PgServer::start();
        let url = pg.create_db("reopen");
        PgStore::connect(&url)
            .unwrap()
            .put_image(&image("x-1"))
            .unwrap();
        assert_eq!(PgStore::connect(&url).unwrap().images().unwrap().len(), 1);
    }
}
