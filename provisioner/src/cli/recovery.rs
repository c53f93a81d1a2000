//! `levee customer recovery-key ...`: the customer's recovery key pair
//! (levee_proto::recovery). The server never keeps the private half: it
//! is printed once, as a paper key, for the customer or ops to keep
//! offline; the public half goes into the customer's YAML.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;
use levee_proto::recovery::{RecoveryPrivateKey, RecoveryPublicKey};

#[derive(Debug, Subcommand)]
pub enum RecoveryKeyCommand {
    /// Make a new recovery key pair: the paper key goes to --out (and the
    /// terminal), the public key into the customer's YAML as `recovery_key:`.
    ///
    /// Every appliance of the customer then adds a repository key slot that
    /// only this paper key opens, so the offsite copies of a lost or stolen
    /// appliance can be opened on any machine (`levee-agent --recovery-key
    /// FILE --repo DIR snapshots`). The server keeps no copy of the paper
    /// key and cannot open the backups. Replacing the key (init again,
    /// apply) replaces every appliance's recovery slot at its next run.
    #[command(
        after_help = "Example:\n  levee customer recovery-key init acme --out /media/usb/acme-recovery.txt\n  # add the printed recovery_key: line to acme.yaml, then\n  levee customer apply -f acme.yaml\n  # print or copy the paper key, store it offline, then delete the file"
    )]
    Init {
        /// The customer the key is for (named in the file and the output).
        name: String,
        /// Where to write the paper key (created 0600; never overwritten).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Check that a paper key matches the customer's configured
    /// `recovery_key:` (e.g. after typing it back from paper).
    #[command(
        after_help = "Example:\n  levee customer recovery-key check acme --key acme-recovery.txt"
    )]
    Check {
        name: String,
        /// File holding the paper key.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
}

pub fn run(ctx: &super::Ctx, cmd: RecoveryKeyCommand) -> anyhow::Result<()> {
    match cmd {
        RecoveryKeyCommand::Init { name, out } => init(&name, &out),
        RecoveryKeyCommand::Check { name, key } => check(ctx, &name, &key),
    }
}

fn init(name: &str, out: &Path) -> anyhow::Result<()> {
    let key = RecoveryPrivateKey::generate();
    let public = key.public();
    let paper = key.to_paper();
    let text = format!(
        "Levee recovery key for customer {name}\n\
         Public key: {public} (fingerprint {})\n\
         Paper key (opens every repository of {name}; keep it offline):\n\n{paper}\n",
        public.fingerprint()
    );
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| {
            format!(
                "cannot create {} (an existing file is never overwritten)",
                out.display()
            )
        })?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", out.display()))?;
    println!("{text}");
    println!(
        "Wrote the paper key to {} (0600).\n\
         Next: add this line to {name}'s YAML and run `levee customer apply -f FILE`:\n\n  \
         recovery_key: {public}\n\n\
         Then move the paper key offline (print it, or copy it to removable media) and delete \
         the file. Check a typed-back copy with `levee customer recovery-key check {name} --key FILE`.",
        out.display()
    );
    Ok(())
}

fn check(ctx: &super::Ctx, name: &str, file: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    // The file `init` writes, or a typed-back copy of the key alone.
    let key = RecoveryPrivateKey::from_key_file(&text)
        .with_context(|| format!("the paper key in {}", file.display()))?;
    let store = ctx.open_store()?;
    let c = store
        .customer(name)?
        .with_context(|| format!("no customer `{name}`: `levee customer list` shows them"))?;
    let Some(configured) = c.config.recovery_key.as_deref() else {
        bail!("customer {name} has no recovery_key: in its configuration; add the public key and apply");
    };
    let configured = RecoveryPublicKey::parse(configured)?;
    if configured != key.public() {
        bail!(
            "this paper key is not {name}'s configured recovery key (paper key's fingerprint {}, \
             configured {})",
            key.public().fingerprint(),
            configured.fingerprint()
        );
    }
    println!(
        "ok: the paper key matches {name}'s recovery key {}",
        configured.fingerprint()
    );
    Ok(())
}

/// `levee appliance replace OLD --with NEW --recovery-key FILE`: the paper
/// key opens OLD's sealed recovery slot here (it never reaches the server
/// process), the secret is sealed to NEW's own public key and stored as
/// NEW's grant. Checks come first: a paper key that does not open OLD's
/// slot replaces nothing. A replacement already made is not made again.
pub(super) fn replace_with_key(
    store: &dyn crate::store::Store,
    old: &crate::store::Appliance,
    with: levee_pxe::boot::MacAddr,
    file: &Path,
) -> anyhow::Result<()> {
    use levee_proto::recovery::{seal, SLOT_CONTEXT};
    use levee_proto::recovery_api::grant_context;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let key = RecoveryPrivateKey::from_key_file(&text)
        .with_context(|| format!("the paper key in {}", file.display()))?;
    let Some(customer) = old.customer.clone() else {
        bail!(
            "appliance {} (id {}) has no customer, hence no repository to hand over",
            old.mac,
            old.id
        );
    };
    let rec = store.recovery(old.id)?.unwrap_or_default();
    let (Some(repo), Some(sealed)) = (rec.repository, rec.sealed) else {
        bail!(
            "appliance {} (id {}) never published its repository's recovery slot (an agent \
             before this feature, or no recovery_key: in the configuration while it ran): \
             restore by hand on the new machine with `levee-agent --repo \
             https://STORE/{customer}/REPOSITORY-ID --recovery-key FILE restore ...`",
            old.mac,
            old.id
        );
    };
    let secret = key.open(&sealed, SLOT_CONTEXT).map_err(|e| {
        anyhow::anyhow!(
            "this paper key (fingerprint {}) does not open the recovery slot of {}'s repository \
             {repo}: {e}",
            key.public().fingerprint(),
            old.mac
        )
    })?;
    let new = match old.replaced_by {
        None => super::appliance::replace(store, old, with)?,
        Some(id) => {
            let n = store.appliance_by_id(id)?.with_context(|| {
                format!("{} was replaced by appliance {id}, which is gone", old.mac)
            })?;
            if n.mac != with {
                bail!(
                    "{} was already replaced by {} (id {}), not {with}",
                    old.mac,
                    n.mac,
                    n.id
                );
            }
            println!("{} already replaced by {with} (id {})", old.mac, n.id);
            n
        }
    };
    let new_key = store.recovery(new.id)?.and_then(|r| r.public_key);
    let Some(new_key) = new_key else {
        println!(
            "{with} has not published its recovery key yet (it does once enrolled, when its service \
             starts): run this command again then to re-wrap repository {repo} for it"
        );
        return Ok(());
    };
    let new_key = RecoveryPublicKey::parse(&new_key)
        .with_context(|| format!("the recovery key {with} published"))?;
    let grant = seal(&new_key, &secret, &grant_context(&customer, &repo))?;
    store.put_recovery_grant(new.id, old.id, &repo, &grant)?;
    super::audit(
        store,
        "recovery-grant",
        &format!("appliance:{}", new.id),
        &format!(
            "repository {repo} of appliance {} re-wrapped for key {}",
            old.id,
            new_key.fingerprint()
        ),
    );
    println!(
        "repository {repo} of {} re-wrapped for {with} (its key {}); {with} fetches it from its \
         offsite target and continues it at its next run",
        old.mac,
        new_key.fingerprint()
    );
    Ok(())
}
