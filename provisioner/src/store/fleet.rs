//! What the servers of a fleet share through the store beside appliances
//! and customers: the enrollment CA (see [`crate::fleet`]).

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
}
