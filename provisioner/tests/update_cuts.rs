//! Power cuts during an update, on the host: the agent's apply path
//! (TUF check, slot write, ESP files, grubenv) runs in a child process
//! that is SIGKILLed at spread-out moments, with the slot as a file and
//! the ESP as a directory. After every kill, the slot GRUB would boot
//! (`slot::grub_choice`, the same rules as `GRUB_CFG`) must be complete,
//! the boot environment and the update state readable; a last run without
//! a kill finishes the update (resuming what the cut runs left).
//!
//! Two tests: a full download (a made-up 3 MB rootfs), and a delta update
//! between two real squashfs images (the running slot the seed; cuts in
//! the chunk fetches, the slot writes and at the delta's checkpoints)
//! followed by a loop of cuts in the grubenv writes of the slot switch.
//! After every cut each whole copy of the grubenv on its own (GRUB may
//! read either after a cut tore the other) names a complete slot.
//!
//! The child is this test binary running the same test with
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
const DELTA_TEST: &str =
    "r13_sigkill_in_a_delta_update_and_in_grubenv_writes_leaves_a_complete_slot_chosen";
/// The child's download rate: the 3 MB rootfs takes about 2 s.
const RATE: u64 = 1_000_000;

#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, PartialEq)]
enum Mode {
    /// One apply of release 2 into slot b.
    Apply,
    /// The slot switch's grubenv writes, over and over (see
    /// [`grubenv_cycle`]).
    Grubenv,
}

#[derive(serde::Serialize, serde::Deserialize, Clone)]
struct Job {
    mode: Mode,
    server_url: String,
    root: PathBuf,
    dir: PathBuf,
    running_version: String,
    /// The running slot's partition (a delta's chunks).
    seed: Option<PathBuf>,
    /// The rootfs slot b holds when complete (the grubenv cycle tears and
    /// restores it).
    rootfs: PathBuf,
}

impl Job {
    fn run(&self, test: &str, log: &Path) -> std::process::Child {
        let log = std::fs::File::create(log).expect("child log");
        Command::new(std::env::current_exe().expect("test binary"))
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, serde_json::to_string(self).expect("job"))
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("child")
    }
}

/// One apply, as the daemon's worker runs it: state from disk, release 2
/// into slot b.
fn child(job: &Job) {
    if job.mode == Mode::Grubenv {
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            grubenv_cycle(job);
        }
        return;
    }
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
        version: job.running_version.clone(),
        release: Some(1),
    };
    let target = SlotTarget {
        rootfs: job.dir.join("levee-b"),
        esp: job.dir.join("esp"),
        seed: job.seed.clone(),
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

/// The grubenv writes of an update and what follows, in their order,
/// with slot b torn only while both copies say it is not bootable:
/// `unbootable` (step 1), the slot torn and written again (steps 2-3, its
/// first 4 KiB here), `try_once` (step 4), GRUB's own save before it boots
/// b (one try used), the commit of b; then the next update of b starts.
fn grubenv_cycle(job: &Job) {
    use std::os::unix::fs::FileExt;
    let esp = job.dir.join("esp");
    let slot_b = job.dir.join("levee-b");
    let env_err = |e| panic!("grubenv: {e}");
    slot::rewrite(&esp, |e| slot::unbootable(e, "b", "a")).unwrap_or_else(env_err);
    let mut good = [0u8; 4096];
    std::fs::File::open(&job.rootfs)
        .and_then(|r| r.read_exact_at(&mut good, 0))
        .expect("rootfs");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&slot_b)
        .expect("slot b");
    f.write_all_at(&[0u8; 4096], 0).expect("tear");
    f.sync_data().expect("sync");
    f.write_all_at(&good, 0).expect("restore");
    f.sync_data().expect("sync");
    slot::rewrite(&esp, |e| slot::try_once(e, "b", "a")).unwrap_or_else(env_err);
    let (env, _) = grubenv::read(&esp).expect("env");
    let (chosen, saved) = slot::grub_choice(Some(&env));
    assert_eq!(chosen, "b");
    grubenv::write(&esp, &saved.expect("saved")).unwrap_or_else(env_err);
    slot::rewrite(&esp, |e| {
        let mut e = e.clone();
        e.commit("b");
        e
    })
    .unwrap_or_else(env_err);
}

