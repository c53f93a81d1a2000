//! `levee appliance ...`: the boxes, from registration to retirement.

use anyhow::Context;
use clap::Subcommand;
use levee_pxe::boot::MacAddr;

use super::backups::{last_backup_cell, overdue_cell, Detail, Fleet};
use super::escape;
use crate::health::{heartbeat_intervals, online};
use crate::store::{now, short_key, Appliance, ApplianceRef, Registration, Store};

/// Heartbeat interval assumed for machines without a customer.

#[derive(Debug, Subcommand)]
pub enum ApplianceCommand {
    /// Register a machine by MAC for a customer, before it first boots.
    ///
    /// A registered machine with a customer enrolls by itself when it
    /// boots. Without --customer it is only known (and boots), but gets no
    /// configuration until `levee appliance approve`.
    #[command(
        visible_alias = "add",
        after_help = "Examples:\n  levee appliance register --mac 52:54:00:12:34:56 --customer acme --serial SN-0042\n  levee appliance register --mac 52:54:00:12:34:56 --customer acme --profile rescue"
    )]
    Register {
        #[arg(long)]
        mac: MacAddr,
        /// Customer it will serve (see `levee customer list`).
        #[arg(long)]
        customer: Option<String>,
        #[arg(long)]
        serial: Option<String>,
        /// Boot profile (default: the `default` profile).
        #[arg(long)]
        profile: Option<String>,
    },
    /// Give a machine that booted unregistered (pending) a customer, so it
    /// enrolls and receives that customer's configuration.
    ///
    /// The machine prints its key's fingerprint on its console while it
    /// waits, and `levee appliance list` shows the key the server kept
    /// (KEY). Pass --fingerprint with what the console says: a mismatch is
    /// refused, so a key someone else sent in the machine's name is never
    /// approved. When two keys tried (KEY shows a conflict), --fingerprint
    /// is required and chooses the one that enrolls.
    #[command(
        after_help = "Example:\n  levee appliance list        # pending machines show customer - and their KEY\n  levee appliance approve 52:54:00:12:34:56 --customer acme --fingerprint 3f2a-9c41-07d8-b6e5"
    )]
    Approve {
        mac: MacAddr,
        #[arg(long)]
        customer: String,
        /// The key fingerprint shown on the machine's console (the 16-digit
        /// short form or the full sha256).
        #[arg(long, value_name = "FINGERPRINT")]
        fingerprint: Option<String>,
    },
    /// Allow one re-enrollment of an enrolled appliance.
    ///
    /// An appliance with a valid certificate never gets a new one through
    /// a boot script's token: a token on a shared LAN is not proof of
    /// identity. This arms exactly one: the next enrollment with a token
    /// gets a certificate, and the old one is revoked at that moment. Use
    /// it when an appliance lost its credential (a new disk, a network boot
    /// for `reinstall`). --cancel withdraws it.
    #[command(
        after_help = "Examples:\n  levee appliance reenroll 52:54:00:12:34:56\n  levee appliance reinstall 52:54:00:12:34:56 && levee appliance reenroll 52:54:00:12:34:56\n  levee appliance reenroll 7 --cancel"
    )]
    Reenroll {
        /// MAC or appliance id.
        appliance: ApplianceRef,
        /// Withdraw an armed re-enrollment.
        #[arg(long)]
        cancel: bool,
    },
    /// Hand an appliance's customer and configuration to a new machine (a
    /// replacement unit); the old one's credential is revoked.
    ///
    /// With --recovery-key (the customer's paper key), the old appliance's
    /// repository secret is also re-wrapped for the new machine: opened
    /// here with the paper key and sealed to the new machine's own public
    /// key, so it fetches and continues the old repository from its offsite
    /// target by itself. The new machine publishes its key once enrolled:
    /// run the command again then (it does not replace twice).
    #[command(
        after_help = "Examples:\n  levee appliance replace 52:54:00:12:34:56 --with 52:54:00:ab:cd:ef\n  levee appliance replace 7 --with 52:54:00:ab:cd:ef\n  # once 52:54:00:ab:cd:ef has enrolled:\n  levee appliance replace 52:54:00:12:34:56 --with 52:54:00:ab:cd:ef --recovery-key acme-recovery.txt"
    )]
    Replace {
        /// The old appliance: MAC or appliance id.
        old: ApplianceRef,
        /// MAC of the new machine.
        #[arg(long = "with", value_name = "NEW_MAC")]
        with: MacAddr,
        /// The customer's paper key (`levee customer recovery-key init`):
        /// re-wrap the old repository's secret for the new machine.
        #[arg(long, value_name = "FILE")]
        recovery_key: Option<std::path::PathBuf>,
    },
    /// Have an appliance restore a snapshot (or a path in it) to an SMB
    /// share or to a directory on the appliance.
    ///
    /// Nobody logs in to an appliance: the request is stored here and the
    /// appliance gets it with its next heartbeat answer, runs it on its job
    /// thread (never beside a backup or replication: it waits for the one
    /// under way) from its own repository, and reports it as a run of kind
    /// `restore`. `levee appliance show` follows it: requested, running,
    /// done, or failed with the reason. Each request runs once; an
    /// appliance restarted in the middle resumes it (files already restored
    /// whole, same size and modification time as in the snapshot, are
    /// skipped).
    ///
    /// --cancel ID withdraws request ID: one the appliance has not started
    /// never runs (cancelled); a running one is asked to stop (cancelling):
    /// the appliance stops between files at its next heartbeat or progress
    /// report and reports it cancelled. Files already written stay in the
    /// target. A finished request cannot be cancelled.
    ///
    /// The target is smb://HOST[:PORT]/SHARE[/DIR] or an absolute directory
    /// on the appliance. The SMB account and password are the customer's:
    /// those of the source on the same host and share, or of the source
    /// --credentials-of names (the URL carries no account). What the
    /// snapshot holds lands under TARGET (a share backed up as
    /// smb://HOST/finance comes back as TARGET/finance/...); files there are
    /// overwritten. After a replacement took a lost
    /// appliance's repository over (`replace --recovery-key`), the
    /// replacement restores the lost appliance's snapshots.
    #[command(after_help = "Examples:
  # the whole latest snapshot into a new folder of the file server:
  levee appliance restore 52:54:00:12:34:56 --to smb://files.acme.lan/finance/restored-2026-05-04
  # one folder of an older snapshot, with the account of source `finance`:
  levee appliance restore 7 --snapshot 3fa9c2d1 --path /finance/2026 --to smb://10.20.0.5/scratch --credentials-of finance
  # then:
  levee appliance show 7
  # withdraw request 12 (or stop it if it runs):
  levee appliance restore 7 --cancel 12")]
    Restore {
        /// MAC or appliance id.
        appliance: ApplianceRef,
        /// `latest`, or a snapshot id (or its first digits) from the runs
        /// `levee appliance show` lists.
        #[arg(long, default_value = "latest", value_name = "latest|ID")]
        snapshot: String,
        /// Only this path inside the snapshot, e.g. /finance/2026.
        #[arg(long, value_name = "PATH-IN-SNAPSHOT")]
        path: Option<String>,
        /// smb://HOST[:PORT]/SHARE[/DIR] or an absolute directory on the
        /// appliance.
        #[arg(long, value_name = "TARGET", required_unless_present = "cancel")]
        to: Option<String>,
        /// The source (in the customer's configuration) whose SMB account
        /// writes to the target, when no source is on its host and share.
        #[arg(long, value_name = "SOURCE-NAME")]
        credentials_of: Option<String>,
        /// Withdraw request ID of this appliance instead (stop it if it
        /// runs); the ids are in `levee appliance show`.
        #[arg(
            long,
            value_name = "REQUEST-ID",
            conflicts_with_all = ["to", "snapshot", "path", "credentials_of"]
        )]
        cancel: Option<i64>,
        /// Print the stored request as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke an appliance's credential and stop serving it (network boot
    /// included).
    #[command(
        after_help = "Examples:\n  levee appliance retire 52:54:00:12:34:56 --reason 'stolen from site'\n  levee appliance retire 7"
    )]
    Retire {
        /// MAC or appliance id.
        appliance: ApplianceRef,
        #[arg(long, default_value = "retired by operator")]
        reason: String,
    },
    /// Allow the next install to overwrite this appliance's Levee disk.
    ///
    /// An installer never wipes a disk that already holds a Levee install
    /// unless asked: this sets a one-shot request that the appliance's next
    /// install plan carries (`reinstall: true`); it is cleared when the
    /// appliance reports `installed`. Boot the appliance from the network
    /// (or let its boot loader fall through to PXE) to reinstall it.
    #[command(
        after_help = "Examples:\n  levee appliance reinstall 52:54:00:12:34:56\n  levee appliance reinstall 7 --cancel"
    )]
    Reinstall {
        /// MAC or appliance id.
        appliance: ApplianceRef,
        /// Withdraw a pending reinstall request.
        #[arg(long)]
        cancel: bool,
    },
    /// Choose the boot profile of a machine.
    #[command(after_help = "Example:\n  levee appliance set 52:54:00:12:34:56 --profile rescue")]
    Set {
        mac: MacAddr,
        /// Boot profile name.
        #[arg(
            long,
            conflicts_with = "default_profile",
            required_unless_present = "default_profile"
        )]
        profile: Option<String>,
        /// Boot the `default` profile again.
        #[arg(long)]
        default_profile: bool,
    },
    /// List machines: registered ones and those that showed up on the network.
    ///
    /// A machine is offline when it sent no report or heartbeat within three
    /// of its customer's heartbeat intervals. LAST BACKUP is the last
    /// backup run that made a snapshot (with failed runs since, if any);
    /// OVERDUE says whether the run its schedule expected is more than 4
    /// hours late (`-`: no schedule).
    #[command(
        after_help = "Examples:\n  levee appliance list\n  levee appliance list --customer acme --json"
    )]
    List {
        /// Only this customer's appliances.
        #[arg(long)]
        customer: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show one machine with its state, last report and history.
    #[command(
        after_help = "Examples:\n  levee appliance show 52:54:00:12:34:56\n  levee appliance show 7 --json"
    )]
    Show {
        /// MAC or appliance id.
        appliance: ApplianceRef,
        #[arg(long)]
        json: bool,
    },
    /// Forget a machine and its history.
    Remove { mac: MacAddr },
}

