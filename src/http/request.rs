//! Request heads: strict parsing and framing per RFC 9112.
//!
//! ```text
//!  buf: [CRLF]* method SP target SP HTTP/1.x CRLF *(field-line CRLF) CRLF body...
//!       |<------------------------- head_len ---------------------------->|
//! ```
//!
//! httparse tokenizes the head into slices of `buf` and rejects bad field
//! names, whitespace before the colon, obs-fold, bare CR and control bytes
//! in values. On top of that this module rejects bare LF line ends, sorts
//! version errors into 505 and 400, checks the target form and `Host`, and
//! resolves the body framing so that no two readers of the same bytes can
//! disagree on where the request ends.

use std::mem::MaybeUninit;

use httparse::Header;

use super::error::ParseError;
use super::framing::{self, TransferCoding};
use super::headers::{count, get, list_elements, values};

/// Size limits applied while parsing one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestLimits {
    /// The request line, the fields and the final CRLF must fit in this.
    pub head_bytes_max: usize,
    /// At most this many field lines.
    pub headers_count_max: usize,
    /// A `Content-Length` above this is refused with 413.
    pub body_bytes_max: usize,
}

/// Request methods ringcache tells apart (RFC 9110 §9). Methods are
/// case-sensitive; anything else is `Other` (see `method_bytes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Patch,
    Options,
    Trace,
    Connect,
    Other,
}

impl Method {
    /// Classify a method token, case-sensitively.
    pub fn from_bytes(b: &[u8]) -> Method {
        match b {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"PATCH" => Method::Patch,
            b"OPTIONS" => Method::Options,
            b"TRACE" => Method::Trace,
            b"CONNECT" => Method::Connect,
            _ => Method::Other,
        }
    }

    /// Read-only by definition (RFC 9110 §9.2.1).
    pub fn is_safe(self) -> bool {
        matches!(
            self,
            Method::Get | Method::Head | Method::Options | Method::Trace
        )
    }

    /// Repeating it has the same intended effect (RFC 9110 §9.2.2).
    pub fn is_idempotent(self) -> bool {
        self.is_safe() || matches!(self, Method::Put | Method::Delete)
    }
}

/// How the request body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body: neither `Content-Length` nor `Transfer-Encoding`.
    None,
    /// Exactly this many bytes follow the head (may be 0).
    Length(u64),
    /// `Transfer-Encoding: chunked`; decode with `ChunkedDecoder`.
    Chunked,
}

/// A parsed request head; every slice borrows the receive buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestHead<'b, 'h> {
    pub method: Method,
    pub method_bytes: &'b [u8],
    /// As sent: origin-form, absolute-form, authority-form (CONNECT) or `*`.
    pub target: &'b [u8],
    /// 0 or 1.
    pub minor_version: u8,
    pub headers: &'h [Header<'b>],
    /// Bytes of the request line, fields and final CRLF, including any
    /// empty lines before the request line.
    pub head_len: usize,
    pub body: BodyFraming,
    /// 1.1: unless `Connection: close`; 1.0: only with `Connection: keep-alive`.
    pub keep_alive: bool,
    pub host: Option<&'b [u8]>,
    /// `Expect: 100-continue` on an HTTP/1.1 request (ignored on 1.0,
    /// RFC 9110 §10.1.1).
    pub expect_continue: bool,
}

/// Outcome of parsing a head that may not have fully arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed<T> {
    Complete(T),
    /// Valid so far; read more and parse again from the start.
    Partial,
}

