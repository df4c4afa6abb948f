//! Caching decisions for one response (RFC 9111 §3, §4.2).
//!
//! The first rules only: store a fresh `200` answer to a `GET`, with an
//! explicit lifetime, when no directive forbids a shared cache to. Each
//! rule is a separate step in [`storable`], and the lifetime and age
//! computations are public on their own, so validators, heuristic
//! freshness and more status codes can be added without reshaping callers.
//!
//! All times are unix seconds; `request_time` is when the request was sent
//! to the origin, `response_time` when the response head arrived.

use httparse::Header;

use super::cache_control::{self, delta_seconds, CacheControl};
use super::date::parse_http_date;
use super::headers::{get, list_elements, trim_ows, values};
use super::request::Method;

/// A response that may be stored, with its freshness numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Storable {
    /// Freshness lifetime (RFC 9111 §4.2.1); always > 0.
    pub lifetime_secs: u64,
    /// Corrected initial age (RFC 9111 §4.2.3).
    pub initial_age_secs: u64,
}

impl Storable {
    /// Age at `now_secs` of a response received at `response_time_secs`
    /// (RFC 9111 §4.2.3: corrected_initial_age + resident_time).
    pub fn current_age_secs(&self, response_time_secs: u64, now_secs: u64) -> u64 {
        self.initial_age_secs
            .saturating_add(now_secs.saturating_sub(response_time_secs))
    }

    /// Still fresh at `now_secs` (RFC 9111 §4.2).
    pub fn is_fresh(&self, response_time_secs: u64, now_secs: u64) -> bool {
        self.lifetime_secs > self.current_age_secs(response_time_secs, now_secs)
    }
}

