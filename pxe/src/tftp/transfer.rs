//! The sending side of one read transfer as a pure state machine: packets
//! and timestamps go in, what to send and when to wake up come out. No
//! sockets, so loss and timeouts are tested with plain values.
//!
//! Blocks are numbered from 1 with `u64` internally; on the wire the
//! number wraps from 65535 to 0 so files of any size can be sent.

use std::time::{Duration, Instant};

use super::options::Negotiated;
use super::wire::{ErrorCode, Packet};

/// What the server should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send the OACK ([`Transfer::oack`]).
    SendOack,
    /// Send blocks `first ..= first + count - 1` (absolute numbers).
    SendWindow { first: u64, count: u64 },
    /// Nothing to send; wait for a packet or [`Transfer::deadline`].
    Wait,
    /// The last block was acknowledged.
    Done,
    /// The transfer is over without success.
    Abort(AbortReason),
}

/// Why a transfer ended early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AbortReason {
    /// No answer after all retries.
    TimedOut { retries: u32 },
    /// The client sent an ERROR packet.
    PeerError { code: ErrorCode, message: String },
}

/// Limits that do not come from the client.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_timeout: Duration,
    pub retries: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// OACK sent, waiting for ACK 0.
    Oack,
    Data,
    Finished,
}

/// State of one read transfer.
#[derive(Debug, Clone)]
pub struct Transfer {
    blksize: u64,
    windowsize: u64,
    file_len: u64,
    /// Absolute number of the final (short, possibly empty) block.
    last_block: u64,
    oack: Vec<(String, String)>,
    phase: Phase,
    /// Highest block the client has acknowledged.
    acked: u64,
    /// Highest block sent in the current window.
    sent_end: u64,
    base_timeout: Duration,
    timeout: Duration,
    limits: Limits,
    /// Retransmissions since the last progress.
    attempts: u32,
    deadline: Instant,
    window_sent_at: Instant,
    /// Whether the current window is a resend (Karn: no RTT sample then).
    window_is_resend: bool,
    srtt: Option<Duration>,
    /// Blocks we last sent a second time (first, last), and when. A client
    /// that gets a duplicate answers with an ACK of its last block (atftp does),
    /// which looks like a loss signal; answering that with another resend
    /// locks the transfer into resending half of every window (measured:
    /// 26,545 of 45,716 blocks after one spurious probe).
    last_retransmit: Option<(u64, u64, Instant)>,
    /// When to resend the window's last block if its ACK has not come: a
    /// lost tail (a full receive buffer drops the end of a window) gives
    /// the client no out-of-order block to signal with, and both sides
    /// would otherwise sit out a whole timeout.
    probe_at: Option<Instant>,
    retransmits: u64,
}

impl Transfer {
    /// Starts a transfer of `file_len` bytes; the first output says what to send.
    pub fn new(
        file_len: u64,
        agreed: &Negotiated,
        limits: Limits,
        now: Instant,
    ) -> (Transfer, Output) {
        let blksize = u64::from(agreed.blksize.max(1));
        let mut t = Transfer {
            blksize,
            windowsize: u64::from(agreed.windowsize.max(1)),
            file_len,
            last_block: file_len / blksize + 1,
            oack: agreed.oack.clone(),
            phase: Phase::Oack,
            acked: 0,
            sent_end: 0,
            base_timeout: agreed.timeout,
            timeout: agreed.timeout,
            limits,
            attempts: 0,
            deadline: now + agreed.timeout,
            window_sent_at: now,
            window_is_resend: false,
            srtt: None,
            last_retransmit: None,
            probe_at: None,
            retransmits: 0,
        };
        let out = if t.oack.is_empty() {
            t.phase = Phase::Data;
            t.send_from(1, now, true)
        } else {
            Output::SendOack
        };
        (t, out)
    }

    /// The OACK to send when asked to by [`Output::SendOack`].
    pub fn oack(&self) -> Packet {
        Packet::Oack {
            options: self.oack.clone(),
        }
    }

