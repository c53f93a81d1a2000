//! Central state: images, boot profiles, appliances, their boot history,
//! reports and DHCP leases.
//!
//! Everything goes through the [`Store`] trait so that the SQLite store
//! (embedded, the default, in `--data-dir`) and a PostgreSQL store can sit
//! behind the same server and CLI code. The operator CLI opens the same store
//! as `levee serve` and acts on it directly; the SQLite implementation uses
//! WAL mode and a busy timeout so both can do so at once.

mod sqlite;

use std::time::{SystemTime, UNIX_EPOCH};

use levee_pxe::boot::MacAddr;
use serde::Serialize;

pub use sqlite::SqliteStore;

/// Errors of the store. Messages name the object and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("{what} `{name}` does not exist{hint}")]
    NotFound {
        what: &'static str,
        name: String,
        hint: &'static str,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// An imported image: a directory of artifacts under `DATA/images/<id>/`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageRecord {
    /// `<name>-<version>`; also the directory name and the URL segment.
    pub id: String,
    pub name: String,
    pub version: String,
    /// The image's `image.json`, as imported.
    pub manifest: levee_proto::image::ImageManifest,
    pub imported_at: u64,
}

/// How iPXE fetches a profile's kernel and initrd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// HTTP from `--http` (fast; the default).
    Http,
    /// TFTP from `--tftp` (for networks where only TFTP is allowed).
    Tftp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Http => "http",
            Transport::Tftp => "tftp",
        }
    }

    fn parse(s: &str) -> Result<Transport> {
        match s {
            "http" => Ok(Transport::Http),
            "tftp" => Ok(Transport::Tftp),
            other => Err(StoreError::Corrupt(format!("unknown transport `{other}`"))),
        }
    }
}

/// A boot profile: which image a machine boots and with what command line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Profile {
    pub name: String,
    /// Image id (see [`ImageRecord::id`]).
    pub image: String,
    /// Artifact names inside the image.
    pub kernel: String,
    pub initrd: String,
    /// Kernel command-line template; see [`crate::boot_script`] for the
    /// variables it may use.
    pub cmdline: String,
    pub transport: Transport,
}

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
}

/// One step in a machine's boot history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub at: u64,
    pub step: String,
    pub detail: String,
}

/// The operations every store offers.
pub trait Store: Send + Sync + 'static {
    fn put_image(&self, image: &ImageRecord) -> Result<()>;
    fn image(&self, id: &str) -> Result<Option<ImageRecord>>;
    fn images(&self) -> Result<Vec<ImageRecord>>;

    fn put_profile(&self, profile: &Profile) -> Result<()>;
    fn profile(&self, name: &str) -> Result<Option<Profile>>;
    fn profiles(&self) -> Result<Vec<Profile>>;
    fn delete_profile(&self, name: &str) -> Result<()>;

    /// Registers a machine (or updates a registered one's fields).
    fn register_appliance(
        &self,
        mac: MacAddr,
        serial: Option<&str>,
        profile: Option<&str>,
    ) -> Result<Appliance>;
    /// Notes that a machine showed up on the network; creates an
    /// unregistered row the first time.
    fn appliance_seen(&self, mac: MacAddr) -> Result<Appliance>;
    fn set_appliance_profile(&self, mac: MacAddr, profile: Option<&str>) -> Result<()>;
    fn appliance(&self, mac: MacAddr) -> Result<Option<Appliance>>;
    fn appliances(&self) -> Result<Vec<Appliance>>;
    fn remove_appliance(&self, mac: MacAddr) -> Result<()>;
    fn record_report(&self, report: &levee_proto::report::StatusReport, mac: MacAddr) -> Result<()>;

    /// Appends to a machine's history (the oldest entries beyond a few
    /// hundred are dropped so a machine in a boot loop cannot fill the disk).
    fn add_event(&self, mac: MacAddr, step: &str, detail: &str) -> Result<()>;
    fn events(&self, mac: MacAddr, limit: usize) -> Result<Vec<Event>>;

    fn leases(&self) -> Result<Vec<levee_pxe::dhcp::Lease>>;
    fn save_lease(&self, lease: &levee_pxe::dhcp::Lease) -> Result<()>;
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Profile names end up in URLs, file names and logs: keep them tame.
pub fn validate_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "{what} name `{name}` is not allowed: use 1-64 letters, digits, `-`, `_` or `.` (not leading)"
        )))
    }
}
