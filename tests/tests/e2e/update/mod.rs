//! Issue 13 end to end: an appliance installed over PXE from `levee serve`
//! (release 1) follows its signed channel through real GRUB boot counting,
//! with QEMU's i6300esb watchdog armed by stage 1 and kept by systemd.
//!
//! One installed disk per firmware serves every scenario ([`base`]): the
//! first update test of a run under that firmware installs release 1 over
//! PXE once and caches the disk, the server's data directory and the
//! releases beside the shared test image; the others wait for it and
//! reuse it. Each scenario then boots a qcow2
//! overlay of that disk against its own copy of that server, so every one
//! starts from the same clean release 1 in slot A and none depends on what
//! another left behind. One test per scenario, so nextest runs them two at
//! a time, one core each:
//!
//! - `golden_path_v1_to_v2_then_v3_by_delta`: offer, download into slot B,
//!   reboot inside the update window, trial boot, health check, commit;
//!   heartbeats say v2 and slot b, `levee release status` counts it; then
//!   v3 the same way back into slot A, by the delta path with its bytes
//!   printed;
//! - `power_cut_after_commit_converges`: v2 committed, the plug pulled right
//!   after: the next boot runs slot B and converges;
//! - `power_cut_before_commit_falls_back`: the cable pulled when the agent
//!   reboots for v2, the plug pulled once its trial runs (so the commit
//!   cannot win the race): the next boot runs slot A, which reports the
//!   rollback;
//! - `failing_health_check_falls_back_and_is_not_retried`: a v2 whose root
//!   file system names another version than its signed manifest: tried
//!   once in slot B, the trial gives up, GRUB falls back to slot A, the
//!   rollback is reported with the health check's reason, the server
//!   blocks that release for this appliance and it is not downloaded
//!   again;
//! - `hung_userspace_is_reset_by_the_watchdog`: a v2 whose `/sbin/init`
//!   hangs: stage 1 armed the watchdog, nothing keeps it, QEMU resets the
//!   machine, GRUB falls back to slot A, the rollback is reported;
//! - `golden_path_uefi_v1_to_v2_by_delta`: the same v1 -> v2 under OVMF,
//!   from a base installed over PXE under UEFI (its own cached base):
//!   GRUB's EFI image does the try of slot B. Its name sorts it second,
//!   so nextest starts it early and its base installs beside the BIOS
//!   one instead of after every other scenario.
//!
//! The releases are the shared test image re-squashed with another version
//! and the channel's TUF root baked in (`levee_tests::release`).

mod base;
mod scenarios;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context};
use levee_tests::net::{TestNet, SERVER_IP};
use levee_tests::server::{DhcpMode, LeveeServer};
use levee_tests::vm::{check, overlay, Firmware, Vm, VmBuilder};
use levee_tests::{log_dir, wait_until};

use base::Release;

const DISK_BYTES: u64 = 2 << 30;
const TEST_ARGS: &str = "no_timer_check systemd.journald.forward_to_console=1";
const PROFILE_CMDLINE: &str = "levee.url={url} levee.ca={ca} levee.token={token} \
     levee.root={root_url} levee.sha256={root_sha256} {image_cmdline}";
/// The failing release's trial gives up after this long (default 600 s).
const BAD_HEALTH_SECS: u64 = 40;
/// These tests' deadline (`.config/nextest.toml` matches it): the one
/// that installs the base disk, or waits for another test to, then runs
/// its scenario.
const DEADLINE: Duration = Duration::from_secs(1320);
/// One step's own limit; every wait is also cut at the test's deadline.
const STEP: Duration = Duration::from_secs(420);

struct World {
    server: LeveeServer,
    net: TestNet,
    dir: tempfile::TempDir,
    firmware: Firmware,
    mac: String,
    targets_key: String,
    /// Versions by release number - 1 (release 1 is installed).
    v: Vec<String>,
    /// How long `levee release publish` took, by release number - 1
    /// (release 1's was when the base was built: NaN).
    publish_secs: Vec<f64>,
}

