//! Range requests served from a stored full response (RFC 9110 §14).
//!
//! The proxy, on a hit for a GET with `Range`:
//! 1. [`if_range_allows`] (§13.1.5); false → serve the full 200;
//! 2. [`parse_range`] into a caller's array; an error → ignore `Range`;
//! 3. [`resolve`] against the stored length → ranges, or 416 with
//!    [`write_unsatisfied_range`];
//! 4. one range → 206 with [`write_content_range`] and that slice of the
//!    body; several → 206 `multipart/byteranges` with
//!    [`write_multipart_content_type`], [`multipart_len`] and
//!    [`write_multipart_body`]. Stored fields that a 206 replaces are
//!    named by [`is_replaced_in_partial`].
//!
//! Limits: at most the caller's array length of ranges (else the field is
//! ignored and the full response served, §14.2 allows it); ranges that
//! overlap or touch are coalesced into ascending order (§14.2 "MAY
//! coalesce").

use httparse::Header;

use super::date::parse_http_date;
use super::headers::{get, list_elements, trim_ows};
use super::sink::{Count, Full, Out};
use super::validation::parse_entity_tag;

/// A sensible array length for [`parse_range`].
pub const RANGES_MAX: usize = 16;

/// One range-spec as written (§14.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeSpec {
    /// `first-last`
    FromTo(u64, u64),
    /// `first-`
    From(u64),
    /// `-suffix_length`
    Suffix(u64),
}

/// A satisfiable range, both ends inclusive, within the representation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ByteRange {
    pub first: u64,
    pub last: u64,
}

impl ByteRange {
    pub fn len(&self) -> u64 {
        self.last - self.first + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Why a `Range` field is ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeError {
    /// Not `bytes=`, or not valid range-specs.
    Invalid,
    /// More ranges than the caller's array holds.
    TooMany,
}

/// Parse `bytes=...` (range-unit case-insensitive, §14.1) into `specs`;
/// returns how many.
pub fn parse_range(value: &[u8], specs: &mut [RangeSpec]) -> Result<usize, RangeError> {
    let value = trim_ows(value);
    if value.len() < 6 || !value[..6].eq_ignore_ascii_case(b"bytes=") {
        return Err(RangeError::Invalid);
    }
    let mut n = 0;
    for element in list_elements(&value[6..]) {
        let dash = element
            .iter()
            .position(|&b| b == b'-')
            .ok_or(RangeError::Invalid)?;
        let (a, b) = (&element[..dash], &element[dash + 1..]);
        let spec = match (digits(a), digits(b)) {
            (Some(first), Some(last)) if first <= last => RangeSpec::FromTo(first, last),
            (Some(first), None) if b.is_empty() => RangeSpec::From(first),
            (None, Some(suffix)) if a.is_empty() => RangeSpec::Suffix(suffix),
            _ => return Err(RangeError::Invalid),
        };
        *specs.get_mut(n).ok_or(RangeError::TooMany)? = spec;
        n += 1;
    }
    if n == 0 {
        return Err(RangeError::Invalid);
    }
    Ok(n)
}

/// 1*DIGIT, at most 19 digits (fits u64).
fn digits(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0, |n, &d| n * 10 + u64::from(d - b'0')))
}

/// The ranges to send for a representation of `len` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// This many ranges were written to the output array.
    Ranges(usize),
    /// None is satisfiable: 416 (§15.5.17).
    Unsatisfiable,
}

