//! `dhcp::serve` over real sockets on loopback (high ports, no privilege):
//! it answers a full DORA exchange, survives garbage, answers proxyDHCP on
//! both ports, and stops on cancellation.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use levee_pxe::boot::{BootDecision, BootRequest, MacAddr};
use levee_pxe::dhcp::dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};
use levee_pxe::dhcp::testing::{ClientPacket, VENDOR_BIOS, VENDOR_OVMF};
use levee_pxe::dhcp::{
    self, parse_reply, DhcpMode, DhcpOptions, IpxeBinaries, LeaseStore, MemoryLeases,
};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const LOCAL: Ipv4Addr = Ipv4Addr::LOCALHOST;

fn free_udp_port() -> u16 {
    StdUdpSocket::bind((LOCAL, 0))
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .unwrap()
}

struct Running {
    client: UdpSocket,
    server: SocketAddr,
    proxy: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<Result<(), dhcp::DhcpError>>,
}

async fn start(mode: DhcpMode, leases: Arc<MemoryLeases>) -> Running {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let client = UdpSocket::bind((LOCAL, 0)).await.unwrap();
    let client_port = client.local_addr().unwrap().port();
    let (server_port, proxy_port) = (free_udp_port(), free_udp_port());
    let options = DhcpOptions {
        interface: "lo".into(),
        mode,
        range: Some((
            Ipv4Addr::new(127, 99, 0, 100),
            Ipv4Addr::new(127, 99, 0, 110),
        )),
        lease_time: Duration::from_secs(600),
        ipxe: IpxeBinaries::with_files(Path::new("/usr/lib/ipxe"), |_| true),
        http_base: "http://127.0.0.1:8080".into(),
        server_ip: None,
        server_port,
        proxy_port,
        client_port,
    };
    let policy = Arc::new(|req: &BootRequest| BootDecision::Boot {
        script_url: format!("http://127.0.0.1:8080/boot/{}.ipxe", req.mac),
    });
    let stop = CancellationToken::new();
    let store: Arc<dyn LeaseStore> = leases;
    let task = tokio::spawn(dhcp::serve(options, policy, store, stop.clone()));
    let server = SocketAddr::from((LOCAL, server_port));
    let proxy = SocketAddr::from((LOCAL, proxy_port));
    // Wait until the server answers (it binds asynchronously).
    let probe = ClientPacket::new(MessageType::Discover, MacAddr([2, 0, 0, 0, 0, 1]), 1)
        .vendor_class(VENDOR_BIOS)
        .to_bytes();
    let running = Running {
        client,
        server,
        proxy,
        stop,
        task,
    };
    for _ in 0..50 {
        if running.ask(&probe, server).await.is_some() {
            return running;
        }
    }
    panic!("dhcp server on loopback never answered");
}

impl Running {
    /// Sends `packet` to `to` and waits briefly for one reply.
    async fn ask(&self, packet: &[u8], to: SocketAddr) -> Option<(Message, SocketAddr)> {
        self.client.send_to(packet, to).await.unwrap();
        let mut buf = [0u8; 1500];
        let (n, from) =
            tokio::time::timeout(Duration::from_millis(200), self.client.recv_from(&mut buf))
                .await
                .ok()?
                .ok()?;
        Some((parse_reply(&buf[..n]).expect("reply decodes"), from))
    }

    async fn stop(self) {
        self.stop.cancel();
        let result = tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("serve stops on cancel")
            .unwrap();
        assert!(result.is_ok(), "{result:?}");
    }
}

fn boot_file(msg: &Message) -> Vec<u8> {
    match msg.opts().get(OptionCode::BootfileName) {
        Some(DhcpOption::BootfileName(f)) => f.clone(),
        _ => Vec::new(),
    }
}

