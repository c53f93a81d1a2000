//! `levee serve --metrics` (issue 15): a real server on 127.0.0.1, three
//! simulated appliances going through the real API (boot script,
//! enrollment, config pulls, heartbeats, run reports), one retired with
//! the CLI; `/metrics` then says exactly that, and `promtool check
//! metrics` (Debian's `prometheus` package, installed by dev/setup)
//! accepts it. On SQLite and PostgreSQL (whose size comes from the server).

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::ServeProcess;

use levee_proto::enroll::{paths, EnrollmentResponse};
use levee_proto::runs::{RunKind, RunReport, RunResult};
use levee_provisioner::store::testing::PgServer;
use reqwest::blocking::Client;

const MACS: [&str; 3] = [
    "52:54:00:15:00:01",
    "52:54:00:15:00:02",
    "52:54:00:15:00:03",
];

/// A store with an image as the default profile, customer `acme` with a
/// daily backup, and the three machines registered for it.
fn prepare(data: &Path, database: Option<&str>) {
    let store = common::open_store(data, database);
    common::add_default_profile(
        data,
        data,
        store.as_ref(),
        "levee.ca={ca} levee.token={token}",
    );
    common::add_customer(
        store.as_ref(),
        data,
        serde_json::json!({
            "customer": "acme",
            "sources": [{"name": "docs", "path": "/srv/docs"}],
            "schedules": [{"name": "daily", "every": "1d"}],
            "install": {"to_disk": false},
        }),
    );
    for mac in MACS {
        common::register(store.as_ref(), mac, "acme");
    }
    store.close();
}

/// `levee serve` with `--metrics` on a port of its own. Ready when the
/// plain listener answers (not /metrics: its store gauges would be cached
/// from before the test's traffic).
struct Serve {
    /// Killed with the test.
    _process: ServeProcess,
    http: String,
    metrics: String,
}

impl Serve {
    fn start(data: &Path, database: Option<&str>) -> Serve {
        let mp = common::free_port();
        let process = ServeProcess::spawn(
            data,
            database,
            &data.join("serve.log"),
            &["--metrics", &format!("127.0.0.1:{mp}")],
        );
        Serve {
            http: process.http.clone(),
            metrics: format!("http://127.0.0.1:{mp}/metrics"),
            _process: process,
        }
    }
}

/// Boot script (its token), then enrollment: a client with the certificate.
fn enroll(http: &str, mac: &str) -> (EnrollmentResponse, Client) {
    let plain = Client::new();
    let script = plain
        .get(format!("{http}/boot/{mac}.ipxe"))
        .send()
        .and_then(|r| r.text())
        .expect("boot script");
    let token = script
        .split_whitespace()
        .find_map(|w| w.strip_prefix("levee.token="))
        .unwrap_or_else(|| panic!("no token in the boot script:\n{script}"));
    let key = rcgen::KeyPair::generate().expect("key");
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .expect("csr");
    let resp: EnrollmentResponse = plain
        .post(format!("{http}{}", paths::ENROLL))
        .json(&serde_json::json!({
            "token": token, "mac": mac, "csr_pem": csr,
            "facts": {"macs": [mac], "dmi_serial": "S", "dmi_uuid": "U", "disks": []},
        }))
        .send()
        .and_then(|r| r.error_for_status())
        .and_then(|r| r.json())
        .expect("enrollment");
    let pem = format!("{}\n{}", resp.certificate_pem, key.serialize_pem());
    let client = Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(resp.ca_pem.as_bytes()).expect("ca"))
        .identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("identity"))
        .build()
        .expect("client");
    (resp, client)
}

fn run_report(result: RunResult) -> Vec<u8> {
    let now = levee_provisioner::store::now() as i64;
    let mut r = RunReport::new(RunKind::Backup, now - 120);
    r.job = Some("daily".into());
    r.sources = vec!["docs".into()];
    r.ended_at = now - 60;
    r.result = result;
    if result != RunResult::Failed {
        r.snapshot = Some("0123456789abcdef".into());
    }
    r.to_bytes()
}

