//! The sockets: one listening socket for requests, and one socket per
//! transfer bound to an ephemeral port and connected to the client.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use thiserror::Error;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, warn, Instrument};

use super::options::{negotiate, TftpOptions};
use super::source::{FileSource, OpenError, TftpFile};
use super::sys::{enable_pktinfo, preadv_segments, recv_with_dst, set_gso};
use super::transfer::{AbortReason, Limits, Output, Transfer};
use super::wire::{put_data_header, ErrorCode, Mode, Packet, Request, DATA_HEADER_LEN};

/// A failure that stops the whole server (not one transfer).
#[derive(Debug, Error)]
pub enum TftpError {
    #[error("TFTP {context}: {source}")]
    Io {
        context: &'static str,
        source: io::Error,
    },
}

/// Largest UDP payload the kernel accepts in one GSO send, and its segment cap.
const GSO_MAX_BYTES: usize = 65_507;
const GSO_MAX_SEGMENTS: usize = 64;
/// GSO only pays off (and is only allowed) when a segment fits an Ethernet frame.
const GSO_MAX_SEGMENT: usize = 1472;

struct Shared {
    source: Arc<dyn FileSource>,
    options: TftpOptions,
    listener: Arc<UdpSocket>,
    active: AtomicUsize,
    /// Clients (address and port: the RFC 1350 transfer id) with a transfer
    /// running. A client that retransmits its request before our first
    /// packet reaches it must not get a second transfer, which would only
    /// time out after tens of seconds, holding a socket and a file.
    /// Keyed by the address the request was sent to as well: the same
    /// client port may ask two of our addresses.
    peers: std::sync::Mutex<std::collections::HashSet<(SocketAddr, Option<IpAddr>)>>,
    /// Busy-poll only while this few transfers run (half the CPUs).
    spin_limit: usize,
    cpus: usize,
    shutdown: CancellationToken,
}

/// Serves read requests arriving on `socket` until `shutdown` is cancelled,
/// then waits for the running transfers to stop.
pub async fn serve(
    socket: UdpSocket,
    source: Arc<dyn FileSource>,
    options: TftpOptions,
    shutdown: CancellationToken,
) -> Result<(), TftpError> {
    // A burst of requests (hundreds of clients booting at once) must not
    // overflow the default receive buffer; best effort.
    if let Err(err) = SockRef::from(&socket).set_recv_buffer_size(4 << 20) {
        debug!(cause = %err, "could not enlarge TFTP receive buffer");
    }
    if let Ok(local) = socket.local_addr() {
        if local.ip().is_unspecified() {
            if let Err(err) = enable_pktinfo(socket.as_raw_fd(), local.is_ipv6()) {
                debug!(cause = %err, "no IP_PKTINFO: transfers answer from the routed address");
            }
        }
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let shared = Arc::new(Shared {
        source,
        options,
        listener: Arc::new(socket),
        active: AtomicUsize::new(0),
        peers: Default::default(),
        spin_limit: (cpus / 2).max(1),
        cpus,
        shutdown,
    });
    let tracker = TaskTracker::new();
    let result = accept_loop(&shared, &tracker).await;
    tracker.close();
    tracker.wait().await;
    result
}

async fn accept_loop(shared: &Arc<Shared>, tracker: &TaskTracker) -> Result<(), TftpError> {
    let mut buf = vec![0u8; 65_536];
    loop {
        let listener = &shared.listener;
        let (len, peer, dst) = tokio::select! {
            _ = shared.shutdown.cancelled() => return Ok(()),
            received = listener.async_io(Interest::READABLE, || recv_with_dst(listener.as_raw_fd(), &mut buf)) => match received {
                Ok(got) => got,
                // ICMP errors from earlier replies surface here on some
                // kernels; they concern one client, not the server.
                Err(err) if transient(&err) => {
                    debug!(cause = %err, "ignored socket error");
                    continue;
                }
                Err(source) => return Err(TftpError::Io { context: "receiving requests", source }),
            },
        };
        let packet = match Packet::parse(&buf[..len]) {
            Ok(packet) => packet,
            Err(err) => {
                debug!(client = %peer, cause = %err, "ignored malformed packet");
                continue;
            }
        };
        match packet {
            Packet::Rrq(request) => {
                if shared.active.load(Ordering::Relaxed) >= shared.options.max_transfers {
                    refuse(
                        shared,
                        peer,
                        &request.filename,
                        ErrorCode::NotDefined,
                        "server busy",
                    )
                    .await;
                    continue;
                }
                let fresh = shared
                    .peers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert((peer, dst));
                if !fresh {
                    debug!(client = %peer, file = %request.filename, "ignored retransmitted request: its transfer is running");
                    continue;
                }
                shared.active.fetch_add(1, Ordering::Relaxed);
                let span = info_span!("tftp_transfer", client = %peer, file = %request.filename);
                let task_shared = Arc::clone(shared);
                tracker.spawn(
                    async move {
                        run_transfer(&task_shared, peer, dst, request).await;
                        task_shared.active.fetch_sub(1, Ordering::Relaxed);
                        task_shared
                            .peers
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&(peer, dst));
                    }
                    .instrument(span),
                );
            }
            Packet::Wrq(request) => {
                refuse(
                    shared,
                    peer,
                    &request.filename,
                    ErrorCode::AccessViolation,
                    "server is read-only",
                )
                .await;
            }
            other => {
                debug!(client = %peer, packet = ?kind(&other), "ignored packet on the request port")
            }
        }
    }
}

