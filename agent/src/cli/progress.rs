//! Progress bars on stderr (indicatif), fed from the command's counters by a
//! side thread; hidden with --json, --quiet, or when stderr is no terminal.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use levee_agent::backup::progress::Counters;

use super::Global;

pub fn with_progress<T, E>(
    g: &Global,
    c: &Counters,
    what: &str,
    f: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    let show = !g.json && !g.quiet;
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        if show {
            let done = &done;
            s.spawn(move || {
                let bar =
                    ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(5));
                bar.set_style(
                    ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                while !done.load(Ordering::Relaxed) {
                    let phase = c.phase.lock().map(|p| p.clone()).unwrap_or_default();
                    let g = |a: &std::sync::atomic::AtomicU64| Counters::get(a);
                    bar.set_message(format!(
                        "{what} {phase}: {} files, {} dirs, {} read, {} new, {} errors{}",
                        g(&c.files),
                        g(&c.dirs),
                        levee_agent::util::human_bytes(g(&c.bytes_read)),
                        levee_agent::util::human_bytes(g(&c.bytes_new)),
                        g(&c.errors),
                        if g(&c.expected) > 0 {
                            format!(
                                ", {:.0}%",
                                100.0 * g(&c.done) as f64 / g(&c.expected) as f64
                            )
                        } else {
                            String::new()
                        }
                    ));
                    bar.tick();
                    std::thread::sleep(Duration::from_millis(200));
                }
                bar.finish_and_clear();
            });
        }
        let r = f();
        done.store(true, Ordering::Relaxed);
        r
    })
}
