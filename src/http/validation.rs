//! Validation (RFC 9111 §4.3) and conditional requests answered from cache
//! (RFC 9110 §13).
//!
//! The proxy calls, in order of a revalidation:
//! - [`write_conditional_fields`] when it forwards a request to validate a
//!   stored response (after dropping the client's own preconditions,
//!   [`is_precondition_field`]);
//! - on a 304, [`selects_stored`] then [`merge_not_modified`] to build the
//!   stored head anew, then `freshness::decide` on the merged fields;
//! - on a HEAD response for a stored GET, [`head_update`];
//! - on any response served from cache, [`evaluate_preconditions`], and on
//!   [`Precondition::NotModified`], [`write_not_modified_fields`].

use httparse::Header;

use super::cache_control::is_qualified_field;
use super::date::parse_http_date;
use super::headers::{connection_lists, get, is_hop_by_hop, list_elements, trim_ows, values};
use super::request::Method;
use super::sink::{Full, Out};

/// An entity tag (RFC 9110 §8.8.3): `W/"opaque"` or `"opaque"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntityTag<'a> {
    pub weak: bool,
    /// Between the quotes.
    pub opaque: &'a [u8],
}

impl EntityTag<'_> {
    /// Strong comparison (RFC 9110 §8.8.3.2): both strong and equal.
    pub fn strong_eq(&self, other: &EntityTag<'_>) -> bool {
        !self.weak && !other.weak && self.opaque == other.opaque
    }

    /// Weak comparison: the opaque tags are equal.
    pub fn weak_eq(&self, other: &EntityTag<'_>) -> bool {
        self.opaque == other.opaque
    }
}

/// Parse one entity-tag; etagc is %x21 / %x23-7E / obs-text.
pub fn parse_entity_tag(v: &[u8]) -> Option<EntityTag<'_>> {
    let v = trim_ows(v);
    let (weak, rest) = match v.strip_prefix(b"W/") {
        Some(rest) => (true, rest),
        None => (false, v),
    };
    let opaque = rest.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    if opaque.iter().all(|&b| b == 0x21 || b >= 0x23 && b != 0x7f) {
        Some(EntityTag { weak, opaque })
    } else {
        None
    }
}

fn stored_etag<'a>(stored: &[Header<'a>]) -> Option<EntityTag<'a>> {
    get(stored, b"etag").and_then(parse_entity_tag)
}