fn transient(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    ) || err.raw_os_error() == Some(libc::EHOSTUNREACH)
        || err.raw_os_error() == Some(libc::ENETUNREACH)
}

fn kind(packet: &Packet) -> &'static str {
    match packet {
        Packet::Rrq(_) => "RRQ",
        Packet::Wrq(_) => "WRQ",
        Packet::Data { .. } => "DATA",
        Packet::Ack { .. } => "ACK",
        Packet::Error { .. } => "ERROR",
        Packet::Oack { .. } => "OACK",
    }
}

/// Answers a request with an error packet from the listening socket.
async fn refuse(shared: &Shared, peer: SocketAddr, file: &str, code: ErrorCode, reason: &str) {
    info!(client = %peer, file, reason, "tftp request refused");
    send_error(&shared.listener, Some(peer), code, reason).await;
}

async fn send_error(socket: &UdpSocket, peer: Option<SocketAddr>, code: ErrorCode, message: &str) {
    let Ok(bytes) = Packet::error(code, message).to_bytes() else {
        return;
    };
    let sent = match peer {
        Some(peer) => socket.send_to(&bytes, peer).await,
        None => socket.send(&bytes).await,
    };
    if let Err(err) = sent {
        debug!(cause = %err, "could not send error packet");
    }
}

fn open_error_code(err: &OpenError) -> ErrorCode {
    match err {
        OpenError::NotFound(_) => ErrorCode::FileNotFound,
        OpenError::AccessDenied(_) => ErrorCode::AccessViolation,
        OpenError::Io { .. } => ErrorCode::NotDefined,
    }
}

/// Message for the client: no host paths or OS error details.
fn open_error_message(err: &OpenError) -> &'static str {
    match err {
        OpenError::NotFound(_) => "file not found",
        OpenError::AccessDenied(_) => "access violation",
        OpenError::Io { .. } => "cannot read file",
    }
}

fn transfer_socket(local: SocketAddr, peer: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(peer), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_nonblocking(true)?;
    let mut bind = local;
    bind.set_port(0);
    if bind.is_ipv4() != peer.is_ipv4() {
        bind = match peer {
            SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
            SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
        };
    }
    socket.bind(&bind.into())?;
    socket.connect(&peer.into())?;
    UdpSocket::from_std(socket.into())
}

