//! The Debian side: apt sources from the machine's configuration, the
//! `mmdebstrap` run (with a .deb cache kept across builds), and the
//! kernel and busybox packages fetched beside it (unpacked, never
//! installed, so no initramfs-tools runs inside the image).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::ImageError;
use crate::lock::Pin;
use crate::manifest::Manifest;
use crate::util;

/// `deb` lines for `release` (and its -updates/-security pockets) exactly as
/// the machine's apt is configured: the builder reaches no other mirror.
pub fn sources(release: &str) -> Result<String, ImageError> {
    util::require("apt-get", "apt")?;
    let out = util::run(Command::new("apt-get").args([
        "indextargets",
        "--format",
        "$(TARGET_OF)\t$(SITE)\t$(RELEASE)\t$(COMPONENT)",
    ]))?;
    let mut groups: std::collections::BTreeMap<
        (String, String),
        std::collections::BTreeSet<String>,
    > = Default::default();
    for line in out.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if let ["deb", site, rel, comp] = f.as_slice() {
            if *rel == release
                || rel
                    .strip_prefix(release)
                    .is_some_and(|r| r.starts_with('-'))
            {
                groups
                    .entry((site.to_string(), rel.to_string()))
                    .or_default()
                    .insert(comp.to_string());
            }
        }
    }
    if groups.is_empty() {
        return Err(ImageError::Tool {
            command: "apt-get indextargets".into(),
            status: "no match".into(),
            stderr: format!("no apt source for `{release}` is configured on this machine (see /etc/apt/sources.list.d)"),
        });
    }
    Ok(groups
        .into_iter()
        .map(|((site, rel), comps)| {
            format!(
                "deb {site} {rel} {}\n",
                comps.into_iter().collect::<Vec<_>>().join(" ")
            )
        })
        .collect())
}

/// What one bootstrap produced.
pub struct Bootstrapped {
    /// (name, version, architecture) of every installed package.
    pub installed: Vec<(String, String, String)>,
    pub kernel_deb: PathBuf,
    pub stage1_deb: PathBuf,
}

/// The hook that fetches the kernel and busybox-static .debs with the
/// same apt configuration mmdebstrap uses, reusing cached files whose
/// sha256 still matches the mirror's.
const FETCH_HOOK: &str = r#"set -eu
export APT_CONFIG="$MMDEBSTRAP_APT_CONFIG"
cd "$LEVEE_DEBS"
fetch() { # fetch SPEC RESULTFILE
  info=$(apt-cache show --no-all-versions "$1")
  name=$(echo "$info" | sed -n 's/^Package: //p' | head -n1)
  ver=$(echo "$info" | sed -n 's/^Version: //p' | head -n1)
  arch=$(echo "$info" | sed -n 's/^Architecture: //p' | head -n1)
  sum=$(echo "$info" | sed -n 's/^SHA256: //p' | head -n1)
  [ -n "$name" ] && [ -n "$ver" ] || { echo "E: Unable to locate package $1" >&2; exit 1; }
  file="${name}_$(echo "$ver" | sed 's/:/%3a/g')_${arch}.deb"
  if ! echo "$sum  $file" | sha256sum -c --status 2>/dev/null; then
    rm -f "$file"
    apt-get -q -o APT::Sandbox::User=root download "$name=$ver" >&2
  fi
  [ -s "$file" ] || { echo "fetch: $file is missing after download" >&2; exit 1; }
  echo "$file" > "$2"
}
kspec="$LEVEE_KERNEL"
case "$kspec" in
  *=*) ;;
  *) real=$(apt-cache depends "$kspec" | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n1)
     [ -z "$real" ] || kspec=$real ;;
esac
fetch "$kspec" "$LEVEE_OUT/kernel-deb"
fetch "$LEVEE_STAGE1" "$LEVEE_OUT/stage1-deb"
chroot "$1" dpkg-query -W -f '${Package}\t${Version}\t${Architecture}\n' > "$LEVEE_OUT/installed"
"#;

pub struct BootstrapOptions<'a> {
    pub manifest: &'a Manifest,
    pub sources: &'a str,
    /// `Some` pins every package to the lock's version.
    pub pins: Option<&'a crate::lock::Lock>,
    pub debs: &'a Path,
    /// Scratch directory (sources file, hook, results).
    pub scratch: &'a Path,
    pub target: &'a Path,
    pub epoch: u64,
}

