//! `levee store ...`: operating the offsite store's files directly.

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Carry out appliances' deletion requests older than the grace period,
    /// and drop uploads abandoned that long. `levee serve --store` does
    /// this hourly by itself; `--grace 0s` acts on every request now.
    #[command(
        after_help = "Examples:\n  levee store prune --dry-run\n  levee store prune --grace 0s   # carry out every request now\n  levee store prune --dir /srv/offsite --json"
    )]
    Prune {
        /// The store's directory (default DATA_DIR/offsite).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Requests younger than this wait, e.g. 14d, 36h, 0s.
        #[arg(long, default_value = "14d", value_parser = parse_grace)]
        grace: Duration,
        /// Say what would go; delete nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
}

fn parse_grace(s: &str) -> Result<Duration, String> {
    levee_proto::config::parse_duration(s)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{s}` is not a duration; expected e.g. 14d, 36h or 0s"))
}

pub fn run(ctx: &super::Ctx, cmd: StoreCommand) -> anyhow::Result<()> {
    match cmd {
        StoreCommand::Prune {
            dir,
            grace,
            dry_run,
            json,
        } => {
            let dir = dir.unwrap_or_else(|| ctx.data_dir().join("offsite"));
            let disk = crate::offsite::Disk::new(&dir);
            let r = crate::offsite::prune(&disk, crate::store::now(), grace.as_secs(), dry_run)
                .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                let verb = if dry_run { "would delete" } else { "deleted" };
                println!(
                    "{verb} {} file(s), {} bytes, from {} deletion request(s); {} request(s) still in their grace period; {} abandoned upload(s) dropped",
                    r.files_deleted, r.bytes_freed, r.requests_done, r.requests_waiting, r.partials_dropped
                );
            }
            Ok(())
        }
    }
}
