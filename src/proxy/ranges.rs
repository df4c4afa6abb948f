//! Range requests (RFC 9110 §14) answered from complete responses.
//!
//! ```text
//!  GET + Range ─▶ stored, fresh? ── yes ─▶ answer from the stored 200
//!                    │ no
//!                    ├─ key known not storable (hit-for-miss) ─▶ pass Range to the origin;
//!                    │                                          a 206 is relayed, never stored
//!                    └─ otherwise ─▶ fetch the whole response (no Range, no If-Range),
//!                                    store it when allowed, answer the range from it
//! ```
//!
//! Answering from a complete 200 (`put_ranged`): `If-Range` that does
//! not match (strong ETag or exact strong Last-Modified, §13.1.5) → the
//! full 200; a `Range` that does not parse → the full 200 (§14.2 lets a
//! server ignore it); none satisfiable → 416 with `Content-Range: bytes
//! */len`; one range → 206 with `Content-Range`; several → 206
//! `multipart/byteranges`. Other statuses are sent whole. HEAD ignores
//! `Range`.
//!
//! A range fetched whole is a plain GET toward the origin, so it leads or
//! joins the key's coalesced fill like any miss: waiters answered from
//! the filler's response or from the store each get their own range
//! (`compose_ranged`, `respond_collapsed_range`). A range passed on as a
//! range is that request's own (a 206 cannot be shared). A full fetch
//! whose answer cannot be stored marks the key hit-for-miss, so the next
//! range requests for it go to the origin as ranges.

use httparse::Header;

use crate::config::HEADERS_COUNT_CAP;
use crate::http::range::{
    boundary, if_range_allows, is_replaced_in_partial, multipart_len, parse_range, resolve,
    write_content_range, write_multipart_body, write_multipart_content_type,
    write_unsatisfied_range, ByteRange, RangeSpec, Resolved, RANGES_MAX,
};

use crate::runtime::io::Token;

use super::compose::{put_field, put_field_u64, put_status_line, VIA};
use super::origin::{fwd_reason, Fetch};
use super::variants::Varied;
use super::{put_connection, usable, Found, Proxy};

/// The range fields of a request that asked for part of a response.
pub(super) struct RangeAsk {
    pub range: Box<[u8]>,
    pub if_range: Option<Box<[u8]>>,
}

impl RangeAsk {
    /// From a GET's fields; `None` without a `Range` field.
    pub fn of(request: &[Header<'_>]) -> Option<Box<RangeAsk>> {
        let field = |n: &str| {
            request
                .iter()
                .find(|f| f.name.eq_ignore_ascii_case(n))
                .map(|f| f.value)
        };
        let range = field("range")?;
        Some(Box::new(RangeAsk {
            range: range.into(),
            if_range: field("if-range").map(Into::into),
        }))
    }
}

/// What [`put_ranged`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ranged {
    /// 206, one part or multipart.
    Partial,
    /// 416.
    Unsatisfiable,
    /// The full response: not a 200, `If-Range` did not match, or the
    /// `Range` field was not understood.
    Full,
}

/// Is a field line one a 206 or 416 built from `head` leaves out?
fn dropped(name: &[u8], multipart: bool) -> bool {
    is_replaced_in_partial(name, multipart)
}

/// The fields of a head ringcache composed (status line, then one
/// `name: value` line each, no blank line), into `out`.
fn fields<'h>(head: &'h [u8], out: &mut [Header<'h>]) -> usize {
    let mut n = 0;
    for line in head.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let Ok(name) = std::str::from_utf8(&line[..colon]) else {
            continue;
        };
        let Some(slot) = out.get_mut(n) else { break };
        *slot = Header {
            name,
            value: crate::http::headers::trim_ows(&line[colon + 1..]),
        };
        n += 1;
    }
    n
}

