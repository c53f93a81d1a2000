//! What replication needs of a target, whatever it is: a Levee offsite
//! store ([`super::StoreClient`], several nodes) or an S3 bucket
//! ([`super::S3Target`]). The run (`super::sync_target`) and restores
//! from offsite speak only this.

use std::collections::BTreeMap;

use levee_proto::offsite::{DeletionRequest, FileKind};

use super::StoreError;

/// What a target holds: name -> size, by kind.
pub type Listing = BTreeMap<FileKind, BTreeMap<String, u64>>;

/// `read(offset, len)`: local bytes of the file being uploaded.
pub type ReadAt<'a> = &'a dyn Fn(u64, usize) -> Result<Vec<u8>, String>;

/// `Sync`: a run uploads several files at once ([`super::parallel`]);
/// `Send`: a repository keeps its targets as its pack source.
pub trait Target: Send + Sync {
    /// Everything the target holds of this repository.
    fn list_all(&self) -> Result<Listing, StoreError>;

    /// Uploads one file of `size` bytes in parts of `part` bytes, resuming
    /// after what the target holds; never replaces a file the target has
    /// (unless [`Target::verify`] found it corrupt). Returns the
    /// request-body bytes sent.
    fn upload(
        &self,
        kind: FileKind,
        name: &str,
        size: u64,
        part: u64,
        read: ReadAt<'_>,
    ) -> Result<u64, StoreError>;

    /// Reads `name` back and checks it against its name. `Ok(false)`: it
    /// is corrupt, and may be uploaded again.
    fn verify(&self, kind: FileKind, name: &str) -> Result<bool, StoreError>;

    /// Reads a whole file.
    fn download(&self, kind: FileKind, name: &str) -> Result<Vec<u8>, StoreError>;

    /// [`Target::download`] under a download cap. By default the whole file
    /// arrives at full speed and the bucket is paid after (the average
    /// holds, not the peak); a Levee store paces the body as it arrives.
    fn download_paced(
        &self,
        kind: FileKind,
        name: &str,
        bucket: &super::Bucket,
    ) -> Result<Vec<u8>, StoreError> {
        let bytes = self.download(kind, name)?;
        bucket.take(bytes.len());
        Ok(bytes)
    }

    /// Asks for files to be deleted after the target's grace period.
    /// `Ok(false)`: this target takes no deletions from the appliance.
    fn request_deletion(&self, req: &DeletionRequest) -> Result<bool, StoreError>;

    /// Request-body bytes handed over so far, failed requests included.
    fn total_sent(&self) -> u64;
}

impl Target for super::StoreClient {
    fn list_all(&self) -> Result<Listing, StoreError> {
        super::StoreClient::list_all(self)
    }

    fn upload(
        &self,
        kind: FileKind,
        name: &str,
        size: u64,
        part: u64,
        read: ReadAt<'_>,
    ) -> Result<u64, StoreError> {
        super::StoreClient::upload(self, kind, name, size, part, read)
    }

    /// Read back here, not taken on the store's word (someone with write
    /// access to a store could make it vouch for anything). A file that
    /// does not match goes to the store's own check, which quarantines it
    /// so that the create-only store takes it again; a store whose check
    /// passes what it served corrupt is an error, not a success.
    fn verify(&self, kind: FileKind, name: &str) -> Result<bool, StoreError> {
        let intact = match super::StoreClient::download(self, kind, name) {
            Ok(bytes) => levee_proto::repo::crypto::file_id(&bytes).to_hex() == name,
            Err(StoreError::Refused { status: 404, .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        if intact {
            return Ok(true);
        }
        if super::StoreClient::verify(self, kind, name)? {
            return Err(StoreError::Malformed(format!(
                "the store served {}/{name} with other contents than its name, yet its own check passes it",
                kind.as_str()
            )));
        }
        Ok(false)
    }

    fn download(&self, kind: FileKind, name: &str) -> Result<Vec<u8>, StoreError> {
        super::StoreClient::download(self, kind, name)
    }

    fn download_paced(
        &self,
        kind: FileKind,
        name: &str,
        bucket: &super::Bucket,
    ) -> Result<Vec<u8>, StoreError> {
        super::StoreClient::download_with(self, kind, name, Some(bucket))
    }

    fn request_deletion(&self, req: &DeletionRequest) -> Result<bool, StoreError> {
        super::StoreClient::request_deletion(self, req).map(|()| true)
    }

    fn total_sent(&self) -> u64 {
        super::StoreClient::total_sent(self)
    }
}
