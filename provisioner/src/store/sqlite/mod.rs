//! The embedded store: one SQLite file in `--data-dir`.
//!
//! Split by domain as the trait is: `appliances.rs`, `customers.rs`,
//! `images.rs`, `events.rs`; this file opens the database and migrates it.

mod alerts;
mod appliances;
mod customers;
mod events;
mod fleet;
mod images;
mod operators;
mod recovery;
mod restores;
mod rollouts;
mod runs;

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use levee_pxe::boot::MacAddr;
use rusqlite::{Connection, Row};

use super::{Result, Store, StoreError};

/// Ordered schema migrations; `PRAGMA user_version` records how many ran.
/// Append only: a released migration is never edited.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE images (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    manifest TEXT NOT NULL,
    imported_at INTEGER NOT NULL
);
CREATE TABLE profiles (
    name TEXT PRIMARY KEY,
    image TEXT NOT NULL REFERENCES images(id),
    kernel TEXT NOT NULL,
    initrd TEXT NOT NULL,
    cmdline TEXT NOT NULL,
    transport TEXT NOT NULL
);
CREATE TABLE appliances (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    mac TEXT NOT NULL UNIQUE,
    serial TEXT,
    profile TEXT,
    registered INTEGER NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER,
    last_report TEXT,
    last_report_at INTEGER
);
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    mac TEXT NOT NULL,
    at INTEGER NOT NULL,
    step TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX events_by_mac ON events(mac, id);
CREATE TABLE leases (
    mac TEXT PRIMARY KEY,
    ip TEXT NOT NULL,
    expires INTEGER NOT NULL
);
"#,
    r#"
CREATE TABLE customers (
    name TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
ALTER TABLE appliances ADD COLUMN customer TEXT REFERENCES customers(name);
ALTER TABLE appliances ADD COLUMN state TEXT NOT NULL DEFAULT 'pending';
ALTER TABLE appliances ADD COLUMN state_reason TEXT;
ALTER TABLE appliances ADD COLUMN image_version TEXT;
ALTER TABLE appliances ADD COLUMN slot TEXT;
ALTER TABLE appliances ADD COLUMN last_heartbeat INTEGER;
ALTER TABLE appliances ADD COLUMN revoked_at INTEGER;
ALTER TABLE appliances ADD COLUMN replaced_by INTEGER;
ALTER TABLE appliances ADD COLUMN replaces INTEGER;
"#,
    r#"
CREATE TABLE enroll_tokens (
    token_sha256 TEXT PRIMARY KEY,
    mac TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER
);
CREATE INDEX enroll_tokens_by_expiry ON enroll_tokens(expires_at);
ALTER TABLE appliances ADD COLUMN cert_fingerprint TEXT;
ALTER TABLE appliances ADD COLUMN cert_not_after INTEGER;
"#,
    r#"
ALTER TABLE appliances ADD COLUMN pending_key TEXT;
ALTER TABLE appliances ADD COLUMN reinstall INTEGER NOT NULL DEFAULT 0;
"#,
    r#"
CREATE TABLE server_ca (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    cert_pem TEXT NOT NULL,
    key_sealed TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
"#,
    // Run reports (store/runs.rs).
    r#"
CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    appliance_id INTEGER NOT NULL REFERENCES appliances(id) ON DELETE CASCADE,
    received_at INTEGER NOT NULL,
    report_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    job TEXT,
    sources TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    ended_at INTEGER NOT NULL,
    result TEXT NOT NULL,
    files_new INTEGER NOT NULL,
    files_total INTEGER NOT NULL,
    bytes_new INTEGER NOT NULL,
    bytes_total INTEGER NOT NULL,
    snapshot TEXT,
    errors TEXT NOT NULL,
    error_count INTEGER NOT NULL,
    repo_bytes INTEGER,
    UNIQUE (appliance_id, report_id)
);
CREATE INDEX runs_by_appliance ON runs(appliance_id, kind, id);
"#,
    r#"
CREATE TABLE rollouts (
    channel TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    release_no INTEGER NOT NULL,
    percent INTEGER NOT NULL,
    paused INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL
);
CREATE TABLE updates (
    appliance INTEGER NOT NULL REFERENCES appliances(id) ON DELETE CASCADE,
    release_no INTEGER NOT NULL,
    version TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    slot TEXT,
    blocked INTEGER NOT NULL DEFAULT 0,
    at INTEGER NOT NULL,
    PRIMARY KEY (appliance, release_no)
);
"#,
    // Alerts and their webhooks (store/alerts.rs).
    r#"
CREATE TABLE alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    appliance_id INTEGER,
    customer TEXT,
    severity TEXT NOT NULL,
    summary TEXT NOT NULL,
    opened_at INTEGER NOT NULL,
    resolved_at INTEGER
);
CREATE UNIQUE INDEX alerts_open ON alerts(kind, subject) WHERE resolved_at IS NULL;
CREATE TABLE webhooks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    url TEXT NOT NULL,
    customer TEXT,
    secret TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX webhooks_by_scope ON webhooks(url, COALESCE(customer, ''));
