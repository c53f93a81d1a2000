//! PgStore: operators and the audit log (as in the SQLite store).

use tokio_postgres::Row;

use super::{execute, query, query_one, query_opt, PgStore};
use crate::store::operators::{no_such_operator, operator_exists, AUDIT_KEPT};
use crate::store::{now, AuditEntry, ChangeStamp, Operator, OperatorStore, Result, StoreError};

const OPERATOR_COLUMNS: &str =
    "name, password_hash, read_only, must_change, created_at, cert_sha256";

fn operator_row(r: &Row) -> Result<Operator> {
    Ok(Operator {
        name: r.try_get(0)?,
        password_hash: r.try_get(1)?,
        read_only: r.try_get(2)?,
        must_change: r.try_get(3)?,
        created_at: r.try_get::<_, i64>(4)?.max(0) as u64,
        cert_sha256: r.try_get(5)?,
    })
}

impl OperatorStore for PgStore {
    fn add_operator(&self, name: &str, password_hash: &str, read_only: bool) -> Result<Operator> {
        self.block(async {
            let c = self.conn().await?;
            let row = query_opt(
                &c,
                &format!(
                    "INSERT INTO operators (name, password_hash, read_only, must_change, created_at)
                     VALUES ($1, $2, $3, TRUE, $4) ON CONFLICT (name) DO NOTHING
                     RETURNING {OPERATOR_COLUMNS}"
                ),
                &[&name, &password_hash, &read_only, &(now() as i64)],
            )
            .await?;
            match row {
                Some(r) => operator_row(&r),
                None => Err(operator_exists(name)),
            }
        })
    }

    fn operator(&self, name: &str) -> Result<Option<Operator>> {
        self.block(async {
            let c = self.conn().await?;
            query_opt(
                &c,
                &format!("SELECT {OPERATOR_COLUMNS} FROM operators WHERE name = $1"),
                &[&name],
            )
            .await?
            .map(|r| operator_row(&r))
            .transpose()
        })
    }

    fn operators(&self) -> Result<Vec<Operator>> {
        self.block(async {
            let c = self.conn().await?;
            query(
                &c,
                &format!("SELECT {OPERATOR_COLUMNS} FROM operators ORDER BY name"),
                &[],
            )
            .await?
            .iter()
            .map(operator_row)
            .collect()
        })
    }

    fn remove_operator(&self, name: &str) -> Result<bool> {
        self.block(async {
            let c = self.conn().await?;
            Ok(execute(&c, "DELETE FROM operators WHERE name = $1", &[&name]).await? > 0)
        })
    }

    fn set_operator_password(
        &self,
        name: &str,
        password_hash: &str,
        must_change: bool,
    ) -> Result<()> {
        self.block(async {
            let c = self.conn().await?;
            let n = execute(
                &c,
                "UPDATE operators SET password_hash = $2, must_change = $3 WHERE name = $1",
                &[&name, &password_hash, &must_change],
            )
            .await?;
            if n == 0 {
                return Err(StoreError::NotFound {
                    what: "operator",
                    name: name.into(),
                    hint: ": `levee operator list` shows them",
                });
            }
            Ok(())
        })
    }

    fn set_operator_cert(&self, name: &str, cert_sha256: Option<&str>) -> Result<()> {
        self.block(async {
            let c = self.conn().await?;
            let n = execute(
                &c,
                "UPDATE operators SET cert_sha256 = $2 WHERE name = $1",
                &[&name, &cert_sha256],
            )
            .await?;
            if n == 0 {
                return Err(no_such_operator(name));
            }
            Ok(())
        })
    }

    fn add_audit(&self, operator: &str, action: &str, target: &str, detail: &str) -> Result<()> {
        self.block(async {
            let c = self.conn().await?;
            let id: i64 = query_one(
                &c,
                "INSERT INTO audit (at, operator, action, target, detail)
                 VALUES ($1, $2, $3, $4, $5) RETURNING id",
                &[&(now() as i64), &operator, &action, &target, &detail],
            )
            .await?
            .try_get(0)?;
            if id % 1000 == 0 {
                execute(
                    &c,
                    "DELETE FROM audit WHERE id <= $1",
                    &[&(id - AUDIT_KEPT)],
                )
                .await?;
            }
            Ok(())
        })
    }

    fn audit(&self, target: Option<&str>, limit: usize) -> Result<Vec<AuditEntry>> {
        self.block(async {
            let c = self.conn().await?;
            query(
                &c,
                "SELECT id, at, operator, action, target, detail FROM audit
                 WHERE $1::TEXT IS NULL OR target = $1 ORDER BY id DESC LIMIT $2",
                &[&target, &(limit.min(i64::MAX as usize) as i64)],
            )
            .await?
            .iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: r.try_get(0)?,
                    at: r.try_get::<_, i64>(1)?.max(0) as u64,
                    operator: r.try_get(2)?,
                    action: r.try_get(3)?,
                    target: r.try_get(4)?,
                    detail: r.try_get(5)?,
                })
            })
            .collect()
        })
    }

    fn change_stamp(&self) -> Result<ChangeStamp> {
        self.block(async {
            let c = self.conn().await?;
            let r = query_one(
                &c,
                "SELECT (SELECT COUNT(*) FROM appliances),
                        (SELECT COALESCE(SUM(last_heartbeat), 0)::BIGINT FROM appliances),
                        (SELECT COALESCE(MAX(id), 0) FROM events),
                        (SELECT COALESCE(MAX(id), 0) FROM runs),
                        (SELECT COALESCE(MAX(id), 0) FROM audit)",
                &[],
            )
            .await?;
            Ok(ChangeStamp {
                appliances: r.try_get(0)?,
                heartbeats: r.try_get(1)?,
                last_event: r.try_get(2)?,
                last_run: r.try_get(3)?,
                last_audit: r.try_get(4)?,
            })
        })
    }
}
