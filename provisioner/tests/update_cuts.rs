//! Power cuts during an update, on the host: the agent's apply path
//! (TUF check, slot write, ESP files, grubenv) runs in a child process
//! that is SIGKILLed at spread-out moments, with the slot as a file and
//! the ESP as a directory. After every kill, the slot GRUB would boot
//! (`slot::grub_choice`, the same rules as `GRUB_CFG`) must be complete,
//! the boot environment and the update state readable; a last run without
//! a kill finishes the update (resuming what the cut runs left).
//!
//! The child is this test binary running this same test with
//! `LEVEE_TEST_APPLY_CHILD` set (see `child`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use levee_agent::install::grubenv::{self, GrubEnv};
use levee_agent::update::apply::{self, ApplyOptions, Request, SlotTarget};
use levee_agent::update::decide::{Phase, UpdateState};
use levee_agent::update::slot;
use levee_agent::update::{ChannelOptions, Running, TransportOptions};
use levee_provisioner::secrets::ServerKey;

const CHILD_ENV: &str = "LEVEE_TEST_APPLY_CHILD";
const TEST: &str = "r13_sigkill_anywhere_leaves_a_complete_slot_chosen";
/// The child's download rate: the 3 MB rootfs takes about 2 s.
const RATE: u64 = 1_000_000;

#[derive(serde::Serialize, serde::Deserialize)]
struct Job {
    server_url: String,
    root: PathBuf,
    dir: PathBuf,
}

/// One apply, as the daemon's worker runs it: state from disk, release 2
/// into slot b.
fn child(job: &Job) {
    let state_dir = job.dir.join("state");
    let channel = ChannelOptions {
        server_url: job.server_url.clone(),
        channel: "stable".into(),
        state_dir: state_dir.join("tuf/stable"),
        baked_root: job.root.clone(),
        transport: TransportOptions::METADATA,
    };
    let opts = ApplyOptions {
        state_dir: &state_dir,
        channel: &channel,
        bandwidth: Some(RATE),
        timeout: Duration::from_secs(60),
    };
    let mut state = apply::load_state(&state_dir).expect("state");
    let running = Running {
        version: "2026.12.01-aaaa".into(),
        release: Some(1),
    };
    let target = SlotTarget {
        rootfs: job.dir.join("levee-b"),
        esp: job.dir.join("esp"),
        seed: None,
    };
    let req = Request {
        running: &running,
        running_slot: "a",
        want: 2,
        target_slot: "b",
        target: &target,
    };
    apply::prepare(&opts, &mut state, &req, &mut |l: &str| eprintln!("{l}"))
        .expect("prepare")
        .expect("an update");
}

/// The invariant after any cut: both views of the disk are readable and
/// GRUB's choice names a complete slot (slot a is never written).
fn check_complete(dir: &Path, img: &Path) -> String {
    let (env, _) = grubenv::read(&dir.join("esp")).expect("a readable boot environment");
    let (chosen, _) = slot::grub_choice(Some(&env));
    apply::load_state(&dir.join("state")).expect("a readable update state");
    if chosen == "b" {
        assert_eq!(
            std::fs::read(dir.join("levee-b")).expect("slot b"),
            std::fs::read(img.join("rootfs.squashfs")).expect("rootfs"),
            "GRUB would boot slot b with an incomplete rootfs"
        );
        for f in ["vmlinuz", "initrd.img"] {
            assert_eq!(
                std::fs::read(dir.join("esp/levee/b").join(f)).expect("boot file"),
                std::fs::read(img.join(f)).expect("artifact"),
                "GRUB would boot slot b with an incomplete {f}"
            );
        }
        assert!(dir.join("esp/levee/b/slot.cfg").is_file());
    }
    chosen
}

#[test]
fn r13_sigkill_anywhere_leaves_a_complete_slot_chosen() {
    if let Ok(job) = std::env::var(CHILD_ENV) {
        child(&serde_json::from_str(&job).expect("job"));
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, store) = common::store_with_default_profile(dir.path(), "quiet");
    ServerKey::load_or_create(&data).expect("key");
    let offline = dir.path().join("offline").display().to_string();
    common::levee(
        &data,
        &["release", "keys", "init", "--offline-dir", &offline],
    );
    common::publish_release(dir.path(), &data, "2026.12.01-aaaa", 1, 100_000);
    let img = common::publish_release(dir.path(), &data, "2026.12.02-bbbb", 2, 3_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (url, stop) = rt.block_on(common::serve_on_loopback(store, data, dir.path()));

    // An installed appliance on slot a, committed.
    let work = dir.path().join("appliance");
    std::fs::create_dir_all(work.join("esp/levee")).expect("esp");
    let mut env = GrubEnv::fresh();
    env.commit("a");
    grubenv::write(&work.join("esp"), &env).expect("grubenv");
    let job = serde_json::to_string(&Job {
        server_url: url,
        root: dir.path().join("offline/root.json"),
        dir: work.clone(),
    })
    .expect("job");
    let spawn = || {
        Command::new(std::env::current_exe().expect("test binary"))
            .args([TEST, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &job)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("child")
    };
    // Cuts spread over a run (about 2.5 s): before the check, in the
    // metadata, mid-rootfs, in the ESP files and around the switch.
    let mut chosen = Vec::new();
    for ms in [30u64, 150, 400, 900, 1400, 1900, 2200, 2400, 2600, 2800] {
        let mut c = spawn();
        std::thread::sleep(Duration::from_millis(ms));
        let _ = c.kill(); // SIGKILL
        c.wait().expect("wait");
        chosen.push(check_complete(&work, &img));
        let st = apply::load_state(&work.join("state")).expect("state");
        eprintln!(
            "cut at {ms} ms: GRUB boots {}, phase {:?}, slot b {} bytes",
            chosen.last().unwrap(),
            st.pending.map(|p| p.phase),
            std::fs::metadata(work.join("levee-b"))
                .map(|m| m.len())
                .unwrap_or(0)
        );
    }
    // A run that is not cut finishes the update.
    let started = Instant::now();
    let status = spawn().wait().expect("wait");
    assert!(status.success(), "the last apply failed");
    eprintln!("uncut run: {:?}", started.elapsed());
    assert_eq!(check_complete(&work, &img), "b", "after cuts {chosen:?}");
    let state: UpdateState = apply::load_state(&work.join("state")).expect("state");
    assert_eq!(state.pending.expect("pending").phase, Phase::Written);
    let (env, _) = grubenv::read(&work.join("esp")).expect("env");
    assert_eq!(
        (env.get("B_TRY"), env.get("ORDER")),
        (Some("1"), Some("B A"))
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    stop.cancel();
}
