//! Issue 14, disaster recovery: the customer's paper key opens a lost
//! appliance's repository on another machine. The appliance's scheduled
//! job (the real `run_job`) adds the recovery slot from `recovery_key:` in
//! its configuration; a copy of the repository (what an offsite store
//! holds) is then opened by the real `levee-agent` binary with nothing but
//! the paper key: snapshots listed, files restored byte-identical. Another
//! customer's paper key, a mistyped one and a repository whose sealed
//! secret was swapped are refused by name.

use std::fs;
use std::path::Path;
use std::process::Command;

use levee_agent::schedule::run_job;
use levee_proto::config::CustomerConfig;
use levee_proto::recovery::RecoveryPrivateKey;

use crate::util::{assert_same_tree, bin, rand_bytes};

fn config(src: &Path, recovery_key: &str) -> CustomerConfig {
    serde_json::from_value(serde_json::json!({
        "customer": "acme",
        "sources": [{"name": "docs", "path": src}],
        "schedules": [{"name": "nightly", "every": "1d"}],
        "recovery_key": recovery_key,
    }))
    .expect("config")
}

/// `levee-agent --repo REPO --recovery-key KEY ARGS`, with no password
/// anywhere in its environment.
fn agent(repo: &Path, key: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .arg("--repo")
        .arg(repo)
        .arg("--recovery-key")
        .arg(key)
        .args(args)
        .arg("--quiet")
        .env_remove("LEVEE_PASSWORD")
        .env_remove("LEVEE_PASSWORD_FILE")
        .env_remove("LEVEE_REPO")
        .output()
        .expect("levee-agent")
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for e in fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let dest = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            fs::copy(e.path(), dest).expect("copy");
        }
    }
}

#[test]
fn r14_the_paper_key_opens_a_lost_appliances_repository_elsewhere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("docs");
    fs::create_dir_all(src.join("sub")).expect("src");
    fs::write(src.join("report.txt"), b"quarterly numbers").expect("write");
    fs::write(src.join("sub/big.bin"), rand_bytes(14, 3 << 20)).expect("write");

    // The appliance: its own random secret, the customer's public key in
    // the configuration it pulled.
    let paper = RecoveryPrivateKey::generate();
    let cfg = config(&src, &paper.public().to_string());
    let repo = dir.path().join("appliance-repo");
    let appliance_secret = hex::encode([9u8; 32]);
    let report = run_job(&cfg, "nightly", &repo, appliance_secret.as_bytes()).expect("job");
    assert!(
        report.sources.iter().all(|r| r.result.is_ok()),
        "{report:?}"
    );

    // The appliance is gone; an offsite copy of its repository is all
    // that is left, and the customer's paper key, typed back from paper.
    let copy = dir.path().join("offsite-copy");
    copy_dir(&repo, &copy);
    let key = dir.path().join("paper.txt");
    fs::write(&key, paper.to_paper().to_lowercase().replace('-', " ")).expect("key");

    let out = agent(&copy, &key, &["snapshots", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snaps: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        snaps["snapshots"].as_array().map(Vec::len),
        Some(1),
        "{snaps}"
    );
    let target = dir.path().join("restored");
    let out = agent(
        &copy,
        &key,
        &[
            "restore",
            "latest",
            "--target",
            &target.display().to_string(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_tree(&src, &target.join("docs"), 1);

    // A second run of the job adds nothing (the slot is there).
    let slots_before = fs::read_dir(repo.join("keys")).expect("keys").count();
    run_job(&cfg, "nightly", &repo, appliance_secret.as_bytes()).expect("job");
    assert_eq!(
        fs::read_dir(repo.join("keys")).expect("keys").count(),
        slots_before
    );

    // Another customer's paper key opens nothing, and says so.
    let stranger = dir.path().join("stranger.txt");
    fs::write(&stranger, RecoveryPrivateKey::generate().to_paper()).expect("key");
    let out = agent(&copy, &stranger, &["snapshots"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no recovery slot opens"),
        "{err}"
    );

    // A mistyped paper key is caught by its checksum before anything runs.
    let mut typo = paper.to_paper().into_bytes();
    typo[0] = if typo[0] == b'A' { b'B' } else { b'A' };
    let typo_file = dir.path().join("typo.txt");
    fs::write(&typo_file, typo).expect("key");
    let out = agent(&copy, &typo_file, &["snapshots"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("mistyped"), "{err}");

    // Someone with write access to the store swaps the sealed secret for
    // one sealed to their own key: it opens with their key but not as this
    // repository's slot, so nothing opens.
    let attacker = RecoveryPrivateKey::generate();
    for e in fs::read_dir(copy.join("keys")).expect("keys") {
        let path = e.expect("entry").path();
        let mut slot: serde_json::Value =
            serde_json::from_slice(&fs::read(&path).expect("slot")).expect("slot json");
        if slot["kind"] == "recovery" {
            slot["sealed_secret"] = levee_proto::recovery::seal(
                &attacker.public(),
                hex::encode([1u8; 32]).as_bytes(),
                levee_proto::recovery::SLOT_CONTEXT,
            )
            .expect("seal")
            .into();
            fs::write(&path, serde_json::to_vec(&slot).expect("json")).expect("write");
        }
    }
    let attacker_file = dir.path().join("attacker.txt");
    fs::write(&attacker_file, attacker.to_paper()).expect("key");
    let out = agent(&copy, &attacker_file, &["snapshots"]);
    assert!(
        !out.status.success(),
        "a swapped sealed secret opened the repository"
    );
}
