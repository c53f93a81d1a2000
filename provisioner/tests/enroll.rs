//! Enrollment and the mutual-TLS API against the real listeners on
//! 127.0.0.1 (port 0), with a real TLS client holding issued certificates.

mod common;

use std::sync::Arc;

use levee_proto::enroll::{paths, EnrollmentResponse};
use levee_provisioner::secrets::ServerKey;
use levee_provisioner::store::{Profile, Store, Transport};
use reqwest::StatusCode;
use tokio_util::sync::CancellationToken;

const MAC_A: &str = "52:54:00:0a:00:01";
const MAC_B: &str = "52:54:00:0b:00:01";
const MAC_NEW: &str = "52:54:00:0a:00:02";
const MAC_PENDING: &str = "52:54:00:0c:00:01";
const MAC_C: &str = "52:54:00:0a:00:03";

struct Server {
    dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    http: String,
    plain: reqwest::Client,
    stop: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn customer(store: &dyn Store, data: &std::path::Path, name: &str, password: &str) {
    let config = serde_json::json!({
        "customer": name,
        "heartbeat_interval": "5m",
        "sources": [{"name": "f", "smb": format!("smb://u@{name}-nas/s"), "password": password}],
    });
    common::add_customer(store, data, config);
}

async fn start() -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, store) =
        common::store_with_default_profile(dir.path(), "levee.ca={ca} levee.token={token}");
    customer(store.as_ref(), &data, "alpha", "alpha-secret");
    customer(store.as_ref(), &data, "beta", "beta-secret");
    for (mac, customer) in [(MAC_A, "alpha"), (MAC_B, "beta"), (MAC_C, "alpha")] {
        common::register(store.as_ref(), mac, customer);
    }

    let (url, stop) = common::serve_on_loopback(store.clone(), data.clone(), dir.path()).await;
    Server {
        dir,
        store,
        http: url,
        plain: reqwest::Client::new(),
        stop,
    }
}

/// An enrolled identity: key, certificate and what the server said.
struct Identity {
    key_pem: String,
    resp: EnrollmentResponse,
}

impl Server {
    async fn token(&self, mac: &str) -> String {
        let script = self
            .plain
            .get(format!("{}/boot/{mac}.ipxe", self.http))
            .send()
            .await
            .expect("script")
            .text()
            .await
            .expect("body");
        script
            .split_whitespace()
            .find_map(|w| w.strip_prefix("levee.token="))
            .unwrap_or_else(|| panic!("no token in {script}"))
            .to_string()
    }

    /// Enrolls; returns the status and body (JSON).
    async fn enroll_raw(
        &self,
        token: &str,
        mac: &str,
        key: &rcgen::KeyPair,
    ) -> (StatusCode, String) {
        let csr = rcgen::CertificateParams::default()
            .serialize_request(key)
            .expect("csr")
            .pem()
            .expect("pem");
        let resp = self
            .plain
            .post(format!("{}{}", self.http, paths::ENROLL))
            .json(&serde_json::json!({
                "token": token, "mac": mac, "csr_pem": csr,
                "facts": {"macs": [mac], "dmi_serial": "S", "dmi_uuid": "U", "disks": []},
            }))
            .send()
            .await
            .expect("enroll");
        let status = resp.status();
        (status, resp.text().await.expect("body"))
    }

    async fn enroll(&self, mac: &str) -> Identity {
        let token = self.token(mac).await;
        let key = rcgen::KeyPair::generate().expect("key");
        let (status, body) = self.enroll_raw(&token, mac, &key).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        Identity {
            key_pem: key.serialize_pem(),
            resp: serde_json::from_str(&body).expect("response"),
        }
    }

    fn levee(&self, args: &[&str]) {
        common::levee(&self.dir.path().join("data"), args);
    }
}

fn error_of(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("not a JSON error: {body}"))
}

/// A TLS client trusting only our CA, presenting `id` if given.
fn mtls(ca_pem: &str, id: Option<&Identity>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("ca"));
    if let Some(id) = id {
        let pem = format!("{}\n{}", id.resp.certificate_pem, id.key_pem);
        b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("identity"));
    }
    b.build().expect("client")
}

