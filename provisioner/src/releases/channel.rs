//! Publishing into a channel and reading a channel back.
//!
//! Every change goes through tough's `RepositoryEditor` with the targets key
//! from `--targets-key` and the online snapshot and timestamp keys, and is
//! made visible in the order a reader needs: target files first, then the
//! versioned metadata, `timestamp.json` last (each write atomic), so a
//! client polling meanwhile sees the old release or the new one, complete.

use std::collections::BTreeMap;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use levee_proto::delta;
use levee_proto::image::{IMAGE_MANIFEST, ROOTFS};
use levee_proto::release::{self, ReleaseInfo, CUSTOM_KEY};
use tough::editor::RepositoryEditor;
use tough::key_source::KeySource;
use tough::schema::Target;
use tough::{ExpirationEnforcement, FilesystemTransport, Repository, RepositoryLoader, TargetName};

use super::keys::PemKey;
use super::{io_err, Layout, ReleaseError};

/// One artifact of a release as a channel lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ArtifactEntry {
    pub artifact: String,
    pub target: String,
    pub length: u64,
    pub sha256: String,
}

/// One release in a channel.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReleaseEntry {
    pub version: String,
    pub release: u64,
    pub min_release: u64,
    pub artifacts: Vec<ArtifactEntry>,
}

/// A channel as its signed metadata says.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChannelState {
    pub channel: String,
    pub root_version: u64,
    pub targets_version: u64,
    pub targets_expires: DateTime<Utc>,
    pub snapshot_version: u64,
    pub snapshot_expires: DateTime<Utc>,
    pub timestamp_version: u64,
    pub timestamp_expires: DateTime<Utc>,
    /// Oldest first.
    pub releases: Vec<ReleaseEntry>,
}

impl ChannelState {
    pub fn release(&self, version: &str) -> Option<&ReleaseEntry> {
        self.releases.iter().find(|r| r.version == version)
    }
    pub fn latest(&self) -> Option<&ReleaseEntry> {
        self.releases.last()
    }
}

fn file_url(path: &Path) -> Result<url::Url, ReleaseError> {
    let abs = std::path::absolute(path).map_err(io_err(path))?;
    url::Url::from_directory_path(&abs)
        .map_err(|_| ReleaseError::Tuf(format!("{} cannot be a file URL", abs.display())))
}

/// Loads and verifies a channel the way a client would (from the first
/// root through the chain), except that expiry is not enforced: the server
/// must be able to renew what has expired. `None` if never published.
pub async fn load(layout: &Layout, channel: &str) -> Result<Option<Repository>, ReleaseError> {
    release::validate_channel(channel)?;
    let meta = layout.metadata_dir(channel);
    if !meta.join("timestamp.json").is_file() {
        return Ok(None);
    }
    let chain = layout.root_chain()?;
    let first = std::fs::read(&chain[0].1).map_err(io_err(&chain[0].1))?;
    let repo = RepositoryLoader::new(
        &first,
        file_url(&meta)?,
        file_url(&layout.targets_dir(channel))?,
    )
    .transport(FilesystemTransport)
    .expiration_enforcement(ExpirationEnforcement::Unsafe)
    .load()
    .await
    .map_err(|e| ReleaseError::Tuf(format!("channel `{channel}` does not verify: {e}")))?;
    Ok(Some(repo))
}

/// The release info of a target, if it carries one.
pub fn release_info(target: &Target) -> Option<ReleaseInfo> {
    serde_json::from_value(target.custom.get(CUSTOM_KEY)?.clone()).ok()
}

