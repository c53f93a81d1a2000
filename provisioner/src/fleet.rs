//! Several `levee serve` on one PostgreSQL database (one per provisioning
//! LAN): what they share and what each keeps (docs/POSTGRES.md says it for
//! operators).
//!
//! Shared, in the database: appliances, customers (secrets sealed), tokens,
//! leases, history, image records and boot profiles, and the enrollment CA
//! (its key sealed with the server key), so a certificate issued by one
//! server is accepted by every other, and the `levee.ca=` fingerprint in
//! boot scripts is the same everywhere. Each server's DATA_DIR keeps the
//! server key (the same file on every server: it opens the sealed secrets),
//! its image files, its TFTP root and its HTTPS certificate (issued by the
//! shared CA at each start); a server whose image files are missing says
//! so at start ([`warn_missing_images`]) and fetches them from the others
//! ([`crate::image_fetch`]).

use std::path::Path;

use anyhow::Context;

use crate::enroll::ca::ServerCa;
use crate::secrets::ServerKey;
use crate::store::{Store, StoredCa};

/// The associated data the CA key is sealed with: a sealed customer
/// secret copied into the CA row does not open.
const CA_KEY_AAD: &str = "levee:server-ca-key";

/// The CA this server issues and checks certificates with: the fleet's
/// one in the database on a shared store (PostgreSQL), else the data
/// directory's own (`DATA_DIR/ca/`, created on first use). `levee serve`
/// and the CLI commands that issue certificates open it the same way.
pub fn open_ca(store: &dyn Store, key: &ServerKey, data_dir: &Path) -> anyhow::Result<ServerCa> {
    if store.shared() {
        shared_ca(store, key, data_dir).context("fleet CA")
    } else {
        ServerCa::open_or_create(&data_dir.join("ca")).context("server CA")
    }
}

/// The CA `levee serve` uses, with its key, for the CLI commands that
/// issue certificates (`levee store cert`, `levee operator cert`): from the
/// database (PostgreSQL, sealed with the server key) or `DATA_DIR/ca/`.
/// Never made here: a CA nobody trusts would make certificates no
/// appliance or panel accepts.
pub fn existing_ca(store: &dyn Store, data_dir: &Path) -> anyhow::Result<ServerCa> {
    if store.server_ca()?.is_some() {
        let key_path = data_dir.join("server.key");
        anyhow::ensure!(
            key_path.exists(),
            "{} is missing: it opens the fleet CA's key; run this on a server of the fleet",
            key_path.display()
        );
        let key = ServerKey::load_or_create(data_dir)?;
        return shared_ca(store, &key, data_dir);
    }
    let dir = data_dir.join("ca");
    anyhow::ensure!(
        dir.join("ca.crt").exists(),
        "no Levee CA in {} (and none in the database): run this where `levee serve` keeps its data (it makes the CA at its first start), or give --database",
        dir.display()
    );
    Ok(ServerCa::open_or_create(&dir)?)
}

/// The fleet's CA from the store, stored there by the first server to
/// start: that server's `DATA_DIR/ca/` when it has one (a server that ran
/// alone before keeps its fingerprint), else a new CA.
pub fn shared_ca(store: &dyn Store, key: &ServerKey, data_dir: &Path) -> anyhow::Result<ServerCa> {
    let stored = match store
        .server_ca()
        .context("read the fleet CA from the database")?
    {
        Some(s) => s,
        None => {
            let dir = data_dir.join("ca");
            let (cert_pem, key_pem) = if dir.join("ca.crt").exists() {
                let ca = ServerCa::open_or_create(&dir)?;
                (ca.pem().to_string(), ca.key_pem())
            } else {
                ServerCa::generate()?
            };
            let mine = StoredCa {
                key_sealed: key.seal_secret(&key_pem, CA_KEY_AAD),
                cert_pem,
            };
            let stored = store
                .init_server_ca(&mine)
                .context("store the fleet CA in the database")?;
            if stored == mine {
                tracing::info!("fleet CA stored in the database (sealed with the server key): every server on it uses this one");
            }
            stored
        }
    };
    let key_pem = key
        .open_secret(&stored.key_sealed, CA_KEY_AAD, "the fleet CA key")
        .context(
            "the fleet CA in the database is sealed with another server key: copy DATA_DIR/server.key from a server of this fleet to this one",
        )?;
    Ok(ServerCa::from_pem(&stored.cert_pem, &key_pem)?)
}

/// The images boot profiles point at whose files are not (all) in this
/// server's `DATA_DIR/images`: `(profile, image id, missing file names)`.
/// In a fleet the image records are shared and the files are not, so a
/// server started beside the one that imported an image lacks them until
/// they are imported there too or the directory is shared.
pub fn missing_images(
    store: &dyn Store,
    data_dir: &Path,
) -> anyhow::Result<Vec<(String, String, Vec<String>)>> {
    let mut missing = Vec::new();
    for p in store.profiles().context("read the boot profiles")? {
        let dir = crate::images::image_dir(data_dir, &p.image);
        let names: Vec<String> = match store.image(&p.image).context("read an image record")? {
            Some(img) => img
                .manifest
                .artifacts
                .keys()
                .filter(|name| !dir.join(name.as_str()).is_file())
                .cloned()
                .collect(),
            None => vec![levee_proto::image::IMAGE_MANIFEST.to_string()],
        };
        if !names.is_empty() {
            missing.push((p.name, p.image, names));
        }
    }
    Ok(missing)
}

/// Logs, at start, each boot profile this server cannot serve for want of
/// its image's files, and what to do about it.
pub fn warn_missing_images(store: &dyn Store, data_dir: &Path) {
    match missing_images(store, data_dir) {
        Ok(missing) => {
            for (profile, image, files) in missing {
                tracing::warn!(
                    %profile,
                    %image,
                    missing = %files.join(","),
                    dir = %crate::images::image_dir(data_dir, &image).display(),
                    "boot profile's image is not on this server: on a shared database its files are fetched from the fleet's other servers (checked against the image record) in the background and on first request; until then machines booting it get 404 here. Else import it on this server too (`levee image import DIR --profile {profile}`, the record is shared and stays the same)"
                );
            }
        }
        Err(e) => tracing::warn!(
            error = format!("{e:#}"),
            "cannot check the boot profiles' images"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ImageStore, SqliteStore};

    /// A profile whose image was imported on another server of the fleet
    /// (the record is in the shared store, the files are not here) is
    /// reported; once the files are here, it is not.
    #[test]
    fn images_imported_elsewhere_are_reported() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(a.path()).unwrap();
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("k"), b"kernel").unwrap();
        std::fs::write(src.path().join("i"), b"initrd").unwrap();
        let img = crate::images::import_files(
            a.path(),
            &store,
            "t",
            &src.path().join("k"),
            &src.path().join("i"),
        )
        .unwrap();
        store
            .put_profile(&crate::store::Profile {
                name: "default".into(),
                image: img.id.clone(),
                kernel: "vmlinuz".into(),
                initrd: "initrd.img".into(),
                cmdline: String::new(),
                transport: crate::store::Transport::Http,
            })
            .unwrap();
        assert!(missing_images(&store, a.path()).unwrap().is_empty());
        let missing = missing_images(&store, b.path()).unwrap();
        assert_eq!(
            missing,
            [(
                "default".to_string(),
                img.id.clone(),
                vec!["initrd.img".to_string(), "vmlinuz".to_string()]
            )]
        );
    }
}