/// Answer `ask` from a complete response: `head` is its status line and
/// fields (no `Content-Length`, no blank line), `body` its body. `ours`
/// appends ringcache's own fields (Age, Cache-Status, Via, Connection).
/// `seed` varies the multipart boundary.
pub(super) fn put_ranged(
    out: &mut Vec<u8>,
    head: &[u8],
    body: &[u8],
    ask: &RangeAsk,
    seed: u64,
    ours: impl FnOnce(&mut Vec<u8>),
) -> Ranged {
    let len = body.len() as u64;
    let mut storage = [httparse::EMPTY_HEADER; HEADERS_COUNT_CAP];
    let n = fields(head, &mut storage);
    let stored = &storage[..n];
    let mut specs = [RangeSpec::From(0); RANGES_MAX];
    let mut ranges = [ByteRange::default(); RANGES_MAX];
    // Only a 200 has ranges to give (§14.2); If-Range that does not match
    // asks for the whole response (§13.1.5).
    let ranged = head.starts_with(b"HTTP/1.1 200 ")
        && ask
            .if_range
            .as_deref()
            .map_or(true, |v| if_range_allows(v, stored));
    let resolved = if ranged {
        parse_range(&ask.range, &mut specs)
            .ok()
            .map(|k| resolve(&specs[..k], len, &mut ranges))
    } else {
        None
    };
    let Some(resolved) = resolved else {
        out.extend_from_slice(head);
        // RFC 9110 §8.6: no Content-Length in a 204.
        if !head.starts_with(b"HTTP/1.1 204 ") {
            put_field_u64(out, b"Content-Length", len);
        }
        ours(out);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
        return Ranged::Full;
    };
    let multipart = matches!(resolved, Resolved::Ranges(k) if k > 1);
    let status: (u16, &[u8]) = match resolved {
        Resolved::Unsatisfiable => (416, b"Range Not Satisfiable"),
        Resolved::Ranges(_) => (206, b"Partial Content"),
    };
    put_status_line(out, status.0, status.1);
    let unsatisfiable = resolved == Resolved::Unsatisfiable;
    for f in stored {
        if !dropped(f.name.as_bytes(), multipart || unsatisfiable) {
            put_field(out, f.name.as_bytes(), f.value);
        }
    }
    let content_type = stored
        .iter()
        .find(|f| f.name.eq_ignore_ascii_case("content-type"))
        .map(|f| f.value);
    let mut part: &[u8] = b"";
    match resolved {
        Resolved::Unsatisfiable => {
            out.extend_from_slice(b"Content-Range: ");
            let _ = write_unsatisfied_range(len, out);
            out.extend_from_slice(b"\r\n");
            put_field_u64(out, b"Content-Length", 0);
        }
        Resolved::Ranges(1) => {
            let r = ranges[0];
            out.extend_from_slice(b"Content-Range: ");
            let _ = write_content_range(r, len, out);
            out.extend_from_slice(b"\r\n");
            put_field_u64(out, b"Content-Length", r.len());
            part = &body[r.first as usize..=r.last as usize];
        }
        Resolved::Ranges(k) => {
            let b = boundary(seed);
            out.extend_from_slice(b"Content-Type: ");
            let _ = write_multipart_content_type(&b, out);
            out.extend_from_slice(b"\r\n");
            let rs = &ranges[..k];
            put_field_u64(
                out,
                b"Content-Length",
                multipart_len(body, rs, content_type, &b),
            );
            ours(out);
            out.extend_from_slice(b"\r\n");
            let _ = write_multipart_body(body, rs, content_type, &b, out);
            return Ranged::Partial;
        }
    }
    ours(out);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(part);
    if unsatisfiable {
        Ranged::Unsatisfiable
    } else {
        Ranged::Partial
    }
}

/// A request's wish for a range and how the proxy answers it.
pub(super) struct RangeHit<'a> {
    pub ask: &'a RangeAsk,
    pub keep_alive: bool,
    pub minor: u8,
    pub age_max: Option<Option<u64>>,
}

