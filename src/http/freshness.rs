//! Storability, freshness and age of one response (RFC 9111 §3, §4.2).
//!
//! [`decide`] is the one question the proxy asks when a response head
//! arrives from the origin: may ringcache store it, and with which
//! freshness numbers and reuse restrictions ([`Stored`])? The store keeps
//! only the numbers (birth and lifetime), so a fresh hit needs no header
//! parsing; once an item is stale, or a request asks for more than a
//! plain hit, the proxy runs [`decide`] again over the stored header block
//! to recover the restrictions (`proxy::revalidate`) and hands [`Stored`]
//! to the reuse decision ([`super::reuse`]).
//!
//! Directives come from [`super::targeted::effective`]: a valid
//! `Ringcache-Cache-Control` or `CDN-Cache-Control` replaces
//! `Cache-Control` and `Expires`.
//!
//! ringcache reads a qualified `private="f"` or `no-cache="f"` as "store,
//! but never the named fields" ([`Stored::strips`]). For `no-cache="f"`
//! the RFC also allows serving the fields after validation; stripping
//! them always is simpler and serves less, never more. In targeted fields
//! (RFC 9213) the qualified forms are read as unqualified.
//!
//! All times are unix seconds; `request_time` is when the request was sent
//! to the origin, `response_time` when the response head arrived.

use httparse::Header;

use super::cache_control::{self, CacheControl, DELTA_SECONDS_MAX};
use super::date::parse_http_date;
use super::headers::{get, list_elements, trim_ows, values};
use super::policy::{Policy, SetCookie};
use super::request::Method;
use super::targeted;

/// The request and response, as the proxy has them when the response head
/// arrives: httparse header slices and unix seconds.
#[derive(Clone, Copy, Debug)]
pub struct Exchange<'a> {
    /// The method sent to the origin (a HEAD miss is fetched as GET).
    pub method: Method,
    /// The request's fields as sent to the origin.
    pub request: &'a [Header<'a>],
    pub status: u16,
    pub response: &'a [Header<'a>],
    pub request_time_secs: u64,
    pub response_time_secs: u64,
}

/// A response ringcache may store, with what reuse needs to know.
/// Small and `Copy`: kept beside the stored item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stored {
    /// When the response head arrived.
    pub response_time_secs: u64,
    /// Freshness lifetime (RFC 9111 §4.2.1, §4.2.2); 0 when the response
    /// is stored only to be validated (it has a validator but no lifetime).
    pub lifetime_secs: u64,
    /// Corrected initial age (RFC 9111 §4.2.3).
    pub initial_age_secs: u64,
    /// The lifetime is heuristic (RFC 9111 §4.2.2).
    pub heuristic: bool,
    /// Unqualified `no-cache`: validate before every reuse (§5.2.2.4).
    pub no_cache: bool,
    /// Never served stale: `must-revalidate`, `proxy-revalidate` or
    /// `s-maxage` (§4.2.4, §5.2.2.2, §5.2.2.8, §5.2.2.10).
    pub no_stale: bool,
    /// `must-revalidate` (or `proxy-revalidate`, `s-maxage`): when
    /// validation fails, answer 504 (§5.2.2.2).
    pub must_revalidate: bool,
    /// RFC 8246 `immutable`.
    pub immutable: bool,
    /// RFC 5861 §3 window past the lifetime.
    pub stale_while_revalidate_secs: u64,
    /// RFC 5861 §4 window past the lifetime.
    pub stale_if_error_secs: u64,
    /// Qualified `private` / `no-cache` name fields to leave out.
    pub strip_qualified: bool,
    /// `Set-Cookie` is left out ([`SetCookie::Strip`]).
    pub strip_set_cookie: bool,
    /// `ETag` or `Last-Modified` present: the response can be validated.
    pub has_validator: bool,
}

