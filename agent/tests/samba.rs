//! A private Samba server on loopback for tests (BOOT-NOTES recipe). Fails
//! with a clear message when Samba is not installed: a skipped SMB test
//! proves nothing.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const USER: &str = "root";
/// An account without root's powers (Debian's `nobody`, so no Unix account
/// is created): it may not give a file to another owner. Same password.
pub const PLAIN_USER: &str = "nobody";
pub const PASSWORD: &str = "levee-test-pw";

pub struct Samba {
    child: Child,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub conf: PathBuf,
    /// Where `smbcacls` reaches this server (see [`Samba::smbcacls`]).
    cacls_host: std::sync::OnceLock<String>,
}

fn need(tool: &str) -> PathBuf {
    for d in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let p = PathBuf::from(d).join(tool);
        if p.exists() {
            return p;
        }
    }
    panic!("{tool} not found: install Samba with `apt-get install -y --no-install-recommends samba smbclient samba-vfs-modules`");
}

/// The `acl_xattr` VFS module (Debian: samba-vfs-modules) and `smbcacls`
/// (smbclient), installed if missing; a panic if that fails, never a skip.
fn need_acl_tools() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        let module = || {
            [
                "/usr/lib/x86_64-linux-gnu/samba/vfs",
                "/usr/lib/samba/vfs",
                "/usr/lib64/samba/vfs",
            ]
            .iter()
            .any(|d| PathBuf::from(d).join("acl_xattr.so").exists())
        };
        let cacls = || PathBuf::from("/usr/bin/smbcacls").exists();
        if module() && cacls() {
            return;
        }
        let st = Command::new("apt-get")
            .args([
                "install",
                "-y",
                "--no-install-recommends",
                "-o",
                "DPkg::Lock::Timeout=300",
            ])
            .args(["samba-vfs-modules", "smbclient"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
        assert!(
            module() && cacls(),
            "Samba's acl_xattr module or smbcacls is missing and installing them failed ({st:?}): \
             apt-get install -y --no-install-recommends samba-vfs-modules smbclient"
        );
    });
}

