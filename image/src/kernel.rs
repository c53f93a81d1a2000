//! The kernel: unpacked from its .deb (cached by the .deb's sha256), the
//! listed modules resolved with their dependencies by `modprobe
//! --show-depends`, copied into a root and indexed again with `depmod`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::ImageError;
use crate::manifest::{Item, Manifest};
use crate::util;

pub struct Kernel {
    /// Unpacked package root (`boot/`, `lib/modules/VERSION/`).
    pub root: PathBuf,
    /// `6.1.0-56-amd64`.
    pub release: String,
    /// Package name and version, for messages.
    pub package: String,
}

impl Kernel {
    /// Unpacks `deb` into `cache/kernel/<sha256>` unless done before.
    pub fn unpack(deb: &Path, sha256: &str, cache: &Path) -> Result<Kernel, ImageError> {
        util::require("dpkg-deb", "dpkg")?;
        util::require("depmod", "kmod")?;
        let (name, version) = crate::debian::deb_identity(deb)?;
        let root = cache.join("kernel").join(sha256);
        let done = root.join(".levee-complete");
        if !done.exists() {
            let tmp = cache.join("kernel").join(format!("{sha256}.tmp"));
            util::remove_any(&tmp)?;
            std::fs::create_dir_all(&tmp).map_err(ImageError::io(&tmp))?;
            util::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tmp))?;
            let release = only_release(&tmp)?;
            util::run(Command::new("depmod").arg("-b").arg(&tmp).arg(&release))?;
            util::write(&tmp.join(".levee-complete"), b"")?;
            util::remove_any(&root)?;
            std::fs::rename(&tmp, &root).map_err(ImageError::io(&root))?;
        }
        let release = only_release(&root)?;
        Ok(Kernel {
            root,
            release,
            package: format!("{name} {version}"),
        })
    }

    pub fn vmlinuz(&self) -> PathBuf {
        self.root
            .join("boot")
            .join(format!("vmlinuz-{}", self.release))
    }

    fn modules_dir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }

    /// Module files (relative to the modules directory) for `wanted` and
    /// everything they depend on; built-in modules need no file.
    pub fn resolve(
        &self,
        manifest: &Manifest,
        wanted: &[Item],
    ) -> Result<Vec<PathBuf>, ImageError> {
        util::require("modprobe", "kmod")?;
        let base = self.modules_dir();
        let mut files = std::collections::BTreeSet::new();
        for item in wanted {
            let out = Command::new("modprobe")
                .arg("-d")
                .arg(&self.root)
                .args([
                    "-S",
                    &self.release,
                    "--show-depends",
                    "--ignore-install",
                    &item.name,
                ])
                .output()
                .map_err(ImageError::io("modprobe"))?;
            if !out.status.success() {
                return Err(ImageError::UnknownModule {
                    manifest: manifest.path.clone(),
                    line: item.line,
                    module: item.name.clone(),
                    kernel: self.package.clone(),
                });
            }
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some(path) = line.strip_prefix("insmod ") {
                    let path = Path::new(path.trim());
                    if let Ok(rel) = path.strip_prefix(&base) {
                        files.insert(rel.to_path_buf());
                    }
                }
            }
        }
        Ok(files.into_iter().collect())
    }

    /// Copies `files` into `dest/lib/modules/RELEASE` with the kernel's
    /// module lists and runs depmod there.
    pub fn install(&self, files: &[PathBuf], dest: &Path) -> Result<(), ImageError> {
        let from = self.modules_dir();
        let to = dest.join("lib/modules").join(&self.release);
        util::remove_any(&to)?;
        for rel in files.iter().map(PathBuf::as_path).chain(
            [
                "modules.order",
                "modules.builtin",
                "modules.builtin.modinfo",
            ]
            .iter()
            .map(Path::new),
        ) {
            let target = to.join(rel);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(ImageError::io(parent))?;
            }
            std::fs::copy(from.join(rel), &target).map_err(ImageError::io(from.join(rel)))?;
            util::set_mode(&target, 0o644)?;
        }
        util::run(
            Command::new("depmod")
                .arg("-b")
                .arg(dest)
                .arg(&self.release),
        )?;
        Ok(())
    }
}

fn only_release(root: &Path) -> Result<String, ImageError> {
    let dir = root.join("lib/modules");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map_err(ImageError::io(&dir))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    match names.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(ImageError::Tool {
            command: format!("ls {}", dir.display()),
            status: "unexpected".into(),
            stderr: format!("expected one kernel release, found {names:?}"),
        }),
    }
}
