//! Issue 4, end to end: a blank VM boots over PXE from `levee serve` (full
//! DHCP, `--https` on), enrolls with the token in its boot script, pulls
//! its customer's configuration and install plan over mutual TLS, installs
//! itself to its disk, reboots from that disk and reports in with its slot
//! and image version; a disk holding anything else is refused and left
//! byte-identical; an unregistered machine waits, pending, until approved.
//! Once installed, an attacker on the same bridge fetches the appliance's
//! boot script and tries to enroll in its place: refused, and the
//! appliance keeps heartbeating and pulling its configuration (issue 11).
//!
//! The appliance image is the one tests/image.rs builds (once per target
//! directory, tests/src/image.rs). The test imports a copy whose own kernel
//! arguments add `no_timer_check` (the IO-APIC timer check can fail under
//! a loaded TCG and panic) and forward the journal to the serial console,
//! so the disk boot gets them too.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context};
use levee_tests::image::image;
use levee_tests::net::{TestNet, SERVER_IP};
use levee_tests::server::{DhcpMode, LeveeServer};
use levee_tests::vm::{check, Firmware, Vm, VmBuilder};
use levee_tests::{require_tool, run, wait_until};

use levee_provisioner::store::testing::PgServer;

use crate::offsite::{Backups, STORE_PORT};

pub(crate) const CUSTOMER: &str = "acme";
/// A test disk: room for the layout's smallest slots (256 MiB each).
const DISK_BYTES: u64 = 2 << 30;
/// What the imported image adds to its own kernel arguments.
const TEST_ARGS: &str = "no_timer_check systemd.journald.forward_to_console=1";
/// The boot profile's command line (provisioner/src/boot.rs has the
/// variables); the image's own arguments carry the console.
const PROFILE_CMDLINE: &str = "levee.url={url} levee.ca={ca} levee.token={token} \
     levee.root={root_url} levee.sha256={root_sha256} {image_cmdline}";
/// Whole install under TCG with another VM on the second core: generous.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(480);

/// One test's world: the server with the image as its default profile and
/// customer `acme`, the network, and a directory for disks and logs.
pub(crate) struct World {
    pub(crate) server: LeveeServer,
    pub(crate) net: TestNet,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) image: serde_json::Value,
    /// The customer's file share, schedule, recovery key and offsite store
    /// (issue 14), for the test that checks backups.
    pub(crate) backups: Option<Backups>,
    /// `levee serve`'s pid.
    pub(crate) pid: u32,
    /// The customer's YAML, as applied.
    pub(crate) customer_yaml: PathBuf,
    /// The PostgreSQL the server keeps its state in (`None`: SQLite); last,
    /// so it outlives the server.
    pub(crate) _pg: Option<PgServer>,
}

impl World {
    fn new(tag: &str, to_disk: bool) -> anyhow::Result<World> {
        World::with(tag, to_disk, false, false)
    }

