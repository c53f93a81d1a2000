//! `appliance.yaml`: raw serde structs that mirror the YAML, then a
//! validated [`Manifest`] whose paths are absolute and whose names are
//! checked, each item keeping its manifest line for error messages.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::ImageError;
use levee_proto::yaml::{locate, Seg};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    release: String,
    #[serde(default)]
    version: Option<String>,
    packages: Vec<String>,
    kernel: RawKernel,
    overlay: String,
    #[serde(default)]
    cmdline: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKernel {
    package: String,
    modules: Vec<String>,
    initrd_modules: Vec<String>,
}

/// A name from the manifest and the line it was written on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub name: String,
    pub line: usize,
}

/// A validated image manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The manifest file, as given.
    pub path: PathBuf,
    /// Raw text, hashed into the image version.
    pub text: String,
    pub name: String,
    pub release: String,
    pub version: Option<String>,
    pub packages: Vec<Item>,
    /// Kernel package: a real `linux-image-VERSION-amd64` or a metapackage
    /// such as `linux-image-amd64`, resolved at build time.
    pub kernel_package: Item,
    /// Modules kept in the root file system (dependencies are added).
    pub modules: Vec<Item>,
    /// Modules in stage 1 (NICs, storage, squashfs, overlay, loop).
    pub initrd_modules: Vec<Item>,
    /// Absolute overlay directory.
    pub overlay: PathBuf,
    pub overlay_line: usize,
    pub cmdline: String,
}

impl Manifest {
    /// Reads and validates a manifest file.
    pub fn load(path: &Path) -> Result<Manifest, ImageError> {
        let text = std::fs::read_to_string(path).map_err(ImageError::io(path))?;
        Manifest::parse(path, &text)
    }

    /// Validates manifest text; `path` names it in errors and anchors the
    /// relative overlay path.
    pub fn parse(path: &Path, text: &str) -> Result<Manifest, ImageError> {
        let raw: RawManifest = serde_norway::from_str(text).map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((1, 1));
            ImageError::Syntax {
                file: path.to_path_buf(),
                line,
                column,
                message: e.to_string(),
            }
        })?;
        let invalid = |key: &'static str, message: String| ImageError::Invalid {
            file: path.to_path_buf(),
            line: line_at(text, &[Seg::Key(key)]),
            message,
        };
        if !is_name(&raw.name, false) {
            return Err(invalid(
                "name",
                format!(
                    "`name: {}` must be lower-case letters, digits and dashes",
                    raw.name
                ),
            ));
        }
        if raw.release.is_empty() || !raw.release.chars().all(|c| c.is_ascii_lowercase()) {
            return Err(invalid(
                "release",
                format!(
                    "`release: {}` must be a Debian code name such as bookworm",
                    raw.release
                ),
            ));
        }
        if let Some(v) = &raw.version {
            if v.is_empty()
                || !v
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-+_~".contains(c))
            {
                return Err(invalid(
                    "version",
                    format!("`version: {v}` may hold only letters, digits and . - + _ ~"),
                ));
            }
        }
        if raw.packages.is_empty() {
            return Err(invalid(
                "packages",
                "`packages` is empty; list at least systemd".into(),
            ));
        }
        let packages = items(
            path,
            text,
            &[Seg::Key("packages")],
            &raw.packages,
            |p| is_name(p, true),
            "a Debian package name",
        )?;
        let modules = items(
            path,
            text,
            &[Seg::Key("kernel"), Seg::Key("modules")],
            &raw.kernel.modules,
            is_module,
            "a kernel module name",
        )?;
        let initrd_modules = items(
            path,
            text,
            &[Seg::Key("kernel"), Seg::Key("initrd_modules")],
            &raw.kernel.initrd_modules,
            is_module,
            "a kernel module name",
        )?;
        if !raw.kernel.package.starts_with("linux-image-") || !is_name(&raw.kernel.package, true) {
            return Err(ImageError::Invalid {
                file: path.to_path_buf(),
                line: line_at(text, &[Seg::Key("kernel"), Seg::Key("package")]),
                message: format!(
                    "`kernel.package: {}` must be a linux-image-* package",
                    raw.kernel.package
                ),
            });
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let base = if base.as_os_str().is_empty() {
            Path::new(".")
        } else {
            base
        };
        let overlay_line = line_at(text, &[Seg::Key("overlay")]);
        let overlay = std::path::absolute(base.join(&raw.overlay)).map_err(ImageError::io(base))?;
        if !overlay.is_dir() {
            return Err(ImageError::MissingOverlay {
                manifest: path.to_path_buf(),
                line: overlay_line,
                path: overlay,
            });
        }
        Ok(Manifest {
            path: path.to_path_buf(),
            text: text.to_string(),
            name: raw.name,
            release: raw.release,
            version: raw.version,
            packages,
            kernel_package: Item {
                line: line_at(text, &[Seg::Key("kernel"), Seg::Key("package")]),
                name: raw.kernel.package,
            },
            modules,
            initrd_modules,
            overlay,
            overlay_line,
            cmdline: raw.cmdline,
        })
    }

    /// The line of a package or module name, for errors found after parsing.
    pub fn line_of(&self, name: &str) -> usize {
        self.packages
            .iter()
            .chain(&self.modules)
            .chain(&self.initrd_modules)
            .find(|i| i.name == name)
            .map_or(1, |i| i.line)
    }
}

