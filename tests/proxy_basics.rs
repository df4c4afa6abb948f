//! ringcache as a caching proxy: storage decisions, Cache-Status and Age,
//! connection reuse, pipelining, concurrency, request bodies, header rewriting
//! and relaying of every origin body framing. Each scenario runs on both I/O
//! backends.

#[macro_use]
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::*;

/// The demo origin and a two-worker ringcache in front of it.
fn with_demo(io: &str) -> Option<(DemoOrigin, Server)> {
    let origin = DemoOrigin::start();
    let server = Server::serve(io, Some(&origin.url()), 2, &[])?;
    Some((origin, server))
}

/// A scripted origin and a two-worker ringcache in front of it.
fn with_origin(io: &str, origin: TestOrigin) -> Option<(TestOrigin, Server)> {
    let server = Server::serve(io, Some(&origin.url()), 2, &[])?;
    Some((origin, server))
}

#[track_caller]
fn assert_miss_stored(r: &Response) {
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(
        r.cache_status_params(),
        ["fwd=uri-miss", "fwd-status=200", "stored"],
        "{}",
        r.summary()
    );
    if let Some(age) = r.age() {
        assert_eq!(age, 0, "a fresh miss has Age 0 or none: {}", r.summary());
    }
}

#[track_caller]
fn assert_hit(r: &Response) {
    assert_eq!(r.status, 200, "{}", r.summary());
    assert!(
        r.cache_status().starts_with("ringcache; hit; ttl="),
        "{}",
        r.summary()
    );
    assert!(r.age().is_some(), "a hit carries Age: {}", r.summary());
}

#[track_caller]
fn assert_not_stored(r: &Response) {
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(
        r.cache_status_params()[..2],
        ["fwd=uri-miss", "fwd-status=200"],
        "{}",
        r.summary()
    );
    assert!(
        !r.cache_status_params().iter().any(|p| p == "stored"),
        "{}",
        r.summary()
    );
}

fn miss_then_hit(io: &str) {
    let Some((origin, server)) = with_demo(io) else {
        return;
    };
    let path = "/api/items/1";
    let first = server.get(path);
    assert_miss_stored(&first);
    assert_eq!(first.body.len(), 256, "default size: {}", first.summary());
    assert_eq!(body_id(&first.body), Some(1), "{}", first.summary());
    assert!(first.has_header("etag"), "{}", first.summary());

    let second = server.get(path);
    assert_hit(&second);
    assert_eq!(second.body, first.body, "a hit returns the stored body");
    assert_eq!(second.header("etag"), first.header("etag"));
    assert_eq!(origin.count(path), 1, "one origin fetch for two requests");

    // The proxied body is the origin's body, byte for byte.
    let direct = http_get(origin.addr, path);
    assert_eq!(direct.body, first.body);
}

fn age_grows(io: &str) {
    let Some((origin, server)) = with_demo(io) else {
        return;
    };
    let path = "/api/items/2";
    assert_miss_stored(&server.get(path));
    thread::sleep(Duration::from_millis(2100));
    let hit = server.get(path);
    assert_hit(&hit);
    let age = hit.age().unwrap();
    assert!(age >= 2, "Age after ~2.1 s in the cache: {}", hit.summary());
    assert!(age < 60, "Age stays below max-age: {}", hit.summary());
    assert_eq!(origin.count(path), 1);
}

/// Two requests for a response carrying `cc`: both go to the origin.
fn check_not_stored(io: &str, id: u32, query: &str) {
    let Some((origin, server)) = with_demo(io) else {
        return;
    };
    let path = format!("/api/items/{id}");
    let target = format!("{path}?{query}");
    for _ in 0..2 {
        let r = server.get(&target);
        assert_not_stored(&r);
        assert_eq!(body_id(&r.body), Some(id as u64), "{}", r.summary());
    }
    assert_eq!(origin.count(&path), 2, "both requests reach the origin");
}

fn no_store_not_stored(io: &str) {
    check_not_stored(io, 3, "cc=no-store");
}

fn private_not_stored(io: &str) {
    check_not_stored(io, 4, "cc=private%2C%20max-age%3D60");
}

fn no_cache_not_stored(io: &str) {
    check_not_stored(io, 5, "cc=no-cache%2C%20max-age%3D60");
}

fn max_age_zero_not_stored(io: &str) {
    check_not_stored(io, 6, "max_age=0");
}

