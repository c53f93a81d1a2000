//! `levee release keys init` and `keys rotate-root`: the root of trust.
//!
//! A new root version is signed by a threshold of the previous root's keys
//! and a threshold of its own, so an appliance holding any older root walks
//! the chain `N.root.json`, `N+1.root.json`, ... to the newest one (TUF
//! 5.3). A revoked key stays in the chain's history but signs nothing new.

use std::path::{Path, PathBuf};

use tough::schema::decoded::{Decoded, Hex};
use tough::schema::{RoleType, Root, Signed};
use tough::sign::Sign;

use super::keys::{self, PemKey, RoleSet};
use super::{io_err, read_json, role_bytes, write_atomic, Layout, ReleaseError};

/// Settings of `keys init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Directory for the root keys (moved offline afterwards).
    pub offline_dir: PathBuf,
    /// Where to write the targets key (default `OFFLINE_DIR/targets.pem`).
    pub targets_key: PathBuf,
    pub root_keys: usize,
    pub root_threshold: u64,
    pub root_expires_days: i64,
}

/// What `keys init` made.
#[derive(Debug, serde::Serialize)]
pub struct InitReport {
    pub root_keys: Vec<PathBuf>,
    pub root_threshold: u64,
    pub targets_key: PathBuf,
    pub snapshot_key: PathBuf,
    pub timestamp_key: PathBuf,
    /// `OFFLINE_DIR/root.json`: what the image builder bakes in.
    pub trust_root: PathBuf,
    pub root_expires: String,
}

pub async fn init(layout: &Layout, opts: &InitOptions) -> Result<InitReport, ReleaseError> {
    let _lock = layout.lock()?;
    if layout.root_chain().is_ok() {
        return Err(ReleaseError::Usage(format!(
            "release keys already exist ({}); use `levee release keys rotate-root` to change them",
            layout.root_dir().display()
        )));
    }
    if opts.root_keys == 0
        || opts.root_threshold == 0
        || opts.root_threshold as usize > opts.root_keys
    {
        return Err(ReleaseError::Usage(format!(
            "--root-threshold {} must be between 1 and --root-keys {}",
            opts.root_threshold, opts.root_keys
        )));
    }
    std::fs::create_dir_all(&opts.offline_dir).map_err(io_err(&opts.offline_dir))?;
    let mut root_files = Vec::new();
    for i in 1..=opts.root_keys {
        root_files.push(keys::generate(
            &opts.offline_dir.join(format!("root-{i}.pem")),
        )?);
    }
    let targets = keys::generate(&opts.targets_key)?;
    let snapshot = keys::generate(&layout.snapshot_key().path)?;
    let timestamp = keys::generate(&layout.timestamp_key().path)?;

    let root_signers: Vec<Box<dyn Sign>> = root_files
        .iter()
        .map(|k| k.load())
        .collect::<Result<_, _>>()?;
    let set = RoleSet {
        root: root_signers.iter().map(|s| s.tuf_key()).collect(),
        root_threshold: opts.root_threshold,
        targets: targets.load()?.tuf_key(),
        snapshot: snapshot.load()?.tuf_key(),
        timestamp: timestamp.load()?.tuf_key(),
    };
    let expires = super::now() + super::days(opts.root_expires_days);
    let root = keys::build_root(&set, 1, expires)?;
    let signed = keys::sign_role(&root, &root_signers).await?;
    keys::verify(&root, &signed)?;
    let trust_root = store_root(layout, &signed, Some(&opts.offline_dir))?;
    Ok(InitReport {
        root_keys: root_files.into_iter().map(|k| k.path).collect(),
        root_threshold: opts.root_threshold,
        targets_key: targets.path,
        snapshot_key: snapshot.path,
        timestamp_key: timestamp.path,
        trust_root: trust_root.unwrap_or_default(),
        root_expires: expires.to_rfc3339(),
    })
}

/// Writes a signed root as `N.root.json` into the chain, every channel's
/// metadata, and (when given) the offline directory, plus `root.json`
/// there. Returns the offline `root.json` path.
fn store_root(
    layout: &Layout,
    signed: &Signed<Root>,
    offline: Option<&Path>,
) -> Result<Option<PathBuf>, ReleaseError> {
    let bytes = role_bytes(signed)?;
    let name = format!("{}.root.json", signed.signed.version);
    write_atomic(&layout.root_dir(), &name, &bytes)?;
    for channel in layout.channels()? {
        write_atomic(&layout.metadata_dir(&channel), &name, &bytes)?;
    }
    match offline {
        Some(dir) => {
            write_atomic(dir, &name, &bytes)?;
            write_atomic(dir, "root.json", &bytes)?;
            Ok(Some(dir.join("root.json")))
        }
        None => Ok(None),
    }
}

