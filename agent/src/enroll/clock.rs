//! The system clock: a blank box's RTC may be anything, and an isolated LAN
//! has no time server, so the appliance takes its time from its server
//! before relying on any certificate's or TUF metadata's validity. It takes
//! it only from an authenticated answer (the mutual-TLS server's `Date`,
//! see `timesync.rs`), and only when that time lies inside the validity
//! window of the certificate the server proved in the same session: an
//! unauthenticated (plain-HTTP) time never moves the clock, by any amount.

use std::time::{SystemTime, UNIX_EPOCH};

/// How far the clock may be off before it is set.
const TOLERANCE_SECS: i64 = 2;

/// The time to set, if the local clock is off by more than 2 s from the
/// server's.
pub fn clock_correction(local_unix: i64, server_unix: i64) -> Option<i64> {
    (local_unix.abs_diff(server_unix) > TOLERANCE_SECS as u64).then_some(server_unix)
}

/// Why an authenticated server time was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClockError {
    #[error("the server's time {date} lies outside its certificate's validity ({not_before}..{not_after}, Unix seconds): not setting the clock from it")]
    OutsideCertificate {
        date: i64,
        not_before: i64,
        not_after: i64,
    },
}

/// The time to step to from an authenticated server time `date` (the
/// mutual-TLS server's `Date`), given the validity window of the
/// certificate the server proved: `None` if the local clock is within 2 s;
/// an error if `date` lies outside the window (the one relaxation of the
/// certificate check, a local clock that may be anything, must not let a
/// certificate vouch for a time it was never valid at).
pub fn authenticated_step(
    local_unix: i64,
    date: i64,
    not_before: i64,
    not_after: i64,
) -> Result<Option<i64>, ClockError> {
    if date < not_before || date > not_after {
        return Err(ClockError::OutsideCertificate {
            date,
            not_before,
            not_after,
        });
    }
    Ok(clock_correction(local_unix, date))
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
    fn an_authenticated_time_steps_any_distance_inside_the_certificate_window() {
        let (nb, na) = (1_700_000_000, 1_800_000_000);
        // RTC in 1970, or years ahead: stepped to the server's time.
        assert_eq!(
            authenticated_step(0, 1_750_000_000, nb, na),
            Ok(Some(1_750_000_000))
        );
        assert_eq!(
            authenticated_step(4_000_000_000, 1_750_000_000, nb, na),
            Ok(Some(1_750_000_000))
        );
        assert_eq!(
            authenticated_step(1_750_000_001, 1_750_000_000, nb, na),
            Ok(None)
        );
        // The window's edges are inside it.
        assert_eq!(authenticated_step(0, nb, nb, na), Ok(Some(nb)));
        assert_eq!(authenticated_step(0, na, nb, na), Ok(Some(na)));
    }

    #[test]
    fn a_time_outside_the_certificate_window_never_moves_the_clock() {
        let (nb, na) = (1_700_000_000, 1_800_000_000);
        for date in [nb - 1, na + 1, 0, i64::MAX] {
            let err = authenticated_step(1_750_000_000, date, nb, na).unwrap_err();
            assert!(err.to_string().contains("outside its certificate"), "{err}");
        }
    }

    #[test]
    fn now_is_after_2020() {
        assert!(unix_now() > 1_577_836_800);
    }
}
