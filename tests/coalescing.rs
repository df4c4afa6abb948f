//! Request coalescing on one and two workers: concurrent misses for one key
//! reach the origin once; the outcome of that fetch decides what the waiters
//! get; the waiting list's cap and deadline hold on every worker.

#[macro_use]
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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
    wait_limit_releases_waiters_on(io, 1);
}

/// The wait limit holds across workers too: the waiters parked on the
/// worker that does not fetch are released as well.
fn wait_limit_releases_waiters_across_workers(io: &str) {
    wait_limit_releases_waiters_on(io, 2);
}

fn wait_limit_releases_waiters_on(io: &str, workers: usize) {
    let origin = slow_origin(Duration::from_millis(2500), 200, "max-age=60");
    let Some((_dir, server)) = Server::serve_with_config(
        io,
        Some(&origin.url()),
        workers,
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
        assert!(r.cache_status().contains("fwd=uri-miss"), "{}", r.summary());
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

/// At scale: 1000 concurrent clients on one cold key whose origin
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
    // Every other client waited for that fetch, or — on a busy machine,
    // when its request arrived after the answer — was a hit.
    let m = server.metrics();
    assert_eq!(
        m.value("ringcache_coalesced_total") + m.value("ringcache_cache_hits_total"),
        999.0
    );
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
    // And every /metrics series under "metrics".
    let v: serde_json::Value = serde_json::from_str(&json).expect("/stats is JSON");
    let all = &v["metrics"];
    assert_eq!(all["ringcache_lease_takeovers_total"], 0);
    assert_eq!(
        all["ringcache_responses_by_status_total"]["code=\"2xx\""],
        CLIENTS as u64 + 2
    );
    assert_eq!(
        all["ringcache_request_duration_seconds_count"]["cache=\"miss\""],
        CLIENTS as u64
    );
    assert!(all["ringcache_access_log_lines_total"].is_u64(), "{all}");
    assert!(all["ringcache_bans_active"].is_u64(), "{all}");
}

/// Requests answered by each worker, from `ringcache_worker_requests_total`.
fn requests_per_worker(server: &Server, workers: usize) -> Vec<f64> {
    let m = server.metrics();
    (0..workers)
        .map(|w| {
            m.labelled(
                "ringcache_worker_requests_total",
                &format!("worker=\"{w}\""),
            )
        })
        .collect()
}

/// 1000 clients at once on an expired key over two workers, whose origin
/// answers after 200 ms: one new origin request, and every client gets the
/// new body in full.
fn thousand_clients_on_an_expired_key(io: &str) {
    raise_open_files_limit(4096);
    let origin = TestOrigin::start(|req| {
        let body = format!("version {} of {}", req.seq, req.path());
        // The first version lives one second; the refreshed one outlives
        // the herd, however long the clients take to connect.
        let cc = if req.seq == 0 {
            "max-age=1"
        } else {
            "max-age=60"
        };
        let reply = Reply::Send(response(200, &[("Cache-Control", cc)], body.as_bytes()));
        if req.seq == 0 {
            reply
        } else {
            Reply::After(Duration::from_millis(200), Box::new(reply))
        }
    });
    let Some(server) = Server::serve(io, Some(&origin.url()), 2, &[]) else {
        return;
    };
    let first = server.get("/expiring");
    assert_eq!(first.body_str(), "version 0 of /expiring");
    assert!(
        first.cache_status().contains("stored"),
        "{}",
        first.summary()
    );
    // Freshness is counted in whole seconds of the wall clock: after two,
    // a one-second lifetime is over whatever the rounding.
    std::thread::sleep(Duration::from_secs(2));
    let answers = herd_of(&server, "/expiring", 1000);
    let mut refreshed_by = 0;
    for r in &answers {
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(r.body_str(), "version 1 of /expiring", "{}", r.summary());
        if r.cache_status().contains("fwd=stale") && !r.cache_status().contains("collapsed") {
            refreshed_by += 1;
        }
    }
    assert_eq!(origin.requests(), 2, "one new origin request for the herd");
    assert_eq!(refreshed_by, 1, "one request refreshed the stale object");
    assert!(server.get("/expiring").is_hit());
}

/// 1000 clients at once on a key within its stale-while-revalidate window,
/// over two workers, while the one background refresh is held at the
/// origin (answered 200 ms after the herd is in): every client gets the
/// stale body at once, marked `detail=stale-while-revalidate`; the origin
/// sees exactly one refresh; once it is in, the next request gets the new
/// body.
fn thousand_clients_while_revalidating(io: &str) {
    raise_open_files_limit(4096);
    let herd_answered = Arc::new(AtomicBool::new(false));
    let release = herd_answered.clone();
    let origin = TestOrigin::start(move |req| {
        let body = format!("version {} of {}", req.seq, req.path());
        if req.seq == 0 {
            // Stale on arrival (Age past max-age), within its window.
            return Reply::Send(response(
                200,
                &[
                    ("Cache-Control", "max-age=1, stale-while-revalidate=60"),
                    ("Age", "10"),
                ],
                body.as_bytes(),
            ));
        }
        let reply = Reply::Send(response(
            200,
            &[("Cache-Control", "max-age=60")],
            body.as_bytes(),
        ));
        // Held until every client of the herd has its answer: an answer
        // that waited for the refresh would never arrive.
        Reply::Until(
            release.clone(),
            Box::new(Reply::After(Duration::from_millis(200), Box::new(reply))),
        )
    });
    let Some(server) = Server::serve(io, Some(&origin.url()), 2, &[]) else {
        return;
    };
    let first = server.get("/swr-herd");
    assert_eq!(first.body_str(), "version 0 of /swr-herd");
    let answers = herd_of(&server, "/swr-herd", 1000);
    herd_answered.store(true, Ordering::SeqCst);
    for r in &answers {
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(r.body_str(), "version 0 of /swr-herd", "{}", r.summary());
        assert!(r.is_hit(), "answered from the store: {}", r.summary());
        assert!(
            r.cache_status_params()
                .iter()
                .any(|p| p == "detail=stale-while-revalidate"),
            "{}",
            r.summary()
        );
    }
    assert!(origin.wait_requests(2, Duration::from_secs(10)));
    assert!(wait_until(Duration::from_secs(10), || {
        server.get("/swr-herd").body_str() == "version 1 of /swr-herd"
    }));
    assert_eq!(origin.requests(), 2, "exactly one refresh for the herd");
    assert_eq!(server.metrics().value("ringcache_refreshes_total"), 1.0);
}

/// An origin for refresh-ahead: `max-age=4` with an ETag; a request that
/// validates that ETag gets a 304 with a new lifetime.
fn four_second_origin() -> TestOrigin {
    TestOrigin::start(|req| {
        let fields = [("Cache-Control", "max-age=4"), ("ETag", "\"v1\"")];
        if req.header("if-none-match") == Some("\"v1\"") {
            Reply::Send(response(304, &fields, b""))
        } else {
            Reply::Send(response(200, &fields, b"ahead body"))
        }
    })
}

/// A few clients (over two workers) hitting `path` steadily until `done`
/// says so or 30 s pass; every answer, in order of arrival.
fn steady_load(server: &Server, path: &'static str, done: impl Fn() -> bool) -> Vec<Response> {
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (addr, stop) = (server.addr, stop.clone());
            std::thread::spawn(move || {
                let mut answers = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    answers.push(http_get(addr, path));
                    std::thread::sleep(Duration::from_millis(20));
                }
                answers
            })
        })
        .collect();
    wait_until(Duration::from_secs(30), done);
    stop.store(true, Ordering::SeqCst);
    clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect()
}

