//! `--repo https://STORE/<customer>/<repository id>`: a repository read
//! from a Levee offsite store (disaster recovery). Everything but the packs
//! is fetched into `STATE/recovered/<customer>/<repository id>/` (every
//! file checked against its name; a second run fetches only what is
//! missing), the packs as they are read (`ondemand::open_copy`), and it is
//! opened with the customer's paper key. The store admits only the appliance the
//! namespace is bound to, so this runs with the credential of the
//! replacement (`levee appliance replace OLD --with NEW`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use levee_agent::enroll::Credential;
use levee_agent::replicate::{ondemand, Bucket, StoreClient};
use levee_agent::Repository;
use levee_proto::offsite::Namespace;
use levee_proto::recovery::RecoveryPrivateKey;

/// The endpoint and namespace of `https://HOST[:PORT]/<customer>/<id>`
/// (a `/store/v1` before them is accepted too).
pub fn parse_store_url(url: &str) -> Result<(String, Namespace)> {
    let bad = || {
        anyhow!("`{url}` is not a Levee store repository URL: expected https://HOST:PORT/CUSTOMER/REPOSITORY-ID")
    };
    let rest = url.strip_prefix("https://").ok_or_else(bad)?;
    let (authority, path) = rest.split_once('/').ok_or_else(bad)?;
    let path = path.trim_end_matches('/');
    let path = path.strip_prefix("store/v1/").unwrap_or(path);
    let (customer, id) = path.split_once('/').ok_or_else(bad)?;
    if authority.is_empty() {
        return Err(bad());
    }
    let ns = Namespace::new(customer, id).with_context(bad)?;
    Ok((format!("https://{authority}"), ns))
}

/// Fetches the repository at `url` and opens it with the paper key in
/// `recovery_key`.
pub fn open(url: &str, recovery_key: Option<&Path>, state: &Path) -> Result<Repository> {
    let (endpoint, ns) = parse_store_url(url)?;
    let Some(key_file) = recovery_key else {
        bail!("a repository in an offsite store opens only with the customer's paper key: add --recovery-key FILE");
    };
    let text = std::fs::read_to_string(key_file)
        .with_context(|| format!("reading the recovery key {}", key_file.display()))?;
    let key = RecoveryPrivateKey::from_key_file(&text)
        .with_context(|| format!("the recovery key in {}", key_file.display()))?;
    let cred = Credential::load(state)?.ok_or_else(|| {
        anyhow!(
            "no appliance credential in {}: the store serves a repository only to the appliance it is bound to; \
             replace the lost appliance (`levee appliance replace OLD --with NEW`) and run this on NEW (or give its --state-dir)",
            state.display()
        )
    })?;
    let dest = state.join("recovered").join(&ns.customer).join(&ns.repo);
    let client = StoreClient::new(
        &[&endpoint],
        &cred,
        ns.clone(),
        Arc::new(Bucket::new(None)),
        Duration::from_secs(600),
    )?;
    let copy = ondemand::open_copy(Box::new(client), url, &ns, &dest, &key)
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("opening {url}"))?;
    let got = &copy.fetched;
    eprintln!(
        "fetched {} file(s), {} bytes from {url} into {} ({} already there); packs ({} on the store, {} bytes) are fetched as they are read",
        got.files,
        got.bytes,
        dest.display(),
        got.skipped,
        got.packs_left.0,
        got.packs_left.1
    );
    Ok(copy.repo)
}

/// `check --read-data --repair-from-offsite`: the damaged packs of `r`
/// replaced by their copies on the configuration's offsite targets.
pub fn repair(
    g: &super::Global,
    repo: &Repository,
    r: &levee_agent::backup::commands::check::CheckReport,
) -> Result<()> {
    let mut packs: Vec<String> = r.damaged_blobs.iter().map(|b| b.pack.clone()).collect();
    packs.sort();
    packs.dedup();
    let cache = g.state_dir.join(levee_agent::enroll::CONFIG_CACHE);
    let text = std::fs::read(&cache).with_context(|| {
        format!(
            "reading the appliance's configuration {} (its offsite targets)",
            cache.display()
        )
    })?;
    let config: levee_proto::config::CustomerConfig = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a configuration", cache.display()))?;
    let repaired = levee_agent::replicate::repair_from_offsite(
        &g.state_dir,
        &config,
        &repo.path,
        &repo.config.id,
        &packs,
    )
    .map_err(|e| anyhow!("repairing from offsite: {e}"))?;
    for p in &repaired.packs {
        eprintln!("repaired pack {p} from its offsite copy");
    }
    for (p, why) in &repaired.failed {
        eprintln!("pack {p} not repaired: {why}");
    }
    Ok(())
}

/// Reads of `repo`'s packs that are not here fetch them, when it is a
/// repository taken over from an offsite copy. A configuration or
/// credential that cannot be had is said once; reads of such packs then
/// fail naming the pack.
pub fn attach(g: &super::Global, repo: &Repository) {
    // A copy opened from a store URL has its source already (`open`).
    if repo.local().has_pack_source() || !levee_agent::replicate::ondemand::pending(&repo.path) {
        return;
    }
    let attached = ondemand::cached_config(&g.state_dir)
        .and_then(|config| ondemand::attach(repo, &g.state_dir, &config));
    if let Err(e) = attached {
        eprintln!(
            "levee-agent: packs not yet fetched from offsite cannot be fetched: {}",
            super::output::esc(&e)
        );
    }
}

#[derive(clap::Args)]
pub struct BackfillArgs {
    /// Download cap (`20Mbit/s`, `1MiB/s`); default: the configuration's
    /// `bandwidth_limit`.
    #[arg(long)]
    pub bandwidth_limit: Option<String>,
}

/// `levee-agent backfill`.
pub fn backfill(
    g: &super::Global,
    repo: &Repository,
    a: &BackfillArgs,
) -> Result<ondemand::Backfill> {
    let config = ondemand::cached_config(&g.state_dir).map_err(|e| anyhow!(e))?;
    let rate = match &a.bandwidth_limit {
        Some(s) => Some(
            levee_proto::config::parse_rate(s)
                .ok_or_else(|| anyhow!("--bandwidth-limit {s:?}: not a rate (e.g. 20Mbit/s)"))?,
        ),
        None => config
            .bandwidth_limit
            .as_deref()
            .and_then(levee_proto::config::parse_rate),
    };
    let b = ondemand::backfill(repo, &g.state_dir, &config, rate, None);
    for e in &b.errors {
        eprintln!("levee-agent: back-fill: {}", super::output::esc(e));
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_name_endpoint_and_namespace() {
        let id = "a".repeat(64);
        let (e, ns) = parse_store_url(&format!("https://offsite.example:8443/acme/{id}")).unwrap();
        assert_eq!(e, "https://offsite.example:8443");
        assert_eq!(
            (ns.customer.as_str(), ns.repo.as_str()),
            ("acme", id.as_str())
        );
        assert!(parse_store_url(&format!("https://h:1/store/v1/acme/{id}/")).is_ok());
        for bad in [
            "http://h/acme/x",
            "https://h",
            "https://h/acme",
            "https:///acme/x",
            "https://h/../x",
        ] {
            assert!(parse_store_url(bad).is_err(), "{bad}");
        }
    }
}
