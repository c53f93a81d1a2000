//! `levee serve`: one task per protocol (DHCP, router advertisements, TFTP,
//! HTTP) over one store, all stopped by the first fatal error or by the
//! shutdown token.
//!
//! [`run`] takes sockets that are already bound, so tests can bind port 0
//! and the binary can bind privileged ports before anything else happens.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use levee_pxe::boot::MacAddr;
use levee_pxe::dhcp::{self, DhcpMode, Lease, LeaseStore};
use levee_pxe::tftp::{self, FileSource, OpenError, TftpFile};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::boot::BootService;
use crate::http::{router, HttpState};
use crate::images::image_dir;
use crate::store::Store;

/// DHCP settings; DHCP is off unless an interface is given.
#[derive(Debug, Clone)]
pub struct DhcpConfig {
    pub interface: String,
    pub mode: DhcpMode,
    pub range: Option<(Ipv4Addr, Ipv4Addr)>,
    /// The server's own address on that interface (next-server).
    pub server_ip: Ipv4Addr,
    /// Send IPv6 router advertisements (with our prefixes in full mode,
    /// none in proxy mode).
    pub ra: bool,
}

/// What `levee serve` serves, and where machines reach it.
pub struct ServeConfig {
    pub data_dir: PathBuf,
    pub ipxe_dir: PathBuf,
    pub public_url: String,
    pub tftp_host: String,
    pub dhcp: Option<DhcpConfig>,
    /// After `shutdown`, how long requests in flight may take to finish
    /// before their connections are closed.
    pub grace: Duration,
    /// The alert rules and webhook deliveries ([`crate::alerts`]).
    pub alerts: crate::alerts::AlertOptions,
    /// Connection caps and timeouts, the same for every TCP listener.
    pub limits: crate::listen::Limits,
    /// Whether unknown machines may enroll and wait for approval
    /// (`--no-pending-enrollment` turns it off).
    pub allow_pending: bool,
    /// The offsite store (`--store`): where its files live, deletion grace.
    pub offsite: crate::offsite::OffsiteOptions,
    /// On a shared store: the base URL at which the fleet's other servers
    /// reach this one's `--http` (`--fleet-url`); `None`: `public_url`.
    pub fleet_url: Option<String>,
}

/// Sockets bound by the caller.
pub struct Listeners {
    pub http: tokio::net::TcpListener,
    /// The mutual-TLS API for enrolled appliances; without it nobody enrolls.
    pub https: Option<tokio::net::TcpListener>,
    pub tftp: Option<tokio::net::UdpSocket>,
    /// The offsite store (mutual TLS with appliance certificates).
    pub store: Option<tokio::net::TcpListener>,
}

/// What an added service (the web panel) gets from `levee serve`: the
/// store, the server key and CA once they are ready, the listeners' limits
/// and the shutdown token.
#[derive(Clone)]
pub struct Shared {
    pub store: Arc<dyn Store>,
    pub key: Arc<crate::secrets::ServerKey>,
    pub ca: Arc<crate::enroll::ca::ServerCa>,
    pub limits: crate::listen::Limits,
    pub stop: CancellationToken,
}

