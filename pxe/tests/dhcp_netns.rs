//! DHCP and router advertisements on a real Ethernet-like link: each test
//! moves its own thread into a fresh network namespace (needs root, as the
//! boot tests do) with a veth pair, `srv0` (server, 10.99.0.1/24 and
//! fd99::1/64) and `cli0` (client). Nothing leaves the namespace.
//!
//! - DHCP: a client bound to cli0 broadcasts a DISCOVER to port 67 and gets
//!   the broadcast OFFER on port 68, through SO_BINDTODEVICE sockets.
//! - RA: the Linux kernel on cli0 accepts our advertisement and configures
//!   an address from the advertised ULA /64; a router solicitation gets an
//!   advertisement at once, not at the next tick.

use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use levee_pxe::boot::{BootDecision, BootRequest, MacAddr};
use levee_pxe::dhcp::dhcproto::v4::{DhcpOption, MessageType, OptionCode};
use levee_pxe::dhcp::testing::{ClientPacket, VENDOR_IPXE_EFI};
use levee_pxe::dhcp::{self, parse_reply, DhcpMode, DhcpOptions, IpxeBinaries, MemoryLeases};
use levee_pxe::ra;
use socket2::{Domain, Protocol, Socket, Type};
use tokio_util::sync::CancellationToken;

fn run(cmd: &str) {
    let status = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
    assert!(status.success(), "`{cmd}` failed");
}

/// Moves this thread into a new network namespace with the veth pair up.
fn private_link() {
    // SAFETY: unshare only changes this thread's namespace.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET) needs root: {}",
        std::io::Error::last_os_error()
    );
    // Child processes forked from this thread inherit its namespace.
    run("sysctl -qw net.ipv6.conf.default.accept_dad=0 net.ipv6.conf.all.accept_dad=0");
    run("ip link set lo up && ip link add name srv0 type veth peer name cli0");
    run("ip addr add 10.99.0.1/24 dev srv0 && ip -6 addr add fd99::1/64 dev srv0 nodad");
    run("ip link set srv0 up && ip link set cli0 up");
}

fn runtime() -> tokio::runtime::Runtime {
    // Current-thread: the sockets must be made on this (unshared) thread.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The client half of the DHCP test, in a namespace of its own: a packet
/// whose source is one of the server's own addresses would be dropped as
/// martian, so the client must not share the server's namespace.
fn dhcp_client(
    tid_tx: std::sync::mpsc::Sender<i32>,
    moved_rx: std::sync::mpsc::Receiver<()>,
) -> Vec<u8> {
    // SAFETY: unshare only changes this thread's namespace; gettid has no
    // preconditions.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
    tid_tx.send(unsafe { libc::gettid() }).unwrap();
    moved_rx.recv().unwrap();
    run("ip addr add 10.99.0.50/24 dev cli0 && ip link set cli0 up");

    let client = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    client.set_reuse_address(true).unwrap();
    client.set_broadcast(true).unwrap();
    client.bind_device(Some(b"cli0")).unwrap();
    client
        .bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 68)).into())
        .unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let client = std::net::UdpSocket::from(client);

    let mac = MacAddr([0x52, 0x54, 0, 0x99, 0, 1]);
    let discover = ClientPacket::new(MessageType::Discover, mac, 0xabcd)
        .vendor_class(VENDOR_IPXE_EFI)
        .arch(7)
        .ipxe()
        .to_bytes();
    let mut buf = [0u8; 1500];
    let deadline = Instant::now() + Duration::from_secs(8);
    while Instant::now() < deadline {
        client
            .send_to(&discover, (Ipv4Addr::BROADCAST, 67))
            .unwrap();
        if let Ok((n, from)) = client.recv_from(&mut buf) {
            assert_eq!(
                from,
                SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 99, 0, 1), 67))
            );
            return buf[..n].to_vec();
        }
    }
    panic!("no OFFER on cli0");
}