pub fn run(ctx: &super::Ctx, cmd: ApplianceCommand) -> anyhow::Result<()> {
    let store = ctx.open_store()?;
    let store = store.as_ref();
    match cmd {
        ApplianceCommand::Register {
            mac,
            customer,
            serial,
            profile,
        } => {
            check_profile(store, profile.as_deref())?;
            let a = store.register_appliance(
                mac,
                &Registration {
                    serial: serial.as_deref(),
                    profile: profile.as_deref(),
                    customer: customer.as_deref(),
                },
            )?;
            super::audit(
                store,
                "register",
                &format!("appliance:{}", a.id),
                &format!(
                    "{} customer {}",
                    a.mac,
                    a.customer.as_deref().unwrap_or("-")
                ),
            );
            println!(
                "appliance {} registered (id {}, customer {}, profile {})",
                a.mac,
                a.id,
                a.customer
                    .as_deref()
                    .unwrap_or("- (approve it to give it one)"),
                a.profile.as_deref().unwrap_or("default")
            );
            Ok(())
        }
        ApplianceCommand::Approve {
            mac,
            customer,
            fingerprint,
        } => {
            let a = store.approve_appliance(mac, &customer, fingerprint.as_deref())?;
            super::audit(
                store,
                "approve",
                &format!("appliance:{}", a.id),
                &format!("customer {customer}"),
            );
            let next = if a.pending_key.is_some() {
                "; it is waiting and enrolls by itself at its next retry"
            } else {
                "; it enrolls when it next boots"
            };
            println!(
                "appliance {} (id {}) approved for customer {customer}{next}",
                a.mac, a.id
            );
            Ok(())
        }
        ApplianceCommand::Replace {
            old,
            with,
            recovery_key,
        } => {
            let o = find(store, old)?;
            if let Some(file) = recovery_key {
                return super::recovery::replace_with_key(store, &o, with, &file);
            }
            replace(store, &o, with)?;
            Ok(())
        }
        ApplianceCommand::Restore {
            appliance,
            snapshot,
            path,
            to,
            credentials_of,
            cancel,
            json,
        } => {
            let a = find(store, appliance)?;
            if let Some(id) = cancel {
                return super::restore::cancel(store, &a, id, json);
            }
            // clap asks for --to without --cancel.
            let to = to.context("--to TARGET: where to restore")?;
            let ask = super::restore::Ask {
                snapshot: &snapshot,
                path: path.as_deref(),
                to: &to,
                credentials_of: credentials_of.as_deref(),
                json,
            };
            super::restore::request(store, &a, &ask)
        }
        ApplianceCommand::Retire { appliance, reason } => {
            let a = find(store, appliance)?;
            let a = store.retire_appliance(a.id, &reason)?;
            super::audit(store, "retire", &format!("appliance:{}", a.id), &reason);
            println!(
                "appliance {} (id {}) retired: credential revoked, no longer served",
                a.mac, a.id
            );
            Ok(())
        }
        ApplianceCommand::Reenroll { appliance, cancel } => {
            let a = find(store, appliance)?;
            let a = store.set_reenroll(a.id, !cancel)?;
            super::audit(
                store,
                "reenroll",
                &format!("appliance:{}", a.id),
                if cancel { "withdrawn" } else { "armed" },
            );
            if cancel {
                println!("appliance {} (id {}): re-enrollment withdrawn", a.mac, a.id);
            } else {
                tracing::warn!(mac = %a.mac, appliance = a.id, "re-enrollment armed: the next enrollment with a token replaces its certificate");
                println!(
                    "appliance {} (id {}) may enroll once more: its next enrollment with a token gets a new certificate and revokes the current one",
                    a.mac, a.id
                );
            }
            Ok(())
        }
        ApplianceCommand::Reinstall { appliance, cancel } => {
            let a = find(store, appliance)?;
            let a = store.set_reinstall(a.id, !cancel)?;
            super::audit(
                store,
                "reinstall",
                &format!("appliance:{}", a.id),
                if cancel { "withdrawn" } else { "requested" },
            );
            if cancel {
                println!(
                    "appliance {} (id {}): reinstall request withdrawn",
                    a.mac, a.id
                );
            } else {
                println!(
                    "appliance {} (id {}) will reinstall over its Levee disk on its next network boot (state now {})",
                    a.mac, a.id, a.state
                );
                if a.has_live_cert(now()) && !a.reenroll {
                    println!(
                        "  a network boot has no credential: `levee appliance reenroll {}` lets it enroll again",
                        a.mac
                    );
                }
            }
            Ok(())
        }
        ApplianceCommand::Set { mac, profile, .. } => {
            check_profile(store, profile.as_deref())?;
            store.set_appliance_profile(mac, profile.as_deref())?;
            super::audit(
                store,
                "set-profile",
                &format!("appliance:{mac}"),
                profile.as_deref().unwrap_or("default"),
            );
            println!(
                "{mac} boots profile {}",
                profile.as_deref().unwrap_or("default")
            );
            Ok(())
        }
        ApplianceCommand::List { customer, json } => {
            let heartbeats = heartbeat_intervals(store)?;
            let t = now();
            let all: Vec<Appliance> = store
                .appliances()?
                .into_iter()
                .filter(|a| customer.is_none() || a.customer == customer)
                .collect();
            let online = |a: &Appliance| online(a, &heartbeats, t);
            let fleet = Fleet::load(store, None)?;
            if json {
                let rows: Vec<serde_json::Value> = all
                    .iter()
                    .map(|a| {
                        let mut v = with_online(a, online(a))?;
                        v["backup"] = serde_json::to_value(fleet.health(a))?;
                        Ok(v)
                    })
                    .collect::<anyhow::Result<_>>()?;
                return super::print_json(&rows);
            }
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|a| {
                    let dash = || "-".to_string();
                    let health = fleet.health(a);
                    vec![
                        a.id.to_string(),
                        a.mac.to_string(),
                        a.serial.clone().unwrap_or_else(dash),
                        a.customer.clone().unwrap_or_else(dash),
                        a.state.to_string(),
                        a.image_version().map(str::to_string).unwrap_or_else(dash),
                        a.slot.clone().unwrap_or_else(dash),
                        a.profile.clone().unwrap_or_else(|| "default".into()),
                        a.last_report
                            .as_ref()
                            .and_then(|r| r.stage.clone())
                            .unwrap_or_else(dash),
                        super::ago(a.last_heartbeat.max(a.last_report_at)),
                        if online(a) { "online" } else { "offline" }.into(),
                        last_backup_cell(&health),
                        overdue_cell(&health, t as i64),
                        key_cell(a),
                    ]
                })
                .collect();
            super::print_table(
                &[
                    "ID",
                    "MAC",
                    "SERIAL",
                    "CUSTOMER",
                    "STATE",
                    "IMAGE",
                    "SLOT",
                    "PROFILE",
                    "REPORTED",
                    "LAST HEARTBEAT",
                    "STATUS",
                    "LAST BACKUP",
                    "OVERDUE",
                    "KEY",
                ],
                &rows,
            );
            Ok(())
        }
        ApplianceCommand::Show { appliance, json } => {
            let a = find(store, appliance)?;
            let events = store.events(a.mac, 200)?;
            let online = online(&a, &heartbeat_intervals(store)?, now());
            let backups = Detail::load(store, &a)?;
            let (updates, update_lines) = super::rollout::appliance_updates(store, &a)?;
            let restores = super::restore::recent(store, &a)?;
            if json {
                return super::print_json(&serde_json::json!({
                    "appliance": with_online(&a, online)?,
                    "backups": backups.json(),
                    "restores": restores,
                    "updates": updates,
                    "events": events,
                }));
            }
            println!("appliance {} (id {})", a.mac, a.id);
            println!(
                "  serial:         {}",
                escape(a.serial.as_deref().unwrap_or("-"))
            );
            match (&a.customer, a.registered) {
                (Some(c), _) => println!("  customer:       {}", escape(c)),
                (None, _) => println!(
                    "  customer:       - (waiting for approval: levee appliance approve {} --customer NAME)",
                    a.mac
                ),
            }
            match (&a.state, &a.state_reason) {
                (_, Some(r)) => println!("  state:          {} ({})", a.state, escape(r)),
                _ => println!("  state:          {}", a.state),
            }
            if a.reinstall {
                println!("  reinstall:      requested (the next install plan may overwrite its Levee disk)");
            }
            if let Some(k) = &a.pending_key {
                println!(
                    "  pending key:    {} (sha256 {k}; {})",
                    short_key(k),
                    if a.approved() {
                        "approved: it enrolls at its next retry"
                    } else {
                        "waiting for approval; it retries by itself"
                    }
                );
            }
            if let Some(c) = &a.key_conflict {
                println!(
                    "  key conflict:   another key {} (sha256 {c}) was refused: compare both with the machine's console, then `levee appliance approve {} --customer NAME --fingerprint ...`",
                    short_key(c),
                    a.mac
                );
            }
            if a.reenroll {
                println!("  re-enrollment:  armed (its next enrollment with a token replaces its certificate)");
            }
            if let Some(t) = a.revoked_at {
                println!("  revoked:        {}", super::ago(Some(t)));
            }
            if let Some(id) = a.replaced_by {
                println!("  replaced by:    id {id}");
            }
            if let Some(id) = a.replaces {
                println!("  replaces:       id {id}");
            }
            println!(
                "  profile:        {}",
                escape(a.profile.as_deref().unwrap_or("default"))
            );
            println!(
                "  image:          {} (slot {})",
                escape(a.image_version().unwrap_or("-")),
                escape(a.slot.as_deref().unwrap_or("-"))
            );
            println!(
                "  last heartbeat: {} ({})",
                super::ago(a.last_heartbeat),
                if online { "online" } else { "offline" }
            );
            println!("  last report:    {}", super::ago(a.last_report_at));
            if let Some(r) = &a.last_report {
                println!("    {}", escape(&serde_json::to_string(r)?));
            }
            backups.print();
            super::restore::print(&restores);
            for line in update_lines {
                println!("{line}");
            }
            println!("history:");
            for e in events {
                println!(
                    "  {}  {:<14} {}",
                    super::ago(Some(e.at)),
                    escape(&e.step),
                    escape(&e.detail)
                );
            }
            Ok(())
        }
        ApplianceCommand::Remove { mac } => {
            store.remove_appliance(mac)?;
            super::audit(store, "remove", &format!("appliance:{mac}"), "");
            println!("appliance {mac} removed");
            Ok(())
        }
    }
}

