//! Routes, query knobs and response rendering of the demo origin.

use std::time::{SystemTime, UNIX_EPOCH};

use super::request::{list_items, Head};
use super::stats::Stats;

/// Largest item body `size=` may ask for.
pub const ITEM_BYTES_MAX: usize = 16 << 20;
/// Item body size without `size=`.
pub const ITEM_BYTES_DEFAULT: usize = 256;
/// `max-age` without `max_age=`.
pub const MAX_AGE_DEFAULT: u64 = 60;
/// Longest `tags=` value, in bytes.
const TAGS_BYTES_MAX: usize = 1024;
/// Longest `delay_ms=`.
pub const DELAY_MS_MAX: u64 = 60_000;
/// Largest chunk of a `chunked=1` body.
const CHUNK_BYTES_MAX: usize = 16 * 1024;

/// Bytes the padding of item bodies cycles through (all JSON-safe).
const PATTERN: &[u8; 64] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_";

/// Per-thread state responses are rendered with.
pub(super) struct Ctx {
    pub stats: std::sync::Arc<Stats>,
    pub shard: usize,
    pub last_modified: &'static str,
    date_secs: u64,
    date: String,
    scratch: Vec<u8>,
}

impl Ctx {
    pub(super) fn new(
        stats: std::sync::Arc<Stats>,
        shard: usize,
        last_modified: &'static str,
    ) -> Ctx {
        Ctx {
            stats,
            shard,
            last_modified,
            date_secs: u64::MAX,
            date: String::new(),
            scratch: Vec::new(),
        }
    }

    fn date(&mut self) -> &str {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if secs != self.date_secs {
            self.date_secs = secs;
            self.date = httpdate::fmt_http_date(now);
        }
        &self.date
    }
}

/// Query knobs of an item request.
#[derive(Clone, Copy, Debug)]
pub(super) struct Knobs<'a> {
    pub size: usize,
    pub max_age: u64,
    /// Raw (still percent-encoded) `cc=` value.
    pub cc: Option<&'a str>,
    pub delay_ms: u64,
    pub status: u16,
    pub chunked: bool,
    pub close: bool,
    /// Raw `tags=a,b` value: sent as `Surrogate-Key: a b`.
    pub tags: Option<&'a str>,
}

/// What a request asks for.
#[derive(Clone, Copy, Debug)]
pub(super) enum Route<'a> {
    /// GET or HEAD of an item.
    Item {
        id: &'a str,
        knobs: Knobs<'a>,
    },
    /// POST, PUT, DELETE or PATCH of an item.
    Write,
    Stats,
    Reset,
    NotFound,
    NotAllowed(&'static str),
    BadQuery,
}

impl Route<'_> {
    pub(super) fn delay_ms(&self) -> u64 {
        match self {
            Route::Item { knobs, .. } => knobs.delay_ms,
            _ => 0,
        }
    }
}

/// Splits a request target into path and query; absolute-form targets lose
/// their scheme and authority.
pub(super) fn split_target(target: &str) -> (&str, &str) {
    let mut t = target;
    for scheme in ["http://", "https://"] {
        if t.len() >= scheme.len() && t[..scheme.len()].eq_ignore_ascii_case(scheme) {
            let rest = &t[scheme.len()..];
            t = rest.find('/').map_or("/", |i| &rest[i..]);
            break;
        }
    }
    t.split_once('?').unwrap_or((t, ""))
}

/// `/__origin/...` requests are not counted in the stats.
pub(super) fn is_control(path: &str) -> bool {
    path.starts_with("/__origin/")
}