#[test]
fn broadcast_dhcp_exchange_over_veth() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    private_link();
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let (moved_tx, moved_rx) = std::sync::mpsc::channel();
    let client = std::thread::spawn(move || dhcp_client(tid_tx, moved_rx));
    let tid = tid_rx.recv().unwrap();
    run(&format!("ip link set cli0 netns {tid}"));
    moved_tx.send(()).unwrap();

    let rt = runtime();
    let stop = CancellationToken::new();
    let options = DhcpOptions {
        interface: "srv0".into(),
        mode: DhcpMode::Full,
        range: Some((Ipv4Addr::new(10, 99, 0, 100), Ipv4Addr::new(10, 99, 0, 120))),
        lease_time: Duration::from_secs(600),
        ipxe: IpxeBinaries::with_files(Path::new("/usr/lib/ipxe"), |_| true),
        http_base: "http://10.99.0.1:8080".into(),
        server_ip: None,
        server_port: 67,
        proxy_port: 4011,
        client_port: 68,
    };
    let policy = Arc::new(|req: &BootRequest| BootDecision::Boot {
        script_url: format!("http://10.99.0.1:8080/boot/{}.ipxe", req.mac),
    });
    let server = rt.spawn(dhcp::serve(
        options,
        policy,
        Arc::new(MemoryLeases::new()),
        stop.clone(),
    ));
    let reply = rt.block_on(async {
        tokio::task::spawn_blocking(move || client.join())
            .await
            .unwrap()
    });
    stop.cancel();
    rt.block_on(async { server.await.unwrap().unwrap() });
    let reply = reply.unwrap_or_else(|e| std::panic::resume_unwind(e));

    let offer = parse_reply(&reply).expect("offer decodes");
    let mac = MacAddr([0x52, 0x54, 0, 0x99, 0, 1]);
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(offer.xid(), 0xabcd);
    assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 99, 0, 100));
    assert_eq!(
        offer.opts().get(OptionCode::BootfileName),
        Some(&DhcpOption::BootfileName(
            format!("http://10.99.0.1:8080/boot/{mac}.ipxe").into_bytes()
        ))
    );
}

/// Receives ICMPv6 messages on `socket` until one of type 134 arrives or
/// `timeout` passes.
fn wait_for_ra(socket: &Socket, timeout: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut buf = [MaybeUninit::<u8>::uninit(); 1500];
    while Instant::now() < deadline {
        socket
            .set_read_timeout(Some(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            ))
            .unwrap();
        let Ok(n) = socket.recv(&mut buf) else {
            continue;
        };
        // SAFETY: recv initialised the first `n` bytes.
        let data = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n) };
        if data.first() == Some(&134) {
            return Some(data.to_vec());
        }
    }
    None
}

#[test]
fn kernel_accepts_our_router_advertisement() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    private_link();
    let rt = runtime();
    let stop = CancellationToken::new();
    let ra_task = {
        let stop = stop.clone();
        // A long period: the first RA goes out at once, and any RA soon
        // after a solicitation is the reply to it.
        rt.spawn(async move { ra::serve_every("srv0", Duration::from_secs(60), stop).await })
    };

    // A listener on the client side, made before the first tick.
    let listener = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6)).unwrap();
    listener.bind_device(Some(b"cli0")).unwrap();
    listener.set_multicast_hops_v6(255).unwrap();
    let cli_index = unsafe { libc::if_nametoindex(c"cli0".as_ptr()) };
    assert_ne!(cli_index, 0);

    rt.block_on(async {
        // The RA task runs while we wait here.
        let first = tokio::task::spawn_blocking({
            let listener = listener.try_clone().unwrap();
            move || wait_for_ra(&listener, Duration::from_secs(8))
        })
        .await
        .unwrap()
        .expect("an RA arrives on cli0");
        assert_eq!(&first[6..8], &[0, 0], "router lifetime 0");
        assert_eq!(first[5] & 0xc0, 0, "no M/O flags");

        // The kernel on cli0 configures fd99::/64 from it.
        let deadline = Instant::now() + Duration::from_secs(8);
        loop {
            let out = Command::new("ip")
                .args(["-6", "addr", "show", "dev", "cli0"])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            if text.contains("inet6 fd99::") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no SLAAC address on cli0:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // A solicitation is answered at once (the next tick is a minute away).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let rs = [133u8, 0, 0, 0, 0, 0, 0, 0];
        let all_routers =
            SocketAddrV6::new(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2), 0, 0, cli_index);
        let sent = Instant::now();
        listener.send_to(&rs, &all_routers.into()).unwrap();
        let reply = tokio::task::spawn_blocking({
            let listener = listener.try_clone().unwrap();
            move || wait_for_ra(&listener, Duration::from_millis(1500))
        })
        .await
        .unwrap();
        assert!(reply.is_some(), "no RA within 1.5 s of a solicitation");
        assert!(sent.elapsed() < Duration::from_millis(1500));
    });
    stop.cancel();
    rt.block_on(async { ra_task.await.unwrap().unwrap() });
}