pub fn state_of(channel: &str, repo: &Repository) -> ChannelState {
    let mut by_version: BTreeMap<(u64, String), ReleaseEntry> = BTreeMap::new();
    for (name, target) in repo.targets().signed.targets_iter() {
        let Some(info) = release_info(target) else {
            continue;
        };
        let entry = by_version
            .entry((info.release, info.version.clone()))
            .or_insert_with(|| ReleaseEntry {
                version: info.version.clone(),
                release: info.release,
                min_release: info.min_release,
                artifacts: Vec::new(),
            });
        entry.artifacts.push(ArtifactEntry {
            artifact: info.artifact.clone(),
            target: name.raw().to_string(),
            length: target.length,
            sha256: hex::encode(target.hashes.sha256.as_ref()),
        });
    }
    let mut releases: Vec<ReleaseEntry> = by_version.into_values().collect();
    for r in &mut releases {
        r.artifacts.sort_by(|a, b| a.artifact.cmp(&b.artifact));
    }
    ChannelState {
        channel: channel.to_string(),
        root_version: repo.root().signed.version.get(),
        targets_version: repo.targets().signed.version.get(),
        targets_expires: repo.targets().signed.expires,
        snapshot_version: repo.snapshot().signed.version.get(),
        snapshot_expires: repo.snapshot().signed.expires,
        timestamp_version: repo.timestamp().signed.version.get(),
        timestamp_expires: repo.timestamp().signed.expires,
        releases,
    }
}

pub async fn state(layout: &Layout, channel: &str) -> Result<Option<ChannelState>, ReleaseError> {
    Ok(load(layout, channel).await?.map(|r| state_of(channel, &r)))
}

/// Settings of `publish` and `promote`.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    pub targets_key: PathBuf,
    /// Lowest release the new one may update from (1: any).
    pub min_release: u64,
    /// Life of the targets metadata signed now.
    pub expires_days: i64,
}

/// What `publish` or `promote` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Published {
    pub channel: String,
    pub version: String,
    pub release: u64,
    pub min_release: u64,
    pub targets_version: u64,
    pub targets_expires: DateTime<Utc>,
}

/// A target to add: its name, the file it comes from, its entry.
pub(super) struct NewTarget {
    name: String,
    source: PathBuf,
    target: Target,
}

/// Publishes the image in `image_dir` to `channel` as a new release.
pub async fn publish(
    layout: &Layout,
    image_dir: &Path,
    channel: &str,
    opts: &PublishOptions,
) -> Result<Published, ReleaseError> {
    release::validate_channel(channel)?;
    let manifest = crate::images::read_manifest(image_dir)?;
    let _lock = layout.lock()?;
    // Release numbers are global: a version keeps its number in every
    // channel it is promoted to.
    let mut highest = 0;
    for ch in layout.channels()? {
        if let Some(state) = state(layout, &ch).await? {
            if let Some(r) = state.release(&manifest.version) {
                return Err(ReleaseError::Usage(format!(
                    "version {} is already release {} in channel `{ch}`; use `levee release promote {} --from {ch} --to {channel}`",
                    manifest.version, r.release, manifest.version
                )));
            }
            highest = highest.max(state.latest().map_or(0, |r| r.release));
        }
    }
    let info = |artifact: &str| ReleaseInfo {
        version: manifest.version.clone(),
        release: highest + 1,
        min_release: opts.min_release.max(1),
        artifact: artifact.to_string(),
    };
    let mut targets = Vec::new();
    let mut files: Vec<(String, Option<&levee_proto::image::Artifact>)> = manifest
        .artifacts
        .iter()
        .map(|(n, a)| (n.clone(), Some(a)))
        .collect();
    files.push((IMAGE_MANIFEST.to_string(), None));
    for (artifact, want) in files {
        let source = image_dir.join(&artifact);
        let mut target = Target::from_path(&source)
            .await
            .map_err(|e| ReleaseError::Tuf(format!("{}: {e}", source.display())))?;
        if let Some(want) = want {
            let sha = hex::encode(target.hashes.sha256.as_ref());
            if target.length != want.size || sha != want.sha256 {
                return Err(ReleaseError::Usage(format!(
                    "{}: {} bytes, sha256 {sha}, but image.json says {} bytes, sha256 {}; the image is damaged or incomplete, rebuild it",
                    source.display(),
                    target.length,
                    want.size,
                    want.sha256
                )));
            }
        }
        let value =
            serde_json::to_value(info(&artifact)).map_err(|e| ReleaseError::Tuf(e.to_string()))?;
        target.custom.insert(CUSTOM_KEY.into(), value);
        targets.push(NewTarget {
            name: release::target_name(&manifest.version, &artifact),
            source,
            target,
        });
    }
    // The rootfs's chunk index, for delta updates: one more signed target.
    let mut index_tmp = None;
    if manifest.artifacts.contains_key(ROOTFS) {
        let (tmp, mut target) = write_chunk_index(layout, channel, &image_dir.join(ROOTFS)).await?;
        let value = serde_json::to_value(info(delta::ROOTFS_INDEX))
            .map_err(|e| ReleaseError::Tuf(e.to_string()))?;
        target.custom.insert(CUSTOM_KEY.into(), value);
        targets.push(NewTarget {
            name: release::target_name(&manifest.version, delta::ROOTFS_INDEX),
            source: tmp.clone(),
            target,
        });
        index_tmp = Some(tmp);
    }
    let done = commit(
        layout,
        channel,
        targets,
        opts,
        &manifest.version,
        highest + 1,
        opts.min_release.max(1),
    )
    .await;
    if let Some(tmp) = index_tmp {
        let _ = std::fs::remove_file(tmp);
    }
    done
}

