//! The DHCP server's sockets: binding to one interface, finding its IPv4
//! address, and sending replies where [`Destination`] says.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use super::server::Destination;

/// An interface's IPv4 address as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterfaceAddr {
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    /// Loopback has no broadcast: replies meant for broadcast go to the
    /// interface address instead, which is what lets tests run on `lo`.
    pub loopback: bool,
}

/// The IPv4 addresses of `interface` (empty if it has none or does not
/// exist), from getifaddrs(3) through `nix`.
pub fn interface_ipv4(interface: &str) -> io::Result<Vec<InterfaceAddr>> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(io::Error::from)?;
    Ok(addrs
        .filter(|ifa| ifa.interface_name == interface)
        .filter_map(|ifa| {
            let ip = ifa.address.as_ref()?.as_sockaddr_in()?.ip();
            let prefix_len = ifa
                .netmask
                .as_ref()
                .and_then(|m| m.as_sockaddr_in())
                .map_or(32, |m| u32::from(m.ip()).count_ones() as u8);
            Some(InterfaceAddr {
                ip,
                prefix_len,
                loopback: ifa
                    .flags
                    .contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK),
            })
        })
        .collect())
}

/// Binds a UDP socket for the DHCP server on `interface`.
///
/// On a broadcast interface: `0.0.0.0:port` (broadcast DISCOVERs arrive
/// addressed to 255.255.255.255) with SO_BINDTODEVICE so that only this
/// interface's packets arrive and our broadcasts leave through it, plus
/// SO_BROADCAST and SO_REUSEADDR. On loopback (tests): `local_ip:port`
/// without SO_BINDTODEVICE, which needs no privilege.
pub fn bind_udp(interface: &str, local: InterfaceAddr, port: u16) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_broadcast(true)?;
    let bind_ip = if local.loopback {
        local.ip
    } else {
        socket.bind_device(Some(interface.as_bytes()))?;
        Ipv4Addr::UNSPECIFIED
    };
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::V4(SocketAddrV4::new(bind_ip, port)).into())?;
    UdpSocket::from_std(socket.into())
}

/// Where a reply to a packet from `source` goes.
pub fn reply_address(
    to: Destination,
    source: SocketAddr,
    local: InterfaceAddr,
    client_port: u16,
    server_port: u16,
) -> SocketAddr {
    let v4 = |ip: Ipv4Addr, port: u16| SocketAddr::V4(SocketAddrV4::new(ip, port));
    match to {
        Destination::Broadcast if local.loopback => v4(local.ip, client_port),
        Destination::Broadcast => v4(Ipv4Addr::BROADCAST, client_port),
        Destination::Client(ip) => v4(ip, client_port),
        Destination::Relay(ip) => v4(ip, server_port),
        Destination::Source => source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_127_0_0_1() {
        let addrs = interface_ipv4("lo").unwrap();
        let lo = addrs
            .iter()
            .find(|a| a.ip == Ipv4Addr::LOCALHOST)
            .expect("lo has 127.0.0.1");
        assert_eq!(lo.prefix_len, 8);
        assert!(lo.loopback);
        assert!(interface_ipv4("no-such-if0").unwrap().is_empty());
    }
}
