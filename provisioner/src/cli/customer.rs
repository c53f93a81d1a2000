//! `levee customer ...`: customers and their configuration.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use levee_proto::config::CustomerConfig;
use serde_json::Value;

use crate::secrets::{redact, secrets_mut, ServerKey};
use crate::store::CustomerRecord;

#[derive(Debug, Subcommand)]
pub enum CustomerCommand {
    /// Create or update a customer from a YAML file, and print what changed.
    ///
    /// The file is validated first; errors name the file, line and column.
    /// Passwords and other secrets are stored encrypted with the server key
    /// (DATA_DIR/server.key) and never printed. See docs/examples/acme.yaml.
    #[command(
        after_help = "Examples:\n  levee customer apply -f acme.yaml\n  levee customer apply -f acme.yaml --dry-run"
    )]
    Apply {
        /// The customer's YAML file.
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
        /// Validate and show the changes, but store nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show a customer's configuration (secrets as ********).
    #[command(
        after_help = "Examples:\n  levee customer show acme\n  levee customer show acme --json | jq .config.sources"
    )]
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// List customers.
    #[command(after_help = "Example:\n  levee customer list --json")]
    List {
        #[arg(long)]
        json: bool,
    },
    /// Limit the bytes the customer may hold in each offsite store (every
    /// target is a complete copy, so each store counts the same data). The
    /// store refuses a file that would pass it before taking any of its
    /// bytes; the appliance's replication run reports the refusal, naming
    /// the quota and the usage. `none` lifts the limit. Kept beside the
    /// configuration: `customer apply` does not change it.
    #[command(
        after_help = "Examples:\n  levee customer quota acme 500GiB\n  levee customer quota acme 2TB\n  levee customer quota acme none\n  levee customer show acme   # quota and usage"
    )]
    Quota {
        name: String,
        /// Bytes: 500GiB, 2TB, 750MB, ... or `none`.
        #[arg(value_name = "SIZE|none", value_parser = parse_quota)]
        size: QuotaArg,
    },
    /// The customer's recovery key: opens a lost appliance's backups
    /// without the appliance or the server (`recovery-key init --help`).
    #[command(subcommand)]
    RecoveryKey(super::recovery::RecoveryKeyCommand),
}

#[derive(Debug, Clone, Copy)]
pub struct QuotaArg(Option<u64>);

fn parse_quota(s: &str) -> Result<QuotaArg, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(QuotaArg(None));
    }
    levee_proto::config::parse_size(s)
        .filter(|n| *n > 0)
        .map(|n| QuotaArg(Some(n)))
        .ok_or_else(|| format!("`{s}` is not a size; expected e.g. 500GiB, 2TB, 750MB, or `none`"))
}

pub fn run(ctx: &super::Ctx, cmd: CustomerCommand) -> anyhow::Result<()> {
    match cmd {
        CustomerCommand::Quota { name, size } => {
            let store = ctx.open_store()?;
            store.set_offsite_quota(&name, size.0)?;
            let detail = match size.0 {
                Some(n) => format!("{n} bytes"),
                None => "none".into(),
            };
            super::audit(
                store.as_ref(),
                "offsite-quota",
                &format!("customer:{name}"),
                &detail,
            );
            match size.0 {
                Some(n) => println!(
                    "customer {name}: offsite quota {} ({n} bytes) in each store",
                    crate::offsite::quota::human(n)
                ),
                None => println!("customer {name}: no offsite quota"),
            }
            Ok(())
        }
        CustomerCommand::Apply { file, dry_run } => apply(ctx, &file, dry_run),
        CustomerCommand::RecoveryKey(cmd) => super::recovery::run(ctx, cmd),
        CustomerCommand::Show { name, json } => {
            let store = ctx.open_store()?;
            let c = store.customer(&name)?.with_context(|| {
                format!("no customer `{name}`: `levee customer list` shows them")
            })?;
            let appliances: Vec<_> = store
                .appliances()?
                .into_iter()
                .filter(|a| a.customer.as_deref() == Some(name.as_str()) && a.revoked_at.is_none())
                .collect();
            let shown = redacted(&c);
            // This server's offsite store (DATA_DIR/offsite); a store on
            // another machine counts its own.
            let offsite_bytes = crate::offsite::Disk::new(ctx.data_dir().join("offsite"))
                .usage(&name)
                .unwrap_or(0);
            let quota = store.offsite_quota(&name)?;
            if json {
                let macs: Vec<String> = appliances.iter().map(|a| a.mac.to_string()).collect();
                return super::print_json(&serde_json::json!({
                    "name": shown.name,
                    "created_at": shown.created_at,
                    "updated_at": shown.updated_at,
                    "appliances": macs,
                    "config": shown.config,
                    "offsite_bytes": offsite_bytes,
                    "offsite_quota": quota,
                }));
            }
            let quota_text = match quota {
                Some(q) => format!(
                    "quota {} ({}% used)",
                    crate::offsite::quota::human(q),
                    offsite_bytes.saturating_mul(100) / q.max(1)
                ),
                None => "no quota".into(),
            };
            println!(
                "# customer {} (created {}, updated {}; {} appliance(s); offsite: {} in this server's store, {quota_text})",
                c.name,
                super::ago(Some(c.created_at)),
                super::ago(Some(c.updated_at)),
                appliances.len(),
                crate::offsite::quota::human(offsite_bytes),
            );
            print!("{}", serde_norway::to_string(&shown.config)?);
            Ok(())
        }
        CustomerCommand::List { json } => {
            let store = ctx.open_store()?;
            let customers: Vec<CustomerRecord> = store.customers()?.iter().map(redacted).collect();
            if json {
                return super::print_json(&customers);
            }
            let appliances = store.appliances()?;
            let rows: Vec<Vec<String>> = customers
                .iter()
                .map(|c| {
                    let n = appliances
                        .iter()
                        .filter(|a| {
                            a.customer.as_deref() == Some(c.name.as_str()) && a.revoked_at.is_none()
                        })
                        .count();
                    vec![
                        c.name.clone(),
                        c.config.display_name.clone().unwrap_or_else(|| "-".into()),
                        c.config.sources.len().to_string(),
                        c.config.offsite.len().to_string(),
                        c.config.update_channel.clone(),
                        n.to_string(),
                        super::ago(Some(c.updated_at)),
                    ]
                })
                .collect();
            super::print_table(
                &[
                    "CUSTOMER",
                    "NAME",
                    "SOURCES",
                    "OFFSITE",
                    "CHANNEL",
                    "APPLIANCES",
                    "UPDATED",
                ],
                &rows,
            );
            Ok(())
        }
    }
}