async fn run_transfer(shared: &Shared, peer: SocketAddr, dst: Option<IpAddr>, request: Request) {
    let started = Instant::now();
    if request.mode == Mode::Mail {
        refuse(
            shared,
            peer,
            &request.filename,
            ErrorCode::IllegalOperation,
            "mail mode is not supported",
        )
        .await;
        return;
    }
    // Opening may touch the disk; it is a handful of syscalls and the task
    // is already off the accept loop.
    let file = match shared.source.open_from(&request.filename, Some(peer)) {
        Ok(file) => file,
        Err(err) => {
            info!(client = %peer, file = %request.filename, reason = %err, "tftp request refused");
            send_error(
                &shared.listener,
                Some(peer),
                open_error_code(&err),
                open_error_message(&err),
            )
            .await;
            return;
        }
    };
    if request.mode == Mode::Netascii {
        // Boot clients ask for octet; netascii is served unconverted, as
        // dnsmasq does, so sizes and tsize stay exact.
        debug!("netascii requested, serving bytes unconverted");
    }
    // Answer from the address the request was sent to (it matters when the
    // listener is bound to 0.0.0.0 on a host with several addresses).
    let mut local = shared
        .listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    if let Some(ip) = dst.filter(|ip| ip.is_ipv4() == peer.is_ipv4()) {
        local.set_ip(ip);
    }
    let socket = match transfer_socket(local, peer) {
        Ok(socket) => socket,
        Err(err) => {
            warn!(cause = %err, "cannot open a transfer socket");
            send_error(
                &shared.listener,
                Some(peer),
                ErrorCode::NotDefined,
                "server error",
            )
            .await;
            return;
        }
    };
    let agreed = negotiate(&request, file.len(), &shared.options);
    let limits = Limits {
        max_timeout: shared.options.max_timeout,
        retries: shared.options.retries,
    };
    let (mut transfer, first) = Transfer::new(file.len(), &agreed, limits, Instant::now());
    let mut sender = WindowSender::new(
        &socket,
        transfer.blksize() as usize,
        shared.options.gso && transfer.windowsize() > 1,
    );
    match drive(shared, &socket, &file, &mut transfer, &mut sender, first).await {
        Ok(()) => info!(
            bytes = transfer.file_len(),
            duration_ms = started.elapsed().as_secs_f64() * 1e3,
            blksize = transfer.blksize(),
            windowsize = transfer.windowsize(),
            retransmits = transfer.retransmits(),
            gso = sender.gso,
            "tftp transfer complete"
        ),
        Err(reason) => {
            info!(
                reason = %reason,
                sent_before_failure = transfer.file_len(),
                duration_ms = started.elapsed().as_secs_f64() * 1e3,
                blksize = transfer.blksize(),
                windowsize = transfer.windowsize(),
                retransmits = transfer.retransmits(),
                "tftp transfer failed"
            );
            if reason.tell_client {
                send_error(&socket, None, ErrorCode::NotDefined, &reason.message).await;
            }
        }
    }
}

