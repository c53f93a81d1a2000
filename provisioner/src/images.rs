//! The image store: imported images under `DATA/images/<id>/`.
//!
//! An image is copied in whole, each artifact checked against `image.json`
//! (size and sha256), into a temporary directory that is renamed into place
//! only when complete, so `levee serve` never sees half an image.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use levee_proto::image::{Artifact, ImageManifest, IMAGE_MANIFEST};
use sha2::{Digest, Sha256};

use crate::store::{now, validate_name, ImageRecord, Store};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not a valid image manifest: {source}")]
    Manifest {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: artifact `{name}` is {got} but image.json says {want}; the image is damaged or incomplete, rebuild it")]
    Mismatch {
        path: PathBuf,
        name: String,
        got: String,
        want: String,
    },
    #[error("artifact name `{0}` in image.json is not a plain file name")]
    BadName(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where images live inside the data directory.
pub fn images_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("images")
}

/// The directory of one imported image.
pub fn image_dir(data_dir: &Path, id: &str) -> PathBuf {
    images_dir(data_dir).join(id)
}

/// Reads and checks `DIR/image.json`.
pub fn read_manifest(dir: &Path) -> Result<ImageManifest, ImageError> {
    let path = dir.join(IMAGE_MANIFEST);
    let text = fs::read_to_string(&path).map_err(io_err(&path))?;
    let manifest: ImageManifest =
        serde_json::from_str(&text).map_err(|source| ImageError::Manifest {
            path: path.clone(),
            source,
        })?;
    validate_name("image", &manifest.name)?;
    validate_name("image version", &manifest.version)?;
    for name in manifest.artifacts.keys() {
        if !is_plain_file_name(name) || name == IMAGE_MANIFEST {
            return Err(ImageError::BadName(name.clone()));
        }
    }
    Ok(manifest)
}

fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

/// Copies `src` to `dst`, hashing as it goes, and checks it against `want`.
fn copy_checked(src: &Path, dst: &Path, name: &str, want: &Artifact) -> Result<(), ImageError> {
    let mut input = File::open(src).map_err(io_err(src))?;
    let mut output = File::create(dst).map_err(io_err(dst))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = input.read(&mut buf).map_err(io_err(src))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        output.write_all(&buf[..n]).map_err(io_err(dst))?;
        size += n as u64;
    }
    output.sync_all().map_err(io_err(dst))?;
    let sha = hex::encode(hasher.finalize());
    if size != want.size {
        return Err(ImageError::Mismatch {
            path: src.to_path_buf(),
            name: name.into(),
            got: format!("{size} bytes"),
            want: format!("{} bytes", want.size),
        });
    }
    if sha != want.sha256 {
        return Err(ImageError::Mismatch {
            path: src.to_path_buf(),
            name: name.into(),
            got: format!("sha256 {sha}"),
            want: format!("sha256 {}", want.sha256),
        });
    }
    Ok(())
}

