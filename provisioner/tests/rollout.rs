//! Staged rollouts against a real `levee serve` on 127.0.0.1: two releases
//! published with the CLI, two enrolled appliances (one whose rollout
//! bucket falls inside 50%, one outside), `rollout --percent 50`, pause,
//! resume, the appliances' update reports over mTLS, a rollback that
//! blocks the release for that appliance until `unblock`, and `release
//! status` counting it all.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use levee_proto::enroll::{paths, EnrollmentResponse};
use levee_proto::update::{HeartbeatAnswer, UpdateAnswer};
use levee_provisioner::releases::rollout::bucket;
use levee_provisioner::secrets::ServerKey;
use levee_provisioner::store::{Registration, Store};
use reqwest::StatusCode;
use tokio_util::sync::CancellationToken;

struct Server {
    dir: tempfile::TempDir,
    data: PathBuf,
    http: String,
    stop: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Server {
    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_levee"))
            .arg("--data-dir")
            .arg(&self.data)
            .args(args)
            .env_remove("LEVEE_DATABASE")
            .env("RUST_LOG", "warn")
            .output()
            .expect("levee")
    }
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "levee {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "levee {args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
    fn offline(&self) -> PathBuf {
        self.dir.path().join("offline")
    }

    /// Publishes a small image of `version` on `stable`.
    fn publish(&self, version: &str, fill: u8) {
        common::publish_release(self.dir.path(), &self.data, version, fill, 40_000);
    }
}

/// An enrolled appliance: its id and an mTLS client holding its certificate.
struct Box_ {
    mac: String,
    id: i64,
    https: String,
    client: reqwest::Client,
}

impl Box_ {
    async fn heartbeat(&self, version: &str) -> HeartbeatAnswer {
        let r = self
            .client
            .post(format!("{}{}", self.https, paths::HEARTBEAT))
            .json(&serde_json::json!({"mac": self.mac, "image_version": version, "slot": "a"}))
            .send()
            .await
            .expect("heartbeat");
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.expect("answer")
    }
    async fn offered(&self, version: &str) -> Option<u64> {
        self.heartbeat(version).await.update.map(|u| u.release)
    }
    async fn get_update(&self) -> UpdateAnswer {
        self.client
            .get(format!("{}{}", self.https, levee_proto::update::PATH))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("answer")
    }
    async fn report(&self, body: serde_json::Value) -> StatusCode {
        self.client
            .post(format!("{}{}", self.https, levee_proto::update::PATH))
            .json(&body)
            .send()
            .await
            .expect("report")
            .status()
    }
}

async fn enroll(http: &str, mac: &str) -> Box_ {
    let plain = reqwest::Client::new();
    let script = plain
        .get(format!("{http}/boot/{mac}.ipxe"))
        .send()
        .await
        .expect("script")
        .text()
        .await
        .expect("body");
    let token = script
        .split_whitespace()
        .find_map(|w| w.strip_prefix("levee.token="))
        .expect("token");
    let key = rcgen::KeyPair::generate().expect("key");
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    let resp: EnrollmentResponse = plain
        .post(format!("{http}{}", paths::ENROLL))
        .json(&serde_json::json!({
            "token": token, "mac": mac, "csr_pem": csr,
            "facts": {"macs": [mac], "disks": []},
        }))
        .send()
        .await
        .expect("enroll")
        .json()
        .await
        .expect("response");
    let pem = format!("{}\n{}", resp.certificate_pem, key.serialize_pem());
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(resp.ca_pem.as_bytes()).expect("ca"))
        .identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("identity"))
        .build()
        .expect("client");
    Box_ {
        mac: mac.into(),
        id: resp.appliance_id,
        https: resp.https_url,
        client,
    }
}

/// Registers appliances until one falls inside a 50% rollout and one
/// outside; returns their MACs (inside, outside).
fn register_pair(store: &dyn Store) -> (String, String) {
    let (mut inside, mut outside) = (None, None);
    for n in 1..=40u8 {
        let mac = format!("52:54:00:13:00:{n:02x}");
        let a = store
            .register_appliance(
                mac.parse().expect("mac"),
                &Registration {
                    customer: Some("alpha"),
                    ..Default::default()
                },
            )
            .expect("register");
        let slot = if bucket(a.id) < 50 {
            &mut inside
        } else {
            &mut outside
        };
        slot.get_or_insert(mac);
        if let (Some(i), Some(o)) = (&inside, &outside) {
            return (i.clone(), o.clone());
        }
    }
    panic!("40 appliances all on one side of 50%");
}

