//! Origin response heads and their body framing (RFC 9112 §6.3).
//!
//! ```text
//!  buf: HTTP/1.x SP status [SP reason] CRLF *(field-line CRLF) CRLF body...
//!       |<------------------------ head_len ------------------------->|
//! ```
//!
//! Framing is decided in the order of RFC 9112 §6.3: no body for a HEAD
//! request or a 1xx/204/304 status; then `Transfer-Encoding`; then
//! `Content-Length`; otherwise the body runs to the close of the
//! connection. Bare LF line ends are accepted here (RFC 9112 §2.2): the
//! origin is configured by the operator, and heads are re-parsed, never
//! relayed as unchecked bytes.

use std::mem::MaybeUninit;

use httparse::Header;

use super::error::ParseError;
use super::framing::{self, TransferCoding};
use super::headers::count;
use super::request::Parsed;

/// How the response body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body, whatever the fields say.
    Empty,
    /// Exactly this many bytes follow the head (may be 0).
    Length(u64),
    /// Chunked; decode or delimit with `ChunkedDecoder`.
    Chunked,
    /// The body ends when the origin closes the connection.
    Close,
}

/// A parsed response head; every slice borrows the receive buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseHead<'b, 'h> {
    /// 100..=599.
    pub status: u16,
    pub reason: &'b [u8],
    /// 0 or 1.
    pub minor_version: u8,
    pub headers: &'h [Header<'b>],
    /// Bytes of the status line, fields and final CRLF.
    pub head_len: usize,
    pub body: ResponseFraming,
    /// The origin connection may be reused after this response.
    pub keep_alive: bool,
}

impl ResponseHead<'_, '_> {
    /// `Transfer-Encoding` applies codings besides `chunked`: after
    /// de-chunking, the payload is still transfer-coded, so it must not be
    /// stored or served as the representation.
    pub fn transfer_coded(&self) -> bool {
        self.body == ResponseFraming::Chunked
            && framing::transfer_coding(self.headers) == Ok(TransferCoding::ChunkedOverOther)
    }
}

