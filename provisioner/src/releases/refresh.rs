//! Re-signing snapshot and timestamp with the online keys before they
//! expire (`levee serve` does it on a timer; `rotate-root` after a key
//! change). The targets metadata is untouched: its key is offline.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use tough::schema::{Hashes, Metafile, Signed, Snapshot, Timestamp};

use super::keys::{self, nonzero, SPEC_VERSION};
use super::{
    read_json, role_bytes, write_atomic, Layout, ReleaseError, SNAPSHOT_LIFETIME,
    SNAPSHOT_RENEW_BEFORE, TIMESTAMP_LIFETIME, TIMESTAMP_RENEW_BEFORE,
};

/// What one re-signing pass did to a channel.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Resigned {
    pub snapshot: Option<u64>,
    pub timestamp: Option<u64>,
}

/// Re-signs the channel's snapshot (when under [`SNAPSHOT_RENEW_BEFORE`]
/// remains, or `force`) and timestamp (when under
/// [`TIMESTAMP_RENEW_BEFORE`] remains, the snapshot changed, or `force`).
/// Takes no lock: callers hold [`Layout::lock`].
pub async fn resign(layout: &Layout, channel: &str, force: bool) -> Result<Resigned, ReleaseError> {
    resign_at(layout, channel, force, super::now()).await
}

pub async fn resign_at(
    layout: &Layout,
    channel: &str,
    force: bool,
    now: DateTime<Utc>,
) -> Result<Resigned, ReleaseError> {
    let dir = layout.metadata_dir(channel);
    let timestamp: Signed<Timestamp> = read_json(&dir.join("timestamp.json"))?;
    let snap_meta = timestamp
        .signed
        .meta
        .get("snapshot.json")
        .ok_or_else(|| ReleaseError::Tuf(format!("{channel}: timestamp names no snapshot")))?;
    let snap_version = snap_meta.version.get();
    let snapshot: Signed<Snapshot> = read_json(&dir.join(format!("{snap_version}.snapshot.json")))?;

    let mut out = Resigned::default();
    let mut snapshot_bytes = None;
    let mut snapshot_version = snap_version;
    if force || snapshot.signed.expires - now < SNAPSHOT_RENEW_BEFORE {
        let key = layout.snapshot_key().load()?;
        snapshot_version += 1;
        let mut next = Snapshot::new(
            SPEC_VERSION.into(),
            nonzero(snapshot_version)?,
            now + SNAPSHOT_LIFETIME,
        );
        next.meta = snapshot.signed.meta.clone();
        next._extra = snapshot.signed._extra.clone();
        let signed = keys::sign_role(&next, &[key]).await?;
        let bytes = role_bytes(&signed)?;
        write_atomic(&dir, &format!("{snapshot_version}.snapshot.json"), &bytes)?;
        out.snapshot = Some(snapshot_version);
        snapshot_bytes = Some(bytes);
    }
    if snapshot_bytes.is_some() || force || timestamp.signed.expires - now < TIMESTAMP_RENEW_BEFORE
    {
        let key = layout.timestamp_key().load()?;
        let version = timestamp.signed.version.get() + 1;
        let mut next = Timestamp::new(
            SPEC_VERSION.into(),
            nonzero(version)?,
            now + TIMESTAMP_LIFETIME,
        );
        let meta = match &snapshot_bytes {
            Some(bytes) => snapshot_metafile(bytes, snapshot_version)?,
            None => snap_meta.clone(),
        };
        next.meta.insert("snapshot.json".into(), meta);
        next._extra = timestamp.signed._extra.clone();
        let signed = keys::sign_role(&next, &[key]).await?;
        write_atomic(&dir, "timestamp.json", &role_bytes(&signed)?)?;
        out.timestamp = Some(version);
    }
    Ok(out)
}

/// The timestamp's description of a snapshot file: version, length, sha256.
pub fn snapshot_metafile(bytes: &[u8], version: u64) -> Result<Metafile, ReleaseError> {
    use sha2::Digest;
    Ok(Metafile {
        length: Some(bytes.len() as u64),
        hashes: Some(Hashes {
            sha256: sha2::Sha256::digest(bytes).to_vec().into(),
            _extra: HashMap::new(),
        }),
        version: nonzero(version)?,
        _extra: HashMap::new(),
    })
}

/// Re-signs every channel as needed; what `levee serve` runs on a timer.
pub async fn resign_all(layout: &Layout) -> Result<Vec<(String, Resigned)>, ReleaseError> {
    let _lock = {
        let layout = layout.clone();
        tokio::task::spawn_blocking(move || layout.lock())
            .await
            .map_err(|e| ReleaseError::Tuf(format!("lock task failed: {e}")))??
    };
    let mut out = Vec::new();
    for channel in layout.channels()? {
        let r = resign(layout, &channel, false).await?;
        if r != Resigned::default() {
            out.push((channel, r));
        }
    }
    Ok(out)
}
