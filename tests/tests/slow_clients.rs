//! `levee serve` under slow and greedy clients on its own test network
//! (issue 11). A real appliance identity (the agent's key, enrolled with a
//! token from its boot script) pulls its configuration over mutual TLS
//! while other hosts of the network hold connections open and trickle a
//! request head; and the server out of descriptors neither spins a core
//! nor stays unreachable once the attacker leaves.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use levee_agent::enroll::{Credential, MtlsClient};
use levee_tests::net::{Host, TestNet, SERVER_IP};
use levee_tests::server::LeveeServer;

#[path = "common/identity.rs"]
mod identity;

const MAC: &str = "52:54:00:11:00:01";
const HTTP: &str = "10.99.0.1:80";
const HTTPS: &str = "10.99.0.1:8443";

/// The open-file limit of this process raised to its hard limit: the test
/// holds a thousand sockets.
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// A data directory with a boot profile that mints tokens, customer
/// `acme` and `MAC` registered for it.
fn prepare(server: &LeveeServer, dir: &Path) -> anyhow::Result<()> {
    std::fs::write(dir.join("k"), b"kernel")?;
    std::fs::write(dir.join("i"), b"initrd")?;
    let (k, i) = (dir.join("k"), dir.join("i"));
    server.cli(&[
        "profile",
        "set",
        "default",
        "--kernel",
        k.to_str().context("path")?,
        "--initrd",
        i.to_str().context("path")?,
        "--cmdline",
        "levee.ca={ca} levee.token={token}",
    ])?;
    let yaml = dir.join("acme.yaml");
    std::fs::write(
        &yaml,
        "customer: acme\nheartbeat_interval: 5m\nsources:\n  - name: f\n    smb: smb://u@nas/s\n    password: Secret-16\n",
    )?;
    server.cli(&["customer", "apply", "-f", yaml.to_str().context("path")?])?;
    server.cli(&["appliance", "register", "--mac", MAC, "--customer", "acme"])?;
    Ok(())
}

/// Enrolls `MAC` as the agent does, from inside `host`.
fn enroll(host: &Host) -> anyhow::Result<Credential> {
    identity::enroll_from(host, MAC, HTTP)
}