/// Why a running transfer stopped.
struct Failure {
    message: String,
    /// Send an ERROR packet (not when the client itself gave up).
    tell_client: bool,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn failure(message: impl Into<String>, tell_client: bool) -> Failure {
    Failure {
        message: message.into(),
        tell_client,
    }
}

async fn drive(
    shared: &Shared,
    socket: &UdpSocket,
    file: &TftpFile,
    transfer: &mut Transfer,
    sender: &mut WindowSender,
    first: Output,
) -> Result<(), Failure> {
    let mut out = first;
    let mut buf = vec![0u8; 65_536];
    let mut ack_wait = AckWait::default();
    let may_spin = !shared.options.busy_poll.is_zero() && has_idle_cpu(shared.cpus);
    loop {
        match out {
            Output::SendOack => {
                let bytes = transfer
                    .oack()
                    .to_bytes()
                    .map_err(|e| failure(e.to_string(), true))?;
                socket.send(&bytes).await.map_err(|e| send_failure(&e))?;
            }
            Output::SendWindow { first, count } => {
                sender
                    .load(file, transfer, first, count)
                    .map_err(|e| failure(format!("reading file: {e}"), true))?;
                sender.send(socket).await.map_err(|e| send_failure(&e))?;
                ack_wait.sent = Some(Instant::now());
                // The read is then off the path from ACK to next window.
                sender.read_ahead(file, transfer);
            }
            Output::Wait => {}
            Output::Done => return Ok(()),
            Output::Abort(AbortReason::TimedOut { retries }) => {
                return Err(failure(
                    format!("timed out after {retries} retransmissions"),
                    true,
                ))
            }
            Output::Abort(AbortReason::PeerError { code, message }) => {
                return Err(failure(
                    format!("client sent error {}: {message}", code.to_u16()),
                    false,
                ))
            }
        }
        let spin = may_spin
            && ack_wait.sent.is_some()
            && ack_wait.typical <= shared.options.busy_poll
            && shared.active.load(Ordering::Relaxed) <= shared.spin_limit;
        let received = if spin {
            busy_poll(socket.as_raw_fd(), &mut buf, shared)
        } else {
            None
        };
        let len = match received {
            Some(Ok(len)) => len,
            Some(Err(err)) => return Err(recv_failure(&err)),
            None => {
                let deadline = tokio::time::Instant::from_std(transfer.deadline());
                tokio::select! {
                    received = socket.recv(&mut buf) => match received {
                        Ok(len) => len,
                        Err(err) => return Err(recv_failure(&err)),
                    },
                    _ = tokio::time::sleep_until(deadline) => {
                        out = transfer.on_timeout(Instant::now());
                        continue;
                    }
                    _ = shared.shutdown.cancelled() => return Err(failure("server shutting down", true)),
                }
            }
        };
        ack_wait.received();
        out = match Packet::parse(&buf[..len]) {
            Ok(packet) => {
                if !matches!(packet, Packet::Ack { .. } | Packet::Error { .. }) {
                    debug!(packet = kind(&packet), "ignored packet during transfer");
                }
                transfer.on_packet(&packet, Instant::now())
            }
            Err(err) => {
                debug!(cause = %err, "ignored malformed packet during transfer");
                Output::Wait
            }
        };
    }
}

fn send_failure(err: &io::Error) -> Failure {
    if err.kind() == io::ErrorKind::ConnectionRefused {
        failure("client went away (port unreachable)", false)
    } else {
        failure(format!("sending: {err}"), false)
    }
}

fn recv_failure(err: &io::Error) -> Failure {
    if err.kind() == io::ErrorKind::ConnectionRefused {
        failure("client went away (port unreachable)", false)
    } else {
        failure(format!("receiving: {err}"), false)
    }
}

/// Whether a core is idle by the 1-minute load average: spinning on a busy
/// machine takes CPU from the client (measured 2-3x slower with 8 compiler
/// processes on 2 cores).
fn has_idle_cpu(cpus: usize) -> bool {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|l| l.parse::<f64>().ok())
        })
        .is_some_and(|load| load + 1.0 <= cpus as f64)
}

/// How long ACKs take to come back after a window, smoothed. Busy-polling
/// pays only when they come back quickly (an idle core runs the client);
/// on a loaded machine spinning takes CPU from the client and made
/// transfers 2-3x slower, so it stops while ACKs are slow.
struct AckWait {
    sent: Option<Instant>,
    typical: Duration,
}

impl Default for AckWait {
    fn default() -> Self {
        AckWait {
            sent: None,
            typical: Duration::ZERO,
        }
    }
}

impl AckWait {
    fn received(&mut self) {
        if let Some(sent) = self.sent.take() {
            self.typical = (self.typical * 3 + sent.elapsed()) / 4;
        }
    }
}

/// Spins on a non-blocking `recv` for a short while: the window's ACK
/// usually comes back within tens of microseconds, and sleeping in the
/// reactor costs more than that. `None` when nothing came.
fn busy_poll(fd: RawFd, buf: &mut [u8], shared: &Shared) -> Option<io::Result<usize>> {
    let until = Instant::now() + shared.options.busy_poll;
    loop {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes and `fd`
        // is an open socket borrowed for the duration of the call.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n >= 0 {
            return Some(Ok(n as usize));
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::WouldBlock && err.kind() != io::ErrorKind::Interrupted {
            return Some(Err(err));
        }
        if Instant::now() >= until {
            return None;
        }
        std::hint::spin_loop();
    }
}

/// Builds a window's DATA packets back to back in one buffer (read with one
/// `preadv`) and sends them with UDP GSO where possible.
struct WindowSender {
    buf: Vec<u8>,
    blksize: usize,
    /// Length of the datagrams in `buf`: all full except maybe the last.
    len: usize,
    /// The window read ahead, its length and which blocks it holds.
    next: Vec<u8>,
    next_len: usize,
    next_window: Option<(u64, u64)>,
    gso: bool,
}

