//! `levee appliance restore`: ops asks an appliance to restore (issue 14;
//! `levee_proto::restore_api`). The request is checked here (the target,
//! the snapshot, the path, and that the customer's configuration has an
//! SMB account for the target), stored, and carried to the appliance in
//! its next heartbeat answer; `levee appliance show` follows it.
//! `--cancel ID` withdraws a request (see [`cancel`]).

use anyhow::{bail, Context};
use levee_proto::restore_api::{self, RestoreTarget};

use super::escape;
use crate::store::{Appliance, NewRestore, RestoreMove, RestoreRecord, Store};

/// Requests shown by `levee appliance show`.
const SHOWN: usize = 5;

/// What `levee appliance restore` was given.
pub(super) struct Ask<'a> {
    pub snapshot: &'a str,
    pub path: Option<&'a str>,
    pub to: &'a str,
    pub credentials_of: Option<&'a str>,
    pub json: bool,
}

pub(super) fn request(store: &dyn Store, a: &Appliance, ask: &Ask) -> anyhow::Result<()> {
    restore_api::check_snapshot(ask.snapshot)?;
    if let Some(p) = ask.path {
        restore_api::check_path(p)?;
    }
    let target = restore_api::parse_target(ask.to)?;
    let Some(customer) = a.customer.as_deref() else {
        bail!(
            "appliance {} has no customer, so no configuration or repository to restore from",
            a.mac
        );
    };
    if a.revoked_at.is_some() {
        bail!(
            "appliance {} is retired or replaced: its certificate is revoked and it fetches nothing; \
             ask the appliance that replaced it",
            a.mac
        );
    }
    let config = store
        .customer(customer)?
        .with_context(|| format!("customer {customer} of appliance {} is gone", a.mac))?
        .config;
    let account = match &target {
        RestoreTarget::Smb { .. } => {
            let (url, source) =
                restore_api::smb_credentials(&target, &config.sources, ask.credentials_of)
                    .with_context(|| format!("customer {customer}'s configuration"))?;
            Some((url, source.name.clone()))
        }
        RestoreTarget::Local(_) => {
            if ask.credentials_of.is_some() {
                bail!(
                    "--credentials-of is for smb:// targets; {} is a directory on the appliance",
                    ask.to
                );
            }
            None
        }
    };
    let r = store.add_restore(
        a.id,
        &NewRestore {
            snapshot: ask.snapshot,
            path: ask.path,
            target: ask.to,
            credentials_of: account.as_ref().map(|(_, s)| s.as_str()),
        },
    )?;
    super::audit(
        store,
        "restore",
        &format!("appliance:{}", a.id),
        &format!(
            "request {}: snapshot {} path {} to {}",
            r.id,
            r.snapshot,
            r.path.as_deref().unwrap_or("/"),
            r.target
        ),
    );
    if ask.json {
        return super::print_json(&r);
    }
    println!(
        "restore request {} stored: appliance {} (id {}) restores snapshot {}{} to {}",
        r.id,
        a.mac,
        a.id,
        r.snapshot,
        r.path
            .as_deref()
            .map(|p| format!(" (only {p})"))
            .unwrap_or_default(),
        r.target
    );
    if let Some((url, source)) = &account {
        println!("  writing as {url} with the password of source {source}");
    }
    println!(
        "  it starts after the appliance's next heartbeat (and after a backup or replication \
         under way); follow it with `levee appliance show {}`",
        a.mac
    );
    Ok(())
}

/// `levee appliance restore APPLIANCE --cancel ID`: a request not started
/// is withdrawn (`cancelled`), a running one asked to stop (`cancelling`);
/// a finished one is refused, naming its state.
pub(super) fn cancel(store: &dyn Store, a: &Appliance, id: i64, json: bool) -> anyhow::Result<()> {
    let operator = super::cli_operator();
    let r = match store.cancel_restore(a.id, id, &operator)? {
        RestoreMove::Moved(r) => r,
        RestoreMove::NotFound => bail!(
            "appliance {} has no restore request {id}; `levee appliance show {}` lists its requests",
            a.mac,
            a.mac
        ),
        RestoreMove::Refused(r) => bail!(
            "restore request {id} of appliance {} is {}{}: only a requested or running restore can \
             be cancelled",
            a.mac,
            r.state,
            r.reason
                .as_deref()
                .map(|why| format!(" ({})", escape(why)))
                .unwrap_or_default()
        ),
    };
    super::audit(
        store,
        "restore-cancel",
        &format!("appliance:{}", a.id),
        &format!("request {id}: {}", r.state),
    );
    if json {
        return super::print_json(&r);
    }
    if r.state == "cancelled" {
        println!(
            "restore request {id} withdrawn: appliance {} had not started it and will not run it",
            a.mac
        );
    } else {
        println!(
            "restore request {id} is being cancelled: appliance {} stops between files at its next \
             heartbeat or progress report and reports it cancelled; files already written to {} \
             stay there",
            a.mac,
            escape(&r.target)
        );
    }
    Ok(())
}

/// The appliance's latest requests, for `show --json`.
pub(super) fn recent(store: &dyn Store, a: &Appliance) -> anyhow::Result<Vec<RestoreRecord>> {
    Ok(store.restores(a.id, SHOWN)?)
}

/// The `restores:` section of `levee appliance show`.
pub(super) fn print(rows: &[RestoreRecord]) {
    if rows.is_empty() {
        return;
    }
    println!("restores:");
    for r in rows {
        let when = match (r.ended_at, r.started_at) {
            (Some(t), _) => format!("ended {}", super::ago(Some(t))),
            (None, Some(t)) => format!("started {}", super::ago(Some(t))),
            _ => format!("requested {}", super::ago(Some(r.requested_at))),
        };
        let mut line = format!(
            "  #{:<4} {:<9} snapshot {}{} -> {}  ({when})",
            r.id,
            r.state,
            escape(&r.snapshot),
            r.path
                .as_deref()
                .map(|p| format!(":{}", escape(p)))
                .unwrap_or_default(),
            escape(&r.target)
        );
        if r.state != "requested" && (r.started_at.is_some() || r.files > 0) {
            line.push_str(&format!(
                ", {} files, {}, {} errors",
                r.files,
                levee_proto::config::format_size(r.bytes),
                r.errors
            ));
        }
        println!("{line}");
        if let Some(why) = &r.reason {
            println!("        {}", escape(why));
        }
        if let (Some(by), Some(at)) = (&r.cancel_asked_by, r.cancel_asked_at) {
            println!(
                "        cancel asked by {} {}",
                escape(by),
                super::ago(Some(at))
            );
        }
    }
}