impl World {
    fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        self.server.cli(args)
    }

    fn version(&self, release: usize) -> &str {
        &self.v[release - 1]
    }

    /// Publishes the image in `dir`, version `version`, as the next release.
    fn publish(&mut self, dir: &Path, version: String) -> anyhow::Result<()> {
        let t = Instant::now();
        publish(&self.server, dir, Path::new(&self.targets_key))?;
        self.publish_secs.push(t.elapsed().as_secs_f64());
        self.v.push(version);
        Ok(())
    }

    fn rollout(&self, release: usize) -> anyhow::Result<()> {
        let v = self.version(release);
        self.cli(&["release", "rollout", "stable", v, "--percent", "100"])
            .map(drop)
    }

    fn boot(&self, disk: &Path) -> anyhow::Result<Vm> {
        machine(&self.net, self.dir.path(), self.firmware, &self.mac, disk)
    }

    /// A heartbeat after `after` (unix seconds) naming `version` and `slot`.
    fn wait_heartbeat(&self, after: u64, version: &str, slot: char) -> anyhow::Result<()> {
        wait_heartbeat(&self.server, &self.mac, after, version, slot)
    }

    /// `levee release status --channel stable --json`: the appliance
    /// counts of release `version`.
    fn fleet(&self, version: &str) -> anyhow::Result<serde_json::Value> {
        let s: serde_json::Value = serde_json::from_str(&self.cli(&[
            "release",
            "status",
            "--channel",
            "stable",
            "--json",
        ])?)?;
        s[0]["releases"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["version"] == version))
            .map(|r| r["appliances"].clone())
            .with_context(|| format!("no {version} in release status: {s}"))
    }

    /// Waits for `release status` to count release `r` rolled back here;
    /// returns the reason, which must contain `why`.
    fn wait_rollback(&self, r: usize, why: &str) -> anyhow::Result<String> {
        let v = self.version(r).to_string();
        let f = wait_until(
            STEP,
            &format!("release status counting {v} rolled back"),
            || {
                let f = self.fleet(&v)?;
                Ok((f["rolled_back"] == 1).then_some(f))
            },
        )?;
        let reason = f["rollbacks"][0]["reason"]
            .as_str()
            .unwrap_or("")
            .to_string();
        ensure!(
            reason.contains(why),
            "the rollback's reason lacks `{why}`: {f}"
        );
        Ok(reason)
    }

    /// The appliance's history lines of step `update` for `state` of
    /// `version`.
    fn reports(&self, state: &str, version: &str) -> anyhow::Result<usize> {
        let a = self
            .server
            .appliance(&self.mac)?
            .context("appliance gone")?;
        let want = format!("{state} {version} ");
        Ok(a["events"]
            .as_array()
            .map(|e| {
                e.iter()
                    .filter(|e| {
                        e["step"] == "update"
                            && e["detail"].as_str().is_some_and(|d| d.starts_with(&want))
                    })
                    .count()
            })
            .unwrap_or(0))
    }
}

/// A boot of the machine: its disk first, the NIC second, a watchdog.
/// Under UEFI each boot gets a fresh copy of OVMF's variables (GRUB is on
/// the removable-media path, no boot entry needed).
fn machine(
    net: &TestNet,
    dir: &Path,
    firmware: Firmware,
    mac: &str,
    disk: &Path,
) -> anyhow::Result<Vm> {
    VmBuilder {
        memory_mib: 1024,
        disks: vec![disk.to_path_buf()],
        allow_reboot: true,
        watchdog: true,
        ..VmBuilder::new(firmware, mac)
    }
    .start(net, dir)
}

/// `levee release publish DIR --channel stable --targets-key KEY`.
fn publish(server: &LeveeServer, dir: &Path, key: &Path) -> anyhow::Result<()> {
    let dir = dir.to_str().context("path")?;
    let key = key.to_str().context("path")?;
    server
        .cli(&[
            "release",
            "publish",
            dir,
            "--channel",
            "stable",
            "--targets-key",
            key,
        ])
        .map(drop)
}

/// Customer `acme` following `stable`, with an update window around now
/// (written to `dir`).
fn apply_customer(server: &LeveeServer, dir: &Path) -> anyhow::Result<()> {
    let customer = dir.join("acme.yaml");
    std::fs::write(
        &customer,
        format!(
            "customer: acme\nheartbeat_interval: 10s\nupdate_channel: stable\nupdate_window: \"{}\"\ninstall:\n  to_disk: true\n  min_disk_size: 1GiB\n",
            window_now()
        ),
    )?;
    server
        .cli(&[
            "customer",
            "apply",
            "-f",
            customer.to_str().context("path")?,
        ])
        .map(drop)
}

