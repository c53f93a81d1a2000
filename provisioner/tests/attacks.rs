//! Issue 11: the attacks of its "Why" items 1, 2, 4 and 7, each tried
//! against a real `levee serve` process on 127.0.0.1 (SQLite and
//! PostgreSQL) with two customers, and each refused; the legitimate
//! appliance's heartbeat and configuration pull succeed before and after
//! every attempt. docs/SECURITY.md says what each defence covers.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{wait_until, Cli, ServeProcess};
use levee_proto::enroll::{key_sha256, paths, short_fingerprint, EnrollmentResponse};
use levee_provisioner::store::testing::PgServer;
use levee_provisioner::store::Store;
use reqwest::blocking::Client;
use reqwest::StatusCode;

const MAC_A: &str = "52:54:00:11:00:01";
const MAC_B: &str = "52:54:00:11:00:02";
const MAC_PENDING: &str = "52:54:00:11:00:03";
const MAC_FRESH: &str = "52:54:00:11:00:04";
const MAC_UNKNOWN: &str = "52:54:00:11:00:05";

/// A data directory (and a PostgreSQL server, for that variant), a store
/// the test reads and writes like a second operator, and a `levee serve`.
struct World {
    dir: tempfile::TempDir,
    _pg: Option<PgServer>,
    database: Option<String>,
    store: Arc<dyn Store>,
    serve: ServeProcess,
    http: String,
    plain: Client,
}

fn customer_config(name: &str) -> serde_json::Value {
    serde_json::json!({
        "customer": name,
        "heartbeat_interval": "5m",
        "sources": [
            {"name": "f", "smb": format!("smb://u@{name}-nas/s"), "password": format!("{name}-smb-secret")},
            {"name": "g", "smb": format!("smb://u@{name}-nas/t"), "password": format!("{name}-other-secret")}
        ],
    })
}

impl World {
    fn new(postgres: bool) -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let pg = postgres.then(PgServer::start);
        let database = pg.as_ref().map(|p| p.create_db("levee"));
        let store = common::open_store(&data, database.as_deref());
        common::add_default_profile(
            dir.path(),
            &data,
            store.as_ref(),
            "levee.ca={ca} levee.token={token}",
        );
        for name in ["alpha", "beta"] {
            common::add_customer(store.as_ref(), &data, customer_config(name));
        }
        for (mac, c) in [(MAC_A, "alpha"), (MAC_B, "beta"), (MAC_FRESH, "alpha")] {
            common::register(store.as_ref(), mac, c);
        }
        let serve = ServeProcess::spawn(
            &data,
            database.as_deref(),
            &dir.path().join("serve.log"),
            &[],
        );
        World {
            dir,
            _pg: pg,
            database,
            store,
            http: serve.http.clone(),
            serve,
            // A new connection per request: the server closes one after
            // refusing an oversized body, and a pooled client would send
            // the next request on it (a send error, not an answer).
            plain: Client::builder()
                .timeout(Duration::from_secs(20))
                .pool_max_idle_per_host(0)
                .build()
                .expect("client"),
        }
    }

    fn log(&self) -> String {
        self.serve.log()
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `levee ARGS` on this world's store: (success, stdout, stderr).
    fn levee(&self, args: &[&str]) -> (bool, String, String) {
        let cli = Cli {
            data: self.data(),
            database: self.database.clone(),
        };
        let out = cli.run(args).expect("levee");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn levee_ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.levee(args);
        assert!(ok, "levee {args:?}: {err}");
        out
    }

    /// The boot script of `mac` and the token on its command line ("" when
    /// it carries none); `None` when the script is a refusal.
    fn script_token(&self, mac: &str) -> Option<String> {
        let script = self
            .plain
            .get(format!("{}/boot/{mac}.ipxe", self.http))
            .send()
            .expect("script")
            .text()
            .expect("body");
        if script.contains("will not boot") {
            return None;
        }
        Some(
            script
                .split_whitespace()
                .find_map(|w| w.strip_prefix("levee.token="))
                .unwrap_or_else(|| panic!("no levee.token= in {script}"))
                .to_string(),
        )
    }

    fn token(&self, mac: &str) -> String {
        let t = self.script_token(mac).expect("a boot script");
        assert!(!t.is_empty(), "no token for {mac}");
        t
    }

    fn enroll_with(&self, token: &str, mac: &str, csr: &str) -> (StatusCode, String) {
        let resp = self
            .plain
            .post(format!("{}{}", self.http, paths::ENROLL))
            .json(&serde_json::json!({
                "token": token, "mac": mac, "csr_pem": csr,
                "facts": {"macs": [mac], "dmi_serial": "S", "disks": []},
            }))
            .send()
            .expect("enroll");
        let status = resp.status();
        (status, resp.text().expect("body"))
    }

    fn enroll_key(&self, token: &str, mac: &str, key: &rcgen::KeyPair) -> (StatusCode, String) {
        self.enroll_with(token, mac, &csr(key))
    }

    /// The legitimate appliance: script, token, its own key, certificate.
    fn enroll(&self, mac: &str) -> Appliance {
        let token = self.token(mac);
        let key = rcgen::KeyPair::generate().expect("key");
        let (status, body) = self.enroll_key(&token, mac, &key);
        assert_eq!(status, StatusCode::OK, "{body}");
        Appliance::new(mac, &key, serde_json::from_str(&body).expect("response"))
    }

    fn report(&self, body: &str, token: Option<&str>) -> StatusCode {
        self.report_raw(body, token).expect("report")
    }

    /// A report; `Err` when the server closed the connection before the
    /// client had sent it all (a refused oversized body may end that way).
    fn report_raw(&self, body: &str, token: Option<&str>) -> reqwest::Result<StatusCode> {
        let mut r = self
            .plain
            .post(format!("{}{}", self.http, levee_proto::paths::REPORT))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send().map(|r| r.status())
    }

    fn appliance(&self, mac: &str) -> levee_provisioner::store::Appliance {
        self.store
            .appliance(mac.parse().expect("mac"))
            .expect("store")
            .expect("appliance")
    }

    fn steps(&self, mac: &str) -> Vec<String> {
        self.store
            .events(mac.parse().expect("mac"), 500)
            .expect("events")
            .into_iter()
            .map(|e| e.step)
            .collect()
    }
}

