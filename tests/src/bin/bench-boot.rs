//! Boot-to-report benchmark (issue 2): the time from QEMU start until the
//! test guest's serial console shows `levee-test: reported`, for
//!
//! - `levee serve` in full DHCP mode, HTTP transport (as in the boot tests),
//! - the peer: dnsmasq (DHCP + TFTP + PXE) plus a small Python HTTP server
//!   (`tests/assets/bench-http-server.py`) serving the same kernel and initrd,
//!
//! with the same guest and QEMU. Rounds are interleaved (levee, peer, levee,
//! peer, ...), each in a fresh network namespace. Run as root:
//!
//! ```sh
//! cargo build --workspace --bins
//! cargo run --release -p levee-tests --bin bench-boot -- [--rounds N] [--firmware bios|uefi|both]
//! ```
//!
//! A measurement, not a test: it prints numbers and fails only when a round
//! cannot boot at all or a tool is missing.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use levee_tests::assets::{test_guest, TestGuest};
use levee_tests::net::{TestNet, BRIDGE, SERVER_IP};
use levee_tests::server::{DhcpMode, LeveeServer};
use levee_tests::vm::{Firmware, Vm, VmBuilder};
use levee_tests::{require_tool, target_dir, wait_until, workspace_root};

/// What the guest prints once its report was accepted: the same signal for
/// both servers.
const MARKER: &str = "levee-test: reported";
/// Generous for TCG on a loaded 2-core machine (UEFI is ~25 s when idle).
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
const POLL: Duration = Duration::from_millis(50);
const MAC: &str = "52:54:00:00:0b:01";
const PEER_HTTP_PORT: u16 = 8080;
/// The guest's kernel command line on both sides (levee's template syntax);
/// `no_timer_check` because TCG guests on a loaded host can panic in the
/// IO-APIC timer check.
const LEVEE_CMDLINE: &str =
    "console=ttyS0,115200 no_timer_check levee.url={url} levee.mac={mac} levee.token={token}";

/// Set by SIGINT/SIGTERM; the running round stops and everything is torn
/// down by the handles' `Drop`.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Server {
    Levee,
    Peer,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Levee => "levee",
            Server::Peer => "dnsmasq+python",
        }
    }
}

fn fw_name(fw: Firmware) -> &'static str {
    match fw {
        Firmware::Bios => "bios",
        Firmware::Uefi => "uefi",
    }
}

struct Args {
    rounds: usize,
    firmwares: Vec<Firmware>,
    /// Where to copy every round's logs (server, serial console), if given.
    keep_logs: Option<PathBuf>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        rounds: 5,
        firmwares: vec![Firmware::Bios, Firmware::Uefi],
        keep_logs: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--rounds" => {
                let v = it.next().context("--rounds needs a number")?;
                args.rounds = v
                    .parse()
                    .with_context(|| format!("--rounds {v}: not a number"))?;
                if args.rounds == 0 {
                    bail!("--rounds must be at least 1");
                }
            }
            "--firmware" => {
                let v = it.next().context("--firmware needs bios, uefi or both")?;
                args.firmwares = match v.as_str() {
                    "bios" => vec![Firmware::Bios],
                    "uefi" => vec![Firmware::Uefi],
                    "both" => vec![Firmware::Bios, Firmware::Uefi],
                    _ => bail!("--firmware {v}: expected bios, uefi or both"),
                };
            }
            "--keep-logs" => {
                args.keep_logs = Some(it.next().context("--keep-logs needs a directory")?.into());
            }
            "-h" | "--help" => {
                println!("usage: bench-boot [--rounds N] [--firmware bios|uefi|both] [--keep-logs DIR]   (as root)");
                std::process::exit(0);
            }
            _ => bail!("unknown argument {arg} (try --help)"),
        }
    }
    Ok(args)
}

/// The release `levee` if it is built (the server's own speed is part of
/// what is measured), else the debug one the tests use.
fn levee_binary() -> anyhow::Result<PathBuf> {
    for profile in ["release", "debug"] {
        let path = target_dir().join(profile).join("levee");
        if path.exists() {
            return Ok(path);
        }
    }
    bail!(
        "levee is not built in {}: run `cargo build --workspace --bins` first",
        target_dir().display()
    )
}

