//! What a webhook receives: a JSON body per alert transition, signed with
//! the webhook's secret (HMAC-SHA256 over the exact body bytes, hex, in
//! `X-Levee-Signature: sha256=<hex>`), and when a failed delivery is tried
//! again. A receiver checks the signature before trusting anything in the
//! body, and may use `delivery` to drop a repeat (a delivery whose answer
//! was lost is sent again).

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

use crate::store::{Alert, Delivery};

pub const SIGNATURE_HEADER: &str = "X-Levee-Signature";
pub const EVENT_HEADER: &str = "X-Levee-Event";
pub const DELIVERY_HEADER: &str = "X-Levee-Delivery";

/// Longest wait between two tries of one delivery.
pub const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// A delivery still failing after this long is given up (and logged).
pub const GIVE_UP_SECS: u64 = 3 * 86_400;

/// The JSON a webhook receives.
#[derive(Debug, Serialize)]
pub struct Body<'a> {
    /// Unique per delivery; the same on every retry of it.
    pub delivery: i64,
    /// `opened` or `resolved`.
    pub event: &'a str,
    pub alert: &'a Alert,
    /// When this attempt was sent, Unix seconds.
    pub sent_at: u64,
}

pub fn body(d: &Delivery, sent_at: u64) -> Vec<u8> {
    serde_json::to_vec(&Body {
        delivery: d.id,
        event: &d.event,
        alert: &d.alert,
        sent_at,
    })
    .unwrap_or_default()
}

fn mac(secret: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length.
    Hmac::<Sha256>::new_from_slice(secret).unwrap_or_else(|_| unreachable!())
}

/// `sha256=<hex>` of `body` under `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut m = mac(secret);
    m.update(body);
    format!("sha256={}", hex::encode(m.finalize().into_bytes()))
}

/// Whether `header` is the signature of `body` under `secret` (compared in
/// constant time).
pub fn verify(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(sig) = header
        .strip_prefix("sha256=")
        .and_then(|h| hex::decode(h).ok())
    else {
        return false;
    };
    let mut m = mac(secret);
    m.update(body);
    m.verify_slice(&sig).is_ok()
}

/// Wait before try `attempts + 1`: `base`, doubling, at most
/// [`MAX_BACKOFF`].
pub fn backoff(attempts: u32, base: Duration) -> Duration {
    base.saturating_mul(1u32 << attempts.min(20))
        .min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_tampering_fails() {
        let s = sign(b"k", b"{\"a\":1}");
        assert!(verify(b"k", b"{\"a\":1}", &s));
        assert!(!verify(b"k", b"{\"a\":2}", &s));
        assert!(!verify(b"k", b"{\"a\":1}", "sha256=00"));
        assert!(!verify(b"k", b"{\"a\":1}", &s.replace("sha256=", "md5=")));
        // RFC 4231 test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn backoff_doubles_up_to_a_cap() {
        let b = Duration::from_secs(5);
        assert_eq!(backoff(0, b), b);
        assert_eq!(backoff(3, b), Duration::from_secs(40));
        assert_eq!(backoff(30, b), MAX_BACKOFF);
    }
}
