//! IPv6 router advertisements, so iPXE does not wait for one.
//!
//! iPXE configures IPv6 beside DHCPv4 and, with no router on the segment,
//! waits ~16 s for a router advertisement before it boots. Any RA ends that
//! wait, whatever its router lifetime: iPXE's `ipv6conf_rx_router_advertisement`
//! finishes autoconfiguration on the first RA without the M/O flags, after
//! its options pass `ndp_rx_options`. That check fails the whole RA on a
//! bad option, and a prefix with the autonomous flag must be a /64 (its
//! SLAAC needs an EUI-64 host part). So we send:
//!
//! - router lifetime 0 (we are not a default router), no M/O flags;
//! - the source link-layer address;
//! - a prefix-information option (on-link, autonomous) for each /64 global
//!   or ULA prefix configured on the interface, and none for others.
//!
//! They go to ff02::1 from the interface's link-local address with hop
//! limit 255, every [`INTERVAL`] and in reply to router solicitations.
//!
//! Measured with QEMU's iPXE ROM (Debian 1.0.0+git-20190125) in full
//! mode: 18.8 s from QEMU start to the boot script without RAs, 2.7-3.1 s
//! with them.

use std::io;
use std::mem::MaybeUninit;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Between unsolicited advertisements. Shorter than RFC 4861's 3 s
/// minimum on purpose: the Debian iPXE seen here sends no solicitation
/// through the bridge, so it waits for the next unsolicited RA, and a
/// 56-byte packet a second is nothing on a provisioning LAN.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// Solicitations within this time of the last advertisement are covered by
/// it (a client sends a few in a row).
const MIN_REPLY_GAP: Duration = Duration::from_millis(200);

const ICMPV6_ROUTER_SOLICITATION: u8 = 133;
const ICMPV6_ROUTER_ADVERTISEMENT: u8 = 134;
const OPT_SOURCE_LL: u8 = 1;
const OPT_PREFIX_INFO: u8 = 3;
const PREFIX_ON_LINK: u8 = 0x80;
const PREFIX_AUTONOMOUS: u8 = 0x40;
const PREFIX_VALID_SECS: u32 = 86_400;
const PREFIX_PREFERRED_SECS: u32 = 14_400;
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);

/// Why router advertisements cannot be sent.
#[derive(Debug, thiserror::Error)]
pub enum RaError {
    #[error("interface {0} does not exist")]
    NoInterface(String),
    #[error("opening the ICMPv6 socket on {interface}: {source}")]
    Socket {
        interface: String,
        source: io::Error,
    },
    #[error("reading the addresses of {interface}: {source}")]
    Addresses {
        interface: String,
        source: io::Error,
    },
}

/// What an advertisement carries about the interface.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Advertised {
    pub mac: Option<[u8; 6]>,
    /// /64 prefixes (host bits cleared).
    pub prefixes: Vec<Ipv6Addr>,
}

/// Builds the router advertisement (ICMPv6 type 134; the kernel fills in
/// the checksum of raw ICMPv6 sockets).
pub fn router_advertisement(adv: &Advertised) -> Vec<u8> {
    let mut p = vec![
        ICMPV6_ROUTER_ADVERTISEMENT,
        0, // code
        0,
        0,  // checksum
        64, // cur hop limit for clients
        0,  // flags: no M (DHCPv6 addresses), no O (DHCPv6 other)
        0,
        0, // router lifetime 0: not a default router
        0,
        0,
        0,
        0, // reachable time: unspecified
        0,
        0,
        0,
        0, // retrans timer: unspecified
    ];
    if let Some(mac) = adv.mac {
        p.extend_from_slice(&[OPT_SOURCE_LL, 1]);
        p.extend_from_slice(&mac);
    }
    for prefix in &adv.prefixes {
        p.extend_from_slice(&[OPT_PREFIX_INFO, 4, 64, PREFIX_ON_LINK | PREFIX_AUTONOMOUS]);
        p.extend_from_slice(&PREFIX_VALID_SECS.to_be_bytes());
        p.extend_from_slice(&PREFIX_PREFERRED_SECS.to_be_bytes());
        p.extend_from_slice(&[0; 4]);
        p.extend_from_slice(&prefix.octets());
    }
    p
}

/// Whether an address's /64 is worth advertising: global unicast
/// (2000::/3) or unique local (fc00::/7).
pub fn advertisable(addr: Ipv6Addr) -> bool {
    let first = addr.segments()[0];
    (first & 0xe000) == 0x2000 || (first & 0xfe00) == 0xfc00
}

