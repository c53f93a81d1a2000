//! The TFTP server against real clients (curl, atftp) and raw packets.
//! A missing client tool fails the test: install with
//! `apt-get install atftp curl`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use levee_pxe::tftp::Mode;
use levee_pxe::tftp::{
    serve, ChainSource, DirSource, ErrorCode, FileSource, MemorySource, Packet, Request,
    TftpOptions,
};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

const INSTALL_HINT: &str = "apt-get install atftp curl";

struct Server {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    dir: tempfile::TempDir,
    memory: Arc<MemorySource>,
}

impl Server {
    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

/// Deterministic bytes that differ per file, so a mix-up shows.
fn content(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Starts `serve` on 127.0.0.1:0 over a temp root (plus a memory source).
async fn start(files: &[(&str, usize)]) -> Result<Server> {
    start_on("127.0.0.1:0", files).await
}

async fn start_on(bind: &str, files: &[(&str, usize)]) -> Result<Server> {
    // Server logs go to the test's output, shown when a test fails.
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_ansi(false)
        .try_init();
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("sub"))?;
    for (i, (name, len)) in files.iter().enumerate() {
        std::fs::write(root.join(name), content(*len, i as u32))?;
    }
    std::fs::write(dir.path().join("secret"), b"outside the root")?;
    std::os::unix::fs::symlink(dir.path().join("secret"), root.join("escape"))?;
    let memory = Arc::new(MemorySource::new());
    let source: Arc<dyn FileSource> = Arc::new(ChainSource::new(vec![
        memory.clone(),
        Arc::new(DirSource::new(&root)),
    ]));
    let socket = UdpSocket::bind(bind).await?;
    let addr = socket.local_addr()?;
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task = tokio::spawn(async move {
        if let Err(err) = serve(socket, source, TftpOptions::default(), token).await {
            panic!("serve failed: {err}");
        }
    });
    Ok(Server {
        addr,
        shutdown,
        task,
        dir,
        memory,
    })
}

fn require(tool: &str) -> Result<()> {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    ensure!(found, "`{tool}` is missing: {INSTALL_HINT}");
    Ok(())
}

async fn run(cmd: &str, args: &[String]) -> Result<()> {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(cmd)
            .args(args)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .with_context(|| format!("{cmd} {args:?} timed out"))?
    .with_context(|| format!("running {cmd} ({INSTALL_HINT})"))?;
    ensure!(
        out.status.success(),
        "{cmd} {args:?} failed: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

async fn atftp(server: SocketAddr, file: &str, out: &Path, options: &[&str]) -> Result<()> {
    let mut args = Vec::new();
    for option in options {
        args.push("--option".to_string());
        args.push(option.to_string());
    }
    args.extend(["-g", "-r", file, "-l"].map(String::from));
    args.push(out.display().to_string());
    args.push(server.ip().to_string());
    args.push(server.port().to_string());
    run("atftp", &args).await
}

async fn curl(server: SocketAddr, file: &str, out: &Path, extra: &[&str]) -> Result<()> {
    let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    args.extend(["-sS", "--max-time", "60", "-o"].map(String::from));
    args.push(out.display().to_string());
    args.push(format!("tftp://{server}/{file}"));
    run("curl", &args).await
}

fn same_file(got: &Path, want: &Path) -> Result<()> {
    let (got_bytes, want_bytes) = (std::fs::read(got)?, std::fs::read(want)?);
    ensure!(
        got_bytes == want_bytes,
        "{} differs from {} ({} vs {} bytes)",
        got.display(),
        want.display(),
        got_bytes.len(),
        want_bytes.len()
    );
    Ok(())
}

const FILES: &[(&str, usize)] = &[
    ("empty", 0),
    ("odd", 511),
    ("one-block", 512),
    ("blocks-1468", 1468 * 7),
    ("blocks-8192", 8192 * 3),
    ("big", 3 * 1024 * 1024 + 17),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atftp_fetches_byte_identical() -> Result<()> {
    require("atftp")?;
    let server = start(FILES).await?;
    let out_dir = tempfile::tempdir()?;
    let option_sets: &[&[&str]] = &[
        &["blksize 1468", "windowsize 16"],
        &[],
        &["blksize 512", "windowsize 4"],
        &["blksize 8192", "windowsize 4", "tsize 0"],
        &["blksize 65464"],
    ];
    for (i, options) in option_sets.iter().enumerate() {
        for (name, _) in FILES {
            let out = out_dir.path().join(format!("{name}.{i}"));
            atftp(server.addr, name, &out, options)
                .await
                .with_context(|| format!("{name} with {options:?}"))?;
            same_file(&out, &server.root().join(name))
                .with_context(|| format!("{name} with {options:?}"))?;
        }
    }
    server.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_fetches_byte_identical() -> Result<()> {
    require("curl")?;
    let server = start(FILES).await?;
    let generated = content(100_000, 99);
    server
        .memory
        .insert("generated/boot.ipxe", generated.clone());
    let out_dir = tempfile::tempdir()?;
    for extra in [&[][..], &["--tftp-blksize", "1468"], &["--tftp-no-options"]] {
        for (name, _) in FILES {
            let out = out_dir.path().join(name);
            curl(server.addr, name, &out, extra)
                .await
                .with_context(|| format!("{name} with {extra:?}"))?;
            same_file(&out, &server.root().join(name))
                .with_context(|| format!("{name} with {extra:?}"))?;
        }
        let out = out_dir.path().join("generated");
        curl(server.addr, "generated/boot.ipxe", &out, extra).await?;
        ensure!(std::fs::read(&out)? == generated, "in-memory file differs");
    }
    server.stop().await;
    Ok(())
}

/// Sends one packet from a fresh socket and returns the first reply.
async fn exchange(server: &Server, bytes: &[u8]) -> Result<(Packet, SocketAddr)> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    socket.send_to(bytes, server.addr).await?;
    let mut buf = vec![0u8; 70_000];
    let (len, from) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
        .await
        .context("no reply")??;
    Ok((Packet::parse(&buf[..len])?, from))
}

fn rrq(name: &str, options: &[(&str, &str)]) -> Vec<u8> {
    request(name, options, true)
}

fn request(name: &str, options: &[(&str, &str)], read: bool) -> Vec<u8> {
    let req = Request {
        filename: name.into(),
        mode: Mode::Octet,
        options: options
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
    };
    let packet = if read {
        Packet::Rrq(req)
    } else {
        Packet::Wrq(req)
    };
    packet.to_bytes().unwrap_or_default()
}

async fn expect_error(server: &Server, bytes: &[u8], want: ErrorCode) -> Result<()> {
    match exchange(server, bytes).await? {
        (Packet::Error { code, .. }, _) if code == want => Ok(()),
        (other, _) => bail!("expected error {want:?}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_error_packets() -> Result<()> {
    let server = start(FILES).await?;
    let secret = server.dir.path().join("secret");
    expect_error(&server, &rrq("../secret", &[]), ErrorCode::AccessViolation).await?;
    expect_error(
        &server,
        &rrq("sub/../../secret", &[("blksize", "1468")]),
        ErrorCode::AccessViolation,
    )
    .await?;
    expect_error(&server, &rrq("..\\secret", &[]), ErrorCode::AccessViolation).await?;
    expect_error(&server, &rrq("escape", &[]), ErrorCode::AccessViolation).await?;
    // Absolute names resolve inside the root, where these do not exist.
    expect_error(
        &server,
        &rrq(&secret.to_string_lossy(), &[]),
        ErrorCode::FileNotFound,
    )
    .await?;
    expect_error(&server, &rrq("/etc/passwd", &[]), ErrorCode::FileNotFound).await?;
    expect_error(&server, &rrq("sub", &[]), ErrorCode::AccessViolation).await?;
    expect_error(
        &server,
        &request("odd", &[], false),
        ErrorCode::AccessViolation,
    )
    .await?;
    expect_error(
        &server,
        &request("new-file", &[("tsize", "10")], false),
        ErrorCode::AccessViolation,
    )
    .await?;
    expect_error(
        &server,
        b"\x00\x01odd\x00mail\x00",
        ErrorCode::IllegalOperation,
    )
    .await?;
    // An absolute name of a file that is inside the root is served.
    match exchange(&server, &rrq("/odd", &[])).await? {
        (Packet::Data { block: 1, data }, _) => ensure!(data == content(511, 1), "wrong data"),
        (other, _) => bail!("expected DATA 1, got {other:?}"),
    }
    server.stop().await;
    Ok(())
}

/// A small TFTP client: fetches `name` and returns its bytes. It keeps
/// sending the RRQ until answered, so it copes with a full request queue.
async fn fetch(
    server: SocketAddr,
    name: &str,
    blksize: u16,
    window: u16,
    ready: Option<Arc<tokio::sync::Barrier>>,
) -> Result<Vec<u8>> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let request = rrq(
        name,
        &[
            ("blksize", &blksize.to_string()),
            ("windowsize", &window.to_string()),
        ],
    );
    let mut buf = vec![0u8; 70_000];
    let mut peer = None;
    for _ in 0..20 {
        socket.send_to(&request, server).await?;
        if let Ok(got) =
            tokio::time::timeout(Duration::from_millis(1500), socket.recv_from(&mut buf)).await
        {
            let (len, from) = got?;
            match Packet::parse(&buf[..len])? {
                Packet::Oack { .. } => {
                    peer = Some(from);
                    break;
                }
                other => bail!("expected OACK, got {other:?}"),
            }
        }
    }
    let peer = peer.context("no OACK after 20 requests")?;
    socket.connect(peer).await?;
    if let Some(barrier) = ready {
        // Every transfer is open at once before any data flows.
        // Bounded, so one client that got no OACK fails the test instead of
        // leaving the others waiting forever.
        tokio::time::timeout(Duration::from_secs(90), barrier.wait())
            .await
            .context("not every client got its OACK")?;
    }
    let mut data = Vec::new();
    let mut last_ack = 0u16;
    let mut since_ack = 0u16;
    socket.send(&Packet::Ack { block: 0 }.to_bytes()?).await?;
    let started = Instant::now();
    loop {
        ensure!(
            started.elapsed() < Duration::from_secs(120),
            "transfer took too long"
        );
        let len = match tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buf)).await {
            Ok(got) => got?,
            Err(_) => {
                socket
                    .send(&Packet::Ack { block: last_ack }.to_bytes()?)
                    .await?;
                continue;
            }
        };
        match Packet::parse(&buf[..len])? {
            Packet::Data { block, data: chunk } if block == last_ack.wrapping_add(1) => {
                data.extend_from_slice(&chunk);
                last_ack = block;
                since_ack += 1;
                let end = chunk.len() < usize::from(blksize);
                if end || since_ack == window {
                    socket.send(&Packet::Ack { block }.to_bytes()?).await?;
                    since_ack = 0;
                }
                if end {
                    return Ok(data);
                }
            }
            Packet::Data { .. } => {
                // Out of order: RFC 7440 loss signal.
                socket
                    .send(&Packet::Ack { block: last_ack }.to_bytes()?)
                    .await?;
                since_ack = 0;
            }
            other => bail!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_transfers() -> Result<()> {
    const CLIENTS: usize = 520;
    let server = start(&[("disk", 30_000)]).await?;
    let want_disk = std::fs::read(server.root().join("disk"))?;
    let want_mem = content(50_000, 7);
    server.memory.insert("mem", want_mem.clone());
    let barrier = Arc::new(tokio::sync::Barrier::new(CLIENTS));
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let (addr, barrier) = (server.addr, barrier.clone());
        let name = if i % 2 == 0 { "disk" } else { "mem" };
        tasks.push(tokio::spawn(async move {
            fetch(addr, name, 1024, 4, Some(barrier)).await
        }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        let got = task.await?.with_context(|| format!("client {i}"))?;
        let want = if i % 2 == 0 { &want_disk } else { &want_mem };
        ensure!(
            &got == want,
            "client {i} got {} bytes that differ",
            got.len()
        );
    }
    server.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_do_not_crash() -> Result<()> {
    let server = start(FILES).await?;
    let junk: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![0, 1],
        vec![0, 1, b'a'],
        b"\x00\x01odd\x00".to_vec(),
        b"\x00\x01odd\x00octet".to_vec(),
        b"\x00\x01odd\x00octet\x00blksize\x00".to_vec(),
        b"\x00\x01odd\x00octet\x00blksize\x00-1\x00windowsize\x0099999999999\x00".to_vec(),
        b"\x00\x01\xff\xfe\x00octet\x00".to_vec(),
        b"\x00\x03\x00".to_vec(),
        b"\x00\x04".to_vec(),
        b"\x00\x05\x00".to_vec(),
        b"\x00\x06a\x00".to_vec(),
        b"\xff\xff\xff\xff".to_vec(),
        vec![0x41; 65_000],
    ];
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    for bytes in &junk {
        socket.send_to(bytes, server.addr).await?;
    }
    for i in 0..2000u32 {
        socket
            .send_to(&content((i % 700) as usize, i), server.addr)
            .await?;
    }
    // Junk inside a running transfer, on its own port.
    let transfer = UdpSocket::bind("127.0.0.1:0").await?;
    transfer
        .send_to(
            &rrq("big", &[("blksize", "1468"), ("windowsize", "4")]),
            server.addr,
        )
        .await?;
    let mut buf = vec![0u8; 70_000];
    let (_, port) =
        tokio::time::timeout(Duration::from_secs(5), transfer.recv_from(&mut buf)).await??;
    for bytes in &junk {
        transfer.send_to(bytes, port).await?;
    }
    transfer
        .send_to(&Packet::Ack { block: 60_000 }.to_bytes()?, port)
        .await?;
    // The server still serves, the new transfer as well as others.
    let got = fetch(server.addr, "big", 1468, 16, None).await?;
    ensure!(
        got == std::fs::read(server.root().join("big"))?,
        "big differs after junk"
    );
    server.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_listener_answers_from_the_requested_address() -> Result<()> {
    let server = start_on("0.0.0.0:0", FILES).await?;
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    for ip in ["127.0.0.2", "127.0.0.3"] {
        socket
            .send_to(&rrq("odd", &[]), (ip, server.addr.port()))
            .await?;
        let mut buf = vec![0u8; 1024];
        let (_, from) =
            tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf)).await??;
        ensure!(
            from.ip().to_string() == ip,
            "asked {ip}, answered from {from}"
        );
    }
    server.stop().await;
    Ok(())
}

/// Relays one client's transfers to the server and drops every `nth` DATA
/// packet on the way back: a lossy link without root or netem.
async fn lossy_proxy(
    server: SocketAddr,
    nth: u64,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let front = UdpSocket::bind("127.0.0.1:0").await?;
    let back = UdpSocket::bind("127.0.0.1:0").await?;
    let addr = front.local_addr()?;
    let task = tokio::spawn(async move {
        let (mut client, mut transfer_port) = (None, None);
        let (mut a, mut b) = (vec![0u8; 70_000], vec![0u8; 70_000]);
        let mut data_seen = 0u64;
        loop {
            tokio::select! {
                Ok((len, from)) = front.recv_from(&mut a) => {
                    client = Some(from);
                    let to = match Packet::parse(&a[..len]) {
                        Ok(Packet::Rrq(_)) => server,
                        _ => transfer_port.unwrap_or(server),
                    };
                    let _ = back.send_to(&a[..len], to).await;
                }
                Ok((len, from)) = back.recv_from(&mut b) => {
                    if from != server {
                        transfer_port = Some(from);
                    }
                    if matches!(Packet::parse(&b[..len]), Ok(Packet::Data { .. })) {
                        data_seen += 1;
                        if data_seen.checked_rem(nth) == Some(0) {
                            continue;
                        }
                    }
                    if let Some(client) = client {
                        let _ = front.send_to(&b[..len], client).await;
                    }
                }
            }
        }
    });
    Ok((addr, task))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_link_recovers_without_waiting_for_timeouts() -> Result<()> {
    require("atftp")?;
    require("curl")?;
    let server = start(FILES).await?;
    let out_dir = tempfile::tempdir()?;
    let want = server.root().join("big");
    for (i, options) in [
        &["blksize 1468", "windowsize 16"][..],
        &["blksize 1468", "windowsize 4"],
    ]
    .iter()
    .enumerate()
    {
        let (proxy, relay) = lossy_proxy(server.addr, 97).await?;
        let out = out_dir.path().join(format!("atftp-{i}"));
        let started = Instant::now();
        atftp(proxy, "big", &out, options).await?;
        let took = started.elapsed();
        relay.abort();
        eprintln!("lossy atftp transfer with {options:?}: {took:?}");
        same_file(&out, &want)?;
        // ~22 losses: waiting out a 1 s timeout for each would take > 20 s;
        // the margin is for a loaded CI machine.
        ensure!(
            took < Duration::from_secs(15),
            "lossy atftp transfer with {options:?} took {took:?}"
        );
    }
    // Lock step (curl sends no windowsize): a lost block costs one timeout.
    let (proxy, relay) = lossy_proxy(server.addr, 20).await?;
    let out = out_dir.path().join("curl");
    curl(proxy, "blocks-1468", &out, &[]).await?;
    same_file(&out, &server.root().join("blocks-1468"))?;
    relay.abort();
    server.stop().await;
    Ok(())
}

/// A client that sends its request twice (its first try crossed our first
/// DATA packet) gets one transfer, not two racing ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retransmitted_request_does_not_start_a_second_transfer() -> Result<()> {
    let server = start(FILES).await?;
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let request = rrq("odd", &[]);
    socket.send_to(&request, server.addr).await?;
    socket.send_to(&request, server.addr).await?;
    let mut buf = vec![0u8; 70_000];
    let mut senders = std::collections::HashSet::new();
    // Without ACKs the transfer resends block 1; listen long enough to see
    // a second transfer's first block if there were one.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    while let Ok(got) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await {
        let (len, from) = got?;
        if let Packet::Data { block: 1, .. } = Packet::parse(&buf[..len])? {
            senders.insert(from);
        }
    }
    ensure!(
        senders.len() == 1,
        "DATA 1 came from {} transfers: {senders:?}",
        senders.len()
    );
    server.stop().await;
    Ok(())
}
