//! HTTP dates (RFC 9110 §5.6.7) as unix seconds.
//!
//! Parsing accepts the three formats a recipient must understand:
//! IMF-fixdate, RFC 850 and asctime. Formatting writes IMF-fixdate into a
//! fixed array:
//!
//! ```text
//!  Sun, 06 Nov 1994 08:49:37 GMT
//!  0    5  8   12   17 20 23 26   (29 bytes)
//! ```

use std::time::{Duration, UNIX_EPOCH};

/// Length of an IMF-fixdate.
pub const HTTP_DATE_BYTES: usize = 29;

/// The last second that fits a four-digit year: 9999-12-31T23:59:59Z.
pub const HTTP_DATE_SECS_MAX: u64 = 253_402_300_799;

const SECS_PER_DAY: u64 = 86_400;
const WEEKDAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// Parse an HTTP date into unix seconds; `None` when invalid or before 1970.
pub fn parse_http_date(v: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(v).ok()?;
    let time = httpdate::parse_http_date(text).ok()?;
    time.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// Format unix seconds as an IMF-fixdate, without allocating. Seconds past
/// [`HTTP_DATE_SECS_MAX`] are clamped to it.
pub fn format_http_date(unix_secs: u64) -> [u8; HTTP_DATE_BYTES] {
    let secs = unix_secs.min(HTTP_DATE_SECS_MAX);
    let days = secs / SECS_PER_DAY;
    let second_of_day = secs % SECS_PER_DAY;
    let (year, month, day) = civil_date(days);

    let mut out = *b"Thu, 01 Jan 1970 00:00:00 GMT";
    out[0..3].copy_from_slice(WEEKDAYS[(days % 7) as usize]);
    write_digits(&mut out[5..7], day);
    out[8..11].copy_from_slice(MONTHS[(month - 1) as usize]);
    write_digits(&mut out[12..16], year);
    write_digits(&mut out[17..19], second_of_day / 3600);
    write_digits(&mut out[20..22], second_of_day / 60 % 60);
    write_digits(&mut out[23..25], second_of_day % 60);
    out
}

/// Write `n` as zero-padded decimal filling `dst`.
fn write_digits(dst: &mut [u8], mut n: u64) {
    for slot in dst.iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
    debug_assert_eq!(n, 0, "value wider than its field");
}

/// Proleptic Gregorian (year, month 1..=12, day 1..=31) of a day count since
/// 1970-01-01 (also the date of the log lines and the access log). Works in 400-year cycles counted from 0000-03-01, so that the
/// leap day is the last day of each cycle year.
pub fn civil_date(days_since_epoch: u64) -> (u64, u64, u64) {
    const DAYS_0000_03_01_TO_EPOCH: u64 = 719_468;
    const DAYS_PER_CYCLE: u64 = 146_097; // 400 years
    let days = days_since_epoch + DAYS_0000_03_01_TO_EPOCH;
    let cycle = days / DAYS_PER_CYCLE;
    let day_of_cycle = days % DAYS_PER_CYCLE;
    // Years into the cycle: discount one leap day every 4 years, add back
    // one every 100, discount the 400th year's extra.
    let year_of_cycle = (day_of_cycle - day_of_cycle / 1460 + day_of_cycle / 36_524
        - day_of_cycle / (DAYS_PER_CYCLE - 1))
        / 365;
    let day_of_year =
        day_of_cycle - (365 * year_of_cycle + year_of_cycle / 4 - year_of_cycle / 100);
    // Months from March: 153 days per 5 months (31+30+31+30+31).
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = cycle * 400 + year_of_cycle + u64::from(month <= 2);
    (year, month, day)
}

/// Unix seconds as a `SystemTime` (for callers holding clocks).
pub fn to_system_time(unix_secs: u64) -> std::time::SystemTime {
    UNIX_EPOCH + Duration::from_secs(unix_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(11_016), (2000, 2, 29));
        assert_eq!(civil_date(20_417), (2025, 11, 25));
        assert_eq!(civil_date(20_793), (2026, 12, 6));
    }

    #[test]
    fn parses_three_formats() {
        let t = Some(784_111_777);
        assert_eq!(parse_http_date(b"Sun, 06 Nov 1994 08:49:37 GMT"), t);
        assert_eq!(parse_http_date(b"Sunday, 06-Nov-94 08:49:37 GMT"), t);
        assert_eq!(parse_http_date(b"Sun Nov  6 08:49:37 1994"), t);
        assert_eq!(parse_http_date(b"Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
    }

    #[test]
    fn rejects_invalid() {
        for v in [
            &b""[..],
            b"0",
            b"-1",
            b"yesterday",
            b"Sun, 06 Nov 1994 08:49:37 PST",
            b"Sun, 32 Nov 1994 08:49:37 GMT",
            b"Sun, 06 Nov 1994 25:49:37 GMT",
            b"Sun, 06 Nov 1994 08:49:37 GMT\xff",
            b"Wed, 31 Dec 1969 23:59:59 GMT",
        ] {
            assert_eq!(parse_http_date(v), None, "{:?}", String::from_utf8_lossy(v));
        }
    }

    #[test]
    fn formats_known_dates() {
        assert_eq!(&format_http_date(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            &format_http_date(784_111_777),
            b"Sun, 06 Nov 1994 08:49:37 GMT"
        );
        assert_eq!(
            &format_http_date(951_782_400),
            b"Tue, 29 Feb 2000 00:00:00 GMT"
        );
        assert_eq!(
            &format_http_date(4_107_542_400),
            b"Mon, 01 Mar 2100 00:00:00 GMT"
        );
        assert_eq!(
            &format_http_date(HTTP_DATE_SECS_MAX),
            b"Fri, 31 Dec 9999 23:59:59 GMT"
        );
        assert_eq!(
            format_http_date(u64::MAX),
            format_http_date(HTTP_DATE_SECS_MAX)
        );
    }

    #[test]
    fn format_agrees_with_httpdate_and_round_trips() {
        let mut secs = 0u64;
        while secs < HTTP_DATE_SECS_MAX {
            let ours = format_http_date(secs);
            let theirs = httpdate::fmt_http_date(to_system_time(secs));
            assert_eq!(&ours[..], theirs.as_bytes(), "at {secs}");
            assert_eq!(parse_http_date(&ours), Some(secs));
            secs += 86_399 * 37 + 7;
        }
    }
}
