//! What the agent trusts from the network (issue 11), tried against a real
//! `levee serve` on 127.0.0.1 with an attacker in between or beside it:
//! the CA pin takes exactly one certificate, and the clock is set only
//! from the mutual-TLS server's authenticated `Date`, never from plain
//! HTTP.

use super::common;
use common::LoopbackServer;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use levee_agent::daemon::{run, DaemonError};
use levee_agent::enroll::{self, Credential, EnrollError};
use levee_proto::enroll::{paths, EnrollmentResponse, ServerTime};

const MAC: &str = "52:54:00:0b:00:01";
const TEN_YEARS: i64 = 10 * 365 * 86_400;

/// Customer `alpha` with `MAC` registered. No `levee.root=`: these tests
/// are about trust, and the MITM below serves only what it forges.
fn start() -> LoopbackServer {
    LoopbackServer::start(
        "levee.url={url} levee.ca={ca} levee.token={token}",
        serde_json::json!({
            "customer": "alpha",
            "heartbeat_interval": "5m",
            "sources": [{"name": "f", "smb": "smb://u@nas/s", "password": "alpha-secret"}],
        }),
        &[MAC],
    )
}

/// The boot script's kernel line for `MAC`, with `levee.url=` at `url`.
fn cmdline(srv: &LoopbackServer, url: &str) -> String {
    srv.boot_cmdline(MAC).replace(&srv.http, url)
}

/// Runs `app` on 127.0.0.1 on the server's runtime; its base URL.
fn attacker(srv: &LoopbackServer, app: Router) -> String {
    let listener = srv
        .rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let stop = srv.stop.clone();
    srv.rt.spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
    });
    url
}

/// Runs the daemon once on its own thread and waits for it.
fn agent(cmdline: &str, state: &Path) -> Result<(), DaemonError> {
    let opts = common::agent_options(cmdline, state);
    std::thread::spawn(move || run(&opts))
        .join()
        .expect("agent thread")
}

fn attacker_ca_pem() -> String {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Levee CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).expect("ca").pem()
}

#[derive(Clone)]
struct Mitm {
    real: String,
    extra_ca: String,
}

/// Forwards the enrollment to the real server and appends its own CA to
/// the answer's, pointing the agent at its own HTTPS server.
async fn mitm_enroll(State(m): State<Mitm>, body: axum::body::Bytes) -> axum::response::Response {
    use axum::response::IntoResponse;
    let resp = reqwest::Client::new()
        .post(format!("{}{}", m.real, paths::ENROLL))
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .expect("forward");
    let mut answer: EnrollmentResponse = resp.json().await.expect("real answer");
    answer.ca_pem = format!("{}{}", answer.ca_pem, m.extra_ca);
    answer.https_url = "https://127.0.0.1:1".into();
    Json(answer).into_response()
}

#[test]
fn r11_an_attacker_ca_after_the_real_one_is_refused() {
    let srv = start();
    let states = tempfile::tempdir().expect("state");
    let mitm = attacker(
        &srv,
        Router::new()
            .route(paths::ENROLL, post(mitm_enroll))
            .with_state(Mitm {
                real: srv.http.clone(),
                extra_ca: attacker_ca_pem(),
            }),
    );
    let state = states.path().join("a");
    let err = agent(&cmdline(&srv, &mitm), &state).expect_err("trusted the attacker's CA");
    assert!(
        matches!(err, DaemonError::Enroll(EnrollError::CaNotSingle { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("found 2 PEM blocks"), "{err}");
    assert!(Credential::load(&state).expect("load").is_none());
}

/// A plain-HTTP server that forges the time (ten years ahead) and counts
/// the requests for it.
fn forger(srv: &LoopbackServer) -> (String, Arc<AtomicUsize>) {
    let asked = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route(
            paths::TIME,
            get(|State(asked): State<Arc<AtomicUsize>>| async move {
                asked.fetch_add(1, Ordering::SeqCst);
                Json(ServerTime {
                    unix: enroll::unix_now() + TEN_YEARS,
                })
            }),
        )
        .with_state(asked.clone());
    (attacker(srv, app), asked)
}

#[test]
fn r11_the_clock_comes_from_the_mtls_server_only() {
    let srv = start();
    let states = tempfile::tempdir().expect("state");
    let state = states.path().join("a");
    agent(&cmdline(&srv, &srv.http), &state).expect("enrolled");
    let mut cred = Credential::load(&state).expect("load").expect("credential");

    // The plain-HTTP base now answers with a forged time: neither the
    // authenticated step nor the daemon ask it.
    let (forged, asked) = forger(&srv);
    cred.server.http_url = forged.clone();
    cred.save(&state).expect("save");
    let now = enroll::unix_now();
    let clock = enroll::server_clock(&cred, None).expect("authenticated time");
    assert!((clock.unix - now).abs() <= 3, "{clock:?} vs {now}");
    assert!(clock.not_before <= clock.unix && clock.unix <= clock.not_after);
    let step = enroll::authenticated_step(
        now - TEN_YEARS,
        clock.unix,
        clock.not_before,
        clock.not_after,
    )
    .expect("inside the window")
    .expect("a step");
    assert!((step - now).abs() <= 3);
    agent(
        "root=PARTLABEL=levee-a levee.root=PARTLABEL=levee-a",
        &state,
    )
    .expect("a boot");
    assert_eq!(
        asked.load(Ordering::SeqCst),
        0,
        "the agent asked plain HTTP for the time"
    );
    // Confirm the forger does forge (so the zero above means something).
    let forged_time: ServerTime = reqwest::blocking::get(format!("{forged}{}", paths::TIME))
        .expect("forger")
        .json()
        .expect("json");
    assert!(forged_time.unix > now + TEN_YEARS - 60);
    assert_eq!(asked.load(Ordering::SeqCst), 1);

    // A local clock ten years ahead, or in 1970, does not stop the step:
    // the certificate is checked inside its own window.
    for local in [now + TEN_YEARS, 0] {
        let clock = enroll::server_clock(&cred, Some(local)).expect("authenticated time");
        assert!((clock.unix - now).abs() <= 3, "{local}: {clock:?}");
        assert_eq!(
            enroll::authenticated_step(local, clock.unix, clock.not_before, clock.not_after)
                .expect("inside")
                .map(|t| (t - now).abs() <= 3),
            Some(true)
        );
    }
    // And a time outside the window never moves the clock.
    assert!(enroll::authenticated_step(
        now,
        clock.not_after + 1,
        clock.not_before,
        clock.not_after
    )
    .is_err());
}

#[test]
fn r11_an_https_server_of_another_ca_gives_no_time() {
    let srv = start();
    let other = start();
    let states = tempfile::tempdir().expect("state");
    let state = states.path().join("a");
    agent(&cmdline(&srv, &srv.http), &state).expect("enrolled");
    let mut cred = Credential::load(&state).expect("load").expect("credential");
    // The other server's mTLS listener, on the same host name (127.0.0.1):
    // a complete levee server, just not the one this appliance pinned.
    let other_state = states.path().join("b");
    std::fs::create_dir_all(&other_state).expect("dir");
    let other_cmdline = cmdline(&other, &other.http);
    let _ = agent(&other_cmdline, &other_state);
    let their = Credential::load(&other_state).ok().flatten();
    let https = match their {
        Some(c) => c.server.https_url,
        None => panic!("the second server did not enroll its own appliance"),
    };
    cred.server.https_url = https;
    let err = enroll::server_clock(&cred, None).expect_err("took time from another CA's server");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    drop(other);
}
