//! A read-only TFTP server: RFC 1350, option negotiation (RFC 2347), blksize
//! (2348), tsize and timeout (2349) and windowsize (7440).
//!
//! Hand-written rather than built on the `async-tftp` crate: measured on
//! these machines (64 MiB, atftp client, blksize 1468, windowsize 16, veth
//! pair, best/median of 7 interleaved rounds) `async-tftp` 0.4.2 took
//! 0.22-0.23 / 0.25-0.26 s, no faster than atftpd (0.20 / 0.25 s), and on
//! RFC 7440's loss signal it waits a full timeout instead of resending.
//! This server's numbers are in `docs/BENCHMARKS.md` ("TFTP"). What made it
//! fast: one socket connected to the client per transfer, one `preadv` per
//! window straight into the packet buffer, UDP GSO to send a window in one
//! syscall, resending at once on an ACK below the window, and a brief
//! busy-poll for the window's ACK.
//!
//! Layout: [`wire`] parses and encodes packets, `transfer` is the sending
//! state machine (no sockets), `source` opens files, `server` owns sockets.
//!
//! ```no_run
//! use std::sync::Arc;
//! use levee_pxe::tftp::{serve, ChainSource, DirSource, FileSource, MemorySource, TftpOptions};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let generated = Arc::new(MemorySource::new());
//! generated.insert("boot.ipxe", b"#!ipxe\nchain http://10.0.0.1/boot\n".to_vec());
//! let source: Arc<dyn FileSource> =
//!     Arc::new(ChainSource::new(vec![generated, Arc::new(DirSource::new("/srv/tftp"))]));
//! let socket = tokio::net::UdpSocket::bind("0.0.0.0:69").await?;
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! serve(socket, source, TftpOptions::default(), shutdown).await?;
//! # Ok(())
//! # }
//! ```

mod options;
mod server;
mod source;
mod sys;
mod transfer;
pub mod wire;

pub use options::{negotiate, Negotiated, TftpOptions};
pub use server::{serve, TftpError};
pub use source::{ChainSource, DirSource, FileSource, MemorySource, OpenError, TftpFile};
pub use transfer::{AbortReason, Limits, Output, Transfer};
pub use wire::{ErrorCode, Mode, Packet, Request, WireError};
