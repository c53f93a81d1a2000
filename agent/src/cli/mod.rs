//! The `levee-agent` command line. Adding a subcommand is one variant in
//! [`Command`] and one arm in [`run`]. Output goes to stdout (text, or one
//! JSON document with `--json`); progress and logs go to stderr.

mod install;
mod offsite;
mod output;
mod progress;
mod report;

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use levee_agent::backup::commands::backup::BackupOptions;
use levee_agent::backup::commands::check::CheckOptions;
use levee_agent::backup::commands::forget::ForgetOptions;
use levee_agent::backup::commands::prune::PruneOptions;
use levee_agent::backup::commands::repair::RepairOptions;
use levee_agent::backup::commands::restore::RestoreOptions;
use levee_agent::backup::commands::{backup, check, diff, forget, ls, prune, repair, restore};
use levee_agent::backup::progress::Counters;
use levee_agent::runs::build;
use levee_agent::Repository;
use levee_proto::recovery::RecoveryPrivateKey;
use levee_proto::repo::KdfParams;
use levee_proto::runs::RunKind;

const EXAMPLES: &str = "Examples:
  export LEVEE_REPO=/var/lib/levee/repo LEVEE_PASSWORD_FILE=/etc/levee/repo.key
  levee-agent init
  LEVEE_SMB_PASSWORD=... levee-agent backup smb://backup@fileserver/Company /srv/scans --tag nightly
  levee-agent snapshots
  levee-agent restore latest /Company/Accounts --target /tmp/restore
  levee-agent forget --keep-daily 7 --keep-weekly 5 --keep-monthly 12 && levee-agent prune
  levee-agent check --read-data=10";

/// Levee backup agent: deduplicated, encrypted backups of SMB shares and folders.
#[derive(Parser)]
#[command(name = "levee-agent", version, after_help = EXAMPLES)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Clone)]
pub struct Global {
    /// Repository directory; or a repository in a Levee offsite store,
    /// https://HOST:PORT/CUSTOMER/REPOSITORY-ID, fetched into
    /// STATE/recovered/ and opened with --recovery-key (disaster recovery,
    /// with the replacement appliance's credential).
    #[arg(long, short = 'r', env = "LEVEE_REPO", global = true)]
    pub repo: Option<PathBuf>,
    /// File holding the repository password (else $LEVEE_PASSWORD).
    #[arg(long, env = "LEVEE_PASSWORD_FILE", global = true)]
    pub password_file: Option<PathBuf>,
    /// Open the repository with the customer's paper recovery key (a file
    /// holding it as printed by `levee customer recovery-key init`) instead
    /// of a password: for a copy of a lost appliance's repository, on any
    /// machine.
    #[arg(
        long,
        env = "LEVEE_RECOVERY_KEY_FILE",
        global = true,
        conflicts_with = "password_file"
    )]
    pub recovery_key: Option<PathBuf>,
    /// Print one JSON document on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress bars.
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,
    /// The appliance's state (credential, run report spool). On an
    /// enrolled appliance, backup, restore, prune and check runs by hand
    /// are reported to the server through it.
    #[arg(
        long,
        env = "LEVEE_STATE_DIR",
        global = true,
        default_value = "/var/lib/levee"
    )]
    pub state_dir: PathBuf,
}

#[derive(Subcommand)]
pub enum Command {
    /// Create a repository.
    Init(InitArgs),
    /// Back up local paths and smb:// shares.
    Backup(BackupOptions),
    /// List snapshots (a damaged one is named and makes the exit code 1).
    Snapshots {
        /// Exit 0 even if some snapshots are damaged (they are still named).
        #[arg(long)]
        skip_damaged: bool,
    },
    /// List files in a snapshot.
    Ls {
        snapshot: String,
        path: Option<String>,
    },
    /// Restore a snapshot (or a path in it) to a directory or smb:// share.
    Restore(RestoreOptions),
    /// Show what changed between two snapshots.
    Diff { a: String, b: String },
    /// Remove snapshots by id or retention policy (then run `prune`).
    Forget(ForgetOptions),
    /// Delete data no snapshot uses (safe while backups run).
    Prune(PruneOptions),
    /// Verify the repository's structure and, with --read-data, its data.
    Check(CheckOptions),
    /// Rebuild the index from the packs' headers and drop references to
    /// lost blobs from snapshots (files dropped, lost directories emptied;
    /// each listed). Never deletes a pack. Example: `levee-agent repair --read-data`
    Repair(RepairOptions),
    /// Remove stale locks (their process is gone, or their heartbeat is
    /// older than 30 minutes) and lock files that fail authentication;
    /// live locks are never removed.
    Unlock,
    /// Fetch the packs of a repository taken over from an offsite copy that
    /// are not here yet (what the service's back-fill does), from the
    /// targets the take-over recorded, with the appliance's credential and
    /// configuration in --state-dir. Resumes where any earlier run stopped.
    Backfill(offsite::BackfillArgs),
    /// Manage key slots (passwords, appliance and recovery secrets).
    #[command(subcommand)]
    Key(KeyCommand),
    /// Run as the appliance service: log to the journal, report status to levee.url.
    Run,
    /// Install the appliance image to the local disk (slot A, GRUB with A/B boot counting).
    Install(install::InstallArgs),
    /// Show the boot slots (`levee-agent slot status --json`), or mark the
    /// running one good (`levee-agent slot commit`).
    #[command(subcommand)]
    Slot(install::SlotCommand),
}

