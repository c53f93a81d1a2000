//! `levee release ...`: keys, publish, promote, rotate-root and re-signing,
//! checked by loading the channels with tough's client exactly as an
//! appliance would (expiry enforced), plus the read-only HTTP routes.

mod common;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::Digest;
use tough::{ExpirationEnforcement, FilesystemTransport, RepositoryLoader};

struct Levee {
    dir: tempfile::TempDir,
}

impl Levee {
    fn new() -> Result<Levee> {
        Ok(Levee {
            dir: tempfile::tempdir()?,
        })
    }
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    fn offline(&self) -> PathBuf {
        self.dir.path().join("offline")
    }
    fn targets_key(&self) -> String {
        self.offline().join("targets.pem").display().to_string()
    }
    /// Runs and expects success; returns stdout.
    fn ok(&self, args: &[&str]) -> Result<String> {
        common::Cli::new(&self.data()).ok(args)
    }

    /// Runs and expects failure; returns stderr.
    fn fails(&self, args: &[&str]) -> Result<String> {
        common::Cli::new(&self.data()).fails(args)
    }
    fn init_keys(&self) -> Result<()> {
        self.ok(&[
            "release",
            "keys",
            "init",
            "--offline-dir",
            &self.offline().display().to_string(),
        ])?;
        Ok(())
    }
    /// A small image directory of `version` with a rootfs of `fill` bytes.
    fn image(&self, version: &str, fill: u8) -> Result<PathBuf> {
        let dir = self.dir.path().join(format!("img-{version}"));
        std::fs::create_dir_all(&dir)?;
        let mut artifacts = serde_json::Map::new();
        for (name, len) in [
            ("vmlinuz", 3000usize),
            ("initrd.img", 5000),
            ("rootfs.squashfs", 70_000),
        ] {
            let data: Vec<u8> = (0..len).map(|i| fill ^ (i as u8)).collect();
            std::fs::write(dir.join(name), &data)?;
            artifacts.insert(
                name.into(),
                serde_json::json!({"sha256": hex::encode(sha2::Sha256::digest(&data)), "size": len}),
            );
        }
        let manifest = serde_json::json!({
            "name": "levee-appliance", "version": version, "artifacts": artifacts, "cmdline": "quiet",
        });
        std::fs::write(
            dir.join("image.json"),
            serde_json::to_vec_pretty(&manifest)?,
        )?;
        Ok(dir)
    }
    fn publish(&self, image: &Path, channel: &str) -> Result<serde_json::Value> {
        let out = self.ok(&[
            "release",
            "publish",
            &image.display().to_string(),
            "--channel",
            channel,
            "--targets-key",
            &self.targets_key(),
            "--json",
        ])?;
        Ok(serde_json::from_str(&out)?)
    }
}

