//! Malformed, truncated and hostile DHCP packets never panic the handler,
//! in either mode and on either port, and the handler keeps answering
//! real clients afterwards.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use levee_pxe::boot::{BootDecision, BootRequest, MacAddr};
use levee_pxe::dhcp::dhcproto::v4::MessageType;
use levee_pxe::dhcp::testing::{ClientPacket, VENDOR_BIOS, VENDOR_HTTP, VENDOR_OVMF};
use levee_pxe::dhcp::{DhcpMode, Handler, HandlerConfig, IpxeBinaries, MemoryLeases, Port};

fn handler(mode: DhcpMode) -> Handler {
    let config = HandlerConfig {
        mode,
        server_ip: Ipv4Addr::new(10, 99, 0, 1),
        prefix_len: 24,
        range: Some((Ipv4Addr::new(10, 99, 0, 100), Ipv4Addr::new(10, 99, 0, 103))),
        lease_time: Duration::from_secs(60),
        ipxe: IpxeBinaries::with_files(Path::new("/usr/lib/ipxe"), |_| true),
        http_base: "http://10.99.0.1:8080".into(),
    };
    let policy = Arc::new(|req: &BootRequest| BootDecision::Boot {
        script_url: format!("http://10.99.0.1:8080/boot/{}.ipxe", req.mac),
    });
    Handler::new(config, policy, Arc::new(MemoryLeases::new())).unwrap()
}

/// Deterministic xorshift, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn real_packets() -> Vec<Vec<u8>> {
    let mac = MacAddr([0x52, 0x54, 0, 0xaa, 0xbb, 0xcc]);
    vec![
        ClientPacket::new(MessageType::Discover, mac, 1)
            .vendor_class(VENDOR_BIOS)
            .arch(0)
            .to_bytes(),
        ClientPacket::new(MessageType::Discover, mac, 2)
            .vendor_class(VENDOR_OVMF)
            .arch(7)
            .machine_id(&[0; 17])
            .to_bytes(),
        ClientPacket::new(MessageType::Discover, mac, 3)
            .vendor_class(VENDOR_BIOS)
            .ipxe()
            .to_bytes(),
        ClientPacket::new(MessageType::Discover, mac, 4)
            .vendor_class(VENDOR_HTTP)
            .arch(16)
            .to_bytes(),
        ClientPacket::new(MessageType::Request, mac, 5)
            .vendor_class(VENDOR_BIOS)
            .requested_ip(Ipv4Addr::new(10, 99, 0, 100))
            .server_id(Ipv4Addr::new(10, 99, 0, 1))
            .to_bytes(),
        ClientPacket::new(MessageType::Request, mac, 6)
            .vendor_class(VENDOR_OVMF)
            .ciaddr(Ipv4Addr::new(192, 168, 1, 9))
            .to_bytes(),
    ]
}

/// Feeds `bytes` to every handler on every port.
fn feed(handlers: &mut [Handler], bytes: &[u8]) {
    for h in handlers.iter_mut() {
        for port in [Port::Dhcp, Port::Proxy] {
            let _ = h.handle(bytes, port, 1_000);
        }
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut hs = [handler(DhcpMode::Full), handler(DhcpMode::Proxy)];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let len = rng.below(700);
        let bytes: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
        feed(&mut hs, &bytes);
    }
}

#[test]
fn truncated_real_packets_never_panic() {
    let mut hs = [handler(DhcpMode::Full), handler(DhcpMode::Proxy)];
    for packet in real_packets() {
        for len in 0..=packet.len() {
            feed(&mut hs, &packet[..len]);
        }
    }
}

#[test]
fn wrong_op_and_hardware_fields_are_ignored() {
    let mut hs = [handler(DhcpMode::Full), handler(DhcpMode::Proxy)];
    for packet in real_packets() {
        for (offset, values) in [
            (0usize, [0u8, 2, 3, 255]),
            (1, [0, 6, 32, 255]),
            (2, [0, 7, 16, 255]),
        ] {
            for v in values {
                let mut p = packet.clone();
                p[offset] = v;
                for h in hs.iter_mut() {
                    assert!(
                        h.handle(&p, Port::Dhcp, 1_000).is_none(),
                        "offset {offset} = {v}"
                    );
                }
            }
        }
        let mut p = packet.clone();
        p[236] = 0; // magic cookie
        feed(&mut hs, &p);
    }
}

#[test]
fn absurd_option_lengths_never_panic() {
    let mut hs = [handler(DhcpMode::Full), handler(DhcpMode::Proxy)];
    let base = real_packets().remove(0);
    // Header, magic cookie and message type (option 53), then the option
    // under test with every interesting length, alone, doubled (RFC 3396
    // concatenation) and cut short.
    let head = &base[..243];
    for code in 1..=254u8 {
        for len in [0u8, 1, 2, 3, 4, 5, 6, 16, 17, 64, 128, 255] {
            let body: Vec<u8> = (0..len).map(|i| i.wrapping_mul(37)).collect();
            let mut one = head.to_vec();
            one.extend_from_slice(&[code, len]);
            one.extend_from_slice(&body);
            one.push(255);
            feed(&mut hs, &one);

            let mut two = head.to_vec();
            for _ in 0..2 {
                two.extend_from_slice(&[code, len]);
                two.extend_from_slice(&body);
            }
            two.push(255);
            feed(&mut hs, &two);

            let mut short = head.to_vec();
            short.extend_from_slice(&[code, len]);
            short.extend_from_slice(&body[..body.len() / 2]);
            feed(&mut hs, &short);
        }
    }
}

#[test]
fn mutated_real_packets_never_panic_and_the_handler_keeps_answering() {
    let mut hs = [handler(DhcpMode::Full), handler(DhcpMode::Proxy)];
    let packets = real_packets();
    let mut rng = Rng(42);
    for _ in 0..20_000 {
        let mut p = packets[rng.below(packets.len())].clone();
        for _ in 0..=rng.below(8) {
            let i = rng.below(p.len());
            p[i] = rng.byte();
        }
        if rng.below(4) == 0 {
            let cut = rng.below(p.len());
            p.truncate(cut);
        }
        feed(&mut hs, &p);
    }
    // A real client is still served.
    let discover = ClientPacket::new(MessageType::Discover, MacAddr([2, 0, 0, 0, 0, 9]), 77)
        .vendor_class(VENDOR_BIOS)
        .arch(0)
        .to_bytes();
    assert!(hs[1].handle(&discover, Port::Dhcp, 1_000).is_some());
}
