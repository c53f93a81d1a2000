//! The root file system: stripping the bootstrapped tree, laying the
//! modules, overlay, agent and os-release in, and packing it as a
//! reproducible zstd squashfs.

use std::path::Path;
use std::process::Command;

use crate::error::ImageError;
use crate::util;

/// Paths removed from every image: the package manager and its state,
/// documentation, manuals, locales, logs and caches. Copyright files stay
/// (licence notices are not documentation).
const STRIP: &[&str] = &[
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/i18n",
    "usr/share/lintian",
    "usr/share/linda",
    "usr/share/bug",
    "usr/share/dpkg",
    "usr/share/debconf",
    "usr/share/zsh",
    "usr/share/doc-base",
    "usr/share/gcc",
    "usr/share/gdb",
    // iconv modules for legacy charsets: nothing on the appliance converts text.
    "usr/lib/x86_64-linux-gnu/gconv",
    "usr/bin/dpkg",
    "usr/bin/dpkg-deb",
    "usr/bin/dpkg-divert",
    "usr/bin/dpkg-maintscript-helper",
    "usr/bin/dpkg-query",
    "usr/bin/dpkg-realpath",
    "usr/bin/dpkg-split",
    "usr/bin/dpkg-statoverride",
    "usr/bin/dpkg-trigger",
    "usr/bin/update-alternatives",
    "usr/bin/debconf",
    "usr/bin/debconf-apt-progress",
    "usr/bin/debconf-communicate",
    "usr/bin/debconf-copydb",
    "usr/bin/debconf-escape",
    "usr/bin/debconf-set-selections",
    "usr/bin/debconf-show",
    "usr/sbin/dpkg-preconfigure",
    "usr/sbin/dpkg-reconfigure",
    "usr/lib/apt",
    "usr/lib/dpkg",
    "etc/apt",
    "etc/dpkg",
    "etc/alternatives/README",
    "var/lib/dpkg",
    "var/lib/apt",
    "var/cache/apt",
    "var/cache/debconf",
    "var/cache/ldconfig/aux-cache",
    "var/lib/dbus/machine-id",
    "var/log/journal",
    "etc/resolv.conf",
    "etc/hostname",
    "etc/machine-id",
    // GRUB: only grub-mkimage and the module directories are used (by
    // `levee-agent install`); Debian's prebuilt signed/monolithic EFI
    // images, the font and the other tools are not.
    "usr/lib/grub/x86_64-efi/monolithic",
    "usr/share/grub/unicode.pf2",
    "usr/bin/grub-fstest",
    "usr/bin/grub-mkrescue",
    "usr/bin/grub-syslinux2cfg",
    "usr/bin/grub-render-label",
    "usr/bin/grub-file",
    "usr/bin/grub-mkfont",
    "usr/bin/grub-mount",
    "usr/sbin/grub-macbless",
];

/// Strips a freshly bootstrapped tree (cached afterwards).
pub fn strip(root: &Path) -> Result<(), ImageError> {
    for p in STRIP {
        util::remove_any(&root.join(p))?;
    }
    let doc = root.join("usr/share/doc");
    if doc.is_dir() {
        for rel in util::walk(&doc)? {
            let full = doc.join(&rel);
            let keep =
                rel.file_name().is_some_and(|n| n == "copyright") || rel.components().count() == 1;
            if !keep && !full.is_dir() {
                util::remove_any(&full)?;
            }
        }
        // Empty sub-directories left behind (examples/ and the like).
        for rel in util::walk(&doc)?.into_iter().rev() {
            let full = doc.join(&rel);
            if rel.components().count() > 1 && full.is_dir() {
                let _ = std::fs::remove_dir(&full);
            }
        }
    }
    let log = root.join("var/log");
    if log.is_dir() {
        for rel in util::walk(&log)?
            .into_iter()
            .filter(|r| r.components().count() == 1)
        {
            util::remove_any(&log.join(rel))?;
        }
    }
    // An empty machine-id: systemd makes a fresh one each boot and does not
    // treat the boot as a first boot.
    util::write(&root.join("etc/machine-id"), b"")?;
    Ok(())
}

/// `/usr/lib/os-release` naming Levee and the image version.
pub fn os_release(root: &Path, name: &str, version: &str, release: &str) -> Result<(), ImageError> {
    let text = format!(
        "NAME=\"Levee\"\nID=levee\nID_LIKE=debian\nPRETTY_NAME=\"Levee appliance {version}\"\n\
         VERSION=\"{version} ({release})\"\nVERSION_ID=\"{version}\"\nIMAGE_ID={name}\nIMAGE_VERSION={version}\n"
    );
    let path = root.join("usr/lib/os-release");
    util::remove_any(&path)?;
    util::write(&path, text)?;
    let etc = root.join("etc/os-release");
    util::remove_any(&etc)?;
    std::os::unix::fs::symlink("../usr/lib/os-release", &etc).map_err(ImageError::io(&etc))?;
    util::write(&root.join("etc/hostname"), "levee\n")?;
    Ok(())
}

