//! One test binary for the backup engine (STYLE.md: `tests/tests.rs` plus
//! modules). SMB tests start their own Samba on loopback and fail loudly if
//! it cannot be started.

mod corruption;
mod crash;
mod damaged;
mod e2e_local;
mod formats;
mod hardening;
mod keys_config;
mod locks;
mod prune_converges;
mod recovery;
mod replicate_s3;
mod restore_dups;
mod restore_parallel;
mod restore_safety;
mod rotate;
mod samba;
mod smb;
mod smb_acl;
mod smb_encryption;
mod tree_packs;
mod unfetched;
mod util;
mod xattrs;
