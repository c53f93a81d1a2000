//! The offsite store (`levee serve --store ADDR`): append-only,
//! content-addressed copies of appliances' repositories, one namespace per
//! repository (`<customer>/<repository id>`), over mutual TLS with the
//! appliances' certificates. `docs/OFFSITE.md` describes the protocol and
//! its guarantees; the request parsing is `levee_proto::offsite` (pure,
//! fuzzed), the files are [`files`] (a directory, [`disk`], or an S3
//! bucket, [`s3`]), the handler [`server`].
//!
//! (`crate::store` is the central database; this is where backups go.)

pub mod disk;
pub mod files;
mod part;
pub mod quota;
pub mod s3;
pub mod server;
pub mod tls;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

pub use disk::{Disk, PruneReport};
pub use files::{prune, Files};
pub use s3::{S3Files, S3Options};
pub use server::{StoreState, StoreStats};

use crate::listen::Limits;
use crate::store::Store;

/// Deletion requests wait this long by default (`--store-deletion-grace`).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(14 * 86_400);

/// Settings of the store listener.
#[derive(Debug, Clone)]
pub struct OffsiteOptions {
    /// Where the files live; `None`: `DATA_DIR/offsite`.
    pub dir: Option<PathBuf>,
    /// In S3 instead (`--store-backend`).
    pub s3: Option<S3Options>,
    /// How long an appliance's deletion request waits before it is carried
    /// out (time for ops to notice a compromised appliance).
    pub deletion_grace: Duration,
}

impl Default for OffsiteOptions {
    fn default() -> Self {
        OffsiteOptions {
            dir: None,
            s3: None,
            deletion_grace: DEFAULT_GRACE,
        }
    }
}

/// Serves the store on `listener` until `shutdown` with `tls` (mutual
/// TLS: [`crate::enroll::https::tls_config`] in `levee serve --store`,
/// [`tls::server_config`] in `levee store serve`); also carries out due
/// deletion requests hourly.
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    state: StoreState,
    grace: Duration,
    limits: Limits,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if let Files::Dir(d) = &state.files {
        std::fs::create_dir_all(d.root())?;
    }
    info!(listen = %listener.local_addr()?, files = %state.files.describe(), "offsite store listening");
    let files = state.files.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            let d = files.clone();
            let now = crate::store::now();
            match tokio::task::spawn_blocking(move || prune(&d, now, grace.as_secs(), false)).await
            {
                Ok(Ok(r)) if r.requests_done > 0 || r.partials_dropped > 0 => {
                    info!(
                        requests = r.requests_done,
                        files = r.files_deleted,
                        bytes = r.bytes_freed,
                        partials = r.partials_dropped,
                        "offsite deletions carried out"
                    )
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => error!(error = %e, "offsite prune failed; retrying in an hour"),
                Err(e) => error!(error = %e, "offsite prune panicked"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            }
        }
    });
    let app = server::router(state);
    crate::enroll::https::serve_app(listener, tls, app, limits, shutdown, "store").await?;
    Ok(())
}

/// The store's files: in S3 when `s3` is given (the bucket must answer),
/// else in `dir`.
pub fn files(dir: PathBuf, s3: Option<&S3Options>) -> anyhow::Result<Files> {
    Ok(match s3 {
        Some(o) => Files::S3(S3Files::open(o)?),
        None => Files::Dir(Disk::new(dir)),
    })
}

/// A store state over `files` for `store`'s appliances.
pub fn state(store: Arc<dyn Store>, files: Files) -> StoreState {
    StoreState {
        store,
        files,
        stats: Default::default(),
        usage: Default::default(),
    }
}

/// The fleet's CA certificate (PEM), which appliance certificates chain
/// to: the one in the database (PostgreSQL, shared by every server), else
/// `DATA_DIR/ca/ca.crt`. `None`: no server has made one yet.
pub fn fleet_ca_pem(
    store: &dyn Store,
    data_dir: &std::path::Path,
) -> anyhow::Result<Option<String>> {
    if let Some(stored) = store.server_ca()? {
        return Ok(Some(stored.cert_pem));
    }
    let path = data_dir.join("ca/ca.crt");
    match std::fs::read_to_string(&path) {
        Ok(pem) => Ok(Some(pem)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
    }
}
