//! The agent's one logging path: `tracing` events, wherever they come from
//! (the daemon, the backup engine, the TUF client), go to the journal when
//! the process runs as a service connected to it, else to stderr.
//!
//! The journal is reached through `systemd-journal-logger`, the project's
//! chosen journal client, by the small layer below rather than through
//! `tracing-journald`: one journal client in the binary, and the layer is
//! all the glue needed (level mapping, message plus fields as text, the
//! `levee-agent` syslog identifier that `journalctl -t` selects on).

use std::fmt::Write as _;

use systemd_journal_logger::JournalLog;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Installs the process's subscriber once. `default` is the filter when
/// `LEVEE_LOG` is unset (`info` for the service, `warn` for commands).
pub fn init(default: &str) {
    let filter = EnvFilter::try_from_env("LEVEE_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let journal = systemd_journal_logger::connected_to_journal()
        .then(|| JournalLog::new().ok())
        .flatten()
        .map(|j| j.with_syslog_identifier("levee-agent".to_string()));
    let registry = tracing_subscriber::registry().with(filter);
    // A second init (tests calling `main` twice) keeps the first subscriber.
    let _ = match journal {
        Some(j) => registry.with(JournalLayer(j)).try_init(),
        None => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_target(false),
            )
            .try_init(),
    };
}

/// Logged at info, and also written to the machine's console when running
/// as the service (connected to the journal): what someone standing at the
/// box must read, such as the key fingerprint that ops approves.
pub fn console(line: &str) {
    tracing::info!("{line}");
    if systemd_journal_logger::connected_to_journal() {
        use std::io::Write;
        if let Ok(mut c) = std::fs::OpenOptions::new().write(true).open("/dev/console") {
            let _ = writeln!(c, "levee-agent: {line}");
        }
    }
}

struct JournalLayer(JournalLog);

impl<S: Subscriber> Layer<S> for JournalLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut text = Text(String::new());
        event.record(&mut text);
        // One statement: the record borrows the formatted arguments.
        let sent = self.0.journal_send(
            &log::Record::builder()
                .level(journal_level(*meta.level()))
                .target(meta.target())
                .file(meta.file())
                .line(meta.line())
                .args(format_args!("{}", text.0))
                .build(),
        );
        if sent.is_err() {
            // journald gone (shutdown): the line still reaches the console.
            eprintln!("levee-agent: {}", text.0);
        }
    }
}

fn journal_level(level: Level) -> log::Level {
    match level {
        Level::ERROR => log::Level::Error,
        Level::WARN => log::Level::Warn,
        Level::INFO => log::Level::Info,
        Level::DEBUG => log::Level::Debug,
        Level::TRACE => log::Level::Trace,
    }
}

/// The event's message followed by its other fields as ` key=value`.
struct Text(String);

impl Visit for Text {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.push(field, format_args!("{value:?}"));
    }
}

impl Text {
    fn push(&mut self, field: &Field, value: std::fmt::Arguments<'_>) {
        if field.name() == "message" {
            let rest = std::mem::take(&mut self.0);
            let _ = write!(self.0, "{value}{rest}");
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_comes_first_then_fields() {
        struct Capture(std::sync::Arc<std::sync::Mutex<Vec<String>>>);
        impl<S: Subscriber> Layer<S> for Capture {
            fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
                let mut t = Text(String::new());
                event.record(&mut t);
                self.0.lock().unwrap().push(t.0);
            }
        }
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(Capture(lines.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(slot = "B", tries = 1, "boot of {} failed", "image-2");
        });
        assert_eq!(
            lines.lock().unwrap().as_slice(),
            ["boot of image-2 failed slot=B tries=1"]
        );
    }
}
