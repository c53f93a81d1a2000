//! A real Samba file server on a test network, where a VM reaches it as a
//! customer's file server: `smbd` inside the test's namespace on the
//! bridge address ([`SERVER_IP`]), port 445, one user, with `acl_xattr` so
//! Windows ACLs (NT security descriptors) are kept whole. Started through
//! the test's namespace, so it dies with the test however the test ends.
//! (The agent's own tests run Samba on loopback: `agent/tests/samba.rs`.)

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::net::{TestNet, SERVER_IP};
use crate::{log_dir, require_tool, wait_until};

/// The account the appliance signs in with (root: it may set any owner
/// when a restore writes security descriptors back).
pub const USER: &str = "root";
pub const PASSWORD: &str = "levee-e2e-smb-pw";

pub struct Samba {
    /// Holds `smb.conf`, Samba's state and one directory per share.
    pub dir: PathBuf,
    conf: PathBuf,
    ns: String,
}

impl Samba {
    /// Serves each of `shares` (empty directories under `dir`) on
    /// `SERVER_IP:445` in `net`.
    pub fn start(net: &TestNet, dir: &Path, shares: &[&str]) -> anyhow::Result<Samba> {
        require_tool("smbd", "samba")?;
        require_tool("smbpasswd", "samba")?;
        require_tool("smbcacls", "smbclient")?;
        let vfs_module = [
            "/usr/lib/x86_64-linux-gnu/samba/vfs",
            "/usr/lib/samba/vfs",
            "/usr/lib64/samba/vfs",
        ]
        .iter()
        .any(|d| Path::new(d).join("acl_xattr.so").exists());
        if !vfs_module {
            bail!("Samba's acl_xattr module is missing: apt-get install -y samba-vfs-modules");
        }
        let dir = dir.join("samba");
        for sub in ["private", "lock", "state", "cache", "pid", "ncalrpc"]
            .iter()
            .chain(shares)
        {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let d = dir.display();
        let mut conf_text = format!(
            "[global]\n interfaces = {SERVER_IP}\n bind interfaces only = yes\n disable netbios = yes\n \
             server role = standalone server\n map to guest = never\n private dir = {d}/private\n \
             lock directory = {d}/lock\n state directory = {d}/state\n cache directory = {d}/cache\n \
             pid directory = {d}/pid\n ncalrpc dir = {d}/ncalrpc\n passdb backend = tdbsam:{d}/private/passdb.tdb\n \
             log file = {}\n log level = 1\n store dos attributes = yes\n map archive = no\n \
             vfs objects = acl_xattr\n map acl inherit = yes\n",
            log_dir().join("smbd.log").display()
        );
        for share in shares {
            conf_text.push_str(&format!(
                "[{share}]\n path = {d}/{share}\n read only = no\n"
            ));
        }
        let conf = dir.join("smb.conf");
        std::fs::write(&conf, conf_text)?;
        let mut pw = Command::new("smbpasswd")
            .arg("-c")
            .arg(&conf)
            .args(["-s", "-a", USER])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("smbpasswd")?;
        {
            use std::io::Write;
            let mut stdin = pw.stdin.take().context("smbpasswd stdin")?;
            write!(stdin, "{PASSWORD}\n{PASSWORD}\n")?;
        }
        let out = pw.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "smbpasswd -a {USER} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        net.spawn(
            net.cmd("smbd")
                .args(["--foreground", "--no-process-group", "-s"])
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .context("cannot start smbd")?;
        let samba = Samba {
            dir,
            conf,
            ns: net.ns.clone(),
        };
        wait_until(Duration::from_secs(20), "smbd to listen on 445", || {
            let listening = Command::new("ip")
                .args(["netns", "exec", &samba.ns, "ss", "-Hltn", "sport = :445"])
                .output()?;
            Ok((!listening.stdout.is_empty()).then_some(()))
        })?;
        Ok(samba)
    }

    /// The directory behind a share.
    pub fn share_dir(&self, share: &str) -> PathBuf {
        self.dir.join(share)
    }

    /// How the appliance names a path of a share.
    pub fn url(&self, share_and_path: &str) -> String {
        format!("smb://{USER}@{SERVER_IP}/{share_and_path}")
    }

    /// `smbcacls` (a client independent of ours) on one path of a share,
    /// SIDs numeric; its stdout.
    pub fn smbcacls(&self, share: &str, path: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, "smbcacls"])
            .arg(format!("//{SERVER_IP}/{share}"))
            .arg(path)
            .args(["-U", &format!("{USER}%{PASSWORD}"), "-s"])
            .arg(&self.conf)
            .arg("--numeric")
            .args(args)
            .output()
            .context("smbcacls")?;
        if !out.status.success() {
            bail!(
                "smbcacls {share}/{path} {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The owner, group and ACE lines of a path's security descriptor.
    pub fn descriptor(&self, share: &str, path: &str) -> anyhow::Result<Vec<String>> {
        Ok(self
            .smbcacls(share, path, &[])?
            .lines()
            .filter(|l| {
                ["OWNER:", "GROUP:", "ACL:"]
                    .iter()
                    .any(|p| l.starts_with(p))
            })
            .map(str::to_string)
            .collect())
    }
}
