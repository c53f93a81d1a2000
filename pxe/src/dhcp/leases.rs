//! The address pool of `full` mode: which MAC holds which address until
//! when, and the [`LeaseStore`] that keeps committed leases across restarts.
//!
//! Pure bookkeeping: time comes in as a parameter (`now` in Unix seconds) so
//! tests can move the clock, and nothing here touches a socket.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Mutex;

use crate::boot::MacAddr;

/// Boxed error from a [`LeaseStore`] (the provisioner's database).
pub type StoreError = Box<dyn std::error::Error + Send + Sync>;

/// One address handed to one machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    pub expires_unix: u64,
}

/// Where committed leases live between restarts. The provisioner implements
/// it from its database; [`MemoryLeases`] serves tests.
///
/// `save` is an upsert keyed by MAC: a MAC holds at most one lease. A
/// released lease is saved with an expiry in the past rather than deleted, so
/// the machine gets the same address next time if it is still free.
pub trait LeaseStore: Send + Sync + 'static {
    fn load(&self) -> Result<Vec<Lease>, StoreError>;
    fn save(&self, lease: &Lease) -> Result<(), StoreError>;
}

/// A [`LeaseStore`] in memory, for tests (share it through an `Arc` to
/// simulate a restart).
#[derive(Debug, Default)]
pub struct MemoryLeases {
    leases: Mutex<BTreeMap<MacAddr, Lease>>,
}

impl MemoryLeases {
    pub fn new() -> Self {
        Self::default()
    }

    /// The saved leases, ordered by MAC.
    pub fn snapshot(&self) -> Vec<Lease> {
        match self.leases.lock() {
            Ok(map) => map.values().cloned().collect(),
            Err(poisoned) => poisoned.into_inner().values().cloned().collect(),
        }
    }
}

impl LeaseStore for MemoryLeases {
    fn load(&self) -> Result<Vec<Lease>, StoreError> {
        Ok(self.snapshot())
    }

    fn save(&self, lease: &Lease) -> Result<(), StoreError> {
        let mut map = self.leases.lock().map_err(|_| "lease map poisoned")?;
        map.insert(lease.mac, lease.clone());
        Ok(())
    }
}

/// How long an offered (not yet requested) address stays reserved for the
/// client it was offered to.
pub const OFFER_HOLD_SECS: u64 = 60;

/// How long an address a client declined (RFC 2131 DHCPDECLINE: someone else
/// uses it) is kept out of the pool.
pub const DECLINE_HOLD_SECS: u64 = 600;

/// Why no address could be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("address range {first}-{last} is exhausted")]
    Exhausted { first: Ipv4Addr, last: Ipv4Addr },
}

/// The lease pool of one range.
#[derive(Debug)]
pub struct LeasePool {
    first: u32,
    last: u32,
    /// Never handed out: our own address.
    reserved: Option<Ipv4Addr>,
    by_mac: HashMap<MacAddr, Lease>,
    by_ip: HashMap<Ipv4Addr, MacAddr>,
    declined: HashMap<Ipv4Addr, u64>,
}

impl LeasePool {
    /// An empty pool for `first..=last` that never hands out `reserved`.
    pub fn new(first: Ipv4Addr, last: Ipv4Addr, reserved: Option<Ipv4Addr>) -> Self {
        let (a, b) = (u32::from(first), u32::from(last));
        LeasePool {
            first: a.min(b),
            last: a.max(b),
            reserved,
            by_mac: HashMap::new(),
            by_ip: HashMap::new(),
            declined: HashMap::new(),
        }
    }

    /// Adds leases loaded from a store. Leases outside the range (the range
    /// was changed) are dropped; when two MACs claim one address the later
    /// expiry wins.
    pub fn restore(&mut self, leases: impl IntoIterator<Item = Lease>) -> usize {
        let mut restored = 0;
        for lease in leases {
            if !self.in_range(lease.ip) || Some(lease.ip) == self.reserved {
                continue;
            }
            if let Some(holder) = self.by_ip.get(&lease.ip).copied() {
                let keep_old = self
                    .by_mac
                    .get(&holder)
                    .is_some_and(|old| old.expires_unix >= lease.expires_unix);
                if keep_old {
                    continue;
                }
                self.by_mac.remove(&holder);
            }
            self.insert(lease);
            restored += 1;
        }
        restored
    }

