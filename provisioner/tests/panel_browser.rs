//! The web panel in a real Chromium (Debian's `chromium`, driven by
//! `playwright-core` from npm: no browser download, no WebDriver crate to
//! build; `tests/browser/panel.mjs` holds the browser's steps) against the
//! real `levee serve` binary with `--ui`, whose appliances are simulated
//! agents speaking the real mTLS API: one heartbeating, one to retire, and
//! a pending machine whose agent waits for the approval given in the
//! browser and then enrolls.
//!
//! Needs `chromium`, `node` and `npm ci --prefix provisioner/tests/browser`
//! (./dev/setup does all three); fails loudly without them.
//! `LEVEE_PANEL_SCREENSHOTS=DIR` keeps one screenshot per page (docs/PANEL.md).

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{agent_pass, free_port, ServeProcess};
use levee_agent::enroll::{Credential, MtlsClient};
use levee_proto::report::StatusReport;
use levee_proto::runs::{RunKind, RunReport, RunResult};
use levee_provisioner::secrets::ServerKey;
use levee_provisioner::store::{NewAlert, Registration};

const LIVE: &str = "52:54:00:1e:00:01";
const RETIRE: &str = "52:54:00:1e:00:02";
const PENDING: &str = "52:54:00:1e:00:03";

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

