//! Set-up shared by the provisioner's integration tests: a store with an
//! image, customers and machines; `levee serve` on loopback (in-process or
//! as a child process); the `levee` CLI; one pass of the real agent.
//!
//! Each test binary compiles this module and uses only its part of it.
#![allow(dead_code)]

pub mod offsite;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use levee_agent::daemon::RunOptions;
use levee_provisioner::secrets::ServerKey;
use levee_provisioner::serve::{self, Listeners, ServeConfig};
use levee_provisioner::store::{PgStore, Profile, Registration, SqliteStore, Store, Transport};
use levee_pxe::boot::MacAddr;
use tokio_util::sync::CancellationToken;

/// The command line most tests boot with: everything the agent needs to
/// enroll and find the update channel.
pub const AGENT_CMDLINE: &str =
    "levee.url={url} levee.ca={ca} levee.token={token} levee.root={root_url}";

/// The store in `data` (SQLite), or on the PostgreSQL `database` URL.
pub fn open_store(data: &Path, database: Option<&str>) -> Arc<dyn Store> {
    match database {
        Some(url) => Arc::new(PgStore::connect(url).expect("PostgreSQL")),
        None => Arc::new(SqliteStore::open(data).expect("SQLite")),
    }
}

/// Imports a tiny image (kernel and initrd of a few bytes, sources under
/// `dir/src`) into `data` and makes it the `default` profile booted with
/// `cmdline`.
pub fn add_default_profile(dir: &Path, data: &Path, store: &dyn Store, cmdline: &str) {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).expect("src");
    std::fs::write(src.join("k"), b"kernel").expect("k");
    std::fs::write(src.join("i"), b"initrd").expect("i");
    let image =
        levee_provisioner::images::import_files(data, store, "t", &src.join("k"), &src.join("i"))
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
}

/// A fresh SQLite store in `dir/data` with the tiny image as the `default`
/// profile booted with `cmdline`.
pub fn store_with_default_profile(dir: &Path, cmdline: &str) -> (PathBuf, Arc<dyn Store>) {
    let data = dir.join("data");
    let store = open_store(&data, None);
    add_default_profile(dir, &data, store.as_ref(), cmdline);
    (data, store)
}

/// Seals `config` (a customer configuration as JSON) with the server key
/// in `data` and stores it.
pub fn add_customer(store: &dyn Store, data: &Path, config: serde_json::Value) {
    let key = ServerKey::load_or_create(data).expect("server key");
    let config = serde_json::from_value(config).expect("customer config");
    store
        .put_customer(&key.seal_config(&config))
        .expect("customer");
}

/// Registers `mac` for `customer`, as `levee appliance register` does.
pub fn register(store: &dyn Store, mac: &str, customer: &str) {
    store
        .register_appliance(
            mac.parse().expect("mac"),
            &Registration {
                customer: Some(customer),
                ..Default::default()
            },
        )
        .expect("register");
}

/// A port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Polls `f` every 100 ms until it holds; fails the test naming `what`
/// after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while !f() {
        assert!(
            Instant::now() < until,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The `levee` CLI on one data directory (and database, if any).
pub struct Cli {
    pub data: PathBuf,
    pub database: Option<String>,
}

impl Cli {
    pub fn new(data: &Path) -> Cli {
        Cli {
            data: data.to_path_buf(),
            database: None,
        }
    }

    /// `levee ARGS`, whatever its outcome.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_levee"));
        cmd.arg("--data-dir").arg(&self.data).args(args);
        match &self.database {
            Some(url) => cmd.env("LEVEE_DATABASE", url),
            None => cmd.env_remove("LEVEE_DATABASE"),
        };
        cmd.env("RUST_LOG", "warn")
            .output()
            .context("cannot run levee")
    }

    /// Runs and expects success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.run(args)?;
        let (stdout, stderr) = (
            String::from_utf8(out.stdout)?,
            String::from_utf8(out.stderr)?,
        );
        ensure!(
            out.status.success(),
            "levee {args:?} failed:\n{stdout}\n{stderr}"
        );
        Ok(stdout)
    }

    /// Runs and expects failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.run(args)?;
        let (stdout, stderr) = (
            String::from_utf8(out.stdout)?,
            String::from_utf8(out.stderr)?,
        );
        ensure!(!out.status.success(), "levee {args:?} succeeded:\n{stdout}");
        Ok(stderr)
    }
}