/// Sends router advertisements on `interface` until `shutdown`.
///
/// A missing interface is an error. Failing to open the ICMPv6 socket (no
/// IPv6 on the host, no CAP_NET_RAW) is logged as a warning and the task
/// idles until `shutdown`, since boots still work without RAs. Send
/// failures later (no link-local address yet, link down) are logged and
/// retried on the next tick.
pub async fn serve(interface: &str, shutdown: CancellationToken) -> Result<(), RaError> {
    serve_every(interface, INTERVAL, shutdown).await
}

/// Router advertisements that carry no prefix: on a LAN whose addresses
/// someone else manages (proxy mode), they configure nothing on any host,
/// yet still end iPXE's ~16 s wait for IPv6 autoconfiguration.
pub async fn serve_without_prefixes(
    interface: &str,
    shutdown: CancellationToken,
) -> Result<(), RaError> {
    serve_inner(interface, INTERVAL, false, shutdown).await
}

/// [`serve`] with another period between unsolicited advertisements
/// (tests use a long one to see the replies to solicitations).
pub async fn serve_every(
    interface: &str,
    interval: Duration,
    shutdown: CancellationToken,
) -> Result<(), RaError> {
    serve_inner(interface, interval, true, shutdown).await
}

async fn serve_inner(
    interface: &str,
    interval: Duration,
    with_prefixes: bool,
    shutdown: CancellationToken,
) -> Result<(), RaError> {
    let ifindex = if_index(interface)?;
    let socket = match open_socket(interface, ifindex) {
        Ok(socket) => socket,
        Err(err) => {
            // Booting works without RAs, only slower: do not take the DHCP
            // and TFTP servers down with us (e.g. IPv6 disabled on the host).
            warn!(%interface, cause = %err, "ra disabled: no ICMPv6 socket; iPXE will wait ~16 s for a router advertisement");
            shutdown.cancelled().await;
            return Ok(());
        }
    };
    // SAFETY: the AsyncFd owns the socket, so its fd stays open and the
    // same for the AsyncFd's lifetime.
    let fd = unsafe { AsyncFd::register(socket) }.map_err(|err| RaError::Socket {
        interface: interface.to_string(),
        source: err.into_parts().1,
    })?;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sender = Sender {
        interface,
        ifindex,
        with_prefixes,
        last_sent: None,
        last_advertised: None,
        last_error: None,
    };
    let mut buf = [MaybeUninit::<u8>::uninit(); 1500];
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => sender.send(fd.get_ref()),
            ready = fd.readable() => {
                let mut guard = match ready {
                    Ok(guard) => guard,
                    Err(err) => {
                        warn!(%interface, cause = %err, "ra socket error");
                        continue;
                    }
                };
                let received = guard.try_io(|inner| inner.get_ref().recv_from(&mut buf));
                let Ok(result) = received else { continue };
                match result {
                    Ok((len, from)) => {
                        // SAFETY: recv_from initialised the first `len` bytes.
                        let data = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), len) };
                        tracing::trace!(%interface, icmp_type = data.first().copied(), from = ?from.as_socket_ipv6(), "ra received icmpv6");
                        if is_router_solicitation(data) {
                            let from = from.as_socket_ipv6().map(|a| *a.ip());
                            let recent = sender.last_sent.is_some_and(|t| t.elapsed() < MIN_REPLY_GAP);
                            if !recent {
                                info!(%interface, from = ?from, "ra reply to router solicitation");
                                sender.send(fd.get_ref());
                            }
                        }
                    }
                    Err(err) => debug!(%interface, cause = %err, "ra receive error"),
                }
            }
        }
    }
    info!(%interface, "ra stopped");
    Ok(())
}

struct Sender<'a> {
    interface: &'a str,
    ifindex: u32,
    with_prefixes: bool,
    last_sent: Option<Instant>,
    last_advertised: Option<Advertised>,
    last_error: Option<String>,
}

impl Sender<'_> {
    /// Sends one advertisement, logging at info when what is advertised or
    /// the error changes (not every few seconds).
    fn send(&mut self, socket: &Socket) {
        let adv = match interface_ipv6(self.interface) {
            Ok(mut adv) => {
                if !self.with_prefixes {
                    adv.prefixes.clear();
                }
                adv
            }
            Err(err) => {
                self.note_error(format!("reading addresses: {err}"));
                return;
            }
        };
        if self.last_advertised.as_ref() != Some(&adv) {
            let prefixes: Vec<String> = adv.prefixes.iter().map(|p| format!("{p}/64")).collect();
            info!(interface = %self.interface, prefixes = ?prefixes, "ra advertising (router lifetime 0)");
            self.last_advertised = Some(adv.clone());
        }
        let packet = router_advertisement(&adv);
        let to = SocketAddrV6::new(ALL_NODES, 0, 0, self.ifindex);
        match socket.send_to(&packet, &to.into()) {
            Ok(_) => {
                self.last_sent = Some(Instant::now());
                if self.last_error.take().is_some() {
                    info!(interface = %self.interface, "ra sending again");
                }
                debug!(interface = %self.interface, "ra sent");
            }
            Err(err) => self.note_error(err.to_string()),
        }
    }

    fn note_error(&mut self, err: String) {
        if self.last_error.as_deref() != Some(err.as_str()) {
            warn!(interface = %self.interface, cause = %err, "ra not sent (will retry)");
            self.last_error = Some(err);
        }
    }
}

