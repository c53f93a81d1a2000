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
    let packs = repo.local().list(FileKind::Pack).expect("list");
    assert_eq!(packs.len(), 2);
    for (name, _) in &packs {
        let p = repo.local().path(FileKind::Pack, name);
        fs::rename(&p, aside.join(name)).expect("aside");
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

    let r = check(&repo, &CheckOptions::default(), &Counters::default()).expect("check");
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.unfetched_packs, 2);
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("2 packs not yet fetched from hq")),
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
            .any(|n| n.contains("2 packs not yet fetched were not read")),
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
                && e.contains("2 pack(s)")
                && e.contains("hq"),
            "{e}"
        );
    }
    assert_eq!(repo.local().list(FileKind::Pack).expect("list").len(), 0);

    // With a source, reading the data fetches each pack once and checks it.
    let source = Arc::new(Aside {
        dir: aside.clone(),
        served: AtomicUsize::new(0),
    });
    let as_source: Arc<dyn PackSource> = source.clone();
    repo.local().set_pack_source(Some(as_source));
    let r = check(&repo, &read_all, &Counters::default()).expect("check");
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.packs_read, 2);
    assert_eq!(source.served.load(Ordering::SeqCst), 2);
    assert_eq!(repo.local().list(FileKind::Pack).expect("list").len(), 2);
}
