//! Logs go to the journal when there is one (the service), else plain
//! stderr (a shell, a container, a test).

struct Stderr;

impl log::Log for Stderr {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Info
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            eprintln!("levee-agent: {}: {}", r.level().as_str().to_ascii_lowercase(), r.args());
        }
    }
    fn flush(&self) {}
}

static STDERR: Stderr = Stderr;

pub(super) fn init() {
    let journal = systemd_journal_logger::connected_to_journal()
        .then(|| systemd_journal_logger::JournalLog::new().ok())
        .flatten()
        .map(|j| j.with_syslog_identifier("levee-agent".to_string()));
    // A second init (tests) keeps the first logger; that is fine.
    let _ = match journal {
        Some(j) => j.install(),
        None => log::set_logger(&STDERR),
    };
    log::set_max_level(log::LevelFilter::Info);
}
