//! Message framing fields shared by requests and responses:
//! `Content-Length`, `Transfer-Encoding` and `Connection` (RFC 9112 §6, §9).
//!
//! These are the fields request smuggling plays with, so every ambiguity is
//! an error here and each caller decides what that error means for its side.

use super::error::ParseError;
use super::headers::{list_elements, trim_ows, values};
use httparse::Header;

/// What the `Transfer-Encoding` fields of a message say, all lines joined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferCoding {
    /// No `Transfer-Encoding` field.
    Absent,
    /// Exactly the single coding `chunked`.
    Chunked,
    /// `chunked` last, after other codings (e.g. `gzip, chunked`): the
    /// chunked framing delimits the body, the payload stays coded.
    ChunkedOverOther,
    /// The final coding is not `chunked`: the length is unknown.
    NotChunkedFinal,
}

/// The single `Content-Length` of a message, if any.
///
/// Several values (separate lines or a comma list) must all be equal.
/// Each value is 1*DIGIT and must fit a `u64`.
pub fn content_length(headers: &[Header<'_>]) -> Result<Option<u64>, ParseError> {
    let mut length: Option<u64> = None;
    for value in values(headers, b"content-length") {
        let mut elements = 0usize;
        for element in list_elements(value) {
            elements += 1;
            let n =
                parse_decimal(element).ok_or(ParseError::Malformed("invalid-content-length"))?;
            match length {
                Some(prev) if prev != n => {
                    return Err(ParseError::Malformed("conflicting-content-length"))
                }
                _ => length = Some(n),
            }
        }
        if elements == 0 {
            return Err(ParseError::Malformed("invalid-content-length"));
        }
    }
    Ok(length)
}

/// Parse 1*DIGIT into a `u64`; `None` when empty, not digits, or overflowing.
pub(crate) fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

/// Summarize every `Transfer-Encoding` line of a message.
///
/// Errors: an empty field, a coding that is not a token, parameters on
/// `chunked`, or `chunked` applied more than once (RFC 9112 §6.1).
pub fn transfer_coding(headers: &[Header<'_>]) -> Result<TransferCoding, ParseError> {
    const INVALID: ParseError = ParseError::Malformed("invalid-transfer-encoding");
    let mut present = false;
    let mut codings = 0usize;
    let mut chunked_seen = false;
    let mut last_is_chunked = false;
    for value in values(headers, b"transfer-encoding") {
        present = true;
        let mut elements = 0usize;
        for element in list_elements(value) {
            elements += 1;
            codings += 1;
            let (name, params) = match element.iter().position(|&b| b == b';') {
                Some(i) => (trim_ows(&element[..i]), true),
                None => (element, false),
            };
            if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
                return Err(INVALID);
            }
            last_is_chunked = name.eq_ignore_ascii_case(b"chunked");
            if last_is_chunked {
                if chunked_seen || params {
                    return Err(INVALID);
                }
                chunked_seen = true;
            }
        }
        if elements == 0 {
            return Err(INVALID);
        }
    }
    Ok(match (present, last_is_chunked, codings) {
        (false, _, _) => TransferCoding::Absent,
        (true, true, 1) => TransferCoding::Chunked,
        (true, true, _) => TransferCoding::ChunkedOverOther,
        (true, false, _) => TransferCoding::NotChunkedFinal,
    })
}

/// The connection options that decide persistence.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionOptions {
    /// `Connection: close` is listed.
    pub close: bool,
    /// `Connection: keep-alive` is listed.
    pub keep_alive: bool,
}

