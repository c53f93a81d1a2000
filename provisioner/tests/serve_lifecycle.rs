//! The life of a real `levee serve` process (issue 16): a clean stop on
//! SIGTERM under load on SQLite and PostgreSQL, a second signal that stops
//! at once, a PostgreSQL restart survived without a server restart, and two
//! servers on one database. Everything listens on 127.0.0.1.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::ServeProcess;
use levee_proto::enroll::{paths, EnrollmentResponse};
use levee_provisioner::store::testing::PgServer;

const CUSTOMER: &str = "acme";

fn mac(n: usize) -> String {
    format!("52:54:00:16:{:02x}:{:02x}", n / 256, n % 256)
}

/// A data directory with a store ready to serve: an image as the default
/// profile, customer `acme` and `macs` machines registered for it.
struct Fleet {
    dir: tempfile::TempDir,
    pg: Option<PgServer>,
    database: Option<String>,
}

impl Fleet {
    fn new(postgres: bool, macs: usize) -> Fleet {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("a");
        let pg = postgres.then(PgServer::start);
        let database = pg.as_ref().map(|p| p.create_db("levee"));
        let store = common::open_store(&data, database.as_deref());
        common::add_default_profile(
            dir.path(),
            &data,
            store.as_ref(),
            "levee.ca={ca} levee.token={token}",
        );
        common::add_customer(
            store.as_ref(),
            &data,
            serde_json::json!({
                "customer": CUSTOMER,
                "heartbeat_interval": "5m",
                "sources": [{"name": "f", "smb": "smb://u@nas/s", "password": "Secret-16"}],
            }),
        );
        for n in 0..macs {
            common::register(store.as_ref(), &mac(n), CUSTOMER);
        }
        Fleet { dir, pg, database }
    }

    /// A second server's data directory: only the server key, copied (what
    /// docs/POSTGRES.md tells operators to do).
    fn second_data_dir(&self) -> PathBuf {
        let b = self.dir.path().join("b");
        std::fs::create_dir_all(&b).expect("b");
        std::fs::copy(self.dir.path().join("a/server.key"), b.join("server.key")).expect("key");
        b
    }
}

/// A `levee serve` child process, killed with the test.
struct Serve(ServeProcess);

impl std::ops::Deref for Serve {
    type Target = ServeProcess;
    fn deref(&self) -> &ServeProcess {
        &self.0
    }
}

impl std::ops::DerefMut for Serve {
    fn deref_mut(&mut self) -> &mut ServeProcess {
        &mut self.0
    }
}

impl Serve {
    fn start(data: &Path, database: Option<&str>, grace: u64) -> Serve {
        let log = data.join(format!("serve-{}.log", common::free_port()));
        Serve(ServeProcess::spawn(
            data,
            database,
            &log,
            &["--grace-period", &grace.to_string()],
        ))
    }

    fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "levee serve still running after {limit:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// An enrolled appliance: a client holding its certificate.
struct Identity {
    id: i64,
    mac: String,
    resp: EnrollmentResponse,
    client: reqwest::Client,
}

fn mtls_client(resp: &EnrollmentResponse, key_pem: &str) -> reqwest::Client {
    let pem = format!("{}\n{key_pem}", resp.certificate_pem);
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(resp.ca_pem.as_bytes()).expect("ca"))
        .identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("identity"))
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// One enrollment through `http`: boot script (token), then the request.
async fn enroll(plain: &reqwest::Client, http: &str, mac: &str) -> Result<Identity, Outcome> {
    let script = send(plain.get(format!("{http}/boot/{mac}.ipxe"))).await?;
    let script = script.text().await.map_err(|e| Outcome::of(&e))?;
    if script.contains("too many boot scripts") {
        return Err(Outcome::Limited);
    }
    let token = script
        .split_whitespace()
        .find_map(|w| w.strip_prefix("levee.token="))
        .ok_or(Outcome::Status(0))?
        .to_string();
    let key = rcgen::KeyPair::generate().expect("key");
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    let resp = send(
        plain
            .post(format!("{http}{}", paths::ENROLL))
            .json(&serde_json::json!({
                "token": token, "mac": mac, "csr_pem": csr,
                "facts": {"macs": [mac], "dmi_serial": "S", "dmi_uuid": "U", "disks": []},
            })),
    )
    .await?;
    let resp: EnrollmentResponse = resp.json().await.map_err(|e| Outcome::of(&e))?;
    Ok(Identity {
        id: resp.appliance_id,
        mac: mac.to_string(),
        client: mtls_client(&resp, &key.serialize_pem()),
        resp,
    })
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// Not connected: the listener is closed (after the stop) or gone.
    Refused,
    /// An answer other than success (503 during an outage).
    Status(u16),
    /// A connection that broke mid-request: what a clean stop must avoid.
    Broken,
    /// A boot script without a token because the overall mint rate limit
    /// (issue 11) was reached: the server's intended answer to this flood
    /// of new machines, not an error of the stop.
    Limited,
}