/// Refresh-ahead: an object with max-age=4 hit steadily well past its
/// lifetime, with `--refresh-ahead 50%`, over two workers. Every answer
/// after the first fill is a fresh hit (never a miss, never stale), and the
/// origin sees the key refreshed in the background, one conditional
/// request per refresh.
fn refresh_ahead_keeps_a_hot_key_fresh(io: &str) {
    let origin = four_second_origin();
    let Some(server) = Server::serve(io, Some(&origin.url()), 2, &["--refresh-ahead", "50%"])
    else {
        return;
    };
    let first = server.get("/ahead");
    assert!(
        first.cache_status().contains("stored"),
        "{}",
        first.summary()
    );
    // Three refreshes take at least two lifetimes' halves after the fill:
    // the load outlives the first lifetime.
    let answers = steady_load(&server, "/ahead", || origin.requests() >= 4);
    assert!(
        origin.requests() >= 4,
        "the key was refreshed ahead of expiry"
    );
    for r in &answers {
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(r.body, b"ahead body", "{}", r.summary());
        assert_eq!(
            r.cache_status_params()[0],
            "hit",
            "a fresh hit: {}",
            r.summary()
        );
        assert!(
            !r.cache_status().contains("fwd=") && !r.cache_status().contains("detail="),
            "{}",
            r.summary()
        );
    }
    let m = server.metrics();
    let refreshes = m.value("ringcache_refreshes_total");
    // Every request after the fill was a refresh, each one request, and
    // conditional (the stored response has an ETag).
    assert!(wait_until(Duration::from_secs(5), || {
        server.metrics().value("ringcache_refreshes_total") == (origin.requests() - 1) as f64
    }));
    assert!(refreshes >= 3.0, "{refreshes}");
    assert_eq!(origin.requests_peak(), 1, "one refresh at a time");
    for req in &origin.all_requests()[1..] {
        assert_eq!(req.header("if-none-match"), Some("\"v1\""));
    }
    assert_eq!(
        m.value("ringcache_cache_misses_total"),
        1.0,
        "only the fill"
    );
}

