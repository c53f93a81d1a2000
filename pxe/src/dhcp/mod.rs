//! DHCPv4 for network boot, in two modes:
//!
//! - [`DhcpMode::Full`]: the only DHCP server on an isolated provisioning
//!   LAN; hands out leases from a range and keeps them in a [`LeaseStore`].
//! - [`DhcpMode::Proxy`]: beside an office DHCP server; answers only PXE and
//!   HTTP Boot clients, never with an address, on port 67 and on the PXE
//!   boot server port 4011.
//!
//! In both, firmware gets an iPXE binary (TFTP name, or an HTTP URL for
//! UEFI HTTP Boot) and iPXE gets its script URL from the [`BootPolicy`].
//!
//! Layout: `packet` (parse/encode), `leases` (pool and store), `server`
//! (the pure request -> reply [`Handler`]), `socket` (I/O). [`serve`] ties
//! them to the network.
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use levee_pxe::boot::{BootDecision, BootRequest};
//! use levee_pxe::dhcp::{self, DhcpMode, DhcpOptions, IpxeBinaries, MemoryLeases};
//!
//! # async fn run() -> Result<(), dhcp::DhcpError> {
//! let options = DhcpOptions {
//!     interface: "br0".into(),
//!     mode: DhcpMode::Full,
//!     range: Some(("10.99.0.100".parse().unwrap(), "10.99.0.200".parse().unwrap())),
//!     lease_time: Duration::from_secs(3600),
//!     ipxe: IpxeBinaries::discover("/usr/lib/ipxe".as_ref()),
//!     http_base: "http://10.99.0.1:8080".into(),
//!     server_ip: None,
//!     server_port: 67,
//!     proxy_port: 4011,
//!     client_port: 68,
//! };
//! let policy = |req: &BootRequest| BootDecision::Boot {
//!     script_url: format!("http://10.99.0.1:8080/boot/{}.ipxe", req.mac),
//! };
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! dhcp::serve(options, Arc::new(policy), Arc::new(MemoryLeases::new()), shutdown).await
//! # }
//! ```

mod binaries;
mod leases;
mod packet;
mod server;
mod socket;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::boot::BootPolicy;

pub use binaries::{IpxeBinaries, BIOS_BINARY, EFI_X64_BINARY, EFI_X64_SNP_BINARY};
/// The wire-format crate, re-exported so tests can build client packets.
pub use dhcproto;
pub use leases::{Lease, LeasePool, LeaseStore, MemoryLeases, PoolError, StoreError};
pub use packet::{
    parse_reply, ClientClass, PacketError, Request, OPT_IPXE_ENCAP, OPT_IPXE_NO_PXEDHCP,
};
pub use server::{prefix_mask, Destination, Handler, HandlerConfig, Port, Reply};
pub use socket::{interface_ipv4, InterfaceAddr};

/// Which DHCP role the server plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DhcpMode {
    /// Hand out addresses from a range (isolated provisioning LAN).
    Full,
    /// Answer only PXE clients, beside another DHCP server.
    Proxy,
}

impl fmt::Display for DhcpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DhcpMode::Full => "full",
            DhcpMode::Proxy => "proxy",
        })
    }
}

/// Settings of [`serve`].
#[derive(Debug, Clone)]
pub struct DhcpOptions {
    /// The interface to serve (SO_BINDTODEVICE). `lo` is accepted for
    /// tests: the sockets then bind to the loopback address instead.
    pub interface: String,
    pub mode: DhcpMode,
    /// First and last address handed out; required in `full` mode.
    pub range: Option<(Ipv4Addr, Ipv4Addr)>,
    pub lease_time: Duration,
    pub ipxe: IpxeBinaries,
    /// Base URL of our HTTP server, e.g. `http://10.99.0.1:8080`.
    pub http_base: String,
    /// Our address (server id, router, TFTP next-server); `None` takes the
    /// interface's first IPv4 address.
    pub server_ip: Option<Ipv4Addr>,
    /// 67.
    pub server_port: u16,
    /// 4011 (bound in `proxy` mode only).
    pub proxy_port: u16,
    /// 68.
    pub client_port: u16,
}

