//! The enrolled appliance's loop: configuration, install step, heartbeats,
//! configuration refresh, certificate renewal and the run report spool,
//! all over mutual TLS.

use std::time::Duration;

use levee_proto::config::CustomerConfig;
use levee_proto::enroll::{InstallPlan, InstallState, InstallStatus};

use super::clock::step_clock;
use super::install_step::{install_step, reboot_step, Installed};
use super::jobs::Jobs;
use super::update_step::{JobGate, Tick, Updates};
use super::{facts, BootArgs, DaemonError, RunOptions};
use crate::enroll::{self, Credential, MtlsClient};

/// `30s`, `5m`, `4h` as a duration (zero is refused: it would spin).
pub fn parse_interval(s: &str) -> Option<Duration> {
    levee_proto::config::parse_duration(s)
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
}

/// Time between heartbeats: `levee.interval=` (tests), else the customer's
/// `heartbeat_interval`, else `default`.
pub fn heartbeat_interval(
    override_secs: Option<u64>,
    config: Option<&CustomerConfig>,
    default: Duration,
) -> Duration {
    override_secs
        .map(Duration::from_secs)
        .or_else(|| config.and_then(|c| parse_interval(&c.heartbeat_interval)))
        .unwrap_or(default)
}

/// Booted from the network: `levee.root=` is an http(s) URL (a disk boot
/// says `PARTLABEL=...`). Only then may the appliance install itself.
fn booted_from_network(args: &BootArgs) -> bool {
    args.root.as_deref().is_some_and(|r| r.starts_with("http"))
}