/// The same load without refresh-ahead: once the object expires, some
/// client meets the expiry (a miss or a stale answer forwarded).
fn without_refresh_ahead_the_key_expires(io: &str) {
    let origin = four_second_origin();
    let Some(server) = Server::serve(io, Some(&origin.url()), 2, &[]) else {
        return;
    };
    server.get("/ahead");
    let answers = steady_load(&server, "/ahead", || origin.requests() >= 2);
    assert!(origin.requests() >= 2, "the object expired under the load");
    assert!(
        answers.iter().any(|r| !r.is_hit()),
        "some client met the expired object"
    );
    assert_eq!(server.metrics().value("ringcache_refreshes_total"), 0.0);
}

/// The filler's origin connection dies mid-response while waiters sit on
/// both workers. Nobody gets a truncated 200: the filler's worker answers
/// 502 to its waiters, the other worker fetches once more for its own (one
/// of them takes the lease, the others wait for it), and while the origin
/// keeps tearing every answer is a 502. Once it recovers, the next request
/// fetches anew: nothing torn was stored.
fn filler_dies_mid_response_across_workers(io: &str) {
    let tearing = Arc::new(AtomicBool::new(true));
    let tear = Arc::clone(&tearing);
    let origin = TestOrigin::start(move |req| {
        let body = format!("full body of {}", req.path()).repeat(100);
        let whole = response(200, &[("Cache-Control", "max-age=60")], body.as_bytes());
        if tear.load(Ordering::SeqCst) {
            // The head and part of the body, then the connection dies.
            let cut = whole.len() - body.len() / 2;
            Reply::After(
                Duration::from_millis(300),
                Box::new(Reply::SendClose(whole[..cut].to_vec())),
            )
        } else {
            Reply::Send(whole)
        }
    });
    let Some(server) = Server::serve(io, Some(&origin.url()), 2, &[]) else {
        return;
    };
    let full = "full body of /torn".repeat(100);
    for r in herd(&server, "/torn") {
        match r.status {
            200 => assert_eq!(r.body_str(), full, "a 200 carries the whole body"),
            502 | 504 => {}
            _ => panic!("neither the body nor a gateway error: {}", r.summary()),
        }
        assert_eq!(
            r.status,
            502,
            "the origin tore every answer: {}",
            r.summary()
        );
    }
    let per_worker = requests_per_worker(&server, 2);
    assert!(per_worker.iter().all(|&n| n > 0.0), "{per_worker:?}");
    // The fill, and at most one more fetch per other worker.
    let fetched = origin.requests();
    assert!((1..=2).contains(&fetched), "origin asked {fetched} times");
    tearing.store(false, Ordering::SeqCst);
    let r = server.get("/torn");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.body_str(), full);
    assert!(!r.is_hit(), "{}", r.summary());
    assert_eq!(
        origin.requests(),
        fetched + 1,
        "the next request fetched anew"
    );
}

/// The same death, but the origin recovers at once: the other worker's
/// waiters are answered in full by the one fetch one of them leads.
fn filler_dies_and_the_other_worker_refetches_once(io: &str) {
    let origin = TestOrigin::start(move |req| {
        let body = format!("full body of {}", req.path()).repeat(100);
        let whole = response(200, &[("Cache-Control", "max-age=60")], body.as_bytes());
        let cut = whole.len() - body.len() / 2;
        let reply = if req.seq == 0 {
            Reply::SendClose(whole[..cut].to_vec())
        } else {
            Reply::Send(whole)
        };
        Reply::After(Duration::from_millis(300), Box::new(reply))
    });
    let Some(server) = Server::serve(io, Some(&origin.url()), 2, &[]) else {
        return;
    };
    let full = "full body of /mended".repeat(100);
    let answers = herd(&server, "/mended");
    let (mut whole, mut failed) = (0, 0);
    for r in &answers {
        match r.status {
            200 => {
                assert_eq!(r.body_str(), full, "a 200 carries the whole body");
                whole += 1;
            }
            502 => failed += 1,
            _ => panic!("neither the body nor a 502: {}", r.summary()),
        }
    }
    let per_worker = requests_per_worker(&server, 2);
    assert!(per_worker.iter().all(|&n| n > 0.0), "{per_worker:?}");
    eprintln!("answered {whole} in full, {failed} with 502; per worker {per_worker:?}");
    // The filler's worker failed together; the other fetched once for all.
    assert_eq!(origin.requests(), 2);
    assert!(whole > 0 && failed > 0, "{whole} full, {failed} failed");
    // Waiting twice (for the torn fill, then for the new one) counts once.
    let m = server.metrics();
    assert_eq!(m.value("ringcache_coalesced_total"), (CLIENTS - 1) as f64);
    assert!(server.get("/mended").is_hit());
}

