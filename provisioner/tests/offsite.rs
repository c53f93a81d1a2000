//! Offsite replication end to end on loopback (issue 14): a real `levee
//! serve` (HTTP + mTLS API) enrolls appliances with the real agent code;
//! two offsite store nodes share one directory (one target, two
//! endpoints); the agent's replication engine backs a real repository up
//! to them. Proves failover and catch-up, resume after a cut without
//! resending what the store holds (bytes counted on the server), the
//! refusals (overwrite, delete, other appliance, other customer), no
//! plaintext and no password slot on the store, and the bandwidth cap.
//!
//! The two-node and verification scenarios run twice: on a directory, and
//! with the store's files in S3 (`--store-backend`, a real `s3s-fs` server
//! on loopback), where the S3 run also replicates to a direct S3 target
//! on the same server.

mod common;

use common::offsite::new_repo;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use levee_agent::backup::commands::backup::{backup, BackupOptions};
use levee_agent::backup::progress::Counters;
use levee_agent::daemon::{run, RunOptions};
use levee_agent::enroll::Credential;
use levee_agent::replicate::{self, Bucket, ReplicateOptions, StoreClient, TargetOutcome};
use levee_agent::Repository;
use levee_proto::config::OffsiteTarget;
use levee_proto::offsite::Namespace;
use levee_proto::repo::KdfParams;
use levee_provisioner::enroll::ca::ServerCa;
use levee_provisioner::offsite::{Disk, Files, S3Files, S3Options, StoreState, StoreStats};
use levee_provisioner::store::Store;
use levee_tests::s3::{S3Server, ACCESS_KEY, SECRET_KEY};
use tokio_util::sync::CancellationToken;

const MAC_A: &str = "52:54:00:14:00:01";
const MAC_B: &str = "52:54:00:14:00:02";
const MAC_C: &str = "52:54:00:14:00:03";
const MARKER: &str = "LEVEE-PLAINTEXT-MARKER-1f3a";

struct World {
    dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    http: String,
    data: PathBuf,
    offsite: PathBuf,
    stats: Arc<StoreStats>,
    /// The S3 server when the store's files are in S3 (bucket `offsite`,
    /// and `direct` for a direct S3 target).
    s3: Option<S3Server>,
    stop: CancellationToken,
    _rt: tokio::runtime::Runtime,
}

/// Where the store keeps its files in a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Dir,
    S3,
}

/// The store's bucket location.
const STORE_BUCKET: &str = "s3://offsite/levee";

impl Drop for World {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn world() -> World {
    world_on(Backend::Dir)
}

fn world_on(backend: Backend) -> World {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, store) = common::store_with_default_profile(dir.path(), common::AGENT_CMDLINE);
    for customer in ["acme", "other"] {
        common::add_customer(
            store.as_ref(),
            &data,
            serde_json::json!({"customer": customer, "install": {"to_disk": false}}),
        );
    }
    for (mac, customer) in [(MAC_A, "acme"), (MAC_B, "acme"), (MAC_C, "other")] {
        common::register(store.as_ref(), mac, customer);
    }
    let rt = common::runtime();
    let (http, stop) = rt.block_on(common::serve_on_loopback(
        store.clone(),
        data.clone(),
        dir.path(),
    ));
    let offsite = data.join("offsite");
    let s3 = (backend == Backend::S3)
        .then(|| S3Server::start(&dir.path().join("s3"), &["offsite", "direct"]).expect("s3s-fs"));
    World {
        dir,
        store,
        http,
        data,
        offsite,
        stats: Arc::new(StoreStats::default()),
        s3,
        stop,
        _rt: rt,
    }
}

/// One store node on its own runtime: dropping it kills it at once (its
/// connections are cut mid-request, as when the process dies).
struct Node {
    addr: SocketAddr,
    rt: Option<tokio::runtime::Runtime>,
}