    /// When [`Transfer::on_timeout`] next has something to do.
    pub fn deadline(&self) -> Instant {
        self.probe_at
            .map_or(self.deadline, |probe| probe.min(self.deadline))
    }

    pub fn blksize(&self) -> u64 {
        self.blksize
    }

    pub fn windowsize(&self) -> u64 {
        self.windowsize
    }

    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    pub fn last_block(&self) -> u64 {
        self.last_block
    }

    /// The window a full ACK of the current one would ask for, if any.
    pub fn next_window(&self) -> Option<(u64, u64)> {
        if self.phase != Phase::Data || self.sent_end >= self.last_block {
            return None;
        }
        let first = self.sent_end + 1;
        Some((first, self.windowsize.min(self.last_block + 1 - first)))
    }

    /// Blocks sent more than once.
    pub fn retransmits(&self) -> u64 {
        self.retransmits
    }

    /// File offset of block `block` (absolute, from 1).
    pub fn block_offset(&self, block: u64) -> u64 {
        (block.saturating_sub(1)).saturating_mul(self.blksize)
    }

    /// Payload bytes of block `block`.
    pub fn block_len(&self, block: u64) -> usize {
        let start = self.block_offset(block);
        self.file_len.saturating_sub(start).min(self.blksize) as usize
    }

    /// The 16-bit number block `block` carries on the wire.
    pub fn wire_block(block: u64) -> u16 {
        (block & 0xffff) as u16
    }

    fn send_from(&mut self, first: u64, now: Instant, fresh: bool) -> Output {
        let count = self.windowsize.min(self.last_block + 1 - first);
        self.send_blocks(first, count, now, fresh)
    }

    /// Sends `first ..= first + count - 1`; `fresh` when none of it was sent
    /// before, so its ACK time is a fair RTT sample (Karn).
    fn send_blocks(&mut self, first: u64, count: u64, now: Instant, fresh: bool) -> Output {
        let repeated = self.sent_end.saturating_sub(first - 1).min(count);
        if repeated > 0 {
            self.retransmits += repeated;
            self.last_retransmit = Some((first, first + repeated - 1, now));
        }
        self.sent_end = self.sent_end.max(first + count - 1);
        self.window_sent_at = now;
        self.window_is_resend = !fresh || repeated > 0;
        self.deadline = now + self.timeout;
        // Lock-step transfers (window 1) never probe: a duplicate DATA
        // there can start the sorcerer's apprentice cascade.
        self.probe_at = match self.srtt {
            Some(srtt) if self.windowsize > 1 => Some(now + self.probe_delay(srtt)),
            _ => None,
        };
        Output::SendWindow { first, count }
    }

    /// Feeds a packet received from the client.
    pub fn on_packet(&mut self, packet: &Packet, now: Instant) -> Output {
        if self.phase == Phase::Finished {
            return Output::Wait;
        }
        match packet {
            Packet::Error { code, message } => {
                self.phase = Phase::Finished;
                Output::Abort(AbortReason::PeerError {
                    code: *code,
                    message: message.clone(),
                })
            }
            Packet::Ack { block } => self.on_ack(*block, now),
            _ => Output::Wait,
        }
    }