pub(super) fn route<'a>(method: &str, path: &'a str, query: &'a str) -> Route<'a> {
    if let Some(id) = path.strip_prefix("/api/items/").filter(|id| !id.is_empty()) {
        return match method {
            "GET" | "HEAD" => match parse_knobs(query) {
                Some(knobs) => Route::Item { id, knobs },
                None => Route::BadQuery,
            },
            "POST" | "PUT" | "DELETE" | "PATCH" => Route::Write,
            _ => Route::NotAllowed("GET, HEAD, POST, PUT, DELETE, PATCH"),
        };
    }
    match (path, method) {
        ("/__origin/stats", "GET" | "HEAD") => Route::Stats,
        ("/__origin/stats", _) => Route::NotAllowed("GET, HEAD"),
        ("/__origin/reset", "POST") => Route::Reset,
        ("/__origin/reset", _) => Route::NotAllowed("POST"),
        _ => Route::NotFound,
    }
}

fn parse_num(v: &str, max: u64) -> Option<u64> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.bytes()
        .try_fold(0u64, |n, d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        .filter(|&n| n <= max)
}

fn parse_flag(v: &str) -> Option<bool> {
    match v {
        "1" | "true" => Some(true),
        "" | "0" | "false" => Some(false),
        _ => None,
    }
}

fn parse_knobs(query: &str) -> Option<Knobs<'_>> {
    let mut k = Knobs {
        size: ITEM_BYTES_DEFAULT,
        max_age: MAX_AGE_DEFAULT,
        cc: None,
        delay_ms: 0,
        status: 200,
        chunked: false,
        close: false,
        tags: None,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, v) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "size" => k.size = parse_num(v, ITEM_BYTES_MAX as u64)? as usize,
            "max_age" => k.max_age = parse_num(v, u64::from(u32::MAX))?,
            "cc" => {
                percent_decode(v, |_| {})?;
                k.cc = Some(v);
            }
            "delay_ms" => k.delay_ms = parse_num(v, DELAY_MS_MAX)?,
            "status" => k.status = parse_num(v, 599).filter(|&s| s >= 200)? as u16,
            "chunked" => k.chunked = parse_flag(v)?,
            "close" => k.close = parse_flag(v)?,
            "tags" => {
                let ok = v
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:,".contains(&b));
                if !ok || v.len() > TAGS_BYTES_MAX {
                    return None;
                }
                k.tags = Some(v);
            }
            // Unknown parameters (cache busters and the like) are ignored.
            _ => {}
        }
    }
    Some(k)
}

/// Percent-decodes `v` into `sink`; `None` for a bad escape or a byte that
/// cannot appear in a header field value.
fn percent_decode(v: &str, mut sink: impl FnMut(u8)) -> Option<()> {
    let b = v.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let byte = if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hi = (hex[0] as char).to_digit(16)?;
            let lo = (hex[1] as char).to_digit(16)?;
            i += 3;
            (hi * 16 + lo) as u8
        } else {
            i += 1;
            b[i - 1]
        };
        if !(byte == b'\t' || (0x20..0x7f).contains(&byte)) {
            return None;
        }
        sink(byte);
    }
    Some(())
}

/// Whether the connection stays open after answering this request.
pub(super) fn keeps_alive(head: &Head<'_>, route: &Route<'_>) -> bool {
    match route {
        Route::Item { knobs, .. } => {
            head.keep_alive && !knobs.close && !(knobs.chunked && head.http10)
        }
        _ => head.keep_alive,
    }
}

pub(super) fn push_u64(out: &mut Vec<u8>, n: u64) {
    // A Vec grows: the write cannot come back Full.
    let _ = crate::http::sink::Out::put_u64(out, n);
}

fn push_hex(out: &mut Vec<u8>, mut n: u64, min_digits: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 16];
    let mut i = buf.len();
    while n != 0 || buf.len() - i < min_digits.max(1) {
        i -= 1;
        buf[i] = HEX[(n & 15) as usize];
        n >>= 4;
    }
    out.extend_from_slice(&buf[i..]);
}

/// Appends `s` JSON-escaped (without quotes).
pub(super) fn push_json_str(out: &mut Vec<u8>, s: &str) {
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0..=0x1f | 0x7f => {
                out.extend_from_slice(b"\\u00");
                push_hex(out, u64::from(b), 2);
            }
            _ => out.push(b),
        }
    }
}

