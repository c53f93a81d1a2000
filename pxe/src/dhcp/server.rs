//! The DHCP server's logic as a pure function of the packet: bytes in,
//! reply (and where to send it) out. Sockets live in `socket.rs`; tests and
//! the fuzzer drive [`Handler::handle`] directly.
//!
//! One pipeline per packet, as in pixiecore's `serveDHCP`: parse, classify
//! (PXE or not, stage, arch), ask the [`BootPolicy`], pick the boot file,
//! then build the reply of the mode. Every packet we do not answer is
//! logged with the reason: `info!` when it is a boot client an operator may
//! be waiting for, `debug!` for the rest.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use dhcproto::v4::{DhcpOption, Message, MessageType};
use tracing::{debug, info, info_span, warn};

use super::binaries::IpxeBinaries;
use super::leases::{LeasePool, LeaseStore, OFFER_HOLD_SECS};
use super::packet::{self, ClientClass, Request};
use super::{DhcpError, DhcpMode};
use crate::boot::{BootDecision, BootPolicy, BootRequest, Stage};

/// Which socket a packet arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// The DHCP server port (67).
    Dhcp,
    /// The PXE boot server port (4011): unicast requests after a proxy offer.
    Proxy,
}

/// Where a reply goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// Limited broadcast to the client port: the client has no address yet.
    Broadcast,
    /// Unicast to the client's address (`ciaddr`) on the client port.
    Client(Ipv4Addr),
    /// Back to the relay agent (`giaddr`) on the server port.
    Relay(Ipv4Addr),
    /// Back to the packet's source address and port (port 4011 requests).
    Source,
}

/// A reply to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub bytes: Vec<u8>,
    pub to: Destination,
}

/// What the handler needs to know about the network and the files.
#[derive(Debug, Clone)]
pub struct HandlerConfig {
    pub mode: DhcpMode,
    /// Our address: server identifier, router, TFTP next-server.
    pub server_ip: Ipv4Addr,
    /// Prefix length of the provisioning subnet (for the subnet mask).
    pub prefix_len: u8,
    /// Required in `full` mode.
    pub range: Option<(Ipv4Addr, Ipv4Addr)>,
    pub lease_time: Duration,
    pub ipxe: IpxeBinaries,
    /// `http://host:port`, without a trailing slash: UEFI HTTP Boot clients
    /// get `{http_base}/ipxe/{binary}`.
    pub http_base: String,
}

/// The stateful but I/O-free DHCP server.
pub struct Handler {
    config: HandlerConfig,
    policy: Arc<dyn BootPolicy>,
    store: Arc<dyn LeaseStore>,
    /// `Some` in full mode.
    pool: Option<LeasePool>,
}

/// What a boot client gets, once the policy said yes.
#[derive(Debug, Clone)]
struct BootAnswer {
    request: BootRequest,
    class: ClientClass,
    /// TFTP file name or URL.
    file: String,
}

impl Handler {
    /// Builds the handler; in `full` mode checks the range against the
    /// subnet and loads the saved leases.
    pub fn new(
        config: HandlerConfig,
        policy: Arc<dyn BootPolicy>,
        store: Arc<dyn LeaseStore>,
    ) -> Result<Handler, DhcpError> {
        let pool = match config.mode {
            DhcpMode::Proxy => None,
            DhcpMode::Full => {
                let (first, last) = config.range.ok_or(DhcpError::NoRange)?;
                let subnet = |ip: Ipv4Addr| u32::from(ip) & prefix_mask(config.prefix_len);
                if subnet(first) != subnet(config.server_ip)
                    || subnet(last) != subnet(config.server_ip)
                {
                    return Err(DhcpError::RangeOutsideSubnet {
                        first,
                        last,
                        server_ip: config.server_ip,
                        prefix_len: config.prefix_len,
                    });
                }
                let mut pool = LeasePool::new(first, last, Some(config.server_ip));
                let saved = store.load().map_err(DhcpError::LoadLeases)?;
                let total = saved.len();
                let restored = pool.restore(saved);
                info!(restored, total, %first, %last, "dhcp leases loaded");
                Some(pool)
            }
        };
        Ok(Handler {
            config,
            policy,
            store,
            pool,
        })
    }

    pub fn config(&self) -> &HandlerConfig {
        &self.config
    }

