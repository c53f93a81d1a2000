//! QEMU machines for the boot tests.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::net::TestNet;
use crate::{qemu_accel, require_tool};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS with QEMU's iPXE option ROM on the NIC.
    Bios,
    /// OVMF with the NIC's option ROM removed, so the firmware's own PXE
    /// client starts and must fetch ipxe.efi, like a blank UEFI box.
    Uefi,
}

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// A machine to boot. Fields are public so tests read like a spec sheet.
pub struct VmBuilder {
    pub firmware: Firmware,
    pub mac: String,
    pub memory_mib: u32,
    /// Disk images, in boot order before the NIC: raw, or qcow2 when the
    /// file name ends in `.qcow2` (an [`overlay`]).
    pub disks: Vec<PathBuf>,
    /// Let the guest reboot (leave out QEMU's `-no-reboot`): installs.
    pub allow_reboot: bool,
    /// QEMU user-mode networking with these options (e.g.
    /// `tftp=DIR,bootfile=boot.ipxe`) instead of a tap on the bridge: the
    /// guest reaches the namespace's loopback as 10.0.2.2. The NIC then keeps
    /// QEMU's iPXE ROM under UEFI too, so it boots the same script.
    pub user_net: Option<String>,
    /// Boot this kernel directly (`-kernel/-initrd/-append`; QEMU then
    /// boots it on every reset).
    pub direct: Option<DirectBoot>,
    /// The NIC before the disks in the boot order (a disk holding someone
    /// else's MBR must not be booted: SeaBIOS would run its boot code).
    pub nic_first: bool,
    /// An Intel 6300ESB watchdog (QEMU resets the machine when it fires),
    /// which stage 1 arms on a disk boot.
    pub watchdog: bool,
}

/// A kernel booted by QEMU itself.
pub struct DirectBoot {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub append: String,
}

impl VmBuilder {
    pub fn new(firmware: Firmware, mac: &str) -> VmBuilder {
        VmBuilder {
            firmware,
            mac: mac.into(),
            memory_mib: 512,
            disks: Vec::new(),
            allow_reboot: false,
            user_net: None,
            direct: None,
            nic_first: false,
            watchdog: false,
        }
    }

    /// Boots the machine inside `net` on a new tap device.
    pub fn start(self, net: &TestNet, dir: &Path) -> anyhow::Result<Vm> {
        require_tool("qemu-system-x86_64", "qemu-system-x86")?;
        // Written by QEMU as the guest runs: left in the test's log
        // directory even if the test is killed.
        let serial = crate::log_file(&format!("serial-{}", self.mac.replace(':', "")));
        let mut cmd = net.cmd("qemu-system-x86_64");
        cmd.args(["-accel", &qemu_accel(), "-m", &self.memory_mib.to_string()])
            .args(["-display", "none", "-monitor", "none"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()));
        if !self.allow_reboot {
            cmd.arg("-no-reboot");
        }
        let mut tap_name = None;
        match &self.user_net {
            Some(opts) if opts.is_empty() => cmd.args(["-netdev", "user,id=n0"]),
            Some(opts) => cmd.args(["-netdev", &format!("user,id=n0,{opts}")]),
            None => {
                let tap = net.add_tap()?;
                cmd.args([
                    "-netdev",
                    &format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
                ]);
                tap_name = Some(tap);
                &mut cmd
            }
        };
        if self.watchdog {
            cmd.args(["-device", "i6300esb", "-action", "watchdog=reset"]);
        }
        if let Some(d) = &self.direct {
            cmd.arg("-kernel")
                .arg(&d.kernel)
                .arg("-initrd")
                .arg(&d.initrd)
                .args(["-append", &d.append]);
        }
        let mut nic = format!("virtio-net-pci,netdev=n0,mac={}", self.mac);
        match self.firmware {
            Firmware::Bios => {
                require_tool_file("/usr/lib/ipxe/qemu/efi-virtio.rom", "ipxe-qemu")?;
            }
            Firmware::Uefi => {
                require_tool_file(OVMF_CODE, "ovmf")?;
                let vars = dir.join(format!("vars-{}.fd", self.mac.replace(':', "")));
                std::fs::copy(OVMF_VARS, &vars).context("copying OVMF variables")?;
                cmd.args([
                    "-drive",
                    &format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"),
                    "-drive",
                    &format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
                ]);
                if self.user_net.is_none() {
                    nic.push_str(",romfile=");
                }
            }
        }
        for (i, disk) in self.disks.iter().enumerate() {
            let format = if disk.extension().is_some_and(|e| e == "qcow2") {
                "qcow2"
            } else {
                "raw"
            };
            cmd.args([
                "-drive",
                &format!("file={},format={format},if=none,id=d{i}", disk.display()),
                "-device",
                &format!(
                    "virtio-blk-pci,drive=d{i},bootindex={}",
                    i + 1 + usize::from(self.nic_first)
                ),
            ]);
        }
        // Disks first, then the network, as on a real appliance: a blank disk
        // falls through to PXE, an installed one boots locally.
        let nic_index = if self.nic_first {
            1
        } else {
            self.disks.len() + 1
        };
        nic.push_str(&format!(",bootindex={nic_index}"));
        cmd.args(["-device", &nic])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(crate::log_file(&format!(
                "qemu-{}",
                self.mac.replace(':', "")
            )))?);
        let started = Instant::now();
        let pid = net.spawn(&mut cmd).context("cannot start qemu")?;
        Ok(Vm {
            serial,
            pid,
            started,
            tap: tap_name,
        })
    }
}

