//! Alerts: rules judged periodically inside `levee serve`, each alert
//! opened once while its condition holds and resolved once when it stops,
//! delivered to webhooks as signed JSON with retries.
//!
//! - [`rules`] is pure: a snapshot of the fleet in, findings out, and the
//!   transitions against the alerts already open;
//! - [`webhook`] is the wire format: the body, its HMAC-SHA256 signature
//!   (`X-Levee-Signature: sha256=<hex>`) and the back-off;
//! - [`engine`] does the I/O: gathers the snapshot from the store, opens
//!   and resolves alerts there (which queues their deliveries), and posts
//!   what is due.
//!
//! ```
//! use levee_provisioner::alerts::webhook::{sign, verify};
//! let sig = sign(b"secret", b"{}");
//! assert!(sig.starts_with("sha256="));
//! assert!(verify(b"secret", b"{}", &sig));
//! assert!(!verify(b"other", b"{}", &sig));
//! ```

pub mod engine;
pub mod rules;
pub mod webhook;

pub use engine::{evaluate_once, run, AlertOptions};
