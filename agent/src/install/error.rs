//! Why an install (or a slot command) failed. The `Display` text is what
//! ops see as the appliance's `failed` reason, so it names the disk, the
//! file or the command and what was wrong.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// No disk qualifies; the text names every disk and why it was refused.
    #[error("no disk to install on: {0}")]
    NoDisk(String),
    #[error("install plan: {0}")]
    Plan(String),
    #[error("{path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error("download {url}: {reason}")]
    Download { url: String, reason: String },
    #[error("{what}: sha256 mismatch: expected {expected}, got {got}")]
    Checksum {
        what: String,
        expected: String,
        got: String,
    },
    #[error("disk layout: {0}")]
    Layout(String),
    #[error("boot loader: {0}")]
    Bootloader(String),
    #[error("boot environment {path}: {reason}")]
    Env { path: PathBuf, reason: String },
}

impl InstallError {
    pub(crate) fn io(
        path: impl AsRef<Path>,
        what: &'static str,
    ) -> impl FnOnce(std::io::Error) -> InstallError {
        let path = path.as_ref().to_path_buf();
        move |source| InstallError::Io { path, what, source }
    }
}
