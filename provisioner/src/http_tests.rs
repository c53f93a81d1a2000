//! Tests of the plain-HTTP listener's handlers (`http.rs`).

use super::*;
use crate::boot::default_cmdline;
use crate::store::{ImageStore, Profile, SqliteStore, Transport};
use axum::http::Request as HttpRequest;
use std::sync::Arc;

const MAC: &str = "52:54:00:00:00:42";

fn state() -> (tempfile::TempDir, HttpState) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = Arc::new(SqliteStore::open(&data).unwrap());
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("k"), b"0123456789").unwrap();
    std::fs::write(src.join("i"), b"initrd").unwrap();
    let image =
        crate::images::import_files(&data, store.as_ref(), "t", &src.join("k"), &src.join("i"))
            .unwrap();
    store
        .put_profile(&Profile {
            name: "default".into(),
            image: image.id,
            kernel: "vmlinuz".into(),
            initrd: "initrd.img".into(),
            cmdline: default_cmdline(false).into(),
            transport: Transport::Http,
        })
        .unwrap();
    let st = HttpState {
        boot: BootService {
            store: store.clone(),
            data_dir: data,
            public_url: "http://10.0.0.1".into(),
            tftp_host: "10.0.0.1".into(),
            ca_fingerprint: "ab".repeat(32),
            allow_pending: true,
            limits: Default::default(),
        },
        enroll: EnrollService {
            store: store.clone(),
            ca: Arc::new(
                crate::enroll::ca::ServerCa::open_or_create(&dir.path().join("ca")).unwrap(),
            ),
            https_url: Some("https://10.0.0.1:8443".into()),
            allow_pending: true,
        },
        ipxe_dir: dir.path().join("ipxe"),
        images: None,
    };
    (dir, st)
}

async fn call(st: &HttpState, req: HttpRequest<Body>) -> (StatusCode, String) {
    let mut req = req;
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([10, 0, 0, 9], 4242))));
    let resp = router(st.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn get(uri: &str) -> HttpRequest<Body> {
    HttpRequest::get(uri).body(Body::empty()).unwrap()
}

#[tokio::test]
async fn release_channels_are_served_read_only_and_keys_never() {
    let (_d, st) = state();
    let layout = crate::releases::Layout::new(&st.boot.data_dir);
    std::fs::create_dir_all(layout.metadata_dir("stable")).unwrap();
    std::fs::create_dir_all(layout.targets_dir("stable")).unwrap();
    std::fs::create_dir_all(layout.keys_dir()).unwrap();
    std::fs::write(layout.metadata_dir("stable").join("timestamp.json"), b"{}").unwrap();
    std::fs::write(
        layout.targets_dir("stable").join("ab.v.rootfs.squashfs"),
        b"0123456789",
    )
    .unwrap();
    std::fs::write(layout.keys_dir().join("timestamp.pem"), b"secret").unwrap();
    let (status, body) = call(&st, get("/releases/stable/metadata/timestamp.json")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "{}"));
    // Range, for resumable downloads.
    let req = HttpRequest::get("/releases/stable/targets/ab.v.rootfs.squashfs")
        .header(header::RANGE, "bytes=4-")
        .body(Body::empty())
        .unwrap();
    let (status, body) = call(&st, req).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::PARTIAL_CONTENT, "456789")
    );
    for uri in [
        "/releases/keys/metadata/timestamp.pem",
        "/releases/stable/keys/timestamp.pem",
        "/releases/stable/metadata/..%2F..%2Fkeys%2Ftimestamp.pem",
        "/releases/root/metadata/1.root.json",
        "/releases/Stable/metadata/timestamp.json",
    ] {
        let (status, body) = call(&st, get(uri)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}: {body}");
    }
    let req = HttpRequest::post("/releases/stable/metadata/timestamp.json")
        .body(Body::empty())
        .unwrap();
    let (status, _) = call(&st, req).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn a_machine_gets_its_own_script() {
    let (_d, st) = state();
    let (status, body) = call(&st, get(&format!("/boot/{MAC}.ipxe"))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with("#!ipxe\n"), "{body}");
    assert!(body.contains("kernel http://10.0.0.1/images/t-"), "{body}");
    assert!(body.contains(&format!("levee.mac={MAC}")), "{body}");
    assert!(body.contains("levee.url=http://10.0.0.1 "), "{body}");
    // The script fetch is in the machine's history.
    let mac: MacAddr = MAC.parse().unwrap();
    let steps: Vec<String> = st
        .boot
        .store
        .events(mac, 10)
        .unwrap()
        .into_iter()
        .map(|e| e.step)
        .collect();
    assert_eq!(steps, ["script"]);
}