    /// `backups`: the customer also backs up a Samba share on the test
    /// network and replicates to `levee serve --store` (offsite.rs).
    /// `postgres`: the state is in a PostgreSQL server of the test's own.
    fn with(tag: &str, to_disk: bool, backups: bool, postgres: bool) -> anyhow::Result<World> {
        let (image_dir, image) = image()?;
        let dir = tempfile::Builder::new().prefix("levee-e2e-").tempdir()?;
        let staged = dir.path().join("image");
        std::fs::create_dir_all(&staged)?;
        for f in ["vmlinuz", "initrd.img", "rootfs.squashfs"] {
            std::os::unix::fs::symlink(image_dir.join(f), staged.join(f))?;
        }
        let mut manifest = image.clone();
        manifest["cmdline"] = format!(
            "{} {TEST_ARGS}",
            image["cmdline"].as_str().context("image.json cmdline")?
        )
        .into();
        std::fs::write(
            staged.join("image.json"),
            serde_json::to_vec_pretty(&manifest)?,
        )?;

        let pg = postgres.then(PgServer::start);
        let mut server = LeveeServer::new()?;
        server.database = pg.as_ref().map(|pg| pg.create_db("levee"));
        server.cli(&[
            "image",
            "import",
            staged.to_str().context("path")?,
            "--profile",
            "default",
        ])?;
        server.cli(&["profile", "set", "default", "--cmdline", PROFILE_CMDLINE])?;
        let net = TestNet::new(tag)?;
        let (backups, extra_yaml) = match backups {
            true => {
                let (b, yaml) = Backups::prepare(&server, &net, dir.path())?;
                (Some(b), yaml)
            }
            false => (None, String::new()),
        };
        let customer = dir.path().join("acme.yaml");
        std::fs::write(
            &customer,
            format!(
                "customer: {CUSTOMER}\nheartbeat_interval: 10s\ninstall:\n  to_disk: {to_disk}\n  min_disk_size: 1GiB\n{extra_yaml}"
            ),
        )?;
        server.cli(&[
            "customer",
            "apply",
            "-f",
            customer.to_str().context("path")?,
        ])?;
        let https = format!("{SERVER_IP}:8443");
        let store = format!("{SERVER_IP}:{STORE_PORT}");
        let mut args = vec!["--https", &https];
        if backups.is_some() {
            args.extend(["--store", &store]);
        }
        let pid = server.start(&net, DhcpMode::Full, &args)?;
        Ok(World {
            server,
            net,
            dir,
            image: manifest,
            backups,
            pid,
            customer_yaml: customer,
            _pg: pg,
        })
    }

    fn register(&self, mac: &str) -> anyhow::Result<()> {
        self.server.cli(&[
            "appliance",
            "register",
            "--mac",
            mac,
            "--customer",
            CUSTOMER,
        ])?;
        Ok(())
    }

    /// A sparse raw disk of `DISK_BYTES`.
    fn blank_disk(&self) -> anyhow::Result<PathBuf> {
        self.blank_disk_named("disk.raw")
    }

    /// A sparse raw disk of `DISK_BYTES` called `name` in the test's
    /// directory.
    pub(crate) fn blank_disk_named(&self, name: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join(name);
        std::fs::File::create(&path)?.set_len(DISK_BYTES)?;
        Ok(path)
    }

    fn version(&self) -> &str {
        self.image["version"].as_str().unwrap_or("?")
    }
}

/// Issue 11: a host on the same bridge fetches the installed appliance's
/// boot script and enrolls with its own key. It must be refused, and the
/// appliance must keep working: heartbeats (each with a configuration
/// revalidation) go on, and no request of it is refused.
fn attacker_tries_to_enroll(world: &World, mac: &str) -> anyhow::Result<()> {
    use levee_agent::enroll::{request_enrollment, Attempt, NewKey};
    use std::io::{Read, Write};
    let attacker = world.net.add_host("10.99.0.9/24")?;
    let refusals_before = world
        .server
        .log_text()
        .matches("mTLS request refused")
        .count();
    let mac_owned = mac.to_string();
    let attempted = unix_now();
    let outcome = attacker
        .thread(move || {
            let mut s = std::net::TcpStream::connect((SERVER_IP, 80))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            write!(
                s,
                "GET /boot/{mac_owned}.ipxe HTTP/1.1\r\nHost: {SERVER_IP}\r\nConnection: close\r\n\r\n"
            )?;
            let mut script = String::new();
            s.read_to_string(&mut script)?;
            // Whatever the script gives (a token, or none at all).
            let token = script
                .split_whitespace()
                .find_map(|w| w.strip_prefix("levee.token="))
                .unwrap_or("no-token-was-offered")
                .to_string();
            let key = NewKey::generate("attacker")?;
            let req = levee_proto::enroll::EnrollmentRequest {
                token,
                mac: mac_owned,
                csr_pem: key.csr_pem,
                facts: Default::default(),
            };
            Ok(match request_enrollment(&format!("http://{SERVER_IP}"), &req) {
                Ok(Attempt::Enrolled(_)) => Err("the attacker got a certificate".to_string()),
                Ok(Attempt::Pending(_)) => Err("the attacker's key was taken as pending".to_string()),
                Err(e) => Ok(e.to_string()),
            })
        })
        .join()
        .map_err(|_| anyhow::anyhow!("attacker thread panicked"))??;
    let refusal = outcome.map_err(|e| anyhow::anyhow!("{e}"))?;
    eprintln!("attacker's enrollment refused: {refusal}");
    // Two heartbeats after the attempt (interval 10 s), so at least one
    // configuration revalidation too.
    wait_until(
        Duration::from_secs(60),
        "two heartbeats after the attack",
        || {
            let a = show(world, mac)?.context("appliance gone")?;
            let hb = a["appliance"]["last_heartbeat"].as_u64().unwrap_or(0);
            Ok((hb > attempted + 10).then_some(()))
        },
    )?;
    let a = show(world, mac)?.context("appliance gone")?;
    ensure!(
        steps(&a, "enrolled") == 1,
        "{} enrollments",
        steps(&a, "enrolled")
    );
    let refusals = world
        .server
        .log_text()
        .matches("mTLS request refused")
        .count();
    ensure!(
        refusals == refusals_before,
        "the appliance's requests were refused after the attack"
    );
    Ok(())
}