/// Imports the image in `src` (a directory with `image.json`) into the store.
/// Importing the same name and version again replaces it.
pub fn import(data_dir: &Path, store: &dyn Store, src: &Path) -> Result<ImageRecord, ImageError> {
    let manifest = read_manifest(src)?;
    let id = format!("{}-{}", manifest.name, manifest.version);
    let root = images_dir(data_dir);
    fs::create_dir_all(&root).map_err(io_err(&root))?;
    let tmp = root.join(format!(".import-{id}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir(&tmp).map_err(io_err(&tmp))?;
    let result = (|| -> Result<(), ImageError> {
        for (name, want) in &manifest.artifacts {
            copy_checked(&src.join(name), &tmp.join(name), name, want)?;
        }
        let text = serde_json::to_vec_pretty(&manifest).map_err(|source| ImageError::Manifest {
            path: src.join(IMAGE_MANIFEST),
            source,
        })?;
        let mpath = tmp.join(IMAGE_MANIFEST);
        fs::write(&mpath, text).map_err(io_err(&mpath))?;
        let dst = image_dir(data_dir, &id);
        if dst.exists() {
            // Replacing: move the old copy aside first so the rename below is
            // atomic and a crash leaves either the old or the new image.
            let old = root.join(format!(".old-{id}-{}", std::process::id()));
            fs::rename(&dst, &old).map_err(io_err(&dst))?;
            fs::rename(&tmp, &dst).map_err(io_err(&dst))?;
            let _ = fs::remove_dir_all(&old);
        } else {
            fs::rename(&tmp, &dst).map_err(io_err(&dst))?;
        }
        File::open(&root)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&root))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result?;
    let record = ImageRecord {
        id,
        name: manifest.name.clone(),
        version: manifest.version.clone(),
        manifest,
        imported_at: now(),
    };
    store.put_image(&record)?;
    Ok(record)
}

/// Makes an image out of a loose kernel and initrd (for test kernels and
/// hand-made boot profiles), named `NAME-<first 12 hex of their hashes>`.
pub fn import_files(
    data_dir: &Path,
    store: &dyn Store,
    name: &str,
    kernel: &Path,
    initrd: &Path,
) -> Result<ImageRecord, ImageError> {
    let staging = tempfile_dir(data_dir)?;
    let mut artifacts = std::collections::BTreeMap::new();
    let mut combined = Sha256::new();
    for (src, art) in [(kernel, "vmlinuz"), (initrd, "initrd.img")] {
        let bytes = fs::read(src).map_err(io_err(src))?;
        let sha = hex::encode(Sha256::digest(&bytes));
        combined.update(sha.as_bytes());
        let dst = staging.join(art);
        fs::write(&dst, &bytes).map_err(io_err(&dst))?;
        artifacts.insert(
            art.to_string(),
            Artifact {
                sha256: sha,
                size: bytes.len() as u64,
            },
        );
    }
    let manifest = ImageManifest {
        name: name.to_string(),
        version: hex::encode(combined.finalize())[..12].to_string(),
        release: String::new(),
        packages: Default::default(),
        artifacts,
        cmdline: String::new(),
    };
    let mpath = staging.join(IMAGE_MANIFEST);
    let text = serde_json::to_vec_pretty(&manifest).map_err(|source| ImageError::Manifest {
        path: mpath.clone(),
        source,
    })?;
    fs::write(&mpath, text).map_err(io_err(&mpath))?;
    let result = import(data_dir, store, &staging);
    let _ = fs::remove_dir_all(&staging);
    result
}

fn tempfile_dir(data_dir: &Path) -> Result<PathBuf, ImageError> {
    let root = images_dir(data_dir);
    let dir = root.join(format!(".staging-{}-{}", std::process::id(), now()));
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ImageStore, SqliteStore};

    #[test]
    fn loose_files_become_a_checked_image_and_damage_is_refused() {
        let data = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(data.path()).unwrap();
        let src = tempfile::tempdir().unwrap();
        fs::write(src.path().join("k"), b"kernel").unwrap();
        fs::write(src.path().join("i"), b"initrd").unwrap();
        let img = import_files(
            data.path(),
            &store,
            "test",
            &src.path().join("k"),
            &src.path().join("i"),
        )
        .unwrap();
        let dir = image_dir(data.path(), &img.id);
        assert_eq!(fs::read(dir.join("vmlinuz")).unwrap(), b"kernel");
        assert_eq!(store.image(&img.id).unwrap().unwrap().version, img.version);

        // Re-import after tampering with an artifact: refused, store unchanged.
        fs::write(dir.join("initrd.img"), b"initrX").unwrap();
        let err = import(data.path(), &store, &dir).unwrap_err().to_string();
        assert!(
            err.contains("initrd.img") && err.contains("sha256"),
            "{err}"
        );
    }

    #[test]
    fn artifact_names_cannot_escape_the_image_directory() {
        let src = tempfile::tempdir().unwrap();
        fs::write(
            src.path().join(IMAGE_MANIFEST),
            r#"{"name":"x","version":"1","artifacts":{"../evil":{"sha256":"00","size":0}}}"#,
        )
        .unwrap();
        let err = read_manifest(src.path()).unwrap_err().to_string();
        assert!(err.contains("../evil"), "{err}");
    }
}
