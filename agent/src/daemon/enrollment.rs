//! Enrolling from the daemon: one key made here, one request retried until
//! the server answers with a certificate (approval may take a while) or
//! refuses for good.

use std::path::{Path, PathBuf};
use std::time::Duration;

use levee_proto::enroll::EnrollmentRequest;

use super::{facts, BootArgs, DaemonError, RunOptions};
use crate::enroll::{self, Attempt, Credential, NewKey, ServerInfo};

/// The key of an enrollment in progress, kept so that a restarted agent
/// retries with the key the server holds as pending (no token needed).
fn pending_key_path(state_dir: &Path) -> PathBuf {
    Credential::dir(state_dir).join("pending-key.pem")
}

fn key_for(state_dir: &Path, mac: &str) -> Result<NewKey, enroll::EnrollError> {
    let path = pending_key_path(state_dir);
    if let Ok(pem) = std::fs::read_to_string(&path) {
        match NewKey::from_key_pem(&pem, mac) {
            Ok(k) => return Ok(k),
            Err(e) => tracing::warn!("mac {mac}: {e}; making a new key"),
        }
    }
    let key = NewKey::generate(mac)?;
    let kept = std::fs::create_dir_all(Credential::dir(state_dir))
        .map_err(|e| e.to_string())
        .and_then(|()| {
            enroll::write_atomic(&path, key.key_pem.as_bytes(), 0o600).map_err(|e| e.to_string())
        });
    if let Err(e) = kept {
        tracing::warn!(
            "mac {mac}: cannot keep the new key ({e}); a restart will need a fresh token"
        );
    }
    Ok(key)
}

/// Enrolls if the command line allows; `Ok(None)` when it does not or the
/// server refused (the caller then reports over plain HTTP).
pub(super) fn enroll(
    opts: &RunOptions,
    args: &BootArgs,
    mac: &str,
) -> Result<Option<Credential>, DaemonError> {
    let (Some(url), Some(token), Some(ca)) = (&args.url, &args.token, &args.ca) else {
        if args.token.is_some() {
            tracing::warn!(
                "mac {mac}: levee.token= without levee.url= and levee.ca=: cannot enroll"
            );
        }
        return Ok(None);
    };
    if mac.is_empty() {
        tracing::warn!("no boot MAC (no BOOTIF= and no Ethernet interface): cannot enroll");
        return Ok(None);
    }
    let retry = args
        .interval_secs
        .map(Duration::from_secs)
        .unwrap_or(opts.enroll_retry);
    let key = match key_for(&opts.state_dir, mac) {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!("mac {mac}: cannot enroll: {e}");
            return if opts.once { Err(e.into()) } else { Ok(None) };
        }
    };
    let facts = facts::hardware_facts();
    tracing::info!(
        "mac {mac}: enrolling at {url} ({} MAC(s), {} disk(s), dmi serial {})",
        facts.macs.len(),
        facts.disks.len(),
        facts.dmi_serial.as_deref().unwrap_or("-")
    );
    // Ops compares this with `levee appliance list` (KEY) and approves
    // with --fingerprint: a key someone else sent in this MAC's name does
    // not match.
    crate::logging::console(&format!(
        "mac {mac}: enrollment key fingerprint {}",
        key.fingerprint()
    ));
    let req = EnrollmentRequest {
        token: token.clone(),
        mac: mac.to_string(),
        csr_pem: key.csr_pem.clone(),
        facts,
    };
    let (mut pending_logged, mut failures) = (false, 0u64);
    loop {
        match enroll::request_enrollment(url, &req) {
            Ok(Attempt::Enrolled(resp)) => {
                if let Err(e) = enroll::check_ca(&resp.ca_pem, ca) {
                    tracing::warn!("mac {mac}: enrollment at {url} not trusted: {e}");
                    return if opts.once { Err(e.into()) } else { Ok(None) };
                }
                let who = format!("mac {mac}, appliance {}", resp.appliance_id);
                // The clock is set from the server's authenticated time
                // before the first mutual-TLS request (daemon::clock), not
                // from this plain-HTTP answer.
                let cred = Credential {
                    key_pem: key.key_pem.clone(),
                    cert_pem: resp.certificate_pem,
                    ca_pem: resp.ca_pem,
                    server: ServerInfo {
                        http_url: url.clone(),
                        https_url: resp.https_url,
                        appliance_id: resp.appliance_id,
                    },
                };
                match cred.save(&opts.state_dir) {
                    Ok(()) => {
                        let _ = std::fs::remove_file(pending_key_path(&opts.state_dir));
                    }
                    Err(e) => tracing::warn!(
                        "{who}: cannot store the credential ({e}); using it from memory"
                    ),
                }
                tracing::info!(
                    "{who}: enrolled; mutual-TLS API at {}",
                    cred.server.https_url
                );
                return Ok(Some(cred));
            }
            Ok(Attempt::Pending(p)) => {
                if !pending_logged {
                    crate::logging::console(&format!(
                        "mac {mac}: waiting for approval of key {}: ops must run `{}`; retrying every {}s",
                        key.fingerprint(),
                        p.approve,
                        retry.as_secs_f32()
                    ));
                    pending_logged = true;
                }
            }
            Err(e) if e.is_transient() => {
                failures += 1;
                if failures == 1 || failures % 10 == 0 {
                    tracing::warn!("mac {mac}: enrollment attempt {failures} failed: {e}");
                }
                if opts.once && failures >= 3 {
                    return Err(e.into());
                }
            }
            Err(e) => {
                tracing::warn!(
                    "mac {mac}: enrollment refused: {e}; reporting over plain HTTP without a credential (booting again gets a fresh token)"
                );
                let _ = std::fs::remove_file(pending_key_path(&opts.state_dir));
                return if opts.once { Err(e.into()) } else { Ok(None) };
            }
        }
        std::thread::sleep(retry);
    }
}