/// Settings of `keys rotate-root`.
#[derive(Debug, Clone, Default)]
pub struct RotateOptions {
    pub offline_dir: PathBuf,
    /// Root keys to revoke (key id, or a key file's path); each is replaced
    /// by a new key so the number of root keys stays.
    pub revoke: Vec<String>,
    /// New threshold (default: keep).
    pub root_threshold: Option<u64>,
    /// Replace the snapshot and timestamp keys (after a server compromise).
    pub rotate_online: bool,
    /// Replace the targets key: a new key is made at this path (never
    /// overwriting), the new root names it, and every channel's targets
    /// are re-signed with it (`keys rotate-targets`).
    pub new_targets_key: Option<PathBuf>,
    /// Life of the re-signed targets metadata.
    pub targets_expires_days: i64,
    pub root_expires_days: i64,
}

#[derive(Debug, serde::Serialize)]
pub struct RotateReport {
    pub version: u64,
    pub revoked: Vec<String>,
    pub new_root_keys: Vec<PathBuf>,
    pub online_keys_rotated: bool,
    /// The new targets key, when it was replaced.
    pub targets_key: Option<PathBuf>,
    pub channels_resigned: Vec<String>,
    pub trust_root: PathBuf,
}

fn hexid(id: &Decoded<Hex>) -> String {
    hex::encode(id.as_ref())
}

