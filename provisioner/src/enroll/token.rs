//! One-time enrollment tokens: minted when a boot script is rendered, bound
//! to that MAC (and to the address the server leased it, when it did),
//! short-lived, used once, one live token per MAC. Only their sha256 is
//! stored, so a copy of the database does not hold usable tokens.
//!
//! A token is minted only for a machine that may enroll: registered and
//! without a live certificate, one whose re-enrollment ops armed, or an
//! unknown machine when the server takes pending enrollments. What a token
//! on a flat LAN proves (little) is in docs/SECURITY.md.

use std::net::IpAddr;

use levee_pxe::boot::MacAddr;
use sha2::{Digest, Sha256};

use crate::limit::{Limited, Limits};
use crate::store::{Store, StoreError, TokenCheck};

/// How long a token is valid: enough for a slow TCG boot to reach the
/// agent, short enough that a sniffed token is worth little.
pub const TOKEN_TTL_SECS: u64 = 15 * 60;

/// sha256 of a token, lowercase hex: the form the store keeps.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// What a boot script gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mint {
    /// A fresh token (in clear, for the script only: never logged).
    Token(String),
    /// The machine may not enroll; it still boots, without a token.
    NoToken(String),
    /// Refused outright (rate limit, another address than its lease): the
    /// script says why and nothing is minted, so the machine's own live
    /// token is not invalidated.
    Refused(String),
}

/// Decides and, if allowed, mints and stores a token for `mac`, asked from
/// `peer`, at `now`.
pub fn mint_for(
    store: &dyn Store,
    limits: &Limits,
    mac: MacAddr,
    peer: Option<IpAddr>,
    allow_pending: bool,
    now: u64,
) -> Result<Mint, StoreError> {
    match store.appliance(mac)? {
        Some(a) => {
            if let Err(why) = a.may_enroll(allow_pending, now) {
                return Ok(Mint::NoToken(why));
            }
        }
        None if !allow_pending => {
            return Ok(Mint::NoToken(format!(
                "{mac} is not registered and this server does not take pending enrollments"
            )))
        }
        None => {}
    }
    // Where the server leased the machine its address, only that address
    // gets (and may later redeem) its token.
    let bound = match store.lease(mac)? {
        Some(l) if l.expires_unix > now => {
            let ip = IpAddr::V4(l.ip);
            if let Some(p) = peer.filter(|p| !same_ip(*p, ip)) {
                return Ok(Mint::Refused(format!(
                    "the boot script of {mac} was asked from {p}, but this server leased {ip} to {mac}: no token"
                )));
            }
            Some(ip)
        }
        _ => None,
    };
    match limits.tokens.check(&mac) {
        Ok(()) => {}
        Err(Limited::Key) => {
            return Ok(Mint::Refused(format!(
                "too many boot scripts for {mac} lately: wait a minute and boot it again"
            )))
        }
        Err(Limited::Overall) => {
            return Ok(Mint::Refused(
                "too many boot scripts lately: wait a minute and boot again".into(),
            ))
        }
    }
    mint(store, mac, now, bound).map(Mint::Token)
}

/// Mints and stores a token for `mac` (bound to `ip` if given), valid from
/// `now`, without asking whether the machine may enroll: [`mint_for`] is
/// the server's way; this is its last step, and what benchmarks use.
pub fn mint(
    store: &dyn Store,
    mac: MacAddr,
    now: u64,
    ip: Option<IpAddr>,
) -> Result<String, StoreError> {
    let bytes: [u8; 32] = rand::random();
    let token = hex::encode(bytes);
    store.put_token(&token_hash(&token), mac, now + TOKEN_TTL_SECS, ip)?;
    Ok(token)
}

/// Equal addresses, an IPv4-mapped IPv6 peer included (a dual-stack
/// listener reports IPv4 clients that way).
fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    canonical(a) == canonical(b)
}

pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Checks a presented token for `mac` from `peer` and consumes it if valid.
pub fn redeem(
    store: &dyn Store,
    token: &str,
    mac: MacAddr,
    now: u64,
    peer: Option<IpAddr>,
) -> Result<TokenCheck, StoreError> {
    store.take_token(&token_hash(token), mac, now, peer.map(canonical))
}
