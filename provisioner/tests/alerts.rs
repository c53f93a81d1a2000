//! Alerts end to end: a real `levee serve` judging its rules every 200 ms,
//! an appliance enrolled by the real agent reporting its runs over mTLS,
//! and a real webhook receiver on 127.0.0.1 that checks every signature
//! with the secret `levee alert webhook set` printed. A missed backup
//! opens exactly one alert; the receiver's first answer is a 500, so it
//! arrives on the retry; a second receiver that was down gets it when it
//! comes up; a good run resolves it, once.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use levee_agent::enroll::{Credential, MtlsClient};
use levee_proto::runs::{RunKind, RunReport, RunResult};
use levee_provisioner::alerts::webhook::{verify, SIGNATURE_HEADER};
use levee_provisioner::alerts::AlertOptions;
use tokio_util::sync::CancellationToken;

const MAC: &str = "52:54:00:0f:00:01";
const DAY: i64 = 86_400;

/// What the receiver saw: every request, and whether it was accepted.
#[derive(Default)]
struct Seen {
    requests: Vec<(HeaderMap, Bytes, u16)>,
    /// Answer this many requests with a 500 first.
    fail_next: usize,
}

async fn receive(
    State(seen): State<Arc<Mutex<Seen>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let mut s = seen.lock().expect("lock");
    let status = if s.fail_next > 0 {
        s.fail_next -= 1;
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::NO_CONTENT
    };
    s.requests.push((headers, body, status.as_u16()));
    status
}

fn wait_until(what: &str, f: impl FnMut() -> bool) {
    common::wait_until(what, Duration::from_secs(30), f)
}

/// Enrolls `MAC` with one pass of the real agent; its credential.
fn enroll(http: &str, state: &Path) -> Credential {
    common::agent_pass(http, MAC, state);
    Credential::load(state).expect("load").expect("credential")
}

fn backup(start: i64) -> RunReport {
    let mut r = RunReport::new(RunKind::Backup, start);
    r.job = Some("daily".into());
    r.sources = vec!["docs".into()];
    r.ended_at = start + 60;
    r.result = RunResult::Success;
    r.snapshot = Some(format!("{start:x}"));
    r
}

