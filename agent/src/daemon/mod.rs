//! `levee-agent run`: the systemd service. At this stage it starts, logs
//! to the journal, and reports the machine's status to `levee.url` from
//! the kernel command line, again and again while it runs. Enrollment,
//! install and scheduled jobs grow here in later issues.

mod cmdline;
mod facts;
mod http;
mod logging;

use std::path::PathBuf;
use std::time::Duration;

pub use cmdline::BootArgs;

/// Settings of `levee-agent run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Kernel command line to read `levee.*` keys from.
    pub cmdline: PathBuf,
    /// Time between reports once one got through.
    pub interval: Duration,
    /// Time between attempts while none has got through yet.
    pub retry: Duration,
    /// Send one report and return (for scripts and tests).
    pub once: bool,
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
}

/// Runs the agent service; returns only with `once` or on a fatal error.
pub fn run(opts: &RunOptions) -> Result<(), DaemonError> {
    let log = logging::Log::new();
    let text = std::fs::read_to_string(&opts.cmdline).map_err(|source| DaemonError::Cmdline {
        path: opts.cmdline.clone(),
        source,
    })?;
    let args = BootArgs::parse(&text);
    let boot_id = facts::boot_id();
    log.info(format_args!(
        "levee-agent {} starting (image {}, boot {})",
        env!("CARGO_PKG_VERSION"),
        facts::image_version().as_deref().unwrap_or("unknown"),
        boot_id.as_deref().unwrap_or("unknown")
    ));
    let Some(url) = args.url.clone() else {
        // Nothing to report to (an installed appliance gets its server
        // from its configuration later): stay up as the service.
        log.warn(format_args!(
            "no levee.url= on the kernel command line; not reporting"
        ));
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
    let (mut sent, mut failed) = (0u64, 0u64);
    loop {
        let report = facts::report(&args);
        match http::post_json(&url, levee_proto::paths::REPORT, &report) {
            Ok(status) => {
                sent += 1;
                // The first report and every 20th after it: enough to follow a
                // box in the journal without one line per heartbeat.
                if sent == 1 || sent % 20 == 0 {
                    log.info(format_args!(
                        "status report {sent} sent to {url} (mac {}, HTTP {status})",
                        report.mac
                    ));
                }
            }
            Err(reason) => {
                failed += 1;
                // Before the network is up the first tries fail: say so once,
                // then every tenth time.
                if failed == 1 || failed % 10 == 0 || opts.once {
                    log.warn(format_args!(
                        "status report to {url} failed (mac {}, attempt {failed}): {reason}",
                        report.mac
                    ));
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