impl Stored {
    /// Current age at `now_secs` (RFC 9111 §4.2.3): corrected initial age
    /// plus resident time.
    pub fn age_secs(&self, now_secs: u64) -> u64 {
        self.initial_age_secs
            .saturating_add(now_secs.saturating_sub(self.response_time_secs))
    }

    /// Fresh at `now_secs` (RFC 9111 §4.2: lifetime > current age).
    pub fn is_fresh(&self, now_secs: u64) -> bool {
        self.lifetime_secs > self.age_secs(now_secs)
    }

    /// Remaining freshness, negative once stale (RFC 9211 §2.7 `ttl`).
    pub fn ttl_secs(&self, now_secs: u64) -> i64 {
        let clamp = |n: u64| n.min(i64::MAX as u64) as i64;
        clamp(self.lifetime_secs) - clamp(self.age_secs(now_secs))
    }

    /// Is the response field `name` left out of the stored head? The proxy
    /// asks for each field while it copies the head into the store.
    pub fn strips(&self, response: &[Header<'_>], name: &[u8]) -> bool {
        (self.strip_set_cookie && name.eq_ignore_ascii_case(b"set-cookie"))
            || (self.strip_qualified && cache_control::is_qualified_field(response, name))
    }
}

/// Why a response is not stored; [`NotStored::detail`] names it for the
/// `Cache-Status` `detail` parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotStored {
    /// Only GET responses are stored (HEAD responses update, §4.3.5).
    Method,
    /// A status that needs explicit freshness or `public` and had neither,
    /// or one ringcache never stores (1xx, 304).
    Status,
    /// 206 is never stored as the full object (§3.4: ringcache does not
    /// combine partial content).
    Partial,
    /// The request said `no-store` (§5.2.1.5).
    RequestNoStore,
    NoStore,
    /// `Surrogate-Control: no-store`.
    SurrogateNoStore,
    /// Unqualified `private` (§5.2.2.7).
    Private,
    /// The request had `Authorization` and the response no `public`,
    /// `s-maxage` or `must-revalidate` (§3.5).
    Authorization,
    /// `Vary: *` (§4.1).
    VaryStar,
    /// `Set-Cookie` with [`SetCookie::Refuse`].
    SetCookie,
    /// `must-understand` on a status ringcache does not implement (§5.2.2.3).
    MustUnderstand,
    /// Never reusable without a full fetch: no lifetime (explicit or
    /// heuristic) or `no-cache`, and no validator.
    NotReusable,
}

impl NotStored {
    pub fn detail(self) -> &'static str {
        match self {
            NotStored::Method => "method",
            NotStored::Status => "status",
            NotStored::Partial => "partial",
            NotStored::RequestNoStore => "request-no-store",
            NotStored::NoStore => "no-store",
            NotStored::SurrogateNoStore => "surrogate-no-store",
            NotStored::Private => "private",
            NotStored::Authorization => "authorization",
            NotStored::VaryStar => "vary-star",
            NotStored::SetCookie => "set-cookie",
            NotStored::MustUnderstand => "must-understand",
            NotStored::NotReusable => "not-reusable",
        }
    }
}