impl Node {
    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    fn kill(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

impl World {
    /// Enrolls `mac` with one pass of the real agent; its credential.
    fn enroll(&self, mac: &str) -> (PathBuf, Credential) {
        let state = self.dir.path().join(mac.replace(':', ""));
        std::fs::create_dir_all(&state).expect("state");
        let script = reqwest::blocking::get(format!("{}/boot/{mac}.ipxe", self.http))
            .expect("script")
            .text()
            .expect("body");
        let kernel = script
            .lines()
            .find(|l| l.starts_with("kernel "))
            .expect("kernel line");
        let cmdline = state.with_extension("cmdline");
        let bootif = format!("BOOTIF=01-{}", mac.replace(':', "-"));
        std::fs::write(&cmdline, format!("{kernel} {bootif} levee.interval=1")).expect("cmdline");
        run(&RunOptions {
            cmdline,
            once: true,
            state_dir: state.clone(),
            enroll_retry: Duration::from_millis(200),
            set_clock: false,
            ..RunOptions::default()
        })
        .expect("agent pass");
        let cred = Credential::load(&state).expect("load").expect("credential");
        (state, cred)
    }

    /// Starts a store node on `addr` (port 0: any) over the shared
    /// directory and counters.
    fn node(&self, addr: &str) -> Node {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let ca = ServerCa::open_or_create(&self.data.join("ca")).expect("ca");
        let files = match self.s3_options() {
            Some(o) => Files::S3(S3Files::open(&o).expect("the store's bucket")),
            None => Files::Dir(Disk::new(&self.offsite)),
        };
        let state = StoreState {
            store: self.store.clone(),
            files,
            stats: self.stats.clone(),
            usage: Default::default(),
        };
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(addr))
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        rt.spawn(async move {
            let tls = levee_provisioner::enroll::https::tls_config(&ca, "127.0.0.1").expect("tls");
            let _ = levee_provisioner::offsite::serve(
                listener,
                tls,
                state,
                levee_provisioner::offsite::DEFAULT_GRACE,
                Default::default(),
                CancellationToken::new(),
            )
            .await;
        });
        Node { addr, rt: Some(rt) }
    }

    fn s3_options(&self) -> Option<S3Options> {
        self.s3.as_ref().map(|s| S3Options {
            url: STORE_BUCKET.into(),
            endpoint: Some(s.endpoint()),
            access_key_id: Some(ACCESS_KEY.into()),
            secret_access_key: Some(SECRET_KEY.into()),
            ..Default::default()
        })
    }

    /// `levee store prune` with this world's store files.
    fn prune(&self, args: &[&str]) -> String {
        let mut all = vec!["store", "prune"];
        let endpoint = self.s3.as_ref().map(|s| s.endpoint());
        if let Some(e) = &endpoint {
            all.extend([
                "--store-backend",
                STORE_BUCKET,
                "--store-s3-endpoint",
                e,
                "--store-s3-access-key-id",
                ACCESS_KEY,
                "--store-s3-secret-access-key",
                SECRET_KEY,
            ]);
        }
        all.extend(args);
        common::levee(&self.data, &all)
    }

    /// Where the store's files are on disk: the directory, or the S3
    /// server's (s3s-fs keeps objects as plain files).
    fn files_root(&self) -> PathBuf {
        match &self.s3 {
            Some(s) => s.root.clone(),
            None => self.offsite.clone(),
        }
    }

    /// The store's own files (not the direct target's).
    fn store_root(&self) -> PathBuf {
        match &self.s3 {
            Some(s) => s.root.join("offsite"),
            None => self.offsite.clone(),
        }
    }

    /// Where a stored pack's bytes are on disk.
    fn stored_pack(&self, repo_id: &str, name: &str) -> PathBuf {
        match &self.s3 {
            Some(s) => s
                .root
                .join("offsite/levee/acme")
                .join(repo_id)
                .join("data")
                .join(name),
            None => self
                .offsite
                .join("acme")
                .join(repo_id)
                .join("data")
                .join(&name[..2])
                .join(name),
        }
    }

    /// A direct S3 target on this world's S3 server.
    fn direct_target(&self) -> Option<OffsiteTarget> {
        self.s3.as_ref().map(|s| {
            serde_json::from_value(serde_json::json!({
                "name": "cold",
                "url": "s3://direct/levee",
                "endpoint": s.endpoint(),
                "access_key_id": ACCESS_KEY,
                "secret_access_key": SECRET_KEY,
            }))
            .expect("direct target")
        })
    }

    fn received(&self) -> u64 {
        self.stats.bytes_received.load(Ordering::SeqCst)
    }

    /// Every file under the store's directory, contents included.
    fn store_files(&self) -> Vec<(PathBuf, Vec<u8>)> {
        fn walk(p: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                let path = e.path();
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    let b = std::fs::read(&path).unwrap_or_default();
                    out.push((path, b));
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.files_root(), &mut out);
        out
    }
}

/// A repository in the appliance's state with the appliance's key slot, a
/// password slot (which must stay local), and a first backup of `src`.
fn repository(state: &Path, src: &Path) -> Repository {
    let repo = new_repo(&state.join("repo"), b"appliance-secret-0123456789");
    repo.add_key(
        b"ops-password-guessable",
        KdfParams::with_memory(1024),
        "password",
        "ops",
    )
    .expect("password slot");
    back_up(&repo, src);
    repo
}

fn back_up(repo: &Repository, src: &Path) {
    let opts = BackupOptions {
        sources: vec![src.to_string_lossy().into()],
        ..Default::default()
    };
    backup(repo, &opts, None, &Counters::default()).expect("backup");
}

/// Random (incompressible) data with the marker in front, so packs are
/// about as large as the file.
fn write_source(dir: &Path, name: &str, bytes: usize) {
    std::fs::create_dir_all(dir).expect("src");
    let mut data = MARKER.as_bytes().to_vec();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ bytes as u64 ^ name.len() as u64;
    while data.len() < bytes {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(dir.join(name), &data).expect("write");
}

fn target(urls: &[String]) -> OffsiteTarget {
    serde_json::from_value(serde_json::json!({"name": "hq", "urls": urls})).expect("target")
}

fn opts(part: u64) -> ReplicateOptions {
    ReplicateOptions {
        part_bytes: part,
        timeout: Duration::from_secs(30),
        verify_share: 0.0,
        ..ReplicateOptions::default()
    }
}

fn replicate_once(
    repo: &Repository,
    t: &OffsiteTarget,
    cred: &Credential,
    state: &Path,
    rate: Option<u64>,
    part: u64,
) -> TargetOutcome {
    replicate::replicate_target(
        repo,
        "acme",
        t,
        cred,
        Arc::new(Bucket::new(rate)),
        &opts(part),
        state,
    )
}

/// Bytes of what may travel: everything but the password slot.
fn travelling_bytes(repo: &Repository) -> u64 {
    replicate::local_files(repo)
        .expect("local")
        .iter()
        .map(|f| f.size)
        .sum()
}

fn client(cred: &Credential, node: &Node, repo_id: &str) -> StoreClient {
    StoreClient::new(
        &[&node.url()],
        cred,
        Namespace::new("acme", repo_id).expect("ns"),
        Arc::new(Bucket::new(None)),
        Duration::from_secs(10),
    )
    .expect("client")
}

#[test]
fn r14_two_nodes_failover_catch_up_and_what_the_store_refuses() {
    two_nodes(Backend::Dir);
}

#[test]
fn r14_two_nodes_on_one_bucket_and_a_direct_s3_target() {
    two_nodes(Backend::S3);
}

fn two_nodes(backend: Backend) {
    let w = world_on(backend);
    let (state, cred) = w.enroll(MAC_A);
    let src = w.dir.path().join("src");
    write_source(&src, "a.bin", 3 << 20);
    let repo = repository(&state, &src);
    let mut n1 = w.node("127.0.0.1:0");
    let n2 = w.node("127.0.0.1:0");
    let t = target(&[n1.url(), n2.url()]);

    // Node 1 dies mid-upload (the cap keeps the upload going long enough
    // to kill it in the middle): the files carry on through node 2.
    let before = w.received();
    let killed = std::thread::scope(|s| {
        let run = s.spawn(|| replicate_once(&repo, &t, &cred, &state, Some(1 << 20), 256 << 10));
        let start = Instant::now();
        while w.received() - before < (1 << 20) && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(20));
        }
        n1.kill();
        run.join().expect("replication thread")
    });
    assert!(killed.ok(), "failover: {:?}", killed.errors);
    eprintln!(
        "measured: node 1 killed after {} bytes; {} files, {} bytes sent in all",
        1 << 20,
        killed.files_uploaded,
        killed.bytes_uploaded
    );
    let listing = client(&cred, &n2, &repo.config.id)
        .list_all()
        .expect("list");
    let local = replicate::local_files(&repo).expect("local");
    let names = replicate::names(&listing);
    assert!(
        local.iter().all(|f| names.contains(&f.name)),
        "all on the target"
    );
    assert_eq!(killed.lag_secs, 0);

