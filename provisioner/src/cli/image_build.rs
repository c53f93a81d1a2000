//! `levee image build`: builds the appliance image with the `levee-image`
//! library (Debian packages, the overlay and the agent -> vmlinuz,
//! initrd.img, rootfs.squashfs, image.json).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  levee image build --manifest image/appliance.yaml --out ./out\n  levee image import ./out"
)]
pub struct BuildArgs {
    /// Image manifest.
    #[arg(long, default_value = "image/appliance.yaml")]
    pub manifest: PathBuf,
    /// Directory for vmlinuz, initrd.img, rootfs.squashfs and image.json.
    #[arg(long)]
    pub out: PathBuf,
    /// The levee-agent binary to bake in [default: levee-agent beside this binary].
    #[arg(long)]
    pub agent: Option<PathBuf>,
    /// Cache of downloaded packages and bootstrapped trees, shared by builds.
    #[arg(
        long,
        env = "LEVEE_IMAGE_CACHE",
        default_value = "/var/cache/levee-image"
    )]
    pub cache_dir: PathBuf,
    /// Lock file [default: the manifest with extension .lock].
    #[arg(long)]
    pub lock: Option<PathBuf>,
    /// Re-resolve the packages from the mirror and rewrite the lock file.
    #[arg(long)]
    pub refresh_lock: bool,
    /// TUF root metadata to bake in (`/usr/share/levee/tuf/root.json`): the
    /// OFFLINE_DIR/root.json that `levee release keys init` wrote. Without
    /// it the image's agent cannot verify updates.
    #[arg(long, value_name = "FILE")]
    pub trust_root: Option<PathBuf>,
    /// Print image.json instead of a summary.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: BuildArgs) -> anyhow::Result<()> {
    let agent = match args.agent {
        Some(a) => a,
        None => std::env::current_exe()
            .context("cannot find this binary's directory; pass --agent")?
            .with_file_name("levee-agent"),
    };
    let mut opts =
        levee_image::BuildOptions::new(&args.manifest, &args.out, agent, &args.cache_dir);
    opts.lock = args.lock;
    opts.refresh_lock = args.refresh_lock;
    opts.trust_root = args.trust_root;
    let built = levee_image::build(&opts, &levee_image::Progress::stderr())
        .with_context(|| format!("cannot build the image of {}", args.manifest.display()))?;
    if args.json {
        return super::print_json(&built.image);
    }
    println!(
        "built {} {} in {}",
        built.image.name,
        built.image.version,
        built.dir.display()
    );
    for (name, a) in &built.image.artifacts {
        println!(
            "  {name:<16} {:>7.1} MiB  sha256 {}",
            a.size as f64 / (1 << 20) as f64,
            a.sha256
        );
    }
    if built.lock_written {
        println!("lock file written: {}", built.lock.display());
    }
    Ok(())
}
