//! Panel sessions: random tokens in a `Secure`, `HttpOnly`,
//! `SameSite=Strict` cookie, each with its own CSRF token, kept in the
//! serving process (a restart logs everyone out; logout forgets the
//! session at once, so a copied cookie is dead from then on).
//!
//! Only the token's sha256 is kept, so a memory dump of the map does not
//! hand out live cookies.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// The session cookie's name.
pub const COOKIE: &str = "levee_session";
/// A session unused this long ends.
pub const IDLE: Duration = Duration::from_secs(3600);
/// No session lives longer than this, however busy.
pub const MAX_AGE: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most (oldest dropped first): logins are rate limited,
/// so this is only a bound on memory.
const MAX_SESSIONS: usize = 10_000;

/// One logged-in browser (or script).
#[derive(Debug, Clone)]
pub struct Session {
    pub operator: String,
    /// Sent back in `X-CSRF-Token` on every change.
    pub csrf: String,
    /// The fingerprint of the client certificate it logged in with, if it
    /// did: the session ends once that is no longer the operator's.
    pub cert: Option<String>,
    created: Instant,
    used: Instant,
}

#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<[u8; 32], Session>>,
}

fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

fn key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new session for `operator` (logged in with the client
    /// certificate `cert`, or a password): (cookie token, its CSRF token).
    pub fn create(&self, operator: &str, cert: Option<&str>) -> (String, String) {
        let (token, csrf) = (random_token(), random_token());
        let now = Instant::now();
        let mut map = self.lock();
        map.retain(|_, s| live(s, now));
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map.iter().min_by_key(|(_, s)| s.created).map(|(k, _)| *k) {
                map.remove(&oldest);
            }
        }
        map.insert(
            key(&token),
            Session {
                operator: operator.to_string(),
                csrf: csrf.clone(),
                cert: cert.map(str::to_string),
                created: now,
                used: now,
            },
        );
        (token, csrf)
    }

    /// The live session of `token` (marked used), or `None`.
    pub fn get(&self, token: &str) -> Option<Session> {
        let now = Instant::now();
        let mut map = self.lock();
        let k = key(token);
        match map.get_mut(&k) {
            Some(s) if live(s, now) => {
                s.used = now;
                Some(s.clone())
            }
            Some(_) => {
                map.remove(&k);
                None
            }
            None => None,
        }
    }

    /// Ends a session (logout).
    pub fn remove(&self, token: &str) {
        self.lock().remove(&key(token));
    }

    /// Ends every session of an operator (password changed elsewhere,
    /// operator removed is caught at each request anyway).
    pub fn remove_operator(&self, operator: &str, except: Option<&str>) {
        let keep = except.map(key);
        self.lock()
            .retain(|k, s| s.operator != operator || Some(*k) == keep);
    }
}

fn live(s: &Session, now: Instant) -> bool {
    now.duration_since(s.used) < IDLE && now.duration_since(s.created) < MAX_AGE
}

/// The session token from the request's `Cookie` headers.
pub fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The `Set-Cookie` value that starts a session.
pub fn set_cookie(token: &str) -> String {
    format!(
        "{COOKIE}={token}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
        MAX_AGE.as_secs()
    )
}

/// The `Set-Cookie` value that ends it in the browser.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// Compares secrets without an early exit on the first differing byte.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_live_until_removed() {
        let s = Sessions::default();
        let (token, csrf) = s.create("ann", None);
        let got = s.get(&token).expect("live");
        assert_eq!(
            (got.operator.as_str(), got.csrf.as_str()),
            ("ann", csrf.as_str())
        );
        s.remove(&token);
        assert!(s.get(&token).is_none(), "logout forgets it");
        let (a, _) = s.create("ann", None);
        let (b, _) = s.create("ann", None);
        s.remove_operator("ann", Some(&b));
        assert!(s.get(&a).is_none());
        assert!(s.get(&b).is_some());
    }

    #[test]
    fn the_cookie_is_found_and_shaped() {
        let mut h = HeaderMap::new();
        let t = "ab".repeat(32);
        h.insert("cookie", format!("x=1; {COOKIE}={t}; y=2").parse().unwrap());
        assert_eq!(cookie_token(&h), Some(t.clone()));
        h.insert("cookie", format!("{COOKIE}=../etc").parse().unwrap());
        assert_eq!(cookie_token(&h), None);
        let c = set_cookie(&t);
        for attr in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(c.contains(attr), "{c}");
        }
        assert!(same_secret("a", "a") && !same_secret("a", "b"));
    }
}
