//! SqliteStore: operators and the audit log.

use rusqlite::{params, OptionalExtension, Row};

use super::{Cached, SqliteStore};
use crate::store::operators::{no_such_operator, operator_exists, AUDIT_KEPT};
use crate::store::{now, AuditEntry, ChangeStamp, Operator, OperatorStore, Result};

const OPERATOR_COLUMNS: &str =
    "name, password_hash, read_only, must_change, created_at, cert_sha256";

fn operator_row(r: &Row) -> rusqlite::Result<Operator> {
    Ok(Operator {
        name: r.get(0)?,
        password_hash: r.get(1)?,
        read_only: r.get(2)?,
        must_change: r.get(3)?,
        created_at: r.get::<_, i64>(4)?.max(0) as u64,
        cert_sha256: r.get(5)?,
    })
}

impl OperatorStore for SqliteStore {
    fn add_operator(&self, name: &str, password_hash: &str, read_only: bool) -> Result<Operator> {
        let conn = self.lock();
        let added = conn.execute(
            "INSERT INTO operators (name, password_hash, read_only, must_change, created_at)
             VALUES (?1, ?2, ?3, 1, ?4) ON CONFLICT (name) DO NOTHING",
            params![name, password_hash, read_only, now() as i64],
        )?;
        if added == 0 {
            return Err(operator_exists(name));
        }
        Ok(conn.query_row(
            &format!("SELECT {OPERATOR_COLUMNS} FROM operators WHERE name = ?1"),
            [name],
            operator_row,
        )?)
    }

    fn operator(&self, name: &str) -> Result<Option<Operator>> {
        let conn = self.lock();
        Ok(conn
            .query_row_cached(
                &format!("SELECT {OPERATOR_COLUMNS} FROM operators WHERE name = ?1"),
                [name],
                operator_row,
            )
            .optional()?)
    }

    fn operators(&self) -> Result<Vec<Operator>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT {OPERATOR_COLUMNS} FROM operators ORDER BY name"
        ))?;
        let rows = stmt.query_map([], operator_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn remove_operator(&self, name: &str) -> Result<bool> {
        let conn = self.lock();
        Ok(conn.execute("DELETE FROM operators WHERE name = ?1", [name])? > 0)
    }

    fn set_operator_password(
        &self,
        name: &str,
        password_hash: &str,
        must_change: bool,
    ) -> Result<()> {
        let conn = self.lock();
        let n = conn.execute(
            "UPDATE operators SET password_hash = ?2, must_change = ?3 WHERE name = ?1",
            params![name, password_hash, must_change],
        )?;
        if n == 0 {
            return Err(crate::store::StoreError::NotFound {
                what: "operator",
                name: name.into(),
                hint: ": `levee operator list` shows them",
            });
        }
        Ok(())
    }

    fn set_operator_cert(&self, name: &str, cert_sha256: Option<&str>) -> Result<()> {
        let conn = self.lock();
        let n = conn.execute(
            "UPDATE operators SET cert_sha256 = ?2 WHERE name = ?1",
            params![name, cert_sha256],
        )?;
        if n == 0 {
            return Err(no_such_operator(name));
        }
        Ok(())
    }

    fn add_audit(&self, operator: &str, action: &str, target: &str, detail: &str) -> Result<()> {
        let conn = self.lock();
        let id: i64 = conn.query_row_cached(
            "INSERT INTO audit (at, operator, action, target, detail)
             VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id",
            params![now() as i64, operator, action, target, detail],
            |r| r.get(0),
        )?;
        if id % 1000 == 0 {
            conn.execute_cached("DELETE FROM audit WHERE id <= ?1", [id - AUDIT_KEPT])?;
        }
        Ok(())
    }

    fn audit(&self, target: Option<&str>, limit: usize) -> Result<Vec<AuditEntry>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT id, at, operator, action, target, detail FROM audit
             WHERE ?1 IS NULL OR target = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![target, limit.min(i64::MAX as usize) as i64], |r| {
            Ok(AuditEntry {
                id: r.get(0)?,
                at: r.get::<_, i64>(1)?.max(0) as u64,
                operator: r.get(2)?,
                action: r.get(3)?,
                target: r.get(4)?,
                detail: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn change_stamp(&self) -> Result<ChangeStamp> {
        let conn = self.lock();
        Ok(conn.query_row_cached(
            "SELECT (SELECT COUNT(*) FROM appliances),
                    (SELECT COALESCE(SUM(last_heartbeat), 0) FROM appliances),
                    (SELECT COALESCE(MAX(id), 0) FROM events),
                    (SELECT COALESCE(MAX(id), 0) FROM runs),
                    (SELECT COALESCE(MAX(id), 0) FROM audit)",
            [],
            |r| {
                Ok(ChangeStamp {
                    appliances: r.get(0)?,
                    heartbeats: r.get(1)?,
                    last_event: r.get(2)?,
                    last_run: r.get(3)?,
                    last_audit: r.get(4)?,
                })
            },
        )?)
    }
}
