//! Where a restore writes: a local directory or an SMB share.

pub mod beneath;
mod direct;
pub mod local;
pub mod smb;

use levee_proto::repo::Node;

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Smb(String),
}

/// A file being written, front to back.
pub trait FileSink: Send {
    fn write(&mut self, data: &[u8]) -> Result<(), TargetError>;
    /// `n` zero bytes; a local target leaves a hole (sparse files stay sparse).
    fn zeros(&mut self, n: u64) -> Result<(), TargetError>;
    /// Completes the file and applies its times and attributes.
    fn finish(self: Box<Self>, node: &Node) -> Result<(), TargetError>;
}

pub trait Target: Send + Sync {
    fn mkdir(&self, path: &str) -> Result<(), TargetError>;
    /// Size and mtime of an existing file, for `--overwrite`.
    fn existing(&self, path: &str) -> Option<(u64, i64)>;
    /// The mtime [`Target::existing`] reports for a file restored with
    /// mtime `ns` (an SMB share keeps 100 ns steps), so `--overwrite
    /// if-changed` knows a file it restored.
    fn kept_mtime(&self, ns: i64) -> i64 {
        ns
    }
    /// A new file of `size` bytes once complete (a hint: how to write it).
    fn create(&self, path: &str, size: u64) -> Result<Box<dyn FileSink>, TargetError>;
    /// Makes `path` (with `node`'s metadata) a copy of `from`, a file this
    /// restore wrote with the same contents, without going back to the
    /// repository. `Ok(false)`: not possible here (the caller restores it
    /// from the repository instead).
    fn copy_restored(&self, _from: &str, _path: &str, _node: &Node) -> Result<bool, TargetError> {
        Ok(false)
    }
    fn symlink(&self, path: &str, node: &Node) -> Result<(), TargetError>;
    /// Removes the temporary files a restore that was killed left in
    /// directory `dir` (see `local::temp_name`); how many. Where a target
    /// has none, nothing.
    fn sweep_stale(&self, _dir: &str) -> Result<u64, TargetError> {
        Ok(0)
    }
    /// Times, mode and attributes of a directory (after its contents).
    fn set_dir_meta(&self, path: &str, node: &Node) -> Result<(), TargetError>;
    fn parallelism(&self) -> usize;
    /// Makes everything written so far durable (once, at the end of a
    /// restore: per-file fsyncs would cost a journal commit per file).
    fn sync(&self) -> Result<(), TargetError> {
        Ok(())
    }
    /// Whether `A` and `a` are the same name here (SMB shares).
    fn case_insensitive(&self) -> bool {
        false
    }
    /// What was carried over beyond contents and times, and the warnings.
    fn report(&self) -> TargetReport {
        TargetReport::default()
    }
}

/// Metadata a target restored, or could only partly restore (warnings:
/// never fatal, the data is there).
#[derive(Debug, Default)]
pub struct TargetReport {
    /// Windows security descriptors written back (SMB targets).
    pub security_descriptors: u64,
    /// Extended attributes written back (local targets).
    pub xattrs: u64,
    pub warnings: Vec<String>,
}

/// `replace`: whether a file or symlink where a directory belongs is
/// removed to make room (see `LocalTarget::new`).
pub fn open_target(
    spec: &str,
    smb_password: Option<&str>,
    replace: bool,
) -> Result<Box<dyn Target>, TargetError> {
    if spec.starts_with("smb://") {
        Ok(Box::new(smb::SmbTarget::connect(spec, smb_password)?))
    } else {
        Ok(Box::new(local::LocalTarget::new(spec, replace)?))
    }
}
