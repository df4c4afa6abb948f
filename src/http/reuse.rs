//! May a stored response answer this request now? (RFC 9111 §4, §4.2.4,
//! §5.2.1, §5.4; RFC 5861; RFC 8246)
//!
//! The proxy calls [`RequestDirectives::from_headers`] once per request
//! and [`reuse`] on a lookup hit the fast path did not answer. Both read
//! no stored headers: the stored side is the [`Stored`] that
//! `freshness::decide` gives for the stored header block.
//!
//! ```text
//!  fresh, request content ─────────────────────────▶ Fresh
//!  stale, max-stale covers it, stale allowed ──────▶ StaleAllowed
//!  stale within stale-while-revalidate ────────────▶ StaleWhileRevalidate
//!  otherwise, stale-if-error window still open ────▶ StaleIfErrorAllowed
//!  otherwise ──────────────────────────────────────▶ MustRevalidate
//!  only-if-cached and the origin would be asked ───▶ GatewayTimeout (504)
//! ```

use httparse::Header;

use super::cache_control::{self, CacheControl};
use super::freshness::Stored;
use super::headers::{list_elements, values};
use super::policy::Policy;

/// The request's caching directives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestDirectives {
    pub cc: CacheControl,
    /// `Pragma: no-cache` in a request without `Cache-Control` (§5.4).
    pub pragma_no_cache: bool,
}

impl RequestDirectives {
    pub fn from_headers(headers: &[Header<'_>]) -> RequestDirectives {
        let has_cc = values(headers, b"cache-control").next().is_some();
        let pragma_no_cache = !has_cc
            && values(headers, b"pragma")
                .flat_map(list_elements)
                .any(|e| e.eq_ignore_ascii_case(b"no-cache"));
        RequestDirectives {
            cc: cache_control::from_headers(headers),
            pragma_no_cache,
        }
    }

    /// `only-if-cached` (§5.2.1.7): a miss is answered 504.
    pub fn only_if_cached(&self) -> bool {
        self.cc.only_if_cached
    }

    /// The client asks for validation: `no-cache`, or `Pragma: no-cache`.
    pub fn no_cache(&self) -> bool {
        self.cc.no_cache || self.pragma_no_cache
    }
}

/// What to do with a stored response for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reuse {
    /// Serve it.
    Fresh,
    /// Serve it stale: the client accepts that (`max-stale`, §5.2.1.2), or
    /// `only-if-cached` leaves nothing else and stale is allowed.
    StaleAllowed,
    /// Serve it stale and refresh it once in the background (RFC 5861 §3).
    StaleWhileRevalidate,
    /// Validate with the origin first. If the origin fails (no answer, or
    /// 500/502/503/504, RFC 5861 §4), the stored response may be served
    /// until `until_secs`.
    StaleIfErrorAllowed { until_secs: u64 },
    /// Validate with the origin first; if that fails, answer the error
    /// (504 when [`Stored::must_revalidate`], §5.2.2.2).
    MustRevalidate,
    /// `only-if-cached` and the stored response cannot be used: 504
    /// (§5.2.1.7).
    GatewayTimeout,
}

/// Decide for the stored response `s` at `now_secs`.
pub fn reuse(s: &Stored, req: &RequestDirectives, now_secs: u64, policy: &Policy) -> Reuse {
    let r = decide(s, req, now_secs, policy);
    if !req.only_if_cached() {
        return r;
    }
    match r {
        Reuse::Fresh | Reuse::StaleAllowed => r,
        // Serving stale is allowed; refreshing would ask the origin.
        Reuse::StaleWhileRevalidate => Reuse::StaleAllowed,
        Reuse::StaleIfErrorAllowed { .. } | Reuse::MustRevalidate => Reuse::GatewayTimeout,
        Reuse::GatewayTimeout => r,
    }
}