    // The whole target down: the run fails and says how far behind it is;
    // a new backup meanwhile; back up: caught up, only what was missing sent.
    let n2_addr = n2.addr.to_string();
    drop(n2);
    write_source(&src, "b.bin", 300 << 10);
    back_up(&repo, &src);
    let down = replicate_once(&repo, &t, &cred, &state, None, 256 << 10);
    assert!(!down.ok() && down.files_uploaded == 0, "{down:?}");
    let report = down.report();
    assert_eq!(report.kind, levee_proto::runs::RunKind::Replication);
    assert_eq!(report.sources, ["hq"]);
    let n1 = w.node(&n1.addr.to_string());
    let _n2 = w.node(&n2_addr);
    let before = w.received();
    let caught = replicate_once(&repo, &t, &cred, &state, None, 256 << 10);
    assert!(caught.ok(), "catch-up: {:?}", caught.errors);
    assert!(
        caught.files_uploaded >= 3,
        "a pack, an index, a snapshot: {caught:?}"
    );
    assert!(
        w.received() - before < (1 << 20),
        "only the new files went up: {} bytes",
        w.received() - before
    );
    // The direct S3 target: a complete copy as well.
    if let Some(direct) = w.direct_target() {
        let d = replicate_once(&repo, &direct, &cred, &state, None, 256 << 10);
        assert!(d.ok(), "direct S3 target: {:?}", d.errors);
        let local = replicate::local_files(&repo).expect("local");
        assert_eq!(d.files_present as usize, local.len(), "{d:?}");
    }
    // The report of a run reaches the server's run log.
    let mtls = levee_agent::enroll::MtlsClient::new(&cred).expect("mtls");
    mtls.post_run(&caught.report())
        .expect("replication report accepted");