/// A service run beside the built-in ones, stopped with them.
pub type Service = Box<
    dyn FnOnce(
            Shared,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>
        + Send,
>;

/// Runs until `shutdown` is cancelled or one service fails; then stops the
/// others and returns the first error.
pub async fn run(
    store: Arc<dyn Store>,
    listeners: Listeners,
    config: ServeConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_with(store, listeners, config, shutdown, Vec::new()).await
}

/// [`run`] with added services, named for the logs (`ui`: the web panel).
pub async fn run_with(
    store: Arc<dyn Store>,
    listeners: Listeners,
    config: ServeConfig,
    shutdown: CancellationToken,
    services: Vec<(&'static str, Service)>,
) -> anyhow::Result<()> {
    crate::store::private_dir(&config.data_dir).context("data directory")?;
    let key = crate::secrets::ServerKey::load_or_create(&config.data_dir).context("server key")?;
    // Secrets sealed by an older levee are bound to their field and
    // destination before anything reads them.
    let resealed =
        crate::secrets::reseal_store(store.as_ref(), &key).context("re-sealing secrets")?;
    if resealed > 0 {
        info!(
            customers = resealed,
            "secrets re-sealed in the current format"
        );
    }
    let key = Arc::new(key);
    // Created on first start; its fingerprint goes into every boot script.
    // A shared store (PostgreSQL) holds the fleet's one CA, so every server
    // on it issues and accepts the same certificates (see crate::fleet).
    let ca = crate::fleet::open_ca(store.as_ref(), &key, &config.data_dir)?;
    let ca = Arc::new(ca);
    // Image records are shared by a fleet, their files are not: say at
    // start which profiles this server cannot boot yet.
    crate::fleet::warn_missing_images(store.as_ref(), &config.data_dir);
    let images = fleet_images(&store, &config, &shutdown).await?;
    let boot = BootService {
        ca_fingerprint: ca.fingerprint().to_string(),
        store: store.clone(),
        data_dir: config.data_dir.clone(),
        public_url: config.public_url.clone(),
        tftp_host: config.tftp_host.clone(),
        allow_pending: config.allow_pending,
        limits: Default::default(),
    };
    let mut tasks: JoinSet<(&'static str, anyhow::Result<()>)> = JoinSet::new();

    let limits = config.limits;
    let http_addr = listeners.http.local_addr()?;
    let mut https_url = None;
    if let Some(listener) = listeners.https {
        use crate::enroll::https;
        let host = url_host(&config.public_url);
        let port = listener.local_addr()?.port();
        let url = if host.contains(':') {
            format!("https://[{host}]:{port}")
        } else {
            format!("https://{host}:{port}")
        };
        let tls = https::tls_config(&ca, &host).context("--https")?;
        let state = https::ApiState {
            store: store.clone(),
            ca: ca.clone(),
            key: key.clone(),
            served: Default::default(),
            rendered: Default::default(),
            boot: boot.clone(),
        };
        info!(listen = %listener.local_addr()?, url = %url, "https listening");
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let served = https::serve(listener, tls, state, limits, stop)
                .await
                .context("HTTPS server failed");
            ("https", served)
        });
        https_url = Some(url);
    }
    if let Some(listener) = listeners.store {
        let host = url_host(&config.public_url);
        let dir = config
            .offsite
            .dir
            .clone()
            .unwrap_or_else(|| config.data_dir.join("offsite"));
        // The S3 client blocks (reqwest's blocking client): made, and the
        // bucket asked, off the async threads.
        let s3 = config.offsite.s3.clone();
        let files = tokio::task::spawn_blocking(move || crate::offsite::files(dir, s3.as_ref()))
            .await
            .context("--store-backend")??;
        let state = crate::offsite::state(store.clone(), files);
        let tls = crate::enroll::https::tls_config(&ca, &host).context("--store")?;
        let (grace, stop) = (config.offsite.deletion_grace, shutdown.clone());
        tasks.spawn(async move {
            let served = crate::offsite::serve(listener, tls, state, grace, limits, stop)
                .await
                .context("offsite store failed");
            ("store", served)
        });
    }
    let app = router(HttpState {
        boot: boot.clone(),
        enroll: crate::enroll::service::EnrollService {
            store: store.clone(),
            ca: ca.clone(),
            https_url,
            allow_pending: config.allow_pending,
        },
        ipxe_dir: config.ipxe_dir.clone(),
        images,
    });
    let stop = shutdown.clone();
    tasks.spawn(async move {
        let served = crate::listen::serve_plain(listeners.http, app, limits, stop)
            .await
            .context("HTTP server failed");
        ("http", served)
    });
    info!(listen = %http_addr, public_url = %config.public_url, "http listening");

    for (name, service) in services {
        let shared = Shared {
            store: store.clone(),
            key: key.clone(),
            ca: ca.clone(),
            limits,
            stop: shutdown.clone(),
        };
        tasks.spawn(async move { (name, service(shared).await) });
    }

    // Alert rules, judged every interval; webhooks posted as they fall due.
    {
        let (store, key, opts) = (store.clone(), key.clone(), config.alerts.clone());
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let ran = crate::alerts::run(store, key, opts, stop).await;
            ("alerts", ran)
        });
    }

    // Keep every channel's snapshot and timestamp fresh (see
    // releases/mod.rs for why a day).
    {
        let layout = crate::releases::Layout::new(&config.data_dir);
        let stop = shutdown.clone();
        tasks.spawn(async move {
            resign_loop(layout, stop).await;
            ("release re-signing", Ok(()))
        });
    }

    if let Some(socket) = listeners.tftp {
        let addr = socket.local_addr()?;
        let source: Arc<dyn FileSource> = Arc::new(tftp::ChainSource::new(vec![
            Arc::new(BootFiles { boot: boot.clone() }),
            Arc::new(IpxeFiles {
                dir: config.ipxe_dir.clone(),
            }),
            Arc::new(tftp::DirSource::new(config.data_dir.join("tftp"))),
        ]));
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let served = tftp::serve(socket, source, tftp::TftpOptions::default(), stop)
                .await
                .context("TFTP server failed");
            ("tftp", served)
        });
        info!(listen = %addr, root = %config.data_dir.join("tftp").display(), "tftp listening");
    }

    if let Some(dhcp_cfg) = config.dhcp {
        let ipxe = dhcp::IpxeBinaries::discover(&config.ipxe_dir);
        let options = dhcp::DhcpOptions {
            interface: dhcp_cfg.interface.clone(),
            mode: dhcp_cfg.mode,
            range: dhcp_cfg.range,
            lease_time: Duration::from_secs(3600),
            ipxe,
            http_base: config.public_url.clone(),
            server_ip: Some(dhcp_cfg.server_ip),
            server_port: 67,
            proxy_port: 4011,
            client_port: 68,
        };
        let policy = Arc::new(boot.clone());
        let leases: Arc<dyn LeaseStore> = Arc::new(StoreLeases(store.clone()));
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let served = dhcp::serve(options, policy, leases, stop)
                .await
                .context("DHCP server failed");
            ("dhcp", served)
        });
        if dhcp_cfg.ra {
            // iPXE waits ~16 s for a router advertisement before it goes on.
            // In proxy mode the LAN's addresses are someone else's: advertise
            // no prefix, only end that wait.
            let stop = shutdown.clone();
            let iface = dhcp_cfg.interface.clone();
            let full = dhcp_cfg.mode == DhcpMode::Full;
            tasks.spawn(async move {
                let served = if full {
                    levee_pxe::ra::serve(&iface, stop).await
                } else {
                    levee_pxe::ra::serve_without_prefixes(&iface, stop).await
                };
                ("ra", served.context("router advertisements failed"))
            });
        }
    }

    // The first task to end (error, or a clean stop after cancellation)
    // stops the rest; they then have the grace period to finish.
    let mut first_error = None;
    let mut deadline = None;
    loop {
        let joined = if shutdown.is_cancelled() {
            let until = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + config.grace);
            match tokio::time::timeout_at(until, tasks.join_next()).await {
                Ok(joined) => joined,
                Err(_) => {
                    warn!(
                        grace_secs = config.grace.as_secs(),
                        services = tasks.len(),
                        "grace period over: closing the connections still open"
                    );
                    tasks.abort_all();
                    while tasks.join_next().await.is_some() {}
                    break;
                }
            }
        } else {
            tokio::select! {
                joined = tasks.join_next() => joined,
                _ = shutdown.cancelled() => continue,
            }
        };
        let Some(joined) = joined else { break };
        let (name, result) = match joined {
            Ok(r) => r,
            Err(e) => ("task", Err(anyhow::anyhow!("a server task panicked: {e}"))),
        };
        if let Err(e) = result {
            error!(service = name, error = format!("{e:#}"), "service stopped");
            first_error.get_or_insert(e);
        }
        shutdown.cancel();
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// On a shared store (PostgreSQL): records where this server serves image
/// files to the others, and fetches in the background the files of the
/// boot profiles' images it lacks (see [`crate::image_fetch`]). `None`
/// on SQLite, a fleet of one.
async fn fleet_images(
    store: &Arc<dyn Store>,
    config: &ServeConfig,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Arc<crate::image_fetch::ImageFetcher>>> {
    if !store.shared() {
        return Ok(None);
    }
    let url = config
        .fleet_url
        .clone()
        .unwrap_or_else(|| config.public_url.clone());
    let fetcher = Arc::new(
        crate::image_fetch::ImageFetcher::new(store.clone(), config.data_dir.clone(), url.clone())
            .context("image fetcher")?,
    );
    match fetcher.announce().await {
        Ok(()) => {
            info!(%url, "serving image files to the fleet's other servers at this URL (recorded in the database)")
        }
        Err(e) => {
            warn!(%url, error = %e, "could not record this server in the database: the others will not fetch images from it")
        }
    }
    let (background, stop) = (fetcher.clone(), shutdown.clone());
    tokio::spawn(async move {
        tokio::select! {
            () = background.fetch_profiles_images() => {}
            () = stop.cancelled() => {}
        }
    });
    Ok(Some(fetcher))
}

/// `http://10.0.0.1:8080/x` -> `10.0.0.1`; `http://[::1]:80` -> `::1`.
fn url_host(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6).to_string();
    }
    authority.split(':').next().unwrap_or(authority).to_string()
}

