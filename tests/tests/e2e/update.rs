//! Issue 13 end to end: an appliance installed over PXE from `levee serve`
//! (release 1) follows its signed channel through real GRUB boot counting,
//! with QEMU's i6300esb watchdog armed by stage 1 and kept by systemd.
//!
//! Each test installs once, then chains its scenarios on that disk, each
//! starting where the last left a real appliance (a fresh overlay per
//! scenario would cost a boot of release 1 each, most of the time under
//! TCG). The two tests run side by side, one core each.
//!
//! `update_golden_path_then_a_failing_health_check`:
//! 1. v1 -> v2: offer, download into slot B, reboot inside the update
//!    window, trial boot, health check, commit; the plug is pulled right
//!    after the commit, and the next boot runs slot B and converges
//!    (heartbeats say v2 and slot b, `levee release status` counts it);
//! 2. v3, whose health check fails (its root file system names another
//!    version than its signed manifest): tried once in slot A, the trial
//!    gives up, GRUB falls back to slot B, the rollback is reported with
//!    the health check's reason, the server blocks that release for this
//!    appliance and it is not downloaded again.
//!
//! `update_cut_trial_and_hung_trial_fall_back`:
//! 1. v2 with the plug pulled during its trial boot, before the commit
//!    (the cable pulled first, so the commit cannot win the race): the next
//!    boot runs slot A (v1), which reports the rollback;
//! 2. v3 whose `/sbin/init` hangs: stage 1 armed the watchdog, nothing
//!    keeps it, QEMU resets the machine, and GRUB falls back to slot A.
//!
//! The releases are the shared test image re-squashed with another version
//! and the channel's TUF root baked in (`levee_tests::release`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context};
use levee_tests::image::image;
use levee_tests::net::{TestNet, SERVER_IP};
use levee_tests::release::{relabel, Tree};
use levee_tests::server::{DhcpMode, LeveeServer};
use levee_tests::vm::{check, Firmware, Vm, VmBuilder};
use levee_tests::{log_dir, run, wait_until};

const DISK_BYTES: u64 = 2 << 30;
const TEST_ARGS: &str = "no_timer_check systemd.journald.forward_to_console=1";
const PROFILE_CMDLINE: &str = "levee.url={url} levee.ca={ca} levee.token={token} \
     levee.root={root_url} levee.sha256={root_sha256} {image_cmdline}";
/// The failing release's trial gives up after this long (default 600 s).
const BAD_HEALTH_SECS: u64 = 40;
/// These tests' deadline (`.config/nextest.toml` matches it).
const DEADLINE: Duration = Duration::from_secs(1320);
/// One step's own limit; every wait is also cut at the test's deadline.
const STEP: Duration = Duration::from_secs(420);

/// What a release (2, 3, ...) is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Good,
    /// Its root file system names another version: the health check fails.
    FailsHealth,
    /// Its `/sbin/init` hangs.
    Hangs,
}

struct World {
    server: LeveeServer,
    net: TestNet,
    dir: tempfile::TempDir,
    mac: String,
    targets_key: String,
    /// Versions by release number - 1 (release 1 is installed).
    v: Vec<String>,
    /// How long `levee release publish` took, by release number - 1.
    publish_secs: Vec<f64>,
}