    // Nothing in clear on the store, and no password slot.
    let files = w.store_files();
    assert!(!files.is_empty());
    for (path, bytes) in &files {
        assert!(
            !bytes
                .windows(MARKER.len())
                .any(|win| win == MARKER.as_bytes()),
            "plaintext in {}",
            path.display()
        );
    }
    let slots = files
        .iter()
        .filter(|(p, _)| p.starts_with(w.store_root()))
        .filter(|(p, _)| p.parent().is_some_and(|d| d.ends_with("keys")))
        .count();
    assert_eq!(
        slots, 1,
        "the appliance slot only; the password slot stays local"
    );

    // What the store refuses: overwriting, deleting, other appliances.
    let c = client(&cred, &n1, &repo.config.id);
    let some = &local
        .iter()
        .find(|f| f.kind == levee_proto::offsite::FileKind::Data)
        .expect("a pack")
        .name;
    let (status, body) = c
        .raw(reqwest::Method::PUT, &format!("data/{some}"))
        .expect("put");
    assert_eq!(status, 409, "overwrite: {body}");
    let (status, body) = c
        .raw(reqwest::Method::DELETE, &format!("data/{some}"))
        .expect("delete");
    assert_eq!(status, 405, "delete: {body}");
    assert!(body.contains("create-only"), "{body}");
    let (_, cred_b) = w.enroll(MAC_B);
    let (status, body) = client(&cred_b, &n1, &repo.config.id)
        .raw(reqwest::Method::GET, "data/")
        .expect("b");
    assert_eq!(status, 403, "another appliance of the customer: {body}");
    let (status, _) = client(&cred_b, &n1, &repo.config.id)
        .raw(reqwest::Method::PUT, &format!("data/{}", "ab".repeat(32)))
        .expect("b put");
    assert_eq!(status, 403, "nor write into it");
    let (_, cred_c) = w.enroll(MAC_C);
    let other = StoreClient::new(
        &[&n1.url()],
        &cred_c,
        Namespace::new("acme", &repo.config.id).expect("ns"),
        Arc::new(Bucket::new(None)),
        Duration::from_secs(10),
    )
    .expect("client");
    let (status, body) = other.raw(reqwest::Method::GET, "data/").expect("c");
    assert_eq!(status, 403, "another customer: {body}");
    assert!(other
        .download(levee_proto::offsite::FileKind::Data, some)
        .is_err());
    // Files are all still there, whole.
    let after = replicate::names(&c.list_all().expect("list"));
    assert!(local.iter().all(|f| after.contains(&f.name)));
    if backend == Backend::Dir {
        // `customer show` counts this server's store directory.
        let shown = common::levee(&w.data, &["customer", "show", "acme", "--json"]);
        let shown: serde_json::Value = serde_json::from_str(&shown).expect("json");
        assert!(shown["offsite_bytes"].as_u64().unwrap_or(0) >= travelling_bytes(&repo));
    }

