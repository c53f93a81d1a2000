//! Issue 14 inside a real appliance: the BIOS install golden path's
//! customer has a Windows file share (a real Samba server on the test
//! network, with NT ACLs), a backup schedule, a recovery key and an offsite
//! store (`levee serve --store`). Once installed, the appliance backs the
//! share up on its schedule into its own disk and replicates the repository
//! to the store; the test checks the runs the operator sees, that the store
//! holds every file the repository needs (packs, index, snapshots, the
//! appliance and recovery key slots, no password slot) and only ciphertext
//! (marker strings from the share found nowhere in it).
//!
//! Then disaster recovery: the VM is killed and its disk deleted; ops run
//! `levee appliance replace OLD --with NEW`; the replacement (a host on
//! the same LAN with a real appliance identity, enrolled with the token of
//! its boot script: a second install under TCG would cost minutes and
//! prove the install again, not the recovery) runs `levee-agent --repo
//! https://STORE/acme/<id> --recovery-key PAPER restore latest` into a new
//! path of the Samba server: every file byte-identical, the NT ACL the
//! same (`smbcacls`, a client independent of ours).
//!
//! Folded into the install test on purpose: a second install under TCG
//! would cost minutes; the backup and its replication add seconds.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context};
use levee_tests::net::{TestNet, SERVER_IP};
use levee_tests::samba::{Samba, PASSWORD};
use levee_tests::server::LeveeServer;
use levee_tests::vm::Vm;
use levee_tests::wait_until;

/// Where `levee serve --store` listens on the test network.
pub(crate) const STORE_PORT: u16 = 8444;
/// The share the appliance backs up.
const SHARE: &str = "files";
/// A deny ACE for a SID no account here has, Everyone may read, root full
/// control: nothing a new file gets by inheritance.
const FILE_DACL: &str = "ACL:S-1-5-21-1-2-3-1001:DENIED/0x0/0x00000002,\
                         ACL:S-1-1-0:ALLOWED/0x0/READ,ACL:S-1-22-1-0:ALLOWED/0x0/FULL";
/// How long the first backup and its replication may take once the
/// appliance is installed (the schedule is due at once; TCG is slow).
const FIRST_RUNS: Duration = Duration::from_secs(300);

/// The replacement appliance's MAC and its address on the LAN.
const REPLACEMENT: &str = "52:54:00:04:01:09";
const REPLACEMENT_IP: &str = "10.99.0.10/24";

/// The customer's file server, data and paper recovery key.
pub(crate) struct Backups {
    samba: Samba,
    /// The paper key `levee customer recovery-key init` wrote.
    paper_key: PathBuf,
    /// Strings in the share's files that must never appear in a store.
    markers: Vec<String>,
}

impl Backups {
    /// Starts Samba in `net` with a share of a few files (one with an ACL
    /// of its own) and makes the customer's recovery key; returns the YAML
    /// lines the customer's configuration adds.
    pub(crate) fn prepare(
        server: &LeveeServer,
        net: &TestNet,
        dir: &Path,
    ) -> anyhow::Result<(Backups, String)> {
        let samba = Samba::start(net, dir, &[SHARE, "restore"])?;
        let share = samba.share_dir(SHARE);
        let tag = format!("{:x}", std::process::id());
        let markers = vec![
            format!("LEVEE-E2E-PAYROLL-{tag}"),
            format!("LEVEE-E2E-LEDGER-{tag}"),
        ];
        std::fs::create_dir_all(share.join("finance/2026"))?;
        std::fs::write(
            share.join("finance/payroll.txt"),
            format!("{}\nalice 5000\nbob 4000\n", markers[0]),
        )?;
        // A bigger file with the marker repeated through it, compressible
        // and several chunks long.
        let ledger: String = (0..40_000)
            .map(|i| format!("{} line {i} debit {} credit {}\n", markers[1], i * 7, i * 3))
            .collect();
        std::fs::write(share.join("finance/2026/ledger.csv"), ledger)?;
        std::fs::write(share.join("readme.txt"), "shared by everyone\n")?;
        samba.smbcacls(SHARE, "finance/payroll.txt", &["--set", FILE_DACL])?;

        let paper_key = dir.join("acme-recovery.txt");
        let out = server.cli(&[
            "customer",
            "recovery-key",
            "init",
            super::install::CUSTOMER,
            "--out",
            paper_key.to_str().context("path")?,
        ])?;
        let public = out
            .split_whitespace()
            .find(|w| w.starts_with("x25519:"))
            .with_context(|| format!("no public key in: {out}"))?;
        let yaml = format!(
            "sources:\n  - name: {SHARE}\n    smb: {}\n    password: {PASSWORD}\n\
             schedules:\n  - name: often\n    every: 5m\n\
             offsite:\n  - name: hq\n    urls: [\"https://{SERVER_IP}:{STORE_PORT}\"]\n\
             recovery_key: \"{public}\"\n",
            samba.url(SHARE)
        );
        Ok((
            Backups {
                samba,
                paper_key,
                markers,
            },
            yaml,
        ))
    }

