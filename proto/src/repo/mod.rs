//! The Levee repository format: everything that is persisted, as pure
//! `parse`/`to_bytes` code with no I/O, shared by the appliance agent and the
//! offsite store. The byte layouts are documented in `docs/REPOSITORY.md`;
//! the frozen magic numbers live in [`file_formats`].

pub mod config;
pub mod crypto;
pub mod file_formats;
pub mod frame;
mod id;
pub mod index;
pub mod keyslot;
pub mod pack;
pub mod snapshot;
pub mod tree;

pub use config::{ConfigError, RepoConfig};
pub use crypto::{Cipher, CryptoError, MasterKey};
pub use frame::FrameError;
pub use id::{BlobId, Id, IdParseError, PackId};
pub use index::{IndexError, IndexFile, IndexPack};
pub use keyslot::{KdfParams, KeySlot, KeySlotError};
pub use pack::{BlobEntry, BlobKind, Compression, PackError, PackHeader};
pub use snapshot::{Snapshot, SnapshotError, SnapshotSummary};
pub use tree::{name_is_plain, Node, NodeKind, Tree, TreeError, TreeProblem};
