//! The TUF client of one channel: metadata through tough, per the
//! specification's client workflow (root chain, timestamp, snapshot,
//! targets; rollback, freeze, mix-and-match and threshold checks are
//! tough's), then the release choice, which is ours.
//!
//! State lives in `/var/lib/levee/tuf/<channel>/`: `root.json` (the newest
//! root verified so far; the image's baked root is only the first link)
//! and `tough/` (tough's datastore: last trusted timestamp and snapshot for
//! rollback detection, and the latest time seen, so a clock set back is
//! noticed).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use levee_proto::image::{ImageManifest, IMAGE_MANIFEST, INITRD, KERNEL, ROOTFS};
use levee_proto::release::{self, ReleaseInfo, CUSTOM_KEY};
use tough::{ExpirationEnforcement, IntoVec, Limits, Repository, RepositoryLoader, TargetName};

use super::transport::{HttpTransport, TransportOptions};
use super::{Refusal, UpdateError};

/// Where and how to reach one channel.
#[derive(Debug, Clone)]
pub struct ChannelOptions {
    /// The server's plain-HTTP base (`levee.url`), e.g. `http://10.0.0.1:8080`.
    pub server_url: String,
    pub channel: String,
    /// `/var/lib/levee/tuf/<channel>`.
    pub state_dir: PathBuf,
    /// The root baked into the image ([`release::BAKED_ROOT`]).
    pub baked_root: PathBuf,
    pub transport: TransportOptions,
}

impl ChannelOptions {
    pub fn metadata_url(&self) -> String {
        format!(
            "{}{}{}/{}/",
            self.server_url.trim_end_matches('/'),
            release::paths::RELEASES_PREFIX,
            self.channel,
            release::paths::METADATA
        )
    }
    pub fn targets_url(&self) -> String {
        format!(
            "{}{}{}/{}/",
            self.server_url.trim_end_matches('/'),
            release::paths::RELEASES_PREFIX,
            self.channel,
            release::paths::TARGETS
        )
    }
}

/// What the appliance runs now.
#[derive(Debug, Clone, Default)]
pub struct Running {
    pub version: String,
    /// Its release number when known (recorded when it was installed by an
    /// update); else looked up by version in the channel, else 0.
    pub release: Option<u64>,
}

/// One target to download: signed name, URL, length and sha256.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TargetRef {
    pub name: String,
    pub url: String,
    pub length: u64,
    pub sha256: String,
}

/// A verified update: everything the writer needs, all from signed metadata.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Offer {
    pub channel: String,
    pub version: String,
    pub release: u64,
    pub min_release: u64,
    /// The image's manifest (command line, artifacts), read as a target.
    pub image: ImageManifest,
    /// Targets by artifact name: `vmlinuz`, `initrd.img`, `rootfs.squashfs`
    /// (and whatever else the image carries).
    pub targets: BTreeMap<String, TargetRef>,
}

/// The outcome of a check.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Nothing newer than `release` is offered.
    UpToDate {
        release: u64,
    },
    Update(Box<Offer>),
}

/// Loads the channel's metadata and decides. `want`: the release the
/// server's rollout named for this appliance (None: the newest).
pub async fn check(
    opts: &ChannelOptions,
    running: &Running,
    want: Option<u64>,
) -> Result<Decision, UpdateError> {
    let repo = load(opts).await?;
    let releases = releases_of(&repo);
    let current = running.release.unwrap_or_else(|| {
        releases
            .values()
            .find(|r| r.version == running.version)
            .map_or(0, |r| r.release)
    });
    let chosen = match want {
        Some(n) => releases.get(&n).cloned().ok_or_else(|| {
            UpdateError::refused(
                Refusal::NotSigned,
                format!(
                    "release {n} was offered but channel `{}` signs no such release",
                    opts.channel
                ),
            )
        })?,
        None => match releases.values().next_back() {
            Some(r) => r.clone(),
            None => return Ok(Decision::UpToDate { release: current }),
        },
    };
    if want.is_none() && chosen.release <= current {
        return Ok(Decision::UpToDate { release: current });
    }
    if let Some(reason) = release::update_refusal(current, &chosen) {
        let kind = if chosen.release <= current {
            Refusal::Rollback
        } else {
            Refusal::Floor
        };
        return Err(UpdateError::refused(kind, reason));
    }
    let offer = offer_for(opts, &repo, &chosen).await?;
    Ok(Decision::Update(Box::new(offer)))
}

/// Loads and verifies the channel; saves the newest root.
pub async fn load(opts: &ChannelOptions) -> Result<Repository, UpdateError> {
    release::validate_channel(&opts.channel)
        .map_err(|e| UpdateError::Setup(format!("update_channel: {e}")))?;
    let datastore = opts.state_dir.join("tough");
    create_private_dir(&datastore)?;
    drop_torn_files(&datastore)?;
    let saved = opts.state_dir.join("root.json");
    let root = match std::fs::read(&saved) {
        Ok(b) => b,
        Err(_) => std::fs::read(&opts.baked_root).map_err(|e| {
            UpdateError::Setup(format!(
                "no trusted root: {} ({e}); the image must be built with --trust-root",
                opts.baked_root.display()
            ))
        })?,
    };
    let url = |s: String| {
        url::Url::parse(&s).map_err(|e| UpdateError::Setup(format!("bad server URL {s}: {e}")))
    };
    let transport = HttpTransport::new(opts.transport).map_err(UpdateError::Setup)?;
    let limits = Limits {
        max_root_size: 512 << 10,
        max_targets_size: 16 << 20,
        max_timestamp_size: 64 << 10,
        max_snapshot_size: 1 << 20,
        max_root_updates: 1024,
    };
    let repo = RepositoryLoader::new(&root, url(opts.metadata_url())?, url(opts.targets_url())?)
        .transport(transport)
        .limits(limits)
        .datastore(&datastore)
        .expiration_enforcement(ExpirationEnforcement::Safe)
        .load()
        .await
        .map_err(|e| UpdateError::from_tough(Stage::Metadata, &e))?;
    // Keep the newest verified root: the next check starts from it, so a
    // server cannot lead this appliance back to a root it has left.
    let bytes = serde_json::to_vec_pretty(repo.root())
        .map_err(|e| UpdateError::Setup(format!("cannot serialise the root: {e}")))?;
    super::write_atomic(&saved, &bytes)
        .map_err(|e| UpdateError::Setup(format!("{}: {e}", saved.display())))?;
    Ok(repo)
}

