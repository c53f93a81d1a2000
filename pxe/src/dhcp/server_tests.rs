//! Replies to packets built the way real firmware builds them.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};

use super::*;
use crate::boot::{Arch, BootDecision, BootRequest, MacAddr, Stage};
use crate::dhcp::leases::{LeaseStore, MemoryLeases};
use crate::dhcp::testing::{ClientPacket, VENDOR_BIOS, VENDOR_HTTP, VENDOR_IPXE_EFI, VENDOR_OVMF};
use crate::dhcp::{parse_reply, IpxeBinaries};

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const FIRST: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 100);
const HTTP: &str = "http://10.99.0.1:8080";
const NOW: u64 = 1_000_000;

fn mac(n: u8) -> MacAddr {
    MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, n])
}

fn debian_ipxe() -> IpxeBinaries {
    IpxeBinaries::with_files(Path::new("/usr/lib/ipxe"), |_| true)
}

fn config(mode: DhcpMode) -> HandlerConfig {
    HandlerConfig {
        mode,
        server_ip: SERVER,
        prefix_len: 24,
        range: Some((FIRST, Ipv4Addr::new(10, 99, 0, 109))),
        lease_time: Duration::from_secs(3600),
        ipxe: debian_ipxe(),
        http_base: HTTP.to_string(),
    }
}

fn script_policy() -> Arc<dyn BootPolicy> {
    Arc::new(|req: &BootRequest| BootDecision::Boot {
        script_url: format!("{HTTP}/boot/{}.ipxe", req.mac),
    })
}

fn handler(mode: DhcpMode) -> Handler {
    Handler::new(config(mode), script_policy(), Arc::new(MemoryLeases::new())).unwrap()
}

/// Sends `packet` and decodes the reply.
fn ask(h: &mut Handler, packet: &ClientPacket, port: Port) -> Option<(Message, Destination)> {
    let reply = h.handle(&packet.to_bytes(), port, NOW)?;
    let msg = parse_reply(&reply.bytes).expect("reply decodes");
    Some((msg, reply.to))
}

fn file(msg: &Message) -> String {
    match msg.opts().get(OptionCode::BootfileName) {
        Some(DhcpOption::BootfileName(f)) => String::from_utf8(f.clone()).unwrap(),
        _ => String::new(),
    }
}

fn field_file(msg: &Message) -> String {
    let raw = msg.fname().unwrap_or_default();
    String::from_utf8_lossy(raw)
        .trim_end_matches('\0')
        .to_string()
}

fn vendor_class(msg: &Message) -> Option<Vec<u8>> {
    match msg.opts().get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(v)) => Some(v.clone()),
        _ => None,
    }
}

fn ipxe_encap(msg: &Message) -> Option<Vec<u8>> {
    match msg.opts().get(OptionCode::Unknown(175)) {
        Some(DhcpOption::Unknown(o)) => Some(o.data().to_vec()),
        _ => None,
    }
}

fn bios_discover(n: u8) -> ClientPacket {
    ClientPacket::new(MessageType::Discover, mac(n), 0x1000 + u32::from(n))
        .vendor_class(VENDOR_BIOS)
        .arch(0)
}

fn plain(kind: MessageType, n: u8) -> ClientPacket {
    ClientPacket::new(kind, mac(n), 0x2000 + u32::from(n))
}

#[test]
fn bios_firmware_gets_undionly_over_tftp_with_a_lease() {
    let mut h = handler(DhcpMode::Full);
    let (offer, to) = ask(&mut h, &bios_discover(1), Port::Dhcp).unwrap();
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(offer.xid(), 0x1001);
    assert_eq!(offer.chaddr(), &mac(1).0);
    assert_eq!(offer.yiaddr(), FIRST);
    assert_eq!(offer.siaddr(), SERVER);
    assert_eq!(file(&offer), "undionly.kpxe");
    assert_eq!(field_file(&offer), "undionly.kpxe");
    assert_eq!(to, Destination::Broadcast);
    let opts = offer.opts();
    assert_eq!(
        opts.get(OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(SERVER))
    );
    assert_eq!(
        opts.get(OptionCode::SubnetMask),
        Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
    );
    assert_eq!(
        opts.get(OptionCode::Router),
        Some(&DhcpOption::Router(vec![SERVER]))
    );
    assert_eq!(
        opts.get(OptionCode::AddressLeaseTime),
        Some(&DhcpOption::AddressLeaseTime(3600))
    );
    // Firmware is not iPXE: no option 175; full mode: no ProxyDHCP markers.
    assert_eq!(ipxe_encap(&offer), None);
    assert_eq!(vendor_class(&offer), None);
    assert!(opts.get(OptionCode::VendorExtensions).is_none());
}