/// Installs the agent binary as `/usr/bin/levee-agent`.
pub fn agent(root: &Path, agent: &Path) -> Result<(), ImageError> {
    if !agent.is_file() {
        return Err(ImageError::MissingAgent { path: agent.into() });
    }
    util::require("strip", "binutils")?;
    let to = root.join("usr/bin/levee-agent");
    std::fs::copy(agent, &to).map_err(ImageError::io(agent))?;
    // Debug info is most of a release build's size; the image keeps none.
    util::run(Command::new("strip").arg(&to))?;
    util::set_mode(&to, 0o755)
}

/// Where the image keeps the TUF root its agent trusts first (the same
/// path as `levee_proto::release::BAKED_ROOT`).
pub const TRUST_ROOT: &str = "usr/share/levee/tuf/root.json";

/// Checks that `file` is signed TUF root metadata and installs it at
/// [`TRUST_ROOT`] (0644). Its signatures are the agent's to verify; this
/// catches the wrong file (a key, a timestamp, a truncated copy).
pub fn trust_root(root: &Path, file: &Path) -> Result<(), ImageError> {
    let bad = |reason: String| ImageError::TrustRoot {
        path: file.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(file).map_err(|e| bad(e.to_string()))?;
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
    let signed = &v["signed"];
    if signed["_type"] != "root" {
        return Err(bad(format!(
            "not TUF root metadata (signed._type is {})",
            signed["_type"]
        )));
    }
    if signed["version"].as_u64().is_none_or(|n| n == 0) {
        return Err(bad("signed.version is not a positive integer".into()));
    }
    let keyids = signed["roles"]["root"]["keyids"]
        .as_array()
        .map_or(0, |a| a.len());
    let signatures = v["signatures"].as_array().map_or(0, |a| a.len());
    if keyids == 0 || signatures == 0 {
        return Err(bad(format!(
            "{keyids} root key ids and {signatures} signatures; an unsigned root trusts nothing"
        )));
    }
    let to = root.join(TRUST_ROOT);
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).map_err(ImageError::io(dir))?;
    }
    std::fs::write(&to, &bytes).map_err(ImageError::io(&to))?;
    util::set_mode(&to, 0o644)
}

/// Packs `root` into `out`: zstd, fixed times, no xattrs, so the same tree
/// gives the same bytes wherever it is built.
pub fn squash(root: &Path, out: &Path, epoch: u64) -> Result<(), ImageError> {
    util::require("mksquashfs", "squashfs-tools")?;
    util::remove_any(out)?;
    let e = epoch.to_string();
    util::run(
        Command::new("mksquashfs")
            .arg(root)
            .arg(out)
            .args([
                "-noappend",
                "-comp",
                "zstd",
                "-Xcompression-level",
                "9",
                "-b",
                "1M",
            ])
            .args([
                "-reproducible",
                "-no-xattrs",
                "-mkfs-time",
                &e,
                "-all-time",
                &e,
                "-no-progress",
            ]),
    )?;
    Ok(())
}

#[cfg(test)]
mod trust_root_tests {
    use super::*;

    #[test]
    fn a_signed_root_is_installed_and_other_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("root");
        std::fs::create_dir_all(&tree).unwrap();
        let good = dir.path().join("root.json");
        std::fs::write(
            &good,
            r#"{"signed":{"_type":"root","version":2,"roles":{"root":{"keyids":["ab"],"threshold":1}}},"signatures":[{"keyid":"ab","sig":"00"}]}"#,
        )
        .unwrap();
        trust_root(&tree, &good).unwrap();
        let installed = tree.join(TRUST_ROOT);
        assert_eq!(
            std::fs::read(&installed).unwrap(),
            std::fs::read(&good).unwrap()
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&installed).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o644);
        for (text, why) in [
            ("-----BEGIN PRIVATE KEY-----", "not JSON"),
            (
                r#"{"signed":{"_type":"timestamp","version":1},"signatures":[]}"#,
                "not TUF root",
            ),
            (
                r#"{"signed":{"_type":"root","version":0},"signatures":[]}"#,
                "positive",
            ),
            (
                r#"{"signed":{"_type":"root","version":1,"roles":{"root":{"keyids":["ab"]}}},"signatures":[]}"#,
                "unsigned",
            ),
        ] {
            let bad = dir.path().join("bad.json");
            std::fs::write(&bad, text).unwrap();
            let err = trust_root(&tree, &bad).unwrap_err().to_string();
            assert!(
                err.contains(why) && err.contains("keys init"),
                "{text}: {err}"
            );
        }
    }
}
