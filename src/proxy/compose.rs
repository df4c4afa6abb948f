//! Writing HTTP/1.1 messages into reusable buffers, without allocating
//! once the buffer has grown to its working size.

use httparse::Header;

use crate::http::headers;
use crate::http::sink::Out;

/// The `Via` field value ringcache adds in both directions (RFC 9110 §7.6.3).
pub const VIA: &[u8] = b"1.1 ringcache";

/// Append the decimal form of `n`.
#[inline]
pub fn put_u64(buf: &mut Vec<u8>, n: u64) {
    // A Vec grows: the write cannot come back Full.
    let _ = Out::put_u64(buf, n);
}

/// Append one `Name: value\r\n` field line.
#[inline]
pub fn put_field(buf: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    let _ = Out::put_field(buf, name, value);
}

/// Append a numeric field line.
#[inline]
pub fn put_field_u64(buf: &mut Vec<u8>, name: &[u8], value: u64) {
    buf.extend_from_slice(name);
    buf.extend_from_slice(b": ");
    put_u64(buf, value);
    buf.extend_from_slice(b"\r\n");
}

/// Reason phrase for the statuses ringcache generates itself.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Append a status line.
pub fn put_status_line(buf: &mut Vec<u8>, status: u16, reason_phrase: &[u8]) {
    buf.extend_from_slice(b"HTTP/1.1 ");
    put_u64(buf, u64::from(status));
    buf.push(b' ');
    buf.extend_from_slice(reason_phrase);
    buf.extend_from_slice(b"\r\n");
}

/// Is this field dropped when a message is forwarded? Hop-by-hop fields,
/// fields the Connection field nominates, and the framing fields ringcache
/// rewrites itself.
pub fn is_dropped_on_forward(fields: &[Header<'_>], name: &[u8]) -> bool {
    headers::is_hop_by_hop(name)
        || name.eq_ignore_ascii_case(b"content-length")
        || name.eq_ignore_ascii_case(b"transfer-encoding")
        || headers::connection_lists(fields, name)
}

/// A complete response ringcache generates itself (errors, refusals).
/// `fwd` is the Cache-Status `fwd` parameter when the origin was involved.
pub fn put_error(
    buf: &mut Vec<u8>,
    status: u16,
    date: &[u8],
    detail: Option<&str>,
    fwd: Option<&str>,
    close: bool,
) {
    let reason_phrase = reason(status);
    put_status_line(buf, status, reason_phrase.as_bytes());
    put_field(buf, b"Date", date);
    put_field(buf, b"Content-Type", b"text/plain; charset=utf-8");
    put_field_u64(buf, b"Content-Length", (reason_phrase.len() + 1) as u64);
    buf.extend_from_slice(b"Cache-Status: ringcache");
    if let Some(fwd) = fwd {
        buf.extend_from_slice(b"; fwd=");
        buf.extend_from_slice(fwd.as_bytes());
    }
    if let Some(detail) = detail {
        buf.extend_from_slice(b"; detail=");
        buf.extend_from_slice(detail.as_bytes());
    }
    buf.extend_from_slice(b"\r\n");
    put_field(buf, b"Via", VIA);
    if status == 503 {
        // Overload answers are short-lived: ask the client to come back soon.
        put_field(buf, b"Retry-After", b"1");
    }
    if close {
        put_field(buf, b"Connection", b"close");
    }
    buf.extend_from_slice(b"\r\n");
    buf.extend_from_slice(reason_phrase.as_bytes());
    buf.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        for n in [0u64, 7, 10, 99, 12345, u64::MAX] {
            let mut b = Vec::new();
            put_u64(&mut b, n);
            assert_eq!(b, n.to_string().as_bytes());
        }
    }

    #[test]
    fn error_response_is_well_formed() {
        let mut b = Vec::new();
        put_error(
            &mut b,
            431,
            b"Tue, 25 Nov 2026 14:00:00 GMT",
            Some("head-too-large"),
            None,
            true,
        );
        let text = String::from_utf8(b).unwrap();
        assert!(text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(text.contains("\r\nContent-Length: 32\r\n"), "{text}");
        assert!(text.contains("Cache-Status: ringcache; detail=head-too-large\r\n"));
        assert!(text.ends_with("\r\n\r\nRequest Header Fields Too Large\n"));
    }
}
