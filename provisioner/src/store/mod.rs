//! Central state: images, boot profiles, customers, appliances (their
//! lifecycle, boot history and reports) and DHCP leases.
//!
//! Everything goes through the [`Store`] trait: [`SqliteStore`] (embedded,
//! the default, `DATA_DIR/levee.sqlite`) and [`PgStore`] (`--database
//! postgres://...`) sit behind the same server and CLI code, each with its
//! own append-only migrations, and one test suite (`suite.rs`) runs against
//! both. The operator CLI opens the same store as `levee serve` and acts on
//! it directly; SQLite uses WAL mode and a busy timeout so both can do so at
//! once, PostgreSQL transactions do the same across machines.
//!
//! Customer configurations are stored with their secrets sealed (see
//! [`crate::secrets`]); the store never sees a secret in clear.

//!
//! The trait is split by domain, one file each: [`ApplianceStore`]
//! (`appliances.rs`, with enrollment and leases), [`CustomerStore`],
//! [`ImageStore`] (with boot profiles) and [`EventStore`]; [`Store`] is all
//! of them together, and each implementation keeps the
//! same split (`sqlite/appliances.rs`, `postgres/appliances.rs`, ...).

mod appliances;
mod customers;
mod events;
mod images;
mod postgres;
mod sqlite;
#[cfg(test)]
mod suite;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::time::{SystemTime, UNIX_EPOCH};

pub(crate) use self::appliances::{
    came_back_detail, check_not_retired, judge_token, plan_replace, reinstall_detail,
    TOKEN_KEEP_SECS,
};
pub use self::appliances::{
    check_approval, no_appliance, Appliance, ApplianceRef, ApplianceState, ApplianceStore,
    Heartbeat, Registration, TokenCheck,
};
pub use self::customers::{no_customer, CustomerRecord, CustomerStore};
pub use self::events::{Event, EventStore};
pub use self::images::{ImageRecord, ImageStore, Profile, Transport};
pub use self::postgres::PgStore;
pub use self::sqlite::SqliteStore;

/// Errors of the store. Messages name the object and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("PostgreSQL error: {0}")]
    Pg(#[from] ::postgres::Error),
    #[error("{what} `{name}` does not exist{hint}")]
    NotFound {
        what: &'static str,
        name: String,
        hint: &'static str,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The operations every store offers: every domain's, on one object that
/// the server and the CLI share.
pub trait Store:
    ApplianceStore + CustomerStore + ImageStore + EventStore + Send + Sync + 'static
{
    /// True when reads are quick in-process work that never waits on
    /// another process (SQLite in WAL mode), so an async handler may run
    /// them on the runtime instead of handing each request to the blocking
    /// pool: that thread switch was a quarter of the mTLS API's CPU.
    fn reads_in_process(&self) -> bool {
        false
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Profile names end up in URLs, file names and logs: keep them tame.
pub fn validate_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "{what} name `{name}` is not allowed: use 1-64 letters, digits, `-`, `_` or `.` (not leading)"
        )))
    }
}