async fn start() -> (Server, Arc<dyn Store>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, store) =
        common::store_with_default_profile(dir.path(), "levee.ca={ca} levee.token={token}");
    let key = ServerKey::load_or_create(&data).expect("key");
    let config = serde_json::from_value(serde_json::json!({
        "customer": "alpha", "update_channel": "stable", "update_window": "01:00-05:00",
    }))
    .expect("config");
    store
        .put_customer(&key.seal_config(&config))
        .expect("customer");
    let (http, stop) = common::serve_on_loopback(store.clone(), data.clone(), dir.path()).await;
    let srv = Server {
        dir,
        data,
        http,
        stop,
    };
    (srv, store)
}

fn status_json(srv: &Server) -> serde_json::Value {
    let out = common::levee(
        &srv.data,
        &["release", "status", "--channel", "stable", "--json"],
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    v[0].clone()
}

fn fleet_of(status: &serde_json::Value, version: &str) -> serde_json::Value {
    status["releases"]
        .as_array()
        .expect("releases")
        .iter()
        .find(|r| r["version"] == version)
        .unwrap_or_else(|| panic!("no {version} in {status}"))["appliances"]
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r13_rollout_pause_resume_rollback_unblock_and_status() {
    let (srv, store) = start().await;
    let offline = srv.offline().display().to_string();
    tokio::task::block_in_place(|| {
        srv.ok(&["release", "keys", "init", "--offline-dir", &offline]);
        srv.publish("2026.12.01-aaaa", 1);
        srv.publish("2026.12.02-bbbb", 2);
    });
    let (mac_in, mac_out) = register_pair(store.as_ref());
    let inside = enroll(&srv.http, &mac_in).await;
    let outside = enroll(&srv.http, &mac_out).await;
    assert!(bucket(inside.id) < 50 && bucket(outside.id) >= 50);
    let v1 = "2026.12.01-aaaa";
    let v2 = "2026.12.02-bbbb";

    // No rollout yet: heartbeats carry no offer.
    assert_eq!(inside.offered(v1).await, None);
    let why = inside.get_update().await.reason.expect("reason");
    assert!(why.contains("no rollout"), "{why}");

    // Refusals of the CLI: an unknown version, a bad percentage.
    let e = tokio::task::block_in_place(|| {
        srv.fails(&["release", "rollout", "stable", "nope", "--percent", "10"])
    });
    assert!(e.contains("does not offer nope"), "{e}");
    tokio::task::block_in_place(|| {
        srv.fails(&["release", "rollout", "stable", v2, "--percent", "0"]);
        srv.fails(&["release", "rollout", "stable", v2, "--percent", "101"]);
    });

    // 50%: exactly the appliance whose bucket is inside is offered release 2.
    let out = tokio::task::block_in_place(|| {
        srv.ok(&["release", "rollout", "stable", v2, "--percent", "50"])
    });
    assert!(out.contains("release 2") && out.contains("50%"), "{out}");
    assert_eq!(inside.offered(v1).await, Some(2));
    assert_eq!(outside.offered(v1).await, None);
    assert!(outside
        .get_update()
        .await
        .reason
        .expect("reason")
        .contains("outside the rollout's 50%"));
    assert_eq!(inside.get_update().await.update.expect("offer").version, v2);

    // Pause stops further offers; resume brings them back.
    tokio::task::block_in_place(|| srv.ok(&["release", "pause", "stable"]));
    assert_eq!(inside.offered(v1).await, None);
    let human = tokio::task::block_in_place(|| srv.ok(&["release", "status"]));
    assert!(human.contains("PAUSED"), "{human}");
    tokio::task::block_in_place(|| srv.ok(&["release", "resume", "--channel", "stable"]));
    assert_eq!(inside.offered(v1).await, Some(2));

    // The appliance reports its progress; status counts it as updating.
    for state in ["downloading", "written", "rebooting"] {
        let body = serde_json::json!({"version": v2, "release": 2, "state": state, "slot": "b"});
        assert_eq!(inside.report(body).await, StatusCode::OK);
    }
    let bad = serde_json::json!({"version": v2, "release": 2, "state": "written", "slot": "c"});
    assert_eq!(inside.report(bad).await, StatusCode::BAD_REQUEST);
    let bad = serde_json::json!({"version": "", "release": 2, "state": "written"});
    assert_eq!(inside.report(bad).await, StatusCode::BAD_REQUEST);
    let s = tokio::task::block_in_place(|| status_json(&srv));
    assert_eq!(fleet_of(&s, v2)["updating"], 1, "{s}");
    assert_eq!(fleet_of(&s, v1)["on"], 2, "{s}");
    assert_eq!(s["rollout"]["percent"], 50);

    // A rollback blocks release 2 for this appliance only, with its reason.
    let reason = "slot b failed its health check: no heartbeat accepted in 600 s";
    let body = serde_json::json!({"version": v2, "release": 2, "state": "rolled-back", "slot": "b", "reason": reason});
    assert_eq!(inside.report(body).await, StatusCode::OK);
    assert_eq!(inside.offered(v1).await, None);
    let why = inside.get_update().await.reason.expect("reason");
    assert!(why.contains("rolled back") && why.contains(reason), "{why}");
    let human =
        tokio::task::block_in_place(|| srv.ok(&["release", "status", "--channel", "stable"]));
    assert!(
        human.contains(&format!("rolled back on {mac_in}")) && human.contains(reason),
        "{human}"
    );
    let s = tokio::task::block_in_place(|| status_json(&srv));
    let f = fleet_of(&s, v2);
    assert_eq!(
        (f["updating"].clone(), f["rolled_back"].clone()),
        (0.into(), 1.into()),
        "{s}"
    );
    assert_eq!(f["rollbacks"][0]["reason"], reason);
    let shown = tokio::task::block_in_place(|| srv.ok(&["appliance", "show", &mac_in]));
    assert!(
        shown.contains("no offer: release 2") && shown.contains("rolled-back (slot b), BLOCKED"),
        "{shown}"
    );
    let shown: serde_json::Value = serde_json::from_str(&tokio::task::block_in_place(|| {
        srv.ok(&["appliance", "show", &mac_out, "--json"])
    }))
    .expect("json");
    assert_eq!(shown["updates"]["bucket"], bucket(outside.id));
    assert!(shown["updates"]["offer"].is_null(), "{shown}");
    // Widening to 100% reaches the other appliance, not the blocked one.
    tokio::task::block_in_place(|| {
        srv.ok(&["release", "rollout", "stable", v2, "--percent", "100"])
    });
    assert_eq!(outside.offered(v1).await, Some(2));
    assert_eq!(inside.offered(v1).await, None);

    // Unblock: offered again; it commits; status shows it on v2.
    let e = tokio::task::block_in_place(|| {
        srv.fails(&["release", "unblock", v2, "--appliance", &mac_out])
    });
    assert!(e.contains("not blocked"), "{e}");
    tokio::task::block_in_place(|| srv.ok(&["release", "unblock", v2, "--appliance", &mac_in]));
    assert_eq!(inside.offered(v1).await, Some(2));
    let body = serde_json::json!({"version": v2, "release": 2, "state": "committed", "slot": "b"});
    assert_eq!(inside.report(body).await, StatusCode::OK);
    assert_eq!(inside.offered(v2).await, None, "on it: no offer");
    // The appliance's own channel check refused a frozen channel: an event
    // and a log line, no update record (the counts below stay as they are).
    let body = serde_json::json!({"version": v2, "release": 0, "state": "check-failed",
        "reason": "scheduled check of channel stable refused (freeze): timestamp metadata is expired"});
    assert_eq!(inside.report(body).await, StatusCode::OK);
    let s = tokio::task::block_in_place(|| status_json(&srv));
    let f = fleet_of(&s, v2);
    assert_eq!(
        (f["on"].clone(), f["committed"].clone()),
        (1.into(), 1.into()),
        "{s}"
    );
    // The history names every step.
    let events = store
        .events(mac_in.parse().expect("mac"), 50)
        .expect("events");
    assert!(events
        .iter()
        .any(|e| e.step == "update" && e.detail.contains("rolled-back")));
    assert!(events.iter().any(|e| e.detail.contains("unblocked")));
    assert!(events
        .iter()
        .any(|e| e.detail.contains("check-failed") && e.detail.contains("freeze")));

    // A rollout never goes back to an older release.
    let e = tokio::task::block_in_place(|| {
        srv.fails(&["release", "rollout", "stable", v1, "--percent", "100"])
    });
    assert!(e.contains("never goes back"), "{e}");
}

/// The agent's apply path against the channel `levee serve` publishes:
/// release 2 verified through TUF, written into the inactive slot (a file
/// here) and the ESP directory (a temp dir with a committed grubenv),
/// checked from disk, marked try-once; the state says `written`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r13_agent_writes_the_offered_release_into_the_inactive_slot() {
    use levee_agent::install::grubenv::{self, GrubEnv};
    use levee_agent::update::apply::{self, ApplyOptions, Request, SlotTarget};
    use levee_agent::update::decide::{Phase, UpdateState};
    use levee_agent::update::{ChannelOptions, Running, TransportOptions};

    let (srv, _store) = start().await;
    let offline = srv.offline().display().to_string();
    tokio::task::block_in_place(|| {
        srv.ok(&["release", "keys", "init", "--offline-dir", &offline]);
        srv.publish("2026.12.01-aaaa", 1);
        srv.publish("2026.12.02-bbbb", 2);
    });
    let dev = tempfile::tempdir().expect("dir");
    let esp = dev.path().join("esp");
    std::fs::create_dir_all(esp.join("levee")).expect("esp");
    let mut env = GrubEnv::fresh();
    env.set("A_TRY", "3");
    grubenv::write(&esp, &env).expect("grubenv");
    let state_dir = dev.path().join("state");
    let slot_b = dev.path().join("levee-b");
    let channel = ChannelOptions {
        server_url: srv.http.clone(),
        channel: "stable".into(),
        state_dir: state_dir.join("tuf/stable"),
        baked_root: srv.offline().join("root.json"),
        transport: TransportOptions::METADATA,
    };
    let running = Running {
        version: "2026.12.01-aaaa".into(),
        release: None,
    };
    let target = SlotTarget {
        rootfs: slot_b.clone(),
        esp: esp.clone(),
        seed: None,
    };
    let img = srv.dir.path().join("img-2026.12.02-bbbb");
    let (state, prepared, lines) = tokio::task::spawn_blocking(move || {
        let opts = ApplyOptions {
            state_dir: &state_dir,
            channel: &channel,
            // 200 KB/s: the 48 KB release takes a fraction of a second.
            bandwidth: Some(200_000),
            timeout: std::time::Duration::from_secs(60),
        };
        let mut state = UpdateState::default();
        let mut lines = Vec::new();
        let req = Request {
            running: &running,
            running_slot: "a",
            want: 2,
            target_slot: "b",
            target: &target,
        };
        // Writing the running slot is refused outright.
        let same = Request {
            target_slot: "a",
            ..req
        };
        assert!(apply::prepare(&opts, &mut state, &same, &mut |_| {}).is_err());
        let p = apply::prepare(&opts, &mut state, &req, &mut |l: &str| {
            lines.push(l.to_string())
        })
        .expect("prepare")
        .expect("an update");
        (apply::load_state(&state_dir).expect("state"), p, lines)
    })
    .await
    .expect("join");
    assert_eq!(prepared.offer.release, 2);
    assert!(
        lines.iter().any(|l| l.contains("verified from disk")),
        "{lines:?}"
    );
    let pending = state.pending.expect("pending");
    assert_eq!(
        (
            pending.phase,
            pending.slot.as_str(),
            pending.from_slot.as_str()
        ),
        (Phase::Written, "b", "a")
    );
    assert_eq!(
        std::fs::read(&slot_b).expect("slot"),
        std::fs::read(img.join("rootfs.squashfs")).expect("rootfs")
    );
    for f in ["vmlinuz", "initrd.img"] {
        assert_eq!(
            std::fs::read(esp.join("levee/b").join(f)).expect("boot file"),
            std::fs::read(img.join(f)).expect("artifact")
        );
    }
    let cfg = std::fs::read_to_string(esp.join("levee/b/slot.cfg")).expect("slot.cfg");
    assert!(
        cfg.contains("levee.slot=b") && cfg.contains("quiet"),
        "{cfg}"
    );
    let (env, _) = grubenv::read(&esp).expect("grubenv");
    assert_eq!(
        (
            env.get("ORDER"),
            env.get("B_OK"),
            env.get("B_TRY"),
            env.get("A_OK")
        ),
        (Some("B A"), Some("1"), Some("1"), Some("1"))
    );
}