/// Read `close` and `keep-alive` from every `Connection` line.
pub fn connection_options(headers: &[Header<'_>]) -> ConnectionOptions {
    let mut options = ConnectionOptions::default();
    for element in values(headers, b"connection").flat_map(list_elements) {
        if element.eq_ignore_ascii_case(b"close") {
            options.close = true;
        } else if element.eq_ignore_ascii_case(b"keep-alive") {
            options.keep_alive = true;
        }
    }
    options
}

/// Whether the connection persists after this message (RFC 9112 §9.3).
pub fn persists(minor_version: u8, options: ConnectionOptions) -> bool {
    if options.close {
        false
    } else {
        minor_version >= 1 || options.keep_alive
    }
}

/// tchar (RFC 9110 §5.6.2).
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cl(values: &[&'static [u8]]) -> Result<Option<u64>, ParseError> {
        let hs: Vec<Header<'static>> = values
            .iter()
            .map(|v| Header {
                name: "Content-Length",
                value: v,
            })
            .collect();
        content_length(&hs)
    }

    fn te(values: &[&'static [u8]]) -> Result<TransferCoding, ParseError> {
        let hs: Vec<Header<'static>> = values
            .iter()
            .map(|v| Header {
                name: "transfer-encoding",
                value: v,
            })
            .collect();
        transfer_coding(&hs)
    }

    #[test]
    fn content_length_values() {
        assert_eq!(cl(&[]), Ok(None));
        assert_eq!(cl(&[b"0"]), Ok(Some(0)));
        assert_eq!(cl(&[b"42"]), Ok(Some(42)));
        assert_eq!(cl(&[b"42", b"42"]), Ok(Some(42)));
        assert_eq!(cl(&[b"42, 42"]), Ok(Some(42)));
        assert_eq!(cl(&[b"18446744073709551615"]), Ok(Some(u64::MAX)));
        let conflict = Err(ParseError::Malformed("conflicting-content-length"));
        assert_eq!(cl(&[b"42", b"43"]), conflict);
        assert_eq!(cl(&[b"42,43"]), conflict);
        let invalid = Err(ParseError::Malformed("invalid-content-length"));
        for v in [
            &b""[..],
            b",",
            b"+1",
            b"-1",
            b"0x10",
            b"1 2",
            b"1.0",
            b"\"5\"",
            b"18446744073709551616",
        ] {
            assert_eq!(cl(&[v]), invalid, "{:?}", v);
        }
    }

    #[test]
    fn transfer_codings() {
        assert_eq!(te(&[]), Ok(TransferCoding::Absent));
        assert_eq!(te(&[b"chunked"]), Ok(TransferCoding::Chunked));
        assert_eq!(te(&[b"ChUnKeD"]), Ok(TransferCoding::Chunked));
        assert_eq!(
            te(&[b"gzip, chunked"]),
            Ok(TransferCoding::ChunkedOverOther)
        );
        assert_eq!(
            te(&[b"gzip", b"chunked"]),
            Ok(TransferCoding::ChunkedOverOther)
        );
        assert_eq!(te(&[b"gzip"]), Ok(TransferCoding::NotChunkedFinal));
        assert_eq!(
            te(&[b"chunked", b"gzip"]),
            Ok(TransferCoding::NotChunkedFinal)
        );
        assert_eq!(te(&[b"x;q=1"]), Ok(TransferCoding::NotChunkedFinal));
        let invalid = Err(ParseError::Malformed("invalid-transfer-encoding"));
        for v in [
            &b""[..],
            b" , ",
            b"chunked, chunked",
            b"chunked;x=1",
            b"\"chunked\"",
            b"chu nked",
        ] {
            assert_eq!(te(&[v]), invalid, "{:?}", v);
        }
        assert_eq!(te(&[b"chunked", b"chunked"]), invalid);
    }

    #[test]
    fn persistence() {
        let c = |v: &'static [u8]| {
            connection_options(&[Header {
                name: "Connection",
                value: v,
            }])
        };
        assert!(persists(1, ConnectionOptions::default()));
        assert!(!persists(0, ConnectionOptions::default()));
        assert!(!persists(1, c(b"close")));
        assert!(!persists(1, c(b"Keep-Alive, CLOSE")));
        assert!(persists(0, c(b"keep-alive")));
        assert!(!persists(0, c(b"keep-alive, close")));
        assert!(persists(1, c(b"upgrade")));
    }

    #[test]
    fn decimal() {
        assert_eq!(parse_decimal(b"007"), Some(7));
        assert_eq!(parse_decimal(b""), None);
        assert_eq!(parse_decimal(b"1a"), None);
    }
}
