//! The Levee provisioning server and operator CLI.
//!
//! - [`serve`] runs the network-boot services (DHCP, TFTP, HTTP) over one
//!   [`store::Store`];
//! - [`boot`] decides what each machine boots and renders its iPXE script;
//! - [`http`] is the plain-HTTP listener;
//! - [`images`] is the image store under `--data-dir`;
//! - [`cli`] is the `levee` command line.

pub mod boot;
pub mod cli;
pub mod http;
pub mod images;
pub mod serve;
pub mod store;
