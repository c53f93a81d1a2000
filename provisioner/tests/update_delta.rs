//! Delta updates on the host: two releases whose root file systems (real
//! squashfs images, made with mksquashfs as the image builder does) differ
//! only in the agent binary and the version in os-release, published with
//! `levee release publish`'s chunk index, served by a test server that
//! honours `Range`, counts every body byte it sends and can corrupt the
//! ranges it serves. The agent's apply path updates slot b from slot a
//! (files here) and the ESP directory.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use levee_agent::install::grubenv::{self, GrubEnv};
use levee_agent::update::apply::{self, ApplyOptions, Prepared, Request, SlotTarget};
use levee_agent::update::decide::UpdateState;
use levee_agent::update::{ChannelOptions, Running, TransportOptions};
use levee_provisioner::releases::{channel, root, Layout};

const V1: &str = "2026.12.01-aaaa";
const V2: &str = "2026.12.02-bbbb";

#[derive(Clone, Default)]
struct Counters {
    /// Body bytes sent, every file and range.
    sent: Arc<AtomicU64>,
    ranges: Arc<AtomicU64>,
    /// Flip a byte in every range answer.
    corrupt: Arc<AtomicBool>,
}

#[derive(Clone)]
struct Server {
    releases: PathBuf,
    counters: Counters,
}

/// `bytes=A-B` or `bytes=A-`, within `len`.
fn range(headers: &HeaderMap, len: usize) -> Option<(usize, usize)> {
    let v = headers.get(header::RANGE)?.to_str().ok()?;
    let (a, b) = v.strip_prefix("bytes=")?.split_once('-')?;
    let a: usize = a.parse().ok()?;
    let b: usize = if b.is_empty() {
        len - 1
    } else {
        b.parse().ok()?
    };
    (a <= b && b < len).then_some((a, b + 1))
}

