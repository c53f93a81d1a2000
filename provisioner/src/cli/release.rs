//! `levee release ...`: signed release channels (TUF) for appliance updates.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::releases::{self, channel, refresh, root, Layout};
use crate::store::ApplianceRef;

#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Make or rotate the signing keys of all channels.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Publish a built image (a directory with image.json) to a channel as a
    /// new release, signed with the targets key.
    ///
    /// The release gets the next release number (releases are ordered by
    /// it, never by version string). Appliances running a release below
    /// --min-release will not take it.
    #[command(
        after_help = "Example:\n  levee release publish ./out --channel beta --targets-key /media/keys/targets.pem"
    )]
    Publish {
        image_dir: PathBuf,
        #[arg(long)]
        channel: String,
        /// The targets key file (`keys init` wrote it; keep it off the server).
        #[arg(long, value_name = "FILE")]
        targets_key: PathBuf,
        /// Lowest release an appliance must run to update to this one.
        #[arg(long, default_value_t = 1)]
        min_release: u64,
        #[command(flatten)]
        expiry: TargetsExpiry,
        #[arg(long)]
        json: bool,
    },
    /// Add a release of one channel to another (same files, same release
    /// number), e.g. after it proved itself in beta.
    #[command(
        after_help = "Example:\n  levee release promote 2026.12.02-3f2a9c1 --from beta --to stable --targets-key /media/keys/targets.pem"
    )]
    Promote {
        /// The image version to promote (see `levee release status`).
        #[arg(value_name = "VERSION")]
        image_version: String,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        #[arg(long, value_name = "FILE")]
        targets_key: PathBuf,
        #[command(flatten)]
        expiry: TargetsExpiry,
        #[arg(long)]
        json: bool,
    },
    /// Roll a release of a channel out to a share of its appliances.
    ///
    /// Each appliance has a stable bucket 0-99 (a hash of its appliance
    /// id); a rollout to N% is offered (in the heartbeat answer) to those
    /// whose bucket is below N, so widening 10 -> 50 -> 100 only adds
    /// appliances. An appliance on which the release rolled back is not
    /// offered it again until `unblock`. Appliances verify the release
    /// against the signed channel and never move to an older one.
    #[command(
        after_help = "Examples:\n  levee release rollout stable 2026.12.02-3f2a9c1 --percent 10\n  levee release rollout stable 2026.12.02-3f2a9c1 --percent 100"
    )]
    Rollout {
        channel: String,
        /// The image version (see `levee release status`).
        #[arg(value_name = "VERSION")]
        image_version: String,
        /// Share of the channel's appliances offered the release (1-100).
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=100))]
        percent: u8,
        #[arg(long)]
        json: bool,
    },
    /// Stop offering a channel's rollout (updates under way finish).
    #[command(after_help = "Example:\n  levee release pause stable")]
    Pause {
        #[command(flatten)]
        channel: ChannelArg,
        #[arg(long)]
        json: bool,
    },
    /// Offer a paused rollout again.
    #[command(after_help = "Example:\n  levee release resume stable")]
    Resume {
        #[command(flatten)]
        channel: ChannelArg,
        #[arg(long)]
        json: bool,
    },
    /// Let an appliance try a version again after it rolled back there.
    #[command(
        after_help = "Example:\n  levee release unblock 2026.12.02-3f2a9c1 --appliance 52:54:00:12:34:56"
    )]
    Unblock {
        #[arg(value_name = "VERSION")]
        image_version: String,
        /// MAC or appliance id.
        #[arg(long, value_name = "MAC|ID")]
        appliance: ApplianceRef,
        #[arg(long)]
        json: bool,
    },
    /// Show channels, their releases and metadata expiry, each channel's
    /// rollout, and per release how many appliances run it, are updating,
    /// committed it or rolled it back (with the reasons).
    #[command(after_help = "Example:\n  levee release status --channel stable --json")]
    Status {
        #[arg(long)]
        channel: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Drop old releases from a channel, with their files, and superseded
    /// versioned metadata, so a channel followed for years stays small.
    ///
    /// Kept: the newest --keep releases and the release the channel's
    /// rollout offers. Appliances never download the release they run
    /// again (deltas chunk the running slot, rollbacks boot the old slot
    /// from disk), so older ones are not needed. Removing releases re-signs
    /// the targets (hence --targets-key); superseded `N.targets.json` and
    /// `N.snapshot.json` go once their successor has been served for
    /// --metadata-grace-hours. Root metadata is never removed.
    #[command(
        after_help = "Examples:\n  levee release prune stable --keep 3 --dry-run\n  levee release prune stable --keep 3 --targets-key /media/keys/targets.pem"
    )]
    Prune {
        #[command(flatten)]
        channel: ChannelArg,
        /// How many of the newest releases stay (at least 1).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
        keep: u32,
        /// The targets key (needed when a release is removed).
        #[arg(long, value_name = "FILE")]
        targets_key: Option<PathBuf>,
        /// Superseded metadata is kept this long after its successor was
        /// signed (a client mid-update may still ask for it).
        #[arg(long, default_value_t = 24)]
        metadata_grace_hours: u64,
        /// Say what would be removed; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        expiry: TargetsExpiry,
        #[arg(long)]
        json: bool,
    },
    /// Re-sign snapshot and timestamp of every channel that needs it now
    /// (`levee serve` does this by itself; for servers that are not running).
    Resign {
        /// Re-sign even when far from expiry.
        #[arg(long)]
        force: bool,
    },
}