    pub fn in_range(&self, ip: Ipv4Addr) -> bool {
        let n = u32::from(ip);
        n >= self.first && n <= self.last
    }

    pub fn range(&self) -> (Ipv4Addr, Ipv4Addr) {
        (Ipv4Addr::from(self.first), Ipv4Addr::from(self.last))
    }

    /// The lease `mac` holds (active or expired).
    pub fn lease_of(&self, mac: MacAddr) -> Option<&Lease> {
        self.by_mac.get(&mac)
    }

    /// Whether `mac` holds `ip` and the lease is still running.
    pub fn holds(&self, mac: MacAddr, ip: Ipv4Addr, now: u64) -> bool {
        self.by_mac
            .get(&mac)
            .is_some_and(|l| l.ip == ip && l.expires_unix > now)
    }

    /// Whether `mac` may take `ip` now: in range, not ours, not declined, and
    /// not held by another machine's running lease.
    pub fn available_to(&self, mac: MacAddr, ip: Ipv4Addr, now: u64) -> bool {
        if !self.in_range(ip) || Some(ip) == self.reserved {
            return false;
        }
        if self.declined.get(&ip).is_some_and(|until| *until > now) {
            return false;
        }
        match self.by_ip.get(&ip) {
            None => true,
            Some(holder) if *holder == mac => true,
            Some(holder) => self
                .by_mac
                .get(holder)
                .is_none_or(|l| l.expires_unix <= now),
        }
    }

    /// Picks the address to offer `mac`: its own lease (even an expired one)
    /// if still free, else the address it asked for, else a never-used
    /// address, else the one that expired longest ago.
    pub fn choose(
        &self,
        mac: MacAddr,
        requested: Option<Ipv4Addr>,
        now: u64,
    ) -> Result<Ipv4Addr, PoolError> {
        if let Some(lease) = self.by_mac.get(&mac) {
            if self.available_to(mac, lease.ip, now) {
                return Ok(lease.ip);
            }
        }
        if let Some(ip) = requested {
            if self.available_to(mac, ip, now) {
                return Ok(ip);
            }
        }
        let mut oldest: Option<(u64, Ipv4Addr)> = None;
        for n in self.first..=self.last {
            let ip = Ipv4Addr::from(n);
            if !self.available_to(mac, ip, now) {
                continue;
            }
            match self.by_ip.get(&ip).and_then(|m| self.by_mac.get(m)) {
                None => return Ok(ip),
                Some(lease) => {
                    if oldest.is_none_or(|(t, _)| lease.expires_unix < t) {
                        oldest = Some((lease.expires_unix, ip));
                    }
                }
            }
        }
        oldest.map(|(_, ip)| ip).ok_or(PoolError::Exhausted {
            first: Ipv4Addr::from(self.first),
            last: Ipv4Addr::from(self.last),
        })
    }

    /// Records that `mac` holds `ip` until `expires_unix`, replacing its
    /// previous lease and evicting the expired lease of another machine on
    /// that address. Returns the lease, for the caller to persist.
    pub fn assign(&mut self, mac: MacAddr, ip: Ipv4Addr, expires_unix: u64) -> Lease {
        if let Some(old) = self.by_mac.remove(&mac) {
            self.by_ip.remove(&old.ip);
        }
        if let Some(prev) = self.by_ip.remove(&ip) {
            self.by_mac.remove(&prev);
        }
        let lease = Lease {
            mac,
            ip,
            expires_unix,
        };
        self.insert(lease.clone());
        lease
    }