#[test]
fn a_missed_backup_opens_one_signed_alert_delivered_after_a_500_and_resolves_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, store) = common::store_with_default_profile(dir.path(), common::AGENT_CMDLINE);
    common::add_customer(
        store.as_ref(),
        &data,
        serde_json::json!({
            "customer": "gamma",
            "sources": [{"name": "docs", "path": "/srv/docs"}],
            "schedules": [{"name": "daily", "every": "1d"}],
            "install": {"to_disk": false},
        }),
    );
    common::register(store.as_ref(), MAC, "gamma");
    let rt = common::runtime();

    // The receiver, on loopback; and a second webhook whose receiver is
    // down until the alert has been tried on it.
    let seen = Arc::new(Mutex::new(Seen {
        fail_next: 1,
        ..Default::default()
    }));
    let stop_receiver = CancellationToken::new();
    let receiver_url = rt.block_on(receiver(
        "127.0.0.1:0".parse().expect("addr"),
        seen.clone(),
        stop_receiver.clone(),
    ));
    let down_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let down_url = format!("http://{down_addr}/hook");
    let data_dir = data.clone();
    let levee = |args: &[&str]| common::levee(&data_dir, args);
    let out = levee(&["alert", "webhook", "set", &receiver_url]);
    let secret = out.lines().last().expect("secret").trim().to_string();
    assert_eq!(secret.len(), 64, "{out}");
    assert!(levee(&["alert", "webhook", "list"]).contains(&receiver_url));
    let out = levee(&["alert", "webhook", "set", &down_url, "--customer", "gamma"]);
    let down_secret = out.lines().last().expect("secret").trim().to_string();
    assert!(!levee(&["alert", "webhook", "list", "--json"]).contains(&secret));

    let alerts = AlertOptions {
        interval: Duration::from_millis(200),
        retry_base: Duration::from_millis(200),
        // The simulated appliance reports this machine's own disk (the
        // agent's heartbeat facts): its fill must not open `disk-full`
        // here (the rule has its own tests on made-up numbers).
        rules: levee_provisioner::alerts::rules::RuleOptions {
            disk_free_below: 0.0,
            disk_free_resolve: 0.0,
            ..Default::default()
        },
    };
    let (http, stop) = rt.block_on(common::serve_on_loopback_with(
        store.clone(),
        data.clone(),
        dir.path(),
        alerts,
    ));
    let states = tempfile::tempdir().expect("state");
    let cred = enroll(&http, &states.path().join("appliance"));
    let client = MtlsClient::new(&cred).expect("client");
    // A few evaluations of a healthy fleet: nothing.
    std::thread::sleep(Duration::from_millis(600));
    let open = store.open_alerts().expect("alerts");
    assert!(open.is_empty(), "{open:?}");

    // The daily backup last ran three days ago: overdue.
    let now = levee_provisioner::store::now() as i64;
    client.post_run(&backup(now - 3 * DAY)).expect("run");
    let delivered = |event: &str| {
        seen.lock()
            .expect("lock")
            .requests
            .iter()
            .filter(|(h, _, status)| {
                *status == 204 && h.get("x-levee-event").is_some_and(|v| v == event)
            })
            .count()
    };
    wait_until("the opened alert to be delivered", || {
        delivered("opened") == 1
    });
    let open = store.open_alerts().expect("alerts");
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0].kind, "backup-overdue");
    assert_eq!(open[0].customer.as_deref(), Some("gamma"));
    // The second receiver comes up: it gets the same alert, once.
    std::thread::sleep(Duration::from_millis(1500));
    let late = Arc::new(Mutex::new(Seen::default()));
    let stop_late = CancellationToken::new();
    rt.block_on(receiver(down_addr, late.clone(), stop_late.clone()));
    let got = |seen: &Arc<Mutex<Seen>>, event: &str| {
        seen.lock()
            .expect("lock")
            .requests
            .iter()
            .filter(|(h, _, _)| h.get("x-levee-event").is_some_and(|v| v == event))
            .count()
    };
    wait_until("the late receiver to get the alert", || {
        got(&late, "opened") == 1
    });
    let list = levee(&["alert", "list"]);
    assert!(
        list.contains("backup-overdue") && list.contains("schedule daily"),
        "{list}"
    );

    // Still overdue over several evaluations: no second alert, no flood.
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(delivered("opened"), 1);

    // A good run now: resolved, delivered once.
    client.post_run(&backup(now - 60)).expect("run");
    wait_until("the resolution to be delivered", || {
        delivered("resolved") == 1
    });
    std::thread::sleep(Duration::from_millis(1000));
    wait_until("the late receiver to get the resolution", || {
        got(&late, "resolved") == 1
    });
    {
        let late = late.lock().expect("lock");
        assert_eq!(late.requests.len(), 2, "{:?}", late.requests);
        for (headers, body, _) in &late.requests {
            let sig = headers
                .get(SIGNATURE_HEADER)
                .and_then(|v| v.to_str().ok())
                .expect("signature header");
            assert!(verify(down_secret.as_bytes(), body, sig), "bad signature");
        }
    }
    let seen = seen.lock().expect("lock");
    // The 500, its retry, the resolution: nothing else.
    assert_eq!(seen.requests.len(), 3, "{:?}", seen.requests);
    assert_eq!(seen.requests[0].2, 500);
    for (headers, body, _) in &seen.requests {
        let sig = headers
            .get(SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok())
            .expect("signature header");
        assert!(verify(secret.as_bytes(), body, sig), "bad signature");
        assert!(!verify(b"not the secret", body, sig));
        let json: serde_json::Value = serde_json::from_slice(body).expect("json");
        assert_eq!(json["alert"]["kind"], "backup-overdue");
    }
    let first: serde_json::Value = serde_json::from_slice(&seen.requests[0].1).expect("json");
    let retry: serde_json::Value = serde_json::from_slice(&seen.requests[1].1).expect("json");
    assert_eq!(
        first["delivery"], retry["delivery"],
        "a retry is the same delivery"
    );
    assert_eq!(first["event"], "opened");
    let done: serde_json::Value = serde_json::from_slice(&seen.requests[2].1).expect("json");
    assert_eq!(done["event"], "resolved");
    assert!(done["alert"]["resolved_at"].is_u64());
    assert!(store.open_alerts().expect("alerts").is_empty());
    let all = levee(&["alert", "list", "--all"]);
    assert!(all.contains("resolved"), "{all}");
    stop.cancel();
    stop_receiver.cancel();
    stop_late.cancel();
}

