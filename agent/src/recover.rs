//! A replacement appliance taking over a lost one's repository by itself
//! (issue 14; the protocol is `levee_proto::recovery_api`).
//!
//! Every appliance keeps an X25519 key of its own in its state directory
//! ([`APPLIANCE_KEY`], made once, 0600) and publishes the public half with
//! its repository's recovery slot (sealed to the customer's paper key) at
//! `POST /api/v1/recovery`. After `levee appliance replace OLD --with NEW
//! --recovery-key FILE`, NEW's `GET /api/v1/recovery` holds OLD's slot
//! secret sealed to NEW's key: [`step`] opens it, fetches the repository's
//! key slots, index, snapshots and config from an offsite target (every
//! file checked against its name), opens it with that secret, adds NEW's
//! own appliance slot, records which targets hold its packs
//! (`crate::backup::unfetched`) and puts it in place as NEW's repository.
//! The packs follow on demand and by the back-fill
//! (`crate::replicate::ondemand`). From then on NEW's backups continue the
//! same history and replicate to the same namespace.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use levee_proto::config::CustomerConfig;
use levee_proto::offsite::Namespace;
use levee_proto::recovery::RecoveryPrivateKey;
use levee_proto::recovery_api::{grant_context, RecoveryGrant, RecoveryUpload, SealedSlot};
use levee_proto::repo::KdfParams;

use crate::backup::recovery::RECOVERY_KIND;
use crate::backup::unfetched::Unfetched;
use crate::enroll::{write_atomic, Credential, MtlsClient};
use crate::replicate::{fetch_metadata, open_target, Bucket};
use crate::Repository;

/// The appliance's own recovery key (hex of 32 random bytes).
pub const APPLIANCE_KEY: &str = "credential/recovery-x25519.key";
/// The repository on the data partition (as the daemon keeps it).
const REPO_DIR: &str = "repo";

#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error("{0}")]
    Local(String),
    #[error("the server: {0}")]
    Server(String),
    #[error("the grant: {0}")]
    Grant(String),
    #[error("no offsite target gave repository {repo}: {why}")]
    Fetch { repo: String, why: String },
    #[error("the fetched repository {0}: {1}")]
    Open(String, crate::RepoError),
}

/// What [`step`] found or did.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// No grant, nothing to wait for: back up as usual.
    Ready,
    /// This appliance replaced one whose repository it should continue;
    /// ops has not re-wrapped it yet. No backup should start a new one.
    Waiting(String),
    /// The granted repository is the local one already.
    Adopted { repository: String, fetched: bool },
}

/// The appliance's own recovery key, made on first use.
pub fn appliance_key(state: &Path) -> Result<RecoveryPrivateKey, RecoverError> {
    let path = state.join(APPLIANCE_KEY);
    let bad = |e: &dyn std::fmt::Display| RecoverError::Local(format!("{}: {e}", path.display()));
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let bytes = hex::decode(text.trim()).map_err(|e| bad(&e))?;
            let key: [u8; 32] = bytes.try_into().map_err(|_| bad(&"not 32 bytes of hex"))?;
            Ok(RecoveryPrivateKey::from_bytes(key))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key: [u8; 32] = rand::random();
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| bad(&e))?;
            }
            write_atomic(&path, hex::encode(key).as_bytes(), 0o600).map_err(|e| bad(&e))?;
            let key = RecoveryPrivateKey::from_bytes(key);
            // Ops can compare it with what `appliance replace` seals to.
            tracing::info!(
                "made this appliance's recovery key {} (fingerprint {})",
                path.display(),
                key.public().fingerprint()
            );
            Ok(key)
        }
        Err(e) => Err(bad(&e)),
    }
}

/// The repository's recovery slot as published: its id and the sealed
/// secret of its recovery slot (none: no slot yet).
pub fn sealed_slot(repo: &Repository) -> Result<Option<SealedSlot>, crate::RepoError> {
    Ok(repo
        .key_slots()?
        .into_iter()
        .filter(|(_, s)| s.kind == RECOVERY_KIND)
        .find_map(|(_, s)| s.sealed_secret)
        .map(|sealed| SealedSlot {
            id: repo.config.id.clone(),
            sealed,
        }))
}

