//! `Cache-Control` directives (RFC 9111 §5.2), requests and responses alike.
//!
//! All field lines are joined as one comma list; directive names are
//! case-insensitive; arguments may be tokens or quoted strings (commas
//! inside quotes do not split). Unknown directives are ignored.
//!
//! When a directive is repeated or its argument is invalid, the result errs
//! toward serving less from cache: an invalid or conflicting `max-age` or
//! `s-maxage` means 0 (stale, RFC 9111 §4.2.1); repeated staleness
//! allowances keep the smallest; repeated `min-fresh` keeps the largest.

use httparse::Header;

use super::headers::{list_elements, trim_ows, values};

/// delta-seconds saturate here (RFC 9111 §1.2.2).
pub const DELTA_SECONDS_MAX: u64 = 1 << 31;

/// The directives ringcache acts on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheControl {
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub no_store: bool,
    /// Also set for the qualified form `no-cache="field"`.
    pub no_cache: bool,
    /// The unqualified `no-cache` was present (RFC 9111 §5.2.2.4): every
    /// reuse needs validation. `no_cache && !no_cache_whole` means only
    /// the qualified form: the listed fields are stripped.
    pub no_cache_whole: bool,
    /// Also set for the qualified form `private="field"`.
    pub private: bool,
    /// The unqualified `private` was present (RFC 9111 §5.2.2.7): a
    /// shared cache must not store the response at all.
    pub private_whole: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub must_understand: bool,
    pub no_transform: bool,
    pub immutable: bool,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
    /// `Some(None)`: `max-stale` without a limit, any staleness accepted.
    pub max_stale: Option<Option<u64>>,
    pub min_fresh: Option<u64>,
    pub only_if_cached: bool,
}

/// Parse the values of every `Cache-Control` field line, in order.
pub fn parse<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> CacheControl {
    let mut cc = CacheControl::default();
    for element in values.into_iter().flat_map(list_elements) {
        let (name, arg) = match element.iter().position(|&b| b == b'=') {
            Some(i) => (trim_ows(&element[..i]), Some(trim_ows(&element[i + 1..]))),
            None => (element, None),
        };
        apply(&mut cc, name, arg);
    }
    cc
}

/// All Cache-Control lines of a header list.
pub fn from_headers(headers: &[Header<'_>]) -> CacheControl {
    parse(values(headers, b"cache-control"))
}

fn apply(cc: &mut CacheControl, name: &[u8], arg: Option<&[u8]>) {
    let is = |known: &[u8]| name.eq_ignore_ascii_case(known);
    let seconds = arg.and_then(delta_seconds);
    if is(b"max-age") {
        cc.max_age = Some(merge_exact(cc.max_age, seconds.unwrap_or(0)));
    } else if is(b"s-maxage") {
        cc.s_maxage = Some(merge_exact(cc.s_maxage, seconds.unwrap_or(0)));
    } else if is(b"no-store") {
        cc.no_store = true;
    } else if is(b"no-cache") {
        cc.no_cache = true;
        cc.no_cache_whole |= !is_qualified(arg);
    } else if is(b"private") {
        cc.private = true;
        cc.private_whole |= !is_qualified(arg);
    } else if is(b"public") {
        cc.public = true;
    } else if is(b"must-revalidate") {
        cc.must_revalidate = true;
    } else if is(b"proxy-revalidate") {
        cc.proxy_revalidate = true;
    } else if is(b"must-understand") {
        cc.must_understand = true;
    } else if is(b"no-transform") {
        cc.no_transform = true;
    } else if is(b"immutable") {
        cc.immutable = true;
    } else if is(b"only-if-cached") {
        cc.only_if_cached = true;
    } else if is(b"stale-while-revalidate") {
        cc.stale_while_revalidate = merge_min(cc.stale_while_revalidate, seconds);
    } else if is(b"stale-if-error") {
        cc.stale_if_error = merge_min(cc.stale_if_error, seconds);
    } else if is(b"min-fresh") {
        cc.min_fresh = match (cc.min_fresh, seconds) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    } else if is(b"max-stale") {
        let limit = match arg {
            None => None,
            Some(a) => match delta_seconds(a) {
                Some(s) => Some(s),
                None => return, // invalid limit: ignore the directive
            },
        };
        cc.max_stale = Some(match (cc.max_stale, limit) {
            (Some(Some(a)), Some(b)) => Some(a.min(b)),
            (Some(Some(a)), None) => Some(a),
            (_, limit) => limit,
        });
    }
}

/// `private="f"` / `no-cache="f"` name at least one field. An empty or
/// invalid argument (`private=""`, `private=`) names none: such a
/// directive is read as unqualified, which serves less from cache.
fn is_qualified(arg: Option<&[u8]>) -> bool {
    arg.is_some_and(|a| field_names(a).next().is_some())
}

/// The field names of a qualified directive's argument: a quoted string
/// holding a comma list (RFC 9111 §5.2.2.4, §5.2.2.7), or a single token
/// (accepted as the RFC asks recipients to).
fn field_names(arg: &[u8]) -> impl Iterator<Item = &[u8]> {
    let inner = match arg {
        [b'"', inner @ .., b'"'] => inner,
        _ => arg,
    };
    list_elements(inner).filter(|n| n.iter().all(|&b| super::sf::is_tchar(b)))
}

/// The fields named by `private="..."` and `no-cache="..."` in these
/// `Cache-Control` lines: ringcache stores the response without them
/// (RFC 9111 §5.2.2.4, §5.2.2.7), so they are never served from cache.
pub fn qualified_fields<'a>(
    lines: impl IntoIterator<Item = &'a [u8]>,
) -> impl Iterator<Item = &'a [u8]> {
    lines
        .into_iter()
        .flat_map(list_elements)
        .filter_map(|element| {
            let i = element.iter().position(|&b| b == b'=')?;
            let name = trim_ows(&element[..i]);
            let qualifies =
                name.eq_ignore_ascii_case(b"private") || name.eq_ignore_ascii_case(b"no-cache");
            qualifies.then(|| trim_ows(&element[i + 1..]))
        })
        .flat_map(field_names)
}

