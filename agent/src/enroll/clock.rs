//! The system clock: a blank box's RTC may be anything, and an isolated LAN
//! has no time server, so the appliance takes its time from the server
//! before any TLS (certificate validity depends on it).

use std::time::{SystemTime, UNIX_EPOCH};

/// How far the clock may be off before it is set.
const TOLERANCE_SECS: i64 = 2;

/// The time to set, if the local clock is off by more than 2 s from the
/// server's.
pub fn clock_correction(local_unix: i64, server_unix: i64) -> Option<i64> {
    (local_unix.abs_diff(server_unix) > TOLERANCE_SECS as u64).then_some(server_unix)
}

/// Seconds since the Unix epoch by the local clock (negative if the RTC is
/// before 1970).
pub fn unix_now() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// Sets CLOCK_REALTIME (needs CAP_SYS_TIME).
pub fn set_system_clock(unix: i64) -> std::io::Result<()> {
    let ts = libc::timespec {
        tv_sec: unix as libc::time_t,
        tv_nsec: 0,
    };
    // SAFETY: clock_settime reads the timespec we pass and nothing else.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_clock_off_by_more_than_two_seconds_is_set() {
        assert_eq!(clock_correction(100, 100), None);
        assert_eq!(clock_correction(100, 102), None);
        assert_eq!(clock_correction(102, 100), None);
        assert_eq!(clock_correction(100, 103), Some(103));
        // A box whose RTC says 1970 (or before).
        assert_eq!(clock_correction(-5, 1_764_000_000), Some(1_764_000_000));
        assert_eq!(
            clock_correction(1_764_000_100, 1_764_000_000),
            Some(1_764_000_000)
        );
    }

    #[test]
    fn now_is_after_2020() {
        assert!(unix_now() > 1_577_836_800);
    }
}