/// `coalesce_waiters_max` bounds each worker's list: beyond it a request
/// fetches on its own (it is not refused). Over two workers, each keeps
/// its own list of 4.
fn waiting_list_cap_across_workers(io: &str) {
    const WAITERS_MAX: usize = 4;
    let origin = slow_origin(Duration::from_millis(500), 200, "max-age=60");
    let Some((_dir, server)) = Server::serve_with_config(
        io,
        Some(&origin.url()),
        2,
        &format!("[limits]\ncoalesce_waiters_max = {WAITERS_MAX}\n"),
    ) else {
        return;
    };
    for r in herd(&server, "/capped") {
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(r.body, b"body of /capped");
    }
    let per_worker = requests_per_worker(&server, 2);
    assert!(
        per_worker.iter().all(|&n| n > WAITERS_MAX as f64),
        "{per_worker:?}"
    );
    // Each worker parks 4 and sends the rest: the filler's worker its
    // filler plus the excess, the other worker its excess.
    let m = server.metrics();
    assert_eq!(
        m.value("ringcache_coalesced_total"),
        2.0 * WAITERS_MAX as f64
    );
    assert_eq!(origin.requests(), (CLIENTS - 2 * WAITERS_MAX) as u64);
}

/// An uncacheable answer does not serialise waiters over two workers: 200
/// clients on a no-store key all complete, and the origin saw their
/// requests in parallel.
fn uncacheable_key_is_fetched_in_parallel_across_workers(io: &str) {
    raise_open_files_limit(4096);
    let origin = slow_origin(Duration::from_millis(300), 200, "no-store");
    let Some(server) = Server::serve(io, Some(&origin.url()), 2, &[]) else {
        return;
    };
    for r in herd_of(&server, "/nostore", 200) {
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(r.body, b"body of /nostore");
    }
    assert_eq!(origin.requests(), 200);
    eprintln!("origin peak: {} requests at once", origin.requests_peak());
    assert!(
        origin.requests_peak() > 1,
        "the origin saw the requests one at a time"
    );
}

/// A filler that overruns the wait limit loses its lease: after the limit,
/// a miss on the other worker takes the lease over and fetches (counted in
/// `ringcache_lease_takeovers_total`), and its own later misses wait for it.
fn overdue_lease_is_taken_over(io: &str) {
    const LATE: usize = 16;
    let origin = TestOrigin::start(|req| {
        let body = format!("body of {}", req.path());
        let reply = Reply::Send(response(
            200,
            &[("Cache-Control", "max-age=60")],
            body.as_bytes(),
        ));
        if req.seq == 0 {
            Reply::After(Duration::from_millis(2500), Box::new(reply))
        } else {
            reply
        }
    });
    let Some((_dir, server)) = Server::serve_with_config(
        io,
        Some(&origin.url()),
        2,
        "[limits]\ncoalesce_wait_timeout = \"300ms\"\n",
    ) else {
        return;
    };
    let mut first = server.client();
    first.timeout = Duration::from_secs(10);
    first.send(get_request("/overdue").as_bytes());
    assert!(origin.wait_requests(1, Duration::from_secs(5)));
    // The lease is overdue once the wait limit has passed (the filler waits
    // 2.5 s for the origin): a time limit, so a sleep well beyond it.
    std::thread::sleep(Duration::from_millis(600));
    let mut late: Vec<Client> = (0..LATE)
        .map(|_| {
            let mut c = server.client();
            c.timeout = Duration::from_secs(10);
            c
        })
        .collect();
    for c in late.iter_mut() {
        c.send(get_request("/overdue").as_bytes());
    }
    for c in late.iter_mut() {
        let r = c.read_response();
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(r.body, b"body of /overdue");
    }
    assert_eq!(first.read_response().status, 200);
    let m = server.metrics();
    let per_worker = requests_per_worker(&server, 2);
    eprintln!(
        "takeovers {}, origin requests {}, per worker {per_worker:?}",
        m.value("ringcache_lease_takeovers_total"),
        origin.requests()
    );
    // Sixteen connections all on the filler's worker: 2^-16.
    assert_eq!(m.value("ringcache_lease_takeovers_total"), 1.0);
}

