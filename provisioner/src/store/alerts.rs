//! Alerts, the webhooks they go to, and the deliveries waiting to be made.
//!
//! One alert is open per kind and subject at a time (a unique index, so
//! two servers sharing PostgreSQL cannot both open it). Opening or
//! resolving an alert queues one delivery per webhook that wants it (the
//! global ones and those of the alert's customer) in the same
//! transaction; deliveries survive restarts and are made in order per
//! webhook and alert (a resolution never overtakes its opening).

use levee_pxe::boot::MacAddr;
use serde::Serialize;

use super::{Event, Result};

/// An alert as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alert {
    pub id: i64,
    pub kind: String,
    pub subject: String,
    pub appliance_id: Option<i64>,
    pub customer: Option<String>,
    pub severity: String,
    pub summary: String,
    pub opened_at: u64,
    pub resolved_at: Option<u64>,
}

/// An alert to open.
#[derive(Debug, Clone, Copy)]
pub struct NewAlert<'a> {
    pub kind: &'a str,
    pub subject: &'a str,
    pub appliance_id: Option<i64>,
    pub customer: Option<&'a str>,
    pub severity: &'a str,
    pub summary: &'a str,
}

/// A webhook: where alerts are posted. `customer` limits it to that
/// customer's alerts; none gets every alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Webhook {
    pub id: i64,
    pub url: String,
    pub customer: Option<String>,
    /// The HMAC key, sealed with the server key (see
    /// [`crate::secrets::ServerKey::seal_secret`]); never shown.
    #[serde(skip)]
    pub secret_sealed: String,
    pub created_at: u64,
}

/// A delivery to make now (claimed: other servers leave it alone for a
/// while).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: i64,
    pub webhook: Webhook,
    pub alert: Alert,
    /// `opened` or `resolved`.
    pub event: String,
    pub attempts: u32,
    pub created_at: u64,
}

/// Alerts, webhooks and deliveries.
pub trait AlertStore {
    fn open_alerts(&self) -> Result<Vec<Alert>>;
    /// Newest first; with `resolved`, resolved ones too.
    fn alerts(&self, resolved: bool, limit: usize) -> Result<Vec<Alert>>;
    /// Opens an alert and queues its deliveries; `None` when one of that
    /// kind and subject is open already.
    fn open_alert(&self, a: &NewAlert) -> Result<Option<Alert>>;
    /// Resolves an open alert and queues its deliveries; `None` when it
    /// was resolved already (by another server).
    fn resolve_alert(&self, id: i64) -> Result<Option<Alert>>;
    /// Adds a webhook, or finds the one with that URL and scope (its
    /// secret kept); `true` when added.
    fn set_webhook(
        &self,
        url: &str,
        customer: Option<&str>,
        secret_sealed: &str,
    ) -> Result<(Webhook, bool)>;
    fn webhooks(&self) -> Result<Vec<Webhook>>;
    /// Removes a webhook and its pending deliveries; `false` if none.
    fn remove_webhook(&self, url: &str, customer: Option<&str>) -> Result<bool>;
    /// Claims up to `limit` deliveries due at `now` for `lease` seconds.
    fn claim_deliveries(&self, now: u64, lease: u64, limit: usize) -> Result<Vec<Delivery>>;
    /// A delivery made: forgotten.
    fn delivery_done(&self, id: i64) -> Result<()>;
    /// A delivery failed: tried again at `next_at`.
    fn delivery_failed(&self, id: i64, error: &str, next_at: u64) -> Result<()>;
    /// The events the alert rules read ([`ALERT_EVENT_STEPS`]: enrollment
    /// steps and channel checks) of every machine since `since`, oldest
    /// first.
    fn alert_events(&self, since: u64) -> Result<Vec<(MacAddr, Event)>>;
}

/// The event step of an appliance's scheduled channel check
/// (`check-failed` or `checked`, enroll/update_api.rs).
pub const CHANNEL_CHECK_STEP: &str = "channel-check";

/// The steps [`AlertStore::alert_events`] returns: enrollment steps (key
/// conflicts) and channel checks (`channel-check-failing`).
pub const ALERT_EVENT_STEPS: [&str; 6] = [
    "pending-key",
    "key-conflict",
    "enroll-refused",
    "enrolled",
    "reenrolled",
    CHANNEL_CHECK_STEP,
];

/// Resolved alerts are kept this long.
pub const RESOLVED_KEPT_SECS: u64 = 90 * 86_400;