/// Resolve specs against the stored length (§14.1.2): a first-pos at or
/// past the end is unsatisfiable, a last-pos past it is clamped, a suffix
/// longer than the representation is all of it, a zero suffix is
/// unsatisfiable. Overlapping or adjacent ranges are coalesced.
pub fn resolve(specs: &[RangeSpec], len: u64, out: &mut [ByteRange]) -> Resolved {
    let mut n = 0;
    for spec in specs {
        let r = match *spec {
            RangeSpec::FromTo(first, last) if first < len => ByteRange {
                first,
                last: last.min(len - 1),
            },
            RangeSpec::From(first) if first < len => ByteRange {
                first,
                last: len - 1,
            },
            RangeSpec::Suffix(suffix) if suffix > 0 && len > 0 => ByteRange {
                first: len - suffix.min(len),
                last: len - 1,
            },
            _ => continue,
        };
        let Some(slot) = out.get_mut(n) else { break };
        *slot = r;
        n += 1;
    }
    if n == 0 {
        return Resolved::Unsatisfiable;
    }
    let ranges = &mut out[..n];
    let overlapping = (0..n).any(|i| {
        (i + 1..n).any(|j| {
            ranges[i].first <= ranges[j].last.saturating_add(1)
                && ranges[j].first <= ranges[i].last.saturating_add(1)
        })
    });
    if overlapping {
        ranges.sort_unstable_by_key(|r| r.first);
        let mut w = 0;
        for i in 1..n {
            if ranges[i].first <= ranges[w].last.saturating_add(1) {
                ranges[w].last = ranges[w].last.max(ranges[i].last);
            } else {
                w += 1;
                ranges[w] = ranges[i];
            }
        }
        n = w + 1;
    }
    Resolved::Ranges(n)
}

