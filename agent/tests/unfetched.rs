//! Issue 14: a repository taken over from an offsite copy, whose packs are
//! not all here yet (`unfetched.json`). The packs are moved aside and served
//! back by a pack source, as the offsite targets would (the real targets:
//! provisioner/tests/ondemand.rs): check calls them not yet fetched instead
//! of missing, prune and repair refuse to act on the partial listing, and
//! `check --read-data` fetches and reads them only when a source is there.

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use levee_agent::backup::backend::{FileKind, PackSource, ReadBackend};
use levee_agent::backup::commands::backup::{backup, BackupOptions};
use levee_agent::backup::commands::check::{check, CheckOptions};
use levee_agent::backup::commands::prune::{prune, PruneOptions};
use levee_agent::backup::commands::repair::{repair, RepairOptions};
use levee_agent::backup::progress::Counters;
use levee_agent::backup::unfetched::Unfetched;
use levee_agent::Repository;
use levee_proto::repo::KdfParams;

use crate::util::rand_bytes;

/// Serves the packs moved aside, counting what it serves.
struct Aside {
    dir: PathBuf,
    served: AtomicUsize,
}

impl PackSource for Aside {
    fn fetch(&self, name: &str) -> Result<Vec<u8>, String> {
        self.served.fetch_add(1, Ordering::SeqCst);
        fs::read(self.dir.join(name)).map_err(|e| format!("offsite target hq: {e}"))
    }
}

#[test]
fn r14_packs_not_yet_fetched_are_not_missing_not_pruned_and_read_when_asked() {
    let dir = tempfile::tempdir().expect("dir");
    let (path, src, aside) = (
        dir.path().join("repo"),
        dir.path().join("src"),
        dir.path().join("aside"),
    );
    fs::create_dir_all(&src).expect("src");
    fs::create_dir_all(&aside).expect("aside");
    let repo = Repository::init(
        &path,
        b"password",
        KdfParams::with_memory(1024),
        "password",
        "",
    )
    .expect("init");
    let opts = BackupOptions {
        sources: vec![src.to_string_lossy().into()],
        ..Default::default()
    };
    for i in 0..2u64 {
        fs::write(src.join(format!("f{i}")), rand_bytes(i + 1, 300_000)).expect("write");
        backup(&repo, &opts, None, &Counters::default()).expect("backup");
    }
    // Each backup: a data pack and a tree pack.
    let packs = repo.local().list(FileKind::Pack).expect("list");
    assert_eq!(packs.len(), 4);
    move_aside(&repo, &aside);

    let r = check(&repo, &CheckOptions::default(), &Counters::default()).expect("check");
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.unfetched_packs, 4);
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("4 packs not yet fetched from hq")),
        "{:?}",
        r.notes
    );
    let read_all = CheckOptions {
        read_data: Some(100.0),
        repair_from_offsite: false,
    };
    // Without a source nothing is fetched, and that is said.
    let r = check(&repo, &read_all, &Counters::default()).expect("check");
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("4 packs not yet fetched were not read")),
        "{:?}",
        r.notes
    );
    for e in [
        prune(&repo, &PruneOptions::default(), &Counters::default())
            .expect_err("prune")
            .to_string(),
        repair(&repo, &RepairOptions::default(), &Counters::default())
            .expect_err("repair")
            .to_string(),
    ] {
        assert!(
            e.contains("waits until the back-fill ends")
                && e.contains("4 pack(s)")
                && e.contains("hq"),
            "{e}"
        );
    }
    assert_eq!(repo.local().list(FileKind::Pack).expect("list").len(), 0);

    // With a source, reading the data fetches each pack once and checks it.
    let source = attach_source(&repo, &aside);
    let r = check(&repo, &read_all, &Counters::default()).expect("check");
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.packs_read, 4);
    assert_eq!(source.served.load(Ordering::SeqCst), 4);
    assert_eq!(repo.local().list(FileKind::Pack).expect("list").len(), 4);
}

/// A repository whose packs are all moved aside with the marker written,
/// as a take-over leaves it; the source serving them back.
fn taken_over(repo: &Repository, aside: &std::path::Path) -> Arc<Aside> {
    move_aside(repo, aside);
    attach_source(repo, aside)
}

/// Moves every pack to `aside` and writes the marker, as a take-over
/// leaves the repository (no source attached yet).
fn move_aside(repo: &Repository, aside: &std::path::Path) {
    fs::create_dir_all(aside).expect("aside");
    for (name, _) in repo.local().list(FileKind::Pack).expect("list") {
        let p = repo.local().path(FileKind::Pack, &name);
        fs::rename(&p, aside.join(&name)).expect("aside");
    }
    Unfetched {
        version: 1,
        customer: "acme".into(),
        repository: repo.config.id.clone(),
        targets: vec!["hq".into()],
        since: 0,
    }
    .save(repo.local().as_ref())
    .expect("marker");
}

/// Serves the packs in `aside` to `repo` as its offsite source.
fn attach_source(repo: &Repository, aside: &std::path::Path) -> Arc<Aside> {
    let source = Arc::new(Aside {
        dir: aside.to_path_buf(),
        served: AtomicUsize::new(0),
    });
    let as_source: Arc<dyn PackSource> = source.clone();
    repo.local().set_pack_source(Some(as_source));
    source
}

