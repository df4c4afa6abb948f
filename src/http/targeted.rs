//! Targeted cache control (RFC 9213) and which directives ringcache obeys.
//!
//! ringcache's target list, most specific first:
//! `Ringcache-Cache-Control`, then `CDN-Cache-Control` (RFC 9213 §3).
//! The first of them with a valid, non-empty value decides the caching
//! policy, and `Cache-Control` and `Expires` are then ignored (§2.2);
//! otherwise `Cache-Control` (and `Expires`) apply as usual.
//!
//! Targeted fields are structured-field dictionaries (§2.1, RFC 8941):
//! keys are lowercase, booleans are bare keys, delta-seconds are
//! Integers, parameters are ignored. A value of the wrong type (such as
//! `max-age=1.5` or `max-age="60"`) drops that directive only; a field
//! that fails to parse is ignored as a whole (§2.1).
//!
//! `Surrogate-Control: no-store` (Edge Architecture 1.0) is honoured too:
//! such a response is not stored whatever the other fields say.

use httparse::Header;

use super::cache_control::{self, CacheControl, DELTA_SECONDS_MAX};
use super::headers::{list_elements, trim_ows, values};
use super::sf::{BareItem, Dictionary, Value};

/// ringcache's own targeted field (RFC 9213 §3 allows one per cache).
pub const RINGCACHE_CACHE_CONTROL: &[u8] = b"ringcache-cache-control";
/// The CDN class field (RFC 9213 §3).
pub const CDN_CACHE_CONTROL: &[u8] = b"cdn-cache-control";

/// Where the effective directives came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    RingcacheCacheControl,
    CdnCacheControl,
    CacheControl,
}

/// The directives ringcache obeys for one response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Effective {
    pub cc: CacheControl,
    pub source: Source,
    /// `Surrogate-Control: no-store`.
    pub surrogate_no_store: bool,
}

impl Effective {
    /// A targeted field decides: `Expires` is to be ignored (RFC 9213 §2.2).
    pub fn ignores_expires(&self) -> bool {
        self.source != Source::CacheControl
    }
}

