//! SqliteStore: what a fleet shares (a SQLite server is a fleet of one;
//! `levee serve` keeps its CA in DATA_DIR/ca/, but the store offers the
//! same as PostgreSQL, and the suite checks both).

use rusqlite::{params, OptionalExtension};

use super::{Cached, SqliteStore};
use crate::store::{now, FleetServer, FleetStore, Result, StoredCa};

impl FleetStore for SqliteStore {
    fn server_ca(&self) -> Result<Option<StoredCa>> {
        Ok(self
            .lock()
            .query_row_cached(
                "SELECT cert_pem, key_sealed FROM server_ca WHERE id = 1",
                [],
                |r| {
                    Ok(StoredCa {
                        cert_pem: r.get(0)?,
                        key_sealed: r.get(1)?,
                    })
                },
            )
            .optional()?)
    }

    fn init_server_ca(&self, ca: &StoredCa) -> Result<StoredCa> {
        self.lock().execute_cached(
            "INSERT INTO server_ca (id, cert_pem, key_sealed, created_at) VALUES (1, ?1, ?2, ?3)
             ON CONFLICT(id) DO NOTHING",
            params![ca.cert_pem, ca.key_sealed, now() as i64],
        )?;
        self.server_ca()?
            .ok_or_else(|| crate::store::StoreError::Corrupt("the stored CA vanished".into()))
    }

    fn announce_server(&self, url: &str, at: u64) -> Result<()> {
        self.lock().execute_cached(
            "INSERT INTO fleet_servers (url, seen_at) VALUES (?1, ?2)
             ON CONFLICT(url) DO UPDATE SET seen_at = excluded.seen_at",
            params![url, at as i64],
        )?;
        Ok(())
    }

    fn fleet_servers(&self) -> Result<Vec<FleetServer>> {
        let c = self.lock();
        let mut st =
            c.prepare_cached("SELECT url, seen_at FROM fleet_servers ORDER BY seen_at DESC, url")?;
        let rows = st.query_map([], |r| {
            Ok(FleetServer {
                url: r.get(0)?,
                seen_at: r.get::<_, i64>(1)?.max(0) as u64,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}
