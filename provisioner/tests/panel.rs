//! The web panel's API against a real `levee serve` (in process, on
//! 127.0.0.1, TLS with the Levee CA's certificate): sessions, the CSRF and
//! Origin checks, a session replayed after logout, read-only operators,
//! login rate limiting, the audit log and the appliance's history, the
//! customer editor's redaction and errors at their line, and the pages'
//! headers. tests/panel_browser.rs drives the same panel with Chromium.

mod common;

use std::sync::Arc;

use levee_provisioner::serve::{self, Listeners, ServeConfig};
use levee_provisioner::store::testing::PgServer;
use levee_provisioner::store::{Registration, Store};
use levee_provisioner::ui::{self, password, UiOptions, UiTls};
use reqwest::blocking::{Client, Response};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

struct Panel {
    _dir: tempfile::TempDir,
    data: std::path::PathBuf,
    cli: common::Cli,
    store: Arc<dyn Store>,
    url: String,
    client: Client,
    ca: reqwest::Certificate,
    stop: CancellationToken,
    _rt: tokio::runtime::Runtime,
    _pg: Option<PgServer>,
}

impl Drop for Panel {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn start() -> Panel {
    start_on(None)
}

/// The panel on SQLite, or on a PostgreSQL server of its own.
fn start_on(pg: Option<PgServer>) -> Panel {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let database = pg.as_ref().map(|pg| pg.create_db("panel"));
    let store = common::open_store(&data, database.as_deref());
    common::add_default_profile(dir.path(), &data, store.as_ref(), "x");
    let cli = common::Cli {
        data: data.clone(),
        database,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let stop = CancellationToken::new();
    let url = rt.block_on(async {
        let http = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("http");
        let panel = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("ui");
        let url = format!(
            "https://127.0.0.1:{}",
            panel.local_addr().expect("addr").port()
        );
        let config = ServeConfig {
            data_dir: data.clone(),
            ipxe_dir: dir.path().join("ipxe"),
            public_url: format!("http://{}", http.local_addr().expect("addr")),
            tftp_host: "127.0.0.1".into(),
            dhcp: None,
            grace: std::time::Duration::from_secs(2),
            alerts: Default::default(),
            limits: Default::default(),
            allow_pending: true,
            offsite: Default::default(),
            fleet_url: None,
        };
        let options = UiOptions {
            tls: UiTls::Ca {
                hosts: vec!["127.0.0.1".into()],
            },
        };
        let services = vec![("ui", ui::service(panel, options))];
        let listeners = Listeners {
            http,
            https: None,
            tftp: None,
            store: None,
        };
        tokio::spawn(serve::run_with(
            store.clone(),
            listeners,
            config,
            stop.clone(),
            services,
        ));
        url
    });
    // The panel's certificate is the Levee CA's: trust that and nothing
    // else. SQLite: DATA_DIR/ca/; PostgreSQL: the fleet CA in the database.
    let ca_path = data.join("ca").join("ca.crt");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let ca_pem = loop {
        if let Ok(pem) = std::fs::read(&ca_path) {
            break pem;
        }
        if let Some(stored) = store.server_ca().expect("fleet CA") {
            break stored.cert_pem.into_bytes();
        }
        assert!(std::time::Instant::now() < deadline, "no CA after 20 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let ca = reqwest::Certificate::from_pem(&ca_pem).expect("pem");
    let client = Client::builder()
        .add_root_certificate(ca.clone())
        .tls_built_in_root_certs(false)
        .build()
        .expect("client");
    let p = Panel {
        _dir: dir,
        data,
        cli,
        store,
        url,
        client,
        ca,
        stop,
        _rt: rt,
        _pg: pg,
    };
    // Up when the pages answer.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while p.client.get(&p.url).send().is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the panel never answered"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    p
}

/// A logged-in client: its cookie and CSRF token.
#[derive(Clone)]
struct Session {
    cookie: String,
    csrf: String,
}

impl Panel {
    fn operator(&self, name: &str, pw: &str, read_only: bool) {
        let hash = password::hash(pw).expect("hash");
        self.store
            .add_operator(name, &hash, read_only)
            .expect("add");
        self.store
            .set_operator_password(name, &hash, false)
            .expect("set");
    }

    fn login_raw(&self, name: &str, pw: &str) -> Response {
        self.client
            .post(format!("{}/ui/api/login", self.url))
            .json(&json!({"name": name, "password": pw}))
            .send()
            .expect("login")
    }

    fn login(&self, name: &str, pw: &str) -> Session {
        let r = self.login_raw(name, pw);
        assert_eq!(r.status(), 200, "login {name}");
        self.session_of(r)
    }

    fn get(&self, s: &Session, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(format!("{}/ui/api/{path}", self.url))
            .header("cookie", &s.cookie)
            .send()
            .expect("get");
        (r.status().as_u16(), r.json().unwrap_or(Value::Null))
    }

    fn post(
        &self,
        s: &Session,
        path: &str,
        body: Value,
        origin: Option<&str>,
        csrf: bool,
    ) -> (u16, Value) {
        let mut req = self
            .client
            .post(format!("{}/ui/api/{path}", self.url))
            .header("cookie", &s.cookie)
            .json(&body);
        if csrf {
            req = req.header("x-csrf-token", &s.csrf);
        }
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        let r = req.send().expect("post");
        (r.status().as_u16(), r.json().unwrap_or(Value::Null))
    }

    fn origin(&self) -> String {
        self.url.clone()
    }

    /// A client that trusts the Levee CA and presents `identity`, from
    /// `local` (another loopback address: another machine, as far as the
    /// per-address login limit goes).
    fn client_with(&self, identity: reqwest::Identity, local: &str) -> Client {
        Client::builder()
            .add_root_certificate(self.ca.clone())
            .tls_built_in_root_certs(false)
            .identity(identity)
            .local_address(local.parse::<std::net::IpAddr>().expect("ip"))
            .build()
            .expect("client")
    }

    /// The session a successful login answer opened (its cookie with the
    /// attributes that keep it from scripts and other sites).
    fn session_of(&self, r: Response) -> Session {
        let cookie = r
            .headers()
            .get("set-cookie")
            .expect("cookie")
            .to_str()
            .expect("ascii")
            .to_string();
        for attr in ["Secure", "HttpOnly", "SameSite=Strict"] {
            assert!(cookie.contains(attr), "{cookie}");
        }
        let body: Value = r.json().expect("json");
        Session {
            cookie: cookie.split(';').next().expect("pair").to_string(),
            csrf: body["csrf"].as_str().expect("csrf").to_string(),
        }
    }
}

fn appliance(p: &Panel, mac: &str, customer: Option<&str>) -> i64 {
    p.store
        .register_appliance(
            mac.parse().expect("mac"),
            &Registration {
                customer,
                ..Default::default()
            },
        )
        .expect("register")
        .id
}

fn customer(p: &Panel) {
    let key = levee_provisioner::secrets::ServerKey::load_or_create(&p.data).expect("key");
    let config = serde_json::from_value(json!({
        "customer": "acme",
        "sources": [{"name": "docs", "smb": "smb://backup@fs/docs", "password": "hunter2"}],
        "schedules": [{"name": "daily", "every": "1d"}],
    }))
    .expect("config");
    p.store
        .put_customer(&key.seal_config(&config))
        .expect("customer");
}

#[test]
fn one_time_password_first_then_csrf_origin_and_logout_are_enforced() {
    sessions_csrf_and_audit(start());
}

#[test]
fn one_time_password_first_then_csrf_origin_and_logout_are_enforced_on_postgres() {
    sessions_csrf_and_audit(start_on(Some(PgServer::start())));
}

fn sessions_csrf_and_audit(p: Panel) {
    // `levee operator add` as an operator runs it: a one-time password.
    let out = p.cli.ok(&["operator", "add", "ann"]).expect("operator add");
    let otp = out
        .lines()
        .find_map(|l| l.strip_prefix("one-time password: "))
        .expect("password printed")
        .to_string();
    assert_eq!(p.login_raw("ann", "wrong").status(), 401);
    assert_eq!(p.login_raw("nobody", &otp).status(), 401);
    let s = p.login("ann", &otp);
    let (status, body) = p.get(&s, "fleet");
    assert_eq!(status, 403, "a new password first: {body}");
    let (status, _) = p.post(
        &s,
        "password",
        json!({"current": otp, "new": "short"}),
        None,
        true,
    );
    assert_eq!(status, 400);
    let (status, _) = p.post(
        &s,
        "password",
        json!({"current": otp, "new": "a long new password"}),
        Some(&p.origin()),
        true,
    );
    assert_eq!(status, 200);
    assert_eq!(
        p.login_raw("ann", &otp).status(),
        401,
        "the one-time password worked once"
    );
    let (status, fleet) = p.get(&s, "fleet");
    assert_eq!(status, 200, "{fleet}");

    customer(&p);
    let id = appliance(&p, "52:54:00:0f:00:01", Some("acme"));
    // No CSRF token, or a foreign Origin: refused, nothing changes.
    let (status, _) = p.post(
        &s,
        &format!("appliances/{id}/retire"),
        json!({}),
        None,
        false,
    );
    assert_eq!(status, 403);
    let (status, body) = p.post(
        &s,
        &format!("appliances/{id}/retire"),
        json!({}),
        Some("https://evil.example"),
        true,
    );
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("another origin"),
        "{body}"
    );
    let a = p.store.appliance_by_id(id).expect("get").expect("there");
    assert_eq!(a.revoked_at, None, "still in service");
    // The same request from the panel's own origin works.
    let (status, body) = p.post(
        &s,
        &format!("appliances/{id}/retire"),
        json!({"reason": "stolen"}),
        Some(&p.origin()),
        true,
    );
    assert_eq!(status, 200, "{body}");
    assert!(p
        .store
        .appliance_by_id(id)
        .expect("get")
        .expect("there")
        .revoked_at
        .is_some());
    // Audited, and in the appliance's history (`levee appliance show`).
    let (_, audit) = p.get(&s, &format!("audit?target=appliance:{id}"));
    assert_eq!(audit["audit"][0]["operator"], "ann", "{audit}");
    assert_eq!(audit["audit"][0]["action"], "retire", "{audit}");
    let show = p
        .cli
        .ok(&["appliance", "show", &id.to_string()])
        .expect("show");
    assert!(show.contains("ann: retire stolen"), "{show}");
    let log = p.cli.ok(&["operator", "log"]).expect("log");
    assert!(log.contains("retire") && log.contains("login"), "{log}");
    // What the CLI changed is audited too, under the login that ran it.
    assert!(
        log.contains("operator-add") && log.contains("cli:"),
        "{log}"
    );

    // Logout ends the session on the server: the cookie replayed is dead.
    let (status, _) = p.post(&s, "logout", json!({}), Some(&p.origin()), true);
    assert_eq!(status, 200);
    let (status, _) = p.get(&s, "fleet");
    assert_eq!(status, 401, "a session replayed after logout");
    let (status, _) = p.post(
        &s,
        &format!("appliances/{id}/reinstall"),
        json!({}),
        None,
        true,
    );
    assert_eq!(status, 401);

    // A removed operator's session ends at once.
    p.operator("cy", "cy's long password", false);
    let c = p.login("cy", "cy's long password");
    assert_eq!(p.get(&c, "fleet").0, 200);
    p.cli.ok(&["operator", "remove", "cy"]).expect("remove");
    assert_eq!(p.get(&c, "fleet").0, 401);
}

#[test]
fn read_only_operators_change_nothing_and_logins_are_rate_limited() {
    let p = start();
    customer(&p);
    let id = appliance(&p, "52:54:00:0f:00:02", Some("acme"));
    let pending = appliance(&p, "52:54:00:0f:00:03", None);
    p.operator("ro", "read only password", true);
    let s = p.login("ro", "read only password");
    let o = p.origin();
    assert_eq!(p.get(&s, "fleet").0, 200);
    assert_eq!(p.get(&s, &format!("appliances/{id}")).0, 200);
    for (path, body) in [
        (format!("appliances/{id}/retire"), json!({})),
        (format!("appliances/{id}/reinstall"), json!({})),
        (
            format!("appliances/{id}/replace"),
            json!({"with": "52:54:00:0f:00:09"}),
        ),
        (
            format!("appliances/{pending}/approve"),
            json!({"customer": "acme"}),
        ),
        (
            "customers".into(),
            json!({"yaml": "customer: acme\nsources: []\n"}),
        ),
    ] {
        let (status, body) = p.post(&s, &path, body, Some(&o), true);
        assert_eq!(status, 403, "{path}: {body}");
        assert!(
            body["error"].as_str().unwrap_or("").contains("read-only"),
            "{body}"
        );
    }
    let a = p.store.appliance_by_id(id).expect("get").expect("there");
    assert!(a.revoked_at.is_none() && !a.reinstall);
    assert!(!p
        .store
        .appliance_by_id(pending)
        .expect("get")
        .expect("there")
        .approved());

    // Guessing one operator's password: cut off after a burst, even with
    // the right password (the limit is on attempts).
    p.operator("ann", "ann's long password", false);
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(p.login_raw("ann", "guess").status().as_u16());
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert_eq!(p.login_raw("ann", "ann's long password").status(), 429);
}

#[test]
fn customers_are_shown_redacted_and_errors_come_with_their_line() {
    let p = start();
    customer(&p);
    p.operator("ann", "ann's long password", false);
    let s = p.login("ann", "ann's long password");
    let o = p.origin();
    let (status, c) = p.get(&s, "customers/acme");
    assert_eq!(status, 200);
    let yaml = c["yaml"].as_str().expect("yaml").to_string();
    assert!(
        yaml.contains("********") && !yaml.contains("hunter2"),
        "{yaml}"
    );
    // An error: refused with its line, nothing stored.
    let bad = yaml.replace("every: 1d", "every: often");
    let line = bad.lines().position(|l| l.contains("often")).expect("line") + 1;
    let (status, e) = p.post(&s, "customers", json!({"yaml": bad}), Some(&o), true);
    assert_eq!(status, 422, "{e}");
    assert_eq!(e["line"], line as u64, "{e}");
    // A change with the secret left as ******** keeps the stored secret.
    let edited = yaml.replace("every: 1d", "every: 12h");
    let (status, r) = p.post(&s, "customers", json!({"yaml": edited}), Some(&o), true);
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["applied"], true, "{r}");
    let key = levee_provisioner::secrets::ServerKey::load_or_create(&p.data).expect("key");
    let stored = key
        .open_config(
            &p.store
                .customer("acme")
                .expect("get")
                .expect("there")
                .config,
        )
        .expect("open");
    assert_eq!(
        stored.sources[0].password.as_ref().expect("pw").0,
        "hunter2"
    );
    assert_eq!(stored.schedules[0].every.as_deref(), Some("12h"));
}

#[test]
fn pages_are_embedded_with_strict_headers() {
    let p = start();
    let r = p.client.get(&p.url).send().expect("page");
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .expect("csp")
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let html = r.text().expect("html");
    assert!(html.contains("/app.js"), "{html}");
    let mut total = html.len();
    for asset in ["app.js", "app.css"] {
        let r = p
            .client
            .get(format!("{}/{asset}", p.url))
            .send()
            .expect("asset");
        assert_eq!(r.status(), 200, "{asset}");
        total += r.bytes().expect("bytes").len();
    }
    assert!(total < 200 * 1024, "first load {total} bytes");
    // Without a session, the API says so.
    let r = p
        .client
        .get(format!("{}/ui/api/fleet", p.url))
        .send()
        .expect("api");
    assert_eq!(r.status(), 401);
}

/// Operator client certificates: `levee operator add --cert-out` and
/// `levee operator cert` issue one from the Levee CA; with it on the
/// connection, `{"certificate": true}` logs in without a password (CSRF
/// rules unchanged). Refused: no certificate, an appliance's certificate,
/// one from another CA (at the handshake), a certificate replaced by a
/// newer one or revoked (its open session ends too), a removed operator's;
/// a certificate-only operator has no password to guess.
#[test]
fn operator_client_certificates_log_in_and_are_revoked() {
    operator_certs(start());
}

#[test]
fn operator_client_certificates_log_in_and_are_revoked_on_postgres() {
    operator_certs(start_on(Some(PgServer::start())));
}

fn operator_certs(p: Panel) {
    let out = p.data.parent().expect("dir").join("certs");
    let stdout = p
        .cli
        .ok(&[
            "operator",
            "add",
            "bot",
            "--cert-out",
            out.to_str().expect("utf-8"),
        ])
        .expect("operator add --cert-out");
    assert!(stdout.contains("fingerprint: sha256:"), "{stdout}");
    assert!(!stdout.contains("one-time password"), "{stdout}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(out.join("bot.key"))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let list = p.cli.ok(&["operator", "list"]).expect("list");
    assert!(list.contains("certificate only"), "{list}");

    // Logins are limited to a burst of 10 per address: the operator cy
    // below works from 127.0.0.2.
    let with_cert_from = |dir: &std::path::Path, name: &str, local: &str| {
        let mut pem = std::fs::read(dir.join(format!("{name}.crt"))).expect("crt");
        pem.extend(std::fs::read(dir.join(format!("{name}.key"))).expect("key"));
        p.client_with(reqwest::Identity::from_pem(&pem).expect("identity"), local)
    };
    let with_cert = |dir: &std::path::Path, name: &str| with_cert_from(dir, name, "127.0.0.1");
    let bot = with_cert(&out, "bot");
    let cert_login = |c: &Client| {
        c.post(format!("{}/ui/api/login", p.url))
            .json(&json!({"certificate": true}))
            .send()
            .expect("login")
    };
    let r = cert_login(&bot);
    assert_eq!(r.status(), 200);
    let s = p.session_of(r);
    let (status, me) = p.get(&s, "me");
    assert_eq!(
        (status, me["operator"].as_str()),
        (200, Some("bot")),
        "{me}"
    );
    assert_eq!(me["login"], "certificate");
    assert_eq!(me["must_change"], false);
    assert_eq!(p.get(&s, "fleet").0, 200);
    // The CSRF rules hold for certificate sessions too.
    let (status, _) = p.post(
        &s,
        "customers",
        json!({"yaml": "customer: x\n"}),
        None,
        false,
    );
    assert_eq!(status, 403);
    // No password to guess: the empty one and any other are refused.
    assert_eq!(p.login_raw("bot", "").status(), 401);
    assert_eq!(p.login_raw("bot", "anything at all").status(), 401);

    // Without a certificate on the connection.
    let r = cert_login(&p.client);
    assert_eq!(r.status(), 401);
    let body: Value = r.json().expect("json");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("no client certificate")),
        "{body}"
    );
    // An appliance's certificate (same CA) never logs in.
    let appliance_dir = p.data.parent().expect("dir").join("appliance");
    std::fs::create_dir_all(&appliance_dir).expect("mkdir");
    let key = rcgen::KeyPair::generate().expect("key");
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .expect("params")
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    let server_key =
        levee_provisioner::secrets::ServerKey::load_or_create(&p.data).expect("server key");
    let ca = levee_provisioner::fleet::open_ca(p.store.as_ref(), &server_key, &p.data).expect("ca");
    let issued = ca.issue_client(&csr, 7).expect("issue");
    std::fs::write(appliance_dir.join("a.crt"), &issued.pem).expect("write");
    std::fs::write(appliance_dir.join("a.key"), key.serialize_pem()).expect("write");
    let r = cert_login(&with_cert(&appliance_dir, "a"));
    assert_eq!(r.status(), 401);
    let body: Value = r.json().expect("json");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("not an operator's")),
        "{body}"
    );
    // A certificate from another CA naming the operator: the handshake fails.
    let other = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "levee:operator:bot".try_into().expect("uri"),
    )];
    let forged = params.self_signed(&other).expect("self-signed");
    let forged_dir = p.data.parent().expect("dir").join("forged");
    std::fs::create_dir_all(&forged_dir).expect("mkdir");
    std::fs::write(forged_dir.join("bot.crt"), forged.pem()).expect("write");
    std::fs::write(forged_dir.join("bot.key"), other.serialize_pem()).expect("write");
    assert!(
        with_cert(&forged_dir, "bot")
            .post(format!("{}/ui/api/login", p.url))
            .json(&json!({"certificate": true}))
            .send()
            .is_err(),
        "a certificate from another CA was accepted"
    );

    // A new certificate revokes the old one and the sessions opened with it.
    let out2 = p.data.parent().expect("dir").join("certs2");
    p.cli
        .ok(&[
            "operator",
            "cert",
            "bot",
            "--out",
            out2.to_str().expect("utf-8"),
        ])
        .expect("operator cert");
    assert_eq!(
        p.get(&s, "me").0,
        401,
        "the old certificate's session lives on"
    );
    assert_eq!(cert_login(&bot).status(), 401);
    let bot2 = with_cert(&out2, "bot");
    let r = cert_login(&bot2);
    assert_eq!(r.status(), 200);
    let s2 = p.session_of(r);
    // Never overwritten.
    let err = p
        .cli
        .fails(&[
            "operator",
            "cert",
            "bot",
            "--out",
            out2.to_str().expect("utf-8"),
        ])
        .expect("refused");
    assert!(err.contains("exists"), "{err}");
    // Revoked: the session ends, the certificate no longer logs in.
    p.cli
        .ok(&["operator", "cert", "bot", "--revoke"])
        .expect("revoke");
    assert_eq!(p.get(&s2, "me").0, 401);
    assert_eq!(cert_login(&bot2).status(), 401);

    // A password operator given a certificate may use either; removing
    // the operator ends both.
    p.operator("cy", "cy's long password", true);
    let out3 = p.data.parent().expect("dir").join("certs3");
    p.cli
        .ok(&[
            "operator",
            "cert",
            "cy",
            "--out",
            out3.to_str().expect("utf-8"),
        ])
        .expect("operator cert cy");
    let cy = with_cert_from(&out3, "cy", "127.0.0.2");
    let r = cert_login(&cy);
    assert_eq!(r.status(), 200);
    let s3 = p.session_of(r);
    let (status, _) = p.post(
        &s3,
        "customers",
        json!({"yaml": "customer: x\n"}),
        Some(&p.origin()),
        true,
    );
    assert_eq!(status, 403, "read-only holds for certificate sessions");
    p.login("cy", "cy's long password");
    p.cli.ok(&["operator", "remove", "cy"]).expect("remove");
    assert_eq!(p.get(&s3, "me").0, 401);
    assert_eq!(cert_login(&cy).status(), 401);
    let log = p
        .cli
        .ok(&["operator", "log", "--target", "operator:bot"])
        .expect("log");
    assert!(
        log.contains("operator-cert") && log.contains("login-failed"),
        "{log}"
    );
}
