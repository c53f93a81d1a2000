//! `levee store serve`: the offsite store alone, as its own process, with
//! a certificate from `levee store cert` (issue 14). On loopback: an
//! appliance enrolled with `levee serve` replicates to it; once retired it
//! is refused at its next request; a store whose certificate names another
//! host is refused by the agent.

mod common;

use common::offsite::{back_up, new_repo};

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use levee_agent::enroll::Credential;
use levee_agent::replicate::{self, Bucket, ReplicateOptions, StoreClient};
use levee_agent::Repository;
use levee_proto::config::OffsiteTarget;
use levee_proto::offsite::Namespace;

const MAC: &str = "52:54:00:14:10:01";

/// A `levee store serve` child process, killed with the test.
struct StoreProcess {
    child: Child,
    url: String,
    log: PathBuf,
}

impl StoreProcess {
    fn spawn(data: &Path, cert: &Path, key: &Path, dir: &Path, log: &Path) -> StoreProcess {
        Self::spawn_on(data, None, cert, key, dir, log)
    }

    /// On the PostgreSQL `database`, when given.
    fn spawn_on(
        data: &Path,
        database: Option<&str>,
        cert: &Path,
        key: &Path,
        dir: &Path,
        log: &Path,
    ) -> StoreProcess {
        let files = ["--dir".to_string(), dir.to_string_lossy().into_owned()];
        Self::spawn_with(data, database, cert, key, &files, log)
    }

    /// With `files`: where the store keeps them (`--dir DIR`, or
    /// `--store-backend` and its S3 options).
    fn spawn_with(
        data: &Path,
        database: Option<&str>,
        cert: &Path,
        key: &Path,
        files: &[String],
        log: &Path,
    ) -> StoreProcess {
        let port = common::free_port();
        let out = std::fs::File::create(log).expect("log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_levee"));
        match database {
            Some(url) => cmd.env("LEVEE_DATABASE", url),
            None => cmd.env_remove("LEVEE_DATABASE"),
        };
        cmd.arg("--data-dir")
            .arg(data)
            .args(["store", "serve", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key)
            .args(files)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .process_group(0);
        common::dies_with_test(&mut cmd);
        let child = cmd.spawn().expect("levee store serve");
        let p = StoreProcess {
            child,
            url: format!("https://127.0.0.1:{port}"),
            log: log.to_path_buf(),
        };
        common::wait_until("the store to listen", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for StoreProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn repository(state: &Path, src: &Path) -> Repository {
    std::fs::create_dir_all(src).expect("src");
    std::fs::write(src.join("f.txt"), "store serve test data\n".repeat(5000)).expect("write");
    // Incompressible, so the pack is about this large.
    std::fs::write(src.join("noise.bin"), common::noise(600 << 10, 7)).expect("write");
    let repo = new_repo(&state.join("repo"), b"appliance-secret-0123456789");
    back_up(&repo, src);
    repo
}

fn target(url: &str) -> OffsiteTarget {
    serde_json::from_value(serde_json::json!({"name": "site2", "urls": [url]})).expect("target")
}

fn opts() -> ReplicateOptions {
    ReplicateOptions {
        part_bytes: 1 << 20,
        timeout: Duration::from_secs(20),
        verify_share: 0.0,
        ..ReplicateOptions::default()
    }
}

/// One enrolled appliance with a backed-up repository, and a `levee store
/// serve` with a certificate for 127.0.0.1.
struct Setup {
    s: common::LoopbackServer,
    state: PathBuf,
    cred: Credential,
    repo: Repository,
    tls: PathBuf,
}

fn setup() -> Setup {
    let s = common::LoopbackServer::start(
        common::AGENT_CMDLINE,
        serde_json::json!({"customer": "acme", "install": {"to_disk": false}}),
        &[MAC],
    );
    let state = s.dir.path().join("appliance");
    std::fs::create_dir_all(&state).expect("state");
    common::agent_pass(&s.http, MAC, &state);
    let cred = Credential::load(&state).expect("load").expect("credential");
    let repo = repository(&state, &s.dir.path().join("src"));
    let tls = s.dir.path().join("tls");
    std::fs::create_dir_all(&tls).expect("tls dir");
    Setup {
        s,
        state,
        cred,
        repo,
        tls,
    }
}

impl Setup {
    fn cert(&self, host: &str, name: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = (
            self.tls.join(format!("{name}.crt")),
            self.tls.join(format!("{name}.key")),
        );
        let out = self.s.levee(&[
            "store",
            "cert",
            host,
            "--cert",
            cert.to_str().expect("utf-8"),
            "--key",
            key.to_str().expect("utf-8"),
        ]);
        assert!(out.contains("mode 0600"), "{out}");
        (cert, key)
    }

    fn replicate(&self, url: &str) -> replicate::TargetOutcome {
        replicate::replicate_target(
            &self.repo,
            "acme",
            &target(url),
            &self.cred,
            Arc::new(Bucket::new(None)),
            &opts(),
            &self.state,
        )
    }
}

/// Every file under `dir`, relative.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, p: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
            let path = e.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).expect("under").to_path_buf());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out
}

