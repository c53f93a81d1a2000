//! `levee serve`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use levee_pxe::dhcp::DhcpMode;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::serve::{self, DhcpConfig, Listeners, ServeConfig};
use levee_pxe::dhcp::interface_ipv4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Hand out addresses from --dhcp-range (isolated provisioning LAN).
    Full,
    /// Answer only PXE clients, beside an existing DHCP server.
    Proxy,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Plain-HTTP listener (boot scripts, images, reports).
    #[arg(long, default_value = "0.0.0.0:80")]
    http: SocketAddr,

    /// HTTPS listener with client certificates: the API of enrolled
    /// appliances (off when not given; then machines cannot enroll).
    #[arg(long, value_name = "ADDR:PORT")]
    https: Option<SocketAddr>,

    /// The offsite store listener (mutual TLS with appliance certificates):
    /// appliances replicate their repositories here, append-only (see
    /// docs/OFFSITE.md). Off when not given.
    #[arg(long, value_name = "ADDR:PORT")]
    store: Option<SocketAddr>,

    /// Where the offsite store keeps its files (default DATA_DIR/offsite).
    /// Several `levee serve --store` nodes may share one directory.
    #[arg(long, value_name = "DIR", requires = "store")]
    store_dir: Option<PathBuf>,

    #[command(flatten)]
    store_files: super::store::BackendArgs,

    /// How long an appliance's request to delete offsite files waits
    /// before the store carries it out (time to notice a compromised
    /// appliance), e.g. 14d or 36h.
    #[arg(long, default_value = "14d", value_parser = parse_interval)]
    store_deletion_grace: Duration,

    /// TFTP listener (iPXE binaries, files in DATA_DIR/tftp/).
    #[arg(long, default_value = "0.0.0.0:69")]
    tftp: SocketAddr,

    /// Do not run TFTP (HTTP-only networks, UEFI HTTP Boot).
    #[arg(long)]
    no_tftp: bool,

    /// Run DHCP on this interface (off when not given).
    #[arg(long, value_name = "IFACE")]
    dhcp_interface: Option<String>,

    /// `full` hands out leases; `proxy` only adds boot information to
    /// another DHCP server's offers.
    #[arg(long, value_enum, default_value = "proxy", requires = "dhcp_interface")]
    dhcp_mode: ModeArg,

    /// Address range for `full` mode, e.g. 10.99.0.100-10.99.0.200.
    #[arg(long, value_name = "FIRST-LAST", value_parser = parse_range)]
    dhcp_range: Option<(Ipv4Addr, Ipv4Addr)>,

    /// Send no IPv6 router advertisements. Without them iPXE waits ~16 s
    /// per boot on networks that have no IPv6 router; in proxy mode they
    /// carry no prefix, so they configure nothing on other hosts.
    #[arg(long)]
    no_ra: bool,

    /// How often the alert rules are judged (`levee alert list`; webhooks
    /// from `levee alert webhook set`), e.g. 30s or 5m.
    #[arg(long, default_value = "60s", value_parser = parse_interval)]
    alert_interval: Duration,

    /// Prometheus metrics at http://ADDR/metrics (off when not given):
    /// appliances by state, heartbeat and backup ages, request latencies,
    /// enrollments, config pulls, boot events, runs, store sizes. Plain
    /// HTTP without authentication, and the series name appliances and
    /// customers: bind it to loopback or a management network.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<SocketAddr>,

    /// Base URL machines use to reach --http (needed when it is bound to
    /// 0.0.0.0 and no --dhcp-interface tells the address).
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,

    /// With --database (a fleet): the base URL at which the fleet's other
    /// servers reach --http, recorded in the database so that a server
    /// lacking an image's files fetches them from this one. Default:
    /// --public-url (give this when the provisioning LANs do not route to
    /// each other).
    #[arg(long, value_name = "URL")]
    fleet_url: Option<String>,

    /// Where the iPXE binaries are (undionly.kpxe, ipxe.efi, snponly.efi).
    #[arg(long, default_value = "/usr/lib/ipxe")]
    ipxe_dir: PathBuf,

    /// On SIGTERM or SIGINT, stop accepting and give requests in flight
    /// this many seconds to finish before closing their connections. A
    /// second signal stops at once.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    grace_period: u64,

    /// Most connections open at once on each TCP listener (--http,
    /// --https); more are closed at once (plain HTTP answers 503 first).
    #[arg(long, value_name = "N", default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..))]
    max_conns: u64,

    /// Most connections open at once from one client address (an IPv4
    /// address or an IPv6 /64) on each listener: one host on the LAN cannot
    /// take the whole --max-conns.
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    max_conns_per_ip: u64,

    /// A request head must arrive within this from its first byte (a
    /// client trickling its header is cut off): e.g. 10s, 500ms, 1m.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = crate::listen::parse_duration)]
    header_timeout: Duration,

    /// A TLS handshake on --https must finish within this after accept.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = crate::listen::parse_duration)]
    tls_timeout: Duration,

    /// A kept-alive connection with no request is closed after this; also
    /// the longest silence allowed in the middle of a request.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = crate::listen::parse_duration)]
    idle_timeout: Duration,

    /// The web panel's TLS listener (off when not given), e.g.
    /// 0.0.0.0:8443. Operators log in with `levee operator add NAME`'s
    /// one-time password; the URL is printed at start-up.
    #[arg(long, value_name = "ADDR:PORT")]
    ui: Option<SocketAddr>,

    /// A host name or address browsers use for the panel: its certificate
    /// (from the Levee CA) names it, and it is the printed URL's (the first
    /// one). Repeat for several; by default --ui's address, or the
    /// public URL's host when --ui is bound to 0.0.0.0.
    #[arg(long, value_name = "NAME", requires = "ui")]
    ui_host: Vec<String>,

    /// The panel's own certificate chain (PEM) instead of one from the
    /// Levee CA; with --ui-key.
    #[arg(long, value_name = "FILE", requires_all = ["ui", "ui_key"])]
    ui_cert: Option<PathBuf>,

    /// The key of --ui-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "ui_cert")]
    ui_key: Option<PathBuf>,

    /// Give enrollment tokens only to machines registered with `levee
    /// appliance register`: unknown machines still boot, but cannot enroll
    /// and wait for `approve` (by default they can).
    #[arg(long)]
    no_pending_enrollment: bool,
}