fn no_explicit_freshness_not_stored(io: &str) {
    // Validators alone (ETag, Last-Modified) are not explicit freshness.
    let origin = TestOrigin::start(|_| {
        Reply::Send(response(
            200,
            &[
                ("ETag", "\"v1\""),
                ("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
                ("Content-Type", "text/plain"),
            ],
            b"no freshness",
        ))
    });
    let Some((origin, server)) = with_origin(io, origin) else {
        return;
    };
    for _ in 0..2 {
        let r = server.get("/validators-only");
        assert_not_stored(&r);
        assert_eq!(r.body_str(), "no freshness");
    }
    assert_eq!(origin.requests(), 2);
}

fn s_maxage_is_enough(io: &str) {
    let Some((origin, server)) = with_demo(io) else {
        return;
    };
    let target = "/api/items/8?cc=s-maxage%3D60";
    assert_miss_stored(&server.get(target));
    assert_hit(&server.get(target));
    assert_eq!(origin.count("/api/items/8"), 1);
}

fn head_after_get_from_cache(io: &str) {
    let Some((origin, server)) = with_demo(io) else {
        return;
    };
    let path = "/api/items/9?size=1000";
    let mut c = server.client();
    let get = c.get(path);
    assert_miss_stored(&get);
    assert_eq!(get.body.len(), 1000);

    c.send(format!("HEAD {path} HTTP/1.1\r\nHost: ringcache.test\r\n\r\n").as_bytes());
    let head = c.read_head_response();
    assert_hit(&head);
    assert_eq!(
        head.content_length(),
        Some(1000),
        "HEAD announces the GET body's length: {}",
        head.summary()
    );
    assert_eq!(head.header("etag"), get.header("etag"));
    assert_eq!(head.header("content-type"), get.header("content-type"));

    // No body followed the HEAD response: the next response parses cleanly.
    let next = c.get(path);
    assert_hit(&next);
    assert_eq!(next.body, get.body);
    assert_eq!(origin.count("/api/items/9"), 1);
}

fn keep_alive_reuses_connection(io: &str) {
    let Some((origin, server)) = with_demo(io) else {
        return;
    };
    let mut c = server.client();
    for round in 0..2 {
        for id in 10..15u64 {
            let r = c.get(&format!("/api/items/{id}"));
            assert_eq!(r.status, 200, "{}", r.summary());
            assert_eq!(body_id(&r.body), Some(id));
            assert_eq!(r.is_hit(), round == 1, "{}", r.summary());
            assert!(!r.connection_has("close"), "{}", r.summary());
        }
    }
    assert_eq!(origin.stats().total, 5);
}

fn pipelined_100_in_order(io: &str) {
    let Some((origin, server)) = with_demo(io) else {
        return;
    };
    let ids: Vec<u64> = (100..200).collect();
    let mut batch = String::new();
    for id in &ids {
        batch.push_str(&get_request(&format!("/api/items/{id}")));
    }
    let mut c = server.client();
    c.timeout = Duration::from_secs(15);
    c.send(batch.as_bytes());
    for id in &ids {
        let r = c.read_response();
        assert_eq!(r.status, 200, "response for id {id}: {}", r.summary());
        assert_eq!(body_id(&r.body), Some(*id), "responses in request order");
        assert_eq!(r.body.len(), 256);
    }
    assert!(
        c.leftover().is_empty(),
        "no stray bytes after 100 responses"
    );

    // The same batch again: all hits, still in order.
    c.send(batch.as_bytes());
    for id in &ids {
        let r = c.read_response();
        assert_hit(&r);
        assert_eq!(body_id(&r.body), Some(*id));
    }
    assert_eq!(origin.stats().total, 100);
}

fn concurrent_500_clients(io: &str) {
    let Some((origin, server)) = with_demo(io) else {
        return;
    };
    const THREADS: usize = 10;
    const PER_THREAD: usize = 50;
    const KEYS: usize = 100;
    let addr = server.addr;
    let connected = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for t in 0..THREADS {
        let connected = connected.clone();
        let h = thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || {
                let mut clients: Vec<(u64, Client)> = (0..PER_THREAD)
                    .map(|j| {
                        let id = (1000 + (t * PER_THREAD + j) % KEYS) as u64;
                        let mut c = Client::connect(addr);
                        c.timeout = Duration::from_secs(20);
                        (id, c)
                    })
                    .collect();
                // Every client holds its connection open before any sends.
                connected.fetch_add(PER_THREAD, Ordering::SeqCst);
                wait_until(Duration::from_secs(10), || {
                    connected.load(Ordering::SeqCst) >= THREADS * PER_THREAD
                });
                for (id, c) in clients.iter_mut() {
                    c.send(get_request(&format!("/api/items/{id}")).as_bytes());
                }
                for (id, c) in clients.iter_mut() {
                    let r = c.read_response();
                    assert_eq!(r.status, 200, "id {id}: {}", r.summary());
                    assert_eq!(body_id(&r.body), Some(*id), "id {id}: {}", r.summary());
                    assert_eq!(r.body.len(), 256, "id {id}");
                }
            })
            .expect("spawn client thread");
        handles.push(h);
    }
    let mut failures = 0;
    for h in handles {
        if h.join().is_err() {
            failures += 1;
        }
    }
    assert_eq!(
        failures, 0,
        "client threads failed (see their panics above)"
    );
    let total = origin.stats().total;
    assert!(
        (KEYS as u64..=(THREADS * PER_THREAD) as u64).contains(&total),
        "origin fetches {total}"
    );
    // The server is still healthy afterwards.
    assert_hit(&server.get("/api/items/1000"));
}