pub fn bootstrap(o: &BootstrapOptions<'_>) -> Result<Bootstrapped, ImageError> {
    util::require("mmdebstrap", "mmdebstrap")?;
    std::fs::create_dir_all(o.debs).map_err(ImageError::io(o.debs))?;
    let sources_file = o.scratch.join("sources.list");
    util::write(&sources_file, o.sources)?;
    let hook = o.scratch.join("fetch-hook.sh");
    util::write(&hook, FETCH_HOOK)?;

    let mut include: Vec<String> = o.manifest.packages.iter().map(|p| p.name.clone()).collect();
    let (kernel, stage1) = match o.pins {
        Some(lock) => {
            // Pin the manifest's packages and everything they pulled in last time.
            include = lock
                .packages
                .iter()
                .map(|p| format!("{}={}", p.name, p.version))
                .collect();
            for p in &o.manifest.packages {
                if !lock.packages.iter().any(|l| l.name == p.name) {
                    include.push(p.name.clone());
                }
            }
            (
                format!("{}={}", lock.kernel.name, lock.kernel.version),
                format!("{}={}", lock.stage1.name, lock.stage1.version),
            )
        }
        None => (
            o.manifest.kernel_package.name.clone(),
            "busybox-static".to_string(),
        ),
    };
    let debs = o.debs.display().to_string();
    let mut cmd = Command::new("mmdebstrap");
    cmd.env("SOURCE_DATE_EPOCH", o.epoch.to_string())
        .env("LEVEE_DEBS", o.debs)
        .env("LEVEE_OUT", o.scratch)
        .env("LEVEE_KERNEL", &kernel)
        .env("LEVEE_STAGE1", &stage1)
        .env("LC_ALL", "C.UTF-8")
        // Not -q: apt's "Unable to locate package" is only shown at the default verbosity.
        .args(["--mode=root", "--variant=essential", "--format=directory"])
        .arg("--aptopt=APT::Install-Recommends \"false\"")
        .arg(format!("--include={}", include.join(",")))
        .args(["--skip=download/empty", "--skip=essential/unlink"])
        // A merged /usr without the usrmerge package, which drags in perl.
        .arg("--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr")
        .arg("--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/")
        .arg(format!(
            "--setup-hook=sync-in {debs} /var/cache/apt/archives/"
        ))
        .arg(format!(
            "--customize-hook=sync-out /var/cache/apt/archives {debs}"
        ))
        .arg(format!("--customize-hook=sh {} \"$1\"", hook.display()))
        .arg(&o.manifest.release)
        .arg(o.target)
        .arg(&sources_file);
    let shown = format!(
        "mmdebstrap ... {} {}",
        o.manifest.release,
        o.target.display()
    );
    let out = cmd.output().map_err(|e| ImageError::Tool {
        command: shown.clone(),
        status: "could not start".into(),
        stderr: e.to_string(),
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if let Some((package, detail)) = unknown_package(&stderr) {
            return Err(ImageError::UnknownPackage {
                manifest: o.manifest.path.clone(),
                line: o.manifest.line_of(&package),
                package,
                detail,
            });
        }
        return Err(ImageError::Tool {
            command: shown,
            status: out.status.to_string(),
            stderr: util::tail(&out.stderr, 40),
        });
    }
    let read = |name: &str| {
        let p = o.scratch.join(name);
        std::fs::read_to_string(&p)
            .map_err(ImageError::io(p))
            .map(|s| s.trim().to_string())
    };
    let installed = read("installed")?
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() == 3).then(|| (f[0].to_string(), f[1].to_string(), f[2].to_string()))
        })
        .collect();
    Ok(Bootstrapped {
        installed,
        kernel_deb: o.debs.join(read("kernel-deb")?),
        stage1_deb: o.debs.join(read("stage1-deb")?),
    })
}

/// The .deb file apt keeps for a package (`:` of an epoch is `%3a`).
pub fn deb_path(debs: &Path, name: &str, version: &str, arch: &str) -> PathBuf {
    debs.join(format!("{name}_{}_{arch}.deb", version.replace(':', "%3a")))
}

/// `Package` and `Version` fields of a .deb.
pub fn deb_identity(deb: &Path) -> Result<(String, String), ImageError> {
    let out = util::run(
        Command::new("dpkg-deb")
            .args(["-f"])
            .arg(deb)
            .args(["Package", "Version"]),
    )?;
    let field = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
            .ok_or_else(|| ImageError::Tool {
                command: format!("dpkg-deb -f {}", deb.display()),
                status: "no field".into(),
                stderr: k.into(),
            })
    };
    Ok((field("Package:")?, field("Version:")?))
}

/// Pins the packages of a bootstrap with the sha256 of their .debs.
pub fn pins(debs: &Path, installed: &[(String, String, String)]) -> Result<Vec<Pin>, ImageError> {
    let mut pins = Vec::with_capacity(installed.len());
    for (name, version, arch) in installed {
        let (sha256, _) = util::sha256_file(&deb_path(debs, name, version, arch))?;
        pins.push(Pin {
            name: name.clone(),
            version: version.clone(),
            sha256,
        });
    }
    pins.sort();
    Ok(pins)
}

/// apt's ways of saying a requested package does not exist.
fn unknown_package(stderr: &str) -> Option<(String, String)> {
    for line in stderr.lines() {
        let l = line.trim_start_matches("E: ").trim();
        if let Some(rest) = l.strip_prefix("Unable to locate package ") {
            return Some((
                rest.trim().to_string(),
                "not in the configured apt sources".into(),
            ));
        }
        if let Some(rest) = l.strip_prefix("Package '") {
            if let Some((name, tail)) = rest.split_once('\'') {
                return Some((name.to_string(), tail.trim().to_string()));
            }
        }
        if let Some(rest) = l.strip_prefix("Version '") {
            if let Some((_, tail)) = rest.split_once("' for '") {
                if let Some((name, _)) = tail.split_once('\'') {
                    return Some((name.to_string(), format!("{l} (run with --refresh-lock)")));
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn apt_errors_name_the_package() {
        let (p, _) =
            super::unknown_package("I: x\nE: Unable to locate package nosuchpkg\n").unwrap();
        assert_eq!(p, "nosuchpkg");
        let (p, d) =
            super::unknown_package("E: Package 'foo' has no installation candidate").unwrap();
        assert_eq!(
            (p.as_str(), d.as_str()),
            ("foo", "has no installation candidate")
        );
        let (p, _) = super::unknown_package("E: Version '9' for 'bar' was not found").unwrap();
        assert_eq!(p, "bar");
    }
}
