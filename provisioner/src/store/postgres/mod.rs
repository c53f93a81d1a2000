//! The PostgreSQL store (`--database postgres://...`), for fleets where one
//! machine is not enough, several `levee serve` share one state, or the CLI
//! runs elsewhere.
//!
//! Split by domain as the trait is (`appliances.rs`, `customers.rs`,
//! `images.rs`, `events.rs`, `enrollment.rs`); this file holds the pool
//! and the outage handling, `tls.rs` the connection's TLS.
//!
//! Connections are `tokio-postgres` ones in a `deadpool-postgres` pool,
//! each statement prepared once per connection (`prepare_cached`). The
//! work runs as futures:
//! - the mTLS API's per-request lookup is awaited on the server's runtime
//!   ([`Store::appliance_with_customer_async`]), without a thread hop;
//! - the [`Store`] trait's other methods are synchronous (their callers,
//!   the CLI, enrollment, DHCP, are; see [`Store`]) and block their calling
//!   thread on the future, inside the store's own small runtime, which
//!   drives the connections they open. Nothing blocks an async worker:
//!   the server calls them from `spawn_blocking`, and nothing calls
//!   `block_in_place`.
//!
//! When the database is unreachable, the first failed connection marks
//! the store down and every call fails at once with
//! [`StoreError::Unavailable`] (HTTP 503) instead of waiting on timeouts;
//! one call at a time tries again every [`RETRY_EVERY`], so the store
//! comes back by itself within that of the database's return.

mod alerts;
mod api_cache;
mod appliances;
mod customers;
mod enrollment;
mod events;
mod fleet;
mod images;
mod operators;
mod recovery;
mod restores;
mod rollouts;
mod runs;
pub mod tls;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;
use tracing::{debug, error, info};

use super::{
    ApiLookup, Issuable, KnownEnrolled, KnownEnrollment, Result, Signer, Store, StoreError,
};

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
    r#"