/// Runs the `levee` CLI on the SQLite store in `data_dir`; its stdout.
/// Fails the test (with the CLI's output) when the command fails.
pub fn levee(data_dir: &Path, args: &[&str]) -> String {
    Cli::new(data_dir).ok(args).expect("levee")
}

/// Makes an image directory of `version` (artifacts of a byte pattern set
/// by `fill`, the rootfs `rootfs_len` bytes) and publishes it on the
/// `stable` channel of the server in `data` with the targets key in
/// `dir/offline`; the image directory.
pub fn publish_release(
    dir: &Path,
    data: &Path,
    version: &str,
    fill: u8,
    rootfs_len: usize,
) -> PathBuf {
    let img = dir.join(format!("img-{version}"));
    std::fs::create_dir_all(&img).expect("dir");
    let mut artifacts = serde_json::Map::new();
    for (name, len) in [
        ("vmlinuz", 30_000usize),
        ("initrd.img", 50_000),
        ("rootfs.squashfs", rootfs_len),
    ] {
        let bytes: Vec<u8> = (0..len)
            .map(|i| fill ^ (i as u8) ^ ((i >> 11) as u8))
            .collect();
        std::fs::write(img.join(name), &bytes).expect("write");
        artifacts.insert(
            name.into(),
            serde_json::json!({"sha256": hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)), "size": len}),
        );
    }
    let manifest = serde_json::json!({
        "name": "levee-appliance", "version": version, "artifacts": artifacts, "cmdline": "quiet",
    });
    std::fs::write(
        img.join("image.json"),
        serde_json::to_vec_pretty(&manifest).expect("json"),
    )
    .expect("manifest");
    publish_image(dir, data, &img);
    img
}

/// `levee release publish IMG --channel stable` with the targets key of
/// `dir/offline`.
pub fn publish_image(dir: &Path, data: &Path, img: &Path) {
    let key = dir.join("offline/targets.pem").display().to_string();
    levee(
        data,
        &[
            "release",
            "publish",
            &img.display().to_string(),
            "--channel",
            "stable",
            "--targets-key",
            &key,
        ],
    );
}

/// Starts `levee serve`'s plain-HTTP and HTTPS listeners on 127.0.0.1
/// (ephemeral ports; no DHCP, no TFTP) on the current runtime; returns the
/// plain-HTTP base URL and the token that stops them.
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
        offsite: Default::default(),
        fleet_url: None,
    };
    let listeners = Listeners {
        http,
        https: Some(https),
        tftp: None,
        store: None,
    };
    tokio::spawn(serve::run(store, listeners, config, stop.clone()));
    (url, stop)
}

/// A multi-threaded runtime of two workers, as `levee serve` runs on the
/// two-core machines of CI.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// An in-process `levee serve` on loopback with its own runtime, for tests
/// whose body is synchronous (the agent is): stopped when dropped.
pub struct LoopbackServer {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub store: Arc<dyn Store>,
    pub http: String,
    pub stop: CancellationToken,
    pub rt: tokio::runtime::Runtime,
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl LoopbackServer {
    /// A server whose default profile boots with `cmdline`, with the
    /// customer `config` and `macs` registered for it.
    pub fn start(cmdline: &str, config: serde_json::Value, macs: &[&str]) -> LoopbackServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let (data, store) = store_with_default_profile(dir.path(), cmdline);
        let customer = config["customer"]
            .as_str()
            .expect("the config names its customer")
            .to_string();
        add_customer(store.as_ref(), &data, config);
        for mac in macs {
            register(store.as_ref(), mac, &customer);
        }
        let rt = runtime();
        let (http, stop) = rt.block_on(serve_on_loopback(store.clone(), data.clone(), dir.path()));
        LoopbackServer {
            dir,
            data,
            store,
            http,
            stop,
            rt,
        }
    }