    // A snapshot forgotten locally: the next run asks for its deletion,
    // which waits out the grace period; ops can carry it out at once.
    let snap = local
        .iter()
        .find(|f| f.kind == levee_proto::offsite::FileKind::Snapshots)
        .expect("a snapshot")
        .name
        .clone();
    std::fs::remove_file(
        repo.local()
            .path(levee_agent::backup::backend::FileKind::Snapshot, &snap),
    )
    .expect("forget");
    let asked = replicate_once(&repo, &t, &cred, &state, None, 256 << 10);
    assert_eq!(
        (asked.ok(), asked.deletions_requested),
        (true, 1),
        "{asked:?}"
    );
    let again = replicate_once(&repo, &t, &cred, &state, None, 256 << 10);
    assert_eq!(again.deletions_requested, 0, "asked once");
    let kept = w.prune(&["--json"]);
    assert!(kept.contains("\"requests_waiting\": 1"), "{kept}");
    assert!(replicate::names(&c.list_all().expect("list")).contains(&snap));
    w.prune(&["--grace", "0s"]);
    assert!(!replicate::names(&c.list_all().expect("list")).contains(&snap));
}

/// A loopback TCP proxy that can cut every connection once `cut_after`
/// client bytes went through, and refuse new ones until healed.
struct Proxy {
    addr: SocketAddr,
    forwarded: Arc<AtomicU64>,
    cut_after: Arc<AtomicU64>,
    cut: Arc<AtomicBool>,
}

impl Proxy {
    fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let p = Proxy {
            addr: listener.local_addr().expect("addr"),
            forwarded: Arc::default(),
            cut_after: Arc::new(AtomicU64::new(u64::MAX)),
            cut: Arc::default(),
        };
        let (fwd, after, cut) = (p.forwarded.clone(), p.cut_after.clone(), p.cut.clone());
        std::thread::spawn(move || {
            for down in listener.incoming().flatten() {
                if cut.load(Ordering::SeqCst) {
                    continue; // dropped: the link is down
                }
                let Ok(up) = TcpStream::connect(upstream) else {
                    continue;
                };
                let (fwd, after, cut) = (fwd.clone(), after.clone(), cut.clone());
                let (d2, u2) = (
                    down.try_clone().expect("clone"),
                    up.try_clone().expect("clone"),
                );
                std::thread::spawn(move || pump(d2, u2, Some((fwd, after, cut))));
                std::thread::spawn(move || pump(up, down, None));
            }
        });
        p
    }
}