/// Bytes of the large body the streaming tests use, and the threshold.
const STREAM_BODY_BYTES: usize = 256 << 10;
const STREAM_CONFIG: &str = "[limits]\ncoalesce_stream_bytes_min = \"64KiB\"\n";

fn stream_body() -> Vec<u8> {
    (0..STREAM_BODY_BYTES)
        .map(|i| b'a' + (i % 26) as u8)
        .collect()
}

/// Open `count` clients and send `path` on each; wait until all but the
/// first wait for its fetch.
fn parked_herd(server: &Server, path: &str, count: usize) -> Vec<Client> {
    let mut clients: Vec<Client> = (0..count)
        .map(|_| {
            let mut c = server.client();
            c.timeout = Duration::from_secs(10);
            c
        })
        .collect();
    for c in clients.iter_mut() {
        c.send(get_request(path).as_bytes());
    }
    assert!(
        wait_until(Duration::from_secs(10), || {
            server.metrics().value("ringcache_coalesced_total") == (count - 1) as f64
        }),
        "the herd did not park"
    );
    clients
}

/// A response of at least `coalesce_stream_bytes_min` is streamed to the
/// filler and the waiters on its worker as it arrives: every client has the
/// head and half the body while the origin still holds the other half;
/// then everyone gets the whole body, from one origin fetch.
fn large_response_streams_to_waiters(io: &str) {
    let head_go = Arc::new(AtomicBool::new(false));
    let rest_go = Arc::new(AtomicBool::new(false));
    let go = Arc::clone(&rest_go);
    let origin = {
        let head_go = Arc::clone(&head_go);
        TestOrigin::start(move |_| {
            let whole = response(200, &[("Cache-Control", "max-age=60")], &stream_body());
            let cut = whole.len() - STREAM_BODY_BYTES / 2;
            Reply::Until(
                head_go.clone(),
                Box::new(Reply::Then(
                    whole[..cut].to_vec(),
                    Box::new(Reply::Until(
                        go.clone(),
                        Box::new(Reply::Send(whole[cut..].to_vec())),
                    )),
                )),
            )
        })
    };
    let Some((_dir, server)) = Server::serve_with_config(io, Some(&origin.url()), 1, STREAM_CONFIG)
    else {
        return;
    };
    let mut clients = parked_herd(&server, "/large", 16);
    head_go.store(true, Ordering::SeqCst);
    for c in clients.iter_mut() {
        assert!(
            c.wait_bytes(STREAM_BODY_BYTES / 2),
            "half the body did not arrive before the rest was sent; got {} bytes",
            c.leftover().len()
        );
    }
    rest_go.store(true, Ordering::SeqCst);
    let body = stream_body();
    for c in clients.iter_mut() {
        let r = c.read_response();
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(r.body.len(), STREAM_BODY_BYTES);
        assert!(r.body == body, "the streamed body differs");
    }
    assert_eq!(origin.requests(), 1);
    assert!(server.get("/large").is_hit());
}

/// A large response over two workers: the filler's worker streams it, the
/// other serves its waiters from the store once it is complete; everybody
/// gets the whole body from one origin fetch.
fn large_response_herd_across_workers(io: &str) {
    let origin = TestOrigin::start(|_| {
        let whole = response(200, &[("Cache-Control", "max-age=60")], &stream_body());
        Reply::After(Duration::from_millis(300), Box::new(Reply::Send(whole)))
    });
    let Some((_dir, server)) = Server::serve_with_config(io, Some(&origin.url()), 2, STREAM_CONFIG)
    else {
        return;
    };
    let body = stream_body();
    for r in herd(&server, "/large-across") {
        assert_eq!(r.status, 200, "{}", r.summary());
        assert!(r.body == body, "{}", r.summary());
    }
    assert_eq!(origin.requests(), 1);
    let per_worker = requests_per_worker(&server, 2);
    assert!(per_worker.iter().all(|&n| n > 0.0), "{per_worker:?}");
}

