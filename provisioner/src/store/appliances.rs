//! Appliances and their enrollment: lifecycle, heartbeats, reports, certificates, one-time tokens, and DHCP leases.

use levee_pxe::boot::MacAddr;
use serde::Serialize;

use super::{CustomerRecord, CustomerStore, Result, StoreError};

/// A physical box, known by its MAC until it enrolls.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Appliance {
    pub id: i64,
    pub mac: MacAddr,
    pub serial: Option<String>,
    /// Boot profile; `None` boots the `default` profile.
    pub profile: Option<String>,
    /// Whether ops registered it (`levee appliance add`) or it just showed up.
    pub registered: bool,
    pub first_seen: u64,
    pub last_seen: Option<u64>,
    /// The last status report, verbatim, and when it arrived.
    pub last_report: Option<levee_proto::report::StatusReport>,
    pub last_report_at: Option<u64>,
    /// The customer it serves; `None` until registered or approved
    /// (such a machine gets no configuration).
    pub customer: Option<String>,
    pub state: ApplianceState,
    /// Why it is in its state (the failure reason for `failed`).
    pub state_reason: Option<String>,
    /// From the last heartbeat.
    pub image_version: Option<String>,
    pub slot: Option<String>,
    pub last_heartbeat: Option<u64>,
    /// When its credential was revoked (`replace`, `retire`): enrollment and
    /// every mTLS request must refuse it from then on.
    pub revoked_at: Option<u64>,
    /// The appliance that replaced this one, and the one this one replaced.
    pub replaced_by: Option<i64>,
    pub replaces: Option<i64>,
    /// sha256 (hex) of the one client certificate accepted for it: a new
    /// enrollment or renewal replaces it, so older certificates stop working.
    pub cert_fingerprint: Option<String>,
    pub cert_not_after: Option<u64>,
    /// sha256 (hex) of the public key (SubjectPublicKeyInfo DER) of the
    /// certificate request a pending machine sent with a valid token: once
    /// approved, a request for that same key enrolls without a token.
    pub pending_key: Option<String>,
    /// Ops asked for a reinstall (`levee appliance reinstall`): the next
    /// install plan says so; cleared when the appliance reports `installed`.
    pub reinstall: bool,
    /// Ops armed one re-enrollment (`levee appliance reenroll`): the one
    /// way an appliance with a live certificate gets a new one through a
    /// token. Cleared when that certificate is issued.
    pub reenroll: bool,
    /// sha256 (hex) of the last key that tried to take over this pending
    /// machine's slot with another token (see [`Appliance::pending_key`]):
    /// refused, and shown to ops until approval settles it.
    pub key_conflict: Option<String>,
}

impl Appliance {
    /// May it receive its customer's configuration?
    pub fn approved(&self) -> bool {
        self.customer.is_some() && self.registered && self.revoked_at.is_none()
    }

    /// Whether it is offline: no report or heartbeat within three heartbeat
    /// intervals.
    pub fn online(&self, heartbeat_secs: u64, now: u64) -> bool {
        let last = self.last_heartbeat.max(self.last_report_at);
        last.is_some_and(|t| now.saturating_sub(t) <= heartbeat_secs.saturating_mul(3))
    }

    /// Whether it holds a certificate that still works: recorded, not
    /// expired, not revoked. Such an appliance never gets a new one through
    /// a token unless ops armed a re-enrollment.
    pub fn has_live_cert(&self, now: u64) -> bool {
        self.revoked_at.is_none()
            && self.cert_fingerprint.is_some()
            && self.cert_not_after.is_some_and(|t| t > now)
    }

    /// Whether a token may be minted for (and redeemed by) this machine:
    /// not retired, and no live certificate unless a re-enrollment is
    /// armed; an unregistered machine only when `allow_pending`.
    pub fn may_enroll(&self, allow_pending: bool, now: u64) -> Result<(), String> {
        if self.revoked_at.is_some() {
            return Err(format!(
                "appliance {} (id {}) is retired",
                self.mac, self.id
            ));
        }
        if self.has_live_cert(now) && !self.reenroll {
            return Err(format!(
                "appliance {} (id {}) is enrolled and its certificate is valid: a token never replaces it; `levee appliance reenroll {}` allows one re-enrollment",
                self.mac, self.id, self.mac
            ));
        }
        if !self.registered && !allow_pending {
            return Err(format!(
                "{} is not registered and this server does not take pending enrollments: `levee appliance register --mac {} --customer NAME`",
                self.mac, self.mac
            ));
        }
        Ok(())
    }

