//! The few raw socket and file calls tokio and std do not offer: UDP GSO,
//! `preadv` into packet slots, and `recvmsg` with the request's destination
//! address (IP_PKTINFO).

use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

use super::wire::DATA_HEADER_LEN;

pub(super) fn set_gso(fd: RawFd, segment: u16) -> io::Result<()> {
    let value = libc::c_int::from(segment);
    // SAFETY: plain setsockopt with a correctly sized int argument.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads `payload` bytes at `offset` straight into the payload slots of
/// `count` segments of `seg` bytes (each after a 4-byte header): one
/// `preadv` per window, repeated only on short reads.
pub(super) fn preadv_segments(
    fd: RawFd,
    buf: &mut [u8],
    offset: u64,
    seg: usize,
    count: usize,
    payload: usize,
) -> io::Result<()> {
    let blksize = seg - DATA_HEADER_LEN;
    if buf.len() < count * seg {
        return Err(io::Error::other("window buffer too small"));
    }
    let mut done = 0usize;
    let mut iovecs: Vec<libc::iovec> = Vec::with_capacity(count.min(1024));
    while done < payload {
        iovecs.clear();
        let mut pos = done;
        while pos < payload && iovecs.len() < 1024 {
            let (block, within) = (pos / blksize, pos % blksize);
            let len = (blksize - within).min(payload - pos);
            let start = block * seg + DATA_HEADER_LEN + within;
            let slot = &mut buf[start..start + len];
            iovecs.push(libc::iovec {
                iov_base: slot.as_mut_ptr().cast(),
                iov_len: len,
            });
            pos += len;
        }
        let at = libc::off_t::try_from(offset + done as u64).map_err(io::Error::other)?;
        // SAFETY: every iovec points into `buf`, which outlives the call and
        // is not otherwise accessed meanwhile; the slots do not overlap.
        let n = unsafe { libc::preadv(fd, iovecs.as_ptr(), iovecs.len() as libc::c_int, at) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while being served",
            ));
        }
        done += n as usize;
    }
    Ok(())
}

/// Asks the kernel to report each datagram's destination address, so a
/// server bound to 0.0.0.0 answers from the address the client used.
pub(super) fn enable_pktinfo(fd: RawFd, ipv6: bool) -> io::Result<()> {
    let on: libc::c_int = 1;
    let (level, name) = if ipv6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
    } else {
        (libc::IPPROTO_IP, libc::IP_PKTINFO)
    };
    // SAFETY: setsockopt with a correctly sized int argument.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&on as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One datagram: its length, sender, and destination address if the
/// kernel reported it. Non-blocking (WouldBlock when nothing is queued).
pub(super) fn recv_with_dst(
    fd: RawFd,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, Option<IpAddr>)> {
    // SAFETY: all-zero is a valid sockaddr_storage and msghdr.
    let mut addr: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 16];
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = (&mut addr as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = mem::size_of_val(&control) as _;
    // SAFETY: msg points at live buffers of the sizes given above.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let peer =
        sockaddr_to_std(&addr).ok_or_else(|| io::Error::other("datagram from a non-IP address"))?;
    let mut dst = None;
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled,
    // bounded by msg_controllen; payloads are read unaligned.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let hdr = &*cmsg;
            if hdr.cmsg_level == libc::IPPROTO_IP && hdr.cmsg_type == libc::IP_PKTINFO {
                let info: libc::in_pktinfo = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                dst = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    info.ipi_addr.s_addr,
                ))));
            } else if hdr.cmsg_level == libc::IPPROTO_IPV6 && hdr.cmsg_type == libc::IPV6_PKTINFO {
                let info: libc::in6_pktinfo =
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                dst = Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((n as usize, peer, dst))
}

fn sockaddr_to_std(addr: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(addr.ss_family) {
        libc::AF_INET => {
            // SAFETY: ss_family says this storage holds a sockaddr_in.
            let sin: &libc::sockaddr_in =
                unsafe { &*(addr as *const libc::sockaddr_storage).cast() };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: ss_family says this storage holds a sockaddr_in6.
            let sin6: &libc::sockaddr_in6 =
                unsafe { &*(addr as *const libc::sockaddr_storage).cast() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    #[test]
    fn preadv_fills_payload_slots() {
        let mut file = tempfile::tempfile().expect("tempfile");
        let data: Vec<u8> = (0..250u32).map(|i| i as u8).collect();
        file.write_all(&data).expect("write");
        let (seg, count) = (104, 3);
        let mut buf = vec![0xaa; seg * count];
        preadv_segments(file.as_raw_fd(), &mut buf, 50, seg, count, 200).expect("read");
        assert_eq!(&buf[4..104], &data[50..150]);
        assert_eq!(&buf[108..208], &data[150..250]);
        assert_eq!(&buf[0..4], &[0xaa; 4], "headers untouched");
        let err = preadv_segments(file.as_raw_fd(), &mut buf, 200, seg, count, 100)
            .expect_err("short file");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn pktinfo_reports_destination() {
        let rx = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        enable_pktinfo(rx.as_raw_fd(), false).expect("IP_PKTINFO");
        let port = rx.local_addr().expect("addr").port();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        tx.send_to(b"hi", ("127.0.0.2", port)).expect("send");
        rx.set_nonblocking(false).expect("blocking");
        let mut buf = [0u8; 16];
        // MSG_DONTWAIT: wait until the datagram is queued.
        let got = loop {
            match recv_with_dst(rx.as_raw_fd(), &mut buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                other => break other.expect("recv"),
            }
        };
        assert_eq!(
            got,
            (
                2,
                tx.local_addr().expect("addr"),
                Some(IpAddr::from([127, 0, 0, 2]))
            )
        );
    }
}
