//! Serving stale responses: only when allowed (RFC 9111 §4.2.4), the
//! response directives that forbid it (§5.2.2.2, §5.2.2.8, §5.2.2.10),
//! stale-while-revalidate and stale-if-error (RFC 5861). The request
//! directives max-stale and min-fresh are in http_request_directives.rs.
//! Each scenario runs on both I/O backends against a scripted counting
//! origin.
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

fn with_origin(io: &str, workers: usize, origin: TestOrigin) -> Option<(TestOrigin, Server)> {
    let server = Server::serve(io, Some(&origin.url()), workers, &[])?;
    Some((origin, server))
}

fn get_with(server: &Server, path: &str, fields: &str) -> Response {
    let mut c = server.client();
    c.send(format!("GET {path} HTTP/1.1\r\nHost: ringcache.test\r\n{fields}\r\n\r\n").as_bytes());
    c.read_response()
}

/// An origin whose first answer to each path is `first` and every later
/// one `later(n)` (n counts from 1).
fn scripted(
    first: Vec<u8>,
    later: impl Fn(u64, &Request) -> Reply + Send + Sync + 'static,
) -> TestOrigin {
    let seen = Arc::new(AtomicU64::new(0));
    TestOrigin::start(move |req| {
        let n = seen.fetch_add(1, Ordering::SeqCst);
        if n == 0 {
            Reply::Send(first.clone())
        } else {
            later(n, req)
        }
    })
}

fn ok(cc: &str, age: &str, body: &[u8]) -> Vec<u8> {
    response(200, &[("Cache-Control", cc), ("Age", age)], body)
}

#[track_caller]
fn param(r: &Response, name: &str) -> Option<String> {
    r.cache_status_params()
        .into_iter()
        .find_map(|p| p.strip_prefix(&format!("{name}=")).map(str::to_string))
}

#[track_caller]
fn ttl(r: &Response) -> i64 {
    param(r, "ttl")
        .unwrap_or_else(|| panic!("no ttl: {}", r.summary()))
        .parse()
        .unwrap()
}

/// §4.2.4: a stale response is not served unless something allows it; it
/// is fetched again (no validators: unconditionally) and replaced.
fn stale_not_served_by_default(io: &str) {
    let origin = scripted(ok("max-age=1", "10", b"old"), |_, _| {
        Reply::Send(response(200, &[("Cache-Control", "max-age=60")], b"new"))
    });
    let Some((origin, server)) = with_origin(io, 2, origin) else {
        return;
    };
    let r = server.get("/s");
    assert_eq!(r.body, b"old");
    let r = server.get("/s");
    assert_eq!(r.body, b"new", "{}", r.summary());
    assert_eq!(
        r.cache_status_params(),
        ["fwd=stale", "fwd-status=200", "stored"],
        "{}",
        r.summary()
    );
    assert!(origin
        .last_request()
        .unwrap()
        .header("if-none-match")
        .is_none());
    assert!(server.get("/s").is_hit());
    assert_eq!(origin.requests(), 2);
}

/// §4.2.4, §5.2.2.2, §5.2.2.8, §5.2.2.10: must-revalidate,
/// proxy-revalidate and s-maxage forbid serving stale, even to a client
/// that asks for it with max-stale or only-if-cached; and an origin that
/// cannot be reached then gives 504, never the stale response.
fn no_stale_directives(io: &str) {
    let origin = TestOrigin::start(|req| match req.path() {
        "/must" => Reply::Send(ok("max-age=1, must-revalidate", "10", b"m")),
        "/proxy" => Reply::Send(ok("max-age=1, proxy-revalidate", "10", b"p")),
        "/smax" => Reply::Send(ok("s-maxage=1, stale-if-error=600", "10", b"s")),
        _ => Reply::Send(response(404, &[], b"")),
    });
    let Some((origin, server)) = with_origin(io, 2, origin) else {
        return;
    };
    for path in ["/must", "/proxy", "/smax"] {
        server.get(path);
        let before = origin.requests();
        let r = get_with(&server, path, "Cache-Control: max-stale");
        assert!(!r.is_hit(), "{path}: {}", r.summary());
        assert_eq!(
            origin.requests(),
            before + 1,
            "{path}: the origin was asked"
        );
        let r = get_with(&server, path, "Cache-Control: only-if-cached, max-stale");
        assert_eq!(r.status, 504, "{path}: {}", r.summary());
    }
    // The origin goes away: must-revalidate gives 504 (§5.2.2.2).
    drop(origin);
    let r = server.get("/must");
    assert_eq!(r.status, 504, "{}", r.summary());
}

