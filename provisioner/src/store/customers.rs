//! Customers and their configurations (secrets sealed).

use levee_proto::config::CustomerConfig;
use serde::Serialize;

use super::{Result, StoreError};

/// A customer and its configuration, secrets sealed (see
/// [`crate::secrets::ServerKey::seal_config`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CustomerRecord {
    pub name: String,
    pub config: CustomerConfig,
    pub created_at: u64,
    pub updated_at: u64,
}

/// The error for a customer that is not there.
pub fn no_customer(name: &str) -> StoreError {
    StoreError::NotFound {
        what: "customer",
        name: name.to_string(),
        hint: ": create it with `levee customer apply -f FILE.yaml`",
    }
}

/// Customers and their configurations (secrets sealed).
pub trait CustomerStore {
    /// Creates or updates a customer (its configuration with secrets sealed).
    fn put_customer(&self, config: &CustomerConfig) -> Result<CustomerRecord>;
    fn customer(&self, name: &str) -> Result<Option<CustomerRecord>>;
    fn customers(&self) -> Result<Vec<CustomerRecord>>;
    /// Sets the bytes the customer may hold in each offsite store (`None`:
    /// no limit). Kept beside the configuration: `customer apply` leaves it.
    fn set_offsite_quota(&self, name: &str, bytes: Option<u64>) -> Result<()>;
    /// The customer's offsite quota; `None`: no limit.
    fn offsite_quota(&self, name: &str) -> Result<Option<u64>>;
}