#[test]
fn r14_a_quota_refuses_the_file_that_would_pass_it_and_leaves_nothing_partial() {
    let t = setup();
    let (cert, key) = t.cert("127.0.0.1", "store");
    // DATA_DIR/offsite: where `customer show` counts usage.
    let dir = t.s.data.join("offsite");
    let store = StoreProcess::spawn(&t.s.data, &cert, &key, &dir, &t.s.dir.path().join("q.log"));
    let bad = common::Cli::new(&t.s.data)
        .fails(&["customer", "quota", "acme", "lots"])
        .expect("run");
    assert!(bad.contains("500GiB"), "{bad}");
    t.s.levee(&["customer", "quota", "acme", "300KiB"]);
    let shown = t.s.levee(&["customer", "show", "acme"]);
    assert!(shown.contains("quota 300.0 KiB"), "{shown}");

    let run = t.replicate(&store.url);
    assert!(!run.ok(), "the pack does not fit in 300 KiB");
    let errors = run.errors.join("\n");
    assert!(
        errors.contains("offsite quota is 300.0 KiB") && errors.contains("holds"),
        "{errors}"
    );
    let report = serde_json::to_string(&run.report()).expect("report");
    assert!(report.contains("offsite quota is 300.0 KiB"), "{report}");
    // Config and key slot went, and the small tree pack (trees have packs
    // of their own) fits; not the data pack, no snapshot, no partial upload.
    let ns = dir.join("acme").join(&t.repo.config.id);
    let held = files_under(&ns);
    assert!(held.iter().any(|p| p.starts_with("config")), "{held:?}");
    let mut total = 0;
    for p in &held {
        let s = p.to_string_lossy();
        assert!(
            !s.starts_with("snapshots") && !s.contains("partial"),
            "{s} is on the store: {held:?}"
        );
        let len = std::fs::metadata(ns.join(p)).expect("stat").len();
        total += len;
        assert!(
            !s.starts_with("data") || len < 64 << 10,
            "{s} ({len} bytes) is on the store: {held:?}"
        );
    }
    assert!(total <= 300 << 10, "{total} bytes held: {held:?}");
    assert!(store.log().contains("over quota"), "{}", store.log());

    // Lifted: the same run completes; `show` reports the usage.
    t.s.levee(&["customer", "quota", "acme", "none"]);
    let run = t.replicate(&store.url);
    assert!(run.ok(), "{:?}", run.errors);
    let json: serde_json::Value =
        serde_json::from_str(&t.s.levee(&["customer", "show", "acme", "--json"])).expect("json");
    assert_eq!(json["offsite_quota"], serde_json::Value::Null);
    assert!(
        json["offsite_bytes"].as_u64().expect("bytes") > 600 << 10,
        "{json}"
    );
    // Raised above what it holds: a new backup's files fit again.
    t.s.levee(&["customer", "quota", "acme", "50MiB"]);
    let json: serde_json::Value =
        serde_json::from_str(&t.s.levee(&["customer", "show", "acme", "--json"])).expect("json");
    assert_eq!(json["offsite_quota"], 50 << 20);
}

#[test]
fn r14_store_serve_alone_with_its_certificate_refuses_retired_appliances_and_wrong_hosts() {
    let t = setup();
    // The certificate, made where the CA is; the store on "another
    // machine": its own process and directory, the fleet's database.
    let (cert, key) = t.cert("127.0.0.1", "store");
    let again = common::Cli::new(&t.s.data)
        .fails(&[
            "store",
            "cert",
            "127.0.0.1",
            "--cert",
            cert.to_str().expect("utf-8"),
            "--key",
            key.to_str().expect("utf-8"),
        ])
        .expect("run");
    assert!(again.contains("never overwritten"), "{again}");
    let dir = t.s.dir.path().join("offsite-elsewhere");
    let store = StoreProcess::spawn(
        &t.s.data,
        &cert,
        &key,
        &dir,
        &t.s.dir.path().join("store.log"),
    );

    let run = t.replicate(&store.url);
    assert!(run.ok(), "{:?}\n{}", run.errors, store.log());
    assert!(run.files_uploaded >= 4, "{run:?}");
    let held = dir.join("acme").join(&t.repo.config.id);
    assert!(held.join(".owner").exists(), "{}", store.log());

    // A certificate for another host name: the agent refuses the store.
    let (cert2, key2) = t.cert("offsite.example", "other");
    let wrong = StoreProcess::spawn(
        &t.s.data,
        &cert2,
        &key2,
        &t.s.dir.path().join("offsite-wrong"),
        &t.s.dir.path().join("wrong.log"),
    );
    let run = t.replicate(&wrong.url);
    assert!(
        !run.ok(),
        "a store with another host's certificate was used"
    );
    let errors = format!("{:?}", run.errors);
    assert!(
        errors.contains("certificate") || errors.contains("NotValidForName"),
        "{errors}"
    );
    assert!(
        !t.s.dir.path().join("offsite-wrong/acme").exists(),
        "nothing reached the wrong store"
    );

    // Retired: refused at once (the connection the client holds included).
    let client = StoreClient::new(
        &[&store.url],
        &t.cred,
        Namespace::new("acme", &t.repo.config.id).expect("ns"),
        Arc::new(Bucket::new(None)),
        Duration::from_secs(10),
    )
    .expect("client");
    let (status, _) = client.raw(reqwest::Method::GET, "data/").expect("list");
    assert_eq!(status, 200);
    t.s.levee(&["appliance", "retire", MAC, "--reason", "stolen"]);
    let (status, body) = client.raw(reqwest::Method::GET, "data/").expect("list");
    assert_eq!(status, 403, "{body}");
    assert!(store.log().contains("refused"), "{}", store.log());
}