    /// Handles one packet that arrived on `port`; `now` is Unix seconds.
    pub fn handle(&mut self, bytes: &[u8], port: Port, now: u64) -> Option<Reply> {
        let req = match Request::parse(bytes) {
            Ok(req) => req,
            Err(err) => {
                debug!(len = bytes.len(), reason = %err, "dhcp ignored packet");
                return None;
            }
        };
        let span = info_span!("dhcp", xid = %format_args!("{:#010x}", req.xid), mac = %req.mac);
        let _entered = span.enter();
        // Message types a port does not serve are dropped before the policy
        // is asked, so its log shows only real boot attempts.
        let served = match (port, self.config.mode) {
            (Port::Proxy, _) => matches!(req.kind, MessageType::Request | MessageType::Inform),
            (Port::Dhcp, DhcpMode::Proxy) => req.kind == MessageType::Discover,
            (Port::Dhcp, DhcpMode::Full) => true,
        };
        if !served {
            debug!(kind = ?req.kind, ?port, mode = %self.config.mode, "dhcp ignored: message type not served on this port");
            return None;
        }
        let boot = match self.boot_answer(&req, port) {
            Ok(boot) => boot,
            // Already logged with its reason.
            Err(()) => return None,
        };
        match (port, self.config.mode) {
            (Port::Proxy, _) => self.proxy_ack(&req, boot?),
            (Port::Dhcp, DhcpMode::Proxy) => self.proxy_offer(&req, boot?),
            (Port::Dhcp, DhcpMode::Full) => self.full(&req, boot, now),
        }
    }

    /// Classifies a request and, for a boot client, decides its boot file.
    /// `Ok(None)`: not a boot client (full mode still gives it an address).
    /// `Err(())`: a boot client we must not answer; the reason is logged.
    fn boot_answer(&self, req: &Request, port: Port) -> Result<Option<BootAnswer>, ()> {
        let mode = self.config.mode;
        let Some(class) = req.client_class() else {
            if mode == DhcpMode::Proxy || port == Port::Proxy {
                debug!(kind = ?req.kind, "dhcp ignored: not a PXE client (no PXEClient/HTTPClient vendor class)");
                return Err(());
            }
            return Ok(None);
        };
        let wants_boot = matches!(
            req.kind,
            MessageType::Discover | MessageType::Request | MessageType::Inform
        );
        if !wants_boot {
            return Ok(None);
        }
        let request = BootRequest {
            mac: req.mac,
            arch: req.arch(),
            stage: req.stage(),
        };
        let script_url = match self.policy.decide(&request) {
            BootDecision::Boot { script_url } => script_url,
            BootDecision::Ignore { reason } => {
                info!(stage = %request.stage, arch = %request.arch, %mode, %reason, "dhcp ignored: policy");
                return Err(());
            }
        };
        let file = match request.stage {
            Stage::Ipxe => script_url,
            Stage::Firmware => {
                let Some(binary) = self.config.ipxe.for_arch(request.arch) else {
                    info!(
                        stage = %request.stage,
                        arch = %request.arch,
                        %mode,
                        dir = %self.config.ipxe.dir().display(),
                        "dhcp ignored: no iPXE binary for this architecture in the iPXE directory"
                    );
                    return Err(());
                };
                if class == ClientClass::Http || request.arch.is_http_boot() {
                    format!(
                        "{}/ipxe/{}",
                        self.config.http_base.trim_end_matches('/'),
                        binary
                    )
                } else {
                    binary.to_string()
                }
            }
        };
        Ok(Some(BootAnswer {
            request,
            class,
            file,
        }))
    }

