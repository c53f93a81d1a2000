//! Issue 2: a blank VM network-boots from `levee serve` alone, in both DHCP
//! modes, on BIOS and UEFI, over HTTP and over TFTP only.

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use levee_tests::assets::test_guest;
use levee_tests::net::TestNet;
use levee_tests::require_tool;
use levee_tests::server::{DhcpMode, LeveeServer};
use levee_tests::vm::{check, Firmware, VmBuilder};

#[derive(Clone, Copy)]
enum Transport {
    Http,
    Tftp,
}

/// Generous for TCG: UEFI takes ~25 s to the report on an idle machine, and
/// two VMs may share the two cores.
const BOOT_TIMEOUT: Duration = Duration::from_secs(150);

fn boot(tag: &str, firmware: Firmware, mode: DhcpMode, transport: Transport, mac: &str) {
    let server = LeveeServer::new().expect("data dir");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut console = String::new();
    let mut dnsmasq_log = std::path::PathBuf::new();
    let result = (|| -> anyhow::Result<()> {
        let guest = test_guest()?;
        let net = TestNet::new(tag)?;
        let transport_arg = match transport {
            Transport::Http => "http",
            Transport::Tftp => "tftp",
        };
        server.cli(&[
            "profile",
            "set",
            "default",
            "--kernel",
            guest.kernel.to_str().context("path")?,
            "--initrd",
            guest.initrd.to_str().context("path")?,
            "--transport",
            transport_arg,
        ])?;
        // Proxy mode: the office's own DHCP server hands out the addresses,
        // on another host of the LAN.
        let _office = if mode == DhcpMode::Proxy {
            require_tool("dnsmasq", "dnsmasq-base")?;
            let office = net.add_host("10.99.0.2/24")?;
            let leases = dir.path().join("dnsmasq.leases");
            dnsmasq_log = levee_tests::log_file("dnsmasq");
            office
                .spawn(
                    office
                        .cmd("dnsmasq")
                        .args([
                            "--keep-in-foreground",
                            "--conf-file=/dev/null",
                            "--port=0",
                            "--no-ping",
                            "--log-dhcp",
                        ])
                        .arg(format!("--interface={}", office.interface()))
                        .arg("--dhcp-range=10.99.0.50,10.99.0.90,255.255.255.0,1h")
                        .arg(format!("--dhcp-leasefile={}", leases.display()))
                        .arg(format!(
                            "--pid-file={}",
                            dir.path().join("dnsmasq.pid").display()
                        ))
                        .stdout(Stdio::null())
                        .stderr(std::fs::File::create(&dnsmasq_log)?),
                )
                .context("cannot start dnsmasq")?;
            Some(office)
        } else {
            None
        };
        server.start(&net, mode, &[])?;

        let vm = VmBuilder::new(firmware, mac).start(&net, dir.path())?;
        let result = server.wait_for_report(mac, "test-initramfs", BOOT_TIMEOUT);
        console = vm.console();
        let appliance = result?;

        // The address came from the right DHCP server.
        let addr = appliance["appliance"]["last_report"]["addresses"][0]
            .as_str()
            .unwrap_or_default()
            .to_string();
        // Exactly inside the range of the server that should have answered:
        // Levee's own pool in full mode, the office dnsmasq's in proxy mode.
        let (range, owner) = match mode {
            DhcpMode::Full => (100..=150, "levee serve (10.99.0.100-150)"),
            DhcpMode::Proxy => (50..=90, "the office DHCP server (10.99.0.50-90)"),
        };
        let host: u8 = addr
            .strip_prefix("10.99.0.")
            .and_then(|rest| rest.split('/').next())
            .and_then(|h| h.parse().ok())
            .with_context(|| format!("reported address {addr:?} is not in 10.99.0.0/24"))?;
        anyhow::ensure!(
            range.contains(&host),
            "{addr} is not from the pool of {owner}"
        );

        // Every boot step is in the server log, one line each.
        let log = server.log_text();
        let events = appliance["events"].as_array().cloned().unwrap_or_default();
        let steps: Vec<&str> = events.iter().filter_map(|e| e["step"].as_str()).collect();
        anyhow::ensure!(
            steps.contains(&"dhcp"),
            "no DHCP step in the history: {steps:?}"
        );
        anyhow::ensure!(
            steps.contains(&"script"),
            "no boot-script step in the history: {steps:?}"
        );
        anyhow::ensure!(
            steps.contains(&"report"),
            "no report step in the history: {steps:?}"
        );
        let tftp_sent = |file: &str| {
            log.lines().any(|l| {
                l.contains(&format!("file={file}")) && l.contains("tftp transfer complete")
            })
        };
        if firmware == Firmware::Uefi {
            anyhow::ensure!(
                tftp_sent("snponly.efi"),
                "the UEFI firmware did not fetch snponly.efi over TFTP"
            );
        }
        match transport {
            Transport::Http => anyhow::ensure!(
                log.contains("GET /images/") && log.contains("initrd.img"),
                "kernel and initrd did not come over HTTP"
            ),
            Transport::Tftp => anyhow::ensure!(
                !log.contains("GET /images/") && tftp_sent("images/"),
                "kernel and initrd did not come over TFTP only"
            ),
        }
        // The operator's view shows the machine and what it reported.
        let list = server.cli(&["appliance", "list"])?;
        anyhow::ensure!(
            list.contains(mac) && list.contains("test-initramfs"),
            "appliance list:\n{list}"
        );
        Ok(())
    })();
    let dnsmasq = std::fs::read_to_string(&dnsmasq_log).unwrap_or_default();
    check(
        result,
        &[
            ("levee serve", server.log_text()),
            ("serial console", console),
            ("dnsmasq", dnsmasq),
        ],
    );
}

#[test]
fn boot_bios_full_http() {
    boot(
        "bfh",
        Firmware::Bios,
        DhcpMode::Full,
        Transport::Http,
        "52:54:00:00:02:01",
    );
}

#[test]
fn boot_uefi_full_http() {
    boot(
        "ufh",
        Firmware::Uefi,
        DhcpMode::Full,
        Transport::Http,
        "52:54:00:00:02:02",
    );
}

#[test]
fn boot_bios_proxy_http() {
    boot(
        "bph",
        Firmware::Bios,
        DhcpMode::Proxy,
        Transport::Http,
        "52:54:00:00:02:03",
    );
}

#[test]
fn boot_uefi_proxy_http() {
    boot(
        "uph",
        Firmware::Uefi,
        DhcpMode::Proxy,
        Transport::Http,
        "52:54:00:00:02:04",
    );
}

#[test]
fn boot_bios_full_tftp_only() {
    boot(
        "bft",
        Firmware::Bios,
        DhcpMode::Full,
        Transport::Tftp,
        "52:54:00:00:02:05",
    );
}
