//! A minimal stderr logger: `tapwire[LEVEL] message`, with seconds since start.

use std::io::Write;
use std::sync::OnceLock;
use std::time::Instant;

struct StderrLog {
    start: Instant,
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
                "tapwire[{:>5} {t:9.3}] {}",
                record.level(),
                record.args()
            );
        }
    }

    fn flush(&self) {}
}

static LOGGER: OnceLock<StderrLog> = OnceLock::new();

/// Installs the logger (once per process) and sets the level.
pub fn init(level: log::LevelFilter) {
    let logger = LOGGER.get_or_init(|| StderrLog {
        start: Instant::now(),
    });
    let _ = log::set_logger(logger);
    log::set_max_level(level);
}
