//! `levee serve` inside a test network, and the `levee` CLI against its
//! data directory.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;

use crate::net::{TestNet, BRIDGE, SERVER_IP};
use crate::{binary, run, wait_until};

/// How the server hands out addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DhcpMode {
    Full,
    Proxy,
}

pub struct LeveeServer {
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// The `levee` binary to run; `None` means the one `binary` finds.
    pub bin: Option<PathBuf>,
    /// `--database`: a PostgreSQL connection string, else SQLite in the
    /// data directory.
    pub database: Option<String>,
    _dir: tempfile::TempDir,
}

impl LeveeServer {
    /// A data directory with the CLI ready to configure it; `start` runs the
    /// server.
    pub fn new() -> anyhow::Result<LeveeServer> {
        let dir = tempfile::Builder::new().prefix("levee-test-").tempdir()?;
        Ok(LeveeServer {
            data_dir: dir.path().join("data"),
            log: crate::log_file("serve"),
            bin: None,
            database: None,
            _dir: dir,
        })
    }

    /// A server whose data directory starts as a copy of `snapshot`, the
    /// data directory of a stopped server (SQLite's write-ahead log
    /// included, so even a killed server's store copies whole). The copy
    /// is this server's own: `snapshot` is only read.
    pub fn from_snapshot(snapshot: &Path) -> anyhow::Result<LeveeServer> {
        let server = LeveeServer::new()?;
        run(Command::new("cp")
            .args(["-a", "--reflink=auto"])
            .arg(snapshot)
            .arg(&server.data_dir))
        .context("copying a server's data directory")?;
        Ok(server)
    }

    /// Another server of the same fleet: its own data directory holding
    /// only a copy of this one's `server.key` (docs/POSTGRES.md), the same
    /// database. Its log is `serve-<name>`.
    pub fn fleet_peer(&self, name: &str) -> anyhow::Result<LeveeServer> {
        let dir = tempfile::Builder::new().prefix("levee-test-").tempdir()?;
        let data_dir = dir.path().join("data");
        std::fs::create_dir_all(&data_dir)?;
        std::fs::copy(
            self.data_dir.join("server.key"),
            data_dir.join("server.key"),
        )
        .context("copying server.key to the second server")?;
        Ok(LeveeServer {
            data_dir,
            log: crate::log_file(&format!("serve-{name}")),
            bin: self.bin.clone(),
            database: self.database.clone(),
            _dir: dir,
        })
    }

    /// `levee --data-dir DIR [--database URL]`.
    fn command(&self, mut cmd: Command) -> Command {
        cmd.arg("--data-dir").arg(&self.data_dir);
        if let Some(url) = &self.database {
            cmd.args(["--database", url]);
        }
        cmd
    }

    fn levee(&self) -> anyhow::Result<PathBuf> {
        match &self.bin {
            Some(bin) => Ok(bin.clone()),
            None => binary("levee"),
        }
    }

    /// Runs `levee --data-dir DIR ARGS...` and returns stdout.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = self.command(Command::new(self.levee()?));
        cmd.args(args);
        run(&mut cmd)
    }

    /// Starts `levee serve` in `net` on the bridge address, with DHCP on the
    /// bridge in `mode`, and waits until it listens; returns its pid.
    pub fn start(&self, net: &TestNet, mode: DhcpMode, extra: &[&str]) -> anyhow::Result<u32> {
        let mut cmd = self.command(net.cmd(self.levee()?.to_str().context("non-UTF-8 path")?));
        cmd.args(["serve", "--http", &format!("{SERVER_IP}:80")])
            .args(["--tftp", &format!("{SERVER_IP}:69")])
            .args(["--dhcp-interface", BRIDGE]);
        match mode {
            DhcpMode::Full => cmd.args([
                "--dhcp-mode",
                "full",
                "--dhcp-range",
                "10.99.0.100-10.99.0.150",
            ]),
            DhcpMode::Proxy => cmd.args(["--dhcp-mode", "proxy"]),
        };
        cmd.args(extra);
        self.spawn(net, cmd)
    }

    /// Starts `levee serve ARGS...` in `net` as is (no DHCP, no TFTP unless
    /// `args` ask), with the open-file limit (soft and hard) at `nofile` if
    /// given, and waits until it listens; returns its pid.
    pub fn start_with(
        &self,
        net: &TestNet,
        args: &[&str],
        nofile: Option<u64>,
    ) -> anyhow::Result<u32> {
        let mut cmd = self.command(net.cmd(self.levee()?.to_str().context("non-UTF-8 path")?));
        cmd.arg("serve").args(args);
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit only, between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        self.spawn(net, cmd)
    }

    fn spawn(&self, net: &TestNet, mut cmd: Command) -> anyhow::Result<u32> {
        cmd.env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(File::create(&self.log)?);
        let pid = net.spawn(&mut cmd).context("cannot start levee serve")?;
        wait_until(Duration::from_secs(20), "levee serve to listen", || {
            let log = self.log_text();
            if log.contains("error") && log.contains("service stopped") {
                anyhow::bail!("levee serve failed to start:\n{log}");
            }
            Ok(log.contains("http listening").then_some(()))
        })?;
        Ok(pid)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The appliance record as `levee appliance show --json` prints it.
    pub fn appliance(&self, mac: &str) -> anyhow::Result<Option<serde_json::Value>> {
        let mut cmd = self.command(Command::new(self.levee()?));
        cmd.args(["appliance", "show", mac, "--json"]);
        let out = cmd.output()?;
        if !out.status.success() {
            return Ok(None);
        }
        Ok(Some(serde_json::from_slice(&out.stdout)?))
    }

    /// Waits for a status report from `mac` with the given stage.
    pub fn wait_for_report(
        &self,
        mac: &str,
        stage: &str,
        timeout: Duration,
    ) -> anyhow::Result<serde_json::Value> {
        wait_until(timeout, &format!("a `{stage}` report from {mac}"), || {
            Ok(self
                .appliance(mac)?
                .filter(|a| a["appliance"]["last_report"]["stage"].as_str() == Some(stage)))
        })
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}