/// A waiter whose connection owes an earlier answer first is not streamed
/// to: its large answer waits, whole, behind the earlier one, and both
/// arrive in request order.
fn streamed_fill_keeps_pipelined_order(io: &str) {
    let origin = TestOrigin::start(|req| {
        if req.path() == "/slow" {
            let reply = Reply::Send(response(200, &[("Cache-Control", "no-store")], b"slow"));
            return Reply::After(Duration::from_millis(600), Box::new(reply));
        }
        let whole = response(200, &[("Cache-Control", "max-age=60")], &stream_body());
        Reply::After(Duration::from_millis(200), Box::new(Reply::Send(whole)))
    });
    let Some((_dir, server)) = Server::serve_with_config(io, Some(&origin.url()), 1, STREAM_CONFIG)
    else {
        return;
    };
    let mut filler = server.client();
    filler.send(get_request("/big").as_bytes());
    assert!(origin.wait_requests(1, Duration::from_secs(5)));
    let mut piped = server.client();
    piped.timeout = Duration::from_secs(10);
    piped.send(format!("{}{}", get_request("/slow"), get_request("/big")).as_bytes());
    let body = stream_body();
    let r = filler.read_response();
    assert!(r.status == 200 && r.body == body, "{}", r.summary());
    let first = piped.read_response();
    assert_eq!(first.body_str(), "slow", "{}", first.summary());
    let second = piped.read_response();
    assert!(
        second.status == 200 && second.body == body,
        "{}",
        second.summary()
    );
    assert!(second
        .cache_status_params()
        .iter()
        .any(|p| p == "collapsed"));
    assert_eq!(origin.requests(), 2, "one fetch of /big, one of /slow");
}

/// The origin dies in the middle of a streamed response: every client's
/// connection ends short of the Content-Length it was promised (no error
/// page mixed into the body), nothing is stored, and the next request
/// fetches anew.
fn streamed_response_cut_short_closes_clients(io: &str) {
    let head_go = Arc::new(AtomicBool::new(false));
    let origin = {
        let head_go = Arc::clone(&head_go);
        TestOrigin::start(move |req| {
            let whole = response(200, &[("Cache-Control", "max-age=60")], &stream_body());
            if req.seq > 0 {
                return Reply::Send(whole);
            }
            // The head and half the body, then the connection dies.
            let cut = whole.len() - STREAM_BODY_BYTES / 2;
            Reply::Until(
                head_go.clone(),
                Box::new(Reply::Then(whole[..cut].to_vec(), Box::new(Reply::Drop))),
            )
        })
    };
    let Some((_dir, server)) = Server::serve_with_config(io, Some(&origin.url()), 1, STREAM_CONFIG)
    else {
        return;
    };
    let mut clients = parked_herd(&server, "/cut", 16);
    head_go.store(true, Ordering::SeqCst);
    for c in clients.iter_mut() {
        match c.try_read_response() {
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}"),
            Ok(r) => panic!("a response came whole from a torn origin: {}", r.summary()),
        }
    }
    assert_eq!(origin.requests(), 1);
    let r = server.get("/cut");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert!(r.body == stream_body(), "the refetched body differs");
    assert!(!r.is_hit());
    assert_eq!(origin.requests(), 2, "the next request fetched anew");
}

// ----- the window between a lookup and the lease ----------------------------
//
// A worker that finds nothing usable takes the key's lease next. Another
// worker's fill may store its answer and release the lease in between;
// these scenarios make that happen many times over and count what the
// origin saw. The window is microseconds wide, so they race thousands of
// keys, each asked by every connection at once on both workers.

/// Keys each racing scenario runs through.
const RACE_KEYS: usize = 2000;
/// Keep-alive connections per worker in a racing scenario.
const RACE_CONNECTIONS_PER_WORKER: usize = 4;

/// Keep-alive connections to a two-worker `server`, `per_worker` on each
/// worker, alternating. Which worker accepted a connection shows in
/// `ringcache_worker_requests_total` after one request on it: a TRACE,
/// refused with a 405 that keeps the connection and never reaches the
/// origin.
fn connections_on_both_workers(server: &Server, per_worker: usize) -> Vec<Client> {
    let mut on: [Vec<Client>; 2] = [Vec::new(), Vec::new()];
    let mut before = requests_per_worker(server, 2);
    // SO_REUSEPORT picks the worker by a hash of the address pair: 16
    // tries per connection make running short vanishingly unlikely.
    for _ in 0..per_worker * 2 * 16 {
        if on.iter().all(|c| c.len() >= per_worker) {
            break;
        }
        let mut c = server.client();
        c.send(b"TRACE / HTTP/1.1\r\nHost: ringcache.test\r\n\r\n");
        let r = c.read_response();
        assert_eq!(r.status, 405, "{}", r.summary());
        let after = requests_per_worker(server, 2);
        let w = (0..2)
            .find(|&w| after[w] > before[w])
            .expect("one worker counted the TRACE");
        before = after;
        if on[w].len() < per_worker {
            on[w].push(c);
        }
    }
    assert!(
        on.iter().all(|c| c.len() == per_worker),
        "connections per worker: {} and {}",
        on[0].len(),
        on[1].len()
    );
    let [a, b] = on;
    a.into_iter().zip(b).flat_map(|(a, b)| [a, b]).collect()
}

