//! The Levee appliance agent.
//!
//! Two halves, side by side (the way rustic keeps `rustic_core` apart from
//! its CLI):
//! - [`backup`]: the backup engine (chunker, packs, index, repository,
//!   sources, restore targets and one function per command). It knows
//!   nothing about enrollment or the server.
//! - the appliance's own life: [`enroll`] (key, CSR, mTLS client),
//!   [`install`] (disk, GPT, GRUB A/B), [`daemon`] (`levee-agent run`:
//!   heartbeats, config refresh, scheduled jobs) over [`schedule`], and
//!   [`runs`] (run reports, spooled and sent to the server).
//!
//! The repository format itself (packs, index, snapshots, trees, key slots)
//! lives in `levee_proto::repo`, shared with the offsite store.
//! `levee-agent` (src/main.rs) is a thin CLI over this library.
//!
//! ```
//! use levee_agent::backup::{commands::backup::{backup, BackupOptions}, progress::Counters, Repository};
//! use levee_proto::repo::KdfParams;
//! let dir = tempfile::tempdir().unwrap();
//! std::fs::write(dir.path().join("hello.txt"), b"hello").unwrap();
//! let repo = Repository::init(&dir.path().join("repo"), b"pw", KdfParams::with_memory(1024), "password", "doc").unwrap();
//! let opts = BackupOptions { sources: vec![dir.path().join("hello.txt").to_string_lossy().into()], ..Default::default() };
//! let s = backup(&repo, &opts, None, &Counters::default()).unwrap();
//! assert_eq!(s.summary.files, 1);
//! ```

pub mod activity;
pub mod asked_restore;
pub mod backup;
pub mod daemon;
pub mod enroll;
pub mod http_client;
pub mod install;
pub mod logging;
pub mod recover;
pub mod replicate;
pub mod runs;
pub mod schedule;
pub mod update;
pub mod util;

pub use backup::{RepoError, Repository};