#[derive(Args)]
pub struct InitArgs {
    /// What the first slot's secret is: password, appliance or recovery.
    #[arg(long, default_value = "password")]
    pub kind: String,
    #[arg(long, default_value = "")]
    pub label: String,
    /// Argon2id memory in KiB (tests lower it; default 64 MiB).
    #[arg(long, default_value_t = 65536, hide = true)]
    pub kdf_memory_kib: u32,
}

#[derive(Subcommand)]
pub enum KeyCommand {
    /// List key slots.
    List,
    /// Add a key slot; the new secret comes from --new-password-file or $LEVEE_NEW_PASSWORD.
    Add(NewSlot),
    /// Remove a key slot (by id prefix); the last one cannot be removed.
    ///
    /// This does NOT revoke the secret: the master key stays the same, so a
    /// copy of the slot (a disk image, an offsite copy of keys/) still opens
    /// the repository, old and future backups alike. After a leaked secret,
    /// use `key rotate`.
    Remove { id: String },
    /// After a leaked secret: a new master key for everything written from
    /// now on, one new slot for the secret from --new-password-file or
    /// $LEVEE_NEW_PASSWORD (default: the secret used to open), and every
    /// other slot removed (add other secrets again with `key add`).
    ///
    /// Config, index and snapshot files are re-encrypted at once; old data
    /// stays under the old key until `levee-agent prune --rewrite`
    /// re-encrypts it (run it until it reports 0 retired keys; usually
    /// twice). A copy of an old slot then opens nothing the repository
    /// uses. Offsite copies that are append-only keep old packs and slots
    /// until their retention removes them: whoever holds the leaked secret
    /// and such a copy still reads the data made before the rotation.
    /// Refused while a backup or prune runs; format 2 repositories only.
    Rotate(NewSlot),
}

/// The slot `key add` and `key rotate` write.
#[derive(Args, Clone)]
pub struct NewSlot {
    #[arg(long, default_value = "password")]
    kind: String,
    #[arg(long, default_value = "")]
    label: String,
    #[arg(long)]
    new_password_file: Option<PathBuf>,
    #[arg(long, default_value_t = 65536, hide = true)]
    kdf_memory_kib: u32,
}

/// The new secret for `key add` and `key rotate`.
fn new_secret(file: Option<PathBuf>) -> Result<Option<Vec<u8>>> {
    match file {
        Some(f) => Ok(Some(
            std::fs::read_to_string(&f)
                .with_context(|| format!("reading {}", f.display()))?
                .trim_end_matches(['\n', '\r'])
                .as_bytes()
                .to_vec(),
        )),
        None => Ok(std::env::var("LEVEE_NEW_PASSWORD")
            .ok()
            .map(String::into_bytes)),
    }
}

/// Parses, runs, and returns the process exit code: 0 ok, 1 failure,
/// 3 finished but some files could not be read or restored.
pub fn main() -> i32 {
    // One TLS crypto provider for the whole process (ring, as reqwest and
    // rcgen use); tough's dependency tree also compiles aws-lc-rs in.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    // The service logs what it does; commands only what went wrong.
    levee_agent::logging::init(if matches!(cli.command, Command::Run) {
        "info"
    } else {
        "warn"
    });
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("levee-agent: {}", output::esc(&format!("{e:#}")));
            1
        }
    }
}