fn csr(key: &rcgen::KeyPair) -> String {
    rcgen::CertificateParams::default()
        .serialize_request(key)
        .expect("csr")
        .pem()
        .expect("pem")
}

fn error_of(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.to_string())
}

/// An enrolled appliance: a client holding its certificate.
struct Appliance {
    mac: String,
    resp: EnrollmentResponse,
    client: Client,
}

impl Appliance {
    fn new(mac: &str, key: &rcgen::KeyPair, resp: EnrollmentResponse) -> Appliance {
        let pem = format!("{}\n{}", resp.certificate_pem, key.serialize_pem());
        let client = Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(resp.ca_pem.as_bytes()).expect("ca"),
            )
            .identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("identity"))
            .timeout(Duration::from_secs(20))
            .build()
            .expect("client");
        Appliance {
            mac: mac.to_string(),
            resp,
            client,
        }
    }

    fn config(&self) -> (StatusCode, String) {
        let r = self
            .client
            .get(format!("{}{}", self.resp.https_url, paths::CONFIG))
            .send()
            .expect("config");
        let s = r.status();
        (s, r.text().expect("body"))
    }

    fn heartbeat(&self) -> StatusCode {
        self.client
            .post(format!("{}{}", self.resp.https_url, paths::HEARTBEAT))
            .json(&serde_json::json!({"mac": self.mac, "image_version": "1.0"}))
            .send()
            .expect("heartbeat")
            .status()
    }

    fn renew(&self, key: &rcgen::KeyPair) -> (StatusCode, String) {
        let r = self
            .client
            .post(format!("{}{}", self.resp.https_url, paths::RENEW))
            .json(&serde_json::json!({"csr_pem": csr(key)}))
            .send()
            .expect("renew");
        let s = r.status();
        (s, r.text().expect("body"))
    }

    /// The legitimate appliance still works: heartbeat and config pull,
    /// with its own customer's secrets.
    fn still_works(&self, customer: &str) {
        assert_eq!(
            self.heartbeat(),
            StatusCode::OK,
            "heartbeat of {}",
            self.mac
        );
        let (s, body) = self.config();
        assert_eq!(s, StatusCode::OK, "config of {}: {body}", self.mac);
        assert!(body.contains(&format!("{customer}-smb-secret")), "{body}");
    }
}

