//! Server settings and option negotiation (RFC 2347, 2348, 2349, 7440).

use std::time::Duration;

use super::wire::{Request, DEFAULT_BLKSIZE, MAX_BLKSIZE};

/// Settings of the TFTP server.
#[derive(Debug, Clone)]
pub struct TftpOptions {
    /// Largest block size granted (RFC 2348 allows up to 65464).
    pub max_blksize: u16,
    /// Largest window granted (RFC 7440).
    pub max_windowsize: u16,
    /// Cap on windowsize x blksize in the OACK. atftp's 208 KiB receive
    /// buffer overflows beyond about 64 KiB and the transfer stalls.
    pub max_window_bytes: u32,
    /// First retransmission timeout when the client negotiates none.
    pub timeout: Duration,
    /// Back-off doubles the timeout up to this.
    pub max_timeout: Duration,
    /// Retransmissions of one window before the transfer is given up.
    pub retries: u32,
    /// Transfers at once; requests beyond it get an error packet.
    pub max_transfers: usize,
    /// Spin this long for a window's ACK before sleeping in the reactor.
    /// Only while few transfers run, so it never starves other work.
    pub busy_poll: Duration,
    /// Send windows with UDP GSO (`UDP_SEGMENT`) where the kernel allows.
    pub gso: bool,
}

impl Default for TftpOptions {
    fn default() -> Self {
        TftpOptions {
            max_blksize: MAX_BLKSIZE,
            max_windowsize: 64,
            max_window_bytes: 64 * 1024,
            timeout: Duration::from_secs(1),
            max_timeout: Duration::from_secs(8),
            retries: 6,
            max_transfers: 4096,
            busy_poll: Duration::from_micros(100),
            gso: true,
        }
    }
}

/// What was agreed with one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub blksize: u16,
    pub windowsize: u16,
    /// Retransmission timeout to start from.
    pub timeout: Duration,
    /// Options to acknowledge; empty means no OACK and DATA 1 comes first.
    pub oack: Vec<(String, String)>,
}

/// Decides the transfer parameters from a read request. Unknown or invalid
/// options are left out of the OACK, as RFC 2347 asks.
pub fn negotiate(request: &Request, file_len: u64, opts: &TftpOptions) -> Negotiated {
    let mut agreed = Negotiated {
        blksize: DEFAULT_BLKSIZE,
        windowsize: 1,
        timeout: opts.timeout,
        oack: Vec::new(),
    };
    // blksize first: the window cap depends on it.
    if let Some(v) = request
        .option("blksize")
        .and_then(|v| v.trim().parse::<u32>().ok())
    {
        if v >= 8 {
            let max = u32::from(opts.max_blksize.clamp(8, MAX_BLKSIZE));
            agreed.blksize = v.min(max) as u16;
            agreed
                .oack
                .push(("blksize".into(), agreed.blksize.to_string()));
        }
    }
    if let Some(v) = request
        .option("windowsize")
        .and_then(|v| v.trim().parse::<u32>().ok())
    {
        if v >= 1 {
            let by_bytes = (opts.max_window_bytes / u32::from(agreed.blksize)).max(1);
            let max = u32::from(opts.max_windowsize.max(1)).min(by_bytes);
            agreed.windowsize = v.min(max) as u16;
            agreed
                .oack
                .push(("windowsize".into(), agreed.windowsize.to_string()));
        }
    }
    if let Some(v) = request
        .option("timeout")
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        if (1..=255).contains(&v) {
            agreed.timeout = Duration::from_secs(v);
            agreed.oack.push(("timeout".into(), v.to_string()));
        }
    }
    // curl refuses an OACK with "tsize 0" (and then fails the transfer), so
    // an empty file's size is left out, which RFC 2349 allows.
    if file_len > 0
        && request
            .option("tsize")
            .is_some_and(|v| v.trim().parse::<u64>().is_ok())
    {
        agreed.oack.push(("tsize".into(), file_len.to_string()));
    }
    agreed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tftp::wire::Mode;

    fn request(options: &[(&str, &str)]) -> Request {
        Request {
            filename: "f".into(),
            mode: Mode::Octet,
            options: options
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn no_options_means_rfc1350() {
        let n = negotiate(&request(&[]), 10, &TftpOptions::default());
        assert_eq!((n.blksize, n.windowsize), (512, 1));
        assert!(n.oack.is_empty());
    }

    #[test]
    fn empty_file_has_no_tsize() {
        let n = negotiate(
            &request(&[("tsize", "0"), ("blksize", "512")]),
            0,
            &TftpOptions::default(),
        );
        assert_eq!(n.oack, vec![("blksize".to_string(), "512".to_string())]);
    }

    #[test]
    fn atftp_style_request() {
        let n = negotiate(
            &request(&[
                ("blksize", "1468"),
                ("windowsize", "16"),
                ("tsize", "0"),
                ("TIMEOUT", "3"),
            ]),
            123,
            &TftpOptions::default(),
        );
        assert_eq!(
            (n.blksize, n.windowsize, n.timeout),
            (1468, 16, Duration::from_secs(3))
        );
        assert_eq!(
            n.oack,
            vec![
                ("blksize".to_string(), "1468".to_string()),
                ("windowsize".into(), "16".into()),
                ("timeout".into(), "3".into()),
                ("tsize".into(), "123".into()),
            ]
        );
    }

    #[test]
    fn window_bytes_are_capped() {
        let n = negotiate(
            &request(&[("blksize", "8192"), ("windowsize", "64")]),
            0,
            &TftpOptions::default(),
        );
        assert_eq!((n.blksize, n.windowsize), (8192, 8));
        let n = negotiate(
            &request(&[("blksize", "100000"), ("windowsize", "4")]),
            0,
            &TftpOptions::default(),
        );
        assert_eq!((n.blksize, n.windowsize), (65464, 1));
    }

    #[test]
    fn invalid_values_are_ignored() {
        let n = negotiate(
            &request(&[
                ("blksize", "7"),
                ("windowsize", "0"),
                ("timeout", "256"),
                ("tsize", "x"),
                ("foo", "1"),
            ]),
            5,
            &TftpOptions::default(),
        );
        assert_eq!((n.blksize, n.windowsize), (512, 1));
        assert!(n.oack.is_empty());
    }
}
