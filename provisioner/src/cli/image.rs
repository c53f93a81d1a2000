//! `levee image ...`: the image store.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

use crate::boot::{default_cmdline, DEFAULT_PROFILE};
use crate::images;
use crate::store::{Profile, Transport};

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Copy a built image (a directory with image.json) into the store and
    /// point a boot profile at it.
    ///
    /// Every artifact is checked against the sizes and sha256 sums in
    /// image.json first; a damaged image is refused and nothing changes.
    #[command(after_help = "Example:\n  levee image import ./out --profile default")]
    Import {
        dir: PathBuf,
        /// Boot profile to point at the image (created if missing).
        #[arg(long, default_value = DEFAULT_PROFILE)]
        profile: String,
    },
    /// List imported images.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Build the appliance image (vmlinuz, initrd.img, rootfs.squashfs,
    /// image.json) from Debian packages, the overlay and the agent.
    Build(super::image_build::BuildArgs),
}

pub fn run(ctx: &super::Ctx, cmd: ImageCommand) -> anyhow::Result<()> {
    // Building needs no store: do not create one on a build machine.
    let cmd = match cmd {
        ImageCommand::Build(args) => return super::image_build::run(args),
        other => other,
    };
    let data_dir = ctx.data_dir();
    let store = ctx.open_store()?;
    match cmd {
        ImageCommand::Build(_) => Ok(()), // returned above
        ImageCommand::Import { dir, profile } => {
            let record = images::import(data_dir, store.as_ref(), &dir)
                .with_context(|| format!("cannot import the image in {}", dir.display()))?;
            let has_root = record
                .manifest
                .artifacts
                .contains_key(levee_proto::image::ROOTFS);
            // Keep a profile's own command line and transport; only the image changes.
            let existing = store.profile(&profile)?;
            let p = Profile {
                name: profile.clone(),
                image: record.id.clone(),
                kernel: levee_proto::image::KERNEL.into(),
                initrd: levee_proto::image::INITRD.into(),
                cmdline: existing
                    .as_ref()
                    .map(|p| p.cmdline.clone())
                    .unwrap_or_else(|| default_cmdline(has_root).to_string()),
                transport: existing.map(|p| p.transport).unwrap_or(Transport::Http),
            };
            store.put_profile(&p)?;
            println!(
                "imported image `{}` ({} artifacts); profile `{profile}` now boots it",
                record.id,
                record.manifest.artifacts.len()
            );
            Ok(())
        }
        ImageCommand::List { json } => {
            let images = store.images()?;
            if json {
                return super::print_json(&images);
            }
            let rows: Vec<Vec<String>> = images
                .iter()
                .map(|i| {
                    let size: u64 = i.manifest.artifacts.values().map(|a| a.size).sum();
                    vec![
                        i.id.clone(),
                        i.version.clone(),
                        format!("{:.1} MiB", size as f64 / (1 << 20) as f64),
                        super::ago(Some(i.imported_at)),
                    ]
                })
                .collect();
            super::print_table(&["IMAGE", "VERSION", "SIZE", "IMPORTED"], &rows);
            Ok(())
        }
    }
}