/// A channel, given as `CHANNEL` or `--channel CHANNEL`.
#[derive(Debug, Args)]
pub struct ChannelArg {
    #[arg(value_name = "CHANNEL", required_unless_present = "channel")]
    name: Option<String>,
    #[arg(long, conflicts_with = "name")]
    channel: Option<String>,
}

impl ChannelArg {
    fn get(self) -> String {
        self.name.or(self.channel).unwrap_or_default()
    }
}

#[derive(Debug, Args)]
pub struct TargetsExpiry {
    /// Days until the targets metadata signed now expires. Appliances stop
    /// updating from a channel whose targets expired: publish or promote
    /// before then (`status` warns 30 days ahead).
    #[arg(long, default_value_t = releases::TARGETS_DEFAULT_DAYS)]
    pub expires_days: i64,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make all keys and root metadata version 1.
    ///
    /// Writes N root keys (ed25519) and root.json into --offline-dir: move
    /// that directory off the server (it is needed only to rotate keys);
    /// the targets key to --targets-key; the snapshot and timestamp keys to
    /// DATA_DIR/releases/keys/ (levee serve re-signs with them). Bake
    /// OFFLINE_DIR/root.json into images with `levee image build
    /// --trust-root`.
    #[command(
        after_help = "Example:\n  levee release keys init --offline-dir /media/usb/levee-root --targets-key /media/usb/targets.pem"
    )]
    Init {
        #[arg(long, value_name = "DIR")]
        offline_dir: PathBuf,
        /// Where to write the targets key [default: OFFLINE_DIR/targets.pem].
        #[arg(long, value_name = "FILE")]
        targets_key: Option<PathBuf>,
        #[arg(long, default_value_t = 3)]
        root_keys: usize,
        /// Root signatures needed to change the root (key rotation).
        #[arg(long, default_value_t = 2)]
        root_threshold: u64,
        #[arg(long, default_value_t = releases::ROOT_DEFAULT_DAYS)]
        expires_days: i64,
        #[arg(long)]
        json: bool,
    },
    /// Sign the next root version: revoke root keys (each replaced by a new
    /// one), change the threshold, replace the online keys, or just renew
    /// the root's expiry. Appliances follow through the root chain.
    #[command(
        after_help = "Examples:\n  levee release keys rotate-root --offline-dir /media/usb/levee-root --revoke /media/usb/levee-root/root-2.pem\n  levee release keys rotate-root --offline-dir /media/usb/levee-root --rotate-online"
    )]
    RotateRoot {
        #[arg(long, value_name = "DIR")]
        offline_dir: PathBuf,
        /// A root key to revoke: its key id or its file (repeatable).
        #[arg(long, value_name = "KEYID|FILE")]
        revoke: Vec<String>,
        #[arg(long)]
        root_threshold: Option<u64>,
        /// New snapshot and timestamp keys (after the server was compromised).
        #[arg(long)]
        rotate_online: bool,
        #[arg(long, default_value_t = releases::ROOT_DEFAULT_DAYS)]
        expires_days: i64,
        #[arg(long)]
        json: bool,
    },
    /// Replace the targets key: make a new one at --new-targets-key, sign
    /// the next root version naming it (with the root keys in
    /// --offline-dir), and re-sign every channel's targets with it.
    /// Appliances follow through the root chain; targets signed by the old
    /// key are refused from then on. Give the new key to publish/promote.
    #[command(
        after_help = "Example:\n  levee release keys rotate-targets --offline-dir /media/usb/levee-root --new-targets-key /media/usb/levee-root/targets-2.pem"
    )]
    RotateTargets {
        #[arg(long, value_name = "DIR")]
        offline_dir: PathBuf,
        /// Where to write the new targets key (must not exist).
        #[arg(long, value_name = "FILE")]
        new_targets_key: PathBuf,
        /// Life of the re-signed targets metadata.
        #[arg(long, default_value_t = releases::TARGETS_DEFAULT_DAYS)]
        targets_expires_days: i64,
        /// Life of the new root.
        #[arg(long, default_value_t = releases::ROOT_DEFAULT_DAYS)]
        expires_days: i64,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(ctx: &super::Ctx, cmd: ReleaseCommand) -> anyhow::Result<()> {
    let layout = Layout::new(ctx.data_dir());
    match cmd {
        ReleaseCommand::Keys(k) => keys(&layout, k),
        ReleaseCommand::Publish {
            image_dir,
            channel,
            targets_key,
            min_release,
            expiry,
            json,
        } => {
            let opts = channel::PublishOptions {
                targets_key,
                min_release,
                expires_days: expiry.expires_days,
            };
            let p = releases::block_on(channel::publish(&layout, &image_dir, &channel, &opts))
                .with_context(|| {
                    format!("cannot publish {} to `{channel}`", image_dir.display())
                })?;
            print_published(&p, json)
        }
        ReleaseCommand::Promote {
            image_version: version,
            from,
            to,
            targets_key,
            expiry,
            json,
        } => {
            let opts = channel::PublishOptions {
                targets_key,
                min_release: 1,
                expires_days: expiry.expires_days,
            };
            let p = releases::block_on(channel::promote(&layout, &version, &from, &to, &opts))
                .with_context(|| format!("cannot promote {version} from `{from}` to `{to}`"))?;
            print_published(&p, json)
        }
        ReleaseCommand::Status { channel, json } => status(ctx, &layout, channel, json),
        ReleaseCommand::Prune {
            channel,
            keep,
            targets_key,
            metadata_grace_hours,
            dry_run,
            expiry,
            json,
        } => {
            let channel = channel.get();
            // The rollout's release stays whatever its age.
            let protect = ctx
                .open_store()?
                .rollout(&channel)?
                .map(|r| r.release)
                .into_iter()
                .collect();
            let opts = releases::prune::PruneOptions {
                keep: keep as usize,
                protect,
                targets_key,
                expires_days: expiry.expires_days,
                metadata_grace: std::time::Duration::from_secs(metadata_grace_hours * 3600),
                dry_run,
            };
            let p = releases::block_on(releases::prune::prune(&layout, &channel, &opts))
                .with_context(|| format!("cannot prune channel `{channel}`"))?;
            print_pruned(&p, json)
        }
        ReleaseCommand::Rollout {
            channel,
            image_version,
            percent,
            json,
        } => super::rollout::start(ctx, &layout, &channel, &image_version, percent, json),
        ReleaseCommand::Pause { channel, json } => {
            super::rollout::pause(ctx, &channel.get(), true, json)
        }
        ReleaseCommand::Resume { channel, json } => {
            super::rollout::pause(ctx, &channel.get(), false, json)
        }
        ReleaseCommand::Unblock {
            image_version,
            appliance,
            json,
        } => super::rollout::unblock(ctx, &image_version, appliance, json),
        ReleaseCommand::Resign { force } => {
            releases::block_on(async {
                let _lock = layout.lock()?;
                for ch in layout.channels()? {
                    let r = refresh::resign(&layout, &ch, force).await?;
                    println!(
                        "{ch}: snapshot {}, timestamp {}",
                        r.snapshot.map_or("kept".into(), |v| format!("v{v}")),
                        r.timestamp.map_or("kept".into(), |v| format!("v{v}"))
                    );
                }
                Ok::<_, releases::ReleaseError>(())
            })?;
            Ok(())
        }
    }
}

fn print_pruned(p: &releases::prune::Pruned, json: bool) -> anyhow::Result<()> {
    if json {
        return super::print_json(p);
    }
    let verb = if p.dry_run { "would remove" } else { "removed" };
    for r in &p.removed {
        println!("{verb} release {} ({})", r.release, r.version);
    }
    println!(
        "channel `{}`: {verb} {} release(s), {} target file(s) ({} bytes), {} superseded metadata file(s); keeps {}",
        p.channel,
        p.removed.len(),
        p.target_files_deleted,
        p.bytes_freed,
        p.metadata_files_deleted.len(),
        if p.kept.is_empty() { "nothing".to_string() } else { p.kept.join(", ") }
    );
    if let Some(v) = p.targets_version {
        println!("targets metadata is now v{v}");
    }
    Ok(())
}

fn print_published(p: &releases::Published, json: bool) -> anyhow::Result<()> {
    if json {
        return super::print_json(p);
    }
    println!(
        "channel `{}` now offers {} as release {} (updates from release {} up; targets metadata v{} expires {})",
        p.channel,
        p.version,
        p.release,
        p.min_release,
        p.targets_version,
        p.targets_expires.format("%Y-%m-%d")
    );
    Ok(())
}

fn keys(layout: &Layout, cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Init {
            offline_dir,
            targets_key,
            root_keys,
            root_threshold,
            expires_days,
            json,
        } => {
            let opts = root::InitOptions {
                targets_key: targets_key.unwrap_or_else(|| offline_dir.join("targets.pem")),
                offline_dir,
                root_keys,
                root_threshold,
                root_expires_days: expires_days,
            };
            let r = releases::block_on(root::init(layout, &opts))
                .context("cannot make release keys")?;
            if json {
                return super::print_json(&r);
            }
            println!(
                "made {} root keys (threshold {}) in {}: move them offline",
                r.root_keys.len(),
                r.root_threshold,
                opts.offline_dir.display()
            );
            println!("targets key: {} (give it to publish/promote with --targets-key; keep it off the server)", r.targets_key.display());
            println!(
                "snapshot and timestamp keys: {} (online, used by levee serve)",
                layout.keys_dir().display()
            );
            println!(
                "trusted root for images: {} (levee image build --trust-root)",
                r.trust_root.display()
            );
            Ok(())
        }
        KeysCommand::RotateRoot {
            offline_dir,
            revoke,
            root_threshold,
            rotate_online,
            expires_days,
            json,
        } => {
            let opts = root::RotateOptions {
                offline_dir,
                revoke,
                root_threshold,
                rotate_online,
                new_targets_key: None,
                targets_expires_days: releases::TARGETS_DEFAULT_DAYS,
                root_expires_days: expires_days,
            };
            let r = releases::block_on(root::rotate(layout, &opts))
                .context("cannot rotate the root")?;
            if json {
                return super::print_json(&r);
            }
            println!(
                "root version {} signed; revoked {} key(s); {} new root key(s); online keys {}; re-signed channels: {}",
                r.version,
                r.revoked.len(),
                r.new_root_keys.len(),
                if r.online_keys_rotated { "replaced" } else { "kept" },
                if r.channels_resigned.is_empty() { "none".into() } else { r.channels_resigned.join(", ") }
            );
            Ok(())
        }
        KeysCommand::RotateTargets {
            offline_dir,
            new_targets_key,
            targets_expires_days,
            expires_days,
            json,
        } => {
            let opts = root::RotateOptions {
                offline_dir,
                new_targets_key: Some(new_targets_key),
                targets_expires_days,
                root_expires_days: expires_days,
                ..Default::default()
            };
            let r = releases::block_on(root::rotate(layout, &opts))
                .context("cannot rotate the targets key")?;
            if json {
                return super::print_json(&r);
            }
            println!(
                "root version {} names the new targets key {}; re-signed channels: {}",
                r.version,
                r.targets_key.as_deref().unwrap_or(Path::new("-")).display(),
                if r.channels_resigned.is_empty() {
                    "none".into()
                } else {
                    r.channels_resigned.join(", ")
                }
            );
            println!("give the new key to publish and promote (--targets-key); the old one signs nothing any more");
            Ok(())
        }
    }
}

