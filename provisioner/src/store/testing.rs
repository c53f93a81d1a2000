//! Test helpers for this crate's tests, examples and benchmarks (the
//! `testing` feature): a throwaway PostgreSQL server. Not part of the API.
//!
//! The server runs in the foreground (`postgres -D`, not `pg_ctl`, which
//! daemonizes), in its own process group, with `PR_SET_PDEATHSIG` so it
//! dies with the thread that started it even when the test is killed;
//! `Drop` stops it sooner.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How to run the test server.
#[derive(Debug, Clone, Default)]
pub struct PgOptions {
    /// Sync writes as a deployment does (benchmarks); tests run with
    /// `fsync=off`, as nothing is kept.
    pub durable: bool,
    /// Listen on 127.0.0.1 (a free port) besides the unix socket.
    pub tcp: bool,
    /// Serve TLS with this certificate chain and key (PEM); implies `tcp`.
    pub tls: Option<(String, String)>,
}

/// A throwaway PostgreSQL server in a temp dir. Missing binaries fail the
/// test: a skipped store test proves nothing.
pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    opts: PgOptions,
    child: Mutex<Option<Child>>,
}

impl PgServer {
    /// Starts a server tuned for tests (unix socket, `fsync=off`).
    pub fn start() -> PgServer {
        PgServer::start_with(PgOptions::default())
    }

    /// Starts a server that syncs its writes as a deployment does (for
    /// benchmarks).
    pub fn start_durable() -> PgServer {
        PgServer::start_with(PgOptions {
            durable: true,
            ..Default::default()
        })
    }

    pub fn start_with(opts: PgOptions) -> PgServer {
        let bin = pg_bindir().unwrap_or_else(|| {
            panic!("PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin: install them with `apt-get install -y postgresql` (dev/setup does)")
        });
        let dir = tempfile::Builder::new()
            .prefix("levee-pg")
            .tempdir()
            .expect("temp dir for PostgreSQL");
        std::fs::create_dir(dir.path().join("sock")).expect("socket dir");
        if let Some((uid, gid)) = postgres_user() {
            // initdb refuses to run as root; the server runs as `postgres`.
            for p in [dir.path().to_path_buf(), dir.path().join("sock")] {
                std::os::unix::fs::chown(&p, Some(uid), Some(gid)).expect("chown the temp dir");
            }
        }
        let port = if opts.tcp || opts.tls.is_some() {
            free_port()
        } else {
            5433
        };
        let server = PgServer {
            dir,
            bin,
            port,
            opts,
            child: Mutex::new(None),
        };
        server.initdb();
        server.start_again();
        server
    }

    fn initdb(&self) {
        let out = self
            .command("initdb")
            .args(["-D", "data", "-U", "postgres", "--auth=trust", "-E", "UTF8"])
            .arg("--no-sync")
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some((cert, key)) = &self.opts.tls {
            let data = self.dir.path().join("data");
            for (name, pem) in [("server.crt", cert), ("server.key", key)] {
                let path = data.join(name);
                std::fs::write(&path, pem).expect("write TLS file");
                std::fs::set_permissions(
                    &path,
                    std::os::unix::fs::PermissionsExt::from_mode(0o600),
                )
                .expect("chmod TLS file");
                if let Some((uid, gid)) = postgres_user() {
                    std::os::unix::fs::chown(&path, Some(uid), Some(gid)).expect("chown TLS file");
                }
            }
        }
    }

    /// Starts the server (again, after [`PgServer::stop`]) on the same
    /// data and port, and waits until it accepts connections.
    pub fn start_again(&self) {
        let mut slot = self.child.lock().unwrap_or_else(|p| p.into_inner());
        assert!(slot.is_none(), "the test PostgreSQL server is running");
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("PostgreSQL log file");
        let tcp = self.opts.tcp || self.opts.tls.is_some();
        let mut cmd = self.command("postgres");
        cmd.args(["-D", "data", "-p", &self.port.to_string(), "-k"])
            .arg(self.sock())
            .args(["-c", &format!("fsync={}", on(self.opts.durable))])
            .args(["-c", "max_connections=200"])
            .args([
                "-c",
                &format!("listen_addresses={}", if tcp { "127.0.0.1" } else { "" }),
            ]);
        if self.opts.tls.is_some() {
            cmd.args(["-c", "ssl=on"]);
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        // A new start must not see the last run's readiness.
        let _ = std::fs::remove_file(self.dir.path().join("data/postmaster.pid"));
        let child = cmd.spawn().expect("start postgres");
        *slot = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(c) = slot.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("postgres exited with {status}:\n{}", self.log_tail());
                }
            }
            // pg_ctl's own readiness check: the status line of postmaster.pid.
            let pid_file = std::fs::read_to_string(self.dir.path().join("data/postmaster.pid"));
            if pid_file.is_ok_and(|s| s.lines().nth(7).is_some_and(|l| l.trim() == "ready")) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "postgres not ready after 60 s:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server (fast shutdown: open sessions are cut) and waits
    /// for it to exit.
    pub fn stop(&self) {
        let mut slot = self.child.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut child) = slot.take() {
            stop_child(&mut child, libc::SIGINT);
        }
    }

    fn sock(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// The TCP port (also the unix socket's number).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A libpq key=value connection string over the unix socket.
    pub fn url(&self, db: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={db}",
            self.sock().display(),
            self.port
        )
    }

    /// A `postgres://` URL over TCP to `host` (which must resolve to
    /// 127.0.0.1), without parameters.
    pub fn tcp_url(&self, host: &str, db: &str) -> String {
        format!("postgres://postgres@{host}:{}/{db}", self.port)
    }

    /// Creates a database and returns its connection string (unix socket).
    pub fn create_db(&self, db: &str) -> String {
        self.psql(&format!("CREATE DATABASE {db}"));
        self.url(db)
    }

    /// Runs one SQL command as the superuser.
    pub fn psql(&self, sql: &str) {
        self.query("postgres", sql);
    }

    /// Runs one SQL statement as the superuser in `db`; its output, rows
    /// one a line, columns separated by `|`.
    pub fn query(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.sock())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-c",
                sql,
            ])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql -c {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A PostgreSQL program, run as `postgres` when we are root, in its own
    /// process group, killed when the thread that started it ends.
    fn command(&self, prog: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(prog));
        cmd.current_dir(self.dir.path()).process_group(0);
        let user = postgres_user();
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if let Some((uid, gid)) = user {
                    if libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(gid) != 0
                        || libc::setuid(uid) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // After setuid, which clears the death signal.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        cmd
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let slot = self.child.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(mut child) = slot.take() {
            // Immediate shutdown: nothing in a test server is worth keeping.
            stop_child(&mut child, libc::SIGQUIT);
        }
    }
}

/// Sends `sig` to the server and waits up to 10 s, then kills its group.
fn stop_child(child: &mut Child, sig: i32) {
    let pid = child.id() as i32;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, sig) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: the child leads its own process group.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    let _ = child.wait();
}

fn on(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

/// The `postgres` user's ids when we are root (the server refuses root).
fn postgres_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = std::ffi::CString::new("postgres").ok()?;
    // SAFETY: getpwnam returns a pointer to static storage or null; read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "no `postgres` user to run the test server as: install PostgreSQL with `apt-get install -y postgresql` (dev/setup does)"
    );
    // SAFETY: non-null, points at a valid passwd entry.
    Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

/// A TCP port free on 127.0.0.1 right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// The newest /usr/lib/postgresql/N/bin with initdb in it (Debian's layout).
fn pg_bindir() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            Path::new(&bin.join("initdb")).exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b)
}
