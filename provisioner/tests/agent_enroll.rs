//! The real agent code (`levee_agent::daemon::run` and its mTLS client)
//! against a real `levee serve` on 127.0.0.1: a pending machine enrolls by
//! itself once approved, pulls and caches its configuration, heartbeats,
//! renews, and later boots set their clock from the server first.
//!
//! The server runs on its own tokio runtime; the agent is blocking code
//! and runs on plain threads, as on the appliance.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::{agent_options, LoopbackServer};
use levee_agent::daemon::{run, DaemonError};
use levee_agent::enroll::{Credential, EnrollError, MtlsClient, CONFIG_CACHE};
use levee_proto::enroll::{InstallState, InstallStatus};

const MAC_PENDING: &str = "52:54:00:0d:00:01";
const MAC_REGISTERED: &str = "52:54:00:0d:00:02";

/// The server both tests use: customer `alpha`, one machine registered for
/// it, `MAC_PENDING` unknown until approved.
fn start() -> LoopbackServer {
    LoopbackServer::start(
        common::AGENT_CMDLINE,
        serde_json::json!({
            "customer": "alpha",
            "heartbeat_interval": "5m",
            "sources": [{"name": "f", "smb": "smb://u@nas/s", "password": "alpha-secret"}],
        }),
        &[MAC_REGISTERED],
    )
}

/// Runs the daemon once on its own thread.
fn agent(cmdline: &str, state: &Path) -> std::thread::JoinHandle<Result<(), DaemonError>> {
    let opts = agent_options(cmdline, state);
    std::thread::spawn(move || run(&opts))
}

fn wait_until(what: &str, f: impl FnMut() -> bool) {
    common::wait_until(what, Duration::from_secs(60), f)
}