/// Every connection asks for each of `paths` in turn, all connections at
/// once for each path (a barrier per path). Returns one line for every
/// answer that is not a 200 with `body(path)`, or not an answer at all.
fn race_paths(
    conns: Vec<Client>,
    paths: &Arc<Vec<String>>,
    body: fn(&str) -> String,
) -> Vec<String> {
    let barrier = Arc::new(std::sync::Barrier::new(conns.len()));
    let threads: Vec<_> = conns
        .into_iter()
        .map(|mut c| {
            let (barrier, paths) = (barrier.clone(), paths.clone());
            std::thread::spawn(move || {
                let mut wrong = Vec::new();
                let mut broken = false;
                for path in paths.iter() {
                    // Every thread reaches every barrier, whatever it got.
                    barrier.wait();
                    if broken {
                        continue;
                    }
                    let answer = c
                        .try_send(get_request(path).as_bytes())
                        .and_then(|()| c.try_read_response());
                    match answer {
                        Ok(r) if r.status == 200 && r.body == body(path).as_bytes() => {}
                        Ok(r) => wrong.push(format!("{path}: {}", r.summary())),
                        Err(e) => {
                            wrong.push(format!("{path}: {e}"));
                            broken = true;
                        }
                    }
                }
                wrong
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().expect("a racing client"))
        .collect()
}

/// Paths of `paths` the origin was not asked exactly `want` times, with
/// their counts.
fn fetched_otherwise(origin: &TestOrigin, paths: &[String], want: usize) -> Vec<(String, usize)> {
    let mut counts = std::collections::HashMap::new();
    for r in origin.all_requests() {
        *counts.entry(r.target).or_insert(0) += 1;
    }
    paths
        .iter()
        .map(|p| (p.clone(), counts.get(p).copied().unwrap_or(0)))
        .filter(|(_, n)| *n != want)
        .collect()
}

fn race_key_paths(prefix: &str) -> Arc<Vec<String>> {
    Arc::new((0..RACE_KEYS).map(|i| format!("{prefix}/{i}")).collect())
}

/// An origin that answers at once with `body of PATH`: the first answer
/// for a path carries the fields `first`, later ones `max-age=60`.
fn racing_origin(first: &'static [(&'static str, &'static str)]) -> TestOrigin {
    let seen = std::sync::Mutex::new(std::collections::HashSet::new());
    TestOrigin::start(move |req| {
        let body = body_of(req.path());
        let later: &[(&str, &str)] = &[("Cache-Control", "max-age=60")];
        let first_answer = seen.lock().unwrap().insert(req.target.clone());
        let fields = if first_answer { first } else { later };
        Reply::Send(response(200, fields, body.as_bytes()))
    })
}

fn body_of(path: &str) -> String {
    format!("body of {path}")
}

/// Nothing in `wrong` (from [`race_paths`]).
#[track_caller]
fn assert_all_answered(wrong: &[String]) {
    assert!(
        wrong.is_empty(),
        "{} wrong answers, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
}

/// The origin was asked for each of `paths` exactly `want` times.
#[track_caller]
fn assert_fetched_each(origin: &TestOrigin, paths: &[String], want: usize) {
    let otherwise = fetched_otherwise(origin, paths, want);
    assert!(
        otherwise.is_empty(),
        "{} of {} keys not fetched exactly {want} time(s), e.g. {:?}",
        otherwise.len(),
        paths.len(),
        &otherwise[..otherwise.len().min(5)]
    );
}

/// Store each of `RACE_KEYS` paths under `prefix` once through `server`
/// (one connection, in turn), then race them over both workers; the paths.
fn race_stored_keys(server: &Server, prefix: &str) -> Arc<Vec<String>> {
    let paths = race_key_paths(prefix);
    let mut c = server.client();
    for p in paths.iter() {
        let r = c.get(p);
        assert!(r.cache_status().contains("stored"), "{p}: {}", r.summary());
    }
    drop(c);
    let conns = connections_on_both_workers(server, RACE_CONNECTIONS_PER_WORKER);
    assert_all_answered(&race_paths(conns, &paths, body_of));
    paths
}

/// Thousands of cold keys, each asked at the same moment by four
/// connections on each of two workers, with an origin that answers at
/// once: the origin sees every key exactly once. A worker that misses
/// while another worker stores the key and lets its lease go finds the
/// answer when it looks again under the lease.
fn racing_misses_across_workers_fetch_each_key_once(io: &str) {
    let origin = racing_origin(&[("Cache-Control", "max-age=60")]);
    let Some(server) = Server::serve(io, Some(&origin.url()), 2, &[]) else {
        return;
    };
    let conns = connections_on_both_workers(&server, RACE_CONNECTIONS_PER_WORKER);
    let paths = race_key_paths("/race-miss");
    assert_all_answered(&race_paths(conns, &paths, body_of));
    assert_fetched_each(&origin, &paths, 1);
    // Each key's one filler looked again under its lease and fetched; a
    // `hit` is a request that found the key stored on that second look.
    let m = server.metrics();
    let (hit, miss) = (
        m.labelled("ringcache_lease_rechecks_total", "result=\"hit\""),
        m.labelled("ringcache_lease_rechecks_total", "result=\"miss\""),
    );
    eprintln!("lease re-checks: hit {hit} miss {miss}");
    assert_eq!(miss, RACE_KEYS as f64, "one leased fetch per key");
    // The filler's answer is the key's one `miss`; every other client got
    // a hit or a collapsed answer, those found on the second look too.
    let outcome = |o: &str| m.labelled("ringcache_cache_status_total", &format!("outcome=\"{o}\""));
    assert_eq!(outcome("miss"), RACE_KEYS as f64);
    let others = (2 * RACE_CONNECTIONS_PER_WORKER - 1) * RACE_KEYS;
    assert_eq!(outcome("hit") + outcome("collapsed"), others as f64);
    assert!(
        outcome("collapsed") >= hit,
        "re-check answers count as collapsed"
    );
}

/// The same race on stored keys that are stale (stored already stale, no
/// stale-while-revalidate): each is fetched anew exactly once, however many
/// connections on both workers find it stale at the same moment.
fn racing_stale_misses_across_workers_refetch_each_key_once(io: &str) {
    let origin = racing_origin(&[("Cache-Control", "max-age=1"), ("Age", "10")]);
    let Some(server) = Server::serve(io, Some(&origin.url()), 2, &[]) else {
        return;
    };
    let paths = race_stored_keys(&server, "/race-stale");
    assert_fetched_each(&origin, &paths, 2);
}

/// Stored keys that are due for a background refresh (their first answer
/// has `first`; `extra` configures the server), each asked at the same
/// moment by four connections on each of two workers: every client is
/// answered from the store at once, and each key is refreshed exactly once.
/// A worker that answered while another worker's refresh stored the key
/// and let its lease go sees the new object under the lease and sends
/// nothing.
fn race_background_refreshes(
    io: &str,
    first: &'static [(&'static str, &'static str)],
    extra: &[&str],
) {
    let origin = racing_origin(first);
    let Some(server) = Server::serve(io, Some(&origin.url()), 2, extra) else {
        return;
    };
    let paths = race_stored_keys(&server, "/race-refresh");
    // Every refresh started before the answer that caused it was sent.
    let refreshes = server.metrics().value("ringcache_refreshes_total");
    assert!(
        origin.wait_requests(2 * RACE_KEYS as u64, Duration::from_secs(20)),
        "refreshes reached the origin: {} of {RACE_KEYS}",
        origin.requests() - RACE_KEYS as u64
    );
    assert_fetched_each(&origin, &paths, 2);
    assert_eq!(refreshes, RACE_KEYS as f64, "one refresh per key");
}

/// Within stale-while-revalidate (stored already stale).
fn racing_stale_while_revalidate_refreshes_each_key_once(io: &str) {
    let first = &[
        ("Cache-Control", "max-age=1, stale-while-revalidate=60"),
        ("Age", "10"),
    ];
    race_background_refreshes(io, first, &[]);
}

/// Refresh-ahead: fresh, and stored already in the last half of its
/// lifetime (`Age: 60` of `max-age=100`, with `--refresh-ahead 50%`).
fn racing_refresh_ahead_refreshes_each_key_once(io: &str) {
    let first = &[("Cache-Control", "max-age=100"), ("Age", "60")];
    race_background_refreshes(io, first, &["--refresh-ahead", "50%"]);
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
    racing_misses_across_workers_fetch_each_key_once,
    racing_stale_misses_across_workers_refetch_each_key_once,
    racing_stale_while_revalidate_refreshes_each_key_once,
    racing_refresh_ahead_refreshes_each_key_once,
    refresh_ahead_keeps_a_hot_key_fresh,
    without_refresh_ahead_the_key_expires,
    thousand_clients_while_revalidating,
    overdue_lease_is_taken_over,
    large_response_streams_to_waiters,
    streamed_fill_keeps_pipelined_order,
    large_response_herd_across_workers,
    streamed_response_cut_short_closes_clients,
    thousand_clients_on_an_expired_key,
    filler_dies_mid_response_across_workers,
    filler_dies_and_the_other_worker_refetches_once,
    waiting_list_cap_across_workers,
    wait_limit_releases_waiters_across_workers,
    uncacheable_key_is_fetched_in_parallel_across_workers,
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