/// Chunks `rootfs` ([`delta::IndexBuilder`], the backup engine's FastCDC)
/// into a temporary index file beside the channel's targets; returns it
/// and its TUF target entry (length, sha256).
async fn write_chunk_index(
    layout: &Layout,
    channel: &str,
    rootfs: &Path,
) -> Result<(PathBuf, Target), ReleaseError> {
    use std::io::Read;
    let mut input = std::fs::File::open(rootfs).map_err(io_err(rootfs))?;
    let mut builder = delta::IndexBuilder::for_release();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = input.read(&mut buf).map_err(io_err(rootfs))?;
        if n == 0 {
            break;
        }
        builder.update(&buf[..n]);
    }
    let bytes = builder.finish().to_bytes();
    if bytes.len() > delta::MAX_INDEX_BYTES {
        return Err(ReleaseError::Usage(format!(
            "{}: its chunk index would be {} bytes, over the {} agents accept",
            rootfs.display(),
            bytes.len(),
            delta::MAX_INDEX_BYTES
        )));
    }
    let dir = layout.targets_dir(channel);
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let tmp = dir.join(format!(".rootfs.chunks.tmp-{}", std::process::id()));
    std::fs::write(&tmp, &bytes).map_err(io_err(&tmp))?;
    let target = Target::from_path(&tmp)
        .await
        .map_err(|e| ReleaseError::Tuf(format!("{}: {e}", tmp.display())))?;
    Ok((tmp, target))
}

/// Adds release `version` of channel `from` to channel `to`, with the same
/// files, release number and floor.
pub async fn promote(
    layout: &Layout,
    version: &str,
    from: &str,
    to: &str,
    opts: &PublishOptions,
) -> Result<Published, ReleaseError> {
    release::validate_channel(from)?;
    release::validate_channel(to)?;
    let _lock = layout.lock()?;
    let src = load(layout, from)
        .await?
        .ok_or_else(|| ReleaseError::Usage(format!("channel `{from}` has no releases")))?;
    let src_state = state_of(from, &src);
    let entry = src_state.release(version).cloned().ok_or_else(|| {
        let have: Vec<&str> = src_state
            .releases
            .iter()
            .map(|r| r.version.as_str())
            .collect();
        ReleaseError::Usage(format!(
            "channel `{from}` has no version {version}; it has {}",
            if have.is_empty() {
                "none".to_string()
            } else {
                have.join(", ")
            }
        ))
    })?;
    if let Some(dst) = state(layout, to).await? {
        if dst.release(version).is_some() {
            return Err(ReleaseError::Usage(format!(
                "channel `{to}` already has version {version}"
            )));
        }
        if let Some(newest) = dst.latest().filter(|r| r.release > entry.release) {
            return Err(ReleaseError::Usage(format!(
                "channel `{to}` already carries release {} ({}), newer than {version} (release {}); appliances never move back",
                newest.release, newest.version, entry.release
            )));
        }
    }
    let mut targets = Vec::new();
    for a in &entry.artifacts {
        let name = TargetName::new(a.target.clone())
            .map_err(|e| ReleaseError::Tuf(format!("target {}: {e}", a.target)))?;
        let target = src
            .targets()
            .signed
            .find_target(&name)
            .map_err(|e| ReleaseError::Tuf(format!("target {}: {e}", a.target)))?
            .clone();
        targets.push(NewTarget {
            name: a.target.clone(),
            source: layout
                .targets_dir(from)
                .join(format!("{}.{}", a.sha256, a.target)),
            target,
        });
    }
    commit(
        layout,
        to,
        targets,
        opts,
        version,
        entry.release,
        entry.min_release,
    )
    .await
}

