//! The alert engine inside `levee serve`: every [`AlertOptions::interval`]
//! it reads a snapshot of the fleet from the store, judges it with the
//! rules, opens and resolves alerts (the store queues their deliveries in
//! the same transaction), and posts the deliveries that are due, retrying
//! failures with back-off. Several servers on one PostgreSQL store may run
//! it at once: the store's unique open alert and claimed deliveries keep
//! every alert opened, resolved and delivered once.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use levee_proto::runs::RunKind;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::rules::{self, default_rules, ApplianceView, OpenAlert, Rule, RuleOptions, Snapshot};
use super::webhook::{self, DELIVERY_HEADER, EVENT_HEADER, GIVE_UP_SECS, SIGNATURE_HEADER};
use crate::health::{assess, expected_since};
use crate::secrets::ServerKey;
use crate::store::{now, BackupFacts, NewAlert, Result, Store};

use crate::health::DEFAULT_HEARTBEAT_SECS;
/// Deliveries posted per pass.
const BATCH: usize = 50;
/// Longest a receiver may take to answer.
const POST_TIMEOUT: Duration = Duration::from_secs(10);
/// The `aad` webhook secrets are sealed under.
pub const SECRET_AAD: &str = "levee-webhook";

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct AlertOptions {
    /// Time between evaluations.
    pub interval: Duration,
    /// First wait after a failed delivery (doubling up to 10 minutes).
    pub retry_base: Duration,
    pub rules: RuleOptions,
}

impl Default for AlertOptions {
    fn default() -> Self {
        AlertOptions {
            interval: Duration::from_secs(60),
            retry_base: Duration::from_secs(5),
            rules: RuleOptions::default(),
        }
    }
}

/// Reads what the rules judge from the store.
pub fn snapshot(
    store: &dyn Store,
    opts: &RuleOptions,
    at: i64,
    listening_since: i64,
) -> Result<Snapshot> {
    let customers: HashMap<String, _> = store
        .customers()?
        .into_iter()
        .map(|c| (c.name.clone(), c))
        .collect();
    let facts = store.backup_facts(None)?;
    let mut updates = store.latest_runs(RunKind::Update)?;
    // Each appliance's newest update record (by release, then time).
    let mut records: HashMap<i64, crate::store::UpdateRecord> = HashMap::new();
    for r in store.update_records(None)? {
        let newer = records
            .get(&r.appliance_id)
            .is_none_or(|o| (r.release, r.at) >= (o.release, o.at));
        if newer {
            records.insert(r.appliance_id, r);
        }
    }
    let mut events: HashMap<_, Vec<_>> = HashMap::new();
    let since = (at - opts.event_window_secs).max(0) as u64;
    for (mac, e) in store.alert_events(since)? {
        events.entry(mac).or_default().push(e);
    }
    let none = BackupFacts::default();
    let appliances = store
        .appliances()?
        .into_iter()
        .map(|a| {
            let record = a.customer.as_ref().and_then(|c| customers.get(c));
            let heartbeat_secs = record
                .and_then(|r| levee_proto::config::parse_duration(&r.config.heartbeat_interval))
                .unwrap_or(DEFAULT_HEARTBEAT_SECS);
            let in_service = a.revoked_at.is_none() && a.cert_fingerprint.is_some();
            let backup = assess(
                record.filter(|_| in_service).map(|r| &r.config),
                facts.get(&a.id).unwrap_or(&none),
                expected_since(&a, record.map(|r| r.updated_at)),
                at,
            );
            ApplianceView {
                heartbeat_secs,
                backup,
                last_update: updates.remove(&a.id),
                update: records.remove(&a.id),
                events: events.remove(&a.mac).unwrap_or_default(),
                appliance: a,
            }
        })
        .collect();
    let open = store
        .open_alerts()?
        .into_iter()
        .map(|a| (a.kind, a.subject))
        .collect::<HashSet<_>>();
    Ok(Snapshot {
        now: at,
        listening_since,
        appliances,
        open,
    })
}

/// One evaluation: judge the fleet, open what newly holds, resolve what
/// stopped. `listening_since`: when this server started (see
/// [`Snapshot::listening_since`]). Returns (opened, resolved).
pub fn evaluate_once(
    store: &dyn Store,
    rules: &[Box<dyn Rule>],
    opts: &RuleOptions,
    listening_since: i64,
) -> Result<(usize, usize)> {
    let snap = snapshot(store, opts, now() as i64, listening_since)?;
    let findings = rules::evaluate(rules, &snap);
    let open: Vec<OpenAlert> = store
        .open_alerts()?
        .into_iter()
        .map(|a| OpenAlert {
            id: a.id,
            kind: a.kind,
            subject: a.subject,
        })
        .collect();
    let t = rules::transitions(&findings, &open, &rules::kinds(rules));
    let (mut opened, mut resolved) = (0, 0);
    for f in &t.open {
        let new = NewAlert {
            kind: f.kind,
            subject: &f.subject,
            appliance_id: f.appliance_id,
            customer: f.customer.as_deref(),
            severity: f.severity.as_str(),
            summary: &f.summary,
        };
        if let Some(a) = store.open_alert(&new)? {
            opened += 1;
            warn!(alert = a.id, kind = %a.kind, subject = %a.subject, summary = %a.summary, "alert opened");
        }
    }
    for id in t.resolve {
        if let Some(a) = store.resolve_alert(id)? {
            resolved += 1;
            info!(alert = a.id, kind = %a.kind, subject = %a.subject, "alert resolved");
        }
    }
    Ok((opened, resolved))
}

