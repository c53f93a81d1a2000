//! Where the store keeps its files: a directory ([`Disk`], the default,
//! `DATA_DIR/offsite/` or `--dir`) or an S3 bucket ([`S3Files`],
//! `--store-backend s3://...`). Both give the same guarantees
//! (`docs/OFFSITE.md`); the handler speaks only this.

use levee_proto::offsite::{DeletionRequest, FileKind, FileRef, Listed, Namespace};

use super::disk::{Disk, FileState, PruneReport};
use super::s3::S3Files;

#[derive(Clone)]
pub enum Files {
    Dir(Disk),
    S3(S3Files),
}

impl Files {
    /// For logs and messages: the directory or the `s3://` location.
    pub fn describe(&self) -> String {
        match self {
            Files::Dir(d) => d.root().display().to_string(),
            Files::S3(s) => s.url().to_string(),
        }
    }

    pub fn owner(&self, ns: &Namespace) -> std::io::Result<Option<i64>> {
        match self {
            Files::Dir(d) => d.owner(ns),
            Files::S3(s) => s.owner(ns),
        }
    }

    pub fn claim(&self, ns: &Namespace, appliance: i64) -> std::io::Result<i64> {
        match self {
            Files::Dir(d) => d.claim(ns, appliance),
            Files::S3(s) => s.claim(ns, appliance),
        }
    }

    pub fn rebind(&self, ns: &Namespace, appliance: i64) -> std::io::Result<()> {
        match self {
            Files::Dir(d) => d.rebind(ns, appliance),
            Files::S3(s) => s.rebind(ns, appliance),
        }
    }

    pub fn state(&self, f: &FileRef) -> std::io::Result<FileState> {
        match self {
            Files::Dir(d) => d.state(f),
            Files::S3(s) => s.state(f),
        }
    }

    pub fn verify(&self, f: &FileRef, now: u64) -> std::io::Result<Option<bool>> {
        match self {
            Files::Dir(d) => d.verify(f, now),
            Files::S3(s) => s.verify(f, now),
        }
    }

    pub fn list(&self, ns: &Namespace, kind: FileKind) -> std::io::Result<Vec<Listed>> {
        match self {
            Files::Dir(d) => d.list(ns, kind),
            Files::S3(s) => s.list(ns, kind),
        }
    }

    pub fn add_deletion(
        &self,
        ns: &Namespace,
        req: &DeletionRequest,
        now: u64,
    ) -> std::io::Result<()> {
        match self {
            Files::Dir(d) => d.add_deletion(ns, req, now),
            Files::S3(s) => s.add_deletion(ns, req, now),
        }
    }

    pub fn usage(&self, customer: &str) -> std::io::Result<u64> {
        match self {
            Files::Dir(d) => d.usage(customer),
            Files::S3(s) => s.usage(customer),
        }
    }
}

/// Carries out the deletion requests older than `grace_secs` (all of them
/// with 0), and drops uploads abandoned for that long.
pub fn prune(
    files: &Files,
    now: u64,
    grace_secs: u64,
    dry_run: bool,
) -> std::io::Result<PruneReport> {
    match files {
        Files::Dir(d) => super::disk::prune(d, now, grace_secs, dry_run),
        Files::S3(s) => s.prune(now, grace_secs, dry_run),
    }
}