#[test]
fn the_panel_in_chromium() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: run ./dev/setup (installs Debian's chromium)"
    );
    assert!(
        browser_dir().join("node_modules/playwright-core").exists(),
        "playwright-core is missing: run ./dev/setup (npm ci --prefix provisioner/tests/browser)"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let (data, store) = common::store_with_default_profile(
        dir.path(),
        "levee.url={url} levee.ca={ca} levee.token={token} levee.root={root_url}",
    );
    let key = ServerKey::load_or_create(&data).expect("key");
    let config = serde_json::from_value(serde_json::json!({
        "customer": "acme",
        "display_name": "Acme Dental",
        "sources": [{"name": "docs", "smb": "smb://backup@fs/docs", "password": "hunter2"}],
        "schedules": [{"name": "daily", "every": "1d"}],
        "install": {"to_disk": false},
        "heartbeat_interval": "1m",
    }))
    .expect("config");
    store
        .put_customer(&key.seal_config(&config))
        .expect("customer");
    for mac in [LIVE, RETIRE] {
        store
            .register_appliance(
                mac.parse().expect("mac"),
                &Registration {
                    customer: Some("acme"),
                    ..Default::default()
                },
            )
            .expect("register");
    }

    let ui_port = free_port();
    let ui = format!("127.0.0.1:{ui_port}");
    let serve = ServeProcess::spawn(&data, None, &dir.path().join("serve.log"), &["--ui", &ui]);
    let http = serve.http.clone();
    // `levee serve` prints the panel's URL at start-up.
    let printed = serve
        .log()
        .lines()
        .find(|l| l.starts_with("panel: "))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no panel URL printed:\n{}", serve.log()));
    let url = printed
        .split_whitespace()
        .find(|w| w.starts_with("https://"))
        .unwrap_or_else(|| panic!("no URL in {printed:?}"))
        .to_string();
    assert_eq!(url, format!("https://{ui}/"));

    // Simulated appliances over the real mTLS API.
    let states = tempfile::tempdir().expect("states");
    let mut creds = Vec::new();
    for mac in [LIVE, RETIRE] {
        let state = states.path().join(mac.replace(':', ""));
        agent_pass(&http, mac, &state);
        creds.push(Credential::load(&state).expect("load").expect("credential"));
    }
    let live = MtlsClient::new(&creds[0]).expect("client");
    let t = levee_provisioner::store::now() as i64;
    let mut ok = RunReport::new(RunKind::Backup, t - 3600);
    ok.job = Some("daily".into());
    ok.sources = vec!["docs".into()];
    ok.ended_at = t - 3500;
    ok.result = RunResult::Success;
    ok.snapshot = Some("ab12cd34".into());
    ok.files_total = 1200;
    ok.files_new = 14;
    ok.repo_bytes = Some(734_003_200);
    live.post_run(&ok).expect("run report");
    store
        .open_alert(&NewAlert {
            kind: "backup-overdue",
            subject: "appliance:99",
            appliance_id: None,
            customer: Some("acme"),
            severity: "warning",
            summary: "backup of schedule daily is 6h late (a sample alert)",
        })
        .expect("alert");

    // The pending machine: its agent waits for the approval.
    let pending_state = states.path().join("pending");
    let pending = {
        let (http, state) = (http.clone(), pending_state.clone());
        std::thread::spawn(move || agent_pass(&http, PENDING, &state))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let fingerprint = loop {
        let a = store.appliance(PENDING.parse().expect("mac")).expect("get");
        if let Some(k) = a.and_then(|a| a.pending_key) {
            break levee_provisioner::store::short_key(&k);
        }
        assert!(
            Instant::now() < deadline,
            "the pending machine never sent its key"
        );
        std::thread::sleep(Duration::from_millis(100));
    };

    // Heartbeats every 1.1 s while the browser watches.
    let stop = Arc::new(AtomicBool::new(false));
    let beats = {
        let stop = stop.clone();
        let cred = creds[0].clone();
        std::thread::spawn(move || {
            let client = MtlsClient::new(&cred).expect("client");
            let report = StatusReport {
                mac: LIVE.into(),
                stage: Some("agent".into()),
                image_version: Some("2026.12.1".into()),
                ..Default::default()
            };
            while !stop.load(Ordering::Relaxed) {
                let _ = client.heartbeat(&report);
                std::thread::sleep(Duration::from_millis(1100));
            }
        })
    };

    // Operators: the admin logs in with the printed one-time password.
    let out = common::levee(&data, &["operator", "add", "admin"]);
    let otp = out
        .lines()
        .find_map(|l| l.strip_prefix("one-time password: "))
        .expect("one-time password printed")
        .to_string();
    common::levee(&data, &["operator", "add", "viewer", "--read-only"]);
    let viewer_pw = "viewer's long password";
    let hash = levee_provisioner::ui::password::hash(viewer_pw).expect("hash");
    store
        .set_operator_password("viewer", &hash, false)
        .expect("password");

    let retire_id = creds[1].server.appliance_id;
    let started = Instant::now();
    let mut node = Command::new("node");
    node.process_group(0);
    // node (and the browser on its pipe) dies with the test.
    common::dies_with_test(&mut node);
    node.arg(browser_dir().join("panel.mjs"))
        .env("PANEL_URL", &url)
        .env("OTHER_ORIGIN", format!("{http}/api/v1/time"))
        .env("ADMIN_OTP", &otp)
        .env("VIEWER_PASSWORD", viewer_pw)
        .env("LIVE_MAC", LIVE)
        .env("RETIRE_ID", retire_id.to_string())
        .env("PENDING_MAC", PENDING)
        .env("PENDING_FP", &fingerprint)
        .env("CHROMIUM", &chromium);
    if let Ok(dir) = std::env::var("LEVEE_PANEL_SCREENSHOTS") {
        node.env("SCREENSHOTS", dir);
    }
    let out = node.output().expect("node (./dev/setup installs it)");
    stop.store(true, Ordering::Relaxed);
    let _ = beats.join();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success() && stdout.contains("PANEL-BROWSER-OK"),
        "browser steps failed after {:?}:\n{stdout}\n{}\nserver log:\n{}",
        started.elapsed(),
        String::from_utf8_lossy(&out.stderr),
        serve.log()
    );

    // What the browser did is what the server holds.
    pending.join().expect("the approved machine enrolled");
    let enrolled = Credential::load(&pending_state).expect("load");
    assert!(enrolled.is_some(), "approved in the browser, then enrolled");
    let retired = store
        .appliance_by_id(retire_id)
        .expect("get")
        .expect("there");
    assert!(retired.revoked_at.is_some(), "retired in the browser");
    let live_row = store
        .appliance(LIVE.parse().expect("mac"))
        .expect("get")
        .expect("there");
    assert!(
        live_row.revoked_at.is_none(),
        "CSRF and read-only attempts changed nothing"
    );
    let audit = store.audit(None, 100).expect("audit");
    for action in [
        "approve",
        "retire",
        "customer-apply",
        "login",
        "logout",
        "password",
    ] {
        assert!(
            audit.iter().any(|e| e.action == action),
            "audit has {action}: {audit:?}"
        );
    }
    drop(serve);
}
