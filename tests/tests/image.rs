//! Issue 3: the appliance image. Builds it with `levee image build` (once
//! per test process, cached across processes under the target directory,
//! a file lock sharing it between parallel test binaries), boots it in QEMU
//! straight from `-kernel/-initrd` with user-mode networking (the guest's
//! 10.0.2.2 is the host's loopback), and serves rootfs.squashfs and the
//! report endpoint from a tiny HTTP server in this process.
//!
//! Needs root (mmdebstrap) and the Debian packages mmdebstrap,
//! squashfs-tools, zstd, kmod, binutils, qemu-system-x86; a missing tool
//! fails the test, never skips it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use levee_tests::image::{image, levee_build, tools, work_dir, FileLock};
use levee_tests::{binary, require_tool, target_dir, wait_until, workspace_root};

const MAC: &str = "52:54:00:12:34:56";

/// A tiny HTTP/1.1 server: GET serves files from a directory, POST to the
/// report path records the JSON body.
struct Server {
    port: u16,
    reports: Arc<Mutex<Vec<(Instant, serde_json::Value)>>>,
}

impl Server {
    fn start(root: PathBuf) -> anyhow::Result<Server> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let reports = Arc::new(Mutex::new(Vec::new()));
        let r = reports.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (root, r) = (root.clone(), r.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &root, &r);
                });
            }
        });
        Ok(Server { port, reports })
    }

    fn reports(&self) -> Vec<(Instant, serde_json::Value)> {
        self.reports.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

fn serve(
    conn: TcpStream,
    root: &Path,
    reports: &Mutex<Vec<(Instant, serde_json::Value)>>,
) -> anyhow::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or("").to_string(),
    );
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut conn = conn;
    match method {
        "POST" if path == "/api/v1/report" => {
            let mut body = vec![0u8; length];
            reader.read_exact(&mut body)?;
            let value: serde_json::Value = serde_json::from_slice(&body)?;
            if let Ok(mut v) = reports.lock() {
                v.push((Instant::now(), value));
            }
            conn.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")?;
        }
        "GET" => {
            let name = path.trim_start_matches('/');
            levee_tests::http::respond_file(
                &mut conn,
                (!name.contains("..")).then(|| std::fs::read(root.join(name))),
            )?;
        }
        _ => conn.write_all(
            b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )?,
    }
    Ok(())
}

/// A QEMU machine booted straight from the image's kernel and initrd; the
/// serial console goes to a file. Killed on drop.
struct Qemu {
    child: Child,
    console: PathBuf,
    started: Instant,
    _dir: tempfile::TempDir,
}

impl Qemu {
    fn boot(image_dir: &Path, append: &str) -> anyhow::Result<Qemu> {
        require_tool("qemu-system-x86_64", "qemu-system-x86")?;
        let dir = tempfile::tempdir()?;
        let console = levee_tests::log_file("console");
        let child = levee_tests::guard::spawn(
            Command::new("qemu-system-x86_64")
                .args([
                    "-accel",
                    &levee_tests::qemu_accel(),
                    "-m",
                    "1024",
                    "-smp",
                    "1",
                    "-no-reboot",
                ])
                .args(["-display", "none", "-monitor", "none", "-nodefaults"])
                .arg("-kernel")
                .arg(image_dir.join("vmlinuz"))
                .arg("-initrd")
                .arg(image_dir.join("initrd.img"))
                .args(["-append", append])
                .args(["-netdev", "user,id=n0"])
                .args(["-device", &format!("virtio-net-pci,netdev=n0,mac={MAC}")])
                .arg("-serial")
                .arg(format!("file:{}", console.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit()),
        )
        .context("cannot start qemu-system-x86_64")?;
        Ok(Qemu {
            child,
            console,
            started: Instant::now(),
            _dir: dir,
        })
    }

    /// Fails once QEMU has exited (a kernel panic with `-no-reboot`).
    fn alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait()? {
            Some(status) => bail!("QEMU exited ({status})"),
            None => Ok(()),
        }
    }