/// Why the DHCP server could not run.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("full DHCP mode needs an address range")]
    NoRange,
    #[error(
        "interface {0} has no IPv4 address (give the server address explicitly or configure one)"
    )]
    NoAddress(String),
    #[error("address range {first}-{last} is not inside {server_ip}/{prefix_len}")]
    RangeOutsideSubnet {
        first: Ipv4Addr,
        last: Ipv4Addr,
        server_ip: Ipv4Addr,
        prefix_len: u8,
    },
    #[error("loading saved DHCP leases: {0}")]
    LoadLeases(StoreError),
    #[error("reading the addresses of interface {interface}: {source}")]
    Interface {
        interface: String,
        source: io::Error,
    },
    #[error("binding UDP port {port} on {interface}: {source}")]
    Bind {
        interface: String,
        port: u16,
        source: io::Error,
    },
}

/// Serves DHCP on `options.interface` until `shutdown` is cancelled.
pub async fn serve(
    options: DhcpOptions,
    policy: Arc<dyn BootPolicy>,
    leases: Arc<dyn LeaseStore>,
    shutdown: CancellationToken,
) -> Result<(), DhcpError> {
    let local = local_address(&options.interface, options.server_ip)?;
    let config = HandlerConfig {
        mode: options.mode,
        server_ip: local.ip,
        prefix_len: local.prefix_len,
        range: options.range,
        lease_time: options.lease_time,
        ipxe: options.ipxe.clone(),
        http_base: options.http_base.clone(),
    };
    let mut handler = Handler::new(config, policy, leases)?;
    let bind = |port: u16| {
        socket::bind_udp(&options.interface, local, port).map_err(|source| DhcpError::Bind {
            interface: options.interface.clone(),
            port,
            source,
        })
    };
    let dhcp_socket = bind(options.server_port)?;
    let proxy_socket = match options.mode {
        DhcpMode::Proxy => Some(bind(options.proxy_port)?),
        DhcpMode::Full => None,
    };
    info!(
        interface = %options.interface,
        mode = %options.mode,
        server_ip = %local.ip,
        prefix_len = local.prefix_len,
        port = options.server_port,
        proxy_port = proxy_socket.as_ref().map(|_| options.proxy_port),
        "dhcp serving"
    );

    let mut buf = vec![0u8; 4096];
    let mut proxy_buf = vec![0u8; 4096];
    loop {
        let (port, received, socket) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = dhcp_socket.recv_from(&mut buf) => (Port::Dhcp, r.map(|(n, a)| (n, a, false)), &dhcp_socket),
            r = recv_optional(proxy_socket.as_ref(), &mut proxy_buf) => {
                (Port::Proxy, r.map(|(n, a)| (n, a, true)), proxy_socket.as_ref().unwrap_or(&dhcp_socket))
            }
        };
        let (len, source, from_proxy) = match received {
            Ok(v) => v,
            Err(err) => {
                // ICMP errors from earlier sends surface here; keep serving,
                // without spinning if the error persists (interface gone).
                debug!(cause = %err, "dhcp receive error");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let packet = if from_proxy {
            &proxy_buf[..len]
        } else {
            &buf[..len]
        };
        let Some(reply) = handler.handle(packet, port, unix_now()) else {
            continue;
        };
        let to = socket::reply_address(
            reply.to,
            source,
            local,
            options.client_port,
            options.server_port,
        );
        if let Err(err) = socket.send_to(&reply.bytes, to).await {
            warn!(%to, cause = %err, "dhcp reply not sent");
        }
    }
    info!(interface = %options.interface, "dhcp stopped");
    Ok(())
}

/// Receives from the socket if there is one, else never completes.
async fn recv_optional(
    socket: Option<&UdpSocket>,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr)> {
    match socket {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

/// Our address on the interface: the configured one (with the prefix of the
/// matching interface address, or /24 if the interface lacks it) or the
/// interface's first IPv4 address.
fn local_address(
    interface: &str,
    configured: Option<Ipv4Addr>,
) -> Result<InterfaceAddr, DhcpError> {
    let addrs = socket::interface_ipv4(interface).map_err(|source| DhcpError::Interface {
        interface: interface.to_string(),
        source,
    })?;
    let loopback = interface == "lo" || addrs.iter().any(|a| a.loopback);
    match configured {
        Some(ip) => Ok(addrs
            .iter()
            .copied()
            .find(|a| a.ip == ip)
            .unwrap_or_else(|| {
                warn!(%interface, %ip, "dhcp server address not on the interface; assuming /24");
                InterfaceAddr {
                    ip,
                    prefix_len: 24,
                    loopback,
                }
            })),
        None => addrs
            .first()
            .copied()
            .ok_or_else(|| DhcpError::NoAddress(interface.to_string())),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
