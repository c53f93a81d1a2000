//! `levee operator ...`: who may log in to the web panel, and what they did.

use anyhow::Context;
use clap::Subcommand;

use crate::store::validate_name;
use crate::ui::password;

#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// Add an operator and print their one-time password.
    ///
    /// The first login with it must choose a new password before anything
    /// else. Passwords are stored as argon2id hashes. A --read-only operator
    /// sees every page and changes nothing (enforced by the API).
    #[command(
        after_help = "Examples:\n  levee operator add ann\n  levee operator add auditor --read-only"
    )]
    Add {
        name: String,
        #[arg(long)]
        read_only: bool,
    },
    /// List operators.
    #[command(after_help = "Example:\n  levee operator list --json")]
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove an operator; their open sessions end at their next request.
    #[command(after_help = "Example:\n  levee operator remove ann")]
    Remove { name: String },
    /// Give an operator a new one-time password (a forgotten password).
    #[command(after_help = "Example:\n  levee operator reset ann")]
    Reset { name: String },
    /// The audit log: every action taken in the panel, newest first.
    #[command(
        after_help = "Examples:\n  levee operator log\n  levee operator log --target appliance:7 --json"
    )]
    Log {
        /// Only entries on this: `appliance:ID`, `customer:NAME`, `operator:NAME`.
        #[arg(long)]
        target: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(ctx: &super::Ctx, cmd: OperatorCommand) -> anyhow::Result<()> {
    let store = ctx.open_store()?;
    match cmd {
        OperatorCommand::Add { name, read_only } => {
            validate_name("operator", &name)?;
            let otp = password::one_time();
            let hash = password::hash(&otp).map_err(|e| anyhow::anyhow!("hashing: {e}"))?;
            store.add_operator(&name, &hash, read_only)?;
            super::audit(
                store.as_ref(),
                "operator-add",
                &format!("operator:{name}"),
                if read_only { "read-only" } else { "full" },
            );
            println!(
                "operator {name} added{}",
                if read_only { " (read-only)" } else { "" }
            );
            println!("one-time password: {otp}");
            println!("log in to the panel (the URL `levee serve --ui` printed) and choose a new password; this one works once");
            Ok(())
        }
        OperatorCommand::List { json } => {
            let ops = store.operators()?;
            if json {
                return super::print_json(&ops);
            }
            let rows: Vec<Vec<String>> = ops
                .iter()
                .map(|o| {
                    vec![
                        o.name.clone(),
                        if o.read_only { "read-only" } else { "full" }.into(),
                        if o.must_change {
                            "one-time (not used yet)"
                        } else {
                            "set"
                        }
                        .into(),
                        super::ago(Some(o.created_at)),
                    ]
                })
                .collect();
            super::print_table(&["OPERATOR", "ACCESS", "PASSWORD", "ADDED"], &rows);
            Ok(())
        }
        OperatorCommand::Remove { name } => {
            if !store.remove_operator(&name)? {
                anyhow::bail!("no operator `{name}`: `levee operator list` shows them");
            }
            super::audit(
                store.as_ref(),
                "operator-remove",
                &format!("operator:{name}"),
                "",
            );
            println!("operator {name} removed");
            Ok(())
        }
        OperatorCommand::Reset { name } => {
            store.operator(&name)?.with_context(|| {
                format!("no operator `{name}`: `levee operator list` shows them")
            })?;
            let otp = password::one_time();
            let hash = password::hash(&otp).map_err(|e| anyhow::anyhow!("hashing: {e}"))?;
            store.set_operator_password(&name, &hash, true)?;
            super::audit(
                store.as_ref(),
                "operator-reset",
                &format!("operator:{name}"),
                "",
            );
            println!("operator {name}: new one-time password: {otp}");
            Ok(())
        }
        OperatorCommand::Log {
            target,
            limit,
            json,
        } => {
            let entries = store.audit(target.as_deref(), limit)?;
            if json {
                return super::print_json(&entries);
            }
            let rows: Vec<Vec<String>> = entries
                .iter()
                .map(|e| {
                    vec![
                        super::ago(Some(e.at)),
                        e.operator.clone(),
                        e.action.clone(),
                        e.target.clone(),
                        e.detail.clone(),
                    ]
                })
                .collect();
            super::print_table(&["WHEN", "OPERATOR", "ACTION", "TARGET", "DETAIL"], &rows);
            Ok(())
        }
    }
}
