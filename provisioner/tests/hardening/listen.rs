//! Both TCP listeners of `levee serve` under slow and greedy clients
//! (issue 11): the per-client and per-listener caps, the header, TLS and
//! idle timeouts, each observed against a real server on 127.0.0.1, with a
//! request that keeps working throughout.

use super::common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use levee_provisioner::listen::Limits;
use levee_provisioner::serve::{self, Listeners, ServeConfig};
use tokio_util::sync::CancellationToken;

struct Server {
    http: SocketAddr,
    https: SocketAddr,
    stop: CancellationToken,
    _rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn start(limits: Limits) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, store) = common::store_with_default_profile(dir.path(), "x");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let stop = CancellationToken::new();
    let (http, https) = rt.block_on(async {
        let http = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("http");
        let https = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("https");
        let addrs = (
            http.local_addr().expect("a"),
            https.local_addr().expect("a"),
        );
        let config = ServeConfig {
            data_dir: data,
            ipxe_dir: dir.path().join("ipxe"),
            public_url: format!("http://{}", addrs.0),
            tftp_host: "127.0.0.1".into(),
            dhcp: None,
            grace: Duration::from_secs(2),
            alerts: Default::default(),
            limits,
            allow_pending: true,
            offsite: Default::default(),
            fleet_url: None,
        };
        let listeners = Listeners {
            http,
            https: Some(https),
            tftp: None,
            store: None,
        };
        tokio::spawn(serve::run(store, listeners, config, stop.clone()));
        addrs
    });
    Server {
        http,
        https,
        stop,
        _rt: rt,
        _dir: dir,
    }
}

fn limits() -> Limits {
    Limits {
        max_conns: 64,
        max_conns_per_ip: 4,
        header_timeout: Duration::from_millis(1500),
        tls_timeout: Duration::from_millis(1500),
        idle_timeout: Duration::from_millis(2500),
    }
}

/// One `GET /healthz` on a new connection; its status line.
fn healthz(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.lines().next().unwrap_or_default().to_string()
}

/// Waits until the server closes `s` (EOF or reset); how long that took.
/// Reads and discards what the server sends before.
fn closed_after(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

#[test]
fn r11_the_per_client_cap_refuses_the_next_connection_and_frees_on_close() {
    let srv = start(limits());
    for addr in [srv.http, srv.https] {
        let held: Vec<TcpStream> = (0..4)
            .map(|_| TcpStream::connect(addr).expect("connect"))
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let mut fifth = TcpStream::connect(addr).expect("connect");
        let mut first = Vec::new();
        fifth
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let _ = fifth.read_to_end(&mut first);
        if addr == srv.http {
            let text = String::from_utf8_lossy(&first);
            assert!(text.starts_with("HTTP/1.1 503"), "{text}");
        } else {
            assert!(first.is_empty(), "TLS over the cap is closed at once");
        }
        drop(held);
        std::thread::sleep(Duration::from_millis(200));
    }
    // Freed: plain HTTP answers again.
    assert_eq!(healthz(srv.http), "HTTP/1.1 200 OK");
}

#[test]
fn r11_the_listener_cap_holds_across_clients() {
    let srv = start(Limits {
        max_conns: 6,
        max_conns_per_ip: 100,
        ..limits()
    });
    // Loopback has a whole /8 of client addresses.
    let from = |n: u8| {
        let sock = connect_from(srv.http, [127, 0, 1, n]);
        sock.expect("connect from another loopback address")
    };
    let held: Vec<TcpStream> = (1..=6).map(from).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut over = from(7);
    let mut first = String::new();
    over.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let _ = over.read_to_string(&mut first);
    assert!(first.starts_with("HTTP/1.1 503"), "{first}");
    drop(held);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(healthz(srv.http), "HTTP/1.1 200 OK");
}

/// A TCP connection to `to` from the local address `from` (port any).
fn connect_from(to: SocketAddr, from: [u8; 4]) -> std::io::Result<TcpStream> {
    // std has no bind-before-connect; libc does it in a few lines.
    use std::os::fd::FromRawFd;
    // SAFETY: a fresh socket, bound and connected with structs we own; the
    // descriptor is handed to TcpStream, which closes it.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let sin = |ip: [u8; 4], port: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(ip),
            },
            sin_zero: [0; 8],
        };
        let local = sin(from, 0);
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let std::net::IpAddr::V4(ip) = to.ip() else {
            return Err(std::io::Error::other("IPv4 only"));
        };
        let remote = sin(ip.octets(), to.port());
        if libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

#[test]
fn r11_a_trickled_header_is_cut_at_the_header_timeout() {
    let srv = start(limits());
    let mut s = TcpStream::connect(srv.http).expect("connect");
    let started = Instant::now();
    // One byte every 200 ms: the connection is never silent, but its head
    // never completes.
    let trickler = {
        let mut w = s.try_clone().expect("clone");
        std::thread::spawn(move || {
            for b in b"GET /healthz HTTP/1.1\r\nX-Slow: "
                .iter()
                .cycle()
                .take(100)
            {
                if w.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let took = closed_after(&mut s, Duration::from_secs(8)).expect("never closed");
    let total = started.elapsed();
    // The header timeout (1.5 s), well before the idle one (2.5 s).
    assert!(
        total >= Duration::from_millis(1400) && total < Duration::from_millis(2200),
        "closed after {took:?} ({total:?} since connect)"
    );
    trickler.join().expect("trickler");
    assert_eq!(healthz(srv.http), "HTTP/1.1 200 OK");
}

#[test]
fn r11_an_idle_keep_alive_connection_is_closed_at_the_idle_timeout() {
    let srv = start(limits());
    let mut s = TcpStream::connect(srv.http).expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut buf = [0u8; 1024];
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let n = s.read(&mut buf).expect("answer");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // Idle from here: longer than the header timeout is fine, the idle
    // timeout is not.
    let took = closed_after(&mut s, Duration::from_secs(8)).expect("never closed");
    assert!(
        took >= Duration::from_millis(2300) && took < Duration::from_millis(4000),
        "idle connection closed after {took:?}"
    );
    // A kept-alive connection that asks again in time is served again.
    let mut s = TcpStream::connect(srv.http).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    for _ in 0..3 {
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        let n = s.read(&mut buf).expect("answer");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        std::thread::sleep(Duration::from_millis(1800));
    }
}

#[test]
fn r11_a_tls_handshake_that_never_comes_is_cut_at_the_tls_timeout() {
    let srv = start(limits());
    let mut silent = TcpStream::connect(srv.https).expect("connect");
    // Half a ClientHello record header, then nothing.
    let mut partial = TcpStream::connect(srv.https).expect("connect");
    partial.write_all(&[0x16, 0x03, 0x01]).expect("write");
    for s in [&mut silent, &mut partial] {
        let took = closed_after(s, Duration::from_secs(6)).expect("never closed");
        assert!(
            took < Duration::from_millis(2500),
            "handshake cut after {took:?}"
        );
    }
    // Both were cut near 1.5 s, not at once.
    let mut late = TcpStream::connect(srv.https).expect("connect");
    let took = closed_after(&mut late, Duration::from_secs(6)).expect("never closed");
    assert!(took >= Duration::from_millis(1300), "cut after {took:?}");
}