    /// Image version from the last heartbeat, else from the last report.
    pub fn image_version(&self) -> Option<&str> {
        self.image_version
            .as_deref()
            .or_else(|| self.last_report.as_ref()?.image_version.as_deref())
    }
}

/// Where an appliance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ApplianceState {
    /// Not enrolled yet (waiting for approval when it has no customer).
    Pending,
    Enrolled,
    Installing,
    Installed,
    Failed,
    /// Retired or replaced: revoked and no longer served.
    Retired,
}

impl ApplianceState {
    pub fn as_str(self) -> &'static str {
        match self {
            ApplianceState::Pending => "pending",
            ApplianceState::Enrolled => "enrolled",
            ApplianceState::Installing => "installing",
            ApplianceState::Installed => "installed",
            ApplianceState::Failed => "failed",
            ApplianceState::Retired => "retired",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<ApplianceState> {
        Ok(match s {
            "pending" => ApplianceState::Pending,
            "enrolled" => ApplianceState::Enrolled,
            "installing" => ApplianceState::Installing,
            "installed" => ApplianceState::Installed,
            "failed" => ApplianceState::Failed,
            "retired" => ApplianceState::Retired,
            other => {
                return Err(StoreError::Corrupt(format!(
                    "unknown appliance state `{other}`"
                )))
            }
        })
    }
}

impl std::fmt::Display for ApplianceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An appliance as the operator names it: by MAC or by appliance id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplianceRef {
    Mac(MacAddr),
    Id(i64),
}

impl std::str::FromStr for ApplianceRef {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if let Ok(mac) = s.parse::<MacAddr>() {
            return Ok(ApplianceRef::Mac(mac));
        }
        s.parse::<i64>()
            .map(ApplianceRef::Id)
            .map_err(|_| format!("`{s}` is neither a MAC (52:54:00:12:34:56) nor an appliance id"))
    }
}

impl std::fmt::Display for ApplianceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApplianceRef::Mac(m) => write!(f, "{m}"),
            ApplianceRef::Id(i) => write!(f, "id {i}"),
        }
    }
}

/// What ops says when registering a machine; `None` keeps the current value.
#[derive(Debug, Clone, Copy, Default)]
pub struct Registration<'a> {
    pub serial: Option<&'a str>,
    pub profile: Option<&'a str>,
    pub customer: Option<&'a str>,
}

/// The heartbeat fields kept on the appliance row.
#[derive(Debug, Clone, Copy, Default)]
pub struct Heartbeat<'a> {
    pub image_version: Option<&'a str>,
    pub slot: Option<&'a str>,
}

/// What checking an enrollment token found. Only [`TokenCheck::Valid`]
/// consumed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenCheck {
    Valid,
    Unknown,
    /// Already used once (a replay).
    Used,
    Expired,
    /// Minted for another machine.
    OtherMac,
    /// Bound to the address the server leased to the machine, and presented
    /// from another.
    OtherAddress,
}

/// A stored token row, as the stores read it.
#[derive(Debug, Clone)]
pub(crate) struct TokenRow {
    pub mac: String,
    pub expires_at: u64,
    pub used_at: Option<u64>,
    /// The leased address it is bound to, if any.
    pub ip: Option<String>,
}

/// How long after its redemption a token still authenticates the machine's
/// pre-enrollment status reports (stage 1, a pending agent).
pub const REPORT_GRACE_SECS: u64 = 3600;

/// Whether `row` authenticates a status report from `mac` at `at`: the
/// MAC's token, live or redeemed less than [`REPORT_GRACE_SECS`] ago.
pub(crate) fn judge_report_token(row: Option<TokenRow>, mac: MacAddr, at: u64) -> bool {
    let Some(r) = row else { return false };
    if r.mac != mac.to_string() {
        return false;
    }
    match r.used_at {
        None => at < r.expires_at,
        Some(used) => at < used.saturating_add(REPORT_GRACE_SECS),
    }
}