fn password(g: &Global) -> Result<Vec<u8>> {
    if let Some(f) = &g.password_file {
        let s = std::fs::read_to_string(f)
            .with_context(|| format!("reading password file {}", f.display()))?;
        return Ok(s.trim_end_matches(['\n', '\r']).as_bytes().to_vec());
    }
    match std::env::var("LEVEE_PASSWORD") {
        Ok(p) => Ok(p.into_bytes()),
        Err(_) => bail!("no password: set LEVEE_PASSWORD or --password-file"),
    }
}

fn repo_path(g: &Global) -> Result<PathBuf> {
    g.repo
        .clone()
        .ok_or_else(|| anyhow!("no repository: use --repo DIR or set LEVEE_REPO"))
}

fn open(g: &Global) -> Result<Repository> {
    let path = repo_path(g)?;
    if let Some(url) = path.to_str().filter(|p| p.starts_with("https://")) {
        return offsite::open(url, g.recovery_key.as_deref(), &g.state_dir);
    }
    if let Some(f) = &g.recovery_key {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("reading the recovery key {}", f.display()))?;
        let key = RecoveryPrivateKey::from_key_file(&text)
            .with_context(|| format!("the recovery key in {}", f.display()))?;
        return Ok(Repository::open_with_recovery(&path, &key)?);
    }
    Ok(Repository::open(&path, &password(g)?)?)
}

/// [`open`], and for a repository taken over from an offsite copy, reads of
/// packs not here yet fetch them (`offsite::attach`).
fn open_fetching(g: &Global) -> Result<Repository> {
    let repo = open(g)?;
    offsite::attach(g, &repo);
    Ok(repo)
}

/// Holds an update's reboot back while this command runs (see
/// `levee_agent::activity`); off the appliance (no `/run/levee`), nothing
/// to hold back.
fn hold_reboot() -> Option<levee_agent::activity::Held> {
    levee_agent::activity::hold(
        std::path::Path::new(levee_agent::activity::LOCK_PATH),
        || eprintln!("waiting: the appliance is rebooting into an update"),
    )
    .ok()
}

