//! Test helpers shared by the unit tests and `provisioner/tests/`: a
//! throwaway PostgreSQL server. Not part of the API.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A throwaway PostgreSQL server on a unix socket in a temp dir, stopped
/// on drop. Missing binaries fail the test: a skipped store test proves
/// nothing.
pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
}

const PORT: u16 = 5433;

impl PgServer {
    /// Starts a server tuned for tests: `fsync=off` (nothing to keep).
    pub fn start() -> PgServer {
        PgServer::start_with(false)
    }

    /// Starts a server that syncs its writes as a deployment does (for
    /// benchmarks).
    pub fn start_durable() -> PgServer {
        PgServer::start_with(true)
    }

    fn start_with(fsync: bool) -> PgServer {
        let bin = pg_bindir().unwrap_or_else(|| {
            panic!("PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin: install them with `apt-get install -y postgresql` (dev/setup does)")
        });
        let dir = tempfile::Builder::new()
            .prefix("levee-pg")
            .tempdir()
            .expect("temp dir for PostgreSQL");
        std::fs::create_dir(dir.path().join("sock")).expect("socket dir");
        if is_root() {
            // initdb refuses to run as root; the server runs as `postgres`.
            run(Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(dir.path()));
        }
        let server = PgServer { dir, bin };
        server.run_pg(&[
            "initdb",
            "-D",
            "data",
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        let opts = format!(
            "-k {} -p {PORT} -c listen_addresses='' -c fsync={}",
            server.sock().display(),
            if fsync { "on" } else { "off" }
        );
        server.run_pg(&[
            "pg_ctl", "-D", "data", "-l", "log", "-w", "-t", "60", "-o", &opts, "start",
        ]);
        server
    }

    fn sock(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    pub fn url(&self, db: &str) -> String {
        format!(
            "host={} port={PORT} user=postgres dbname={db}",
            self.sock().display()
        )
    }

    /// Creates a database and returns its connection string.
    pub fn create_db(&self, db: &str) -> String {
        let mut admin = ::postgres::Client::connect(&self.url("postgres"), ::postgres::NoTls)
            .expect("connect to the test PostgreSQL server");
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .expect("CREATE DATABASE");
        self.url(db)
    }

    /// Runs a PostgreSQL program in the server's directory, as `postgres` when root.
    fn run_pg(&self, args: &[&str]) {
        let prog = self.bin.join(args[0]);
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&prog);
            c
        } else {
            Command::new(&prog)
        };
        cmd.args(&args[1..]).current_dir(self.dir.path());
        run(&mut cmd);
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let prog = self.bin.join("pg_ctl");
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&prog);
            c
        } else {
            Command::new(&prog)
        };
        let _ = cmd
            .args(["-D", "data", "-m", "immediate", "-w", "stop"])
            .current_dir(self.dir.path())
            .output();
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
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
