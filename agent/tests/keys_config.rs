//! Issue 12, items 4 to 7: key slots that tell the truth, the encrypted
//! config with range-checked chunk sizes, format 2 (XAES-256-GCM, keyed
//! gear table, padded packs) and format 1 repositories still working.

use std::fs;
use std::path::Path;

use levee_agent::Repository;
use levee_proto::repo::file_formats::FORMAT_1;
use levee_proto::repo::pack::{padme, parse_trailer};
use levee_proto::repo::{KdfParams, PackHeader};

use crate::util::{assert_same_tree, bin, rand_bytes, Env, PASSWORD};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn source(env: &Env) -> std::path::PathBuf {
    let src = env.path("src");
    fs::create_dir_all(src.join("d")).expect("mkdir");
    fs::write(src.join("big.bin"), rand_bytes(5, 3_000_000)).expect("write");
    for i in 0..20 {
        fs::write(
            src.join("d").join(format!("f{i}")),
            format!("small file {i}"),
        )
        .expect("write");
    }
    src
}

fn packs(repo: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for d in fs::read_dir(repo.join("data")).expect("data") {
        for f in fs::read_dir(d.expect("entry").path()).expect("fan") {
            let p = f.expect("entry").path();
            if !p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".tmp"))
            {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn r12_config_is_encrypted_and_authenticated() {
    let env = Env::new();
    let cfg = fs::read(env.repo.join("config")).expect("config");
    assert_eq!(&cfg[..5], b"LVCF\x02");
    for word in ["chunk", "fastcdc", "created"] {
        assert!(
            !cfg.windows(word.len()).any(|w| w == word.as_bytes()),
            "config shows {word} in plaintext"
        );
    }
    let mut bad = cfg.clone();
    let n = bad.len() - 20;
    bad[n] ^= 1;
    fs::write(env.repo.join("config"), &bad).expect("write");
    let o = env.run(&["snapshots"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("config cannot be decrypted"),
        "{}",
        stderr(&o)
    );
    // A plaintext format 1 config put in its place is a downgrade: refused.
    fs::write(
        env.repo.join("config"),
        br#"{"version":1,"id":"00","created_ns":0,"chunker":"fastcdc-v2020-seeded","chunk_min":524288,"chunk_avg":1048576,"chunk_max":8388608}"#,
    )
    .expect("write");
    let o = env.run(&["snapshots"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("downgraded"), "{}", stderr(&o));
}

/// chunk_avg=1 used to panic every backup (index out of bounds in the
/// chunker); 64/128/256 was accepted and destroyed deduplication.
#[test]
fn r12_tiny_chunk_sizes_are_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    Repository::init_format(
        &repo,
        PASSWORD.as_bytes(),
        KdfParams::with_memory(1024),
        "password",
        "",
        FORMAT_1,
    )
    .expect("init");
    let src = dir.path().join("src");
    fs::create_dir_all(&src).expect("mkdir");
    fs::write(src.join("f"), rand_bytes(1, 100_000)).expect("write");
    for (min, avg, max) in [(524288, 1, 8388608), (64, 128, 256)] {
        let cfg = format!(
            r#"{{"version":1,"id":"00","created_ns":0,"chunker":"fastcdc-v2020-seeded","chunk_min":{min},"chunk_avg":{avg},"chunk_max":{max}}}"#
        );
        fs::write(repo.join("config"), cfg).expect("write");
        let o = std::process::Command::new(bin())
            .args(["backup", "--quiet"])
            .arg(&src)
            .env("LEVEE_REPO", &repo)
            .env("LEVEE_PASSWORD", PASSWORD)
            .output()
            .expect("spawn");
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
        assert!(stderr(&o).contains("out of range"), "{}", stderr(&o));
    }
}

#[test]
fn r12_secret_and_kdf_floors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |pw: &str, args: &[&str]| {
        std::process::Command::new(bin())
            .args(args)
            .env("LEVEE_REPO", dir.path().join("repo"))
            .env("LEVEE_PASSWORD", pw)
            .output()
            .expect("spawn")
    };
    let o = run(PASSWORD, &["init", "--kdf-memory-kib", "8"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("KDF cost too low"), "{}", stderr(&o));
    let o = run("", &["init", "--kdf-memory-kib", "1024"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("secret too short"), "{}", stderr(&o));
    assert!(
        !dir.path().join("repo/config").exists(),
        "refused init left a repository"
    );
    let env = Env::new();
    for (secret, kib, want) in [
        ("", "1024", "secret too short"),
        ("short", "1024", "secret too short"),
        ("long enough secret", "8", "KDF cost too low"),
    ] {
        let o = env
            .cmd(&["key", "add", "--kdf-memory-kib", kib])
            .env("LEVEE_NEW_PASSWORD", secret)
            .output()
            .expect("spawn");
        assert_eq!(o.status.code(), Some(1), "{secret:?} {kib}");
        assert!(stderr(&o).contains(want), "{}", stderr(&o));
    }
    assert_eq!(env.json(&["key", "list"]).as_array().map(Vec::len), Some(1));
}

#[test]
fn r12_key_remove_says_it_does_not_revoke_and_slots_are_authenticated() {
    let env = Env::new();
    let o = env
        .cmd(&[
            "key",
            "add",
            "--kind",
            "recovery",
            "--label",
            "safe",
            "--kdf-memory-kib",
            "1024",
        ])
        .env("LEVEE_NEW_PASSWORD", "recovery secret")
        .output()
        .expect("spawn");
    assert!(o.status.success(), "{}", stderr(&o));
    let keys = env.json(&["key", "list"]);
    let rec = keys
        .as_array()
        .and_then(|a| a.iter().find(|k| k["kind"] == "recovery"))
        .expect("recovery slot")
        .clone();
    assert_eq!(rec["authenticated"], true);
    let rec_id = rec["id"].as_str().expect("id");
    // Relabelling the slot by hand (to pass it off as the appliance's) breaks it.
    let path = env.repo.join("keys").join(rec_id);
    let orig = fs::read_to_string(&path).expect("slot");
    fs::write(&path, orig.replace("\"recovery\"", "\"appliance\"")).expect("write");
    let o = env
        .cmd(&["snapshots"])
        .env("LEVEE_PASSWORD", "recovery secret")
        .output()
        .expect("spawn");
    assert_eq!(o.status.code(), Some(1), "an edited slot opened");
    fs::write(&path, &orig).expect("write");
    // Removal works and says plainly that the secret is not revoked.
    let copy = fs::read(&path).expect("slot");
    let o = env.run(&["key", "remove", &rec_id[..8]]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("not revoked"), "{}", stderr(&o));
    let v = env.json(&["key", "list"]);
    assert_eq!(v.as_array().map(Vec::len), Some(1));
    // ... and it is true: a kept copy of the slot still opens the repository.
    fs::write(&path, copy).expect("write");
    let o = env
        .cmd(&["snapshots"])
        .env("LEVEE_PASSWORD", "recovery secret")
        .output()
        .expect("spawn");
    assert!(o.status.success(), "{}", stderr(&o));
    let o = env.run(&["key", "remove", &rec_id[..8], "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["revoked"], false);
}

/// Format 2: packs and their headers are padded to Padmé lengths; restore
/// and check --read-data read them.
#[test]
fn r12_format_2_packs_are_padded_and_read_back() {
    let env = Env::new();
    let src = source(&env);
    env.ok(&["backup", &src.to_string_lossy()]);
    let ps = packs(&env.repo);
    assert!(!ps.is_empty());
    for p in &ps {
        let b = fs::read(p).expect("pack");
        assert_eq!(b.len() as u64, padme(b.len() as u64), "{}", p.display());
        let (start, len) = parse_trailer(&b[b.len() - 8..], b.len() as u64).expect("trailer");
        assert_eq!(
            u64::from(len),
            padme(u64::from(len) - 40) + 40,
            "header not padded"
        );
        assert!(start + u64::from(len) + 8 == b.len() as u64);
    }
    let c = env.json(&["check", "--read-data"]);
    assert_eq!(c["errors"].as_array().map(Vec::len), Some(0), "{c}");
    let out = env.path("out");
    env.ok(&["restore", "latest", "--target", &out.to_string_lossy()]);
    assert_same_tree(&src, &out.join("src"), 1);
}

/// Repositories made before format 2 keep working, and keep their format:
/// plaintext config, AES-256-GCM objects, seeded chunker, unpadded packs.
#[test]
fn r12_format_1_repositories_still_back_up_and_restore() {
    let env = Env::new();
    fs::remove_dir_all(&env.repo).expect("rm");
    Repository::init_format(
        &env.repo,
        PASSWORD.as_bytes(),
        KdfParams::with_memory(1024),
        "password",
        "",
        FORMAT_1,
    )
    .expect("init");
    let src = source(&env);
    env.ok(&["backup", &src.to_string_lossy()]);
    fs::write(src.join("new"), "changed").expect("write");
    env.ok(&["backup", &src.to_string_lossy()]);
    let cfg = fs::read_to_string(env.repo.join("config")).expect("config");
    assert!(cfg.contains("fastcdc-v2020-seeded"), "{cfg}");
    let repo = Repository::open(&env.repo, PASSWORD.as_bytes()).expect("open");
    for p in packs(&env.repo) {
        let b = fs::read(&p).expect("pack");
        let (start, len) = parse_trailer(&b[b.len() - 8..], b.len() as u64).expect("trailer");
        let plain = repo
            .key()
            .decrypt(&b[start as usize..(start + u64::from(len)) as usize])
            .expect("AES-256-GCM header");
        assert_eq!(plain[4], 2, "format 1 packs keep header version 2");
        PackHeader::parse(&plain).expect("header");
    }
    // A key added now is authenticated, and bound to format 1.
    let o = env
        .cmd(&["key", "add", "--kdf-memory-kib", "1024"])
        .env("LEVEE_NEW_PASSWORD", "second secret")
        .output()
        .expect("spawn");
    assert!(o.status.success(), "{}", stderr(&o));
    let o = env
        .cmd(&["snapshots"])
        .env("LEVEE_PASSWORD", "second secret")
        .output()
        .expect("spawn");
    assert!(o.status.success(), "{}", stderr(&o));
    let c = env.json(&["check", "--read-data"]);
    assert_eq!(c["errors"].as_array().map(Vec::len), Some(0), "{c}");
    let out = env.path("out");
    env.ok(&["restore", "latest", "--target", &out.to_string_lossy()]);
    assert_same_tree(&src, &out.join("src"), 1);
}
