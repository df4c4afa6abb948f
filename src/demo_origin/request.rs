//! Request heads and request-body framing for the demo origin.

use httparse::Header;

/// Request line plus header fields, in bytes (beyond: 431 and close).
pub const HEAD_BYTES_MAX: usize = 16 * 1024;
/// Header fields in one request (beyond: 431 and close).
pub const HEADERS_MAX: usize = 64;
/// Request body bytes, after de-chunking (beyond: 413 and close).
pub const BODY_BYTES_MAX: u64 = 16 << 20;

/// Why a request cannot be answered normally; the connection closes after
/// the error response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum HeadError {
    /// 400: unparsable head, conflicting framing, bad chunked body.
    Malformed,
    /// 431: head or header count beyond the limits.
    TooLarge,
    /// 413: body beyond [`BODY_BYTES_MAX`].
    BodyTooLarge,
}

impl HeadError {
    pub(super) fn status(self) -> u16 {
        match self {
            HeadError::Malformed => 400,
            HeadError::TooLarge => 431,
            HeadError::BodyTooLarge => 413,
        }
    }
}

/// How the request body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Framing {
    Length(u64),
    Chunked,
}

/// A parsed request head, borrowing from the connection's read buffer.
pub(super) struct Head<'a> {
    pub method: &'a str,
    pub target: &'a str,
    pub http10: bool,
    /// The client allows another request on this connection.
    pub keep_alive: bool,
    pub expect_continue: bool,
    pub framing: Framing,
    pub headers: &'a [Header<'a>],
    /// Bytes of the head, final CRLF included.
    pub len: usize,
}

impl Head<'_> {
    pub(super) fn has_body(&self) -> bool {
        self.framing != Framing::Length(0)
    }

    /// Values of every header field called `name`.
    pub(super) fn values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s [u8]> + 's {
        self.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |i| i + 1);
    &v[start..end]
}

/// Comma-separated list elements, trimmed, empty ones skipped.
pub(super) fn list_items(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',').map(trim).filter(|s| !s.is_empty())
}

fn parse_length(v: &[u8]) -> Result<u64, HeadError> {
    let v = trim(v);
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(HeadError::Malformed);
    }
    let n = v.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
    if n > BODY_BYTES_MAX {
        return Err(HeadError::BodyTooLarge);
    }
    Ok(n)
}

/// Parses one request head at the start of `buf`. `Ok(None)`: incomplete.
pub(super) fn parse_head<'a>(
    buf: &'a [u8],
    headers: &'a mut [Header<'a>],
) -> Result<Option<Head<'a>>, HeadError> {
    let mut req = httparse::Request::new(headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Malformed),
    };
    if len > HEAD_BYTES_MAX {
        return Err(HeadError::TooLarge);
    }
    let httparse::Request {
        method,
        path,
        version,
        headers,
    } = req;
    let headers: &'a [Header<'a>] = headers;
    let (Some(method), Some(target), Some(version)) = (method, path, version) else {
        return Err(HeadError::Malformed);
    };
    let http10 = version == 0;
    let (mut close, mut keep) = (false, false);
    let mut length = None;
    let mut chunked = false;
    let mut expect_continue = false;
    for h in headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("connection") {
            for token in list_items(h.value) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            if length.is_some() {
                return Err(HeadError::Malformed);
            }
            length = Some(parse_length(h.value)?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Only a lone `chunked` coding is accepted; anything else is
            // refused rather than guessed at.
            if chunked || !trim(h.value).eq_ignore_ascii_case(b"chunked") {
                return Err(HeadError::Malformed);
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case("expect") {
            expect_continue = trim(h.value).eq_ignore_ascii_case(b"100-continue");
        }
    }
    let framing = match (chunked, length) {
        (true, Some(_)) => return Err(HeadError::Malformed),
        (true, None) if http10 => return Err(HeadError::Malformed),
        (true, None) => Framing::Chunked,
        (false, n) => Framing::Length(n.unwrap_or(0)),
    };
    Ok(Some(Head {
        method,
        target,
        http10,
        keep_alive: if http10 { keep && !close } else { !close },
        expect_continue,
        framing,
        headers,
        len,
    }))
}

#[derive(Clone, Copy, Debug)]
enum State {
    Size { n: u64, digits: u8 },
    Ext(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
}

/// Skips a chunked request body fed in arbitrary pieces.
#[derive(Clone, Copy, Debug)]
pub(super) struct ChunkedSkip {
    state: State,
    body: u64,
    /// Chunk-extension and trailer bytes seen, bounded by [`HEAD_BYTES_MAX`].
    extra: usize,
}

impl ChunkedSkip {
    pub(super) fn new() -> ChunkedSkip {
        ChunkedSkip {
            state: State::Size { n: 0, digits: 0 },
            body: 0,
            extra: 0,
        }
    }

    fn count_extra(&mut self) -> Result<(), HeadError> {
        self.extra += 1;
        if self.extra > HEAD_BYTES_MAX {
            return Err(HeadError::Malformed);
        }
        Ok(())
    }

    /// Consumes bytes of `input`; returns how many, and whether the body
    /// (last chunk and trailer included) is complete.
    pub(super) fn feed(&mut self, input: &[u8]) -> Result<(usize, bool), HeadError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            i += 1;
            self.state = match self.state {
                State::Size { n, digits } => match (b as char).to_digit(16) {
                    Some(_) if digits >= 15 => return Err(HeadError::BodyTooLarge),
                    Some(d) => State::Size {
                        n: n * 16 + u64::from(d),
                        digits: digits + 1,
                    },
                    None if digits == 0 => return Err(HeadError::Malformed),
                    None if b == b'\r' => State::SizeLf(n),
                    None if matches!(b, b';' | b' ' | b'\t') => State::Ext(n),
                    None => return Err(HeadError::Malformed),
                },
                State::Ext(n) => {
                    self.count_extra()?;
                    match b {
                        b'\r' => State::SizeLf(n),
                        b'\n' => return Err(HeadError::Malformed),
                        _ => State::Ext(n),
                    }
                }
                State::SizeLf(n) => {
                    if b != b'\n' {
                        return Err(HeadError::Malformed);
                    }
                    if n == 0 {
                        State::TrailerStart
                    } else {
                        self.body += n;
                        if self.body > BODY_BYTES_MAX {
                            return Err(HeadError::BodyTooLarge);
                        }
                        State::Data(n)
                    }
                }
                State::Data(n) => {
                    // `b` is the first data byte; take the rest in bulk.
                    let avail = (input.len() - i) as u64;
                    let take = (n - 1).min(avail);
                    i += take as usize;
                    match n - 1 - take {
                        0 => State::DataCr,
                        left => State::Data(left),
                    }
                }
                State::DataCr if b == b'\r' => State::DataLf,
                State::DataLf if b == b'\n' => State::Size { n: 0, digits: 0 },
                State::DataCr | State::DataLf => return Err(HeadError::Malformed),
                State::TrailerStart if b == b'\r' => State::EndLf,
                State::TrailerStart | State::Trailer => {
                    self.count_extra()?;
                    match b {
                        b'\r' => State::TrailerLf,
                        b'\n' => return Err(HeadError::Malformed),
                        _ => State::Trailer,
                    }
                }
                State::TrailerLf if b == b'\n' => State::TrailerStart,
                State::EndLf if b == b'\n' => return Ok((i, true)),
                State::TrailerLf | State::EndLf => return Err(HeadError::Malformed),
            };
        }
        Ok((i, false))
    }
}