pub fn run(cli: Cli) -> Result<i32> {
    let g = &cli.global;
    let out = output::Out { json: g.json };
    match cli.command {
        Command::Install(a) => install::run_install(a, g.json),
        Command::Slot(c) => install::run_slot(c, g.json),
        Command::Run => {
            levee_agent::daemon::run(&levee_agent::daemon::RunOptions::default())?;
            Ok(0)
        }
        Command::Init(a) => {
            let path = repo_path(g)?;
            let repo = Repository::init(
                &path,
                &password(g)?,
                KdfParams::with_memory(a.kdf_memory_kib),
                &a.kind,
                &a.label,
            )?;
            out.init(&repo)?;
            Ok(0)
        }
        Command::Backup(o) => {
            let _reboot_waits = hold_reboot();
            let run = report::Manual::start(&g.state_dir, RunKind::Backup, o.sources.clone());
            // Taken over: the parent's trees are fetched (the backup
            // allows no other pack).
            let s = open_fetching(g).and_then(|repo| {
                let c = Counters::default();
                Ok(progress::with_progress(g, &c, "backup", || {
                    backup::backup(&repo, &o, None, &c)
                })?)
            });
            run.finish(g.repo.as_deref(), &s, build::backup);
            let s = s?;
            out.backup(&s)?;
            Ok(if s.summary.errors > 0 { 3 } else { 0 })
        }
        Command::Snapshots { skip_damaged } => {
            let repo = open(g)?;
            let (snaps, bad) = repo.snapshots()?;
            out.snapshots(&snaps, &bad)?;
            Ok(if bad.is_empty() || skip_damaged { 0 } else { 1 })
        }
        Command::Ls { snapshot, path } => {
            let repo = open_fetching(g)?;
            out.ls(&ls::ls(&repo, &snapshot, path.as_deref())?)?;
            Ok(0)
        }
        Command::Restore(o) => {
            let _reboot_waits = hold_reboot();
            let run = report::Manual::start(&g.state_dir, RunKind::Restore, vec![o.target.clone()]);
            let s = open_fetching(g).and_then(|repo| {
                let c = Counters::default();
                Ok(progress::with_progress(g, &c, "restore", || {
                    restore::restore(&repo, &o, None, &c)
                })?)
            });
            run.finish(g.repo.as_deref(), &s, build::restore);
            let s = s?;
            out.restore(&s)?;
            Ok(if s.errors > 0 { 3 } else { 0 })
        }
        Command::Diff { a, b } => {
            let repo = open_fetching(g)?;
            out.diff(&diff::diff(&repo, &a, &b)?)?;
            Ok(0)
        }
        Command::Forget(o) => {
            let repo = open(g)?;
            out.forget(&forget::forget(&repo, &o)?, o.dry_run)?;
            Ok(0)
        }
        Command::Prune(o) => {
            let _reboot_waits = hold_reboot();
            let run = report::Manual::start(&g.state_dir, RunKind::Prune, Vec::new());
            let r = open(g).and_then(|repo| {
                let c = Counters::default();
                Ok(progress::with_progress(g, &c, "prune", || {
                    prune::prune(&repo, &o, &c)
                })?)
            });
            run.finish(g.repo.as_deref(), &r, build::prune);
            let r = r?;
            out.prune(&r)?;
            Ok(0)
        }
        Command::Check(o) => {
            let run = report::Manual::start(&g.state_dir, RunKind::Check, Vec::new());
            // Only reading the data fetches packs; the structure check
            // reports those not yet here.
            let opened = if o.read_data.is_some() {
                open_fetching(g)
            } else {
                open(g)
            };
            let r = opened.and_then(|repo| {
                let c = Counters::default();
                let r = progress::with_progress(g, &c, "check", || check::check(&repo, &o, &c))?;
                if !o.repair_from_offsite || r.damaged_blobs.is_empty() {
                    return Ok(r);
                }
                offsite::repair(g, &repo, &r)?;
                // Reopened: the old handle may hold the damaged files open.
                let repo = open(g)?;
                Ok(progress::with_progress(g, &c, "check", || {
                    check::check(&repo, &o, &c)
                })?)
            });
            run.finish(g.repo.as_deref(), &r, build::check);
            let r = r?;
            out.check(&r)?;
            Ok(if r.errors.is_empty() { 0 } else { 1 })
        }
        Command::Repair(o) => {
            let _reboot_waits = hold_reboot();
            let repo = open(g)?;
            let c = Counters::default();
            let r = progress::with_progress(g, &c, "repair", || repair::repair(&repo, &o, &c))?;
            out.repair(&r)?;
            Ok(0)
        }
        Command::Backfill(a) => {
            let repo = open(g)?;
            let b = offsite::backfill(g, &repo, &a)?;
            out.message(
                if b.complete {
                    "back-fill complete"
                } else {
                    "back-fill stopped"
                },
                &format!(
                    "{} pack(s), {} bytes fetched; {} left",
                    b.packs_fetched, b.bytes_fetched, b.packs_left
                ),
            )?;
            Ok(if b.errors.is_empty() { 0 } else { 1 })
        }
        Command::Unlock => {
            let repo = open(g)?;
            let r = levee_agent::backup::lock::unlock(repo.local(), repo.key())?;
            out.unlock(&r)?;
            Ok(0)
        }
        Command::Key(k) => {
            let repo = open(g)?;
            match k {
                KeyCommand::List => out.keys(&repo.key_slots()?)?,
                KeyCommand::Add(NewSlot {
                    kind,
                    label,
                    new_password_file,
                    kdf_memory_kib,
                }) => {
                    let pw = new_secret(new_password_file)?.ok_or_else(|| {
                        anyhow!("no new secret: use --new-password-file or LEVEE_NEW_PASSWORD")
                    })?;
                    let id =
                        repo.add_key(&pw, KdfParams::with_memory(kdf_memory_kib), &kind, &label)?;
                    out.message("added key slot", &id)?;
                }
                KeyCommand::Remove { id } => {
                    let id = repo.remove_key(&id)?;
                    out.key_removed(&id)?;
                }
                KeyCommand::Rotate(NewSlot {
                    kind,
                    label,
                    new_password_file,
                    kdf_memory_kib,
                }) => {
                    let pw = match new_secret(new_password_file)? {
                        Some(pw) => pw,
                        None => password(g)?,
                    };
                    let r = levee_agent::backup::commands::rotate::rotate(
                        &repo,
                        &pw,
                        KdfParams::with_memory(kdf_memory_kib),
                        &kind,
                        &label,
                    )?;
                    out.rotated(&r)?;
                }
            }
            Ok(0)
        }
    }
}