/// tough writes its datastore files in place (truncate, then write): a
/// power cut in between leaves an empty or torn file that would fail every
/// later check, so the appliance could never update again. Such a file is
/// removed; tough then trusts the next valid metadata of that role as it
/// does on a first check (the root chain, kept apart in `root.json` and
/// written atomically, still anchors it).
pub fn drop_torn_files(datastore: &Path) -> Result<Vec<PathBuf>, UpdateError> {
    let mut dropped = Vec::new();
    let rd = std::fs::read_dir(datastore)
        .map_err(|e| UpdateError::Setup(format!("{}: {e}", datastore.display())))?;
    for entry in rd.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let whole = std::fs::read(&path)
            .ok()
            .is_some_and(|b| serde_json::from_slice::<serde_json::Value>(&b).is_ok());
        if !whole {
            std::fs::remove_file(&path)
                .map_err(|e| UpdateError::Setup(format!("{}: {e}", path.display())))?;
            dropped.push(path);
        }
    }
    Ok(dropped)
}

fn create_private_dir(dir: &Path) -> Result<(), UpdateError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| UpdateError::Setup(format!("{}: {e}", dir.display())))
}

/// Releases the channel signs, by release number.
pub fn releases_of(repo: &Repository) -> BTreeMap<u64, ReleaseInfo> {
    let mut out: BTreeMap<u64, ReleaseInfo> = BTreeMap::new();
    for (_, target) in repo.targets().signed.targets_iter() {
        let Some(info) = target
            .custom
            .get(CUSTOM_KEY)
            .and_then(|v| serde_json::from_value::<ReleaseInfo>(v.clone()).ok())
        else {
            continue;
        };
        out.entry(info.release).or_insert(ReleaseInfo {
            artifact: String::new(),
            ..info
        });
    }
    out
}

/// Which part of an update failed, for the refusal's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Metadata,
    Target,
}

async fn offer_for(
    opts: &ChannelOptions,
    repo: &Repository,
    chosen: &ReleaseInfo,
) -> Result<Offer, UpdateError> {
    let mut targets = BTreeMap::new();
    for (name, target) in repo.targets().signed.targets_iter() {
        let Some(info) = target
            .custom
            .get(CUSTOM_KEY)
            .and_then(|v| serde_json::from_value::<ReleaseInfo>(v.clone()).ok())
        else {
            continue;
        };
        if info.release != chosen.release {
            continue;
        }
        let sha256 = hex::encode(target.hashes.sha256.as_ref());
        targets.insert(
            info.artifact.clone(),
            TargetRef {
                name: name.raw().to_string(),
                url: format!("{}{sha256}.{}", opts.targets_url(), name.raw()),
                length: target.length,
                sha256,
            },
        );
    }
    let manifest_ref = targets.get(IMAGE_MANIFEST).cloned().ok_or_else(|| {
        UpdateError::refused(
            Refusal::Incomplete,
            format!("release {} lists no {IMAGE_MANIFEST}", chosen.release),
        )
    })?;
    // image.json through tough: hash and length checked against targets.
    let name = TargetName::new(manifest_ref.name.clone())
        .map_err(|e| UpdateError::refused(Refusal::Incomplete, e.to_string()))?;
    let stream = repo
        .read_target(&name)
        .await
        .map_err(|e| UpdateError::from_tough(Stage::Target, &e))?
        .ok_or_else(|| {
            UpdateError::refused(
                Refusal::Incomplete,
                format!("{} is missing", manifest_ref.name),
            )
        })?;
    let bytes = stream
        .into_vec()
        .await
        .map_err(|e| UpdateError::from_tough(Stage::Target, &e))?;
    let image: ImageManifest = serde_json::from_slice(&bytes).map_err(|e| {
        UpdateError::refused(
            Refusal::Incomplete,
            format!("{}: not an image manifest: {e}", manifest_ref.name),
        )
    })?;
    if image.version != chosen.version {
        return Err(UpdateError::refused(
            Refusal::Incomplete,
            format!(
                "{} says version {}, the targets say {}",
                manifest_ref.name, image.version, chosen.version
            ),
        ));
    }
    for artifact in [KERNEL, INITRD, ROOTFS] {
        let t = targets.get(artifact).ok_or_else(|| {
            UpdateError::refused(
                Refusal::Incomplete,
                format!("release {} has no signed {artifact}", chosen.release),
            )
        })?;
        let m = image.artifacts.get(artifact);
        if m.is_none_or(|m| m.sha256 != t.sha256 || m.size != t.length) {
            return Err(UpdateError::refused(
                Refusal::Incomplete,
                format!("{artifact}: image.json and the signed targets disagree"),
            ));
        }
    }
    Ok(Offer {
        channel: opts.channel.clone(),
        version: chosen.version.clone(),
        release: chosen.release,
        min_release: chosen.min_release,
        image,
        targets,
    })
}