#[test]
fn ovmf_gets_snponly_and_falls_back_to_ipxe_efi() {
    let ovmf = ClientPacket::new(MessageType::Discover, mac(2), 7)
        .vendor_class(VENDOR_OVMF)
        .arch(7)
        .machine_id(&[0; 17]);
    let mut h = handler(DhcpMode::Full);
    let (offer, _) = ask(&mut h, &ovmf, Port::Dhcp).unwrap();
    assert_eq!(file(&offer), "snponly.efi");
    assert_eq!(offer.siaddr(), SERVER);
    // PXE asks for its UUID (option 97) back.
    assert!(offer
        .opts()
        .get(OptionCode::ClientMachineIdentifier)
        .is_some());

    let mut cfg = config(DhcpMode::Full);
    cfg.ipxe = IpxeBinaries::with_files(Path::new("/x"), |f| f == "ipxe.efi");
    let mut h = Handler::new(cfg, script_policy(), Arc::new(MemoryLeases::new())).unwrap();
    let (offer, _) = ask(&mut h, &ovmf, Port::Dhcp).unwrap();
    assert_eq!(file(&offer), "ipxe.efi");
}

#[test]
fn ipxe_gets_its_script_url_and_no_pxedhcp() {
    let mut h = handler(DhcpMode::Full);
    for (n, vendor) in [(3, VENDOR_BIOS), (4, VENDOR_IPXE_EFI)] {
        let p = ClientPacket::new(MessageType::Discover, mac(n), 9)
            .vendor_class(vendor)
            .ipxe();
        let (offer, _) = ask(&mut h, &p, Port::Dhcp).unwrap();
        let url = format!("{HTTP}/boot/{}.ipxe", mac(n));
        assert_eq!(file(&offer), url);
        assert_eq!(field_file(&offer), url);
        assert_eq!(ipxe_encap(&offer), Some(vec![176, 1, 1]));
    }
    // Option 175 alone (no user class) also marks iPXE.
    let mut p = ClientPacket::new(MessageType::Discover, mac(5), 9).vendor_class(VENDOR_BIOS);
    p = p.ipxe();
    let mut bytes_msg = p.message().clone();
    bytes_msg.opts_mut().remove(OptionCode::UserClass);
    let req = Request::parse(&dhcproto::Encodable::to_vec(&bytes_msg).unwrap()).unwrap();
    assert_eq!(req.stage(), Stage::Ipxe);
}

#[test]
fn long_script_urls_go_in_option_67_only() {
    let long = format!("{HTTP}/boot/{}", "x".repeat(200));
    let policy: Arc<dyn BootPolicy> = {
        let long = long.clone();
        Arc::new(move |_: &BootRequest| BootDecision::Boot {
            script_url: long.clone(),
        })
    };
    let mut h = Handler::new(
        config(DhcpMode::Full),
        policy,
        Arc::new(MemoryLeases::new()),
    )
    .unwrap();
    let p = bios_discover(6).ipxe();
    let (offer, _) = ask(&mut h, &p, Port::Dhcp).unwrap();
    assert_eq!(file(&offer), long);
    assert_eq!(field_file(&offer), "");
}

#[test]
fn http_boot_client_gets_an_http_url_to_ipxe() {
    let p = ClientPacket::new(MessageType::Discover, mac(7), 1)
        .vendor_class(VENDOR_HTTP)
        .arch(16);
    for mode in [DhcpMode::Full, DhcpMode::Proxy] {
        let mut h = handler(mode);
        let (offer, _) = ask(&mut h, &p, Port::Dhcp).unwrap();
        assert_eq!(file(&offer), format!("{HTTP}/ipxe/snponly.efi"), "{mode}");
        assert_eq!(vendor_class(&offer), Some(b"HTTPClient".to_vec()), "{mode}");
    }
}