/// Drives the fleet through the API, then checks the scrape.
fn metrics_follow_the_fleet(postgres: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let pg = postgres.then(PgServer::start);
    let database = pg.as_ref().map(|p| p.create_db("levee"));
    prepare(&data, database.as_deref());
    let serve = Serve::start(&data, database.as_deref());

    let mut ids = Vec::new();
    for (n, mac) in MACS.iter().enumerate() {
        let (resp, client) = enroll(&serve.http, mac);
        let config = |etag: Option<&str>| {
            let mut req = client.get(format!("{}{}", resp.https_url, paths::CONFIG));
            if let Some(t) = etag {
                req = req.header("if-none-match", t);
            }
            req.send().expect("config pull")
        };
        let first = config(None);
        assert_eq!(first.status(), 200);
        let etag = first.headers()["etag"].to_str().expect("etag").to_string();
        assert_eq!(config(Some(&etag)).status(), 304);
        let hb = client
            .post(format!("{}{}", resp.https_url, paths::HEARTBEAT))
            .json(&serde_json::json!({"mac": mac, "image_version": "1.0"}))
            .send()
            .expect("heartbeat");
        assert_eq!(hb.status(), 200);
        // Appliance 0 backs up fine twice, 1 fails once, 2 never reports.
        let results: &[RunResult] = match n {
            0 => &[RunResult::Success, RunResult::Success],
            1 => &[RunResult::Failed],
            _ => &[],
        };
        for r in results {
            let sent = client
                .post(format!("{}{}", resp.https_url, paths::RUNS))
                .body(run_report(*r))
                .header("content-type", "application/json")
                .send()
                .expect("run report");
            assert_eq!(sent.status(), 200, "{:?}", sent.text());
        }
        ids.push(resp.appliance_id);
    }
    // A forged enrollment is refused and counted.
    let refused = Client::new()
        .post(format!("{}{}", serve.http, paths::ENROLL))
        .json(&serde_json::json!({
            "token": "forged", "mac": "52:54:00:15:00:99", "csr_pem": "x",
            "facts": {"macs": [], "dmi_serial": "S", "dmi_uuid": "U", "disks": []},
        }))
        .send()
        .expect("forged enrollment");
    assert!(refused.status().is_client_error());
    // Retired through the CLI, acting on the store directly.
    let mut cli = Command::new(env!("CARGO_BIN_EXE_levee"));
    cli.arg("--data-dir").arg(&data);
    match &database {
        Some(url) => cli.env("LEVEE_DATABASE", url),
        None => cli.env_remove("LEVEE_DATABASE"),
    };
    let retired = cli
        .args(["appliance", "retire", &ids[2].to_string()])
        .output()
        .expect("levee appliance retire");
    assert!(retired.status.success(), "{retired:?}");

    let body = Client::new()
        .get(&serve.metrics)
        .send()
        .and_then(|r| r.error_for_status())
        .and_then(|r| r.text())
        .expect("scrape");
    let m = parse(&body);
    let get = |key: &str| -> f64 {
        *m.get(key)
            .unwrap_or_else(|| panic!("no sample {key} in:\n{body}"))
    };
    assert_eq!(get("levee_heartbeats_total"), 3.0);
    assert_eq!(get(r#"levee_enrollments_total{result="issued"}"#), 3.0);
    assert!(get(r#"levee_enrollments_total{result="refused"}"#) >= 1.0);
    assert_eq!(get(r#"levee_config_pulls_total{result="served"}"#), 3.0);
    assert_eq!(
        get(r#"levee_config_pulls_total{result="not_modified"}"#),
        3.0
    );
    assert_eq!(get(r#"levee_boot_events_total{stage="script"}"#), 3.0);
    assert_eq!(
        get(r#"levee_runs_total{kind="backup",result="success"}"#),
        2.0
    );
    assert_eq!(
        get(r#"levee_runs_total{kind="backup",result="failed"}"#),
        1.0
    );
    assert_eq!(get(r#"levee_appliances{state="retired"}"#), 1.0);
    assert_eq!(get(r#"levee_appliances{state="enrolled"}"#), 2.0);
    assert_eq!(get(r#"levee_appliances{state="installed"}"#), 0.0);
    let a0 = format!(r#"{{appliance="{}",customer="acme"}}"#, ids[0]);
    let a1 = format!(r#"{{appliance="{}",customer="acme"}}"#, ids[1]);
    let age = get(&format!("levee_appliance_backup_age_seconds{a0}"));
    assert!((60.0..600.0).contains(&age), "backup age {age}");
    assert_eq!(
        get(&format!("levee_appliance_backup_failures_in_row{a1}")),
        1.0
    );
    assert!(get(&format!("levee_appliance_heartbeat_age_seconds{a0}")) < 600.0);
    // The retired appliance has no series of its own any more.
    assert!(
        !body.contains(&format!(r#"appliance="{}""#, ids[2])),
        "{body}"
    );
    assert!(get(r#"levee_store_bytes{store="database"}"#) > 0.0);
    assert!(get(r#"levee_store_bytes{store="images"}"#) >= 12.0);
    // Six config pulls through the mTLS listener, each timed.
    assert_eq!(
        get(
            r#"levee_http_request_duration_seconds_count{listener="https",route="/api/v1/config"}"#
        ),
        6.0
    );
    assert_eq!(
        get(r#"levee_http_requests_total{listener="http",route="/boot/{file}",status="2xx"}"#),
        3.0
    );
    promtool_accepts(&body);
}

/// `name{labels} value` lines as a map (comments skipped).
fn parse(body: &str) -> HashMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn promtool_accepts(body: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("promtool is missing ({e}): install Debian's `prometheus` package (dev/setup)")
        });
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn r15_metrics_on_sqlite() {
    metrics_follow_the_fleet(false);
}

#[test]
fn r15_metrics_on_postgres() {
    metrics_follow_the_fleet(true);
}