/// What keeping a pending machine's key found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingKey {
    /// The first key: kept.
    Kept,
    /// The key already kept (a retry).
    Same,
    /// Another key while one is kept: refused and recorded as a conflict.
    Conflict,
}

/// The verdict on `key` for a machine whose kept key is `kept`.
pub(crate) fn judge_pending_key(kept: Option<&str>, key: &str) -> PendingKey {
    match kept {
        None => PendingKey::Kept,
        Some(k) if k == key => PendingKey::Same,
        Some(_) => PendingKey::Conflict,
    }
}

/// The short form of a key's sha256 that ops compares with the appliance's
/// console (see [`levee_proto::enroll::short_fingerprint`]).
pub fn short_key(key_sha256: &str) -> String {
    levee_proto::enroll::short_fingerprint(key_sha256)
}

/// Which key an approval settles on: the kept one, or (with a fingerprint
/// that names it) the conflicting one. With a conflict, the fingerprint is
/// required: ops must say which box is theirs.
pub(crate) fn choose_key(a: &Appliance, fingerprint: Option<&str>) -> Result<Option<String>> {
    let Some(fp) = fingerprint else {
        if let Some(c) = &a.key_conflict {
            return Err(StoreError::Invalid(format!(
                "appliance {} has two keys trying to enroll ({} kept, {} refused): read the fingerprint on its console and approve with --fingerprint",
                a.mac,
                a.pending_key.as_deref().map(short_key).unwrap_or_else(|| "-".into()),
                short_key(c)
            )));
        }
        return Ok(a.pending_key.clone());
    };
    let matches = |k: &Option<String>| {
        k.as_deref()
            .is_some_and(|k| levee_proto::enroll::fingerprint_matches(k, fp))
    };
    if matches(&a.pending_key) {
        return Ok(a.pending_key.clone());
    }
    if matches(&a.key_conflict) {
        return Ok(a.key_conflict.clone());
    }
    Err(StoreError::Invalid(format!(
        "fingerprint {fp} does not match the key of appliance {} ({}): not approved; compare with the fingerprint on its console",
        a.mac,
        match (&a.pending_key, &a.key_conflict) {
            (None, _) => "it has sent no key yet".to_string(),
            (Some(k), None) => format!("its key is {}", short_key(k)),
            (Some(k), Some(c)) => format!("its keys are {} and {}", short_key(k), short_key(c)),
        }
    )))
}

/// What a certificate recorded for a new enrollment must respect: an
/// appliance with a live certificate gets a new one only when ops armed a
/// re-enrollment. Returns the certificate it revokes, if any.
pub(crate) fn check_new_enrollment(a: &Appliance, now: u64) -> Result<Option<String>> {
    if a.has_live_cert(now) && !a.reenroll {
        return Err(StoreError::Invalid(format!(
            "appliance {} (id {}) already holds a valid certificate: `levee appliance reenroll {}` allows one re-enrollment",
            a.mac, a.id, a.mac
        )));
    }
    Ok(a.cert_fingerprint.clone())
}

/// The registration rule both stores apply inside their transaction: a
/// retired machine is not registered again, and a machine that serves one
/// customer is not moved to another (as for `approve`).
pub(crate) fn check_registration(
    found: Option<&Appliance>,
    mac: MacAddr,
    reg: &Registration,
) -> Result<()> {
    let Some(a) = found else { return Ok(()) };
    if a.revoked_at.is_some() {
        return Err(StoreError::Invalid(format!(
            "appliance {mac} (id {}) is retired and its credential revoked: `levee appliance remove {mac}` first to register it afresh",
            a.id
        )));
    }
    if let (Some(new), Some(old)) = (reg.customer, a.customer.as_deref()) {
        if new != old {
            return Err(StoreError::Invalid(format!(
                "appliance {mac} (id {}) already serves customer {old}: retire it first",
                a.id
            )));
        }
    }
    Ok(())
}