/// Slot b is complete: its rootfs and ESP files are the release's.
fn b_complete(dir: &Path, img: &Path) -> Result<(), String> {
    let slot_b = std::fs::read(dir.join("levee-b")).unwrap_or_default();
    if slot_b != std::fs::read(img.join("rootfs.squashfs")).expect("rootfs") {
        return Err("an incomplete rootfs".into());
    }
    for f in ["vmlinuz", "initrd.img"] {
        let got = std::fs::read(dir.join("esp/levee/b").join(f)).unwrap_or_default();
        if got != std::fs::read(img.join(f)).expect("artifact") {
            return Err(format!("an incomplete {f}"));
        }
    }
    if !dir.join("esp/levee/b/slot.cfg").is_file() {
        return Err("no slot.cfg".into());
    }
    Ok(())
}

/// The invariant after any cut: both views of the disk are readable and
/// GRUB's choice names a complete slot (slot a is never written), from
/// the environment as read and from each whole copy on its own (a power
/// cut, unlike SIGKILL, may also tear the block being written, and GRUB
/// then reads the other copy).
fn check_complete(dir: &Path, img: &Path) -> String {
    let esp = dir.join("esp");
    let (env, _) = grubenv::read(&esp).expect("a readable boot environment");
    let (chosen, _) = slot::grub_choice(Some(&env));
    apply::load_state(&dir.join("state")).expect("a readable update state");
    let mut whole = 0;
    for copy in grubenv::paths(&esp) {
        let Ok(env) = GrubEnv::parse(&std::fs::read(&copy).unwrap_or_default()) else {
            continue;
        };
        whole += 1;
        let (choice, _) = slot::grub_choice(Some(&env));
        if choice == "b" {
            if let Err(e) = b_complete(dir, img) {
                panic!(
                    "{} alone would boot slot b with {e}: {:?}",
                    copy.display(),
                    env.vars
                );
            }
        }
    }
    assert!(whole >= 1, "no whole copy of the boot environment");
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
    let job = Job {
        mode: Mode::Apply,
        server_url: url,
        root: dir.path().join("offline/root.json"),
        dir: work.clone(),
        running_version: "2026.12.01-aaaa".into(),
        seed: None,
        rootfs: img.join("rootfs.squashfs"),
    };
    let log = dir.path().join("child.log");
    let spawn = || job.run(TEST, &log);
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

/// The libraries of the delta test's images: 40 of 700 KB random bytes
/// (a 29 MB rootfs: three of the delta's 8 MiB checkpoints), two of them
/// changed between the releases besides the agent binary.
const SQUASH_CUTS: common::SquashTree = common::SquashTree {
    libs: 40,
    lib_len: 700_000,
    varied: &[13, 27],
    random: true,
};

/// What the cut runs left: the delta's checkpoint (`next_chunk` in
/// `update/*.delta`), if any.
fn delta_checkpoint(work: &Path) -> Option<u64> {
    std::fs::read_dir(work.join("state/update"))
        .ok()?
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().ends_with(".delta"))
        .and_then(|e| std::fs::read(e.path()).ok())
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["next_chunk"].as_u64())
}

fn b_try(work: &Path) -> Option<String> {
    grubenv::read(&work.join("esp"))
        .ok()
        .and_then(|(e, _)| e.get("B_TRY").map(str::to_string))
}

