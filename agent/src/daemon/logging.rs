//! The daemon's log: the journal when there is one (the service), else
//! plain stderr (a shell, a container, a test). It writes through its own
//! `JournalLog` rather than the global `log` logger, which the CLI's
//! tracing subscriber may already own (and would filter to warnings).

use std::fmt::Arguments;

use log::Level;
use systemd_journal_logger::JournalLog;

pub(super) struct Log {
    journal: Option<JournalLog>,
}

impl Log {
    pub(super) fn new() -> Log {
        let journal = systemd_journal_logger::connected_to_journal()
            .then(|| JournalLog::new().ok())
            .flatten()
            .map(|j| j.with_syslog_identifier("levee-agent".to_string()));
        Log { journal }
    }

    pub(super) fn info(&self, args: Arguments<'_>) {
        self.emit(Level::Info, args);
    }

    pub(super) fn warn(&self, args: Arguments<'_>) {
        self.emit(Level::Warn, args);
    }

    /// Logged, and also written to the machine's console when running as
    /// the service (the journal is there): what someone standing at the box
    /// must read, such as the key fingerprint that ops approves.
    pub(super) fn console(&self, args: Arguments<'_>) {
        self.emit(Level::Info, args);
        if self.journal.is_some() {
            use std::io::Write;
            if let Ok(mut c) = std::fs::OpenOptions::new().write(true).open("/dev/console") {
                let _ = writeln!(c, "levee-agent: {args}");
            }
        }
    }

    fn emit(&self, level: Level, args: Arguments<'_>) {
        if let Some(j) = &self.journal {
            let record = log::Record::builder()
                .level(level)
                .target("levee_agent::daemon")
                .args(args)
                .build();
            if j.journal_send(&record).is_ok() {
                return;
            }
        }
        eprintln!(
            "levee-agent: {}: {args}",
            level.as_str().to_ascii_lowercase()
        );
    }
}
