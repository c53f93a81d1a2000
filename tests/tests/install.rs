//! Issue 4, install to disk (the agent side). The image (built once per
//! run, tests/src/image.rs) boots from the network in QEMU with a disk
//! first in the boot order; `levee.install=URL` on its command line makes
//! levee-install-hook.service run `levee-agent install` with a plan from a
//! tiny HTTP server in the test's network namespace; the VM then reboots
//! by itself and must come up from the disk: GRUB's slot A, stage 1
//! checking the root on PARTLABEL=levee-a, the data partition mounted.
//!
//! Network: QEMU user-mode networking run inside the test's namespace
//! (its 10.0.2.2 is the namespace's loopback, where the file server
//! listens); QEMU's own TFTP hands iPXE a script, so a blank disk falls
//! through to the network and an installed one boots locally, on BIOS
//! (SeaBIOS) and UEFI (OVMF) alike.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use levee_tests::http::FileServer;
use levee_tests::image::image;
use levee_tests::net::TestNet;
use levee_tests::vm::{DirectBoot, Firmware, Vm, VmBuilder};
use levee_tests::{require_tool, run, wait_until};

const DISK_BYTES: u64 = 2 << 30;

/// What the test adds to the image's command line: the journal on the
/// console, and no IO-APIC timer check (it can fail under loaded TCG).
const TEST_ARGS: &str = "systemd.journald.forward_to_console=1 no_timer_check";

struct World {
    net: TestNet,
    server: FileServer,
    dir: tempfile::TempDir,
    image: serde_json::Value,
}

impl World {
    fn new(tag: &str, plan_cmdline_extra: &str) -> anyhow::Result<World> {
        let (image_dir, image) = image()?;
        let net = TestNet::new(tag)?;
        let server = FileServer::start_in(&net)?;
        for f in ["vmlinuz", "initrd.img", "rootfs.squashfs", "image.json"] {
            server.add(f, &image_dir.join(f));
        }
        let dir = tempfile::Builder::new()
            .prefix("levee-install-")
            .tempdir()?;
        let url = server.guest_url();
        let artifact = |name: &str| -> anyhow::Result<serde_json::Value> {
            let a = &image["artifacts"][name];
            Ok(serde_json::json!({
                "url": format!("{url}/{name}"),
                "sha256": a["sha256"].as_str().context("sha256")?,
                "size": a["size"].as_u64().context("size")?,
            }))
        };
        let plan = serde_json::json!({
            "install": true,
            "reinstall": false,
            "min_disk_bytes": 1u64 << 30,
            "image": {
                "version": image["version"],
                "kernel": artifact("vmlinuz")?,
                "initrd": artifact("initrd.img")?,
                "rootfs": artifact("rootfs.squashfs")?,
                "cmdline": format!("{} {TEST_ARGS} {plan_cmdline_extra}", image["cmdline"].as_str().unwrap_or("")),
            }
        });
        let plan_path = dir.path().join("plan.json");
        std::fs::write(&plan_path, serde_json::to_vec_pretty(&plan)?)?;
        server.add("plan.json", &plan_path);
        Ok(World {
            net,
            server,
            dir,
            image: image.clone(),
        })
    }

    /// The network boot's command line: root over HTTP, install from the plan.
    fn netboot_cmdline(&self) -> anyhow::Result<String> {
        let url = self.server.guest_url();
        Ok(format!(
            "{} console=ttyS0,115200n8 levee.root={url}/rootfs.squashfs levee.sha256={} levee.install={url}/plan.json {TEST_ARGS}",
            self.image["cmdline"].as_str().unwrap_or(""),
            self.image["artifacts"]["rootfs.squashfs"]["sha256"]
                .as_str()
                .context("rootfs sha256")?
        ))
    }

    fn blank_disk(&self) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join("disk.raw");
        std::fs::File::create(&path)?.set_len(DISK_BYTES)?;
        Ok(path)
    }
}

/// Waits for `needle` on the console after byte `from`; returns where it is.
fn wait_after(vm: &Vm, needle: &str, from: usize, timeout: Duration) -> anyhow::Result<usize> {
    wait_until(timeout, &format!("`{needle}` on the console"), || {
        let text = vm.console();
        if let Some(i) = text.get(from..).and_then(|t| t.find(needle)) {
            return Ok(Some(from + i));
        }
        if vm.exited() {
            // It may have printed the needle just before it stopped.
            let text = vm.console();
            anyhow::ensure!(
                text.get(from..).is_some_and(|t| t.contains(needle)),
                "QEMU exited"
            );
        }
        Ok(None)
    })
}