/// May this response be stored (RFC 9111 §3), and how may it be reused?
///
/// Called once per origin response head to a GET that has a cache key.
/// The body must then arrive complete ([`body_complete`], §3.3) before the
/// item is inserted.
pub fn decide(x: &Exchange<'_>, policy: &Policy) -> Result<Stored, NotStored> {
    if x.method != Method::Get {
        return Err(NotStored::Method);
    }
    if x.status == 206 {
        return Err(NotStored::Partial);
    }
    if !(200..600).contains(&x.status) || x.status == 304 {
        return Err(NotStored::Status);
    }
    if cache_control::from_headers(x.request).no_store {
        return Err(NotStored::RequestNoStore);
    }
    let eff = targeted::effective(x.response);
    let cc = &eff.cc;
    if eff.surrogate_no_store {
        return Err(NotStored::SurrogateNoStore);
    }
    if cc.must_understand {
        // §5.2.2.3: ringcache understands the status, so no-store yields.
        if !understood_status(x.status) {
            return Err(NotStored::MustUnderstand);
        }
    } else if cc.no_store {
        return Err(NotStored::NoStore);
    }
    if cc.private_whole {
        return Err(NotStored::Private);
    }
    let authorized = get(x.request, b"authorization").is_some();
    if authorized && !(cc.public || cc.s_maxage.is_some() || cc.must_revalidate) {
        return Err(NotStored::Authorization);
    }
    if varies_on_everything(x.response) {
        return Err(NotStored::VaryStar);
    }
    let has_cookie = get(x.response, b"set-cookie").is_some();
    if has_cookie && policy.set_cookie == SetCookie::Refuse {
        return Err(NotStored::SetCookie);
    }
    let explicit =
        explicit_lifetime_secs(cc, x.response, x.response_time_secs, eff.ignores_expires());
    let by_default = cacheable_by_default(x.status);
    if explicit.is_none() && !by_default && !cc.public {
        return Err(NotStored::Status);
    }
    let has_validator =
        get(x.response, b"etag").is_some() || get(x.response, b"last-modified").is_some();
    let mut heuristic = explicit.is_none() && policy.heuristic;
    let mut lifetime_secs = match explicit {
        Some(secs) => secs,
        None if heuristic => heuristic_lifetime_secs(x.response, x.response_time_secs, policy),
        None => 0,
    };
    if explicit.is_none() && lifetime_secs == 0 && has_validator && policy.default_ttl_secs > 0 {
        heuristic = true;
        lifetime_secs = policy.default_ttl_secs;
    }
    if (lifetime_secs == 0 || cc.no_cache_whole) && !has_validator {
        return Err(NotStored::NotReusable);
    }
    let no_stale = cc.must_revalidate || cc.proxy_revalidate || cc.s_maxage.is_some();
    Ok(Stored {
        response_time_secs: x.response_time_secs,
        lifetime_secs,
        initial_age_secs: initial_age_secs(x.response, x.request_time_secs, x.response_time_secs),
        heuristic: heuristic && lifetime_secs > 0,
        no_cache: cc.no_cache_whole,
        no_stale,
        must_revalidate: no_stale,
        immutable: cc.immutable,
        stale_while_revalidate_secs: cc.stale_while_revalidate.unwrap_or(0),
        stale_if_error_secs: cc.stale_if_error.unwrap_or(0),
        strip_qualified: (cc.private && !cc.private_whole) || (cc.no_cache && !cc.no_cache_whole),
        strip_set_cookie: has_cookie && policy.set_cookie == SetCookie::Strip,
        has_validator,
    })
}

/// A response body may be stored only when it arrived whole (RFC 9111
/// §3.3): as many bytes as `Content-Length` said (`declared_bytes`), or,
/// for chunked and close-delimited bodies (`None`), when the proxy saw the
/// last chunk or a clean close and passes `ended_cleanly`.
pub fn body_complete(
    declared_bytes: Option<u64>,
    received_bytes: u64,
    ended_cleanly: bool,
) -> bool {
    match declared_bytes {
        Some(n) => n == received_bytes,
        None => ended_cleanly,
    }
}