    /// After the install: the first scheduled backup and its replication
    /// arrive as runs, and the store holds a complete, ciphertext-only copy.
    pub(crate) fn check(&self, server: &LeveeServer, mac: &str) -> anyhow::Result<()> {
        let runs = wait_until(FIRST_RUNS, "a backup and a replication run", || {
            let a = server.appliance(mac)?.context("appliance gone")?;
            let runs = a["backups"]["runs"].as_array().cloned().unwrap_or_default();
            let done = |kind: &str| {
                runs.iter()
                    .any(|r| r["kind"] == kind && r["result"] == "success")
            };
            Ok((done("backup") && done("replication")).then_some(runs))
        })?;
        let backup = runs
            .iter()
            .find(|r| r["kind"] == "backup" && r["result"] == "success")
            .context("no backup run")?;
        eprintln!("backup run: {backup}");
        ensure!(backup["job"] == "often", "backup run: {backup}");
        ensure!(backup["error_count"] == 0, "backup run: {backup}");
        ensure!(
            backup["files_total"].as_u64() == Some(3),
            "three files backed up: {backup}"
        );
        ensure!(
            backup["snapshot"].as_str().is_some_and(|s| !s.is_empty()),
            "no snapshot: {backup}"
        );
        let replication = runs
            .iter()
            .find(|r| r["kind"] == "replication" && r["result"] == "success")
            .context("no replication run")?;
        eprintln!("replication run: {replication}");
        ensure!(
            replication["bytes_new"].as_u64().unwrap_or(0) > 0,
            "nothing uploaded: {replication}"
        );
        ensure!(
            replication["sources"][0]
                .as_str()
                .is_some_and(|t| t.contains("hq")),
            "the target is named: {replication}"
        );

        // The store: one namespace for the customer's repository, holding
        // packs, index, snapshots and key slots, and no plaintext.
        let root = server
            .data_dir()
            .join("offsite")
            .join(super::install::CUSTOMER);
        let repos: Vec<PathBuf> = std::fs::read_dir(&root)
            .with_context(|| format!("no store namespace under {}", root.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        ensure!(repos.len() == 1, "one repository in the store: {repos:?}");
        let files = files_under(&repos[0])?;
        for kind in ["data", "index", "snapshots", "keys", "config"] {
            ensure!(
                files
                    .iter()
                    .any(|f| f.strip_prefix(&repos[0]).is_ok_and(|r| r.starts_with(kind))),
                "no {kind} file in the store: {files:?}"
            );
        }
        for f in &files {
            let bytes = std::fs::read(f)?;
            for m in &self.markers {
                ensure!(
                    !bytes.windows(m.len()).any(|w| w == m.as_bytes()),
                    "plaintext {m} in the store's {}",
                    f.display()
                );
            }
        }
        eprintln!(
            "offsite store: {} files, none holding plaintext from the share",
            files.len()
        );
        Ok(())
    }
}

impl Backups {
    /// The appliance is lost with its disk; its replacement restores the
    /// share from the offsite store with the paper key (see the module
    /// doc). `disk` is the lost appliance's disk image.
    pub(crate) fn recover(
        &self,
        server: &LeveeServer,
        net: &TestNet,
        vm: &Vm,
        disk: &Path,
        mac: &str,
        dir: &Path,
    ) -> anyhow::Result<()> {
        // SAFETY: kill(2) on the QEMU this test started.
        unsafe { libc::kill(vm.pid as i32, libc::SIGKILL) };
        wait_until(Duration::from_secs(30), "QEMU to stop", || {
            Ok(vm.exited().then_some(()))
        })?;
        std::fs::remove_file(disk)?;
        let root = server
            .data_dir()
            .join("offsite")
            .join(super::install::CUSTOMER);
        let repo_id = std::fs::read_dir(&root)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .next()
            .context("no repository in the store")?;

        server.cli(&["appliance", "replace", mac, "--with", REPLACEMENT])?;
        let host = net.add_host(REPLACEMENT_IP)?;
        let cred = crate::identity::enroll_from(&host, REPLACEMENT, &format!("{SERVER_IP}:80"))?;
        let state = dir.join("replacement-state");
        cred.save(&state)?;
        let url = format!(
            "https://{SERVER_IP}:{STORE_PORT}/{}/{repo_id}",
            super::install::CUSTOMER
        );
        let agent = levee_tests::binary("levee-agent")?;
        let out = host
            .cmd(agent.to_str().context("path")?)
            .arg("--state-dir")
            .arg(&state)
            .args(["--repo", &url, "--recovery-key"])
            .arg(&self.paper_key)
            .args(["--json", "--quiet", "restore", "latest", "--target"])
            .arg(self.samba.url("restore/r1"))
            .env("LEVEE_SMB_PASSWORD", PASSWORD)
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.success(),
            "the restore from offsite failed: {stdout}\n{stderr}"
        );
        eprintln!("restore from offsite: {}", stderr.trim());
        let report: serde_json::Value =
            serde_json::from_str(&stdout).with_context(|| format!("restore output: {stdout}"))?;
        ensure!(report["errors"] == 0, "restore: {report}");

        // Byte-identical, and the ACL as it was.
        let share = self.samba.share_dir(SHARE);
        let restored = self.samba.share_dir("restore").join("r1").join(SHARE);
        let originals = files_under(&share)?;
        ensure!(originals.len() == 3, "{originals:?}");
        for f in &originals {
            let rel = f.strip_prefix(&share)?;
            let back = std::fs::read(restored.join(rel)).with_context(|| {
                format!("{} not restored (in {})", rel.display(), restored.display())
            })?;
            ensure!(
                back == std::fs::read(f)?,
                "{} differs after the restore",
                rel.display()
            );
        }
        let want = self.samba.descriptor(SHARE, "finance/payroll.txt")?;
        let got = self
            .samba
            .descriptor("restore", &format!("r1/{SHARE}/finance/payroll.txt"))?;
        ensure!(
            want.iter()
                .any(|l| l.contains("S-1-5-21-1-2-3-1001:1/0x0/0x00000002")),
            "the test ACL was not set: {want:?}"
        );
        ensure!(
            got == want,
            "ACL after the restore: {got:?}, before: {want:?}"
        );
        // The lost appliance's certificate no longer opens the namespace:
        // its record is replaced.
        let old = server.appliance(mac)?.context("old appliance gone")?;
        ensure!(
            old["appliance"]["replaced_by"].is_number(),
            "the old appliance is not marked replaced: {old}"
        );
        eprintln!(
            "disaster recovery: {} files restored byte-identical from offsite with the paper key, NT ACL kept",
            originals.len()
        );
        Ok(())
    }
}

fn files_under(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                todo.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    Ok(out)
}
