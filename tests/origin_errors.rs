//! Origin failures as ringcache's clients see them: refused connections,
//! silent origins, slow origins, and pooled origin connections that die
//! between requests. Each scenario runs on both I/O backends.

#[macro_use]
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

fn errors_total(server: &Server) -> f64 {
    server.metrics().value("ringcache_errors_total")
}

fn origin_down_502(io: &str) {
    let dead = dead_port();
    let url = format!("http://{dead}");
    let Some(server) = Server::serve(io, Some(&url), 2, &[]) else {
        return;
    };
    let before = errors_total(&server);
    let mut c = server.client();
    for _ in 0..2 {
        // Errors are not cached: the second request fails the same way.
        let r = c.get("/api/items/1");
        assert_eq!(r.status, 502, "{}", r.summary());
        assert!(
            r.cache_status().contains("fwd=uri-miss"),
            "Cache-Status on a failed fetch: {}",
            r.summary()
        );
        assert!(!r.is_hit(), "{}", r.summary());
        if r.connection_has("close") {
            c = server.client();
        }
    }
    let moved = wait_until(Duration::from_secs(2), || {
        errors_total(&server) >= before + 2.0
    });
    assert!(
        moved,
        "ringcache_errors_total did not count the failures:\n{}",
        server.metrics().text
    );
}

fn origin_closes_without_answer_502(io: &str) {
    let origin = TestOrigin::start(|_| Reply::Drop);
    let Some(server) = Server::serve(io, Some(&origin.url()), 2, &[]) else {
        return;
    };
    let r = server.get("/api/items/1");
    assert_eq!(r.status, 502, "{}", r.summary());
    assert!(r.cache_status().contains("fwd=uri-miss"), "{}", r.summary());
    // One try plus at most one retry.
    let n = origin.requests();
    assert!((1..=2).contains(&n), "origin saw {n} requests");
}

fn origin_silent_504(io: &str) {
    let origin = TestOrigin::start(|req| match req.path() {
        "/hang" => Reply::Hang,
        "/slow" => Reply::After(
            Duration::from_millis(300),
            Box::new(Reply::Send(response(
                200,
                &[("Cache-Control", "no-store")],
                b"late but in time",
            ))),
        ),
        _ => Reply::Send(response(200, &[("Cache-Control", "no-store")], b"ok")),
    });
    let Some((_dir, server)) = Server::serve_with_config(
        io,
        Some(&origin.url()),
        2,
        "[limits]\norigin_response_timeout = \"1s\"\n",
    ) else {
        return;
    };
    let mut c = server.client();
    let t = Instant::now();
    let r = c.get("/hang");
    assert_eq!(r.status, 504, "{}", r.summary());
    eprintln!("504 after {:?} (origin_response_timeout 1s)", t.elapsed());
    assert!(origin.requests() >= 1, "the request reached the origin");

    // A slow origin within the timeout is fine, and the server still serves.
    let r = server.get("/slow");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.body_str(), "late but in time");
}

/// A keep-alive looking response; the origin closes its socket right after it.
fn closing_origin() -> TestOrigin {
    TestOrigin::start(|req| {
        let body = format!("answer to {}", req.path());
        Reply::SendClose(response(
            200,
            &[("Cache-Control", "no-store")],
            body.as_bytes(),
        ))
    })
}

