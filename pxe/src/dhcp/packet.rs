//! DHCPv4 packets as the server sees them: [`Request::parse`] turns bytes
//! into the few facts the boot decision needs, [`to_bytes`] encodes a reply.
//! The wire format is `dhcproto`'s; this module only guards it against
//! input it cannot take and picks out the PXE fields. No sockets here.

use std::net::Ipv4Addr;

use dhcproto::v4::{
    DhcpOption, Flags, HType, Message, MessageType, Opcode, OptionCode, UnknownOption,
};
use dhcproto::{Decodable, Decoder, Encodable};

use crate::boot::{Arch, MacAddr, Stage};

/// Fixed BOOTP header (236 bytes) plus the magic cookie.
const HEADER_LEN: usize = 240;
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// Replies are padded to the BOOTP minimum; some PXE ROMs drop shorter ones.
const MIN_REPLY_LEN: usize = 300;

/// iPXE's encapsulated options (option 175); sub-option 176 is
/// `no-pxedhcp`.
pub const OPT_IPXE_ENCAP: u8 = 175;
pub const OPT_IPXE_NO_PXEDHCP: u8 = 176;

/// Why a packet is not a request we can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("{0} bytes is shorter than a DHCP header (240)")]
    TooShort(usize),
    #[error("op {0} is not BOOTREQUEST")]
    NotRequest(u8),
    #[error("hardware type {htype} length {hlen} is not Ethernet")]
    NotEthernet { htype: u8, hlen: u8 },
    #[error("no DHCP magic cookie (plain BOOTP is not served)")]
    NoMagic,
    #[error("option {code} has invalid length {len}")]
    BadOptionLength { code: u8, len: usize },
    #[error("undecodable: {0}")]
    Decode(String),
    #[error("no DHCP message type (option 53)")]
    NoMessageType,
}

/// A client request, with the fields the server acts on.
#[derive(Debug, Clone)]
pub struct Request {
    pub kind: MessageType,
    pub xid: u32,
    pub flags: Flags,
    pub mac: MacAddr,
    pub ciaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    /// Option 50.
    pub requested_ip: Option<Ipv4Addr>,
    /// Option 54: the server the client chose.
    pub server_id: Option<Ipv4Addr>,
    /// Option 60.
    pub vendor_class: Option<Vec<u8>>,
    /// Option 77.
    pub user_class: Option<Vec<u8>>,
    /// Option 93, first entry.
    pub arch_code: Option<u16>,
    /// Option 175 present: only iPXE sends it.
    pub ipxe_encap: bool,
    /// Option 97 (client UUID), echoed back as PXE asks.
    pub machine_id: Option<Vec<u8>>,
}

/// What kind of network-boot client sent a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientClass {
    /// Vendor class `PXEClient...`.
    Pxe,
    /// Vendor class `HTTPClient...` (UEFI HTTP Boot).
    Http,
}

