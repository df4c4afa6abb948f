//! Request coalescing on one worker: concurrent misses for one key reach the
//! origin once; the outcome of that fetch decides what the waiters get.

#[macro_use]
mod common;

use std::time::Duration;

use common::*;

/// Clients sending the same GET at once, each on its own connection; every
/// request is written before any answer is read.
const CLIENTS: usize = 64;

/// Open `CLIENTS` connections, send `path` on each, read every answer.
fn herd(server: &Server, path: &str) -> Vec<Response> {
    herd_of(server, path, CLIENTS)
}

/// `herd` with `count` clients.
fn herd_of(server: &Server, path: &str, count: usize) -> Vec<Response> {
    let mut clients: Vec<Client> = (0..count)
        .map(|_| {
            let mut c = server.client();
            c.timeout = Duration::from_secs(20);
            c
        })
        .collect();
    for c in clients.iter_mut() {
        c.send(get_request(path).as_bytes());
    }
    clients.iter_mut().map(|c| c.read_response()).collect()
}

fn slow_origin(delay: Duration, status: u16, cc: &'static str) -> TestOrigin {
    TestOrigin::start(move |req| {
        let body = format!("body of {}", req.path());
        Reply::After(
            delay,
            Box::new(Reply::Send(response(
                status,
                &[("Cache-Control", cc), ("Content-Type", "text/plain")],
                body.as_bytes(),
            ))),
        )
    })
}

/// A herd on `path`: every client gets the origin's body, the origin was
/// asked once, and every answer but the filler's is marked `collapsed`.
#[track_caller]
fn assert_herd_fetched_once(server: &Server, origin: &TestOrigin, path: &str) {
    let answers = herd(server, path);
    let body = format!("body of {path}");
    for r in &answers {
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(r.body, body.as_bytes(), "{}", r.summary());
    }
    let collapsed = answers
        .iter()
        .filter(|r| r.cache_status_params().iter().any(|p| p == "collapsed"))
        .count();
    assert_eq!(origin.requests(), 1, "the origin was asked more than once");
    assert_eq!(collapsed, CLIENTS - 1, "every waiter is marked collapsed");
}

/// A cold cacheable key under a herd: one origin fetch, everybody gets the
/// body, the waiters are marked `collapsed`, and the next request is a hit.
fn herd_on_cold_key_fetches_once(io: &str) {
    let origin = slow_origin(Duration::from_millis(300), 200, "max-age=60");
    let Some(server) = Server::serve(io, Some(&origin.url()), 1, &[]) else {
        return;
    };
    assert_herd_fetched_once(&server, &origin, "/herd");
    assert!(server.get("/herd").is_hit());
    let m = server.metrics();
    assert_eq!(m.value("ringcache_coalesced_total"), (CLIENTS - 1) as f64);
}

/// An uncacheable answer does not serialize the waiters: they are released
/// to fetch in parallel, and later requests skip waiting (hit-for-miss).
fn uncacheable_answer_releases_waiters(io: &str) {
    let origin = slow_origin(Duration::from_millis(300), 200, "no-store");
    let Some(server) = Server::serve(io, Some(&origin.url()), 1, &[]) else {
        return;
    };
    for r in herd(&server, "/private") {
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(r.body, b"body of /private");
        assert!(!r.cache_status_params().iter().any(|p| p == "collapsed"));
    }
    // The filler plus every released waiter.
    assert_eq!(origin.requests(), CLIENTS as u64);
    let m = server.metrics();
    assert_eq!(m.value("ringcache_hit_for_miss_total"), 1.0);
    // Marked hit-for-miss: a second herd does not wait at all.
    let before = m.value("ringcache_coalesced_total");
    for r in herd(&server, "/private") {
        assert_eq!(r.status, 200, "{}", r.summary());
    }
    assert_eq!(origin.requests(), 2 * CLIENTS as u64);
    let m = server.metrics();
    assert_eq!(m.value("ringcache_coalesced_total"), before);
    assert_eq!(
        m.labelled("ringcache_cache_status_total", "outcome=\"bypass\""),
        CLIENTS as f64,
        "the second herd went straight to the origin"
    );
}

/// An origin error is shared: one fetch, every client gets the 503.
fn origin_error_is_shared(io: &str) {
    let origin = slow_origin(Duration::from_millis(300), 503, "no-store");
    let Some(server) = Server::serve(io, Some(&origin.url()), 1, &[]) else {
        return;
    };
    for r in herd(&server, "/down") {
        assert_eq!(r.status, 503, "{}", r.summary());
    }
    assert_eq!(origin.requests(), 1);
}