/// Status codes cacheable by default (RFC 9110 §15.1); also the ones that
/// allow heuristic freshness (RFC 9111 §4.2.2). 206 is among them in the
/// RFC but ringcache never stores partial content as the object.
pub fn cacheable_by_default(status: u16) -> bool {
    matches!(
        status,
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Status codes whose caching requirements ringcache implements, for
/// `must-understand` (RFC 9111 §5.2.2.3): the final statuses RFC 9110 §15
/// defines, except 206 and 304 which are never stored as objects.
pub fn understood_status(status: u16) -> bool {
    matches!(status,
        200..=205 | 300..=303 | 307 | 308 | 400..=417 | 421 | 422 | 426 | 500..=505)
}

/// Compatibility answer for the proxy's first caching path: a `GET` `200`
/// with an explicit lifetime that needs no validation and no field
/// stripping, under the default [`Policy`] (so a response with
/// `Set-Cookie` is no longer stored). New callers use [`decide`].
pub fn storable(
    method: Method,
    req_headers: &[Header<'_>],
    status: u16,
    resp_headers: &[Header<'_>],
    request_time_secs: u64,
    response_time_secs: u64,
) -> Option<Storable> {
    let x = Exchange {
        method,
        request: req_headers,
        status,
        response: resp_headers,
        request_time_secs,
        response_time_secs,
    };
    let s = decide(&x, &Policy::default()).ok()?;
    let simple = status == 200
        && s.lifetime_secs > 0
        && !s.no_cache
        && !s.strip_qualified
        && !s.strip_set_cookie;
    simple.then_some(Storable {
        lifetime_secs: s.lifetime_secs,
        initial_age_secs: s.initial_age_secs,
    })
}

/// What [`storable`] returns.
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

/// `Vary: *` on any line: no request can be matched to this response.
fn varies_on_everything(headers: &[Header<'_>]) -> bool {
    values(headers, b"vary")
        .flat_map(list_elements)
        .any(|e| e == b"*")
}

/// Explicit freshness lifetime for a shared cache (RFC 9111 §4.2.1):
/// `s-maxage`, else `max-age`, else `Expires` minus `Date`; `None` when
/// there is none (heuristics may then apply). `Expires` is ignored when a
/// targeted field decides (RFC 9213 §2.2). An invalid `Expires` (such as
/// `0`) is in the past (§5.3), and so are `Expires` lines that disagree
/// (§4.2.1: conflicting values are read as stale). A missing or invalid
/// `Date` counts as the response time (§4.2.1).
pub fn explicit_lifetime_secs(
    cc: &CacheControl,
    headers: &[Header<'_>],
    response_time_secs: u64,
    ignore_expires: bool,
) -> Option<u64> {
    if let Some(s) = cc.s_maxage {
        return Some(s);
    }
    if let Some(s) = cc.max_age {
        return Some(s);
    }
    if ignore_expires {
        return None;
    }
    let mut lines = values(headers, b"expires");
    let first = lines.next()?;
    if lines.any(|other| trim_ows(other) != trim_ows(first)) {
        return Some(0);
    }
    let Some(expires) = parse_http_date(trim_ows(first)) else {
        return Some(0);
    };
    let date = date_secs(headers).unwrap_or(response_time_secs);
    Some(expires.saturating_sub(date).min(DELTA_SECONDS_MAX))
}

/// Explicit lifetime from `Cache-Control` and `Expires`, 0 when none (the
/// first interface; [`explicit_lifetime_secs`] tells "none" from 0).
pub fn freshness_lifetime_secs(
    cc: &CacheControl,
    headers: &[Header<'_>],
    response_time_secs: u64,
) -> u64 {
    explicit_lifetime_secs(cc, headers, response_time_secs, false).unwrap_or(0)
}

/// Heuristic lifetime (RFC 9111 §4.2.2): a percentage of the time since
/// `Last-Modified` (measured at `Date`, else at the response time), else
/// the operator's default; capped. A `Last-Modified` in the future gives 0.
pub fn heuristic_lifetime_secs(
    headers: &[Header<'_>],
    response_time_secs: u64,
    policy: &Policy,
) -> u64 {
    let secs = match get(headers, b"last-modified").and_then(|v| parse_http_date(trim_ows(v))) {
        Some(modified) => {
            let date = date_secs(headers).unwrap_or(response_time_secs);
            date.saturating_sub(modified) / 100 * u64::from(policy.heuristic_percent)
        }
        None => policy.heuristic_default_secs,
    };
    secs.min(policy.heuristic_secs_max)
}

/// Corrected initial age (RFC 9111 §4.2.3):
/// apparent_age = max(0, response_time - date);
/// corrected_age_value = age_value + (response_time - request_time);
/// corrected_initial_age = max(apparent_age, corrected_age_value).
/// `Age` is read per §5.1: the first member of a list, digits only,
/// ignored when invalid. A missing `Date` gives no apparent age; a `Date`
/// ahead of ringcache's clock (skew) gives 0, never a negative age.
pub fn initial_age_secs(
    headers: &[Header<'_>],
    request_time_secs: u64,
    response_time_secs: u64,
) -> u64 {
    let age_value = get(headers, b"age").and_then(age_value).unwrap_or(0);
    let apparent_age = date_secs(headers).map_or(0, |d| response_time_secs.saturating_sub(d));
    let response_delay = response_time_secs.saturating_sub(request_time_secs);
    apparent_age.max(age_value.saturating_add(response_delay))
}

/// `Age` = delta-seconds, first list member (RFC 9111 §5.1).
fn age_value(v: &[u8]) -> Option<u64> {
    let first = list_elements(v).next()?;
    if first.is_empty() || !first.iter().all(u8::is_ascii_digit) {
        return None;
    }
    cache_control::delta_seconds(first)
}

fn date_secs(headers: &[Header<'_>]) -> Option<u64> {
    get(headers, b"date").and_then(|v| parse_http_date(trim_ows(v)))
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

    fn x<'a>(req: &'a [Header<'a>], status: u16, resp: &'a [Header<'a>]) -> Exchange<'a> {
        Exchange {
            method: Method::Get,
            request: req,
            status,
            response: resp,
            request_time_secs: T0,
            response_time_secs: T0,
        }
    }

    fn dec(status: u16, resp: &[Header<'_>]) -> Result<Stored, NotStored> {
        decide(&x(&[], status, resp), &Policy::default())
    }

    const MAX_AGE_60: Header<'static> = Header {
        name: "Cache-Control",
        value: b"max-age=60",
    };
    const ETAG: Header<'static> = Header {
        name: "ETag",
        value: b"\"v1\"",
    };

    #[test]
    fn rfc9111_3_only_get_is_stored_head_updates_only() {
        for m in [Method::Head, Method::Post, Method::Put, Method::Options] {
            let e = Exchange {
                method: m,
                ..x(&[], 200, &[MAX_AGE_60])
            };
            assert_eq!(decide(&e, &Policy::default()), Err(NotStored::Method));
        }
    }

    #[test]
    fn rfc9110_15_1_cacheable_by_default_statuses() {
        for status in [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501] {
            // A validator alone is enough to store (lifetime 0, validate on use).
            let s = dec(status, &[ETAG]).unwrap();
            assert_eq!(s.lifetime_secs, 0, "{status}");
        }
        for status in [201, 202, 302, 303, 307, 400, 403, 500, 502, 503] {
            assert_eq!(dec(status, &[ETAG]), Err(NotStored::Status), "{status}");
            // Explicit freshness or `public` makes them storable (§3).
            assert_eq!(dec(status, &[MAX_AGE_60]).unwrap().lifetime_secs, 60);
            let public = h("Cache-Control", b"public");
            assert!(dec(status, &[public, ETAG]).is_ok(), "{status}");
            let exp = [
                h("Date", DATE_T0),
                h("Expires", b"Sun, 06 Nov 1994 08:50:37 GMT"),
            ];
            assert_eq!(dec(status, &exp).unwrap().lifetime_secs, 60);
        }
        for status in [100, 101, 103, 304, 600, 0] {
            assert_eq!(
                dec(status, &[MAX_AGE_60]),
                Err(NotStored::Status),
                "{status}"
            );
        }
    }

    #[test]
    fn rfc9111_3_4_partial_content_not_stored_as_object() {
        assert_eq!(dec(206, &[MAX_AGE_60, ETAG]), Err(NotStored::Partial));
    }

    #[test]
    fn rfc9111_5_2_2_5_no_store_and_5_2_1_5_request_no_store() {
        let r = [h("Cache-Control", b"max-age=60, no-store")];
        assert_eq!(dec(200, &r), Err(NotStored::NoStore));
        let req = [h("Cache-Control", b"no-store")];
        assert_eq!(
            decide(&x(&req, 200, &[MAX_AGE_60]), &Policy::default()),
            Err(NotStored::RequestNoStore)
        );
        let sc = [MAX_AGE_60, h("Surrogate-Control", b"no-store")];
        assert_eq!(dec(200, &sc), Err(NotStored::SurrogateNoStore));
    }

    #[test]
    fn rfc9111_5_2_2_3_must_understand() {
        let mu = [h("Cache-Control", b"max-age=60, no-store, must-understand")];
        assert_eq!(dec(200, &mu).unwrap().lifetime_secs, 60);
        assert_eq!(dec(404, &mu).unwrap().lifetime_secs, 60);
        // A status ringcache does not implement: not stored at all.
        assert_eq!(dec(299, &mu), Err(NotStored::MustUnderstand));
        let mu = [h("Cache-Control", b"max-age=60, must-understand")];
        assert_eq!(dec(299, &mu), Err(NotStored::MustUnderstand));
    }

    #[test]
    fn rfc9111_5_2_2_7_private_and_qualified_fields() {
        let r = [h("Cache-Control", b"max-age=60, private")];
        assert_eq!(dec(200, &r), Err(NotStored::Private));
        let r = [
            h(
                "Cache-Control",
                b"max-age=60, private=\"X-User\", no-cache=\"X-Debug\"",
            ),
            h("X-User", b"alice"),
            h("X-Debug", b"1"),
            h("X-Other", b"1"),
        ];
        let s = dec(200, &r).unwrap();
        assert!(s.strip_qualified && !s.no_cache);
        assert!(s.strips(&r, b"x-user") && s.strips(&r, b"X-DEBUG"));
        assert!(!s.strips(&r, b"x-other"));
        // The compatibility path does not strip: it does not store.
        assert_eq!(storable(Method::Get, &[], 200, &r, T0, T0), None);
    }

    #[test]
    fn rfc9111_5_2_2_4_no_cache_stores_for_validation_only() {
        let r = [h("Cache-Control", b"max-age=60, no-cache"), ETAG];
        let s = dec(200, &r).unwrap();
        assert!(s.no_cache);
        let r = [h("Cache-Control", b"max-age=60, no-cache")];
        assert_eq!(dec(200, &r), Err(NotStored::NotReusable));
    }

    #[test]
    fn rfc9111_3_5_authorization() {
        let auth = [h("Authorization", b"Basic x")];
        let d = |cc: &'static [u8]| {
            decide(
                &x(&auth, 200, &[h("Cache-Control", cc)]),
                &Policy::default(),
            )
        };
        assert_eq!(d(b"max-age=60"), Err(NotStored::Authorization));
        assert!(d(b"max-age=60, public").is_ok());
        assert!(d(b"s-maxage=60").is_ok());
        assert!(d(b"max-age=60, must-revalidate").is_ok());
    }

    #[test]
    fn rfc9111_4_1_vary_star() {
        assert_eq!(
            dec(200, &[MAX_AGE_60, h("Vary", b"Accept, *")]),
            Err(NotStored::VaryStar)
        );
    }

    #[test]
    fn set_cookie_policy_switch() {
        let r = [MAX_AGE_60, h("Set-Cookie", b"a=1")];
        assert_eq!(dec(200, &r), Err(NotStored::SetCookie));
        let strip = Policy {
            set_cookie: SetCookie::Strip,
            ..Policy::default()
        };
        let s = decide(&x(&[], 200, &r), &strip).unwrap();
        assert!(s.strips(&r, b"Set-Cookie") && !s.strips(&r, b"Cache-Control"));
        let store = Policy {
            set_cookie: SetCookie::Store,
            ..Policy::default()
        };
        let s = decide(&x(&[], 200, &r), &store).unwrap();
        assert!(!s.strips(&r, b"set-cookie"));
    }

    #[test]
    fn rfc9111_4_2_2_no_lifetime_no_validator_not_reused() {
        assert_eq!(dec(200, &[]), Err(NotStored::NotReusable));
        assert_eq!(
            dec(200, &[h("Last-Modified", b"Sat, 06 Nov 1993 08:49:37 GMT")])
                .unwrap()
                .lifetime_secs,
            0
        );
    }

    #[test]
    fn rfc9111_4_2_2_heuristic_switch_percent_and_cap() {
        let on = Policy {
            heuristic: true,
            heuristic_secs_max: 3600,
            ..Policy::default()
        };
        // 1000 s since Last-Modified at Date: 10% is 100 s.
        let r = [
            h("Date", DATE_T0),
            h("Last-Modified", b"Sun, 06 Nov 1994 08:32:57 GMT"),
        ];
        let s = decide(&x(&[], 200, &r), &on).unwrap();
        assert_eq!((s.lifetime_secs, s.heuristic), (100, true));
        // A year since Last-Modified: capped.
        let r = [
            h("Date", DATE_T0),
            h("Last-Modified", b"Sat, 06 Nov 1993 08:49:37 GMT"),
        ];
        assert_eq!(decide(&x(&[], 200, &r), &on).unwrap().lifetime_secs, 3600);
        // Only for heuristically cacheable statuses or `public`.
        assert_eq!(decide(&x(&[], 302, &r), &on), Err(NotStored::Status));
        let p = [r[0], r[1], h("Cache-Control", b"public")];
        assert_eq!(decide(&x(&[], 302, &p), &on).unwrap().lifetime_secs, 3600);
        // Explicit freshness is never replaced by a heuristic.
        let e = [r[0], r[1], h("Cache-Control", b"max-age=5")];
        let s = decide(&x(&[], 200, &e), &on).unwrap();
        assert_eq!((s.lifetime_secs, s.heuristic), (5, false));
        // No Last-Modified: the operator's default, if any.
        let dflt = Policy {
            heuristic_default_secs: 30,
            ..on
        };
        assert_eq!(decide(&x(&[], 200, &[]), &dflt).unwrap().lifetime_secs, 30);
        assert_eq!(decide(&x(&[], 200, &[]), &on), Err(NotStored::NotReusable));
    }

    #[test]
    fn default_ttl_for_validated_responses_without_lifetime() {
        let ttl = Policy {
            default_ttl_secs: 120,
            ..Policy::default()
        };
        let s = decide(&x(&[], 200, &[ETAG]), &ttl).unwrap();
        assert_eq!((s.lifetime_secs, s.heuristic), (120, true));
        // Explicit freshness wins; no validator, no default.
        let e = [ETAG, MAX_AGE_60];
        assert_eq!(decide(&x(&[], 200, &e), &ttl).unwrap().lifetime_secs, 60);
        assert_eq!(decide(&x(&[], 200, &[]), &ttl), Err(NotStored::NotReusable));
        // Only where a heuristic may apply.
        assert_eq!(decide(&x(&[], 302, &[ETAG]), &ttl), Err(NotStored::Status));
    }

    #[test]
    fn rfc9111_4_2_1_precedence_s_maxage_max_age_expires() {
        let exp = h("Expires", b"Sun, 06 Nov 1994 08:59:37 GMT");
        let date = h("Date", DATE_T0);
        let cc = |v: &'static [u8]| h("Cache-Control", v);
        assert_eq!(dec(200, &[date, exp]).unwrap().lifetime_secs, 600);
        assert_eq!(
            dec(200, &[date, exp, cc(b"max-age=60")])
                .unwrap()
                .lifetime_secs,
            60
        );
        assert_eq!(
            dec(200, &[date, exp, cc(b"max-age=60, s-maxage=90")])
                .unwrap()
                .lifetime_secs,
            90
        );
        // No Date: Expires minus the response time.
        assert_eq!(dec(200, &[exp]).unwrap().lifetime_secs, 600);
    }

    #[test]
    fn rfc9111_5_3_invalid_and_duplicate_expires_are_stale() {
        let date = h("Date", DATE_T0);
        for bad in [&b"0"[..], b"-1", b"never", b""] {
            let s = dec(200, &[date, h("Expires", bad), ETAG]).unwrap();
            assert_eq!(s.lifetime_secs, 0, "{:?}", String::from_utf8_lossy(bad));
        }
        let e1 = h("Expires", b"Sun, 06 Nov 1994 08:59:37 GMT");
        let e2 = h("Expires", b"Sun, 06 Nov 1994 09:59:37 GMT");
        assert_eq!(dec(200, &[date, e1, e2, ETAG]).unwrap().lifetime_secs, 0);
        assert_eq!(dec(200, &[date, e1, e1]).unwrap().lifetime_secs, 600);
    }

    #[test]
    fn rfc9213_2_2_targeted_field_ignores_expires_and_cache_control() {
        let r = [
            h("Date", DATE_T0),
            h("Expires", b"Sun, 06 Nov 1994 08:59:37 GMT"),
            h("Cache-Control", b"no-store"),
            h("CDN-Cache-Control", b"must-revalidate"),
            ETAG,
        ];
        let s = dec(200, &r).unwrap();
        assert_eq!(s.lifetime_secs, 0);
        assert!(s.must_revalidate);
        let r = [
            h("Cache-Control", b"max-age=60"),
            h("Ringcache-Cache-Control", b"no-store"),
        ];
        assert_eq!(dec(200, &r), Err(NotStored::NoStore));
    }

    #[test]
    fn rfc9111_4_2_3_age_clock_skew_and_5_1_age_lists() {
        // Date an hour ahead of ringcache's clock: no apparent age.
        let ahead = [h("Date", b"Sun, 06 Nov 1994 09:49:37 GMT")];
        assert_eq!(initial_age_secs(&ahead, T0, T0 + 2), 2);
        // Date an hour behind: apparent age wins.
        let behind = [h("Date", b"Sun, 06 Nov 1994 07:49:37 GMT")];
        assert_eq!(initial_age_secs(&behind, T0, T0), 3600);
        // §5.1: the first member of a list; invalid values ignored.
        assert_eq!(initial_age_secs(&[h("Age", b"30, 50")], T0, T0), 30);
        assert_eq!(initial_age_secs(&[h("Age", b"\"30\"")], T0, T0), 0);
        assert_eq!(initial_age_secs(&[h("Age", b"-3")], T0, T0), 0);
        assert_eq!(initial_age_secs(&[h("Age", b" 7 ")], T0, T0 + 1), 8);
        let s = dec(200, &[MAX_AGE_60, h("Age", b"50")]).unwrap();
        assert_eq!(s.age_secs(T0 + 5), 55);
        assert!(s.is_fresh(T0 + 9) && !s.is_fresh(T0 + 10));
        assert_eq!(s.ttl_secs(T0 + 20), -10);
    }

    #[test]
    fn rfc9111_5_2_2_stale_flags() {
        let cc = |v: &'static [u8]| dec(200, &[h("Cache-Control", v)]).unwrap();
        assert!(cc(b"max-age=5, must-revalidate").no_stale);
        assert!(cc(b"max-age=5, proxy-revalidate").no_stale);
        assert!(cc(b"s-maxage=5").no_stale);
        let s = cc(b"max-age=5, stale-while-revalidate=7, stale-if-error=9, immutable");
        assert!(!s.no_stale && s.immutable);
        assert_eq!(
            (s.stale_while_revalidate_secs, s.stale_if_error_secs),
            (7, 9)
        );
    }

    #[test]
    fn rfc9111_3_3_incomplete_bodies() {
        assert!(body_complete(Some(10), 10, false));
        assert!(!body_complete(Some(10), 9, true));
        assert!(body_complete(None, 3, true));
        assert!(!body_complete(None, 3, false));
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