fn parse_range(s: &str) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    let (a, b) = s.split_once('-').ok_or_else(|| {
        format!("`{s}` is not a range: write FIRST-LAST, e.g. 10.99.0.100-10.99.0.200")
    })?;
    let first: Ipv4Addr = a
        .trim()
        .parse()
        .map_err(|_| format!("`{a}` is not an IPv4 address"))?;
    let last: Ipv4Addr = b
        .trim()
        .parse()
        .map_err(|_| format!("`{b}` is not an IPv4 address"))?;
    if u32::from(first) > u32::from(last) {
        return Err(format!("range {first}-{last} runs backwards"));
    }
    Ok((first, last))
}

/// Works out the URL machines use for HTTP: the flag, else the bound
/// address, else the DHCP interface's address.
fn public_url(args: &ServeArgs, iface_ip: Option<Ipv4Addr>) -> anyhow::Result<String> {
    if let Some(url) = &args.public_url {
        return Ok(url.trim_end_matches('/').to_string());
    }
    let ip: IpAddr = if !args.http.ip().is_unspecified() {
        args.http.ip()
    } else if let Some(ip) = iface_ip {
        IpAddr::V4(ip)
    } else {
        bail!(
            "--http is bound to {} and no --dhcp-interface says which address machines reach: pass --public-url http://ADDRESS",
            args.http
        );
    };
    let host = match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    Ok(match args.http.port() {
        80 => format!("http://{host}"),
        port => format!("http://{host}:{port}"),
    })
}

/// The listeners' caps and timeouts from the flags; warns when the
/// descriptor limit cannot hold that many connections.
fn limits(args: &ServeArgs) -> crate::listen::Limits {
    let limits = crate::listen::Limits {
        max_conns: usize::try_from(args.max_conns).unwrap_or(usize::MAX),
        max_conns_per_ip: usize::try_from(args.max_conns_per_ip).unwrap_or(usize::MAX),
        header_timeout: args.header_timeout,
        tls_timeout: args.tls_timeout,
        idle_timeout: args.idle_timeout,
    };
    let listeners = if args.https.is_some() { 2 } else { 1 };
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills a struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0
        && lim.rlim_cur != libc::RLIM_INFINITY
        && (limits.max_conns as u64) * listeners + 64 > lim.rlim_cur
    {
        warn!(
            max_conns = limits.max_conns,
            open_file_limit = lim.rlim_cur,
            "the open-file limit is below --max-conns on every listener plus what the server needs itself: raise it (LimitNOFILE=) or lower --max-conns"
        );
    }
    limits
}