/// Copies the files, signs the new metadata and makes it visible.
async fn commit(
    layout: &Layout,
    channel: &str,
    targets: Vec<NewTarget>,
    opts: &PublishOptions,
    version: &str,
    release_no: u64,
    min_release: u64,
) -> Result<Published, ReleaseError> {
    // Check the targets key before copying anything large.
    PemKey::new(&opts.targets_key).load()?;
    let (root_path, _) = layout.latest_root()?;
    let existing = load(layout, channel).await?;
    let keys = SigningKeys {
        targets: opts.targets_key.clone(),
        snapshot: layout.snapshot_key().path,
        timestamp: layout.timestamp_key().path,
    };
    let (staged, targets_version, targets_expires) = sign_staged(
        layout,
        channel,
        existing,
        &root_path,
        TargetChanges {
            add: &targets,
            remove: &[],
        },
        &keys,
        opts.expires_days,
    )
    .await?;
    staged.publish(layout)?;
    Ok(Published {
        channel: channel.to_string(),
        version: version.to_string(),
        release: release_no,
        min_release,
        targets_version,
        targets_expires,
    })
}

/// The keys that sign a channel's metadata (PEM files).
#[derive(Debug, Clone)]
pub struct SigningKeys {
    pub targets: PathBuf,
    pub snapshot: PathBuf,
    pub timestamp: PathBuf,
}

/// A channel's newly signed metadata in a staging directory beside it,
/// not yet visible to clients.
#[derive(Debug)]
pub struct Staged {
    meta: PathBuf,
    staging: PathBuf,
}

impl Staged {
    /// Makes it visible in the order a reader needs: the root chain, the
    /// versioned files, `timestamp.json` last (each write atomic).
    pub fn publish(self, layout: &Layout) -> Result<(), ReleaseError> {
        let meta = &self.meta;
        for (n, path) in layout.root_chain()? {
            let bytes = std::fs::read(&path).map_err(io_err(&path))?;
            super::write_atomic(meta, &format!("{n}.root.json"), &bytes)?;
        }
        let mut names: Vec<String> = std::fs::read_dir(&self.staging)
            .map_err(io_err(&self.staging))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        names.sort_by_key(|n| n == "timestamp.json");
        for name in names {
            let bytes = std::fs::read(self.staging.join(&name)).map_err(io_err(&self.staging))?;
            super::write_atomic(meta, &name, &bytes)?;
        }
        let _ = std::fs::remove_dir_all(&self.staging);
        Ok(())
    }
}

/// Re-signs channel `channel`'s targets as they are (every release kept)
/// under the root at `root_path`, which need not be in the chain yet (a
/// root that names a new targets key), with new versions of targets,
/// snapshot and timestamp; staged, not visible. `None`: never published.
pub async fn stage_resigned_targets(
    layout: &Layout,
    channel: &str,
    root_path: &Path,
    keys: &SigningKeys,
    expires_days: i64,
) -> Result<Option<Staged>, ReleaseError> {
    let Some(existing) = load(layout, channel).await? else {
        return Ok(None);
    };
    let (staged, _, _) = sign_staged(
        layout,
        channel,
        Some(existing),
        root_path,
        TargetChanges {
            add: &[],
            remove: &[],
        },
        keys,
        expires_days,
    )
    .await?;
    Ok(Some(staged))
}

/// What a signing changes in a channel's targets.
pub(super) struct TargetChanges<'a> {
    pub add: &'a [NewTarget],
    /// Target names dropped (`levee release prune`).
    pub remove: &'a [String],
}