fn decide(s: &Stored, req: &RequestDirectives, now_secs: u64, policy: &Policy) -> Reuse {
    let age = s.age_secs(now_secs);
    let fresh = s.lifetime_secs > age;
    if s.no_cache {
        return Reuse::MustRevalidate; // §5.2.2.4: never without validation
    }
    // RFC 8246 §2: a fresh immutable response answers reloads.
    let reload_ignored = fresh && s.immutable && policy.immutable_ignores_reload;
    let reload = req.no_cache() || req.cc.max_age.is_some_and(|m| age > m);
    let wants_origin = reload && !reload_ignored;
    let min_fresh_ok = req
        .cc
        .min_fresh
        .map_or(true, |m| s.lifetime_secs.saturating_sub(age) >= m);
    if fresh && !wants_origin && min_fresh_ok {
        return Reuse::Fresh;
    }
    let staleness = age.saturating_sub(s.lifetime_secs);
    if !fresh && !wants_origin && !s.no_stale {
        let max_stale_ok = match req.cc.max_stale {
            Some(None) => true,
            Some(Some(limit)) => staleness <= limit,
            None => false,
        };
        if max_stale_ok && req.cc.min_fresh.is_none() {
            return Reuse::StaleAllowed;
        }
        if staleness < s.stale_while_revalidate_secs {
            return Reuse::StaleWhileRevalidate;
        }
    }
    // Past its lifetime the response is only usable on error when stale is
    // allowed; a fresh one (asked to be validated) stays usable until it
    // expires.
    let expires_at = now_secs.saturating_add(s.lifetime_secs.saturating_sub(age));
    let window = if s.no_stale {
        0
    } else {
        s.stale_if_error_secs
            .max(req.cc.stale_if_error.unwrap_or(0))
    };
    let until_secs = expires_at.saturating_add(window).saturating_sub(staleness);
    if until_secs > now_secs {
        Reuse::StaleIfErrorAllowed { until_secs }
    } else {
        Reuse::MustRevalidate
    }
}