pub async fn rotate(layout: &Layout, opts: &RotateOptions) -> Result<RotateReport, ReleaseError> {
    let _lock = layout.lock()?;
    let (_, old) = layout.latest_root()?;
    let old_root = &old.signed;
    let old_ids: Vec<String> = old_root
        .roles
        .get(&RoleType::Root)
        .map(|r| r.keyids.iter().map(hexid).collect())
        .unwrap_or_default();

    // The old root keys present offline.
    let mut present: Vec<(String, PemKey, Box<dyn Sign>)> = Vec::new();
    for k in keys::root_keys_in(&opts.offline_dir)? {
        let signer = k.load()?;
        let id = hexid(&keys::key_id(&signer.tuf_key())?);
        if old_ids.contains(&id) {
            present.push((id, k, signer));
        }
    }
    let old_threshold = old_root
        .roles
        .get(&RoleType::Root)
        .map(|r| r.threshold.get())
        .unwrap_or(1);
    if (present.len() as u64) < old_threshold {
        return Err(ReleaseError::Usage(format!(
            "root version {} needs {old_threshold} of its keys to sign the next one; {} found in {} (root-*.pem)",
            old_root.version,
            present.len(),
            opts.offline_dir.display()
        )));
    }

    // Resolve the keys to revoke: by id or by file.
    let mut revoked = Vec::new();
    for r in &opts.revoke {
        let id = if Path::new(r).is_file() {
            hexid(&PemKey::new(r).key_id()?)
        } else {
            r.to_ascii_lowercase()
        };
        if !old_ids.contains(&id) {
            return Err(ReleaseError::Usage(format!(
                "`{r}` is not a key of root version {}; its root keys are {}",
                old_root.version,
                old_ids.join(", ")
            )));
        }
        revoked.push(id);
    }

    let mut set = RoleSet::of(old_root)?;
    set.root.retain(|k| {
        keys::key_id(k)
            .map(|id| !revoked.contains(&hexid(&id)))
            .unwrap_or(false)
    });
    // Replacement keys, named after the highest root-N.pem present.
    let mut new_files = Vec::new();
    let first = next_root_index(&opts.offline_dir)?;
    for next in first..first + revoked.len() {
        let k = keys::generate(&opts.offline_dir.join(format!("root-{next}.pem")))?;
        set.root.push(k.load()?.tuf_key());
        new_files.push(k);
    }
    if let Some(t) = opts.root_threshold {
        set.root_threshold = t;
    }

    // New online keys are made beside the old ones and renamed into place
    // only after the new root is stored.
    let staged_key = |name: &str| layout.keys_dir().join(format!("{name}.pem.new"));
    if opts.rotate_online {
        for name in ["snapshot", "timestamp"] {
            let _ = std::fs::remove_file(staged_key(name));
            let k = keys::generate(&staged_key(name))?;
            let key = k.load()?.tuf_key();
            if name == "snapshot" {
                set.snapshot = key;
            } else {
                set.timestamp = key;
            }
        }
    }

    let new_targets = match &opts.new_targets_key {
        Some(path) => {
            let k = keys::generate(path)?;
            set.targets = k.load()?.tuf_key();
            Some(k)
        }
        None => None,
    };

    let version = old_root.version.get() + 1;
    let expires = super::now() + super::days(opts.root_expires_days);
    let new_root = keys::build_root(&set, version, expires)?;

    // Signers: the old keys present (cross-signing) and all new-set keys
    // present; a revoked key signs the version that revokes it, not after.
    let mut signers: Vec<Box<dyn Sign>> = Vec::new();
    let mut signed_ids = Vec::new();
    for (id, _, s) in present {
        signed_ids.push(id);
        signers.push(s);
    }
    for k in &new_files {
        signers.push(k.load()?);
    }
    let _ = signed_ids;
    let signed = keys::sign_role(&new_root, &signers).await?;
    keys::verify(old_root, &signed).map_err(|e| {
        ReleaseError::Tuf(format!(
            "the new root does not verify under the old one: {e}"
        ))
    })?;
    keys::verify(&new_root, &signed).map_err(|e| {
        ReleaseError::Tuf(format!("the new root does not verify under itself: {e}"))
    })?;

    // A new targets key: every channel's targets re-signed with it under
    // the new root, staged before the root is stored (loading a channel
    // verifies it under the newest root, which the old signatures would
    // fail) and made visible right after it.
    let mut staged = Vec::new();
    if let Some(k) = &new_targets {
        let next = layout
            .root_dir()
            .join(format!(".next-{}.root.json", std::process::id()));
        std::fs::write(&next, role_bytes(&signed)?).map_err(io_err(&next))?;
        let online = |name: &str| {
            if opts.rotate_online {
                staged_key(name)
            } else {
                layout.keys_dir().join(format!("{name}.pem"))
            }
        };
        let signing = super::channel::SigningKeys {
            targets: k.path.clone(),
            snapshot: online("snapshot"),
            timestamp: online("timestamp"),
        };
        let mut result = Ok(());
        for channel in layout.channels()? {
            match super::channel::stage_resigned_targets(
                layout,
                &channel,
                &next,
                &signing,
                opts.targets_expires_days,
            )
            .await
            {
                Ok(Some(s)) => staged.push(s),
                Ok(None) => {}
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let _ = std::fs::remove_file(&next);
        result?;
    }

    // Move revoked key files aside so they are not used again by mistake.
    let revoked_dir = opts.offline_dir.join("revoked");
    for k in keys::root_keys_in(&opts.offline_dir)? {
        if revoked.contains(&hexid(&k.key_id()?)) {
            std::fs::create_dir_all(&revoked_dir).map_err(io_err(&revoked_dir))?;
            let name = k.path.file_name().unwrap_or_default();
            std::fs::rename(&k.path, revoked_dir.join(name)).map_err(io_err(&k.path))?;
        }
    }

    let trust_root = store_root(layout, &signed, Some(&opts.offline_dir))?.unwrap_or_default();
    if opts.rotate_online {
        for name in ["snapshot", "timestamp"] {
            let live = layout.keys_dir().join(format!("{name}.pem"));
            std::fs::rename(staged_key(name), &live).map_err(io_err(&live))?;
        }
    }
    for s in staged {
        s.publish(layout)?;
    }
    // Snapshot and timestamp must be signed by the keys the new root names;
    // re-sign them now when those changed (or always: it is cheap).
    let mut resigned = Vec::new();
    for channel in layout.channels()? {
        super::refresh::resign(layout, &channel, true).await?;
        resigned.push(channel);
    }
    Ok(RotateReport {
        version,
        revoked,
        new_root_keys: new_files.into_iter().map(|k| k.path).collect(),
        online_keys_rotated: opts.rotate_online,
        targets_key: new_targets.map(|k| k.path),
        channels_resigned: resigned,
        trust_root,
    })
}

fn next_root_index(dir: &Path) -> Result<usize, ReleaseError> {
    let mut max = 0usize;
    let mut scan = |d: &Path| {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.filter_map(|e| e.ok()) {
                if let Some(n) = e
                    .file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix("root-"))
                    .and_then(|n| n.strip_suffix(".pem"))
                    .and_then(|n| n.parse::<usize>().ok())
                {
                    max = max.max(n);
                }
            }
        }
    };
    scan(dir);
    scan(&dir.join("revoked"));
    Ok(max + 1)
}

/// Reads root version `n` of the chain.
pub fn read_root(layout: &Layout, n: u64) -> Result<Signed<Root>, ReleaseError> {
    read_json(&layout.root_dir().join(format!("{n}.root.json")))
}