fn is_router_solicitation(data: &[u8]) -> bool {
    data.len() >= 8 && data[0] == ICMPV6_ROUTER_SOLICITATION && data[1] == 0
}

fn if_index(interface: &str) -> Result<u32, RaError> {
    let name = std::ffi::CString::new(interface)
        .map_err(|_| RaError::NoInterface(interface.to_string()))?;
    // SAFETY: `name` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(RaError::NoInterface(interface.to_string()));
    }
    Ok(index)
}

fn open_socket(interface: &str, ifindex: u32) -> io::Result<Socket> {
    let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    socket.bind_device(Some(interface.as_bytes()))?;
    // RFC 4861 6.1.2: receivers drop NDP messages with any other hop limit.
    socket.set_multicast_hops_v6(255)?;
    socket.set_unicast_hops_v6(255)?;
    socket.set_multicast_if_v6(ifindex)?;
    socket.set_multicast_loop_v6(false)?;
    // Router solicitations go to all-routers, which a host without
    // forwarding has not joined.
    socket.join_multicast_v6(&ALL_ROUTERS, ifindex)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// The MAC and the advertisable /64 prefixes of `interface`, from
/// getifaddrs(3) through `nix`.
pub fn interface_ipv6(interface: &str) -> io::Result<Advertised> {
    let mut adv = Advertised::default();
    for ifa in nix::ifaddrs::getifaddrs().map_err(io::Error::from)? {
        if ifa.interface_name != interface {
            continue;
        }
        let Some(address) = ifa.address.as_ref() else {
            continue;
        };
        if let Some(mac) = address.as_link_addr().and_then(|ll| ll.addr()) {
            adv.mac = Some(mac);
        } else if let (Some(v6), Some(mask)) = (
            address.as_sockaddr_in6(),
            ifa.netmask.as_ref().and_then(|m| m.as_sockaddr_in6()),
        ) {
            let prefix_len = u128::from(mask.ip()).count_ones();
            let addr = v6.ip();
            if prefix_len == 64 && advertisable(addr) {
                let prefix = Ipv6Addr::from(u128::from(addr) & !(u128::MAX >> 64));
                if !adv.prefixes.contains(&prefix) {
                    adv.prefixes.push(prefix);
                }
            }
        }
    }
    Ok(adv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertisement_layout_matches_rfc_4861() {
        let ula: Ipv6Addr = "fd00:99::".parse().unwrap();
        let adv = Advertised {
            mac: Some([0x52, 0x54, 0, 1, 2, 3]),
            prefixes: vec![ula],
        };
        let p = router_advertisement(&adv);
        assert_eq!(p.len(), 16 + 8 + 32);
        assert_eq!(p[0], 134);
        assert_eq!(p[5], 0, "no M/O flags: iPXE must not start DHCPv6");
        assert_eq!(&p[6..8], &[0, 0], "router lifetime 0");
        assert_eq!(&p[16..24], &[1, 1, 0x52, 0x54, 0, 1, 2, 3]);
        let pio = &p[24..];
        assert_eq!(&pio[..4], &[3, 4, 64, 0xc0]);
        assert_eq!(&pio[16..32], &ula.octets());
        // Every option is a whole number of 8-byte blocks (iPXE rejects the
        // whole RA otherwise).
        assert_eq!((p.len() - 16) % 8, 0);
    }

    #[test]
    fn only_global_and_ula_prefixes_are_advertised() {
        assert!(advertisable("2001:db8::1".parse().unwrap()));
        assert!(advertisable("fd12:3456::1".parse().unwrap()));
        assert!(!advertisable("fe80::1".parse().unwrap()));
        assert!(!advertisable("::1".parse().unwrap()));
        assert!(!advertisable("ff02::1".parse().unwrap()));
    }

    #[test]
    fn loopback_has_no_advertisable_prefix() {
        let adv = interface_ipv6("lo").unwrap();
        assert!(adv.prefixes.is_empty());
    }

    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn serve_future_is_send() {
        // The provisioner spawns it on a multi-threaded runtime.
        let token = CancellationToken::new();
        let fut = serve("lo", token);
        assert_send(&fut);
    }

    #[tokio::test]
    async fn unknown_interface_is_an_error() {
        let err = serve("no-such-if0", CancellationToken::new()).await;
        assert!(matches!(err, Err(RaError::NoInterface(_))));
    }
}
