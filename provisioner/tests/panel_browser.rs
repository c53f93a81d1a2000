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

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use levee_agent::daemon::{run, RunOptions};
use levee_agent::enroll::{Credential, MtlsClient};
use levee_proto::report::StatusReport;
use levee_proto::runs::{RunKind, RunReport, RunResult};
use levee_provisioner::secrets::ServerKey;
use levee_provisioner::store::{NewAlert, Registration};

const LIVE: &str = "52:54:00:1e:00:01";
const RETIRE: &str = "52:54:00:1e:00:02";
const PENDING: &str = "52:54:00:1e:00:03";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One pass of the real agent service for `mac` (a pending machine's
/// blocks until it is approved, then enrolls).
fn agent_pass(http: &str, mac: &str, state: &Path) {
    let script = reqwest::blocking::get(format!("{http}/boot/{mac}.ipxe"))
        .expect("script")
        .text()
        .expect("body");
    let kernel = script
        .lines()
        .find(|l| l.starts_with("kernel "))
        .unwrap_or_else(|| panic!("no kernel line in {script}"));
    let cmdline = state.with_extension("cmdline");
    let bootif = format!("BOOTIF=01-{}", mac.replace(':', "-"));
    std::fs::write(&cmdline, format!("{kernel} {bootif} levee.interval=1")).expect("cmdline");
    run(&RunOptions {
        cmdline,
        once: true,
        state_dir: state.to_path_buf(),
        enroll_retry: Duration::from_millis(300),
        set_clock: false,
        ..RunOptions::default()
    })
    .expect("agent pass");
}

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

    let (http_port, https_port, ui_port) = (free_port(), free_port(), free_port());
    let http = format!("http://127.0.0.1:{http_port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_levee"))
        .arg("--data-dir")
        .arg(&data)
        .args(["serve", "--no-tftp", "--http"])
        .arg(format!("127.0.0.1:{http_port}"))
        .arg("--https")
        .arg(format!("127.0.0.1:{https_port}"))
        .arg("--ui")
        .arg(format!("127.0.0.1:{ui_port}"))
        .arg("--public-url")
        .arg(&http)
        .arg("--ipxe-dir")
        .arg(dir.path())
        .env_remove("LEVEE_DATABASE")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("levee serve");
    let stdout = child.stdout.take().expect("stdout");
    let serve = Serve(child);
    // `levee serve` prints the panel's URL at start-up.
    let mut first = String::new();
    BufReader::new(stdout).read_line(&mut first).expect("read");
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("https://"))
        .unwrap_or_else(|| panic!("no panel URL in {first:?}"))
        .to_string();
    assert_eq!(url, format!("https://127.0.0.1:{ui_port}/"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while reqwest::blocking::get(format!("{http}/api/v1/time")).is_err() {
        assert!(Instant::now() < deadline, "levee serve did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }

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
        "browser steps failed after {:?}:\n{stdout}\n{}",
        started.elapsed(),
        String::from_utf8_lossy(&out.stderr)
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