/// Origin answers that count as an error for `stale-if-error` (RFC 5861 §4).
pub fn is_error_status(status: u16) -> bool {
    matches!(status, 500 | 502 | 503 | 504)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::freshness::{decide as store, Exchange};
    use crate::http::request::Method;

    const T0: u64 = 1_000_000;

    fn h<'a>(name: &'a str, value: &'a [u8]) -> Header<'a> {
        Header { name, value }
    }

    /// Stored at T0 with these response directives and an ETag.
    fn stored(cc: &'static [u8]) -> Stored {
        let resp = [h("Cache-Control", cc), h("ETag", b"\"x\"")];
        let x = Exchange {
            method: Method::Get,
            request: &[],
            status: 200,
            response: &resp,
            request_time_secs: T0,
            response_time_secs: T0,
        };
        store(&x, &Policy::default()).unwrap()
    }

    fn req(cc: &'static [u8]) -> RequestDirectives {
        RequestDirectives::from_headers(&[h("Cache-Control", cc)])
    }

    fn at(s: &Stored, r: &RequestDirectives, secs: u64) -> Reuse {
        reuse(s, r, T0 + secs, &Policy::default())
    }

    const NONE: RequestDirectives = RequestDirectives {
        cc: CacheControl {
            max_age: None,
            s_maxage: None,
            no_store: false,
            no_cache: false,
            no_cache_whole: false,
            private: false,
            private_whole: false,
            public: false,
            must_revalidate: false,
            proxy_revalidate: false,
            must_understand: false,
            no_transform: false,
            immutable: false,
            stale_while_revalidate: None,
            stale_if_error: None,
            max_stale: None,
            min_fresh: None,
            only_if_cached: false,
        },
        pragma_no_cache: false,
    };

    #[test]
    fn rfc9111_4_2_fresh_then_must_revalidate() {
        let s = stored(b"max-age=60");
        assert_eq!(at(&s, &NONE, 59), Reuse::Fresh);
        assert_eq!(at(&s, &NONE, 60), Reuse::MustRevalidate);
    }

    #[test]
    fn rfc9111_5_2_1_1_request_max_age() {
        let s = stored(b"max-age=60");
        assert_eq!(at(&s, &req(b"max-age=10"), 10), Reuse::Fresh);
        // Fresh but older than the client accepts: validate, and the
        // response is still usable on error until it expires.
        assert_eq!(
            at(&s, &req(b"max-age=10"), 11),
            Reuse::StaleIfErrorAllowed {
                until_secs: T0 + 60
            }
        );
        assert_ne!(at(&s, &req(b"max-age=0"), 1), Reuse::Fresh);
    }

    #[test]
    fn rfc9111_5_2_1_3_min_fresh() {
        let s = stored(b"max-age=60");
        assert_eq!(at(&s, &req(b"min-fresh=20"), 40), Reuse::Fresh);
        assert_ne!(at(&s, &req(b"min-fresh=20"), 41), Reuse::Fresh);
    }

    #[test]
    fn rfc9111_5_2_1_2_max_stale_with_and_without_value() {
        let s = stored(b"max-age=60");
        assert_eq!(at(&s, &req(b"max-stale=10"), 70), Reuse::StaleAllowed);
        assert_eq!(at(&s, &req(b"max-stale=10"), 71), Reuse::MustRevalidate);
        assert_eq!(at(&s, &req(b"max-stale"), 100_000), Reuse::StaleAllowed);
        // §4.2.4: must-revalidate, proxy-revalidate and s-maxage forbid it.
        for cc in [
            &b"max-age=60, must-revalidate"[..],
            b"max-age=60, proxy-revalidate",
            b"s-maxage=60",
        ] {
            let s = stored(cc);
            assert_eq!(at(&s, &req(b"max-stale"), 61), Reuse::MustRevalidate);
        }
    }

    #[test]
    fn rfc9111_5_2_1_4_request_no_cache_and_5_4_pragma() {
        let s = stored(b"max-age=60");
        assert_ne!(at(&s, &req(b"no-cache"), 1), Reuse::Fresh);
        let pragma = RequestDirectives::from_headers(&[h("Pragma", b"no-cache")]);
        assert!(pragma.no_cache());
        assert_ne!(at(&s, &pragma, 1), Reuse::Fresh);
        // Pragma is ignored when Cache-Control is present (§5.4).
        let both = RequestDirectives::from_headers(&[
            h("Pragma", b"no-cache"),
            h("Cache-Control", b"max-stale"),
        ]);
        assert!(!both.no_cache());
        assert_eq!(at(&s, &both, 1), Reuse::Fresh);
    }

    #[test]
    fn rfc9111_5_2_2_4_response_no_cache_always_validates() {
        let s = stored(b"max-age=60, no-cache, immutable");
        assert_eq!(at(&s, &NONE, 0), Reuse::MustRevalidate);
    }

    #[test]
    fn rfc9111_5_2_1_7_only_if_cached() {
        let s = stored(b"max-age=60, stale-while-revalidate=30");
        let oic = req(b"only-if-cached");
        assert!(oic.only_if_cached());
        assert_eq!(at(&s, &oic, 1), Reuse::Fresh);
        assert_eq!(at(&s, &oic, 70), Reuse::StaleAllowed);
        assert_eq!(at(&s, &oic, 100), Reuse::GatewayTimeout);
        let oic_stale = req(b"only-if-cached, max-stale");
        assert_eq!(at(&s, &oic_stale, 100), Reuse::StaleAllowed);
    }

    #[test]
    fn rfc5861_3_stale_while_revalidate() {
        let s = stored(b"max-age=60, stale-while-revalidate=30");
        assert_eq!(at(&s, &NONE, 60), Reuse::StaleWhileRevalidate);
        assert_eq!(at(&s, &NONE, 89), Reuse::StaleWhileRevalidate);
        assert_eq!(at(&s, &NONE, 90), Reuse::MustRevalidate);
        // A reload does not get a stale answer.
        assert_ne!(at(&s, &req(b"no-cache"), 61), Reuse::StaleWhileRevalidate);
        // §4.2.4: must-revalidate forbids it.
        let s = stored(b"max-age=60, stale-while-revalidate=30, must-revalidate");
        assert_eq!(at(&s, &NONE, 61), Reuse::MustRevalidate);
    }

    #[test]
    fn rfc5861_4_stale_if_error_window() {
        let s = stored(b"max-age=60, stale-if-error=100");
        assert_eq!(
            at(&s, &NONE, 70),
            Reuse::StaleIfErrorAllowed {
                until_secs: T0 + 160
            }
        );
        assert_eq!(at(&s, &NONE, 160), Reuse::MustRevalidate);
        // The request may extend the window (RFC 5861 §4, request form).
        let s = stored(b"max-age=60");
        assert_eq!(
            at(&s, &req(b"stale-if-error=50"), 70),
            Reuse::StaleIfErrorAllowed {
                until_secs: T0 + 110
            }
        );
        let s = stored(b"s-maxage=60, stale-if-error=100");
        assert_eq!(at(&s, &NONE, 70), Reuse::MustRevalidate);
        assert!(is_error_status(503) && !is_error_status(404) && !is_error_status(501));
    }

    #[test]
    fn rfc8246_immutable_ignores_reload_behind_switch() {
        let s = stored(b"max-age=60, immutable");
        assert_eq!(at(&s, &req(b"no-cache"), 1), Reuse::Fresh);
        assert_eq!(at(&s, &req(b"max-age=0"), 1), Reuse::Fresh);
        let pragma = RequestDirectives::from_headers(&[h("Pragma", b"no-cache")]);
        assert_eq!(at(&s, &pragma, 1), Reuse::Fresh);
        // Once stale, immutable does nothing.
        assert_eq!(at(&s, &req(b"no-cache"), 60), Reuse::MustRevalidate);
        let off = Policy {
            immutable_ignores_reload: false,
            ..Policy::default()
        };
        assert_ne!(reuse(&s, &req(b"no-cache"), T0 + 1, &off), Reuse::Fresh);
    }

    #[test]
    fn validator_only_response_always_validates() {
        let s = stored(b"public");
        assert_eq!(s.lifetime_secs, 0);
        assert_eq!(at(&s, &NONE, 0), Reuse::MustRevalidate);
    }
}
