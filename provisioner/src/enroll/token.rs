//! One-time enrollment tokens: minted when a boot script is rendered, bound
//! to that MAC, short-lived, used once. Only their sha256 is stored, so a
//! copy of the database does not hold usable tokens.

use levee_pxe::boot::MacAddr;
use sha2::{Digest, Sha256};

use crate::store::{Store, StoreError, TokenCheck};

/// How long a token is valid: enough for a slow TCG boot to reach the
/// agent, short enough that a sniffed token is worth little.
pub const TOKEN_TTL_SECS: u64 = 15 * 60;

/// sha256 of a token, lowercase hex: the form the store keeps.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Mints and stores a token for `mac`, valid from `now`; returns it in clear
/// (for the boot script only: it is never logged).
pub fn mint(store: &dyn Store, mac: MacAddr, now: u64) -> Result<String, StoreError> {
    let bytes: [u8; 32] = rand::random();
    let token = hex::encode(bytes);
    store.put_token(&token_hash(&token), mac, now + TOKEN_TTL_SECS)?;
    Ok(token)
}

/// Checks a presented token for `mac` and consumes it if valid.
pub fn redeem(
    store: &dyn Store,
    token: &str,
    mac: MacAddr,
    now: u64,
) -> Result<TokenCheck, StoreError> {
    store.take_token(&token_hash(token), mac, now)
}