CREATE TABLE server_ca (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    cert_pem TEXT NOT NULL,
    key_sealed TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
"#,
    // Run reports (store/runs.rs).
    r#"
CREATE TABLE runs (
    id BIGSERIAL PRIMARY KEY,
    appliance_id BIGINT NOT NULL REFERENCES appliances(id) ON DELETE CASCADE,
    received_at BIGINT NOT NULL,
    report_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    job TEXT,
    sources TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    ended_at BIGINT NOT NULL,
    result TEXT NOT NULL,
    files_new BIGINT NOT NULL,
    files_total BIGINT NOT NULL,
    bytes_new BIGINT NOT NULL,
    bytes_total BIGINT NOT NULL,
    snapshot TEXT,
    errors TEXT NOT NULL,
    error_count BIGINT NOT NULL,
    repo_bytes BIGINT,
    UNIQUE (appliance_id, report_id)
);
CREATE INDEX runs_by_appliance ON runs(appliance_id, kind, id);
"#,
    r#"
CREATE TABLE rollouts (
    channel TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    release_no BIGINT NOT NULL,
    percent INTEGER NOT NULL,
    paused BOOLEAN NOT NULL DEFAULT FALSE,
    updated_at BIGINT NOT NULL
);
CREATE TABLE updates (
    appliance BIGINT NOT NULL REFERENCES appliances(id) ON DELETE CASCADE,
    release_no BIGINT NOT NULL,
    version TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    slot TEXT,
    blocked BOOLEAN NOT NULL DEFAULT FALSE,
    at BIGINT NOT NULL,
    PRIMARY KEY (appliance, release_no)
);
"#,
    // Alerts and their webhooks (store/alerts.rs).
    r#"
CREATE TABLE alerts (
    id BIGSERIAL PRIMARY KEY,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    appliance_id BIGINT,
    customer TEXT,
    severity TEXT NOT NULL,
    summary TEXT NOT NULL,
    opened_at BIGINT NOT NULL,
    resolved_at BIGINT
);
CREATE UNIQUE INDEX alerts_open ON alerts(kind, subject) WHERE resolved_at IS NULL;
CREATE TABLE webhooks (
    id BIGSERIAL PRIMARY KEY,
    url TEXT NOT NULL,
    customer TEXT,
    secret TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX webhooks_by_scope ON webhooks(url, COALESCE(customer, ''));
CREATE TABLE alert_deliveries (
    id BIGSERIAL PRIMARY KEY,
    webhook_id BIGINT NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    alert_id BIGINT NOT NULL REFERENCES alerts(id) ON DELETE CASCADE,
    event TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_at BIGINT NOT NULL,
    last_error TEXT
);
CREATE INDEX alert_deliveries_due ON alert_deliveries(next_at);
CREATE INDEX events_by_step ON events(step, at);
"#,
    r#"
ALTER TABLE appliances ADD COLUMN reenroll BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE appliances ADD COLUMN key_conflict TEXT;
ALTER TABLE enroll_tokens ADD COLUMN ip TEXT;
CREATE INDEX enroll_tokens_by_mac ON enroll_tokens(mac);
"#,
    // Panel operators and the audit log (store/operators.rs).
    r#"
CREATE TABLE operators (
    name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    read_only BOOLEAN NOT NULL,
    must_change BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE audit (
    id BIGSERIAL PRIMARY KEY,
    at BIGINT NOT NULL,
    operator TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX audit_by_target ON audit(target, id);
"#,
    // Every change to an appliance or a customer, by anyone, tells the
    // servers' API caches (api_cache.rs): `a<id>` or `c<name>`.
    r#"
CREATE FUNCTION levee_notify_appliance() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('levee_api', 'a' || OLD.id::text);
    ELSE
        PERFORM pg_notify('levee_api', 'a' || NEW.id::text);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER appliances_notify AFTER INSERT OR UPDATE OR DELETE ON appliances
    FOR EACH ROW EXECUTE FUNCTION levee_notify_appliance();
CREATE FUNCTION levee_notify_customer() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('levee_api', 'c' || OLD.name);
    ELSE
        PERFORM pg_notify('levee_api', 'c' || NEW.name);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER customers_notify AFTER INSERT OR UPDATE OR DELETE ON customers
    FOR EACH ROW EXECUTE FUNCTION levee_notify_customer();
"#,
    // Replication lag of each replication run (issue 14).
    r#"
ALTER TABLE runs ADD COLUMN lag_secs BIGINT;
"#,
    // The client certificate that logs an operator in (issue 15).
    r#"
ALTER TABLE operators ADD COLUMN cert_sha256 TEXT;
"#,
    // Per-customer offsite quota in bytes, NULL: none (issue 14).
    r#"
ALTER TABLE customers ADD COLUMN offsite_quota BIGINT;
"#,
    // Disaster recovery (issue 14, store/recovery.rs): each appliance's
    // public key and sealed recovery slot, and ops' grants to replacements.
    r#"
CREATE TABLE recovery (
    appliance_id BIGINT PRIMARY KEY REFERENCES appliances(id) ON DELETE CASCADE,
    public_key TEXT,
    repository TEXT,
    sealed TEXT,
    updated_at BIGINT NOT NULL,
    grant_from BIGINT,
    grant_repository TEXT,
    grant_sealed TEXT,
    grant_at BIGINT
);
"#,
    // Where each server of a fleet serves image files to the others
    // (issue 16, image_fetch.rs).
    r#"
CREATE TABLE fleet_servers (
    url TEXT PRIMARY KEY,
    seen_at BIGINT NOT NULL
);
"#,
    // Restores ops asks appliances to run (issue 14, store/restores.rs).
    r#"
CREATE TABLE restores (
    id BIGSERIAL PRIMARY KEY,
    appliance_id BIGINT NOT NULL REFERENCES appliances(id) ON DELETE CASCADE,
    snapshot TEXT NOT NULL,
    path TEXT,
    target TEXT NOT NULL,
    credentials_of TEXT,
    state TEXT NOT NULL,
    reason TEXT,
    requested_at BIGINT NOT NULL,
    started_at BIGINT,
    ended_at BIGINT,
    files BIGINT NOT NULL,
    bytes BIGINT NOT NULL,
    errors BIGINT NOT NULL
);
CREATE INDEX restores_by_appliance ON restores(appliance_id, state, id);
"#,
    // Ops withdraws a restore request (issue 14, store/restores.rs): when
    // and who; the states `cancelling` and `cancelled` need no schema.
    r#"
ALTER TABLE restores ADD COLUMN cancel_asked_at BIGINT;
ALTER TABLE restores ADD COLUMN cancel_asked_by TEXT;
"#,
];

/// Events kept per machine (as in the SQLite store).
pub(super) const EVENTS_KEPT: i64 = 500;

/// Advisory lock key held while migrating, so two `levee` processes
/// starting at once do not both run a migration.
const MIGRATION_LOCK: i64 = 0x006c_6576_6565;

/// Connections kept open at most. Enough for the blocking pool's
/// enrollments and the API's lookups to overlap; a PostgreSQL server gives
/// 100 by default, shared by every `levee serve` and CLI of the fleet.
const POOL_SIZE: usize = 16;

/// How long a call waits for a free connection, a new connection, or a
/// query while the database answers slowly, before giving up with 503.
const TIMEOUT: Duration = Duration::from_secs(5);

/// While the database is down, how often one call tries to reconnect.
pub const RETRY_EVERY: Duration = Duration::from_millis(250);

pub struct PgStore {
    conns: Conns,
    /// Drives the connections the synchronous methods open (the CLI has no
    /// runtime of its own). Taken in `Drop` and shut down without waiting,
    /// which is allowed anywhere, unlike dropping a runtime (the old sync
    /// client's `block_on` in `Drop` aborted `levee serve` on SIGTERM).
    rt: Option<tokio::runtime::Runtime>,
    /// The mTLS API's lookups, kept while PostgreSQL notifications say
    /// they are current (see `api_cache.rs`).
    api_cache: Arc<api_cache::ApiCache>,
    /// What the notification listener connects with.
    listen_with: (tokio_postgres::Config, tls::MakeRustls),
}

/// The pool and whether the database is reachable: what a task on the
/// store's runtime needs of the store (cheap to clone).
#[derive(Clone)]
struct Conns {
    pool: Pool,
    health: Arc<Health>,
    /// `host:port/dbname`, for log lines (never the password).
    target: Arc<str>,
}

/// Whether the database is reachable, as the last connection attempt found.
struct Health {
    down: AtomicBool,
    /// When it went down, and when a call last tried again (ms since `epoch`).
    down_since: Mutex<Option<Instant>>,
    last_try_ms: AtomicU64,
    epoch: Instant,
}

impl PgStore {
    /// Connects (`postgres://user@host/db?sslmode=verify-full&sslrootcert=CA.pem`
    /// or `host=... dbname=...`) and migrates.
    pub fn connect(url: &str) -> Result<PgStore> {
        let (rest, tls_params) = tls::split_tls_params(url).map_err(StoreError::Invalid)?;
        let mut config: tokio_postgres::Config = rest.parse().map_err(|e| {
            StoreError::Invalid(format!(
                "the --database connection string is not valid: {e}"
            ))
        })?;
        // libpq does not use TLS over Unix sockets: neither do we.
        let local = config
            .get_hosts()
            .iter()
            .all(|h| matches!(h, tokio_postgres::config::Host::Unix(_)));
        config.ssl_mode(if local && !config.get_hosts().is_empty() {
            tokio_postgres::config::SslMode::Disable
        } else {
            tls_params.mode.negotiation()
        });
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(TIMEOUT);
        }
        // Dead peers (a pulled cable, a failed-over host) show up as errors
        // within a minute instead of hanging a connection for hours.
        config.keepalives_idle(Duration::from_secs(30));
        if config.get_application_name().is_none() {
            config.application_name("levee");
        }
        let target = describe(&config);
        let tls_config = tls::client_config(&tls_params).map_err(StoreError::Invalid)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("levee-pg")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Invalid(format!("cannot start the store's runtime: {e}")))?;
        let make_tls = tls::MakeRustls::new(tls_config);
        let listen_with = (config.clone(), make_tls.clone());
        let manager = Manager::from_connect(
            config,
            ConnectOnStoreRuntime {
                tls: make_tls,
                rt: rt.handle().clone(),
            },
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(TIMEOUT))
            .create_timeout(Some(TIMEOUT))
            .recycle_timeout(Some(TIMEOUT))
            .build()
            .map_err(|e| StoreError::Invalid(format!("PostgreSQL pool: {e}")))?;
        let epoch = Instant::now();
        let store = PgStore {
            conns: Conns {
                pool,
                health: Arc::new(Health {
                    down: AtomicBool::new(false),
                    down_since: Mutex::new(None),
                    last_try_ms: AtomicU64::new(0),
                    epoch,
                }),
                target: target.into(),
            },
            rt: Some(rt),
            api_cache: Default::default(),
            listen_with,
        };
        store.block(async {
            let mut c = store.conn().await?;
            migrate(&mut c).await
        })?;
        Ok(store)
    }

    /// Closes the pool: idle connections now, busy ones when returned.
    pub fn close(&self) {
        self.conns.pool.close();
    }

    /// The API's lookup of appliance `id` presenting the certificate with
    /// `cert` (sha256 hex): from the cache when it holds an entry that
    /// would let that certificate in, else from the database. A cached
    /// refusal is never trusted: a renewed or newly enrolled appliance's
    /// first request may beat its notification, and must not be refused.
    async fn api_lookup(&self, id: i64, cert: &str) -> Result<api_cache::Entry> {
        if self.api_cache.claim_start() {
            if let Some(rt) = &self.rt {
                let (config, tls) = self.listen_with.clone();
                rt.spawn(api_cache::listen(self.api_cache.clone(), config, tls));
            }
        }
        if let Some(Some(hit)) = self.api_cache.get(id) {
            let a = &hit.0;
            if a.revoked_at.is_none() && a.cert_fingerprint.as_deref() == Some(cert) {
                return Ok(Some(hit));
            }
        }
        let generation = self.api_cache.generation();
        let found = appliances::appliance_with_customer(self, id).await?;
        self.api_cache.put(id, generation, found.clone());
        Ok(found)
    }

    /// Whether the API cache's notification connection is up.
    pub fn api_cache_live(&self) -> bool {
        self.api_cache.is_live()
    }

    /// Runs `f` to completion on the calling thread, inside the store's
    /// runtime (whose worker drives the sockets). Never call it on an async
    /// worker: see the module doc.
    fn block<T>(&self, f: impl Future<Output = Result<T>>) -> Result<T> {
        let Some(rt) = self.rt.as_ref() else {
            return Err(StoreError::Unavailable("the store is closed".into()));
        };
        let _inside = rt.enter();
        futures_executor::block_on(f)
    }

    /// Runs `f` as one task on the store's runtime, beside the connections
    /// it talks to, and waits for it on the calling thread: one wake-up
    /// each way, where [`PgStore::block`] has two per round trip (the
    /// calling thread and the connection's task wake each other for every
    /// message). For the calls that make several round trips under load
    /// (an enrollment). Never call it on an async worker.
    fn run_as_task<T: Send + 'static>(
        &self,
        f: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        let Some(rt) = self.rt.as_ref() else {
            return Err(StoreError::Unavailable("the store is closed".into()));
        };
        match futures_executor::block_on(rt.spawn(f)) {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(StoreError::Unavailable("the store is closing".into())),
        }
    }

    /// A pooled connection, or `Unavailable` at once while the database is
    /// known to be down (one caller per [`RETRY_EVERY`] tries again).
    async fn conn(&self) -> Result<Object> {
        self.conns.conn().await
    }
}