impl World {
    fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        self.server.cli(args)
    }

    fn version(&self, release: usize) -> &str {
        &self.v[release - 1]
    }

    fn publish(&mut self, dir: &Path) -> anyhow::Result<()> {
        let dir = dir.to_str().context("path")?;
        let key = self.targets_key.as_str();
        let args = ["release", "publish", dir, "--channel", "stable"];
        let t = Instant::now();
        self.cli(&[&args[..], &["--targets-key", key]].concat())?;
        self.publish_secs.push(t.elapsed().as_secs_f64());
        Ok(())
    }

    fn rollout(&self, release: usize) -> anyhow::Result<()> {
        let v = self.version(release);
        self.cli(&["release", "rollout", "stable", v, "--percent", "100"])
            .map(drop)
    }

    /// A boot of the machine: its disk first, the NIC second, a watchdog.
    fn boot(&self, disk: &Path) -> anyhow::Result<Vm> {
        VmBuilder {
            memory_mib: 1024,
            disks: vec![disk.to_path_buf()],
            allow_reboot: true,
            watchdog: true,
            ..VmBuilder::new(Firmware::Bios, &self.mac)
        }
        .start(&self.net, self.dir.path())
    }

    /// The appliance's row of `levee appliance list --json`.
    fn row(&self) -> anyhow::Result<serde_json::Value> {
        let list: serde_json::Value =
            serde_json::from_str(&self.cli(&["appliance", "list", "--json"])?)?;
        list.as_array()
            .and_then(|rows| rows.iter().find(|r| r["mac"] == self.mac.as_str()))
            .cloned()
            .with_context(|| format!("{} not in appliance list: {list}", self.mac))
    }

    /// A heartbeat after `after` (unix seconds) naming `version` and `slot`.
    fn wait_heartbeat(&self, after: u64, version: &str, slot: char) -> anyhow::Result<()> {
        let what = format!("a heartbeat naming {version} in slot {slot}");
        let slot = slot.to_string();
        wait_until(STEP, &what, || {
            let row = self.row()?;
            let hb = row["last_heartbeat"].as_u64().unwrap_or(0);
            Ok(
                (hb > after && row["image_version"] == version && row["slot"] == slot.as_str())
                    .then_some(()),
            )
        })
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

/// Server, channel keys, release 1 imported as the boot image, customer
/// `acme` following `stable` with an update window around now; the other
/// releases squashed while the blank machine boots over PXE, installs
/// release 1 and commits slot A; then all published.
fn setup(tag: &str, mac: &str, kinds: &[Kind]) -> anyhow::Result<(World, Vm, PathBuf)> {
    let t0 = Instant::now();
    let (image_dir, shared) = image()?;
    let server = LeveeServer::new()?;
    let dir = tempfile::Builder::new().prefix("levee-update-").tempdir()?;
    let tree = Tree::unpack(image_dir, shared, &dir.path().join("tree"))?;
    let offline = dir.path().join("offline");
    let offline_s = offline.to_str().context("path")?;
    server.cli(&["release", "keys", "init", "--offline-dir", offline_s])?;
    tree.trust_root(&offline.join("root.json"))?;
    let v: Vec<String> = (1..=kinds.len() + 1)
        .map(|n| format!("{}-u{n}", tree.base_version()))
        .collect();
    let cmdline = format!(
        "{} {TEST_ARGS}",
        shared["cmdline"].as_str().context("cmdline")?
    );
    let v1 = dir.path().join("v1");
    tree.squash(&v[0], &cmdline, &v1)?;
    eprintln!(
        "release 1 unpacked and re-squashed in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let v1_s = v1.to_str().context("path")?;
    server.cli(&["image", "import", v1_s, "--profile", "default"])?;
    server.cli(&["profile", "set", "default", "--cmdline", PROFILE_CMDLINE])?;
    let customer = dir.path().join("acme.yaml");
    std::fs::write(
        &customer,
        format!(
            "customer: acme\nheartbeat_interval: 10s\nupdate_channel: stable\nupdate_window: \"{}\"\ninstall:\n  to_disk: true\n  min_disk_size: 1GiB\n",
            window_now()
        ),
    )?;
    server.cli(&[
        "customer",
        "apply",
        "-f",
        customer.to_str().context("path")?,
    ])?;
    server.cli(&["appliance", "register", "--mac", mac, "--customer", "acme"])?;
    let net = TestNet::new(tag)?;
    server.start(
        &net,
        DhcpMode::Full,
        &["--https", &format!("{SERVER_IP}:8443")],
    )?;
    let mut world = World {
        server,
        net,
        targets_key: offline.join("targets.pem").display().to_string(),
        mac: mac.to_string(),
        dir,
        v,
        publish_secs: Vec::new(),
    };
    world.publish(&v1)?;

    let squash = {
        let dir = world.dir.path().to_path_buf();
        let v = world.v.clone();
        let kinds = kinds.to_vec();
        std::thread::spawn(move || squash_releases(&tree, &dir, &v, &kinds, &cmdline))
    };
    let disk = world.dir.path().join("disk.raw");
    std::fs::File::create(&disk)?.set_len(DISK_BYTES)?;
    let vm = world.boot(&disk)?;
    let at = wait_after(&vm, "rebooting into the installed system", 0)?;
    let at = wait_after(&vm, &grub_line('a', true), at)?;
    wait_after(&vm, "boot slot a committed", at)?;
    squash
        .join()
        .map_err(|_| anyhow::anyhow!("the squash thread panicked"))??;
    for n in 2..=world.v.len() {
        let dir = world.dir.path().join(format!("v{n}"));
        world.publish(&dir)?;
    }
    eprintln!(
        "installed release 1, committed slot A, releases 2-{} published: {:.1} s",
        world.v.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok((world, vm, disk))
}

/// Releases 2.. into `dir/vN`, the hanging one last (it changes the tree).
fn squash_releases(
    tree: &Tree,
    dir: &Path,
    v: &[String],
    kinds: &[Kind],
    cmdline: &str,
) -> anyhow::Result<()> {
    let t = Instant::now();
    let out = |i: usize| dir.join(format!("v{}", i + 2));
    for (i, k) in kinds.iter().enumerate() {
        match k {
            Kind::Good => drop(tree.squash(&v[i + 1], cmdline, &out(i))?),
            // The previous release's root file system under this version.
            Kind::FailsHealth => drop(relabel(
                &out(i
                    .checked_sub(1)
                    .context("a failing release needs one before")?),
                &v[i + 1],
                &format!("{cmdline} levee.health={BAD_HEALTH_SECS}"),
                &out(i),
            )?),
            Kind::Hangs => {}
        }
    }
    if let Some(i) = kinds.iter().position(|k| *k == Kind::Hangs) {
        tree.hang_init()?;
        tree.squash(&v[i + 1], cmdline, &out(i))?;
    }
    eprintln!(
        "releases 2-{} made in {:.1} s",
        kinds.len() + 1,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Rolls out release `r` to a machine running slot `on`, and waits for
/// the agent to reboot into the other slot for it.
fn offer_and_reboot(world: &World, vm: &Vm, r: usize, on: char) -> anyhow::Result<usize> {
    let from = vm.console().len();
    world.rollout(r)?;
    let at = wait_after(vm, &format!("update to release {r} offered"), from)?;
    let to = other(on);
    let at = wait_after(vm, &format!("slot {to} holds release {r}"), at)?;
    wait_after(vm, &format!("rebooting into slot {to} for release {r}"), at)
}

/// v1 -> v2 (release `r`), the plug pulled right after the commit.
fn golden(world: &World, vm: Vm, disk: &Path, r: usize, on: char) -> anyhow::Result<Vm> {
    let v = world.version(r).to_string();
    let to = other(on);
    let t0 = Instant::now();
    let from = vm.console().len();
    let at = offer_and_reboot(world, &vm, r, on)?;
    let t_written = t0.elapsed();
    // The rootfs came by the delta path: only the chunks the running slot
    // lacks were downloaded (the agent's line has the bytes).
    let console = vm.console();
    let delta = console
        .get(from..)
        .unwrap_or_default()
        .lines()
        .find(|l| l.contains("rootfs by delta:"))
        .with_context(|| format!("release {r} did not come by delta"))?;
    eprintln!("golden: {}", delta.trim());
    let pct: f64 = delta
        .split_once("downloaded (")
        .and_then(|(_, rest)| rest.split_once('%'))
        .and_then(|(n, _)| n.parse().ok())
        .with_context(|| format!("no share in: {delta}"))?;
    ensure!(pct <= 25.0, "the delta downloaded {pct}% of the rootfs");
    let at = wait_after(&vm, &grub_line(to, true), at)?;
    let at = wait_after(&vm, &root_line(to), at)?;
    let at = wait_after(&vm, &format!("trial boot of release {r}"), at)?;
    wait_after(&vm, &format!("update to release {r} ({v}) committed"), at)?;
    let t_commit = t0.elapsed();
    vm.power_cut()?;
    let reported = world.reports("committed", &v)?;
    eprintln!(
        "golden: rollout -> written, rebooting {:.1} s; -> committed {:.1} s; the plug pulled, the committed report {} it",
        t_written.as_secs_f64(),
        t_commit.as_secs_f64(),
        if reported > 0 { "reached the server before" } else { "cut off by" }
    );
    // Publish to commit on a running appliance: the publish (done during
    // setup, while release 1 installed) plus the rollout's way to commit.
    let published = world.publish_secs.get(r - 1).copied().unwrap_or(f64::NAN);
    eprintln!(
        "golden: publish -> committed {:.1} s (publish {published:.1} s, rollout -> committed {:.1} s)",
        published + t_commit.as_secs_f64(),
        t_commit.as_secs_f64()
    );

    let cut = unix_now();
    let vm = world.boot(disk)?;
    let at = wait_after(&vm, &grub_line(to, false), 0)?;
    wait_after(&vm, &root_line(to), at)?;
    world.wait_heartbeat(cut, &v, to)?;
    wait_until(STEP, "release status counting v2 committed", || {
        let f = world.fleet(&v)?;
        Ok((f["committed"] == 1 && f["on"] == 1).then_some(()))
    })?;
    let f = world.fleet(world.version(1))?;
    ensure!(f["on"] == 0, "still counted on v1: {f}");
    eprintln!(
        "golden: converged on {v} in slot {to}, {:.1} s after the rollout",
        t0.elapsed().as_secs_f64()
    );
    Ok(vm)
}

/// Release `r` fails its health check: rolled back, reported, blocked,
/// not downloaded again. The machine runs release `running` in slot `on`.
fn fails_health(world: &World, vm: Vm, r: usize, running: usize, on: char) -> anyhow::Result<Vm> {
    let (cur, bad) = (
        world.version(running).to_string(),
        world.version(r).to_string(),
    );
    let to = other(on);
    let t0 = Instant::now();
    let at = offer_and_reboot(world, &vm, r, on)?;
    let at = wait_after(&vm, &grub_line(to, true), at)?;
    let at = wait_after(&vm, &root_line(to), at)?;
    let at = wait_after(&vm, &format!("trial boot of release {r}"), at)?;
    let at = wait_after(&vm, &format!("not healthy after {BAD_HEALTH_SECS} s"), at)?;
    let at = wait_after(&vm, &grub_line(on, false), at)?;
    wait_after(&vm, &root_line(on), at)?;
    let why = format!("the running image says version {cur}, the update installed {bad}");
    let reason = world.wait_rollback(r, &why)?;
    eprintln!(
        "failing health check: back on {cur}, rollback reported {:.1} s after the rollout: {reason}",
        t0.elapsed().as_secs_f64()
    );
    // Not retried: two heartbeats on the old release later, still one
    // download of it, and the server says it is blocked.
    world.wait_heartbeat(unix_now() + 10, &cur, on)?;
    ensure!(
        world.reports("downloading", &bad)? == 1,
        "the failed release was downloaded again"
    );
    let shown = world.server.appliance(&world.mac)?.context("gone")?;
    ensure!(
        shown["updates"]["offer"].is_null(),
        "still offered: {shown}"
    );
    let text = world.cli(&["appliance", "show", &world.mac])?;
    ensure!(text.contains("BLOCKED"), "not shown as blocked: {text}");
    Ok(vm)
}

/// The plug pulled during release `r`'s trial, before its commit: the
/// next boot runs the old slot (release `running` in `on`).
fn cut_before_commit(
    world: &World,
    vm: Vm,
    disk: &Path,
    r: usize,
    running: usize,
    on: char,
) -> anyhow::Result<Vm> {
    let (cur, v) = (
        world.version(running).to_string(),
        world.version(r).to_string(),
    );
    let to = other(on);
    let t0 = Instant::now();
    let at = offer_and_reboot(world, &vm, r, on)?;
    // The cable first: the trial can pull no configuration and send no
    // heartbeat, so it cannot commit before the cut.
    let tap = vm.tap.clone().context("the machine has no tap")?;
    run(world.net.cmd("ip").args(["link", "set", &tap, "down"]))?;
    let at = wait_after(&vm, &grub_line(to, true), at)?;
    wait_after(&vm, &format!("trial boot of release {r}"), at)?;
    vm.power_cut()?;
    ensure!(
        !vm.console()
            .contains(&format!("update to release {r} ({v}) committed")),
        "release {r} committed before the cut"
    );
    let cut = unix_now();
    let vm = world.boot(disk)?;
    let at = wait_after(&vm, &grub_line(on, false), 0)?;
    wait_after(&vm, &root_line(on), at)?;
    world.wait_heartbeat(cut, &cur, on)?;
    let reason = world.wait_rollback(r, "did not commit")?;
    eprintln!(
        "cut before commit: back on {cur} in slot {on}, rollback reported {:.1} s after the rollout: {reason}",
        t0.elapsed().as_secs_f64()
    );
    Ok(vm)
}

/// Release `r` hangs in userspace before systemd: the watchdog stage 1
/// armed resets the machine, and GRUB goes back to slot `on`.
fn hangs(world: &World, vm: Vm, r: usize, running: usize, on: char) -> anyhow::Result<Vm> {
    let cur = world.version(running).to_string();
    let to = other(on);
    let t0 = Instant::now();
    let at = offer_and_reboot(world, &vm, r, on)?;
    let at = wait_after(&vm, &grub_line(to, true), at)?;
    let at = wait_after(&vm, &root_line(to), at)?;
    let at = wait_after(&vm, "levee-stage1: hardware watchdog armed", at)?;
    let at = wait_after(&vm, "levee-test: this init hangs", at)?;
    let hung = Instant::now();
    let at = wait_after(&vm, &grub_line(on, false), at)?;
    let reset = hung.elapsed();
    wait_after(&vm, &root_line(on), at)?;
    let reason = world.wait_rollback(r, "did not commit")?;
    world.wait_heartbeat(unix_now(), &cur, on)?;
    eprintln!(
        "hung userspace: reset {:.1} s after the hang, back on {cur}, rollback reported {:.1} s after the rollout: {reason}",
        reset.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    Ok(vm)
}

/// Runs `f` and fails the test with the server's log and every console.
fn with_logs(f: impl FnOnce() -> anyhow::Result<World>) {
    levee_tests::set_test_deadline(DEADLINE);
    let mut logs: Vec<(String, String)> = Vec::new();
    let result = f().map(|world| logs.push(("levee serve".into(), world.server.log_text())));
    if result.is_err() {
        if let Ok(text) = std::fs::read_to_string(log_dir().join("serve.log")) {
            logs.push(("levee serve".into(), text));
        }
    }
    // One file per QEMU start, in start order.
    let mut consoles: Vec<_> = std::fs::read_dir(log_dir())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("serial-"))
        })
        .collect();
    consoles.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    for p in consoles {
        let text = String::from_utf8_lossy(&std::fs::read(&p).unwrap_or_default()).into_owned();
        logs.push((p.display().to_string(), text));
    }
    let logs: Vec<(&str, String)> = logs.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    check(result, &logs);
}

#[test]
fn update_golden_path_then_a_failing_health_check() {
    with_logs(|| {
        let t0 = Instant::now();
        let (world, vm, disk) = setup(
            "e2eug",
            "52:54:00:0d:00:01",
            &[Kind::Good, Kind::FailsHealth],
        )?;
        let t_setup = t0.elapsed();
        let vm = golden(&world, vm, &disk, 2, 'a').context("v1 -> v2")?;
        let t_golden = t0.elapsed();
        fails_health(&world, vm, 3, 2, 'b').context("a release failing its health check")?;
        eprintln!(
            "update test 1: install {:.0} s, v1 -> v2 with a cut after the commit {:.0} s, failing health check {:.0} s; total {:.0} s",
            t_setup.as_secs_f64(),
            (t_golden - t_setup).as_secs_f64(),
            (t0.elapsed() - t_golden).as_secs_f64(),
            t0.elapsed().as_secs_f64()
        );
        Ok(world)
    });
}

#[test]
fn update_cut_trial_and_hung_trial_fall_back() {
    with_logs(|| {
        let t0 = Instant::now();
        let (world, vm, disk) = setup("e2euc", "52:54:00:0d:00:02", &[Kind::Good, Kind::Hangs])?;
        let t_setup = t0.elapsed();
        let vm =
            cut_before_commit(&world, vm, &disk, 2, 1, 'a').context("cut before the commit")?;
        let t_cut = t0.elapsed();
        hangs(&world, vm, 3, 1, 'a').context("a release whose userspace hangs")?;
        eprintln!(
            "update test 2: install {:.0} s, cut before the commit {:.0} s, hung trial {:.0} s; total {:.0} s",
            t_setup.as_secs_f64(),
            (t_cut - t_setup).as_secs_f64(),
            (t0.elapsed() - t_cut).as_secs_f64(),
            t0.elapsed().as_secs_f64()
        );
        Ok(world)
    });
}
