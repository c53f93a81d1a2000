//! Connection caps: at most `max_conns` connections per listener and
//! `max_conns_per_ip` per client. A permit is held for the connection's
//! whole life (TLS handshake included) and released when it is dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Whom a per-client cap counts: an IPv4 address, or an IPv6 /64 (one
/// host on a LAN picks any address of its /64 at will, so counting single
/// IPv6 addresses would cap nothing). IPv4-mapped IPv6 counts as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    pub fn of(ip: IpAddr) -> ClientKey {
        match ip {
            IpAddr::V4(v4) => ClientKey(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey(IpAddr::V4(v4)),
                None => {
                    let s = v6.segments();
                    ClientKey(IpAddr::V6(std::net::Ipv6Addr::new(
                        s[0], s[1], s[2], s[3], 0, 0, 0, 0,
                    )))
                }
            },
        }
    }
}

impl std::fmt::Display for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// Why a connection was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The listener holds `max_conns` connections.
    Listener,
    /// This client holds `max_conns_per_ip` connections.
    Client,
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_client: HashMap<ClientKey, usize>,
}

/// The open connections of one listener.
#[derive(Clone)]
pub struct Caps {
    max: usize,
    per_client: usize,
    counts: Arc<Mutex<Counts>>,
}

impl Caps {
    pub fn new(max: usize, per_client: usize) -> Caps {
        Caps {
            max,
            per_client,
            counts: Arc::default(),
        }
    }

    /// A permit for one more connection from `ip`, if both caps allow it.
    pub fn acquire(&self, ip: IpAddr) -> Result<Permit, Refused> {
        let key = ClientKey::of(ip);
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if c.total >= self.max {
            return Err(Refused::Listener);
        }
        let mine = c.by_client.entry(key).or_insert(0);
        if *mine >= self.per_client {
            return Err(Refused::Client);
        }
        *mine += 1;
        c.total += 1;
        Ok(Permit {
            key,
            counts: self.counts.clone(),
        })
    }

    /// Open connections: on the listener, and of `ip`'s client.
    pub fn open(&self, ip: IpAddr) -> (usize, usize) {
        let c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let mine = c.by_client.get(&ClientKey::of(ip)).copied().unwrap_or(0);
        (c.total, mine)
    }
}

/// One connection's place under the caps; released on drop.
pub struct Permit {
    key: ClientKey,
    counts: Arc<Mutex<Counts>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_client.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                // No entry per client that ever connected: the map stays as
                // small as the set of clients connected now.
                c.by_client.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_per_client_cap_holds_and_frees_on_drop() {
        let caps = Caps::new(10, 2);
        let a = caps.acquire(ip("10.0.0.1")).unwrap();
        let _b = caps.acquire(ip("10.0.0.1")).unwrap();
        assert_eq!(caps.acquire(ip("10.0.0.1")).err(), Some(Refused::Client));
        // Another client is not affected.
        let _c = caps.acquire(ip("10.0.0.2")).unwrap();
        assert_eq!(caps.open(ip("10.0.0.1")), (3, 2));
        drop(a);
        assert_eq!(caps.open(ip("10.0.0.1")), (2, 1));
        caps.acquire(ip("10.0.0.1")).unwrap();
    }

    #[test]
    fn the_listener_cap_holds_across_clients() {
        let caps = Caps::new(3, 2);
        let held: Vec<_> = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
            .iter()
            .map(|a| caps.acquire(ip(a)).unwrap())
            .collect();
        assert_eq!(caps.acquire(ip("10.0.0.4")).err(), Some(Refused::Listener));
        drop(held);
        assert_eq!(caps.open(ip("10.0.0.4")), (0, 0));
        assert!(caps.counts.lock().unwrap().by_client.is_empty());
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let caps = Caps::new(10, 1);
        let _a = caps.acquire(ip("fd00:1:2:3::1")).unwrap();
        assert_eq!(
            caps.acquire(ip("fd00:1:2:3:ffff::9")).err(),
            Some(Refused::Client)
        );
        caps.acquire(ip("fd00:1:2:4::1")).unwrap();
        let _v4 = caps.acquire(ip("10.0.0.1")).unwrap();
        assert_eq!(
            caps.acquire(ip("::ffff:10.0.0.1")).err(),
            Some(Refused::Client)
        );
        assert_eq!(
            ClientKey::of(ip("fd00:1:2:3::1")).to_string(),
            "fd00:1:2:3::/64"
        );
    }
}
