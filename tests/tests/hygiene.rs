//! The probe `dev/check-test-hygiene` kills on purpose: it starts what the
//! boot tests start (a network namespace with a second host, `levee serve`,
//! QEMU, smbd, and a forked grandchild that PDEATHSIG alone would miss),
//! then blocks until nextest terminates it at its deadline. The script then
//! checks that none of those processes and no namespace survived, and that
//! the logs are in `target/test-logs/`. Left out of the normal run by the
//! nextest default filter (being killed is its whole point); `dev/test`
//! runs the script after the suite.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use levee_tests::assets::test_guest;
use levee_tests::net::TestNet;
use levee_tests::server::{DhcpMode, LeveeServer};
use levee_tests::vm::{DirectBoot, Firmware, VmBuilder};
use levee_tests::{guard, log_dir, require_tool, wait_until};

/// Set by the script in every process the probe starts, so it can find
/// survivors without confusing them with other people's tests.
const TOKEN_ENV: &str = "LEVEE_HYGIENE_TOKEN";

#[test]
fn killed_at_deadline_leaves_nothing() -> anyhow::Result<()> {
    let token = std::env::var(TOKEN_ENV).context("run me through dev/check-test-hygiene")?;
    require_tool("smbd", "samba")?;
    let guest = test_guest()?;
    let net = TestNet::new("hygiene")?;
    let _host = net.add_host("10.99.0.2/24")?;
    let server = LeveeServer::new()?;
    server.start(&net, DhcpMode::Full, &[])?;

    let dir = tempfile::tempdir()?;
    let vm = VmBuilder {
        direct: Some(DirectBoot {
            kernel: guest.kernel.clone(),
            initrd: guest.initrd.clone(),
            append: "console=ttyS0 panic=-1".into(),
        }),
        ..VmBuilder::new(Firmware::Bios, "52:54:00:00:0e:01")
    }
    .start(&net, dir.path())?;

    // smbd on loopback, as agent/tests/samba.rs runs it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let conf = dir.path().join("smb.conf");
    let d = dir.path().display();
    std::fs::write(
        &conf,
        format!(
            "[global]\n interfaces = 127.0.0.1\n bind interfaces only = yes\n smb ports = {port}\n \
             disable netbios = yes\n private dir = {d}\n lock directory = {d}\n state directory = {d}\n \
             cache directory = {d}\n pid directory = {d}\n ncalrpc dir = {d}/ncalrpc\n log file = {}\n",
            log_dir().join("smbd.log").display()
        ),
    )?;
    let smbd = guard::spawn(
        Command::new("smbd")
            .args(["--foreground", "--no-process-group", "-s"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    wait_until(Duration::from_secs(20), "smbd to listen", || {
        Ok(std::net::TcpStream::connect(("127.0.0.1", port))
            .is_ok()
            .then_some(()))
    })?;
    // Kept alive (not dropped) until the test is killed.
    let _smbd = smbd;
    // A grandchild in the group: dies only through the group kill.
    let _tree = guard::spawn(Command::new("sh").args(["-c", "sleep 3600 & sleep 3600; wait"]))?;

    wait_until(
        Duration::from_secs(60),
        "QEMU to print on the serial console",
        || Ok((!vm.console().is_empty()).then_some(())),
    )?;
    std::fs::write(log_dir().join("probe-ready"), &token)?;
    eprintln!("hygiene probe: everything started; waiting to be killed");
    // Ignores the test's own deadline on purpose: nextest must kill it.
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}
