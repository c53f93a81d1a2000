//! The PostgreSQL store (`--database postgres://...`), for deployments where
//! one machine is not enough or the CLI runs elsewhere.
//!
//! The sync `postgres` client drives its own small runtime; calling it from
//! inside a tokio runtime would panic, so every call goes through
//! [`PgStore::with`], which steps out of the async context first.

mod appliances;
mod customers;
mod events;
mod images;

use std::sync::Mutex;

use postgres::{Client, NoTls, Row};

use super::{Result, Store, StoreError};

/// Ordered schema migrations; `levee_schema` records how many ran.
/// Append only: a released migration is never edited.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE images (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    manifest TEXT NOT NULL,
    imported_at BIGINT NOT NULL
);
CREATE TABLE profiles (
    name TEXT PRIMARY KEY,
    image TEXT NOT NULL REFERENCES images(id),
    kernel TEXT NOT NULL,
    initrd TEXT NOT NULL,
    cmdline TEXT NOT NULL,
    transport TEXT NOT NULL
);
CREATE TABLE customers (
    name TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE appliances (
    id BIGSERIAL PRIMARY KEY,
    mac TEXT NOT NULL UNIQUE,
    serial TEXT,
    profile TEXT,
    registered BOOLEAN NOT NULL,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT,
    last_report TEXT,
    last_report_at BIGINT,
    customer TEXT REFERENCES customers(name),
    state TEXT NOT NULL DEFAULT 'pending',
    state_reason TEXT,
    image_version TEXT,
    slot TEXT,
    last_heartbeat BIGINT,
    revoked_at BIGINT,
    replaced_by BIGINT,
    replaces BIGINT
);
CREATE TABLE events (
    id BIGSERIAL PRIMARY KEY,
    mac TEXT NOT NULL,
    at BIGINT NOT NULL,
    step TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX events_by_mac ON events(mac, id);
CREATE TABLE leases (
    mac TEXT PRIMARY KEY,
    ip TEXT NOT NULL,
    expires BIGINT NOT NULL
);
"#,
    r#"
CREATE TABLE enroll_tokens (
    token_sha256 TEXT PRIMARY KEY,
    mac TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);
CREATE INDEX enroll_tokens_by_expiry ON enroll_tokens(expires_at);
ALTER TABLE appliances ADD COLUMN cert_fingerprint TEXT;
ALTER TABLE appliances ADD COLUMN cert_not_after BIGINT;
"#,
    r#"
ALTER TABLE appliances ADD COLUMN pending_key TEXT;
ALTER TABLE appliances ADD COLUMN reinstall BOOLEAN NOT NULL DEFAULT FALSE;
"#,
];

/// Events kept per machine (as in the SQLite store).
pub(super) const EVENTS_KEPT: i64 = 500;

/// Advisory lock key held while migrating, so two `levee` processes
/// starting at once do not both run a migration.
pub(super) const MIGRATION_LOCK: i64 = 0x006c_6576_6565;

/// Connections kept open to the database. `levee serve` handles many
/// appliances at once; one connection serialized every request behind one
/// round trip and one commit at a time (66 enrollments/s in bench-api).
/// Opened on first use, so a CLI command opens only the one it needs.
pub(super) const POOL_SIZE: usize = 8;

pub struct PgStore {
    url: String,
    pool: Vec<Mutex<Option<Conn>>>,
    next: std::sync::atomic::AtomicUsize,
}

impl PgStore {
    /// Connects (`postgres://user@host/db` or `host=... dbname=...`) and
    /// migrates.
    pub fn connect(url: &str) -> Result<PgStore> {
        let client = off_runtime(|| Client::connect(url, NoTls))?;
        let mut pool: Vec<Mutex<Option<Conn>>> = (0..POOL_SIZE).map(|_| Mutex::new(None)).collect();
        pool[0] = Mutex::new(Some(Conn::new(client)));
        let store = PgStore {
            url: url.to_string(),
            pool,
            next: std::sync::atomic::AtomicUsize::new(0),
        };
        store.with(migrate)?;
        Ok(store)
    }

    fn with<T: Send>(&self, f: impl FnOnce(&mut Client) -> Result<T> + Send) -> Result<T> {
        self.with_conn(|conn| f(&mut conn.client))
    }

    /// Runs the hot lookups of the mTLS API as statements prepared once per
    /// connection: the server then neither parses nor plans them again.
    fn query_prepared(
        &self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Option<Row>> {
        self.with_conn(|conn| {
            let stmt = match conn.statements.get(sql) {
                Some(s) => s.clone(),
                None => {
                    let s = conn.client.prepare(sql)?;
                    conn.statements.insert(sql.to_string(), s.clone());
                    s
                }
            };
            Ok(conn.client.query_opt(&stmt, params)?)
        })
    }

    fn with_conn<T: Send>(&self, f: impl FnOnce(&mut Conn) -> Result<T> + Send) -> Result<T> {
        off_runtime(|| {
            // A free connection if there is one, else wait for one in turn.
            // A panic while holding one leaves no half-done transaction (it
            // rolls back on drop), so a poisoned lock is still usable.
            let start = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let n = self.pool.len();
            let mut slot = (0..n)
                .find_map(|i| self.pool[(start + i) % n].try_lock().ok())
                .unwrap_or_else(|| {
                    self.pool[start % n]
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                });
            if slot.as_ref().is_none_or(|c| c.client.is_closed()) {
                *slot = Some(Conn::new(Client::connect(&self.url, NoTls)?));
            }
            match slot.as_mut() {
                Some(client) => f(client),
                None => Err(StoreError::Corrupt("no database connection".into())),
            }
        })
    }
}

/// Runs `f` in a transaction whose commit does not wait for the WAL flush,
/// for rows that only record what happened (events, last seen): a crash
/// may lose the last few of them, never tokens, certificates or states.
/// Each enrollment writes two such rows beside its two durable commits.
pub(super) fn relaxed<T>(
    c: &mut Client,
    f: impl FnOnce(&mut postgres::Transaction<'_>) -> Result<T>,
) -> Result<T> {
    let mut tx = c.transaction()?;
    tx.batch_execute("SET LOCAL synchronous_commit = off")?;
    let v = f(&mut tx)?;
    tx.commit()?;
    Ok(v)
}

/// One pooled connection and the statements prepared on it.
struct Conn {
    client: Client,
    statements: std::collections::HashMap<String, postgres::Statement>,
}

impl Conn {
    fn new(client: Client) -> Conn {
        Conn {
            client,
            statements: Default::default(),
        }
    }
}

/// Runs `f` where the sync client may block: directly outside tokio, via
/// `block_in_place` on a multi-thread runtime, on a scoped thread otherwise.
pub(super) fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    match tokio::runtime::Handle::try_current() {
        Err(_) => f(),
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        Ok(_) => std::thread::scope(|s| match s.spawn(f).join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }),
    }
}

pub(super) fn migrate(client: &mut Client) -> Result<()> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS levee_schema (version BIGINT NOT NULL)")?;
    let done: i64 = match tx.query_opt("SELECT version FROM levee_schema", &[])? {
        Some(row) => row.try_get(0)?,
        None => {
            tx.execute("INSERT INTO levee_schema (version) VALUES (0)", &[])?;
            0
        }
    };
    if done as usize > MIGRATIONS.len() {
        return Err(StoreError::Invalid(format!(
            "the database has schema version {done}, newer than this levee ({}): upgrade levee",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(done as usize) {
        tx.batch_execute(sql)?;
        tx.execute("UPDATE levee_schema SET version = $1", &[&(i as i64 + 1)])?;
    }
    tx.commit()?;
    Ok(())
}

pub(super) fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

pub(super) fn opt_u64(row: &Row, idx: usize) -> Result<Option<u64>> {
    Ok(row.try_get::<_, Option<i64>>(idx)?.map(|v| v as u64))
}

impl Store for PgStore {}