fn machine_info() -> String {
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{nproc} cores, {cpu}, kernel {}", kernel.trim())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Steps on the serial console, to see where a difference comes from
/// (label, text). BIOS iPXE prints only to the screen, so BIOS rounds show
/// just the guest's steps.
const STEPS: [(&str, &str); 7] = [
    ("pxe", ">>Start PXE"),         // OVMF's own PXE client starts
    ("nbp", "NBP file downloaded"), // ipxe.efi came over TFTP
    ("ipxe-ip", "Next server:"),    // iPXE got its DHCP answer
    ("kernel", "Linux version"),    // kernel and initrd downloaded, kernel runs
    ("init", "levee-test: init started"),
    ("ip", "levee-test: eth0 has"), // the guest's own DHCP
    ("report", MARKER),
];

/// When each of `STEPS` first showed, in seconds since QEMU was spawned.
struct Boot {
    steps: [Option<f64>; STEPS.len()],
}

impl Boot {
    fn total(&self) -> f64 {
        self.steps[STEPS.len() - 1].unwrap_or(f64::NAN)
    }

    /// Seconds from the previous step seen (or QEMU start) to step `i`.
    fn phase(&self, i: usize) -> Option<f64> {
        let at = self.steps[i]?;
        let before = self.steps[..i].iter().rev().find_map(|t| *t).unwrap_or(0.0);
        Some(at - before)
    }

    fn steps_line(&self) -> String {
        STEPS
            .iter()
            .zip(self.steps)
            .filter_map(|((label, _), t)| t.map(|t| format!("{label} {t:.1}")))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Polls the serial console every 50 ms until the guest reports.
fn time_to_report(vm: &Vm) -> anyhow::Result<Boot> {
    let deadline = vm.started + BOOT_TIMEOUT;
    let mut boot = Boot {
        steps: [None; STEPS.len()],
    };
    loop {
        if STOP.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        // Taken before the read, so a step is never dated later than it was seen.
        let now = vm.started.elapsed().as_secs_f64();
        let console = vm.console();
        for (seen, (_, needle)) in boot.steps.iter_mut().zip(STEPS) {
            if seen.is_none() && console.contains(needle) {
                *seen = Some(now);
            }
        }
        if boot.steps[STEPS.len() - 1].is_some() {
            return Ok(boot);
        }
        // The guest powers off after these, so there is nothing to wait for.
        for failure in ["report to", "no DHCP answer"] {
            if let Some(line) = console.lines().find(|l| l.contains(failure)) {
                bail!("guest failed: {line}");
            }
        }
        if Instant::now() >= deadline {
            bail!("no `{MARKER}` on the serial console after {BOOT_TIMEOUT:?}");
        }
        std::thread::sleep(POLL);
    }
}

/// Prints the end of every log of a failed round (servers, QEMU, serial
/// console), so the failure can be understood without re-running.
fn print_logs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
    {
        let text = read(path);
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(40)..];
        eprintln!("----- {} (last {} lines) -----", path.display(), tail.len());
        for line in tail {
            eprintln!("{line}");
        }
    }
}

/// Copies a round's logs to `--keep-logs DIR`, prefixed with the round.
fn keep_logs(from: &Path, to: &Path, prefix: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    for entry in std::fs::read_dir(from)? {
        let path = entry?.path();
        if let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| n.ends_with(".log"))
        {
            std::fs::copy(&path, to.join(format!("{prefix}-{name}")))?;
        }
    }
    Ok(())
}

fn round_levee(fw: Firmware, guest: &TestGuest, levee: &Path, dir: &Path) -> anyhow::Result<Boot> {
    let mut server = LeveeServer::new()?;
    server.bin = Some(levee.to_path_buf());
    let result = levee_boot(fw, guest, &server, dir);
    // The server's log lives in its own data directory, which goes with it.
    let _ = std::fs::copy(&server.log, dir.join("levee-serve.log"));
    result
}

fn levee_boot(
    fw: Firmware,
    guest: &TestGuest,
    server: &LeveeServer,
    dir: &Path,
) -> anyhow::Result<Boot> {
    server.cli(&[
        "profile",
        "set",
        "default",
        "--kernel",
        guest.kernel.to_str().context("non-UTF-8 path")?,
        "--initrd",
        guest.initrd.to_str().context("non-UTF-8 path")?,
        "--transport",
        "http",
        // Spelled out so both servers boot the same command line, whatever
        // levee's default becomes (the python server's script has the same).
        "--cmdline",
        LEVEE_CMDLINE,
    ])?;
    let net = TestNet::new("bench")?;
    server.start(&net, DhcpMode::Full, &[])?;
    let vm = VmBuilder::new(fw, MAC).start(&net, dir)?;
    let t = time_to_report(&vm)?;
    if !vm
        .console()
        .contains(&format!("reported to http://{SERVER_IP}"))
    {
        bail!("the guest did not report to levee");
    }
    Ok(t)
}