#[test]
fn arm64_without_a_binary_gets_no_answer() {
    let p = ClientPacket::new(MessageType::Discover, mac(8), 1)
        .vendor_class("PXEClient:Arch:00011:UNDI:003000")
        .arch(11);
    for mode in [DhcpMode::Full, DhcpMode::Proxy] {
        let mut h = handler(mode);
        assert!(ask(&mut h, &p, Port::Dhcp).is_none(), "{mode}");
    }
    // But arm64 iPXE (if someone built one) still gets its script.
    let mut h = handler(DhcpMode::Full);
    assert!(ask(&mut h, &p.clone().ipxe(), Port::Dhcp).is_some());
}

#[test]
fn non_pxe_clients_get_an_address_in_full_mode_and_nothing_in_proxy_mode() {
    let p = plain(MessageType::Discover, 9).vendor_class("udhcp 1.35.0");
    let mut full = handler(DhcpMode::Full);
    let (offer, _) = ask(&mut full, &p, Port::Dhcp).unwrap();
    assert_eq!(offer.yiaddr(), FIRST);
    assert_eq!(file(&offer), "");
    assert_eq!(offer.siaddr(), Ipv4Addr::UNSPECIFIED);
    let mut proxy = handler(DhcpMode::Proxy);
    assert!(ask(&mut proxy, &p, Port::Dhcp).is_none());
    assert!(ask(&mut proxy, &plain(MessageType::Discover, 9), Port::Dhcp).is_none());
    let req = plain(MessageType::Request, 9).ciaddr(Ipv4Addr::new(192, 168, 1, 5));
    assert!(ask(&mut proxy, &req, Port::Proxy).is_none());
}

#[test]
fn proxy_offer_has_no_address_and_pxe_discovery_control() {
    let mut h = handler(DhcpMode::Proxy);
    let p = bios_discover(10).machine_id(&[0, 1, 2, 3]);
    let (offer, to) = ask(&mut h, &p, Port::Dhcp).unwrap();
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(offer.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(offer.siaddr(), SERVER);
    assert_eq!(file(&offer), "undionly.kpxe");
    assert_eq!(vendor_class(&offer), Some(b"PXEClient".to_vec()));
    assert_eq!(
        offer.opts().get(OptionCode::VendorExtensions),
        Some(&DhcpOption::VendorExtensions(vec![6, 1, 8, 255]))
    );
    assert!(offer.opts().get(OptionCode::AddressLeaseTime).is_none());
    assert!(offer.opts().get(OptionCode::SubnetMask).is_none());
    assert_eq!(to, Destination::Broadcast);

    // The office server's REQUEST broadcast is not ours to answer.
    let req = ClientPacket::new(MessageType::Request, mac(10), 3)
        .vendor_class(VENDOR_BIOS)
        .requested_ip(Ipv4Addr::new(192, 168, 1, 50))
        .server_id(Ipv4Addr::new(192, 168, 1, 1));
    assert!(ask(&mut h, &req, Port::Dhcp).is_none());

    // Then the unicast REQUEST to port 4011 gets the boot file back.
    let req = ClientPacket::new(MessageType::Request, mac(10), 4)
        .vendor_class(VENDOR_OVMF)
        .arch(7)
        .ciaddr(Ipv4Addr::new(192, 168, 1, 50));
    let (ack, to) = ask(&mut h, &req, Port::Proxy).unwrap();
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(to, Destination::Source);
    assert_eq!(file(&ack), "snponly.efi");
    assert_eq!(ack.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(vendor_class(&ack), Some(b"PXEClient".to_vec()));
}

#[test]
fn proxy_mode_ipxe_gets_script_and_no_pxedhcp() {
    let mut h = handler(DhcpMode::Proxy);
    let p = bios_discover(11).ipxe();
    let (offer, _) = ask(&mut h, &p, Port::Dhcp).unwrap();
    assert_eq!(file(&offer), format!("{HTTP}/boot/{}.ipxe", mac(11)));
    assert_eq!(ipxe_encap(&offer), Some(vec![176, 1, 1]));
    assert_eq!(offer.yiaddr(), Ipv4Addr::UNSPECIFIED);
}

#[test]
fn policy_sees_every_boot_request_and_can_refuse() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let policy: Arc<dyn BootPolicy> = {
        let seen = seen.clone();
        Arc::new(move |req: &BootRequest| {
            seen.lock().unwrap().push(req.clone());
            BootDecision::Ignore {
                reason: "unknown machine".into(),
            }
        })
    };
    for mode in [DhcpMode::Full, DhcpMode::Proxy] {
        let mut h =
            Handler::new(config(mode), policy.clone(), Arc::new(MemoryLeases::new())).unwrap();
        assert!(ask(&mut h, &bios_discover(12), Port::Dhcp).is_none());
        assert!(ask(&mut h, &bios_discover(12).ipxe(), Port::Dhcp).is_none());
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 4);
    assert_eq!(
        seen[0],
        BootRequest {
            mac: mac(12),
            arch: Arch::Bios,
            stage: Stage::Firmware
        }
    );
    assert_eq!(seen[1].stage, Stage::Ipxe);
}

/// DISCOVER then REQUEST, as a client in SELECTING state.
fn lease(h: &mut Handler, n: u8) -> Option<Ipv4Addr> {
    let (offer, _) = ask(h, &plain(MessageType::Discover, n), Port::Dhcp)?;
    let req = plain(MessageType::Request, n)
        .requested_ip(offer.yiaddr())
        .server_id(SERVER);
    let (ack, _) = ask(h, &req, Port::Dhcp)?;
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), offer.yiaddr());
    Some(ack.yiaddr())
}

