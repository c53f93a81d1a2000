//! Replication to a direct S3 target against a real S3 server (`s3s-fs`
//! on loopback, started and killed by the test; issue 14).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use levee_agent::backup::commands::backup::{backup, BackupOptions};
use levee_agent::backup::progress::Counters;
use levee_agent::enroll::{Credential, ServerInfo};
use levee_agent::replicate::{
    self, AppendOnly, Bucket, ReplicateOptions, S3Target, Target, TargetOutcome,
};
use levee_agent::Repository;
use levee_proto::config::OffsiteTarget;
use levee_proto::offsite::{FileKind, Namespace};
use levee_proto::repo::KdfParams;
use levee_tests::s3::{S3Server, ACCESS_KEY, SECRET_KEY};

const MARKER: &str = "LEVEE-S3-PLAINTEXT-MARKER-77c1";
const BUCKET: &str = "acme-backups";
const PART: u64 = 5 << 20;

/// A direct S3 target has no use for the appliance's certificate.
fn no_credential() -> Credential {
    Credential {
        key_pem: String::new(),
        cert_pem: String::new(),
        ca_pem: String::new(),
        server: ServerInfo {
            http_url: String::new(),
            https_url: String::new(),
            appliance_id: 0,
        },
    }
}

fn s3_target(s: &S3Server) -> OffsiteTarget {
    serde_json::from_value(serde_json::json!({
        "name": "cold",
        "url": format!("s3://{BUCKET}/levee"),
        "endpoint": s.endpoint(),
        "region": "us-east-1",
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
    }))
    .expect("target")
}