/// RFC 5861 §3: within stale-while-revalidate, the stale response is
/// answered at once (a hit, negative ttl, detail=stale-while-revalidate)
/// and the key is refreshed in the background, once for all clients and
/// workers, conditionally since the response has an ETag; the refreshed
/// object is then fresh.
fn stale_while_revalidate(io: &str) {
    let first = response(
        200,
        &[
            ("Cache-Control", "max-age=1, stale-while-revalidate=600"),
            ("Age", "10"),
            ("ETag", "\"v1\""),
        ],
        b"swr body",
    );
    let origin = scripted(first, |_, req| {
        let inm = req.header("if-none-match").unwrap_or("").to_string();
        let reply = if inm == "\"v1\"" {
            response(
                304,
                &[("Cache-Control", "max-age=600"), ("ETag", "\"v1\"")],
                b"",
            )
        } else {
            response(500, &[], b"refresh was not conditional")
        };
        // Slow enough that every client below meets the stale object.
        Reply::After(Duration::from_millis(300), Box::new(Reply::Send(reply)))
    });
    let Some((origin, server)) = with_origin(io, 2, origin) else {
        return;
    };
    server.get("/swr");
    for r in http_get_concurrently(server.addr, "/swr", 16) {
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(r.body, b"swr body");
        assert!(r.is_hit(), "answered at once: {}", r.summary());
    }
    assert!(origin.wait_requests(2, Duration::from_secs(5)));
    assert!(wait_until(Duration::from_secs(5), || {
        let r = server.get("/swr");
        r.is_hit() && param(&r, "detail").is_none() && ttl(&r) > 0
    }));
    assert_eq!(origin.requests(), 2, "one refresh for every stale answer");
    let refresh = &origin.all_requests()[1];
    assert_eq!(refresh.header("if-none-match"), Some("\"v1\""));
    assert_eq!(server.metrics().value("ringcache_refreshes_total"), 1.0);
}

/// The first stale answer under stale-while-revalidate says so.
fn stale_while_revalidate_status(io: &str) {
    let first = ok("max-age=1, stale-while-revalidate=600", "10", b"x");
    let origin = scripted(first, |_, _| {
        Reply::After(
            Duration::from_millis(500),
            Box::new(Reply::Send(response(
                200,
                &[("Cache-Control", "max-age=600")],
                b"y",
            ))),
        )
    });
    let Some((origin, server)) = with_origin(io, 1, origin) else {
        return;
    };
    server.get("/w");
    let r = server.get("/w");
    assert_eq!(r.body, b"x");
    assert_eq!(r.cache_status_params()[0], "hit", "{}", r.summary());
    assert!(ttl(&r) <= -9, "{}", r.summary());
    assert_eq!(
        param(&r, "detail").as_deref(),
        Some("stale-while-revalidate")
    );
    assert!(origin.wait_requests(2, Duration::from_secs(5)));
    assert!(wait_until(Duration::from_secs(5), || server.get("/w").body == b"y"));
}

/// RFC 9111 §4.3.3: a refresh answered with a full response that may not
/// be stored leaves nothing stale behind; the next request asks the origin.
fn refresh_not_storable_removes(io: &str) {
    let origin = scripted(
        ok("max-age=1, stale-while-revalidate=600", "10", b"old"),
        |_, _| Reply::Send(response(200, &[("Cache-Control", "no-store")], b"new")),
    );
    let Some((origin, server)) = with_origin(io, 1, origin) else {
        return;
    };
    server.get("/n");
    assert_eq!(server.get("/n").body, b"old");
    assert!(wait_until(Duration::from_secs(5), || server.get("/n").body == b"new"));
    assert!(origin.requests() >= 3);
    assert_eq!(server.metrics().value("ringcache_refreshes_total"), 1.0);
}

/// Past the stale-while-revalidate window the response is validated first.
fn stale_while_revalidate_window_over(io: &str) {
    let origin = scripted(
        ok("max-age=1, stale-while-revalidate=5", "100", b"old"),
        |_, _| Reply::Send(response(200, &[("Cache-Control", "max-age=60")], b"new")),
    );
    let Some((origin, server)) = with_origin(io, 2, origin) else {
        return;
    };
    server.get("/late");
    let r = server.get("/late");
    assert_eq!(r.body, b"new", "{}", r.summary());
    assert_eq!(origin.requests(), 2);
    assert_eq!(server.metrics().value("ringcache_refreshes_total"), 0.0);
}