/// Parse a request head from the start of `buf`.
///
/// `headers` is scratch space the caller owns (e.g. a stack array of
/// `MaybeUninit`, length `limits.headers_count_max`); at most
/// `min(headers.len(), limits.headers_count_max)` fields are accepted.
pub fn parse_request<'b, 'h>(
    buf: &'b [u8],
    headers: &'h mut [MaybeUninit<Header<'b>>],
    limits: &RequestLimits,
) -> Result<Parsed<RequestHead<'b, 'h>>, ParseError> {
    // Never look past the limit: a complete head longer than it shows up as
    // Partial on the window, and a huge buffer costs no more than a small one.
    let window = &buf[..buf.len().min(limits.head_bytes_max)];
    let out_of_room = buf.len() >= limits.head_bytes_max;
    let headers_count_max = headers.len().min(limits.headers_count_max);
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(window, &mut headers[..headers_count_max]) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if out_of_room => return Err(ParseError::HeadTooLarge),
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(e @ (httparse::Error::Version | httparse::Error::Token)) => {
            return classify_request_line_error(window, out_of_room, e)
        }
        Err(e) => return Err(ParseError::from_httparse(e)),
    };
    let (Some(method), Some(target), Some(minor_version)) = (req.method, req.path, req.version)
    else {
        return Err(ParseError::Malformed("invalid-request-line"));
    };
    let fields: &'h [Header<'b>] = req.headers;
    debug_assert!(head_len <= limits.head_bytes_max);
    debug_assert!(fields.len() <= limits.headers_count_max);

    if has_bare_lf(&buf[..head_len]) {
        return Err(ParseError::Malformed("bare-lf"));
    }
    let method_bytes = method.as_bytes();
    let method = Method::from_bytes(method_bytes);
    let target = target.as_bytes();
    check_target(method, target)?;

    let host = match count(fields, b"host") {
        0 if minor_version == 1 => return Err(ParseError::Malformed("missing-host")),
        0 => None,
        1 => get(fields, b"host"),
        _ => return Err(ParseError::Malformed("duplicate-host")),
    };
    if let Some(h) = host {
        if !h.iter().all(|&b| is_host_byte(b)) {
            return Err(ParseError::Malformed("invalid-host"));
        }
    }

    let body = request_body(fields, minor_version, limits)?;
    let keep_alive = framing::persists(minor_version, framing::connection_options(fields));
    let expect_continue = minor_version == 1
        && values(fields, b"expect")
            .flat_map(list_elements)
            .any(|e| e.eq_ignore_ascii_case(b"100-continue"));

    Ok(Parsed::Complete(RequestHead {
        method,
        method_bytes,
        target,
        minor_version,
        headers: fields,
        head_len,
        body,
        keep_alive,
        host,
        expect_continue,
    }))
}

