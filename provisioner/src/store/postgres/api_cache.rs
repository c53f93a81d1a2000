//! The mTLS API's per-request lookup (appliance and customer by id) kept
//! in memory, so a config pull needs no round trip to PostgreSQL: that
//! round trip, driven through the store's one connection thread, held the
//! API to ~0.3 of nginx (bench/api.sh, docs/BENCHMARKS.md).
//!
//! Correctness comes from the database telling us, not from guessing: a
//! trigger (migration 10) sends `NOTIFY levee_api` with `a<id>` for every
//! change to an appliance row and `c<name>` for a customer, whoever made it
//! (this server, another server of the fleet, the CLI, plain SQL). One
//! connection per server LISTENs; an appliance's entry is dropped when its
//! notification arrives, every entry when a customer changes.
//!
//! Bounds on a revocation (`levee appliance retire`, a re-enrollment, a
//! renewal, all of which change the row): refused once the notification
//! is delivered, milliseconds after the commit. While the listening
//! connection is not up (starting, the database down, reconnecting) the
//! cache is off and cleared, every lookup reads the database, so a
//! notification missed in a gap cannot leave a stale entry. And whatever
//! happens, an entry is used for at most [`MAX_AGE`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_postgres::AsyncMessage;
use tracing::{debug, info, warn};

use crate::store::{Appliance, CustomerRecord};

/// The channel the triggers notify.
pub(super) const CHANNEL: &str = "levee_api";

/// The longest an entry is used, even if a notification were lost on a
/// connection that still looks alive.
pub const MAX_AGE: Duration = Duration::from_secs(5);

/// How long to wait before listening again after the connection failed.
const RELISTEN_EVERY: Duration = Duration::from_millis(500);

pub(super) type Entry = Option<(Appliance, Option<CustomerRecord>)>;

#[derive(Default)]
pub(super) struct ApiCache {
    /// Whether the listening connection is up: the cache is used only then.
    live: AtomicBool,
    /// Whether the listener task was started (on the first lookup: the
    /// CLI, which never makes one, opens no extra connection).
    started: AtomicBool,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<i64, (Instant, Entry)>,
    /// Bumped by every invalidation: a lookup that read the database
    /// before an invalidation was processed must not store what it read.
    generation: u64,
}

impl ApiCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached lookup of `id`, if the cache is live and it is fresh.
    pub(super) fn get(&self, id: i64) -> Option<Entry> {
        if !self.live.load(Ordering::Acquire) {
            return None;
        }
        let inner = self.lock();
        let (at, entry) = inner.entries.get(&id)?;
        (at.elapsed() < MAX_AGE).then(|| entry.clone())
    }

    /// The generation to pass to [`ApiCache::put`] after reading.
    pub(super) fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Keeps what was read at `generation`, unless something changed since.
    pub(super) fn put(&self, id: i64, generation: u64, entry: Entry) {
        if !self.live.load(Ordering::Acquire) {
            return;
        }
        let mut inner = self.lock();
        if inner.generation == generation {
            inner.entries.insert(id, (Instant::now(), entry));
        }
    }

    /// A notification's payload: `a<id>` drops one appliance, anything
    /// else (a customer) drops everything.
    fn invalidate(&self, payload: &str) {
        let mut inner = self.lock();
        inner.generation += 1;
        match payload
            .strip_prefix('a')
            .and_then(|id| id.parse::<i64>().ok())
        {
            Some(id) => {
                inner.entries.remove(&id);
            }
            None => inner.entries.clear(),
        }
    }

    fn set_live(&self, live: bool) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.entries.clear();
        self.live.store(live, Ordering::Release);
    }

    /// A guard that drops appliance `id`'s entry (every entry for `None`)
    /// when this server's own write is done: its next request must see
    /// the write without waiting for the notification.
    pub(super) fn forget(&self, id: Option<i64>) -> Forget<'_> {
        Forget(self, id)
    }

    /// Whether the listening connection is up (tests wait for it).
    pub(super) fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// True the first time only: the caller then starts [`listen`].
    pub(super) fn claim_start(&self) -> bool {
        !self.started.swap(true, Ordering::AcqRel)
    }
}

/// See [`ApiCache::forget`].
pub(super) struct Forget<'a>(&'a ApiCache, Option<i64>);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        match self.1 {
            Some(id) => self.0.invalidate(&format!("a{id}")),
            None => self.0.invalidate("*"),
        }
    }
}

/// Keeps one connection LISTENing on [`CHANNEL`] for as long as the store's
/// runtime runs, reconnecting after failures; the cache is live only
/// while it is.
pub(super) async fn listen(
    cache: std::sync::Arc<ApiCache>,
    config: tokio_postgres::Config,
    tls: super::tls::MakeRustls,
) {
    let mut logged_down = false;
    loop {
        match listen_once(&cache, &config, tls.clone()).await {
            Ok(()) => {
                debug!("PostgreSQL notification connection ended");
                logged_down = false;
            }
            Err(e) => {
                if !logged_down {
                    warn!(error = %e, "PostgreSQL notifications unavailable: the API reads the database on every request until they are back");
                    logged_down = true;
                }
            }
        }
        cache.set_live(false);
        tokio::time::sleep(RELISTEN_EVERY).await;
    }
}

