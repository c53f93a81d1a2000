//! What the appliances publish for disaster recovery (issue 14;
//! `levee_proto::recovery_api`): each one's X25519 public key and its
//! repository's recovery slot sealed to the customer's paper key, and the
//! grants ops makes for a replacement (the old repository's secret sealed
//! again to the replacement's key). The server opens none of them.

use serde::Serialize;

use super::Result;

/// One appliance's recovery row.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RecoveryRecord {
    /// Its own public key, `x25519:<hex>`.
    pub public_key: Option<String>,
    /// Its repository id and the recovery slot's sealed secret.
    pub repository: Option<String>,
    pub sealed: Option<String>,
    pub updated_at: u64,
    /// A grant for it: the repository of appliance `grant_from`, sealed
    /// to `public_key` as it was when ops made it.
    pub grant: Option<StoredGrant>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredGrant {
    pub from: i64,
    pub repository: String,
    pub sealed: String,
    pub at: u64,
}

/// The columns [`recovery_record!`] reads, in order.
pub(crate) const RECOVERY_COLUMNS: &str =
    "public_key, repository, sealed, updated_at, grant_from, grant_repository, grant_sealed, grant_at";

/// Decodes one row of [`RECOVERY_COLUMNS`] the same way for both stores
/// (`$get`: `get` for rusqlite, `try_get` for tokio-postgres).
macro_rules! recovery_record {
    ($r:expr, $get:ident) => {{
        let r = $r;
        let from: Option<i64> = r.$get(4)?;
        let repo: Option<String> = r.$get(5)?;
        let sealed: Option<String> = r.$get(6)?;
        let at: Option<i64> = r.$get(7)?;
        $crate::store::RecoveryRecord {
            public_key: r.$get(0)?,
            repository: r.$get(1)?,
            sealed: r.$get(2)?,
            updated_at: r.$get::<_, i64>(3)?.max(0) as u64,
            grant: match (from, repo, sealed) {
                (Some(from), Some(repository), Some(sealed)) => Some($crate::store::StoredGrant {
                    from,
                    repository,
                    sealed,
                    at: at.unwrap_or(0).max(0) as u64,
                }),
                _ => None,
            },
        }
    }};
}
pub(crate) use recovery_record;

/// The recovery rows, one per appliance.
pub trait RecoveryStore {
    /// Records what appliance `id` published: its key always, its
    /// repository's sealed slot when given (else the stored one stays).
    fn put_recovery(&self, id: i64, public_key: &str, slot: Option<(&str, &str)>) -> Result<()>;
    /// Appliance `id`'s row, if it ever published one.
    fn recovery(&self, id: i64) -> Result<Option<RecoveryRecord>>;
    /// Stores a grant for appliance `id` (replacing an earlier one).
    fn put_recovery_grant(&self, id: i64, from: i64, repository: &str, sealed: &str) -> Result<()>;
}