/// Publishes this appliance's key and, if given, its repository's slot.
pub fn publish(
    client: &MtlsClient,
    state: &Path,
    repo: Option<&Repository>,
) -> Result<(), RecoverError> {
    let key = appliance_key(state)?;
    let repository = match repo {
        Some(r) => sealed_slot(r).map_err(|e| RecoverError::Local(e.to_string()))?,
        None => None,
    };
    client
        .post_recovery(&RecoveryUpload {
            appliance_key: key.public().to_string(),
            repository,
        })
        .map_err(|e| RecoverError::Server(e.to_string()))
}

/// One recovery step of the service, before a backup: publish this
/// appliance's key (and its repository's slot), then, if the server holds
/// a grant for a repository that is not the local one, take it over.
/// `repo_key` is the appliance's repository secret.
pub fn step(state: &Path, config: &CustomerConfig, repo_key: &[u8]) -> Result<Step, RecoverError> {
    let Some(cred) = Credential::load(state).map_err(|e| RecoverError::Local(e.to_string()))?
    else {
        // Not enrolled: no server to publish to or take a grant from.
        return Ok(Step::Ready);
    };
    let client = MtlsClient::new(&cred).map_err(|e| RecoverError::Server(e.to_string()))?;
    let repo_dir = state.join(REPO_DIR);
    let local = match Repository::open(&repo_dir, repo_key) {
        Ok(r) => Some(r),
        Err(crate::RepoError::NotARepository(_)) => None,
        Err(e) => return Err(RecoverError::Local(format!("{}: {e}", repo_dir.display()))),
    };
    publish(&client, state, local.as_ref())?;
    let answer = client
        .recovery()
        .map_err(|e| RecoverError::Server(e.to_string()))?;
    let Some(grant) = answer.grant else {
        return Ok(match (answer.waiting, &local) {
            (Some(why), None) => Step::Waiting(why),
            _ => Step::Ready,
        });
    };
    if local
        .as_ref()
        .is_some_and(|r| r.config.id == grant.repository)
    {
        return Ok(Step::Adopted {
            repository: grant.repository,
            fetched: false,
        });
    }
    let local_id = local.as_ref().map(|r| r.config.id.clone());
    drop(local);
    adopt(state, config, &cred, &grant, repo_key, local_id.as_deref())?;
    let repo = Repository::open(&repo_dir, repo_key)
        .map_err(|e| RecoverError::Open(grant.repository.clone(), e))?;
    // The adopted repository's slot is now this appliance's to publish.
    publish(&client, state, Some(&repo))?;
    Ok(Step::Adopted {
        repository: grant.repository,
        fetched: true,
    })
}