async fn listen_once(
    cache: &ApiCache,
    config: &tokio_postgres::Config,
    tls: super::tls::MakeRustls,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(tls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // The connection must be polled for LISTEN's answer and for the
    // notifications: one task does both and forwards the notifications.
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(n.payload().to_string()).is_err() {
                        return Ok(());
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            }
        }
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    cache.set_live(true);
    info!("listening for PostgreSQL notifications: the API's lookups are cached");
    while let Some(payload) = rx.recv().await {
        cache.invalidate(&payload);
    }
    drop(client);
    match driver.await {
        Ok(r) => r,
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::PgServer;
    use crate::store::{ApplianceStore, CustomerStore, PgStore, Registration, Store};

    fn mac(n: u8) -> levee_pxe::boot::MacAddr {
        format!("52:54:00:16:ca:{n:02x}").parse().unwrap()
    }

    fn lookup(rt: &tokio::runtime::Runtime, s: &PgStore, id: i64, cert: &str) -> Entry {
        rt.block_on(s.appliance_with_customer_async(id, cert))
            .unwrap()
    }

    /// A retirement by another process (here: another store on the same
    /// database, as the CLI is) reaches a server's cache through NOTIFY,
    /// far sooner than MAX_AGE; so does a customer change; and while the
    /// cache is off, lookups still answer from the database.
    #[test]
    fn r16_revocation_reaches_the_cache_by_notify() {
        let pg = PgServer::start();
        let url = pg.create_db("cache");
        let server = PgStore::connect(&url).unwrap();
        let cli = PgStore::connect(&url).unwrap();
        let key =
            crate::secrets::ServerKey::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        let config = serde_json::from_value(serde_json::json!({
            "customer": "acme", "sources": [{"name": "d", "path": "/d"}],
        }))
        .unwrap();
        cli.put_customer(&key.seal_config(&config)).unwrap();
        let a = cli
            .register_appliance(
                mac(1),
                &Registration {
                    customer: Some("acme"),
                    ..Default::default()
                },
            )
            .unwrap();
        let year = crate::store::now() + 365 * 86_400;
        cli.record_certificate(a.id, "cert-a", year, true).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        // Before the listener is up, the database answers.
        assert!(lookup(&rt, &server, a.id, "cert-a").is_some());
        let t = Instant::now();
        while !server.api_cache_live() {
            assert!(t.elapsed() < Duration::from_secs(10), "never listening");
            std::thread::sleep(Duration::from_millis(20));
        }
        let cached = lookup(&rt, &server, a.id, "cert-a").unwrap();
        assert!(cached.0.revoked_at.is_none());
        while server.api_cache.get(a.id).is_none() {
            assert!(t.elapsed() < Duration::from_secs(10), "never cached");
            lookup(&rt, &server, a.id, "cert-a");
            std::thread::sleep(Duration::from_millis(5));
        }
        // A renewal's new certificate is let in at once: a cached entry
        // that would refuse it is read again.
        cli.record_certificate(a.id, "cert-a2", year, false)
            .unwrap();
        let renewed = lookup(&rt, &server, a.id, "cert-a2").unwrap();
        assert_eq!(renewed.0.cert_fingerprint.as_deref(), Some("cert-a2"));
        // Cached with the new certificate: what follows must come by NOTIFY.
        let t = Instant::now();
        while server
            .api_cache
            .get(a.id)
            .flatten()
            .is_none_or(|(c, _)| c.cert_fingerprint.as_deref() != Some("cert-a2"))
        {
            assert!(t.elapsed() < Duration::from_secs(1), "renewal never cached");
            lookup(&rt, &server, a.id, "cert-a2");
            std::thread::sleep(Duration::from_millis(5));
        }

        cli.retire_appliance(a.id, "stolen").unwrap();
        let t = Instant::now();
        loop {
            let (now, _) = lookup(&rt, &server, a.id, "cert-a2").unwrap();
            if now.revoked_at.is_some() {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(1),
                "the retirement did not reach the cache within 1 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        println!("revocation seen after {:?}", t.elapsed());

        // A customer change drops everything.
        let b = cli.register_appliance(
            mac(2),
            &Registration {
                customer: Some("acme"),
                ..Default::default()
            },
        );
        let b = b.unwrap();
        cli.record_certificate(b.id, "cert-b", year, true).unwrap();
        // Cached once the notifications of its own writes have passed.
        let t = Instant::now();
        while server.api_cache.get(b.id).is_none() {
            assert!(t.elapsed() < Duration::from_secs(1), "never cached");
            lookup(&rt, &server, b.id, "cert-b");
            std::thread::sleep(Duration::from_millis(5));
        }
        cli.put_customer(&key.seal_config(&config)).unwrap();
        let t = Instant::now();
        while server.api_cache.get(b.id).is_some() {
            assert!(
                t.elapsed() < Duration::from_secs(1),
                "customer change not seen"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_lookup_read_before_an_invalidation_is_not_kept() {
        let cache = ApiCache::default();
        cache.set_live(true);
        let g = cache.generation();
        cache.invalidate("a7");
        cache.put(7, g, None);
        assert!(cache.get(7).is_none());
        let g = cache.generation();
        cache.put(7, g, None);
        assert_eq!(cache.get(7), Some(None));
        cache.set_live(false);
        assert!(cache.get(7).is_none());
    }
}
