//! The embedded store: one SQLite file in `--data-dir`.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use levee_proto::report::StatusReport;
use levee_pxe::boot::MacAddr;
use levee_pxe::dhcp::Lease;
use rusqlite::{params, Connection, OptionalExtension, Row};

use levee_proto::config::CustomerConfig;

use super::{
    check_approval, judge_token, no_appliance, no_customer, now, validate_name, Appliance,
    ApplianceState, CustomerRecord, Event, Heartbeat, ImageRecord, Profile, Registration, Result,
    Store, StoreError, TokenCheck, Transport, TOKEN_KEEP_SECS,
};

/// Ordered schema migrations; `PRAGMA user_version` records how many ran.
/// Append only: a released migration is never edited.
const MIGRATIONS: &[&str] = &[
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
];

/// Events kept per machine.
const EVENTS_KEPT: i64 = 500;

/// Statements through rusqlite's per-connection statement cache: the mTLS
/// API runs the same few statements thousands of times a second, and
/// parsing their SQL anew was the largest part of its CPU (perf, bench-api).
trait Cached {
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
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::Invalid(format!(
                "cannot create data directory {}: {e}",
                data_dir.display()
            ))
        })?;
        let conn = Connection::open(data_dir.join("levee.sqlite"))?;
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

fn corrupt(e: impl std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(e.to_string().into())
}

fn mac_col(row: &Row, idx: usize) -> rusqlite::Result<MacAddr> {
    let s: String = row.get(idx)?;
    s.parse().map_err(corrupt)
}

fn image_row(row: &Row) -> rusqlite::Result<ImageRecord> {
    let manifest: String = row.get(3)?;
    Ok(ImageRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        version: row.get(2)?,
        manifest: serde_json::from_str(&manifest).map_err(corrupt)?,
        imported_at: row.get::<_, i64>(4)? as u64,
    })
}

fn profile_row(row: &Row) -> rusqlite::Result<Profile> {
    let transport: String = row.get(5)?;
    Ok(Profile {
        name: row.get(0)?,
        image: row.get(1)?,
        kernel: row.get(2)?,
        initrd: row.get(3)?,
        cmdline: row.get(4)?,
        transport: Transport::parse(&transport).map_err(corrupt)?,
    })
}

const APPLIANCE_COLS: &str =
    "id, mac, serial, profile, registered, first_seen, last_seen, last_report, last_report_at, \
     customer, state, state_reason, image_version, slot, last_heartbeat, revoked_at, replaced_by, replaces, \
     cert_fingerprint, cert_not_after, pending_key, reinstall";

fn opt_u64(row: &Row, idx: usize) -> rusqlite::Result<Option<u64>> {
    Ok(row.get::<_, Option<i64>>(idx)?.map(|v| v as u64))
}

fn customer_row(row: &Row) -> rusqlite::Result<CustomerRecord> {
    let config: String = row.get(1)?;
    Ok(CustomerRecord {
        name: row.get(0)?,
        config: serde_json::from_str(&config).map_err(corrupt)?,
        created_at: row.get::<_, i64>(2)? as u64,
        updated_at: row.get::<_, i64>(3)? as u64,
    })
}

/// Appends a history entry inside a transaction (trimming is left to
/// [`Store::add_event`], which runs far more often).
fn event(conn: &Connection, mac: MacAddr, step: &str, detail: &str) -> rusqlite::Result<()> {
    conn.execute_cached(
        "INSERT INTO events (mac, at, step, detail) VALUES (?1, ?2, ?3, ?4)",
        params![mac.to_string(), now() as i64, step, detail],
    )?;
    Ok(())
}

fn get_by_id(conn: &Connection, id: i64) -> Result<Appliance> {
    conn.query_row_cached(
        &format!("SELECT {APPLIANCE_COLS} FROM appliances WHERE id = ?1"),
        [id],
        appliance_row,
    )
    .optional()?
    .ok_or_else(|| no_appliance(format!("id {id}")))
}

