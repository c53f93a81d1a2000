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
//! [`ImageStore`] (with boot profiles), [`EventStore`], [`FleetStore`]
//! (what the servers of a fleet share), [`RunStore`] (run reports) and
//! [`AlertStore`] (alerts and their webhooks), [`OperatorStore`] (panel
//! operators and the audit log), [`RecoveryStore`] (disaster recovery's
//! keys and grants), [`RestoreStore`] (restores ops asks appliances for);
//! [`Store`] is all
//! of them together, and each implementation keeps the
//! same split (`sqlite/appliances.rs`, `postgres/appliances.rs`, ...).

mod alerts;
mod appliances;
mod customers;
mod enrollment;
mod events;
mod fleet;
mod images;
mod operators;
mod postgres;
mod recovery;
mod restores;
mod rollouts;
mod runs;
mod sqlite;
#[cfg(test)]
mod suite;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::future::Future;
use std::pin::Pin;
use std::time::{SystemTime, UNIX_EPOCH};

pub use self::alerts::{
    Alert, AlertStore, Delivery, NewAlert, Webhook, ALERT_EVENT_STEPS, CHANNEL_CHECK_STEP,
    RESOLVED_KEPT_SECS,
};
pub(crate) use self::appliances::{
    approved_detail, came_back_detail, check_new_enrollment, check_not_retired, check_registration,
    choose_key, conflict_detail, judge_pending_key, judge_report_token, judge_token,
    pending_key_detail, plan_replace, reenroll_detail, reinstall_detail, revoked_detail, TokenRow,
    TOKEN_KEEP_SECS,
};
pub use self::appliances::{
    check_approval, no_appliance, short_key, Appliance, ApplianceRef, ApplianceState,
    ApplianceStore, Heartbeat, PendingKey, Registration, TokenCheck, REPORT_GRACE_SECS,
};
pub use self::customers::{no_customer, CustomerRecord, CustomerStore};
pub use self::enrollment::{Issuable, KnownEnrolled, KnownEnrollment, SignedCert, Signer};
pub use self::events::{Event, EventStore};
pub use self::fleet::{FleetServer, FleetStore, StoredCa};
pub use self::images::{ImageRecord, ImageStore, Profile, Transport};
pub use self::operators::{AuditEntry, ChangeStamp, Operator, OperatorStore, AUDIT_KEPT};
pub use self::postgres::PgStore;
pub use self::recovery::{RecoveryRecord, RecoveryStore, StoredGrant};
pub use self::restores::{NewRestore, RestoreMove, RestoreRecord, RestoreStore, RESTORES_KEPT};
pub use self::rollouts::{Rollout, RolloutStore, UpdateRecord};
pub use self::runs::{BackupFacts, FailStreak, RunRecord, RunStore, RUNS_KEPT};
pub use self::sqlite::SqliteStore;

/// Creates the data directory if needed and makes it 0700: it holds the
/// server key, the CA key and (with SQLite) the database.
pub fn private_dir(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| {
            StoreError::Invalid(format!(
                "cannot create data directory {} (mode 0700): {e}",
                dir.display()
            ))
        })
}

/// Errors of the store. Messages name the object and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("PostgreSQL error: {0}")]
    Pg(tokio_postgres::Error),
    /// The database cannot be reached (down, restarting, refusing, TLS
    /// refused): the request may succeed later; HTTP answers 503.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
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

/// What [`Store::appliance_with_customer_async`] returns.
pub type ApiLookup<'a> =
    Pin<Box<dyn Future<Output = Result<Option<(Appliance, Option<CustomerRecord>)>>> + Send + 'a>>;