/// Random (incompressible) data with the marker in front.
fn write_source(dir: &Path, name: &str, bytes: usize, seed: u64) {
    std::fs::create_dir_all(dir).expect("src");
    let mut data = MARKER.as_bytes().to_vec();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ seed;
    while data.len() < bytes {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(dir.join(name), &data).expect("write");
}

fn back_up(repo: &Repository, src: &Path) {
    let opts = BackupOptions {
        sources: vec![src.to_string_lossy().into()],
        ..Default::default()
    };
    backup(repo, &opts, None, &Counters::default()).expect("backup");
}

fn run(repo: &Repository, t: &OffsiteTarget, state: &Path, verify: f64) -> TargetOutcome {
    replicate::replicate_target(
        repo,
        "acme",
        t,
        &no_credential(),
        Arc::new(Bucket::new(None)),
        &ReplicateOptions {
            part_bytes: PART,
            // Larger files in parts, so a cut can be resumed below.
            whole_bytes: PART,
            timeout: Duration::from_secs(30),
            verify_share: verify,
            ..ReplicateOptions::default()
        },
        state,
    )
}

fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn r14_direct_s3_replicates_resumes_verifies_and_never_overwrites() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = S3Server::start(&dir.path().join("s3"), &[BUCKET]).expect("s3s-fs");
    let state = dir.path().join("state");
    let src = dir.path().join("src");
    write_source(&src, "a.bin", 3 << 20, 1);
    let repo = Repository::init(
        &state.join("repo"),
        b"appliance-secret-0123456789",
        KdfParams::with_memory(1024),
        "appliance",
        "appliance",
    )
    .expect("init");
    repo.add_key(
        b"ops-password",
        KdfParams::with_memory(1024),
        "password",
        "ops",
    )
    .expect("password slot");
    back_up(&repo, &src);
    let t = s3_target(&server);

    // First run: everything that may travel goes up; s3s-fs keeps no
    // versions, so the run says the bucket is not append-only.
    let out = run(&repo, &t, &state, 0.0);
    assert!(out.ok(), "{:?}", out.errors);
    let local = replicate::local_files(&repo).expect("local");
    assert_eq!(out.files_uploaded, local.len() as u64);
    assert!(
        out.warnings.iter().any(|w| w.contains("NOT append-only")),
        "{:?}",
        out.warnings
    );
    let report = out.report();
    assert!(report.result.succeeded());
    assert!(report
        .errors
        .iter()
        .any(|e| e.message.contains("NOT append-only")));

    let ns = Namespace::new("acme", &repo.config.id).expect("ns");
    let sdir = replicate::state_dir(&state, "cold");
    let client = S3Target::new(
        &t,
        ns,
        Arc::new(Bucket::new(None)),
        Duration::from_secs(30),
        &sdir,
    )
    .expect("client")
    .with_whole_max(PART);
    assert_eq!(client.append_only().expect("asked"), AppendOnly::No);
    let listing = client.list_all().expect("list");
    let names = replicate::names(&listing);
    for f in &local {
        assert!(
            names.contains(&f.name),
            "{} {} missing",
            f.kind.as_str(),
            f.name
        );
    }
    // Only the appliance's key slot travels, not the password slot.
    assert_eq!(listing[&FileKind::Keys].len(), 1);
    // No plaintext on the server.
    let mut stored = Vec::new();
    files_under(&server.root, &mut stored);
    assert!(!stored.is_empty());
    for p in &stored {
        let b = std::fs::read(p).unwrap_or_default();
        assert!(
            !b.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
            "plaintext in {}",
            p.display()
        );
    }

    // Nothing new: nothing sent.
    let again = run(&repo, &t, &state, 0.0);
    assert!(again.ok(), "{:?}", again.errors);
    assert_eq!((again.files_uploaded, again.bytes_uploaded), (0, 0));

    // The appliance never replaces a file the bucket has.
    let pack = local
        .iter()
        .find(|f| f.kind == FileKind::Data)
        .expect("a pack");
    let key = format!("levee/acme/{}/data/{}", repo.config.id, pack.name);
    let on_disk = server.root.join(BUCKET).join(&key);
    let before = std::fs::read(&on_disk).expect("stored pack");
    let other = |_: u64, len: usize| Ok(vec![0u8; len]);
    assert_eq!(
        client
            .upload(FileKind::Data, &pack.name, pack.size, PART, &other)
            .expect("upload"),
        0
    );
    assert_eq!(std::fs::read(&on_disk).expect("stored pack"), before);

    // A byte flipped on the server: verification finds it and the file
    // goes up again.
    let mut bad = before.clone();
    bad[before.len() / 2] ^= 0x40;
    std::fs::write(&on_disk, &bad).expect("corrupt");
    let healed = run(&repo, &t, &state, 1.0);
    assert!(healed.ok(), "{:?}", healed.errors);
    assert!(healed.files_corrupt >= 1, "{healed:?}");
    assert_eq!(healed.files_uploaded, healed.files_corrupt);
    assert_eq!(std::fs::read(&on_disk).expect("stored pack"), before);

    // A large file cut after its first part: the next run sends only the
    // rest (the upload id was kept, the parts asked for).
    write_source(&src, "b.bin", 12 << 20, 2);
    back_up(&repo, &src);
    let local = replicate::local_files(&repo).expect("local");
    let listing = client.list_all().expect("list");
    let big = local
        .iter()
        .filter(|f| f.kind == FileKind::Data && !listing[&FileKind::Data].contains_key(&f.name))
        .max_by_key(|f| f.size)
        .expect("new pack");
    assert!(big.size > 2 * PART, "pack of {} bytes", big.size);
    let pack_path = repo
        .local()
        .path(levee_agent::backup::backend::FileKind::Pack, &big.name);
    let bytes = std::fs::read(&pack_path).expect("local pack");
    let cut = |offset: u64, len: usize| {
        if offset >= PART {
            return Err("cut".to_string());
        }
        Ok(bytes[offset as usize..offset as usize + len].to_vec())
    };
    assert!(client
        .upload(FileKind::Data, &big.name, big.size, PART, &cut)
        .is_err());
    let first = client.total_sent();
    let whole =
        |offset: u64, len: usize| Ok(bytes[offset as usize..offset as usize + len].to_vec());
    let sent = client
        .upload(FileKind::Data, &big.name, big.size, PART, &whole)
        .expect("resumed");
    // Only the parts after the cut, and the completion request's XML.
    let rest = big.size - PART;
    assert!(
        (rest..rest + 1024).contains(&sent),
        "{sent} bytes sent for {rest}"
    );
    assert!(first >= PART);
    let after = run(&repo, &t, &state, 0.0);
    assert!(after.ok(), "{:?}", after.errors);
    let listing = client.list_all().expect("list");
    assert_eq!(listing[&FileKind::Data][&big.name], big.size);
    assert_eq!(
        client
            .download(FileKind::Data, &big.name)
            .expect("download"),
        bytes
    );
}