CREATE TABLE alert_deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id INTEGER NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    alert_id INTEGER NOT NULL REFERENCES alerts(id) ON DELETE CASCADE,
    event TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at INTEGER NOT NULL,
    last_error TEXT
);
CREATE INDEX alert_deliveries_due ON alert_deliveries(next_at);
CREATE INDEX events_by_step ON events(step, at);
"#,
    r#"
ALTER TABLE appliances ADD COLUMN reenroll INTEGER NOT NULL DEFAULT 0;
ALTER TABLE appliances ADD COLUMN key_conflict TEXT;
ALTER TABLE enroll_tokens ADD COLUMN ip TEXT;
CREATE INDEX enroll_tokens_by_mac ON enroll_tokens(mac);
"#,
    // Panel operators and the audit log (store/operators.rs).
    r#"
CREATE TABLE operators (
    name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    read_only INTEGER NOT NULL,
    must_change INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    operator TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX audit_by_target ON audit(target, id);
"#,
    // Replication lag of each replication run (issue 14).
    r#"
ALTER TABLE runs ADD COLUMN lag_secs INTEGER;
"#,
    // The client certificate that logs an operator in (issue 15).
    r#"
ALTER TABLE operators ADD COLUMN cert_sha256 TEXT;
"#,
    // Per-customer offsite quota in bytes, NULL: none (issue 14).
    r#"
ALTER TABLE customers ADD COLUMN offsite_quota INTEGER;
"#,
    // Disaster recovery (issue 14, store/recovery.rs): each appliance's
    // public key and sealed recovery slot, and ops' grants to replacements.
    r#"
CREATE TABLE recovery (
    appliance_id INTEGER PRIMARY KEY REFERENCES appliances(id) ON DELETE CASCADE,
    public_key TEXT,
    repository TEXT,
    sealed TEXT,
    updated_at INTEGER NOT NULL,
    grant_from INTEGER,
    grant_repository TEXT,
    grant_sealed TEXT,
    grant_at INTEGER
);
"#,
    // Where each server of a fleet serves image files to the others
    // (issue 16, image_fetch.rs).
    r#"
CREATE TABLE fleet_servers (
    url TEXT PRIMARY KEY,
    seen_at INTEGER NOT NULL
);
"#,
    // Restores ops asks appliances to run (issue 14, store/restores.rs).
    r#"
CREATE TABLE restores (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    appliance_id INTEGER NOT NULL REFERENCES appliances(id) ON DELETE CASCADE,
    snapshot TEXT NOT NULL,
    path TEXT,
    target TEXT NOT NULL,
    credentials_of TEXT,
    state TEXT NOT NULL,
    reason TEXT,
    requested_at INTEGER NOT NULL,
    started_at INTEGER,
    ended_at INTEGER,
    files INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    errors INTEGER NOT NULL
);
CREATE INDEX restores_by_appliance ON restores(appliance_id, state, id);
"#,
    // Ops withdraws a restore request (issue 14, store/restores.rs): when
    // and who; the states `cancelling` and `cancelled` need no schema.
    r#"
ALTER TABLE restores ADD COLUMN cancel_asked_at INTEGER;
ALTER TABLE restores ADD COLUMN cancel_asked_by TEXT;
"#,
];

/// Events kept per machine.
pub(super) const EVENTS_KEPT: i64 = 500;

/// Statements through rusqlite's per-connection statement cache: the mTLS
/// API runs the same few statements thousands of times a second, and
/// parsing their SQL anew was the largest part of its CPU (perf, bench-api).
pub(super) trait Cached {
    fn query_row_cached<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>;
    fn execute_cached<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;
}

