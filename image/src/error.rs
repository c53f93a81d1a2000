//! The one error type of the image builder.

use std::path::PathBuf;

/// Everything that can stop a build. Messages name the file, package,
/// module or manifest line at fault, since an operator reads them.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Bad YAML, or a value of the wrong type.
    #[error("{}:{line}:{column}: {message}", file.display())]
    Syntax {
        file: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// Well-formed YAML whose content is not acceptable.
    #[error("{}:{line}: {message}", file.display())]
    Invalid {
        file: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{}:{line}: unknown package `{package}`: {detail}", manifest.display())]
    UnknownPackage {
        manifest: PathBuf,
        line: usize,
        package: String,
        detail: String,
    },
    #[error("{}:{line}: overlay directory {} does not exist", manifest.display(), path.display())]
    MissingOverlay {
        manifest: PathBuf,
        line: usize,
        path: PathBuf,
    },
    #[error("{}:{line}: kernel module `{module}` is not in {kernel}", manifest.display())]
    UnknownModule {
        manifest: PathBuf,
        line: usize,
        module: String,
        kernel: String,
    },
    #[error("agent binary {} not found (build it with `cargo build --release -p levee-agent` or pass --agent)", path.display())]
    MissingAgent { path: PathBuf },
    #[error("--trust-root {path}: {reason}; give the root.json that `levee release keys init` wrote (OFFLINE_DIR/root.json)")]
    TrustRoot { path: PathBuf, reason: String },
    #[error("`{tool}` is not installed; install the Debian package `{package}`")]
    ToolMissing { tool: String, package: String },
    #[error("`{command}` failed ({status}):\n{stderr}")]
    Tool {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("building an image needs root (mmdebstrap in root mode, file ownership in the image)")]
    NotRoot,
    #[error("{}: {message}", path.display())]
    Lock { path: PathBuf, message: String },
    #[error("the packages resolved now differ from the lock file {}: {details}; re-run with --refresh-lock to accept the mirror's current versions", path.display())]
    LockMismatch { path: PathBuf, details: String },
    #[error("SOURCE_DATE_EPOCH `{0}` is not a number of seconds")]
    SourceDateEpoch(String),
}

impl ImageError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ImageError {
        let path = path.into();
        move |source| ImageError::Io { path, source }
    }
}
