//! A real S3 server for tests: `s3s-fs` (installed by `dev/setup` with
//! `cargo install --locked s3s-fs@0.14.1 --features binary`), serving a
//! directory on a loopback port, in its own process group, killed when
//! the handle drops. Its buckets are the directory's subdirectories and
//! objects are plain files under them, so a test can read or damage what
//! the server stores.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub const ACCESS_KEY: &str = "levee-test-access";
pub const SECRET_KEY: &str = "levee-test-secret-0123456789";

pub struct S3Server {
    pub addr: SocketAddr,
    pub root: PathBuf,
    child: Option<Child>,
}

/// The `s3s-fs` binary: on PATH or in cargo's bin directory.
pub fn binary() -> anyhow::Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("s3s-fs"))
        .find(|p| p.is_file())
        .context("`s3s-fs` is missing: run dev/setup (it runs `cargo install --locked s3s-fs@0.14.1 --features binary`)")
}

impl S3Server {
    /// Serves `root` (created, with the `buckets` in it) on a free
    /// loopback port; returns once the server accepts connections.
    pub fn start(root: &Path, buckets: &[&str]) -> anyhow::Result<S3Server> {
        let bin = binary()?;
        for b in buckets {
            std::fs::create_dir_all(root.join(b)).context("bucket directory")?;
        }
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let log_path = crate::log_file("s3s-fs");
        let log = std::fs::File::create(&log_path)?;
        let child = crate::guard::spawn(
            Command::new(bin)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
                .arg(root)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log),
        )?;
        let mut s = S3Server {
            addr,
            root: root.to_path_buf(),
            child: Some(child),
        };
        let until = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).is_err() {
            if let Some(Ok(Some(status))) = s.child.as_mut().map(Child::try_wait) {
                bail!(
                    "s3s-fs exited at start ({status}); see {}",
                    log_path.display()
                );
            }
            if Instant::now() > until {
                s.kill();
                bail!("s3s-fs did not listen on {addr} within 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(s)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            crate::guard::kill(&mut c);
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}