#[test]
fn same_mac_gets_the_same_address() {
    let mut h = handler(DhcpMode::Full);
    let a = lease(&mut h, 20).unwrap();
    let b = lease(&mut h, 21).unwrap();
    assert_ne!(a, b);
    assert_eq!(lease(&mut h, 20), Some(a));
    // A PXE DISCOVER from the same MAC (a reboot) keeps the address too.
    let (offer, _) = ask(&mut h, &bios_discover(20), Port::Dhcp).unwrap();
    assert_eq!(offer.yiaddr(), a);
}

#[test]
fn range_exhaustion_gets_no_offer() {
    let mut cfg = config(DhcpMode::Full);
    cfg.range = Some((FIRST, Ipv4Addr::new(10, 99, 0, 101)));
    let mut h = Handler::new(cfg, script_policy(), Arc::new(MemoryLeases::new())).unwrap();
    assert!(lease(&mut h, 30).is_some());
    assert!(lease(&mut h, 31).is_some());
    assert!(ask(&mut h, &plain(MessageType::Discover, 32), Port::Dhcp).is_none());
}

#[test]
fn leases_are_persisted_and_reloaded_after_a_restart() {
    let store = Arc::new(MemoryLeases::new());
    let mut h = Handler::new(config(DhcpMode::Full), script_policy(), store.clone()).unwrap();
    lease(&mut h, 40).unwrap();
    let b = lease(&mut h, 41).unwrap();
    let saved = store.snapshot();
    assert_eq!(saved.len(), 2);
    assert!(saved.iter().all(|l| l.expires_unix == NOW + 3600));
    drop(h);

    // A new server on the same store: mac 41 keeps its address, and a new
    // machine does not get it.
    let mut h = Handler::new(config(DhcpMode::Full), script_policy(), store.clone()).unwrap();
    let reboot = plain(MessageType::Request, 41).requested_ip(b);
    let (ack, _) = ask(&mut h, &reboot, Port::Dhcp).unwrap();
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), b);
    let other = lease(&mut h, 42).unwrap();
    assert_ne!(other, b);
    let stolen = plain(MessageType::Request, 43).requested_ip(b);
    let (nak, to) = ask(&mut h, &stolen, Port::Dhcp).unwrap();
    assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));
    assert_eq!(to, Destination::Broadcast);
}

#[test]
fn request_for_a_wrong_address_gets_nak() {
    let mut h = handler(DhcpMode::Full);
    for wrong in [
        Ipv4Addr::new(192, 168, 1, 7),
        Ipv4Addr::new(10, 99, 0, 250),
        SERVER,
    ] {
        let p = plain(MessageType::Request, 50).requested_ip(wrong);
        let (nak, _) = ask(&mut h, &p, Port::Dhcp).unwrap();
        assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak), "{wrong}");
        assert_eq!(nak.yiaddr(), Ipv4Addr::UNSPECIFIED);
    }
}

