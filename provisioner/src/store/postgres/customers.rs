//! PgStore: customers.

use deadpool_postgres::GenericClient;
use levee_proto::config::CustomerConfig;
use tokio_postgres::Row;

use super::{corrupt, execute, query, query_one, query_opt, PgStore};
use crate::store::{
    no_customer, now, validate_name, CustomerRecord, CustomerStore, Result, StoreError,
};

pub(super) fn customer_row(row: &Row) -> Result<CustomerRecord> {
    customer_row_at(row, 0)
}

/// A customer record from columns `at..at + 4` (name, config, created_at,
/// updated_at).
pub(super) fn customer_row_at(row: &Row, at: usize) -> Result<CustomerRecord> {
    let config: String = row.try_get(at + 1)?;
    Ok(CustomerRecord {
        name: row.try_get(at)?,
        config: serde_json::from_str(&config).map_err(corrupt)?,
        created_at: row.try_get::<_, i64>(at + 2)? as u64,
        updated_at: row.try_get::<_, i64>(at + 3)? as u64,
    })
}

pub(super) async fn require_customer(c: &impl GenericClient, name: &str) -> Result<()> {
    query_opt(c, "SELECT name FROM customers WHERE name = $1", &[&name])
        .await?
        .map(|_| ())
        .ok_or_else(|| no_customer(name))
}

impl CustomerStore for PgStore {
    fn put_customer(&self, config: &CustomerConfig) -> Result<CustomerRecord> {
        let _forget = self.api_cache.forget(None);
        validate_name("customer", &config.customer)?;
        let json = serde_json::to_string(config).map_err(|e| StoreError::Invalid(e.to_string()))?;
        self.block(async {
            let c = self.conn().await?;
            let row = query_one(&c,
                "INSERT INTO customers (name, config, created_at, updated_at) VALUES ($1, $2, $3, $3)
                 ON CONFLICT(name) DO UPDATE SET config = excluded.config, updated_at = excluded.updated_at
                 RETURNING name, config, created_at, updated_at",
                &[&config.customer, &json, &(now() as i64)],
            ).await?;
            customer_row(&row)
        })
    }

    fn customer(&self, name: &str) -> Result<Option<CustomerRecord>> {
        // This and appliance_by_id are every mTLS request's lookups.
        self.block(async {
            let c = self.conn().await?;
            query_opt(
                &c,
                "SELECT name, config, created_at, updated_at FROM customers WHERE name = $1",
                &[&name],
            )
            .await?
            .map(|r| customer_row(&r))
            .transpose()
        })
    }

    fn customers(&self) -> Result<Vec<CustomerRecord>> {
        self.block(async {
            let c = self.conn().await?;
            query(
                &c,
                "SELECT name, config, created_at, updated_at FROM customers ORDER BY name",
                &[],
            )
            .await?
            .iter()
            .map(customer_row)
            .collect()
        })
    }

    fn set_offsite_quota(&self, name: &str, bytes: Option<u64>) -> Result<()> {
        let bytes = bytes.map(|b| i64::try_from(b).unwrap_or(i64::MAX));
        self.block(async {
            let c = self.conn().await?;
            let n = execute(
                &c,
                "UPDATE customers SET offsite_quota = $2 WHERE name = $1",
                &[&name, &bytes],
            )
            .await?;
            if n == 0 {
                return Err(no_customer(name));
            }
            Ok(())
        })
    }

    fn offsite_quota(&self, name: &str) -> Result<Option<u64>> {
        self.block(async {
            let c = self.conn().await?;
            let row = query_opt(
                &c,
                "SELECT offsite_quota FROM customers WHERE name = $1",
                &[&name],
            )
            .await?
            .ok_or_else(|| no_customer(name))?;
            let q: Option<i64> = row.try_get(0)?;
            Ok(q.map(|b| b.max(0) as u64))
        })
    }
}