/// Copies `from` to `to`; with a budget, cuts both once it is spent.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    budget: Option<(Arc<AtomicU64>, Arc<AtomicU64>, Arc<AtomicBool>)>,
) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        if let Some((_, _, cut)) = &budget {
            if cut.load(Ordering::SeqCst) {
                break;
            }
        }
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some((fwd, after, cut)) = &budget {
            let total = fwd.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
            if total >= after.load(Ordering::SeqCst) {
                cut.store(true, Ordering::SeqCst);
                break;
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
}

#[test]
fn r14_a_cut_mid_file_resumes_without_resending_what_the_store_holds() {
    let w = world();
    let (state, cred) = w.enroll(MAC_A);
    let src = w.dir.path().join("src");
    write_source(&src, "big.bin", 4 << 20);
    let repo = repository(&state, &src);
    let node = w.node("127.0.0.1:0");
    let proxy = Proxy::start(node.addr);
    let t = target(&[format!("https://{}", proxy.addr)]);

    // The link goes down 2.5 MiB into the upload (inside the pack).
    proxy.cut_after.store(5 << 19, Ordering::SeqCst);
    let cut = replicate_once(&repo, &t, &cred, &state, None, 1 << 20);
    assert!(!cut.ok(), "the cut is an error: {cut:?}");
    let kept = w.received();
    eprintln!(
        "measured: cut after {kept} bytes held by the store; agent sent {}",
        cut.bytes_uploaded
    );
    assert!(kept > 0 && kept < travelling_bytes(&repo), "kept {kept}");

    // Back up: the rest goes, each byte exactly once on the server.
    proxy.cut_after.store(u64::MAX, Ordering::SeqCst);
    proxy.cut.store(false, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(300));
    let resumed = replicate_once(&repo, &t, &cred, &state, None, 1 << 20);
    assert!(resumed.ok(), "{:?}", resumed.errors);
    assert_eq!(
        w.received(),
        travelling_bytes(&repo),
        "the server received every byte once ({} sent by the agent in all)",
        cut.bytes_uploaded + resumed.bytes_uploaded
    );
    let held = replicate::names(
        &client(&cred, &node, &repo.config.id)
            .list_all()
            .expect("list"),
    );
    assert!(replicate::local_files(&repo)
        .expect("local")
        .iter()
        .all(|f| held.contains(&f.name)));
}

#[test]
fn r14_the_bandwidth_cap_holds() {
    let w = world();
    let (state, cred) = w.enroll(MAC_A);
    let src = w.dir.path().join("src");
    write_source(&src, "c.bin", 5 << 20);
    let repo = repository(&state, &src);
    let node = w.node("127.0.0.1:0");
    let t = target(&[node.url()]);
    let rate = 1u64 << 20;
    let start = Instant::now();
    let o = replicate_once(&repo, &t, &cred, &state, Some(rate), 1 << 20);
    let secs = start.elapsed().as_secs_f64();
    assert!(o.ok(), "{:?}", o.errors);
    eprintln!(
        "measured: {} bytes at {rate} B/s in {secs:.2} s",
        o.bytes_uploaded
    );
    // The bucket starts with one second's worth; the rest is paced.
    let expected = (o.bytes_uploaded.saturating_sub(rate)) as f64 / rate as f64;
    assert!(
        secs >= expected * 0.9 && secs <= expected * 1.1 + 1.5,
        "{} bytes at {rate} B/s took {secs:.2} s; expected {expected:.2} s",
        o.bytes_uploaded
    );
}

#[test]
fn r14_serve_runs_the_store_and_a_replacement_takes_the_namespace_over() {
    let w = world();
    let (state, cred) = w.enroll(MAC_A);
    let src = w.dir.path().join("src");
    write_source(&src, "r.bin", 200 << 10);
    let repo = repository(&state, &src);

    // `levee serve` with a store listener (as `--store ADDR`), on its own
    // data directory's CA and store.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (http, https, store) = rt.block_on(async {
        let bind = || tokio::net::TcpListener::bind("127.0.0.1:0");
        (bind().await, bind().await, bind().await)
    });
    let (http, https, store) = (
        http.expect("http"),
        https.expect("https"),
        store.expect("store"),
    );
    let store_url = format!("https://{}", store.local_addr().expect("addr"));
    let config = levee_provisioner::serve::ServeConfig {
        data_dir: w.data.clone(),
        ipxe_dir: w.dir.path().join("ipxe"),
        public_url: format!("http://{}", http.local_addr().expect("addr")),
        tftp_host: "127.0.0.1".into(),
        dhcp: None,
        grace: Duration::from_secs(2),
        alerts: Default::default(),
        limits: Default::default(),
        allow_pending: true,
        offsite: Default::default(),
        fleet_url: None,
    };
    let listeners = levee_provisioner::serve::Listeners {
        http,
        https: Some(https),
        tftp: None,
        store: Some(store),
    };
    let stop = CancellationToken::new();
    rt.spawn(levee_provisioner::serve::run(
        w.store.clone(),
        listeners,
        config,
        stop.clone(),
    ));
    let t = target(std::slice::from_ref(&store_url));
    let mut done = replicate_once(&repo, &t, &cred, &state, None, 1 << 20);
    for _ in 0..50 {
        if done.ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        done = replicate_once(&repo, &t, &cred, &state, None, 1 << 20);
    }
    assert!(done.ok(), "{:?}", done.errors);
    assert!(w
        .data
        .join("offsite/acme")
        .join(&repo.config.id)
        .join(".owner")
        .exists());

    // The appliance is replaced: the new one reads the namespace (and the
    // binding moves to it); the old one's certificate no longer works.
    let old = w
        .store
        .appliance(MAC_A.parse().expect("mac"))
        .expect("store")
        .expect("appliance");
    let new_mac = "52:54:00:14:00:09";
    w.store
        .replace_appliance(old.id, new_mac.parse().expect("mac"))
        .expect("replace");
    let (_, cred_new) = w.enroll(new_mac);
    let node = Node {
        addr: store_url
            .trim_start_matches("https://")
            .parse()
            .expect("addr"),
        rt: None,
    };
    let new = client(&cred_new, &node, &repo.config.id);
    let held = replicate::names(&new.list_all().expect("the replacement lists"));
    assert!(replicate::local_files(&repo)
        .expect("local")
        .iter()
        .all(|f| held.contains(&f.name)));
    let (status, _) = client(&cred, &node, &repo.config.id)
        .raw(reqwest::Method::GET, "data/")
        .expect("old");
    assert_eq!(status, 403, "the replaced appliance is refused");
    let owner = std::fs::read_to_string(
        w.data
            .join("offsite/acme")
            .join(&repo.config.id)
            .join(".owner"),
    )
    .expect("owner");
    let new_id = w
        .store
        .appliance(new_mac.parse().expect("mac"))
        .expect("store")
        .expect("appliance")
        .id;
    assert_eq!(
        owner.trim(),
        new_id.to_string(),
        "rebound to the replacement"
    );
    stop.cancel();
}

