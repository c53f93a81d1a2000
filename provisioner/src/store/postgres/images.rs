//! PgStore: images.

use tokio_postgres::Row;

use super::{corrupt, execute, query, query_one, query_opt, PgStore};
use crate::store::{
    validate_name, ImageRecord, ImageStore, Profile, Result, StoreError, Transport,
};

pub(super) fn image_row(row: &Row) -> Result<ImageRecord> {
    let manifest: String = row.try_get(3)?;
    Ok(ImageRecord {
        id: row.try_get(0)?,
        name: row.try_get(1)?,
        version: row.try_get(2)?,
        manifest: serde_json::from_str(&manifest).map_err(corrupt)?,
        imported_at: row.try_get::<_, i64>(4)? as u64,
    })
}

pub(super) fn profile_row(row: &Row) -> Result<Profile> {
    let transport: String = row.try_get(5)?;
    Ok(Profile {
        name: row.try_get(0)?,
        image: row.try_get(1)?,
        kernel: row.try_get(2)?,
        initrd: row.try_get(3)?,
        cmdline: row.try_get(4)?,
        transport: Transport::parse(&transport)?,
    })
}

impl ImageStore for PgStore {
    fn put_image(&self, image: &ImageRecord) -> Result<()> {
        let manifest = serde_json::to_string(&image.manifest)
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        self.block(async {
            let c = self.conn().await?;
            execute(&c,
                "INSERT INTO images (id, name, version, manifest, imported_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT(id) DO UPDATE SET manifest = excluded.manifest, imported_at = excluded.imported_at",
                &[&image.id, &image.name, &image.version, &manifest, &(image.imported_at as i64)],
            ).await?;
            Ok(())
        })
    }

    fn image(&self, id: &str) -> Result<Option<ImageRecord>> {
        self.block(async {
            let c = self.conn().await?;
            query_opt(
                &c,
                "SELECT id, name, version, manifest, imported_at FROM images WHERE id = $1",
                &[&id],
            )
            .await?
            .map(|r| image_row(&r))
            .transpose()
        })
    }

    fn images(&self) -> Result<Vec<ImageRecord>> {
        self.block(async {
            let c = self.conn().await?;
            query(&c,
                "SELECT id, name, version, manifest, imported_at FROM images ORDER BY imported_at, id",
                &[],
            ).await?
            .iter()
            .map(image_row)
            .collect()
        })
    }

    fn put_profile(&self, p: &Profile) -> Result<()> {
        validate_name("profile", &p.name)?;
        self.block(async {
            let c = self.conn().await?;
            if query_opt(&c, "SELECT id FROM images WHERE id = $1", &[&p.image]).await?.is_none() {
                return Err(StoreError::NotFound {
                    what: "image",
                    name: p.image.clone(),
                    hint: ": import it first with `levee image import DIR`",
                });
            }
            execute(&c,
                "INSERT INTO profiles (name, image, kernel, initrd, cmdline, transport)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT(name) DO UPDATE SET image = excluded.image, kernel = excluded.kernel,
                   initrd = excluded.initrd, cmdline = excluded.cmdline, transport = excluded.transport",
                &[&p.name, &p.image, &p.kernel, &p.initrd, &p.cmdline, &p.transport.as_str()],
            ).await?;
            Ok(())
        })
    }

    fn profile(&self, name: &str) -> Result<Option<Profile>> {
        self.block(async {
            let c = self.conn().await?;
            query_opt(&c,
                "SELECT name, image, kernel, initrd, cmdline, transport FROM profiles WHERE name = $1",
                &[&name],
            ).await?
            .map(|r| profile_row(&r))
            .transpose()
        })
    }

    fn profiles(&self) -> Result<Vec<Profile>> {
        self.block(async {
            let c = self.conn().await?;
            query(&c,
                "SELECT name, image, kernel, initrd, cmdline, transport FROM profiles ORDER BY name",
                &[],
            ).await?
            .iter()
            .map(profile_row)
            .collect()
        })
    }

    fn delete_profile(&self, name: &str) -> Result<()> {
        self.block(async {
            let c = self.conn().await?;
            let users: i64 = query_one(&c, "SELECT COUNT(*) FROM appliances WHERE profile = $1", &[&name]).await?
                .try_get(0)?;
            if users > 0 {
                return Err(StoreError::Invalid(format!(
                    "profile `{name}` is used by {users} appliance(s): move them with `levee appliance set MAC --profile OTHER` first"
                )));
            }
            if execute(&c, "DELETE FROM profiles WHERE name = $1", &[&name]).await? == 0 {
                return Err(StoreError::NotFound {
                    what: "profile",
                    name: name.to_string(),
                    hint: ": `levee profile list` shows the profiles",
                });
            }
            Ok(())
        })
    }
}