/// Each TFTP transfer holds a socket and a file: raise the soft open-file
/// limit to the hard one so hundreds of machines booting at once fit.
fn raise_open_file_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

pub fn run(ctx: &super::Ctx, args: ServeArgs) -> anyhow::Result<()> {
    raise_open_file_limit();
    let data_dir = ctx.data_dir();
    let store = ctx.open_store()?;
    std::fs::create_dir_all(data_dir.join("tftp"))
        .with_context(|| format!("cannot create {}", data_dir.join("tftp").display()))?;

    let dhcp = match &args.dhcp_interface {
        None => None,
        Some(iface) => {
            let ip = interface_ipv4(iface)
                .ok()
                .and_then(|addrs| addrs.first().map(|a| a.ip))
                .with_context(|| {
                    format!("interface `{iface}` has no IPv4 address: give it one (ip addr add ... dev {iface}) or name another interface")
                })?;
            let mode = match args.dhcp_mode {
                ModeArg::Full => DhcpMode::Full,
                ModeArg::Proxy => DhcpMode::Proxy,
            };
            if mode == DhcpMode::Full && args.dhcp_range.is_none() {
                bail!("--dhcp-mode full hands out addresses: give --dhcp-range FIRST-LAST");
            }
            Some(DhcpConfig {
                interface: iface.clone(),
                mode,
                range: args.dhcp_range,
                server_ip: ip,
                ra: !args.no_ra,
            })
        }
    };
    let public_url = public_url(&args, dhcp.as_ref().map(|d| d.server_ip))?;
    let tftp_host = match (&dhcp, args.tftp.ip()) {
        (_, IpAddr::V4(ip)) if !ip.is_unspecified() => ip.to_string(),
        (Some(d), _) => d.server_ip.to_string(),
        _ => url_host(&public_url),
    };

    let grace = Duration::from_secs(args.grace_period);
    let limits = limits(&args);
    let ui = args.ui.map(|addr| ui_options(&args, addr, &public_url));
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let served_store = store.clone();
    let served = runtime.block_on(async move {
        let http = tokio::net::TcpListener::bind(args.http)
            .await
            .with_context(|| format!("cannot listen for HTTP on {}", args.http))?;
        let tftp = if args.no_tftp {
            None
        } else {
            Some(
                tokio::net::UdpSocket::bind(args.tftp)
                    .await
                    .with_context(|| format!("cannot listen for TFTP on {}", args.tftp))?,
            )
        };
        let https = match args.https {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen for HTTPS on {addr}"))?,
            ),
            None => None,
        };
        let store_listener = match args.store {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen for the offsite store on {addr}"))?,
            ),
            None => None,
        };
        let mut services = Vec::new();
        if let Some((addr, options, hosts)) = &ui {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for the panel (--ui) on {addr}"))?;
            let port = listener.local_addr()?.port();
            let host = &hosts[0];
            let host = if host.contains(':') { format!("[{host}]") } else { host.clone() };
            let url = match port {
                443 => format!("https://{host}/"),
                port => format!("https://{host}:{port}/"),
            };
            println!("panel: {url}  (operators: levee operator add NAME; the one-time password it prints logs in once)");
            services.push(("ui", crate::ui::service(listener, options.clone())));
        }
        let shutdown = CancellationToken::new();
        watch_signals(shutdown.clone(), grace)?;
        if let Some(addr) = args.metrics {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for metrics on {addr}"))?;
            spawn_metrics(listener, &served_store, data_dir, limits, &shutdown)?;
        }
        let config = ServeConfig {
            data_dir: data_dir.to_path_buf(),
            ipxe_dir: args.ipxe_dir.clone(),
            public_url,
            tftp_host,
            dhcp,
            grace,
            alerts: crate::alerts::AlertOptions {
                interval: args.alert_interval,
                ..Default::default()
            },
            limits,
            allow_pending: !args.no_pending_enrollment,
            offsite: crate::offsite::OffsiteOptions {
                dir: args.store_dir.clone(),
                s3: args.store_files.s3(args.store_dir.as_deref())?,
                deletion_grace: args.store_deletion_grace,
            },
            fleet_url: args.fleet_url.clone(),
        };
        serve::run_with(
            served_store,
            Listeners {
                http,
                https,
                tftp,
                store: store_listener,
            },
            config,
            shutdown,
            services,
        )
        .await
    });
    // Requests still running on the blocking pool past the grace period
    // (a store call stuck on a dead database) must not hold the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    store.close();
    if served.is_ok() {
        info!("stopped");
    }
    served
}

