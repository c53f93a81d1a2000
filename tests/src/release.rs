//! Releases for the update tests, made from the shared test image without
//! a new build: its root file system is unpacked once, then re-squashed
//! per version with the version in `/usr/lib/os-release` changed and the
//! channel's TUF root baked in. Kernel and initrd are the shared image's.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

use crate::{require_tool, run};

/// The shared image's root file system, unpacked.
pub struct Tree {
    root: PathBuf,
    image_dir: PathBuf,
    image: serde_json::Value,
    base_version: String,
    os_release: String,
}

impl Tree {
    /// Unpacks `image_dir/rootfs.squashfs` into `work/root`.
    pub fn unpack(
        image_dir: &Path,
        image: &serde_json::Value,
        work: &Path,
    ) -> anyhow::Result<Tree> {
        require_tool("unsquashfs", "squashfs-tools")?;
        require_tool("mksquashfs", "squashfs-tools")?;
        std::fs::create_dir_all(work)?;
        let root = work.join("root");
        run(Command::new("unsquashfs")
            .args(["-no-progress", "-d"])
            .arg(&root)
            .arg(image_dir.join("rootfs.squashfs")))?;
        let os_release = std::fs::read_to_string(root.join("usr/lib/os-release"))
            .context("the shared image's /usr/lib/os-release")?;
        let base_version = image["version"]
            .as_str()
            .context("image.json has no version")?
            .to_string();
        anyhow::ensure!(
            os_release.contains(&format!("IMAGE_VERSION={base_version}")),
            "the shared image's os-release does not name {base_version}: {os_release}"
        );
        Ok(Tree {
            root,
            image_dir: image_dir.to_path_buf(),
            image: image.clone(),
            base_version,
            os_release,
        })
    }

    pub fn base_version(&self) -> &str {
        &self.base_version
    }

    /// Bakes `root_json` in at `/usr/share/levee/tuf/root.json`.
    pub fn trust_root(&self, root_json: &Path) -> anyhow::Result<()> {
        let to = self.root.join("usr/share/levee/tuf/root.json");
        std::fs::create_dir_all(to.parent().context("path")?)?;
        std::fs::copy(root_json, &to).context("baking in the TUF root")?;
        Ok(())
    }

    /// Replaces `/sbin/init` with one that hangs forever (a userspace hang
    /// before systemd could keep the watchdog); for the images squashed
    /// after this.
    pub fn hang_init(&self) -> anyhow::Result<()> {
        let init = self.root.join("usr/sbin/init");
        anyhow::ensure!(
            init.symlink_metadata().is_ok(),
            "the shared image has no /usr/sbin/init"
        );
        std::fs::remove_file(&init)?;
        std::fs::write(
            &init,
            "#!/bin/sh\necho 'levee-test: this init hangs' >/dev/console\nwhile :; do sleep 3600; done\n",
        )?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755))?;
        Ok(())
    }

    /// Writes image `version` into `out` (image.json, rootfs.squashfs,
    /// vmlinuz, initrd.img) with `cmdline` as its kernel arguments; the
    /// root file system says `version` in its os-release.
    pub fn squash(
        &self,
        version: &str,
        cmdline: &str,
        out: &Path,
    ) -> anyhow::Result<serde_json::Value> {
        let os_release = self.root.join("usr/lib/os-release");
        std::fs::remove_file(&os_release)?;
        std::fs::write(
            &os_release,
            self.os_release.replace(&self.base_version, version),
        )?;
        std::fs::create_dir_all(out)?;
        let rootfs = out.join("rootfs.squashfs");
        // Faster than the builder's level 9: these images live for one test.
        run(Command::new("mksquashfs")
            .arg(&self.root)
            .arg(&rootfs)
            .args(["-noappend", "-comp", "zstd", "-Xcompression-level", "3"])
            .args(["-b", "1M", "-no-xattrs", "-no-progress", "-quiet"]))?;
        for f in ["vmlinuz", "initrd.img"] {
            std::fs::copy(self.image_dir.join(f), out.join(f))?;
        }
        let mut image = self.image.clone();
        image["version"] = version.into();
        image["cmdline"] = cmdline.into();
        image["artifacts"]["rootfs.squashfs"]["sha256"] = sha256_file(&rootfs)?.into();
        image["artifacts"]["rootfs.squashfs"]["size"] = std::fs::metadata(&rootfs)?.len().into();
        std::fs::write(out.join("image.json"), serde_json::to_vec_pretty(&image)?)?;
        Ok(image)
    }
}

/// Another image directory with `from`'s artifacts under a new version
/// and command line: its root file system still names `from`'s version
/// (used for a release whose health check must fail).
pub fn relabel(
    from: &Path,
    version: &str,
    cmdline: &str,
    out: &Path,
) -> anyhow::Result<serde_json::Value> {
    std::fs::create_dir_all(out)?;
    for f in ["vmlinuz", "initrd.img", "rootfs.squashfs"] {
        std::fs::hard_link(from.join(f), out.join(f))
            .or_else(|_| std::fs::copy(from.join(f), out.join(f)).map(drop))?;
    }
    let mut image: serde_json::Value =
        serde_json::from_slice(&std::fs::read(from.join("image.json"))?)?;
    image["version"] = version.into();
    image["cmdline"] = cmdline.into();
    std::fs::write(out.join("image.json"), serde_json::to_vec_pretty(&image)?)?;
    Ok(image)
}

/// sha256 of a file, by `sha256sum` (the test binary is a debug build).
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let out = run(Command::new("sha256sum").arg(path))?;
    Ok(out.split_whitespace().next().unwrap_or("").to_string())
}