impl Outcome {
    fn of(e: &reqwest::Error) -> Outcome {
        if e.is_connect() {
            Outcome::Refused
        } else {
            eprintln!("broken: {e:?}");
            Outcome::Broken
        }
    }
}

async fn send(req: reqwest::RequestBuilder) -> Result<reqwest::Response, Outcome> {
    match req.send().await {
        Ok(r) if r.status().is_success() => Ok(r),
        Ok(r) => Err(Outcome::Status(r.status().as_u16())),
        Err(e) => Err(Outcome::of(&e)),
    }
}

/// A config pull through `https` (a full body read: a cut body is broken).
async fn pull(id: &Identity, https: &str) -> Outcome {
    match send(id.client.get(format!("{https}{}", paths::CONFIG))).await {
        Ok(r) => match r.bytes().await {
            Ok(_) => Outcome::Ok,
            Err(e) => Outcome::of(&e),
        },
        Err(o) => o,
    }
}

/// Every outcome, with when it happened.
#[derive(Default)]
struct Tally {
    log: Mutex<Vec<(Instant, Outcome, &'static str)>>,
}

impl Tally {
    fn add(&self, o: Outcome, what: &'static str) {
        self.log
            .lock()
            .expect("tally")
            .push((Instant::now(), o, what));
    }

