//! Network boot protocols for Levee.
//!
//! One module per protocol; wire formats and state machines are kept apart
//! from sockets so that they can be tested and fuzzed without a network:
//!
//! - [`boot`]: the types the boot decision is made of (MAC, firmware
//!   architecture, boot stage) and the [`boot::BootPolicy`] trait through
//!   which the provisioner says whether and how a machine boots.
//! - [`dhcp`]: DHCPv4 in `full` (leases from a range) and `proxy` (PXE only,
//!   beside an existing DHCP server) modes, on ports 67 and 4011.
//! - [`ra`]: IPv6 router advertisements, so iPXE does not wait for one.
//! - [`tftp`]: a read-only TFTP server (RFC 1350, 2347-2349, 7440).
//! - [`ipxe`]: rendering of per-machine iPXE scripts.

pub mod boot;
pub mod dhcp;
pub mod ipxe;
pub mod ra;
pub mod tftp;
