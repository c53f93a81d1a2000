//! The `levee` command line. Each subcommand lives in its own module and acts
//! on the store in `--data-dir`, so it works while `levee serve` runs.

mod alert;
mod appliance;
pub(crate) mod backups;
pub(crate) mod customer;
mod image;
mod image_build;
mod operator;
mod profile;
mod recovery;
mod release;
mod restore;
mod rollout;
mod serve;
mod store;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::store::{PgStore, SqliteStore, Store};

/// Levee: turns blank machines into managed backup appliances.
///
/// `levee serve` network-boots machines (DHCP/proxyDHCP, TFTP, iPXE over
/// HTTP); the other commands manage what they boot. Every command acts on
/// the state in --data-dir, also while `levee serve` runs.
#[derive(Debug, Parser)]
#[command(name = "levee", version, propagate_version = true, after_help = EXAMPLES)]
pub struct Cli {
    /// State directory: database, images, files served over TFTP (DIR/tftp/).
    #[arg(
        long,
        global = true,
        env = "LEVEE_DATA_DIR",
        default_value = "/var/lib/levee"
    )]
    pub data_dir: PathBuf,

    /// Keep central state in PostgreSQL instead of DATA_DIR/levee.sqlite,
    /// e.g. postgres://levee@db.example/levee or
    /// "host=/run/postgresql dbname=levee". Images and the server key
    /// (DATA_DIR/server.key, needed to read stored secrets) stay in --data-dir.
    #[arg(long, global = true, env = "LEVEE_DATABASE", value_name = "URL")]
    pub database: Option<String>,

    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

const EXAMPLES: &str = "\
Examples:
  # Boot machines on an isolated provisioning LAN (br0), handing out addresses:
  levee serve --dhcp-interface br0 --dhcp-mode full --dhcp-range 10.99.0.100-10.99.0.200

  # Beside an existing office DHCP server, answer only PXE clients:
  levee serve --dhcp-interface eth0 --dhcp-mode proxy

  # Import a built image and make it what unknown machines boot:
  levee image import ./out --profile default

  # Create a customer and register a machine for it:
  levee customer apply -f acme.yaml
  levee appliance register --mac 52:54:00:12:34:56 --customer acme";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the network-boot services: DHCP, TFTP and HTTP.
    Serve(Box<serve::ServeArgs>),
    /// Manage boot profiles (what a machine boots).
    #[command(subcommand)]
    Profile(profile::ProfileCommand),
    /// Manage appliances (physical boxes, known by MAC or appliance id).
    #[command(subcommand)]
    Appliance(appliance::ApplianceCommand),
    /// Manage customers and their configuration.
    #[command(subcommand)]
    Customer(customer::CustomerCommand),
    /// Import and list images.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Signed release channels for appliance updates (TUF).
    #[command(subcommand)]
    Release(release::ReleaseCommand),
    /// Alerts and the webhooks they are posted to.
    #[command(subcommand)]
    Alert(alert::AlertCommand),
    /// Operators of the web panel (`levee serve --ui`) and their audit log.
    #[command(subcommand)]
    Operator(operator::OperatorCommand),
    /// The offsite store: run it alone (`serve`, `cert`), prune its files.
    #[command(subcommand)]
    Store(store::StoreCommand),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let ctx = Ctx {
        data_dir: cli.data_dir,
        database: cli.database,
    };
    match cli.command {
        Command::Serve(args) => serve::run(&ctx, *args),
        Command::Profile(cmd) => profile::run(&ctx, cmd),
        Command::Appliance(cmd) => appliance::run(&ctx, cmd),
        Command::Customer(cmd) => customer::run(&ctx, cmd),
        Command::Image(cmd) => image::run(&ctx, cmd),
        Command::Release(cmd) => release::run(&ctx, cmd),
        Command::Alert(cmd) => alert::run(&ctx, cmd),
        Command::Operator(cmd) => operator::run(&ctx, cmd),
        Command::Store(cmd) => store::run(&ctx, cmd),
    }
}

/// Who runs the CLI, for the audit log: `cli:` and the login name (the
/// one sudo was called from, when it was).
fn cli_operator() -> String {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}")
}

/// Records a change made from the CLI in the audit log (as the panel does
/// its own). The change is made already: a failure to record it is only
/// warned about.
pub(crate) fn audit(store: &dyn Store, action: &str, target: &str, detail: &str) {
    if let Err(e) = store.add_audit(&cli_operator(), action, target, detail) {
        tracing::warn!(error = %e, action, target, "could not record the change in the audit log");
    }
}

/// Where the state is: the global options every subcommand shares.
pub struct Ctx {
    pub data_dir: PathBuf,
    pub database: Option<String>,
}

impl Ctx {
    fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Opens the store: PostgreSQL with `--database`, else SQLite in `--data-dir`.
    fn open_store(&self) -> anyhow::Result<Arc<dyn Store>> {
        match &self.database {
            Some(url) => {
                let store = PgStore::connect(url).map_err(|e| {
                    // The URL may carry a password: name only the kind of store.
                    anyhow::anyhow!("cannot open the Levee store in PostgreSQL (--database): {e}")
                })?;
                Ok(Arc::new(store))
            }
            None => {
                let store = SqliteStore::open(&self.data_dir).map_err(|e| {
                    anyhow::anyhow!(
                        "cannot open the Levee store in {}: {e}",
                        self.data_dir.display()
                    )
                })?;
                Ok(Arc::new(store))
            }
        }
    }
}

/// Logs go to stderr, one line per step; `RUST_LOG` overrides the level.
pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Text from machines or the database made safe for a terminal: control
/// characters (escape sequences, carriage returns, newlines that would
/// forge lines, C1 controls) are shown escaped (`\u{1b}`), not sent raw.
pub fn escape(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Prints rows as an aligned table, every cell escaped (see [`escape`]).
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| escape(c)).collect())
        .collect();
    let rows = &rows;
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.iter().map(|s| s.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

/// `3m ago`-style age of a Unix time.
fn ago(t: Option<u64>) -> String {
    let Some(t) = t else { return "never".into() };
    format!("{} ago", span(crate::store::now().saturating_sub(t)))
}

/// `42s`, `3m`, `5h`, `2d`: a length of time, coarsely.
fn span(d: u64) -> String {
    match d {
        0..=59 => format!("{d}s"),
        60..=3599 => format!("{}m", d / 60),
        3600..=86_399 => format!("{}h", d / 3600),
        _ => format!("{}d", d / 86_400),
    }
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_for_the_terminal() {
        assert_eq!(escape("plain ünïcode"), "plain ünïcode");
        assert_eq!(escape("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(escape("x\ny\r"), "x\\ny\\r");
        assert_eq!(escape("\u{9b}31m"), "\\u{9b}31m");
    }
}
