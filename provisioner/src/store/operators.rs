//! Operators of the web panel, and the audit log of what they did.
//!
//! An operator has a name, an argon2id password hash (see
//! [`crate::ui::password`]) and whether they may only look. The audit log
//! records every action taken through the panel: who, what, on what, when.
//! Sessions are not stored: they live in the serving process (see
//! [`crate::ui::session`]).

use serde::Serialize;

use super::Result;

/// A panel operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Operator {
    pub name: String,
    /// The argon2id hash (PHC string); never shown.
    #[serde(skip)]
    pub password_hash: String,
    /// Sees everything, changes nothing.
    pub read_only: bool,
    /// Still holds the one-time password `levee operator add` printed: the
    /// first login must choose a new one before anything else.
    pub must_change: bool,
    pub created_at: u64,
    /// sha256 (hex, of the DER) of the one client certificate that logs
    /// this operator in (`levee operator cert`); a newer one replaces it.
    pub cert_sha256: Option<String>,
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at: u64,
    pub operator: String,
    /// `login`, `approve`, `retire`, `customer-apply`, ...
    pub action: String,
    /// What it acted on: `appliance:7`, `customer:acme`, `operator:ann`.
    pub target: String,
    pub detail: String,
}

/// Operators, the audit log, and the stamp that tells the panel the fleet
/// changed.
pub trait OperatorStore {
    /// Adds an operator; an error naming them when one exists already.
    fn add_operator(&self, name: &str, password_hash: &str, read_only: bool) -> Result<Operator>;
    fn operator(&self, name: &str) -> Result<Option<Operator>>;
    fn operators(&self) -> Result<Vec<Operator>>;
    /// `false` when there was no such operator.
    fn remove_operator(&self, name: &str) -> Result<bool>;
    /// Stores a new password hash (`must_change`: a one-time password).
    fn set_operator_password(
        &self,
        name: &str,
        password_hash: &str,
        must_change: bool,
    ) -> Result<()>;
    /// The one client certificate that logs the operator in (`None`: no
    /// certificate does); a NotFound error when there is no such operator.
    fn set_operator_cert(&self, name: &str, cert_sha256: Option<&str>) -> Result<()>;
    fn add_audit(&self, operator: &str, action: &str, target: &str, detail: &str) -> Result<()>;
    /// Newest first; only entries on `target` when given.
    fn audit(&self, target: Option<&str>, limit: usize) -> Result<Vec<AuditEntry>>;
    /// A value that changes whenever a heartbeat, run report, history
    /// event or audit entry arrives, or an appliance is added or removed:
    /// the panel's live updates poll it (cheap: a few aggregates).
    fn change_stamp(&self) -> Result<ChangeStamp>;
}

/// See [`OperatorStore::change_stamp`]: each part moves when its table
/// does, so a reader can tell run reports from heartbeats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ChangeStamp {
    pub appliances: i64,
    /// The sum of every appliance's last heartbeat time.
    pub heartbeats: i64,
    pub last_event: i64,
    pub last_run: i64,
    pub last_audit: i64,
}

pub(crate) fn no_such_operator(name: &str) -> super::StoreError {
    super::StoreError::NotFound {
        what: "operator",
        name: name.into(),
        hint: ": `levee operator list` shows them",
    }
}

/// Audit entries kept (the oldest beyond are dropped now and then).
pub const AUDIT_KEPT: i64 = 100_000;

pub(crate) fn operator_exists(name: &str) -> super::StoreError {
    super::StoreError::Invalid(format!(
        "operator `{name}` exists already: `levee operator remove {name}` first, or choose another name"
    ))
}
