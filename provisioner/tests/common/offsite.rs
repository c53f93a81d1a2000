//! What the offsite and disaster-recovery tests share: an appliance
//! enrolled by a real agent pass, a store node as `levee serve --store`
//! runs it, and a backup of a directory.

use std::path::{Path, PathBuf};

use levee_agent::backup::commands::backup::{backup, BackupOptions, BackupSummary};
use levee_agent::backup::progress::Counters;
use levee_agent::enroll::Credential;
use levee_agent::Repository;
use levee_proto::recovery::RecoveryPrivateKey;
use levee_proto::repo::KdfParams;
use tokio_util::sync::CancellationToken;

use super::LoopbackServer;

/// Enrolls `mac` through one pass of the real agent; its state directory
/// (under the server's temporary directory) and credential.
pub fn enroll(s: &LoopbackServer, mac: &str) -> (PathBuf, Credential) {
    let state = s.dir.path().join(mac.replace(':', ""));
    std::fs::create_dir_all(&state).expect("state");
    super::agent_pass(&s.http, mac, &state);
    let cred = Credential::load(&state).expect("load").expect("credential");
    (state, cred)
}

/// The store, as `levee serve --store` runs it, on the server's runtime
/// (after an enrollment: the server has made its CA by then); its URL and
/// what stops it.
pub fn store_node(s: &LoopbackServer) -> (String, CancellationToken) {
    let listener =
        s.rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
    let url = format!("https://{}", listener.local_addr().expect("addr"));
    let ca =
        levee_provisioner::enroll::ca::ServerCa::open_or_create(&s.data.join("ca")).expect("ca");
    let tls = levee_provisioner::enroll::https::tls_config(&ca, "127.0.0.1").expect("tls");
    let state = levee_provisioner::offsite::state(
        s.store.clone(),
        levee_provisioner::offsite::Files::Dir(levee_provisioner::offsite::Disk::new(
            s.data.join("offsite"),
        )),
    );
    let stop = CancellationToken::new();
    s.rt.spawn(levee_provisioner::offsite::serve(
        listener,
        tls,
        state,
        levee_provisioner::offsite::DEFAULT_GRACE,
        Default::default(),
        stop.clone(),
    ));
    (url, stop)
}

/// Backs `src` up into `repo`.
pub fn back_up(repo: &Repository, src: &Path) -> BackupSummary {
    let opts = BackupOptions {
        sources: vec![src.to_string_lossy().into()],
        ..Default::default()
    };
    backup(repo, &opts, None, &Counters::default()).expect("backup")
}

/// A new repository in `dir` opened by `key`, as an appliance makes it
/// (with a KDF light enough for tests).
pub fn new_repo(dir: &Path, key: &[u8]) -> Repository {
    Repository::init(
        dir,
        key,
        KdfParams::with_memory(1024),
        "appliance",
        "appliance",
    )
    .expect("init")
}

/// A new recovery key of the customer, printed as its paper key into
/// `dir/NAME` (what `levee appliance replace --recovery-key` reads).
pub fn paper_key(dir: &Path, name: &str) -> (RecoveryPrivateKey, PathBuf) {
    let paper = RecoveryPrivateKey::generate();
    let file = dir.join(name);
    std::fs::write(&file, paper.to_paper()).expect("paper");
    (paper, file)
}

/// `levee appliance replace OLD --with NEW --recovery-key PAPER` on `s`;
/// its output.
pub fn replace_with_key(s: &LoopbackServer, old: &str, new: &str, paper: &Path) -> String {
    s.levee(&[
        "appliance",
        "replace",
        old,
        "--with",
        new,
        "--recovery-key",
        paper.to_str().expect("utf-8"),
    ])
}