async fn get_config(id: &Identity, path: &str) -> (StatusCode, String) {
    let r = mtls(&id.resp.ca_pem, Some(id))
        .get(format!("{}{path}", id.resp.https_url))
        .send()
        .await
        .expect("request");
    let s = r.status();
    (s, r.text().await.expect("body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_path_then_every_refusal() {
    let srv = start().await;

    // Golden path: script -> token -> enroll -> config with ETag -> heartbeat.
    let a = srv.enroll(MAC_A).await;
    assert!(
        a.resp.https_url.starts_with("https://127.0.0.1:"),
        "{}",
        a.resp.https_url
    );
    let script = srv
        .plain
        .get(format!("{}/boot/{MAC_A}.ipxe", srv.http))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let fp = levee_provisioner::enroll::ca::pem_fingerprint(&a.resp.ca_pem).expect("ca pem");
    assert!(script.contains(&format!("levee.ca={fp}")), "{script}");

    let client = mtls(&a.resp.ca_pem, Some(&a));
    let url = format!("{}{}", a.resp.https_url, paths::CONFIG);
    let r = client.get(&url).send().await.expect("config");
    assert_eq!(r.status(), StatusCode::OK);
    let etag = r.headers()["etag"].to_str().expect("etag").to_string();
    let body = r.text().await.expect("body");
    assert!(
        body.contains("alpha-secret"),
        "the appliance gets its SMB password: {body}"
    );
    assert!(!body.contains("beta"), "{body}");
    let r = client
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("config");
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);

    let r = client
        .post(format!("{}{}", a.resp.https_url, paths::HEARTBEAT))
        .json(&serde_json::json!({"mac": MAC_A, "image_version": "1.2.3"}))
        .send()
        .await
        .expect("heartbeat");
    assert_eq!(r.status(), StatusCode::OK);
    let stored = srv
        .store
        .appliance(MAC_A.parse().unwrap())
        .unwrap()
        .unwrap();
    assert!(stored.last_heartbeat.is_some());
    assert_eq!(stored.image_version.as_deref(), Some("1.2.3"));
    assert_eq!(stored.state.as_str(), "enrolled");

    // Refusals on the plain listener (a registered machine, not enrolled).
    let key = rcgen::KeyPair::generate().unwrap();
    let token = srv.token(MAC_C).await;
    let (s, body) = srv.enroll_raw(&token, MAC_B, &key).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(error_of(&body).contains("another machine"), "{body}");
    let (s, _) = srv.enroll_raw(&token, MAC_C, &key).await;
    assert_eq!(s, StatusCode::OK);
    // Enrolled now: a token (this one or any) never replaces its
    // certificate.
    let (s, body) = srv.enroll_raw(&token, MAC_C, &key).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(error_of(&body).contains("reenroll"), "{body}");
    let expired = "f".repeat(64);
    srv.store
        .put_token(
            &levee_provisioner::enroll::token::token_hash(&expired),
            MAC_PENDING.parse().unwrap(),
            levee_provisioner::store::now() - 1,
            None,
        )
        .unwrap();
    let (s, body) = srv.enroll_raw(&expired, MAC_PENDING, &key).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(error_of(&body).contains("expired"), "{body}");
    let token = srv.token(MAC_PENDING).await;
    let (s, body) = srv.enroll_raw(&token, MAC_PENDING, &key).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    assert!(error_of(&body).contains("waiting for approval"), "{body}");
    let pending = srv
        .store
        .appliance(MAC_PENDING.parse().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(pending.state.as_str(), "pending");

    // `a` kept working through all that; a re-enrollment needs ops, and
    // then supersedes its certificate.
    assert_eq!(get_config(&a, paths::CONFIG).await.0, StatusCode::OK);
    srv.levee(&["appliance", "reenroll", MAC_A]);
    let again = srv.enroll(MAC_A).await;
    let (s, body) = get_config(&a, paths::CONFIG).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(error_of(&body).contains("superseded"), "{body}");
    let a = again;

    // No client certificate: the TLS handshake is refused.
    let anonymous = mtls(&a.resp.ca_pem, None);
    assert!(
        anonymous.get(&url).send().await.is_err(),
        "served without a client certificate"
    );

    // Customer A's certificate only ever yields A's configuration, whatever
    // the path or parameters say.
    let b = srv.enroll(MAC_B).await;
    let (s, body) = get_config(&b, paths::CONFIG).await;
    assert_eq!(s, StatusCode::OK);
    assert!(body.contains("beta-secret"), "{body}");
    for path in [
        "/api/v1/config?customer=beta",
        "/api/v1/config/beta",
        "/api/v1/customers/beta/config",
        "/api/v1/config?appliance=2",
    ] {
        let (_, body) = get_config(&a, path).await;
        assert!(!body.contains("beta"), "{path}: {body}");
    }

    // Renewal: a new certificate; the old one stops working. It opens in
    // the certificate's last third: refused now, allowed once the recorded
    // expiry is 10 days away (as if 80 days had passed).
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let renew = || {
        mtls(&a.resp.ca_pem, Some(&a))
            .post(format!("{}{}", a.resp.https_url, paths::RENEW))
            .json(&serde_json::json!({"csr_pem": csr}))
            .send()
    };
    let r = renew().await.expect("renew");
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert!(error_of(&r.text().await.unwrap()).contains("last third"));
    let rec = srv
        .store
        .appliance(MAC_A.parse().unwrap())
        .unwrap()
        .unwrap();
    srv.store
        .record_certificate(
            rec.id,
            rec.cert_fingerprint.as_deref().unwrap(),
            levee_provisioner::store::now() + 10 * 86_400,
            false,
        )
        .unwrap();
    let r = renew().await.expect("renew");
    assert_eq!(r.status(), StatusCode::OK);
    let renewed: EnrollmentResponse = r.json().await.expect("renewed");
    let (s, _) = get_config(&a, paths::CONFIG).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let a = Identity {
        key_pem: key.serialize_pem(),
        resp: EnrollmentResponse {
            https_url: a.resp.https_url.clone(),
            ..renewed
        },
    };
    assert_eq!(get_config(&a, paths::CONFIG).await.0, StatusCode::OK);

    // Revoked by `levee appliance replace` and by `retire`.
    srv.levee(&["appliance", "replace", MAC_A, "--with", MAC_NEW]);
    let (s, body) = get_config(&a, paths::CONFIG).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(error_of(&body).contains("retired"), "{body}");
    srv.levee(&["appliance", "retire", MAC_B]);
    let (s, body) = get_config(&b, paths::CONFIG).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(error_of(&body).contains("retired"), "{body}");
    let r = mtls(&b.resp.ca_pem, Some(&b))
        .post(format!("{}{}", b.resp.https_url, paths::HEARTBEAT))
        .json(&serde_json::json!({"mac": MAC_B}))
        .send()
        .await
        .expect("heartbeat");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

fn levee_out(srv: &Server, args: &[&str]) -> String {
    common::levee(&srv.dir.path().join("data"), args)
}

/// Issue 4: an unregistered machine waits (202) with the key it proved with
/// its token, and enrolls by itself with that key once approved; no reboot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_machine_enrolls_after_approval_without_a_reboot() {
    let srv = start().await;
    let key = rcgen::KeyPair::generate().expect("key");
    let token = srv.token(MAC_PENDING).await;
    let (s, body) = srv.enroll_raw(&token, MAC_PENDING, &key).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    let p: levee_proto::enroll::EnrollmentPending = serde_json::from_str(&body).expect("pending");
    assert!(p.pending);
    // The command ops must type names the key's fingerprint, the one the
    // machine prints on its console.
    let fp = levee_proto::enroll::short_fingerprint(&levee_proto::enroll::key_sha256(
        &key.public_key_der(),
    ));
    assert_eq!(
        p.approve,
        format!("levee appliance approve {MAC_PENDING} --customer NAME --fingerprint {fp}")
    );
    // The retry: same key, the used token; still pending, and the key holds.
    let (s, body) = srv.enroll_raw(&token, MAC_PENDING, &key).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    // Another key needs a valid token: the used one or none is refused.
    let other = rcgen::KeyPair::generate().expect("key");
    let (s, body) = srv.enroll_raw(&token, MAC_PENDING, &other).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(error_of(&body).contains("already used"), "{body}");
    let (s, body) = srv.enroll_raw("", MAC_PENDING, &other).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(error_of(&body).contains("unknown"), "{body}");
    // The same key from another MAC is not that machine.
    let (s, _) = srv.enroll_raw(&token, MAC_NEW, &key).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let shown = levee_out(&srv, &["appliance", "show", MAC_PENDING]);
    assert!(shown.contains("waiting for approval"), "{shown}");

    srv.levee(&["appliance", "approve", MAC_PENDING, "--customer", "alpha"]);
    let (s, body) = srv.enroll_raw(&token, MAC_PENDING, &key).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let resp: EnrollmentResponse = serde_json::from_str(&body).expect("response");
    let id = Identity {
        key_pem: key.serialize_pem(),
        resp,
    };
    let (s, body) = get_config(&id, paths::CONFIG).await;
    assert_eq!(s, StatusCode::OK);
    assert!(body.contains("alpha-secret"), "{body}");
    // Enrolled: the pending key is spent.
    let a = srv
        .store
        .appliance(MAC_PENDING.parse().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!((a.state.as_str(), a.pending_key), ("enrolled", None));
    let (s, _) = srv.enroll_raw(&token, MAC_PENDING, &key).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // A retired machine is refused even with its pending key.
    let key = rcgen::KeyPair::generate().expect("key");
    let mac = "52:54:00:0c:00:02";
    let token = srv.token(mac).await;
    assert_eq!(
        srv.enroll_raw(&token, mac, &key).await.0,
        StatusCode::ACCEPTED
    );
    srv.levee(&["appliance", "retire", mac]);
    let (s, body) = srv.enroll_raw(&token, mac, &key).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(error_of(&body).contains("retired"), "{body}");
}

/// A full image (with a root file system) as the `default` profile.
fn full_image(srv: &Server) -> levee_provisioner::store::ImageRecord {
    let src = srv.dir.path().join("full");
    std::fs::create_dir_all(&src).expect("dir");
    let mut artifacts = serde_json::Map::new();
    for (name, body) in [
        ("vmlinuz", &b"kernel"[..]),
        ("initrd.img", b"initrd"),
        ("rootfs.squashfs", b"root file system"),
    ] {
        std::fs::write(src.join(name), body).expect("artifact");
        artifacts.insert(
            name.into(),
            serde_json::json!({"sha256": hex_sha256(body), "size": body.len()}),
        );
    }
    let manifest = serde_json::json!({
        "name": "levee-appliance", "version": "2026.11.26", "artifacts": artifacts,
        "cmdline": "quiet",
    });
    std::fs::write(src.join("image.json"), manifest.to_string()).expect("manifest");
    let data = srv.dir.path().join("data");
    let image = levee_provisioner::images::import(&data, srv.store.as_ref(), &src).expect("import");
    srv.store
        .put_profile(&Profile {
            name: "default".into(),
            image: image.id.clone(),
            kernel: "vmlinuz".into(),
            initrd: "initrd.img".into(),
            cmdline: "levee.ca={ca} levee.token={token}".into(),
            transport: Transport::Http,
        })
        .expect("profile");
    image
}

fn hex_sha256(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

/// Issue 4: the install plan over mTLS (the customer's settings, the
/// profile's image, artifact URLs on the plain listener with their sha256),
/// install states, `levee appliance reinstall`, and the slot in a heartbeat
/// as the "came back from disk" signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_plan_states_and_reinstall() {
    use levee_proto::enroll::InstallPlan;
    let srv = start().await;
    let image = full_image(&srv);
    let a = srv.enroll(MAC_A).await;
    let client = mtls(&a.resp.ca_pem, Some(&a));
    let url = format!("{}{}", a.resp.https_url, paths::INSTALL);
    let plan: InstallPlan = client
        .get(&url)
        .send()
        .await
        .expect("plan")
        .json()
        .await
        .expect("plan json");
    assert!(plan.install, "to_disk defaults to true");
    assert!(!plan.reinstall);
    assert_eq!(plan.min_disk_bytes, 16 << 30);
    let img = plan.image.expect("image");
    assert_eq!(img.version, "2026.11.26");
    assert_eq!(img.cmdline, "quiet");
    assert_eq!(
        img.rootfs.url,
        format!("{}/images/{}/rootfs.squashfs", srv.http, image.id)
    );
    assert_eq!(img.rootfs.sha256, hex_sha256(b"root file system"));
    assert_eq!(img.kernel.size, 6);
    // The URL serves exactly that artifact.
    let got = srv
        .plain
        .get(&img.rootfs.url)
        .send()
        .await
        .expect("rootfs")
        .bytes()
        .await
        .expect("body");
    assert_eq!(hex_sha256(&got), img.rootfs.sha256);

    // States: installing, then failed with its reason (shown to ops).
    let post = |body: serde_json::Value| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            client
                .post(&url)
                .json(&body)
                .send()
                .await
                .expect("status")
                .status()
        }
    };
    assert_eq!(
        post(serde_json::json!({"state": "installing", "disk": "vda"})).await,
        StatusCode::OK
    );
    assert_eq!(
        post(serde_json::json!({"state": "failed", "reason": "disk vdb holds a foreign partition table"}))
            .await,
        StatusCode::OK
    );
    let shown = levee_out(&srv, &["appliance", "show", MAC_A]);
    assert!(
        shown.contains("state:          failed (disk vdb holds a foreign partition table)"),
        "{shown}"
    );
    assert_eq!(
        post(serde_json::json!({"state": "bogus"})).await,
        StatusCode::BAD_REQUEST
    );

    // Reinstall: one shot, in the next plan, cleared by `installed`.
    let out = levee_out(&srv, &["appliance", "reinstall", MAC_A]);
    assert!(out.contains("reinstall"), "{out}");
    let plan: InstallPlan = client.get(&url).send().await.unwrap().json().await.unwrap();
    assert!(plan.reinstall);
    assert!(levee_out(&srv, &["appliance", "show", MAC_A]).contains("reinstall:      requested"));
    assert_eq!(
        post(
            serde_json::json!({"state": "installing", "disk": "vda", "image_version": "2026.11.26"})
        )
        .await,
        StatusCode::OK
    );
    let plan: InstallPlan = client.get(&url).send().await.unwrap().json().await.unwrap();
    assert!(plan.reinstall, "kept while installing");
    // A heartbeat from the network boot (no slot) does not complete it ...
    let hb = format!("{}{}", a.resp.https_url, paths::HEARTBEAT);
    let r = client
        .post(&hb)
        .json(&serde_json::json!({"mac": MAC_A, "image_version": "2026.11.26"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let st = srv
        .store
        .appliance(MAC_A.parse().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(st.state.as_str(), "installing");
    // ... one from the disk (with its slot) does.
    let r = client
        .post(&hb)
        .json(&serde_json::json!({"mac": MAC_A, "image_version": "2026.11.26", "slot": "a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let st = srv
        .store
        .appliance(MAC_A.parse().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(
        (st.state.as_str(), st.slot.as_deref(), st.reinstall),
        ("installed", Some("a"), false)
    );
    let plan: InstallPlan = client.get(&url).send().await.unwrap().json().await.unwrap();
    assert!(!plan.reinstall);
    let list = levee_out(&srv, &["appliance", "list"]);
    let row = list.lines().find(|l| l.contains(MAC_A)).expect("row");
    for want in ["installed", "2026.11.26", " a "] {
        assert!(row.contains(want), "{want}: {row}");
    }
    let help = levee_out(&srv, &["appliance", "reinstall", "--help"]);
    assert!(
        help.contains("levee appliance reinstall 52:54:00:12:34:56"),
        "{help}"
    );

    // A customer that keeps its appliances on the network: install false.
    let key = ServerKey::load_or_create(&srv.dir.path().join("data")).expect("key");
    let config = serde_json::from_value(serde_json::json!({
        "customer": "beta", "install": {"to_disk": false, "min_disk_size": "32GiB"},
    }))
    .expect("config");
    srv.store
        .put_customer(&key.seal_config(&config))
        .expect("customer");
    let b = srv.enroll(MAC_B).await;
    let plan: InstallPlan = mtls(&b.resp.ca_pem, Some(&b))
        .get(&url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!plan.install);
    assert_eq!(plan.min_disk_bytes, 32 << 30);
}