impl Cached for Connection {
    fn query_row_cached<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    {
        self.prepare_cached(sql)?.query_row(params, f)
    }

    fn execute_cached<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }
}

pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens (creating and migrating if needed) `DIR/levee.sqlite`.
    pub fn open(data_dir: &Path) -> Result<SqliteStore> {
        super::private_dir(data_dir)?;
        let path = data_dir.join("levee.sqlite");
        // 0600 from the first byte: the database holds sealed secrets, the
        // fleet's state and token hashes; nobody else on the host reads it.
        // SQLite gives its -wal and -shm files the database's mode.
        let private = |p: &Path| {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(p)
                .and_then(|_| std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)))
                .map_err(|e| {
                    StoreError::Invalid(format!("cannot make {} private: {e}", p.display()))
                })
        };
        private(&path)?;
        for side in ["levee.sqlite-wal", "levee.sqlite-shm"] {
            let p = data_dir.join(side);
            if p.exists() {
                private(&p)?;
            }
        }
        let conn = Connection::open(&path)?;
        // WAL lets the CLI read and write while `levee serve` does; the busy
        // timeout turns a momentary lock into a short wait, not an error.
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.set_prepared_statement_cache_capacity(64);
        let store = SqliteStore {
            conn: Mutex::new(conn),
        };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&self) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let done: usize = tx.query_row_cached("PRAGMA user_version", [], |r| r.get(0))?;
        if done > MIGRATIONS.len() {
            return Err(StoreError::Invalid(format!(
                "the database has schema version {done}, newer than this levee ({}): upgrade levee",
                MIGRATIONS.len()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(done) {
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i + 1)?;
        }
        tx.commit()?;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent
        // (transactions roll back), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(super) fn corrupt(e: impl std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(e.to_string().into())
}

pub(super) fn mac_col(row: &Row, idx: usize) -> rusqlite::Result<MacAddr> {
    let s: String = row.get(idx)?;
    s.parse().map_err(corrupt)
}

pub(super) fn opt_u64(row: &Row, idx: usize) -> rusqlite::Result<Option<u64>> {
    Ok(row.get::<_, Option<i64>>(idx)?.map(|v| v as u64))
}

/// Every default: its reads are in-process work of microseconds, answered
/// on the async workers as they are.
impl Store for SqliteStore {
    fn database_bytes(&self) -> Result<u64> {
        let n: i64 = self.lock().query_row(
            "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
            [],
            |r| r.get(0),
        )?;
        Ok(n.max(0) as u64)
    }
}

#[cfg(test)]
/// What only the SQLite store does; everything both stores do is in
/// `store::suite`, run against each.
mod tests {
    use super::*;
    use crate::store::suite::image;
    use crate::store::{EventStore, ImageStore};

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        (dir, s)
    }

    #[test]
    fn the_data_dir_and_database_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        let s = SqliteStore::open(&data).unwrap();
        s.put_image(&image("test-1")).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700);
        for f in ["levee.sqlite", "levee.sqlite-wal", "levee.sqlite-shm"] {
            assert_eq!(mode(&data.join(f)), 0o600, "{f}");
        }
        // An older world-readable database is tightened when opened.
        drop(s);
        std::fs::set_permissions(
            data.join("levee.sqlite"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let _s = SqliteStore::open(&data).unwrap();
        assert_eq!(mode(&data.join("levee.sqlite")), 0o600);
    }

    #[test]
    fn reopening_keeps_data_and_does_not_rerun_migrations() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SqliteStore::open(dir.path()).unwrap();
            s.put_image(&image("test-1")).unwrap();
        }
        let s = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(s.images().unwrap().len(), 1);
    }

    #[test]
    fn events_are_kept_in_order_and_trimmed() {
        let (_d, s) = store();
        let mac: MacAddr = "52:54:00:00:00:02".parse().unwrap();
        for i in 0..(EVENTS_KEPT + 120) {
            s.add_event(mac, "dhcp", &i.to_string()).unwrap();
        }
        let ev = s.events(mac, 3).unwrap();
        let last: Vec<_> = ev.iter().map(|e| e.detail.as_str()).collect();
        let n = EVENTS_KEPT + 120;
        assert_eq!(
            last,
            [
                (n - 3).to_string(),
                (n - 2).to_string(),
                (n - 1).to_string()
            ]
        );
        assert!(s.events(mac, 10_000).unwrap().len() <= (EVENTS_KEPT + 50) as usize);
    }
}
