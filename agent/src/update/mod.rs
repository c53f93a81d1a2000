//! Updates from the signed release channel.
//!
//! The pipeline (docs/UPDATES.md): `check metadata` ([`client`]: TUF
//! through tough over our own [`transport`]) -> `fetch targets` -> `write
//! slot` ([`fetch`], [`apply`]) -> `switch` ([`slot`]) -> `health` ->
//! `commit` (the daemon's `update_step`), each decision a pure function
//! in [`decide`].
//!
//! Everything the agent acts on comes from metadata signed under the root
//! baked into the image: a server (or anyone between it and the appliance)
//! can delay an update, never choose an unsigned or older image.

pub mod apply;
pub mod client;
pub mod decide;
pub mod delta;
pub mod fetch;
pub mod schedule;
pub mod slot;
pub mod transport;

pub use client::{check, ChannelOptions, Decision, Offer, Running, TargetRef};
pub use transport::{HttpTransport, TransportOptions};

use std::path::Path;

/// The kind of attack or fault an update was refused for; its name goes
/// into the agent's report and log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Refusal {
    /// Metadata older than what was already trusted, or a release not newer
    /// than the running one.
    Rollback,
    /// Expired metadata (an attacker replaying old metadata).
    Freeze,
    /// Metadata from different moments combined (hash, length or version
    /// mismatch between roles).
    MixAndMatch,
    /// A target whose bytes are not what the targets metadata signs.
    ArbitraryPackage,
    /// A response larger than its limit.
    EndlessData,
    /// A response too slow or past its deadline.
    SlowRetrieval,
    /// Too few valid signatures (a wrong, unknown or revoked key).
    Signature,
    /// The system clock went backwards since the last check.
    ClockBackward,
    /// The release needs a newer running release first (`min_release`).
    Floor,
    /// The server named a release the channel does not sign.
    NotSigned,
    /// The release lacks an artifact or its manifest disagrees.
    Incomplete,
    /// The server could not be reached or answered an error.
    Unreachable,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Rollback => "rollback",
            Refusal::Freeze => "freeze",
            Refusal::MixAndMatch => "mix-and-match",
            Refusal::ArbitraryPackage => "arbitrary package",
            Refusal::EndlessData => "endless data",
            Refusal::SlowRetrieval => "slow retrieval",
            Refusal::Signature => "signature threshold",
            Refusal::ClockBackward => "clock went backwards",
            Refusal::Floor => "release floor",
            Refusal::NotSigned => "not signed",
            Refusal::Incomplete => "incomplete release",
            Refusal::Unreachable => "unreachable",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// Refused: the system stays on its running release.
    #[error("update refused ({}): {detail}", kind.as_str())]
    Refused { kind: Refusal, detail: String },
    /// Local set-up (state directory, trusted root, configuration).
    #[error("update set-up: {0}")]
    Setup(String),
}

impl UpdateError {
    pub fn refused(kind: Refusal, detail: impl Into<String>) -> UpdateError {
        UpdateError::Refused {
            kind,
            detail: detail.into(),
        }
    }

    /// The refusal kind, if this is one.
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            UpdateError::Refused { kind, .. } => Some(*kind),
            UpdateError::Setup(_) => None,
        }
    }

    /// Names a tough error by the attack it stopped, keeping the full
    /// message (with every cause) as the detail.
    pub fn from_tough(stage: client::Stage, e: &tough::error::Error) -> UpdateError {
        let detail = levee_proto::error_chain(e);
        UpdateError::refused(classify(stage, &detail), detail)
    }
}

/// tough's errors are one large enum; its messages are stable and say
/// what failed. Transport errors carry our own [`transport::FetchError`]
/// texts.
fn classify(stage: client::Stage, msg: &str) -> Refusal {
    let m = msg.to_ascii_lowercase();
    if m.contains("endless data") || m.contains("maximum size") {
        Refusal::EndlessData
    } else if m.contains("slow retrieval") {
        Refusal::SlowRetrieval
    } else if m.contains("stepped backward") {
        Refusal::ClockBackward
    } else if m.contains("expired") {
        Refusal::Freeze
    } else if m.contains("when we had previously fetched version") || m.contains("older") {
        Refusal::Rollback
    } else if m.contains("threshold") || m.contains("signature") || m.contains("failed to verify") {
        Refusal::Signature
    } else if m.contains("hash mismatch") || m.contains("version mismatch") || m.contains("length")
    {
        match stage {
            client::Stage::Metadata => Refusal::MixAndMatch,
            client::Stage::Target => Refusal::ArbitraryPackage,
        }
    } else {
        Refusal::Unreachable
    }
}

/// Writes `bytes` to `path` through a temporary file, fsync and rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torn_datastore_files_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("timestamp.json"), b"").unwrap();
        std::fs::write(dir.path().join("snapshot.json"), b"{\"signed\": {").unwrap();
        std::fs::write(
            dir.path().join("latest_known_time.json"),
            b"\"2026-12-03T08:00:00Z\"",
        )
        .unwrap();
        let dropped = client::drop_torn_files(dir.path()).unwrap();
        assert_eq!(dropped.len(), 2);
        assert!(dir.path().join("latest_known_time.json").exists());
        assert!(!dir.path().join("timestamp.json").exists());
    }

    #[test]
    fn tough_messages_name_the_attack() {
        use client::Stage::*;
        assert_eq!(
            classify(Metadata, "timestamp metadata is expired"),
            Refusal::Freeze
        );
        assert_eq!(
            classify(
                Metadata,
                "Found version 1 of timestamp metadata when we had previously fetched version 3"
            ),
            Refusal::Rollback
        );
        assert_eq!(
            classify(Metadata, "Failed to verify root metadata: Signature threshold of 2 not met for role root (1 valid signatures)"),
            Refusal::Signature
        );
        assert_eq!(
            classify(
                Metadata,
                "Hash mismatch for targets.json: calculated 00, expected 11"
            ),
            Refusal::MixAndMatch
        );
        assert_eq!(
            classify(Target, "Hash mismatch for x: calculated 00, expected 11"),
            Refusal::ArbitraryPackage
        );
        assert_eq!(
            classify(
                Metadata,
                "Maximum size 65536 (specified by max_timestamp_size) exceeded"
            ),
            Refusal::EndlessData
        );
        assert_eq!(
            classify(Metadata, "slow retrieval: http://x sent 3 bytes in 4 s"),
            Refusal::SlowRetrieval
        );
        assert_eq!(
            classify(Metadata, "connection refused"),
            Refusal::Unreachable
        );
    }
}
