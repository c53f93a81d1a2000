//! Set-up shared by the provisioner's integration tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use levee_provisioner::store::{Profile, SqliteStore, Store, Transport};

/// A fresh SQLite store in `dir/data` with a tiny image (kernel and initrd
/// of a few bytes) as the `default` profile booted with `cmdline`.
pub fn store_with_default_profile(dir: &Path, cmdline: &str) -> (PathBuf, Arc<dyn Store>) {
    let data = dir.join("data");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&data).expect("store"));
    let src = dir.join("src");
    std::fs::create_dir_all(&src).expect("src");
    std::fs::write(src.join("k"), b"kernel").expect("k");
    std::fs::write(src.join("i"), b"initrd").expect("i");
    let image = levee_provisioner::images::import_files(
        &data,
        store.as_ref(),
        "t",
        &src.join("k"),
        &src.join("i"),
    )
    .expect("image");
    store
        .put_profile(&Profile {
            name: "default".into(),
            image: image.id,
            kernel: "vmlinuz".into(),
            initrd: "initrd.img".into(),
            cmdline: cmdline.into(),
            transport: Transport::Http,
        })
        .expect("profile");
    (data, store)
}

/// Runs the `levee` CLI on the SQLite store in `data_dir`; its stdout.
/// Fails the test (with the CLI's stderr) when the command fails.
pub fn levee(data_dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_levee"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("LEVEE_DATABASE")
        .output()
        .expect("levee");
    assert!(
        out.status.success(),
        "levee {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
