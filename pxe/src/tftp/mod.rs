//! A read-only TFTP server: RFC 1350, option negotiation (RFC 2347), blksize
//! (2348), tsize and timeout (2349) and windowsize (7440).
//!
//! Hand-written rather than built on the `async-tftp` crate, by
//! measurement (`bench/tftp.sh`: 64 MiB, atftp client, blksize 1468,
//! windowsize 16, veth pair, medians of 9 interleaved rounds on a loaded
//! 2-core machine): `async-tftp` 0.4.2 took 0.56-0.68 s, no faster than
//! atftpd (0.61-0.68 s), while this server took 0.32-0.36 s; and (found
//! earlier, shared/BOOT-NOTES.md) on RFC 7440's loss signal `async-tftp`
//! waits a full timeout instead of resending. Details in `docs/BENCHMARKS.md` ("TFTP"). What made this one
//! fast: a socket connected to the client per transfer, one `preadv` per
//! window straight into the packet buffer (read ahead while the client
//! works), UDP GSO to send a window in one syscall, resending at once on an
//! ACK below the window, probing a lost window tail after a few round trips,
//! and a brief busy-poll for the ACK when a core is idle.
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
