//! The agent's TUF client (`levee_agent::update`) against channels made by
//! `levee release` and served by a test server that tampers with them: one
//! test per attack of the TUF threat model. Each must be refused with the
//! attack's name and the appliance offered nothing (it stays on its
//! running release).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use levee_agent::update::{
    self, ChannelOptions, Decision, Refusal, Running, TransportOptions, UpdateError,
};
use levee_provisioner::releases::{channel, keys, refresh, root, Layout};
use sha2::Digest;

/// How the server answers one file.
#[derive(Clone)]
enum Tamper {
    /// An endless body.
    Endless,
    /// One byte every 300 ms.
    Slow,
}

#[derive(Clone)]
struct Server {
    releases: PathBuf,
    tamper: Arc<Mutex<HashMap<String, Tamper>>>,
}

async fn serve_file(
    State(s): State<Server>,
    UrlPath((channel, kind, file)): UrlPath<(String, String, String)>,
) -> Response {
    let tamper = s.tamper.lock().unwrap().get(&file).cloned();
    match tamper {
        Some(Tamper::Endless) => {
            let chunk = bytes::Bytes::from(vec![b' '; 64 << 10]);
            let stream = futures_stream(move || Some(chunk.clone()), Duration::ZERO);
            return Response::new(Body::from_stream(stream));
        }
        Some(Tamper::Slow) => {
            let stream = futures_stream(
                || Some(bytes::Bytes::from_static(b" ")),
                Duration::from_millis(300),
            );
            return Response::new(Body::from_stream(stream));
        }
        None => {}
    }
    if file.contains('/') || file.starts_with('.') || !(kind == "metadata" || kind == "targets") {
        return (axum::http::StatusCode::NOT_FOUND, "no").into_response();
    }
    match std::fs::read(s.releases.join(channel).join(kind).join(file)) {
        Ok(b) => b.into_response(),
        Err(_) => (axum::http::StatusCode::NOT_FOUND, "no").into_response(),
    }
}

fn futures_stream(
    next: impl Fn() -> Option<bytes::Bytes> + Send + Sync + 'static,
    pause: Duration,
) -> impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send {
    let next = Arc::new(next);
    futures::stream::unfold((), move |_| {
        let next = next.clone();
        async move {
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            next().map(|b| (Ok(b), ()))
        }
    })
}

struct Fixture {
    _dir: tempfile::TempDir,
    data: PathBuf,
    offline: PathBuf,
    layout: Layout,
    url: String,
    tamper: Arc<Mutex<HashMap<String, Tamper>>>,
    appliance: PathBuf,
}