fn install_and_boot_from_disk(tag: &str, firmware: Firmware, mac: &str) -> anyhow::Result<()> {
    let world = World::new(tag, "")?;
    let disk = world.blank_disk()?;
    let tftp = world.dir.path().join("tftp");
    std::fs::create_dir_all(&tftp)?;
    let url = world.server.guest_url();
    std::fs::write(
        tftp.join("boot.ipxe"),
        format!(
            "#!ipxe\nkernel {url}/vmlinuz initrd=initrd.img {}\ninitrd {url}/initrd.img\nboot\n",
            world.netboot_cmdline()?
        ),
    )?;
    let vm = VmBuilder {
        memory_mib: 1024,
        disks: vec![disk.clone()],
        allow_reboot: true,
        user_net: Some(format!("tftp={},bootfile=boot.ipxe", tftp.display())),
        ..VmBuilder::new(firmware, mac)
    }
    .start(&world.net, world.dir.path())?;
    let result = (|| -> anyhow::Result<()> {
        let long = Duration::from_secs(900);
        let done = wait_after(&vm, "install: done", 0, long)?;
        let installed_at = Instant::now();
        let t_install = vm.started.elapsed();
        let console = vm.console();
        anyhow::ensure!(
            !console
                .get(..done)
                .unwrap_or("")
                .contains("var-lib-levee.mount"),
            "the network boot mounted the data partition the installer was creating"
        );
        anyhow::ensure!(
            console
                .get(..done)
                .unwrap_or("")
                .contains("onto /dev/vda (2.0 GiB, blank)"),
            "the installer chose the blank disk"
        );
        // The reboot: GRUB takes a try of slot A and starts it.
        let grub = wait_after(
            &vm,
            "levee: booting slot A (ORDER=A B A_OK=1 A_TRY=2",
            done,
            long,
        )?;
        let root = wait_after(
            &vm,
            "levee-stage1: root on /dev/vda3 (PARTLABEL=levee-a)",
            grub,
            long,
        )?;
        let sum = world.image["artifacts"]["rootfs.squashfs"]["sha256"]
            .as_str()
            .unwrap_or("?");
        wait_after(
            &vm,
            &format!("levee-stage1: root file system sha256 ok ({sum})"),
            root,
            long,
        )?;
        let text = vm.console();
        let cmdline = text
            .get(grub..root)
            .unwrap_or("")
            .lines()
            .find(|l| l.contains("Command line:"))
            .context("the kernel's command line on the console")?;
        anyhow::ensure!(
            cmdline.contains("levee.slot=a")
                && cmdline.contains("levee.root=PARTLABEL=levee-a")
                && cmdline.contains(&format!("levee.sha256={sum}"))
                && cmdline.contains("panic=10"),
            "second boot's command line: {cmdline}"
        );
        let mounted = wait_after(&vm, "Mounted var-lib-levee.mount", root, long)?;
        wait_after(&vm, "Finished levee-journal.service", root, long)?;
        let agent = wait_after(&vm, "levee-agent[", root, long)?;
        anyhow::ensure!(
            mounted < agent,
            "the agent started before /var/lib/levee was mounted"
        );
        eprintln!(
            "{firmware:?}: QEMU start to `install: done` {:.1} s; install done to the agent on the disk boot {:.1} s",
            t_install.as_secs_f64(),
            installed_at.elapsed().as_secs_f64()
        );
        // The disk boot fetched nothing from the network.
        let late: Vec<String> = world
            .server
            .requests()
            .into_iter()
            .filter(|(t, p)| *t > installed_at && !p.contains("plan"))
            .map(|(_, p)| p)
            .collect();
        anyhow::ensure!(late.is_empty(), "requests after the install: {late:?}");
        Ok(())
    })();
    levee_tests::vm::check(result, &[("serial console", vm.console())]);
    if firmware == Firmware::Bios {
        rollback(&world, &disk, vm, mac)?;
    }
    Ok(())
}

/// mtools on the ESP inside the raw disk (the host kernel has no vfat).
fn mtools(disk: &Path, args: &[&str]) -> anyhow::Result<String> {
    let image = format!("{}@@{}", disk.display(), 2u64 << 20);
    let (tool, rest) = args.split_first().context("mtools command")?;
    run(Command::new(tool)
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-i", &image])
        .args(rest))
}

fn grubenv(vars: &str) -> Vec<u8> {
    let mut b = format!("# GRUB Environment Block\n{vars}").into_bytes();
    b.resize(1024, b'#');
    b
}

