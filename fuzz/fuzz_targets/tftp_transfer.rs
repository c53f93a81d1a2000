//! Drives the transfer state machine with arbitrary ACKs, errors, junk and
//! clock jumps: it never panics and never asks for blocks outside the file.
#![no_main]

use std::time::{Duration, Instant};

use levee_pxe::tftp::{Limits, Negotiated, Output, Packet, Transfer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [a, b, c, d, e, rest @ ..] = data else {
        return;
    };
    let file_len = u64::from(u16::from_le_bytes([*a, *b])) * u64::from(*c % 8 + 1);
    let blksize = u16::from(*d % 64) + 1;
    let agreed = Negotiated {
        blksize,
        windowsize: u16::from(*e % 32) + 1,
        timeout: Duration::from_secs(1),
        oack: if *e & 0x80 != 0 {
            vec![("blksize".into(), blksize.to_string())]
        } else {
            vec![]
        },
    };
    let limits = Limits {
        max_timeout: Duration::from_secs(8),
        retries: 3,
    };
    let mut now = Instant::now();
    let (mut t, mut out) = Transfer::new(file_len, &agreed, limits, now);
    let mut finished = false;
    for op in rest.chunks(3) {
        match out {
            Output::SendWindow { first, count } => {
                assert!(!finished);
                assert!(first >= 1 && count >= 1 && count <= u64::from(agreed.windowsize));
                assert!(first + count - 1 <= t.last_block());
                let bytes: u64 = (first..first + count).map(|b| t.block_len(b) as u64).sum();
                assert!(t.block_offset(first) + bytes <= file_len);
            }
            Output::Done | Output::Abort(_) => finished = true,
            Output::SendOack | Output::Wait => {}
        }
        let arg = u16::from_le_bytes([
            op.get(1).copied().unwrap_or(0),
            op.get(2).copied().unwrap_or(0),
        ]);
        out = match op[0] % 4 {
            0 => {
                now += Duration::from_millis(u64::from(arg));
                t.on_timeout(now)
            }
            1 => t.on_packet(&Packet::Ack { block: arg }, now),
            2 => match Packet::parse(op) {
                Ok(p) => t.on_packet(&p, now),
                Err(_) => Output::Wait,
            },
            _ => {
                now += Duration::from_micros(u64::from(arg));
                t.on_packet(&Packet::Ack { block: arg % 64 }, now)
            }
        };
        if finished {
            assert!(matches!(out, Output::Wait), "output after the end: {out:?}");
        }
    }
});
