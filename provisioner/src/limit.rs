//! Rate limits: token buckets per key (a MAC, an appliance) and overall,
//! for what an unauthenticated or barely authenticated client can make the
//! server do (mint enrollment tokens, store reports, sign renewals).
//!
//! In memory, per `levee serve` process: a fleet of servers on one
//! database multiplies the overall rates by its size, which is still far
//! from "thousands per second". Written here rather than taken from a
//! crate: the few lines below are the whole need (governor and friends
//! bring clocks, middleware and dependencies that buy nothing here).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Instant;

/// A rate: `burst` at once, then `per_sec` on average.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub burst: f64,
    pub per_sec: f64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: f64,
}

impl Bucket {
    fn full(rate: Rate, at: f64) -> Bucket {
        Bucket {
            tokens: rate.burst,
            at,
        }
    }

    fn refill(&mut self, rate: Rate, at: f64) {
        let dt = (at - self.at).max(0.0);
        self.tokens = (self.tokens + dt * rate.per_sec).min(rate.burst);
        self.at = at;
    }
}

/// Which limit a request hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// This key's own rate.
    Key,
    /// The rate of all keys together.
    Overall,
}

/// Entries kept before full buckets are forgotten.
const PRUNE_AT: usize = 10_000;

/// Token buckets per key and one for all keys.
pub struct Limiter<K> {
    per_key: Rate,
    overall: Rate,
    state: Mutex<(HashMap<K, Bucket>, Option<Bucket>)>,
    epoch: Instant,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    pub fn new(per_key: Rate, overall: Rate) -> Limiter<K> {
        Limiter {
            per_key,
            overall,
            state: Mutex::new((HashMap::new(), None)),
            epoch: Instant::now(),
        }
    }

    /// Takes one from `key`'s bucket and the overall one, now.
    pub fn check(&self, key: &K) -> Result<(), Limited> {
        self.check_at(key, self.epoch.elapsed().as_secs_f64())
    }

    /// [`Limiter::check`] at `at` seconds (tests drive the clock). Nothing
    /// is taken from either bucket unless both have one.
    pub fn check_at(&self, key: &K, at: f64) -> Result<(), Limited> {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (keys, overall) = &mut *guard;
        if keys.len() >= PRUNE_AT {
            let rate = self.per_key;
            keys.retain(|_, b| {
                b.refill(rate, at);
                b.tokens < rate.burst
            });
        }
        let k = keys
            .entry(key.clone())
            .or_insert_with(|| Bucket::full(self.per_key, at));
        k.refill(self.per_key, at);
        let o = overall.get_or_insert_with(|| Bucket::full(self.overall, at));
        o.refill(self.overall, at);
        if k.tokens < 1.0 {
            return Err(Limited::Key);
        }
        if o.tokens < 1.0 {
            return Err(Limited::Overall);
        }
        k.tokens -= 1.0;
        o.tokens -= 1.0;
        Ok(())
    }
}

/// The server's limits, shared by its listeners.
pub struct Limits {
    /// Enrollment tokens minted (boot scripts over HTTP and TFTP), per MAC.
    pub tokens: Limiter<levee_pxe::boot::MacAddr>,
    /// Pre-enrollment status reports, per MAC.
    pub reports: Limiter<levee_pxe::boot::MacAddr>,
    /// Certificate renewals, per appliance.
    pub renewals: Limiter<i64>,
}

impl Default for Limits {
    /// A machine boots a few times a minute at most; a report comes every
    /// few seconds from stage 1 or a pending agent; an appliance renews
    /// once in sixty days. Overall rates leave room for a few hundred
    /// machines booting at once.
    fn default() -> Limits {
        Limits {
            tokens: Limiter::new(
                Rate {
                    burst: 10.0,
                    per_sec: 1.0 / 20.0,
                },
                Rate {
                    burst: 300.0,
                    per_sec: 20.0,
                },
            ),
            reports: Limiter::new(
                Rate {
                    burst: 20.0,
                    per_sec: 1.0,
                },
                Rate {
                    burst: 500.0,
                    per_sec: 100.0,
                },
            ),
            renewals: Limiter::new(
                Rate {
                    burst: 3.0,
                    per_sec: 1.0 / 3600.0,
                },
                Rate {
                    burst: 100.0,
                    per_sec: 10.0,
                },
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter() -> Limiter<u32> {
        Limiter::new(
            Rate {
                burst: 2.0,
                per_sec: 1.0,
            },
            Rate {
                burst: 3.0,
                per_sec: 1.0,
            },
        )
    }

    #[test]
    fn a_key_gets_its_burst_then_its_rate() {
        let l = limiter();
        assert_eq!(l.check_at(&1, 0.0), Ok(()));
        assert_eq!(l.check_at(&1, 0.0), Ok(()));
        assert_eq!(l.check_at(&1, 0.0), Err(Limited::Key));
        assert_eq!(l.check_at(&1, 1.0), Ok(()), "one more a second later");
    }

    #[test]
    fn all_keys_share_the_overall_rate() {
        let l = limiter();
        assert_eq!(l.check_at(&1, 0.0), Ok(()));
        assert_eq!(l.check_at(&2, 0.0), Ok(()));
        assert_eq!(l.check_at(&3, 0.0), Ok(()));
        assert_eq!(l.check_at(&4, 0.0), Err(Limited::Overall));
        // A key refused overall lost nothing of its own.
        assert_eq!(l.check_at(&4, 1.0), Ok(()));
        assert_eq!(l.check_at(&4, 1.0), Err(Limited::Overall));
    }
}