fn json_escaped_len(s: &str) -> usize {
    s.bytes()
        .map(|b| match b {
            b'"' | b'\\' => 2,
            0..=0x1f | 0x7f => 6,
            _ => 1,
        })
        .sum()
}

/// FNV-1a over the id and the size: the item's identity.
pub(super) fn item_hash(id: &str, size: usize) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in id
        .as_bytes()
        .iter()
        .chain(&[0xff])
        .chain(&(size as u64).to_le_bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn push_pattern(out: &mut Vec<u8>, mut len: usize, seed: u64) {
    let mut off = (seed % PATTERN.len() as u64) as usize;
    while len > 0 {
        let take = (PATTERN.len() - off).min(len);
        out.extend_from_slice(&PATTERN[off..off + take]);
        len -= take;
        off = 0;
    }
}

/// Appends the deterministic body of item `id`: exactly `size` bytes,
/// `{"id":"..","data":".."}` when that fits, else bare padding.
pub(super) fn push_item_body(out: &mut Vec<u8>, id: &str, size: usize) {
    let seed = item_hash(id, size);
    let overhead = r#"{"id":"","data":""}"#.len() + json_escaped_len(id);
    out.reserve(size);
    if overhead > size {
        push_pattern(out, size, seed);
        return;
    }
    out.extend_from_slice(br#"{"id":""#);
    push_json_str(out, id);
    out.extend_from_slice(br#"","data":""#);
    push_pattern(out, size - overhead, seed);
    out.extend_from_slice(br#""}"#);
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        410 => "Gone",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

fn status_line(out: &mut Vec<u8>, status: u16, ctx: &mut Ctx) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\nDate: ");
    out.extend_from_slice(ctx.date().as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn connection_header(out: &mut Vec<u8>, http10: bool, keep_alive: bool) {
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
}

fn content_length(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(b"Content-Length: ");
    push_u64(out, n as u64);
    out.extend_from_slice(b"\r\n");
}

/// What shapes a response besides its route.
#[derive(Clone, Copy)]
struct Shape {
    head_only: bool,
    http10: bool,
    keep_alive: bool,
}

/// A small JSON response with `Cache-Control: no-store`.
fn simple(out: &mut Vec<u8>, ctx: &mut Ctx, shape: Shape, status: u16, extra: &str, body: &[u8]) {
    status_line(out, status, ctx);
    out.extend_from_slice(b"Content-Type: application/json\r\nCache-Control: no-store\r\n");
    out.extend_from_slice(extra.as_bytes());
    content_length(out, body.len());
    connection_header(out, shape.http10, shape.keep_alive);
    out.extend_from_slice(b"\r\n");
    if !shape.head_only {
        out.extend_from_slice(body);
    }
}

/// The response to a request whose head or body could not be accepted;
/// the connection closes after it.
pub(super) fn respond_error(out: &mut Vec<u8>, ctx: &mut Ctx, status: u16) {
    let body: &[u8] = match status {
        413 => br#"{"error":"request body too large"}"#,
        431 => br#"{"error":"request head too large"}"#,
        _ => br#"{"error":"bad request"}"#,
    };
    let shape = Shape {
        head_only: false,
        http10: false,
        keep_alive: false,
    };
    simple(out, ctx, shape, status, "", body);
}

fn if_none_match(head: &Head<'_>, etag: &[u8]) -> bool {
    head.values("if-none-match").any(|v| {
        list_items(v).any(|tag| tag == b"*" || tag.strip_prefix(b"W/").unwrap_or(tag) == etag)
    })
}

/// Appends the complete response to `head` (already routed) to `out`.
pub(super) fn respond(head: &Head<'_>, route: &Route<'_>, ctx: &mut Ctx, out: &mut Vec<u8>) {
    if head.expect_continue && head.has_body() && !head.http10 {
        out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    let keep_alive = keeps_alive(head, route);
    let shape = Shape {
        head_only: head.method == "HEAD",
        http10: head.http10,
        keep_alive,
    };
    match *route {
        Route::Item { id, knobs } => item(head, id, &knobs, keep_alive, ctx, out),
        Route::Write => {
            let mut body = std::mem::take(&mut ctx.scratch);
            body.clear();
            body.extend_from_slice(br#"{"ok":true,"method":""#);
            push_json_str(&mut body, head.method);
            body.extend_from_slice(br#""}"#);
            simple(out, ctx, shape, 200, "", &body);
            ctx.scratch = body;
        }
        Route::Stats => {
            let mut body = std::mem::take(&mut ctx.scratch);
            body.clear();
            ctx.stats.write_json(&mut body);
            simple(out, ctx, shape, 200, "", &body);
            ctx.scratch = body;
        }
        Route::Reset => {
            ctx.stats.reset();
            simple(out, ctx, shape, 200, "", br#"{"ok":true}"#);
        }
        Route::NotFound => {
            let body = br#"{"error":"not found"}"#;
            simple(out, ctx, shape, 404, "", body);
        }
        Route::NotAllowed(allow) => {
            let body = br#"{"error":"method not allowed"}"#;
            let extra = format!("Allow: {allow}\r\n");
            simple(out, ctx, shape, 405, &extra, body);
        }
        Route::BadQuery => {
            let body = br#"{"error":"bad query parameter"}"#;
            simple(out, ctx, shape, 400, "", body);
        }
    }
}

fn item(
    head: &Head<'_>,
    id: &str,
    k: &Knobs<'_>,
    keep_alive: bool,
    ctx: &mut Ctx,
    out: &mut Vec<u8>,
) {
    let hash = item_hash(id, k.size);
    let mut etag = [b'"'; 18];
    for (i, byte) in etag[1..17].iter_mut().enumerate() {
        *byte = b"0123456789abcdef"[(hash >> (60 - 4 * i)) as usize & 15];
    }
    let not_modified = k.status == 200 && if_none_match(head, &etag);
    let status = if not_modified { 304 } else { k.status };
    let no_body = matches!(status, 204 | 304);
    status_line(out, status, ctx);
    if !not_modified {
        out.extend_from_slice(b"Content-Type: application/json\r\n");
    }
    match k.cc {
        None => {
            out.extend_from_slice(b"Cache-Control: public, max-age=");
            push_u64(out, k.max_age);
            out.extend_from_slice(b"\r\n");
        }
        Some("") => {}
        Some(cc) => {
            out.extend_from_slice(b"Cache-Control: ");
            let _ = percent_decode(cc, |b| out.push(b));
            out.extend_from_slice(b"\r\n");
        }
    }
    if let Some(tags) = k.tags.filter(|t| !t.is_empty()) {
        out.extend_from_slice(b"Surrogate-Key:");
        for t in tags.split(',').filter(|t| !t.is_empty()) {
            out.push(b' ');
            out.extend_from_slice(t.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"ETag: ");
    out.extend_from_slice(&etag);
    out.extend_from_slice(b"\r\n");
    if !not_modified {
        out.extend_from_slice(b"Last-Modified: ");
        out.extend_from_slice(ctx.last_modified.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // Framing: chunked needs an HTTP/1.1 client; close-delimited otherwise.
    let close_delimited = k.close || (k.chunked && head.http10);
    let chunked = k.chunked && !close_delimited;
    if !no_body {
        if chunked {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        } else if !close_delimited {
            content_length(out, k.size);
        }
    }
    connection_header(out, head.http10, keep_alive);
    out.extend_from_slice(b"\r\n");
    if no_body || head.method == "HEAD" {
        return;
    }
    if !chunked {
        push_item_body(out, id, k.size);
        return;
    }
    let mut body = std::mem::take(&mut ctx.scratch);
    body.clear();
    push_item_body(&mut body, id, k.size);
    // Several chunks: at least three when the body allows it.
    let chunk = body.len().div_ceil(3).clamp(1, CHUNK_BYTES_MAX);
    for piece in body.chunks(chunk) {
        push_hex(out, piece.len() as u64, 1);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    ctx.scratch = body;
}