/// The files the provisioner generates for TFTP clients: boot scripts at
/// `boot/<mac>.ipxe` and image artifacts at `images/<id>/<file>`, the same
/// paths as over HTTP.
struct BootFiles {
    boot: BootService,
}

impl FileSource for BootFiles {
    fn open(&self, path: &str) -> Result<TftpFile, OpenError> {
        self.open_from(path, None)
    }

    fn open_from(
        &self,
        path: &str,
        peer: Option<std::net::SocketAddr>,
    ) -> Result<TftpFile, OpenError> {
        let path = path.trim_start_matches('/');
        let not_found = || OpenError::NotFound(path.to_string());
        if let Some(name) = path.strip_prefix("boot/") {
            let mac: MacAddr = name
                .strip_suffix(".ipxe")
                .and_then(|m| m.parse().ok())
                .ok_or_else(not_found)?;
            let script = self.boot.script(mac, peer.map(|p| p.ip()));
            return Ok(TftpFile::Memory(Arc::from(script.into_bytes())));
        }
        if let Some(rest) = path.strip_prefix("images/") {
            let (image, file) = rest.split_once('/').ok_or_else(not_found)?;
            let plain = |s: &str| !s.is_empty() && !s.starts_with('.') && !s.contains(['/', '\\']);
            if !plain(image) || !plain(file) {
                return Err(OpenError::AccessDenied(path.to_string()));
            }
            let full = image_dir(&self.boot.data_dir, image).join(file);
            let io = |source| OpenError::Io {
                path: path.to_string(),
                source,
            };
            let file = match std::fs::File::open(&full) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_found()),
                Err(e) => return Err(io(e)),
            };
            let len = file.metadata().map_err(io)?.len();
            return Ok(TftpFile::Disk { file, len });
        }
        Err(not_found())
    }
}