    /// Ends `mac`'s lease now, keeping the association so it gets the same
    /// address back later. Returns the lease to persist, if it held one.
    pub fn release(&mut self, mac: MacAddr, ip: Ipv4Addr, now: u64) -> Option<Lease> {
        let lease = self.by_mac.get_mut(&mac)?;
        if lease.ip != ip {
            return None;
        }
        lease.expires_unix = lease.expires_unix.min(now);
        Some(lease.clone())
    }

    /// Takes `ip` out of the pool for a while because `mac` found it in use.
    pub fn decline(&mut self, mac: MacAddr, ip: Ipv4Addr, now: u64) -> Option<Lease> {
        if !self.in_range(ip) {
            return None;
        }
        self.declined
            .insert(ip, now.saturating_add(DECLINE_HOLD_SECS));
        let released = self.release(mac, ip, now);
        if released.is_some() {
            // Forget the association so the client is offered another address.
            self.by_mac.remove(&mac);
            self.by_ip.remove(&ip);
        }
        released
    }

    fn insert(&mut self, lease: Lease) {
        self.by_ip.insert(lease.ip, lease.mac);
        self.by_mac.insert(lease.mac, lease);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u8) -> MacAddr {
        MacAddr([0x52, 0x54, 0, 0, 0, n])
    }

    fn ip(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 99, 0, n)
    }

    #[test]
    fn same_mac_gets_same_address_and_others_differ() {
        let mut pool = LeasePool::new(ip(100), ip(102), Some(ip(1)));
        let a = pool.choose(mac(1), None, 0).unwrap();
        pool.assign(mac(1), a, 100);
        assert_eq!(pool.choose(mac(1), None, 10).unwrap(), a);
        let b = pool.choose(mac(2), None, 10).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn exhaustion_then_reuse_of_expired() {
        let mut pool = LeasePool::new(ip(100), ip(101), None);
        pool.assign(mac(1), ip(100), 100);
        pool.assign(mac(2), ip(101), 200);
        assert!(matches!(
            pool.choose(mac(3), None, 50),
            Err(PoolError::Exhausted { .. })
        ));
        // After the first lease expires, its address is reused.
        assert_eq!(pool.choose(mac(3), None, 150).unwrap(), ip(100));
    }

    #[test]
    fn reserved_and_declined_addresses_are_skipped() {
        let mut pool = LeasePool::new(ip(1), ip(3), Some(ip(1)));
        assert_eq!(pool.choose(mac(1), None, 0).unwrap(), ip(2));
        pool.assign(mac(1), ip(2), 100);
        pool.decline(mac(1), ip(2), 10);
        assert_eq!(pool.choose(mac(1), None, 20).unwrap(), ip(3));
        assert!(!pool.available_to(mac(2), ip(2), 20));
        assert!(pool.available_to(mac(2), ip(2), 10 + DECLINE_HOLD_SECS + 1));
    }

    #[test]
    fn restore_drops_out_of_range_and_keeps_the_newer_claim() {
        let mut pool = LeasePool::new(ip(100), ip(110), None);
        let n = pool.restore([
            Lease {
                mac: mac(1),
                ip: ip(100),
                expires_unix: 50,
            },
            Lease {
                mac: mac(2),
                ip: ip(100),
                expires_unix: 80,
            },
            Lease {
                mac: mac(3),
                ip: ip(5),
                expires_unix: 80,
            },
        ]);
        assert_eq!(n, 2);
        assert!(pool.holds(mac(2), ip(100), 60));
        assert!(pool.lease_of(mac(1)).is_none());
        assert!(pool.lease_of(mac(3)).is_none());
    }

    #[test]
    fn release_keeps_the_association() {
        let mut pool = LeasePool::new(ip(100), ip(110), None);
        pool.assign(mac(1), ip(105), 1000);
        let released = pool.release(mac(1), ip(105), 10).unwrap();
        assert_eq!(released.expires_unix, 10);
        assert!(!pool.holds(mac(1), ip(105), 20));
        assert_eq!(pool.choose(mac(1), None, 20).unwrap(), ip(105));
        assert!(pool.release(mac(1), ip(106), 20).is_none());
    }
}
