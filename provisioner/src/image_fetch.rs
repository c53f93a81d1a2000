//! Image files for every server of a fleet (issue 16; docs/POSTGRES.md).
//!
//! The image records are in the shared database, the files in each
//! server's `DATA_DIR/images`. Each server records in the database the URL
//! at which the others reach its plain-HTTP listener (`--fleet-url`, by
//! default `--public-url`); a server lacking a file of an image fetches it
//! from the others' `/images/<id>/<file>` (images are public artifacts
//! there), checks its size and sha256 against the image record in the
//! database, and only then renames it into place: a peer is trusted for
//! bytes, never for what they should be. That happens in the background at
//! start for the images boot profiles point at, and on the first request
//! for a missing file of any image the database knows.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use levee_proto::image::{Artifact, IMAGE_MANIFEST};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tracing::{info, warn};

use crate::images::image_dir;
use crate::store::{ImageRecord, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("image `{image}` file `{file}` is not on this server and no other server of the fleet gave a good copy: {tried}")]
    Nowhere {
        image: String,
        file: String,
        tried: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Fetches missing image files from the other servers of the fleet.
pub struct ImageFetcher {
    store: Arc<dyn Store>,
    data_dir: PathBuf,
    /// This server's own URL: recorded for the others, never fetched from.
    own_url: String,
    client: reqwest::Client,
    /// One fetch per image at a time: the fetch at start and a first
    /// request for the same image wait for each other instead of both
    /// downloading.
    busy: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl ImageFetcher {
    pub fn new(
        store: Arc<dyn Store>,
        data_dir: PathBuf,
        own_url: String,
    ) -> anyhow::Result<ImageFetcher> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            // A peer that stops sending mid-file: give up on it, try the next.
            .read_timeout(Duration::from_secs(30))
            .build()?;
        Ok(ImageFetcher {
            store,
            data_dir,
            own_url: own_url.trim_end_matches('/').to_string(),
            client,
            busy: Default::default(),
        })
    }

    /// Records this server in the database, so the others fetch from it.
    pub async fn announce(&self) -> Result<(), FetchError> {
        let (store, url) = (self.store.clone(), self.own_url.clone());
        blocking(move || Ok(store.announce_server(&url, crate::store::now())?)).await
    }

    /// Fetches every missing file of the images boot profiles point at
    /// (in the background at start), logging what it did and what failed.
    pub async fn fetch_profiles_images(&self) {
        let (store, data) = (self.store.clone(), self.data_dir.clone());
        let missing = match blocking(move || {
            crate::fleet::missing_images(store.as_ref(), &data)
                .map_err(|e| FetchError::Store(StoreError::Invalid(format!("{e:#}"))))
        })
        .await
        {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "cannot list the boot profiles' missing images");
                return;
            }
        };
        for (profile, image, files) in missing {
            for file in files {
                match self.ensure(&image, &file).await {
                    Ok(true) => {}
                    Ok(false) => {
                        warn!(%profile, %image, %file, "boot profile's image has no record in the database: nothing to fetch")
                    }
                    Err(e) => {
                        warn!(%profile, %image, %file, error = %e, "boot profile's image file not fetched: machines booting it get 404 here until it is")
                    }
                }
            }
        }
    }

    /// Whether `file` of image `image` is on this server, fetched from
    /// another server of the fleet first when it is missing and the
    /// image's record in the database lists it. `Ok(false)`: the database
    /// knows no such file.
    pub async fn ensure(&self, image: &str, file: &str) -> Result<bool, FetchError> {
        let dir = image_dir(&self.data_dir, image);
        let path = dir.join(file);
        if path.is_file() {
            return Ok(true);
        }
        let lock = {
            let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
            busy.entry(image.to_string()).or_default().clone()
        };
        let _one_at_a_time = lock.lock().await;
        if path.is_file() {
            // Fetched by whoever held the lock.
            return Ok(true);
        }
        let (store, id) = (self.store.clone(), image.to_string());
        let Some(record) = blocking(move || Ok(store.image(&id)?)).await? else {
            return Ok(false);
        };
        if file != IMAGE_MANIFEST {
            let Some(want) = record.manifest.artifacts.get(file) else {
                return Ok(false);
            };
            let peers = self.peers().await?;
            self.fetch_file(&peers, &record, file, want).await?;
        }
        write_manifest_when_complete(&dir, &record)?;
        Ok(path.is_file())
    }

    /// The other servers' URLs, the most recently started first.
    async fn peers(&self) -> Result<Vec<String>, FetchError> {
        let store = self.store.clone();
        let servers = blocking(move || Ok(store.fleet_servers()?)).await?;
        Ok(servers
            .into_iter()
            .map(|s| s.url)
            .filter(|u| u.trim_end_matches('/') != self.own_url)
            .collect())
    }

    /// Fetches `file` from the first peer with a good copy: every copy is
    /// checked against `want` (from the database) before it is renamed
    /// into place; a bad one is refused, logged by name, and the next
    /// peer tried.
    async fn fetch_file(
        &self,
        peers: &[String],
        record: &ImageRecord,
        file: &str,
        want: &Artifact,
    ) -> Result<(), FetchError> {
        let dir = image_dir(&self.data_dir, &record.id);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(io_err(&dir))?;
        // Hidden (the HTTP listener never serves dot files) and per
        // process, so a crash leaves nothing that looks like the file.
        let tmp = dir.join(format!(".fetch-{file}-{}", std::process::id()));
        let mut tried = Vec::new();
        for peer in peers {
            let url = format!("{}/images/{}/{file}", peer.trim_end_matches('/'), record.id);
            match self.download(&url, &tmp, want).await {
                Ok(()) => {
                    let dst = dir.join(file);
                    tokio::fs::rename(&tmp, &dst).await.map_err(io_err(&dst))?;
                    sync_dir(&dir)?;
                    info!(image = %record.id, %file, from = %peer, bytes = want.size, "image file fetched from another server of the fleet (sha256 checked against the database)");
                    return Ok(());
                }
                Err(reason) => {
                    let _ = tokio::fs::remove_file(&tmp).await;
                    warn!(image = %record.id, %file, from = %peer, %reason, "image file from another server refused");
                    tried.push(format!("{peer}: {reason}"));
                }
            }
        }
        if tried.is_empty() {
            tried.push("no other server has recorded itself in the database".into());
        }
        Err(FetchError::Nowhere {
            image: record.id.clone(),
            file: file.to_string(),
            tried: tried.join("; "),
        })
    }

    /// Downloads `url` into `tmp`, hashing as it goes; `Err` says why the
    /// copy is not the one the database names (or could not be had).
    async fn download(&self, url: &str, tmp: &Path, want: &Artifact) -> Result<(), String> {
        let mut resp = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| format!("{e}"))?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status()));
        }
        let mut out = tokio::fs::File::create(tmp)
            .await
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = resp.chunk().await.map_err(|e| format!("{e}"))? {
            size += chunk.len() as u64;
            // A peer never fills this server's disk beyond the record's size.
            if size > want.size {
                return Err(format!(
                    "more than the {} bytes the image record says: refused",
                    want.size
                ));
            }
            hasher.update(&chunk);
            out.write_all(&chunk)
                .await
                .map_err(|e| format!("{}: {e}", tmp.display()))?;
        }
        if size != want.size {
            return Err(format!(
                "{size} bytes, but the image record in the database says {}: refused",
                want.size
            ));
        }
        let sha = hex::encode(hasher.finalize());
        if sha != want.sha256 {
            return Err(format!(
                "sha256 {sha}, but the image record in the database says sha256 {}: refused (the copy there is damaged or was changed)",
                want.sha256
            ));
        }
        out.sync_all()
            .await
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        Ok(())
    }
}

/// Once every artifact of `record` is in `dir`, writes its `image.json`
/// (as `levee image import` does) unless it is there.
fn write_manifest_when_complete(dir: &Path, record: &ImageRecord) -> Result<(), FetchError> {
    let path = dir.join(IMAGE_MANIFEST);
    if path.is_file()
        || !record
            .manifest
            .artifacts
            .keys()
            .all(|name| dir.join(name).is_file())
    {
        return Ok(());
    }
    let text = serde_json::to_vec_pretty(&record.manifest).map_err(|e| FetchError::Io {
        path: path.clone(),
        source: io::Error::other(e),
    })?;
    let tmp = dir.join(format!(".fetch-{IMAGE_MANIFEST}-{}", std::process::id()));
    std::fs::write(&tmp, text).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), FetchError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Runs a store call off the async workers (the store's calls block).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FetchError> + Send + 'static,
) -> Result<T, FetchError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(FetchError::Store(StoreError::Invalid(format!(
            "image fetch task failed: {e}"
        ))))
    })
}