fn redacted(c: &CustomerRecord) -> CustomerRecord {
    CustomerRecord {
        config: redact(&c.config),
        ..c.clone()
    }
}

fn apply(ctx: &super::Ctx, file: &std::path::Path, dry_run: bool) -> anyhow::Result<()> {
    let customer = crate::config::load(file)?;
    let key = ServerKey::load_or_create(ctx.data_dir())?;
    let store = ctx.open_store()?;
    crate::secrets::reseal_store(store.as_ref(), &key)?;
    let name = customer.config.customer.clone();
    let old = store
        .customer(&name)?
        .map(|c| key.open_config(&c.config))
        .transpose()?;
    let changes = match &old {
        Some(old) => diff(old, &customer.config),
        None => Vec::new(),
    };
    match &old {
        Some(_) if changes.is_empty() => {
            println!("customer {name} unchanged");
            return Ok(());
        }
        Some(_) => {
            println!(
                "customer {name} {}updated:",
                if dry_run { "would be " } else { "" }
            );
            for line in &changes {
                println!("  {line}");
            }
        }
        None => {
            let c = &customer.config;
            println!(
                "customer {name} {}created: {} source(s), {} schedule(s), {} offsite target(s), channel {}, heartbeat {}",
                if dry_run { "would be " } else { "" },
                c.sources.len(),
                c.schedules.len(),
                c.offsite.len(),
                c.update_channel,
                c.heartbeat_interval
            );
        }
    }
    if !dry_run {
        store.put_customer(&key.seal_config(&customer.config))?;
        super::audit(
            store.as_ref(),
            "customer-apply",
            &format!("customer:{name}"),
            &if old.is_none() {
                "created".to_string()
            } else {
                changes.join("; ")
            },
        );
    }
    Ok(())
}

/// What changed, one line per setting: `~ path: old -> new`, `+ path: new`,
/// `- path: old`; secrets only say that they changed.
pub(crate) fn diff(old: &CustomerConfig, new: &CustomerConfig) -> Vec<String> {
    let secret_paths = |c: &CustomerConfig| -> BTreeSet<String> {
        let mut c = c.clone();
        secrets_mut(&mut c).into_iter().map(|(p, _)| p).collect()
    };
    let secrets: BTreeSet<String> = secret_paths(old)
        .union(&secret_paths(new))
        .cloned()
        .collect();
    let (a, b) = (flatten(old), flatten(new));
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let mut out = Vec::new();
    for k in keys {
        let hidden = secrets.contains(k.as_str());
        let show = |v: &String| {
            if hidden {
                "********".to_string()
            } else {
                v.clone()
            }
        };
        match (a.get(k), b.get(k)) {
            (Some(x), Some(y)) if x == y => {}
            (Some(_), Some(_)) if hidden => out.push(format!("~ {k}: (changed)")),
            (Some(x), Some(y)) => out.push(format!("~ {k}: {x} -> {y}")),
            (None, Some(y)) => out.push(format!("+ {k}: {}", show(y))),
            (Some(x), None) => out.push(format!("- {k}: {}", show(x))),
            (None, None) => {}
        }
    }
    out
}

/// `{"a": {"b": [1]}}` -> `a.b[0] = 1`.
fn flatten(c: &CustomerConfig) -> BTreeMap<String, String> {
    fn walk(prefix: String, v: &Value, out: &mut BTreeMap<String, String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(p, v, out);
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    walk(format!("{prefix}[{i}]"), v, out);
                }
            }
            Value::String(s) => {
                out.insert(prefix, s.clone());
            }
            other => {
                out.insert(prefix, other.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    if let Ok(v) = serde_json::to_value(c) {
        walk(String::new(), &v, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_names_settings_and_hides_secrets() {
        let old: CustomerConfig = serde_json::from_value(serde_json::json!({
            "customer": "acme",
            "sources": [{"name": "f", "smb": "smb://u@h/s", "password": "old-secret"}],
        }))
        .unwrap();
        let mut new = old.clone();
        new.heartbeat_interval = "1m".into();
        new.sources[0].password = Some(levee_proto::config::Secret("new-secret".into()));
        let d = diff(&old, &new);
        assert_eq!(
            d,
            [
                "~ heartbeat_interval: 5m -> 1m",
                "~ sources[0].password: (changed)"
            ]
        );
        assert!(diff(&old, &old).is_empty());
    }
}
