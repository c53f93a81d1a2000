//! Release channels: what the server publishes in each channel's TUF
//! targets metadata and what the agent reads back from it.
//!
//! Every target of a channel carries, under the custom key [`CUSTOM_KEY`],
//! a [`ReleaseInfo`]: which image version it belongs to, the release number
//! that orders releases (image versions such as `2026.12.02-3f2a9c1` have no
//! order), and the lowest release it may update from. The agent takes these
//! from signed metadata only, so a server can never talk it into an older
//! or unsigned image.

use serde::{Deserialize, Serialize};

/// The key under a TUF target's `custom` object that holds [`ReleaseInfo`].
pub const CUSTOM_KEY: &str = "levee";

/// Channel-relative paths of the plain-HTTP listener.
pub mod paths {
    /// `GET /releases/<channel>/metadata/<file>` and
    /// `GET /releases/<channel>/targets/<file>` (with `Range`).
    pub const RELEASES_PREFIX: &str = "/releases/";
    pub const METADATA: &str = "metadata";
    pub const TARGETS: &str = "targets";
}

/// Where the appliance image keeps the TUF root it trusts first.
pub const BAKED_ROOT: &str = "/usr/share/levee/tuf/root.json";

/// What the server says about one target of a channel (TUF `custom`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseInfo {
    /// The image version (`image.json`'s `version`).
    pub version: String,
    /// The release number: assigned once at publish, the same in every
    /// channel the version is promoted to, strictly increasing.
    pub release: u64,
    /// The lowest release an appliance may run to update to this one
    /// (0 or 1: any, also an appliance whose own release is unknown).
    pub min_release: u64,
    /// Which artifact of the image this target is (`rootfs.squashfs`,
    /// `vmlinuz`, `initrd.img`, `image.json`).
    pub artifact: String,
}

/// The target name of one artifact of one version: `<version>.<artifact>` (flat: TUF clients differ on sub-directories under consistent snapshots).
pub fn target_name(version: &str, artifact: &str) -> String {
    format!("{version}.{artifact}")
}

/// Why a channel name is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChannelNameError {
    #[error("channel name `{0}` is not 1-63 characters of a-z, 0-9, `-` and `_` starting with a letter or digit")]
    Syntax(String),
    #[error("channel name `{0}` is reserved (the directory beside the channels holding keys and root metadata)")]
    Reserved(String),
}

/// Checks a channel name: it becomes a directory name and a URL segment.
pub fn validate_channel(name: &str) -> Result<(), ChannelNameError> {
    let ok_first = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let ok_rest = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !ok_first || !ok_rest || name.len() > 63 {
        return Err(ChannelNameError::Syntax(name.into()));
    }
    if matches!(name, "keys" | "root") {
        return Err(ChannelNameError::Reserved(name.into()));
    }
    Ok(())
}

/// Is `current` allowed to update to `offered`? `None` if so, else why not.
/// A release is never replaced by itself or an older one (a rollback attack
/// or a stale server), and never skips past its `min_release` floor.
pub fn update_refusal(current: u64, offered: &ReleaseInfo) -> Option<String> {
    if offered.release <= current {
        return Some(format!(
            "release {} ({}) is not newer than the running release {current}",
            offered.release, offered.version
        ));
    }
    if offered.min_release > 1 && current < offered.min_release {
        return Some(format!(
            "release {} ({}) may only update from release {} or later; this appliance runs release {current}",
            offered.release, offered.version, offered.min_release
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names() {
        assert!(validate_channel("stable").is_ok());
        assert!(validate_channel("beta-2").is_ok());
        assert!(validate_channel("").is_err());
        assert!(validate_channel("-x").is_err());
        assert!(validate_channel("../x").is_err());
        assert!(validate_channel("Stable").is_err());
        assert_eq!(
            validate_channel("keys"),
            Err(ChannelNameError::Reserved("keys".into()))
        );
        assert!(validate_channel(&"a".repeat(64)).is_err());
    }

    #[test]
    fn update_order() {
        let r = |release, min_release| ReleaseInfo {
            version: "v".into(),
            release,
            min_release,
            artifact: "rootfs.squashfs".into(),
        };
        assert_eq!(update_refusal(3, &r(4, 1)), None);
        assert!(update_refusal(4, &r(4, 1)).unwrap().contains("not newer"));
        assert!(update_refusal(5, &r(4, 1)).unwrap().contains("not newer"));
        assert!(update_refusal(2, &r(4, 3))
            .unwrap()
            .contains("only update from"));
        assert_eq!(update_refusal(0, &r(1, 0)), None);
        // An appliance whose release is unknown (0) takes floor-less releases.
        assert_eq!(update_refusal(0, &r(2, 1)), None);
        assert!(update_refusal(0, &r(2, 2)).is_some());
    }
}