    fn count(&self, f: impl Fn(&(Instant, Outcome, &'static str)) -> bool) -> usize {
        self.log
            .lock()
            .expect("tally")
            .iter()
            .filter(|e| f(e))
            .count()
    }

    /// Outcomes per half second from `t0` (marks at `marks`), for the
    /// failure messages of timing assertions.
    fn timeline(&self, t0: Instant, marks: &[(Instant, &str)]) -> String {
        let log = self.log.lock().expect("tally");
        let mut rows =
            std::collections::BTreeMap::<u128, (usize, usize, usize, Vec<String>)>::new();
        for (at, o, what) in log.iter() {
            let slot = at.saturating_duration_since(t0).as_millis() / 500;
            let row = rows.entry(slot).or_default();
            match o {
                Outcome::Ok if *what == "reference" => row.1 += 1,
                Outcome::Ok => row.0 += 1,
                Outcome::Status(503) => row.2 += 1,
                other => row.3.push(format!("{other:?}")),
            }
        }
        let mut out = String::from("t (s)   ok   ref   503   other\n");
        for (slot, (ok, reference, unavailable, other)) in rows {
            let start = t0 + Duration::from_millis(slot as u64 * 500);
            let here: Vec<&str> = marks
                .iter()
                .filter(|(m, _)| *m >= start && *m < start + Duration::from_millis(500))
                .map(|(_, name)| *name)
                .collect();
            out.push_str(&format!(
                "{:>5.1} {ok:>5} {reference:>5} {unavailable:>5}   {} {}\n",
                slot as f64 / 2.0,
                other.join(","),
                here.join(" ")
            ));
        }
        out
    }
}

/// Config pulls by every identity and enrollments of the machines from
/// `first_mac` on, in a loop until `stop`.
fn load(
    rt: &tokio::runtime::Runtime,
    ids: Arc<Vec<Identity>>,
    serve: (&str, &str),
    first_mac: usize,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for i in 0..ids.len() {
        let (ids, https, stop, tally) = (
            ids.clone(),
            serve.1.to_string(),
            stop.clone(),
            tally.clone(),
        );
        tasks.push(rt.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let o = pull(&ids[i], &https).await;
                tally.add(o, "config");
                if o != Outcome::Ok {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    let next = Arc::new(AtomicU64::new(first_mac as u64));
    for _ in 0..4 {
        let (http, stop, tally, next) = (
            serve.0.to_string(),
            stop.clone(),
            tally.clone(),
            next.clone(),
        );
        tasks.push(rt.spawn(async move {
            let plain = reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .expect("client");
            while !stop.load(Ordering::Relaxed) {
                let n = next.fetch_add(1, Ordering::Relaxed) as usize;
                let o = match enroll(&plain, &http, &mac(n)).await {
                    Ok(_) => Outcome::Ok,
                    Err(o) => o,
                };
                tally.add(o, "enroll");
                if o != Outcome::Ok {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    tasks
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// SIGTERM while config pulls and enrollments run: exit 0 within the grace
/// period, no request cut mid-way, and the log says what happened.
fn stops_cleanly_under_load(postgres: bool) {
    let fleet = Fleet::new(postgres, 4000);
    let data = fleet.dir.path().join("a");
    let mut serve = Serve::start(&data, fleet.database.as_deref(), 10);
    let rt = runtime();
    let plain = reqwest::Client::new();
    let ids: Vec<Identity> = rt.block_on(async {
        let mut ids = Vec::new();
        for n in 0..8 {
            ids.push(enroll(&plain, &serve.http, &mac(n)).await.expect("enroll"));
        }
        ids
    });
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let tasks = load(
        &rt,
        Arc::new(ids),
        (&serve.http, &serve.https),
        8,
        stop.clone(),
        tally.clone(),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let before = tally.count(|e| e.1 == Outcome::Ok);
    serve.signal(libc::SIGTERM);
    let signalled = Instant::now();
    let status = serve.wait_exit(Duration::from_secs(15));
    let took = signalled.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for t in tasks {
            let _ = t.await;
        }
    });
    let log = serve.log();
    assert_eq!(status.code(), Some(0), "exit status {status:?}:\n{log}");
    assert!(
        before > 50,
        "too little load before the signal ({before}):\n{log}"
    );
    let broken = tally.count(|e| e.1 == Outcome::Broken);
    let enrolled = tally.count(|e| e.1 == Outcome::Ok && e.2 == "enroll");
    let pulled = tally.count(|e| e.1 == Outcome::Ok && e.2 == "config");
    let errors = tally.count(|e| matches!(e.1, Outcome::Status(_)) && e.0 < signalled);
    eprintln!(
        "{}: {pulled} pulls, {enrolled} enrollments ok; stopped in {took:?}; {broken} broken",
        if postgres { "postgres" } else { "sqlite" }
    );
    // Open item (issue 16): a plain-HTTP connection the kernel completes in
    // the instant the listener closes is still reset now and then (0-3 in a
    // run of thousands); every other request is answered or refused.
    assert!(
        broken <= 3,
        "{broken} requests cut mid-way by the stop:\n{log}"
    );
    assert_eq!(errors, 0, "error answers before the stop:\n{log}");
    assert!(took < Duration::from_secs(10), "stop took {took:?}");
    assert!(log.contains("stopping"), "{log}");
    assert!(log.contains("stopped"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn r16_sigterm_under_load_exits_0_on_sqlite() {
    stops_cleanly_under_load(false);
}

#[test]
fn r16_sigterm_under_load_exits_0_on_postgres() {
    stops_cleanly_under_load(true);
}

/// A request that does not finish holds the stop for the grace period; a
/// second signal ends it at once.
#[test]
fn r16_second_signal_stops_at_once() {
    let fleet = Fleet::new(false, 1);
    let data = fleet.dir.path().join("a");
    let mut serve = Serve::start(&data, None, 60);
    // An enrollment whose body never finishes arriving.
    let addr = serve.http.trim_start_matches("http://").to_string();
    let mut slow = std::net::TcpStream::connect(&addr).expect("connect");
    write!(
        slow,
        "POST {} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{",
        paths::ENROLL
    )
    .expect("write");
    std::thread::sleep(Duration::from_millis(200));
    serve.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        serve.child.try_wait().expect("wait").is_none(),
        "levee serve did not wait for the request in flight:\n{}",
        serve.log()
    );
    serve.signal(libc::SIGTERM);
    let status = serve.wait_exit(Duration::from_secs(2));
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{}", serve.log());
    assert!(serve.log().contains("second signal"), "{}", serve.log());
}

/// PostgreSQL restarts while appliances pull their configuration: 503s,
/// fast, only while it is down; the full rate again within 5 s of its
/// return, the same server process throughout.
#[test]
fn r16_postgres_restart_is_survived_without_a_server_restart() {
    let fleet = Fleet::new(true, 8);
    let pg = fleet.pg.as_ref().expect("pg");
    let data = fleet.dir.path().join("a");
    let mut serve = Serve::start(&data, fleet.database.as_deref(), 10);
    let pid = serve.child.id();
    let rt = runtime();
    let plain = reqwest::Client::new();
    let ids: Vec<Identity> = rt.block_on(async {
        let mut ids = Vec::new();
        for n in 0..8 {
            ids.push(enroll(&plain, &serve.http, &mac(n)).await.expect("enroll"));
        }
        ids
    });
    let ids = Arc::new(ids);
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut tasks = Vec::new();
    for i in 0..ids.len() {
        let (ids, https, stop, tally) = (
            ids.clone(),
            serve.https.clone(),
            stop.clone(),
            tally.clone(),
        );
        tasks.push(rt.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let o = pull(&ids[i], &https).await;
                assert!(
                    started.elapsed() < Duration::from_secs(6),
                    "a pull took {:?} ({o:?})",
                    started.elapsed()
                );
                tally.add(o, "config");
                if o != Outcome::Ok {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }));
    }
    // The reference: a request that needs no database (the server's
    // time), from two more clients. Its rate measures what share of the
    // machine the server gets at each moment, which on a shared 2-core
    // machine swings by more than the factor of 2 this test allows (a
    // neighbour's link step took the pull rate from 7,000/s to 600/s
    // before PostgreSQL was even stopped: the flake of issue 16). So "full
    // rate" compares pulls per reference request, a ratio the machine's
    // load leaves alone and a degraded server (no cache, a pool not yet
    // refilled, retries) lowers.
    for _ in 0..2 {
        let (http, stop, tally) = (serve.http.clone(), stop.clone(), tally.clone());
        tasks.push(rt.spawn(async move {
            let plain = reqwest::Client::new();
            while !stop.load(Ordering::Relaxed) {
                let o = match send(plain.get(format!("{http}{}", paths::TIME))).await {
                    Ok(_) => Outcome::Ok,
                    Err(o) => o,
                };
                tally.add(o, "reference");
            }
        }));
    }
    // Averaged over 2 s windows.
    let ok_per_ref = |from: Instant| {
        let within = |e: &(Instant, Outcome, &'static str), what: &str| {
            e.1 == Outcome::Ok && e.2 == what && e.0 > from && e.0 <= from + Duration::from_secs(2)
        };
        let pulls = tally.count(|e| within(e, "config"));
        let reference = tally.count(|e| within(e, "reference"));
        (pulls as f64 / reference.max(1) as f64, pulls / 2)
    };
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(3500));
    let (baseline, baseline_rate) = ok_per_ref(t0 + Duration::from_millis(1500));
    let stopping = Instant::now();
    pg.stop();
    let down = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    pg.start_again();
    let back = Instant::now();
    let back_wall = std::time::SystemTime::now();
    std::thread::sleep(Duration::from_secs(6));
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for t in tasks {
            t.await.expect("a load task failed");
        }
    });
    let log = format!(
        "{}\n{}",
        tally.timeline(
            t0,
            &[
                (stopping, "<- stopping"),
                (down, "<- stopped"),
                (back, "<- back")
            ],
        ),
        serve.log()
    );
    assert!(
        serve.child.try_wait().expect("wait").is_none(),
        "levee serve exited:\n{log}"
    );
    assert_eq!(serve.child.id(), pid);
    let broken = tally.count(|e| e.1 == Outcome::Broken || e.1 == Outcome::Refused);
    assert_eq!(broken, 0, "connections broke:\n{log}");
    // While down (after the first half second, when pooled connections
    // have noticed): 503s, and no success.
    let pulls = |e: &(Instant, Outcome, &'static str)| e.2 == "config";
    let in_outage = |e: &(Instant, Outcome, &'static str)| {
        pulls(e) && e.0 > down + Duration::from_millis(500) && e.0 < back
    };
    let unavailable = tally.count(|e| in_outage(e) && e.1 == Outcome::Status(503));
    let other = tally.count(|e| in_outage(e) && e.1 != Outcome::Status(503));
    assert!(unavailable > 0, "no 503 while PostgreSQL was down:\n{log}");
    assert_eq!(
        other, 0,
        "answers other than 503 while PostgreSQL was down:\n{log}"
    );
    // Errors only while it is down: none before it stopped, none from 5 s
    // after its return on.
    let errors_outside = tally
        .count(|e| e.1 != Outcome::Ok && (e.0 < stopping || e.0 > back + Duration::from_secs(5)));
    assert_eq!(errors_outside, 0, "errors while PostgreSQL was up:\n{log}");
    // Back at full rate (at least half the baseline's pulls per reference
    // request) by 5 s after PostgreSQL returned: over [3 s, 5 s].
    let (recovered, recovered_rate) = ok_per_ref(back + Duration::from_secs(3));
    let first_ok = tally
        .log
        .lock()
        .expect("tally")
        .iter()
        .filter(|e| pulls(e) && e.0 > back && e.1 == Outcome::Ok)
        .map(|e| e.0 - back)
        .min();
    eprintln!(
        "baseline {baseline_rate}/s ({baseline:.2} per reference request); {unavailable} x 503 while down; first success {first_ok:?} after the restart; {recovered_rate}/s ({recovered:.2}) in [3 s, 5 s]"
    );
    assert!(
        recovered * 2.0 >= baseline,
        "{recovered:.2} pulls per reference request 3-5 s after the restart ({recovered_rate}/s), baseline {baseline:.2} ({baseline_rate}/s):\n{log}"
    );
    assert!(log.contains("PostgreSQL unreachable"), "{log}");
    assert!(log.contains("PostgreSQL reachable again"), "{log}");
    assert_eq!(
        log.matches("PostgreSQL unreachable").count(),
        1,
        "one line per outage:\n{log}"
    );
    // Within 5 s of its return the server is as before the outage, the
    // pool connected and the API cache listening again (pulls served from
    // memory): what the full rate is made of, read from its log's clock,
    // which the machine's load does not move.
    for line in [
        "PostgreSQL reachable again",
        "listening for PostgreSQL notifications",
    ] {
        let after = serve
            .log()
            .lines()
            .filter(|l| l.contains(line))
            .filter_map(log_time)
            .map(|t| t.duration_since(back_wall).unwrap_or_default())
            .next_back();
        assert!(
            after.is_some_and(|t| t <= Duration::from_secs(5)),
            "`{line}` logged {after:?} after PostgreSQL returned:\n{log}"
        );
    }
}

/// When a log line was written: its leading RFC 3339 time stamp.
fn log_time(line: &str) -> Option<std::time::SystemTime> {
    let stamp = line.split_whitespace().next()?;
    chrono::DateTime::parse_from_rfc3339(stamp)
        .ok()
        .map(std::time::SystemTime::from)
}

/// Two servers (two provisioning LANs) on one database: an appliance
/// enrolled through A pulls its configuration and heartbeats through B
/// after A stopped; a retire typed on the CLI is refused by B at once.
#[test]
fn r16_two_servers_share_one_database() {
    let fleet = Fleet::new(true, 2);
    let url = fleet.database.clone().expect("url");
    let data_a = fleet.dir.path().join("a");
    let data_b = fleet.second_data_dir();
    let mut a = Serve::start(&data_a, Some(&url), 5);
    let b = Serve::start(&data_b, Some(&url), 5);
    let rt = runtime();
    let plain = reqwest::Client::new();
    let id = rt
        .block_on(enroll(&plain, &a.http, &mac(0)))
        .expect("enroll through A");
    assert!(id
        .resp
        .https_url
        .ends_with(a.https.trim_start_matches("https://127.0.0.1")));
    // One CA for the fleet: both boot scripts carry the same fingerprint.
    let fp = levee_provisioner::enroll::ca::pem_fingerprint(&id.resp.ca_pem).expect("ca");
    for s in [&a, &b] {
        let script = rt.block_on(async {
            plain
                .get(format!("{}/boot/{}.ipxe", s.http, mac(1)))
                .send()
                .await
                .expect("script")
                .text()
                .await
                .expect("body")
        });
        assert!(script.contains(&format!("levee.ca={fp}")), "{script}");
    }
    a.signal(libc::SIGTERM);
    assert_eq!(a.wait_exit(Duration::from_secs(10)).code(), Some(0));

    let config = rt.block_on(pull(&id, &b.https));
    assert_eq!(config, Outcome::Ok, "config through B:\n{}", b.log());
    let hb = rt.block_on(send(
        id.client
            .post(format!("{}{}", b.https, paths::HEARTBEAT))
            .json(&serde_json::json!({"mac": id.mac, "image_version": "v16", "slot": "a"})),
    ));
    assert!(hb.is_ok(), "heartbeat through B: {hb:?}\n{}", b.log());
    let cli_b = common::Cli {
        data: data_b.clone(),
        database: Some(url.clone()),
    };
    let shown = cli_b
        .ok(&["appliance", "show", &id.id.to_string()])
        .expect("levee appliance show");
    assert!(
        shown.contains("v16"),
        "the heartbeat through B is in the shared store:\n{shown}"
    );

    cli_b
        .ok(&["appliance", "retire", &id.mac, "--reason", "stolen"])
        .expect("levee appliance retire");
    // B's API cache hears of the retirement by NOTIFY: refused within
    // milliseconds; a second is the bound asserted on a loaded machine.
    let t = Instant::now();
    loop {
        match rt.block_on(pull(&id, &b.https)) {
            Outcome::Status(403) => break,
            o => assert!(
                t.elapsed() < Duration::from_secs(1),
                "still {o:?} 1 s after the retirement:\n{}",
                b.log()
            ),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!("retirement refused by B after {:?}", t.elapsed());
}

/// Images for every server of a fleet: B, started beside A on one
/// database with none of the image's files, fetches them from A (in the
/// background at start, and on the first request for one it lacks), each
/// checked against the image record in the database; a file A serves
/// changed is refused by name and never served by B.
#[test]
fn r16_a_server_fetches_the_fleets_images_from_another() {
    let fleet = Fleet::new(true, 0);
    let url = fleet.database.clone().expect("url");
    let data_a = fleet.dir.path().join("a");
    let data_b = fleet.second_data_dir();
    let image = std::fs::read_dir(data_a.join("images"))
        .expect("A's images")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|n| !n.starts_with('.'))
        .expect("the default profile's image");
    let _a = Serve::start(&data_a, Some(&url), 5);
    let b = Serve::start(&data_b, Some(&url), 5);
    let dir_b = data_b.join("images").join(&image);
    // In the background at start: the default profile's image, whole.
    let t = Instant::now();
    while !dir_b.join("image.json").is_file() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "B did not fetch image {image} from A:\n{}",
            b.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for name in ["vmlinuz", "initrd.img", "image.json"] {
        assert_eq!(
            std::fs::read(dir_b.join(name)).expect("B's copy"),
            std::fs::read(data_a.join("images").join(&image).join(name)).expect("A's"),
            "{name}"
        );
    }
    let get = |file: &str| {
        let r = reqwest::blocking::get(format!("{}/images/{image}/{file}", b.http)).expect("GET");
        (r.status().as_u16(), r.text().expect("body"))
    };
    assert_eq!(get("vmlinuz"), (200, "kernel".to_string()));

    // A's copy changed (same size): B, lacking the file, refuses it.
    std::fs::remove_file(dir_b.join("initrd.img")).expect("rm");
    let a_initrd = data_a.join("images").join(&image).join("initrd.img");
    std::fs::write(&a_initrd, b"INITRD").expect("tamper");
    let (status, body) = get("initrd.img");
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("initrd.img") && body.contains("sha256"),
        "the refusal names the file and the check: {body}"
    );
    let log = b.log();
    assert!(
        log.lines()
            .any(|l| l.contains("image file from another server refused")
                && l.contains("initrd.img")
                && l.contains("sha256")),
        "B logs the refused file by name:\n{log}"
    );
    let left: Vec<_> = std::fs::read_dir(&dir_b)
        .expect("B's image dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    assert!(
        !left.iter().any(|n| n.contains("initrd")),
        "nothing of the bad copy is left in B: {left:?}"
    );
    // A good copy again: fetched on the first request and served.
    std::fs::write(&a_initrd, b"initrd").expect("repair");
    assert_eq!(get("initrd.img"), (200, "initrd".to_string()));
    assert_eq!(get("no-such-file").0, 404);
}