/// Item 1: a fresh token and the attacker's CSR for an enrolled appliance.
fn takeover_of_an_enrolled_appliance(postgres: bool) {
    let w = World::new(postgres);
    let a = w.enroll(MAC_A);
    a.still_works("alpha");
    let cert = w.appliance(MAC_A).cert_fingerprint;

    // Its boot script (HTTP; TFTP renders the same) carries no token now.
    assert_eq!(w.script_token(MAC_A).as_deref(), Some(""));
    // A token minted before it enrolled (as if sniffed), or any guess:
    // refused, and the appliance's certificate is untouched.
    let stale = "ab".repeat(32);
    w.store
        .put_token(
            &levee_provisioner::enroll::token::token_hash(&stale),
            MAC_A.parse().expect("mac"),
            levee_provisioner::store::now() + 600,
            None,
        )
        .expect("token");
    let attacker = rcgen::KeyPair::generate().expect("key");
    for token in [stale.as_str(), "", &"cd".repeat(32)] {
        let (s, body) = w.enroll_key(token, MAC_A, &attacker);
        assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
        assert!(error_of(&body).contains("reenroll"), "{body}");
    }
    assert_eq!(w.appliance(MAC_A).cert_fingerprint, cert);
    assert!(w.steps(MAC_A).contains(&"enroll-refused".to_string()));
    a.still_works("alpha");

    // Many tokens for one machine: a new one invalidates the older.
    let t1 = w.token(MAC_FRESH);
    let t2 = w.token(MAC_FRESH);
    let key = rcgen::KeyPair::generate().expect("key");
    let (s, body) = w.enroll_key(&t1, MAC_FRESH, &key);
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(error_of(&body).contains("superseded"), "{body}");
    // ... and they cannot be minted at will: per MAC, then overall.
    let mut refused = 0;
    for _ in 0..15 {
        if w.script_token(MAC_FRESH).is_none() {
            refused += 1;
        }
    }
    assert!(refused >= 5, "{refused} of 15 scripts refused");
    let (s, body) = w.enroll_key(&t2, MAC_FRESH, &key);
    assert_eq!(s, StatusCode::FORBIDDEN, "t2 was superseded too: {body}");
    a.still_works("alpha");

    // Ops arms exactly one re-enrollment: the old certificate is revoked
    // when the new one is issued, both in the history and the log at warn.
    w.levee_ok(&["appliance", "reenroll", MAC_A]);
    let again = w.enroll(MAC_A);
    let (s, body) = a.config();
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    assert!(error_of(&body).contains("superseded"), "{body}");
    again.still_works("alpha");
    let steps = w.steps(MAC_A);
    for step in ["reenroll", "cert-revoked", "reenrolled"] {
        assert!(steps.contains(&step.to_string()), "{step}: {steps:?}");
    }
    let log = w.log();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("old certificate revoked")),
        "{log}"
    );
    // Exactly one: the next script has no token again.
    assert_eq!(w.script_token(MAC_A).as_deref(), Some(""));
    again.still_works("alpha");

    // The overall rate: scripts for many machines are refused at some
    // point (300 at once, then 20 a second). Eight clients at once, so the
    // flood outruns the refill even on a loaded machine; whatever the time
    // it took, at most 300 + 20/s of it may have been granted.
    let started = Instant::now();
    let refused: usize = std::thread::scope(|s| {
        let w = &w;
        let clients: Vec<_> = (0..8u32)
            .map(|t| {
                s.spawn(move || {
                    (0..75u32)
                        .filter(|i| {
                            let n = t * 75 + i;
                            let mac = format!("52:54:00:12:{:02x}:{:02x}", n / 256, n % 256);
                            w.script_token(&mac).is_none()
                        })
                        .count()
                })
            })
            .collect();
        clients
            .into_iter()
            .map(|c| c.join().expect("client thread"))
            .sum()
    });
    let secs = started.elapsed().as_secs_f64();
    let granted_at_most = 300.0 + 20.0 * secs;
    let must_refuse = (600.0 - granted_at_most).max(1.0) as usize;
    assert!(
        refused >= must_refuse,
        "{refused} of 600 scripts refused in {secs:.1} s; at least {must_refuse} must be"
    );
    again.still_works("alpha");
}

