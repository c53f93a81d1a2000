//! The Levee appliance image builder.
//!
//! Turns `image/appliance.yaml` (Debian release, packages, kernel modules,
//! overlay), Debian's packages from the machine's configured apt sources
//! and the `levee-agent` binary into four files: `vmlinuz`, `initrd.img`
//! (stage 1), `rootfs.squashfs` and `image.json`
//! ([`levee_proto::image::ImageManifest`]).
//!
//! Builds are reproducible: the first build writes a lock file (every
//! package's name, version and .deb sha256, and the SOURCE_DATE_EPOCH);
//! later builds install exactly that set, and the same inputs give the same
//! bytes in any directory. Downloaded packages and the bootstrapped base
//! tree are cached under [`BuildOptions::cache_dir`], so a rebuild after
//! only the agent changed skips Debian entirely.
//!
//! ```no_run
//! use levee_image::{build, BuildOptions, Progress};
//! let opts = BuildOptions::new("image/appliance.yaml", "out", "target/release/levee-agent", "/var/cache/levee-image");
//! let built = build(&opts, &Progress::stderr())?;
//! println!("{} {}", built.image.name, built.image.version);
//! # Ok::<(), levee_image::ImageError>(())
//! ```

mod cpio;
mod debian;
mod error;
mod initrd;
mod kernel;
mod lock;
mod manifest;
mod progress;
mod rootfs;
mod util;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use levee_proto::image::{Artifact, ImageManifest, IMAGE_MANIFEST, INITRD, KERNEL, ROOTFS};

pub use error::ImageError;
pub use lock::{Lock, Pin};
pub use manifest::{Item, Manifest};
pub use progress::Progress;

/// Bumped when the builder changes what it makes of the same inputs, so
/// cached base trees from an older builder are not reused.
const BUILDER_FORMAT: &str = "levee-image-3";

/// What to build, from what, and where.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// `appliance.yaml`.
    pub manifest: PathBuf,
    /// Output directory (created if missing; each of the four artifacts is
    /// written under a temporary name and renamed into place).
    pub out: PathBuf,
    /// The `levee-agent` binary to bake in.
    pub agent: PathBuf,
    /// Package and base-tree cache, shared by builds (a file lock guards it).
    pub cache_dir: PathBuf,
    /// Lock file; `None` means the manifest's path with extension `.lock`.
    pub lock: Option<PathBuf>,
    /// Re-resolve packages from the mirror and rewrite the lock.
    pub refresh_lock: bool,
    /// Overrides `SOURCE_DATE_EPOCH` from the environment and the lock.
    pub source_date_epoch: Option<u64>,
    /// TUF root metadata to bake in at `/usr/share/levee/tuf/root.json`:
    /// the first link of the trust chain the agent's updates verify.
    pub trust_root: Option<PathBuf>,
}

impl BuildOptions {
    pub fn new(
        manifest: impl Into<PathBuf>,
        out: impl Into<PathBuf>,
        agent: impl Into<PathBuf>,
        cache_dir: impl Into<PathBuf>,
    ) -> Self {
        BuildOptions {
            manifest: manifest.into(),
            out: out.into(),
            agent: agent.into(),
            cache_dir: cache_dir.into(),
            lock: None,
            refresh_lock: false,
            source_date_epoch: None,
            trust_root: None,
        }
    }

    pub fn lock_path(&self) -> PathBuf {
        self.lock
            .clone()
            .unwrap_or_else(|| self.manifest.with_extension("lock"))
    }
}

/// What a build made.
#[derive(Debug, Clone)]
pub struct BuildOutput {
    pub dir: PathBuf,
    /// The `image.json` written beside the artifacts.
    pub image: ImageManifest,
    pub lock: PathBuf,
    /// The lock file was written (first build or `--refresh-lock`).
    pub lock_written: bool,
    /// The bootstrapped base tree came from the cache.
    pub base_cached: bool,
    /// Each step and how long it took.
    pub steps: Vec<(String, Duration)>,
}