#[tokio::test]
async fn full_mode_dora_over_loopback_survives_garbage() {
    let leases = Arc::new(MemoryLeases::new());
    let s = start(DhcpMode::Full, leases.clone()).await;
    let mac = MacAddr([0x52, 0x54, 0, 0, 0, 0x42]);

    // Garbage first: nothing comes back, and nothing breaks.
    for junk in [&b""[..], b"\x01", &[0xff; 600], &[1u8; 300]] {
        assert!(s.ask(junk, s.server).await.is_none());
    }
    let real = ClientPacket::new(MessageType::Discover, mac, 5)
        .vendor_class(VENDOR_BIOS)
        .to_bytes();
    assert!(s.ask(&real[..200], s.server).await.is_none());
    // Rapid commit (80) with a length that makes dhcproto panic.
    let mut bogus = real[..real.len() - 1].to_vec();
    bogus.extend_from_slice(&[80, 1, 0, 255]);
    assert!(s.ask(&bogus, s.server).await.is_none());

    let discover = ClientPacket::new(MessageType::Discover, mac, 0x42)
        .vendor_class(VENDOR_BIOS)
        .arch(0)
        .to_bytes();
    let (offer, from) = s
        .ask(&discover, s.server)
        .await
        .expect("offer after garbage");
    assert_eq!(from, s.server, "replies come from the server port");
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(offer.xid(), 0x42);
    assert_eq!(boot_file(&offer), b"undionly.kpxe");
    assert_eq!(offer.siaddr(), LOCAL);
    let ip = offer.yiaddr();
    // .100 is held for the start-up probe's MAC.
    assert_eq!(ip, Ipv4Addr::new(127, 99, 0, 101));

    let request = ClientPacket::new(MessageType::Request, mac, 0x43)
        .vendor_class(VENDOR_BIOS)
        .arch(0)
        .requested_ip(ip)
        .server_id(LOCAL)
        .to_bytes();
    let (ack, _) = s.ask(&request, s.server).await.expect("ack");
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), ip);
    assert_eq!(leases.snapshot().len(), 1);
    assert_eq!(leases.snapshot()[0].ip, ip);
    s.stop().await;

    // Restart on the same store: the lease survives.
    let s = start(DhcpMode::Full, leases.clone()).await;
    let (offer, _) = s
        .ask(&discover, s.server)
        .await
        .expect("offer after restart");
    assert_eq!(offer.yiaddr(), ip);
    s.stop().await;
}

#[tokio::test]
async fn proxy_mode_answers_on_both_ports_over_loopback() {
    let s = start(DhcpMode::Proxy, Arc::new(MemoryLeases::new())).await;
    let mac = MacAddr([0x52, 0x54, 0, 0, 0, 0x43]);

    // A non-PXE client gets nothing from a proxy.
    let plain = ClientPacket::new(MessageType::Discover, mac, 1).to_bytes();
    assert!(s.ask(&plain, s.server).await.is_none());

    let discover = ClientPacket::new(MessageType::Discover, mac, 2)
        .vendor_class(VENDOR_OVMF)
        .arch(7)
        .to_bytes();
    let (offer, _) = s.ask(&discover, s.server).await.expect("proxy offer");
    assert_eq!(offer.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(boot_file(&offer), b"snponly.efi");

    assert!(s.ask(b"garbage", s.proxy).await.is_none());
    let request = ClientPacket::new(MessageType::Request, mac, 3)
        .vendor_class(VENDOR_OVMF)
        .arch(7)
        .ciaddr(LOCAL)
        .to_bytes();
    let (ack, from) = s
        .ask(&request, s.proxy)
        .await
        .expect("ack on the boot server port");
    assert_eq!(from, s.proxy);
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(boot_file(&ack), b"snponly.efi");
    s.stop().await;
}

#[tokio::test]
async fn full_mode_without_range_fails_to_start() {
    let options = DhcpOptions {
        interface: "lo".into(),
        mode: DhcpMode::Full,
        range: None,
        lease_time: Duration::from_secs(600),
        ipxe: IpxeBinaries::default(),
        http_base: String::new(),
        server_ip: None,
        server_port: free_udp_port(),
        proxy_port: free_udp_port(),
        client_port: free_udp_port(),
    };
    let policy = Arc::new(|_: &BootRequest| BootDecision::Ignore {
        reason: "test".into(),
    });
    let err = dhcp::serve(
        options,
        policy,
        Arc::new(MemoryLeases::new()),
        CancellationToken::new(),
    )
    .await;
    assert!(matches!(err, Err(dhcp::DhcpError::NoRange)));
}

fn assert_send<T: Send>(_: &T) {}

#[test]
fn serve_future_is_send() {
    // The provisioner spawns it on a multi-threaded runtime.
    let options = DhcpOptions {
        interface: "lo".into(),
        mode: DhcpMode::Proxy,
        range: None,
        lease_time: Duration::from_secs(1),
        ipxe: IpxeBinaries::default(),
        http_base: String::new(),
        server_ip: None,
        server_port: 0,
        proxy_port: 0,
        client_port: 0,
    };
    let policy = Arc::new(|_: &BootRequest| BootDecision::Ignore {
        reason: "test".into(),
    });
    let fut = dhcp::serve(
        options,
        policy,
        Arc::new(MemoryLeases::new()),
        CancellationToken::new(),
    );
    assert_send(&fut);
}
