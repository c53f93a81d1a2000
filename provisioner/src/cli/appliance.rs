//! `levee appliance ...`: the boxes.

use std::path::Path;

use anyhow::Context;
use clap::Subcommand;
use levee_pxe::boot::MacAddr;

#[derive(Debug, Subcommand)]
pub enum ApplianceCommand {
    /// Register a machine by MAC (optionally with its serial and profile).
    #[command(after_help = "Example:\n  levee appliance add --mac 52:54:00:12:34:56 --serial SN-0042 --profile default")]
    Add {
        #[arg(long)]
        mac: MacAddr,
        #[arg(long)]
        serial: Option<String>,
        /// Boot profile (default: the `default` profile).
        #[arg(long)]
        profile: Option<String>,
    },
    /// Choose the boot profile of a machine.
    Set {
        mac: MacAddr,
        /// Boot profile name.
        #[arg(long, conflicts_with = "default_profile", required_unless_present = "default_profile")]
        profile: Option<String>,
        /// Boot the `default` profile again.
        #[arg(long)]
        default_profile: bool,
    },
    /// List machines: registered ones and those that showed up on the network.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one machine with its last report and boot history.
    Show {
        mac: MacAddr,
        #[arg(long)]
        json: bool,
    },
    /// Forget a machine and its history.
    Remove { mac: MacAddr },
}

pub fn run(data_dir: &Path, cmd: ApplianceCommand) -> anyhow::Result<()> {
    let store = super::open_store(data_dir)?;
    match cmd {
        ApplianceCommand::Add { mac, serial, profile } => {
            if let Some(p) = &profile {
                store.profile(p)?.with_context(|| {
                    format!("no profile `{p}`: `levee profile list` shows the profiles")
                })?;
            }
            let a = store.register_appliance(mac, serial.as_deref(), profile.as_deref())?;
            println!(
                "appliance {} registered (id {}, profile {})",
                a.mac,
                a.id,
                a.profile.as_deref().unwrap_or("default")
            );
            Ok(())
        }
        ApplianceCommand::Set { mac, profile, .. } => {
            if let Some(p) = &profile {
                store.profile(p)?.with_context(|| {
                    format!("no profile `{p}`: `levee profile list` shows the profiles")
                })?;
            }
            store.set_appliance_profile(mac, profile.as_deref())?;
            println!("{mac} boots profile {}", profile.as_deref().unwrap_or("default"));
            Ok(())
        }
        ApplianceCommand::List { json } => {
            let all = store.appliances()?;
            if json {
                return super::print_json(&all);
            }
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|a| {
                    let report = a.last_report.as_ref();
                    vec![
                        a.id.to_string(),
                        a.mac.to_string(),
                        a.serial.clone().unwrap_or_else(|| "-".into()),
                        if a.registered { "registered" } else { "seen" }.into(),
                        a.profile.clone().unwrap_or_else(|| "default".into()),
                        report.and_then(|r| r.stage.clone()).unwrap_or_else(|| "-".into()),
                        report.and_then(|r| r.version.clone()).unwrap_or_else(|| "-".into()),
                        report.map(|r| r.addresses.join(",")).filter(|s| !s.is_empty()).unwrap_or_else(|| "-".into()),
                        super::ago(a.last_report_at),
                        super::ago(a.last_seen.max(a.last_report_at)),
                    ]
                })
                .collect();
            super::print_table(
                &["ID", "MAC", "SERIAL", "STATE", "PROFILE", "REPORTED", "VERSION", "ADDRESSES", "LAST REPORT", "LAST SEEN"],
                &rows,
            );
            Ok(())
        }
        ApplianceCommand::Show { mac, json } => {
            let a = store
                .appliance(mac)?
                .with_context(|| format!("no appliance {mac}: `levee appliance list` shows them"))?;
            let events = store.events(mac, 200)?;
            if json {
                return super::print_json(&serde_json::json!({ "appliance": a, "events": events }));
            }
            println!("appliance {} (id {})", a.mac, a.id);
            println!("  serial:      {}", a.serial.as_deref().unwrap_or("-"));
            println!("  registered:  {}", if a.registered { "yes" } else { "no (seen on the network)" });
            println!("  profile:     {}", a.profile.as_deref().unwrap_or("default"));
            println!("  last report: {}", super::ago(a.last_report_at));
            if let Some(r) = &a.last_report {
                println!("    {}", serde_json::to_string(r)?);
            }
            println!("history:");
            for e in events {
                println!("  {}  {:<14} {}", super::ago(Some(e.at)), e.step, e.detail);
            }
            Ok(())
        }
        ApplianceCommand::Remove { mac } => {
            store.remove_appliance(mac)?;
            println!("appliance {mac} removed");
            Ok(())
        }
    }
}