#[test]
fn the_agent_enrolls_after_approval_pulls_config_heartbeats_and_renews() {
    let srv = start();
    let states = tempfile::tempdir().expect("state");
    let state = states.path().join("pending");

    // Pending: the agent waits, retrying with its key, without a reboot.
    let cmdline = srv.boot_cmdline(MAC_PENDING);
    assert!(cmdline.contains("levee.root=http"), "{cmdline}");
    let running = agent(&cmdline, &state);
    wait_until("the pending key", || {
        srv.store
            .appliance(MAC_PENDING.parse().expect("mac"))
            .ok()
            .flatten()
            .is_some_and(|a| a.pending_key.is_some())
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!running.is_finished(), "the agent gave up while pending");
    assert_eq!(srv.appliance(MAC_PENDING).state.as_str(), "pending");
    srv.levee(&["appliance", "approve", MAC_PENDING, "--customer", "alpha"]);
    wait_until("the agent's pass", || running.is_finished());
    running.join().expect("agent thread").expect("agent run");

    // Enrolled, credential stored, configuration cached, heartbeat in.
    let a = srv.appliance(MAC_PENDING);
    assert!(a.cert_fingerprint.is_some());
    assert!(a.last_heartbeat.is_some(), "{a:?}");
    // It booted from the network and the customer installs to disk: the
    // install step ran and refused the plan before looking at any disk
    // (this test image has no root file system), and said why.
    assert_eq!(a.state.as_str(), "failed");
    assert!(
        a.state_reason
            .as_deref()
            .is_some_and(|r| r.contains("names no image")),
        "{a:?}"
    );
    let cred = Credential::load(&state).expect("load").expect("credential");
    assert_eq!(cred.server.appliance_id, a.id);
    assert_eq!(cred.server.http_url, srv.http);
    let key_mode = std::fs::metadata(Credential::dir(&state).join("key.pem"))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    let cache = std::fs::read_to_string(state.join(CONFIG_CACHE)).expect("config cache");
    assert!(cache.contains("alpha-secret"), "{cache}");
    let list: serde_json::Value =
        serde_json::from_str(&srv.levee(&["appliance", "list", "--json"])).expect("json");
    let row = list
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["mac"] == MAC_PENDING))
        .expect("row");
    assert!(row["last_heartbeat"].is_u64(), "{row}");
    assert_eq!(row["online"], true, "{row}");

    // The second pull is a 304 served from the cache.
    let client = MtlsClient::new(&cred).expect("client");
    let pulled = client.fetch_config(&state).expect("config");
    assert!(!pulled.changed);
    assert_eq!(pulled.config.customer, "alpha");

    // Renewal opens in the certificate's last third: refused at first,
    // then (the recorded expiry 10 days away, as if 80 days had passed) a
    // new key and certificate; the old certificate is refused.
    match client.renew(&cred, &state) {
        Err(EnrollError::Refused {
            status: 409,
            message,
            ..
        }) => assert!(message.contains("last third"), "{message}"),
        other => panic!("early renewal not refused: {other:?}"),
    }
    srv.store
        .record_certificate(
            a.id,
            a.cert_fingerprint.as_deref().expect("certificate"),
            levee_provisioner::store::now() + 10 * 86_400,
            false,
        )
        .expect("age the certificate");
    let renewed = client.renew(&cred, &state).expect("renew");
    assert_ne!(renewed.key_pem, cred.key_pem);
    assert_eq!(
        Credential::load(&state).expect("load").expect("credential"),
        renewed
    );
    let report = levee_proto::report::StatusReport {
        mac: MAC_PENDING.into(),
        ..Default::default()
    };
    match client.heartbeat(&report) {
        Err(EnrollError::Refused {
            status: 403,
            message,
            ..
        }) => {
            assert!(message.contains("superseded"), "{message}")
        }
        other => panic!("old certificate not refused: {other:?}"),
    }
    let client = MtlsClient::new(&renewed).expect("client");
    client
        .heartbeat(&report)
        .expect("heartbeat with the new one");

    // Back from disk: a later boot with the stored credential and no token
    // reads the server's clock first, then heartbeats with its slot, which
    // completes the install.
    client
        .post_install_status(&InstallStatus {
            state: InstallState::Installing,
            reason: None,
            slot: Some("a".into()),
            disk: Some("vda".into()),
            image_version: None,
        })
        .expect("installing");
    let from_disk =
        "root=PARTLABEL=levee-a levee.root=PARTLABEL=levee-a levee.slot=a levee.interval=1";
    agent(from_disk, &state)
        .join()
        .expect("agent thread")
        .expect("agent run from disk");
    let a = srv.appliance(MAC_PENDING);
    assert_eq!(
        (a.state.as_str(), a.slot.as_deref()),
        ("installed", Some("a"))
    );
    let shown = srv.levee(&["appliance", "show", MAC_PENDING]);
    assert!(shown.contains("state:          installed"), "{shown}");
}

#[test]
fn the_agent_refuses_a_server_whose_ca_is_not_pinned_and_a_spent_token() {
    let srv = start();
    let states = tempfile::tempdir().expect("state");
    let cmdline = srv.boot_cmdline(MAC_REGISTERED);
    let pin = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("levee.ca="))
        .expect("pin")
        .to_string();
    let wrong = cmdline.replace(&pin, &"0".repeat(64));
    let err = agent(&wrong, &states.path().join("a"))
        .join()
        .expect("agent thread")
        .expect_err("trusted a server with another CA");
    assert!(
        matches!(err, DaemonError::Enroll(EnrollError::CaMismatch { .. })),
        "{err}"
    );
    assert!(Credential::load(&states.path().join("a"))
        .expect("load")
        .is_none());
    // The server did issue a certificate (the agent refused the answer):
    // a second try with that token and a new key is refused for good, not
    // retried, since a token never replaces a live certificate.
    let err = agent(&cmdline, &states.path().join("b"))
        .join()
        .expect("agent thread")
        .expect_err("enrolled with a spent token");
    match err {
        DaemonError::Enroll(EnrollError::Refused {
            status, message, ..
        }) => {
            assert_eq!(status, 403);
            assert!(message.contains("reenroll"), "{message}");
        }
        other => panic!("{other}"),
    }
}