fn pooled_connection_closed_after_response(io: &str) {
    let origin = closing_origin();
    // One worker: every request uses the same origin connection pool.
    let Some(server) = Server::serve(io, Some(&origin.url()), 1, &[]) else {
        return;
    };
    let mut c = server.client();
    for (i, path) in ["/a", "/b", "/c"].iter().enumerate() {
        let r = c.get(path);
        assert_eq!(r.status, 200, "request {i} {path}: {}", r.summary());
        assert_eq!(r.body_str(), format!("answer to {path}"));
        // Give the origin's close time to reach ringcache's idle socket.
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(origin.requests(), 3);
    assert_eq!(origin.connections(), 3, "one origin connection per request");
}

fn pooled_connection_dropped_on_reuse(io: &str) {
    // Every connection answers its first request; a second request on the same
    // connection is met with a close, as when an origin times out an idle
    // connection just as ringcache reuses it. GETs are retried once on a new
    // connection.
    let origin = TestOrigin::start(|req| {
        if req.seq_on_conn == 0 {
            let body = format!("answer to {}", req.path());
            Reply::Send(response(
                200,
                &[("Cache-Control", "no-store")],
                body.as_bytes(),
            ))
        } else {
            Reply::Drop
        }
    });
    let Some(server) = Server::serve(io, Some(&origin.url()), 1, &[]) else {
        return;
    };
    let mut c = server.client();
    for path in ["/a", "/b", "/c"] {
        let r = c.get(path);
        assert_eq!(r.status, 200, "{path}: {}", r.summary());
        assert_eq!(r.body_str(), format!("answer to {path}"));
    }
    let answered = origin
        .all_requests()
        .iter()
        .filter(|r| r.seq_on_conn == 0)
        .count();
    assert_eq!(
        answered, 3,
        "each GET answered on a fresh origin connection"
    );
    assert!(origin.connections() >= 3);
}

/// Every origin connection busy and no room to queue: 503 at once, with
/// Retry-After, and the request never reaches the origin.
fn origin_queue_full_503(io: &str) {
    let origin = TestOrigin::start(|_| {
        Reply::After(
            Duration::from_millis(500),
            Box::new(Reply::Send(response(
                200,
                &[("Cache-Control", "no-store")],
                b"ok",
            ))),
        )
    });
    let Some((_dir, server)) = Server::serve_with_config(
        io,
        Some(&origin.url()),
        1,
        "[limits]\norigin_connections_max = 1\norigin_idle_max = 1\norigin_queue_max = 0\n",
    ) else {
        return;
    };
    let mut first = server.client();
    first.send(get_request("/busy-1").as_bytes());
    assert!(origin.wait_requests(1, Duration::from_secs(5)));
    let r = server.get("/busy-2");
    assert_eq!(r.status, 503, "{}", r.summary());
    assert_eq!(r.header("retry-after"), Some("1"), "{}", r.summary());
    assert_eq!(first.read_response().status, 200);
    assert_eq!(origin.requests(), 1);
    let m = server.metrics();
    assert_eq!(m.labelled("ringcache_errors_total", "origin_busy"), 1.0);
}

/// The process-wide origin cap over two workers: each worker may open 3
/// connections but the process only 4. Twenty distinct-key misses at once
/// against an origin that holds every request: the origin never has more
/// than 4 connections open, what fits in the caps and the queues is
/// answered in full, and the rest gets 503 with Retry-After at once.
fn origin_total_cap_across_workers(io: &str) {
    const CLIENTS: usize = 20;
    const TOTAL_MAX: u64 = 4;
    let origin = TestOrigin::start(|req| {
        let body = format!("answer to {}", req.path());
        Reply::After(
            Duration::from_millis(600),
            Box::new(Reply::Send(response(
                200,
                &[("Cache-Control", "max-age=60")],
                body.as_bytes(),
            ))),
        )
    });
    let Some((_dir, server)) = Server::serve_with_config(
        io,
        Some(&origin.url()),
        2,
        "[limits]\norigin_connections_max = 3\norigin_idle_max = 3\n\
         origin_connections_total_max = 4\norigin_queue_max = 2\n",
    ) else {
        return;
    };
    let mut clients: Vec<Client> = (0..CLIENTS)
        .map(|_| {
            let mut c = server.client();
            c.timeout = Duration::from_secs(20);
            c
        })
        .collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(get_request(&format!("/capped/{i}")).as_bytes());
    }
    let (mut full, mut refused) = (0u64, 0u64);
    for (i, c) in clients.iter_mut().enumerate() {
        let r = c.read_response();
        match r.status {
            200 => {
                assert_eq!(r.body_str(), format!("answer to /capped/{i}"));
                full += 1;
            }
            503 => {
                assert_eq!(r.header("retry-after"), Some("1"), "{}", r.summary());
                refused += 1;
            }
            _ => panic!("neither the answer nor 503: {}", r.summary()),
        }
    }
    eprintln!(
        "answered {full}, refused {refused}, origin peak {} connections, {} requests",
        origin.connections_peak(),
        origin.requests_peak()
    );
    // Requests in progress, not connections: the test origin notices a
    // closed connection only when its thread next reads, so its connection
    // count can lag a slot handed from one worker to another.
    assert!(
        origin.requests_peak() <= TOTAL_MAX,
        "the origin had {} requests in progress at once",
        origin.requests_peak()
    );
    // At most 4 connections and 2 queued per worker; at least one worker's
    // 3 connections and 2 queued are taken.
    assert!((5..=8).contains(&full), "answered {full}");
    assert_eq!(full + refused, CLIENTS as u64);
    assert_eq!(
        origin.requests(),
        full,
        "only the answered reached the origin"
    );
    let m = server.metrics();
    assert_eq!(
        m.labelled("ringcache_errors_total", "origin_busy"),
        refused as f64
    );
    // Everything that was held back has drained: a new miss goes through.
    let r = server.get("/capped/after");
    assert_eq!(r.status, 200, "{}", r.summary());
}