fn status(
    ctx: &super::Ctx,
    layout: &Layout,
    only: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let channels = match only {
        Some(c) => vec![c],
        None => layout.channels()?,
    };
    let states = releases::block_on(async {
        let mut out = Vec::new();
        for c in &channels {
            match channel::state(layout, c).await? {
                Some(s) => out.push(s),
                None => {
                    return Err(releases::ReleaseError::Usage(format!(
                    "channel `{c}` has no releases (levee release publish IMAGE_DIR --channel {c})"
                )))
                }
            }
        }
        Ok(out)
    })?;
    let store = ctx.open_store()?;
    let (on, fleet) = super::rollout::fleet(store.as_ref())?;
    let none = super::rollout::Fleet::default();
    let rollouts = store.rollouts()?;
    if json {
        let mut out = Vec::new();
        for s in &states {
            let mut v = serde_json::to_value(s)?;
            v["rollout"] = serde_json::to_value(rollouts.iter().find(|r| r.channel == s.channel))?;
            if let Some(rels) = v["releases"].as_array_mut() {
                for (r, entry) in rels.iter_mut().zip(&s.releases) {
                    let f = fleet.get(&entry.release).unwrap_or(&none);
                    let mut fv = serde_json::to_value(f)?;
                    fv["on"] = on.get(&entry.version).copied().unwrap_or(0).into();
                    r["appliances"] = fv;
                }
            }
            out.push(v);
        }
        return super::print_json(&out);
    }
    let now = chrono::Utc::now();
    for s in &states {
        let warn = if s.targets_expires - now < chrono::Duration::days(30) {
            "  <- publish or promote soon: appliances refuse expired targets"
        } else {
            ""
        };
        println!(
            "channel {}: root v{}, targets v{} (expires {}){warn}, snapshot v{} (expires {}), timestamp v{} (expires {})",
            s.channel,
            s.root_version,
            s.targets_version,
            s.targets_expires.format("%Y-%m-%d"),
            s.snapshot_version,
            s.snapshot_expires.format("%Y-%m-%d %H:%M"),
            s.timestamp_version,
            s.timestamp_expires.format("%Y-%m-%d %H:%M"),
        );
        match rollouts.iter().find(|r| r.channel == s.channel) {
            Some(r) => println!("{}", super::rollout::describe(r)),
            None => println!(
                "rollout: none (levee release rollout {} VERSION --percent 10)",
                s.channel
            ),
        }
        let mut reasons = Vec::new();
        let rows: Vec<Vec<String>> = s
            .releases
            .iter()
            .rev()
            .map(|r| {
                let size: u64 = r.artifacts.iter().map(|a| a.length).sum();
                let f = fleet.get(&r.release).unwrap_or(&none);
                for rb in &f.rollbacks {
                    reasons.push(format!(
                        "  {} rolled back on {} (id {}){}: {}",
                        r.version,
                        rb.mac,
                        rb.appliance_id,
                        if rb.blocked {
                            ", blocked"
                        } else {
                            ", unblocked"
                        },
                        rb.reason
                    ));
                }
                vec![
                    r.release.to_string(),
                    r.version.clone(),
                    r.min_release.to_string(),
                    format!("{:.1} MiB", size as f64 / (1 << 20) as f64),
                    on.get(&r.version).copied().unwrap_or(0).to_string(),
                    f.updating.to_string(),
                    f.committed.to_string(),
                    f.rolled_back.to_string(),
                    f.failed.to_string(),
                ]
            })
            .collect();
        super::print_table(
            &[
                "RELEASE",
                "VERSION",
                "FROM",
                "SIZE",
                "ON",
                "UPDATING",
                "COMMITTED",
                "ROLLED-BACK",
                "FAILED",
            ],
            &rows,
        );
        for line in reasons {
            println!("{line}");
        }
    }
    Ok(())
}
