//! The DHCP server's sockets: binding to one interface, finding its IPv4
//! address, and sending replies where [`Destination`] says.

use std::ffi::CStr;
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
/// exist), from getifaddrs(3).
pub fn interface_ipv4(interface: &str) -> io::Result<Vec<InterfaceAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut found = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, alive
        // until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_name.is_null() || ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) };
        if name.to_bytes() != interface.as_bytes() {
            continue;
        }
        // SAFETY: ifa_addr is non-null and starts with the family field.
        let family = unsafe { (*ifa.ifa_addr).sa_family };
        if i32::from(family) != libc::AF_INET {
            continue;
        }
        // SAFETY: AF_INET means the address is a sockaddr_in, and so is
        // the netmask when present.
        let ip = unsafe {
            (*(ifa.ifa_addr as *const libc::sockaddr_in))
                .sin_addr
                .s_addr
        };
        let prefix_len = if ifa.ifa_netmask.is_null() {
            32
        } else {
            let mask = unsafe {
                (*(ifa.ifa_netmask as *const libc::sockaddr_in))
                    .sin_addr
                    .s_addr
            };
            u32::from_be(mask).count_ones() as u8
        };
        found.push(InterfaceAddr {
            ip: Ipv4Addr::from(u32::from_be(ip)),
            prefix_len,
            loopback: ifa.ifa_flags & (libc::IFF_LOOPBACK as u32) != 0,
        });
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(found)
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
