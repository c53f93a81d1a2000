//! The update scenarios, each on a machine that [`super::start`] booted
//! from a fresh overlay of the base: release 1 in slot A, committed.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use levee_tests::vm::Vm;
use levee_tests::{run, wait_until};

use super::{grub_line, other, root_line, unix_now, wait_after, World, BAD_HEALTH_SECS, STEP};

/// Rolls out release `r` to a machine running slot `on`, and waits for
/// the agent to reboot into the other slot for it.
fn offer_and_reboot(world: &World, vm: &Vm, r: usize, on: char) -> anyhow::Result<usize> {
    let from = vm.console().len();
    world.rollout(r)?;
    let at = wait_after(vm, &format!("update to release {r} offered"), from)?;
    let to = other(on);
    let at = wait_after(vm, &format!("slot {to} holds release {r}"), at)?;
    wait_after(vm, &format!("rebooting into slot {to} for release {r}"), at)
}

/// How an update went, up to its commit.
struct Update {
    /// Rollout -> written to the other slot, rebooting.
    written: Duration,
    /// Rollout -> committed.
    committed: Duration,
    /// The agent's line with the delta's bytes.
    delta: String,
}

/// Rolls out release `r` to a machine running slot `on` and follows it to
/// its commit: offered, written into the other slot by the delta path
/// (only the chunks the running slot lacks, at most 25% of the rootfs),
/// reboot, GRUB's try of the other slot, trial, health check, committed.
fn update_to(world: &World, vm: &Vm, r: usize, on: char) -> anyhow::Result<Update> {
    let v = world.version(r).to_string();
    let to = other(on);
    let t0 = Instant::now();
    let from = vm.console().len();
    let at = offer_and_reboot(world, vm, r, on)?;
    let written = t0.elapsed();
    let console = vm.console();
    let delta = console
        .get(from..)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.find("rootfs by delta:").map(|i| l[i..].trim()))
        .with_context(|| format!("release {r} did not come by delta"))?
        .to_string();
    let pct: f64 = delta
        .split_once("downloaded (")
        .and_then(|(_, rest)| rest.split_once('%'))
        .and_then(|(n, _)| n.parse().ok())
        .with_context(|| format!("no share in: {delta}"))?;
    ensure!(pct <= 25.0, "the delta downloaded {pct}% of the rootfs");
    let at = wait_after(vm, &grub_line(to, true), at)?;
    let at = wait_after(vm, &root_line(to), at)?;
    let at = wait_after(vm, &format!("trial boot of release {r}"), at)?;
    wait_after(vm, &format!("update to release {r} ({v}) committed"), at)?;
    Ok(Update {
        written,
        committed: t0.elapsed(),
        delta,
    })
}

/// Heartbeats after `after` (unix seconds) say release `r` and `slot`,
/// `release status` counts `r` committed and on this appliance, and none
/// left on release `r - 1`.
fn converged(world: &World, r: usize, slot: char, after: u64) -> anyhow::Result<()> {
    let v = world.version(r).to_string();
    world.wait_heartbeat(after, &v, slot)?;
    wait_until(
        STEP,
        &format!("release status counting {v} committed"),
        || {
            let f = world.fleet(&v)?;
            Ok((f["committed"] == 1 && f["on"] == 1).then_some(()))
        },
    )?;
    let f = world.fleet(world.version(r - 1))?;
    ensure!(f["on"] == 0, "still counted on release {}: {f}", r - 1);
    Ok(())
}

