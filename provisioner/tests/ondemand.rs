//! Disaster recovery with packs on demand (issue 14), on loopback with the
//! real server, store and agent code: appliance A makes twelve packs (six
//! backups of one new 1 MiB file each: a data pack and a tree pack each)
//! and replicates them; A is lost; B takes the repository over, copying
//! only key slots, index, snapshots and config. Then: check reports the
//! packs as not yet fetched, prune waits, `ls` and a one-file restore
//! straight from the store fetch only the tree packs they walk and that
//! file's data pack, a backup fetches only its parent's tree pack, reads
//! no unchanged file and replicates without re-uploading old packs, a
//! restore of one file fetches its tree and data packs, a tampered pack
//! is refused by name, a back-fill
//! killed with SIGKILL resumes without fetching a finished pack again and
//! runs at the cap, and afterwards the repository is like any other. The
//! bytes the store sends are counted by a loopback proxy in front of it.

mod common;

use common::offsite::{back_up, enroll, new_repo, paper_key, replace_with_key, store_node};

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use levee_agent::backup::backend::local::LocalBackend;
use levee_agent::backup::backend::{FileKind as LocalKind, ReadBackend};
use levee_agent::backup::commands::check::{check, CheckOptions};
use levee_agent::backup::commands::prune::{prune, PruneOptions};
use levee_agent::backup::commands::restore::{restore, RestoreOptions, RestoreSummary};
use levee_agent::backup::progress::Counters;
use levee_agent::backup::unfetched::Unfetched;
use levee_agent::recover::{self, Step};
use levee_agent::replicate::{self, ondemand, Bucket, ReplicateOptions, StoreClient};
use levee_agent::Repository;
use levee_proto::config::{CustomerConfig, OffsiteTarget};
use levee_proto::offsite::{FileKind, Namespace};

const MAC_A: &str = "52:54:00:14:30:01";
const MAC_B: &str = "52:54:00:14:30:02";
/// A's backups; each writes a data pack and a tree pack.
const RUNS: usize = 6;
const PACKS: usize = 2 * RUNS;
/// The back-fill's cap in the timed part.
const RATE: u64 = 512 << 10;

/// A loopback TCP proxy counting the bytes the store sends back.
struct Proxy {
    addr: SocketAddr,
    down: Arc<AtomicU64>,
}

impl Proxy {
    fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let p = Proxy {
            addr: listener.local_addr().expect("addr"),
            down: Arc::default(),
        };
        let down = p.down.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let (c2, s2) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                let down = down.clone();
                std::thread::spawn(move || pump(c2, s2, None));
                std::thread::spawn(move || pump(server, client, Some(down)));
            }
        });
        p
    }

    fn down(&self) -> u64 {
        self.down.load(Ordering::SeqCst)
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, count: Option<Arc<AtomicU64>>) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(c) = &count {
            c.fetch_add(n as u64, Ordering::SeqCst);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
}

fn local_packs(repo_dir: &Path) -> BTreeSet<String> {
    LocalBackend::new(repo_dir)
        .list(LocalKind::Pack)
        .expect("list")
        .into_iter()
        .map(|(n, _)| n)
        .collect()
}

/// (trees, data) blob counts of every pack of `repo`, by name.
fn pack_kinds(repo: &Repository) -> BTreeMap<String, (usize, usize)> {
    let mut out = BTreeMap::new();
    for (name, size) in repo.local().list(LocalKind::Pack).expect("list") {
        let h = repo.read_pack_header(&name, size).expect("header");
        let trees = h
            .blobs
            .iter()
            .filter(|b| b.kind == levee_proto::repo::BlobKind::Tree)
            .count();
        out.insert(name, (trees, h.blobs.len() - trees));
    }
    out
}