impl Conns {
    /// See [`PgStore::conn`].
    async fn conn(&self) -> Result<Object> {
        let h = &self.health;
        let was_down = h.down.load(Ordering::Acquire);
        if was_down {
            let now = h.epoch.elapsed().as_millis() as u64;
            let last = h.last_try_ms.load(Ordering::Acquire);
            let due = now.saturating_sub(last) >= RETRY_EVERY.as_millis() as u64;
            if !due
                || h.last_try_ms
                    .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
            {
                return Err(StoreError::Unavailable(format!(
                    "PostgreSQL at {} is unreachable",
                    self.target
                )));
            }
        }
        match self.pool.get().await {
            Ok(c) => {
                // The pool may hand out an idle connection from before the
                // outage whose end it has not noticed yet: only a round trip
                // proves the database is back. (Trusting the handout logged
                // "reachable again" mid-outage, then "unreachable" a second
                // time: the flaky restart test.)
                // Only that proof marks it up: a caller that found it up
                // and got a connection proves nothing (it may be a stale
                // one handed out while another caller marks it down, and
                // clearing that would log the outage twice).
                if was_down {
                    if let Err(e) = c.simple_query("").await {
                        let e = StoreError::from(e);
                        drop(Object::take(c));
                        if e.is_unavailable() {
                            self.mark_down(&e);
                        }
                        return Err(e);
                    }
                    self.mark_up();
                }
                Ok(c)
            }
            Err(e) => {
                let e = pool_error(e);
                if matches!(e, StoreError::Unavailable(_)) {
                    self.mark_down(&e);
                }
                Err(e)
            }
        }
    }