/// v1 -> v2 in slot B, then v3 back in slot A, both by the delta path
/// (v3's bytes printed), neither cut.
pub fn golden(world: &World, vm: &Vm) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let rollout = unix_now();
    let u = update_to(world, vm, 2, 'a').context("v1 -> v2")?;
    eprintln!("golden: release 2 {}", u.delta);
    eprintln!(
        "golden: rollout -> written, rebooting {:.1} s; -> committed {:.1} s",
        u.written.as_secs_f64(),
        u.committed.as_secs_f64()
    );
    // Publish to commit on a running appliance: the publish (done before
    // release 1 booted) plus the rollout's way to commit.
    let published = world.publish_secs.get(1).copied().unwrap_or(f64::NAN);
    eprintln!(
        "golden: publish -> committed {:.1} s (publish {published:.1} s, rollout -> committed {:.1} s)",
        published + u.committed.as_secs_f64(),
        u.committed.as_secs_f64()
    );
    converged(world, 2, 'b', rollout).context("v2 committed")?;
    eprintln!(
        "golden: converged on {} in slot b, {:.1} s after the rollout",
        world.version(2),
        t0.elapsed().as_secs_f64()
    );

    let t3 = Instant::now();
    let rollout = unix_now();
    let u = update_to(world, vm, 3, 'b').context("v2 -> v3")?;
    eprintln!("golden: release 3 {}", u.delta);
    eprintln!(
        "golden: release 3 rollout -> written, rebooting {:.1} s; -> committed {:.1} s",
        u.written.as_secs_f64(),
        u.committed.as_secs_f64()
    );
    converged(world, 3, 'a', rollout).context("v3 committed")?;
    eprintln!(
        "golden: converged on {} in slot a, {:.1} s after its rollout",
        world.version(3),
        t3.elapsed().as_secs_f64()
    );
    Ok(())
}