/// Posts the deliveries due now; returns how many went through.
async fn deliver_due(
    store: &Arc<dyn Store>,
    key: &ServerKey,
    client: &reqwest::Client,
    retry_base: Duration,
) -> Result<usize> {
    let s = store.clone();
    let t = now();
    // Claimed for longer than a post can take, so a second server (or
    // the next pass) leaves them alone meanwhile.
    let lease = POST_TIMEOUT.as_secs() * 3;
    let due = tokio::task::spawn_blocking(move || s.claim_deliveries(t, lease, BATCH))
        .await
        .map_err(|e| crate::store::StoreError::Invalid(e.to_string()))??;
    let mut sent = 0;
    for d in due {
        let outcome = match key.open_secret(&d.webhook.secret_sealed, SECRET_AAD, "webhook secret")
        {
            Ok(secret) => post(client, &d, secret.as_bytes()).await,
            Err(e) => Err(e.to_string()),
        };
        let s = store.clone();
        let (id, url, attempts, created) = (d.id, d.webhook.url.clone(), d.attempts, d.created_at);
        let recorded = tokio::task::spawn_blocking(move || match outcome {
            Ok(()) => s.delivery_done(id).map(|()| true),
            Err(why) if now().saturating_sub(created) > GIVE_UP_SECS => {
                error!(delivery = id, %url, reason = %why, attempts = attempts + 1, "webhook delivery given up");
                s.delivery_done(id).map(|()| false)
            }
            Err(why) => {
                let wait = webhook::backoff(attempts, retry_base);
                warn!(delivery = id, %url, reason = %why, attempt = attempts + 1, retry_in_ms = wait.as_millis() as u64, "webhook delivery failed");
                let next = now() + wait.as_secs().max(1);
                s.delivery_failed(id, &why, next).map(|()| false)
            }
        })
        .await
        .map_err(|e| crate::store::StoreError::Invalid(e.to_string()))??;
        if recorded {
            sent += 1;
            debug!(delivery = d.id, url = %d.webhook.url, event = %d.event, alert = d.alert.id, "webhook delivered");
        }
    }
    Ok(sent)
}

async fn post(
    client: &reqwest::Client,
    d: &crate::store::Delivery,
    secret: &[u8],
) -> std::result::Result<(), String> {
    let body = webhook::body(d, now());
    let resp = client
        .post(&d.webhook.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, webhook::sign(secret, &body))
        .header(EVENT_HEADER, &d.event)
        .header(DELIVERY_HEADER, d.id.to_string())
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {}", resp.status().as_u16()))
    }
}

/// Runs the engine until `shutdown`: evaluations every `interval`,
/// deliveries checked every second (sooner with a short `retry_base`).
pub async fn run(
    store: Arc<dyn Store>,
    key: Arc<ServerKey>,
    opts: AlertOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(POST_TIMEOUT)
        .connect_timeout(POST_TIMEOUT)
        .user_agent(concat!("levee/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let rules: Arc<Vec<Box<dyn Rule>>> = Arc::new(default_rules(&opts.rules));
    let tick = opts
        .retry_base
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut next_eval = tokio::time::Instant::now();
    let started = now() as i64;
    info!(
        interval_s = opts.interval.as_secs_f64(),
        "alert rules running"
    );
    loop {
        if tokio::time::Instant::now() >= next_eval {
            next_eval += opts.interval;
            let (s, r, o) = (store.clone(), rules.clone(), opts.rules.clone());
            match tokio::task::spawn_blocking(move || evaluate_once(s.as_ref(), &r, &o, started))
                .await
            {
                Ok(Ok(_)) => {}
                // The store logs its own outages; say once per pass why
                // this evaluation did not happen.
                Ok(Err(e)) => warn!(error = %e, "alert evaluation skipped"),
                Err(e) => error!(error = %e, "alert evaluation panicked"),
            }
        }
        if let Err(e) = deliver_due(&store, &key, &client, opts.retry_base).await {
            warn!(error = %e, "webhook deliveries skipped");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(tick) => {}
        }
    }
}