fn find(store: &dyn Store, r: ApplianceRef) -> anyhow::Result<Appliance> {
    store
        .find_appliance(r)?
        .with_context(|| format!("no appliance {r}: `levee appliance list` shows them"))
}

fn check_profile(store: &dyn Store, profile: Option<&str>) -> anyhow::Result<()> {
    if let Some(p) = profile {
        store.profile(p)?.with_context(|| {
            format!("no profile `{p}`: `levee profile list` shows the profiles")
        })?;
    }
    Ok(())
}

/// The appliance as JSON plus the computed `online`.
fn with_online(a: &Appliance, online: bool) -> anyhow::Result<serde_json::Value> {
    let mut v = serde_json::to_value(a)?;
    if let Some(m) = v.as_object_mut() {
        m.insert("online".into(), online.into());
    }
    Ok(v)
}

/// The KEY column: the short fingerprint of the key a pending machine
/// enrolls with, and a conflict when another key tried.
fn key_cell(a: &Appliance) -> String {
    match (&a.pending_key, &a.key_conflict) {
        (None, None) => "-".into(),
        (Some(k), None) => short_key(k),
        (k, Some(c)) => format!(
            "{} CONFLICT {}",
            k.as_deref().map(short_key).unwrap_or_else(|| "-".into()),
            short_key(c)
        ),
    }
}

/// `appliance replace` itself: the store's hand-over, audited and said.
pub(super) fn replace(
    store: &dyn Store,
    o: &Appliance,
    with: MacAddr,
) -> anyhow::Result<Appliance> {
    let n = store.replace_appliance(o.id, with)?;
    super::audit(
        store,
        "replace",
        &format!("appliance:{}", o.id),
        &format!("by {with} (appliance {})", n.id),
    );
    println!(
        "appliance {} (id {}) replaces {} (id {}) for customer {}; {}'s credential is revoked",
        n.mac,
        n.id,
        o.mac,
        o.id,
        n.customer.as_deref().unwrap_or("-"),
        o.mac
    );
    Ok(n)
}