    fn mark_down(&self, e: &StoreError) {
        let h = &self.health;
        h.last_try_ms
            .store(h.epoch.elapsed().as_millis() as u64, Ordering::Release);
        if !h.down.swap(true, Ordering::AcqRel) {
            *h.down_since.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            error!(
                database = %self.target,
                error = %e,
                "PostgreSQL unreachable: requests that need it are answered 503 until it is back; retrying every {} ms",
                RETRY_EVERY.as_millis()
            );
        }
    }

    fn mark_up(&self) {
        let h = &self.health;
        if h.down.swap(false, Ordering::AcqRel) {
            let since = h
                .down_since
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            info!(
                database = %self.target,
                down_secs = since.map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0),
                "PostgreSQL reachable again"
            );
        }
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.conns.pool.close();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

type Opened = std::result::Result<
    (tokio_postgres::Client, tokio::task::JoinHandle<()>),
    tokio_postgres::Error,
>;

/// Opens connections on the store's runtime, whoever asks: their sockets
/// and their connection tasks then never depend on the server's workers
/// (a synchronous call blocking those could otherwise wait on itself).
struct ConnectOnStoreRuntime {
    tls: tls::MakeRustls,
    rt: tokio::runtime::Handle,
}

impl deadpool_postgres::Connect for ConnectOnStoreRuntime {
    fn connect(
        &self,
        config: &tokio_postgres::Config,
    ) -> std::pin::Pin<Box<dyn Future<Output = Opened> + Send + '_>> {
        let tls = self.tls.clone();
        let config = config.clone();
        let opened = self.rt.spawn(async move {
            let (client, connection) = config.connect(tls).await?;
            let task = tokio::spawn(async move {
                if let Err(e) = connection.await {
                    debug!(error = %e, "PostgreSQL connection ended");
                }
            });
            Ok((client, task))
        });
        Box::pin(async move {
            match opened.await {
                Ok(r) => r,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                // The store's runtime is shutting down (the store was dropped).
                Err(_) => Err(tokio_postgres::Error::__private_api_timeout()),
            }
        })
    }
}

