//! The backup engine: deduplicated, compressed, encrypted, crash-safe
//! backups of local folders and SMB shares, and everything that reads them
//! back.
//!
//! A backup flows top-down through these modules: `source` (walk local or
//! SMB entries) -> `chunker` (content-defined cut points) -> `blob`
//! (compress, encrypt, frame) -> `packer` (packs on a writer thread) ->
//! `index` and `repository` (commit: index, then snapshot). `backend` is
//! where repository files are stored, `lock` keeps concurrent commands
//! apart, `target` is where a restore writes, and `commands` holds one
//! function per CLI verb (`backup`, `restore`, `check`, `prune`, ...).
//!
//! The on-disk format itself (packs, index, snapshots, trees, key slots)
//! lives in `levee_proto::repo`, shared with the offsite store.

pub mod backend;
pub mod blob;
pub mod chunker;
pub mod commands;
pub mod index;
pub mod lock;
pub mod packer;
pub mod progress;
pub mod recovery;
pub mod repository;
pub mod source;
pub mod target;
pub mod unfetched;

pub use repository::{RepoError, Repository};