#[tokio::test]
async fn a_script_carries_the_ca_and_a_one_time_token_for_its_mac() {
    let (_d, st) = state();
    let store = st.boot.store.clone();
    let mut p = store.profile("default").unwrap().unwrap();
    p.cmdline = "levee.ca={ca} levee.token={token}".into();
    store.put_profile(&p).unwrap();
    let (status, body) = call(&st, get(&format!("/boot/{MAC}.ipxe"))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains(&format!("levee.ca={}", "ab".repeat(32))),
        "{body}"
    );
    let token = body
        .split_whitespace()
        .find_map(|w| w.strip_prefix("levee.token="))
        .expect("token on the command line");
    assert_eq!(token.len(), 64, "{body}");
    let mac = MAC.parse().unwrap();
    let now = crate::store::now();
    use crate::enroll::token::redeem;
    use crate::store::TokenCheck;
    let other = "52:54:00:00:00:43".parse().unwrap();
    assert_eq!(
        redeem(store.as_ref(), token, other, now, None).unwrap(),
        TokenCheck::OtherMac
    );
    assert_eq!(
        redeem(store.as_ref(), token, mac, now, None).unwrap(),
        TokenCheck::Valid
    );
    assert_eq!(
        redeem(store.as_ref(), token, mac, now, None).unwrap(),
        TokenCheck::Used
    );
    // Each rendering mints a fresh token.
    let (_, again) = call(&st, get(&format!("/boot/{MAC}.ipxe"))).await;
    assert!(!again.contains(token));
}

/// Registers MAC for customer acme with a token-carrying profile and
/// returns the token from its rendered script.
async fn script_token(st: &HttpState, mac: &str) -> String {
    let store = st.boot.store.clone();
    let mut p = store.profile("default").unwrap().unwrap();
    p.cmdline = "levee.ca={ca} levee.token={token}".into();
    store.put_profile(&p).unwrap();
    let (_, body) = call(st, get(&format!("/boot/{mac}.ipxe"))).await;
    body.split_whitespace()
        .find_map(|w| w.strip_prefix("levee.token="))
        .expect("token")
        .to_string()
}

fn register(st: &HttpState, mac: &str) {
    let store = &st.boot.store;
    let config = serde_json::from_value(serde_json::json!({
        "customer": "acme",
        "heartbeat_interval": "5m",
        "sources": [{"name": "f", "smb": "smb://u@h/s", "password": "sealed:v1:00"}],
    }))
    .unwrap();
    store.put_customer(&config).unwrap();
    store
        .register_appliance(
            mac.parse().unwrap(),
            &crate::store::Registration {
                customer: Some("acme"),
                ..Default::default()
            },
        )
        .unwrap();
}

fn csr() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap()
}

async fn enroll_call(st: &HttpState, token: &str, mac: &str, csr: &str) -> (StatusCode, String) {
    let body = serde_json::json!({
        "token": token, "mac": mac, "csr_pem": csr,
        "facts": {"macs": [mac], "dmi_serial": "S1", "disks": []},
    });
    let req = HttpRequest::post(levee_proto::enroll::paths::ENROLL)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    call(st, req).await
}

fn error_of(body: &str) -> String {
    serde_json::from_str::<levee_proto::enroll::ApiError>(body)
        .unwrap_or_else(|e| panic!("not a JSON error ({e}): {body}"))
        .error
}