/// Loads a channel as a client holding `root` would: expiry enforced,
/// rollback state in `datastore`.
async fn client_load(
    data: &Path,
    channel: &str,
    root: &[u8],
    datastore: &Path,
) -> Result<tough::Repository> {
    let url = |p: PathBuf| url::Url::from_directory_path(p).map_err(|_| anyhow::anyhow!("url"));
    let base = data.join("releases").join(channel);
    Ok(RepositoryLoader::new(
        &root.to_vec(),
        url(base.join("metadata"))?,
        url(base.join("targets"))?,
    )
    .transport(FilesystemTransport)
    .expiration_enforcement(ExpirationEnforcement::Safe)
    .datastore(datastore)
    .load()
    .await?)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn r13_keys_publish_promote_and_a_client_verifies() -> Result<()> {
    let l = Levee::new()?;
    l.init_keys()?;
    // Only the online keys are on the server; the root and targets keys
    // are in the offline directory.
    let mut on_server: Vec<String> = std::fs::read_dir(l.data().join("releases/keys"))?
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    on_server.sort();
    assert_eq!(on_server, ["snapshot.pem", "timestamp.pem"]);
    for f in [
        "root-1.pem",
        "root-2.pem",
        "root-3.pem",
        "targets.pem",
        "root.json",
        "1.root.json",
    ] {
        assert!(l.offline().join(f).is_file(), "{f} missing offline");
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(l.offline().join("root-1.pem"))?.permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let root: serde_json::Value =
        serde_json::from_slice(&std::fs::read(l.offline().join("root.json"))?)?;
    assert_eq!(root["signed"]["roles"]["root"]["threshold"], 2);
    assert_eq!(
        root["signed"]["roles"]["root"]["keyids"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(root["signed"]["consistent_snapshot"], true);
    // A second init is refused: it would orphan every appliance's root.
    assert!(l
        .fails(&[
            "release",
            "keys",
            "init",
            "--offline-dir",
            &l.offline().display().to_string()
        ])?
        .contains("rotate-root"));

    let v1 = l.image("2026.12.01-aaaa", 1)?;
    let p1 = l.publish(&v1, "beta")?;
    assert_eq!(p1["release"], 1);
    let v2 = l.image("2026.12.02-bbbb", 2)?;
    assert_eq!(l.publish(&v2, "beta")?["release"], 2);
    // The same version again is refused, and so is a damaged image.
    assert!(l
        .fails(&[
            "release",
            "publish",
            &v2.display().to_string(),
            "--channel",
            "stable",
            "--targets-key",
            &l.targets_key()
        ])?
        .contains("promote"));
    let v3 = l.image("2026.12.03-cccc", 3)?;
    std::fs::write(v3.join("rootfs.squashfs"), b"tampered")?;
    assert!(l
        .fails(&[
            "release",
            "publish",
            &v3.display().to_string(),
            "--channel",
            "beta",
            "--targets-key",
            &l.targets_key()
        ])?
        .contains("damaged"));
    // A key that is not the targets key signs nothing.
    let wrong = l.offline().join("root-1.pem").display().to_string();
    let v4 = l.image("2026.12.04-dddd", 4)?;
    assert!(l
        .fails(&[
            "release",
            "publish",
            &v4.display().to_string(),
            "--channel",
            "beta",
            "--targets-key",
            &wrong
        ])?
        .contains("targets key"));

    l.ok(&[
        "release",
        "promote",
        "2026.12.01-aaaa",
        "--from",
        "beta",
        "--to",
        "stable",
        "--targets-key",
        &l.targets_key(),
    ])?;
    l.ok(&[
        "release",
        "promote",
        "2026.12.02-bbbb",
        "--from",
        "beta",
        "--to",
        "stable",
        "--targets-key",
        &l.targets_key(),
    ])?;
    // Promoting an older release over a newer one is refused.
    let err = l.fails(&[
        "release",
        "promote",
        "2026.12.01-aaaa",
        "--from",
        "beta",
        "--to",
        "stable",
        "--targets-key",
        &l.targets_key(),
    ])?;
    assert!(err.contains("already has"), "{err}");

    let status: serde_json::Value = serde_json::from_str(&l.ok(&["release", "status", "--json"])?)?;
    let chans: Vec<&str> = status
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["channel"].as_str().unwrap())
        .collect();
    assert_eq!(chans, ["beta", "stable"]);
    let stable = &status[1];
    assert_eq!(stable["releases"][1]["release"], 2);
    // vmlinuz, initrd.img, rootfs.squashfs, image.json and the rootfs's
    // chunk index for delta updates.
    let artifacts: Vec<&str> = stable["releases"][1]["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["artifact"].as_str().unwrap())
        .collect();
    assert_eq!(
        artifacts,
        [
            "image.json",
            "initrd.img",
            "rootfs.chunks",
            "rootfs.squashfs",
            "vmlinuz"
        ]
    );
    let human = l.ok(&["release", "status", "--channel", "stable"])?;
    assert!(human.contains("2026.12.02-bbbb"), "{human}");

    // A conforming client with the baked root verifies both channels, and
    // gets each target's bytes back against its sha256 and length.
    let root_bytes = std::fs::read(l.offline().join("root.json"))?;
    rt().block_on(async {
        for channel in ["beta", "stable"] {
            let ds = tempfile::tempdir()?;
            let repo = client_load(&l.data(), channel, &root_bytes, ds.path()).await?;
            let name = tough::TargetName::new("2026.12.02-bbbb.rootfs.squashfs")?;
            let target = repo.targets().signed.find_target(&name)?;
            let info = &target.custom["levee"];
            assert_eq!(info["release"], 2);
            assert_eq!(info["min_release"], 1);
            assert_eq!(info["version"], "2026.12.02-bbbb");
            let stream = repo.read_target(&name).await?.context("target missing")?;
            use tough::IntoVec;
            let bytes = stream.into_vec().await?;
            assert_eq!(bytes, std::fs::read(v2.join("rootfs.squashfs"))?);
        }
        Ok::<_, anyhow::Error>(())
    })?;
    // Target files are content-addressed (consistent snapshots).
    let sha = hex::encode(sha2::Sha256::digest(std::fs::read(
        v2.join("rootfs.squashfs"),
    )?));
    assert!(l
        .data()
        .join(format!(
            "releases/stable/targets/{sha}.2026.12.02-bbbb.rootfs.squashfs"
        ))
        .is_file());
    Ok(())
}

#[test]
fn r13_rotate_root_revokes_a_key_and_clients_follow_the_chain() -> Result<()> {
    let l = Levee::new()?;
    l.init_keys()?;
    l.publish(&l.image("2026.12.01-aaaa", 1)?, "stable")?;
    let root_v1 = std::fs::read(l.offline().join("root.json"))?;
    let ds = tempfile::tempdir()?;
    rt().block_on(client_load(&l.data(), "stable", &root_v1, ds.path()))?;

    let revoked = l.offline().join("root-2.pem");
    let out: serde_json::Value = serde_json::from_str(&l.ok(&[
        "release",
        "keys",
        "rotate-root",
        "--offline-dir",
        &l.offline().display().to_string(),
        "--revoke",
        &revoked.display().to_string(),
        "--rotate-online",
        "--json",
    ])?)?;
    assert_eq!(out["version"], 2);
    assert!(!revoked.exists() && l.offline().join("revoked/root-2.pem").is_file());
    assert!(l.offline().join("root-4.pem").is_file());
    // An appliance that only knows root v1 walks to v2, and accepts the
    // snapshot and timestamp signed by the new online keys.
    let repo = rt().block_on(client_load(&l.data(), "stable", &root_v1, ds.path()))?;
    assert_eq!(repo.root().signed.version.get(), 2);
    let ids: Vec<String> = repo.root().signed.roles[&tough::schema::RoleType::Root]
        .keyids
        .iter()
        .map(|k| hex::encode(k.as_ref()))
        .collect();
    assert_eq!(ids.len(), 3);

    // With the revoked key and only one other, a third root cannot be made.
    let lone = tempfile::tempdir()?;
    std::fs::copy(
        l.offline().join("root-1.pem"),
        lone.path().join("root-1.pem"),
    )?;
    let err = l.fails(&[
        "release",
        "keys",
        "rotate-root",
        "--offline-dir",
        &lone.path().display().to_string(),
    ])?;
    assert!(err.contains("needs 2 of its keys"), "{err}");
    // Publishing keeps working under the new root.
    assert_eq!(
        l.publish(&l.image("2026.12.02-bbbb", 2)?, "stable")?["release"],
        2
    );
    let repo = rt().block_on(client_load(&l.data(), "stable", &root_v1, ds.path()))?;
    // Two releases of five targets (four artifacts and the chunk index).
    assert_eq!(repo.targets().signed.targets_iter().count(), 10);
    Ok(())
}

#[test]
fn r13_serve_resigns_timestamp_and_snapshot_before_expiry() -> Result<()> {
    use levee_provisioner::releases::{refresh, Layout};
    let l = Levee::new()?;
    l.init_keys()?;
    l.publish(&l.image("2026.12.01-aaaa", 1)?, "stable")?;
    let layout = Layout::new(&l.data());
    let now = chrono::Utc::now();
    rt().block_on(async {
        // Fresh: nothing to do.
        let r = refresh::resign_at(&layout, "stable", false, now).await?;
        assert_eq!(r, refresh::Resigned::default());
        // 13 hours later the day-long timestamp has under 12 h left.
        let r =
            refresh::resign_at(&layout, "stable", false, now + chrono::Duration::hours(13)).await?;
        assert_eq!(r.snapshot, None);
        assert_eq!(r.timestamp, Some(2));
        // 5 days later the week-long snapshot is renewed too.
        let r =
            refresh::resign_at(&layout, "stable", false, now + chrono::Duration::days(5)).await?;
        assert_eq!(r.snapshot, Some(2));
        assert_eq!(r.timestamp, Some(3));
        Ok::<_, anyhow::Error>(())
    })?;
    // What was re-signed verifies with the baked root.
    let root = std::fs::read(l.offline().join("root.json"))?;
    let ds = tempfile::tempdir()?;
    let repo = rt().block_on(client_load(&l.data(), "stable", &root, ds.path()))?;
    assert_eq!(repo.timestamp().signed.version.get(), 3);
    assert_eq!(repo.snapshot().signed.version.get(), 2);
    Ok(())
}

/// `levee release prune`: the newest releases and the rollout's stay,
/// older ones leave the signed targets and the disk; a client that
/// followed the channel before and a new one both load it; superseded
/// versioned metadata goes, root metadata stays; a dry run and a prune
/// without the targets key change nothing.
#[test]
fn r13_prune_drops_old_releases_but_keeps_the_newest_and_the_rollouts() -> Result<()> {
    let l = Levee::new()?;
    l.init_keys()?;
    let mut versions = Vec::new();
    for i in 1..=5u8 {
        let v = format!("2026.12.0{i}-prune{i}");
        l.publish(&l.image(&v, i)?, "beta")?;
        versions.push(v);
    }
    let root = std::fs::read(l.offline().join("1.root.json"))?;
    let followed = l.dir.path().join("follower");
    std::fs::create_dir_all(&followed)?;
    rt().block_on(client_load(&l.data(), "beta", &root, &followed))?;
    l.ok(&[
        "release",
        "rollout",
        "beta",
        &versions[0],
        "--percent",
        "10",
    ])?;
    let channel = l.data().join("releases/beta");
    let listing = |dir: &str| -> Result<Vec<String>> {
        let mut v: Vec<String> = std::fs::read_dir(channel.join(dir))?
            .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_>>()?;
        v.sort();
        Ok(v)
    };
    let (files_before, meta_before) = (listing("targets")?, listing("metadata")?);
    let removed = |out: &serde_json::Value| -> Vec<String> {
        out["removed"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|r| r["version"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };

    let args = [
        "release",
        "prune",
        "beta",
        "--keep",
        "2",
        "--metadata-grace-hours",
        "0",
    ];
    let dry: serde_json::Value =
        serde_json::from_str(&l.ok(&[&args[..], &["--dry-run", "--json"]].concat())?)?;
    assert_eq!(removed(&dry), versions[1..3]);
    assert_eq!(dry["target_files_deleted"], 10, "{dry}");
    let err = l.fails(&args)?;
    assert!(err.contains("--targets-key"), "{err}");
    assert_eq!(listing("targets")?, files_before);
    assert_eq!(listing("metadata")?, meta_before);

    let key = l.targets_key();
    let out: serde_json::Value =
        serde_json::from_str(&l.ok(&[&args[..], &["--targets-key", &key, "--json"]].concat())?)?;
    assert_eq!(removed(&out), versions[1..3], "{out}");
    assert_eq!(
        out["kept"],
        serde_json::json!([&versions[0], &versions[3], &versions[4]]),
        "the rollout's release 1 and the newest two stay"
    );
    let files = listing("targets")?;
    assert_eq!(files.len(), files_before.len() - 10, "{files:?}");
    assert!(!files
        .iter()
        .any(|f| f.contains(&versions[1]) || f.contains(&versions[2])));

    // Clients: the follower (higher versions, no rollback) and a new one.
    for ds in [followed, l.dir.path().join("newcomer")] {
        std::fs::create_dir_all(&ds)?;
        let repo = rt().block_on(client_load(&l.data(), "beta", &root, &ds))?;
        let mut names: Vec<String> = repo
            .targets()
            .signed
            .targets
            .keys()
            .map(|n| n.raw().to_string())
            .collect();
        names.sort();
        for (i, v) in versions.iter().enumerate() {
            let listed = names.iter().any(|n| n.starts_with(&format!("{v}.")));
            assert_eq!(listed, ![1, 2].contains(&i), "{v} in {names:?}");
        }
        let newest = tough::TargetName::new(format!("{}.rootfs.squashfs", versions[4]))?;
        let bytes = rt().block_on(async {
            let mut s = repo.read_target(&newest).await?.context("listed")?;
            let mut all = Vec::new();
            use futures::StreamExt;
            while let Some(chunk) = s.next().await {
                all.extend_from_slice(&chunk?);
            }
            Ok::<_, anyhow::Error>(all)
        })?;
        assert_eq!(
            bytes,
            std::fs::read(
                l.dir
                    .path()
                    .join(format!("img-{}/rootfs.squashfs", versions[4]))
            )?
        );
    }
    // One targets and one snapshot file left, every root kept.
    let meta = listing("metadata")?;
    let count = |suffix: &str| meta.iter().filter(|f| f.ends_with(suffix)).count();
    assert_eq!(
        (count(".targets.json"), count(".snapshot.json")),
        (1, 1),
        "{meta:?}"
    );
    assert!(meta.iter().any(|f| f == "1.root.json"), "{meta:?}");
    assert_eq!(
        out["metadata_files_deleted"].as_array().map(Vec::len),
        Some(10),
        "{out}"
    );
    Ok(())
}