/// The effective response directives for ringcache.
pub fn effective(headers: &[Header<'_>]) -> Effective {
    let surrogate_no_store = values(headers, b"surrogate-control")
        .flat_map(list_elements)
        .any(|e| {
            let name = e.split(|&b| b == b';' || b == b'=').next().unwrap_or(e);
            trim_ows(name).eq_ignore_ascii_case(b"no-store")
        });
    let targeted = [
        (RINGCACHE_CACHE_CONTROL, Source::RingcacheCacheControl),
        (CDN_CACHE_CONTROL, Source::CdnCacheControl),
    ];
    for (name, source) in targeted {
        if let Some(cc) = parse_targeted(values(headers, name)) {
            return Effective {
                cc,
                source,
                surrogate_no_store,
            };
        }
    }
    Effective {
        cc: cache_control::from_headers(headers),
        source: Source::CacheControl,
        surrogate_no_store,
    }
}

/// The directives of a targeted field's lines; `None` when the field is
/// absent, empty or invalid on any line (RFC 9213 §2.1, RFC 8941 §4.2:
/// lines are combined before parsing, so one bad line spoils the field).
pub fn parse_targeted<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> Option<CacheControl> {
    let mut cc = CacheControl::default();
    let mut any = false;
    for line in lines {
        let dict = Dictionary::parse(line).ok()?;
        for m in dict.members() {
            any = true;
            apply(&mut cc, m.key, m.value);
        }
    }
    any.then_some(cc)
}

/// Apply one member; assignment, so the last duplicate wins (RFC 8941 §3.2).
fn apply(cc: &mut CacheControl, key: &[u8], value: Value<'_>) {
    let seconds = match value {
        Value::Item(BareItem::Integer(n)) if n >= 0 => Some((n as u64).min(DELTA_SECONDS_MAX)),
        _ => None,
    };
    let flag = match value {
        Value::Item(BareItem::Boolean(b)) => Some(b),
        _ => None,
    };
    match key {
        b"max-age" => cc.max_age = seconds.or(cc.max_age),
        b"s-maxage" => cc.s_maxage = seconds.or(cc.s_maxage),
        b"stale-while-revalidate" => {
            cc.stale_while_revalidate = seconds.or(cc.stale_while_revalidate)
        }
        b"stale-if-error" => cc.stale_if_error = seconds.or(cc.stale_if_error),
        // Field-name arguments are read as the unqualified directive:
        // the conservative reading, see the module docs of freshness.
        b"no-cache" => {
            let on = flag.unwrap_or(true);
            cc.no_cache = on;
            cc.no_cache_whole = on;
        }
        b"private" => {
            let on = flag.unwrap_or(true);
            cc.private = on;
            cc.private_whole = on;
        }
        _ => {
            let Some(on) = flag else { return };
            match key {
                b"no-store" => cc.no_store = on,
                b"public" => cc.public = on,
                b"must-revalidate" => cc.must_revalidate = on,
                b"proxy-revalidate" => cc.proxy_revalidate = on,
                b"must-understand" => cc.must_understand = on,
                b"no-transform" => cc.no_transform = on,
                b"immutable" => cc.immutable = on,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<'a>(name: &'a str, value: &'a [u8]) -> Header<'a> {
        Header { name, value }
    }

    #[test]
    fn rfc9213_2_2_precedence_ringcache_then_cdn_then_cache_control() {
        let hs = [
            h("Cache-Control", b"max-age=10"),
            h("CDN-Cache-Control", b"max-age=20"),
            h("Ringcache-Cache-Control", b"max-age=30"),
        ];
        let e = effective(&hs);
        assert_eq!(
            (e.cc.max_age, e.source),
            (Some(30), Source::RingcacheCacheControl)
        );
        assert!(e.ignores_expires());
        let e = effective(&hs[..2]);
        assert_eq!(
            (e.cc.max_age, e.source),
            (Some(20), Source::CdnCacheControl)
        );
        let e = effective(&hs[..1]);
        assert_eq!((e.cc.max_age, e.source), (Some(10), Source::CacheControl));
        assert!(!e.ignores_expires());
    }

    #[test]
    fn rfc9213_2_2_targeted_replaces_cache_control_entirely() {
        // Cache-Control: no-store is for other caches; the CDN field rules.
        let hs = [
            h("Cache-Control", b"no-store"),
            h("CDN-Cache-Control", b"max-age=60"),
        ];
        let e = effective(&hs);
        assert!(!e.cc.no_store);
        assert_eq!(e.cc.max_age, Some(60));
        // §3.1: a field holding only an unknown directive is still valid
        // and non-empty, so Cache-Control is ignored.
        let hs = [
            h("Cache-Control", b"max-age=60"),
            h("CDN-Cache-Control", b"none"),
        ];
        let e = effective(&hs);
        assert_eq!((e.cc.max_age, e.source), (None, Source::CdnCacheControl));
    }

    #[test]
    fn rfc9213_2_1_invalid_or_empty_field_is_ignored() {
        for bad in [
            &b""[..],
            b"  ",
            b"Max-Age=60",
            b"max-age=60,",
            b"max-age=60 no-store",
        ] {
            let hs = [
                h("Cache-Control", b"max-age=5"),
                h("Ringcache-Cache-Control", bad),
                h("CDN-Cache-Control", b"max-age=7"),
            ];
            let e = effective(&hs);
            assert_eq!(e.cc.max_age, Some(7), "{:?}", String::from_utf8_lossy(bad));
        }
        // One bad line spoils the whole field.
        let hs = [
            h("CDN-Cache-Control", b"max-age=7"),
            h("CDN-Cache-Control", b"no-store="),
            h("Cache-Control", b"max-age=5"),
        ];
        assert_eq!(effective(&hs).source, Source::CacheControl);
    }

    #[test]
    fn rfc9213_2_1_value_types() {
        let cc = |v: &'static [u8]| parse_targeted([v]).unwrap();
        // Wrong types drop the directive only.
        assert_eq!(cc(b"max-age=1.5, public").max_age, None);
        assert_eq!(cc(b"max-age=\"60\"").max_age, None);
        assert_eq!(cc(b"max-age=-1").max_age, None);
        assert_eq!(
            cc(b"max-age=999999999999999").max_age,
            Some(DELTA_SECONDS_MAX)
        );
        let c = cc(b"no-store, must-revalidate;x=1, public=?0, immutable=?1, stale-if-error=30");
        assert!(c.no_store && c.must_revalidate && !c.public && c.immutable);
        assert_eq!(c.stale_if_error, Some(30));
        // RFC 8941 §3.2: the last duplicate wins.
        assert_eq!(cc(b"max-age=5, max-age=9").max_age, Some(9));
        assert!(!cc(b"no-store, no-store=?0").no_store);
        // Qualified private / no-cache read as unqualified.
        let c = cc(b"private=(\"set-cookie\"), no-cache=\"x\"");
        assert!(c.private_whole && c.no_cache_whole);
        // Lines combine.
        let c = parse_targeted([&b"max-age=5"[..], b"s-maxage=6"]).unwrap();
        assert_eq!((c.max_age, c.s_maxage), (Some(5), Some(6)));
        assert_eq!(parse_targeted(std::iter::empty()), None);
    }

    #[test]
    fn surrogate_control_no_store() {
        let e = effective(&[h("Surrogate-Control", b"max-age=5, No-Store")]);
        assert!(e.surrogate_no_store);
        let e = effective(&[h("Surrogate-Control", b"no-store;dca")]);
        assert!(e.surrogate_no_store);
        let e = effective(&[h("Surrogate-Control", b"max-age=5")]);
        assert!(!e.surrogate_no_store);
    }
}