/// The store on another machine, sharing the fleet's PostgreSQL: its data
/// directory holds neither the CA nor the server key; the CA it trusts is
/// the one in the database.
#[test]
fn r14_store_serve_on_postgres_needs_no_ca_key_and_follows_revocation() {
    let pg = levee_provisioner::store::testing::PgServer::start();
    let url = pg.create_db("store_serve");
    let dir = tempfile::tempdir().expect("tempdir");
    let central = dir.path().join("central");
    let store = common::open_store(&central, Some(&url));
    common::add_default_profile(dir.path(), &central, store.as_ref(), common::AGENT_CMDLINE);
    common::add_customer(
        store.as_ref(),
        &central,
        serde_json::json!({"customer": "acme", "install": {"to_disk": false}}),
    );
    common::register(store.as_ref(), MAC, "acme");
    let serve =
        common::ServeProcess::spawn(&central, Some(&url), &dir.path().join("serve.log"), &[]);
    let state = dir.path().join("appliance");
    std::fs::create_dir_all(&state).expect("state");
    common::agent_pass(&serve.http, MAC, &state);
    let cred = Credential::load(&state).expect("load").expect("credential");
    let repo = repository(&state, &dir.path().join("src"));

    let cli = common::Cli {
        data: central.clone(),
        database: Some(url.clone()),
    };
    let (cert, key) = (dir.path().join("store.crt"), dir.path().join("store.key"));
    cli.ok(&[
        "store",
        "cert",
        "127.0.0.1",
        "--cert",
        cert.to_str().expect("utf-8"),
        "--key",
        key.to_str().expect("utf-8"),
    ])
    .expect("store cert");
    let host = dir.path().join("storehost");
    std::fs::create_dir_all(&host).expect("host");
    let node = StoreProcess::spawn_on(
        &host,
        Some(&url),
        &cert,
        &key,
        &host.join("offsite"),
        &dir.path().join("store.log"),
    );
    let run = replicate::replicate_target(
        &repo,
        "acme",
        &target(&node.url),
        &cred,
        Arc::new(Bucket::new(None)),
        &opts(),
        &state,
    );
    assert!(run.ok(), "{:?}\n{}", run.errors, node.log());
    assert!(host
        .join("offsite/acme")
        .join(&repo.config.id)
        .join(".owner")
        .exists());
    assert!(
        !host.join("ca").exists() && !host.join("server.key").exists(),
        "the store machine holds no CA and no server key"
    );
    cli.ok(&["appliance", "retire", MAC, "--reason", "stolen"])
        .expect("retire");
    let client = StoreClient::new(
        &[&node.url],
        &cred,
        Namespace::new("acme", &repo.config.id).expect("ns"),
        Arc::new(Bucket::new(None)),
        Duration::from_secs(10),
    )
    .expect("client");
    let (status, body) = client.raw(reqwest::Method::GET, "data/").expect("list");
    assert_eq!(status, 403, "{body}");
}