async fn serve_file(
    State(s): State<Server>,
    UrlPath((channel, kind, file)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if file.contains('/') || file.starts_with('.') || !(kind == "metadata" || kind == "targets") {
        return (StatusCode::NOT_FOUND, "no").into_response();
    }
    let Ok(body) = std::fs::read(s.releases.join(channel).join(kind).join(file)) else {
        return (StatusCode::NOT_FOUND, "no").into_response();
    };
    let c = &s.counters;
    match range(&headers, body.len()) {
        Some((a, b)) => {
            let mut part = body[a..b].to_vec();
            if c.corrupt.load(Ordering::SeqCst) {
                part[0] ^= 0xff;
            }
            c.sent.fetch_add(part.len() as u64, Ordering::SeqCst);
            c.ranges.fetch_add(1, Ordering::SeqCst);
            let cr = format!("bytes {a}-{}/{}", b - 1, body.len());
            (
                StatusCode::PARTIAL_CONTENT,
                [(header::CONTENT_RANGE, cr)],
                part,
            )
                .into_response()
        }
        None => {
            c.sent.fetch_add(body.len() as u64, Ordering::SeqCst);
            body.into_response()
        }
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    url: String,
    counters: Counters,
    v1: PathBuf,
    v2: PathBuf,
}

async fn fixture() -> Result<Fixture> {
    let dir = tempfile::tempdir()?;
    let layout = Layout::new(&dir.path().join("data"));
    let offline = dir.path().join("offline");
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
    let opts = channel::PublishOptions {
        targets_key: offline.join("targets.pem"),
        min_release: 1,
        expires_days: 365,
    };
    let v1 = common::squashfs_image(dir.path(), V1, 1000, &common::SQUASH_SMALL)?;
    let v2 = common::squashfs_image(dir.path(), V2, 2000, &common::SQUASH_SMALL)?;
    channel::publish(&layout, &v1, "stable", &opts).await?;
    channel::publish(&layout, &v2, "stable", &opts).await?;
    // Each release carries its signed chunk index.
    let state = channel::state(&layout, "stable")
        .await?
        .context("channel")?;
    for r in &state.releases {
        assert!(
            r.artifacts.iter().any(|a| a.artifact == "rootfs.chunks"),
            "release {} has no chunk index",
            r.version
        );
    }
    let counters = Counters::default();
    let app = axum::Router::new()
        .route("/releases/{channel}/{kind}/{file}", get(serve_file))
        .with_state(Server {
            releases: layout.dir.clone(),
            counters: counters.clone(),
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(Fixture {
        dir,
        url,
        counters,
        v1,
        v2,
    })
}

/// Updates an appliance on release 1 (slot a holds v1's rootfs, padded
/// like a partition larger than its image) to release 2 in slot b.
fn update(f: &Fixture, name: &str) -> Result<(Prepared, Vec<String>)> {
    let work = f.dir.path().join(name);
    let esp = work.join("esp");
    std::fs::create_dir_all(esp.join("levee"))?;
    let mut env = GrubEnv::fresh();
    env.commit("a");
    grubenv::write(&esp, &env)?;
    // Slot a's kernel and initrd (the same in both releases).
    std::fs::create_dir_all(esp.join("levee/a"))?;
    for name in ["vmlinuz", "initrd.img"] {
        std::fs::copy(f.v1.join(name), esp.join("levee/a").join(name))?;
    }
    let mut slot_a = std::fs::read(f.v1.join("rootfs.squashfs"))?;
    slot_a.resize(slot_a.len() + (3 << 20), 0);
    std::fs::write(work.join("levee-a"), &slot_a)?;
    let state_dir = work.join("state");
    let channel = ChannelOptions {
        server_url: f.url.clone(),
        channel: "stable".into(),
        state_dir: state_dir.join("tuf/stable"),
        baked_root: f.dir.path().join("offline/root.json"),
        transport: TransportOptions::METADATA,
    };
    let opts = ApplyOptions {
        state_dir: &state_dir,
        channel: &channel,
        bandwidth: None,
        timeout: Duration::from_secs(60),
    };
    let target = SlotTarget {
        rootfs: work.join("levee-b"),
        esp,
        seed: Some(work.join("levee-a")),
    };
    let running = Running {
        version: V1.into(),
        release: Some(1),
    };
    let req = Request {
        running: &running,
        running_slot: "a",
        want: 2,
        target_slot: "b",
        target: &target,
    };
    let mut lines = Vec::new();
    let p = apply::prepare(&opts, &mut UpdateState::default(), &req, &mut |l: &str| {
        lines.push(l.to_string())
    })?
    .context("an update")?;
    assert_eq!(
        std::fs::read(work.join("levee-b"))?,
        std::fs::read(f.v2.join("rootfs.squashfs"))?,
        "slot b does not hold v2's rootfs"
    );
    Ok((p, lines))
}

/// v1 -> v2, which differ in the agent binary: every byte the server sent
/// (metadata, index, ranges; kernel and initrd are slot a's) is at most
/// 25% of the rootfs;
/// the log and the report's summary say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r13_delta_update_downloads_only_the_changed_chunks() -> Result<()> {
    let f = fixture().await?;
    let rootfs_len = std::fs::metadata(f.v2.join("rootfs.squashfs"))?.len();
    let (p, lines) = tokio::task::block_in_place(|| update(&f, "delta"))?;
    let sent = f.counters.sent.load(Ordering::SeqCst);
    let delta = p.rootfs.delta.as_ref().context("the rootfs came in full")?;
    eprintln!(
        "rootfs {rootfs_len} bytes; server sent {sent} bytes in all ({:.1}%), {} ranges; {}",
        sent as f64 * 100.0 / rootfs_len as f64,
        f.counters.ranges.load(Ordering::SeqCst),
        p.rootfs.summary()
    );
    assert!(
        sent * 4 <= rootfs_len,
        "the server sent {sent} bytes for a {rootfs_len}-byte rootfs"
    );
    assert_eq!(delta.reused + delta.fetched, rootfs_len);
    assert!(
        delta.ranges >= 1 && delta.reused > rootfs_len / 2,
        "{delta:?}"
    );
    assert_eq!(p.rootfs.downloaded, delta.fetched + delta.index_bytes);
    assert!(p.rootfs.summary().starts_with("rootfs by delta: "));
    assert!(
        lines.iter().any(|l| l.contains("rootfs by delta")),
        "{lines:?}"
    );
    // Kernel and initrd did not change: copied from slot a, not fetched.
    assert_eq!(p.downloaded, p.rootfs.downloaded, "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("vmlinuz: the same as slot a's, copied")),
        "{lines:?}"
    );
    Ok(())
}

/// A server that corrupts the ranges it serves: the first bad chunk is
/// refused (`arbitrary package`) and the update falls back to the full
/// download, which still ends with v2 in slot b.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r13_corrupted_chunk_is_refused_and_the_full_download_follows() -> Result<()> {
    let f = fixture().await?;
    f.counters.corrupt.store(true, Ordering::SeqCst);
    let rootfs_len = std::fs::metadata(f.v2.join("rootfs.squashfs"))?.len();
    let (p, lines) = tokio::task::block_in_place(|| update(&f, "corrupt"))?;
    assert!(p.rootfs.delta.is_none(), "{:?}", p.rootfs);
    let why = p.rootfs.full_because.clone().unwrap_or_default();
    assert!(
        why.contains("arbitrary package") && why.contains("the signed index says"),
        "{why}"
    );
    assert!(p
        .rootfs
        .summary()
        .contains("fell back to the full download"));
    assert_eq!(p.rootfs.downloaded, rootfs_len);
    assert!(f.counters.sent.load(Ordering::SeqCst) >= rootfs_len);
    assert!(
        lines.iter().any(|l| l.contains("the delta failed")),
        "{lines:?}"
    );
    Ok(())
}
