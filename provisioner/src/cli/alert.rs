//! `levee alert ...`: the alerts `levee serve` opened, and the webhooks
//! they are posted to.

use anyhow::{bail, Context};
use clap::Subcommand;

use crate::alerts::engine::SECRET_AAD;
use crate::secrets::ServerKey;

#[derive(Debug, Subcommand)]
pub enum AlertCommand {
    /// List open alerts (with --all, resolved ones too, newest first).
    ///
    /// `levee serve` judges the rules every --alert-interval: appliance
    /// offline, backup overdue, backup failing 3 times in a row, install
    /// failed, update failed or rolled back, disk nearly full, enrollment
    /// pending over a day, enrollment key conflict, certificate renewal
    /// failing. Each alert opens once and resolves once.
    #[command(after_help = "Examples:\n  levee alert list\n  levee alert list --all --json")]
    List {
        /// Resolved alerts too.
        #[arg(long)]
        all: bool,
        /// At most this many.
        #[arg(long, default_value_t = 200)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Webhooks: where alerts are posted.
    #[command(subcommand)]
    Webhook(WebhookCommand),
}

#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Post alerts to URL: every alert, or with --customer only that
    /// customer's. Prints the signing secret once.
    ///
    /// Each opening and resolution is one POST with a JSON body
    /// (`delivery`, `event`: opened|resolved, `alert`, `sent_at`) and the
    /// header `X-Levee-Signature: sha256=<hex HMAC-SHA256 of the body under
    /// the secret>`; verify it before trusting the body. A failed delivery
    /// (no answer, or not 2xx) is retried with back-off (5 s doubling to
    /// 10 min) for up to 3 days. Kept in the central store, never in the
    /// customer's YAML (appliances receive that).
    #[command(
        after_help = "Examples:\n  levee alert webhook set https://ops.example/hooks/levee\n  levee alert webhook set https://acme.example/levee --customer acme"
    )]
    Set {
        url: String,
        #[arg(long)]
        customer: Option<String>,
    },
    /// List webhooks (never their secrets).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Stop posting to URL (its undelivered alerts are dropped).
    #[command(
        after_help = "Example:\n  levee alert webhook remove https://ops.example/hooks/levee"
    )]
    Remove {
        url: String,
        #[arg(long)]
        customer: Option<String>,
    },
}

fn check_url(url: &str) -> anyhow::Result<()> {
    let parsed = url::Url::parse(url).with_context(|| format!("`{url}` is not a URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        bail!("`{url}`: a webhook is an http:// or https:// URL with a host");
    }
    Ok(())
}

pub fn run(ctx: &super::Ctx, cmd: AlertCommand) -> anyhow::Result<()> {
    let store = ctx.open_store()?;
    let store = store.as_ref();
    match cmd {
        AlertCommand::List { all, limit, json } => {
            let alerts = store.alerts(all, limit)?;
            if json {
                return super::print_json(&alerts);
            }
            if alerts.is_empty() {
                println!("no {}alerts", if all { "" } else { "open " });
                return Ok(());
            }
            let rows: Vec<Vec<String>> = alerts
                .iter()
                .map(|a| {
                    vec![
                        a.id.to_string(),
                        a.severity.clone(),
                        a.kind.clone(),
                        a.customer.clone().unwrap_or_else(|| "-".into()),
                        super::ago(Some(a.opened_at)),
                        match a.resolved_at {
                            Some(t) => format!("resolved {}", super::ago(Some(t))),
                            None => "open".into(),
                        },
                        a.summary.clone(),
                    ]
                })
                .collect();
            super::print_table(
                &[
                    "ID", "SEVERITY", "KIND", "CUSTOMER", "OPENED", "STATE", "SUMMARY",
                ],
                &rows,
            );
            Ok(())
        }
        AlertCommand::Webhook(WebhookCommand::Set { url, customer }) => {
            check_url(&url)?;
            if let Some(c) = &customer {
                store.customer(c)?.with_context(|| {
                    format!("no customer `{c}`: `levee customer list` shows them")
                })?;
            }
            let key = ServerKey::load_or_create(ctx.data_dir())?;
            let secret = hex::encode(rand::random::<[u8; 32]>());
            let (w, added) = store.set_webhook(
                &url,
                customer.as_deref(),
                &key.seal_secret(&secret, SECRET_AAD),
            )?;
            let scope = w
                .customer
                .as_deref()
                .map(|c| format!("customer {c}'s alerts"))
                .unwrap_or_else(|| "every alert".into());
            if added {
                println!("webhook {} added: {scope} is posted to it", w.url);
                println!("signing secret (shown once; verify X-Levee-Signature with it):");
                println!("{secret}");
            } else {
                println!(
                    "webhook {} already gets {scope}; its secret is unchanged (remove and set it again for a new one)",
                    w.url
                );
            }
            Ok(())
        }
        AlertCommand::Webhook(WebhookCommand::List { json }) => {
            let hooks = store.webhooks()?;
            if json {
                return super::print_json(&hooks);
            }
            let rows: Vec<Vec<String>> = hooks
                .iter()
                .map(|w| {
                    vec![
                        w.url.clone(),
                        w.customer.clone().unwrap_or_else(|| "(all)".into()),
                        super::ago(Some(w.created_at)),
                    ]
                })
                .collect();
            super::print_table(&["URL", "CUSTOMER", "ADDED"], &rows);
            Ok(())
        }
        AlertCommand::Webhook(WebhookCommand::Remove { url, customer }) => {
            if !store.remove_webhook(&url, customer.as_deref())? {
                bail!(
                    "no webhook {url}{}: `levee alert webhook list` shows them",
                    customer
                        .map(|c| format!(" for customer {c}"))
                        .unwrap_or_default()
                );
            }
            println!("webhook {url} removed");
            Ok(())
        }
    }
}