/// v1 -> v2 by the delta path on a machine under OVMF (installed under
/// it): GRUB's EFI image tries slot B, the trial commits it, heartbeats
/// say v2 and slot b. Only the firmware differs from [`golden`]'s first
/// update, so v3 is left to it.
pub fn uefi(world: &World, vm: &Vm) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let rollout = unix_now();
    let u = update_to(world, vm, 2, 'a').context("v1 -> v2 under UEFI")?;
    // The agent's reboot went through OVMF: its boot manager started the
    // disk's EFI loader, GRUB's EFI image tried slot B, and the kernel
    // came up on EFI.
    let console = vm.console();
    let mut at = console
        .find("rebooting into slot b for release 2")
        .context("no reboot for release 2 on the console")?;
    for needle in [
        "BdsDxe: starting Boot",
        &grub_line('b', true),
        "efi: EFI v",
        &root_line('b'),
    ] {
        at += console
            .get(at..)
            .and_then(|t| t.find(needle))
            .with_context(|| format!("no `{needle}` after the reboot for release 2"))?;
    }
    eprintln!("uefi: release 2 {}", u.delta);
    eprintln!(
        "uefi: rollout -> written, rebooting {:.1} s; -> committed {:.1} s",
        u.written.as_secs_f64(),
        u.committed.as_secs_f64()
    );
    converged(world, 2, 'b', rollout).context("v2 committed under UEFI")?;
    eprintln!(
        "uefi: converged on {} in slot b, {:.1} s after the rollout",
        world.version(2),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// v1 -> v2, the plug pulled right after the commit: the next boot runs
/// slot B and converges.
pub fn cut_after_commit(world: &World, vm: Vm, disk: &Path) -> anyhow::Result<Vm> {
    let v = world.version(2).to_string();
    let t0 = Instant::now();
    let u = update_to(world, &vm, 2, 'a')?;
    vm.power_cut()?;
    let reported = world.reports("committed", &v)?;
    eprintln!("cut after commit: release 2 {}", u.delta);
    eprintln!(
        "cut after commit: rollout -> written, rebooting {:.1} s; -> committed {:.1} s; the plug pulled, the committed report {} it",
        u.written.as_secs_f64(),
        u.committed.as_secs_f64(),
        if reported > 0 { "reached the server before" } else { "cut off by" }
    );
    let cut = unix_now();
    let vm = world.boot(disk)?;
    let at = wait_after(&vm, &grub_line('b', false), 0)?;
    wait_after(&vm, &root_line('b'), at)?;
    converged(world, 2, 'b', cut)?;
    eprintln!(
        "cut after commit: converged on {v} in slot b, {:.1} s after the rollout",
        t0.elapsed().as_secs_f64()
    );
    Ok(vm)
}

/// Release 2 fails its health check: rolled back, reported, blocked, not
/// downloaded again.
pub fn fails_health(world: &World, vm: Vm) -> anyhow::Result<Vm> {
    let (r, on) = (2, 'a');
    let (cur, bad) = (world.version(1).to_string(), world.version(r).to_string());
    let to = other(on);
    let t0 = Instant::now();
    let at = offer_and_reboot(world, &vm, r, on)?;
    let at = wait_after(&vm, &grub_line(to, true), at)?;
    let at = wait_after(&vm, &root_line(to), at)?;
    let at = wait_after(&vm, &format!("trial boot of release {r}"), at)?;
    let at = wait_after(&vm, &format!("not healthy after {BAD_HEALTH_SECS} s"), at)?;
    let at = wait_after(&vm, &grub_line(on, false), at)?;
    wait_after(&vm, &root_line(on), at)?;
    let why = format!("the running image says version {cur}, the update installed {bad}");
    let reason = world.wait_rollback(r, &why)?;
    eprintln!(
        "failing health check: back on {cur}, rollback reported {:.1} s after the rollout: {reason}",
        t0.elapsed().as_secs_f64()
    );
    // Not retried: two heartbeats on the old release later, still one
    // download of it, and the server says it is blocked.
    world.wait_heartbeat(unix_now() + 10, &cur, on)?;
    ensure!(
        world.reports("downloading", &bad)? == 1,
        "the failed release was downloaded again"
    );
    let shown = world.server.appliance(&world.mac)?.context("gone")?;
    ensure!(
        shown["updates"]["offer"].is_null(),
        "still offered: {shown}"
    );
    let text = world.cli(&["appliance", "show", &world.mac])?;
    ensure!(text.contains("BLOCKED"), "not shown as blocked: {text}");
    Ok(vm)
}

/// The plug pulled during release 2's trial, before its commit: the next
/// boot runs slot A (release 1), which reports the rollback.
pub fn cut_before_commit(world: &World, vm: Vm, disk: &Path) -> anyhow::Result<Vm> {
    let (r, on) = (2, 'a');
    let (cur, v) = (world.version(1).to_string(), world.version(r).to_string());
    let to = other(on);
    let t0 = Instant::now();
    let at = offer_and_reboot(world, &vm, r, on)?;
    // The cable first: the trial can pull no configuration and send no
    // heartbeat, so it cannot commit before the cut.
    let tap = vm.tap.clone().context("the machine has no tap")?;
    run(world.net.cmd("ip").args(["link", "set", &tap, "down"]))?;
    let at = wait_after(&vm, &grub_line(to, true), at)?;
    wait_after(&vm, &format!("trial boot of release {r}"), at)?;
    vm.power_cut()?;
    ensure!(
        !vm.console()
            .contains(&format!("update to release {r} ({v}) committed")),
        "release {r} committed before the cut"
    );
    let cut = unix_now();
    let vm = world.boot(disk)?;
    let at = wait_after(&vm, &grub_line(on, false), 0)?;
    wait_after(&vm, &root_line(on), at)?;
    world.wait_heartbeat(cut, &cur, on)?;
    let reason = world.wait_rollback(r, "did not commit")?;
    eprintln!(
        "cut before commit: back on {cur} in slot {on}, rollback reported {:.1} s after the rollout: {reason}",
        t0.elapsed().as_secs_f64()
    );
    Ok(vm)
}

/// Release 2 hangs in userspace before systemd: the watchdog stage 1
/// armed resets the machine, and GRUB goes back to slot A.
pub fn hangs(world: &World, vm: Vm) -> anyhow::Result<Vm> {
    let (r, on) = (2, 'a');
    let cur = world.version(1).to_string();
    let to = other(on);
    let t0 = Instant::now();
    let at = offer_and_reboot(world, &vm, r, on)?;
    let at = wait_after(&vm, &grub_line(to, true), at)?;
    let at = wait_after(&vm, &root_line(to), at)?;
    let at = wait_after(&vm, "levee-stage1: hardware watchdog armed", at)?;
    let at = wait_after(&vm, "levee-test: this init hangs", at)?;
    let hung = Instant::now();
    let at = wait_after(&vm, &grub_line(on, false), at)?;
    let reset = hung.elapsed();
    wait_after(&vm, &root_line(on), at)?;
    let reason = world.wait_rollback(r, "did not commit")?;
    world.wait_heartbeat(unix_now(), &cur, on)?;
    eprintln!(
        "hung userspace: reset {:.1} s after the hang, back on {cur}, rollback reported {:.1} s after the rollout: {reason}",
        reset.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    Ok(vm)
}