/// The appliance's row of `levee appliance list --json`.
fn row(server: &LeveeServer, mac: &str) -> anyhow::Result<serde_json::Value> {
    let list: serde_json::Value =
        serde_json::from_str(&server.cli(&["appliance", "list", "--json"])?)?;
    list.as_array()
        .and_then(|rows| rows.iter().find(|r| r["mac"] == mac))
        .cloned()
        .with_context(|| format!("{mac} not in appliance list: {list}"))
}

/// A heartbeat after `after` (unix seconds) naming `version` and `slot`.
fn wait_heartbeat(
    server: &LeveeServer,
    mac: &str,
    after: u64,
    version: &str,
    slot: char,
) -> anyhow::Result<()> {
    let what = format!("a heartbeat naming {version} in slot {slot}");
    let slot = slot.to_string();
    wait_until(STEP, &what, || {
        let row = row(server, mac)?;
        let hb = row["last_heartbeat"].as_u64().unwrap_or(0);
        Ok(
            (hb > after && row["image_version"] == version && row["slot"] == slot.as_str())
                .then_some(()),
        )
    })
}

/// Stage 1's line for the root of `slot`.
fn root_line(slot: char) -> String {
    let n = if slot == 'a' { 3 } else { 4 };
    format!("levee-stage1: root on /dev/vda{n} (PARTLABEL=levee-{slot})")
}

fn other(slot: char) -> char {
    if slot == 'a' {
        'b'
    } else {
        'a'
    }
}

/// GRUB's line for a boot of `slot` (`first`: with it first in ORDER, a
/// trial).
fn grub_line(slot: char, first: bool) -> String {
    let s = slot.to_ascii_uppercase();
    if first {
        let o = other(slot).to_ascii_uppercase();
        format!("levee: booting slot {s} (ORDER={s} {o}")
    } else {
        format!("levee: booting slot {s}")
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Waits for `needle` on the console after byte `from`; returns the byte
/// after it.
fn wait_after(vm: &Vm, needle: &str, from: usize) -> anyhow::Result<usize> {
    let r = wait_until(STEP, &format!("`{needle}` on the console"), || {
        let text = vm.console();
        if let Some(i) = text.get(from..).and_then(|t| t.find(needle)) {
            return Ok(Some(from + i + needle.len()));
        }
        ensure!(!vm.exited(), "QEMU exited");
        Ok(None)
    })?;
    eprintln!(
        "{:>6.1} s after QEMU start: {needle}",
        vm.started.elapsed().as_secs_f64()
    );
    Ok(r)
}

/// An update window that holds the present: the hour before to two after.
fn window_now() -> String {
    let h = (unix_now() / 3600) % 24;
    format!("{:02}:00-{:02}:00", (h + 23) % 24, (h + 2) % 24)
}

/// One scenario's world: the base of `firmware` (installed by this test
/// or another), a copy of its server with `releases` published as releases 2, 3, ...,
/// and the machine booted from a fresh overlay of its disk, running
/// release 1 in slot A with its boot committed.
fn start(
    tag: &str,
    firmware: Firmware,
    releases: &[Release],
) -> anyhow::Result<(World, Vm, PathBuf)> {
    let base = base::get(firmware)?;
    let t0 = Instant::now();
    // The installed appliance is bound to the server that installed it:
    // its certificate is signed by that server's CA and its enrollment is
    // in that server's store, it pins that CA, and its image trusts that
    // server's channel root. So the base keeps that server's data
    // directory (stopped right after the disk was) beside the disk, and
    // each scenario runs a server on its own copy of it: a state that
    // matches the disk exactly, which no scenario's publishes, rollouts,
    // reports or blocks can leak into another's.
    let server = LeveeServer::from_snapshot(&base.data())?;
    let dir = tempfile::Builder::new().prefix("levee-update-").tempdir()?;
    // The base may be hours old: its update window must hold the present.
    apply_customer(&server, dir.path())?;
    let net = TestNet::new(tag)?;
    server.start(
        &net,
        DhcpMode::Full,
        &["--https", &format!("{SERVER_IP}:8443")],
    )?;
    let mut world = World {
        server,
        net,
        targets_key: base.targets_key().display().to_string(),
        firmware,
        mac: base::MAC.to_string(),
        dir,
        v: vec![base.version(Release::V1)],
        publish_secs: vec![f64::NAN],
    };
    for r in releases {
        world.publish(&base.release(*r), base.version(*r))?;
    }
    let disk = world.dir.path().join("disk.qcow2");
    overlay(&base.disk(), &disk)?;
    let t_ready = t0.elapsed();
    let vm = world.boot(&disk)?;
    let at = wait_after(&vm, &grub_line('a', false), 0)?;
    let at = wait_after(&vm, &root_line('a'), at)?;
    wait_after(&vm, "boot slot a committed", at)?;
    eprintln!(
        "{tag}: server copied, releases 2-{} published, overlay made: {:.1} s; release 1 booted from the overlay and committed: {:.1} s",
        releases.len() + 1,
        t_ready.as_secs_f64(),
        (t0.elapsed() - t_ready).as_secs_f64()
    );
    Ok((world, vm, disk))
}

/// Runs one scenario in a test of its own, after [`start`] with
/// `firmware` and `releases`, and prints its timings; fails with every
/// log of the test.
fn scenario(
    tag: &str,
    name: &str,
    firmware: Firmware,
    releases: &[Release],
    f: impl FnOnce(&World, Vm, &Path) -> anyhow::Result<()>,
) {
    with_logs(|| {
        let t0 = Instant::now();
        let (world, vm, disk) = start(tag, firmware, releases)?;
        let t_start = t0.elapsed();
        f(&world, vm, &disk).context(name.to_string())?;
        eprintln!(
            "update test `{name}`: base and boot of release 1 {:.0} s, scenario {:.0} s; total {:.0} s",
            t_start.as_secs_f64(),
            (t0.elapsed() - t_start).as_secs_f64(),
            t0.elapsed().as_secs_f64()
        );
        Ok(())
    });
}

/// Runs `f` and fails the test with the servers' logs and every console
/// (the base's install among them when this test built it).
fn with_logs(f: impl FnOnce() -> anyhow::Result<()>) {
    levee_tests::set_test_deadline(DEADLINE);
    let result = f();
    // One file per server and per QEMU start, in start order.
    let mut files: Vec<_> = std::fs::read_dir(log_dir())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with("serve") || n.starts_with("serial-")
            })
        })
        .collect();
    files.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.created()).ok());
    let logs: Vec<(String, String)> = files
        .iter()
        .map(|p| {
            let text = String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
            (p.display().to_string(), text)
        })
        .collect();
    let logs: Vec<(&str, String)> = logs.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    check(result, &logs);
}