/// A fill that outlives `coalesce_wait_timeout` releases its waiters, each
/// to ask the origin itself.
fn wait_limit_releases_waiters(io: &str) {
    let origin = slow_origin(Duration::from_millis(2500), 200, "max-age=60");
    let Some((_dir, server)) = Server::serve_with_config(
        io,
        Some(&origin.url()),
        1,
        "[limits]\ncoalesce_wait_timeout = \"500ms\"\n",
    ) else {
        return;
    };
    for r in herd(&server, "/slow") {
        assert_eq!(r.status, 200, "{}", r.summary());
    }
    assert_eq!(origin.requests(), CLIENTS as u64);
    let m = server.metrics();
    assert_eq!(
        m.value("ringcache_coalesce_timeouts_total"),
        (CLIENTS - 1) as f64
    );
}

/// The filler's origin connection dies without an answer: the filler and
/// every waiter get a clean 502, and the next request fetches anew.
fn filler_failure_fails_waiters_cleanly(io: &str) {
    let origin = TestOrigin::start(|req| {
        if req.path() == "/broken" && req.seq == 0 {
            Reply::After(Duration::from_millis(300), Box::new(Reply::Drop))
        } else {
            Reply::Send(response(200, &[("Cache-Control", "max-age=60")], b"ok"))
        }
    });
    let Some(server) = Server::serve(io, Some(&origin.url()), 1, &[]) else {
        return;
    };
    for r in herd(&server, "/broken") {
        assert_eq!(r.status, 502, "{}", r.summary());
        assert!(r.cache_status().contains("fwd=miss"), "{}", r.summary());
    }
    assert_eq!(origin.requests(), 1);
    let r = server.get("/broken");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.body, b"ok");
}

/// A conditional request neither leads nor joins a fill: its 304 is its own
/// and must not mark the key hit-for-miss for everybody else.
fn conditional_requests_are_not_coalesced(io: &str) {
    let origin = TestOrigin::start(|req| {
        let reply = if req.header("if-none-match").is_some() {
            response(
                304,
                &[("ETag", "\"v1\""), ("Cache-Control", "max-age=60")],
                b"",
            )
        } else {
            response(
                200,
                &[("ETag", "\"v1\""), ("Cache-Control", "max-age=60")],
                b"full",
            )
        };
        Reply::After(Duration::from_millis(200), Box::new(Reply::Send(reply)))
    });
    let Some(server) = Server::serve(io, Some(&origin.url()), 1, &[]) else {
        return;
    };
    let mut c = server.client();
    c.send(b"GET /cond HTTP/1.1\r\nHost: ringcache.test\r\nIf-None-Match: \"v1\"\r\n\r\n");
    assert_eq!(c.read_response().status, 304);
    let m = server.metrics();
    assert_eq!(m.value("ringcache_hit_for_miss_total"), 0.0);
    // The next herd still coalesces into one fetch.
    for r in herd(&server, "/cond") {
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(r.body, b"full");
    }
    assert_eq!(origin.requests(), 2);
}

/// Several workers: the fill lease makes one fetch for the whole process;
/// waiters on the other worker are woken through their ring and served
/// from the store.
fn herd_across_workers_fetches_once(io: &str) {
    let origin = slow_origin(Duration::from_millis(300), 200, "max-age=60");
    let Some(server) = Server::serve(io, Some(&origin.url()), 2, &[]) else {
        return;
    };
    assert_herd_fetched_once(&server, &origin, "/across");
    // Both workers took part: each answered some of the herd.
    let m = server.metrics();
    let per_worker: Vec<f64> = (0..2)
        .map(|w| {
            m.labelled(
                "ringcache_worker_requests_total",
                &format!("worker=\"{w}\""),
            )
        })
        .collect();
    eprintln!("requests per worker: {per_worker:?}");
    // SO_REUSEPORT spreads 64 connections over both (all on one: 2^-63).
    assert!(per_worker.iter().all(|&n| n > 0.0), "{per_worker:?}");
}

/// The scale: 1000 concurrent clients on one cold key whose origin
/// answers after 200 ms, over two workers: one origin request, and every
/// client gets the full body.
fn thousand_clients_one_fetch(io: &str) {
    raise_open_files_limit(4096);
    let origin = slow_origin(Duration::from_millis(200), 200, "max-age=60");
    let Some(server) = Server::serve(io, Some(&origin.url()), 2, &[]) else {
        return;
    };
    let answers = herd_of(&server, "/thousand", 1000);
    for r in &answers {
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(r.body, b"body of /thousand", "{}", r.summary());
    }
    assert_eq!(origin.requests(), 1, "the origin was asked more than once");
    let m = server.metrics();
    assert_eq!(m.value("ringcache_coalesced_total"), 999.0);
}