    /// `levee ARGS` on this server's store; its stdout.
    pub fn levee(&self, args: &[&str]) -> String {
        levee(&self.data, args)
    }

    /// The kernel command line the boot script gives `mac`, as the agent
    /// reads it from /proc/cmdline (with `BOOTIF=`, one-second intervals).
    pub fn boot_cmdline(&self, mac: &str) -> String {
        boot_cmdline(&self.http, mac)
    }

    pub fn appliance(&self, mac: &str) -> levee_provisioner::store::Appliance {
        let mac: MacAddr = mac.parse().expect("mac");
        self.store
            .appliance(mac)
            .expect("store")
            .expect("appliance")
    }
}

/// The kernel command line `levee serve` at `http` gives `mac`.
pub fn boot_cmdline(http: &str, mac: &str) -> String {
    let script = reqwest::blocking::get(format!("{http}/boot/{mac}.ipxe"))
        .expect("script")
        .text()
        .expect("body");
    let kernel = script
        .lines()
        .find(|l| l.starts_with("kernel "))
        .unwrap_or_else(|| panic!("no kernel line: {script}"));
    format!(
        "{kernel} BOOTIF=01-{} levee.interval=1",
        mac.replace(':', "-")
    )
}

/// The daemon's options for one pass in a test: state in `state`, the
/// kernel command line written beside it, quick enrollment retries, and
/// never the host's clock.
pub fn agent_options(cmdline: &str, state: &Path) -> RunOptions {
    let file = state.with_extension("cmdline");
    std::fs::write(&file, cmdline).expect("cmdline");
    RunOptions {
        cmdline: file,
        once: true,
        state_dir: state.to_path_buf(),
        enroll_retry: Duration::from_millis(200),
        // The host's clock is not ours to set.
        set_clock: false,
        ..RunOptions::default()
    }
}

/// One pass of the real agent service (`levee-agent run` once) for `mac`
/// against the server at `http`: enrolls if it has no credential, then
/// config, heartbeat, spool.
pub fn agent_pass(http: &str, mac: &str, state: &Path) {
    let opts = agent_options(&boot_cmdline(http, mac), state);
    levee_agent::daemon::run(&opts).expect("agent pass");
}

/// A `levee serve` child process on loopback ports (no DHCP, no TFTP),
/// logging to a file, in its own process group and killed with the test
/// (also when the test process itself is killed).
pub struct ServeProcess {
    pub child: Child,
    pub http: String,
    pub https: String,
    pub log: PathBuf,
}