/// A blank BIOS box (a blank disk `disk_name` first in the boot order, the
/// NIC second) network-booted and installed as any new appliance: returns
/// its VM once it is `installed`, back from its disk. A failure prints its
/// serial console.
pub(crate) fn install_blank(world: &World, mac: &str, disk_name: &str) -> anyhow::Result<Vm> {
    let disk = world.blank_disk_named(disk_name)?;
    let vm = VmBuilder {
        memory_mib: 1024,
        disks: vec![disk],
        allow_reboot: true,
        ..VmBuilder::new(Firmware::Bios, mac)
    }
    .start(&world.net, world.dir.path())?;
    let mut phases = Phases::new(world, &vm, mac);
    if let Err(e) = phases.wait(&["installed"], INSTALL_TIMEOUT) {
        eprintln!("===== serial console of {mac} =====\n{}", vm.console());
        return Err(e);
    }
    Ok(vm)
}

/// `levee appliance show MAC --json`: the record and its history.
pub(crate) fn show(world: &World, mac: &str) -> anyhow::Result<Option<serde_json::Value>> {
    world.server.appliance(mac)
}

fn state_of(a: &serde_json::Value) -> &str {
    a["appliance"]["state"].as_str().unwrap_or("")
}

fn steps(a: &serde_json::Value, step: &str) -> usize {
    a["events"]
        .as_array()
        .map(|e| e.iter().filter(|e| e["step"] == step).count())
        .unwrap_or(0)
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Console lines that split the install into phases (the agent's journal
/// reaches the console: `systemd.journald.forward_to_console=1`).
const MARKERS: &[&str] = &[
    "rebooting into the installed system",
    "levee: booting slot A",
    "root on /dev/vda3 (PARTLABEL=levee-a)",
    "boot slot a committed",
];

/// Follows one machine's state from QEMU start, once a second, printing
/// each new state (and each console marker) with its time.
struct Phases<'a> {
    world: &'a World,
    vm: &'a Vm,
    mac: String,
    seen: Vec<(String, Duration)>,
}

impl<'a> Phases<'a> {
    fn new(world: &'a World, vm: &'a Vm, mac: &str) -> Phases<'a> {
        Phases {
            world,
            vm,
            mac: mac.into(),
            seen: Vec::new(),
        }
    }

    /// When `state` (or a console marker) was first seen (QEMU start to
    /// the poll that saw it).
    fn at(&self, state: &str) -> Option<Duration> {
        self.seen.iter().find(|(s, _)| s == state).map(|(_, t)| *t)
    }

    fn note(&mut self, what: &str) {
        if self.at(what).is_none() {
            let t = self.vm.started.elapsed();
            eprintln!(
                "{}: {what} at {:.1} s after QEMU start",
                self.mac,
                t.as_secs_f64()
            );
            self.seen.push((what.to_string(), t));
        }
    }

    /// Polls until the state is one of `want`; a `failed` state that is not
    /// wanted, or QEMU exiting, fails at once.
    fn wait(&mut self, want: &[&str], timeout: Duration) -> anyhow::Result<serde_json::Value> {
        // This wait's own limit, cut at the test's one deadline.
        let started = Instant::now();
        let deadline = (started + timeout).min(levee_tests::deadline());
        loop {
            let console = self.vm.console();
            for m in MARKERS {
                if console.contains(m) {
                    self.note(m);
                }
            }
            if let Some(a) = show(self.world, &self.mac)? {
                let state = state_of(&a).to_string();
                self.note(&state);
                if want.contains(&state.as_str()) {
                    return Ok(a);
                }
                if state == "failed" {
                    bail!(
                        "{} failed: {}",
                        self.mac,
                        a["appliance"]["state_reason"].as_str().unwrap_or("?")
                    );
                }
            }
            ensure!(!self.vm.exited(), "QEMU exited");
            if Instant::now() >= deadline {
                bail!(
                    "gave up after {:.0} s ({} s limit or the test's deadline) waiting for {} to be {want:?} (seen {:?})",
                    started.elapsed().as_secs_f64(),
                    timeout.as_secs(),
                    self.mac,
                    self.seen
                );
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// Waits for `needle` on the serial console.
fn wait_console(vm: &Vm, needle: &str, timeout: Duration) -> anyhow::Result<()> {
    wait_until(timeout, &format!("`{needle}` on the console"), || {
        ensure!(!vm.exited(), "QEMU exited");
        Ok(vm.console().contains(needle).then_some(()))
    })
}

/// `backups`: with a Samba share and offsite replication (offsite.rs);
/// `fleet`: on PostgreSQL, and then served by a second server (fleet.rs).
fn golden_path(tag: &str, firmware: Firmware, mac: &str, backups: bool, fleet: bool) {
    let mut logs = Vec::new();
    let result = (|| -> anyhow::Result<()> {
        let world = World::with(tag, true, backups, fleet)?;
        world.register(mac)?;
        let disk = world.blank_disk()?;
        // A blank box: blank disk first in the boot order, the NIC second.
        let vm = VmBuilder {
            memory_mib: 1024,
            disks: vec![disk.clone()],
            allow_reboot: true,
            ..VmBuilder::new(firmware, mac)
        }
        .start(&world.net, world.dir.path())?;
        let r = (|| -> anyhow::Result<()> {
            let mut phases = Phases::new(&world, &vm, mac);
            phases.wait(&["enrolled", "installing", "installed"], INSTALL_TIMEOUT)?;
            let installing = phases.wait(&["installing", "installed"], INSTALL_TIMEOUT)?;
            // The boot steps of the network boot, counted when the install
            // starts: the disk boot must add none.
            let (dhcp, scripts) = (steps(&installing, "dhcp"), steps(&installing, "script"));
            ensure!(scripts == 1, "{scripts} boot scripts before the install");
            let a = phases.wait(&["installed"], INSTALL_TIMEOUT)?;
            let t_enrolled = phases
                .at("enrolled")
                .or(phases.at("installing"))
                .context("no enrolled time")?;
            let t_installing = phases.at("installing").context("no installing time")?;
            let t_installed = phases.at("installed").context("no installed time")?;
            eprintln!(
                "{firmware:?} enroll+install: QEMU start -> enrolled {:.1} s, -> installing {:.1} s, -> installed (back from disk) {:.1} s",
                t_enrolled.as_secs_f64(),
                t_installing.as_secs_f64(),
                t_installed.as_secs_f64()
            );
            if let (Some(reboot), Some(grub)) = (phases.at(MARKERS[0]), phases.at(MARKERS[1])) {
                eprintln!(
                    "{firmware:?} phases: install {:.1} s, reboot to GRUB {:.1} s, GRUB to `installed` {:.1} s",
                    (reboot.saturating_sub(t_installing)).as_secs_f64(),
                    (grub.saturating_sub(reboot)).as_secs_f64(),
                    (t_installed.saturating_sub(grub)).as_secs_f64()
                );
            }

            // Back from its disk: GRUB's slot A, the root on the disk.
            let console = vm.console();
            ensure!(
                console.contains("levee-stage1: root on /dev/vda3 (PARTLABEL=levee-a)"),
                "the second boot did not take its root from slot A"
            );
            ensure!(
                steps(&a, "dhcp") == dhcp && steps(&a, "script") == scripts,
                "a PXE request after the install: dhcp {dhcp} -> {}, script {scripts} -> {}",
                steps(&a, "dhcp"),
                steps(&a, "script")
            );
            // The credential came along on the data partition: one enrollment.
            ensure!(
                steps(&a, "enrolled") == 1,
                "{} enrollments",
                steps(&a, "enrolled")
            );
            // The slot is committed after the first heartbeat from disk.
            wait_console(&vm, "boot slot a committed", Duration::from_secs(120))?;

            // The operator's view.
            let list: serde_json::Value =
                serde_json::from_str(&world.server.cli(&["appliance", "list", "--json"])?)?;
            let row = list
                .as_array()
                .and_then(|rows| rows.iter().find(|r| r["mac"] == mac))
                .with_context(|| format!("{mac} not in appliance list: {list}"))?;
            ensure!(row["state"] == "installed", "list: {row}");
            ensure!(row["slot"] == "a", "list: {row}");
            ensure!(row["image_version"] == world.version(), "list: {row}");
            let hb = row["last_heartbeat"].as_u64().context("no heartbeat")?;
            ensure!(unix_now().saturating_sub(hb) < 60, "old heartbeat: {row}");
            ensure!(row["customer"] == CUSTOMER, "list: {row}");
            // Still no second network boot.
            let log = world.server.log_text();
            let rendered = log
                .lines()
                .filter(|l| l.contains("boot script rendered") && l.contains(mac))
                .count();
            ensure!(rendered == 1, "{rendered} boot scripts rendered for {mac}");
            attacker_tries_to_enroll(&world, mac)?;
            if let Some(b) = &world.backups {
                b.check(&world.server, mac)?;
                b.recover(&world, &vm, &disk, mac)?;
            }
            if fleet {
                crate::fleet::served_by_a_second_server(&world, &vm, mac, tag)?;
            }
            Ok(())
        })();
        logs.push(("levee serve", world.server.log_text()));
        logs.push(("serial console", vm.console()));
        r
    })();
    check(result, &logs);
}

#[test]
fn install_bios_golden_path() {
    golden_path("e2eib", Firmware::Bios, "52:54:00:04:01:01", true, false);
}

#[test]
fn install_uefi_golden_path() {
    golden_path("e2eiu", Firmware::Uefi, "52:54:00:04:01:02", false, true);
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let out = run(Command::new("sha256sum").arg(path))?;
    Ok(out.split_whitespace().next().unwrap_or("").to_string())
}

/// A disk holding someone else's partition table is never touched: the
/// appliance ends `failed` with the disk and the reason, and the disk is
/// byte-identical.
#[test]
fn install_refuses_a_foreign_disk() {
    let mac = "52:54:00:04:01:03";
    let mut logs = Vec::new();
    let result = (|| -> anyhow::Result<()> {
        require_tool("sfdisk", "fdisk")?;
        let world = World::new("e2eif", true)?;
        world.register(mac)?;
        let disk = world.blank_disk()?;
        let mut sfdisk = Command::new("sfdisk")
            .arg("--quiet")
            .arg(&disk)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()?;
        {
            use std::io::Write;
            let mut stdin = sfdisk.stdin.take().context("sfdisk stdin")?;
            stdin.write_all(b"label: dos\nstart=2048, size=204800, type=83\n")?;
        }
        ensure!(sfdisk.wait()?.success(), "sfdisk on the host failed");
        let before = sha256_file(&disk)?;
        // The NIC first: SeaBIOS would try to boot the foreign MBR.
        let vm = VmBuilder {
            memory_mib: 1024,
            disks: vec![disk.clone()],
            nic_first: true,
            ..VmBuilder::new(Firmware::Bios, mac)
        }
        .start(&world.net, world.dir.path())?;
        let r = (|| -> anyhow::Result<()> {
            let mut phases = Phases::new(&world, &vm, mac);
            let a = phases.wait(&["failed"], INSTALL_TIMEOUT)?;
            let reason = a["appliance"]["state_reason"].as_str().unwrap_or("");
            eprintln!("foreign disk: {reason}");
            ensure!(
                reason.contains("/dev/vda")
                    && reason.contains("partition table")
                    && reason.contains("never touched"),
                "the reason names the disk and why: {reason}"
            );
            // SAFETY: kill(2) on the QEMU this test started.
            unsafe { libc::kill(vm.pid as i32, libc::SIGKILL) };
            wait_until(Duration::from_secs(30), "QEMU to stop", || {
                Ok(vm.exited().then_some(()))
            })?;
            ensure!(
                sha256_file(&disk)? == before,
                "the foreign disk was changed"
            );
            Ok(())
        })();
        logs.push(("levee serve", world.server.log_text()));
        logs.push(("serial console", vm.console()));
        r
    })();
    check(result, &logs);
}

/// A machine ops did not register waits, pending, with no certificate and
/// no configuration, until `levee appliance approve`; then it enrolls by
/// itself, without a reboot.
#[test]
fn enroll_unregistered_waits_for_approval() {
    let mac = "52:54:00:04:01:04";
    let mut logs = Vec::new();
    let result = (|| -> anyhow::Result<()> {
        let world = World::new("e2eip", false)?;
        // `-no-reboot`: a reboot would end QEMU and fail the test.
        let vm = VmBuilder {
            memory_mib: 1024,
            ..VmBuilder::new(Firmware::Bios, mac)
        }
        .start(&world.net, world.dir.path())?;
        let r = (|| -> anyhow::Result<()> {
            let pending = wait_until(INSTALL_TIMEOUT, "the pending enrollment", || {
                ensure!(!vm.exited(), "QEMU exited");
                Ok(show(&world, mac)?.filter(|a| {
                    state_of(a) == "pending" && a["appliance"]["pending_key"].is_string()
                }))
            })?;
            let t_pending = vm.started.elapsed();
            eprintln!(
                "{mac}: pending (key kept) at {:.1} s after QEMU start",
                t_pending.as_secs_f64()
            );
            let id = pending["appliance"]["id"].as_i64().context("id")?;
            let served = |log: &str| {
                log.lines().any(|l| {
                    l.contains("configuration served") && l.contains(&format!("appliance={id} "))
                })
            };
            // Three answers "pending" (202) later it still waits, and has
            // nothing.
            wait_until(Duration::from_secs(60), "three pending answers", || {
                ensure!(!vm.exited(), "QEMU exited");
                let log = world.server.log_text();
                let answered = log
                    .lines()
                    .filter(|l| l.contains("/api/v1/enroll") && l.contains("status=202"))
                    .count();
                Ok((answered >= 3).then_some(()))
            })?;
            let a = show(&world, mac)?.context("gone")?;
            ensure!(state_of(&a) == "pending", "{a}");
            ensure!(a["appliance"]["cert_fingerprint"].is_null(), "{a}");
            ensure!(a["appliance"]["customer"].is_null(), "{a}");
            ensure!(
                !served(&world.server.log_text()),
                "config served while pending"
            );
            ensure!(!vm.exited(), "QEMU exited while pending");

            world
                .server
                .cli(&["appliance", "approve", mac, "--customer", CUSTOMER])?;
            let approved = Instant::now();
            let mut phases = Phases::new(&world, &vm, mac);
            let a = phases.wait(&["enrolled"], Duration::from_secs(120))?;
            ensure!(a["appliance"]["cert_fingerprint"].is_string(), "{a}");
            wait_until(
                Duration::from_secs(120),
                "its configuration and heartbeat",
                || {
                    let a = show(&world, mac)?.context("gone")?;
                    Ok((served(&world.server.log_text())
                        && a["appliance"]["last_heartbeat"].is_u64())
                    .then_some(()))
                },
            )?;
            eprintln!(
                "{mac}: approval -> enrolled, configuration and heartbeat in {:.1} s (no reboot)",
                approved.elapsed().as_secs_f64()
            );
            let a = show(&world, mac)?.context("gone")?;
            ensure!(state_of(&a) == "enrolled", "{a}");
            ensure!(steps(&a, "script") == 1, "it booted again: {a}");
            ensure!(!vm.exited(), "QEMU exited");
            Ok(())
        })();
        logs.push(("levee serve", world.server.log_text()));
        logs.push(("serial console", vm.console()));
        r
    })();
    check(result, &logs);
}