/// The latency and outcome series appear and move with traffic over two
/// workers: a herd, a hit, a pass and a bad request each land where they
/// belong, in `/metrics` and in `/stats`.
fn metrics_series_move(io: &str) {
    let origin = slow_origin(Duration::from_millis(300), 200, "max-age=60");
    let Some(server) = Server::serve(io, Some(&origin.url()), 2, &[]) else {
        return;
    };
    let m = server.metrics();
    for name in [
        "ringcache_request_duration_seconds_count",
        "ringcache_origin_duration_seconds_count",
        "ringcache_coalesce_waiters_per_fill_count",
        "ringcache_coalesce_wait_seconds_count",
        "ringcache_lease_takeovers_total",
        "ringcache_responses_by_status_total",
        "ringcache_cache_status_total",
        "ringcache_origin_connections_open",
    ] {
        assert_eq!(m.get(name), Some(0.0), "{name} is shown, at 0");
    }
    assert_herd_fetched_once(&server, &origin, "/measured");
    assert!(server.get("/measured").is_hit());
    let mut c = server.client();
    c.send(b"POST /form HTTP/1.1\r\nHost: ringcache.test\r\nContent-Length: 2\r\n\r\nhi");
    assert_eq!(c.read_response().status, 200);
    let mut bad = server.client();
    bad.send(b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n");
    assert_eq!(bad.read_response().status, 400);

    let m = server.metrics();
    let outcome = |o: &str| m.labelled("ringcache_cache_status_total", &format!("outcome=\"{o}\""));
    assert_eq!(outcome("miss"), 1.0);
    assert_eq!(outcome("collapsed"), (CLIENTS - 1) as f64);
    assert_eq!(outcome("hit"), 1.0);
    assert_eq!(outcome("method"), 1.0);
    assert_eq!(outcome("error"), 1.0);
    assert_eq!(
        m.value("ringcache_cache_status_total"),
        CLIENTS as f64 + 3.0
    );
    let class = |c: &str| {
        m.labelled(
            "ringcache_responses_by_status_total",
            &format!("code=\"{c}\""),
        )
    };
    assert_eq!(class("2xx"), CLIENTS as f64 + 2.0);
    assert_eq!(class("4xx"), 1.0);
    let count = |cache: &str| {
        m.labelled(
            "ringcache_request_duration_seconds_count",
            &format!("cache=\"{cache}\""),
        )
    };
    assert_eq!(count("miss"), CLIENTS as f64);
    assert_eq!(count("hit"), 1.0);
    assert_eq!(count("pass"), 1.0);
    // Two origin requests, the fill and the POST, each held 300 ms by the
    // origin: none falls in a bucket below 262 ms.
    assert_eq!(m.value("ringcache_origin_duration_seconds_count"), 2.0);
    assert_eq!(
        m.labelled(
            "ringcache_origin_duration_seconds_bucket",
            "le=\"0.262144\""
        ),
        0.0
    );
    assert!(m.value("ringcache_origin_duration_seconds_sum") >= 0.6);
    // Every waiter of the herd, over the fills of both workers.
    assert_eq!(
        m.value("ringcache_coalesce_waiters_per_fill_sum"),
        (CLIENTS - 1) as f64
    );
    assert_eq!(
        m.value("ringcache_coalesce_wait_seconds_count"),
        (CLIENTS - 1) as f64
    );
    assert!(m.value("ringcache_origin_connections_open") >= 1.0);
    assert_eq!(m.value("ringcache_lease_takeovers_total"), 0.0);

    let stats = http_get(server.admin, "/stats");
    assert_eq!(stats.status, 200);
    let json = stats.body_str();
    for part in [
        "\"responses_by_status\":{\"1xx\":0,\"2xx\":66,\"3xx\":0,\"4xx\":1,\"5xx\":0}".to_string(),
        format!(
            "\"cache_status\":{{\"hit\":1,\"miss\":1,\"stale\":0,\"collapsed\":{},\"request\":0,\"method\":1,\"bypass\":0,\"error\":1}}",
            CLIENTS - 1
        ),
        "\"lease_takeovers\":0".to_string(),
        "\"request_duration_seconds\":{\"hit\":{\"count\":1,".to_string(),
        "\"origin_duration_seconds\":{\"count\":2,".to_string(),
        format!("\"coalesce_wait_seconds\":{{\"count\":{},", CLIENTS - 1),
    ] {
        assert!(json.contains(&part), "{part} not in {json}");
    }
}

/// Let this test process hold `n` descriptors (soft limit up to the hard one).
fn raise_open_files_limit(n: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid, initialised rlimit.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        if lim.rlim_cur < n.min(lim.rlim_max) {
            lim.rlim_cur = n.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

both_io!(
    metrics_series_move,
    thousand_clients_one_fetch,
    herd_across_workers_fetches_once,
    conditional_requests_are_not_coalesced,
    herd_on_cold_key_fetches_once,
    uncacheable_answer_releases_waiters,
    origin_error_is_shared,
    wait_limit_releases_waiters,
    filler_failure_fails_waiters_cleanly,
);
