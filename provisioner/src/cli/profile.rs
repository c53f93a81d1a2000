//! `levee profile ...`: what machines boot.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;
use levee_proto::image::{INITRD, KERNEL, ROOTFS};

use crate::boot::{default_cmdline, BootService};
use crate::images;
use crate::store::{Profile, Transport};

#[derive(Debug, Subcommand)]
pub enum ProfileCommand {
    /// Create or change a boot profile.
    ///
    /// A profile boots an image (imported with `levee image import`), or a
    /// loose kernel and initrd given here (copied into the image store).
    /// Options left out keep their current value.
    ///
    /// The command line is a template; variables: {url} (server base URL),
    /// {mac}, {profile}, {image}, {image_version}, {image_url} (base URL of
    /// the image's files), {root_url} and {root_sha256} (the image's
    /// rootfs.squashfs), {image_cmdline} (the image's own arguments),
    /// {ca} (sha256 of the server CA certificate) and {token} (a one-time
    /// enrollment token for that machine, minted per rendered script).
    /// Write {{ and }} for literal braces.
    #[command(
        after_help = "Examples:\n  levee profile set default --image levee-appliance-2026.11.26\n  levee profile set rescue --kernel ./vmlinuz --initrd ./initrd.img --cmdline 'console=ttyS0 levee.url={url}'"
    )]
    Set {
        name: String,
        /// Image id (NAME-VERSION, see `levee image list`).
        #[arg(long, conflicts_with_all = ["kernel", "initrd"])]
        image: Option<String>,
        /// A kernel file to boot (with --initrd).
        #[arg(long, requires = "initrd")]
        kernel: Option<PathBuf>,
        /// An initrd file to boot (with --kernel).
        #[arg(long, requires = "kernel")]
        initrd: Option<PathBuf>,
        /// Kernel command-line template (see above).
        #[arg(long)]
        cmdline: Option<String>,
        /// How iPXE fetches kernel and initrd.
        #[arg(long, value_enum)]
        transport: Option<Transport>,
    },
    /// List boot profiles.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one boot profile.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a boot profile no appliance uses.
    Remove { name: String },
}

pub fn run(ctx: &super::Ctx, cmd: ProfileCommand) -> anyhow::Result<()> {
    let data_dir = ctx.data_dir();
    let store = ctx.open_store()?;
    match cmd {
        ProfileCommand::Set {
            name,
            image,
            kernel,
            initrd,
            cmdline,
            transport,
        } => {
            let existing = store.profile(&name)?;
            let image_id = match (image, kernel, initrd) {
                (Some(id), _, _) => id,
                (None, Some(k), Some(i)) => {
                    images::import_files(data_dir, store.as_ref(), &name, &k, &i)
                        .context("cannot import kernel and initrd")?
                        .id
                }
                _ => match &existing {
                    Some(p) => p.image.clone(),
                    None => {
                        bail!("profile `{name}` is new: give --image ID, or --kernel and --initrd")
                    }
                },
            };
            let record = store.image(&image_id)?.with_context(|| {
                format!("image `{image_id}` is not in the store: `levee image list` shows the imported ones")
            })?;
            for needed in [KERNEL, INITRD] {
                if !record.manifest.artifacts.contains_key(needed) {
                    bail!("image `{image_id}` has no `{needed}`");
                }
            }
            let has_root = record.manifest.artifacts.contains_key(ROOTFS);
            let profile = Profile {
                name: name.clone(),
                image: image_id,
                kernel: KERNEL.into(),
                initrd: INITRD.into(),
                cmdline: cmdline
                    .or_else(|| existing.as_ref().map(|p| p.cmdline.clone()))
                    .unwrap_or_else(|| default_cmdline(has_root).to_string()),
                transport: transport
                    .or(existing.as_ref().map(|p| p.transport))
                    .unwrap_or(Transport::Http),
            };
            check_template(data_dir, store.clone(), &profile, &record)?;
            store.put_profile(&profile)?;
            println!(
                "profile `{}` boots image `{}` over {}",
                profile.name,
                profile.image,
                profile.transport.as_str()
            );
            Ok(())
        }
        ProfileCommand::List { json } => {
            let profiles = store.profiles()?;
            if json {
                return super::print_json(&profiles);
            }
            let rows: Vec<Vec<String>> = profiles
                .iter()
                .map(|p| {
                    vec![
                        p.name.clone(),
                        p.image.clone(),
                        p.transport.as_str().into(),
                        p.cmdline.clone(),
                    ]
                })
                .collect();
            super::print_table(&["PROFILE", "IMAGE", "TRANSPORT", "CMDLINE"], &rows);
            Ok(())
        }
        ProfileCommand::Show { name, json } => {
            let p = store.profile(&name)?.with_context(|| {
                format!("no profile `{name}`: `levee profile list` shows the profiles")
            })?;
            if json {
                return super::print_json(&p);
            }
            println!("profile:   {}\nimage:     {}\nkernel:    {}\ninitrd:    {}\ntransport: {}\ncmdline:   {}",
                p.name, p.image, p.kernel, p.initrd, p.transport.as_str(), p.cmdline);
            Ok(())
        }
        ProfileCommand::Remove { name } => {
            store.delete_profile(&name)?;
            println!("profile `{name}` removed");
            Ok(())
        }
    }
}

/// Renders the template once for a made-up machine so a typo fails now,
/// not on a machine at boot.
fn check_template(
    data_dir: &Path,
    store: std::sync::Arc<dyn crate::store::Store>,
    profile: &Profile,
    image: &crate::store::ImageRecord,
) -> anyhow::Result<()> {
    let probe = BootService {
        store,
        data_dir: data_dir.to_path_buf(),
        public_url: "http://192.0.2.1".into(),
        tftp_host: "192.0.2.1".into(),
        ca_fingerprint: "0".repeat(64),
        allow_pending: false,
        limits: Default::default(),
    };
    let mac = "52:54:00:00:00:00".parse().context("probe MAC")?;
    probe
        .cmdline(profile, image, mac, "probe-token")
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("--cmdline: {e}"))
}