/// Resolve request body framing (RFC 9112 §6.1, §6.3).
fn request_body(
    fields: &[Header<'_>],
    minor_version: u8,
    limits: &RequestLimits,
) -> Result<BodyFraming, ParseError> {
    let coding = framing::transfer_coding(fields)?;
    let length = framing::content_length(fields);
    if coding != TransferCoding::Absent {
        if minor_version == 0 {
            return Err(ParseError::Malformed("te-in-http10"));
        }
        if count(fields, b"content-length") > 0 {
            return Err(ParseError::Malformed("te-and-content-length"));
        }
    }
    match coding {
        TransferCoding::Chunked => Ok(BodyFraming::Chunked),
        TransferCoding::ChunkedOverOther => Err(ParseError::NotImplemented("transfer-coding")),
        TransferCoding::NotChunkedFinal => Err(ParseError::Malformed("te-not-chunked-final")),
        TransferCoding::Absent => match length? {
            None => Ok(BodyFraming::None),
            Some(n) if n > limits.body_bytes_max as u64 => Err(ParseError::BodyTooLarge),
            Some(n) => Ok(BodyFraming::Length(n)),
        },
    }
}

/// httparse reports any bad version as `Version` and a request line with a
/// missing part as `Token`. A well-formed `HTTP/x.y` other than 1.0 and 1.1,
/// or an HTTP/0.9 style `method SP target` line, gets 505; the rest is 400.
fn classify_request_line_error(
    window: &[u8],
    out_of_room: bool,
    e: httparse::Error,
) -> Result<Parsed<RequestHead<'static, 'static>>, ParseError> {
    let malformed = Err(ParseError::from_httparse(e));
    let start = window
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(window.len());
    let rest = &window[start..];
    // Where the line stands: ended by CRLF, or cut off (maybe right after
    // its CR, in which case the LF may still come).
    let (line, progress) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (
            rest[..i].strip_suffix(b"\r").unwrap_or(&rest[..i]),
            Line::Ended,
        ),
        None => match rest.strip_suffix(b"\r") {
            Some(line) => (line, Line::AtCr),
            None => (rest, Line::Open),
        },
    };
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return malformed;
    };
    if method.is_empty() || !method.iter().all(|&b| framing::is_tchar(b)) || target.is_empty() {
        return malformed;
    }
    let wait = if out_of_room {
        Err(ParseError::HeadTooLarge)
    } else {
        Ok(Parsed::Partial)
    };
    match (parts.next(), parts.next()) {
        (None, None) if e == httparse::Error::Token => match progress {
            Line::Ended => Err(ParseError::VersionNotSupported),
            Line::AtCr => wait,
            Line::Open => malformed,
        },
        (Some(version), None) if e == httparse::Error::Version => {
            match (version_shape(version), progress) {
                (Shape::Full, Line::Ended) => Err(ParseError::VersionNotSupported),
                (Shape::Full, Line::AtCr) | (Shape::Full | Shape::Prefix, Line::Open) => wait,
                _ => malformed,
            }
        }
        _ => malformed,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Line {
    Ended,
    AtCr,
    Open,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Full,
    Prefix,
    Invalid,
}

/// How far `v` matches `HTTP/` DIGIT `.` DIGIT (the name is case-sensitive).
fn version_shape(v: &[u8]) -> Shape {
    const PATTERN: &[u8; 8] = b"HTTP/d.d";
    if v.len() > PATTERN.len() {
        return Shape::Invalid;
    }
    let matches = v.iter().zip(PATTERN).all(|(&b, &p)| match p {
        b'd' => b.is_ascii_digit(),
        _ => b == p,
    });
    match (matches, v.len() == PATTERN.len()) {
        (false, _) => Shape::Invalid,
        (true, true) => Shape::Full,
        (true, false) => Shape::Prefix,
    }
}

/// A LF not preceded by CR. RFC 9112 §2.2 lets a recipient accept these;
/// a proxy must not, since the next hop may split lines differently.
fn has_bare_lf(head: &[u8]) -> bool {
    head.iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'))
}

/// Request-target forms (RFC 9112 §3.2). httparse already refused control
/// bytes, SP and DEL; refuse non-ASCII bytes and fragments too.
fn check_target(method: Method, target: &[u8]) -> Result<(), ParseError> {
    const INVALID: ParseError = ParseError::Malformed("invalid-target");
    if target.iter().any(|&b| b == b'#' || !b.is_ascii()) {
        return Err(INVALID);
    }
    let valid = match target {
        b"*" => method == Method::Options,
        [b'/', ..] => true,
        _ if method == Method::Connect => true,
        _ => is_absolute_uri(target),
    };
    if valid {
        Ok(())
    } else {
        Err(INVALID)
    }
}

/// scheme ":" ... where scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ).
fn is_absolute_uri(target: &[u8]) -> bool {
    let Some(colon) = target.iter().position(|&b| b == b':') else {
        return false;
    };
    let scheme = &target[..colon];
    scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.')
}

/// Bytes of uri-host [ ":" port ] (RFC 3986 reg-name, IP literal, port).
fn is_host_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:[]%".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: RequestLimits = RequestLimits {
        head_bytes_max: 1024,
        headers_count_max: 8,
        body_bytes_max: 1000,
    };

    /// Owned copy of what a test wants to look at.
    #[derive(Debug, PartialEq, Eq)]
    struct Seen {
        method: Method,
        target: Vec<u8>,
        minor_version: u8,
        head_len: usize,
        body: BodyFraming,
        keep_alive: bool,
        host: Option<Vec<u8>>,
        expect_continue: bool,
        fields_count: usize,
    }

    fn parse_with(buf: &[u8], limits: &RequestLimits) -> Result<Option<Seen>, ParseError> {
        let mut scratch = [MaybeUninit::uninit(); 8];
        Ok(match parse_request(buf, &mut scratch, limits)? {
            Parsed::Partial => None,
            Parsed::Complete(r) => Some(Seen {
                method: r.method,
                target: r.target.to_vec(),
                minor_version: r.minor_version,
                head_len: r.head_len,
                body: r.body,
                keep_alive: r.keep_alive,
                host: r.host.map(<[u8]>::to_vec),
                expect_continue: r.expect_continue,
                fields_count: r.headers.len(),
            }),
        })
    }

    fn parse(buf: &[u8]) -> Result<Option<Seen>, ParseError> {
        parse_with(buf, &LIMITS)
    }

    fn ok(buf: &[u8]) -> Seen {
        parse(buf).expect("valid").expect("complete")
    }

    fn bad(buf: &[u8]) -> &'static str {
        match parse(buf) {
            Err(ParseError::Malformed(d)) => d,
            other => panic!(
                "{:?}: expected Malformed, got {:?}",
                String::from_utf8_lossy(buf),
                other
            ),
        }
    }

    #[test]
    fn simple_get() {
        let buf = b"GET /a?b=c HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\nNEXT";
        let r = ok(buf);
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.target, b"/a?b=c");
        assert_eq!(r.minor_version, 1);
        assert_eq!(r.head_len, buf.len() - 4);
        assert_eq!(r.body, BodyFraming::None);
        assert!(r.keep_alive);
        assert_eq!(r.host.as_deref(), Some(&b"example.com"[..]));
        assert!(!r.expect_continue);
        assert_eq!(r.fields_count, 2);
    }

    #[test]
    fn partial_heads() {
        let buf = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        for end in 0..buf.len() {
            assert_eq!(parse(&buf[..end]), Ok(None), "prefix {end}");
        }
        assert!(ok(buf).keep_alive);
    }

    #[test]
    fn leading_empty_lines() {
        let r = ok(b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(r.head_len, 31);
    }

    #[test]
    fn head_too_large() {
        let limits = RequestLimits {
            head_bytes_max: 32,
            ..LIMITS
        };
        // Partial and longer than the limit.
        let long = b"GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa HTTP/1.1\r\n";
        assert_eq!(parse_with(long, &limits), Err(ParseError::HeadTooLarge));
        // Complete but longer than the limit.
        let head = b"GET / HTTP/1.1\r\nHost: a\r\nX: 0123456789\r\n\r\n";
        assert_eq!(parse_with(head, &limits), Err(ParseError::HeadTooLarge));
        // Exactly at the limit is fine, and so are body bytes past it.
        let exact = b"GET / HTTP/1.1\r\nHost: abcdef\r\n\r\nbody-bytes-past-the-limit";
        assert_eq!(parse_with(exact, &limits).unwrap().unwrap().head_len, 32);
        // Partial within the limit.
        assert_eq!(parse_with(b"GET / HTTP/1.1\r\n", &limits), Ok(None));
    }

    #[test]
    fn too_many_headers() {
        let limits = RequestLimits {
            headers_count_max: 2,
            ..LIMITS
        };
        let two = b"GET / HTTP/1.1\r\nHost: a\r\nA: b\r\n\r\n";
        assert_eq!(parse_with(two, &limits).unwrap().unwrap().fields_count, 2);
        let three = b"GET / HTTP/1.1\r\nHost: a\r\nA: b\r\nC: d\r\n\r\n";
        assert_eq!(parse_with(three, &limits), Err(ParseError::TooManyHeaders));
    }

    #[test]
    fn methods() {
        assert_eq!(Method::from_bytes(b"GET"), Method::Get);
        assert_eq!(Method::from_bytes(b"get"), Method::Other);
        assert_eq!(Method::from_bytes(b"PROPFIND"), Method::Other);
        assert_eq!(Method::from_bytes(b"CONNECT"), Method::Connect);
        assert!(Method::Get.is_safe() && Method::Head.is_safe());
        assert!(Method::Options.is_safe() && Method::Trace.is_safe());
        assert!(!Method::Post.is_safe() && !Method::Put.is_safe() && !Method::Other.is_safe());
        assert!(Method::Put.is_idempotent() && Method::Delete.is_idempotent());
        assert!(Method::Get.is_idempotent());
        assert!(!Method::Post.is_idempotent() && !Method::Patch.is_idempotent());
        assert!(!Method::Connect.is_idempotent() && !Method::Other.is_idempotent());
        let r = ok(b"PURGE /x HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(r.method, Method::Other);
    }

    #[test]
    fn content_length_framing() {
        let r = ok(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(r.body, BodyFraming::Length(5));
        let r = ok(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(r.body, BodyFraming::Length(5));
        let r = ok(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n");
        assert_eq!(r.body, BodyFraming::Length(5));
        let r = ok(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n");
        assert_eq!(r.body, BodyFraming::Length(1000));
        assert_eq!(
            bad(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
            "conflicting-content-length"
        );
        assert_eq!(
            bad(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5,6\r\n\r\n"),
            "conflicting-content-length"
        );
        for v in ["", "abc", "-1", "+5", "0x5", "5 5", "99999999999999999999"] {
            let buf = format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {v}\r\n\r\n");
            assert_eq!(bad(buf.as_bytes()), "invalid-content-length", "{v:?}");
        }
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n"),
            Err(ParseError::BodyTooLarge)
        );
    }

    #[test]
    fn transfer_encoding_framing() {
        let r = ok(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(r.body, BodyFraming::Chunked);
        let r = ok(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\n\r\n");
        assert_eq!(r.body, BodyFraming::Chunked);
        assert_eq!(
            bad(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"),
            "te-and-content-length"
        );
        assert_eq!(
            bad(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: gzip\r\n\r\n"),
            "te-and-content-length"
        );
        assert_eq!(
            bad(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
            "te-not-chunked-final"
        );
        assert_eq!(
            bad(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n"),
            "te-not-chunked-final"
        );
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Err(ParseError::NotImplemented("transfer-coding"))
        );
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(ParseError::NotImplemented("transfer-coding"))
        );
        assert_eq!(
            bad(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"),
            "invalid-transfer-encoding"
        );
        assert_eq!(
            bad(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n"),
            "invalid-transfer-encoding"
        );
        assert_eq!(
            bad(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            "te-in-http10"
        );
    }

    #[test]
    fn field_syntax_rejected() {
        // obs-fold
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n"),
            "invalid-field-name"
        );
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n\tb\r\n\r\n"),
            "invalid-field-name"
        );
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\n Host: a\r\n\r\n"),
            "invalid-field-name"
        );
        // whitespace between name and colon
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n"),
            "invalid-field-name"
        );
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\nHost\t: a\r\n\r\n"),
            "invalid-field-name"
        );
        // invalid name characters, empty name, missing colon
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\nHo(st: a\r\n\r\n"),
            "invalid-field-name"
        );
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n"),
            "invalid-field-name"
        );
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n"),
            "invalid-field-name"
        );
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\nHost: a\r\nX\x00: b\r\n\r\n"),
            "invalid-field-name"
        );
        // control bytes in values
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n"),
            "invalid-field-value"
        );
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n"),
            "invalid-field-value"
        );
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n"),
            "invalid-field-value"
        );
        // a tab and obs-text inside a value are fine
        assert_eq!(
            ok(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\tb\xe9\r\n\r\n").fields_count,
            2
        );
        // bare CR
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n"),
            "invalid-field-value"
        );
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\r\n\r\n"),
            "invalid-field-value"
        );
        assert_eq!(
            bad(b"GET / HTTP/1.1\rHost: a\r\n\r\n"),
            "invalid-line-ending"
        );
        // bare LF
        assert_eq!(bad(b"GET / HTTP/1.1\nHost: a\r\n\r\n"), "bare-lf");
        assert_eq!(bad(b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n"), "bare-lf");
        assert_eq!(bad(b"GET / HTTP/1.1\r\nHost: a\r\n\n"), "bare-lf");
        assert_eq!(bad(b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"), "bare-lf");
    }

    #[test]
    fn versions() {
        let r = ok(b"GET / HTTP/1.0\r\n\r\n");
        assert_eq!(r.minor_version, 0);
        assert!(!r.keep_alive);
        assert_eq!(r.host, None);
        for line in [
            &b"GET / HTTP/2.0\r\n\r\n"[..],
            b"GET / HTTP/1.2\r\nHost: a\r\n\r\n",
            b"GET / HTTP/0.9\r\n\r\n",
            b"GET / HTTP/3.0\r\n",
            b"GET /\r\n",
        ] {
            assert_eq!(
                parse(line),
                Err(ParseError::VersionNotSupported),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
        // Incomplete but still possibly a well-formed version: wait for more.
        assert_eq!(parse(b"GET / HTTP/2"), Ok(None));
        assert_eq!(parse(b"GET /\r"), Ok(None));
        assert_eq!(parse(b"GET / HTTP/2.0"), Ok(None));
        for line in [
            &b"GET / HTTP/1.10\r\n\r\n"[..],
            b"GET / http/1.1\r\n\r\n",
            b"GET / HTTP/11\r\n\r\n",
            b"GET / HTTP/1.x\r\n\r\n",
            b"GET / FOO\r\n\r\n",
            b"GET / HTTP/1.1 \r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET\r\n\r\n",
            b"G(T / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/2.0 x\r\n\r\n",
            b"GET / HTTP/x",
        ] {
            assert!(
                matches!(parse(line), Err(ParseError::Malformed(_))),
                "{:?} -> {:?}",
                String::from_utf8_lossy(line),
                parse(line)
            );
        }
    }

    #[test]
    fn prefixes_never_disagree_with_the_whole() {
        for whole in [
            &b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"[..],
            b"GET / HTTP/0.9\r\n\r\n",
            b"GET /\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            let expected = parse(whole);
            for end in 0..whole.len() {
                let got = parse(&whole[..end]);
                assert!(
                    got == Ok(None) || got == expected,
                    "{:?} at {end}: {got:?} vs {expected:?}",
                    String::from_utf8_lossy(whole)
                );
            }
        }
    }

    #[test]
    fn host_rules() {
        assert_eq!(bad(b"GET / HTTP/1.1\r\n\r\n"), "missing-host");
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n"),
            "duplicate-host"
        );
        assert_eq!(
            bad(b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"),
            "duplicate-host"
        );
        assert_eq!(bad(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n"), "invalid-host");
        assert_eq!(bad(b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"), "invalid-host");
        let r = ok(b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n");
        assert_eq!(r.host.as_deref(), Some(&b"[::1]:8080"[..]));
        // An empty Host is allowed (RFC 9112 §3.2).
        assert_eq!(
            ok(b"GET / HTTP/1.1\r\nHost:\r\n\r\n").host.as_deref(),
            Some(&b""[..])
        );
        let r = ok(b"GET / HTTP/1.0\r\nHost: a\r\n\r\n");
        assert_eq!(r.host.as_deref(), Some(&b"a"[..]));
    }

    #[test]
    fn targets() {
        assert_eq!(ok(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n").target, b"*");
        assert_eq!(
            ok(b"GET http://a/x HTTP/1.1\r\nHost: a\r\n\r\n").target,
            b"http://a/x"
        );
        assert_eq!(
            ok(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n").target,
            b"a:443"
        );
        assert_eq!(bad(b"GET * HTTP/1.1\r\nHost: a\r\n\r\n"), "invalid-target");
        assert_eq!(bad(b"GET x HTTP/1.1\r\nHost: a\r\n\r\n"), "invalid-target");
        assert_eq!(
            bad(b"GET 1http://a/ HTTP/1.1\r\nHost: a\r\n\r\n"),
            "invalid-target"
        );
        assert_eq!(
            bad(b"GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n"),
            "invalid-target"
        );
        assert_eq!(
            bad(b"GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n"),
            "invalid-target"
        );
    }

    #[test]
    fn keep_alive_rules() {
        assert!(!ok(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!ok(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, Close\r\n\r\n").keep_alive);
        assert!(ok(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n").keep_alive);
        assert!(ok(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        assert!(!ok(b"GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(
            !ok(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n")
                .keep_alive
        );
    }

    #[test]
    fn expect_continue() {
        let r =
            ok(b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n");
        assert!(r.expect_continue);
        assert!(!ok(b"PUT / HTTP/1.1\r\nHost: a\r\n\r\n").expect_continue);
        assert!(!ok(b"PUT / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").expect_continue);
    }

    #[test]
    fn scratch_longer_than_limit_is_capped() {
        let mut scratch = [MaybeUninit::uninit(); 16];
        let limits = RequestLimits {
            headers_count_max: 1,
            ..LIMITS
        };
        let buf = b"GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n\r\n";
        assert_eq!(
            parse_request(buf, &mut scratch, &limits),
            Err(ParseError::TooManyHeaders)
        );
    }
}