impl Vm {
    /// Whether QEMU has exited (it is a zombie until the network reaps it).
    pub fn exited(&self) -> bool {
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Ok(stat) => stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z')),
            Err(_) => true,
        }
    }
}

/// A qcow2 overlay at `path` (its name must end in `.qcow2`) over the raw
/// disk `base`: the machine writes only to the overlay, and QEMU opens
/// `base` read-only, so many machines can start from one disk. Like a
/// disk's write cache at a power cut, a [`Vm::power_cut`] loses only
/// what the guest never flushed (QEMU keeps qcow2's metadata in memory
/// until a flush).
pub fn overlay(base: &Path, path: &Path) -> anyhow::Result<()> {
    require_tool("qemu-img", "qemu-utils")?;
    anyhow::ensure!(
        path.extension().is_some_and(|e| e == "qcow2"),
        "{}: an overlay's name must end in .qcow2",
        path.display()
    );
    // An absolute backing path: the overlay lives elsewhere.
    let base = std::fs::canonicalize(base).with_context(|| format!("{}", base.display()))?;
    crate::run(
        std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&base)
            .arg(path),
    )?;
    Ok(())
}

fn require_tool_file(path: &str, package: &str) -> anyhow::Result<()> {
    if !Path::new(path).exists() {
        anyhow::bail!("{path} is missing: install it with `apt-get install {package}`");
    }
    Ok(())
}

pub struct Vm {
    pub serial: PathBuf,
    pub pid: u32,
    /// Just before QEMU was spawned: the zero of boot-time measurements.
    pub started: Instant,
    /// The tap device on the test's bridge (none on user-mode networking):
    /// a test can pull the cable with `ip link set TAP down`.
    pub tap: Option<String>,
}

impl Vm {
    /// Pulls the plug: SIGKILL to QEMU (no shutdown, no flush of the
    /// guest's caches), then waits until it is gone.
    pub fn power_cut(&self) -> anyhow::Result<()> {
        // SAFETY: kill(2) on the QEMU this test started.
        unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        crate::wait_until(
            Duration::from_secs(30),
            "QEMU to stop after SIGKILL",
            || Ok(self.exited().then_some(())),
        )
    }

    pub fn console(&self) -> String {
        // Lossy: firmware and GRUB write escape sequences and odd bytes.
        std::fs::read(&self.serial)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

/// Prints the logs that explain a failure, then fails the test.
/// `LEVEE_TEST_LOGS=1` prints them on success too.
pub fn check(result: anyhow::Result<()>, logs: &[(&str, String)]) {
    if result.is_ok() && std::env::var_os("LEVEE_TEST_LOGS").is_some() {
        for (name, text) in logs {
            eprintln!("===== {name} =====\n{text}");
        }
    }
    if let Err(e) = result {
        for (name, text) in logs {
            eprintln!("===== {name} =====\n{text}");
        }
        panic!("{e:#}");
    }
}