fn mtime(p: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Where a cut run is killed: a moment found by watching its disk (polled
/// every 2 ms), so the cuts land in the phases they are meant for whatever
/// the machine's speed; the invariant does not depend on it.
#[derive(Debug, Clone, Copy)]
enum CutAt {
    /// This long after the start.
    Time(u64),
    /// This run saved the update state saying the slot is about to be
    /// written.
    Writing,
    /// A delta checkpoint other than the one the run started from, then
    /// this many ms more.
    Checkpoint(u64),
    /// `slot.cfg` of slot b written by this run.
    SlotCfg,
    /// The switch: slot b's `B_TRY` went 0 (step 1) and then 1 (step 4).
    Switched,
}

/// Runs `job`, killing it at `at` (or letting it end): how it went.
fn cut_run(job: &Job, log: &Path, at: CutAt) -> String {
    let work = &job.dir;
    let start_ckpt = delta_checkpoint(work);
    let cfg = work.join("esp/levee/b/slot.cfg");
    let cfg_before = mtime(&cfg);
    let state_file = work.join("state/update/state.json");
    let state_before = mtime(&state_file);
    let mut seen_unbootable = false;
    let mut ckpt_seen: Option<Instant> = None;
    let mut c = job.run(DELTA_TEST, log);
    let t0 = Instant::now();
    loop {
        if let Some(st) = c.try_wait().expect("try_wait") {
            assert!(
                st.success(),
                "a cut run failed: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            return format!("{at:?}: ran to the end in {:?}", t0.elapsed());
        }
        let now = t0.elapsed();
        let fire = match at {
            CutAt::Time(ms) => now >= Duration::from_millis(ms),
            CutAt::Writing => {
                mtime(&state_file) != state_before
                    && apply::load_state(&work.join("state"))
                        .ok()
                        .and_then(|s| s.pending)
                        .is_some_and(|p| p.phase == Phase::Writing)
            }
            CutAt::Checkpoint(ms) => {
                if ckpt_seen.is_none() {
                    let ck = delta_checkpoint(work);
                    if ck.is_some() && ck != start_ckpt {
                        ckpt_seen = Some(Instant::now());
                    }
                }
                ckpt_seen.is_some_and(|t| t.elapsed() >= Duration::from_millis(ms))
            }
            CutAt::SlotCfg => mtime(&cfg).is_some() && mtime(&cfg) != cfg_before,
            CutAt::Switched => {
                let t = b_try(work);
                seen_unbootable |= t.as_deref() == Some("0");
                seen_unbootable && t.as_deref() == Some("1")
            }
        };
        if fire {
            let _ = c.kill(); // SIGKILL
            c.wait().expect("wait");
            return format!("{at:?}: cut at {:?}", t0.elapsed());
        }
        assert!(
            now < Duration::from_secs(60),
            "{at:?}: the run took over a minute"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn r13_sigkill_in_a_delta_update_and_in_grubenv_writes_leaves_a_complete_slot_chosen() {
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
    let (v1, v2) = ("2026.12.01-aaaa", "2026.12.02-bbbb");
    let img1 = common::squashfs_image(dir.path(), v1, 1, &SQUASH_CUTS).expect("v1");
    let img2 = common::squashfs_image(dir.path(), v2, 2, &SQUASH_CUTS).expect("v2");
    common::publish_image(dir.path(), &data, &img1);
    common::publish_image(dir.path(), &data, &img2);
    let rootfs_len = std::fs::metadata(img2.join("rootfs.squashfs"))
        .expect("rootfs")
        .len();
    assert!(rootfs_len > 3 * (8 << 20), "{rootfs_len}");
    let rt = common::runtime();
    let (url, stop) = rt.block_on(common::serve_on_loopback(store, data, dir.path()));

    // An installed appliance on slot a (v1, padded like a partition),
    // committed.
    let work = dir.path().join("appliance");
    let esp = work.join("esp");
    std::fs::create_dir_all(esp.join("levee/a")).expect("esp");
    for f in ["vmlinuz", "initrd.img"] {
        std::fs::copy(img1.join(f), esp.join("levee/a").join(f)).expect("boot file");
    }
    let mut env = GrubEnv::fresh();
    env.commit("a");
    grubenv::write(&esp, &env).expect("grubenv");
    let mut slot_a = std::fs::read(img1.join("rootfs.squashfs")).expect("v1");
    slot_a.resize(slot_a.len() + (3 << 20), 0);
    std::fs::write(work.join("levee-a"), &slot_a).expect("slot a");
    let job = Job {
        mode: Mode::Apply,
        server_url: url,
        root: dir.path().join("offline/root.json"),
        dir: work.clone(),
        running_version: v1.into(),
        seed: Some(work.join("levee-a")),
        rootfs: img2.join("rootfs.squashfs"),
    };
    let log = dir.path().join("child.log");

    // Cuts over delta runs: before and in the TUF check, as the slot is
    // about to be torn, right at and after checkpoints (copying chunks
    // from slot a or fetching ranges at 1 MB/s), once the rootfs is done
    // (slot.cfg), right after the switch, and in a run that starts over
    // on a complete slot b.
    let plan = [
        CutAt::Time(20),
        CutAt::Writing,
        CutAt::Checkpoint(0),
        CutAt::Checkpoint(400),
        CutAt::Time(1500),
        CutAt::Checkpoint(0),
        CutAt::SlotCfg,
        CutAt::Switched,
        CutAt::Checkpoint(0),
    ];
    let mut cut_after_checkpoint = 0;
    for at in plan {
        let how = cut_run(&job, &log, at);
        let chosen = check_complete(&work, &img2);
        let ckpt = delta_checkpoint(&work);
        cut_after_checkpoint += usize::from(ckpt.is_some());
        let last_line = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .last()
            .unwrap_or("")
            .to_string();
        eprintln!("{how}: GRUB boots {chosen}, delta checkpoint {ckpt:?}; last line: {last_line}");
    }
    assert!(
        cut_after_checkpoint >= 2,
        "no cut landed after a delta checkpoint"
    );
    // A run that is not cut resumes the delta at the checkpoint and
    // finishes the update.
    let resumed_from = delta_checkpoint(&work).expect("the last cut left a checkpoint");
    let started = Instant::now();
    let status = job.run(DELTA_TEST, &log).wait().expect("wait");
    let lines = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "the last apply failed: {lines}");
    eprintln!("uncut run: {:?}", started.elapsed());
    let summary = lines
        .lines()
        .find(|l| l.contains("rootfs by delta"))
        .unwrap_or_else(|| panic!("not by delta: {lines}"));
    eprintln!("{summary}");
    assert!(
        summary.contains(&format!("resumed at chunk {resumed_from} of")),
        "{summary}"
    );
    assert_eq!(check_complete(&work, &img2), "b");
    let state: UpdateState = apply::load_state(&work.join("state")).expect("state");
    assert_eq!(state.pending.expect("pending").phase, Phase::Written);

    // Cuts in the slot switch's grubenv writes: a child cycles through
    // them as fast as the disk syncs, killed at spread-out moments.
    let cycler = Job {
        mode: Mode::Grubenv,
        ..job.clone()
    };
    let mut landed = std::collections::BTreeMap::new();
    for i in 0..40u64 {
        let mut c = cycler.run(DELTA_TEST, &log);
        // Past the child's start (a few ms), then anywhere in a cycle.
        std::thread::sleep(Duration::from_millis(30 + (i * 37) % 90));
        let _ = c.kill();
        c.wait().expect("wait");
        let copies: Vec<String> = grubenv::paths(&esp)
            .iter()
            .map(|p| {
                GrubEnv::parse(&std::fs::read(p).unwrap_or_default())
                    .map(|e| {
                        format!(
                            "{}/{}/{}",
                            e.get("ORDER").unwrap_or("-"),
                            e.get("B_OK").unwrap_or("-"),
                            e.get("B_TRY").unwrap_or("-")
                        )
                    })
                    .unwrap_or_else(|e| e)
            })
            .collect();
        let chosen = check_complete(&work, &img2);
        *landed
            .entry(format!("{} | boots {chosen}", copies.join(" , ")))
            .or_insert(0) += 1;
    }
    eprintln!("grubenv cuts (primary ORDER/B_OK/B_TRY , backup ... | GRUB's choice): {landed:#?}");
    // Then the update runs again, uncut, and converges.
    let status = job.run(DELTA_TEST, &log).wait().expect("wait");
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(check_complete(&work, &img2), "b");
    let (env, _) = grubenv::read(&esp).expect("env");
    assert_eq!(
        (env.get("B_TRY"), env.get("ORDER")),
        (Some("1"), Some("B A"))
    );
    stop.cancel();
}