/// Starts a receiver on `addr`; its URL.
async fn receiver(
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<Seen>>,
    stop: CancellationToken,
) -> String {
    let l = tokio::net::TcpListener::bind(addr).await.expect("bind");
    let url = format!("http://{}/hook", l.local_addr().expect("addr"));
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(seen);
    tokio::spawn(async move {
        axum::serve(l, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
    });
    url
}

/// A frozen release channel: the appliance's scheduled checks (the agent's
/// own reports, `update::schedule::CheckOutcome::report`, over its mTLS
/// client) are refused as `freeze`. One refusal is an event; the second
/// in a row opens `channel-check-failing` (in `levee alert list`, with the
/// reason; the checks in `levee appliance show`'s history); the first
/// check that verifies again resolves it.
#[test]
fn a_channel_whose_checks_keep_failing_opens_an_alert_and_a_verified_check_resolves_it() {
    use levee_agent::update::schedule::CheckOutcome;
    use levee_agent::update::{Refusal, Running};
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, store) = common::store_with_default_profile(dir.path(), common::AGENT_CMDLINE);
    common::add_customer(
        store.as_ref(),
        &data,
        serde_json::json!({"customer": "gamma", "install": {"to_disk": false}}),
    );
    common::register(store.as_ref(), MAC, "gamma");
    let rt = common::runtime();
    let alerts = AlertOptions {
        interval: Duration::from_millis(200),
        retry_base: Duration::from_millis(200),
        rules: levee_provisioner::alerts::rules::RuleOptions {
            disk_free_below: 0.0,
            disk_free_resolve: 0.0,
            ..Default::default()
        },
    };
    let (http, stop) = rt.block_on(common::serve_on_loopback_with(
        store.clone(),
        data.clone(),
        dir.path(),
        alerts,
    ));
    let states = tempfile::tempdir().expect("state");
    let cred = enroll(&http, &states.path().join("appliance"));
    let client = MtlsClient::new(&cred).expect("client");
    let running = Running {
        version: "2026.12.01-aaaa".into(),
        release: Some(1),
    };
    let kinds = || -> Vec<String> {
        store
            .open_alerts()
            .expect("alerts")
            .into_iter()
            .map(|a| a.kind)
            .collect()
    };
    // The first check after boot verifies: reported once, nothing opens.
    let ok = CheckOutcome::UpToDate { release: 1 };
    client
        .post_update(&ok.report("stable", &running, None).expect("checked"))
        .expect("report");
    let frozen = CheckOutcome::Refused {
        kind: Refusal::Freeze,
        detail: "timestamp metadata expired at 2026-12-01T00:00:00Z".into(),
    };
    let refused = frozen
        .report("stable", &running, Some(false))
        .expect("check-failed");
    client.post_update(&refused).expect("report");
    std::thread::sleep(Duration::from_millis(800));
    assert!(kinds().is_empty(), "one refusal is not an alert yet");
    client.post_update(&refused).expect("report");
    wait_until("the channel alert to open", || {
        kinds() == ["channel-check-failing"]
    });
    let list = common::levee(&data, &["alert", "list"]);
    assert!(
        list.contains("channel-check-failing")
            && list.contains("2 scheduled checks in a row refused")
            && list.contains("refused (freeze)"),
        "{list}"
    );
    let shown = common::levee(&data, &["appliance", "show", MAC]);
    assert!(
        shown.contains("check-failed") && shown.contains("channel-check"),
        "{shown}"
    );
    // Still refused: the same alert, not a second one.
    client.post_update(&refused).expect("report");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(store.open_alerts().expect("alerts").len(), 1);
    // The channel moves again: the agent reports `checked` after a refusal.
    let back = ok
        .report("stable", &running, Some(true))
        .expect("checked after a refusal");
    client.post_update(&back).expect("report");
    wait_until("the channel alert to resolve", || kinds().is_empty());
    let all = common::levee(&data, &["alert", "list", "--all"]);
    assert!(
        all.contains("channel-check-failing") && all.contains("resolved"),
        "{all}"
    );
    stop.cancel();
}