fn items(
    path: &Path,
    text: &str,
    at: &[Seg],
    names: &[String],
    ok: impl Fn(&str) -> bool,
    what: &str,
) -> Result<Vec<Item>, ImageError> {
    let mut out: Vec<Item> = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let mut item = at.to_vec();
        item.push(Seg::Index(i));
        let line = line_at(text, &item);
        if !ok(name) {
            return Err(ImageError::Invalid {
                file: path.to_path_buf(),
                line,
                message: format!("`{name}` is not {what}"),
            });
        }
        if out.iter().any(|i| &i.name == name) {
            return Err(ImageError::Invalid {
                file: path.to_path_buf(),
                line,
                message: format!("`{name}` is listed twice"),
            });
        }
        out.push(Item {
            name: name.clone(),
            line,
        });
    }
    Ok(out)
}

/// Lower-case names; with `debian` also `+` and `.` (Debian policy 5.6.1).
fn is_name(s: &str, debian: bool) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.len() >= 2
        && chars.all(|c| {
            c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || c == '-'
                || (debian && (c == '+' || c == '.'))
        })
}

fn is_module(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// 1-based line of the node at `path` (or of its deepest present parent).
fn line_at(text: &str, path: &[Seg]) -> usize {
    locate(text, path).map_or(1, |(line, _)| line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, ImageError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("overlay")).unwrap();
        Manifest::parse(&dir.path().join("appliance.yaml"), text)
    }

    const GOOD: &str = "name: levee-appliance\nrelease: bookworm\npackages:\n  - systemd\n  - udev\nkernel:\n  package: linux-image-amd64\n  modules:\n    - e1000\n  initrd_modules:\n    - squashfs\noverlay: overlay\n";

    #[test]
    fn good_manifest_parses() {
        let m = parse(GOOD).unwrap();
        assert_eq!(
            m.packages[1],
            Item {
                name: "udev".into(),
                line: 5
            }
        );
        assert_eq!(m.modules[0].line, 9);
        assert!(m.overlay.is_absolute());
    }

    #[test]
    fn bad_yaml_names_line_and_column() {
        let err = parse("name: x\npackages: [systemd\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("appliance.yaml:"), "{err}");
        assert!(
            matches!(parse("name: x\npackages: [systemd\n"), Err(ImageError::Syntax { line, .. }) if line >= 2)
        );
    }

    #[test]
    fn unknown_field_is_named() {
        let err = parse(&format!("{GOOD}colour: red\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("colour") && err.contains(":13:"), "{err}");
    }

    #[test]
    fn missing_overlay_is_named() {
        let err = parse(&GOOD.replace("overlay: overlay", "overlay: nowhere")).unwrap_err();
        assert!(
            matches!(&err, ImageError::MissingOverlay { line: 12, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("nowhere"));
    }

    #[test]
    fn bad_package_name_is_named_with_line() {
        let err = parse(&GOOD.replace("- udev", "- Udev!"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(":5:") && err.contains("Udev!"), "{err}");
    }
}