/// One origin connection for the whole process, two workers, a queue that
/// holds everything: every request is answered, one at a time at the
/// origin. The worker without the slot gets it when the other lets its
/// connection go (it does not wait out the idle timeout).
fn origin_total_cap_moves_between_workers(io: &str) {
    const CLIENTS: usize = 12;
    let origin = TestOrigin::start(|req| {
        let body = format!("answer to {}", req.path());
        Reply::After(
            Duration::from_millis(100),
            Box::new(Reply::Send(response(
                200,
                &[("Cache-Control", "max-age=60")],
                body.as_bytes(),
            ))),
        )
    });
    let Some((_dir, server)) = Server::serve_with_config(
        io,
        Some(&origin.url()),
        2,
        "[limits]\norigin_connections_total_max = 1\norigin_idle_timeout = \"60s\"\n",
    ) else {
        return;
    };
    let mut clients: Vec<Client> = (0..CLIENTS)
        .map(|_| {
            let mut c = server.client();
            c.timeout = Duration::from_secs(20);
            c
        })
        .collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(get_request(&format!("/one-at-a-time/{i}")).as_bytes());
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let r = c.read_response();
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(r.body_str(), format!("answer to /one-at-a-time/{i}"));
    }
    assert_eq!(origin.requests(), CLIENTS as u64);
    eprintln!(
        "origin: {} connections, at most {} open at once",
        origin.connections(),
        origin.connections_peak()
    );
    assert_eq!(
        origin.requests_peak(),
        1,
        "one request at a time at the origin"
    );
    let m = server.metrics();
    assert!(m.value("ringcache_origin_connections_open") <= 1.0);
}

/// One origin connection for the process, two workers, and an origin
/// that holds the first request until the others are answered: the
/// requests queued behind it wait `limits.origin_queue_timeout` and are
/// answered 503 with Retry-After (with a log line), without reaching the
/// origin; the held one then completes.
fn origin_queue_timeout_503(io: &str) {
    const QUEUED: usize = 3;
    let queued_answered = Arc::new(AtomicBool::new(false));
    let release = queued_answered.clone();
    let origin = TestOrigin::start(move |req| {
        let reply = Reply::Send(response(
            200,
            &[("Cache-Control", "max-age=60")],
            format!("answer to {}", req.path()).as_bytes(),
        ));
        if req.path() == "/held" {
            Reply::Until(release.clone(), Box::new(reply))
        } else {
            reply
        }
    });
    let Some((_dir, server)) = Server::serve_with_config(
        io,
        Some(&origin.url()),
        2,
        "[limits]\norigin_connections_total_max = 1\norigin_queue_timeout = \"500ms\"\n",
    ) else {
        return;
    };
    let mut held = server.client();
    held.timeout = Duration::from_secs(20);
    held.send(get_request("/held").as_bytes());
    assert!(origin.wait_requests(1, Duration::from_secs(5)));
    let mut queued: Vec<Client> = (0..QUEUED)
        .map(|_| {
            let mut c = server.client();
            c.timeout = Duration::from_secs(20);
            c
        })
        .collect();
    for (i, c) in queued.iter_mut().enumerate() {
        c.send(get_request(&format!("/queued/{i}")).as_bytes());
    }
    for c in queued.iter_mut() {
        let r = c.read_response();
        assert_eq!(r.status, 503, "{}", r.summary());
        assert_eq!(r.header("retry-after"), Some("1"), "{}", r.summary());
        assert!(
            r.cache_status().contains("detail=origin-queue-timeout"),
            "{}",
            r.summary()
        );
    }
    queued_answered.store(true, Ordering::SeqCst);
    let r = held.read_response();
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.body_str(), "answer to /held");
    assert_eq!(origin.requests(), 1, "the queued requests never went out");
    let m = server.metrics();
    assert_eq!(
        m.labelled("ringcache_errors_total", "origin_busy"),
        QUEUED as f64
    );
    assert!(
        server.logged("for an origin connection; answered 503"),
        "a log line says so"
    );
    // The queue is empty again: a new miss goes through.
    assert_eq!(server.get("/after").status, 200);
}

both_io!(
    origin_queue_timeout_503,
    origin_total_cap_moves_between_workers,
    origin_total_cap_across_workers,
    origin_queue_full_503,
    origin_down_502,
    origin_closes_without_answer_502,
    origin_silent_504,
    pooled_connection_closed_after_response,
    pooled_connection_dropped_on_reuse,
);
