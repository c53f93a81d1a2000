//! Issue 16, end to end: two `levee serve` on one PostgreSQL, in two test
//! namespaces (two provisioning LANs). Folded into the UEFI golden path
//! (install.rs), so no install boot of its own: the appliance installed
//! through server A; A stops; its NIC moves to the second LAN, where
//! server B (its own data directory holding only a copy of A's
//! `server.key`, docs/POSTGRES.md) answers at the same address. Through B
//! the appliance heartbeats, pulls a configuration changed on the CLI, and
//! a retirement typed on the CLI is refused by B at its next request.

use std::time::Duration;

use anyhow::{ensure, Context};
use levee_tests::net::{TestNet, BRIDGE, SERVER_IP};
use levee_tests::vm::Vm;
use levee_tests::{run, wait_until};

use crate::install::{show, unix_now, World, CUSTOMER};

/// Heartbeats come every 10 s (the customer's `heartbeat_interval`); the
/// appliance must also notice the new server's address, and under TCG.
const THROUGH_B: Duration = Duration::from_secs(180);

pub(crate) fn served_by_a_second_server(
    world: &World,
    vm: &Vm,
    mac: &str,
    tag: &str,
) -> anyhow::Result<()> {
    let a = show(world, mac)?.context("the installed appliance")?;
    let id = a["appliance"]["id"].as_i64().context("appliance id")?;
    let vm_ip = lan_address(&world.net, mac);
    stop_server_a(world)?;

    let net_b = TestNet::new(&format!("{tag}b"))?;
    let b = world.server.fleet_peer("b")?;
    let https = format!("{SERVER_IP}:8443");
    let http = format!("{SERVER_IP}:80");
    b.start_with(&net_b, &["--http", &http, "--https", &https], None)?;
    let r = (|| -> anyhow::Result<()> {
        // The image's record is shared, its files are on A only: B says so.
        ensure!(
            b.log_text()
                .contains("boot profile's image is not on this server"),
            "B did not report the image it lacks"
        );
        // The appliance moves to B's LAN: its tap onto B's bridge.
        let tap = vm.tap.as_deref().context("the VM has no tap")?;
        run(world
            .net
            .cmd("ip")
            .args(["link", "set", tap, "netns", &net_b.ns]))?;
        run(net_b
            .cmd("ip")
            .args(["link", "set", tap, "master", BRIDGE, "up"]))?;
        // B's bridge answers for the server's address with another MAC: an
        // ARP request from it updates the appliance's neighbour entry now
        // rather than when the old one goes stale (tens of seconds).
        if let Some(ip) = &vm_ip {
            let _ = run(net_b.cmd("ping").args(["-c", "1", "-W", "2", ip]));
        }
        let moved = unix_now();

        // Heartbeats through B, into the shared database.
        wait_until(THROUGH_B, "a heartbeat through server B", || {
            ensure!(!vm.exited(), "QEMU exited");
            let a = show(world, mac)?.context("gone")?;
            Ok(a["appliance"]["last_heartbeat"]
                .as_u64()
                .filter(|t| *t > moved)
                .map(|_| ()))
        })?;
        // A configuration change typed on the CLI reaches it through B.
        let yaml = std::fs::read_to_string(&world.customer_yaml)?;
        let changed = yaml.replace("heartbeat_interval: 10s", "heartbeat_interval: 15s");
        ensure!(changed != yaml, "no heartbeat_interval in {yaml}");
        std::fs::write(&world.customer_yaml, changed)?;
        b.cli(&[
            "customer",
            "apply",
            "-f",
            world.customer_yaml.to_str().context("path")?,
        ])?;
        let served = format!("appliance={id} customer={CUSTOMER}");
        wait_until(THROUGH_B, "the changed configuration through B", || {
            ensure!(!vm.exited(), "QEMU exited");
            Ok(b.log_text()
                .lines()
                .any(|l| l.contains("configuration served") && l.contains(&served))
                .then_some(()))
        })?;
        // Retired on the CLI: B refuses its next request.
        b.cli(&[
            "appliance",
            "retire",
            mac,
            "--reason",
            "e2e: retired on the fleet",
        ])?;
        wait_until(
            Duration::from_secs(60),
            "B refusing the retired appliance",
            || {
                Ok(b.log_text()
                    .lines()
                    .any(|l| l.contains("mTLS request refused") && l.contains("retired"))
                    .then_some(()))
            },
        )?;
        let a = show(world, mac)?.context("gone")?;
        ensure!(a["appliance"]["state"] == "retired", "{a}");
        eprintln!("{mac}: served by server B after A stopped (heartbeat, CLI change, retirement)");
        Ok(())
    })();
    r.with_context(|| format!("server B's log:\n{}", b.log_text()))
}

/// The appliance's IPv4 address on A's LAN, from A's neighbour table.
fn lan_address(net: &TestNet, mac: &str) -> Option<String> {
    let table = run(net.cmd("ip").args(["-4", "neigh", "show", "dev", BRIDGE])).ok()?;
    table
        .lines()
        .find(|l| l.to_lowercase().contains(&mac.to_lowercase()))
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_string)
}

/// SIGTERM to server A, and its clean stop.
fn stop_server_a(world: &World) -> anyhow::Result<()> {
    // SAFETY: signalling the server this test started.
    unsafe { libc::kill(world.pid as i32, libc::SIGTERM) };
    wait_until(Duration::from_secs(20), "server A to stop", || {
        Ok(world
            .server
            .log_text()
            .lines()
            .any(|l| l.trim_end().ends_with(" stopped"))
            .then_some(()))
    })?;
    Ok(())
}