impl Request {
    /// Reads a client request. Refuses anything but an Ethernet
    /// BOOTREQUEST carrying a DHCP message type.
    pub fn parse(bytes: &[u8]) -> Result<Request, PacketError> {
        check_wire(bytes)?;
        let msg = Message::decode(&mut Decoder::new(bytes))
            .map_err(|e| PacketError::Decode(e.to_string()))?;
        let opts = msg.opts();
        let kind = opts.msg_type().ok_or(PacketError::NoMessageType)?;
        // chaddr is read from the raw bytes: check_wire made sure they are
        // there (Message::chaddr trusts hlen).
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&bytes[28..34]);
        let requested_ip = match opts.get(OptionCode::RequestedIpAddress) {
            Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
            _ => None,
        };
        let server_id = match opts.get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
            _ => None,
        };
        let vendor_class = match opts.get(OptionCode::ClassIdentifier) {
            Some(DhcpOption::ClassIdentifier(v)) => Some(v.clone()),
            _ => None,
        };
        let user_class = match opts.get(OptionCode::UserClass) {
            Some(DhcpOption::UserClass(v)) => Some(v.clone()),
            _ => None,
        };
        let arch_code = match opts.get(OptionCode::ClientSystemArchitecture) {
            Some(DhcpOption::ClientSystemArchitecture(a)) => Some(a.0),
            _ => None,
        };
        let machine_id = match opts.get(OptionCode::ClientMachineIdentifier) {
            Some(DhcpOption::ClientMachineIdentifier(v)) => Some(v.clone()),
            _ => None,
        };
        Ok(Request {
            kind,
            xid: msg.xid(),
            flags: msg.flags(),
            mac: MacAddr(mac),
            ciaddr: msg.ciaddr(),
            giaddr: msg.giaddr(),
            requested_ip,
            server_id,
            vendor_class,
            user_class,
            arch_code,
            ipxe_encap: opts.contains(OptionCode::Unknown(OPT_IPXE_ENCAP)),
            machine_id,
        })
    }

    /// `PXEClient` / `HTTPClient` by option 60, `None` for other clients.
    pub fn client_class(&self) -> Option<ClientClass> {
        let vc = self.vendor_class.as_deref()?;
        if vc.starts_with(b"PXEClient") {
            Some(ClientClass::Pxe)
        } else if vc.starts_with(b"HTTPClient") {
            Some(ClientClass::Http)
        } else {
            None
        }
    }

    /// iPXE marks itself with user class "iPXE" (sent raw, not in RFC 3004
    /// length-prefixed form, so match it anywhere) or with option 175.
    pub fn stage(&self) -> Stage {
        let ipxe_class = self
            .user_class
            .as_deref()
            .is_some_and(|uc| uc.windows(4).any(|w| w == b"iPXE"));
        if ipxe_class || self.ipxe_encap {
            Stage::Ipxe
        } else {
            Stage::Firmware
        }
    }

    /// Option 93, else the `Arch:NNNNN` field of the vendor class, else BIOS
    /// (PXE 2.1 clients without option 93 are BIOS).
    pub fn arch(&self) -> Arch {
        if let Some(code) = self.arch_code {
            return Arch::from_code(code);
        }
        let from_vendor = self
            .vendor_class
            .as_deref()
            .and_then(|vc| std::str::from_utf8(vc).ok())
            .and_then(|vc| {
                let rest = vc.split("Arch:").nth(1)?;
                rest.get(..5)?.parse::<u16>().ok()
            });
        Arch::from_code(from_vendor.unwrap_or(0))
    }
}

/// Checks what `dhcproto` assumes but does not verify: a full header, an
/// Ethernet chaddr, and lengths of the options whose decoders panic (debug
/// assertions, subtraction) on a wrong length. Walks option runs the way
/// `dhcproto` concatenates them (RFC 3396: consecutive same code).
fn check_wire(bytes: &[u8]) -> Result<(), PacketError> {
    if bytes.len() < HEADER_LEN {
        return Err(PacketError::TooShort(bytes.len()));
    }
    if bytes[0] != 1 {
        return Err(PacketError::NotRequest(bytes[0]));
    }
    let (htype, hlen) = (bytes[1], bytes[2]);
    if htype != 1 || hlen != 6 {
        return Err(PacketError::NotEthernet { htype, hlen });
    }
    if bytes[236..240] != MAGIC_COOKIE {
        return Err(PacketError::NoMagic);
    }
    let mut run: Option<(u8, usize)> = None;
    let mut i = HEADER_LEN;
    while i < bytes.len() {
        let code = bytes[i];
        if code == 0 || code == 255 {
            if let Some((c, len)) = run.take() {
                check_option_len(c, len)?;
            }
            if code == 255 {
                break;
            }
            i += 1;
            continue;
        }
        let Some(&len) = bytes.get(i + 1) else { break };
        let len = usize::from(len);
        run = match run {
            Some((c, total)) if c == code => Some((c, total + len)),
            Some((c, total)) => {
                check_option_len(c, total)?;
                Some((code, len))
            }
            None => Some((code, len)),
        };
        i += 2 + len;
    }
    if let Some((c, len)) = run {
        check_option_len(c, len)?;
    }
    Ok(())
}

fn check_option_len(code: u8, len: usize) -> Result<(), PacketError> {
    let ok = match code {
        80 => len == 0,
        94 => len == 3,
        81 => len >= 3,
        151 => len >= 1,
        152..=155 => len == 4,
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(PacketError::BadOptionLength { code, len })
    }
}