/// `host:port/dbname` of a configuration, for logs.
fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{host}:{port}/{}",
        config.get_dbname().unwrap_or("(default)")
    )
}

/// A pool error as a store error: anything about reaching the database is
/// `Unavailable`.
fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Backend(e) => StoreError::from(e),
        PoolError::Timeout(kind) => StoreError::Unavailable(format!(
            "PostgreSQL did not answer in {} s ({kind:?})",
            TIMEOUT.as_secs()
        )),
        PoolError::Closed => StoreError::Unavailable("the store is closing".into()),
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// Runs `f` in a transaction whose commit does not wait for the WAL flush,
/// for rows that only record what happened (events, last seen): a crash
/// may lose the last few of them, never tokens, certificates or states.
pub(super) async fn relaxed_tx(c: &mut Object) -> Result<deadpool_postgres::Transaction<'_>> {
    let tx = c.transaction().await?;
    tx.batch_execute("SET LOCAL synchronous_commit = off")
        .await?;
    Ok(tx)
}

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// The statement helpers: each statement prepared once per connection.
pub(super) async fn query_opt(
    c: &impl GenericClient,
    sql: &str,
    p: Params<'_>,
) -> Result<Option<Row>> {
    let st = c.prepare_cached(sql).await?;
    Ok(c.query_opt(&st, p).await?)
}