/// Decide whether a response to a request may be stored, and its freshness
/// lifetime and corrected initial age.
///
/// Stored only when: request method GET; status 200; explicit freshness
/// (s-maxage > max-age > Expires - Date; an invalid Expires means stale, and
/// a lifetime of 0 is not stored); no `no-store` (unless `must-understand`
/// is present, since ringcache understands 200 — RFC 9111 §5.2.2.3), no
/// `private`, no `no-cache` in the response; no `no-store` in the request;
/// a request with `Authorization` only if the response has `public`,
/// `s-maxage` or `must-revalidate` (RFC 9111 §3.5); no `Vary: *`.
pub fn storable(
    method: Method,
    req_headers: &[Header<'_>],
    status: u16,
    resp_headers: &[Header<'_>],
    request_time_secs: u64,
    response_time_secs: u64,
) -> Option<Storable> {
    if method != Method::Get || !understands_status(status) {
        return None;
    }
    if cache_control::from_headers(req_headers).no_store {
        return None;
    }
    let cc = cache_control::from_headers(resp_headers);
    if cc.no_store && !cc.must_understand {
        return None;
    }
    if cc.private || cc.no_cache {
        return None;
    }
    let authorized = get(req_headers, b"authorization").is_some();
    if authorized && !(cc.public || cc.s_maxage.is_some() || cc.must_revalidate) {
        return None;
    }
    if varies_on_everything(resp_headers) {
        return None;
    }
    let lifetime_secs = freshness_lifetime_secs(&cc, resp_headers, response_time_secs);
    if lifetime_secs == 0 {
        return None;
    }
    Some(Storable {
        lifetime_secs,
        initial_age_secs: initial_age_secs(resp_headers, request_time_secs, response_time_secs),
    })
}

/// Status codes whose caching rules ringcache implements.
fn understands_status(status: u16) -> bool {
    status == 200
}

/// `Vary: *` on any line: no request can be matched to this response.
fn varies_on_everything(headers: &[Header<'_>]) -> bool {
    values(headers, b"vary")
        .flat_map(list_elements)
        .any(|e| e == b"*")
}

/// Explicit freshness lifetime for a shared cache (RFC 9111 §4.2.1):
/// `s-maxage`, else `max-age`, else `Expires` minus `Date` (the response
/// time when `Date` is missing or invalid); an invalid `Expires` gives 0.
/// No explicit lifetime gives 0: there is no heuristic freshness yet.
pub fn freshness_lifetime_secs(
    cc: &CacheControl,
    headers: &[Header<'_>],
    response_time_secs: u64,
) -> u64 {
    if let Some(s) = cc.s_maxage {
        return s;
    }
    if let Some(s) = cc.max_age {
        return s;
    }
    let Some(expires) = get(headers, b"expires") else {
        return 0;
    };
    let Some(expires) = parse_http_date(expires) else {
        return 0;
    };
    let date = date_secs(headers).unwrap_or(response_time_secs);
    expires.saturating_sub(date)
}

/// Corrected initial age (RFC 9111 §4.2.3):
/// apparent_age = max(0, response_time - date);
/// corrected_age_value = age_value + (response_time - request_time);
/// corrected_initial_age = max(apparent_age, corrected_age_value).
/// A missing or invalid `Age` counts as 0, a missing `Date` as no
/// apparent age.
pub fn initial_age_secs(
    headers: &[Header<'_>],
    request_time_secs: u64,
    response_time_secs: u64,
) -> u64 {
    let age_value = get(headers, b"age")
        .and_then(|v| delta_seconds(trim_ows(v)))
        .unwrap_or(0);
    let apparent_age = date_secs(headers).map_or(0, |d| response_time_secs.saturating_sub(d));
    let response_delay = response_time_secs.saturating_sub(request_time_secs);
    apparent_age.max(age_value.saturating_add(response_delay))
}

fn date_secs(headers: &[Header<'_>]) -> Option<u64> {
    get(headers, b"date").and_then(parse_http_date)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 784_111_777; // Sun, 06 Nov 1994 08:49:37 GMT
    const DATE_T0: &[u8] = b"Sun, 06 Nov 1994 08:49:37 GMT";

    fn h<'a>(name: &'a str, value: &'a [u8]) -> Header<'a> {
        Header { name, value }
    }

    fn store(req: &[Header<'_>], resp: &[Header<'_>]) -> Option<Storable> {
        storable(Method::Get, req, 200, resp, T0, T0)
    }

    #[test]
    fn max_age_response_is_stored() {
        let s = store(&[], &[h("Cache-Control", b"max-age=60")]).unwrap();
        assert_eq!(
            s,
            Storable {
                lifetime_secs: 60,
                initial_age_secs: 0
            }
        );
        assert!(s.is_fresh(T0, T0 + 59));
        assert!(!s.is_fresh(T0, T0 + 60));
        assert_eq!(s.current_age_secs(T0, T0 + 10), 10);
    }

    #[test]
    fn only_get_and_200() {
        let resp = [h("Cache-Control", b"max-age=60")];
        for m in [Method::Head, Method::Post, Method::Put, Method::Other] {
            assert_eq!(storable(m, &[], 200, &resp, T0, T0), None, "{m:?}");
        }
        for status in [203, 204, 206, 301, 304, 404, 500] {
            assert_eq!(
                storable(Method::Get, &[], status, &resp, T0, T0),
                None,
                "{status}"
            );
        }
    }

    #[test]
    fn lifetime_precedence() {
        let both = [h("Cache-Control", b"max-age=60, s-maxage=10")];
        assert_eq!(store(&[], &both).unwrap().lifetime_secs, 10);
        let with_expires = [
            h("Date", DATE_T0),
            h("Expires", b"Sun, 06 Nov 1994 09:49:37 GMT"),
            h("Cache-Control", b"max-age=60"),
        ];
        assert_eq!(store(&[], &with_expires).unwrap().lifetime_secs, 60);
        let expires_only = [
            h("Date", DATE_T0),
            h("Expires", b"Sun, 06 Nov 1994 09:49:37 GMT"),
        ];
        assert_eq!(store(&[], &expires_only).unwrap().lifetime_secs, 3600);
        // Without Date, Expires counts from the response time.
        let no_date = [h("Expires", b"Sun, 06 Nov 1994 08:50:37 GMT")];
        assert_eq!(store(&[], &no_date).unwrap().lifetime_secs, 60);
    }

    #[test]
    fn zero_or_missing_lifetime_not_stored() {
        assert_eq!(store(&[], &[]), None);
        assert_eq!(store(&[], &[h("Cache-Control", b"public")]), None);
        assert_eq!(store(&[], &[h("Cache-Control", b"max-age=0")]), None);
        assert_eq!(store(&[], &[h("Cache-Control", b"max-age=oops")]), None);
        assert_eq!(
            store(&[], &[h("Cache-Control", b"max-age=60, s-maxage=0")]),
            None
        );
        assert_eq!(store(&[], &[h("Date", DATE_T0), h("Expires", b"0")]), None);
        assert_eq!(
            store(&[], &[h("Date", DATE_T0), h("Expires", DATE_T0)]),
            None
        );
        let past = [
            h("Date", DATE_T0),
            h("Expires", b"Sun, 06 Nov 1994 07:49:37 GMT"),
        ];
        assert_eq!(store(&[], &past), None);
    }

    #[test]
    fn response_directives_forbid() {
        for cc in [
            &b"max-age=60, no-store"[..],
            b"max-age=60, private",
            b"max-age=60, private=\"set-cookie\"",
            b"max-age=60, no-cache",
            b"max-age=60, no-cache=\"set-cookie\"",
        ] {
            assert_eq!(
                store(&[], &[h("Cache-Control", cc)]),
                None,
                "{:?}",
                String::from_utf8_lossy(cc)
            );
        }
        // must-understand overrides no-store for a status ringcache implements.
        let mu = [h("Cache-Control", b"max-age=60, no-store, must-understand")];
        assert_eq!(store(&[], &mu).unwrap().lifetime_secs, 60);
    }

    #[test]
    fn request_no_store_forbids() {
        let resp = [h("Cache-Control", b"max-age=60")];
        assert_eq!(store(&[h("Cache-Control", b"no-store")], &resp), None);
        // no-cache in the request does not prevent storing.
        assert!(store(&[h("Cache-Control", b"no-cache")], &resp).is_some());
    }

    #[test]
    fn authorization_needs_explicit_permission() {
        let auth = [h("Authorization", b"Bearer x")];
        assert_eq!(store(&auth, &[h("Cache-Control", b"max-age=60")]), None);
        for cc in [
            &b"max-age=60, public"[..],
            b"s-maxage=60",
            b"max-age=60, must-revalidate",
        ] {
            assert!(
                store(&auth, &[h("Cache-Control", cc)]).is_some(),
                "{:?}",
                String::from_utf8_lossy(cc)
            );
        }
    }

    #[test]
    fn vary_star_forbids() {
        let cc = h("Cache-Control", b"max-age=60");
        assert_eq!(store(&[], &[cc, h("Vary", b"*")]), None);
        assert_eq!(
            store(&[], &[cc, h("Vary", b"accept"), h("vary", b"origin, *")]),
            None
        );
        assert!(store(&[], &[cc, h("Vary", b"Accept-Encoding")]).is_some());
    }

    #[test]
    fn initial_age() {
        // Age from the origin plus the round-trip delay.
        let resp = [h("Cache-Control", b"max-age=600"), h("Age", b"100")];
        let s = storable(Method::Get, &[], 200, &resp, T0, T0 + 5).unwrap();
        assert_eq!(s.initial_age_secs, 105);
        // Apparent age from Date wins when larger.
        let resp = [h("Cache-Control", b"max-age=600"), h("Date", DATE_T0)];
        let s = storable(Method::Get, &[], 200, &resp, T0 + 200, T0 + 250).unwrap();
        assert_eq!(s.initial_age_secs, 250);
        // A Date in the future gives no negative age.
        let s = storable(Method::Get, &[], 200, &resp, T0 - 50, T0 - 40).unwrap();
        assert_eq!(s.initial_age_secs, 10);
        // A response time before the request time gives no negative delay.
        assert_eq!(initial_age_secs(&[], T0, T0 - 3), 0);
        // An invalid Age is ignored; a huge one saturates.
        assert_eq!(initial_age_secs(&[h("Age", b"x")], T0, T0 + 1), 1);
        assert_eq!(
            initial_age_secs(&[h("Age", b"99999999999")], T0, T0),
            cache_control::DELTA_SECONDS_MAX
        );
    }

    #[test]
    fn stale_on_arrival_is_still_reported() {
        let resp = [h("Cache-Control", b"max-age=60"), h("Age", b"100")];
        let s = store(&[], &resp).unwrap();
        assert!(!s.is_fresh(T0, T0));
    }
}