/// Item 2: a second enrollment with a new token and another key for a
/// pending machine.
fn hijack_of_a_pending_machine(postgres: bool) {
    let w = World::new(postgres);
    let a = w.enroll(MAC_A);
    a.still_works("alpha");

    let real = rcgen::KeyPair::generate().expect("key");
    let real_fp = short_fingerprint(&key_sha256(&real.public_key_der()));
    let token = w.token(MAC_PENDING);
    let (s, body) = w.enroll_key(&token, MAC_PENDING, &real);
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    assert!(
        body.contains(&real_fp),
        "the approve command names the key: {body}"
    );

    let evil = rcgen::KeyPair::generate().expect("key");
    let evil_fp = short_fingerprint(&key_sha256(&evil.public_key_der()));
    let token = w.token(MAC_PENDING);
    let (s, body) = w.enroll_key(&token, MAC_PENDING, &evil);
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    assert_eq!(
        w.appliance(MAC_PENDING).pending_key,
        Some(key_sha256(&real.public_key_der())),
        "the first key is kept"
    );
    let list = w.levee_ok(&["appliance", "list"]);
    let row = list.lines().find(|l| l.contains(MAC_PENDING)).expect("row");
    assert!(
        row.contains(&real_fp) && row.contains("CONFLICT") && row.contains(&evil_fp),
        "{list}"
    );
    let shown = w.levee_ok(&["appliance", "show", MAC_PENDING]);
    assert!(
        shown.contains("key conflict") && shown.contains(&evil_fp),
        "{shown}"
    );

    // Ops must pick the key; a fingerprint that is not the console's is
    // refused, and nothing is approved.
    let (ok, _, err) = w.levee(&["appliance", "approve", MAC_PENDING, "--customer", "alpha"]);
    assert!(!ok && err.contains("--fingerprint"), "{err}");
    let (ok, _, err) = w.levee(&[
        "appliance",
        "approve",
        MAC_PENDING,
        "--customer",
        "alpha",
        "--fingerprint",
        "0000-1111-2222-3333",
    ]);
    assert!(!ok && err.contains("does not match"), "{err}");
    assert!(!w.appliance(MAC_PENDING).approved());
    w.levee_ok(&[
        "appliance",
        "approve",
        MAC_PENDING,
        "--customer",
        "alpha",
        "--fingerprint",
        &real_fp,
    ]);
    // The attacker's retries get nothing; the real machine's does.
    let (s, _) = w.enroll_key(&token, MAC_PENDING, &evil);
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, body) = w.enroll_key("", MAC_PENDING, &real);
    assert_eq!(s, StatusCode::OK, "{body}");
    let p = Appliance::new(
        MAC_PENDING,
        &real,
        serde_json::from_str(&body).expect("response"),
    );
    p.still_works("alpha");
    // And once enrolled, no token for it at all.
    assert_eq!(w.script_token(MAC_PENDING).as_deref(), Some(""));
    let (s, _) = w.enroll_key(&token, MAC_PENDING, &evil);
    assert_eq!(s, StatusCode::FORBIDDEN);
    a.still_works("alpha");
}