fn stored_last_modified(stored: &[Header<'_>]) -> Option<u64> {
    get(stored, b"last-modified").and_then(|v| parse_http_date(trim_ows(v)))
}

/// The request fields that carry preconditions (RFC 9110 §13.1).
pub fn is_precondition_field(name: &[u8]) -> bool {
    [
        &b"if-match"[..],
        b"if-none-match",
        b"if-modified-since",
        b"if-unmodified-since",
        b"if-range",
    ]
    .iter()
    .any(|n| n.eq_ignore_ascii_case(name))
}

/// Write the conditional fields that validate a stored response (RFC 9111
/// §4.3.1): `If-None-Match` with its `ETag`, `If-Modified-Since` with its
/// `Last-Modified`. Returns whether any was written (none: the stored
/// response has no validator and a plain request must be sent).
pub fn write_conditional_fields(stored: &[Header<'_>], out: &mut impl Out) -> Result<bool, Full> {
    let mut any = false;
    if let Some(etag) = get(stored, b"etag").filter(|v| parse_entity_tag(v).is_some()) {
        out.put_field(b"If-None-Match", trim_ows(etag))?;
        any = true;
    }
    if let Some(lm) =
        get(stored, b"last-modified").filter(|v| parse_http_date(trim_ows(v)).is_some())
    {
        out.put_field(b"If-Modified-Since", trim_ows(lm))?;
        any = true;
    }
    Ok(any)
}

/// Does a 304 select the stored response (RFC 9111 §4.3.4)? A strong
/// `ETag` must equal the stored one; otherwise a weak `ETag` must match it
/// weakly; otherwise a `Last-Modified` must equal the stored one; a 304
/// with no validator selects a stored response that has none either.
pub fn selects_stored(stored: &[Header<'_>], not_modified: &[Header<'_>]) -> bool {
    let new_tag = stored_etag(not_modified);
    let old_tag = stored_etag(stored);
    if let Some(new) = new_tag {
        return match old_tag {
            Some(old) if !new.weak => new.strong_eq(&old),
            Some(old) => new.weak_eq(&old),
            None => false,
        };
    }
    match stored_last_modified(not_modified) {
        Some(lm) => stored_last_modified(stored) == Some(lm),
        None => old_tag.is_none() && stored_last_modified(stored).is_none(),
    }
}

/// Fields a 304 (or a HEAD response) never updates in the stored head
/// (RFC 9111 §3.2): connection-specific fields, `Content-Length`, and the
/// fields ringcache keeps out of the store (`Age` is computed; `Set-Cookie`
/// and qualified `private`/`no-cache` fields are never stored from an
/// update).
fn never_updated(new: &[Header<'_>], name: &[u8]) -> bool {
    is_hop_by_hop(name)
        || connection_lists(new, name)
        || name.eq_ignore_ascii_case(b"content-length")
        || name.eq_ignore_ascii_case(b"age")
        || name.eq_ignore_ascii_case(b"set-cookie")
        || is_qualified_field(new, name)
}

/// Write the stored field block updated by a 304 or HEAD response (RFC
/// 9111 §3.2, §4.3.4): every field the new response carries replaces all
/// stored lines of that name; the others are kept. Field lines only (each
/// `name: value` CRLF, no status line, no final CRLF).
pub fn merge_not_modified(
    stored: &[Header<'_>],
    new: &[Header<'_>],
    out: &mut impl Out,
) -> Result<(), Full> {
    let replaced = |name: &[u8]| {
        !never_updated(new, name)
            && new
                .iter()
                .any(|n| n.name.as_bytes().eq_ignore_ascii_case(name))
    };
    for f in stored {
        if !replaced(f.name.as_bytes()) {
            out.put_field(f.name.as_bytes(), f.value)?;
        }
    }
    for f in new {
        if !never_updated(new, f.name.as_bytes()) {
            out.put_field(f.name.as_bytes(), f.value)?;
        }
    }
    Ok(())
}

/// What a HEAD response does to the stored GET response (RFC 9111 §4.3.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadUpdate {
    /// Same representation: update the stored fields as for a 304.
    Update,
    /// The validators or length differ: the stored response is stale now.
    MarkStale,
}

/// Compare a 200 HEAD response with the stored GET response.
pub fn head_update(stored: &[Header<'_>], head: &[Header<'_>]) -> HeadUpdate {
    let same = |name: &[u8]| match (get(head, name), get(stored, name)) {
        (Some(a), Some(b)) => trim_ows(a) == trim_ows(b),
        (Some(_), None) => false,
        (None, _) => true,
    };
    if same(b"etag") && same(b"last-modified") && same(b"content-length") {
        HeadUpdate::Update
    } else {
        HeadUpdate::MarkStale
    }
}

/// The outcome of a request's preconditions against a stored response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precondition {
    /// None apply: serve the stored response.
    Serve,
    /// Answer 304 (RFC 9110 §15.4.5).
    NotModified,
    /// `If-Match` / `If-Unmodified-Since` are for the origin, not a cache
    /// (RFC 9111 §4.3.2): forward the request.
    Forward,
}

/// [`evaluate_preconditions`] on a stored response of `status`: none apply
/// unless it is a 2xx (RFC 9110 §13.2.1: a server ignores preconditions
/// when its answer without them would be neither a 2xx nor a 412), so a
/// stored 404 whose `ETag` matches is still a 404.
pub fn evaluate_preconditions_on(
    status: u16,
    method: Method,
    request: &[Header<'_>],
    stored: &[Header<'_>],
) -> Precondition {
    if (200..300).contains(&status) {
        evaluate_preconditions(method, request, stored)
    } else {
        Precondition::Serve
    }
}

/// Evaluate the client's preconditions on a stored response (RFC 9111
/// §4.3.2, RFC 9110 §13.2.2). `If-None-Match` takes precedence and uses
/// weak comparison; `If-Modified-Since` is read only without it, only for
/// GET and HEAD, against `Last-Modified` (else `Date`).
pub fn evaluate_preconditions(
    method: Method,
    request: &[Header<'_>],
    stored: &[Header<'_>],
) -> Precondition {
    if get(request, b"if-match").is_some() || get(request, b"if-unmodified-since").is_some() {
        return Precondition::Forward;
    }
    let get_or_head = matches!(method, Method::Get | Method::Head);
    if get(request, b"if-none-match").is_some() {
        let etag = stored_etag(stored);
        let matched = values(request, b"if-none-match")
            .flat_map(list_elements)
            .any(|e| {
                e == b"*"
                    || matches!((parse_entity_tag(e), etag), (Some(a), Some(b)) if a.weak_eq(&b))
            });
        return match (matched, get_or_head) {
            (true, true) => Precondition::NotModified,
            (true, false) => Precondition::Forward, // 412 is the origin's to give
            (false, _) => Precondition::Serve,
        };
    }
    if !get_or_head {
        return Precondition::Serve;
    }
    // RFC 9110 §13.1.3: one valid HTTP-date, else ignored.
    let mut ims = values(request, b"if-modified-since");
    let (Some(first), None) = (ims.next(), ims.next()) else {
        return Precondition::Serve;
    };
    let Some(since) = parse_http_date(trim_ows(first)) else {
        return Precondition::Serve;
    };
    let modified = stored_last_modified(stored)
        .or_else(|| get(stored, b"date").and_then(|v| parse_http_date(trim_ows(v))));
    match modified {
        Some(m) if m <= since => Precondition::NotModified,
        _ => Precondition::Serve,
    }
}

/// The stored fields a 304 carries (RFC 9110 §15.4.5): `Cache-Control`,
/// `Content-Location`, `Date`, `ETag`, `Expires`, `Vary`, and
/// `Last-Modified` when there is no `ETag`. Field lines only; the proxy
/// writes the status line and its own `Age`, `Cache-Status`, `Via`.
pub fn write_not_modified_fields(stored: &[Header<'_>], out: &mut impl Out) -> Result<(), Full> {
    let has_etag = get(stored, b"etag").is_some();
    for f in stored {
        let n = f.name.as_bytes();
        let keep = [
            &b"cache-control"[..],
            b"content-location",
            b"date",
            b"etag",
            b"expires",
            b"vary",
            b"cdn-cache-control",
            b"ringcache-cache-control",
        ]
        .iter()
        .any(|k| k.eq_ignore_ascii_case(n))
            || (!has_etag && n.eq_ignore_ascii_case(b"last-modified"));
        if keep {
            out.put_field(n, f.value)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<'a>(name: &'a str, value: &'a [u8]) -> Header<'a> {
        Header { name, value }
    }

    const LM: &[u8] = b"Sun, 06 Nov 1994 08:49:37 GMT";

    #[test]
    fn rfc9110_8_8_3_entity_tags_and_comparison() {
        let s = parse_entity_tag(b"\"a\"").unwrap();
        let w = parse_entity_tag(b" W/\"a\" ").unwrap();
        assert!(w.weak && !s.weak);
        assert!(s.weak_eq(&w) && !s.strong_eq(&w) && s.strong_eq(&s));
        assert!(!w.strong_eq(&w));
        for bad in [&b"a"[..], b"\"a", b"w/\"a\"", b"\"a\"b\"", b"\"a b\""] {
            assert_eq!(
                parse_entity_tag(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(parse_entity_tag(b"\"\"").unwrap().opaque, b"");
    }

    #[test]
    fn rfc9111_4_3_1_conditional_fields_from_validators() {
        let stored = [h("ETag", b"W/\"v1\""), h("Last-Modified", LM), h("X", b"y")];
        let mut out = Vec::new();
        assert!(write_conditional_fields(&stored, &mut out).unwrap());
        assert_eq!(
            out,
            b"If-None-Match: W/\"v1\"\r\nIf-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
        );
        let mut out = Vec::new();
        assert!(!write_conditional_fields(&[h("Last-Modified", b"bogus")], &mut out).unwrap());
        assert!(out.is_empty());
        let mut raw = [0u8; 10];
        let mut small = crate::http::sink::FixedBuf::new(&mut raw);
        assert_eq!(write_conditional_fields(&stored, &mut small), Err(Full));
        assert!(is_precondition_field(b"If-None-Match") && !is_precondition_field(b"If"));
    }

    #[test]
    fn rfc9111_4_3_4_selecting_the_stored_response() {
        let stored = [h("ETag", b"\"v1\""), h("Last-Modified", LM)];
        assert!(selects_stored(&stored, &[h("ETag", b"\"v1\"")]));
        assert!(!selects_stored(&stored, &[h("ETag", b"\"v2\"")]));
        assert!(selects_stored(&stored, &[h("ETag", b"W/\"v1\"")]));
        assert!(selects_stored(&stored, &[h("Last-Modified", LM)]));
        assert!(!selects_stored(&stored, &[]));
        assert!(selects_stored(&[], &[h("Date", LM)]));
        let weak = [h("ETag", b"W/\"v1\"")];
        assert!(!selects_stored(&weak, &[h("ETag", b"\"v1\"")]));
    }

    #[test]
    fn rfc9111_3_2_merge_304_updates_fields_except_length() {
        let stored = [
            h("Content-Type", b"text/plain"),
            h("Cache-Control", b"max-age=10"),
            h("Content-Length", b"5"),
            h("X-Old", b"1"),
            h("x-old", b"2"),
            h("ETag", b"\"v1\""),
        ];
        let nm = [
            h("Cache-Control", b"max-age=60"),
            h("X-OLD", b"3"),
            h("Content-Length", b"0"),
            h("Connection", b"close, X-Hop"),
            h("X-Hop", b"h"),
            h("Age", b"4"),
            h("Date", LM),
            h("ETag", b"\"v1\""),
        ];
        let mut out = Vec::new();
        merge_not_modified(&stored, &nm, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Content-Type: text/plain\r\nContent-Length: 5\r\nCache-Control: max-age=60\r\n\
             X-OLD: 3\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nETag: \"v1\"\r\n"
        );
    }

    #[test]
    fn rfc9111_4_3_5_head_response_updates_or_invalidates() {
        let stored = [h("ETag", b"\"v1\""), h("Content-Length", b"5")];
        assert_eq!(
            head_update(&stored, &[h("ETag", b"\"v1\"")]),
            HeadUpdate::Update
        );
        assert_eq!(
            head_update(&stored, &[h("ETag", b"\"v2\"")]),
            HeadUpdate::MarkStale
        );
        assert_eq!(
            head_update(&stored, &[h("Content-Length", b"6")]),
            HeadUpdate::MarkStale
        );
        assert_eq!(
            head_update(&stored, &[h("Last-Modified", LM)]),
            HeadUpdate::MarkStale
        );
    }

    #[test]
    fn rfc9110_13_1_2_if_none_match_weak_comparison() {
        let stored = [h("ETag", b"\"v1\""), h("Last-Modified", LM)];
        let ev = |m, v: &'static [u8]| evaluate_preconditions(m, &[h("If-None-Match", v)], &stored);
        assert_eq!(ev(Method::Get, b"W/\"v1\""), Precondition::NotModified);
        assert_eq!(
            ev(Method::Head, b"\"x\", \"v1\""),
            Precondition::NotModified
        );
        assert_eq!(ev(Method::Get, b"*"), Precondition::NotModified);
        assert_eq!(ev(Method::Get, b"\"v2\""), Precondition::Serve);
        assert_eq!(ev(Method::Post, b"\"v1\""), Precondition::Forward);
    }

    #[test]
    fn rfc9110_13_1_3_if_modified_since_only_without_if_none_match() {
        let stored = [h("ETag", b"\"v1\""), h("Last-Modified", LM)];
        let later = &b"Sun, 06 Nov 1994 09:00:00 GMT"[..];
        let earlier = &b"Sun, 06 Nov 1994 08:00:00 GMT"[..];
        let ims = |v| [h("If-Modified-Since", v)];
        assert_eq!(
            evaluate_preconditions(Method::Get, &ims(later), &stored),
            Precondition::NotModified
        );
        assert_eq!(
            evaluate_preconditions(Method::Get, &ims(LM), &stored),
            Precondition::NotModified
        );
        assert_eq!(
            evaluate_preconditions(Method::Get, &ims(earlier), &stored),
            Precondition::Serve
        );
        assert_eq!(
            evaluate_preconditions(Method::Get, &ims(b"garbage"), &stored),
            Precondition::Serve
        );
        assert_eq!(
            evaluate_preconditions(Method::Post, &ims(later), &stored),
            Precondition::Serve
        );
        // If-None-Match present and not matching: If-Modified-Since is ignored.
        let both = [h("If-None-Match", b"\"v2\""), h("If-Modified-Since", later)];
        assert_eq!(
            evaluate_preconditions(Method::Get, &both, &stored),
            Precondition::Serve
        );
        // Falls back to Date without Last-Modified (RFC 9111 §4.3.2).
        let dated = [h("Date", LM)];
        assert_eq!(
            evaluate_preconditions(Method::Get, &ims(later), &dated),
            Precondition::NotModified
        );
    }

    #[test]
    fn rfc9111_4_3_2_if_match_and_if_unmodified_since_go_to_origin() {
        let stored = [h("ETag", b"\"v1\"")];
        for f in ["If-Match", "If-Unmodified-Since"] {
            assert_eq!(
                evaluate_preconditions(Method::Get, &[h(f, b"\"v1\"")], &stored),
                Precondition::Forward
            );
        }
    }

    #[test]
    fn rfc9110_15_4_5_not_modified_fields() {
        let stored = [
            h("Content-Type", b"text/plain"),
            h("ETag", b"\"v1\""),
            h("Cache-Control", b"max-age=5"),
            h("Last-Modified", LM),
            h("Vary", b"Accept"),
            h("Content-Length", b"5"),
        ];
        let mut out = Vec::new();
        write_not_modified_fields(&stored, &mut out).unwrap();
        assert_eq!(
            out,
            b"ETag: \"v1\"\r\nCache-Control: max-age=5\r\nVary: Accept\r\n"
        );
        let mut out = Vec::new();
        write_not_modified_fields(&stored[3..], &mut out).unwrap();
        assert_eq!(
            out,
            b"Last-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\nVary: Accept\r\n"
        );
    }
}
