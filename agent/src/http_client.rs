//! The agent's one way to build an HTTP client and one retry policy, so
//! every request the appliance makes (reports, enrollment, mTLS calls,
//! install downloads, the update channel) behaves the same.
//!
//! The appliance talks to its own Levee server only, on the site's LAN or
//! through the address ops configured: never through a proxy that an
//! environment variable happens to name (`no_proxy`).

use std::time::Duration;

/// Sent with every request, so the server's log tells agents apart.
pub const USER_AGENT: &str = concat!("levee-agent/", env!("CARGO_PKG_VERSION"));

/// Waits between attempts to reach the server: a network boot's agent
/// runs while systemd-networkd takes the interface over from stage 1 (the
/// link is reset and the address acquired again, ~1-3 s under TCG), so a
/// request sent then fails without the server being at fault. 19 s in all.
pub const RETRY_DELAYS: [Duration; 5] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(3),
    Duration::from_secs(5),
    Duration::from_secs(8),
];

/// A blocking client builder with the agent's defaults; `timeout` bounds a
/// whole request (connecting is bounded by the smaller of it and 30 s).
pub fn blocking(timeout: Duration) -> reqwest::blocking::ClientBuilder {
    reqwest::blocking::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(30)))
        // Closed before the server's idle timeout (30 s by default), so a
        // request never goes out on a connection the server is closing.
        .pool_idle_timeout(Duration::from_secs(20))
        .no_proxy()
        .user_agent(USER_AGENT)
}

/// The async form, for the update channel's TUF transport.
pub fn asynchronous() -> reqwest::ClientBuilder {
    reqwest::Client::builder().no_proxy().user_agent(USER_AGENT)
}

/// Runs `attempt` until it succeeds, fails for good (`transient` false), or
/// the `delays` run out. Returns the last error and the number of attempts.
pub fn retrying<T, E>(
    delays: &[Duration],
    mut attempt: impl FnMut() -> Result<T, E>,
    transient: impl Fn(&E) -> bool,
) -> Result<T, (E, usize)> {
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt() {
            Ok(v) => return Ok(v),
            Err(e) => match delays.get(tries - 1) {
                Some(delay) if transient(&e) => std::thread::sleep(*delay),
                _ => return Err((e, tries)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_transient_errors_only_as_often_as_there_are_delays() {
        let delays = [Duration::ZERO; 3];
        let mut calls = 0;
        let r: Result<(), _> = retrying(
            &delays,
            || {
                calls += 1;
                Err("down")
            },
            |_| true,
        );
        assert_eq!(r, Err(("down", 4)));
        assert_eq!(calls, 4);

        let mut calls = 0;
        let r: Result<(), _> = retrying(
            &delays,
            || {
                calls += 1;
                Err("refused")
            },
            |_| false,
        );
        assert_eq!(r, Err(("refused", 1)));

        let mut calls = 0;
        let r = retrying(
            &delays,
            || {
                calls += 1;
                if calls < 3 {
                    Err("down")
                } else {
                    Ok(calls)
                }
            },
            |_| true,
        );
        assert_eq!(r, Ok(3));
    }
}