/// Boot counting under a real GRUB: slot B holds a kernel with a broken
/// initrd and is tried once (ORDER=B A, B_TRY=1); the kernel panics,
/// `panic=10` reboots, and GRUB falls back to slot A.
/// A BIOS VM that boots the installed disk (no network boot offered).
fn disk_boot(disk: &Path, mac: &str) -> VmBuilder {
    VmBuilder {
        memory_mib: 1024,
        disks: vec![disk.to_path_buf()],
        allow_reboot: true,
        user_net: Some(String::new()),
        ..VmBuilder::new(Firmware::Bios, mac)
    }
}

fn rollback(world: &World, disk: &Path, vm: Vm, mac: &str) -> anyhow::Result<()> {
    // SAFETY: kill(2) on the QEMU we started.
    unsafe { libc::kill(vm.pid as i32, libc::SIGKILL) };
    wait_until(Duration::from_secs(30), "QEMU to stop", || {
        Ok(vm.exited().then_some(()))
    })?;
    let dir = world.dir.path();
    let env_path = dir.join("grubenv.read");
    mtools(
        disk,
        &[
            "mcopy",
            "-n",
            "-o",
            "::levee/grubenv",
            &env_path.to_string_lossy(),
        ],
    )?;
    let env = std::fs::read(&env_path)?;
    assert_eq!(
        env.len(),
        1024,
        "grubenv stays 1024 bytes after GRUB's save_env"
    );
    let env = String::from_utf8_lossy(&env).into_owned();
    assert!(
        env.contains("A_TRY=2\n"),
        "GRUB saved the try it took: {env}"
    );

    let (image_dir, _) = image()?;
    let junk = dir.join("junk.img");
    std::fs::write(&junk, vec![0x5Au8; 4096])?;
    let slot_cfg = dir.join("slot.cfg");
    std::fs::write(
        &slot_cfg,
        "set levee_cmdline='levee.root=PARTLABEL=levee-b levee.slot=b console=ttyS0,115200n8 no_timer_check panic=10'\n",
    )?;
    // Slot A's boot also runs `levee-agent slot commit` (the daemon's
    // health commit), through systemd.run: slot.cfg may boot by itself,
    // so the argument with spaces is one GRUB word, quoted for the kernel.
    let a_cfg = dir.join("slot-a.cfg");
    mtools(
        disk,
        &[
            "mcopy",
            "-n",
            "-o",
            "::levee/a/slot.cfg",
            &a_cfg.to_string_lossy(),
        ],
    )?;
    let original = std::fs::read_to_string(&a_cfg)?;
    std::fs::write(
        &a_cfg,
        format!(
            "{original}linux /levee/a/vmlinuz $levee_cmdline \"systemd.run=/usr/bin/levee-agent slot commit\" systemd.run_success_action=none\ninitrd /levee/a/initrd.img\nboot\n"
        ),
    )?;
    mtools(
        disk,
        &[
            "mcopy",
            "-o",
            &a_cfg.to_string_lossy(),
            "::levee/a/slot.cfg",
        ],
    )?;
    let env_b = dir.join("grubenv.b");
    std::fs::write(
        &env_b,
        grubenv("ORDER=B A\nA_OK=1\nA_TRY=3\nB_OK=1\nB_TRY=1\n"),
    )?;
    for (from, to) in [
        (image_dir.join("vmlinuz"), "::levee/b/vmlinuz"),
        (junk, "::levee/b/initrd.img"),
        (slot_cfg, "::levee/b/slot.cfg"),
        (env_b.clone(), "::levee/grubenv"),
        (env_b, "::levee/grubenv.bak"),
    ] {
        mtools(disk, &["mcopy", "-o", &from.to_string_lossy(), to])?;
    }
    std::fs::create_dir_all(dir.join("rollback"))?;
    let vm = disk_boot(disk, mac).start(&world.net, &dir.join("rollback"))?;
    let result = (|| -> anyhow::Result<()> {
        let long = Duration::from_secs(600);
        let b = wait_after(
            &vm,
            "levee: booting slot B (ORDER=B A A_OK=1 A_TRY=3 B_OK=1 B_TRY=0",
            0,
            long,
        )?;
        let panic = wait_after(&vm, "Kernel panic", b, long)?;
        let a = wait_after(
            &vm,
            "levee: booting slot A (ORDER=B A A_OK=1 A_TRY=2 B_OK=1 B_TRY=0",
            panic,
            long,
        )?;
        wait_after(
            &vm,
            "levee-stage1: root on /dev/vda3 (PARTLABEL=levee-a)",
            a,
            long,
        )?;
        eprintln!(
            "rollback: slot B tried once, panicked, slot A booted: {:.1} s",
            vm.started.elapsed().as_secs_f64()
        );
        wait_after(&vm, "Committed {", a, long)?;
        Ok(())
    })();
    levee_tests::vm::check(result, &[("serial console (rollback)", vm.console())]);
    // The commit rewrote both copies in place: A has its tries back, B
    // (which failed) stays spent.
    // SAFETY: kill(2) on the QEMU we started.
    unsafe { libc::kill(vm.pid as i32, libc::SIGKILL) };
    wait_until(Duration::from_secs(30), "QEMU to stop", || {
        Ok(vm.exited().then_some(()))
    })?;
    for copy in ["grubenv", "grubenv.bak"] {
        let path = dir.join(format!("{copy}.committed"));
        mtools(
            disk,
            &[
                "mcopy",
                "-n",
                "-o",
                &format!("::levee/{copy}"),
                &path.to_string_lossy(),
            ],
        )?;
        let env = std::fs::read(&path)?;
        assert_eq!(env.len(), 1024, "{copy} is 1024 bytes");
        let env = String::from_utf8_lossy(&env).into_owned();
        assert!(
            env.starts_with(
                "# GRUB Environment Block\nORDER=B A\nA_OK=1\nA_TRY=3\nB_OK=1\nB_TRY=0\n"
            ),
            "{copy} after the commit: {env}"
        );
    }
    // And GRUB reads the block the running system rewrote.
    std::fs::create_dir_all(dir.join("after-commit"))?;
    let vm = disk_boot(disk, mac).start(&world.net, &dir.join("after-commit"))?;
    let result = wait_after(
        &vm,
        "levee: booting slot A (ORDER=B A A_OK=1 A_TRY=2 B_OK=1 B_TRY=0 env=primary)",
        0,
        Duration::from_secs(300),
    )
    .map(|_| ());
    levee_tests::vm::check(result, &[("serial console (after commit)", vm.console())]);
    Ok(())
}

