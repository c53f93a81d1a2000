//! PgStore: recovery keys, sealed slots and grants.

use super::{execute, query_opt, PgStore};
use crate::store::recovery::{recovery_record, RECOVERY_COLUMNS};
use crate::store::{now, RecoveryRecord, RecoveryStore, Result};

impl RecoveryStore for PgStore {
    fn put_recovery(&self, id: i64, public_key: &str, slot: Option<(&str, &str)>) -> Result<()> {
        let (repo, sealed) = slot.unzip();
        self.block(async {
            let c = self.conn().await?;
            execute(
                &c,
                "INSERT INTO recovery (appliance_id, public_key, repository, sealed, updated_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (appliance_id) DO UPDATE SET public_key = excluded.public_key,
                   repository = COALESCE(excluded.repository, recovery.repository),
                   sealed = COALESCE(excluded.sealed, recovery.sealed),
                   updated_at = excluded.updated_at",
                &[&id, &public_key, &repo, &sealed, &(now() as i64)],
            )
            .await?;
            Ok(())
        })
    }

    fn recovery(&self, id: i64) -> Result<Option<RecoveryRecord>> {
        self.block(async {
            let c = self.conn().await?;
            let row = query_opt(
                &c,
                &format!("SELECT {RECOVERY_COLUMNS} FROM recovery WHERE appliance_id = $1"),
                &[&id],
            )
            .await?;
            Ok(match row {
                Some(r) => Some(recovery_record!(&r, try_get)),
                None => None,
            })
        })
    }

    fn put_recovery_grant(&self, id: i64, from: i64, repository: &str, sealed: &str) -> Result<()> {
        let t = now() as i64;
        self.block(async {
            let c = self.conn().await?;
            execute(
                &c,
                "INSERT INTO recovery (appliance_id, updated_at, grant_from, grant_repository,
                   grant_sealed, grant_at)
                 VALUES ($1, $2, $3, $4, $5, $2)
                 ON CONFLICT (appliance_id) DO UPDATE SET grant_from = excluded.grant_from,
                   grant_repository = excluded.grant_repository,
                   grant_sealed = excluded.grant_sealed, grant_at = excluded.grant_at",
                &[&id, &t, &from, &repository, &sealed],
            )
            .await?;
            Ok(())
        })
    }
}
