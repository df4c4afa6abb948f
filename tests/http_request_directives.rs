//! Request directives (RFC 9111 §5.2.1) and `Pragma` (§5.4): what a
//! client's `Cache-Control` lets the store answer, one scenario per
//! requirement. Each scenario runs on both I/O backends against a
//! scripted counting origin.
//!
//! Stale objects are made without waiting: the origin sends an `Age`
//! beyond the freshness lifetime, so the object is stored already stale
//! (RFC 9111 §4.2.3).

#[macro_use]
mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

fn with_origin(io: &str, origin: TestOrigin) -> Option<(TestOrigin, Server)> {
    let server = Server::serve(io, Some(&origin.url()), 2, &[])?;
    Some((origin, server))
}

/// `GET path` with extra header lines (`fields`, CRLF-separated), on a
/// fresh connection.
fn get_with(server: &Server, path: &str, fields: &str) -> Response {
    let mut c = server.client();
    c.send(format!("GET {path} HTTP/1.1\r\nHost: ringcache.test\r\n{fields}\r\n\r\n").as_bytes());
    c.read_response()
}

/// An origin whose first answer is stored already stale (`max-age=1`,
/// `Age: 10`, body `old`) and whose later answers are `new`.
fn stale_then_new() -> TestOrigin {
    let seen = Arc::new(AtomicU64::new(0));
    TestOrigin::start(move |_| {
        let body: &[u8] = if seen.fetch_add(1, Ordering::SeqCst) == 0 {
            b"old"
        } else {
            b"new"
        };
        Reply::Send(response(
            200,
            &[("Cache-Control", "max-age=1"), ("Age", "10")],
            body,
        ))
    })
}

#[track_caller]
fn assert_params(r: &Response, want: &[&str]) {
    assert_eq!(r.cache_status_params(), want, "{}", r.summary());
}

#[track_caller]
fn assert_hit(r: &Response) {
    assert_eq!(r.status, 200, "{}", r.summary());
    assert!(r.is_hit(), "{}", r.summary());
}

#[track_caller]
fn ttl(r: &Response) -> i64 {
    r.cache_status_params()
        .iter()
        .find_map(|p| p.strip_prefix("ttl=").map(str::to_string))
        .unwrap_or_else(|| panic!("no ttl: {}", r.summary()))
        .parse()
        .unwrap()
}

/// §5.2.1.1 max-age: a stored response older than the client accepts is
/// not used (`fwd=request`); one young enough is.
fn max_age(io: &str) {
    let Some((origin, server)) = with_origin(io, TestOrigin::fixed("max-age=60", "fresh")) else {
        return;
    };
    assert_params(
        &server.get("/a"),
        &["fwd=uri-miss", "fwd-status=200", "stored"],
    );
    // Let the stored response age past zero seconds.
    std::thread::sleep(Duration::from_millis(1100));
    assert_hit(&get_with(&server, "/a", "Cache-Control: max-age=60"));
    assert_eq!(origin.requests(), 1);
    let r = get_with(&server, "/a", "Cache-Control: max-age=0");
    assert_params(&r, &["fwd=request", "fwd-status=200", "stored"]);
    assert_eq!(origin.requests(), 2);
}

/// §5.2.1.2 max-stale with a value: a stale response is accepted up to
/// that staleness (a hit with a negative ttl), beyond it the origin is
/// asked (`fwd=stale`).
fn max_stale_with_value(io: &str) {
    let Some((origin, server)) = with_origin(io, stale_then_new()) else {
        return;
    };
    assert_eq!(server.get("/m").body, b"old");
    let r = get_with(&server, "/m", "Cache-Control: max-stale=60");
    assert_hit(&r);
    assert_eq!(r.body, b"old");
    assert!(ttl(&r) <= -9, "{}", r.summary());
    assert_eq!(origin.requests(), 1);
    // Staleness 9 s or more is beyond max-stale=2.
    let r = get_with(&server, "/m", "Cache-Control: max-stale=2");
    assert_eq!(r.cache_status_params()[0], "fwd=stale", "{}", r.summary());
    assert_eq!(r.body, b"new");
    assert_eq!(origin.requests(), 2);
}