impl Fixture {
    /// Keys, releases 1 and 2 in `stable`, and a server for them.
    async fn new() -> Result<Fixture> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        let offline = dir.path().join("offline");
        let layout = Layout::new(&data);
        root::init(
            &layout,
            &root::InitOptions {
                offline_dir: offline.clone(),
                targets_key: offline.join("targets.pem"),
                root_keys: 3,
                root_threshold: 2,
                root_expires_days: 365,
            },
        )
        .await?;
        let tamper: Arc<Mutex<HashMap<String, Tamper>>> = Default::default();
        let app = axum::Router::new()
            .route("/releases/{channel}/{kind}/{file}", get(serve_file))
            .with_state(Server {
                releases: layout.dir.clone(),
                tamper: tamper.clone(),
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        let f = Fixture {
            appliance: dir.path().join("appliance"),
            _dir: dir,
            data,
            offline,
            layout,
            url,
            tamper,
        };
        f.publish("2026.12.01-aaaa", 1, "stable").await?;
        f.publish("2026.12.02-bbbb", 2, "stable").await?;
        Ok(f)
    }

    async fn publish(&self, version: &str, fill: u8, ch: &str) -> Result<()> {
        self.publish_with(version, fill, ch, &self.offline.join("targets.pem"))
            .await
    }

    async fn publish_with(&self, version: &str, fill: u8, ch: &str, key: &Path) -> Result<()> {
        let img = self.data.parent().unwrap().join(format!("img-{version}"));
        std::fs::create_dir_all(&img)?;
        let mut artifacts = serde_json::Map::new();
        for (name, len) in [
            ("vmlinuz", 1000usize),
            ("initrd.img", 2000),
            ("rootfs.squashfs", 9000),
        ] {
            let data: Vec<u8> = (0..len)
                .map(|i| fill.wrapping_mul(31) ^ (i as u8))
                .collect();
            std::fs::write(img.join(name), &data)?;
            artifacts.insert(
                name.into(),
                serde_json::json!({"sha256": hex::encode(sha2::Sha256::digest(&data)), "size": len}),
            );
        }
        let manifest = serde_json::json!({"name": "levee-appliance", "version": version, "artifacts": artifacts});
        std::fs::write(img.join("image.json"), serde_json::to_vec(&manifest)?)?;
        channel::publish(
            &self.layout,
            &img,
            ch,
            &channel::PublishOptions {
                targets_key: key.to_path_buf(),
                min_release: 1,
                expires_days: 365,
            },
        )
        .await?;
        Ok(())
    }

    fn options(&self) -> ChannelOptions {
        ChannelOptions {
            server_url: self.url.clone(),
            channel: "stable".into(),
            state_dir: self.appliance.join("tuf/stable"),
            baked_root: self.offline.join("root.json"),
            transport: TransportOptions {
                connect_timeout: Duration::from_secs(2),
                read_timeout: Duration::from_secs(2),
                deadline: Duration::from_secs(3),
                max_bytes: 4 << 20,
                min_rate: 1000,
                grace: Duration::from_secs(1),
            },
        }
    }

    fn meta(&self) -> PathBuf {
        self.layout.metadata_dir("stable")
    }

    /// Checks as an appliance running release 1.
    async fn check(&self) -> Result<Decision, UpdateError> {
        let running = Running {
            version: "2026.12.01-aaaa".into(),
            release: None,
        };
        update::check(&self.options(), &running, None).await
    }

    /// Re-signs the current timestamp with `key`, at `version`, expiring in a day.
    async fn forge_timestamp(&self, key: &Path, version: u64) -> Result<()> {
        let path = self.meta().join("timestamp.json");
        let mut ts: tough::schema::Signed<tough::schema::Timestamp> =
            serde_json::from_slice(&std::fs::read(&path)?)?;
        ts.signed.version = keys::nonzero(version)?;
        ts.signed.expires = chrono::Utc::now() + chrono::Duration::days(1);
        let signed = keys::sign_role(&ts.signed, &[keys::PemKey::new(key).load()?]).await?;
        std::fs::write(&path, serde_json::to_vec_pretty(&signed)?)?;
        Ok(())
    }
}

fn expect_refused(r: Result<Decision, UpdateError>, kind: Refusal) -> String {
    match r {
        Err(e) => {
            assert_eq!(e.refusal(), Some(kind), "wrong refusal: {e}");
            let text = e.to_string();
            assert!(text.contains(kind.as_str()), "{text}");
            text
        }
        Ok(d) => panic!("expected a {} refusal, got {d:?}", kind.as_str()),
    }
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        std::fs::copy(e.path(), to.join(e.file_name()))?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r13_golden_offer_from_signed_metadata() -> Result<()> {
    let f = Fixture::new().await?;
    let Decision::Update(offer) = f.check().await? else {
        panic!("release 2 not offered")
    };
    assert_eq!(
        (offer.release, offer.version.as_str()),
        (2, "2026.12.02-bbbb")
    );
    assert_eq!(offer.image.version, "2026.12.02-bbbb");
    for a in ["vmlinuz", "initrd.img", "rootfs.squashfs", "image.json"] {
        let t = &offer.targets[a];
        // The URL is the consistent-snapshot name; the server has that file.
        let body = reqwest::get(&t.url).await?.bytes().await?;
        assert_eq!(hex::encode(sha2::Sha256::digest(&body)), t.sha256, "{a}");
        assert_eq!(body.len() as u64, t.length);
    }
    // The newest root is kept for the next check.
    assert!(f.appliance.join("tuf/stable/root.json").is_file());
    // Already on release 2: nothing to do.
    let running = Running {
        version: "2026.12.02-bbbb".into(),
        release: None,
    };
    assert_eq!(
        update::check(&f.options(), &running, None).await?,
        Decision::UpToDate { release: 2 }
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r13_rollback_of_metadata_and_of_releases_is_refused() -> Result<()> {
    let f = Fixture::new().await?;
    let old = f.data.join("old-meta");
    copy_dir(&f.meta(), &old)?;
    f.publish("2026.12.03-cccc", 3, "stable").await?;
    let Decision::Update(offer) = f.check().await? else {
        panic!()
    };
    assert_eq!(offer.release, 3);
    // The server (or a man in the middle) goes back to older metadata.
    std::fs::remove_dir_all(f.meta())?;
    copy_dir(&old, &f.meta())?;
    let why = expect_refused(f.check().await, Refusal::Rollback);
    assert!(why.contains("previously fetched version"), "{why}");
    // A server naming an older release than the running one.
    let running = Running {
        version: "x".into(),
        release: Some(3),
    };
    let mut fresh = f.options();
    fresh.state_dir = f.appliance.join("tuf2/stable");
    expect_refused(
        update::check(&fresh, &running, Some(1)).await,
        Refusal::Rollback,
    );
    // And one the channel never signed.
    expect_refused(
        update::check(&fresh, &Running::default(), Some(9)).await,
        Refusal::NotSigned,
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r13_freeze_expired_metadata_is_refused() -> Result<()> {
    let f = Fixture::new().await?;
    // Metadata that was valid two days ago, replayed.
    let _lock = f.layout.lock()?;
    refresh::resign_at(
        &f.layout,
        "stable",
        true,
        chrono::Utc::now() - chrono::Duration::days(2),
    )
    .await?;
    let why = expect_refused(f.check().await, Refusal::Freeze);
    assert!(why.contains("timestamp"), "{why}");
    Ok(())
}

/// The agent's own scheduled check (`update::schedule`), without any
/// offer: a channel signing a newer release is only noted (the rollout
/// decides when it is taken; nothing is downloaded), a frozen one is
/// refused and becomes a `check-failed` report naming `freeze`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r13_scheduled_check_notices_a_frozen_channel_without_an_offer() -> Result<()> {
    use levee_agent::update::schedule::{check_channel, CheckOutcome};
    let f = Fixture::new().await?;
    let running = Running {
        version: "2026.12.01-aaaa".into(),
        release: Some(1),
    };
    let found = check_channel(&f.options(), &running).await;
    assert_eq!(
        found,
        CheckOutcome::Newer {
            release: 2,
            version: "2026.12.02-bbbb".into()
        }
    );
    // Reported as `checked` only when the server may think otherwise
    // (first after boot, or after a refusal).
    let ok = found.report("stable", &running, None).context("checked")?;
    assert_eq!(ok.state, levee_proto::update::UpdateState::Checked);
    assert!(found.report("stable", &running, Some(false)).is_none());
    assert!(found
        .describe("stable")
        .contains("when the rollout offers it"));
    assert!(!f.appliance.join("update").exists(), "nothing downloaded");
    // The server stops re-signing: two days later the timestamp expired.
    {
        let _lock = f.layout.lock()?;
        refresh::resign_at(
            &f.layout,
            "stable",
            true,
            chrono::Utc::now() - chrono::Duration::days(2),
        )
        .await?;
    }
    let frozen = check_channel(&f.options(), &running).await;
    assert!(
        matches!(
            frozen,
            CheckOutcome::Refused {
                kind: Refusal::Freeze,
                ..
            }
        ),
        "{frozen:?}"
    );
    let r = frozen
        .report("stable", &running, Some(false))
        .context("a report")?;
    assert_eq!(r.state, levee_proto::update::UpdateState::CheckFailed);
    let reason = r.reason.unwrap_or_default();
    assert!(
        reason.contains("refused (freeze)") && reason.contains("expired"),
        "{reason}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r13_mix_and_match_is_refused() -> Result<()> {
    let f = Fixture::new().await?;
    // Targets metadata of an earlier moment, validly signed, under the name
    // the current snapshot points to.
    std::fs::copy(
        f.meta().join("1.targets.json"),
        f.meta().join("2.targets.json"),
    )?;
    expect_refused(f.check().await, Refusal::MixAndMatch);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r13_arbitrary_package_is_refused() -> Result<()> {
    let f = Fixture::new().await?;
    let targets = f.layout.targets_dir("stable");
    let manifest = std::fs::read_dir(&targets)?
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("2026.12.02-bbbb.image.json"))
        .context("no image.json target")?;
    let mut bytes = std::fs::read(&manifest)?;
    bytes[10] ^= 1;
    std::fs::write(&manifest, bytes)?;
    expect_refused(f.check().await, Refusal::ArbitraryPackage);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r13_endless_data_and_slow_retrieval_are_refused() -> Result<()> {
    let f = Fixture::new().await?;
    f.tamper
        .lock()
        .unwrap()
        .insert("timestamp.json".into(), Tamper::Endless);
    expect_refused(f.check().await, Refusal::EndlessData);
    f.tamper
        .lock()
        .unwrap()
        .insert("timestamp.json".into(), Tamper::Slow);
    let started = std::time::Instant::now();
    expect_refused(f.check().await, Refusal::SlowRetrieval);
    assert!(started.elapsed() < Duration::from_secs(10));
    // Endless data on a target: the snapshot/targets lengths bound it.
    f.tamper.lock().unwrap().clear();
    let manifest_name = std::fs::read_dir(f.layout.targets_dir("stable"))?
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|n| n.ends_with("2026.12.02-bbbb.image.json"))
        .context("no image.json target")?;
    f.tamper
        .lock()
        .unwrap()
        .insert(manifest_name, Tamper::Endless);
    let r = f.check().await;
    let kind = r.as_ref().err().and_then(|e| e.refusal());
    assert!(
        matches!(kind, Some(Refusal::EndlessData | Refusal::ArbitraryPackage)),
        "{r:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r13_root_below_threshold_is_refused() -> Result<()> {
    let f = Fixture::new().await?;
    // Root version 2 signed by one root key where the threshold is two.
    let (_, v1) = f.layout.latest_root()?;
    let mut set = keys::RoleSet::of(&v1.signed)?;
    set.root_threshold = 1;
    let v2 = keys::build_root(&set, 2, chrono::Utc::now() + chrono::Duration::days(30))?;
    let one = keys::PemKey::new(f.offline.join("root-1.pem")).load()?;
    let signed = keys::sign_role(&v2, &[one]).await?;
    std::fs::write(
        f.meta().join("2.root.json"),
        serde_json::to_vec_pretty(&signed)?,
    )?;
    let why = expect_refused(f.check().await, Refusal::Signature);
    assert!(why.contains("root"), "{why}");
    // Targets signed by a key that is not the targets key.
    std::fs::remove_file(f.meta().join("2.root.json"))?;
    let path = f.meta().join("2.targets.json");
    let t: tough::schema::Signed<tough::schema::Targets> =
        serde_json::from_slice(&std::fs::read(&path)?)?;
    let wrong = keys::PemKey::new(f.offline.join("root-2.pem")).load()?;
    let forged = keys::sign_role(&t.signed, &[wrong]).await?;
    std::fs::write(&path, serde_json::to_vec_pretty(&forged)?)?;
    let r = f.check().await;
    let kind = r.as_ref().err().and_then(|e| e.refusal());
    // The snapshot's hash of targets.json catches it first, or the signature.
    assert!(
        matches!(kind, Some(Refusal::MixAndMatch | Refusal::Signature)),
        "{r:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r13_revoked_key_and_fast_forward_recovery() -> Result<()> {
    let f = Fixture::new().await?;
    assert!(matches!(f.check().await?, Decision::Update(_)));
    // An attacker holding the (compromised) timestamp key fast-forwards the
    // appliance to timestamp version 1000: validly signed, so accepted.
    let stolen = f.data.join("stolen-timestamp.pem");
    std::fs::copy(f.layout.timestamp_key().path, &stolen)?;
    let good_ts = std::fs::read(f.meta().join("timestamp.json"))?;
    f.forge_timestamp(&stolen, 1000).await?;
    assert!(matches!(f.check().await?, Decision::Update(_)));
    std::fs::write(f.meta().join("timestamp.json"), good_ts)?;
    // Until ops rotate, the real timestamp (version 1) looks like a rollback.
    expect_refused(f.check().await, Refusal::Rollback);

    // Ops rotate the online keys and revoke a root key.
    root::rotate(
        &f.layout,
        &root::RotateOptions {
            offline_dir: f.offline.clone(),
            revoke: vec![f.offline.join("root-2.pem").display().to_string()],
            rotate_online: true,
            root_expires_days: 365,
            ..Default::default()
        },
    )
    .await?;
    // Recovery: the new root changes the timestamp key, the client drops
    // the fast-forwarded timestamp and accepts the real one.
    assert!(matches!(f.check().await?, Decision::Update(_)));
    // The revoked (stolen) timestamp key no longer signs anything.
    f.forge_timestamp(&stolen, 5000).await?;
    let why = expect_refused(f.check().await, Refusal::Signature);
    assert!(why.contains("timestamp"), "{why}");
    Ok(())
}

/// Targets key rotation (`levee release keys rotate-targets`): root v2
/// names a new targets key and every channel's targets are re-signed with
/// it. An appliance that trusted root v1 (and one that only has the baked
/// v1) follows the chain and is still offered release 2; publishing with
/// the old key is refused, with the new one it works; and targets signed
/// by the old key, even with snapshot and timestamp signed by the real
/// online keys (someone holding the old key and the server), are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r13_rotated_targets_key_is_followed_and_the_old_one_refused() -> Result<()> {
    let f = Fixture::new().await?;
    assert!(matches!(f.check().await?, Decision::Update(_)));
    let old_key = f.offline.join("targets.pem");
    let new_key = f.offline.join("targets-2.pem");
    let r = root::rotate(
        &f.layout,
        &root::RotateOptions {
            offline_dir: f.offline.clone(),
            new_targets_key: Some(new_key.clone()),
            targets_expires_days: 365,
            root_expires_days: 365,
            ..Default::default()
        },
    )
    .await?;
    assert_eq!(r.version, 2);
    assert_eq!(r.channels_resigned, ["stable"]);
    assert_eq!(r.targets_key.as_deref(), Some(new_key.as_path()));
    // The appliance that checked under root v1 walks to v2.
    let Decision::Update(offer) = f.check().await? else {
        panic!("release 2 not offered after the rotation")
    };
    assert_eq!(offer.release, 2);
    let trusted: tough::schema::Signed<tough::schema::Root> =
        serde_json::from_slice(&std::fs::read(f.appliance.join("tuf/stable/root.json"))?)?;
    assert_eq!(trusted.signed.version.get(), 2);
    // A new appliance with only the baked root v1 as well.
    let mut fresh = f.options();
    fresh.state_dir = f.appliance.join("fresh/tuf/stable");
    let running = Running {
        version: "2026.12.01-aaaa".into(),
        release: None,
    };
    assert!(matches!(
        update::check(&fresh, &running, None).await?,
        Decision::Update(_)
    ));
    // The old key no longer publishes; the new one does.
    let err = f
        .publish_with("2026.12.03-cccc", 3, "stable", &old_key)
        .await
        .expect_err("published with the old targets key");
    assert!(
        format!("{err:#}").contains("the targets key root version 2 names"),
        "{err:#}"
    );
    f.publish_with("2026.12.03-cccc", 3, "stable", &new_key)
        .await?;
    let Decision::Update(offer) = f.check().await? else {
        panic!("release 3 not offered")
    };
    assert_eq!(offer.release, 3);

    // Targets signed by the old key, with a consistent snapshot and
    // timestamp signed by the online keys: refused, nothing offered.
    let meta = f.meta();
    let ts: tough::schema::Signed<tough::schema::Timestamp> =
        serde_json::from_slice(&std::fs::read(meta.join("timestamp.json"))?)?;
    let sv = ts.signed.meta["snapshot.json"].version.get();
    let mut snap: tough::schema::Signed<tough::schema::Snapshot> =
        serde_json::from_slice(&std::fs::read(meta.join(format!("{sv}.snapshot.json")))?)?;
    let tv = snap.signed.meta["targets.json"].version.get();
    let mut targets: tough::schema::Signed<tough::schema::Targets> =
        serde_json::from_slice(&std::fs::read(meta.join(format!("{tv}.targets.json")))?)?;
    targets.signed.version = keys::nonzero(tv + 1)?;
    let forged = keys::sign_role(&targets.signed, &[keys::PemKey::new(&old_key).load()?]).await?;
    let forged_bytes = serde_json::to_vec_pretty(&forged)?;
    std::fs::write(meta.join(format!("{}.targets.json", tv + 1)), &forged_bytes)?;
    snap.signed.version = keys::nonzero(sv + 1)?;
    snap.signed.meta.insert(
        "targets.json".into(),
        refresh::snapshot_metafile(&forged_bytes, tv + 1)?,
    );
    let snap = keys::sign_role(&snap.signed, &[f.layout.snapshot_key().load()?]).await?;
    let snap_bytes = serde_json::to_vec_pretty(&snap)?;
    std::fs::write(meta.join(format!("{}.snapshot.json", sv + 1)), &snap_bytes)?;
    let mut ts = ts.signed;
    ts.version = keys::nonzero(ts.version.get() + 1)?;
    ts.meta.insert(
        "snapshot.json".into(),
        refresh::snapshot_metafile(&snap_bytes, sv + 1)?,
    );
    let ts = keys::sign_role(&ts, &[f.layout.timestamp_key().load()?]).await?;
    std::fs::write(meta.join("timestamp.json"), serde_json::to_vec_pretty(&ts)?)?;
    let why = expect_refused(f.check().await, Refusal::Signature);
    assert!(why.contains("targets"), "{why}");
    Ok(())
}