/// Opens `grant`, fetches its repository from the first offsite target of
/// `config` that gives all of it, opens it with the granted secret, adds
/// this appliance's slot and moves it to `STATE/repo` (a repository
/// already there, `local_id`, is kept aside as `repo.superseded-<id>`).
fn adopt(
    state: &Path,
    config: &CustomerConfig,
    cred: &Credential,
    grant: &RecoveryGrant,
    repo_key: &[u8],
    local_id: Option<&str>,
) -> Result<(), RecoverError> {
    if grant.customer != config.customer {
        return Err(RecoverError::Grant(format!(
            "it is for customer {}, this appliance serves {}",
            grant.customer, config.customer
        )));
    }
    let ns = Namespace::new(&grant.customer, &grant.repository)
        .map_err(|e| RecoverError::Grant(e.to_string()))?;
    let secret = appliance_key(state)?
        .open(
            &grant.sealed,
            &grant_context(&grant.customer, &grant.repository),
        )
        .map_err(|e| {
            RecoverError::Grant(format!(
                "{e} (sealed to another key of this appliance? run `levee appliance replace` with \
                 --recovery-key again)"
            ))
        })?;
    tracing::info!(
        "taking over repository {} of appliance {} (recovery grant): fetching it from {} offsite target(s)",
        grant.repository,
        grant.from_appliance,
        config.offsite.len()
    );
    let dest = state
        .join("recovered")
        .join(&grant.customer)
        .join(&grant.repository);
    let rate = config
        .bandwidth_limit
        .as_deref()
        .and_then(levee_proto::config::parse_rate);
    let bucket = Arc::new(Bucket::new(rate));
    let mut why = Vec::new();
    let mut fetched_from = None;
    for t in &config.offsite {
        let target = match open_target(
            t,
            ns.clone(),
            cred,
            bucket.clone(),
            Duration::from_secs(600),
            state,
        ) {
            Ok(target) => target,
            Err(e) => {
                why.push(format!("{}: {e}", t.name));
                continue;
            }
        };
        match fetch_metadata(target.as_ref(), &dest) {
            Ok(got) => {
                tracing::info!(
                    "fetched repository {} from offsite target {}: {} file(s), {} bytes ({} already here); \
                     its {} pack(s), {} MiB, are fetched on demand and back-filled",
                    grant.repository,
                    t.name,
                    got.files,
                    got.bytes,
                    got.skipped,
                    got.packs_left.0,
                    got.packs_left.1 >> 20
                );
                fetched_from = Some(t.name.clone());
                break;
            }
            Err(e) => {
                tracing::warn!(
                    "fetching repository {} from offsite target {}: {e}",
                    grant.repository,
                    t.name
                );
                why.push(format!("{}: {e}", t.name));
            }
        }
    }
    let Some(from) = fetched_from else {
        return Err(RecoverError::Fetch {
            repo: grant.repository.clone(),
            why: if why.is_empty() {
                "the configuration has no offsite target".into()
            } else {
                why.join("; ")
            },
        });
    };
    let repo = Repository::open(&dest, &secret)
        .map_err(|e| RecoverError::Open(grant.repository.clone(), e))?;
    // A fetch resumed after a crash may hold this appliance's slot already.
    if Repository::open(&dest, repo_key).is_err() {
        let slot = repo
            .add_key(repo_key, KdfParams::new_default(), "appliance", "appliance")
            .map_err(|e| RecoverError::Open(grant.repository.clone(), e))?;
        tracing::info!(
            "repository {}: added this appliance's key slot {slot}",
            grant.repository
        );
    }
    // Before the repository takes its place: from then on its packs are
    // known to be offsite, not lost (a crash before this leaves it in
    // STATE/recovered/, where the next step resumes).
    let mut targets = vec![from.clone()];
    targets.extend(
        config
            .offsite
            .iter()
            .map(|t| t.name.clone())
            .filter(|n| *n != from),
    );
    Unfetched {
        version: 1,
        customer: grant.customer.clone(),
        repository: grant.repository.clone(),
        targets,
        since: crate::enroll::unix_now(),
    }
    .save(repo.local().as_ref())
    .map_err(|e| RecoverError::Local(format!("{}: {e}", dest.display())))?;
    drop(repo);
    let repo_dir = state.join(REPO_DIR);
    if let Some(old) = local_id {
        let aside = superseded(state, old);
        std::fs::rename(&repo_dir, &aside).map_err(|e| {
            RecoverError::Local(format!("moving {} aside: {e}", repo_dir.display()))
        })?;
        tracing::warn!(
            "the repository this appliance had started ({old}) is kept aside in {}",
            aside.display()
        );
    }
    std::fs::rename(&dest, &repo_dir).map_err(|e| {
        RecoverError::Local(format!(
            "moving {} to {}: {e}",
            dest.display(),
            repo_dir.display()
        ))
    })?;
    crate::backup::backend::local::sync_dir(state)
        .map_err(|e| RecoverError::Local(e.to_string()))?;
    tracing::info!(
        "repository {} of appliance {} is now this appliance's repository: backups continue its history",
        grant.repository,
        grant.from_appliance
    );
    Ok(())
}

fn superseded(state: &Path, id: &str) -> PathBuf {
    state.join(format!("repo.superseded-{}", &id[..id.len().min(16)]))
}