    /// Full mode on port 67: leases, plus boot options for boot clients.
    fn full(&mut self, req: &Request, boot: Option<BootAnswer>, now: u64) -> Option<Reply> {
        let server_ip = self.config.server_ip;
        match req.kind {
            MessageType::Discover => {
                let pool = self.pool.as_mut()?;
                let ip = match pool.choose(req.mac, req.requested_ip, now) {
                    Ok(ip) => ip,
                    Err(err) => {
                        warn!(reason = %err, "dhcp no offer");
                        return None;
                    }
                };
                // Hold the address for this client while it decides; keep a
                // longer running lease as it is.
                if !pool.holds(req.mac, ip, now + OFFER_HOLD_SECS) {
                    pool.assign(req.mac, ip, now + OFFER_HOLD_SECS);
                }
                let mut msg = packet::reply_to(req, MessageType::Offer, server_ip);
                msg.set_yiaddr(ip);
                self.add_lease_options(&mut msg, true);
                self.add_boot_options(&mut msg, boot.as_ref(), false);
                log_step("dhcp offer", req, Some(ip), boot.as_ref(), DhcpMode::Full);
                self.encode(&msg, self.destination(req, MessageType::Offer))
            }
            MessageType::Request => {
                if let Some(chosen) = req.server_id {
                    if chosen != server_ip {
                        debug!(server = %chosen, "dhcp ignored: client chose another server");
                        return None;
                    }
                }
                let asked = req
                    .requested_ip
                    .or((!req.ciaddr.is_unspecified()).then_some(req.ciaddr));
                let Some(ip) = asked else {
                    debug!("dhcp ignored: REQUEST names no address");
                    return None;
                };
                let lease_secs = self.config.lease_time.as_secs();
                let pool = self.pool.as_mut()?;
                if !pool.available_to(req.mac, ip, now) {
                    info!(%ip, mode = %DhcpMode::Full, "dhcp nak: address not available to this client");
                    let mut msg = packet::reply_to(req, MessageType::Nak, server_ip);
                    msg.opts_mut()
                        .insert(DhcpOption::Message(format!("address {ip} not available")));
                    return self.encode(&msg, self.destination(req, MessageType::Nak));
                }
                let lease = pool.assign(req.mac, ip, now.saturating_add(lease_secs));
                if let Err(err) = self.store.save(&lease) {
                    // The client can still boot; the lease may be handed out
                    // again only after a restart.
                    warn!(%ip, cause = %err, "dhcp lease not persisted");
                }
                let mut msg = packet::reply_to(req, MessageType::Ack, server_ip);
                msg.set_yiaddr(ip);
                msg.set_ciaddr(req.ciaddr);
                self.add_lease_options(&mut msg, true);
                self.add_boot_options(&mut msg, boot.as_ref(), false);
                log_step("dhcp ack", req, Some(ip), boot.as_ref(), DhcpMode::Full);
                self.encode(&msg, self.destination(req, MessageType::Ack))
            }
            MessageType::Release => {
                let pool = self.pool.as_mut()?;
                match pool.release(req.mac, req.ciaddr, now) {
                    Some(lease) => {
                        info!(ip = %lease.ip, "dhcp release");
                        if let Err(err) = self.store.save(&lease) {
                            warn!(ip = %lease.ip, cause = %err, "dhcp release not persisted");
                        }
                    }
                    None => {
                        debug!(ip = %req.ciaddr, "dhcp ignored: release of an address the client does not hold")
                    }
                }
                None
            }
            MessageType::Decline => {
                let Some(ip) = req.requested_ip else {
                    debug!("dhcp ignored: DECLINE names no address");
                    return None;
                };
                let pool = self.pool.as_mut()?;
                info!(%ip, "dhcp decline: address in use by another host, held out of the pool");
                if let Some(lease) = pool.decline(req.mac, ip, now) {
                    if let Err(err) = self.store.save(&lease) {
                        warn!(%ip, cause = %err, "dhcp decline not persisted");
                    }
                }
                None
            }
            MessageType::Inform => {
                if req.ciaddr.is_unspecified() {
                    debug!("dhcp ignored: INFORM without ciaddr");
                    return None;
                }
                let mut msg = packet::reply_to(req, MessageType::Ack, server_ip);
                msg.set_ciaddr(req.ciaddr);
                self.add_lease_options(&mut msg, false);
                self.add_boot_options(&mut msg, boot.as_ref(), false);
                log_step(
                    "dhcp inform-ack",
                    req,
                    Some(req.ciaddr),
                    boot.as_ref(),
                    DhcpMode::Full,
                );
                self.encode(&msg, self.destination(req, MessageType::Ack))
            }
            other => {
                debug!(kind = ?other, "dhcp ignored: message type not served");
                None
            }
        }
    }

    /// Proxy mode on port 67: a PXE DISCOVER gets an offer without address.
    fn proxy_offer(&self, req: &Request, boot: BootAnswer) -> Option<Reply> {
        let mut msg = packet::reply_to(req, MessageType::Offer, self.config.server_ip);
        self.add_boot_options(&mut msg, Some(&boot), true);
        log_step("dhcp proxy-offer", req, None, Some(&boot), DhcpMode::Proxy);
        self.encode(&msg, self.destination(req, MessageType::Offer))
    }

