//! Disaster recovery from offsite (issue 14), on loopback: appliance A
//! backs up (with a recovery slot for the customer's paper key) and
//! replicates to the store; A's repository is destroyed; `levee appliance
//! replace` gives the namespace to B; B fetches the repository from the
//! store (every file checked against its name), opens it with the paper
//! key, restores byte-identical, then continues the same history: a new
//! backup deduplicated against the old data, replicated to the same
//! namespace. A's certificate can no longer read it. A local pack that
//! fails its check is repaired from the offsite copy.

mod common;

use common::noise;
use common::offsite::{back_up, enroll, new_repo, paper_key, replace_with_key, store_node};

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use levee_agent::backup::commands::check::{check, CheckOptions};
use levee_agent::backup::commands::restore::{restore, RestoreOptions};
use levee_agent::backup::progress::Counters;
use levee_agent::enroll::Credential;
use levee_agent::replicate::{
    self, fetch_repository, Bucket, FetchError, ReplicateOptions, StoreClient,
};
use levee_agent::Repository;
use levee_proto::config::{CustomerConfig, OffsiteTarget};
use levee_proto::offsite::Namespace;
use levee_proto::recovery::RecoveryPrivateKey;
use levee_proto::repo::KdfParams;
use tokio_util::sync::CancellationToken;

const MAC_A: &str = "52:54:00:14:20:01";
const MAC_B: &str = "52:54:00:14:20:02";

fn replicate_to(
    repo: &Repository,
    url: &str,
    cred: &Credential,
    state: &Path,
) -> replicate::TargetOutcome {
    let t: OffsiteTarget =
        serde_json::from_value(serde_json::json!({"name": "hq", "urls": [url]})).expect("target");
    let opts = ReplicateOptions {
        part_bytes: 1 << 20,
        timeout: Duration::from_secs(20),
        verify_share: 0.0,
        ..ReplicateOptions::default()
    };
    replicate::replicate_target(
        repo,
        "acme",
        &t,
        cred,
        Arc::new(Bucket::new(None)),
        &opts,
        state,
    )
}

fn client(url: &str, cred: &Credential, id: &str) -> StoreClient {
    StoreClient::new(
        &[url],
        cred,
        Namespace::new("acme", id).expect("ns"),
        Arc::new(Bucket::new(None)),
        Duration::from_secs(10),
    )
    .expect("client")
}

/// A server with appliance A enrolled (its state directory and
/// credential) and a store node: `(server, state, credential, store URL,
/// the node's stop)`.
fn acme_with_a_store() -> (
    common::LoopbackServer,
    std::path::PathBuf,
    Credential,
    String,
    CancellationToken,
) {
    let s = common::LoopbackServer::start(
        common::AGENT_CMDLINE,
        serde_json::json!({"customer": "acme", "install": {"to_disk": false}}),
        &[MAC_A],
    );
    let (state, cred) = enroll(&s, MAC_A);
    let (url, stop) = store_node(&s);
    (s, state, cred, url, stop)
}

/// The largest pack of the repository in `dir`.
fn largest_pack(dir: &Path) -> std::path::PathBuf {
    std::fs::read_dir(dir.join("data"))
        .expect("data")
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
        .map(|e| e.path())
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a pack")
}

/// Bit rot: flips a byte in the middle of the largest pack of the
/// repository in `dir`; returns the pack and its damaged bytes.
fn flip_a_byte_of_the_largest_pack(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let pack = largest_pack(dir);
    let mut bytes = std::fs::read(&pack).expect("pack");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&pack, &bytes).expect("corrupt");
    (pack, bytes)
}