/// The iPXE binaries, by their exact names only. Debian's `/usr/lib/ipxe`
/// holds symlinks into `/boot`, so a confined directory source would refuse
/// them; the operator chose `--ipxe-dir`, so its links are trusted, and
/// nothing else in it is exposed.
struct IpxeFiles {
    dir: PathBuf,
}

impl FileSource for IpxeFiles {
    fn open(&self, path: &str) -> Result<TftpFile, OpenError> {
        let name = path.trim_start_matches('/');
        if ![
            dhcp::BIOS_BINARY,
            dhcp::EFI_X64_BINARY,
            dhcp::EFI_X64_SNP_BINARY,
        ]
        .contains(&name)
        {
            return Err(OpenError::NotFound(path.to_string()));
        }
        let full = self.dir.join(name);
        let io = |source| OpenError::Io {
            path: path.to_string(),
            source,
        };
        let file = match std::fs::File::open(&full) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(OpenError::NotFound(path.to_string()))
            }
            Err(e) => return Err(io(e)),
        };
        let len = file.metadata().map_err(io)?.len();
        Ok(TftpFile::Disk { file, len })
    }
}

/// DHCP leases kept in the central store, so they survive restarts.
struct StoreLeases(Arc<dyn Store>);

impl LeaseStore for StoreLeases {
    fn load(&self) -> Result<Vec<Lease>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(self.0.leases()?)
    }

    fn save(&self, lease: &Lease) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        Ok(self.0.save_lease(lease)?)
    }
}

/// Re-signs release metadata before it expires: at start, then every ten
/// minutes (well inside the 12 hours of margin, so a suspended or busy
/// server still catches up in time). Failures are logged and retried.
async fn resign_loop(layout: crate::releases::Layout, stop: CancellationToken) {
    loop {
        if layout.root_chain().is_ok() {
            match crate::releases::refresh::resign_all(&layout).await {
                Ok(done) => {
                    for (channel, r) in done {
                        info!(channel, snapshot = ?r.snapshot, timestamp = ?r.timestamp, "release metadata re-signed");
                    }
                }
                Err(e) => {
                    error!(error = %e, "re-signing release metadata failed; retrying in 10 minutes")
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(600)) => {}
        }
    }
}
