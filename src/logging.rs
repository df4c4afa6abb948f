//! Log lines to stderr: `2026-11-25T14:03:07.123Z WARN  message`.
//!
//! The level comes from `RINGCACHE_LOG` (`error`, `warn`, `info`, `debug`,
//! `trace`), else from the configuration's `log_level` (reloaded on
//! SIGHUP), else `info`. Lines are written whole with one `write` so
//! workers' lines never interleave. systemd's journal takes stderr as is.

use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use log::{Level, LevelFilter, Log, Metadata, Record};

struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let secs = now.as_secs();
        let (y, mo, d) = crate::http::date::civil_date(secs / 86_400);
        let rem = secs % 86_400;
        let level = match record.level() {
            Level::Error => "ERROR",
            Level::Warn => "WARN ",
            Level::Info => "INFO ",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        };
        let line = format!(
            "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z {level} {}\n",
            rem / 3600,
            rem / 60 % 60,
            rem % 60,
            now.subsec_millis(),
            record.args()
        );
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Environment variable that sets the level; it wins over the file's `log_level`.
pub const LOG_ENV: &str = "RINGCACHE_LOG";

/// `off`, `error`, `warn`, `info`, `debug`, `trace`.
pub fn parse_level(s: &str) -> Option<LevelFilter> {
    match s.trim() {
        "off" => Some(LevelFilter::Off),
        "error" => Some(LevelFilter::Error),
        "warn" => Some(LevelFilter::Warn),
        "info" => Some(LevelFilter::Info),
        "debug" => Some(LevelFilter::Debug),
        "trace" => Some(LevelFilter::Trace),
        _ => None,
    }
}

/// The level `RINGCACHE_LOG` asks for, if it is set to a known level.
fn env_level() -> Option<LevelFilter> {
    std::env::var(LOG_ENV).ok().as_deref().and_then(parse_level)
}

/// Install the logger once; later calls do nothing. The level comes from
/// `RINGCACHE_LOG`, else `info` until [`apply_level`] is called.
pub fn init() {
    static LOGGER: StderrLogger = StderrLogger;
    let level = env_level().unwrap_or(LevelFilter::Info);
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}

/// Apply the configuration's `log_level` (at start and on reload):
/// `RINGCACHE_LOG`, when set, wins; without either the level is `info`.
/// Returns the level now in force.
pub fn apply_level(configured: Option<LevelFilter>) -> LevelFilter {
    let level = env_level().or(configured).unwrap_or(LevelFilter::Info);
    log::set_max_level(level);
    level
}

#[cfg(test)]
mod tests {
    use super::parse_level;
    use log::LevelFilter;

    #[test]
    fn levels() {
        assert_eq!(parse_level("debug"), Some(LevelFilter::Debug));
        assert_eq!(parse_level(" off"), Some(LevelFilter::Off));
        assert_eq!(parse_level("loud"), None);
    }
}