fn echo_origin() -> TestOrigin {
    TestOrigin::start(|req| {
        let body = format!("got {} bytes", req.body.len());
        Reply::Send(response(
            200,
            &[("Cache-Control", "no-store")],
            body.as_bytes(),
        ))
    })
}

fn request_body_content_length(io: &str) {
    let Some((origin, server)) = with_origin(io, echo_origin()) else {
        return;
    };
    let mut c = server.client();
    c.send(
        b"POST /upload HTTP/1.1\r\nHost: ringcache.test\r\nContent-Type: text/plain\r\n\
          Content-Length: 11\r\n\r\nhello world",
    );
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.body_str(), "got 11 bytes");
    let seen = origin.last_request().expect("the origin got the POST");
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.body, b"hello world");
    assert_eq!(
        seen.header("content-length"),
        Some("11"),
        "{}",
        seen.head_text()
    );
    assert!(
        !seen.has_header("transfer-encoding"),
        "{}",
        seen.head_text()
    );
    assert_eq!(origin.requests(), 1);

    // The connection is usable for the next request.
    c.send(b"POST /upload HTTP/1.1\r\nHost: ringcache.test\r\nContent-Length: 3\r\n\r\nabc");
    assert_eq!(c.read_response().body_str(), "got 3 bytes");
    assert_eq!(origin.last_request().unwrap().body, b"abc");
}

fn request_body_chunked(io: &str) {
    let Some((origin, server)) = with_origin(io, echo_origin()) else {
        return;
    };
    let mut c = server.client();
    c.send(
        b"POST /upload HTTP/1.1\r\nHost: ringcache.test\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n",
    );
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.summary());
    let seen = origin.last_request().expect("the origin got the POST");
    assert_eq!(seen.body, b"hello world", "de-chunked body");
    assert!(
        !seen.chunked,
        "forwarded with a Content-Length: {}",
        seen.head_text()
    );
    assert_eq!(
        seen.header("content-length"),
        Some("11"),
        "{}",
        seen.head_text()
    );
    assert!(
        !seen.has_header("transfer-encoding"),
        "{}",
        seen.head_text()
    );

    // A larger body in uneven chunks, written in pieces.
    let payload: Vec<u8> = (0..60_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut req =
        b"POST /big HTTP/1.1\r\nHost: ringcache.test\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for part in payload.chunks(7_777) {
        req.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        req.extend_from_slice(part);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    for piece in req.chunks(10_000) {
        c.send(piece);
        thread::sleep(Duration::from_millis(5));
    }
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.body_str(), "got 60000 bytes");
    let seen = origin.last_request().unwrap();
    assert_eq!(seen.path(), "/big");
    assert!(seen.body == payload, "the 60000-byte body arrives intact");
    assert_eq!(seen.header("content-length"), Some("60000"));
    assert_eq!(origin.requests(), 2);
}

fn hop_by_hop_removed_toward_origin(io: &str) {
    let Some((origin, server)) = with_origin(io, echo_origin()) else {
        return;
    };
    let mut c = server.client();
    c.send(
        b"GET /hop HTTP/1.1\r\nHost: ringcache.test\r\nConnection: X-Foo\r\nX-Foo: 1\r\n\
          Keep-Alive: timeout=5\r\nTE: trailers\r\nX-Keep: yes\r\n\r\n",
    );
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.summary());
    let seen = origin.last_request().unwrap();
    let head = seen.head_text();
    for name in ["x-foo", "keep-alive", "te"] {
        assert!(!seen.has_header(name), "{name} reached the origin:\n{head}");
    }
    for v in seen.headers_all("connection") {
        assert!(
            !v.to_ascii_lowercase().contains("x-foo"),
            "the client's Connection list reached the origin:\n{head}"
        );
    }
    assert_eq!(
        seen.header("x-keep"),
        Some("yes"),
        "end-to-end header kept:\n{head}"
    );
}

