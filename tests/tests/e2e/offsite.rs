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
//! Then disaster recovery, as ops would run it: the VM is killed and its
//! disk deleted; `levee appliance replace OLD --with NEW`; a blank VM (NEW)
//! boots over the same PXE, enrolls and installs as any new appliance;
//! `levee appliance replace OLD --with NEW --recovery-key PAPER` once NEW
//! has published its key; NEW takes the repository over from the store by
//! itself; `levee appliance restore NEW --snapshot <OLD's last> --to
//! smb://SERVER/restore/r1 --credentials-of files` has NEW restore the share
//! into a new Samba path: every file byte-identical, the NT ACL the same
//! (`smbcacls`, a client independent of ours); NEW's next scheduled backup
//! stores only a file written after the loss (deduplicated against the old
//! data, read from the runs the server shows) and replicates to the same
//! namespace.
//!
//! Folded into the install test on purpose: booting the first appliance
//! again for this would cost minutes; the second install is what a
//! replacement does.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use levee_tests::net::{TestNet, SERVER_IP};
use levee_tests::samba::{Samba, PASSWORD};
use levee_tests::server::LeveeServer;
use levee_tests::vm::Vm;
use levee_tests::wait_until;

use crate::install::World;

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

/// The replacement appliance's MAC.
const REPLACEMENT: &str = "52:54:00:04:01:09";
/// A file the share gets after the loss (in the replacement's backup only).
const LATE_FILE: &str = "finance/after-the-fire.txt";

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
    /// The appliance is lost with its disk; a blank replacement takes its
    /// repository over and restores the share (see the module doc). `disk`
    /// is the lost appliance's disk image.
    pub(crate) fn recover(
        &self,
        world: &World,
        vm: &Vm,
        disk: &Path,
        mac: &str,
    ) -> anyhow::Result<()> {
        let server = &world.server;
        let started = Instant::now();
        // What the lost appliance last backed up and replicated: what ops
        // restores.
        let old = server.appliance(mac)?.context("old appliance gone")?;
        let old_runs = runs_of(&old);
        let replicated = old_runs
            .iter()
            .find(|r| r["kind"] == "replication" && r["result"] == "success")
            .and_then(|r| r["started_at"].as_i64())
            .context("no replication of the lost appliance")?;
        let old_snapshot = old_runs
            .iter()
            .filter(|r| r["kind"] == "backup" && r["result"] == "success")
            .find(|r| r["ended_at"].as_i64().is_some_and(|t| t <= replicated))
            .and_then(|r| r["snapshot"].as_str())
            .context("no replicated snapshot of the lost appliance")?
            .to_string();
        vm.power_cut()?;
        std::fs::remove_file(disk)?;
        let repo_id = self.store_repositories(server)?;
        ensure!(
            repo_id.len() == 1,
            "one repository in the store: {repo_id:?}"
        );
        // Written after the loss: the replacement's first backup stores
        // this file, and only this, beside the old data.
        let share = self.samba.share_dir(SHARE);
        std::fs::write(share.join(LATE_FILE), "written after the fire\n")?;

        server.cli(&["appliance", "replace", mac, "--with", REPLACEMENT])?;
        let new_vm = crate::install::install_blank(world, REPLACEMENT, "replacement.raw")?;
        let installed = started.elapsed();
        let r = self.take_over_and_restore(server, mac, &old_snapshot, &repo_id[0], &share);
        if r.is_err() {
            eprintln!(
                "===== serial console of the replacement {REPLACEMENT} =====\n{}",
                new_vm.console()
            );
        }
        r?;
        eprintln!(
            "disaster recovery: replacement installed {:.1} s after the loss, restored and backed up again at {:.1} s",
            installed.as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// The repository ids in the store's namespace of the customer.
    fn store_repositories(&self, server: &LeveeServer) -> anyhow::Result<Vec<String>> {
        let root = server
            .data_dir()
            .join("offsite")
            .join(super::install::CUSTOMER);
        Ok(std::fs::read_dir(&root)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect())
    }

    /// The installed replacement: the paper key re-wraps the lost
    /// appliance's repository for it, ops asks it to restore the lost
    /// appliance's last snapshot into a new Samba path, and its next
    /// scheduled backup continues the same repository.
    fn take_over_and_restore(
        &self,
        server: &LeveeServer,
        mac: &str,
        old_snapshot: &str,
        repo_id: &str,
        share: &Path,
    ) -> anyhow::Result<()> {
        let paper = self.paper_key.to_str().context("path")?;
        // The replacement publishes its own key once its service runs
        // from its disk; the re-wrap needs it.
        let t = Instant::now();
        let out = wait_until(
            Duration::from_secs(180),
            "the replacement's recovery key",
            || {
                let out = server.cli(&[
                    "appliance",
                    "replace",
                    mac,
                    "--with",
                    REPLACEMENT,
                    "--recovery-key",
                    paper,
                ])?;
                Ok(out.contains("re-wrapped").then_some(out))
            },
        )?;
        eprintln!(
            "re-wrap ({:.1} s after the install): {}",
            t.elapsed().as_secs_f64(),
            out.trim()
        );
        // No account in the URL: the appliance writes as source `files`.
        let target = format!("smb://{SERVER_IP}/restore/r1");
        server.cli(&[
            "appliance",
            "restore",
            REPLACEMENT,
            "--snapshot",
            old_snapshot,
            "--to",
            &target,
            "--credentials-of",
            SHARE,
        ])?;
        let done = wait_until(
            Duration::from_secs(300),
            "the restore request to finish",
            || {
                let a = server.appliance(REPLACEMENT)?.context("replacement gone")?;
                let r = a["restores"][0].clone();
                match r["state"].as_str() {
                    Some("done") => Ok(Some(r)),
                    Some("failed") => anyhow::bail!("the restore failed: {r}"),
                    _ => Ok(None),
                }
            },
        )?;
        eprintln!(
            "restore request ({:.1} s after the re-wrap): {done}",
            t.elapsed().as_secs_f64()
        );
        ensure!(done["files"] == 3 && done["errors"] == 0, "restore: {done}");

        // Byte-identical, and the ACL as it was.
        let restored = self.samba.share_dir("restore").join("r1").join(SHARE);
        let originals: Vec<PathBuf> = files_under(share)?
            .into_iter()
            .filter(|f| !f.ends_with(LATE_FILE))
            .collect();
        ensure!(originals.len() == 3, "{originals:?}");
        for f in &originals {
            let rel = f.strip_prefix(share)?;
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

        // The replacement's next scheduled backup continues the lost
        // appliance's repository: only the late file is new; it replicates
        // to the same namespace.
        let runs = wait_until(
            Duration::from_secs(300),
            "the replacement's backup and replication",
            || {
                let a = server.appliance(REPLACEMENT)?.context("replacement gone")?;
                let runs = runs_of(&a);
                let done = |kind: &str| {
                    runs.iter()
                        .any(|r| r["kind"] == kind && r["result"] == "success")
                };
                // The replication after the backup (one may have run
                // before it, right after the take-over, with nothing to do).
                let backup_end = runs
                    .iter()
                    .find(|r| r["kind"] == "backup" && r["result"] == "success")
                    .and_then(|r| r["ended_at"].as_i64());
                let replicated = backup_end.is_some_and(|end| {
                    runs.iter().any(|r| {
                        r["kind"] == "replication"
                            && r["result"] == "success"
                            && r["started_at"].as_i64().is_some_and(|t| t >= end)
                    })
                });
                Ok((replicated && done("restore")).then_some(runs))
            },
        )?;
        let backup = runs
            .iter()
            .find(|r| r["kind"] == "backup" && r["result"] == "success")
            .context("no backup run")?;
        eprintln!("the replacement's backup run: {backup}");
        ensure!(
            backup["files_total"] == 4 && backup["error_count"] == 0,
            "the replacement's backup: {backup}"
        );
        let new_bytes = backup["bytes_new"].as_u64().unwrap_or(u64::MAX);
        ensure!(
            new_bytes < 64 << 10,
            "deduplicated against the lost appliance's data: {new_bytes} bytes new"
        );
        let restore_run = runs
            .iter()
            .find(|r| r["kind"] == "restore")
            .context("no restore run")?;
        ensure!(
            restore_run["files_new"] == 3 && restore_run["sources"][0] == target,
            "the restore run: {restore_run}"
        );
        let repos = self.store_repositories(server)?;
        ensure!(
            repos == [repo_id],
            "the replacement replicates to the lost appliance's namespace: {repos:?}"
        );
        let old = server.appliance(mac)?.context("old appliance gone")?;
        ensure!(
            old["appliance"]["replaced_by"].is_number(),
            "the old appliance is not marked replaced: {old}"
        );
        eprintln!(
            "disaster recovery: {} files restored byte-identical by the replacement, NT ACL kept; \
             its first backup stored {new_bytes} bytes new",
            originals.len()
        );
        Ok(())
    }
}

/// The runs `levee appliance show --json` lists, newest first.
fn runs_of(a: &serde_json::Value) -> Vec<serde_json::Value> {
    a["backups"]["runs"].as_array().cloned().unwrap_or_default()
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