/// A part the store refuses (409: the file exists) gets its answer even
/// while 16 MiB of body are on their way: the store reads the body before
/// answering, so the agent sees 409 and `levee-size`, not a broken
/// connection.
#[test]
fn r14_a_refused_part_gets_its_answer_not_a_broken_connection() {
    let t = setup();
    let (cert, key) = t.cert("127.0.0.1", "store");
    let dir = t.s.dir.path().join("offsite");
    let store = StoreProcess::spawn(&t.s.data, &cert, &key, &dir, &t.s.dir.path().join("r.log"));
    assert!(t.replicate(&store.url).ok());
    let pack = replicate::local_files(&t.repo)
        .expect("local")
        .into_iter()
        .find(|f| f.kind == levee_proto::offsite::FileKind::Data)
        .expect("a pack");
    let pem = format!("{}\n{}", t.cred.cert_pem.trim_end(), t.cred.key_pem);
    let client = reqwest::blocking::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(t.cred.ca_pem.as_bytes()).expect("ca"))
        .identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("identity"))
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let body = vec![0u8; 16 << 20];
    let resp = client
        .put(format!(
            "{}/store/v1/acme/{}/data/{}",
            store.url, t.repo.config.id, pack.name
        ))
        .header("upload-offset", "0")
        .header("upload-length", (16u64 << 20).to_string())
        .body(body)
        .send()
        .expect("an answer, not a broken connection");
    assert_eq!(resp.status(), 409);
    assert_eq!(
        resp.headers()
            .get("levee-size")
            .and_then(|v| v.to_str().ok()),
        Some(pack.size.to_string().as_str())
    );
}

/// Two `levee store serve` processes on one S3 bucket (a real `s3s-fs` on
/// loopback) are one target with two endpoints: one is killed (SIGKILL)
/// mid-upload, the run completes through the other; both then list the
/// same complete copy, and the bucket holds no plaintext.
#[test]
fn r14_two_store_processes_on_one_bucket_fail_over() {
    use levee_tests::s3::{S3Server, ACCESS_KEY, SECRET_KEY};
    let t = setup();
    let (cert, key) = t.cert("127.0.0.1", "store");
    let s3 = S3Server::start(&t.s.dir.path().join("s3"), &["offsite"]).expect("s3s-fs");
    let files: Vec<String> = [
        "--store-backend",
        "s3://offsite/site2",
        "--store-s3-endpoint",
        &s3.endpoint(),
        "--store-s3-access-key-id",
        ACCESS_KEY,
        "--store-s3-secret-access-key",
        SECRET_KEY,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let spawn = |name: &str| {
        StoreProcess::spawn_with(
            &t.s.data,
            None,
            &cert,
            &key,
            &files,
            &t.s.dir.path().join(format!("{name}.log")),
        )
    };
    let mut n1 = spawn("n1");
    let n2 = spawn("n2");
    let target: OffsiteTarget =
        serde_json::from_value(serde_json::json!({"name": "site2", "urls": [n1.url, n2.url]}))
            .expect("target");
    // 256 KiB/s in 64 KiB parts: the pack takes seconds; node 1 dies in
    // the middle of it.
    let run = std::thread::scope(|sc| {
        let r = sc.spawn(|| {
            replicate::replicate_target(
                &t.repo,
                "acme",
                &target,
                &t.cred,
                Arc::new(Bucket::new(Some(256 << 10))),
                &ReplicateOptions {
                    part_bytes: 64 << 10,
                    ..opts()
                },
                &t.state,
            )
        });
        std::thread::sleep(Duration::from_millis(1500));
        let _ = n1.child.kill();
        let _ = n1.child.wait();
        r.join().expect("replication")
    });
    assert!(run.ok(), "failover to node 2: {:?}", run.errors);
    let local = replicate::local_files(&t.repo).expect("local");
    eprintln!(
        "measured: {} files, {} bytes sent for {} bytes of files",
        run.files_uploaded,
        run.bytes_uploaded,
        local.iter().map(|f| f.size).sum::<u64>()
    );
    let list = |url: &str| {
        replicate::names(
            &StoreClient::new(
                &[url],
                &t.cred,
                Namespace::new("acme", &t.repo.config.id).expect("ns"),
                Arc::new(Bucket::new(None)),
                Duration::from_secs(10),
            )
            .expect("client")
            .list_all()
            .expect("list"),
        )
    };
    assert!(local.iter().all(|f| list(&n2.url).contains(&f.name)));
    // Node 1 back on the same bucket: the same copy, nothing to send.
    n1 = spawn("n1-again");
    assert!(local.iter().all(|f| list(&n1.url).contains(&f.name)));
    let again = replicate::replicate_target(
        &t.repo,
        "acme",
        &target,
        &t.cred,
        Arc::new(Bucket::new(None)),
        &opts(),
        &t.state,
    );
    assert!(again.ok() && again.files_uploaded == 0, "{again:?}");
    // No plaintext in the bucket, no segment left behind.
    for f in files_under(&s3.root) {
        let bytes = std::fs::read(s3.root.join(&f)).unwrap_or_default();
        assert!(
            !bytes.windows(21).any(|w| w == b"store serve test data"),
            "plaintext in {}",
            f.display()
        );
        assert!(
            !f.to_string_lossy().contains(".partial/"),
            "{}",
            f.display()
        );
    }
}
