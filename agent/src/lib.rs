//! The Levee appliance agent's backup engine: deduplicated, compressed,
//! encrypted, crash-safe backups of local folders and SMB shares.
//!
//! The repository format itself (packs, index, snapshots, trees, key slots)
//! lives in `levee_proto::repo`, shared with the offsite store. This crate
//! holds the chunker, the pipeline, backends, sources, restore targets and
//! the commands; `levee-agent` (src/main.rs) is a thin CLI over them.
//!
//! ```
//! use levee_agent::{commands::backup::{backup, BackupOptions}, progress::Counters, Repository};
//! use levee_proto::repo::KdfParams;
//! let dir = tempfile::tempdir().unwrap();
//! std::fs::write(dir.path().join("hello.txt"), b"hello").unwrap();
//! let repo = Repository::init(&dir.path().join("repo"), b"pw", KdfParams::with_memory(1024), "password", "doc").unwrap();
//! let opts = BackupOptions { sources: vec![dir.path().join("hello.txt").to_string_lossy().into()], ..Default::default() };
//! let s = backup(&repo, &opts, None, &Counters::default()).unwrap();
//! assert_eq!(s.summary.files, 1);
//! ```

pub mod backend;
pub mod blob;
pub mod chunker;
pub mod commands;
pub mod daemon;
pub mod enroll;
pub mod index;
pub mod install;
pub mod lock;
pub mod packer;
pub mod progress;
pub mod repository;
pub mod source;
pub mod target;
pub mod util;

pub use repository::{RepoError, Repository};
