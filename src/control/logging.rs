//! A minimal stderr logger: `tapwire[LEVEL SECONDS] message`, with seconds since start, and
//! `tapwire[LEVEL SECONDS HOST] message` with `--host-name HOST`.

use std::io::Write;
use std::sync::OnceLock;
use std::time::Instant;

struct StderrLog {
    start: Instant,
    /// ` HOST` (with its space), or nothing.
    host: String,
}

impl log::Log for StderrLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let t = self.start.elapsed().as_secs_f64();
            let _ = writeln!(
                std::io::stderr().lock(),
                "tapwire[{:>5} {t:9.3}{}] {}",
                record.level(),
                self.host,
                record.args()
            );
        }
    }

    fn flush(&self) {}
}

static LOGGER: OnceLock<StderrLog> = OnceLock::new();

/// Installs the logger (once per process: the first call's `host` stays) and sets the level.
pub fn init(level: log::LevelFilter, host: Option<&str>) {
    let logger = LOGGER.get_or_init(|| StderrLog {
        start: Instant::now(),
        host: host.map(|h| format!(" {h}")).unwrap_or_default(),
    });
    let _ = log::set_logger(logger);
    log::set_max_level(level);
}