impl Samba {
    /// Shares: `share` (the source), `restore` (a target) and `sealed`
    /// (`smb encrypt = required`), all empty. NT ACLs round-trip: `acl_xattr`
    /// keeps each descriptor whole in an xattr beside its POSIX mapping.
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// [`start`](Self::start) with extra `[global]` lines.
    pub fn start_with(global_extra: &str) -> Self {
        need_acl_tools();
        let smbd = need("smbd");
        let smbpasswd = need("smbpasswd");
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        for sub in [
            "private", "lock", "state", "cache", "pid", "ncalrpc", "share", "restore", "sealed",
        ] {
            std::fs::create_dir_all(d.join(sub)).expect("mkdir");
        }
        // A free port near 1445, distinct per test in this process (tests run
        // in threads) and spread by pid across processes; retried if taken.
        static NEXT: AtomicU16 = AtomicU16::new(0);
        let mut port =
            1445 + (std::process::id() % 100) as u16 * 40 + NEXT.fetch_add(7, Ordering::Relaxed);
        for attempt in 0..5 {
            while TcpListener::bind(("127.0.0.1", port)).is_err() {
                port += 1;
            }
            let conf = d.join("smb.conf");
            // In target/test-logs/<test>/, where a killed test's logs stay.
            let smbd_log = levee_tests::log_dir().join(format!("smbd-{port}.log"));
            let p = d.display();
            std::fs::write(
                &conf,
                format!(
                    "[global]\n interfaces = 127.0.0.1\n bind interfaces only = yes\n smb ports = {port}\n disable netbios = yes\n \
                     server role = standalone server\n map to guest = never\n private dir = {p}/private\n lock directory = {p}/lock\n \
                     state directory = {p}/state\n cache directory = {p}/cache\n pid directory = {p}/pid\n ncalrpc dir = {p}/ncalrpc\n \
                     passdb backend = tdbsam:{p}/private/passdb.tdb\n log file = {smbd_log}\n log level = 1\n store dos attributes = yes\n map archive = no\n \
                     vfs objects = acl_xattr\n map acl inherit = yes\n{global_extra}\n\
                     [share]\n path = {p}/share\n read only = no\n\
                     [restore]\n path = {p}/restore\n read only = no\n\
                     [sealed]\n path = {p}/sealed\n read only = no\n smb encrypt = required\n",
                    smbd_log = smbd_log.display()
                ),
            )
            .expect("write smb.conf");
            for user in [USER, PLAIN_USER] {
                let mut pw = Command::new(&smbpasswd)
                    .args(["-c"])
                    .arg(&conf)
                    .args(["-s", "-a", user])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("smbpasswd");
                {
                    let mut stdin = pw.stdin.take().expect("stdin");
                    let _ = write!(stdin, "{PASSWORD}\n{PASSWORD}\n");
                }
                let st = pw.wait_with_output().expect("smbpasswd");
                assert!(
                    st.status.success(),
                    "smbpasswd {user} failed: {}",
                    String::from_utf8_lossy(&st.stderr)
                );
            }
            // In its own process group with its forked children, killed
            // with the test however it ends (levee_tests::guard).
            let mut child = levee_tests::guard::spawn(
                Command::new(&smbd)
                    .args(["--foreground", "--no-process-group", "-s"])
                    .arg(&conf)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            )
            .expect("start smbd");
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(20) {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    // Ours, not another test's: an smbd that lost the port
                    // race exits at once.
                    std::thread::sleep(Duration::from_millis(300));
                    if let Ok(None) = child.try_wait() {
                        return Self {
                            child,
                            dir,
                            port,
                            conf,
                            cacls_host: Default::default(),
                        };
                    }
                    break;
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            levee_tests::guard::kill(&mut child);
            let log = std::fs::read_to_string(&smbd_log).unwrap_or_default();
            eprintln!("smbd did not come up on port {port} (attempt {attempt}): {log}");
            port += NEXT.fetch_add(7, Ordering::Relaxed) + 1;
        }
        panic!("could not start smbd on loopback; see the log above");
    }

    pub fn share_dir(&self) -> PathBuf {
        self.dir.path().join("share")
    }

    pub fn url(&self, share_and_path: &str) -> String {
        self.url_via(self.port, share_and_path)
    }

    /// A URL through another port (a [`Recorder`] in front of this server).
    pub fn url_via(&self, port: u16, share_and_path: &str) -> String {
        format!("smb://{USER}@127.0.0.1:{port}/{share_and_path}")
    }

    /// A URL signing in as `user` instead of root.
    pub fn url_as(&self, user: &str, share_and_path: &str) -> String {
        format!("smb://{user}@127.0.0.1:{}/{share_and_path}", self.port)
    }

    /// `smbcacls` on one path of a share, SIDs numeric; its stdout.
    ///
    /// smbcacls always dials port 445 (it has no `-p` and ignores `smb
    /// ports`), so it goes through a relay on 127.1.x.y:445, an address of
    /// this server's own (loopback is all of 127/8 on Linux).
    pub fn smbcacls(&self, share: &str, path: &str, args: &[&str]) -> String {
        let host = self.cacls_host.get_or_init(|| {
            let host = format!("127.1.{}.{}", self.port >> 8, self.port & 0xff);
            Recorder::listen(&host, 445, self.port);
            host
        });
        let o = Command::new(need("smbcacls"))
            .arg(format!("//{host}/{share}"))
            .arg(path)
            .args(["-U", &format!("{USER}%{PASSWORD}"), "-s"])
            .arg(&self.conf)
            .arg("--numeric")
            .args(args)
            .output()
            .expect("smbcacls");
        assert!(
            o.status.success(),
            "smbcacls {path} {args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs an smbclient command on a share (sets DOS attributes etc.).
    pub fn smbclient(&self, share: &str, cmd: &str) {
        let smbclient = need("smbclient");
        let o = Command::new(smbclient)
            .arg(format!("//127.0.0.1/{share}"))
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                &format!("{USER}%{PASSWORD}"),
                "-s",
            ])
            .arg(&self.conf)
            .args(["-c", cmd])
            .output()
            .expect("smbclient");
        assert!(
            o.status.success(),
            "smbclient {cmd}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// A loopback TCP relay that keeps every byte it passes, both ways: what an
/// eavesdropper on the wire would see.
pub struct Recorder {
    pub port: u16,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Recorder {
    pub fn start(to: u16) -> Self {
        Self::listen("127.0.0.1", 0, to)
    }

    pub fn listen(host: &str, port: u16, to: u16) -> Self {
        let l = TcpListener::bind((host, port)).expect("bind recorder");
        let port = l.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        // Lives until the test process ends; each connection gets two pumps.
        std::thread::spawn(move || {
            for client in l.incoming().flatten() {
                let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (
                        client.try_clone().expect("clone"),
                        server.try_clone().expect("clone"),
                    ),
                    (server, client),
                ] {
                    let s = s.clone();
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 64 * 1024];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            s.lock().expect("lock").extend_from_slice(&buf[..n]);
                        }
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        Self { port, seen }
    }

    pub fn bytes(&self) -> usize {
        self.seen.lock().expect("lock").len()
    }

    pub fn saw(&self, needle: &[u8]) -> bool {
        self.seen
            .lock()
            .expect("lock")
            .windows(needle.len())
            .any(|w| w == needle)
    }
}

impl Drop for Samba {
    fn drop(&mut self) {
        levee_tests::guard::kill(&mut self.child);
    }
}
