//! Enrollment: the server's own certificate authority and the one-time
//! tokens that boot scripts carry.
//!
//! A blank box proves who it is with a token minted for its MAC when its boot
//! script was rendered; the server then signs its certificate request with
//! the CA in `DATA_DIR/ca/`, whose sha256 the box got on its command line.

pub mod ca;
pub mod https;
mod recovery_api;
mod restore_api;
mod runs_api;
pub mod service;
pub mod token;
mod update_api;