/// How long an expired token row is kept (for a clear "expired" rather than
/// "unknown"), before it is dropped.
pub(crate) const TOKEN_KEEP_SECS: u64 = 86_400;

/// The verdict on a stored token row (shared by the stores); `peer` is the
/// address the token is presented from.
pub(crate) fn judge_token(
    row: Option<TokenRow>,
    mac: MacAddr,
    at: u64,
    peer: Option<std::net::IpAddr>,
) -> TokenCheck {
    let Some(r) = row else {
        return TokenCheck::Unknown;
    };
    if r.used_at.is_some() {
        return TokenCheck::Used;
    }
    if r.mac != mac.to_string() {
        return TokenCheck::OtherMac;
    }
    if at >= r.expires_at {
        return TokenCheck::Expired;
    }
    if let Some(bound) = &r.ip {
        if peer.map(|p| p.to_string()).as_deref() != Some(bound.as_str()) {
            return TokenCheck::OtherAddress;
        }
    }
    TokenCheck::Valid
}

/// What a replacement writes, once checked (shared by the stores).
pub(crate) struct ReplacePlan {
    pub old_reason: String,
    pub new_detail: String,
}

/// Checks that `new_mac` may take over `old`.
pub(crate) fn plan_replace(
    old: &Appliance,
    new: Option<&Appliance>,
    new_mac: MacAddr,
) -> Result<ReplacePlan> {
    if old.revoked_at.is_some() {
        return Err(StoreError::Invalid(format!(
            "appliance {} (id {}) is already retired or replaced",
            old.mac, old.id
        )));
    }
    let Some(customer) = &old.customer else {
        return Err(StoreError::Invalid(format!(
            "appliance {} (id {}) has no customer to hand over: register the new machine with `levee appliance register` instead",
            old.mac, old.id
        )));
    };
    if old.mac == new_mac {
        return Err(StoreError::Invalid(
            "an appliance cannot replace itself".into(),
        ));
    }
    if let Some(n) = new {
        if n.revoked_at.is_some() {
            return Err(StoreError::Invalid(format!(
                "appliance {new_mac} (id {}) is retired: `levee appliance remove {new_mac}` first",
                n.id
            )));
        }
        if let Some(c) = n.customer.as_ref().filter(|c| *c != customer) {
            return Err(StoreError::Invalid(format!(
                "appliance {new_mac} (id {}) already serves customer {c}",
                n.id
            )));
        }
    }
    Ok(ReplacePlan {
        old_reason: format!("replaced by {new_mac}"),
        new_detail: format!(
            "took over customer {customer} from {} (id {})",
            old.mac, old.id
        ),
    })
}

/// The history line of an appliance that came back from its disk.
pub(crate) fn came_back_detail(hb: &Heartbeat) -> String {
    format!(
        "installed: came back from disk (slot {}, image {})",
        hb.slot.unwrap_or("-"),
        hb.image_version.unwrap_or("-")
    )
}

pub(crate) fn reinstall_detail(reinstall: bool) -> &'static str {
    if reinstall {
        "reinstall requested: the next install plan may overwrite its Levee disk"
    } else {
        "reinstall request cleared"
    }
}

pub(crate) fn check_not_retired(a: &Appliance) -> Result<()> {
    match a.revoked_at {
        Some(_) => Err(StoreError::Invalid(format!(
            "appliance {} (id {}) is retired",
            a.mac, a.id
        ))),
        None => Ok(()),
    }
}

/// Whether `found` (the row for `mac`, if any) may be approved for
/// `customer`: the rule both stores apply inside their transaction.
pub fn check_approval(found: Option<Appliance>, mac: MacAddr, customer: &str) -> Result<Appliance> {
    let a = found.ok_or_else(|| StoreError::NotFound {
        what: "appliance",
        name: mac.to_string(),
        hint: ": it has not booted yet; register it with `levee appliance register --mac MAC --customer NAME`",
    })?;
    if a.revoked_at.is_some() {
        return Err(StoreError::Invalid(format!(
            "appliance {mac} (id {}) is retired",
            a.id
        )));
    }
    if let Some(other) = a.customer.as_deref().filter(|c| *c != customer) {
        // Moving a box between customers would hand it another customer's
        // configuration: that takes a retire (or replace) first.
        return Err(StoreError::Invalid(format!(
            "appliance {mac} (id {}) already serves customer {other}: retire it first",
            a.id
        )));
    }
    Ok(a)
}

