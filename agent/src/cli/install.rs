//! `levee-agent install` and `levee-agent slot status|commit`.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use levee_agent::install::{self, Artifact, InstallImage, InstallOptions, InstallPlan};
use levee_proto::image::{ImageManifest, INITRD, KERNEL, ROOTFS};

pub const INSTALL_EXAMPLES: &str = "Examples:
  # what the server's plan would do, without writing anything
  levee-agent install --plan /run/levee/plan.json --dry-run
  # install the image a server publishes, onto the disk the agent chooses
  levee-agent install --image-url http://10.0.0.1/images/default --yes
  # an operator picks the disk and wipes an old Levee install on it
  levee-agent install --disk /dev/sdb --plan http://10.0.0.1/plan.json --reinstall --yes --reboot
  # from a boot profile: levee.install=http://10.0.0.1/plan.json on the kernel
  # command line starts levee-install-hook.service, which runs
  levee-agent install --plan-from-cmdline --yes

Only a blank disk (zeros in its first and last MiB, no signature) is ever
written; a Levee install only with --reinstall; anything else never.";

/// Arguments of `levee-agent install`.
#[derive(Args)]
#[command(after_help = INSTALL_EXAMPLES)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["plan", "image_url", "plan_from_cmdline"])))]
pub struct InstallArgs {
    /// Install on this disk instead of the largest blank one (same safety rules).
    #[arg(long, value_name = "DEV")]
    pub disk: Option<PathBuf>,
    /// The install plan: a JSON file or an http(s):// URL.
    #[arg(long, value_name = "FILE.json|URL")]
    pub plan: Option<String>,
    /// Take the plan's URL from `levee.install=URL` on the kernel command
    /// line (levee-install-hook.service: installs straight from a boot
    /// profile, without enrollment).
    #[arg(long)]
    pub plan_from_cmdline: bool,
    /// Install the image at BASE (BASE/image.json, BASE/vmlinuz, ...).
    #[arg(long, value_name = "BASE")]
    pub image_url: Option<String>,
    /// Minimum disk size in bytes with --image-url.
    #[arg(long, default_value_t = 0)]
    pub min_disk_bytes: u64,
    /// The state directory to carry onto the data partition.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/levee")]
    pub state_dir: PathBuf,
    /// Wipe a disk holding a Levee install.
    #[arg(long)]
    pub reinstall: bool,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Choose the disk and layout and check the plan; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Reboot when the install is done.
    #[arg(long)]
    pub reboot: bool,
}

#[derive(Subcommand)]
pub enum SlotCommand {
    /// Show the running slot and the boot environment (ORDER, A_OK, A_TRY, ...).
    Status,
    /// Mark the running slot good (what the service does after its first heartbeat).
    Commit,
}

fn plan_from(args: &InstallArgs) -> Result<InstallPlan> {
    let from_cmdline = if args.plan_from_cmdline {
        let cmdline = std::fs::read_to_string("/proc/cmdline").context("reading /proc/cmdline")?;
        let url = cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix("levee.install="))
            .context("no levee.install=URL on the kernel command line")?;
        Some(url.to_string())
    } else {
        None
    };
    if let Some(p) = from_cmdline.as_ref().or(args.plan.as_ref()) {
        let data = if p.contains("://") {
            install::fetch::fetch_small(p)?
        } else {
            std::fs::read(p).with_context(|| format!("reading {p}"))?
        };
        let mut plan: InstallPlan =
            serde_json::from_slice(&data).with_context(|| format!("parsing the plan {p}"))?;
        plan.reinstall |= args.reinstall;
        return Ok(plan);
    }
    let Some(base) = args.image_url.as_deref().map(|b| b.trim_end_matches('/')) else {
        bail!("give --plan or --image-url");
    };
    let url = format!("{base}/image.json");
    let manifest: ImageManifest = serde_json::from_slice(&install::fetch::fetch_small(&url)?)
        .with_context(|| format!("parsing {url}"))?;
    let artifact = |name: &str| -> Result<Artifact> {
        let a = manifest
            .artifacts
            .get(name)
            .with_context(|| format!("{url} lists no {name}"))?;
        Ok(Artifact {
            url: format!("{base}/{name}"),
            sha256: a.sha256.clone(),
            size: a.size,
        })
    };
    Ok(InstallPlan {
        install: true,
        reinstall: args.reinstall,
        min_disk_bytes: args.min_disk_bytes,
        image: Some(InstallImage {
            version: manifest.version.clone(),
            kernel: artifact(KERNEL)?,
            initrd: artifact(INITRD)?,
            rootfs: artifact(ROOTFS)?,
            cmdline: manifest.cmdline.clone(),
        }),
    })
}

pub fn run_install(args: InstallArgs, json: bool) -> Result<i32> {
    let plan = plan_from(&args)?;
    let opts = InstallOptions {
        disk: args.disk.clone(),
        state_dir: args.state_dir.clone(),
        dry_run: true,
        ..InstallOptions::default()
    };
    // Always look first: the disk and layout, then ask.
    let preview = install::install(&plan, &opts, &mut |_| {})?;
    if !args.dry_run && !args.yes {
        if !std::io::stdin().is_terminal() {
            bail!(
                "this erases {} ({} bytes): add --yes to confirm",
                preview.disk,
                preview.disk_bytes
            );
        }
        eprint!(
            "Erase {} and install {}? Type yes: ",
            preview.disk, preview.image_version
        );
        std::io::stderr().flush().ok();
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if answer.trim() != "yes" {
            bail!("not confirmed; nothing was written");
        }
    }
    let report = if args.dry_run {
        eprintln!(
            "install: would write image {} onto {} ({} bytes); layout {:?}",
            preview.image_version, preview.disk, preview.disk_bytes, preview.layout
        );
        preview
    } else {
        install::install(
            &plan,
            &InstallOptions {
                dry_run: false,
                ..opts
            },
            &mut |line| eprintln!("{line}"),
        )?
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} {} on {} slot {} in {:.1} s",
            if report.dry_run {
                "would install"
            } else {
                "installed"
            },
            report.image_version,
            report.disk,
            report.slot,
            report.durations.total
        );
    }
    if args.reboot && !args.dry_run {
        install::reboot()?;
    }
    Ok(0)
}

pub fn run_slot(cmd: SlotCommand, json: bool) -> Result<i32> {
    match cmd {
        SlotCommand::Status => {
            let s = install::slot_status()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!(
                    "running slot: {}",
                    s.running.as_deref().unwrap_or("none (network boot)")
                );
                match (&s.esp, &s.env) {
                    (Some(esp), Some(env)) => {
                        println!("ESP: {esp} (environment from the {:?} copy)", s.copy);
                        for (k, v) in &env.vars {
                            println!("  {k}={v}");
                        }
                    }
                    _ => println!("no Levee ESP on this machine"),
                }
            }
        }
        SlotCommand::Commit => {
            let outcome = install::commit_boot()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&outcome)?);
            } else {
                println!("{outcome:?}");
            }
        }
    }
    Ok(0)
}
