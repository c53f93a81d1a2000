//! Issue 12, item 8: locks are authenticated, a heartbeat from the future
//! does not keep a lock alive, another machine with our hostname is not
//! judged by our pids, and `unlock` removes stale locks but never live ones.

use std::fs;

use levee_agent::backup::lock::{process_id, seal, Lock, LockInfo};
use levee_agent::Repository;

use crate::util::{Env, PASSWORD};

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn pid1_start() -> u64 {
    let s = fs::read_to_string("/proc/1/stat").expect("stat");
    let rest = &s[s.rfind(')').expect(")") + 2..];
    rest.split(' ')
        .nth(19)
        .and_then(|x| x.parse().ok())
        .expect("start")
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("hostname")
        .trim()
        .into()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn r12_forged_future_and_foreign_locks_do_not_block_prune() {
    let env = Env::new();
    let locks = env.repo.join("locks");
    let repo = Repository::open(&env.repo, PASSWORD.as_bytes()).expect("open");
    let now = now_ns();
    let base = LockInfo {
        kind: "prune".into(),
        hostname: hostname(),
        pid: 1,
        pid_start: pid1_start(),
        boot_id: "another machine with our hostname".into(),
        process_id: "00".repeat(16),
        start_ns: now,
        heartbeat_ns: now,
    };
    // 1. The old plaintext format, as anyone with write access could plant
    //    (a live pid on our host, a heartbeat a century ahead).
    let mut plain = base.clone();
    plain.boot_id = String::new();
    plain.heartbeat_ns = now + 100 * 365 * 86_400 * 1_000_000_000;
    fs::write(
        locks.join("aa".repeat(16)),
        serde_json::to_vec(&plain).expect("json"),
    )
    .expect("w");
    // 2. Authenticated, heartbeat an hour in the future: a clock far ahead.
    let mut future = base.clone();
    future.heartbeat_ns = now + 3600 * 1_000_000_000;
    fs::write(locks.join("bb".repeat(16)), seal(repo.key(), &future)).expect("w");
    // 3. Authenticated, same hostname and a pid alive here (1), but another
    //    machine, heartbeat 40 minutes old: stale, whatever our pid 1 does.
    let mut foreign = base.clone();
    foreign.heartbeat_ns = now - 40 * 60 * 1_000_000_000;
    fs::write(locks.join("cc".repeat(16)), seal(repo.key(), &foreign)).expect("w");

    let o = env.run(&["prune"]);
    assert!(o.status.success(), "prune blocked: {}", stderr(&o));

    let u = env.json(&["unlock"]);
    assert_eq!(u["removed"].as_array().map(Vec::len), Some(2), "{u}");
    assert_eq!(
        u["removed_invalid"].as_array().map(Vec::len),
        Some(1),
        "{u}"
    );
    assert_eq!(fs::read_dir(&locks).expect("locks").count(), 0);

    // A live lock (this test process, same boot): prune waits for it and
    // unlock leaves it.
    let live = Lock::acquire(repo.local().clone(), repo.key(), "prune").expect("lock");
    assert_eq!(live.info.process_id, process_id());
    let o = env.run(&["prune"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("another prune is running"),
        "{}",
        stderr(&o)
    );
    let u = env.json(&["unlock"]);
    assert_eq!(u["alive"].as_array().map(Vec::len), Some(1), "{u}");
    assert!(locks.join(live.name()).exists());
    drop(live);
    env.ok(&["prune"]);
}
