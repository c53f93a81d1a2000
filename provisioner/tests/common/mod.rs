//! Set-up shared by the provisioner's integration tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use levee_provisioner::serve::{self, Listeners, ServeConfig};
use levee_provisioner::store::{Profile, SqliteStore, Store, Transport};
use tokio_util::sync::CancellationToken;

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

/// Starts `levee serve`'s plain-HTTP and HTTPS listeners on 127.0.0.1
/// (ephemeral ports; no DHCP, no TFTP) on the current runtime; returns the
/// plain-HTTP base URL and the token that stops them.
// tests/alerts.rs starts its server with its own alert settings instead.
#[allow(dead_code)]
pub async fn serve_on_loopback(
    store: Arc<dyn Store>,
    data: PathBuf,
    dir: &Path,
) -> (String, CancellationToken) {
    serve_on_loopback_with(store, data, dir, Default::default()).await
}

/// [`serve_on_loopback`] with the alert engine's settings.
pub async fn serve_on_loopback_with(
    store: Arc<dyn Store>,
    data: PathBuf,
    dir: &Path,
    alerts: levee_provisioner::alerts::AlertOptions,
) -> (String, CancellationToken) {
    let http = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("http");
    let https = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("https");
    let url = format!("http://{}", http.local_addr().expect("addr"));
    let stop = CancellationToken::new();
    let config = ServeConfig {
        data_dir: data,
        ipxe_dir: dir.join("ipxe"),
        public_url: url.clone(),
        tftp_host: "127.0.0.1".into(),
        dhcp: None,
        grace: std::time::Duration::from_secs(5),
        alerts,
        limits: Default::default(),
        allow_pending: true,
    };
    let listeners = Listeners {
        http,
        https: Some(https),
        tftp: None,
    };
    tokio::spawn(serve::run(store, listeners, config, stop.clone()));
    (url, stop)
}