#[test]
fn request_to_another_server_is_ignored() {
    let mut h = handler(DhcpMode::Full);
    let p = plain(MessageType::Request, 51)
        .requested_ip(FIRST)
        .server_id(Ipv4Addr::new(10, 99, 0, 2));
    assert!(ask(&mut h, &p, Port::Dhcp).is_none());
}

#[test]
fn renewal_is_unicast_and_release_frees_the_address() {
    let store = Arc::new(MemoryLeases::new());
    let mut h = Handler::new(config(DhcpMode::Full), script_policy(), store.clone()).unwrap();
    let ip = lease(&mut h, 60).unwrap();
    let renew = plain(MessageType::Request, 60).ciaddr(ip);
    let (ack, to) = ask(&mut h, &renew, Port::Dhcp).unwrap();
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(to, Destination::Client(ip));

    assert!(ask(
        &mut h,
        &plain(MessageType::Release, 60).ciaddr(ip),
        Port::Dhcp
    )
    .is_none());
    assert!(store.snapshot()[0].expires_unix <= NOW);
    // The released address can go to another machine now (once the free
    // ones run out it is the oldest expired one), and the old owner is
    // NAKed for it.
    let req = plain(MessageType::Request, 61).requested_ip(ip);
    let (ack, _) = ask(&mut h, &req, Port::Dhcp).unwrap();
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    let (nak, _) = ask(
        &mut h,
        &plain(MessageType::Request, 60).requested_ip(ip),
        Port::Dhcp,
    )
    .unwrap();
    assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));
}

#[test]
fn declined_address_is_not_offered_again() {
    let mut h = handler(DhcpMode::Full);
    let ip = lease(&mut h, 70).unwrap();
    let decline = plain(MessageType::Decline, 70)
        .requested_ip(ip)
        .server_id(SERVER);
    assert!(ask(&mut h, &decline, Port::Dhcp).is_none());
    let (offer, _) = ask(&mut h, &plain(MessageType::Discover, 70), Port::Dhcp).unwrap();
    assert_ne!(offer.yiaddr(), ip);
}

#[test]
fn inform_gets_options_without_a_lease() {
    let mut h = handler(DhcpMode::Full);
    let ip = Ipv4Addr::new(10, 99, 0, 5);
    let p = plain(MessageType::Inform, 80).ciaddr(ip);
    let (ack, to) = ask(&mut h, &p, Port::Dhcp).unwrap();
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert!(ack.opts().get(OptionCode::AddressLeaseTime).is_none());
    assert_eq!(to, Destination::Client(ip));
}

#[test]
fn full_mode_refuses_a_range_outside_the_subnet() {
    let mut cfg = config(DhcpMode::Full);
    cfg.range = Some((Ipv4Addr::new(10, 98, 0, 1), Ipv4Addr::new(10, 98, 0, 9)));
    let err = Handler::new(cfg, script_policy(), Arc::new(MemoryLeases::new())).err();
    assert!(matches!(err, Some(DhcpError::RangeOutsideSubnet { .. })));
    let mut cfg = config(DhcpMode::Full);
    cfg.range = None;
    let err = Handler::new(cfg, script_policy(), Arc::new(MemoryLeases::new())).err();
    assert!(matches!(err, Some(DhcpError::NoRange)));
}

#[test]
fn failing_store_does_not_stop_the_ack() {
    struct Broken;
    impl LeaseStore for Broken {
        fn load(&self) -> Result<Vec<crate::dhcp::Lease>, crate::dhcp::StoreError> {
            Ok(Vec::new())
        }
        fn save(&self, _: &crate::dhcp::Lease) -> Result<(), crate::dhcp::StoreError> {
            Err("disk full".into())
        }
    }
    let mut h = Handler::new(config(DhcpMode::Full), script_policy(), Arc::new(Broken)).unwrap();
    assert!(lease(&mut h, 90).is_some());
}

#[test]
fn relayed_requests_are_answered_to_the_relay() {
    let relay = Ipv4Addr::new(10, 99, 0, 254);
    let mut h = handler(DhcpMode::Full);
    let (offer, to) = ask(&mut h, &bios_discover(95).giaddr(relay), Port::Dhcp).unwrap();
    assert_eq!(to, Destination::Relay(relay));
    assert_eq!(offer.giaddr(), relay);
}