pub(super) fn serve(
    opts: &RunOptions,
    args: &BootArgs,
    mac: &str,
    mut cred: Credential,
) -> Result<(), DaemonError> {
    let who = format!("mac {mac}, appliance {}", cred.server.appliance_id);
    // The RTC may be anything (a fresh box, a dead battery): set the clock
    // from the server's authenticated time before the first request that
    // checks a certificate's validity.
    step_clock(opts, &cred, &who);
    let mut client = loop {
        match MtlsClient::new(&cred) {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!("{who}: {e}");
                if opts.once {
                    return Err(e.into());
                }
                std::thread::sleep(opts.interval);
            }
        }
    };
    let mut config = pull_config(&client, opts, &who, None);

    if booted_from_network(args) {
        match install_plan(&client, opts, &who) {
            Ok(plan) if plan.install => {
                if install(&client, &plan, opts, &who) {
                    if opts.once {
                        tracing::info!("{who}: installed; not rebooting (one pass)");
                    } else if reboot_into_disk(&client, &plan, &who) {
                        // systemd is stopping us; no heartbeat from the
                        // network boot in the meantime.
                        loop {
                            std::thread::sleep(Duration::from_secs(3600));
                        }
                    }
                }
            }
            Ok(_) => tracing::info!(
                "{who}: the customer does not install to disk; serving from the network boot"
            ),
            Err(e) => tracing::warn!("{who}: cannot fetch the install plan: {e}"),
        }
    }

    // Scheduled backups run on their own thread, beside the heartbeats;
    // after the install step, which reboots a machine that installs.
    let gate = JobGate::default();
    let jobs = (!opts.once).then(|| {
        Jobs::start(
            opts.state_dir.clone(),
            who.clone(),
            config.clone(),
            gate.clone(),
        )
    });
    let once_gate = gate.clone();
    let mut updates = Updates::start(&opts.state_dir, args, &who, gate);
    let mut config_pulled = config.is_some();
    let (mut sent, mut first) = (0u64, true);
    loop {
        let report = facts::report(args);
        let (mut offer, mut asked) = (None, None);
        let heartbeat_ok = match client.heartbeat(&report) {
            Ok(answer) => {
                sent += 1;
                offer = answer.update;
                asked = answer.restore;
                if sent == 1 || sent % 20 == 0 {
                    tracing::info!(
                        "{who}: heartbeat {sent} sent (slot {})",
                        report.slot.as_deref().unwrap_or("-")
                    );
                }
                // The server is reachable: send what the spool holds
                // (runs by hand, reports a down server missed).
                let spool = crate::runs::Spool::new(&opts.state_dir);
                if spool.pending().is_ok_and(|p| !p.is_empty()) {
                    let flushed = spool
                        .flush(crate::runs::send_with(&client))
                        .map(Some)
                        .map_err(|e| e.to_string());
                    super::jobs::log_flush(flushed, &who);
                }
                true
            }
            Err(e) => {
                tracing::warn!("{who}: heartbeat failed: {e}");
                // Perhaps the clock is off (the server was out of reach at
                // start): the authenticated step does not depend on it.
                step_clock(opts, &cred, &who);
                false
            }
        };
        // A restore ops asked for: to the job thread; with `once` there
        // is none, so it runs here (nothing else runs then).
        let every = heartbeat_interval(args.interval_secs, config.as_ref(), opts.interval);
        match (&jobs, &asked, &config) {
            (Some(j), _, _) => j.restore(asked.as_ref(), every),
            (None, Some(req), Some(c)) => {
                let watch = crate::asked_restore::Watch {
                    cancel: &crate::asked_restore::CancelAsked::default(),
                    every,
                };
                super::jobs::restore_asked(&opts.state_dir, c, &who, &once_gate, req, watch);
            }
            _ => {}
        }
        // Pulled just before the first heartbeat; revalidated (ETag) at
        // every later one.
        if !first {
            let (next, pulled) = pull_config_ok(&client, opts, &who, config);
            config = next;
            config_pulled |= pulled;
            if let Some(j) = &jobs {
                j.update(config.as_ref());
            }
        }
        first = false;
        // Health check and commit, then the rollout's offer (see
        // update_step): never on a network boot.
        updates.tick(&Tick {
            client: &client,
            heartbeat_ok,
            version: report.image_version.as_deref(),
            config_pulled,
            config: config.as_ref(),
            offered: offer.as_ref(),
            server_url: &cred.server.http_url,
        });
        match cred.validity() {
            Ok((nb, na)) if enroll::renewal_due(nb, na, enroll::unix_now()) => {
                match client.renew(&cred, &opts.state_dir) {
                    Ok(next) => match MtlsClient::new(&next) {
                        Ok(c) => {
                            cred = next;
                            client = c;
                            tracing::info!("{who}: certificate renewed");
                        }
                        Err(e) => tracing::warn!("{who}: renewed credential: {e}"),
                    },
                    Err(e) => tracing::warn!("{who}: certificate renewal failed: {e}"),
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("{who}: stored certificate: {e}"),
        }
        if opts.once {
            return Ok(());
        }
        std::thread::sleep(heartbeat_interval(
            args.interval_secs,
            config.as_ref(),
            opts.interval,
        ));
    }
}

/// The install plan, retried a few times while the server is unreachable:
/// on a network boot systemd-networkd takes the interface over from stage
/// 1 about when the agent asks, and a lost plan would mean no install.
fn install_plan(
    client: &MtlsClient,
    opts: &RunOptions,
    who: &str,
) -> Result<InstallPlan, enroll::EnrollError> {
    let mut delays = [1u64, 2, 3, 5, 8].into_iter();
    loop {
        match client.install_plan() {
            Err(e) if e.is_transient() && !opts.once => match delays.next() {
                Some(secs) => {
                    tracing::warn!(
                        "{who}: cannot fetch the install plan ({e}); retrying in {secs} s"
                    );
                    std::thread::sleep(Duration::from_secs(secs));
                }
                None => return Err(e),
            },
            r => return r,
        }
    }
}

/// Pulls (or revalidates) the configuration; keeps `previous` on failure.
fn pull_config(
    client: &MtlsClient,
    opts: &RunOptions,
    who: &str,
    previous: Option<CustomerConfig>,
) -> Option<CustomerConfig> {
    pull_config_ok(client, opts, who, previous).0
}

/// [`pull_config`], and whether the server answered (the health check
/// counts only a pull over mTLS, not the cache).
fn pull_config_ok(
    client: &MtlsClient,
    opts: &RunOptions,
    who: &str,
    previous: Option<CustomerConfig>,
) -> (Option<CustomerConfig>, bool) {
    let r = client.fetch_config(&opts.state_dir);
    let ok = r.is_ok();
    let config = match r {
        Ok(f) => {
            if f.changed {
                tracing::info!(
                    "{who}: configuration of customer {} pulled (etag {})",
                    f.config.customer,
                    f.etag
                );
            }
            Some(f.config)
        }
        Err(e) => {
            tracing::warn!("{who}: configuration pull failed: {e}");
            previous
        }
    };
    (config, ok)
}

/// Installs to disk; `true` when the disk is ready to boot (the caller
/// then reboots).
fn install(client: &MtlsClient, plan: &InstallPlan, opts: &RunOptions, who: &str) -> bool {
    let version = plan.image.as_ref().map(|i| i.version.clone());
    let status = |state, reason: Option<String>, done: Option<&Installed>| InstallStatus {
        state,
        reason,
        slot: done.map(|d| d.slot.clone()),
        disk: done.map(|d| d.disk.clone()),
        image_version: version.clone(),
    };
    tracing::info!(
        "{who}: installing image {} to disk{}",
        version.as_deref().unwrap_or("-"),
        if plan.reinstall {
            " (reinstall allowed)"
        } else {
            ""
        }
    );
    if let Err(e) = client.post_install_status(&status(InstallState::Installing, None, None)) {
        tracing::warn!("{who}: cannot report `installing`: {e}");
    }
    let mut step_log = |line: &str| tracing::info!("{who}: {line}");
    match install_step(plan, &opts.state_dir, &mut step_log) {
        Ok(Some(done)) => {
            tracing::info!(
                "{who}: installed image {} on {} slot {} in {:.1} s ({} state files carried over)",
                done.image_version,
                done.disk,
                done.slot,
                done.seconds,
                done.state_files
            );
            // Still `installing`: the first heartbeat from the disk with
            // its slot makes it `installed`.
            if let Err(e) =
                client.post_install_status(&status(InstallState::Installing, None, Some(&done)))
            {
                tracing::warn!("{who}: cannot report the installed disk: {e}");
            }
            true
        }
        Ok(None) => false,
        Err(reason) => {
            tracing::warn!("{who}: install failed: {reason}");
            if let Err(e) =
                client.post_install_status(&status(InstallState::Failed, Some(reason), None))
            {
                tracing::warn!("{who}: cannot report `failed`: {e}");
            }
            false
        }
    }
}

/// Reboots into the installed system (`true`: the reboot is under way);
/// on failure says so to the server, and the caller keeps serving from the
/// network boot.
fn reboot_into_disk(client: &MtlsClient, plan: &InstallPlan, who: &str) -> bool {
    tracing::info!("{who}: rebooting into the installed system");
    let Err(e) = reboot_step() else {
        return true;
    };
    let reason = format!("installed, but the reboot failed: {e}");
    tracing::warn!("{who}: {reason}");
    let status = InstallStatus {
        state: InstallState::Failed,
        reason: Some(reason),
        slot: None,
        disk: None,
        image_version: plan.image.as_ref().map(|i| i.version.clone()),
    };
    if let Err(e) = client.post_install_status(&status) {
        tracing::warn!("{who}: cannot report `failed`: {e}");
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_interval("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_interval("0s"), None);
        assert_eq!(parse_interval("soon"), None);
        let config: CustomerConfig = serde_json::from_value(
            serde_json::json!({"customer": "a", "heartbeat_interval": "2m"}),
        )
        .unwrap();
        let d = Duration::from_secs(30);
        assert_eq!(heartbeat_interval(None, None, d), d);
        assert_eq!(
            heartbeat_interval(None, Some(&config), d),
            Duration::from_secs(120)
        );
        assert_eq!(
            heartbeat_interval(Some(1), Some(&config), d),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn only_a_network_boot_installs() {
        let mut a = BootArgs::default();
        assert!(!booted_from_network(&a));
        a.root = Some("PARTLABEL=levee-a".into());
        assert!(!booted_from_network(&a));
        a.root = Some("http://10.0.0.1/images/x/rootfs.squashfs".into());
        assert!(booted_from_network(&a));
    }
}