/// A reply to `req` of type `kind` from `server_ip`: same xid, flags, relay
/// and chaddr, with the message type and server identifier set.
pub fn reply_to(req: &Request, kind: MessageType, server_ip: Ipv4Addr) -> Message {
    let mut msg = Message::new_with_id(
        req.xid,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        req.giaddr,
        &req.mac.0,
    );
    msg.set_opcode(Opcode::BootReply)
        .set_htype(HType::Eth)
        .set_flags(req.flags);
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    opts.insert(DhcpOption::ServerIdentifier(server_ip));
    if let Some(id) = &req.machine_id {
        opts.insert(DhcpOption::ClientMachineIdentifier(id.clone()));
    }
    msg
}

/// Puts the boot file name in option 67 and, when it fits, in the BOOTP
/// `file` field (firmware PXE reads the field, iPXE the option).
pub fn set_boot_file(msg: &mut Message, file: &str) {
    if file.len() < 128 {
        msg.set_fname_str(file);
    }
    msg.opts_mut()
        .insert(DhcpOption::BootfileName(file.as_bytes().to_vec()));
}

/// Option 175 with sub-option 176 = 1: iPXE stops waiting for ProxyDHCP.
pub fn set_ipxe_no_pxedhcp(msg: &mut Message) {
    msg.opts_mut()
        .insert(DhcpOption::Unknown(UnknownOption::new(
            OptionCode::Unknown(OPT_IPXE_ENCAP),
            vec![OPT_IPXE_NO_PXEDHCP, 1, 1],
        )));
}

/// Option 43 for a PXEClient proxy offer: PXE_DISCOVERY_CONTROL (6) = 8,
/// "boot the file named in this packet, skip boot server discovery".
pub fn set_pxe_discovery_control(msg: &mut Message) {
    msg.opts_mut()
        .insert(DhcpOption::VendorExtensions(vec![6, 1, 8, 255]));
}

/// Encodes a reply, padded to the BOOTP minimum length.
pub fn to_bytes(msg: &Message) -> Result<Vec<u8>, String> {
    let mut bytes = msg.to_vec().map_err(|e| e.to_string())?;
    if bytes.len() < MIN_REPLY_LEN {
        bytes.resize(MIN_REPLY_LEN, 0);
    }
    Ok(bytes)
}

/// Decodes a reply (for tests and tools): the inverse of [`to_bytes`].
pub fn parse_reply(bytes: &[u8]) -> Option<Message> {
    if bytes.len() < HEADER_LEN || bytes[0] != 2 || bytes[2] > 16 {
        return None;
    }
    Message::decode(&mut Decoder::new(bytes)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn discover(vendor: &[u8]) -> Vec<u8> {
        let mut msg = Message::new_with_id(
            7,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &[0x52, 0x54, 0, 1, 2, 3],
        );
        msg.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Discover));
        msg.opts_mut()
            .insert(DhcpOption::ClassIdentifier(vendor.to_vec()));
        msg.to_vec().unwrap()
    }

    #[test]
    fn arch_falls_back_to_the_vendor_class() {
        let req = Request::parse(&discover(b"PXEClient:Arch:00007:UNDI:003000")).unwrap();
        assert_eq!(req.arch(), Arch::UefiX64);
        assert_eq!(req.stage(), Stage::Firmware);
        assert_eq!(req.client_class(), Some(ClientClass::Pxe));
        let req = Request::parse(&discover(b"PXEClient")).unwrap();
        assert_eq!(req.arch(), Arch::Bios);
        let req = Request::parse(&discover(b"HTTPClient:Arch:00016")).unwrap();
        assert_eq!(req.arch(), Arch::UefiX64Http);
        assert_eq!(req.client_class(), Some(ClientClass::Http));
    }

    #[test]
    fn option_lengths_that_panic_dhcproto_are_refused() {
        let mut bytes = discover(b"PXEClient");
        let end = bytes.len() - 1;
        // Rapid commit (80) must be empty; two consecutive option-94 runs
        // concatenate to 6 bytes.
        for extra in [
            &[80u8, 1, 0][..],
            &[94, 3, 1, 2, 3, 94, 3, 1, 2, 3],
            &[81, 1, 0],
            &[151, 0],
        ] {
            let mut b = bytes[..end].to_vec();
            b.extend_from_slice(extra);
            b.push(255);
            assert!(matches!(
                Request::parse(&b),
                Err(PacketError::BadOptionLength { .. })
            ));
        }
        bytes[2] = 17;
        assert!(matches!(
            Request::parse(&bytes),
            Err(PacketError::NotEthernet { .. })
        ));
    }
}
