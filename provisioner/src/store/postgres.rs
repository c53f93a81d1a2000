//! The PostgreSQL store (`--database postgres://...`), for deployments where
//! one machine is not enough or the CLI runs elsewhere.
//!
//! The sync `postgres` client drives its own small runtime; calling it from
//! inside a tokio runtime would panic, so every call goes through
//! [`PgStore::with`], which steps out of the async context first.

use std::net::Ipv4Addr;
use std::sync::Mutex;

use levee_proto::config::CustomerConfig;
use levee_proto::report::StatusReport;
use levee_pxe::boot::MacAddr;
use levee_pxe::dhcp::Lease;
use postgres::{Client, GenericClient, NoTls, Row};

use super::{
    check_approval, judge_token, no_appliance, no_customer, now, validate_name, Appliance,
    ApplianceState, CustomerRecord, Event, Heartbeat, ImageRecord, Profile, Registration, Result,
    Store, StoreError, TokenCheck, Transport, TOKEN_KEEP_SECS,
};

/// Ordered schema migrations; `levee_schema` records how many ran.
/// Append only: a released migration is never edited.
const MIGRATIONS: &[&str] = &[
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
const EVENTS_KEPT: i64 = 500;

/// Advisory lock key held while migrating, so two `levee` processes
/// starting at once do not both run a migration.
const MIGRATION_LOCK: i64 = 0x006c_6576_6565;

/// Connections kept open to the database. `levee serve` handles many
/// appliances at once; one connection serialized every request behind one
/// round trip and one commit at a time (66 enrollments/s in bench-api).
/// Opened on first use, so a CLI command opens only the one it needs.
const POOL_SIZE: usize = 8;

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
fn relaxed<T>(
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
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
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

fn migrate(client: &mut Client) -> Result<()> {
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

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn opt_u64(row: &Row, idx: usize) -> Result<Option<u64>> {
    Ok(row.try_get::<_, Option<i64>>(idx)?.map(|v| v as u64))
}

fn image_row(row: &Row) -> Result<ImageRecord> {
    let manifest: String = row.try_get(3)?;
    Ok(ImageRecord {
        id: row.try_get(0)?,
        name: row.try_get(1)?,
        version: row.try_get(2)?,
        manifest: serde_json::from_str(&manifest).map_err(corrupt)?,
        imported_at: row.try_get::<_, i64>(4)? as u64,
    })
}

fn profile_row(row: &Row) -> Result<Profile> {
    let transport: String = row.try_get(5)?;
    Ok(Profile {
        name: row.try_get(0)?,
        image: row.try_get(1)?,
        kernel: row.try_get(2)?,
        initrd: row.try_get(3)?,
        cmdline: row.try_get(4)?,
        transport: Transport::parse(&transport)?,
    })
}

fn customer_row(row: &Row) -> Result<CustomerRecord> {
    customer_row_at(row, 0)
}

/// A customer record from columns `at..at + 4` (name, config, created_at,
/// updated_at).
fn customer_row_at(row: &Row, at: usize) -> Result<CustomerRecord> {
    let config: String = row.try_get(at + 1)?;
    Ok(CustomerRecord {
        name: row.try_get(at)?,
        config: serde_json::from_str(&config).map_err(corrupt)?,
        created_at: row.try_get::<_, i64>(at + 2)? as u64,
        updated_at: row.try_get::<_, i64>(at + 3)? as u64,
    })
}

const APPLIANCE_COLS: &str =
    "id, mac, serial, profile, registered, first_seen, last_seen, last_report, last_report_at, \
     customer, state, state_reason, image_version, slot, last_heartbeat, revoked_at, replaced_by, replaces, \
     cert_fingerprint, cert_not_after, pending_key, reinstall";

fn appliance_row(row: &Row) -> Result<Appliance> {
    let mac: String = row.try_get(1)?;
    let report: Option<String> = row.try_get(7)?;
    let state: String = row.try_get(10)?;
    Ok(Appliance {
        id: row.try_get(0)?,
        mac: mac.parse().map_err(corrupt)?,
        serial: row.try_get(2)?,
        profile: row.try_get(3)?,
        registered: row.try_get(4)?,
        first_seen: row.try_get::<_, i64>(5)? as u64,
        last_seen: opt_u64(row, 6)?,
        last_report: report
            .map(|r| serde_json::from_str(&r))
            .transpose()
            .map_err(corrupt)?,
        last_report_at: opt_u64(row, 8)?,
        customer: row.try_get(9)?,
        state: ApplianceState::parse(&state)?,
        state_reason: row.try_get(11)?,
        image_version: row.try_get(12)?,
        slot: row.try_get(13)?,
        last_heartbeat: opt_u64(row, 14)?,
        revoked_at: opt_u64(row, 15)?,
        replaced_by: row.try_get(16)?,
        replaces: row.try_get(17)?,
        cert_fingerprint: row.try_get(18)?,
        cert_not_after: opt_u64(row, 19)?,
        pending_key: row.try_get(20)?,
        reinstall: row.try_get(21)?,
    })
}

fn event<C: GenericClient>(c: &mut C, mac: MacAddr, step: &str, detail: &str) -> Result<()> {
    c.execute(
        "INSERT INTO events (mac, at, step, detail) VALUES ($1, $2, $3, $4)",
        &[&mac.to_string(), &(now() as i64), &step, &detail],
    )?;
    Ok(())
}

fn get_by_id<C: GenericClient>(c: &mut C, id: i64) -> Result<Appliance> {
    let row = c
        .query_opt(
            &format!("SELECT {APPLIANCE_COLS} FROM appliances WHERE id = $1"),
            &[&id],
        )?
        .ok_or_else(|| no_appliance(format!("id {id}")))?;
    appliance_row(&row)
}

fn get_by_mac<C: GenericClient>(c: &mut C, mac: MacAddr) -> Result<Option<Appliance>> {
    c.query_opt(
        &format!("SELECT {APPLIANCE_COLS} FROM appliances WHERE mac = $1"),
        &[&mac.to_string()],
    )?
    .map(|r| appliance_row(&r))
    .transpose()
}

fn require_customer<C: GenericClient>(c: &mut C, name: &str) -> Result<()> {
    c.query_opt("SELECT name FROM customers WHERE name = $1", &[&name])?
        .map(|_| ())
        .ok_or_else(|| no_customer(name))
}

impl Store for PgStore {
    fn put_image(&self, image: &ImageRecord) -> Result<()> {
        let manifest = serde_json::to_string(&image.manifest)
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        self.with(|c| {
            c.execute(
                "INSERT INTO images (id, name, version, manifest, imported_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT(id) DO UPDATE SET manifest = excluded.manifest, imported_at = excluded.imported_at",
                &[&image.id, &image.name, &image.version, &manifest, &(image.imported_at as i64)],
            )?;
            Ok(())
        })
    }

    fn image(&self, id: &str) -> Result<Option<ImageRecord>> {
        self.with(|c| {
            c.query_opt(
                "SELECT id, name, version, manifest, imported_at FROM images WHERE id = $1",
                &[&id],
            )?
            .map(|r| image_row(&r))
            .transpose()
        })
    }

    fn images(&self) -> Result<Vec<ImageRecord>> {
        self.with(|c| {
            c.query(
                "SELECT id, name, version, manifest, imported_at FROM images ORDER BY imported_at, id",
                &[],
            )?
            .iter()
            .map(image_row)
            .collect()
        })
    }

    fn put_profile(&self, p: &Profile) -> Result<()> {
        validate_name("profile", &p.name)?;
        self.with(|c| {
            if c.query_opt("SELECT id FROM images WHERE id = $1", &[&p.image])?.is_none() {
                return Err(StoreError::NotFound {
                    what: "image",
                    name: p.image.clone(),
                    hint: ": import it first with `levee image import DIR`",
                });
            }
            c.execute(
                "INSERT INTO profiles (name, image, kernel, initrd, cmdline, transport)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT(name) DO UPDATE SET image = excluded.image, kernel = excluded.kernel,
                   initrd = excluded.initrd, cmdline = excluded.cmdline, transport = excluded.transport",
                &[&p.name, &p.image, &p.kernel, &p.initrd, &p.cmdline, &p.transport.as_str()],
            )?;
            Ok(())
        })
    }

    fn profile(&self, name: &str) -> Result<Option<Profile>> {
        self.with(|c| {
            c.query_opt(
                "SELECT name, image, kernel, initrd, cmdline, transport FROM profiles WHERE name = $1",
                &[&name],
            )?
            .map(|r| profile_row(&r))
            .transpose()
        })
    }

    fn profiles(&self) -> Result<Vec<Profile>> {
        self.with(|c| {
            c.query(
                "SELECT name, image, kernel, initrd, cmdline, transport FROM profiles ORDER BY name",
                &[],
            )?
            .iter()
            .map(profile_row)
            .collect()
        })
    }

    fn delete_profile(&self, name: &str) -> Result<()> {
        self.with(|c| {
            let users: i64 = c
                .query_one("SELECT COUNT(*) FROM appliances WHERE profile = $1", &[&name])?
                .try_get(0)?;
            if users > 0 {
                return Err(StoreError::Invalid(format!(
                    "profile `{name}` is used by {users} appliance(s): move them with `levee appliance set MAC --profile OTHER` first"
                )));
            }
            if c.execute("DELETE FROM profiles WHERE name = $1", &[&name])? == 0 {
                return Err(StoreError::NotFound {
                    what: "profile",
                    name: name.to_string(),
                    hint: ": `levee profile list` shows the profiles",
                });
            }
            Ok(())
        })
    }

    fn put_customer(&self, config: &CustomerConfig) -> Result<CustomerRecord> {
        validate_name("customer", &config.customer)?;
        let json = serde_json::to_string(config).map_err(|e| StoreError::Invalid(e.to_string()))?;
        self.with(|c| {
            let row = c.query_one(
                "INSERT INTO customers (name, config, created_at, updated_at) VALUES ($1, $2, $3, $3)
                 ON CONFLICT(name) DO UPDATE SET config = excluded.config, updated_at = excluded.updated_at
                 RETURNING name, config, created_at, updated_at",
                &[&config.customer, &json, &(now() as i64)],
            )?;
            customer_row(&row)
        })
    }

    fn customer(&self, name: &str) -> Result<Option<CustomerRecord>> {
        // This and appliance_by_id are every mTLS request's lookups.
        self.query_prepared(
            "SELECT name, config, created_at, updated_at FROM customers WHERE name = $1",
            &[&name],
        )?
        .map(|r| customer_row(&r))
        .transpose()
    }

    fn customers(&self) -> Result<Vec<CustomerRecord>> {
        self.with(|c| {
            c.query(
                "SELECT name, config, created_at, updated_at FROM customers ORDER BY name",
                &[],
            )?
            .iter()
            .map(customer_row)
            .collect()
        })
    }

    fn register_appliance(&self, mac: MacAddr, reg: &Registration) -> Result<Appliance> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            if let Some(cust) = reg.customer {
                require_customer(&mut tx, cust)?;
            }
            if let Some(a) = get_by_mac(&mut tx, mac)? {
                if a.revoked_at.is_some() {
                    return Err(StoreError::Invalid(format!(
                        "appliance {mac} (id {}) is retired and its credential revoked: `levee appliance remove {mac}` first to register it afresh",
                        a.id
                    )));
                }
            }
            tx.execute(
                "INSERT INTO appliances (mac, serial, profile, customer, registered, first_seen)
                 VALUES ($1, $2, $3, $4, TRUE, $5)
                 ON CONFLICT(mac) DO UPDATE SET registered = TRUE,
                   serial = COALESCE(excluded.serial, appliances.serial),
                   profile = COALESCE(excluded.profile, appliances.profile),
                   customer = COALESCE(excluded.customer, appliances.customer)",
                &[&mac.to_string(), &reg.serial, &reg.profile, &reg.customer, &(now() as i64)],
            )?;
            let detail = match reg.customer {
                Some(cust) => format!("registered for customer {cust}"),
                None => "registered".to_string(),
            };
            event(&mut tx, mac, "registered", &detail)?;
            let a = get_by_mac(&mut tx, mac)?
                .ok_or_else(|| StoreError::Corrupt("appliance vanished".into()))?;
            tx.commit()?;
            Ok(a)
        })
    }

    fn approve_appliance(&self, mac: MacAddr, customer: &str) -> Result<Appliance> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            require_customer(&mut tx, customer)?;
            let a = check_approval(get_by_mac(&mut tx, mac)?, mac, customer)?;
            tx.execute(
                "UPDATE appliances SET registered = TRUE, customer = $2 WHERE id = $1",
                &[&a.id, &customer],
            )?;
            event(
                &mut tx,
                mac,
                "approved",
                &format!("approved for customer {customer}"),
            )?;
            let a = get_by_id(&mut tx, a.id)?;
            tx.commit()?;
            Ok(a)
        })
    }

    fn set_appliance_state(
        &self,
        id: i64,
        state: ApplianceState,
        reason: Option<&str>,
    ) -> Result<Appliance> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            let a = get_by_id(&mut tx, id)?;
            if a.revoked_at.is_some() && state != ApplianceState::Retired {
                return Err(StoreError::Invalid(format!(
                    "appliance {} (id {id}) is retired",
                    a.mac
                )));
            }
            tx.execute(
                "UPDATE appliances SET state = $2, state_reason = $3,
                   reinstall = reinstall AND $2 <> 'installed' WHERE id = $1",
                &[&id, &state.as_str(), &reason],
            )?;
            let detail = match reason {
                Some(r) => format!("{}: {r}", state.as_str()),
                None => state.as_str().to_string(),
            };
            event(&mut tx, a.mac, "state", &detail)?;
            let a = get_by_id(&mut tx, id)?;
            tx.commit()?;
            Ok(a)
        })
    }

    fn record_heartbeat(&self, id: i64, hb: &Heartbeat) -> Result<()> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            let a = get_by_id(&mut tx, id)?;
            tx.execute(
                "UPDATE appliances SET last_heartbeat = $2, last_seen = $2,
                   image_version = COALESCE($3, image_version), slot = COALESCE($4, slot) WHERE id = $1",
                &[&id, &(now() as i64), &hb.image_version, &hb.slot],
            )?;
            let changed = (hb.image_version.is_some()
                && hb.image_version != a.image_version.as_deref())
                || (hb.slot.is_some() && hb.slot != a.slot.as_deref());
            if changed {
                let detail = format!(
                    "image {} on slot {}",
                    hb.image_version.or(a.image_version.as_deref()).unwrap_or("-"),
                    hb.slot.or(a.slot.as_deref()).unwrap_or("-")
                );
                event(&mut tx, a.mac, "heartbeat", &detail)?;
            }
            if a.state == ApplianceState::Installing && hb.slot.is_some() {
                tx.execute(
                    "UPDATE appliances SET state = 'installed', state_reason = NULL, reinstall = FALSE WHERE id = $1",
                    &[&id],
                )?;
                event(&mut tx, a.mac, "state", &super::came_back_detail(hb))?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn set_pending_key(&self, id: i64, key_sha256: &str) -> Result<Appliance> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            let a = get_by_id(&mut tx, id)?;
            tx.execute(
                "UPDATE appliances SET pending_key = $2 WHERE id = $1",
                &[&id, &key_sha256],
            )?;
            event(
                &mut tx,
                a.mac,
                "pending-key",
                &format!("waiting for approval with key sha256 {key_sha256}"),
            )?;
            let a = get_by_id(&mut tx, id)?;
            tx.commit()?;
            Ok(a)
        })
    }

    fn set_reinstall(&self, id: i64, reinstall: bool) -> Result<Appliance> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            let a = get_by_id(&mut tx, id)?;
            super::check_not_retired(&a)?;
            tx.execute(
                "UPDATE appliances SET reinstall = $2 WHERE id = $1",
                &[&id, &reinstall],
            )?;
            event(
                &mut tx,
                a.mac,
                "reinstall",
                super::reinstall_detail(reinstall),
            )?;
            let a = get_by_id(&mut tx, id)?;
            tx.commit()?;
            Ok(a)
        })
    }

    fn replace_appliance(&self, old: i64, new_mac: MacAddr) -> Result<Appliance> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            let o = get_by_id(&mut tx, old)?;
            let existing = get_by_mac(&mut tx, new_mac)?;
            let plan = super::plan_replace(&o, existing.as_ref(), new_mac)?;
            let t = now() as i64;
            let new_id: i64 = tx
                .query_one(
                    "INSERT INTO appliances (mac, profile, customer, registered, first_seen, replaces)
                     VALUES ($1, $2, $3, TRUE, $4, $5)
                     ON CONFLICT(mac) DO UPDATE SET registered = TRUE, profile = excluded.profile,
                       customer = excluded.customer, replaces = excluded.replaces
                     RETURNING id",
                    &[&new_mac.to_string(), &o.profile, &o.customer, &t, &o.id],
                )?
                .try_get(0)?;
            tx.execute(
                "UPDATE appliances SET state = 'retired', state_reason = $2, revoked_at = $3, replaced_by = $4 WHERE id = $1",
                &[&o.id, &plan.old_reason, &t, &new_id],
            )?;
            event(&mut tx, o.mac, "replaced", &plan.old_reason)?;
            event(&mut tx, new_mac, "replaces", &plan.new_detail)?;
            let n = get_by_id(&mut tx, new_id)?;
            tx.commit()?;
            Ok(n)
        })
    }

    fn retire_appliance(&self, id: i64, reason: &str) -> Result<Appliance> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            let a = get_by_id(&mut tx, id)?;
            if a.revoked_at.is_some() {
                return Err(StoreError::Invalid(format!("appliance {} (id {id}) is already retired", a.mac)));
            }
            tx.execute(
                "UPDATE appliances SET state = 'retired', state_reason = $2, revoked_at = $3 WHERE id = $1",
                &[&id, &reason, &(now() as i64)],
            )?;
            event(&mut tx, a.mac, "retired", reason)?;
            let a = get_by_id(&mut tx, id)?;
            tx.commit()?;
            Ok(a)
        })
    }

    fn appliance_by_id(&self, id: i64) -> Result<Option<Appliance>> {
        self.query_prepared(
            &format!("SELECT {APPLIANCE_COLS} FROM appliances WHERE id = $1"),
            &[&id],
        )?
        .map(|r| appliance_row(&r))
        .transpose()
    }

    fn appliance_with_customer(
        &self,
        id: i64,
    ) -> Result<Option<(Appliance, Option<CustomerRecord>)>> {
        static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let sql = SQL.get_or_init(|| {
            let cols: Vec<String> = APPLIANCE_COLS
                .split(',')
                .map(|c| format!("a.{}", c.trim()))
                .collect();
            format!(
                "SELECT {}, c.name, c.config, c.created_at, c.updated_at
                 FROM appliances a LEFT JOIN customers c ON c.name = a.customer WHERE a.id = $1",
                cols.join(", ")
            )
        });
        let Some(row) = self.query_prepared(sql, &[&id])? else {
            return Ok(None);
        };
        let a = appliance_row(&row)?;
        let base = APPLIANCE_COLS.split(',').count();
        let has_customer = row.try_get::<_, Option<String>>(base)?.is_some();
        let c = if has_customer {
            Some(customer_row_at(&row, base)?)
        } else {
            None
        };
        Ok(Some((a, c)))
    }

    fn appliance_seen(&self, mac: MacAddr) -> Result<Appliance> {
        // Seen-at is a record of what happened: no wait for the flush.
        self.with(|c| {
            relaxed(c, |tx| {
            let t = now() as i64;
            let row = tx.query_one(
                &format!(
                    "INSERT INTO appliances (mac, registered, first_seen, last_seen) VALUES ($1, FALSE, $2, $2)
                     ON CONFLICT(mac) DO UPDATE SET last_seen = excluded.last_seen
                     RETURNING {APPLIANCE_COLS}"
                ),
                &[&mac.to_string(), &t],
            )?;
            appliance_row(&row)
            })
        })
    }

    fn set_appliance_profile(&self, mac: MacAddr, profile: Option<&str>) -> Result<()> {
        self.with(|c| {
            let n = c.execute(
                "UPDATE appliances SET profile = $2 WHERE mac = $1",
                &[&mac.to_string(), &profile],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound {
                    what: "appliance",
                    name: mac.to_string(),
                    hint: ": register it with `levee appliance register --mac MAC`",
                });
            }
            Ok(())
        })
    }

    fn appliance(&self, mac: MacAddr) -> Result<Option<Appliance>> {
        self.with(|c| get_by_mac(c, mac))
    }

    fn appliances(&self) -> Result<Vec<Appliance>> {
        self.with(|c| {
            c.query(
                &format!("SELECT {APPLIANCE_COLS} FROM appliances ORDER BY id"),
                &[],
            )?
            .iter()
            .map(appliance_row)
            .collect()
        })
    }

    fn remove_appliance(&self, mac: MacAddr) -> Result<()> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            if tx.execute("DELETE FROM appliances WHERE mac = $1", &[&mac.to_string()])? == 0 {
                return Err(StoreError::NotFound {
                    what: "appliance",
                    name: mac.to_string(),
                    hint: "",
                });
            }
            tx.execute("DELETE FROM events WHERE mac = $1", &[&mac.to_string()])?;
            tx.commit()?;
            Ok(())
        })
    }

    fn record_report(&self, report: &StatusReport, mac: MacAddr) -> Result<()> {
        let json = serde_json::to_string(report).map_err(|e| StoreError::Invalid(e.to_string()))?;
        self.with(|c| {
            c.execute(
                "INSERT INTO appliances (mac, registered, first_seen, last_seen, last_report, last_report_at)
                 VALUES ($1, FALSE, $2, $2, $3, $2)
                 ON CONFLICT(mac) DO UPDATE SET last_seen = $2, last_report = $3, last_report_at = $2",
                &[&mac.to_string(), &(now() as i64), &json],
            )?;
            Ok(())
        })
    }

    fn add_event(&self, mac: MacAddr, step: &str, detail: &str) -> Result<()> {
        let mac = mac.to_string();
        self.with(|c| {
            relaxed(c, |tx| {
            let id: i64 = tx
                .query_one(
                    "INSERT INTO events (mac, at, step, detail) VALUES ($1, $2, $3, $4) RETURNING id",
                    &[&mac, &(now() as i64), &step, &detail],
                )?
                .try_get(0)?;
            // Cheap trim, as in the SQLite store.
            if id % 50 == 0 {
                tx.execute(
                    "DELETE FROM events WHERE mac = $1 AND id <= (
                       SELECT id FROM events WHERE mac = $1 ORDER BY id DESC LIMIT 1 OFFSET $2)",
                    &[&mac, &EVENTS_KEPT],
                )?;
            }
            Ok(())
            })
        })
    }

    fn events(&self, mac: MacAddr, limit: usize) -> Result<Vec<Event>> {
        self.with(|c| {
            c.query(
                "SELECT at, step, detail FROM (
                   SELECT id, at, step, detail FROM events WHERE mac = $1 ORDER BY id DESC LIMIT $2) e
                 ORDER BY id",
                &[&mac.to_string(), &(limit as i64)],
            )?
            .iter()
            .map(|r| {
                Ok(Event {
                    at: r.try_get::<_, i64>(0)? as u64,
                    step: r.try_get(1)?,
                    detail: r.try_get(2)?,
                })
            })
            .collect()
        })
    }

    fn record_certificate(
        &self,
        id: i64,
        fingerprint: &str,
        not_after: u64,
        enrolled: bool,
    ) -> Result<Appliance> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            let a = get_by_id(&mut tx, id)?;
            if a.revoked_at.is_some() {
                return Err(StoreError::Invalid(format!(
                    "appliance {} (id {id}) is retired: its credential is revoked",
                    a.mac
                )));
            }
            tx.execute(
                "UPDATE appliances SET cert_fingerprint = $2, cert_not_after = $3 WHERE id = $1",
                &[&id, &fingerprint, &(not_after as i64)],
            )?;
            let detail = format!("certificate sha256 {fingerprint}");
            if enrolled {
                tx.execute(
                    "UPDATE appliances SET state = 'enrolled', state_reason = NULL, pending_key = NULL WHERE id = $1",
                    &[&id],
                )?;
                event(&mut tx, a.mac, "enrolled", &detail)?;
            } else {
                event(&mut tx, a.mac, "renewed", &detail)?;
            }
            let a = get_by_id(&mut tx, id)?;
            tx.commit()?;
            Ok(a)
        })
    }

    fn put_token(&self, token_sha256: &str, mac: MacAddr, expires_at: u64) -> Result<()> {
        self.with(|c| {
            let at = now();
            c.execute(
                "DELETE FROM enroll_tokens WHERE expires_at < $1",
                &[&(at.saturating_sub(TOKEN_KEEP_SECS) as i64)],
            )?;
            c.execute(
                "INSERT INTO enroll_tokens (token_sha256, mac, created_at, expires_at) VALUES ($1, $2, $3, $4)",
                &[&token_sha256, &mac.to_string(), &(at as i64), &(expires_at as i64)],
            )?;
            Ok(())
        })
    }

    fn take_token(&self, token_sha256: &str, mac: MacAddr, at: u64) -> Result<TokenCheck> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            // FOR UPDATE: a second request with the same token waits here and
            // then sees it used.
            let row = tx
                .query_opt(
                    "SELECT mac, expires_at, used_at FROM enroll_tokens WHERE token_sha256 = $1 FOR UPDATE",
                    &[&token_sha256],
                )?
                .map(|r| {
                    (
                        r.get::<_, String>(0),
                        r.get::<_, i64>(1) as u64,
                        r.get::<_, Option<i64>>(2).map(|v| v as u64),
                    )
                });
            let verdict = judge_token(row, mac, at);
            if verdict == TokenCheck::Valid {
                tx.execute(
                    "UPDATE enroll_tokens SET used_at = $2 WHERE token_sha256 = $1",
                    &[&token_sha256, &(at as i64)],
                )?;
            }
            tx.commit()?;
            Ok(verdict)
        })
    }

    fn leases(&self) -> Result<Vec<Lease>> {
        self.with(|c| {
            c.query("SELECT mac, ip, expires FROM leases", &[])?
                .iter()
                .map(|r| {
                    let mac: String = r.try_get(0)?;
                    let ip: String = r.try_get(1)?;
                    Ok(Lease {
                        mac: mac.parse().map_err(corrupt)?,
                        ip: ip.parse::<Ipv4Addr>().map_err(corrupt)?,
                        expires_unix: r.try_get::<_, i64>(2)? as u64,
                    })
                })
                .collect()
        })
    }

    fn save_lease(&self, lease: &Lease) -> Result<()> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            // An address belongs to one MAC at a time: drop any stale holder.
            tx.execute(
                "DELETE FROM leases WHERE ip = $1 AND mac <> $2",
                &[&lease.ip.to_string(), &lease.mac.to_string()],
            )?;
            tx.execute(
                "INSERT INTO leases (mac, ip, expires) VALUES ($1, $2, $3)
                 ON CONFLICT(mac) DO UPDATE SET ip = excluded.ip, expires = excluded.expires",
                &[
                    &lease.mac.to_string(),
                    &lease.ip.to_string(),
                    &(lease.expires_unix as i64),
                ],
            )?;
            tx.commit()?;
            Ok(())
        })
    }
}
