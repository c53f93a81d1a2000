//! The repository's recovery slot (issue 14, disaster recovery): a key
//! slot whose random secret is sealed to the customer's recovery public key
//! and kept, sealed, in the slot itself (`levee_proto::recovery`). It
//! travels with every copy of the repository; only the customer's paper
//! key opens it, on any machine, without the appliance or the server.

use std::path::Path;

use levee_proto::recovery::{self, RecoveryPrivateKey, RecoveryPublicKey, SLOT_CONTEXT};
use levee_proto::repo::{KdfParams, KeySlot};

use crate::backup::backend::{FileKind, ReadBackend, WriteBackend};
use crate::backup::repository::{write_slot, RepoError, Repository};
use crate::util::now_ns;

/// The kind of a recovery slot.
pub const RECOVERY_KIND: &str = "recovery";

/// The label of the recovery slot for `key` (names the key it is for).
pub fn recovery_label(key: &RecoveryPublicKey) -> String {
    format!("recovery key {}", key.fingerprint())
}

/// What [`Repository::ensure_recovery_slot`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum RecoverySlot {
    /// A slot for this key was already there.
    Present,
    /// Added (its file name), after removing the slots of other recovery
    /// keys (their file names).
    Added { slot: String, replaced: Vec<String> },
}

impl Repository {
    /// Makes sure the repository has a recovery slot for `key`, and none
    /// for any other recovery key: the customer replaced that one. (A
    /// removed slot's copies still open the data it could open, as for any
    /// slot: `key rotate` is the answer to a leaked paper key.)
    pub fn ensure_recovery_slot(&self, key: &RecoveryPublicKey) -> Result<RecoverySlot, RepoError> {
        let label = recovery_label(key);
        let slots = self.key_slots()?;
        let recovery: Vec<&(String, KeySlot)> = slots
            .iter()
            .filter(|(_, s)| s.kind == RECOVERY_KIND)
            .collect();
        if recovery
            .iter()
            .any(|(_, s)| s.label == label && s.sealed_secret.is_some())
        {
            return Ok(RecoverySlot::Present);
        }
        // 256 random bits: no KDF cost could make guessing easier or harder,
        // the floor applies all the same.
        let secret = hex::encode(rand::random::<[u8; 32]>());
        let mut slot = KeySlot::create(
            self.key(),
            secret.as_bytes(),
            KdfParams::new_default(),
            RECOVERY_KIND,
            &label,
            now_ns() / 1_000_000_000,
            self.config.version,
        )
        .map_err(|e| RepoError::KeySlot("new".into(), e))?;
        let sealed = recovery::seal(key, secret.as_bytes(), SLOT_CONTEXT)
            .map_err(|e| RepoError::Recovery(e.to_string()))?;
        slot.sealed_secret = Some(sealed);
        let name = write_slot(self.local(), &slot)?;
        let mut replaced = Vec::new();
        for (old, _) in recovery {
            self.local().remove(FileKind::Key, old)?;
            replaced.push(old.clone());
        }
        Ok(RecoverySlot::Added {
            slot: name,
            replaced,
        })
    }

    /// Opens the repository at `path` with the customer's paper key: the
    /// recovery slot's sealed secret, opened, is the slot's password.
    pub fn open_with_recovery(path: &Path, key: &RecoveryPrivateKey) -> Result<Self, RepoError> {
        let local = crate::backup::backend::local::LocalBackend::new(path);
        let names = match local.list(FileKind::Key) {
            Ok(n) => n,
            Err(e) if e.is_not_found() => return Err(RepoError::NotARepository(path.into())),
            Err(e) => return Err(e.into()),
        };
        let mut seen = 0;
        for (name, _) in names {
            let Ok(slot) = local
                .read(FileKind::Key, &name)
                .map_err(RepoError::from)
                .and_then(|b| KeySlot::parse(&b).map_err(|e| RepoError::KeySlot(name.clone(), e)))
            else {
                continue;
            };
            let Some(sealed) = slot.sealed_secret.as_deref() else {
                continue;
            };
            seen += 1;
            match key.open(sealed, SLOT_CONTEXT) {
                Ok(secret) => return Self::open(path, &secret),
                Err(e) => tracing::debug!(slot = %name, error = %e, "recovery slot skipped"),
            }
        }
        Err(RepoError::NoRecoverySlot(seen))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_paper_key_opens_the_repository_and_a_new_key_replaces_the_slot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("repo");
        let kdf = KdfParams::with_memory(1024);
        let repo = Repository::init(&path, &[7u8; 32], kdf, "appliance", "appliance").unwrap();
        let paper = RecoveryPrivateKey::generate();
        assert!(matches!(
            Repository::open_with_recovery(&path, &paper),
            Err(RepoError::NoRecoverySlot(0))
        ));
        let first = repo.ensure_recovery_slot(&paper.public()).unwrap();
        assert!(matches!(first, RecoverySlot::Added { ref replaced, .. } if replaced.is_empty()));
        assert_eq!(
            repo.ensure_recovery_slot(&paper.public()).unwrap(),
            RecoverySlot::Present
        );
        let opened = Repository::open_with_recovery(&path, &paper).unwrap();
        assert_eq!(opened.key().to_bytes(), repo.key().to_bytes());

        // Another customer's paper key opens nothing.
        let stranger = RecoveryPrivateKey::generate();
        assert!(matches!(
            Repository::open_with_recovery(&path, &stranger),
            Err(RepoError::NoRecoverySlot(1))
        ));

        // The customer replaces the key: the old slot goes.
        let second = RecoveryPrivateKey::generate();
        match repo.ensure_recovery_slot(&second.public()).unwrap() {
            RecoverySlot::Added { replaced, .. } => assert_eq!(replaced.len(), 1),
            other => panic!("{other:?}"),
        }
        assert!(Repository::open_with_recovery(&path, &second).is_ok());
        assert!(Repository::open_with_recovery(&path, &paper).is_err());
        // The appliance's own slot still opens.
        assert!(Repository::open(&path, &[7u8; 32]).is_ok());
    }
}
