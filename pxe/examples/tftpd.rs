//! Serves a directory over TFTP: `tftpd ROOT [ADDR:PORT]` (default
//! 0.0.0.0:69). Handy for trying clients by hand and for bench/tftp.sh.
//! `RUST_LOG=debug` shows ignored packets. For experiments,
//! `TFTPD_BUSY_POLL_US`, `TFTPD_GSO=0|1`, `TFTPD_MAX_WINDOWSIZE` override
//! the defaults and `TFTPD_RUNTIME=current` runs a single-threaded runtime.

use std::sync::Arc;

use anyhow::Context;
use levee_pxe::tftp::{serve, DirSource, TftpOptions};
use tokio_util::sync::CancellationToken;

fn main() -> anyhow::Result<()> {
    // TFTPD_RUNTIME=current: a single-threaded runtime, to compare.
    let runtime = if std::env::var("TFTPD_RUNTIME").is_ok_and(|v| v == "current") {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
    };
    runtime.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let root = args.next().context("usage: tftpd ROOT [ADDR:PORT]")?;
    let addr = args.next().unwrap_or_else(|| "0.0.0.0:69".to_string());
    raise_fd_limit();
    let socket = tokio::net::UdpSocket::bind(&addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    tracing::info!(root, addr = %socket.local_addr()?, "serving TFTP");
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_signal.cancel();
        }
    });
    serve(
        socket,
        Arc::new(DirSource::new(root)),
        options_from_env()?,
        shutdown,
    )
    .await?;
    Ok(())
}

/// Each transfer holds a socket and a file: lift the soft descriptor limit
/// to the hard one so hundreds of transfers fit.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn options_from_env() -> anyhow::Result<TftpOptions> {
    let mut options = TftpOptions::default();
    if let Ok(us) = std::env::var("TFTPD_BUSY_POLL_US") {
        options.busy_poll =
            std::time::Duration::from_micros(us.parse().context("TFTPD_BUSY_POLL_US")?);
    }
    if let Ok(gso) = std::env::var("TFTPD_GSO") {
        options.gso = gso != "0";
    }
    if let Ok(w) = std::env::var("TFTPD_MAX_WINDOWSIZE") {
        options.max_windowsize = w.parse().context("TFTPD_MAX_WINDOWSIZE")?;
    }
    Ok(options)
}
