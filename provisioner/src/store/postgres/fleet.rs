//! PgStore: what the servers of a fleet share.

use super::{execute, query, query_opt, PgStore};
use crate::store::{now, FleetServer, FleetStore, Result, StoreError, StoredCa};

impl FleetStore for PgStore {
    fn server_ca(&self) -> Result<Option<StoredCa>> {
        self.block(async {
            let c = self.conn().await?;
            let Some(row) = query_opt(
                &c,
                "SELECT cert_pem, key_sealed FROM server_ca WHERE id = 1",
                &[],
            )
            .await?
            else {
                return Ok(None);
            };
            Ok(Some(StoredCa {
                cert_pem: row.try_get(0)?,
                key_sealed: row.try_get(1)?,
            }))
        })
    }

    fn init_server_ca(&self, ca: &StoredCa) -> Result<StoredCa> {
        self.block(async {
            let c = self.conn().await?;
            // Two servers starting at once: the first insert wins, the
            // other's does nothing and it reads the winner's.
            execute(
                &c,
                "INSERT INTO server_ca (id, cert_pem, key_sealed, created_at) VALUES (1, $1, $2, $3)
                 ON CONFLICT (id) DO NOTHING",
                &[&ca.cert_pem, &ca.key_sealed, &(now() as i64)],
            )
            .await?;
            Ok(())
        })?;
        self.server_ca()?
            .ok_or_else(|| StoreError::Corrupt("the stored CA vanished".into()))
    }

    fn announce_server(&self, url: &str, at: u64) -> Result<()> {
        self.block(async {
            let c = self.conn().await?;
            execute(
                &c,
                "INSERT INTO fleet_servers (url, seen_at) VALUES ($1, $2)
                 ON CONFLICT (url) DO UPDATE SET seen_at = excluded.seen_at",
                &[&url, &(at as i64)],
            )
            .await?;
            Ok(())
        })
    }

    fn fleet_servers(&self) -> Result<Vec<FleetServer>> {
        self.block(async {
            let c = self.conn().await?;
            query(
                &c,
                "SELECT url, seen_at FROM fleet_servers ORDER BY seen_at DESC, url",
                &[],
            )
            .await?
            .iter()
            .map(|r| {
                Ok(FleetServer {
                    url: r.try_get(0)?,
                    seen_at: r.try_get::<_, i64>(1)?.max(0) as u64,
                })
            })
            .collect()
        })
    }
}