#[test]
fn r14_a_corrupt_stored_file_is_found_by_verification_and_sent_again() {
    corrupt_file(Backend::Dir);
}

#[test]
fn r14_a_corrupt_file_in_the_stores_bucket_is_found_and_sent_again() {
    corrupt_file(Backend::S3);
}

fn corrupt_file(backend: Backend) {
    let w = world_on(backend);
    let (state, cred) = w.enroll(MAC_A);
    let src = w.dir.path().join("src");
    write_source(&src, "v.bin", 300 << 10);
    let repo = repository(&state, &src);
    let node = w.node("127.0.0.1:0");
    let t = target(&[node.url()]);
    assert!(replicate_once(&repo, &t, &cred, &state, None, 1 << 20).ok());

    // Someone with access to the store's disk flips a byte of the pack.
    let pack = replicate::local_files(&repo)
        .expect("local")
        .into_iter()
        .find(|f| f.kind == levee_proto::offsite::FileKind::Data)
        .expect("a pack");
    let stored = w.stored_pack(&repo.config.id, &pack.name);
    let mut bytes = std::fs::read(&stored).expect("stored pack");
    bytes[100] ^= 0x40;
    std::fs::write(&stored, &bytes).expect("corrupt");

    let mut o = opts(1 << 20);
    o.verify_share = 1.0;
    let run = replicate::replicate_target(
        &repo,
        "acme",
        &t,
        &cred,
        Arc::new(Bucket::new(None)),
        &o,
        &state,
    );
    assert!(run.ok(), "{:?}", run.errors);
    assert_eq!(run.files_corrupt, 1, "{run:?}");
    assert!(run.files_verified >= 4, "{run:?}");
    assert_eq!(run.files_uploaded, 1, "the corrupt pack went up again");
    let back = std::fs::read(&stored).expect("re-sent");
    assert_eq!(
        levee_proto::repo::crypto::file_id(&back).to_hex(),
        pack.name
    );
}