impl Proxy {
    /// Answer a range request from the store when `self.key` (or the
    /// variant the request selects) holds a fresh, acceptable response;
    /// like `respond_hit`, nothing is written otherwise. `hash` becomes
    /// the hash of the key `self.key` ends on.
    pub(super) fn respond_range(
        &mut self,
        token: Token,
        hash: &mut u64,
        request: &[Header<'_>],
        r: &RangeHit<'_>,
    ) -> Found {
        let now_secs = self.clock.unix_secs;
        let age_max = r.age_max;
        let mut stored = self.take_buffer();
        let (hit, h, varied) = self.lookup_varied(*hash, request, &mut stored, |_, hit| {
            usable(hit, now_secs, age_max)
        });
        *hash = h;
        let hit = match hit {
            Some(hit) if usable(&hit, now_secs, age_max) => hit,
            Some(hit) if hit.meta.is_fresh(now_secs) => {
                self.give_buffer(stored);
                return Found::NotAccepted;
            }
            Some(_) => {
                self.give_buffer(stored);
                return Found::Stale;
            }
            None => {
                self.give_buffer(stored);
                return if varied == Varied::NotListed {
                    Found::VaryMiss
                } else {
                    Found::Absent
                };
            }
        };
        let (head, body) = stored.split_at(hit.head_len);
        let mut resp = self.take_buffer();
        let (keep_alive, minor) = (r.keep_alive, r.minor);
        put_ranged(&mut resp, head, body, r.ask, *hash ^ now_secs, |b| {
            put_field_u64(b, b"Age", hit.meta.age_secs(now_secs));
            b.extend_from_slice(b"Cache-Status: ringcache; hit\r\nVia: 1.1 ringcache\r\n");
            put_connection(b, keep_alive, minor);
        });
        self.give_buffer(stored);
        self.client_respond(token, None, resp, !keep_alive);
        Found::Fresh
    }

    /// The answer to a range request whose whole response came from the
    /// origin (`head` as relayed, `body` complete, status 200); `flags`:
    /// (stored, collapsed) for Cache-Status.
    pub(super) fn compose_ranged(
        &mut self,
        fetch: &Fetch,
        ask: &RangeAsk,
        head: &[u8],
        body: &[u8],
        age_secs: Option<u64>,
        (stored, collapsed): (bool, bool),
    ) -> Vec<u8> {
        let mut resp = self.take_buffer();
        let seed = self.clock.unix_secs ^ fetch.seq.rotate_left(17);
        put_ranged(&mut resp, head, body, ask, seed, |b| {
            if let Some(age) = age_secs {
                put_field_u64(b, b"Age", age);
            }
            b.extend_from_slice(b"Cache-Status: ringcache; fwd=");
            b.extend_from_slice(fwd_reason(fetch));
            b.extend_from_slice(b"; fwd-status=200");
            if stored {
                b.extend_from_slice(b"; stored");
            }
            if collapsed {
                b.extend_from_slice(b"; collapsed");
            }
            b.extend_from_slice(b"\r\n");
            put_field(b, b"Via", VIA);
            put_connection(b, fetch.keep_alive, fetch.client_minor_version);
        });
        resp
    }

    /// A range request that waited for another request's fetch of its key:
    /// its range of what that fetch stored; `Err` gives the waiter back
    /// when no fresh item is there. Such a waiter has no preconditions of
    /// its own to judge here (unlike `respond_collapsed`): a range request
    /// is never validated for, so one with `If-None-Match` or
    /// `If-Modified-Since` is personal and never waits on a fill; only
    /// `If-Range` applies, in [`put_ranged`].
    pub(super) fn respond_collapsed_range(
        &mut self,
        waiter: Box<Fetch>,
        hash: u64,
        key: &[u8],
    ) -> Result<(), Box<Fetch>> {
        debug_assert!(
            waiter
                .revalidation
                .as_ref()
                .map_or(true, |r| r.client_conditions.is_none()),
            "a range waiter carries no conditions of its own"
        );
        let now_secs = self.clock.unix_secs;
        let mut stored = self.take_buffer();
        self.key.clear();
        self.key.extend_from_slice(key);
        let hit = {
            // The waiter's own fields choose its variant.
            let mut fields = [httparse::EMPTY_HEADER; HEADERS_COUNT_CAP];
            let mut req = httparse::Request::new(&mut fields);
            let request: &[Header<'_>] = match req.parse(&waiter.req) {
                Ok(_) => req.headers,
                Err(_) => &[],
            };
            let fresh = |_: &mut Vec<u8>, h: &crate::store::item::Hit| h.meta.is_fresh(now_secs);
            self.lookup_varied(hash, request, &mut stored, fresh).0
        };
        let (Some(hit), Some(ask)) = (
            hit.filter(|h| h.meta.is_fresh(now_secs)),
            waiter.range.as_deref(),
        ) else {
            self.give_buffer(stored);
            return Err(waiter);
        };
        let (head, body) = stored.split_at(hit.head_len);
        let mut resp = self.take_buffer();
        let (keep_alive, minor) = (waiter.keep_alive, waiter.client_minor_version);
        let fwd = fwd_reason(&waiter);
        put_ranged(&mut resp, head, body, ask, hash ^ now_secs, |b| {
            put_field_u64(b, b"Age", hit.meta.age_secs(now_secs));
            b.extend_from_slice(b"Cache-Status: ringcache; fwd=");
            b.extend_from_slice(fwd);
            b.extend_from_slice(b"; fwd-status=");
            b.extend_from_slice(head.get(9..12).unwrap_or(b"200"));
            b.extend_from_slice(b"; collapsed\r\n");
            put_field(b, b"Via", VIA);
            put_connection(b, keep_alive, minor);
        });
        self.give_buffer(stored);
        self.fetch_respond(&waiter, resp, crate::metrics::Counter::OutcomeCollapsed);
        self.give_buffer(waiter.req);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(range: &str, if_range: Option<&str>) -> RangeAsk {
        RangeAsk {
            range: range.as_bytes().into(),
            if_range: if_range.map(|v| v.as_bytes().into()),
        }
    }

    const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nETag: \"v1\"\r\nContent-Type: text/plain\r\n";

    fn answer(a: &RangeAsk, head: &[u8]) -> (Ranged, String) {
        let mut out = Vec::new();
        let r = put_ranged(&mut out, head, b"0123456789", a, 1, |o| {
            o.extend_from_slice(b"X-Ours: 1\r\n")
        });
        (r, String::from_utf8(out).unwrap())
    }

    #[test]
    fn one_range() {
        let (r, text) = answer(&ask("bytes=2-4", None), HEAD);
        assert_eq!(r, Ranged::Partial);
        assert!(
            text.starts_with("HTTP/1.1 206 Partial Content\r\n"),
            "{text}"
        );
        assert!(
            text.contains("\r\nContent-Range: bytes 2-4/10\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nContent-Length: 3\r\n"), "{text}");
        assert!(text.contains("\r\nContent-Type: text/plain\r\n"), "{text}");
        assert!(text.ends_with("X-Ours: 1\r\n\r\n234"), "{text}");
    }

    #[test]
    fn unsatisfiable_and_fallbacks() {
        let (r, text) = answer(&ask("bytes=10-", None), HEAD);
        assert_eq!(r, Ranged::Unsatisfiable);
        assert!(text.starts_with("HTTP/1.1 416 "), "{text}");
        assert!(text.contains("Content-Range: bytes */10\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "{text}");
        for a in [ask("bytes=x", None), ask("bytes=0-1", Some("\"v2\""))] {
            let (r, text) = answer(&a, HEAD);
            assert_eq!(r, Ranged::Full);
            assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
            assert!(text.ends_with("\r\n\r\n0123456789"), "{text}");
        }
        let (r, _) = answer(&ask("bytes=0-1", Some("\"v1\"")), HEAD);
        assert_eq!(r, Ranged::Partial);
        let (r, _) = answer(&ask("bytes=0-1", None), b"HTTP/1.1 404 Not Found\r\n");
        assert_eq!(r, Ranged::Full);
        let mut out = Vec::new();
        let a = ask("bytes=0-1", None);
        put_ranged(&mut out, b"HTTP/1.1 204 No Content\r\n", b"", &a, 1, |_| {});
        assert_eq!(out, b"HTTP/1.1 204 No Content\r\n\r\n");
    }

    #[test]
    fn multipart() {
        let (r, text) = answer(&ask("bytes=0-0,-1", None), HEAD);
        assert_eq!(r, Ranged::Partial);
        assert!(
            text.contains("Content-Type: multipart/byteranges; boundary=ringcache-"),
            "{text}"
        );
        let body_at = text.find("\r\n\r\n").unwrap() + 4;
        let declared: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(text.len() - body_at, declared, "{text}");
        assert!(
            text.contains("Content-Range: bytes 9-9/10\r\n\r\n9"),
            "{text}"
        );
    }
}
