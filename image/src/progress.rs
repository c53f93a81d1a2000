//! Progress display for the build steps: a spinner per step on a terminal,
//! one plain line per finished step otherwise (CI logs, tests).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Where build steps are shown.
pub struct Progress {
    visible: bool,
    tty: bool,
}

impl Progress {
    /// Shows steps on stderr (spinners when it is a terminal).
    pub fn stderr() -> Progress {
        Progress {
            visible: true,
            tty: std::io::stderr().is_terminal(),
        }
    }

    /// Shows nothing.
    pub fn hidden() -> Progress {
        Progress {
            visible: false,
            tty: false,
        }
    }

    pub(crate) fn step(&self, message: &str) -> Step {
        let bar = (self.visible && self.tty).then(|| {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} [{elapsed}]") {
                bar.set_style(style);
            }
            bar.set_message(message.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Step {
            bar,
            visible: self.visible,
            message: message.to_string(),
            start: Instant::now(),
        }
    }
}

/// One running step; [`Step::done`] reports it and returns its duration.
pub(crate) struct Step {
    bar: Option<ProgressBar>,
    visible: bool,
    message: String,
    start: Instant,
}

impl Step {
    pub(crate) fn done(self, note: &str) -> Duration {
        let took = self.start.elapsed();
        let line = format!(
            "{} {}({:.1} s)",
            self.message,
            if note.is_empty() {
                String::new()
            } else {
                format!("{note} ")
            },
            took.as_secs_f64()
        );
        match &self.bar {
            Some(bar) => bar.finish_with_message(format!("✓ {line}")),
            None if self.visible => eprintln!("levee-image: {line}"),
            None => {}
        }
        took
    }
}