/// Builds the image described by `opts.manifest` into `opts.out`.
pub fn build(opts: &BuildOptions, progress: &Progress) -> Result<BuildOutput, ImageError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(ImageError::NotRoot);
    }
    let manifest = Manifest::load(&opts.manifest)?;
    let lock_path = opts.lock_path();
    let existing = if opts.refresh_lock {
        None
    } else {
        Lock::load(&lock_path)?
    };
    let epoch = match (
        opts.source_date_epoch,
        std::env::var("SOURCE_DATE_EPOCH").ok(),
        &existing,
    ) {
        (Some(e), _, _) => e,
        (None, Some(s), _) => s
            .trim()
            .parse()
            .map_err(|_| ImageError::SourceDateEpoch(s))?,
        (None, None, Some(lock)) => lock.epoch,
        (None, None, None) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    let cache = std::path::absolute(&opts.cache_dir).map_err(ImageError::io(&opts.cache_dir))?;
    std::fs::create_dir_all(&cache).map_err(ImageError::io(&cache))?;
    let _guard = util::FileLock::acquire(&cache.join(".lock"))?;
    let mut steps = Vec::new();

    // 1. The Debian base tree, from the cache when the lock names it.
    let step = progress.step("resolving apt sources");
    let sources = debian::sources(&manifest.release)?;
    steps.push(("sources".to_string(), step.done("")));
    let debs = cache.join("debs");
    let base_key = |lock: &Lock| {
        let names: Vec<&str> = manifest.packages.iter().map(|p| p.name.as_str()).collect();
        util::sha256_hex(
            format!(
                "{BUILDER_FORMAT}\n{}\n{sources}\n{}\n{}",
                manifest.release,
                names.join(","),
                lock.to_text()
            )
            .as_bytes(),
        )
    };
    let cached = existing.as_ref().and_then(|l| {
        let dir = cache.join("base").join(base_key(l));
        dir.join("complete").exists().then(|| (l.clone(), dir))
    });
    let base_cached = cached.is_some();
    let (lock, base) = match cached {
        Some(found) => found,
        None => {
            let step = progress.step(if existing.is_some() {
                "bootstrapping Debian from the lock"
            } else {
                "bootstrapping Debian (resolving a new lock)"
            });
            let scratch = util::Scratch::new(cache.join("base").join(format!(
                "tmp-{}-{}",
                std::process::id(),
                epoch
            )))?;
            let tmp = scratch.path().to_path_buf();
            std::fs::create_dir_all(tmp.join("scratch")).map_err(ImageError::io(&tmp))?;
            let got = debian::bootstrap(&debian::BootstrapOptions {
                manifest: &manifest,
                sources: &sources,
                pins: existing.as_ref(),
                debs: &debs,
                scratch: &tmp.join("scratch"),
                target: &tmp.join("root"),
                epoch,
            })?;
            let pin_of = |deb: &Path| -> Result<Pin, ImageError> {
                let (name, version) = debian::deb_identity(deb)?;
                Ok(Pin {
                    name,
                    version,
                    sha256: util::sha256_file(deb)?.0,
                })
            };
            let resolved = Lock {
                epoch,
                kernel: pin_of(&got.kernel_deb)?,
                stage1: pin_of(&got.stage1_deb)?,
                packages: debian::pins(&debs, &got.installed)?,
            };
            if let Some(old) = &existing {
                let details = lock_diff(old, &resolved);
                if !details.is_empty() {
                    return Err(ImageError::LockMismatch {
                        path: lock_path.clone(),
                        details,
                    });
                }
            }
            rootfs::strip(&tmp.join("root"))?;
            util::remove_any(&tmp.join("scratch"))?;
            util::write(&tmp.join("complete"), b"")?;
            let dir = cache.join("base").join(base_key(&resolved));
            util::remove_any(&dir)?;
            std::fs::rename(&tmp, &dir).map_err(ImageError::io(&dir))?;
            scratch.keep();
            steps.push((
                "bootstrap".to_string(),
                step.done(&format!("{} packages", resolved.packages.len())),
            ));
            (resolved, dir)
        }
    };
    let lock_written = existing.as_ref() != Some(&lock);
    if lock_written {
        util::publish(&lock_path, lock.to_text())?;
    }
    let deb_of = |p: &Pin| {
        debs.join(format!(
            "{}_{}_amd64.deb",
            p.name,
            p.version.replace(':', "%3a")
        ))
    };

    // 2. A working copy of the base, with modules, overlay and agent.
    let step = progress.step("assembling the root file system");
    let work_guard = util::Scratch::new(cache.join("work").join(format!(
        "{}-{}",
        std::process::id(),
        epoch
    )))?;
    let work = work_guard.path().to_path_buf();
    let root = work.join("root");
    util::run(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(base.join("root"))
            .arg(&root),
    )?;
    let kernel = kernel::Kernel::unpack(&deb_of(&lock.kernel), &lock.kernel.sha256, &cache)?;
    let files = kernel.resolve(&manifest, &manifest.modules)?;
    kernel.install(&files, &root)?;
    util::copy_tree(&manifest.overlay, &root)?;
    rootfs::agent(&root, &opts.agent)?;
    if let Some(trust) = &opts.trust_root {
        rootfs::trust_root(&root, trust)?;
    }
    let version = match &manifest.version {
        Some(v) => v.clone(),
        None => format!(
            "{}-{}",
            util::date_of(epoch),
            &inputs_digest(&manifest, &lock, &opts.agent, opts.trust_root.as_deref())?[..7]
        ),
    };
    rootfs::os_release(&root, &manifest.name, &version, &manifest.release)?;
    steps.push((
        "assemble".to_string(),
        step.done(&format!("{} modules", files.len())),
    ));

    // 3. The artifacts.
    let out = &opts.out;
    std::fs::create_dir_all(out).map_err(ImageError::io(out))?;
    let step = progress.step("packing rootfs.squashfs (zstd)");
    let partial = out.join(format!(".{ROOTFS}.partial"));
    rootfs::squash(&root, &partial, epoch)?;
    std::fs::rename(&partial, out.join(ROOTFS)).map_err(ImageError::io(out.join(ROOTFS)))?;
    steps.push(("squashfs".to_string(), step.done("")));

    let step = progress.step("building initrd.img (stage 1)");
    let scratch = work.join("initrd");
    std::fs::create_dir_all(&scratch).map_err(ImageError::io(&scratch))?;
    // Stage 1 does not depend on the agent or the overlay: cache it.
    let initrd_key = util::sha256_hex(
        format!(
            "{BUILDER_FORMAT}\n{}\n{}\n{}\n{epoch}\n{}",
            initrd::digest(),
            lock.kernel.sha256,
            lock.stage1.sha256,
            manifest
                .initrd_modules
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(",")
        )
        .as_bytes(),
    );
    let cached_initrd = cache.join("initrd").join(format!("{initrd_key}.img"));
    if !cached_initrd.exists() {
        let partial = cache.join("initrd").join(format!("{initrd_key}.partial"));
        std::fs::create_dir_all(cache.join("initrd"))
            .map_err(ImageError::io(cache.join("initrd")))?;
        initrd::build(
            &manifest,
            &kernel,
            &deb_of(&lock.stage1),
            &scratch,
            epoch,
            &partial,
        )?;
        std::fs::rename(&partial, &cached_initrd).map_err(ImageError::io(&cached_initrd))?;
    }
    util::publish_copy(&cached_initrd, &out.join(INITRD))?;
    util::publish_copy(&kernel.vmlinuz(), &out.join(KERNEL))?;
    steps.push(("initrd".to_string(), step.done("")));

    let mut artifacts = BTreeMap::new();
    for name in [KERNEL, INITRD, ROOTFS] {
        let (sha256, size) = util::sha256_file(&out.join(name))?;
        artifacts.insert(name.to_string(), Artifact { sha256, size });
    }
    let mut packages: BTreeMap<String, String> = lock
        .packages
        .iter()
        .map(|p| (p.name.clone(), p.version.clone()))
        .collect();
    packages.insert(lock.kernel.name.clone(), lock.kernel.version.clone());
    packages.insert(lock.stage1.name.clone(), lock.stage1.version.clone());
    let image = ImageManifest {
        name: manifest.name.clone(),
        version,
        release: manifest.release.clone(),
        packages,
        artifacts,
        cmdline: manifest.cmdline.clone(),
    };
    let json = serde_json::to_string_pretty(&image)
        .map_err(|e| ImageError::io(out.join(IMAGE_MANIFEST))(e.into()))?;
    util::publish(&out.join(IMAGE_MANIFEST), json + "\n")?;
    drop(work_guard);
    Ok(BuildOutput {
        dir: out.clone(),
        image,
        lock: lock_path,
        lock_written,
        base_cached,
        steps,
    })
}