#[test]
fn r14_a_local_pack_that_fails_its_check_is_repaired_from_the_offsite_copy() {
    let (s, state, cred, url, stop) = acme_with_a_store();
    let src = s.dir.path().join("share");
    std::fs::create_dir_all(&src).expect("src");
    std::fs::write(src.join("big.bin"), noise(1 << 20, 11)).expect("write");
    let dir = state.join("repo");
    let repo = new_repo(&dir, b"appliance-secret-0123456789");
    let first = back_up(&repo, &src);
    assert!(replicate_to(&repo, &url, &cred, &state).ok());
    let id = repo.config.id.clone();
    drop(repo);

    // The data partition flips a byte of a pack.
    flip_a_byte_of_the_largest_pack(&dir);
    let check_opts = CheckOptions {
        read_data: Some(100.0),
        repair_from_offsite: false,
    };
    let repo = Repository::open(&dir, b"appliance-secret-0123456789").expect("open");
    let r = check(&repo, &check_opts, &Counters::default()).expect("check");
    let mut damaged: Vec<String> = r.damaged_blobs.iter().map(|b| b.pack.clone()).collect();
    damaged.dedup();
    assert_eq!(damaged.len(), 1, "{r:?}");
    drop(repo);

    // Without a target that has it: named, nothing changed.
    let none: CustomerConfig =
        serde_json::from_value(serde_json::json!({"customer": "acme"})).expect("config");
    let out = replicate::repair_from_offsite(&state, &none, &dir, &id, &damaged).expect("repair");
    assert!(out.packs.is_empty() && out.failed.len() == 1, "{out:?}");

    let config: CustomerConfig = serde_json::from_value(
        serde_json::json!({"customer": "acme", "offsite": [{"name": "hq", "urls": [url]}]}),
    )
    .expect("config");
    let out = replicate::repair_from_offsite(&state, &config, &dir, &id, &damaged).expect("repair");
    assert_eq!(out.packs, damaged, "{out:?}");
    let repo = Repository::open(&dir, b"appliance-secret-0123456789").expect("open");
    let r = check(&repo, &check_opts, &Counters::default()).expect("check");
    assert!(r.damaged_blobs.is_empty() && r.errors.is_empty(), "{r:?}");
    let out_dir = s.dir.path().join("restored");
    restore(
        &repo,
        &RestoreOptions {
            snapshot: first.snapshot,
            path: None,
            target: out_dir.to_string_lossy().into(),
            overwrite: Default::default(),
            skip_damaged: false,
        },
        None,
        &Counters::default(),
    )
    .expect("restore");
    assert_eq!(
        std::fs::read(out_dir.join("share/big.bin")).expect("restored"),
        std::fs::read(src.join("big.bin")).expect("original")
    );
    stop.cancel();
}

/// The daemon's scheduled read-back of the local repository
/// (`replicate::scrub`, run after each replication): a flipped byte in a
/// local pack is found, kept pending while no target can give a copy,
/// repaired once one can, and reported as a `check` run each time.
#[test]
fn r14_the_scheduled_read_back_repairs_a_damaged_local_pack_from_offsite() {
    use levee_proto::runs::{RunKind, RunResult};
    let (s, state, cred, url, stop) = acme_with_a_store();
    let src = s.dir.path().join("share");
    std::fs::create_dir_all(&src).expect("src");
    for i in 0..3 {
        std::fs::write(src.join(format!("f{i}.bin")), noise(1 << 20, 20 + i)).expect("write");
    }
    let dir = state.join("repo");
    let secret = b"appliance-secret-0123456789";
    let repo = new_repo(&dir, secret);
    back_up(&repo, &src);
    assert!(replicate_to(&repo, &url, &cred, &state).ok());
    drop(repo);
    let pack = largest_pack(&dir);
    let name = pack
        .file_name()
        .and_then(|n| n.to_str())
        .expect("name")
        .to_string();
    let mut bytes = std::fs::read(&pack).expect("pack");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&pack, &bytes).expect("corrupt");

    // No target to repair from: found, named, reported failed, kept.
    let none: CustomerConfig =
        serde_json::from_value(serde_json::json!({"customer": "acme"})).expect("config");
    let repo = Repository::open(&dir, secret).expect("open");
    let out = replicate::scrub(&state, &none, &repo, Some(1.0));
    assert_eq!(out.packs_read, out.packs_total, "{out:?}");
    assert!(out.packs_total >= 1, "{out:?}");
    assert_eq!(
        out.damaged
            .iter()
            .map(|(p, _)| p.as_str())
            .collect::<Vec<_>>(),
        [name.as_str()],
        "{out:?}"
    );
    assert!(
        out.repaired.is_empty() && out.unrepaired.len() == 1,
        "{out:?}"
    );
    let r = out.report();
    assert_eq!(
        (r.kind, r.result),
        (RunKind::Check, RunResult::Failed),
        "{r:?}"
    );
    assert!(
        r.errors.iter().any(|e| e.message.contains(&name)),
        "the report names the pack: {r:?}"
    );
    assert_eq!(
        std::fs::read(&pack).expect("pack"),
        bytes,
        "nothing changed"
    );

    // With the target, a later run with nothing more to read repairs it.
    let config: CustomerConfig = serde_json::from_value(
        serde_json::json!({"customer": "acme", "offsite": [{"name": "hq", "urls": [url]}]}),
    )
    .expect("config");
    let out = replicate::scrub(&state, &config, &repo, Some(0.0));
    assert_eq!(out.packs_read, 0, "{out:?}");
    assert_eq!(out.repaired, std::slice::from_ref(&name), "{out:?}");
    assert!(out.unrepaired.is_empty(), "{out:?}");
    assert_eq!(out.report().result, RunResult::Warning);
    let r = check(
        &repo,
        &CheckOptions {
            read_data: Some(100.0),
            repair_from_offsite: false,
        },
        &Counters::default(),
    )
    .expect("check");
    assert!(r.damaged_blobs.is_empty() && r.errors.is_empty(), "{r:?}");

    // Clean now: the next full read-back finds nothing and repairs nothing.
    let out = replicate::scrub(&state, &config, &repo, Some(1.0));
    assert!(out.damaged.is_empty() && out.repaired.is_empty(), "{out:?}");
    assert_eq!(out.report().result, RunResult::Success);
    stop.cancel();
}