/// `If-Range` (RFC 9110 §13.1.5): true when the range may be served. An
/// entity tag must match the stored `ETag` strongly; a date must equal the
/// stored `Last-Modified`, which must be strong (`Date` at least a second
/// later, §8.8.2.2). Anything else serves the full response.
pub fn if_range_allows(if_range: &[u8], stored: &[Header<'_>]) -> bool {
    let v = trim_ows(if_range);
    if let Some(tag) = parse_entity_tag(v) {
        return get(stored, b"etag")
            .and_then(parse_entity_tag)
            .is_some_and(|stored_tag| tag.strong_eq(&stored_tag));
    }
    let (Some(date), Some(modified)) = (
        parse_http_date(v),
        get(stored, b"last-modified").and_then(|m| parse_http_date(trim_ows(m))),
    ) else {
        return false;
    };
    let strong = get(stored, b"date")
        .and_then(|d| parse_http_date(trim_ows(d)))
        .is_some_and(|d| d > modified);
    date == modified && strong
}

/// `bytes first-last/len` (§14.4).
pub fn write_content_range(r: ByteRange, len: u64, out: &mut impl Out) -> Result<(), Full> {
    out.put(b"bytes ")?;
    out.put_u64(r.first)?;
    out.put(b"-")?;
    out.put_u64(r.last)?;
    out.put(b"/")?;
    out.put_u64(len)
}

/// `bytes */len`, for a 416 (§14.4, §15.5.17).
pub fn write_unsatisfied_range(len: u64, out: &mut impl Out) -> Result<(), Full> {
    out.put(b"bytes */")?;
    out.put_u64(len)
}

/// A boundary unlikely to occur in any body: `ringcache-` and 16 hex
/// digits of a value the caller varies (a counter mixed with the key hash).
pub fn boundary(seed: u64) -> [u8; 26] {
    let mut b = *b"ringcache-0000000000000000";
    for (i, slot) in b[10..].iter_mut().enumerate() {
        *slot = b"0123456789abcdef"[(seed >> (60 - 4 * i) & 0xf) as usize];
    }
    b
}

/// `multipart/byteranges; boundary=...` (§14.6).
pub fn write_multipart_content_type(boundary: &[u8], out: &mut impl Out) -> Result<(), Full> {
    out.put(b"multipart/byteranges; boundary=")?;
    out.put(boundary)
}

/// The body of a `multipart/byteranges` 206 (§14.6): each part carries
/// the stored `Content-Type` (when there is one) and its `Content-Range`.
pub fn write_multipart_body(
    body: &[u8],
    ranges: &[ByteRange],
    content_type: Option<&[u8]>,
    boundary: &[u8],
    out: &mut impl Out,
) -> Result<(), Full> {
    let len = body.len() as u64;
    for r in ranges {
        out.put(b"\r\n--")?;
        out.put(boundary)?;
        out.put(b"\r\n")?;
        if let Some(ct) = content_type {
            out.put_field(b"Content-Type", ct)?;
        }
        out.put(b"Content-Range: ")?;
        write_content_range(*r, len, out)?;
        out.put(b"\r\n\r\n")?;
        let part = body.get(r.first as usize..=r.last as usize).ok_or(Full)?;
        out.put(part)?;
    }
    out.put(b"\r\n--")?;
    out.put(boundary)?;
    out.put(b"--\r\n")
}

/// Length of [`write_multipart_body`]'s output, for `Content-Length`.
pub fn multipart_len(
    body: &[u8],
    ranges: &[ByteRange],
    content_type: Option<&[u8]>,
    boundary: &[u8],
) -> u64 {
    let mut count = Count::default();
    // Counting cannot fail but for ranges outside the body.
    match write_multipart_body(body, ranges, content_type, boundary, &mut count) {
        Ok(()) => count.bytes,
        Err(Full) => 0,
    }
}

/// Stored fields a 206 does not copy (§15.3.7): the length and any
/// stored `Content-Range`; for multipart also `Content-Type`, which then
/// names the multipart type.
pub fn is_replaced_in_partial(name: &[u8], multipart: bool) -> bool {
    name.eq_ignore_ascii_case(b"content-length")
        || name.eq_ignore_ascii_case(b"content-range")
        || (multipart && name.eq_ignore_ascii_case(b"content-type"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<'a>(name: &'a str, value: &'a [u8]) -> Header<'a> {
        Header { name, value }
    }

    fn specs(v: &[u8]) -> Result<Vec<RangeSpec>, RangeError> {
        let mut a = [RangeSpec::From(0); 4];
        parse_range(v, &mut a).map(|n| a[..n].to_vec())
    }

    fn ranges(v: &[u8], len: u64) -> Option<Vec<(u64, u64)>> {
        let s = specs(v).unwrap();
        let mut out = [ByteRange::default(); 4];
        match resolve(&s, len, &mut out) {
            Resolved::Ranges(n) => Some(out[..n].iter().map(|r| (r.first, r.last)).collect()),
            Resolved::Unsatisfiable => None,
        }
    }

    #[test]
    fn rfc9110_14_1_1_range_specs() {
        use RangeSpec::*;
        assert_eq!(specs(b"bytes=0-499"), Ok(vec![FromTo(0, 499)]));
        assert_eq!(
            specs(b"BYTES=500-, -200 ,1-1"),
            Ok(vec![From(500), Suffix(200), FromTo(1, 1)])
        );
        for bad in [
            &b"bytes=5-1"[..],
            b"bytes=",
            b"bytes=-",
            b"bytes=a-b",
            b"items=0-1",
            b"bytes=1",
            b"bytes=0-1;x",
            b"bytes = 0-1",
            b"bytes=99999999999999999999-",
        ] {
            assert_eq!(
                specs(bad),
                Err(RangeError::Invalid),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            specs(b"bytes=0-1,2-3,4-5,6-7,8-9"),
            Err(RangeError::TooMany)
        );
    }

    #[test]
    fn rfc9110_14_1_2_resolution_against_length() {
        assert_eq!(ranges(b"bytes=0-499", 100), Some(vec![(0, 99)]));
        assert_eq!(ranges(b"bytes=-10", 100), Some(vec![(90, 99)]));
        assert_eq!(ranges(b"bytes=-1000", 100), Some(vec![(0, 99)]));
        assert_eq!(ranges(b"bytes=95-", 100), Some(vec![(95, 99)]));
        assert_eq!(ranges(b"bytes=100-", 100), None);
        assert_eq!(ranges(b"bytes=-0", 100), None);
        assert_eq!(ranges(b"bytes=0-0", 0), None);
        assert_eq!(ranges(b"bytes=200-300, 10-19", 100), Some(vec![(10, 19)]));
    }

    #[test]
    fn rfc9110_14_2_overlapping_ranges_coalesced() {
        assert_eq!(
            ranges(b"bytes=50-59, 0-9", 100),
            Some(vec![(50, 59), (0, 9)])
        );
        assert_eq!(
            ranges(b"bytes=50-59, 0-9, 5-20, 21-22", 100),
            Some(vec![(0, 22), (50, 59)])
        );
        assert_eq!(ranges(b"bytes=0-, -10", 100), Some(vec![(0, 99)]));
    }

    #[test]
    fn rfc9110_13_1_5_if_range() {
        let lm = &b"Sun, 06 Nov 1994 08:49:37 GMT"[..];
        let stored = [
            h("ETag", b"\"v1\""),
            h("Last-Modified", lm),
            h("Date", b"Sun, 06 Nov 1994 08:49:38 GMT"),
        ];
        assert!(if_range_allows(b"\"v1\"", &stored));
        assert!(!if_range_allows(b"W/\"v1\"", &stored));
        assert!(!if_range_allows(b"\"v2\"", &stored));
        assert!(if_range_allows(lm, &stored));
        assert!(!if_range_allows(b"Sun, 06 Nov 1994 08:49:38 GMT", &stored));
        assert!(!if_range_allows(b"garbage", &stored));
        // Last-Modified not a second older than Date: weak, no range.
        let weak = [h("Last-Modified", lm), h("Date", lm)];
        assert!(!if_range_allows(lm, &weak));
        let weak_tag = [h("ETag", b"W/\"v1\"")];
        assert!(!if_range_allows(b"W/\"v1\"", &weak_tag));
    }

    #[test]
    fn rfc9110_14_4_content_range_and_416() {
        let mut v = Vec::new();
        write_content_range(ByteRange { first: 0, last: 9 }, 100, &mut v).unwrap();
        assert_eq!(v, b"bytes 0-9/100");
        let mut v = Vec::new();
        write_unsatisfied_range(100, &mut v).unwrap();
        assert_eq!(v, b"bytes */100");
        assert!(is_replaced_in_partial(b"Content-Length", false));
        assert!(!is_replaced_in_partial(b"content-type", false));
        assert!(is_replaced_in_partial(b"content-type", true));
    }

    #[test]
    fn rfc9110_14_6_multipart_byteranges() {
        let body = b"0123456789";
        let rs = [
            ByteRange { first: 0, last: 1 },
            ByteRange { first: 8, last: 9 },
        ];
        let b = boundary(0xabc);
        assert_eq!(&b, b"ringcache-0000000000000abc");
        let mut out = Vec::new();
        write_multipart_body(body, &rs, Some(b"text/plain"), &b, &mut out).unwrap();
        let want = "\r\n--ringcache-0000000000000abc\r\nContent-Type: text/plain\r\nContent-Range: bytes 0-1/10\r\n\r\n01\
                    \r\n--ringcache-0000000000000abc\r\nContent-Type: text/plain\r\nContent-Range: bytes 8-9/10\r\n\r\n89\
                    \r\n--ringcache-0000000000000abc--\r\n";
        assert_eq!(String::from_utf8(out.clone()).unwrap(), want);
        assert_eq!(
            multipart_len(body, &rs, Some(b"text/plain"), &b),
            out.len() as u64
        );
        let mut ct = Vec::new();
        write_multipart_content_type(&b, &mut ct).unwrap();
        assert_eq!(
            ct,
            b"multipart/byteranges; boundary=ringcache-0000000000000abc"
        );
        let bad = [ByteRange { first: 5, last: 10 }];
        assert_eq!(
            write_multipart_body(body, &bad, None, &b, &mut Vec::new()),
            Err(Full)
        );
    }
}
