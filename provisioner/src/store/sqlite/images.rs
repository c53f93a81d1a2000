//! SqliteStore: images.

use rusqlite::{params, OptionalExtension, Row};

use super::{corrupt, Cached, SqliteStore};
use crate::store::{
    validate_name, ImageRecord, ImageStore, Profile, Result, StoreError, Transport,
};

pub(super) fn image_row(row: &Row) -> rusqlite::Result<ImageRecord> {
    let manifest: String = row.get(3)?;
    Ok(ImageRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        version: row.get(2)?,
        manifest: serde_json::from_str(&manifest).map_err(corrupt)?,
        imported_at: row.get::<_, i64>(4)? as u64,
    })
}

pub(super) fn profile_row(row: &Row) -> rusqlite::Result<Profile> {
    let transport: String = row.get(5)?;
    Ok(Profile {
        name: row.get(0)?,
        image: row.get(1)?,
        kernel: row.get(2)?,
        initrd: row.get(3)?,
        cmdline: row.get(4)?,
        transport: Transport::parse(&transport).map_err(corrupt)?,
    })
}

impl ImageStore for SqliteStore {
    fn put_image(&self, image: &ImageRecord) -> Result<()> {
        let manifest = serde_json::to_string(&image.manifest)
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        self.lock().execute_cached(
            "INSERT INTO images (id, name, version, manifest, imported_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(id) DO UPDATE SET manifest = excluded.manifest, imported_at = excluded.imported_at",
            params![image.id, image.name, image.version, manifest, image.imported_at as i64],
        )?;
        Ok(())
    }

    fn image(&self, id: &str) -> Result<Option<ImageRecord>> {
        Ok(self
            .lock()
            .query_row_cached(
                "SELECT id, name, version, manifest, imported_at FROM images WHERE id = ?1",
                [id],
                image_row,
            )
            .optional()?)
    }

    fn images(&self) -> Result<Vec<ImageRecord>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT id, name, version, manifest, imported_at FROM images ORDER BY imported_at, id",
        )?;
        let rows = stmt.query_map([], image_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn put_profile(&self, p: &Profile) -> Result<()> {
        validate_name("profile", &p.name)?;
        let conn = self.lock();
        let known: Option<String> = conn
            .query_row_cached("SELECT id FROM images WHERE id = ?1", [&p.image], |r| {
                r.get(0)
            })
            .optional()?;
        if known.is_none() {
            return Err(StoreError::NotFound {
                what: "image",
                name: p.image.clone(),
                hint: ": import it first with `levee image import DIR`",
            });
        }
        conn.execute_cached(
            "INSERT INTO profiles (name, image, kernel, initrd, cmdline, transport)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(name) DO UPDATE SET image = excluded.image, kernel = excluded.kernel,
               initrd = excluded.initrd, cmdline = excluded.cmdline, transport = excluded.transport",
            params![p.name, p.image, p.kernel, p.initrd, p.cmdline, p.transport.as_str()],
        )?;
        Ok(())
    }

    fn profile(&self, name: &str) -> Result<Option<Profile>> {
        Ok(self
            .lock()
            .query_row_cached(
                "SELECT name, image, kernel, initrd, cmdline, transport FROM profiles WHERE name = ?1",
                [name],
                profile_row,
            )
            .optional()?)
    }

    fn profiles(&self) -> Result<Vec<Profile>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT name, image, kernel, initrd, cmdline, transport FROM profiles ORDER BY name",
        )?;
        let rows = stmt.query_map([], profile_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn delete_profile(&self, name: &str) -> Result<()> {
        let conn = self.lock();
        let users: i64 = conn.query_row_cached(
            "SELECT COUNT(*) FROM appliances WHERE profile = ?1",
            [name],
            |r| r.get(0),
        )?;
        if users > 0 {
            return Err(StoreError::Invalid(format!(
                "profile `{name}` is used by {users} appliance(s): move them with `levee appliance set MAC --profile OTHER` first"
            )));
        }
        if conn.execute_cached("DELETE FROM profiles WHERE name = ?1", [name])? == 0 {
            return Err(StoreError::NotFound {
                what: "profile",
                name: name.to_string(),
                hint: ": `levee profile list` shows the profiles",
            });
        }
        Ok(())
    }
}