    /// Port 4011: the client's unicast REQUEST to the boot server.
    fn proxy_ack(&self, req: &Request, boot: BootAnswer) -> Option<Reply> {
        let mut msg = packet::reply_to(req, MessageType::Ack, self.config.server_ip);
        msg.set_ciaddr(req.ciaddr);
        // pixiecore's boot-server ACK: vendor class and file, no option 43.
        self.add_boot_options(&mut msg, Some(&boot), false);
        msg.opts_mut().insert(DhcpOption::ClassIdentifier(
            class_name(boot.class).as_bytes().to_vec(),
        ));
        log_step("dhcp proxy-ack", req, None, Some(&boot), self.config.mode);
        self.encode(&msg, Destination::Source)
    }

    /// Subnet mask, router, and (for leases) lease times.
    fn add_lease_options(&self, msg: &mut Message, lease: bool) {
        let opts = msg.opts_mut();
        opts.insert(DhcpOption::SubnetMask(Ipv4Addr::from(prefix_mask(
            self.config.prefix_len,
        ))));
        opts.insert(DhcpOption::Router(vec![self.config.server_ip]));
        if lease {
            let secs = u32::try_from(self.config.lease_time.as_secs()).unwrap_or(u32::MAX);
            opts.insert(DhcpOption::AddressLeaseTime(secs));
            opts.insert(DhcpOption::Renewal(secs / 2));
            opts.insert(DhcpOption::Rebinding(secs / 8 * 7));
        }
    }

    /// Boot file, next-server, and the class-specific options. `proxy`
    /// adds what a ProxyDHCP offer needs (option 60, option 43).
    fn add_boot_options(&self, msg: &mut Message, boot: Option<&BootAnswer>, proxy: bool) {
        let Some(boot) = boot else { return };
        packet::set_boot_file(msg, &boot.file);
        msg.set_siaddr(self.config.server_ip);
        if boot.request.stage == Stage::Ipxe {
            packet::set_ipxe_no_pxedhcp(msg);
        }
        // UEFI HTTP Boot only takes offers that say HTTPClient.
        if boot.class == ClientClass::Http {
            msg.opts_mut().insert(DhcpOption::ClassIdentifier(
                class_name(ClientClass::Http).as_bytes().to_vec(),
            ));
        }
        if proxy {
            let server = self.config.server_ip.to_string();
            msg.set_sname_str(&server);
            if boot.class == ClientClass::Pxe {
                msg.opts_mut().insert(DhcpOption::ClassIdentifier(
                    class_name(ClientClass::Pxe).as_bytes().to_vec(),
                ));
                packet::set_pxe_discovery_control(msg);
            }
        }
    }

    /// RFC 2131 4.1: relay first, NAKs broadcast, then ciaddr, else
    /// broadcast (we cannot unicast to a client without an ARP entry).
    fn destination(&self, req: &Request, kind: MessageType) -> Destination {
        if !req.giaddr.is_unspecified() {
            Destination::Relay(req.giaddr)
        } else if kind == MessageType::Nak || req.ciaddr.is_unspecified() {
            Destination::Broadcast
        } else {
            Destination::Client(req.ciaddr)
        }
    }

    fn encode(&self, msg: &Message, to: Destination) -> Option<Reply> {
        match packet::to_bytes(msg) {
            Ok(bytes) => Some(Reply { bytes, to }),
            Err(err) => {
                warn!(cause = %err, "dhcp reply not encodable");
                None
            }
        }
    }
}

fn class_name(class: ClientClass) -> &'static str {
    match class {
        ClientClass::Pxe => "PXEClient",
        ClientClass::Http => "HTTPClient",
    }
}

/// The network mask of a prefix length.
pub fn prefix_mask(prefix_len: u8) -> u32 {
    match prefix_len {
        0 => 0,
        n if n >= 32 => u32::MAX,
        n => u32::MAX << (32 - u32::from(n)),
    }
}

/// One line an operator can follow: `dhcp offer mac=.. stage=firmware
/// arch=bios ip=10.99.0.100 file=undionly.kpxe mode=full`.
fn log_step(
    step: &str,
    req: &Request,
    ip: Option<Ipv4Addr>,
    boot: Option<&BootAnswer>,
    mode: DhcpMode,
) {
    let ip = ip.map(|ip| ip.to_string()).unwrap_or_else(|| "-".into());
    match boot {
        Some(b) => info!(
            "{step} mac={} stage={} arch={} ip={ip} file={} mode={mode}",
            req.mac, b.request.stage, b.request.arch, b.file
        ),
        None => info!("{step} mac={} ip={ip} mode={mode}", req.mac),
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