#[test]
fn r14_a_replacement_restores_from_offsite_with_the_paper_key_and_continues_the_history() {
    let s = common::LoopbackServer::start(
        common::AGENT_CMDLINE,
        serde_json::json!({"customer": "acme", "install": {"to_disk": false}}),
        &[MAC_A],
    );
    // Appliance A: a repository with its own slot and the recovery slot.
    // (Enrolled first: the server has made its CA by then.)
    let (state_a, cred_a) = enroll(&s, MAC_A);
    let (url, stop) = store_node(&s);
    let offsite = s.data.join("offsite");
    let src = s.dir.path().join("share");
    std::fs::create_dir_all(src.join("sub")).expect("src");
    std::fs::write(src.join("big.bin"), noise(2 << 20, 7)).expect("write");
    std::fs::write(
        src.join("sub/notes.txt"),
        "minutes of the meeting\n".repeat(300),
    )
    .expect("write");
    let paper = RecoveryPrivateKey::generate();
    let id = {
        let repo = new_repo(&state_a.join("repo"), b"appliance-a-secret-0123456789");
        repo.ensure_recovery_slot(&paper.public()).expect("slot");
        let first = back_up(&repo, &src);
        let run = replicate_to(&repo, &url, &cred_a, &state_a);
        assert!(run.ok(), "{:?}", run.errors);
        (repo.config.id.clone(), first.snapshot)
    };
    let (repo_id, snapshot) = id;
    // A is lost, its disk with it.
    std::fs::remove_dir_all(state_a.join("repo")).expect("destroy");

    s.levee(&["appliance", "replace", MAC_A, "--with", MAC_B]);
    let (state_b, cred_b) = enroll(&s, MAC_B);
    let b = client(&url, &cred_b, &repo_id);
    let dest = state_b.join("recovered/acme").join(&repo_id);

    // A file the store altered is caught, nothing of it written as good.
    let listing = b.list_all().expect("list");
    let pack = listing[&levee_proto::offsite::FileKind::Data]
        .keys()
        .next()
        .expect("a pack")
        .clone();
    let stored = offsite
        .join("acme")
        .join(&repo_id)
        .join("data")
        .join(&pack[..2])
        .join(&pack);
    let good = std::fs::read(&stored).expect("stored");
    let mut bad = good.clone();
    bad[50] ^= 1;
    std::fs::write(&stored, &bad).expect("tamper");
    let e = fetch_repository(&b, &s.dir.path().join("tampered")).expect_err("refused");
    assert!(matches!(e, FetchError::Mismatch { .. }), "{e}");
    std::fs::write(&stored, &good).expect("untamper");

    let got = fetch_repository(&b, &dest).expect("fetch");
    assert!(got.files >= 5, "{got:?}");
    // Another customer's paper key opens nothing; the right one does.
    assert!(Repository::open_with_recovery(&dest, &RecoveryPrivateKey::generate()).is_err());
    let repo = Repository::open_with_recovery(&dest, &paper).expect("open with the paper key");
    assert_eq!(repo.config.id, repo_id, "the same repository");

    let out = s.dir.path().join("restored");
    let r = restore(
        &repo,
        &RestoreOptions {
            snapshot: snapshot.clone(),
            path: None,
            target: out.to_string_lossy().into(),
            overwrite: Default::default(),
            skip_damaged: false,
        },
        None,
        &Counters::default(),
    )
    .expect("restore");
    assert_eq!(r.errors, 0);
    let restored_root = out.join("share");
    for f in ["big.bin", "sub/notes.txt"] {
        assert_eq!(
            std::fs::read(restored_root.join(f)).expect("restored"),
            std::fs::read(src.join(f)).expect("original"),
            "{f} byte-identical"
        );
    }

    // B continues the same history under its own slot: a new backup
    // stores only the new file's bytes, and goes to the same namespace.
    repo.add_key(
        b"appliance-b-secret-0123456789",
        KdfParams::with_memory(1024),
        "appliance",
        "appliance",
    )
    .expect("B's slot");
    std::fs::write(src.join("new.txt"), "written after the fire\n").expect("write");
    let second = back_up(&repo, &src);
    assert_eq!(second.parent.as_deref(), Some(snapshot.as_str()));
    assert!(
        second.bytes_stored < 64 << 10,
        "deduplicated against A's data: {} bytes stored",
        second.bytes_stored
    );
    let run = replicate_to(&repo, &url, &cred_b, &state_b);
    assert!(run.ok(), "{:?}", run.errors);
    assert!(run.bytes_uploaded < 256 << 10, "{run:?}");
    eprintln!(
        "fetched {} files, {} bytes; second backup stored {} bytes; replicated {} bytes",
        got.files, got.bytes, second.bytes_stored, run.bytes_uploaded
    );
    drop(repo);
    let again = fetch_repository(&b, &dest).expect("fetch again");
    assert_eq!(again.files, 1, "only the config is rewritten: {again:?}");

    // A's certificate no longer reads the namespace.
    let (status, _) = client(&url, &cred_a, &repo_id)
        .raw(reqwest::Method::GET, "snapshots/")
        .expect("old");
    assert_eq!(status, 403);
    stop.cancel();
}