fn get_by_mac(conn: &Connection, mac: MacAddr) -> Result<Option<Appliance>> {
    Ok(conn
        .query_row_cached(
            &format!("SELECT {APPLIANCE_COLS} FROM appliances WHERE mac = ?1"),
            [mac.to_string()],
            appliance_row,
        )
        .optional()?)
}

fn require_customer(conn: &Connection, name: &str) -> Result<()> {
    let known: Option<String> = conn
        .query_row_cached("SELECT name FROM customers WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .optional()?;
    known.map(|_| ()).ok_or_else(|| no_customer(name))
}

fn appliance_row(row: &Row) -> rusqlite::Result<Appliance> {
    let report: Option<String> = row.get(7)?;
    Ok(Appliance {
        id: row.get(0)?,
        mac: mac_col(row, 1)?,
        serial: row.get(2)?,
        profile: row.get(3)?,
        registered: row.get::<_, i64>(4)? != 0,
        first_seen: row.get::<_, i64>(5)? as u64,
        last_seen: row.get::<_, Option<i64>>(6)?.map(|v| v as u64),
        last_report: report
            .map(|r| serde_json::from_str(&r))
            .transpose()
            .map_err(corrupt)?,
        last_report_at: opt_u64(row, 8)?,
        customer: row.get(9)?,
        state: ApplianceState::parse(&row.get::<_, String>(10)?).map_err(corrupt)?,
        state_reason: row.get(11)?,
        image_version: row.get(12)?,
        slot: row.get(13)?,
        last_heartbeat: opt_u64(row, 14)?,
        revoked_at: opt_u64(row, 15)?,
        replaced_by: row.get(16)?,
        replaces: row.get(17)?,
        cert_fingerprint: row.get(18)?,
        cert_not_after: opt_u64(row, 19)?,
        pending_key: row.get(20)?,
        reinstall: row.get::<_, i64>(21)? != 0,
    })
}

impl Store for SqliteStore {
    fn reads_in_process(&self) -> bool {
        true
    }

    fn put_image(&self, image: &ImageRecord) -> Result<()> {
        let manifest = serde_json::to_string(&image.manifest)
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        self.lock().execute_cached(
            "INSERT INTO images (id, name, version, manifest, imported_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(id) DO UPDATE SET manifest = excluded.manifest, imported_at = excluded.imported_at",
            params![image.id, image.name, image.version, manifest, image.imported_at as i64],
        )?;
        Ok(())
    }

    fn image(&self, id: &str) -> Result<Option<ImageRecord>> {
        Ok(self
            .lock()
            .query_row_cached(
                "SELECT id, name, version, manifest, imported_at FROM images WHERE id = ?1",
                [id],
                image_row,
            )
            .optional()?)
    }

    fn images(&self) -> Result<Vec<ImageRecord>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT id, name, version, manifest, imported_at FROM images ORDER BY imported_at, id",
        )?;
        let rows = stmt.query_map([], image_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn put_profile(&self, p: &Profile) -> Result<()> {
        validate_name("profile", &p.name)?;
        let conn = self.lock();
        let known: Option<String> = conn
            .query_row_cached("SELECT id FROM images WHERE id = ?1", [&p.image], |r| {
                r.get(0)
            })
            .optional()?;
        if known.is_none() {
            return Err(StoreError::NotFound {
                what: "image",
                name: p.image.clone(),
                hint: ": import it first with `levee image import DIR`",
            });
        }
        conn.execute_cached(
            "INSERT INTO profiles (name, image, kernel, initrd, cmdline, transport)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(name) DO UPDATE SET image = excluded.image, kernel = excluded.kernel,
               initrd = excluded.initrd, cmdline = excluded.cmdline, transport = excluded.transport",
            params![p.name, p.image, p.kernel, p.initrd, p.cmdline, p.transport.as_str()],
        )?;
        Ok(())
    }

    fn profile(&self, name: &str) -> Result<Option<Profile>> {
        Ok(self
            .lock()
            .query_row_cached(
                "SELECT name, image, kernel, initrd, cmdline, transport FROM profiles WHERE name = ?1",
                [name],
                profile_row,
            )
            .optional()?)
    }

    fn profiles(&self) -> Result<Vec<Profile>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT name, image, kernel, initrd, cmdline, transport FROM profiles ORDER BY name",
        )?;
        let rows = stmt.query_map([], profile_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn delete_profile(&self, name: &str) -> Result<()> {
        let conn = self.lock();
        let users: i64 = conn.query_row_cached(
            "SELECT COUNT(*) FROM appliances WHERE profile = ?1",
            [name],
            |r| r.get(0),
        )?;
        if users > 0 {
            return Err(StoreError::Invalid(format!(
                "profile `{name}` is used by {users} appliance(s): move them with `levee appliance set MAC --profile OTHER` first"
            )));
        }
        if conn.execute_cached("DELETE FROM profiles WHERE name = ?1", [name])? == 0 {
            return Err(StoreError::NotFound {
                what: "profile",
                name: name.to_string(),
                hint: ": `levee profile list` shows the profiles",
            });
        }
        Ok(())
    }

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

    fn register_appliance(&self, mac: MacAddr, reg: &Registration) -> Result<Appliance> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        if let Some(c) = reg.customer {
            require_customer(&tx, c)?;
        }
        if let Some(a) = get_by_mac(&tx, mac)? {
            if a.revoked_at.is_some() {
                return Err(StoreError::Invalid(format!(
                    "appliance {mac} (id {}) is retired and its credential revoked: `levee appliance remove {mac}` first to register it afresh",
                    a.id
                )));
            }
        }
        tx.execute_cached(
            "INSERT INTO appliances (mac, serial, profile, customer, registered, first_seen)
             VALUES (?1, ?2, ?3, ?4, 1, ?5)
             ON CONFLICT(mac) DO UPDATE SET registered = 1,
               serial = COALESCE(excluded.serial, serial),
               profile = COALESCE(excluded.profile, profile),
               customer = COALESCE(excluded.customer, customer)",
            params![
                mac.to_string(),
                reg.serial,
                reg.profile,
                reg.customer,
                now() as i64
            ],
        )?;
        let detail = match reg.customer {
            Some(c) => format!("registered for customer {c}"),
            None => "registered".to_string(),
        };
        event(&tx, mac, "registered", &detail)?;
        let a = get_by_mac(&tx, mac)?
            .ok_or_else(|| StoreError::Corrupt("appliance vanished".into()))?;
        tx.commit()?;
        Ok(a)
    }

    fn approve_appliance(&self, mac: MacAddr, customer: &str) -> Result<Appliance> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        require_customer(&tx, customer)?;
        let a = check_approval(get_by_mac(&tx, mac)?, mac, customer)?;
        tx.execute_cached(
            "UPDATE appliances SET registered = 1, customer = ?2 WHERE id = ?1",
            params![a.id, customer],
        )?;
        event(
            &tx,
            mac,
            "approved",
            &format!("approved for customer {customer}"),
        )?;
        let a = get_by_id(&tx, a.id)?;
        tx.commit()?;
        Ok(a)
    }

    fn set_appliance_state(
        &self,
        id: i64,
        state: ApplianceState,
        reason: Option<&str>,
    ) -> Result<Appliance> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let a = get_by_id(&tx, id)?;
        if a.revoked_at.is_some() && state != ApplianceState::Retired {
            return Err(StoreError::Invalid(format!(
                "appliance {} (id {id}) is retired",
                a.mac
            )));
        }
        tx.execute_cached(
            "UPDATE appliances SET state = ?2, state_reason = ?3,
               reinstall = CASE WHEN ?2 = 'installed' THEN 0 ELSE reinstall END WHERE id = ?1",
            params![id, state.as_str(), reason],
        )?;
        let detail = match reason {
            Some(r) => format!("{}: {r}", state.as_str()),
            None => state.as_str().to_string(),
        };
        event(&tx, a.mac, "state", &detail)?;
        let a = get_by_id(&tx, id)?;
        tx.commit()?;
        Ok(a)
    }

    fn record_heartbeat(&self, id: i64, hb: &Heartbeat) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let a = get_by_id(&tx, id)?;
        tx.execute_cached(
            "UPDATE appliances SET last_heartbeat = ?2, last_seen = ?2,
               image_version = COALESCE(?3, image_version), slot = COALESCE(?4, slot) WHERE id = ?1",
            params![id, now() as i64, hb.image_version, hb.slot],
        )?;
        let changed = (hb.image_version.is_some()
            && hb.image_version != a.image_version.as_deref())
            || (hb.slot.is_some() && hb.slot != a.slot.as_deref());
        if changed {
            let detail = format!(
                "image {} on slot {}",
                hb.image_version
                    .or(a.image_version.as_deref())
                    .unwrap_or("-"),
                hb.slot.or(a.slot.as_deref()).unwrap_or("-")
            );
            event(&tx, a.mac, "heartbeat", &detail)?;
        }
        if a.state == ApplianceState::Installing && hb.slot.is_some() {
            tx.execute_cached(
                "UPDATE appliances SET state = 'installed', state_reason = NULL, reinstall = 0 WHERE id = ?1",
                params![id],
            )?;
            event(&tx, a.mac, "state", &super::came_back_detail(hb))?;
        }
        tx.commit()?;
        Ok(())
    }

    fn set_pending_key(&self, id: i64, key_sha256: &str) -> Result<Appliance> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let a = get_by_id(&tx, id)?;
        tx.execute_cached(
            "UPDATE appliances SET pending_key = ?2 WHERE id = ?1",
            params![id, key_sha256],
        )?;
        event(
            &tx,
            a.mac,
            "pending-key",
            &format!("waiting for approval with key sha256 {key_sha256}"),
        )?;
        let a = get_by_id(&tx, id)?;
        tx.commit()?;
        Ok(a)
    }

    fn set_reinstall(&self, id: i64, reinstall: bool) -> Result<Appliance> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let a = get_by_id(&tx, id)?;
        super::check_not_retired(&a)?;
        tx.execute_cached(
            "UPDATE appliances SET reinstall = ?2 WHERE id = ?1",
            params![id, reinstall as i64],
        )?;
        event(&tx, a.mac, "reinstall", super::reinstall_detail(reinstall))?;
        let a = get_by_id(&tx, id)?;
        tx.commit()?;
        Ok(a)
    }

    fn replace_appliance(&self, old: i64, new_mac: MacAddr) -> Result<Appliance> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let o = get_by_id(&tx, old)?;
        let plan = super::plan_replace(&o, get_by_mac(&tx, new_mac)?.as_ref(), new_mac)?;
        let t = now() as i64;
        let new_id = tx.query_row_cached(
            "INSERT INTO appliances (mac, profile, customer, registered, first_seen, replaces)
             VALUES (?1, ?2, ?3, 1, ?4, ?5)
             ON CONFLICT(mac) DO UPDATE SET registered = 1, profile = excluded.profile,
               customer = excluded.customer, replaces = excluded.replaces
             RETURNING id",
            params![new_mac.to_string(), o.profile, o.customer, t, o.id],
            |r| r.get::<_, i64>(0),
        )?;
        tx.execute_cached(
            "UPDATE appliances SET state = 'retired', state_reason = ?2, revoked_at = ?3, replaced_by = ?4 WHERE id = ?1",
            params![o.id, plan.old_reason, t, new_id],
        )?;
        event(&tx, o.mac, "replaced", &plan.old_reason)?;
        event(&tx, new_mac, "replaces", &plan.new_detail)?;
        let n = get_by_id(&tx, new_id)?;
        tx.commit()?;
        Ok(n)
    }

    fn retire_appliance(&self, id: i64, reason: &str) -> Result<Appliance> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let a = get_by_id(&tx, id)?;
        if a.revoked_at.is_some() {
            return Err(StoreError::Invalid(format!(
                "appliance {} (id {id}) is already retired",
                a.mac
            )));
        }
        tx.execute_cached(
            "UPDATE appliances SET state = 'retired', state_reason = ?2, revoked_at = ?3 WHERE id = ?1",
            params![id, reason, now() as i64],
        )?;
        event(&tx, a.mac, "retired", reason)?;
        let a = get_by_id(&tx, id)?;
        tx.commit()?;
        Ok(a)
    }

    fn appliance_by_id(&self, id: i64) -> Result<Option<Appliance>> {
        Ok(self
            .lock()
            .query_row_cached(
                &format!("SELECT {APPLIANCE_COLS} FROM appliances WHERE id = ?1"),
                [id],
                appliance_row,
            )
            .optional()?)
    }

    fn appliance_seen(&self, mac: MacAddr) -> Result<Appliance> {
        {
            let conn = self.lock();
            let t = now() as i64;
            conn.execute_cached(
                "INSERT INTO appliances (mac, registered, first_seen, last_seen) VALUES (?1, 0, ?2, ?2)
                 ON CONFLICT(mac) DO UPDATE SET last_seen = excluded.last_seen",
                params![mac.to_string(), t],
            )?;
        }
        self.appliance(mac)?
            .ok_or_else(|| StoreError::Corrupt("appliance vanished".into()))
    }

    fn set_appliance_profile(&self, mac: MacAddr, profile: Option<&str>) -> Result<()> {
        let n = self.lock().execute_cached(
            "UPDATE appliances SET profile = ?2 WHERE mac = ?1",
            params![mac.to_string(), profile],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound {
                what: "appliance",
                name: mac.to_string(),
                hint: ": register it with `levee appliance add --mac MAC`",
            });
        }
        Ok(())
    }

    fn appliance(&self, mac: MacAddr) -> Result<Option<Appliance>> {
        Ok(self
            .lock()
            .query_row_cached(
                &format!("SELECT {APPLIANCE_COLS} FROM appliances WHERE mac = ?1"),
                [mac.to_string()],
                appliance_row,
            )
            .optional()?)
    }

    fn appliances(&self) -> Result<Vec<Appliance>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT {APPLIANCE_COLS} FROM appliances ORDER BY id"
        ))?;
        let rows = stmt.query_map([], appliance_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn remove_appliance(&self, mac: MacAddr) -> Result<()> {
        let conn = self.lock();
        if conn.execute_cached("DELETE FROM appliances WHERE mac = ?1", [mac.to_string()])? == 0 {
            return Err(StoreError::NotFound {
                what: "appliance",
                name: mac.to_string(),
                hint: "",
            });
        }
        conn.execute_cached("DELETE FROM events WHERE mac = ?1", [mac.to_string()])?;
        Ok(())
    }

    fn record_report(&self, report: &StatusReport, mac: MacAddr) -> Result<()> {
        let json = serde_json::to_string(report).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let t = now() as i64;
        self.lock().execute_cached(
            "INSERT INTO appliances (mac, registered, first_seen, last_seen, last_report, last_report_at)
             VALUES (?1, 0, ?2, ?2, ?3, ?2)
             ON CONFLICT(mac) DO UPDATE SET last_seen = ?2, last_report = ?3, last_report_at = ?2",
            params![mac.to_string(), t, json],
        )?;
        Ok(())
    }

    fn add_event(&self, mac: MacAddr, step: &str, detail: &str) -> Result<()> {
        let conn = self.lock();
        let mac = mac.to_string();
        let id = conn.query_row_cached(
            "INSERT INTO events (mac, at, step, detail) VALUES (?1, ?2, ?3, ?4) RETURNING id",
            params![mac, now() as i64, step, detail],
            |r| r.get::<_, i64>(0),
        )?;
        // Cheap trim: ids grow monotonically, so everything older than the
        // last EVENTS_KEPT ids of this machine can go.
        if id % 50 == 0 {
            conn.execute_cached(
                "DELETE FROM events WHERE mac = ?1 AND id <= (
                   SELECT id FROM events WHERE mac = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
                params![mac, EVENTS_KEPT],
            )?;
        }
        Ok(())
    }

    fn events(&self, mac: MacAddr, limit: usize) -> Result<Vec<Event>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT at, step, detail FROM (
               SELECT id, at, step, detail FROM events WHERE mac = ?1 ORDER BY id DESC LIMIT ?2)
             ORDER BY id",
        )?;
        let rows = stmt.query_map(params![mac.to_string(), limit as i64], |r| {
            Ok(Event {
                at: r.get::<_, i64>(0)? as u64,
                step: r.get(1)?,
                detail: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn record_certificate(
        &self,
        id: i64,
        fingerprint: &str,
        not_after: u64,
        enrolled: bool,
    ) -> Result<Appliance> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let a = get_by_id(&tx, id)?;
        if a.revoked_at.is_some() {
            return Err(StoreError::Invalid(format!(
                "appliance {} (id {id}) is retired: its credential is revoked",
                a.mac
            )));
        }
        tx.execute_cached(
            "UPDATE appliances SET cert_fingerprint = ?2, cert_not_after = ?3 WHERE id = ?1",
            params![id, fingerprint, not_after as i64],
        )?;
        let detail = format!("certificate sha256 {fingerprint}");
        if enrolled {
            tx.execute_cached(
                "UPDATE appliances SET state = 'enrolled', state_reason = NULL, pending_key = NULL WHERE id = ?1",
                params![id],
            )?;
            event(&tx, a.mac, "enrolled", &detail)?;
        } else {
            event(&tx, a.mac, "renewed", &detail)?;
        }
        let a = get_by_id(&tx, id)?;
        tx.commit()?;
        Ok(a)
    }

    fn put_token(&self, token_sha256: &str, mac: MacAddr, expires_at: u64) -> Result<()> {
        let conn = self.lock();
        let at = now();
        conn.execute_cached(
            "DELETE FROM enroll_tokens WHERE expires_at < ?1",
            params![at.saturating_sub(TOKEN_KEEP_SECS) as i64],
        )?;
        conn.execute_cached(
            "INSERT INTO enroll_tokens (token_sha256, mac, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
            params![token_sha256, mac.to_string(), at as i64, expires_at as i64],
        )?;
        Ok(())
    }

    fn take_token(&self, token_sha256: &str, mac: MacAddr, at: u64) -> Result<TokenCheck> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let row = tx
            .query_row_cached(
                "SELECT mac, expires_at, used_at FROM enroll_tokens WHERE token_sha256 = ?1",
                params![token_sha256],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)? as u64,
                        r.get::<_, Option<i64>>(2)?.map(|v| v as u64),
                    ))
                },
            )
            .optional()?;
        let verdict = judge_token(row, mac, at);
        if verdict == TokenCheck::Valid {
            tx.execute_cached(
                "UPDATE enroll_tokens SET used_at = ?2 WHERE token_sha256 = ?1",
                params![token_sha256, at as i64],
            )?;
        }
        tx.commit()?;
        Ok(verdict)
    }

    fn leases(&self) -> Result<Vec<Lease>> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT mac, ip, expires FROM leases")?;
        let rows = stmt.query_map([], |r| {
            let ip: String = r.get(1)?;
            Ok(Lease {
                mac: mac_col(r, 0)?,
                ip: ip.parse::<Ipv4Addr>().map_err(corrupt)?,
                expires_unix: r.get::<_, i64>(2)? as u64,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn save_lease(&self, lease: &Lease) -> Result<()> {
        let conn = self.lock();
        // An address belongs to one MAC at a time: drop any stale holder.
        conn.execute_cached(
            "DELETE FROM leases WHERE ip = ?1 AND mac <> ?2",
            params![lease.ip.to_string(), lease.mac.to_string()],
        )?;
        conn.execute_cached(
            "INSERT INTO leases (mac, ip, expires) VALUES (?1, ?2, ?3)
             ON CONFLICT(mac) DO UPDATE SET ip = excluded.ip, expires = excluded.expires",
            params![
                lease.mac.to_string(),
                lease.ip.to_string(),
                lease.expires_unix as i64
            ],
        )?;
        Ok(())
    }
}

#[cfg(test)]
/// What only the SQLite store does; everything both stores do is in
/// `store::suite`, run against each.
mod tests {
    use super::*;
    use crate::store::suite::image;

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        (dir, s)
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
