//! Targeted cache control (RFC 9213): `Ringcache-Cache-Control`, then
//! `CDN-Cache-Control`, take precedence over `Cache-Control`; a targeted
//! field that does not parse is ignored; `Surrogate-Control: no-store`
//! is honoured. One scenario per requirement, each on both I/O backends
//! against a scripted counting origin.

#[macro_use]
mod common;

use common::*;

/// An origin answering every path with these fields.
fn origin(fields: &'static [(&'static str, &'static str)]) -> TestOrigin {
    TestOrigin::start(move |_| Reply::Send(response(200, fields, b"targeted")))
}

fn with_origin(io: &str, origin: TestOrigin) -> Option<(TestOrigin, Server)> {
    let server = Server::serve(io, Some(&origin.url()), 2, &[])?;
    Some((origin, server))
}

/// Two GETs: the first stored, the second a hit; one origin request.
#[track_caller]
fn assert_stored(io: &str, fields: &'static [(&'static str, &'static str)]) {
    let Some((origin, server)) = with_origin(io, origin(fields)) else {
        return;
    };
    let r = server.get("/t");
    assert_eq!(
        r.cache_status_params(),
        ["fwd=uri-miss", "fwd-status=200", "stored"],
        "{fields:?}: {}",
        r.summary()
    );
    let r = server.get("/t");
    assert!(r.is_hit(), "{fields:?}: {}", r.summary());
    assert_eq!(origin.requests(), 1, "{fields:?}");
}

/// Two GETs, neither stored; two origin requests.
#[track_caller]
fn assert_not_stored(io: &str, fields: &'static [(&'static str, &'static str)]) {
    let Some((origin, server)) = with_origin(io, origin(fields)) else {
        return;
    };
    for _ in 0..2 {
        let r = server.get("/t");
        let params = r.cache_status_params();
        assert_eq!(
            params[..2],
            ["fwd=uri-miss", "fwd-status=200"],
            "{fields:?}: {}",
            r.summary()
        );
        assert!(
            !params.iter().any(|p| p == "stored"),
            "{fields:?}: {}",
            r.summary()
        );
    }
    assert_eq!(origin.requests(), 2, "{fields:?}");
}

/// RFC 9213 §2.2: `CDN-Cache-Control` replaces `Cache-Control`, to forbid
/// storing as well as to allow it.
fn cdn_cache_control_over_cache_control(io: &str) {
    assert_not_stored(
        io,
        &[
            ("Cache-Control", "max-age=60"),
            ("CDN-Cache-Control", "no-store"),
        ],
    );
    assert_stored(
        io,
        &[
            ("Cache-Control", "no-store"),
            ("CDN-Cache-Control", "max-age=60"),
        ],
    );
}

/// RFC 9213 §2.2, §3: ringcache's own `Ringcache-Cache-Control` replaces
/// `Cache-Control`.
fn ringcache_cache_control_over_cache_control(io: &str) {
    assert_stored(
        io,
        &[
            ("Cache-Control", "no-store"),
            ("Ringcache-Cache-Control", "max-age=60"),
        ],
    );
    assert_not_stored(
        io,
        &[
            ("Cache-Control", "max-age=60"),
            ("Ringcache-Cache-Control", "private"),
        ],
    );
}

/// RFC 9213 §2.2: the most specific targeted field present wins:
/// `Ringcache-Cache-Control` over `CDN-Cache-Control`, either way round.
fn ringcache_cache_control_over_cdn(io: &str) {
    assert_stored(
        io,
        &[
            ("CDN-Cache-Control", "no-store"),
            ("Ringcache-Cache-Control", "max-age=60"),
            ("Cache-Control", "no-store"),
        ],
    );
    assert_not_stored(
        io,
        &[
            ("Ringcache-Cache-Control", "no-store"),
            ("CDN-Cache-Control", "max-age=60"),
            ("Cache-Control", "max-age=60"),
        ],
    );
}

/// RFC 9213 §2.1: a targeted field that does not parse as a structured
/// field dictionary is ignored as a whole; the next field down decides.
fn unparsable_targeted_field_ignored(io: &str) {
    // Read leniently, `no-store` would forbid storing.
    assert_stored(
        io,
        &[
            ("Cache-Control", "max-age=60"),
            ("CDN-Cache-Control", "no-store garbage"),
        ],
    );
    // Keys are lowercase in a dictionary: `Max-Age=60` does not parse, so
    // Cache-Control's no-store applies.
    assert_not_stored(
        io,
        &[
            ("Cache-Control", "no-store"),
            ("Ringcache-Cache-Control", "Max-Age=60"),
        ],
    );
    // A bad Ringcache-Cache-Control hands over to CDN-Cache-Control.
    assert_stored(
        io,
        &[
            ("Cache-Control", "no-store"),
            ("Ringcache-Cache-Control", "max-age=60,"),
            ("CDN-Cache-Control", "max-age=60"),
        ],
    );
}

/// `Surrogate-Control: no-store` (Edge Architecture 1.0) forbids storing,
/// whatever the targeted fields and Cache-Control allow.
fn surrogate_control_no_store(io: &str) {
    assert_not_stored(
        io,
        &[
            ("Cache-Control", "max-age=60"),
            ("Surrogate-Control", "no-store"),
        ],
    );
    assert_not_stored(
        io,
        &[
            ("Ringcache-Cache-Control", "max-age=60"),
            ("CDN-Cache-Control", "max-age=60"),
            ("Surrogate-Control", "no-store"),
        ],
    );
    // Other Surrogate-Control directives change nothing.
    assert_stored(
        io,
        &[
            ("Cache-Control", "max-age=60"),
            ("Surrogate-Control", "max-age=0"),
        ],
    );
}

both_io!(
    cdn_cache_control_over_cache_control,
    ringcache_cache_control_over_cache_control,
    ringcache_cache_control_over_cdn,
    unparsable_targeted_field_ignored,
    surrogate_control_no_store,
);
