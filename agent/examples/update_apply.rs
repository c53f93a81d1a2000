//! One update's disk work as the daemon runs it (`update::apply::prepare`:
//! TUF check, rootfs by delta or in full, kernel and initrd, grubenv), for
//! `bench/update.sh`. The slots are files and the ESP a directory.
//!
//!     update_apply SERVER_URL ROOT_JSON WORK_DIR RUNNING_VERSION WANT [SEED]
//!
//! Without SEED the rootfs comes in full. Prints the rootfs transfer as
//! JSON and the wall time.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use levee_agent::install::grubenv::{self, GrubEnv};
use levee_agent::update::apply::{self, ApplyOptions, Request, SlotTarget};
use levee_agent::update::decide::UpdateState;
use levee_agent::update::{ChannelOptions, Running, TransportOptions};

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(
        a.len() == 5 || a.len() == 6,
        "usage: update_apply SERVER_URL ROOT_JSON WORK_DIR RUNNING_VERSION WANT [SEED]"
    );
    let work = PathBuf::from(&a[2]);
    let esp = work.join("esp");
    std::fs::create_dir_all(esp.join("levee"))?;
    let mut env = GrubEnv::fresh();
    env.commit("a");
    grubenv::write(&esp, &env)?;
    let state_dir = work.join("state");
    let channel = ChannelOptions {
        server_url: a[0].clone(),
        channel: "stable".into(),
        state_dir: state_dir.join("tuf/stable"),
        baked_root: PathBuf::from(&a[1]),
        transport: TransportOptions::METADATA,
    };
    let opts = ApplyOptions {
        state_dir: &state_dir,
        channel: &channel,
        bandwidth: None,
        timeout: Duration::from_secs(3600),
    };
    let target = SlotTarget {
        rootfs: work.join("levee-b"),
        esp,
        seed: a.get(5).map(PathBuf::from),
    };
    let running = Running {
        version: a[3].clone(),
        release: None,
    };
    let req = Request {
        running: &running,
        running_slot: "a",
        want: a[4].parse().context("WANT: a release number")?,
        target_slot: "b",
        target: &target,
    };
    let started = Instant::now();
    let p = apply::prepare(&opts, &mut UpdateState::default(), &req, &mut |l: &str| {
        eprintln!("{l}")
    })?
    .context("nothing to update")?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"seconds": secs, "downloaded": p.downloaded, "rootfs": p.rootfs})
    );
    Ok(())
}