fn repo_with_source(
    dir: &std::path::Path,
    big: [usize; 2],
) -> (Repository, PathBuf, BackupOptions) {
    let (path, src) = (dir.join("repo"), dir.join("src"));
    let repo = Repository::init(
        &path,
        crate::util::PASSWORD.as_bytes(),
        KdfParams::with_memory(1024),
        "password",
        "",
    )
    .expect("init");
    crate::tree_packs::make_source(&src, big);
    let opts = BackupOptions {
        sources: vec![src.to_string_lossy().into()],
        ..Default::default()
    };
    (repo, src, opts)
}

#[test]
fn r14_after_a_take_over_the_next_backup_fetches_only_its_parents_tree_pack() {
    let dir = tempfile::tempdir().expect("dir");
    let (repo, src, opts) = repo_with_source(dir.path(), [12, 9]);
    let first = backup(&repo, &opts, None, &Counters::default()).expect("backup");
    let all = crate::tree_packs::pack_kinds(&repo.path);
    let repo_bytes: u64 = repo
        .local()
        .list(FileKind::Pack)
        .expect("list")
        .iter()
        .map(|(_, s)| s)
        .sum();
    let source = taken_over(&repo, &dir.path().join("aside"));

    fs::write(src.join("after.txt"), "after the fire\n").expect("write");
    let next = backup(&repo, &opts, None, &Counters::default()).expect("backup");
    assert_eq!(next.parent.as_deref(), Some(first.snapshot.as_str()));
    // No unchanged file read: only the new one.
    assert_eq!(next.summary.files_unchanged, first.summary.files);
    assert_eq!(next.summary.bytes_read, 15, "{next:?}");
    assert_eq!(source.served.load(Ordering::SeqCst), 1);
    let fetched = repo.local().list(FileKind::Pack).expect("list");
    let fetched: Vec<_> = fetched
        .into_iter()
        .filter(|(n, _)| all.contains_key(n))
        .collect();
    assert_eq!(fetched.len(), 1, "{fetched:?}");
    assert_eq!(all[&fetched[0].0].1, 0, "the fetched pack holds trees only");
    eprintln!(
        "take-over backup: fetched {} bytes (the parent's tree pack) of {repo_bytes}; read {} bytes; stored {}",
        fetched[0].1, next.summary.bytes_read, next.bytes_stored
    );
    assert!(
        fetched[0].1 * 100 < repo_bytes,
        "{fetched:?} of {repo_bytes}"
    );
    assert!(next.bytes_stored < 64 << 10, "{}", next.bytes_stored);
    // The fetched pack counts as fetched: the back-fill leaves it.
    let missing = levee_agent::backup::unfetched::missing_packs(&repo).expect("missing");
    assert_eq!(missing.len(), all.len() - 1);
    assert!(!missing.contains(&fetched[0].0));
    // The backup left the repository's source unrestricted: a restore of
    // a file still fetches its data.
    let out = dir.path().join("out");
    let r = levee_agent::backup::commands::restore::restore(
        &repo,
        &levee_agent::backup::commands::restore::RestoreOptions {
            snapshot: next.snapshot.clone(),
            path: Some("/src/big2.bin".into()),
            target: out.to_string_lossy().into(),
            overwrite: Default::default(),
            skip_damaged: false,
        },
        None,
        &Counters::default(),
    )
    .expect("restore");
    assert_eq!(r.errors, 0, "{:?}", r.error_messages);
    assert_eq!(
        fs::read(out.join("big2.bin")).expect("restored"),
        fs::read(src.join("big2.bin")).expect("original")
    );
}

#[test]
fn r14_after_taking_over_a_mixed_repository_the_backup_reads_the_files_again() {
    let dir = tempfile::tempdir().expect("dir");
    let (repo, src, opts) = repo_with_source(dir.path(), [6, 4]);
    let first = backup(&repo, &opts, None, &Counters::default()).expect("backup");
    crate::tree_packs::mix_all_packs(&repo.path);
    let source = taken_over(&repo, &dir.path().join("aside"));
    let fetch = levee_agent::backup::unfetched::trees_for_backup(&repo).expect("plan");
    assert_eq!((fetch.tree_packs, fetch.mixed_packs), (0, 1));
    assert!(fetch.mixed_refused, "{fetch:?}");

    fs::write(src.join("after.txt"), "after the fire\n").expect("write");
    let next = backup(&repo, &opts, None, &Counters::default()).expect("backup");
    assert_eq!(next.parent.as_deref(), Some(first.snapshot.as_str()));
    // The trees share the one pack with all the data: not fetched, every
    // file read again, still nothing stored twice.
    assert_eq!(source.served.load(Ordering::SeqCst), 0);
    assert_eq!(next.summary.files_unchanged, 0);
    assert_eq!(
        next.summary.bytes_read,
        first.summary.bytes_total + 15,
        "{next:?}"
    );
    assert!(next.bytes_stored < 64 << 10, "{}", next.bytes_stored);
}
