//! `levee-agent run`: the systemd service. It logs to the journal and:
//!
//! 1. loads its credential from the state dir (`/var/lib/levee/credential`);
//! 2. without one, enrolls if the kernel command line carries a token
//!    (`levee.url=`, `levee.ca=`, `levee.token=`), waiting for approval
//!    without a reboot if ops has not approved the machine yet;
//! 3. without either, reports its status over plain HTTP as before;
//! 4. once enrolled: sets its clock from the server's authenticated time
//!    (mutual TLS; never from plain HTTP), pulls its customer's
//!    configuration (mTLS, ETag-cached), installs to disk if it booted from
//!    the network and the plan says so (through [`install_step`] only: the
//!    installer carries the state dir onto the data partition, then the
//!    daemon reboots into the disk), then heartbeats at the configured
//!    interval, refreshing the configuration and renewing its certificate
//!    when due. After a disk boot, a health check (configuration pulled,
//!    heartbeat accepted with the running version, data partition mounted,
//!    backup repository opens)
//!    commits the boot slot; then updates follow the rollout's offers
//!    ([`update_step`]). Errors never end the loop.

mod clock;
mod cmdline;
mod enrolled;
mod enrollment;
mod facts;
mod http;
mod install_step;
mod jobs;
mod update_step;

use std::path::PathBuf;
use std::time::Duration;

pub use cmdline::BootArgs;
pub use enrolled::{heartbeat_interval, parse_interval};
pub use install_step::{install_step, Installed};

/// Settings of `levee-agent run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Kernel command line to read `levee.*` keys from.
    pub cmdline: PathBuf,
    /// Time between reports once one got through.
    pub interval: Duration,
    /// Time between attempts while none has got through yet.
    pub retry: Duration,
    /// Send one report and return (for scripts and tests). Enrolled: one
    /// pass (config, install step, one heartbeat, a restore request the
    /// heartbeat brought, renewal check; no scheduled job); a pending
    /// machine still waits for its approval first.
    pub once: bool,
    /// The agent's state (credential, cached configuration): the data
    /// partition's `/var/lib/levee` on an installed appliance.
    pub state_dir: PathBuf,
    /// Time between enrollment attempts while pending or while the server
    /// is unreachable (`levee.interval=` overrides it).
    pub enroll_retry: Duration,
    /// Set the system clock from the server when it is off by more than
    /// 2 s (tests turn it off: it is the host's clock).
    pub set_clock: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            cmdline: PathBuf::from("/proc/cmdline"),
            interval: Duration::from_secs(30),
            // Short: the service starts before the network is configured, and
            // the first report's time is the boot's time to a usable box.
            retry: Duration::from_millis(500),
            once: false,
            state_dir: PathBuf::from("/var/lib/levee"),
            enroll_retry: Duration::from_secs(3),
            set_clock: true,
        }
    }
}

/// Why the daemon stopped.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot read the kernel command line {path}: {source}")]
    Cmdline {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot send the status report to {url}: {reason}")]
    Report { url: String, reason: String },
    /// Only with `once`: enrolling or the enrolled pass failed.
    #[error(transparent)]
    Enroll(#[from] crate::enroll::EnrollError),
}

/// Runs the agent service; returns only with `once` or on a fatal error.
pub fn run(opts: &RunOptions) -> Result<(), DaemonError> {
    let text = std::fs::read_to_string(&opts.cmdline).map_err(|source| DaemonError::Cmdline {
        path: opts.cmdline.clone(),
        source,
    })?;
    let args = BootArgs::parse(&text);
    let boot_id = facts::boot_id();
    tracing::info!(
        "levee-agent {} starting (image {}, boot {})",
        env!("CARGO_PKG_VERSION"),
        facts::image_version().as_deref().unwrap_or("unknown"),
        boot_id.as_deref().unwrap_or("unknown")
    );
    let mac = facts::boot_mac(&args).unwrap_or_default();
    let credential = match crate::enroll::Credential::load(&opts.state_dir) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(
                "mac {mac}: the stored credential is not usable ({e}); enrolling again if a token allows"
            );
            None
        }
    };
    let credential = match credential {
        Some(c) => {
            tracing::info!(
                "mac {mac}: credential of appliance {} found in {}",
                c.server.appliance_id,
                opts.state_dir.display()
            );
            Some(c)
        }
        None => enrollment::enroll(opts, &args, &mac)?,
    };
    match credential {
        Some(c) => enrolled::serve(opts, &args, &mac, c),
        None => plain_reports(opts, &args),
    }
}

/// Status reports over plain HTTP: a machine without a credential.
fn plain_reports(opts: &RunOptions, args: &BootArgs) -> Result<(), DaemonError> {
    let Some(url) = args.url.clone() else {
        // Nothing to report to (an installed appliance gets its server
        // from its configuration later): stay up as the service.
        tracing::warn!("no levee.url= on the kernel command line; not reporting");
        if opts.once {
            return Ok(());
        }
        loop {
            std::thread::sleep(opts.interval);
        }
    };
    let interval = args
        .interval_secs
        .map(Duration::from_secs)
        .unwrap_or(opts.interval);
    if args.token.is_none() {
        // The server accepts reports only with the machine's enrollment
        // token; without one they are refused, which the log shows.
        tracing::warn!(
            "no levee.token= on the kernel command line: the server will refuse these reports (an enrolled appliance needs `levee appliance reenroll` to enroll again)"
        );
    }
    let (mut sent, mut failed) = (0u64, 0u64);
    loop {
        let report = facts::report(args);
        match http::post_json(
            &url,
            levee_proto::paths::REPORT,
            &report,
            args.token.as_deref(),
        ) {
            Ok(status) => {
                sent += 1;
                // The first report and every 20th after it: enough to follow a
                // box in the journal without one line per heartbeat.
                if sent == 1 || sent % 20 == 0 {
                    tracing::info!(
                        "status report {sent} sent to {url} (mac {}, HTTP {status})",
                        report.mac
                    );
                }
            }
            Err(reason) => {
                failed += 1;
                // Before the network is up the first tries fail: say so once,
                // then every tenth time.
                if failed == 1 || failed % 10 == 0 || opts.once {
                    tracing::warn!(
                        "status report to {url} failed (mac {}, attempt {failed}): {reason}",
                        report.mac
                    );
                }
                if opts.once {
                    return Err(DaemonError::Report { url, reason });
                }
            }
        }
        if opts.once {
            return Ok(());
        }
        std::thread::sleep(if sent == 0 { opts.retry } else { interval });
    }
}