/// The error for an appliance that is not there.
pub fn no_appliance(name: impl std::fmt::Display) -> StoreError {
    StoreError::NotFound {
        what: "appliance",
        name: name.to_string(),
        hint: ": `levee appliance list` shows them",
    }
}

/// Appliances and their enrollment: lifecycle, heartbeats, reports, certificates, one-time tokens, and DHCP leases.
pub trait ApplianceStore: CustomerStore {
    /// Registers a machine (or updates a registered one's fields); with a
    /// customer it is approved. A retired machine cannot be registered again.
    fn register_appliance(&self, mac: MacAddr, reg: &Registration) -> Result<Appliance>;
    /// Gives a machine that showed up (pending) a customer, so it may enroll.
    /// With `fingerprint`, the key it enrolls with must be the one named
    /// (see [`choose_key`]); without, a machine with a key conflict is
    /// refused.
    fn approve_appliance(
        &self,
        mac: MacAddr,
        customer: &str,
        fingerprint: Option<&str>,
    ) -> Result<Appliance>;
    /// Moves an appliance to `state`, with a reason (required in spirit for
    /// `failed`), and records it in its history. `installed` clears a
    /// reinstall request.
    fn set_appliance_state(
        &self,
        id: i64,
        state: ApplianceState,
        reason: Option<&str>,
    ) -> Result<Appliance>;
    /// Notes a heartbeat; a changed image version or slot goes into the
    /// history. A heartbeat with a slot from an appliance in `installing`
    /// moves it to `installed` (it came back from its disk), which clears
    /// a reinstall request as `set_appliance_state` does.
    fn record_heartbeat(&self, id: i64, hb: &Heartbeat) -> Result<()>;
    /// Keeps the hash of a pending machine's public key (see
    /// [`Appliance::pending_key`]). The first key is kept: another one is
    /// refused, recorded as the conflict and in the history.
    fn keep_pending_key(&self, id: i64, key_sha256: &str) -> Result<(Appliance, PendingKey)>;
    /// Arms (or withdraws) one re-enrollment: the next token-backed
    /// enrollment may replace the appliance's live certificate, which is
    /// then revoked. A retired appliance is refused.
    fn set_reenroll(&self, id: i64, armed: bool) -> Result<Appliance>;
    /// Sets or clears the one-shot reinstall request. A retired appliance
    /// is refused.
    fn set_reinstall(&self, id: i64, reinstall: bool) -> Result<Appliance>;
    /// The machine `new_mac` takes over `old`'s customer and profile; `old`
    /// is revoked and retired. Returns the new appliance.
    fn replace_appliance(&self, old: i64, new_mac: MacAddr) -> Result<Appliance>;
    /// Revokes an appliance and stops serving it.
    fn retire_appliance(&self, id: i64, reason: &str) -> Result<Appliance>;
    fn appliance_by_id(&self, id: i64) -> Result<Option<Appliance>>;
    /// An appliance and its customer's record, for the mTLS API's every
    /// request (one round trip where the store is remote).
    fn appliance_with_customer(
        &self,
        id: i64,
    ) -> Result<Option<(Appliance, Option<CustomerRecord>)>> {
        let Some(a) = self.appliance_by_id(id)? else {
            return Ok(None);
        };
        let c = match a.customer.as_deref() {
            Some(name) => self.customer(name)?,
            None => None,
        };
        Ok(Some((a, c)))
    }
    /// By MAC or id.
    fn find_appliance(&self, r: ApplianceRef) -> Result<Option<Appliance>> {
        match r {
            ApplianceRef::Mac(mac) => self.appliance(mac),
            ApplianceRef::Id(id) => self.appliance_by_id(id),
        }
    }
    /// Notes that a machine showed up on the network; creates an
    /// unregistered row the first time.
    fn appliance_seen(&self, mac: MacAddr) -> Result<Appliance>;
    fn set_appliance_profile(&self, mac: MacAddr, profile: Option<&str>) -> Result<()>;
    fn appliance(&self, mac: MacAddr) -> Result<Option<Appliance>>;
    fn appliances(&self) -> Result<Vec<Appliance>>;
    fn remove_appliance(&self, mac: MacAddr) -> Result<()>;
    /// Keeps a status report on a known machine's row; `false` (nothing
    /// written) for a MAC the store does not know: reports never create
    /// appliances.
    fn record_report(
        &self,
        report: &levee_proto::report::StatusReport,
        mac: MacAddr,
    ) -> Result<bool>;