/// `n` configuration pulls, each on a new client (connection and
/// handshake included), from inside `host`; the slowest.
fn pulls(host: &Host, cred: &Credential, n: usize) -> anyhow::Result<Duration> {
    let cred = cred.clone();
    host.thread(move || {
        let state = tempfile::tempdir()?;
        let mut slowest = Duration::ZERO;
        for _ in 0..n {
            let started = Instant::now();
            let client = MtlsClient::new(&cred)?;
            let got = client.fetch_config(state.path())?;
            ensure!(got.config.customer == "acme");
            slowest = slowest.max(started.elapsed());
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(slowest)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("pulling thread panicked"))?
}

/// Whether the server has closed `s` (EOF or reset; a 503 first is fine),
/// without waiting.
fn is_closed(s: &TcpStream) -> bool {
    let mut buf = [0u8; 512];
    s.set_nonblocking(true).ok();
    let mut r = s;
    loop {
        match r.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

fn open_count<'a>(conns: impl IntoIterator<Item = &'a TcpStream>) -> usize {
    conns.into_iter().filter(|s| !is_closed(s)).count()
}

#[test]
fn r11_idle_and_trickling_clients_do_not_stop_an_appliance() -> anyhow::Result<()> {
    raise_nofile();
    let net = TestNet::new("slow")?;
    let appliance = net.add_host("10.99.0.2/24")?;
    let attacker = net.add_host("10.99.0.3/24")?;
    let trickler = net.add_host("10.99.0.4/24")?;
    let server = LeveeServer::new()?;
    let dir = tempfile::tempdir()?;
    prepare(&server, dir.path())?;
    server.start_with(
        &net,
        &[
            "--http",
            HTTP,
            "--https",
            HTTPS,
            "--no-tftp",
            "--public-url",
            &format!("http://{SERVER_IP}"),
            "--header-timeout",
            "2s",
            "--tls-timeout",
            "3s",
            "--idle-timeout",
            "3s",
        ],
        None,
    )?;
    let cred = enroll(&appliance)?;
    let before = pulls(&appliance, &cred, 1)?;

    // 1,000 connections that send nothing, half to each listener.
    let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    let idle = attacker.thread(move || {
        let mut conns: Vec<(&str, TcpStream)> = Vec::new();
        // Opening 1,000 takes a while on a loaded machine: the first is
        // accepted no earlier than `first`, the last by `opened`.
        let first = Instant::now();
        for n in 0..1000 {
            let addr = if n % 2 == 0 { HTTP } else { HTTPS };
            conns.push((addr, TcpStream::connect(addr)?));
        }
        let opened = Instant::now();
        std::thread::sleep(Duration::from_millis(500));
        let by = |addr: &str| open_count(conns.iter().filter(|(a, _)| *a == addr).map(|(_, s)| s));
        let counts = (by(HTTP), by(HTTPS));
        seen_tx.send(counts).ok();
        // Held until every one of them is closed by the server.
        let streams: Vec<TcpStream> = conns.into_iter().map(|(_, s)| s).collect();
        let mut all_closed = None;
        while opened.elapsed() < Duration::from_secs(10) {
            if open_count(&streams) == 0 {
                all_closed = Some((first.elapsed(), opened.elapsed()));
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        hold_rx.recv_timeout(Duration::from_secs(20)).ok();
        Ok(all_closed)
    });
    let (open_http, open_https) = seen_rx
        .recv_timeout(Duration::from_secs(30))
        .context("the attacker did not report")?;
    // A request head trickled one byte every 200 ms, from a third host.
    let trickle = trickler.thread(|| {
        let mut s = TcpStream::connect(HTTP)?;
        let started = Instant::now();
        for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "
            .iter()
            .cycle()
            .take(100)
        {
            if s.write_all(&[*b]).is_err() || is_closed(&s) {
                return Ok(started.elapsed());
            }
            s.set_nonblocking(false)?;
            std::thread::sleep(Duration::from_millis(200));
        }
        anyhow::bail!("a trickled head was never cut off")
    });
    let during = pulls(&appliance, &cred, 5)?;
    let trickle_cut = trickle
        .join()
        .map_err(|_| anyhow::anyhow!("trickler panicked"))??;
    hold_tx.send(()).ok();
    let all_closed = idle
        .join()
        .map_err(|_| anyhow::anyhow!("attacker panicked"))??;
    let after = pulls(&appliance, &cred, 1)?;
    eprintln!(
        "pulls: {before:?} before, slowest {during:?} during, {after:?} after; open after 0.5 s: {open_http} http, {open_https} https; all idle closed after {all_closed:?}; trickle cut after {trickle_cut:?}"
    );
    ensure!(during < Duration::from_secs(2), "a pull took {during:?}");
    ensure!(
        (open_http, open_https) == (16, 16),
        "the per-IP cap (16) left {open_http} http and {open_https} https connections open"
    );
    // (after the first was opened, after the last was)
    let (since_first, since_last) = all_closed.context("idle connections were never closed")?;
    ensure!(
        since_first >= Duration::from_millis(2500) && since_last < Duration::from_secs(6),
        "idle connections all closed {since_first:?} after the first was opened and {since_last:?} after the last (timeouts 3 s)"
    );
    ensure!(
        trickle_cut >= Duration::from_millis(1800) && trickle_cut < Duration::from_millis(2800),
        "trickled head cut after {trickle_cut:?} (header timeout 2 s)"
    );
    Ok(())
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces), from field 3.
    let rest = stat.rsplit_once(')').context("stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

#[test]
fn r11_out_of_descriptors_the_server_backs_off_and_recovers() -> anyhow::Result<()> {
    raise_nofile();
    let net = TestNet::new("nofile")?;
    let appliance = net.add_host("10.99.0.2/24")?;
    let attacker = net.add_host("10.99.0.3/24")?;
    let server = LeveeServer::new()?;
    let dir = tempfile::tempdir()?;
    prepare(&server, dir.path())?;
    // The caps are out of the way: this is about running out of
    // descriptors (200), and the connections stay until the attacker goes.
    let pid = server.start_with(
        &net,
        &[
            "--http",
            HTTP,
            "--https",
            HTTPS,
            "--no-tftp",
            "--public-url",
            &format!("http://{SERVER_IP}"),
            "--max-conns",
            "1000",
            "--max-conns-per-ip",
            "1000",
            "--tls-timeout",
            "60s",
            "--idle-timeout",
            "60s",
        ],
        Some(200),
    )?;
    let (leave_tx, leave_rx) = std::sync::mpsc::channel::<()>();
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let flood = attacker.thread(move || {
        let mut conns = Vec::new();
        for n in 0..300 {
            conns.push(TcpStream::connect(if n % 2 == 0 { HTTP } else { HTTPS })?);
        }
        held_tx.send(()).ok();
        leave_rx.recv_timeout(Duration::from_secs(60)).ok();
        drop(conns);
        Ok(())
    });
    held_rx
        .recv_timeout(Duration::from_secs(30))
        .context("the attacker could not connect")?;
    std::thread::sleep(Duration::from_secs(1));
    let ticks = {
        let t0 = cpu_ticks(pid)?;
        std::thread::sleep(Duration::from_secs(3));
        cpu_ticks(pid)? - t0
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let cpu = Duration::from_millis(ticks * 1000 / hz);
    leave_tx.send(()).ok();
    flood
        .join()
        .map_err(|_| anyhow::anyhow!("attacker panicked"))??;
    let left = Instant::now();
    let back = appliance
        .thread(move || loop {
            if identity::http_get(HTTP, "/healthz").is_ok() {
                return Ok(left.elapsed());
            }
            ensure!(
                left.elapsed() < Duration::from_secs(10),
                "still unreachable"
            );
            std::thread::sleep(Duration::from_millis(100));
        })
        .join()
        .map_err(|_| anyhow::anyhow!("client panicked"))??;
    let log = server.log_text();
    eprintln!("server CPU over 3 s out of descriptors: {cpu:?}; reachable {back:?} after the attacker left");
    ensure!(
        log.contains("cannot accept connections"),
        "the server never ran out of descriptors: the test proves nothing\n{log}"
    );
    // Measured: 0 ticks with the back-off; an accept loop without a pause
    // used 740 ms here on a loaded 2-core machine (a whole core when idle).
    ensure!(
        cpu < Duration::from_millis(150),
        "the server used {cpu:?} of CPU in 3 s while out of descriptors"
    );
    ensure!(
        back < Duration::from_secs(3),
        "reachable again only after {back:?}"
    );
    Ok(())
}
