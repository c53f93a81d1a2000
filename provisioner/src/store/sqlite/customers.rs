//! SqliteStore: customers.

use levee_proto::config::CustomerConfig;
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{corrupt, Cached, SqliteStore};
use crate::store::{
    no_customer, now, validate_name, CustomerRecord, CustomerStore, Result, StoreError,
};

pub(super) fn customer_row(row: &Row) -> rusqlite::Result<CustomerRecord> {
    let config: String = row.get(1)?;
    Ok(CustomerRecord {
        name: row.get(0)?,
        config: serde_json::from_str(&config).map_err(corrupt)?,
        created_at: row.get::<_, i64>(2)? as u64,
        updated_at: row.get::<_, i64>(3)? as u64,
    })
}

pub(super) fn require_customer(conn: &Connection, name: &str) -> Result<()> {
    let known: Option<String> = conn
        .query_row_cached("SELECT name FROM customers WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .optional()?;
    known.map(|_| ()).ok_or_else(|| no_customer(name))
}

impl CustomerStore for SqliteStore {
    fn put_customer(&self, config: &CustomerConfig) -> Result<CustomerRecord> {
        validate_name("customer", &config.customer)?;
        let json = serde_json::to_string(config).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let conn = self.lock();
        Ok(conn.query_row_cached(
            "INSERT INTO customers (name, config, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)
             ON CONFLICT(name) DO UPDATE SET config = excluded.config, updated_at = excluded.updated_at
             RETURNING name, config, created_at, updated_at",
            params![config.customer, json, now() as i64],
            customer_row,
        )?)
    }

    fn customer(&self, name: &str) -> Result<Option<CustomerRecord>> {
        Ok(self
            .lock()
            .query_row_cached(
                "SELECT name, config, created_at, updated_at FROM customers WHERE name = ?1",
                [name],
                customer_row,
            )
            .optional()?)
    }

    fn customers(&self) -> Result<Vec<CustomerRecord>> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare("SELECT name, config, created_at, updated_at FROM customers ORDER BY name")?;
        let rows = stmt.query_map([], customer_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn set_offsite_quota(&self, name: &str, bytes: Option<u64>) -> Result<()> {
        let bytes = bytes.map(|b| i64::try_from(b).unwrap_or(i64::MAX));
        let n = self.lock().execute(
            "UPDATE customers SET offsite_quota = ?2 WHERE name = ?1",
            params![name, bytes],
        )?;
        if n == 0 {
            return Err(no_customer(name));
        }
        Ok(())
    }

    fn offsite_quota(&self, name: &str) -> Result<Option<u64>> {
        let q: Option<Option<i64>> = self
            .lock()
            .query_row_cached(
                "SELECT offsite_quota FROM customers WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()?;
        let q = q.ok_or_else(|| no_customer(name))?;
        Ok(q.map(|b| b.max(0) as u64))
    }
}