    fn console(&self) -> String {
        std::fs::read(&self.console)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn wait_console(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<Duration> {
        let started = self.started;
        let console = self.console.clone();
        wait_until(timeout, &format!("`{needle}` on the console"), || {
            let text = std::fs::read(&console)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            if text.contains(needle) {
                return Ok(Some(started.elapsed()));
            }
            self.alive()?;
            Ok(None)
        })
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        levee_tests::guard::kill(&mut self.child);
    }
}

/// Runs `f`; on failure prints the console so the reason is visible.
fn with_console<T>(console: PathBuf, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    f().inspect_err(|_| {
        let text = std::fs::read(&console)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        eprintln!("---- serial console ----\n{text}\n---- end ----");
    })
}

fn sha_of(image: &serde_json::Value, artifact: &str) -> anyhow::Result<String> {
    image["artifacts"][artifact]["sha256"]
        .as_str()
        .map(str::to_string)
        .context("artifact sha256 in image.json")
}

/// `no_timer_check`: under TCG on a loaded host the kernel's IO-APIC timer
/// check can fail and panic ("IO-APIC + timer doesn't work!").
/// The image's own arguments (image.json `cmdline`, e.g. `net.ifnames=0`)
/// come first, as `levee serve` puts them in a profile.
fn cmdline(image: &serde_json::Value, port: u16, sha256: &str) -> String {
    format!(
        "{} console=ttyS0,115200n8 levee.url=http://10.0.2.2:{port} levee.root=http://10.0.2.2:{port}/rootfs.squashfs \
         levee.sha256={sha256} levee.interval=3 systemd.journald.forward_to_console=1 panic=-1 no_timer_check",
        image["cmdline"].as_str().unwrap_or_default()
    )
}

#[test]
fn r3_image_boots_to_agent_that_reports() -> anyhow::Result<()> {
    let (dir, image) = image()?;
    for a in ["vmlinuz", "initrd.img", "rootfs.squashfs"] {
        let size = image["artifacts"][a]["size"]
            .as_u64()
            .context("artifact size")?;
        eprintln!("{a}: {size} bytes ({:.1} MiB)", size as f64 / 1048576.0);
    }
    let sq = image["artifacts"]["rootfs.squashfs"]["size"]
        .as_u64()
        .unwrap_or(u64::MAX);
    let rd = image["artifacts"]["initrd.img"]["size"]
        .as_u64()
        .unwrap_or(u64::MAX);
    assert!(
        sq <= 64 << 20,
        "rootfs.squashfs is {sq} bytes, over the 64 MiB target"
    );
    assert!(
        rd <= 8 << 20,
        "initrd.img is {rd} bytes, over the 8 MiB target"
    );

    let server = Server::start(dir.clone())?;
    let mut vm = Qemu::boot(
        dir,
        &cmdline(image, server.port, &sha_of(image, "rootfs.squashfs")?),
    )?;
    let started = vm.started;
    with_console(vm.console.clone(), || {
        let first = wait_until(Duration::from_secs(300), "the agent's first report", || {
            vm.alive()?;
            Ok(server
                .reports()
                .into_iter()
                .find(|(_, r)| r["stage"] == "agent"))
        })?;
        let report = &first.1;
        eprintln!(
            "boot to first report: {:.1} s (QEMU start to report, TCG, direct kernel)",
            (first.0 - started).as_secs_f64()
        );
        assert_eq!(report["mac"], MAC, "report: {report}");
        let boot_id = report["boot_id"]
            .as_str()
            .context("boot_id in report")?
            .to_string();
        assert!(report["version"].is_string(), "report: {report}");
        assert!(
            report["image_version"] == image["version"],
            "report: {report}, image {}",
            image["version"]
        );
        assert!(
            report["addresses"].as_array().is_some_and(|a| a
                .iter()
                .any(|x| x.as_str().is_some_and(|s| s.starts_with("10.0.2.15/")))),
            "report has the DHCP address: {report}"
        );
        assert!(
            report["disk_total_bytes"].as_u64().is_some_and(|t| t > 0),
            "report: {report}"
        );
        // The stage 1 checks and systemd's own progress, on the console.
        let console = vm.console();
        assert!(
            console.contains("levee-stage1: root file system sha256 ok"),
            "stage 1 checked the root"
        );
        vm.wait_console("Reached target multi-user.target", Duration::from_secs(120))?;
        // The start line went through journald (forwarded to the console).
        vm.wait_console(
            &format!("levee-agent {} starting", env!("CARGO_PKG_VERSION")),
            Duration::from_secs(30),
        )
        .or_else(|_| vm.wait_console("levee-agent[", Duration::from_secs(1)))?;
        let journal_line = vm
            .console()
            .lines()
            .find(|l| l.contains("levee-agent[") && l.contains("starting"))
            .map(str::to_string);
        assert!(
            journal_line.is_some(),
            "the agent's start line came through the journal"
        );
        // Still running: more reports from the same boot.
        wait_until(
            Duration::from_secs(60),
            "a second report from the same boot",
            || {
                Ok((server
                    .reports()
                    .iter()
                    .filter(|(_, r)| r["stage"] == "agent" && r["boot_id"] == boot_id.as_str())
                    .count()
                    >= 2)
                    .then_some(()))
            },
        )?;
        Ok(())
    })
}

#[test]
fn r3_wrong_sha256_is_refused() -> anyhow::Result<()> {
    let (dir, image) = image()?;
    let server = Server::start(dir.clone())?;
    let wrong = "0".repeat(64);
    let mut vm = Qemu::boot(dir, &cmdline(image, server.port, &wrong))?;
    with_console(vm.console.clone(), || {
        vm.wait_console("sha256 MISMATCH", Duration::from_secs(180))?;
        vm.wait_console("refusing to boot", Duration::from_secs(10))?;
        // Give a wrongly booting system time to show itself.
        std::thread::sleep(Duration::from_secs(5));
        let console = vm.console();
        assert!(
            console.contains(&format!("expected {wrong}")),
            "the message names the expected sum"
        );
        assert!(
            !console.contains("switching to systemd") && !console.contains("systemd[1]"),
            "no boot past stage 1"
        );
        assert!(server.reports().is_empty(), "no report from a refused root");
        Ok(())
    })
}

#[test]
fn r3_two_builds_from_the_lock_are_identical() -> anyhow::Result<()> {
    let (dir, image) = image()?;
    // A second build in other directories, with its own cache (only the
    // downloaded .debs are shared, hard-linked), from the same lock.
    let other = tempfile::Builder::new()
        .prefix("levee-image-repro")
        .tempdir_in(target_dir())?;
    let work = work_dir();
    let cache2 = other.path().join("cache");
    std::fs::create_dir_all(&cache2)?;
    {
        let _lock = FileLock::acquire(&work.join("build.lock"))?;
        levee_tests::run(
            Command::new("cp")
                .arg("-al")
                .arg(work.join("cache/debs"))
                .arg(cache2.join("debs")),
        )?;
    }
    let lock2 = other.path().join("appliance.lock");
    std::fs::copy(work.join("appliance.lock"), &lock2)?;
    let out2 = other.path().join("out");
    let (image2, took) = levee_build(&out2, &cache2, &lock2)?;
    eprintln!(
        "second (cold, packages cached) build: {:.1} s",
        took.as_secs_f64()
    );
    assert_eq!(
        std::fs::read(&lock2)?,
        std::fs::read(work.join("appliance.lock"))?,
        "the lock file was not rewritten"
    );
    for name in ["vmlinuz", "initrd.img", "rootfs.squashfs", "image.json"] {
        let a = std::fs::read(dir.join(name))?;
        let b = std::fs::read(out2.join(name))?;
        assert!(
            a == b,
            "{name} differs between {} and {}",
            dir.display(),
            out2.display()
        );
    }
    assert_eq!(image, &image2);
    Ok(())
}

/// Nix cannot fetch its inputs here, so the flake is only checked to parse.
#[test]
fn r3_flake_parses() -> anyhow::Result<()> {
    require_tool("nix-instantiate", "nix-bin")?;
    levee_tests::run(
        Command::new("nix-instantiate")
            .arg("--parse")
            .arg(workspace_root().join("flake.nix")),
    )?;
    Ok(())
}

/// Runs `levee image build` on a manifest variant; returns its stderr.
fn failing_build(name: &str, edit: impl Fn(&str) -> String) -> anyhow::Result<String> {
    tools()?;
    let dir = tempfile::tempdir()?;
    let text = std::fs::read_to_string(workspace_root().join("image/appliance.yaml"))?;
    let overlay = workspace_root().join("overlay");
    let text = edit(&text.replace(
        "overlay: ../overlay",
        &format!("overlay: {}", overlay.display()),
    ));
    let manifest = dir.path().join(name);
    std::fs::write(&manifest, text)?;
    let out = Command::new(binary("levee")?)
        .args(["image", "build", "--manifest"])
        .arg(&manifest)
        .arg("--out")
        .arg(dir.path().join("out"))
        .arg("--agent")
        .arg(binary("levee-agent")?)
        .arg("--cache-dir")
        .arg(work_dir().join("cache"))
        .arg("--lock")
        .arg(dir.path().join("x.lock"))
        .output()?;
    assert!(
        !out.status.success(),
        "the build of a broken manifest must fail"
    );
    assert!(
        !dir.path().join("x.lock").exists(),
        "a failed build writes no lock"
    );
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn r3_unknown_package_is_named_with_its_line() -> anyhow::Result<()> {
    let err = failing_build("unknown.yaml", |t| {
        t.replace("  - gdisk\n", "  - gdisk\n  - levee-no-such-package\n")
    })?;
    let line = std::fs::read_to_string(workspace_root().join("image/appliance.yaml"))?
        .lines()
        .position(|l| l.trim() == "- gdisk")
        .map(|i| i + 2)
        .context("gdisk in the manifest")?;
    assert!(
        err.contains(&format!(
            "unknown.yaml:{line}: unknown package `levee-no-such-package`"
        )),
        "{err}"
    );
    Ok(())
}

#[test]
fn r3_bad_manifest_is_named_with_line_and_column() -> anyhow::Result<()> {
    // A value of the wrong type: named at the value's own line and column.
    let manifest = std::fs::read_to_string(workspace_root().join("image/appliance.yaml"))?;
    let line = manifest
        .lines()
        .position(|l| l == "release: bookworm")
        .map(|i| i + 1)
        .context("`release: bookworm` in the manifest")?;
    let column = "release: ".len() + 1;
    let err = failing_build("bad.yaml", |t| {
        t.replace("release: bookworm", "release: [bookworm]")
    })?;
    assert!(
        err.contains(&format!("bad.yaml:{line}:{column}: release: invalid type")),
        "expected bad.yaml:{line}:{column}: release: invalid type ...:\n{err}"
    );
    // Broken YAML syntax: an unclosed `[` is reported at file:line:column.
    let err = failing_build("unclosed.yaml", |t| {
        t.replace("release: bookworm", "release: [bookworm")
    })?;
    // The last mention is the located one ("cannot build the image of
    // FILE: FILE:LINE:COLUMN: ...").
    let at = err
        .rsplit("unclosed.yaml:")
        .next()
        .context(format!("no unclosed.yaml: in {err}"))?;
    let mut fields = at.splitn(3, ':');
    let (l, c) = (fields.next(), fields.next());
    let l: usize = l
        .and_then(|v| v.parse().ok())
        .context(format!("no line in {err}"))?;
    let c: usize = c
        .and_then(|v| v.parse().ok())
        .context(format!("no column in {err}"))?;
    assert!(l == line && c > "release:".len(), "{err}");
    let err = failing_build("nooverlay.yaml", |t| {
        let mut lines: Vec<String> = t
            .lines()
            .map(|l| {
                if l.starts_with("overlay:") {
                    "overlay: /nonexistent/levee-overlay".to_string()
                } else {
                    l.to_string()
                }
            })
            .collect();
        lines.push(String::new());
        lines.join("\n")
    })?;
    assert!(
        err.contains("overlay directory /nonexistent/levee-overlay does not exist"),
        "{err}"
    );
    Ok(())
}

/// Boots the image over PXE from `levee serve` (full DHCP mode, HTTP after
/// iPXE) and waits for the agent's report in the server's store.
fn pxe_boot(tag: &str, firmware: levee_tests::vm::Firmware, mac: &str) -> anyhow::Result<()> {
    use levee_tests::net::TestNet;
    use levee_tests::server::{DhcpMode, LeveeServer};
    use levee_tests::vm::VmBuilder;

    let (dir, image) = image()?;
    let server = LeveeServer::new()?;
    let vm_dir = tempfile::tempdir()?;
    server.cli(&[
        "image",
        "import",
        dir.to_str().context("UTF-8 path")?,
        "--profile",
        "default",
    ])?;
    // The profile's template plus what the test reads: the journal on the
    // console, a short report interval, and no TCG timer panic.
    server.cli(&[
        "profile", "set", "default", "--cmdline",
        "console=ttyS0,115200 levee.url={url} levee.token={token} levee.root={root_url} levee.sha256={root_sha256} {image_cmdline} \
         systemd.journald.forward_to_console=1 levee.interval=3 no_timer_check",
    ])?;
    let net = TestNet::new(tag)?;
    server.start(&net, DhcpMode::Full, &[])?;
    let vm = VmBuilder {
        memory_mib: 1024,
        ..VmBuilder::new(firmware, mac)
    }
    .start(&net, vm_dir.path())?;
    let result = (|| -> anyhow::Result<()> {
        let shown = server.wait_for_report(mac, "agent", Duration::from_secs(300))?;
        eprintln!(
            "{firmware:?} PXE: QEMU start to the agent's report in the server: {:.1} s",
            vm.started.elapsed().as_secs_f64()
        );
        let report = &shown["appliance"]["last_report"];
        anyhow::ensure!(
            report["image_version"] == image["version"],
            "report {report}"
        );
        anyhow::ensure!(report["mac"] == mac, "report {report}");
        wait_until(
            Duration::from_secs(60),
            "multi-user.target and an agent journal line on the console",
            || {
                let console = vm.console();
                Ok((console.contains("Reached target multi-user.target")
                    && console.contains("levee-agent["))
                .then_some(()))
            },
        )?;
        Ok(())
    })();
    levee_tests::vm::check(
        result,
        &[
            ("serial console", vm.console()),
            ("levee serve", server.log_text()),
        ],
    );
    Ok(())
}

#[test]
fn r3_image_pxe_boots_bios() -> anyhow::Result<()> {
    pxe_boot(
        "imgbios",
        levee_tests::vm::Firmware::Bios,
        "52:54:00:03:00:01",
    )
}

#[test]
fn r3_image_pxe_boots_uefi() -> anyhow::Result<()> {
    pxe_boot(
        "imguefi",
        levee_tests::vm::Firmware::Uefi,
        "52:54:00:03:00:02",
    )
}