    fn on_ack(&mut self, block: u16, now: Instant) -> Output {
        match self.phase {
            Phase::Finished => Output::Wait,
            Phase::Oack if block == 0 => {
                self.phase = Phase::Data;
                self.progress();
                self.send_from(1, now, true)
            }
            Phase::Oack => Output::Wait,
            Phase::Data => {
                // Which sent block does this 16-bit number mean? Only
                // acked ..= sent_end are meaningful; anything else is old.
                let back = u64::from(Self::wire_block(self.sent_end).wrapping_sub(block));
                if back > self.sent_end - self.acked {
                    return Output::Wait;
                }
                let block = self.sent_end - back;
                if block == self.last_block {
                    self.phase = Phase::Finished;
                    return Output::Done;
                }
                if block == self.sent_end {
                    if !self.window_is_resend {
                        self.sample_rtt(now.saturating_duration_since(self.window_sent_at));
                    }
                    self.acked = block;
                    self.progress();
                    return self.send_from(block + 1, now, true);
                }
                // An ACK below the window's end. In lock step that can only
                // be a duplicate; answering it doubles every later packet
                // (RFC 1350's sorcerer's apprentice), so the timeout resends.
                if self.windowsize == 1 {
                    return Output::Wait;
                }
                if block > self.acked {
                    self.acked = block;
                    self.progress();
                }
                if self.maybe_answering_duplicate(block, now) {
                    // Keep the window full with new blocks; a real loss
                    // shows again as a probe, ACK or timeout.
                    let end = (block + self.windowsize).min(self.last_block);
                    if end <= self.sent_end {
                        return Output::Wait;
                    }
                    let first = self.sent_end + 1;
                    return self.send_blocks(first, end + 1 - first, now, false);
                }
                // RFC 7440's loss signal: the client missed block + 1.
                // Resend from there at once, not after a timeout.
                self.send_from(block + 1, now, false)
            }
        }
    }

    /// Called when the deadline may have passed.
    pub fn on_timeout(&mut self, now: Instant) -> Output {
        if self.phase == Phase::Finished {
            return Output::Wait;
        }
        if let Some(probe) = self.probe_at {
            if now >= probe && now < self.deadline {
                self.probe_at = None;
                self.retransmits += 1;
                self.last_retransmit = Some((self.sent_end, self.sent_end, now));
                return Output::SendWindow {
                    first: self.sent_end,
                    count: 1,
                };
            }
        }
        if now < self.deadline {
            return Output::Wait;
        }
        if self.attempts >= self.limits.retries {
            self.phase = Phase::Finished;
            return Output::Abort(AbortReason::TimedOut {
                retries: self.attempts,
            });
        }
        self.attempts += 1;
        self.timeout = (self.timeout * 2).min(self.limits.max_timeout.max(self.base_timeout));
        match self.phase {
            Phase::Oack => {
                self.deadline = now + self.timeout;
                Output::SendOack
            }
            _ => self.send_from(self.acked + 1, now, false),
        }
    }

    fn progress(&mut self) {
        self.attempts = 0;
        self.timeout = self.base_timeout;
    }

    fn sample_rtt(&mut self, sample: Duration) {
        self.srtt = Some(match self.srtt {
            None => sample,
            Some(srtt) => (srtt * 7 + sample) / 8,
        });
    }

    /// Several window round trips: long enough that a slow client is
    /// rarely probed, far shorter than a timeout.
    fn probe_delay(&self, srtt: Duration) -> Duration {
        let max = (self.base_timeout / 4).max(Duration::from_millis(10));
        (srtt * 8).clamp(Duration::from_millis(10), max)
    }