/// Copies the added targets' files into the channel and signs its
/// metadata with `changes` made (under the root at `root_path`) into a
/// staging directory. Returns it, the targets version and its expiry.
pub(super) async fn sign_staged(
    layout: &Layout,
    channel: &str,
    existing: Option<Repository>,
    root_path: &Path,
    changes: TargetChanges<'_>,
    keys: &SigningKeys,
    expires_days: i64,
) -> Result<(Staged, u64, DateTime<Utc>), ReleaseError> {
    let root_version = super::read_json::<tough::schema::Signed<tough::schema::Root>>(root_path)
        .map(|r| r.signed.version.get())
        .unwrap_or(0);
    let (tv, sv, tsv) = match &existing {
        Some(r) => (
            r.targets().signed.version.get(),
            r.snapshot().signed.version.get(),
            r.timestamp().signed.version.get(),
        ),
        None => (0, 0, 0),
    };
    let mut editor = match existing {
        Some(repo) => RepositoryEditor::from_repo(root_path, repo).await,
        None => RepositoryEditor::new(root_path).await,
    }
    .map_err(|e| ReleaseError::Tuf(format!("cannot edit channel `{channel}`: {e}")))?;

    let targets_dir = layout.targets_dir(channel);
    std::fs::create_dir_all(&targets_dir).map_err(io_err(&targets_dir))?;
    for t in changes.add {
        let sha = hex::encode(t.target.hashes.sha256.as_ref());
        copy_target(
            &t.source,
            &targets_dir,
            &format!("{sha}.{}", t.name),
            &sha,
            t.target.length,
        )?;
        let name = TargetName::new(t.name.clone())
            .map_err(|e| ReleaseError::Tuf(format!("target {}: {e}", t.name)))?;
        editor
            .add_target(name, t.target.clone())
            .map_err(|e| ReleaseError::Tuf(format!("target {}: {e}", t.name)))?;
    }
    for t in changes.remove {
        let name = TargetName::new(t.clone())
            .map_err(|e| ReleaseError::Tuf(format!("target {t}: {e}")))?;
        editor
            .remove_target(&name)
            .map_err(|e| ReleaseError::Tuf(format!("removing target {t}: {e}")))?;
    }
    let now = super::now();
    let targets_expires = now + super::days(expires_days);
    let nz = |n: u64| NonZeroU64::new(n + 1).expect("n + 1 > 0");
    editor
        .targets_version(nz(tv))
        .map_err(|e| ReleaseError::Tuf(e.to_string()))?;
    editor
        .targets_expires(targets_expires)
        .map_err(|e| ReleaseError::Tuf(e.to_string()))?;
    editor
        .snapshot_version(nz(sv))
        .snapshot_expires(now + super::SNAPSHOT_LIFETIME)
        .timestamp_version(nz(tsv))
        .timestamp_expires(now + super::TIMESTAMP_LIFETIME);
    let sources: Vec<Box<dyn KeySource>> = vec![
        Box::new(PemKey::new(&keys.targets)),
        Box::new(PemKey::new(&keys.snapshot)),
        Box::new(PemKey::new(&keys.timestamp)),
    ];
    let signed = editor.sign(&sources).await.map_err(|e| {
        ReleaseError::Tuf(format!(
            "signing channel `{channel}` failed (is {} the targets key root version {root_version} names?): {e}",
            keys.targets.display(),
        ))
    })?;
    let meta = layout.metadata_dir(channel);
    let staging = meta.join(format!(".staging-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    signed
        .write(&staging)
        .await
        .map_err(|e| ReleaseError::Tuf(format!("writing metadata failed: {e}")))?;
    Ok((Staged { meta, staging }, tv + 1, targets_expires))
}

/// Copies `src` to `dir/name` through a temporary file, checking length and
/// sha256 on the way; an existing complete file is kept.
fn copy_target(
    src: &Path,
    dir: &Path,
    name: &str,
    sha: &str,
    length: u64,
) -> Result<(), ReleaseError> {
    use sha2::Digest;
    use std::io::{Read, Write};
    let dst = dir.join(name);
    if std::fs::metadata(&dst).is_ok_and(|m| m.len() == length) {
        return Ok(());
    }
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut input = std::fs::File::open(src).map_err(io_err(src))?;
    let mut out = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n_total = 0u64;
    loop {
        let n = input.read(&mut buf).map_err(io_err(src))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io_err(&tmp))?;
        n_total += n as u64;
    }
    out.sync_all().map_err(io_err(&tmp))?;
    let got = hex::encode(hasher.finalize());
    if got != sha || n_total != length {
        let _ = std::fs::remove_file(&tmp);
        return Err(ReleaseError::Usage(format!(
            "{} changed while it was published ({n_total} bytes, sha256 {got}); publish again",
            src.display()
        )));
    }
    std::fs::rename(&tmp, &dst).map_err(io_err(&dst))?;
    Ok(())
}