#[tokio::test]
async fn a_registered_machine_enrolls_once_with_its_token() {
    let (_d, st) = state();
    register(&st, MAC);
    let token = script_token(&st, MAC).await;
    let (status, body) = enroll_call(&st, &token, MAC, &csr()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let resp: levee_proto::enroll::EnrollmentResponse = serde_json::from_str(&body).unwrap();
    assert_eq!(resp.https_url, "https://10.0.0.1:8443");
    assert!((resp.server_time_unix - crate::store::now() as i64).abs() < 60);
    assert_eq!(
        crate::enroll::ca::pem_fingerprint(&resp.ca_pem).unwrap(),
        st.enroll.ca.fingerprint()
    );
    let a = st
        .boot
        .store
        .appliance(MAC.parse().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(a.id, resp.appliance_id);
    assert_eq!(a.state, crate::store::ApplianceState::Enrolled);
    assert_eq!(
        a.cert_fingerprint,
        crate::enroll::ca::pem_fingerprint(&resp.certificate_pem)
    );
    // The same token again: an enrolled machine gets nothing through
    // a token (and the token is used anyway).
    let (status, body) = enroll_call(&st, &token, MAC, &csr()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(error_of(&body).contains("reenroll"), "{body}");
    // Its next boot script carries no token.
    let (_, script) = call(&st, get(&format!("/boot/{MAC}.ipxe"))).await;
    let token = script
        .split_whitespace()
        .find_map(|w| w.strip_prefix("levee.token="));
    assert_eq!(token, Some(""), "{script}");
}

#[tokio::test]
async fn enrollment_refusals_say_why() {
    let (_d, st) = state();
    register(&st, MAC);
    let other = "52:54:00:00:00:43";
    let token = script_token(&st, MAC).await;
    let (status, body) = enroll_call(&st, &token, other, &csr()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(error_of(&body).contains("another machine"), "{body}");

    let expired = "e".repeat(64);
    st.boot
        .store
        .put_token(
            &crate::enroll::token::token_hash(&expired),
            MAC.parse().unwrap(),
            crate::store::now() - 1,
            None,
        )
        .unwrap();
    let (status, body) = enroll_call(&st, &expired, MAC, &csr()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(error_of(&body).contains("expired"), "{body}");

    let (status, body) = enroll_call(&st, "nope", MAC, &csr()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(error_of(&body).contains("unknown"), "{body}");

    // A bad CSR is refused (the token was not the problem).
    let (status, body) = enroll_call(&st, &token, MAC, "garbage").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).contains("certificate request"), "{body}");

    let (status, body) = call(
        &st,
        HttpRequest::post(levee_proto::enroll::paths::ENROLL)
            .body(Body::from("{"))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).contains("malformed"), "{body}");
}

#[tokio::test]
async fn an_unapproved_machine_stays_pending() {
    let (_d, st) = state();
    let token = script_token(&st, MAC).await;
    let (status, body) = enroll_call(&st, &token, MAC, &csr()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let p: levee_proto::enroll::EnrollmentPending = serde_json::from_str(&body).unwrap();
    assert!(p.pending);
    assert!(
        p.approve.starts_with(&format!(
            "levee appliance approve {MAC} --customer NAME --fingerprint "
        )),
        "{}",
        p.approve
    );
    let a = st
        .boot
        .store
        .appliance(MAC.parse().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(a.state, crate::store::ApplianceState::Pending);
    assert_eq!(a.cert_fingerprint, None);
    assert!(a.pending_key.is_some());
    let events = st.boot.store.events(MAC.parse().unwrap(), 50).unwrap();
    assert!(events.iter().any(|e| e.step == "pending-key"), "{events:?}");
}

#[tokio::test]
async fn a_machine_without_a_profile_is_told_why() {
    let (_d, st) = state();
    let mac: MacAddr = MAC.parse().unwrap();
    st.boot
        .store
        .register_appliance(mac, &Default::default())
        .unwrap();
    st.boot
        .store
        .set_appliance_profile(mac, Some("gone"))
        .unwrap();
    let (status, body) = call(&st, get(&format!("/boot/{MAC}.ipxe"))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains("will not boot") && body.contains("no boot profile `gone`"),
        "{body}"
    );
    let (status, body) = call(&st, get("/boot/not-a-mac.ipxe")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("not a MAC address"), "{body}");
}

#[tokio::test]
async fn a_retired_machine_is_not_served() {
    use levee_pxe::boot::{BootDecision, BootPolicy, BootRequest};
    let (_d, st) = state();
    let mac: MacAddr = MAC.parse().unwrap();
    let a = st
        .boot
        .store
        .register_appliance(mac, &Default::default())
        .unwrap();
    st.boot.store.retire_appliance(a.id, "stolen").unwrap();
    let (_, body) = call(&st, get(&format!("/boot/{MAC}.ipxe"))).await;
    assert!(
        body.contains("will not boot") && body.contains("is retired (stolen)"),
        "{body}"
    );
    let req = BootRequest {
        mac,
        arch: levee_pxe::boot::Arch::Bios,
        stage: levee_pxe::boot::Stage::Ipxe,
    };
    match st.boot.decide(&req) {
        BootDecision::Ignore { reason } => assert!(reason.contains("retired"), "{reason}"),
        other => panic!("a retired machine was offered a boot: {other:?}"),
    }
}

#[tokio::test]
async fn artifacts_are_served_with_ranges_and_stay_inside_the_store() {
    let (_d, st) = state();
    let image = st.boot.store.images().unwrap().remove(0).id;
    let mut req = get(&format!("/images/{image}/vmlinuz"));
    req.headers_mut()
        .insert(header::RANGE, "bytes=2-5".parse().unwrap());
    let (status, body) = call(&st, req).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(body, "2345");
    for bad in [
        "/images/..%2F..%2Fetc/passwd",
        "/images/.import-x/vmlinuz",
        "/images/x/..",
        "/ipxe/..%2Fetc",
    ] {
        let (status, _) = call(&st, get(bad)).await;
        assert!(status.is_client_error(), "{bad} gave {status}");
    }
}

#[tokio::test]
async fn reports_need_the_token_and_a_known_machine() {
    let (_d, st) = state();
    register(&st, MAC);
    let post = |body: &str, token: Option<&str>| {
        let mut r = HttpRequest::post(levee_proto::paths::REPORT)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(t) = token {
            r = r.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        r.body(Body::from(body.to_string())).unwrap()
    };
    let report =
        format!("{{\"mac\":\"{MAC}\",\"stage\":\"agent\",\"addresses\":[\"10.0.0.9/24\"]}}");
    let (status, body) = call(&st, post("{\"mac\": 5}", None)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("malformed status report"), "{body}");
    let (status, body) = call(&st, post("{\"mac\": \"zz\"}", None)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("not a MAC address"), "{body}");
    let (status, body) = call(&st, post(&report, None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body.contains("Bearer"), "{body}");
    let (status, _) = call(&st, post(&report, Some(&"0".repeat(64)))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let token = script_token(&st, MAC).await;
    let (status, body) = call(&st, post(&report, Some(&token))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let a = st
        .boot
        .store
        .appliance(MAC.parse().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(a.last_report.unwrap().stage.as_deref(), Some("agent"));
    // Another MAC's token does not do.
    let other = "52:54:00:00:00:44";
    let (status, _) = call(&st, post(&report.replace(MAC, other), Some(&token))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // A machine the server does not know is not created by a report,
    // even with its own valid token.
    let token = script_token(&st, other).await;
    let (status, body) = call(&st, post(&report.replace(MAC, other), Some(&token))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(st
        .boot
        .store
        .appliance(other.parse().unwrap())
        .unwrap()
        .is_none());
    // Caps: a field too long, a body too large.
    let long = format!("{{\"mac\":\"{MAC}\",\"version\":\"{}\"}}", "v".repeat(200));
    let (status, body) = call(&st, post(&long, Some(&token))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("too long"), "{body}");
    let huge = format!("{{\"mac\":\"{MAC}\",\"x\":\"{}\"}}", "x".repeat(64 * 1024));
    let (status, _) = call(&st, post(&huge, Some(&token))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}
