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
        let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
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

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
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
    use super::{civil_from_days, parse_level};
    use log::LevelFilter;

    #[test]
    fn levels() {
        assert_eq!(parse_level("debug"), Some(LevelFilter::Debug));
        assert_eq!(parse_level(" off"), Some(LevelFilter::Off));
        assert_eq!(parse_level("loud"), None);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_417), (2025, 11, 25));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