impl WindowSender {
    fn new(socket: &UdpSocket, blksize: usize, want_gso: bool) -> WindowSender {
        let segment = blksize + DATA_HEADER_LEN;
        let gso = want_gso
            && segment <= GSO_MAX_SEGMENT
            && set_gso(socket.as_raw_fd(), segment as u16).is_ok();
        WindowSender {
            buf: Vec::new(),
            blksize,
            len: 0,
            next: Vec::new(),
            next_len: 0,
            next_window: None,
            gso,
        }
    }

    fn segment(&self) -> usize {
        self.blksize + DATA_HEADER_LEN
    }

    fn fill(
        &mut self,
        file: &TftpFile,
        transfer: &Transfer,
        first: u64,
        count: u64,
    ) -> io::Result<()> {
        self.next_window = None;
        let seg = self.segment();
        let count = count as usize;
        let last_len = transfer.block_len(first + count as u64 - 1);
        self.next_len = (count - 1) * seg + DATA_HEADER_LEN + last_len;
        if self.next.len() < count * seg {
            self.next.resize(count * seg, 0);
        }
        for i in 0..count {
            let header: &mut [u8; DATA_HEADER_LEN] = (&mut self.next
                [i * seg..i * seg + DATA_HEADER_LEN])
                .try_into()
                .map_err(|_| io::Error::other("window buffer layout"))?;
            put_data_header(header, Transfer::wire_block(first + i as u64));
        }
        let offset = transfer.block_offset(first);
        let payload = (count - 1) * self.blksize + last_len;
        match file {
            TftpFile::Memory(bytes) => {
                let start = usize::try_from(offset).map_err(io::Error::other)?;
                let data = bytes
                    .get(start..start + payload)
                    .ok_or_else(|| io::Error::other("window beyond end of data"))?;
                for (i, chunk) in data.chunks(self.blksize).enumerate() {
                    let at = i * seg + DATA_HEADER_LEN;
                    self.next[at..at + chunk.len()].copy_from_slice(chunk);
                }
            }
            TftpFile::Disk { file, .. } => preadv_segments(
                file.as_raw_fd(),
                &mut self.next,
                offset,
                seg,
                count,
                payload,
            )?,
        }
        self.next_window = Some((first, count as u64));
        Ok(())
    }

    /// Makes `first ..= first + count - 1` the window to send, reading it
    /// unless it was read ahead.
    fn load(
        &mut self,
        file: &TftpFile,
        transfer: &Transfer,
        first: u64,
        count: u64,
    ) -> io::Result<()> {
        if self.next_window != Some((first, count)) {
            self.fill(file, transfer, first, count)?;
        }
        std::mem::swap(&mut self.buf, &mut self.next);
        self.len = self.next_len;
        self.next_window = None;
        Ok(())
    }

    /// Reads the window that will most likely be asked for next, while the
    /// client is busy with the current one; errors surface on [`load`].
    fn read_ahead(&mut self, file: &TftpFile, transfer: &Transfer) {
        if let Some((first, count)) = transfer.next_window() {
            if self.fill(file, transfer, first, count).is_err() {
                self.next_window = None;
            }
        }
    }

    async fn send(&mut self, socket: &UdpSocket) -> io::Result<()> {
        let seg = self.segment();
        let mut at = 0;
        while at < self.len {
            let chunk = if self.gso {
                let segments = (GSO_MAX_BYTES / seg).min(GSO_MAX_SEGMENTS);
                (segments * seg).min(self.len - at)
            } else {
                seg.min(self.len - at)
            };
            match socket.send(&self.buf[at..at + chunk]).await {
                Ok(_) => at += chunk,
                // Devices without checksum offload refuse GSO: fall back to
                // one datagram per block and resend this chunk.
                Err(err)
                    if self.gso
                        && matches!(err.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL)) =>
                {
                    debug!(cause = %err, "UDP GSO refused, sending block by block");
                    self.gso = false;
                    let _ = set_gso(socket.as_raw_fd(), 0);
                }
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }
}