/// Parse an origin response head from the start of `buf`.
///
/// `request_was_head`: the response to a HEAD has no body whatever its
/// headers say. 1xx, 204, 304 → Empty. TE chunked (final) → Chunked (and
/// Content-Length ignored, connection not reused); TE without chunked final
/// → Close; valid CL → Length; conflicting CL → Err(Malformed); none →
/// Close. `keep_alive` is false for Close framing, `Connection: close`, or
/// HTTP/1.0 without keep-alive. At most `headers.len()` fields are accepted.
pub fn parse_response<'b, 'h>(
    buf: &'b [u8],
    headers: &'h mut [MaybeUninit<Header<'b>>],
    request_was_head: bool,
    head_bytes_max: usize,
) -> Result<Parsed<ResponseHead<'b, 'h>>, ParseError> {
    let window = &buf[..buf.len().min(head_bytes_max)];
    let mut resp = httparse::Response::new(&mut []);
    let head_len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, window, headers)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= head_bytes_max => {
            return Err(ParseError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(e) => return Err(ParseError::from_httparse(e)),
    };
    let (Some(minor_version), Some(status), Some(reason)) = (resp.version, resp.code, resp.reason)
    else {
        return Err(ParseError::Malformed("invalid-status-line"));
    };
    if !(100..=599).contains(&status) {
        return Err(ParseError::Malformed("invalid-status"));
    }
    let fields: &'h [Header<'b>] = resp.headers;

    let mut keep_alive = framing::persists(minor_version, framing::connection_options(fields));
    let coding = framing::transfer_coding(fields)?;
    let no_body =
        request_was_head || (100..200).contains(&status) || status == 204 || status == 304;
    let body = match coding {
        _ if no_body => {
            if coding == TransferCoding::Absent {
                framing::content_length(fields)?;
            }
            ResponseFraming::Empty
        }
        TransferCoding::Absent => match framing::content_length(fields)? {
            Some(n) => ResponseFraming::Length(n),
            None => ResponseFraming::Close,
        },
        _ if minor_version == 0 => return Err(ParseError::Malformed("te-in-http10")),
        TransferCoding::Chunked | TransferCoding::ChunkedOverOther => {
            if count(fields, b"content-length") > 0 {
                // RFC 9112 §6.3: TE overrides CL, and the connection must
                // not be trusted for another message.
                keep_alive = false;
            }
            ResponseFraming::Chunked
        }
        TransferCoding::NotChunkedFinal => ResponseFraming::Close,
    };
    if body == ResponseFraming::Close {
        keep_alive = false;
    }

    Ok(Parsed::Complete(ResponseHead {
        status,
        reason: reason.as_bytes(),
        minor_version,
        headers: fields,
        head_len,
        body,
        keep_alive,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq)]
    struct Seen {
        status: u16,
        reason: Vec<u8>,
        minor_version: u8,
        head_len: usize,
        body: ResponseFraming,
        keep_alive: bool,
        transfer_coded: bool,
    }

    fn parse_with(buf: &[u8], head: bool, max: usize) -> Result<Option<Seen>, ParseError> {
        let mut scratch = [MaybeUninit::uninit(); 4];
        Ok(match parse_response(buf, &mut scratch, head, max)? {
            Parsed::Partial => None,
            Parsed::Complete(r) => Some(Seen {
                status: r.status,
                reason: r.reason.to_vec(),
                minor_version: r.minor_version,
                head_len: r.head_len,
                body: r.body,
                keep_alive: r.keep_alive,
                transfer_coded: r.transfer_coded(),
            }),
        })
    }

    fn ok(buf: &[u8]) -> Seen {
        parse_with(buf, false, 1024).unwrap().unwrap()
    }

    fn framing_of(buf: &[u8]) -> (ResponseFraming, bool) {
        let r = ok(buf);
        (r.body, r.keep_alive)
    }

    #[test]
    fn content_length_response() {
        let buf = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        let r = ok(buf);
        assert_eq!(r.status, 200);
        assert_eq!(r.reason, b"OK");
        assert_eq!(r.minor_version, 1);
        assert_eq!(r.head_len, buf.len() - 5);
        assert_eq!(r.body, ResponseFraming::Length(5));
        assert!(r.keep_alive);
        assert!(!r.transfer_coded);
        assert_eq!(
            ok(b"HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n").reason,
            b""
        );
        assert_eq!(ok(b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n").status, 200);
    }

    #[test]
    fn partial_and_limits() {
        let buf = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
        for end in 0..buf.len() {
            assert_eq!(
                parse_with(&buf[..end], false, 1024),
                Ok(None),
                "prefix {end}"
            );
        }
        assert_eq!(
            parse_with(buf, false, buf.len()).unwrap().unwrap().head_len,
            buf.len()
        );
        assert_eq!(
            parse_with(buf, false, buf.len() - 1),
            Err(ParseError::HeadTooLarge)
        );
        assert_eq!(
            parse_with(&buf[..20], false, 16),
            Err(ParseError::HeadTooLarge)
        );
        let many = b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 1\r\nC: 1\r\nD: 1\r\nE: 1\r\n\r\n";
        assert_eq!(
            parse_with(many, false, 1024),
            Err(ParseError::TooManyHeaders)
        );
    }

    #[test]
    fn no_body_statuses_and_head() {
        for status in ["100", "103", "204", "304"] {
            let buf = format!("HTTP/1.1 {status} X\r\nContent-Length: 10\r\n\r\n");
            assert_eq!(
                framing_of(buf.as_bytes()),
                (ResponseFraming::Empty, true),
                "{status}"
            );
        }
        let buf = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n";
        assert_eq!(
            parse_with(buf, true, 1024).unwrap().unwrap().body,
            ResponseFraming::Empty
        );
        let buf = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        let r = parse_with(buf, true, 1024).unwrap().unwrap();
        assert_eq!((r.body, r.keep_alive), (ResponseFraming::Empty, true));
        let buf = b"HTTP/1.1 200 OK\r\n\r\n";
        assert!(parse_with(buf, true, 1024).unwrap().unwrap().keep_alive);
    }

    #[test]
    fn transfer_encoding_response() {
        assert_eq!(
            framing_of(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            (ResponseFraming::Chunked, true)
        );
        // Content-Length is ignored, and the connection is not reused.
        assert_eq!(
            framing_of(
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
            ),
            (ResponseFraming::Chunked, false)
        );
        let r = ok(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!((r.body, r.transfer_coded), (ResponseFraming::Chunked, true));
        assert_eq!(
            framing_of(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\n"),
            (ResponseFraming::Close, false)
        );
        assert_eq!(
            parse_with(
                b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false,
                1024
            ),
            Err(ParseError::Malformed("te-in-http10"))
        );
        assert_eq!(
            parse_with(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
                false,
                1024
            ),
            Err(ParseError::Malformed("invalid-transfer-encoding"))
        );
    }

    #[test]
    fn content_length_errors() {
        assert_eq!(
            parse_with(
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
                false,
                1024
            ),
            Err(ParseError::Malformed("conflicting-content-length"))
        );
        assert_eq!(
            parse_with(
                b"HTTP/1.1 304 OK\r\nContent-Length: 3, 4\r\n\r\n",
                false,
                1024
            ),
            Err(ParseError::Malformed("conflicting-content-length"))
        );
        assert_eq!(
            parse_with(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", false, 1024),
            Err(ParseError::Malformed("invalid-content-length"))
        );
        assert_eq!(
            framing_of(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n"),
            (ResponseFraming::Length(3), true)
        );
    }

    #[test]
    fn close_delimited_and_keep_alive() {
        assert_eq!(
            framing_of(b"HTTP/1.1 200 OK\r\n\r\n"),
            (ResponseFraming::Close, false)
        );
        assert_eq!(
            framing_of(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n"),
            (ResponseFraming::Length(1), false)
        );
        assert_eq!(
            framing_of(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n"),
            (ResponseFraming::Length(1), false)
        );
        assert_eq!(
            framing_of(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n"),
            (ResponseFraming::Length(1), true)
        );
    }

    #[test]
    fn malformed_status_lines() {
        for buf in [
            &b"HTTP/1.1 20 OK\r\n\r\n"[..],
            b"HTTP/1.1 099 X\r\n\r\n",
            b"HTTP/1.1 600 X\r\n\r\n",
            b"HTTP/2.0 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX : y\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: y\r\n z\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: a\x00\r\n\r\n",
            b"ICY 200 OK\r\n\r\n",
        ] {
            assert!(
                matches!(parse_with(buf, false, 1024), Err(ParseError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(buf)
            );
        }
    }
}