/// Human-readable differences between the lock and what the mirror gave.
fn lock_diff(old: &Lock, new: &Lock) -> String {
    let mut diffs = Vec::new();
    let all = |l: &Lock| -> BTreeMap<String, (String, String)> {
        l.packages
            .iter()
            .chain([&l.kernel, &l.stage1])
            .map(|p| (p.name.clone(), (p.version.clone(), p.sha256.clone())))
            .collect()
    };
    let (a, b) = (all(old), all(new));
    for (name, (v, s)) in &a {
        match b.get(name) {
            None => diffs.push(format!("{name} {v} is no longer installed")),
            Some((v2, _)) if v2 != v => diffs.push(format!("{name} {v} -> {v2}")),
            Some((_, s2)) if s2 != s => diffs.push(format!("{name} {v}: .deb sha256 {s} -> {s2}")),
            _ => {}
        }
    }
    for (name, (v, _)) in &b {
        if !a.contains_key(name) {
            diffs.push(format!("{name} {v} is new"));
        }
    }
    diffs.truncate(10);
    diffs.join("; ")
}

/// Hash of everything that goes into the image, for its default version.
fn inputs_digest(
    manifest: &Manifest,
    lock: &Lock,
    agent: &Path,
    trust_root: Option<&Path>,
) -> Result<String, ImageError> {
    use std::os::unix::fs::PermissionsExt;
    let mut text = format!("{BUILDER_FORMAT}\n{}\n{}\n", manifest.text, lock.to_text());
    text += &format!(
        "agent {}\n",
        util::sha256_file(agent)
            .map_err(|_| ImageError::MissingAgent { path: agent.into() })?
            .0
    );
    if let Some(t) = trust_root {
        text += &format!("trust-root {}\n", util::sha256_file(t)?.0);
    }
    for rel in util::walk(&manifest.overlay)? {
        let full = manifest.overlay.join(&rel);
        let meta = std::fs::symlink_metadata(&full).map_err(ImageError::io(&full))?;
        let what = if meta.is_dir() {
            "dir".to_string()
        } else if meta.file_type().is_symlink() {
            format!(
                "link {}",
                std::fs::read_link(&full)
                    .map_err(ImageError::io(&full))?
                    .display()
            )
        } else {
            format!(
                "file {} {}",
                meta.permissions().mode() & 0o111 != 0,
                util::sha256_file(&full)?.0
            )
        };
        text += &format!("{} {what}\n", rel.display());
    }
    Ok(util::sha256_hex(text.as_bytes()))
}