/// The operations every store offers: every domain's, on one object that
/// the server and the CLI share.
pub trait Store:
    ApplianceStore
    + CustomerStore
    + ImageStore
    + EventStore
    + FleetStore
    + RunStore
    + RolloutStore
    + AlertStore
    + OperatorStore
    + RecoveryStore
    + RestoreStore
    + Send
    + Sync
    + 'static
{
    /// The appliance and its customer for the mTLS API's every request,
    /// as a future the request's task awaits: the one store call made on
    /// the async workers. The default answers at once from
    /// [`ApplianceStore::appliance_with_customer`], right for SQLite (in
    /// process, microseconds: a hop to the blocking pool cost a quarter of
    /// the API's CPU); PostgreSQL awaits its pool instead of blocking.
    ///
    /// Why the rest of the trait stays synchronous: its callers are (the
    /// CLI, enrollment, the DHCP policy inside pxe's pure packet handler),
    /// SQLite is, and the server calls it from `spawn_blocking`; only this
    /// lookup runs at the rate of the API (tens of thousands a second), where
    /// a thread hop per request shows.
    ///
    /// `cert` is the sha256 (hex) of the certificate the request came
    /// with: PostgreSQL answers from its cache only when the cached row
    /// would accept it (see `postgres/api_cache.rs`).
    fn appliance_with_customer_async<'a>(&'a self, id: i64, cert: &'a str) -> ApiLookup<'a> {
        let _ = cert;
        Box::pin(std::future::ready(self.appliance_with_customer(id)))
    }

    /// An enrollment with a token of the machine with `e.mac`, if the
    /// store knows it and its row allows a certificate now (`issuable`,
    /// and what [`ApplianceStore::record_certificate`] checks): redeems
    /// the token, signs the certificate (`sign`, given the appliance's
    /// id), records it with the sighting and the history, durably, as one
    /// unit where the store can (see `enrollment.rs`). Otherwise writes
    /// nothing and says why (but for [`KnownEnrolled::Seen`]: the row
    /// changed after the token was redeemed, on a store that cannot lock
    /// it first).
    fn enroll_known(
        &self,
        e: &KnownEnrollment,
        issuable: Issuable,
        sign: Signer,
    ) -> Result<KnownEnrolled> {
        enrollment::in_steps(self, e, &issuable, sign)
    }

    /// Whether several servers may share this store (PostgreSQL): then the
    /// enrollment CA lives in it too (see [`crate::fleet`]).
    fn shared(&self) -> bool {
        false
    }

    /// Closes the store's connections (at the end of `levee serve`).
    fn close(&self) {}

    /// The database's size in bytes (the `levee_store_bytes` metric).
    fn database_bytes(&self) -> Result<u64>;
}

impl StoreError {
    /// Whether the failure is the database being out of reach (answer 503
    /// and let the client retry) rather than a problem with the request.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }

    /// The HTTP status for a store failure in a handler.
    pub fn http_status(&self) -> axum::http::StatusCode {
        if self.is_unavailable() {
            axum::http::StatusCode::SERVICE_UNAVAILABLE
        } else {
            axum::http::StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

impl From<tokio_postgres::Error> for StoreError {
    /// Connection trouble (closed, refused, reset, the server shutting
    /// down or starting up, TLS refused) is `Unavailable`; the rest is an
    /// error of the statement.
    fn from(e: tokio_postgres::Error) -> StoreError {
        use tokio_postgres::error::SqlState;
        let unavailable = match e.code() {
            Some(code) => {
                code.code().starts_with("08")
                    || [
                        SqlState::ADMIN_SHUTDOWN,
                        SqlState::CRASH_SHUTDOWN,
                        SqlState::CANNOT_CONNECT_NOW,
                        SqlState::TOO_MANY_CONNECTIONS,
                    ]
                    .contains(code)
            }
            // No SQLSTATE: closed, or an I/O, TLS or timeout failure
            // (those carry an io::Error); not a conversion or row count.
            None => {
                e.is_closed()
                    || std::error::Error::source(&e)
                        .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some())
                    || {
                        // Failing to connect at all, TLS included.
                        let m = e.to_string();
                        m.starts_with("timeout")
                            || m.starts_with("error connecting")
                            || m.starts_with("error performing TLS")
                    }
            }
        };
        if unavailable {
            StoreError::Unavailable(postgres::describe_error(&e))
        } else {
            StoreError::Pg(e)
        }
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