#[test]
fn failing_health_check_falls_back_and_is_not_retried() {
    scenario(
        "e2euh",
        "a release failing its health check",
        Firmware::Bios,
        &[Release::Unhealthy],
        |w, vm, _| scenarios::fails_health(w, vm).map(drop),
    );
}

#[test]
fn golden_path_v1_to_v2_then_v3_by_delta() {
    scenario(
        "e2eug",
        "v1 -> v2 -> v3",
        Firmware::Bios,
        &[Release::V2, Release::V3],
        |w, vm, _| scenarios::golden(w, &vm),
    );
}

#[test]
fn golden_path_uefi_v1_to_v2_by_delta() {
    scenario(
        "e2eugu",
        "v1 -> v2 under UEFI",
        Firmware::Uefi,
        &[Release::V2],
        |w, vm, _| scenarios::uefi(w, &vm),
    );
}

#[test]
fn hung_userspace_is_reset_by_the_watchdog() {
    scenario(
        "e2euw",
        "a release whose userspace hangs",
        Firmware::Bios,
        &[Release::Hangs],
        |w, vm, _| scenarios::hangs(w, vm).map(drop),
    );
}

#[test]
fn power_cut_after_commit_converges() {
    scenario(
        "e2eua",
        "a power cut right after the commit",
        Firmware::Bios,
        &[Release::V2],
        |w, vm, disk| scenarios::cut_after_commit(w, vm, disk).map(drop),
    );
}

#[test]
fn power_cut_before_commit_falls_back() {
    scenario(
        "e2euc",
        "a power cut before the commit",
        Firmware::Bios,
        &[Release::V2],
        |w, vm, disk| scenarios::cut_before_commit(w, vm, disk).map(drop),
    );
}