pub(super) async fn query_one(c: &impl GenericClient, sql: &str, p: Params<'_>) -> Result<Row> {
    let st = c.prepare_cached(sql).await?;
    Ok(c.query_one(&st, p).await?)
}

pub(super) async fn query(c: &impl GenericClient, sql: &str, p: Params<'_>) -> Result<Vec<Row>> {
    let st = c.prepare_cached(sql).await?;
    Ok(c.query(&st, p).await?)
}

pub(super) async fn execute(c: &impl GenericClient, sql: &str, p: Params<'_>) -> Result<u64> {
    let st = c.prepare_cached(sql).await?;
    Ok(c.execute(&st, p).await?)
}

async fn migrate(c: &mut Object) -> Result<()> {
    let tx = c.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS levee_schema (version BIGINT NOT NULL)")
        .await?;
    let done: i64 = match tx
        .query_opt("SELECT version FROM levee_schema", &[])
        .await?
    {
        Some(row) => row.try_get(0)?,
        None => {
            tx.execute("INSERT INTO levee_schema (version) VALUES (0)", &[])
                .await?;
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
        tx.batch_execute(sql).await?;
        tx.execute("UPDATE levee_schema SET version = $1", &[&(i as i64 + 1)])
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

pub(super) fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

pub(super) fn opt_u64(row: &Row, idx: usize) -> Result<Option<u64>> {
    Ok(row.try_get::<_, Option<i64>>(idx)?.map(|v| v as u64))
}

impl Store for PgStore {
    fn appliance_with_customer_async<'a>(&'a self, id: i64, cert: &'a str) -> ApiLookup<'a> {
        Box::pin(self.api_lookup(id, cert))
    }

    fn enroll_known(
        &self,
        e: &KnownEnrollment,
        issuable: Issuable,
        sign: Signer,
    ) -> Result<KnownEnrolled> {
        self.enroll_in_one_transaction(e, issuable, sign)
    }

    fn shared(&self) -> bool {
        true
    }

    fn close(&self) {
        PgStore::close(self);
    }

    fn database_bytes(&self) -> Result<u64> {
        self.block(async {
            let c = self.conn().await?;
            let n: i64 = query_one(&c, "SELECT pg_database_size(current_database())", &[])
                .await?
                .try_get(0)?;
            Ok(n.max(0) as u64)
        })
    }
}

/// A PostgreSQL error with its causes, and what to do about the usual
/// connection failures.
pub(super) fn describe_error(e: &tokio_postgres::Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let m = s.to_string();
        if !msg.contains(&m) {
            msg.push_str(": ");
            msg.push_str(&m);
        }
        source = s.source();
    }
    let lower = msg.to_lowercase();
    let hint = if lower.contains("server does not support tls") {
        " (the connection string asks for TLS with sslmode=require or verify-*, and this server has ssl off: turn it on, or use sslmode=prefer on a network you trust)"
    } else if lower.contains("unknownissuer")
        || lower.contains("unknown issuer")
        || lower.contains("badsignature")
    {
        " (the database server's certificate is not signed by the CA in sslrootcert: give the CA that signed it)"
    } else if lower.contains("notvalidforname") || lower.contains("not valid for name") {
        " (the database server's certificate does not name the host in the connection string: connect by a name it has, or use sslmode=verify-ca)"
    } else if lower.contains("expired") {
        " (the database server's certificate has expired)"
    } else {
        ""
    };
    msg.push_str(hint);
    msg
}