fn round_peer(fw: Firmware, guest: &TestGuest, dir: &Path) -> anyhow::Result<Boot> {
    let tftp = dir.join("tftp");
    std::fs::create_dir(&tftp)?;
    // fs::copy follows Debian's ipxe.efi -> /boot/ipxe.efi symlink, so
    // dnsmasq serves a plain file.
    for name in ["undionly.kpxe", "ipxe.efi"] {
        let src = Path::new("/usr/lib/ipxe").join(name);
        std::fs::copy(&src, tftp.join(name))
            .with_context(|| format!("copying {} (apt-get install ipxe)", src.display()))?;
    }
    let guest_dir = guest
        .kernel
        .parent()
        .context("guest kernel has no directory")?;
    let (dnsmasq_log, http_log) = (dir.join("dnsmasq.log"), dir.join("python-http.log"));

    let net = TestNet::new("bench")?;
    let url = format!("http://{SERVER_IP}:{PEER_HTTP_PORT}");
    net.spawn(
        net.cmd("python3")
            .arg(workspace_root().join("tests/assets/bench-http-server.py"))
            .args(["--bind", SERVER_IP, "--port", &PEER_HTTP_PORT.to_string()])
            .arg("--dir")
            .arg(guest_dir)
            .args(["--url", &url])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&http_log)?),
    )
    .context("cannot start python3")?;

    // The peer's best settings: iPXE gets the script URL at once, the
    // firmware stage the right iPXE binary, no ping check, no-pxedhcp
    // (175.176 = 1) so iPXE does not wait for ProxyDHCP offers, and RAs so it
    // does not wait ~16 s for IPv6.
    net.spawn(
        net.cmd("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--port=0",
                "--user=root",
                "--log-facility=-",
                "--log-dhcp",
                "--no-ping",
                "--bind-interfaces",
            ])
            .arg(format!("--interface={BRIDGE}"))
            .arg("--dhcp-range=10.99.0.100,10.99.0.150,255.255.255.0,1h")
            .arg(format!("--dhcp-range=::,constructor:{BRIDGE},ra-only"))
            .arg("--enable-ra")
            .arg("--dhcp-userclass=set:ipxe,iPXE")
            .arg("--dhcp-match=set:efi,option:client-arch,7")
            .arg("--dhcp-match=set:efi,option:client-arch,9")
            .arg(format!("--dhcp-boot=tag:ipxe,{url}/boot.ipxe"))
            .arg("--dhcp-boot=tag:!ipxe,tag:efi,ipxe.efi")
            .arg("--dhcp-boot=tag:!ipxe,tag:!efi,undionly.kpxe")
            .arg("--dhcp-option=tag:ipxe,encap:175,176,1b")
            .arg("--enable-tftp")
            .arg(format!("--tftp-root={}", tftp.display()))
            .arg(format!("--dhcp-leasefile={}", dir.join("leases").display()))
            .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&dnsmasq_log)?),
    )
    .context("cannot start dnsmasq")?;

    wait_until(
        Duration::from_secs(20),
        "dnsmasq and the python server to listen",
        || {
            let (d, h) = (read(&dnsmasq_log), read(&http_log));
            if d.contains("FAILED")
                || d.contains("failed to")
                || h.contains("Traceback")
                || h.contains("missing")
            {
                bail!("the peer failed to start:\n{d}\n{h}");
            }
            Ok((d.contains("TFTP root is") && h.contains("http listening")).then_some(()))
        },
    )?;

    let vm = VmBuilder::new(fw, MAC).start(&net, dir)?;
    let t = time_to_report(&vm)?;
    let (d, h) = (read(&dnsmasq_log), read(&http_log));
    if !vm.console().contains(&format!("reported to {url}")) || !h.contains("report:") {
        bail!("the guest did not report to the python server");
    }
    if fw == Firmware::Uefi && !(d.contains("sent") && d.contains("ipxe.efi to")) {
        bail!("dnsmasq did not send ipxe.efi over TFTP");
    }
    if !d.contains("RTR-ADVERT") {
        bail!("dnsmasq sent no IPv6 router advertisement: iPXE would wait ~16 s, an unfair comparison");
    }
    Ok(t)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn median(v: &[f64]) -> Option<f64> {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(s[n / 2]),
        _ => Some((s[n / 2 - 1] + s[n / 2]) / 2.0),
    }
}