    /// Whether an ACK of `block` may be the client's answer to a duplicate
    /// we sent lately rather than a loss: within a few round trips of
    /// resending `first ..= last`, a client that got some of them again
    /// acknowledges a block in `first - 1 ..= last`. An ACK below that
    /// range (say, after a probe of the last block when several were
    /// lost) is a real loss signal.
    fn maybe_answering_duplicate(&self, block: u64, now: Instant) -> bool {
        let window = self
            .srtt
            .map_or(Duration::from_millis(2), |srtt| srtt * 4)
            .clamp(
                Duration::from_millis(1),
                (self.base_timeout / 4).max(Duration::from_millis(1)),
            );
        self.last_retransmit.is_some_and(|(first, last, at)| {
            block + 1 >= first && block <= last && now.saturating_duration_since(at) < window
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agreed(blksize: u16, windowsize: u16, oack: bool) -> Negotiated {
        Negotiated {
            blksize,
            windowsize,
            timeout: Duration::from_secs(1),
            oack: if oack {
                vec![("blksize".into(), blksize.to_string())]
            } else {
                vec![]
            },
        }
    }

    const LIMITS: Limits = Limits {
        max_timeout: Duration::from_secs(4),
        retries: 3,
    };

    fn ack(block: u16) -> Packet {
        Packet::Ack { block }
    }

    #[test]
    fn rfc1350_lockstep() {
        let now = Instant::now();
        let (mut t, out) = Transfer::new(1000, &agreed(512, 1, false), LIMITS, now);
        assert_eq!(out, Output::SendWindow { first: 1, count: 1 });
        assert_eq!((t.block_len(1), t.block_len(2)), (512, 488));
        assert_eq!(
            t.on_packet(&ack(1), now),
            Output::SendWindow { first: 2, count: 1 }
        );
        assert_eq!(t.on_packet(&ack(2), now), Output::Done);
    }

    #[test]
    fn exact_multiple_ends_with_empty_block() {
        let now = Instant::now();
        let (mut t, _) = Transfer::new(1024, &agreed(512, 4, false), LIMITS, now);
        assert_eq!(t.last_block(), 3);
        assert_eq!(t.block_len(3), 0);
        assert_eq!(t.on_packet(&ack(3), now), Output::Done);
        let (t, out) = Transfer::new(0, &agreed(512, 4, false), LIMITS, now);
        assert_eq!(out, Output::SendWindow { first: 1, count: 1 });
        assert_eq!(t.block_len(1), 0);
    }

    #[test]
    fn oack_then_windows() {
        let now = Instant::now();
        let (mut t, out) = Transfer::new(10 * 100, &agreed(100, 4, true), LIMITS, now);
        assert_eq!(out, Output::SendOack);
        assert_eq!(t.next_window(), None);
        assert_eq!(
            t.on_packet(&ack(5), now),
            Output::Wait,
            "ACK before ACK 0 is ignored"
        );
        assert_eq!(
            t.on_packet(&ack(0), now),
            Output::SendWindow { first: 1, count: 4 }
        );
        assert_eq!(t.next_window(), Some((5, 4)));
        assert_eq!(
            t.on_packet(&ack(4), now),
            Output::SendWindow { first: 5, count: 4 }
        );
        assert_eq!(t.next_window(), Some((9, 3)));
        assert_eq!(
            t.on_packet(&ack(8), now),
            Output::SendWindow { first: 9, count: 3 }
        );
        assert_eq!(t.next_window(), None);
        assert_eq!(t.on_packet(&ack(11), now), Output::Done);
        assert_eq!(t.retransmits(), 0);
    }

    #[test]
    fn loss_signal_resends_at_once() {
        let now = Instant::now();
        let (mut t, _) = Transfer::new(100 * 100, &agreed(100, 8, false), LIMITS, now);
        // Client got 1..=3, lost 4: it acks 3. Resend from 4 without waiting.
        assert_eq!(
            t.on_packet(&ack(3), now),
            Output::SendWindow { first: 4, count: 8 }
        );
        assert_eq!(t.retransmits(), 5);
        // The lost first block of a window shows as an ACK of the previous window's end.
        assert_eq!(
            t.on_packet(&ack(11), now),
            Output::SendWindow {
                first: 12,
                count: 8
            }
        );
        let later = now + Duration::from_millis(50);
        assert_eq!(
            t.on_packet(&ack(11), later),
            Output::SendWindow {
                first: 12,
                count: 8
            }
        );
    }

    #[test]
    fn repeated_loss_signal_in_one_burst_is_answered_once() {
        let now = Instant::now();
        let (mut t, _) = Transfer::new(100 * 100, &agreed(100, 8, false), LIMITS, now);
        assert_eq!(
            t.on_packet(&ack(3), now),
            Output::SendWindow { first: 4, count: 8 }
        );
        let soon = now + Duration::from_micros(10);
        assert_eq!(t.on_packet(&ack(3), soon), Output::Wait);
        assert_eq!(t.on_packet(&ack(3), soon), Output::Wait);
        // A round trip later the same ACK is a real new loss signal.
        let later = now + Duration::from_millis(10);
        assert_eq!(
            t.on_packet(&ack(3), later),
            Output::SendWindow { first: 4, count: 8 }
        );
    }

    #[test]
    fn lost_tail_is_probed_after_a_few_round_trips() {
        let t0 = Instant::now();
        let (mut t, _) = Transfer::new(100 * 100, &agreed(100, 4, false), LIMITS, t0);
        assert_eq!(
            t.deadline(),
            t0 + Duration::from_secs(1),
            "no RTT yet: no probe"
        );
        let t1 = t0 + Duration::from_millis(1);
        assert_eq!(
            t.on_packet(&ack(4), t1),
            Output::SendWindow { first: 5, count: 4 }
        );
        // srtt 1 ms -> probe 8 ms (at least 10 ms) after the window.
        assert_eq!(t.deadline(), t1 + Duration::from_millis(10));
        assert_eq!(
            t.on_timeout(t.deadline()),
            Output::SendWindow { first: 8, count: 1 }
        );
        assert_eq!(t.retransmits(), 1);
        // One probe per window; then the real timeout.
        assert_eq!(t.deadline(), t1 + Duration::from_secs(1));
        // The client had everything but block 8; now it acks the window.
        let t2 = t1 + Duration::from_millis(11);
        assert_eq!(
            t.on_packet(&ack(8), t2),
            Output::SendWindow { first: 9, count: 4 }
        );
        // The probe's duplicate may draw a second ACK 8: not a loss signal.
        assert_eq!(
            t.on_packet(&ack(8), t2 + Duration::from_micros(100)),
            Output::Wait
        );
    }

    #[test]
    fn ack_drawn_by_our_duplicates_slides_instead_of_resending() {
        let t0 = Instant::now();
        let (mut t, _) = Transfer::new(100 * 100, &agreed(100, 16, false), LIMITS, t0);
        // A real loss signal: resend 5..=20 (5..=16 for the second time).
        assert_eq!(
            t.on_packet(&ack(4), t0),
            Output::SendWindow {
                first: 5,
                count: 16
            }
        );
        // The client had 5..=16 after all and acks 16 on seeing the copy:
        // send only the new blocks that keep 16 in flight.
        let soon = t0 + Duration::from_micros(300);
        assert_eq!(
            t.on_packet(&ack(16), soon),
            Output::SendWindow {
                first: 21,
                count: 12
            }
        );
        assert_eq!(
            t.on_packet(&ack(32), soon),
            Output::SendWindow {
                first: 33,
                count: 16
            }
        );
        assert_eq!(t.retransmits(), 12);
    }

    #[test]
    fn several_lost_at_the_tail_are_resent_after_the_probe() {
        let t0 = Instant::now();
        let (mut t, _) = Transfer::new(100 * 100, &agreed(100, 8, false), LIMITS, t0);
        let t1 = t0 + Duration::from_millis(1);
        assert_eq!(
            t.on_packet(&ack(8), t1),
            Output::SendWindow { first: 9, count: 8 }
        );
        // 14..=16 dropped: nothing happens until the probe resends 16.
        let probe = t.deadline();
        assert_eq!(
            t.on_timeout(probe),
            Output::SendWindow {
                first: 16,
                count: 1
            }
        );
        // The client sees 16 out of order and acks 13: resend at once.
        let soon = probe + Duration::from_micros(100);
        assert_eq!(
            t.on_packet(&ack(13), soon),
            Output::SendWindow {
                first: 14,
                count: 8
            }
        );
    }

    #[test]
    fn lock_step_ignores_duplicate_acks_and_never_probes() {
        let t0 = Instant::now();
        let (mut t, _) = Transfer::new(100 * 100, &agreed(100, 1, false), LIMITS, t0);
        assert_eq!(
            t.on_packet(&ack(1), t0),
            Output::SendWindow { first: 2, count: 1 }
        );
        let later = t0 + Duration::from_millis(100);
        assert_eq!(t.on_packet(&ack(1), later), Output::Wait, "duplicate ACK");
        assert_eq!(t.deadline(), t0 + Duration::from_secs(1));
        assert_eq!(
            t.on_timeout(t.deadline()),
            Output::SendWindow { first: 2, count: 1 }
        );
    }

    #[test]
    fn stale_and_future_acks_are_ignored() {
        let now = Instant::now();
        let (mut t, _) = Transfer::new(100 * 100, &agreed(100, 4, false), LIMITS, now);
        assert_eq!(
            t.on_packet(&ack(4), now),
            Output::SendWindow { first: 5, count: 4 }
        );
        assert_eq!(t.on_packet(&ack(2), now), Output::Wait, "older than acked");
        assert_eq!(t.on_packet(&ack(9), now), Output::Wait, "not sent yet");
        assert_eq!(
            t.on_packet(
                &Packet::Data {
                    block: 5,
                    data: vec![]
                },
                now
            ),
            Output::Wait
        );
        assert_eq!(
            t.on_packet(&ack(8), now),
            Output::SendWindow { first: 9, count: 4 }
        );
    }

    #[test]
    fn timeout_backs_off_then_gives_up() {
        let t0 = Instant::now();
        let (mut t, _) = Transfer::new(100 * 100, &agreed(100, 4, false), LIMITS, t0);
        assert_eq!(
            t.on_timeout(t0 + Duration::from_millis(999)),
            Output::Wait,
            "not yet"
        );
        let mut now = t.deadline();
        let mut gaps = Vec::new();
        for _ in 0..LIMITS.retries {
            assert_eq!(t.on_timeout(now), Output::SendWindow { first: 1, count: 4 });
            gaps.push(t.deadline() - now);
            now = t.deadline();
        }
        assert_eq!(gaps, [2, 4, 4].map(Duration::from_secs));
        assert_eq!(
            t.on_timeout(now),
            Output::Abort(AbortReason::TimedOut { retries: 3 })
        );
        assert_eq!(t.retransmits(), 12);
    }

    #[test]
    fn progress_resets_back_off() {
        let t0 = Instant::now();
        let (mut t, _) = Transfer::new(100 * 100, &agreed(100, 4, false), LIMITS, t0);
        let now = t.deadline();
        t.on_timeout(now);
        assert_eq!(
            t.on_packet(&ack(4), now),
            Output::SendWindow { first: 5, count: 4 }
        );
        assert_eq!(t.deadline() - now, Duration::from_secs(1));
    }

    #[test]
    fn oack_is_retransmitted() {
        let t0 = Instant::now();
        let (mut t, _) = Transfer::new(10, &agreed(512, 1, true), LIMITS, t0);
        assert_eq!(t.on_timeout(t.deadline()), Output::SendOack);
        assert_eq!(
            t.on_packet(&ack(0), t0),
            Output::SendWindow { first: 1, count: 1 }
        );
    }

    #[test]
    fn peer_error_aborts() {
        let now = Instant::now();
        let (mut t, _) = Transfer::new(10, &agreed(512, 1, true), LIMITS, now);
        let err = Packet::Error {
            code: ErrorCode::OptionNegotiation,
            message: "no".into(),
        };
        assert!(matches!(
            t.on_packet(&err, now),
            Output::Abort(AbortReason::PeerError { .. })
        ));
        assert_eq!(t.on_packet(&ack(0), now), Output::Wait);
    }

    #[test]
    fn block_numbers_wrap() {
        let now = Instant::now();
        // 70000 blocks of 8 bytes: wire numbers pass 65535 -> 0.
        let (mut t, _) = Transfer::new(70_000 * 8, &agreed(8, 16, false), LIMITS, now);
        let mut next = 1u64;
        loop {
            let end = (next + 15).min(t.last_block());
            match t.on_packet(&ack(Transfer::wire_block(end)), now) {
                Output::SendWindow { first, .. } => {
                    assert_eq!(first, end + 1);
                    next = first;
                }
                Output::Done => break,
                other => panic!("unexpected {other:?} at block {end}"),
            }
        }
        assert!(next + 15 >= t.last_block());
        assert_eq!(t.retransmits(), 0);
    }
}