    /// Records the client certificate an appliance now holds (the only one
    /// accepted from then on). `enrolled`: a new enrollment, which moves it
    /// to `enrolled`, forgets its pending key and conflict, and is refused
    /// while it holds a live certificate unless a re-enrollment is armed
    /// (which it uses up; the old certificate's revocation goes into the
    /// history). Otherwise a renewal, which keeps its state. A revoked
    /// appliance is refused.
    fn record_certificate(
        &self,
        id: i64,
        fingerprint: &str,
        not_after: u64,
        enrolled: bool,
    ) -> Result<Appliance>;

    /// Keeps an enrollment token (by its sha256, never in clear) for `mac`
    /// until `expires_at`, bound to `ip` when the server leased that address
    /// to it. It is the MAC's one live token: unused older ones are dropped,
    /// as are long-expired tokens.
    fn put_token(
        &self,
        token_sha256: &str,
        mac: MacAddr,
        expires_at: u64,
        ip: Option<std::net::IpAddr>,
    ) -> Result<()>;
    /// Checks a token for `mac` presented from `peer` at time `at` and, only
    /// if it is valid, marks it used, atomically, so two requests with one
    /// token cannot both pass.
    fn take_token(
        &self,
        token_sha256: &str,
        mac: MacAddr,
        at: u64,
        peer: Option<std::net::IpAddr>,
    ) -> Result<TokenCheck>;
    /// Whether a token authenticates a pre-enrollment report from `mac`
    /// (see [`judge_report_token`]). Consumes nothing.
    fn report_token_ok(&self, token_sha256: &str, mac: MacAddr, at: u64) -> Result<bool>;

    /// The lease the server's DHCP holds for `mac`, if any (expired or not).
    fn lease(&self, mac: MacAddr) -> Result<Option<levee_pxe::dhcp::Lease>> {
        Ok(self.leases()?.into_iter().find(|l| l.mac == mac))
    }

    fn leases(&self) -> Result<Vec<levee_pxe::dhcp::Lease>>;
    fn save_lease(&self, lease: &levee_pxe::dhcp::Lease) -> Result<()>;
}

pub(crate) fn reenroll_detail(armed: bool) -> &'static str {
    if armed {
        "re-enrollment armed by ops: the next enrollment with a token may replace its certificate (the old one is then revoked)"
    } else {
        "re-enrollment withdrawn"
    }
}

pub(crate) fn pending_key_detail(key_sha256: &str) -> String {
    format!(
        "waiting for approval with key {} (sha256 {key_sha256})",
        short_key(key_sha256)
    )
}

pub(crate) fn conflict_detail(a: &Appliance, key_sha256: &str) -> String {
    format!(
        "refused another key {} (sha256 {key_sha256}): the first key {} is kept; if the new one is the real machine's, approve with --fingerprint {}",
        short_key(key_sha256),
        a.pending_key.as_deref().map(short_key).unwrap_or_else(|| "-".into()),
        short_key(key_sha256)
    )
}

pub(crate) fn approved_detail(customer: &str, key: Option<&str>) -> String {
    match key {
        Some(k) => format!("approved for customer {customer} with key {}", short_key(k)),
        None => format!("approved for customer {customer}"),
    }
}

pub(crate) fn revoked_detail(old_fingerprint: &str) -> String {
    format!("certificate sha256 {old_fingerprint} revoked: re-enrolled (armed by ops)")
}