/// Item 4: unauthenticated, forged, oversized and flooding reports.
fn reports_need_a_token(postgres: bool) {
    let w = World::new(postgres);
    let a = w.enroll(MAC_A);
    a.still_works("alpha");
    let report = |mac: &str, extra: &str| {
        format!("{{\"mac\":\"{mac}\",\"stage\":\"agent\",\"version\":\"9.9\"{extra}}}")
    };
    // Marking an appliance online with any version: refused without the
    // token, with a guessed one, with another MAC's.
    assert_eq!(w.report(&report(MAC_A, ""), None), StatusCode::UNAUTHORIZED);
    assert_eq!(
        w.report(&report(MAC_A, ""), Some(&"ab".repeat(32))),
        StatusCode::FORBIDDEN
    );
    let fresh = w.token(MAC_FRESH);
    assert_eq!(
        w.report(&report(MAC_A, ""), Some(&fresh)),
        StatusCode::FORBIDDEN
    );
    // (Its last report is its own heartbeat's, not the forged 9.9.)
    let last = w
        .appliance(MAC_A)
        .last_report
        .expect("the heartbeat's report");
    assert_eq!(last.version, None, "{last:?}");
    // Rows for arbitrary MACs: not even with that MAC's own token.
    let unknown = w.token(MAC_UNKNOWN);
    assert_eq!(
        w.report(&report(MAC_UNKNOWN, ""), Some(&unknown)),
        StatusCode::NOT_FOUND
    );
    assert!(w
        .store
        .appliance(MAC_UNKNOWN.parse().expect("mac"))
        .expect("store")
        .is_none());
    // The machine's own report with its token is taken (stage 1).
    assert_eq!(
        w.report(&report(MAC_FRESH, ""), Some(&fresh)),
        StatusCode::OK
    );
    assert_eq!(
        w.appliance(MAC_FRESH)
            .last_report
            .and_then(|r| r.version)
            .as_deref(),
        Some("9.9")
    );
    // Filling the disk: 20 reports of 2 MB are refused before they are
    // read, and a long field is refused.
    let size = |w: &World| -> u64 {
        ["levee.sqlite", "levee.sqlite-wal"]
            .iter()
            .filter_map(|f| std::fs::metadata(w.data().join(f)).ok())
            .map(|m| m.len())
            .sum()
    };
    let before = size(&w);
    let big = report(
        MAC_FRESH,
        &format!(",\"boot_id\":\"{}\"", "x".repeat(2 << 20)),
    );
    for _ in 0..20 {
        if let Ok(s) = w.report_raw(&big, Some(&fresh)) {
            assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
        }
    }
    let long = report(MAC_FRESH, &format!(",\"boot_id\":\"{}\"", "x".repeat(100)));
    assert_eq!(w.report(&long, Some(&fresh)), StatusCode::BAD_REQUEST);
    if !postgres {
        let grown = size(&w).saturating_sub(before);
        assert!(grown < 1 << 20, "the database grew by {grown} bytes");
    }
    // Flooding: rate-limited per MAC.
    let limited = (0..40)
        .filter(|_| w.report(&report(MAC_FRESH, ""), Some(&fresh)) == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert!(limited > 0, "40 reports in a row, none limited");
    // Heartbeats stay on mutual TLS.
    a.still_works("alpha");
}

/// Item 7: escape sequences for the operator's terminal, `register
/// --customer` moving an enrolled appliance, a P-384 request, a sealed
/// secret swapped into another field, world-readable files, unlimited
/// renewal.
fn smaller_holes(postgres: bool) {
    let w = World::new(postgres);
    let key_a = rcgen::KeyPair::generate().expect("key");
    let token = w.token(MAC_A);
    let (s, body) = w.enroll_key(&token, MAC_A, &key_a);
    assert_eq!(s, StatusCode::OK, "{body}");
    let a = Appliance::new(
        MAC_A,
        &key_a,
        serde_json::from_str(&body).expect("response"),
    );
    a.still_works("alpha");

    // Control characters: refused in reports and enrollment facts; what
    // reaches the store anyway (older data, the database) is escaped.
    let fresh = w.token(MAC_FRESH);
    let esc = format!("{{\"mac\":\"{MAC_FRESH}\",\"stage\":\"\\u001b]0;pwned\\u0007\"}}");
    assert_eq!(w.report(&esc, Some(&fresh)), StatusCode::BAD_REQUEST);
    w.store
        .add_event(
            MAC_A.parse().expect("mac"),
            "report",
            "\u{1b}[2J\u{1b}[H\nnow  approved         forged line",
        )
        .expect("event");
    w.levee_ok(&[
        "appliance",
        "register",
        "--mac",
        MAC_B,
        "--serial",
        "SN\u{1b}[31m",
    ]);
    for args in [
        vec!["appliance", "show", MAC_A],
        vec!["appliance", "list"],
        vec!["appliance", "show", MAC_B],
    ] {
        let out = w.levee_ok(&args);
        assert!(!out.contains('\u{1b}'), "{args:?}: raw escape in {out:?}");
        assert!(!out.contains("\nnow  approved"), "{args:?}: forged line");
    }
    assert!(w
        .levee_ok(&["appliance", "show", MAC_A])
        .contains("\\u{1b}[2J"));

    // `register --customer` cannot move an enrolled appliance.
    let (ok, _, err) = w.levee(&[
        "appliance",
        "register",
        "--mac",
        MAC_A,
        "--customer",
        "beta",
    ]);
    assert!(
        !ok && err.contains("already serves customer alpha"),
        "{err}"
    );
    a.still_works("alpha");
    let (_, body) = a.config();
    assert!(!body.contains("beta-smb-secret"), "{body}");

    // Only P-256 keys, checked on the key itself.
    let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("key");
    let token = w.token(MAC_FRESH);
    let (s, body) = w.enroll_key(&token, MAC_FRESH, &p384);
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    assert!(error_of(&body).contains("P-256"), "{body}");

    // A secret swapped into another field (someone with write access to
    // the database): the configuration is refused, not served mixed up.
    let stored = w.store.customer("alpha").expect("store").expect("alpha");
    let mut swapped = stored.config.clone();
    swapped.sources[1].password = swapped.sources[0].password.clone();
    // On PostgreSQL a server learns of a write it did not make through
    // NOTIFY, milliseconds after the commit (and a cached entry lives at
    // most api_cache::MAX_AGE, 5 s): until then it may serve the previous,
    // intact configuration, never the swapped one.
    w.store.put_customer(&swapped).expect("swap");
    let mut last = (StatusCode::OK, String::new());
    wait_until(
        "the swapped configuration to be refused",
        Duration::from_secs(6),
        || {
            last = a.config();
            // The swap gives both sources alpha's first password.
            assert!(
                last.1.matches("alpha-smb-secret").count() <= 1,
                "served mixed up: {}",
                last.1
            );
            last.0 != StatusCode::OK
        },
    );
    assert_eq!(last.0, StatusCode::INTERNAL_SERVER_ERROR, "{}", last.1);
    assert!(!last.1.contains("alpha-smb-secret"), "{}", last.1);
    w.store.put_customer(&stored.config).expect("restore");
    wait_until(
        "the restored configuration to be served",
        Duration::from_secs(6),
        || a.config().0 == StatusCode::OK,
    );
    a.still_works("alpha");

    // Private files.
    if !postgres {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&w.data()), 0o700);
        assert_eq!(mode(&w.data().join("levee.sqlite")), 0o600);
    }

    // Renewal: only in the certificate's last third, and rate-limited.
    let (s, body) = a.renew(&rcgen::KeyPair::generate().expect("key"));
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    assert!(error_of(&body).contains("last third"), "{body}");
    a.still_works("alpha");
    let mut current = a;
    let mut limited = false;
    for _ in 0..4 {
        // As if 80 days had passed.
        let rec = w.appliance(MAC_A);
        w.store
            .record_certificate(
                rec.id,
                rec.cert_fingerprint.as_deref().expect("cert"),
                levee_provisioner::store::now() + 10 * 86_400,
                false,
            )
            .expect("age");
        let key = rcgen::KeyPair::generate().expect("key");
        let (s, body) = current.renew(&key);
        if s == StatusCode::TOO_MANY_REQUESTS {
            limited = true;
            break;
        }
        assert_eq!(s, StatusCode::OK, "{body}");
        let resp: EnrollmentResponse = serde_json::from_str(&body).expect("renewed");
        current = Appliance::new(
            MAC_A,
            &key,
            EnrollmentResponse {
                https_url: current.resp.https_url.clone(),
                ..resp
            },
        );
        current.still_works("alpha");
        // Just renewed: the window is shut again.
        assert_eq!(
            current.renew(&rcgen::KeyPair::generate().expect("key")).0,
            StatusCode::CONFLICT
        );
    }
    assert!(limited, "four renewals in a row, none limited");
    current.still_works("alpha");
}

macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(#[test] fn $name() { super::$name(false) })*
        }
        mod on_postgres {
            $(#[test] fn $name() { super::$name(true) })*
        }
    };
}

on_both_stores!(
    takeover_of_an_enrolled_appliance,
    hijack_of_a_pending_machine,
    reports_need_a_token,
    smaller_holes,
);