/// §5.2.1.2 max-stale without a value: a stale response of any staleness
/// is accepted.
fn max_stale_without_value(io: &str) {
    let Some((origin, server)) = with_origin(io, stale_then_new()) else {
        return;
    };
    server.get("/m");
    let r = get_with(&server, "/m", "Cache-Control: max-stale");
    assert_hit(&r);
    assert_eq!(r.body, b"old");
    assert!(ttl(&r) <= -9, "{}", r.summary());
    // Without the directive the stale response is not served.
    let r = server.get("/m");
    assert_eq!(r.cache_status_params()[0], "fwd=stale", "{}", r.summary());
    assert_eq!(origin.requests(), 2);
}

/// §5.2.1.3 min-fresh: a fresh response that will not stay fresh that
/// long is not used (`fwd=request`); one that will, is.
fn min_fresh(io: &str) {
    let Some((origin, server)) = with_origin(io, TestOrigin::fixed("max-age=60", "fresh")) else {
        return;
    };
    server.get("/f");
    assert_hit(&get_with(&server, "/f", "Cache-Control: min-fresh=10"));
    assert_eq!(origin.requests(), 1);
    let r = get_with(&server, "/f", "Cache-Control: min-fresh=120");
    assert_eq!(r.cache_status_params()[0], "fwd=request", "{}", r.summary());
    assert_eq!(origin.requests(), 2);
}

/// §5.2.1.4 no-cache: a fresh stored response is not used without going
/// to the origin (`fwd=request`); the answer is stored.
fn no_cache(io: &str) {
    let Some((origin, server)) = with_origin(io, TestOrigin::fixed("max-age=60", "fresh")) else {
        return;
    };
    server.get("/n");
    let r = get_with(&server, "/n", "Cache-Control: no-cache");
    assert_params(&r, &["fwd=request", "fwd-status=200", "stored"]);
    assert_eq!(origin.requests(), 2);
    assert_hit(&server.get("/n"));
    assert_eq!(origin.requests(), 2);
}

/// §5.2.1.5 no-store: the answer to such a request is not stored; the
/// next request for the URI goes to the origin again.
fn request_no_store(io: &str) {
    let Some((origin, server)) = with_origin(io, TestOrigin::fixed("max-age=60", "fresh")) else {
        return;
    };
    let r = get_with(&server, "/s", "Cache-Control: no-store");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_params(
        &r,
        &["fwd=uri-miss", "fwd-status=200", "detail=request-no-store"],
    );
    let r = server.get("/s");
    assert_params(&r, &["fwd=uri-miss", "fwd-status=200", "stored"]);
    assert_eq!(origin.requests(), 2);
}

/// §5.2.1.7 only-if-cached: nothing stored gives 504 without asking the
/// origin; a stored fresh response is answered.
fn only_if_cached(io: &str) {
    let Some((origin, server)) = with_origin(io, TestOrigin::fixed("max-age=60", "fresh")) else {
        return;
    };
    let r = get_with(&server, "/o", "Cache-Control: only-if-cached");
    assert_eq!(r.status, 504, "{}", r.summary());
    assert_eq!(origin.requests(), 0);
    server.get("/o");
    assert_hit(&get_with(&server, "/o", "Cache-Control: only-if-cached"));
    assert_eq!(origin.requests(), 1);
}

/// §5.4: `Pragma: no-cache` without Cache-Control acts as `no-cache`.
fn pragma_no_cache(io: &str) {
    let Some((origin, server)) = with_origin(io, TestOrigin::fixed("max-age=60", "fresh")) else {
        return;
    };
    server.get("/p");
    let r = get_with(&server, "/p", "Pragma: no-cache");
    assert_params(&r, &["fwd=request", "fwd-status=200", "stored"]);
    assert_eq!(origin.requests(), 2);
}

/// §5.4: `Pragma` is ignored when the request has Cache-Control.
fn pragma_ignored_with_cache_control(io: &str) {
    let Some((origin, server)) = with_origin(io, TestOrigin::fixed("max-age=60", "fresh")) else {
        return;
    };
    server.get("/p");
    assert_hit(&get_with(
        &server,
        "/p",
        "Cache-Control: max-age=60\r\nPragma: no-cache",
    ));
    assert_hit(&get_with(
        &server,
        "/p",
        "Pragma: no-cache\r\nCache-Control: min-fresh=1",
    ));
    assert_eq!(origin.requests(), 1);
}

both_io!(
    max_age,
    max_stale_with_value,
    max_stale_without_value,
    min_fresh,
    no_cache,
    request_no_store,
    only_if_cached,
    pragma_no_cache,
    pragma_ignored_with_cache_control,
);
