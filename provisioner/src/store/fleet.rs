//! What the servers of a fleet share through the store beside appliances
//! and customers: the enrollment CA (see [`crate::fleet`]) and where each
//! server serves image files to the others (see [`crate::image_fetch`]).

use super::Result;

/// The fleet's CA as stored: its certificate, and its key sealed with the
/// server key (`DATA_DIR/server.key`, which every server of a fleet holds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCa {
    pub cert_pem: String,
    pub key_sealed: String,
}

/// What the servers of a fleet share through the store.
pub trait FleetStore {
    /// The stored CA, if one was stored.
    fn server_ca(&self) -> Result<Option<StoredCa>>;
    /// Stores `ca` unless a CA is stored already, and returns the stored
    /// one: of two servers starting at once, the first to commit wins and
    /// the other uses its CA.
    fn init_server_ca(&self, ca: &StoredCa) -> Result<StoredCa>;
    /// Records (or refreshes) a server of the fleet: the base URL at which
    /// the others reach its plain-HTTP listener, seen at `at`.
    fn announce_server(&self, url: &str, at: u64) -> Result<()>;
    /// The servers recorded, the most recently seen first.
    fn fleet_servers(&self) -> Result<Vec<FleetServer>>;
}

/// A server of the fleet as it recorded itself at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetServer {
    /// Base URL of its plain-HTTP listener (`/images/...` under it).
    pub url: String,
    /// When it last started (Unix seconds).
    pub seen_at: u64,
}