fn fmt_secs(v: Option<f64>) -> String {
    v.map(|s| format!("{s:.2} s")).unwrap_or_else(|| "-".into())
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench-boot makes network namespaces and tap devices: run it as root");
    }
    for (tool, pkg) in [
        ("ip", "iproute2"),
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("dnsmasq", "dnsmasq-base"),
        ("python3", "python3"),
    ] {
        require_tool(tool, pkg)?;
    }
    for (file, pkg) in [
        ("/usr/lib/ipxe/undionly.kpxe", "ipxe"),
        ("/usr/lib/ipxe/ipxe.efi", "ipxe"),
        ("/usr/lib/ipxe/qemu/efi-virtio.rom", "ipxe-qemu"),
        ("/usr/share/OVMF/OVMF_CODE_4M.fd", "ovmf"),
    ] {
        if !Path::new(file).exists() {
            bail!("{file} is missing: install it with `apt-get install {pkg}`");
        }
    }
    let levee = levee_binary()?;
    let guest = test_guest()?;

    // SAFETY: the handler only stores to an atomic, which is signal-safe.
    unsafe {
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }

    println!("machine: {}", machine_info());
    println!(
        "load average at start: {} (shared machine: numbers are noisy)",
        load_average()
    );
    println!("levee: {}", levee.display());
    println!(
        "qemu accel: {}; rounds: {}; marker: `{MARKER}` on the serial console",
        levee_tests::qemu_accel(),
        args.rounds
    );
    println!();

    // boots[firmware][server]
    let mut boots: Vec<[Vec<Boot>; 2]> = args
        .firmwares
        .iter()
        .map(|_| [Vec::new(), Vec::new()])
        .collect();
    let mut failures = 0;
    'rounds: for round in 1..=args.rounds {
        for (fi, &fw) in args.firmwares.iter().enumerate() {
            for (si, server) in [Server::Levee, Server::Peer].into_iter().enumerate() {
                if STOP.load(Ordering::SeqCst) {
                    break 'rounds;
                }
                let dir = tempfile::Builder::new().prefix("bench-boot-").tempdir()?;
                let result = match server {
                    Server::Levee => round_levee(fw, &guest, &levee, dir.path()),
                    Server::Peer => round_peer(fw, &guest, dir.path()),
                };
                if let Some(to) = &args.keep_logs {
                    let prefix = format!("r{round}-{}-{}", fw_name(fw), server.name());
                    keep_logs(dir.path(), to, &prefix)?;
                }
                match result {
                    Ok(boot) => {
                        println!(
                            "round {round}/{} {:4} {:15} {:6.2} s   (load {}; {})",
                            args.rounds,
                            fw_name(fw),
                            server.name(),
                            boot.total(),
                            load_average(),
                            boot.steps_line()
                        );
                        boots[fi][si].push(boot);
                    }
                    Err(e) if STOP.load(Ordering::SeqCst) => {
                        eprintln!("stopping: {e:#}");
                        break 'rounds;
                    }
                    Err(e) => {
                        failures += 1;
                        eprintln!(
                            "round {round} {} {} FAILED: {e:#}",
                            fw_name(fw),
                            server.name()
                        );
                        print_logs(dir.path());
                    }
                }
            }
        }
    }

    println!();
    println!(
        "{:4}  {:15} {:>9} {:>9}  {:>6}",
        "fw", "server", "median", "best", "rounds"
    );
    for (fi, &fw) in args.firmwares.iter().enumerate() {
        let mut medians = [None, None];
        for (si, server) in [Server::Levee, Server::Peer].into_iter().enumerate() {
            let v: Vec<f64> = boots[fi][si].iter().map(Boot::total).collect();
            medians[si] = median(&v);
            let best = v.iter().copied().min_by(|a, b| a.total_cmp(b));
            // Median time spent before each step (since the previous one
            // seen), to show which phase a difference is in: only pxe..kernel
            // involve the server much; the rest is firmware and the guest.
            let phases: Vec<String> = STEPS
                .iter()
                .enumerate()
                .filter_map(|(i, (label, _))| {
                    let spent: Vec<f64> = boots[fi][si].iter().filter_map(|b| b.phase(i)).collect();
                    median(&spent).map(|m| format!("{label} +{m:.1}"))
                })
                .collect();
            println!(
                "{:4}  {:15} {:>9} {:>9}  {:>6}   phases (median s): {}",
                fw_name(fw),
                server.name(),
                fmt_secs(medians[si]),
                fmt_secs(best),
                v.len(),
                phases.join(", ")
            );
        }
        if let [Some(l), Some(p)] = medians {
            println!(
                "{:4}  levee/peer (median) = {:.2}  (below 1: levee faster)",
                fw_name(fw),
                l / p
            );
        }
    }
    println!("load average at end: {}", load_average());
    if STOP.load(Ordering::SeqCst) {
        bail!("interrupted; partial results above");
    }
    if failures > 0 {
        bail!("{failures} round(s) failed (logs above)");
    }
    Ok(())
}