impl ServeProcess {
    /// Starts `levee serve` on `data` (and `database`), logging to `log`,
    /// with `extra` arguments.
    pub fn spawn(data: &Path, database: Option<&str>, log: &Path, extra: &[&str]) -> ServeProcess {
        let (hp, sp) = (free_port(), free_port());
        let http = format!("http://127.0.0.1:{hp}");
        let out = std::fs::File::create(log).expect("log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_levee"));
        cmd.arg("--data-dir").arg(data);
        match database {
            Some(url) => cmd.env("LEVEE_DATABASE", url),
            None => cmd.env_remove("LEVEE_DATABASE"),
        };
        cmd.args(["serve", "--no-tftp", "--http"])
            .arg(format!("127.0.0.1:{hp}"))
            .arg("--https")
            .arg(format!("127.0.0.1:{sp}"))
            .arg("--public-url")
            .arg(&http)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .process_group(0);
        dies_with_test(&mut cmd);
        let child = cmd.spawn().expect("levee serve");
        let serve = ServeProcess {
            child,
            http,
            https: format!("https://127.0.0.1:{sp}"),
            log: log.to_path_buf(),
        };
        serve.wait_ready();
        serve
    }

    /// Waits until the plain-HTTP listener answers `GET /api/v1/time`.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = reqwest::blocking::Client::new();
        while Instant::now() < deadline {
            if client
                .get(format!("{}{}", self.http, levee_proto::enroll::paths::TIME))
                .send()
                .is_ok_and(|r| r.status().is_success())
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("levee serve not ready after 30 s:\n{}", self.log());
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes the process `cmd` starts die with the test process (SIGKILL on
/// its parent's death), even when nextest kills the test.
pub fn dies_with_test(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl only, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Pseudo-random text: compresses about as well as binaries do (2-3x).
pub fn text(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b"abcdefghijklmnop"[(x & 15) as usize]
        })
        .collect()
}

/// The tree of a [`squashfs_image`]'s rootfs.
pub struct SquashTree {
    /// Libraries in `usr/lib` and the length of each.
    pub libs: u64,
    pub lib_len: usize,
    /// Libraries whose contents depend on the image's seed (like the agent
    /// binary); the others are the same in every image.
    pub varied: &'static [u64],
    /// Libraries of random bytes (squashfs stores them as they are: a
    /// large image quickly) instead of text.
    pub random: bool,
}

/// 60 libraries (15 MB of text, about 4.5 MB squashed): the delta tests.
pub const SQUASH_SMALL: SquashTree = SquashTree {
    libs: 60,
    lib_len: 250_000,
    varied: &[],
    random: false,
};

/// Random bytes (incompressible), different for every seed.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// An image directory (vmlinuz, initrd.img, rootfs.squashfs, image.json)
/// whose rootfs is a real squashfs of a small tree: the libraries of
/// `tree`, a 1 MB agent binary whose contents depend on `seed`, and an
/// os-release naming `version`. Kernel and initrd are the same in every
/// image.
pub fn squashfs_image(
    dir: &Path,
    version: &str,
    seed: u64,
    tree: &SquashTree,
) -> anyhow::Result<PathBuf> {
    let root = dir.join(format!("tree-{version}"));
    std::fs::create_dir_all(root.join("usr/lib"))?;
    std::fs::create_dir_all(root.join("usr/bin"))?;
    for i in 0..tree.libs {
        let lib_seed = if tree.varied.contains(&i) {
            seed * 1000 + i + 1
        } else {
            i + 1
        };
        let body = if tree.random {
            noise(tree.lib_len, lib_seed)
        } else {
            text(tree.lib_len, lib_seed)
        };
        std::fs::write(root.join(format!("usr/lib/lib{i}.so")), body)?;
    }
    std::fs::write(root.join("usr/bin/levee-agent"), text(1_000_000, seed))?;
    std::fs::write(
        root.join("usr/lib/os-release"),
        format!("ID=levee\nIMAGE_VERSION={version}\n"),
    )?;
    let img = dir.join(format!("img-{version}"));
    std::fs::create_dir_all(&img)?;
    // The image builder's options (image/src/rootfs.rs `squash`), at a
    // faster compression level.
    let out = Command::new("mksquashfs")
        .arg(&root)
        .arg(img.join("rootfs.squashfs"))
        .args(["-noappend", "-comp", "zstd", "-Xcompression-level", "3"])
        .args(["-b", "1M", "-reproducible"])
        .args(["-no-xattrs", "-mkfs-time", "1", "-all-time", "1", "-quiet"])
        .output()
        .context("mksquashfs (squashfs-tools, installed by dev/setup)")?;
    ensure!(out.status.success(), "mksquashfs: {out:?}");
    std::fs::write(img.join("vmlinuz"), text(1000, 5))?;
    std::fs::write(img.join("initrd.img"), text(2000, 6))?;
    let mut artifacts = serde_json::Map::new();
    for name in ["vmlinuz", "initrd.img", "rootfs.squashfs"] {
        let data = std::fs::read(img.join(name))?;
        artifacts.insert(
            name.into(),
            serde_json::json!({"sha256": hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data)), "size": data.len()}),
        );
    }
    let manifest = serde_json::json!({"name": "levee-appliance", "version": version, "artifacts": artifacts, "cmdline": "quiet"});
    std::fs::write(img.join("image.json"), serde_json::to_vec(&manifest)?)?;
    Ok(img)
}