fn restore_to(repo: &Repository, snapshot: &str, path: Option<&str>, out: &Path) -> RestoreSummary {
    restore(
        repo,
        &RestoreOptions {
            snapshot: snapshot.into(),
            path: path.map(Into::into),
            target: out.to_string_lossy().into(),
            overwrite: Default::default(),
            skip_damaged: false,
        },
        None,
        &Counters::default(),
    )
    .expect("restore")
}

#[test]
fn r14_a_take_over_fetches_packs_on_demand_and_back_fills_the_rest_under_the_cap() {
    let s = common::LoopbackServer::start(
        common::AGENT_CMDLINE,
        serde_json::json!({"customer": "acme", "install": {"to_disk": false}}),
        &[MAC_A],
    );
    let (state_a, cred_a) = enroll(&s, MAC_A);
    let (url, stop) = store_node(&s);
    let proxy = Proxy::start(url.trim_start_matches("https://").parse().expect("addr"));
    // The appliances reach the store through the counting proxy.
    let config_json = serde_json::json!({
        "customer": "acme",
        "offsite": [{"name": "hq", "urls": [format!("https://{}", proxy.addr)]}],
    });
    let config: CustomerConfig = serde_json::from_value(config_json.clone()).expect("config");
    let (paper, paper_file) = paper_key(s.dir.path(), "acme-recovery.txt");

    // A: six backups, each adding one 1 MiB file: six data packs and six
    // tree packs, replicated.
    let src = s.dir.path().join("share");
    std::fs::create_dir_all(&src).expect("src");
    let key_a = hex::encode([0xa1u8; 32]);
    let (repo_id, snaps, a_packs) = {
        let repo = new_repo(&state_a.join("repo"), key_a.as_bytes());
        repo.ensure_recovery_slot(&paper.public()).expect("slot");
        let mut snaps = Vec::new();
        for i in 0..RUNS {
            std::fs::write(
                src.join(format!("f{i}.bin")),
                common::noise(1 << 20, i as u64 + 1),
            )
            .expect("write");
            snaps.push(back_up(&repo, &src).snapshot);
        }
        let t: OffsiteTarget =
            serde_json::from_value(serde_json::json!({"name": "hq", "urls": [url]})).expect("t");
        let opts = ReplicateOptions {
            verify_share: 0.0,
            ..ReplicateOptions::default()
        };
        let run = replicate::replicate_target(
            &repo,
            "acme",
            &t,
            &cred_a,
            Arc::new(Bucket::new(None)),
            &opts,
            &state_a,
        );
        assert!(run.ok(), "{run:?}");
        (repo.config.id.clone(), snaps, pack_kinds(&repo))
    };
    let tree_pack = |n: &str| a_packs.get(n).is_some_and(|(_, data)| *data == 0);
    assert_eq!(
        recover::step(&state_a, &config, key_a.as_bytes()).expect("A's step"),
        Step::Ready
    );
    std::fs::remove_dir_all(state_a.join("repo")).expect("A is lost");
    let store = StoreClient::new(
        &[&url],
        &cred_a,
        Namespace::new("acme", &repo_id).expect("ns"),
        Arc::new(Bucket::new(None)),
        Duration::from_secs(10),
    )
    .expect("client");
    let store_packs: BTreeMap<String, u64> = store
        .list_all()
        .expect("list")
        .remove(&FileKind::Data)
        .expect("packs");
    assert_eq!(store_packs.len(), PACKS, "{store_packs:?}");
    assert_eq!(
        a_packs.values().filter(|(t, d)| *t > 0 && *d == 0).count(),
        RUNS,
        "a tree pack per backup: {a_packs:?}"
    );
    assert!(
        a_packs.values().all(|(t, d)| *t == 0 || *d == 0),
        "{a_packs:?}"
    );

    // The replacement: B takes over, copying everything but the packs.
    // `levee appliance replace`: the first time B is not enrolled yet
    // (B waits); the second time grants B the repository.
    let replace = || replace_with_key(&s, MAC_A, MAC_B, &paper_file);
    replace();
    let (state_b, cred_b) = enroll(&s, MAC_B);
    let key_b = hex::encode([0xb2u8; 32]);
    assert!(matches!(
        recover::step(&state_b, &config, key_b.as_bytes()).expect("B waits"),
        Step::Waiting(_)
    ));
    replace();
    let d0 = proxy.down();
    assert_eq!(
        recover::step(&state_b, &config, key_b.as_bytes()).expect("B takes over"),
        Step::Adopted {
            repository: repo_id.clone(),
            fetched: true
        }
    );
    let taken_over = proxy.down() - d0;
    let all_packs: u64 = store_packs.values().sum();
    let repo_dir = state_b.join("repo");
    assert!(local_packs(&repo_dir).is_empty());
    assert!(
        taken_over < 256 << 10,
        "{taken_over} bytes for the take-over"
    );
    let marker = Unfetched::load(&LocalBackend::new(&repo_dir))
        .expect("marker")
        .expect("a marker");
    assert_eq!(marker.targets, ["hq"]);
    assert_eq!(marker.repository, repo_id);
    eprintln!("take-over: {taken_over} bytes from the store; {PACKS} packs ({all_packs} bytes) left offsite");

    // check: the packs are not yet fetched, not missing; prune waits.
    let repo = Repository::open(&repo_dir, key_b.as_bytes()).expect("open");
    let r = check(&repo, &CheckOptions::default(), &Counters::default()).expect("check");
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.unfetched_packs, PACKS);
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains(&format!("{PACKS} packs not yet fetched from hq"))),
        "{:?}",
        r.notes
    );
    let e = prune(
        &repo,
        &PruneOptions {
            max_unused_percent: 0,
            rewrite: false,
        },
        &Counters::default(),
    )
    .expect_err("prune waits")
    .to_string();
    assert!(
        e.contains("waits until the back-fill ends") && e.contains("hq"),
        "{e}"
    );

    // Straight from the store (`levee-agent --repo https://STORE/...`):
    // `ls` fetches the tree pack of the snapshot it lists, a one-file
    // restore that file's tree pack and data pack; nothing else.
    {
        let copy_dir = s.dir.path().join("copy");
        let through_proxy = StoreClient::new(
            &[&format!("https://{}", proxy.addr)],
            &cred_b,
            Namespace::new("acme", &repo_id).expect("ns"),
            Arc::new(Bucket::new(None)),
            Duration::from_secs(10),
        )
        .expect("client");
        let ns = Namespace::new("acme", &repo_id).expect("ns");
        let url = format!("https://{}/acme/{repo_id}", proxy.addr);
        let copy = ondemand::open_copy(Box::new(through_proxy), &url, &ns, &copy_dir, &paper)
            .expect("open the copy");
        assert!(copy_dir.join("unfetched.json").exists());
        let d0 = proxy.down();
        let listed =
            levee_agent::backup::commands::ls::ls(&copy.repo, &snaps[RUNS - 1], None).expect("ls");
        assert_eq!(listed.len(), RUNS + 1, "{listed:?}");
        let out = s.dir.path().join("copy-out");
        let r = restore_to(&copy.repo, &snaps[3], Some("/share/f3.bin"), &out);
        assert_eq!(r.errors, 0, "{:?}", r.error_messages);
        assert_eq!(
            std::fs::read(out.join("f3.bin")).expect("restored"),
            std::fs::read(src.join("f3.bin")).expect("original")
        );
        let fetched = proxy.down() - d0;
        let got = local_packs(&copy_dir);
        let trees: Vec<_> = got.iter().filter(|n| tree_pack(n)).collect();
        assert_eq!((got.len(), trees.len()), (3, 2), "{got:?}");
        let got_bytes: u64 = got.iter().map(|n| store_packs[n]).sum();
        assert_eq!(copy.source.packs.load(Ordering::SeqCst), 3);
        assert_eq!(copy.source.bytes.load(Ordering::SeqCst), got_bytes);
        assert!(
            fetched >= got_bytes && fetched < got_bytes + (64 << 10),
            "{fetched} bytes from the store for {got_bytes} bytes of packs"
        );
        assert!(got_bytes * 3 < all_packs, "{got_bytes} of {all_packs}");
        eprintln!(
            "ls + one-file restore from the store: {fetched} bytes fetched ({} packs: {} tree, 1 data; {got_bytes} bytes) of a {all_packs}-byte repository",
            got.len(),
            trees.len()
        );
    }

    // A backup at once: its parent's trees fetched (its tree pack alone),
    // no unchanged file read, deduplicated against the old data.
    let od = ondemand::attach(&repo, &state_b, &config)
        .expect("attach")
        .expect("packs to fetch");
    std::fs::write(src.join("after.txt"), "after the fire\n").expect("write");
    let d0 = proxy.down();
    let next = back_up(&repo, &src);
    assert_eq!(next.parent.as_deref(), snaps.last().map(String::as_str));
    assert!(next.bytes_stored < 64 << 10, "{}", next.bytes_stored);
    assert_eq!(next.summary.files_unchanged, RUNS as u64, "{next:?}");
    assert_eq!(
        next.summary.bytes_read, 15,
        "only the new file read: {next:?}"
    );
    let fetched = proxy.down() - d0;
    let new_pack = local_packs(&repo_dir);
    let parent_trees: Vec<&String> = new_pack
        .iter()
        .filter(|n| a_packs.contains_key(*n))
        .collect();
    assert_eq!(parent_trees.len(), 1, "{parent_trees:?}");
    assert!(tree_pack(parent_trees[0]), "the backup fetched a data pack");
    let p_bytes = store_packs[parent_trees[0]];
    assert!(
        fetched >= p_bytes && fetched < p_bytes + (64 << 10),
        "{fetched} bytes from the store for a {p_bytes}-byte tree pack"
    );
    assert_eq!(od.packs.load(Ordering::SeqCst), 1);
    eprintln!("backup after the take-over: fetched {fetched} bytes (its parent's tree pack, {p_bytes} bytes) of {all_packs}; read {} bytes; stored {}", next.summary.bytes_read, next.bytes_stored);
    // Here: the fetched tree pack, and the backup's data and tree packs.
    assert_eq!(new_pack.len(), 3);
    // Replication sends the new pack and snapshot only, asks no deletion.
    let t: OffsiteTarget =
        serde_json::from_value(serde_json::json!({"name": "hq", "urls": [url]})).expect("t");
    let run = replicate::replicate_target(
        &repo,
        "acme",
        &t,
        &cred_b,
        Arc::new(Bucket::new(None)),
        &ReplicateOptions {
            verify_share: 0.0,
            ..ReplicateOptions::default()
        },
        &state_b,
    );
    assert!(run.ok(), "{run:?}");
    assert!(run.bytes_uploaded < 256 << 10, "{run:?}");
    assert_eq!(run.deletions_requested, 0);

    // A restore of one file fetches its tree pack and its data pack, once.
    let d0 = proxy.down();
    let out1 = s.dir.path().join("one");
    let r = restore_to(&repo, &snaps[0], Some("/share/f0.bin"), &out1);
    assert_eq!(r.errors, 0, "{:?}", r.error_messages);
    assert_eq!(
        std::fs::read(out1.join("f0.bin")).expect("restored"),
        std::fs::read(src.join("f0.bin")).expect("original")
    );
    let fetched = proxy.down() - d0;
    let got: BTreeSet<String> = local_packs(&repo_dir)
        .difference(&new_pack)
        .cloned()
        .collect();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got.iter().filter(|n| tree_pack(n)).count(), 1, "{got:?}");
    assert_eq!(od.packs.load(Ordering::SeqCst), 3);
    let p0: u64 = got.iter().map(|n| store_packs[n]).sum();
    assert!(
        fetched >= p0 && fetched < p0 + (64 << 10),
        "{fetched} bytes from the store for {p0} bytes of packs"
    );
    eprintln!("restore of one file: {fetched} bytes from the store for its tree and data packs ({p0} bytes)");

    // A tampered copy is refused by name; the restore fails, nothing kept.
    let offsite_dir = s.data.join("offsite/acme").join(&repo_id).join("data");
    let mut originals = Vec::new();
    for name in store_packs
        .keys()
        .filter(|n| !got.contains(*n) && !new_pack.contains(*n))
    {
        let path = offsite_dir.join(&name[..2]).join(name);
        let bytes = std::fs::read(&path).expect("stored pack");
        let mut bad = bytes.clone();
        let at = bad.len() / 2;
        bad[at] ^= 0x55;
        std::fs::write(&path, &bad).expect("tamper");
        originals.push((path, bytes));
    }
    let out2 = s.dir.path().join("two");
    let tried = restore(
        &repo,
        &RestoreOptions {
            snapshot: snaps[1].clone(),
            path: Some("/share/f1.bin".into()),
            target: out2.to_string_lossy().into(),
            overwrite: Default::default(),
            skip_damaged: false,
        },
        None,
        &Counters::default(),
    );
    // The snapshot's tree is in a tampered pack too: the whole restore
    // fails, or (a file's data alone) the file is named in its errors.
    let said = match tried {
        Ok(r) => {
            assert!(r.errors > 0, "a tampered pack restored: {r:?}");
            r.error_messages.join("\n")
        }
        Err(e) => e.to_string(),
    };
    assert!(!out2.join("f1.bin").exists(), "a file from a tampered pack");
    assert!(
        said.contains("does not hash to the pack's name")
            && said.contains("offsite target hq")
            && originals
                .iter()
                .any(|(p, _)| said.contains(&*p.file_name().expect("name").to_string_lossy())),
        "{said}"
    );
    assert_eq!(
        local_packs(&repo_dir).len(),
        new_pack.len() + got.len(),
        "a tampered pack was kept"
    );
    for (path, bytes) in &originals {
        std::fs::write(path, bytes).expect("untamper");
    }
    drop(repo);

    // The back-fill, as its own process, killed with SIGKILL mid-way.
    std::fs::write(
        state_b.join(levee_agent::enroll::CONFIG_CACHE),
        serde_json::to_vec(&config_json).expect("json"),
    )
    .expect("config cache");
    let agent = Path::new(env!("CARGO_BIN_EXE_levee")).with_file_name("levee-agent");
    assert!(
        agent.exists(),
        "{} is missing: build it (cargo build -p levee-agent --bins; dev/test builds every binary first)",
        agent.display()
    );
    let mut cmd = std::process::Command::new(&agent);
    cmd.args(["--repo", repo_dir.to_str().expect("utf-8")])
        .args(["--state-dir", state_b.to_str().expect("utf-8")])
        .args(["backfill", "--bandwidth-limit", "1MiB/s"])
        .env("LEVEE_PASSWORD", &key_b)
        .stdout(std::process::Stdio::null());
    common::dies_with_test(&mut cmd);
    let mut child = cmd.spawn().expect("levee-agent backfill");
    common::wait_until("a back-filled pack", Duration::from_secs(120), || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{} backfill ended ({status}) before it could be killed: is it a current build?",
                agent.display()
            );
        }
        local_packs(&repo_dir).len() > new_pack.len() + got.len()
    });
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let here = local_packs(&repo_dir);
    let left: Vec<&String> = store_packs.keys().filter(|n| !here.contains(*n)).collect();
    assert!(!left.is_empty(), "the back-fill ended before it was killed");
    let left_bytes: u64 = left.iter().map(|n| store_packs[*n]).sum();

    // Resumed as the service runs it (a slice of at most 10 minutes, the
    // configuration's cap, the run reported to the server), timed: only
    // the packs not here.
    let mut capped = config_json.clone();
    capped["bandwidth_limit"] = serde_json::json!(format!("{}KiB/s", RATE >> 10));
    let capped: CustomerConfig = serde_json::from_value(capped).expect("config");
    let d0 = proxy.down();
    let t = Instant::now();
    let (b, flushed) = ondemand::service_run(
        &state_b,
        &capped,
        key_b.as_bytes(),
        Duration::from_secs(600),
    )
    .expect("back-fill run");
    eprintln!(
        "back-fill run: {:.2} s in all (opening the repository, the listing, the report)",
        t.elapsed().as_secs_f64()
    );
    let secs = b.fetch_time.as_secs_f64();
    let flushed = flushed.expect("flush").expect("enrolled");
    assert_eq!((flushed.sent, flushed.left), (1, 0), "{flushed:?}");
    let repo = Repository::open(&repo_dir, key_b.as_bytes()).expect("open");
    let fetched = proxy.down() - d0;
    assert!(b.errors.is_empty() && b.complete, "{b:?}");
    assert_eq!(b.packs_fetched, left.len() as u64);
    assert_eq!(b.bytes_fetched, left_bytes);
    assert!(
        fetched >= left_bytes && fetched < left_bytes + (128 << 10),
        "{fetched} bytes from the store for {left_bytes} bytes of packs left"
    );
    let expected = left_bytes.saturating_sub(RATE) as f64 / RATE as f64;
    eprintln!(
        "back-fill after SIGKILL: {} pack(s), {left_bytes} bytes ({fetched} from the store) at {RATE} B/s took {secs:.2} s; expected {expected:.2} s",
        left.len()
    );
    assert!(
        secs >= expected * 0.9 && secs <= expected * 1.1 + 1.5,
        "{left_bytes} bytes at {RATE} B/s took {secs:.2} s; expected {expected:.2} s"
    );
    // The server holds the run's report.
    let runs = s.store.runs(s.appliance(MAC_B).id, 10).expect("runs");
    let report = &runs
        .iter()
        .find(|r| r.report.job.as_deref() == Some("back-fill"))
        .expect("a back-fill run report")
        .report;
    assert_eq!(report.kind, levee_proto::runs::RunKind::Replication);
    assert_eq!(report.sources, ["back-fill from hq"]);
    assert_eq!(report.result, levee_proto::runs::RunResult::Success);
    assert_eq!(
        (report.files_new, report.bytes_new, report.files_total),
        (left.len() as u64, left_bytes, 0)
    );
    assert!(!repo_dir.join("unfetched.json").exists());
    // A's packs and the new backup's two.
    assert_eq!(local_packs(&repo_dir).len(), PACKS + 2);

    // Like any other repository now: nothing to fetch, a full restore is
    // byte-identical, check reads everything, prune runs.
    assert!(ondemand::attach(&repo, &state_b, &config)
        .expect("attach")
        .is_none());
    let d0 = proxy.down();
    let out3 = s.dir.path().join("all");
    let r = restore_to(&repo, &next.snapshot, None, &out3);
    assert_eq!(r.errors, 0, "{:?}", r.error_messages);
    for i in 0..RUNS {
        let f = format!("f{i}.bin");
        assert_eq!(
            std::fs::read(out3.join("share").join(&f)).expect("restored"),
            std::fs::read(src.join(&f)).expect("original"),
            "{f}"
        );
    }
    assert_eq!(
        std::fs::read(out3.join("share/after.txt")).expect("restored"),
        b"after the fire\n"
    );
    assert_eq!(proxy.down(), d0);
    let r = check(
        &repo,
        &CheckOptions {
            read_data: Some(100.0),
            repair_from_offsite: false,
        },
        &Counters::default(),
    )
    .expect("check");
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!((r.unfetched_packs, r.packs_read), (0, PACKS + 2));
    prune(
        &repo,
        &PruneOptions {
            max_unused_percent: 0,
            rewrite: false,
        },
        &Counters::default(),
    )
    .expect("prune");
    stop.cancel();
}
