//! Imported images and the boot profiles that point at them.

use serde::Serialize;

use super::{Result, StoreError};

/// An imported image: a directory of artifacts under `DATA/images/<id>/`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageRecord {
    /// `<name>-<version>`; also the directory name and the URL segment.
    pub id: String,
    pub name: String,
    pub version: String,
    /// The image's `image.json`, as imported.
    pub manifest: levee_proto::image::ImageManifest,
    pub imported_at: u64,
}

/// How iPXE fetches a profile's kernel and initrd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// HTTP from `--http` (fast; the default).
    Http,
    /// TFTP from `--tftp` (for networks where only TFTP is allowed).
    Tftp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Http => "http",
            Transport::Tftp => "tftp",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<Transport> {
        match s {
            "http" => Ok(Transport::Http),
            "tftp" => Ok(Transport::Tftp),
            other => Err(StoreError::Corrupt(format!("unknown transport `{other}`"))),
        }
    }
}

/// A boot profile: which image a machine boots and with what command line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Profile {
    pub name: String,
    /// Image id (see [`ImageRecord::id`]).
    pub image: String,
    /// Artifact names inside the image.
    pub kernel: String,
    pub initrd: String,
    /// Kernel command-line template; see [`crate::boot_script`] for the
    /// variables it may use.
    pub cmdline: String,
    pub transport: Transport,
}

/// Imported images and the boot profiles that point at them.
pub trait ImageStore {
    fn put_image(&self, image: &ImageRecord) -> Result<()>;
    fn image(&self, id: &str) -> Result<Option<ImageRecord>>;
    fn images(&self) -> Result<Vec<ImageRecord>>;

    fn put_profile(&self, profile: &Profile) -> Result<()>;
    fn profile(&self, name: &str) -> Result<Option<Profile>>;
    fn profiles(&self) -> Result<Vec<Profile>>;
    fn delete_profile(&self, name: &str) -> Result<()>;
}