/// The `--metrics` listener, beside the services of [`serve::run`]: it
/// stops with them, and its failure stops them (as any service's would).
fn spawn_metrics(
    listener: tokio::net::TcpListener,
    store: &std::sync::Arc<dyn crate::store::Store>,
    data_dir: &std::path::Path,
    limits: crate::listen::Limits,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    // Installed before the other services start, so nothing goes uncounted.
    crate::metrics::install()?;
    let (store, data_dir, stop) = (store.clone(), data_dir.to_path_buf(), shutdown.clone());
    tokio::spawn(async move {
        if let Err(e) = crate::metrics::serve(listener, store, data_dir, limits, stop.clone()).await
        {
            tracing::error!(
                service = "metrics",
                error = format!("{e:#}"),
                "service stopped"
            );
            stop.cancel();
        }
    });
    Ok(())
}

/// The panel's certificate source and the names it answers to (the first
/// is the printed URL's).
fn ui_options(
    args: &ServeArgs,
    addr: SocketAddr,
    public_url: &str,
) -> (SocketAddr, crate::ui::UiOptions, Vec<String>) {
    let mut hosts = args.ui_host.clone();
    if hosts.is_empty() {
        hosts.push(if addr.ip().is_unspecified() {
            url_host(public_url).trim_matches(['[', ']']).to_string()
        } else {
            addr.ip().to_string()
        });
    }
    let tls = match (&args.ui_cert, &args.ui_key) {
        (Some(cert), Some(key)) => crate::ui::UiTls::Files {
            cert: cert.clone(),
            key: key.clone(),
        },
        _ => crate::ui::UiTls::Ca {
            hosts: hosts.clone(),
        },
    };
    (addr, crate::ui::UiOptions { tls }, hosts)
}

/// SIGTERM or SIGINT cancels `shutdown` (a clean stop: see
/// [`serve::run`]); a second one exits at once, with 128 + its number.
pub(super) fn watch_signals(shutdown: CancellationToken, grace: Duration) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    tokio::spawn(async move {
        let mut first = true;
        loop {
            let (name, number) = tokio::select! {
                _ = term.recv() => ("SIGTERM", libc::SIGTERM),
                _ = int.recv() => ("SIGINT", libc::SIGINT),
            };
            if first {
                info!(
                    signal = name,
                    grace_secs = grace.as_secs(),
                    "stopping: no new connections; requests in flight may finish within the grace period (a second signal stops at once)"
                );
                shutdown.cancel();
                first = false;
            } else {
                warn!(signal = name, "second signal: stopping at once");
                std::process::exit(128 + number);
            }
        }
    });
    Ok(())
}

/// `http://10.0.0.1:8080/x` -> `10.0.0.1`.
fn url_host(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or(rest);
    match authority.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host.to_string(),
        _ => authority.to_string(),
    }
}

/// `60s`, `5m` as a duration (at least a second).
pub(super) fn parse_interval(s: &str) -> Result<Duration, String> {
    levee_proto::config::parse_duration(s)
        .filter(|n| *n >= 1)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{s}` is not a duration; expected e.g. 30s, 5m"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_reject_nonsense() {
        assert!(parse_range("10.0.0.10-10.0.0.20").is_ok());
        assert!(parse_range("10.0.0.20-10.0.0.10")
            .unwrap_err()
            .contains("backwards"));
        assert!(parse_range("10.0.0.10").unwrap_err().contains("FIRST-LAST"));
        assert!(parse_range("10.0.0.x-10.0.0.20").is_err());
    }

    #[test]
    fn url_host_strips_scheme_port_and_path() {
        assert_eq!(url_host("http://10.0.0.1:8080/x"), "10.0.0.1");
        assert_eq!(url_host("http://example.org"), "example.org");
    }
}