/// The offsite target as the appliances' configuration names it.
fn config_with(url: &str) -> CustomerConfig {
    serde_json::from_value(serde_json::json!({
        "customer": "acme",
        "offsite": [{"name": "hq", "urls": [url]}],
    }))
    .expect("config")
}

fn grant_of(cred: &Credential) -> Result<levee_proto::recovery_api::RecoveryAnswer, String> {
    levee_agent::enroll::MtlsClient::new(cred)
        .expect("client")
        .recovery()
        .map_err(|e| e.to_string())
}

#[test]
fn r14_a_replacement_takes_over_the_repository_with_a_grant_only_it_opens() {
    use levee_agent::recover::{self, Step};
    use levee_proto::recovery::RecoveryError;
    use levee_proto::recovery_api::{grant_context, RecoveryUpload};
    const MAC_C: &str = "52:54:00:14:20:03";
    const MAC_D: &str = "52:54:00:14:20:04";
    let s = common::LoopbackServer::start(
        common::AGENT_CMDLINE,
        serde_json::json!({"customer": "acme", "install": {"to_disk": false}}),
        &[MAC_A, MAC_C],
    );
    common::add_customer(
        s.store.as_ref(),
        &s.data,
        serde_json::json!({"customer": "beta", "install": {"to_disk": false}}),
    );
    common::register(s.store.as_ref(), MAC_D, "beta");
    let (state_a, cred_a) = enroll(&s, MAC_A);
    let (state_c, cred_c) = enroll(&s, MAC_C);
    let (state_d, cred_d) = enroll(&s, MAC_D);
    let (url, stop) = store_node(&s);
    let config = config_with(&url);
    let src = s.dir.path().join("share");
    std::fs::create_dir_all(src.join("sub")).expect("src");
    std::fs::write(src.join("big.bin"), noise(2 << 20, 21)).expect("write");
    std::fs::write(src.join("sub/notes.txt"), "the books of 2026\n".repeat(200)).expect("write");
    let (paper, paper_file) = paper_key(s.dir.path(), "acme-recovery.txt");
    let (_, wrong_file) = paper_key(s.dir.path(), "other-recovery.txt");

    // A: its service's step publishes its key and, once the repository has
    // the recovery slot, the slot (sealed to the paper key).
    let key_a = hex::encode([0xa1u8; 32]);
    let (repo_id, snapshot) = {
        let repo = new_repo(&state_a.join("repo"), key_a.as_bytes());
        repo.ensure_recovery_slot(&paper.public()).expect("slot");
        let first = back_up(&repo, &src);
        assert!(replicate_to(&repo, &url, &cred_a, &state_a).ok());
        (repo.config.id.clone(), first.snapshot)
    };
    assert_eq!(
        recover::step(&state_a, &config, key_a.as_bytes()).expect("A's step"),
        Step::Ready
    );
    let a = s.appliance(MAC_A);
    let rec_a = s.store.recovery(a.id).expect("store").expect("A's row");
    assert_eq!(rec_a.repository.as_deref(), Some(repo_id.as_str()));
    // What the server holds opens only with the paper key.
    let sealed_a = rec_a.sealed.expect("sealed slot");
    assert!(paper
        .open(&sealed_a, levee_proto::recovery::SLOT_CONTEXT)
        .is_ok());
    // A is lost with its disk.
    std::fs::remove_dir_all(state_a.join("repo")).expect("destroy");

    // A paper key that does not open A's slot replaces nothing.
    let cli = common::Cli::new(&s.data);
    let err = cli
        .fails(&[
            "appliance",
            "replace",
            MAC_A,
            "--with",
            MAC_B,
            "--recovery-key",
            wrong_file.to_str().expect("utf-8"),
        ])
        .expect("cli");
    assert!(err.contains("does not open the recovery slot"), "{err}");
    assert!(s.appliance(MAC_A).revoked_at.is_none());

    // The replacement before B ever ran: replaced, nothing to seal to yet.
    let out = replace_with_key(&s, MAC_A, MAC_B, &paper_file);
    assert!(
        out.contains("has not published its recovery key yet"),
        "{out}"
    );
    let (state_b, cred_b) = enroll(&s, MAC_B);
    let key_b = hex::encode([0xb2u8; 32]);
    // B publishes its key and waits: no new repository beside A's.
    match recover::step(&state_b, &config, key_b.as_bytes()).expect("B's step") {
        Step::Waiting(why) => assert!(
            why.contains(&repo_id) && why.contains("--recovery-key"),
            "{why}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(!state_b.join("repo").exists());

    // A forged (low-order) key is refused by the server, B's stays.
    let b = s.appliance(MAC_B);
    let published = s
        .store
        .recovery(b.id)
        .expect("store")
        .expect("row")
        .public_key;
    let forged = levee_agent::enroll::MtlsClient::new(&cred_b)
        .expect("client")
        .post_recovery(&RecoveryUpload {
            appliance_key: format!("x25519:{}", "00".repeat(32)),
            repository: None,
        })
        .expect_err("refused");
    assert!(forged.to_string().contains("low-order"), "{forged}");
    assert_eq!(
        s.store
            .recovery(b.id)
            .expect("store")
            .expect("row")
            .public_key,
        published
    );

    // Now ops re-wraps: the replacement is not made twice.
    let out = replace_with_key(&s, MAC_A, MAC_B, &paper_file);
    assert!(
        out.contains("already replaced") && out.contains("re-wrapped"),
        "{out}"
    );

    // Who gets what: A's certificate nothing (revoked), another appliance
    // of acme and one of another customer only their own empty answer.
    let e = grant_of(&cred_a).expect_err("A refused");
    assert!(e.contains("403") || e.contains("revoked"), "{e}");
    for (who, cred) in [("C", &cred_c), ("D", &cred_d)] {
        let ans = grant_of(cred).expect("answer");
        assert!(
            ans.grant.is_none() && ans.waiting.is_none(),
            "{who}: {ans:?}"
        );
    }
    let grant = grant_of(&cred_b)
        .expect("B's answer")
        .grant
        .expect("a grant");
    assert_eq!(
        (grant.customer.as_str(), grant.repository.as_str()),
        ("acme", repo_id.as_str())
    );
    // The grant opens with B's key only: not the paper key, not C's, not
    // under another repository's context.
    let ctx = grant_context("acme", &repo_id);
    assert!(recover::appliance_key(&state_b)
        .expect("B")
        .open(&grant.sealed, &ctx)
        .is_ok());
    for k in [
        recover::appliance_key(&state_c).expect("C"),
        recover::appliance_key(&state_d).expect("D"),
        RecoveryPrivateKey::generate(),
    ] {
        assert_eq!(k.open(&grant.sealed, &ctx), Err(RecoveryError::WrongKey));
    }
    let other_ctx = grant_context("acme", &"0".repeat(64));
    assert!(recover::appliance_key(&state_b)
        .expect("B")
        .open(&grant.sealed, &other_ctx)
        .is_err());
    // C's and D's steps see nothing to take over.
    assert_eq!(
        recover::step(&state_c, &config, b"c-key").expect("C"),
        Step::Ready
    );
    assert!(!state_c.join("repo").exists());

    // B's next step takes the repository over by itself.
    let step = recover::step(&state_b, &config, key_b.as_bytes()).expect("B takes over");
    assert_eq!(
        step,
        Step::Adopted {
            repository: repo_id.clone(),
            fetched: true
        }
    );
    let repo = Repository::open(&state_b.join("repo"), key_b.as_bytes()).expect("B's own slot");
    assert_eq!(repo.config.id, repo_id);
    // The packs stayed offsite (tests/ondemand.rs): the restore fetches them.
    replicate::ondemand::attach(&repo, &state_b, &config)
        .expect("attach")
        .expect("packs offsite");
    let out = s.dir.path().join("restored-b");
    let r = restore(
        &repo,
        &RestoreOptions {
            snapshot: snapshot.clone(),
            path: None,
            target: out.to_string_lossy().into(),
            overwrite: Default::default(),
            skip_damaged: false,
        },
        None,
        &Counters::default(),
    )
    .expect("restore");
    assert_eq!(r.errors, 0);
    for f in ["big.bin", "sub/notes.txt"] {
        assert_eq!(
            std::fs::read(out.join("share").join(f)).expect("restored"),
            std::fs::read(src.join(f)).expect("original"),
            "{f}"
        );
    }
    std::fs::write(src.join("after.txt"), "after the fire\n").expect("write");
    let second = back_up(&repo, &src);
    assert_eq!(second.parent.as_deref(), Some(snapshot.as_str()));
    assert!(second.bytes_stored < 64 << 10, "{}", second.bytes_stored);
    let run = replicate_to(&repo, &url, &cred_b, &state_b);
    assert!(run.ok() && run.bytes_uploaded < 256 << 10, "{run:?}");
    drop(repo);
    // Again: nothing to fetch, the same repository.
    assert_eq!(
        recover::step(&state_b, &config, key_b.as_bytes()).expect("again"),
        Step::Adopted {
            repository: repo_id.clone(),
            fetched: false
        }
    );
    eprintln!(
        "B took over {repo_id}: second backup stored {} bytes, replicated {} bytes",
        second.bytes_stored, run.bytes_uploaded
    );
    stop.cancel();
}
