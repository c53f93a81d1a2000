//! Client packets as real boot firmware sends them, for tests, the fuzzer's
//! seeds and test harnesses.

use std::net::Ipv4Addr;

use dhcproto::v4::{Architecture, DhcpOption, Message, MessageType, OptionCode, UnknownOption};
use dhcproto::Encodable;

use crate::boot::MacAddr;

/// Vendor class of a BIOS PXE ROM (and of BIOS iPXE).
pub const VENDOR_BIOS: &str = "PXEClient:Arch:00000:UNDI:002001";
/// Vendor class of OVMF's own PXE client.
pub const VENDOR_OVMF: &str = "PXEClient:Arch:00007:UNDI:003000";
/// Vendor class of UEFI iPXE.
pub const VENDOR_IPXE_EFI: &str = "PXEClient:Arch:00007:UNDI:003010";
/// Vendor class of a UEFI HTTP Boot client.
pub const VENDOR_HTTP: &str = "HTTPClient:Arch:00016";

/// A client packet under construction.
#[derive(Debug, Clone)]
pub struct ClientPacket {
    msg: Message,
}

impl ClientPacket {
    /// A BOOTREQUEST of type `kind` from `mac`, broadcast flag set.
    pub fn new(kind: MessageType, mac: MacAddr, xid: u32) -> ClientPacket {
        let mut msg = Message::new_with_id(
            xid,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &mac.0,
        );
        msg.set_flags(msg.flags().set_broadcast());
        msg.opts_mut().insert(DhcpOption::MessageType(kind));
        ClientPacket { msg }
    }

    /// Option 60.
    pub fn vendor_class(mut self, class: &str) -> Self {
        self.msg
            .opts_mut()
            .insert(DhcpOption::ClassIdentifier(class.as_bytes().to_vec()));
        self
    }

    /// Option 93.
    pub fn arch(mut self, code: u16) -> Self {
        self.msg
            .opts_mut()
            .insert(DhcpOption::ClientSystemArchitecture(Architecture(code)));
        self
    }

    /// What iPXE adds: user class "iPXE" and option 175 (with the feature
    /// flags it sends, e.g. HTTP = 19).
    pub fn ipxe(mut self) -> Self {
        let opts = self.msg.opts_mut();
        opts.insert(DhcpOption::UserClass(b"iPXE".to_vec()));
        opts.insert(DhcpOption::Unknown(UnknownOption::new(
            OptionCode::Unknown(175),
            vec![19, 1, 1, 21, 1, 1],
        )));
        self
    }

    /// Option 50.
    pub fn requested_ip(mut self, ip: Ipv4Addr) -> Self {
        self.msg
            .opts_mut()
            .insert(DhcpOption::RequestedIpAddress(ip));
        self
    }

    /// Option 54.
    pub fn server_id(mut self, ip: Ipv4Addr) -> Self {
        self.msg.opts_mut().insert(DhcpOption::ServerIdentifier(ip));
        self
    }

    /// Option 97: the client UUID PXE clients send.
    pub fn machine_id(mut self, id: &[u8]) -> Self {
        self.msg
            .opts_mut()
            .insert(DhcpOption::ClientMachineIdentifier(id.to_vec()));
        self
    }

    /// A relay agent's address (as if forwarded by a DHCP relay).
    pub fn giaddr(mut self, ip: Ipv4Addr) -> Self {
        self.msg.set_giaddr(ip);
        self
    }

    pub fn ciaddr(mut self, ip: Ipv4Addr) -> Self {
        self.msg.set_ciaddr(ip);
        self
    }

    pub fn message(&self) -> &Message {
        &self.msg
    }

    /// The encoded packet.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Encoding a Message into a Vec only fails on a bug in dhcproto.
        self.msg.to_vec().unwrap_or_default()
    }
}