/// RFC 5861 §4: within stale-if-error, an origin 5xx answer or a
/// connection failure is replaced by the stale response (fwd-status of
/// the failure, detail=stale-if-error); past the window the error is
/// relayed.
fn stale_if_error(io: &str) {
    let origin = TestOrigin::start(|req| {
        if req.seq > 1 {
            return Reply::Send(response(503, &[], b"down"));
        }
        match req.path() {
            "/late" => Reply::Send(ok("max-age=1, stale-if-error=5", "100", b"late")),
            _ => Reply::Send(ok("max-age=1, stale-if-error=600", "10", b"kept")),
        }
    });
    let Some((origin, server)) = with_origin(io, 2, origin) else {
        return;
    };
    server.get("/e");
    server.get("/late");
    let r = server.get("/e");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.body, b"kept");
    assert_eq!(
        param(&r, "fwd").as_deref(),
        Some("stale"),
        "{}",
        r.summary()
    );
    assert_eq!(param(&r, "fwd-status").as_deref(), Some("503"));
    assert_eq!(param(&r, "detail").as_deref(), Some("stale-if-error"));
    assert!(ttl(&r) < 0);
    // Past the window (stale for 99 s, window 5 s): the error goes through.
    let r = server.get("/late");
    assert_eq!(r.status, 503, "{}", r.summary());
    assert!(origin.requests() >= 4);
}

/// Stale-if-error on a connection the origin drops without answering.
fn stale_if_error_connection(io: &str) {
    let origin = scripted(
        ok("max-age=1, stale-if-error=600", "10", b"kept"),
        |_, _| Reply::Drop,
    );
    let Some((_origin, server)) = with_origin(io, 2, origin) else {
        return;
    };
    server.get("/c");
    let r = server.get("/c");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.body, b"kept");
    assert_eq!(param(&r, "fwd-status").as_deref(), Some("502"));
    assert_eq!(param(&r, "detail").as_deref(), Some("stale-if-error"));
}

/// Stale-if-error on an origin that does not answer in time.
fn stale_if_error_timeout(io: &str) {
    let origin = scripted(
        ok("max-age=1, stale-if-error=600", "10", b"kept"),
        |_, _| Reply::Hang,
    );
    let Some((_dir, server)) = Server::serve_with_config(
        io,
        Some(&origin.url()),
        2,
        "[limits]\norigin_response_timeout = \"1s\"\n",
    ) else {
        return;
    };
    server.get("/t");
    let r = server.get("/t");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.body, b"kept");
    assert_eq!(param(&r, "fwd-status").as_deref(), Some("504"));
}

/// The waiters of a coalesced revalidation that fails get the stale
/// response too; one origin request serves them all (one worker).
fn stale_if_error_waiters(io: &str) {
    let origin = scripted(
        ok("max-age=1, stale-if-error=600", "10", b"kept"),
        |_, _| {
            Reply::After(
                Duration::from_millis(1000),
                Box::new(Reply::Send(response(502, &[], b"bad gateway"))),
            )
        },
    );
    let Some((origin, server)) = with_origin(io, 1, origin) else {
        return;
    };
    server.get("/w");
    for r in http_get_concurrently(server.addr, "/w", 8) {
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(r.body, b"kept");
        assert_eq!(param(&r, "detail").as_deref(), Some("stale-if-error"));
    }
    assert_eq!(origin.requests(), 2, "one fetch for every waiter");
}

/// RFC 5861 §4 on the request side: a client's stale-if-error widens the
/// window (RFC 9111 §5.2.1 allows request extensions).
fn request_stale_if_error(io: &str) {
    let origin = scripted(ok("max-age=1", "10", b"kept"), |_, _| {
        Reply::Send(response(500, &[], b"oops"))
    });
    let Some((_origin, server)) = with_origin(io, 2, origin) else {
        return;
    };
    server.get("/r");
    let r = get_with(&server, "/r", "Cache-Control: stale-if-error=600");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.body, b"kept");
    let r = server.get("/r");
    assert_eq!(r.status, 500, "no window without it: {}", r.summary());
}

both_io!(
    stale_not_served_by_default,
    no_stale_directives,
    stale_while_revalidate,
    stale_while_revalidate_status,
    stale_while_revalidate_window_over,
    refresh_not_storable_removes,
    stale_if_error,
    stale_if_error_connection,
    stale_if_error_timeout,
    stale_if_error_waiters,
    request_stale_if_error,
);