fn hop_by_hop_removed_toward_client(io: &str) {
    let origin = TestOrigin::start(|_| {
        Reply::SendClose(response(
            200,
            &[
                ("Cache-Control", "no-store"),
                ("Connection", "close, X-Bar"),
                ("Keep-Alive", "timeout=5"),
                ("X-Bar", "1"),
                ("X-Stay", "1"),
            ],
            b"ok",
        ))
    });
    let Some((origin, server)) = with_origin(io, origin) else {
        return;
    };
    let mut c = server.client();
    for _ in 0..2 {
        let r = c.get("/hop");
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(r.body_str(), "ok");
        assert!(!r.has_header("keep-alive"), "{}", r.summary());
        assert!(!r.has_header("x-bar"), "{}", r.summary());
        assert!(!r.connection_has("x-bar"), "{}", r.summary());
        assert!(
            !r.connection_has("close"),
            "the origin's close is not the client's: {}",
            r.summary()
        );
        assert_eq!(r.header("x-stay"), Some("1"), "{}", r.summary());
    }
    assert_eq!(origin.requests(), 2);
}

fn via_and_forwarded_for(io: &str) {
    let Some((origin, server)) = with_origin(io, echo_origin()) else {
        return;
    };
    let r = server.get("/via");
    assert_eq!(r.status, 200);
    assert!(
        r.header("via").is_some_and(|v| !v.trim().is_empty()),
        "Via toward the client: {}",
        r.summary()
    );
    let seen = origin.last_request().unwrap();
    let head = seen.head_text();
    assert!(
        seen.header("via").is_some_and(|v| !v.trim().is_empty()),
        "Via toward the origin:\n{head}"
    );
    assert!(
        seen.headers_all("x-forwarded-for")
            .iter()
            .any(|v| v.contains("127.0.0.1")),
        "X-Forwarded-For names the client:\n{head}"
    );

    // A client-supplied X-Forwarded-For is kept and extended.
    let mut c = server.client();
    c.send(b"GET /via2 HTTP/1.1\r\nHost: ringcache.test\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
    let seen = origin.last_request().unwrap();
    let xff = seen.headers_all("x-forwarded-for").join(", ");
    assert!(
        xff.contains("203.0.113.9") && xff.contains("127.0.0.1"),
        "X-Forwarded-For: {xff:?}"
    );
}

fn origin_chunked_relayed(io: &str) {
    let big: Vec<u8> = (0..100_000u32).map(|i| b'0' + (i % 10) as u8).collect();
    let big2 = big.clone();
    let origin = TestOrigin::start(move |req| {
        if req.path() == "/small" {
            Reply::Send(chunked_response(
                200,
                &[("Cache-Control", "max-age=60")],
                &[b"hello ", b"chunked ", b"world"],
            ))
        } else {
            let parts: Vec<&[u8]> = big2.chunks(7_000).collect();
            Reply::Send(chunked_response(
                200,
                &[("Cache-Control", "max-age=60")],
                &parts,
            ))
        }
    });
    let Some((origin, server)) = with_origin(io, origin) else {
        return;
    };
    let r = server.get("/small");
    assert_miss_stored(&r);
    assert_eq!(r.body_str(), "hello chunked world");
    let r = server.get("/small");
    assert_hit(&r);
    assert_eq!(r.body_str(), "hello chunked world");

    let r = server.get("/big");
    assert_miss_stored(&r);
    assert!(r.body == big, "100000-byte chunked body relayed intact");
    let r = server.get("/big");
    assert_hit(&r);
    assert!(
        r.body == big,
        "100000-byte chunked body served intact from cache"
    );
    assert_eq!(origin.requests(), 2);
}

fn origin_close_delimited_relayed(io: &str) {
    let body: Vec<u8> = (0..50_000u32).map(|i| b'A' + (i % 26) as u8).collect();
    let body2 = body.clone();
    let origin = TestOrigin::start(move |_| {
        Reply::SendClose(close_delimited_response(
            200,
            &[
                ("Cache-Control", "no-store"),
                ("Content-Type", "text/plain"),
            ],
            &body2,
        ))
    });
    let Some((origin, server)) = with_origin(io, origin) else {
        return;
    };
    let mut c = server.client();
    let r = c.get("/close");
    assert_not_stored(&r);
    assert!(
        r.body == body,
        "close-delimited body relayed intact ({} bytes)",
        r.body.len()
    );
    // Unless ringcache itself chose to close, the connection carries on.
    if !r.close_delimited && !r.connection_has("close") {
        let r = c.get("/close");
        assert!(r.body == body);
    } else {
        assert!(server.get("/close").body == body);
    }
    assert_eq!(origin.requests(), 2);
}

fn metrics_counters_move(io: &str) {
    let Some((_origin, server)) = with_demo(io) else {
        return;
    };
    let health = http_get(server.admin, "/healthz");
    assert_eq!(health.status, 200, "{}", health.summary());

    let before = server.metrics();
    for name in [
        "ringcache_requests_total",
        "ringcache_cache_hits_total",
        "ringcache_cache_misses_total",
        "ringcache_origin_fetches_total",
        "ringcache_connections_open",
    ] {
        assert!(
            before.get(name).is_some(),
            "{name} missing:\n{}",
            before.text
        );
    }
    assert_miss_stored(&server.get("/api/items/77"));
    assert_hit(&server.get("/api/items/77"));
    assert_hit(&server.get("/api/items/77"));

    let mut after = server.metrics();
    let delta = |m: &Metrics, b: &Metrics, n: &str| m.value(n) - b.value(n);
    // Counters may be folded in just after the response is written; poll briefly.
    let moved = wait_until(Duration::from_secs(2), || {
        after = server.metrics();
        delta(&after, &before, "ringcache_requests_total") >= 3.0
            && delta(&after, &before, "ringcache_cache_hits_total") >= 2.0
            && delta(&after, &before, "ringcache_cache_misses_total") >= 1.0
            && delta(&after, &before, "ringcache_origin_fetches_total") >= 1.0
    });
    assert!(
        moved,
        "counters did not move:\nbefore:\n{}\nafter:\n{}",
        before.text, after.text
    );
    assert_eq!(delta(&after, &before, "ringcache_cache_hits_total"), 2.0);
    assert_eq!(delta(&after, &before, "ringcache_cache_misses_total"), 1.0);
    assert_eq!(
        delta(&after, &before, "ringcache_origin_fetches_total"),
        1.0
    );
}

/// An absolute-form target (RFC 9112 §3.2.2): the origin gets origin-form
/// and the target's authority as Host, whatever Host the client sent.
fn absolute_form_target(io: &str) {
    let Some((origin, server)) = with_origin(io, echo_origin()) else {
        return;
    };
    let mut c = server.client();
    c.send(b"GET http://api.example:8080/abs?q=1 HTTP/1.1\r\nHost: other.example\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
    let seen = origin.last_request().unwrap();
    assert_eq!(seen.target, "/abs?q=1", "{}", seen.head_text());
    assert_eq!(
        seen.headers_all("host"),
        ["api.example:8080"],
        "{}",
        seen.head_text()
    );
}

/// A stored object past its freshness is fetched again and the answer says
/// so (RFC 9211 `fwd=stale`), then stored anew.
fn stale_is_refetched(io: &str) {
    let origin = TestOrigin::fixed("max-age=1", "short-lived");
    let Some((origin, server)) = with_origin(io, origin) else {
        return;
    };
    assert_miss_stored(&server.get("/short"));
    std::thread::sleep(Duration::from_millis(2100));
    let r = server.get("/short");
    assert_eq!(
        r.cache_status_params(),
        ["fwd=stale", "fwd-status=200", "stored"],
        "{}",
        r.summary()
    );
    assert_eq!(origin.requests(), 2);
}

both_io!(
    stale_is_refetched,
    absolute_form_target,
    miss_then_hit,
    age_grows,
    no_store_not_stored,
    private_not_stored,
    no_cache_not_stored,
    max_age_zero_not_stored,
    no_explicit_freshness_not_stored,
    s_maxage_is_enough,
    head_after_get_from_cache,
    keep_alive_reuses_connection,
    pipelined_100_in_order,
    concurrent_500_clients,
    request_body_content_length,
    request_body_chunked,
    hop_by_hop_removed_toward_origin,
    hop_by_hop_removed_toward_client,
    via_and_forwarded_for,
    origin_chunked_relayed,
    origin_close_delimited_relayed,
    metrics_counters_move,
);
