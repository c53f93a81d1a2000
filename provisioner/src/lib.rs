//! The Levee provisioning server and operator CLI.
//!
//! - [`serve`] runs the network-boot services (DHCP, TFTP, HTTP) over one
//!   [`store::Store`];
//! - [`boot`] decides what each machine boots and renders its iPXE script;
//! - [`http`] is the plain-HTTP listener's routes, [`listen`] the
//!   connection caps and timeouts both TCP listeners share;
//! - [`images`] is the image store under `--data-dir`;
//! - [`releases`] are the signed update channels (TUF, built with tough);
//! - [`config`] reads and validates customer configuration files, and
//!   [`secrets`] keeps their secrets encrypted at rest;
//! - [`alerts`] judges the fleet periodically and posts alerts to webhooks;
//! - [`offsite`] is the offsite store (`--store`): append-only copies of
//!   the appliances' repositories;
//! - [`health`] judges each appliance's backups from its run reports;
//! - [`ui`] is the web panel (`levee serve --ui`) and its JSON API;
//! - [`cli`] is the `levee` command line.

pub mod alerts;
pub mod boot;
pub mod cli;
pub mod config;
pub mod drain;
pub mod enroll;
pub mod fleet;
pub mod health;
pub mod http;
pub mod image_fetch;
pub mod images;
pub mod limit;
pub mod listen;
pub mod metrics;
pub mod offsite;
pub mod releases;
pub mod secrets;
pub mod serve;
pub mod store;
pub mod ui;