#[test]
fn r4_install_bios_reboots_from_disk() -> anyhow::Result<()> {
    install_and_boot_from_disk("instbios", Firmware::Bios, "52:54:00:04:00:01")
}

#[test]
fn r4_install_uefi_reboots_from_disk() -> anyhow::Result<()> {
    install_and_boot_from_disk("instuefi", Firmware::Uefi, "52:54:00:04:00:02")
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let out = run(Command::new("sha256sum").arg(path))?;
    Ok(out.split_whitespace().next().unwrap_or("").to_string())
}

#[test]
fn r4_foreign_disk_is_refused_and_untouched() -> anyhow::Result<()> {
    require_tool("sfdisk", "fdisk")?;
    let world = World::new("instforeign", "")?;
    let disk = world.blank_disk()?;
    let mut sfdisk = Command::new("sfdisk");
    sfdisk
        .args(["--quiet"])
        .arg(&disk)
        .stdin(std::process::Stdio::piped());
    let mut child = sfdisk.spawn()?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().context("sfdisk stdin")?;
        stdin.write_all(b"label: dos\nstart=2048, size=204800, type=83\n")?;
    }
    anyhow::ensure!(child.wait()?.success(), "sfdisk on the host failed");
    let before = sha256_file(&disk)?;
    let (image_dir, _) = image()?;
    let vm = VmBuilder {
        memory_mib: 1024,
        disks: vec![disk.clone()],
        user_net: Some(String::new()),
        direct: Some(DirectBoot {
            kernel: image_dir.join("vmlinuz"),
            initrd: image_dir.join("initrd.img"),
            append: world.netboot_cmdline()?,
        }),
        ..VmBuilder::new(Firmware::Bios, "52:54:00:04:00:03")
    }
    .start(&world.net, world.dir.path())?;
    let result = (|| -> anyhow::Result<()> {
        let at = wait_after(&vm, "no disk to install on", 0, Duration::from_secs(600))?;
        let text = vm.console();
        let line = text.get(at..).and_then(|t| t.lines().next()).unwrap_or("");
        eprintln!("refusal: {line}");
        anyhow::ensure!(
            line.contains("/dev/vda")
                && line.contains("partition table")
                && line.contains("never touched"),
            "the reason names the disk and why: {line}"
        );
        Ok(())
    })();
    let console = vm.console();
    drop(world.net);
    levee_tests::vm::check(result, &[("serial console", console)]);
    assert_eq!(sha256_file(&disk)?, before, "the foreign disk was changed");
    Ok(())
}
