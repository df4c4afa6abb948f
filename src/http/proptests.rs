//! Property tests: the parsers of untrusted field values never panic on
//! arbitrary bytes, and their outputs keep their invariants.

use httparse::Header;
use proptest::prelude::*;

use super::date::{format_http_date, parse_http_date, HTTP_DATE_SECS_MAX};
use super::range::{parse_range, resolve, ByteRange, RangeSpec, Resolved, RANGES_MAX};
use super::sf::Dictionary;
use super::{cache_control, freshness, invalidation, reuse, targeted, validation, vary};

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..200)
}

/// Bytes drawn mostly from the characters these grammars use, so the
/// parsers get past their first checks.
fn fieldish() -> impl Strategy<Value = Vec<u8>> {
    let alphabet = b"abcdefgmnorstxyz-=,;\"\\ ()?*:/.0123456789W\t".to_vec();
    prop::collection::vec(prop::sample::select(alphabet), 0..80)
}

proptest! {
    #[test]
    fn rfc9111_5_2_cache_control_parse_never_panics(a in bytes(), b in fieldish()) {
        let cc = cache_control::parse([&a[..], &b[..]]);
        prop_assert!(cc.max_age.map_or(true, |s| s <= cache_control::DELTA_SECONDS_MAX));
        let _ = cache_control::qualified_fields([&a[..], &b[..]]).count();
    }

    #[test]
    fn rfc8941_dictionary_parse_never_panics(a in bytes(), b in fieldish()) {
        for v in [&a[..], &b[..]] {
            if let Ok(d) = Dictionary::parse(v) {
                for m in d.members() {
                    prop_assert!(!m.key.is_empty());
                    let _ = m.params.count();
                }
            }
            let _ = targeted::parse_targeted([v]);
        }
    }

    #[test]
    fn rfc9110_14_range_parse_never_panics(a in bytes(), b in fieldish(), len in 0u64..1_000_000) {
        for v in [&a[..], &b[..], &[b"bytes=".as_slice(), &b].concat()[..]] {
            let mut specs = [RangeSpec::From(0); RANGES_MAX];
            if let Ok(n) = parse_range(v, &mut specs) {
                let mut out = [ByteRange::default(); RANGES_MAX];
                if let Resolved::Ranges(k) = resolve(&specs[..n], len, &mut out) {
                    prop_assert!(k >= 1 && k <= n);
                    for r in &out[..k] {
                        prop_assert!(r.first <= r.last && r.last < len);
                    }
                }
            }
        }
    }

    #[test]
    fn rfc9110_5_6_7_date_parse_never_panics(a in bytes()) {
        let _ = parse_http_date(&a);
    }

    #[test]
    fn rfc9110_5_6_7_date_format_parse_round_trip(secs in 0..=HTTP_DATE_SECS_MAX) {
        prop_assert_eq!(parse_http_date(&format_http_date(secs)), Some(secs));
    }

    #[test]
    fn decisions_never_panic_on_arbitrary_fields(
        v1 in fieldish(), v2 in fieldish(), v3 in bytes(), status in 0u16..700, now in 0u64..2_000_000_000,
    ) {
        let resp = [
            Header { name: "Cache-Control", value: &v1 },
            Header { name: "CDN-Cache-Control", value: &v2 },
            Header { name: "Expires", value: &v3 },
            Header { name: "Age", value: &v2 },
            Header { name: "ETag", value: &v1 },
            Header { name: "Vary", value: &v2 },
            Header { name: "Location", value: &v3 },
        ];
        let req = [
            Header { name: "Cache-Control", value: &v2 },
            Header { name: "If-None-Match", value: &v1 },
            Header { name: "If-Modified-Since", value: &v3 },
            Header { name: "cache-control", value: &v3 },
        ];
        let x = freshness::Exchange {
            method: super::Method::Get,
            request: &req,
            status,
            response: &resp,
            request_time_secs: now / 2,
            response_time_secs: now,
        };
        let policy = super::policy::Policy { heuristic: true, ..Default::default() };
        if let Ok(s) = freshness::decide(&x, &policy) {
            let d = reuse::RequestDirectives::from_headers(&req);
            let _ = reuse::reuse(&s, &d, now.saturating_add(status.into()), &policy);
            let _ = s.ttl_secs(u64::MAX);
        }
        let _ = validation::evaluate_preconditions(super::Method::Get, &req, &resp);
        let _ = validation::selects_stored(&resp, &req);
        let mut key = Vec::new();
        if vary::write_secondary_key(&resp, &req, &mut key).is_ok() {
            prop_assert!(vary::variant_matches(&resp, &key, &req));
        }
        let target = invalidation::Target { scheme: b"http", host: b"h", path: b"/p/q" };
        invalidation::for_each_invalidated(super::Method::Post, 200, &target, &resp, |_, _| {});
    }
}