/// Is `field` named by a qualified `private` / `no-cache` in the
/// response's `Cache-Control`? The proxy asks this for each field while it
/// copies a response head into the store.
pub fn is_qualified_field(headers: &[Header<'_>], field: &[u8]) -> bool {
    qualified_fields(values(headers, b"cache-control")).any(|n| n.eq_ignore_ascii_case(field))
}

/// A repeated directive must repeat its value; otherwise 0.
fn merge_exact(prev: Option<u64>, next: u64) -> u64 {
    match prev {
        Some(p) if p != next => 0,
        _ => next,
    }
}

fn merge_min(prev: Option<u64>, next: Option<u64>) -> Option<u64> {
    match (prev, next) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// delta-seconds = 1*DIGIT, also accepted as a quoted string; saturates
/// at [`DELTA_SECONDS_MAX`].
pub fn delta_seconds(arg: &[u8]) -> Option<u64> {
    let digits = match arg {
        [b'"', inner @ .., b'"'] => inner,
        _ => arg,
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0u64, |n, &d| {
        (n * 10 + u64::from(d - b'0')).min(DELTA_SECONDS_MAX)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(lines: &[&'static [u8]]) -> CacheControl {
        parse(lines.iter().copied())
    }

    #[test]
    fn empty_and_unknown() {
        assert_eq!(cc(&[]), CacheControl::default());
        assert_eq!(cc(&[b""]), CacheControl::default());
        assert_eq!(cc(&[b"x-ext=1, foo, ,"]), CacheControl::default());
    }

    #[test]
    fn boolean_directives() {
        let c = cc(&[
            b"NO-STORE, No-Cache, private, public",
            b"must-revalidate,proxy-revalidate , must-understand",
            b"no-transform, immutable, only-if-cached",
        ]);
        assert!(c.no_store && c.no_cache && c.private && c.public);
        assert!(c.must_revalidate && c.proxy_revalidate && c.must_understand);
        assert!(c.no_transform && c.immutable && c.only_if_cached);
    }

    #[test]
    fn qualified_forms_set_flags() {
        let c = cc(&[b"private=\"set-cookie, x-user\", no-cache=\"a\", max-age=9"]);
        assert!(c.private && c.no_cache);
        assert_eq!(c.max_age, Some(9));
        let c = cc(&[b"no-cache=set-cookie"]);
        assert!(c.no_cache);
    }

    #[test]
    fn ages() {
        let c = cc(&[
            b"max-age=60, s-maxage=\"120\"",
            b"stale-while-revalidate=30, stale-if-error=600",
        ]);
        assert_eq!(c.max_age, Some(60));
        assert_eq!(c.s_maxage, Some(120));
        assert_eq!(c.stale_while_revalidate, Some(30));
        assert_eq!(c.stale_if_error, Some(600));
        assert_eq!(cc(&[b"Max-Age=0"]).max_age, Some(0));
        assert_eq!(cc(&[b"max-age = 7"]).max_age, Some(7));
    }

    #[test]
    fn invalid_max_age_is_stale() {
        for v in [
            &b"max-age=abc"[..],
            b"max-age",
            b"max-age=",
            b"max-age=-1",
            b"max-age=1.5",
            b"max-age=\"\"",
        ] {
            assert_eq!(
                cc(&[v]).max_age,
                Some(0),
                "{:?}",
                String::from_utf8_lossy(v)
            );
        }
        assert_eq!(cc(&[b"s-maxage=x"]).s_maxage, Some(0));
        // Invalid arguments of other directives are ignored.
        assert_eq!(cc(&[b"stale-if-error=x"]).stale_if_error, None);
        assert_eq!(cc(&[b"min-fresh"]).min_fresh, None);
    }

    #[test]
    fn duplicates() {
        assert_eq!(cc(&[b"max-age=5, max-age=5"]).max_age, Some(5));
        assert_eq!(cc(&[b"max-age=5", b"max-age=6"]).max_age, Some(0));
        assert_eq!(cc(&[b"max-age=5, max-age=6, max-age=5"]).max_age, Some(0));
        assert_eq!(cc(&[b"s-maxage=5, s-maxage=1"]).s_maxage, Some(0));
        assert_eq!(
            cc(&[b"stale-while-revalidate=9, stale-while-revalidate=4"]).stale_while_revalidate,
            Some(4)
        );
        assert_eq!(cc(&[b"min-fresh=9, min-fresh=4"]).min_fresh, Some(9));
    }

    #[test]
    fn saturation() {
        assert_eq!(
            cc(&[b"max-age=2147483648"]).max_age,
            Some(DELTA_SECONDS_MAX)
        );
        assert_eq!(
            cc(&[b"max-age=99999999999999999999999999"]).max_age,
            Some(DELTA_SECONDS_MAX)
        );
        assert_eq!(
            cc(&[b"max-age=2147483647"]).max_age,
            Some(DELTA_SECONDS_MAX - 1)
        );
    }

    #[test]
    fn request_directives() {
        assert_eq!(cc(&[b"max-stale"]).max_stale, Some(None));
        assert_eq!(cc(&[b"max-stale=30"]).max_stale, Some(Some(30)));
        assert_eq!(cc(&[b"max-stale, max-stale=30"]).max_stale, Some(Some(30)));
        assert_eq!(cc(&[b"max-stale=30, max-stale"]).max_stale, Some(Some(30)));
        assert_eq!(
            cc(&[b"max-stale=30, max-stale=10"]).max_stale,
            Some(Some(10))
        );
        assert_eq!(cc(&[b"max-stale=x"]).max_stale, None);
        assert_eq!(cc(&[b"min-fresh=20"]).min_fresh, Some(20));
    }

    #[test]
    fn rfc9111_5_2_2_4_and_5_2_2_7_qualified_forms() {
        let c = cc(&[b"private=\"Set-Cookie, X-User\", no-cache=x-a"]);
        assert!(c.private && !c.private_whole && c.no_cache && !c.no_cache_whole);
        let c = cc(&[b"private=\"x\", private"]);
        assert!(c.private_whole);
        let c = cc(&[b"no-cache, no-cache=\"x\""]);
        assert!(c.no_cache_whole);
        // An argument naming no field reads as the unqualified directive.
        assert!(cc(&[b"private=\"\""]).private_whole);
        assert!(cc(&[b"no-cache="]).no_cache_whole);
        let lines: [&[u8]; 2] = [
            b"max-age=5, private=\"Set-Cookie, X-User\"",
            b"no-cache=\"x-a\", public, no-cache=\"bad name\"",
        ];
        let names: Vec<_> = qualified_fields(lines).collect();
        assert_eq!(names, [&b"Set-Cookie"[..], b"X-User", b"x-a"]);
        let hs = [Header {
            name: "Cache-Control",
            value: lines[0],
        }];
        assert!(is_qualified_field(&hs, b"set-cookie"));
        assert!(is_qualified_field(&hs, b"X-USER"));
        assert!(!is_qualified_field(&hs, b"x-a"));
    }

    #[test]
    fn quoted_commas_do_not_split() {
        let c = cc(&[b"no-cache=\"a, max-age=5\", public"]);
        assert!(c.no_cache && c.public);
        assert_eq!(c.max_age, None);
    }

    #[test]
    fn from_header_list() {
        let hs = [
            Header {
                name: "Cache-Control",
                value: b"public",
            },
            Header {
                name: "X",
                value: b"no-store",
            },
            Header {
                name: "cache-control",
                value: b"max-age=3",
            },
        ];
        let c = from_headers(&hs);
        assert!(c.public && !c.no_store);
        assert_eq!(c.max_age, Some(3));
    }
}
