//! Validation (RFC 9111 §4.3) and conditional requests answered from the
//! cache (RFC 9111 §4.3.2, RFC 9110 §13). Each scenario runs on both I/O
//! backends against a scripted origin that checks the request it got.
//!
//! Stale objects are made without waiting: the origin sends an `Age`
//! beyond the freshness lifetime (RFC 9111 §4.2.3).

#[macro_use]
mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const LM: &str = "Mon, 01 Jan 2024 00:00:00 GMT";

fn with_origin(io: &str, workers: usize, origin: TestOrigin) -> Option<(TestOrigin, Server)> {
    let server = Server::serve(io, Some(&origin.url()), workers, &[])?;
    Some((origin, server))
}

fn request(server: &Server, method: &str, path: &str, fields: &str) -> Response {
    let mut c = server.client();
    c.send(
        format!("{method} {path} HTTP/1.1\r\nHost: ringcache.test\r\n{fields}\r\n\r\n").as_bytes(),
    );
    if method == "HEAD" {
        c.read_head_response()
    } else {
        c.read_response()
    }
}

fn param(r: &Response, name: &str) -> Option<String> {
    r.cache_status_params()
        .into_iter()
        .find_map(|p| p.strip_prefix(&format!("{name}=")).map(str::to_string))
}

/// First answer: a stale 200 with validators; then `later` for each request.
fn validating_origin(later: impl Fn(u64, &Request) -> Reply + Send + Sync + 'static) -> TestOrigin {
    let seen = Arc::new(AtomicU64::new(0));
    TestOrigin::start(move |req| {
        let n = seen.fetch_add(1, Ordering::SeqCst);
        if n == 0 {
            Reply::Send(response(
                200,
                &[
                    ("Cache-Control", "max-age=1"),
                    ("Age", "10"),
                    ("ETag", "\"v1\""),
                    ("Last-Modified", LM),
                    ("X-Version", "1"),
                    ("Content-Type", "text/plain"),
                ],
                b"stored body",
            ))
        } else {
            later(n, req)
        }
    })
}

fn not_modified(fields: &[(&str, &str)]) -> Reply {
    Reply::Send(response(304, fields, b""))
}

/// §4.3.1: a stale response with validators is validated with
/// If-None-Match and If-Modified-Since; §4.3.3/§4.3.4: the 304 selects it,
/// its fields update the stored ones (§3.2), the object is stored again
/// with the new freshness and its body served (fwd=stale; fwd-status=304).
fn revalidation_304(io: &str) {
    let origin = validating_origin(|_, req| {
        let ok = req.header("if-none-match") == Some("\"v1\"")
            && req.header("if-modified-since") == Some(LM);
        if ok {
            not_modified(&[
                ("Cache-Control", "max-age=600"),
                ("ETag", "\"v1\""),
                ("X-Version", "2"),
            ])
        } else {
            Reply::Send(response(500, &[], b"not conditional"))
        }
    });
    let Some((origin, server)) = with_origin(io, 2, origin) else {
        return;
    };
    server.get("/v");
    let r = server.get("/v");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.body, b"stored body");
    assert_eq!(r.header("x-version"), Some("2"), "{}", r.summary());
    assert_eq!(r.header("content-type"), Some("text/plain"));
    let params = r.cache_status_params();
    assert_eq!(
        params[..2],
        ["fwd=stale", "fwd-status=304"],
        "{}",
        r.summary()
    );
    assert!(params.iter().any(|p| p == "stored"), "{}", r.summary());
    let ttl: i64 = param(&r, "ttl").unwrap().parse().unwrap();
    assert!((590..=600).contains(&ttl), "{}", r.summary());
    // Fresh again: a hit with the merged fields.
    let r = server.get("/v");
    assert!(r.is_hit(), "{}", r.summary());
    assert_eq!(r.header("x-version"), Some("2"));
    assert_eq!(r.body, b"stored body");
    assert_eq!(origin.requests(), 2);
}

/// §4.3.3: a 200 to the conditional request replaces the stored response.
fn revalidation_200_replaces(io: &str) {
    let origin = validating_origin(|_, _| {
        Reply::Send(response(
            200,
            &[("Cache-Control", "max-age=600"), ("ETag", "\"v2\"")],
            b"new body",
        ))
    });
    let Some((origin, server)) = with_origin(io, 2, origin) else {
        return;
    };
    server.get("/r");
    let r = server.get("/r");
    assert_eq!(r.body, b"new body", "{}", r.summary());
    assert_eq!(
        r.cache_status_params(),
        ["fwd=stale", "fwd-status=200", "stored"]
    );
    let r = server.get("/r");
    assert!(r.is_hit());
    assert_eq!(r.body, b"new body");
    assert_eq!(r.header("etag"), Some("\"v2\""));
    assert_eq!(origin.requests(), 2);
}

/// §4.3.1/§4.3.2: the client's own preconditions are not forwarded on
/// ringcache's validation; they are evaluated against the response
/// ringcache would serve (304 when they match, 200 otherwise).
fn client_preconditions_not_forwarded(io: &str) {
    let origin = validating_origin(|_, _| {
        not_modified(&[
            ("Cache-Control", "max-age=1"),
            ("Age", "10"),
            ("ETag", "\"v1\""),
        ])
    });
    let Some((origin, server)) = with_origin(io, 2, origin) else {
        return;
    };
    server.get("/p");
    let r = request(&server, "GET", "/p", "If-None-Match: \"other\"");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.body, b"stored body");
    let sent = origin.last_request().unwrap();
    assert_eq!(
        sent.headers_all("if-none-match"),
        ["\"v1\""],
        "{}",
        sent.head_text()
    );
    let r = request(&server, "GET", "/p", "If-None-Match: W/\"v1\"");
    assert_eq!(r.status, 304, "{}", r.summary());
    assert_eq!(r.header("etag"), Some("\"v1\""));
    assert_eq!(param(&r, "fwd-status").as_deref(), Some("304"));
    assert_eq!(origin.requests(), 3);
}

/// §4.3.2, RFC 9110 §13.1.2/§13.1.3/§13.2.2: a fresh stored response
/// answers If-None-Match (weak comparison) and, only without it,
/// If-Modified-Since, with 304 and the fields §15.4.5 lists; no origin
/// request.
fn conditionals_from_cache(io: &str) {
    let origin = TestOrigin::start(|_| {
        Reply::Send(response(
            200,
            &[
                ("Cache-Control", "max-age=600"),
                ("ETag", "W/\"v1\""),
                ("Last-Modified", LM),
                ("Content-Type", "text/plain"),
            ],
            b"body",
        ))
    });
    let Some((origin, server)) = with_origin(io, 2, origin) else {
        return;
    };
    server.get("/c");
    let cases = [
        ("If-None-Match: \"v1\"", 304),
        ("If-None-Match: \"x\", W/\"v1\"", 304),
        ("If-None-Match: *", 304),
        ("If-None-Match: \"v2\"", 200),
        ("If-Modified-Since: Mon, 01 Jan 2024 00:00:00 GMT", 304),
        ("If-Modified-Since: Tue, 02 Jan 2024 00:00:00 GMT", 304),
        ("If-Modified-Since: Sun, 31 Dec 2023 00:00:00 GMT", 200),
        ("If-Modified-Since: not a date", 200),
        (
            "If-None-Match: \"v2\"\r\nIf-Modified-Since: Tue, 02 Jan 2024 00:00:00 GMT",
            200,
        ),
    ];
    for (fields, status) in cases {
        let r = request(&server, "GET", "/c", fields);
        assert_eq!(r.status, status, "{fields}: {}", r.summary());
        assert!(r.is_hit(), "{fields}: {}", r.summary());
        if status == 304 {
            assert!(r.body.is_empty());
            assert_eq!(r.header("etag"), Some("W/\"v1\""), "{}", r.summary());
            assert_eq!(r.header("cache-control"), Some("max-age=600"));
            assert!(r.header("content-type").is_none(), "{}", r.summary());
            assert!(r.header("content-length").is_none(), "{}", r.summary());
        } else {
            assert_eq!(r.body, b"body");
        }
    }
    // HEAD is answered from the stored GET, conditionally too.
    let r = request(&server, "HEAD", "/c", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.content_length(), Some(4));
    let r = request(&server, "HEAD", "/c", "If-None-Match: W/\"v1\"");
    assert_eq!(r.status, 304, "{}", r.summary());
    assert_eq!(origin.requests(), 1);
}

/// RFC 9110 §13.2.1: preconditions are ignored when the answer without them
/// would not be a 2xx. A stored 404 with a matching validator is a 404.
fn conditionals_ignored_for_stored_errors(io: &str) {
    let origin = TestOrigin::start(|_| {
        Reply::Send(response(
            404,
            &[
                ("Cache-Control", "max-age=600"),
                ("ETag", "\"gone\""),
                ("Last-Modified", LM),
                ("Content-Type", "text/plain"),
            ],
            b"no such item",
        ))
    });
    let Some((origin, server)) = with_origin(io, 1, origin) else {
        return;
    };
    assert_eq!(server.get("/missing").status, 404);
    for fields in [
        "If-None-Match: \"gone\"",
        "If-None-Match: *",
        "If-Modified-Since: Tue, 02 Jan 2024 00:00:00 GMT",
    ] {
        let r = request(&server, "GET", "/missing", fields);
        assert_eq!(r.status, 404, "{fields}: {}", r.summary());
        assert!(r.is_hit(), "{fields}: {}", r.summary());
        assert_eq!(r.body, b"no such item", "{fields}");
    }
    assert_eq!(origin.requests(), 1);
}

/// §4.3.2: If-Match and If-Unmodified-Since are for the origin: such a
/// request is forwarded as it came.
fn if_match_forwarded(io: &str) {
    let origin = TestOrigin::fixed("max-age=600", "body");
    let Some((origin, server)) = with_origin(io, 2, origin) else {
        return;
    };
    server.get("/m");
    let r = request(&server, "GET", "/m", "If-Match: \"v1\"");
    assert_eq!(r.status, 200);
    assert_eq!(origin.requests(), 2);
    let sent = origin.last_request().unwrap();
    assert_eq!(sent.header("if-match"), Some("\"v1\""));
}

/// §4.3.4: a 304 that selects no stored response (another validator) is
/// not used; ringcache asks again without conditions.
fn unselected_304_refetches(io: &str) {
    let origin = validating_origin(|n, req| {
        if n == 1 {
            assert!(req.header("if-none-match").is_some());
            not_modified(&[("ETag", "\"v9\"")])
        } else {
            assert!(req.header("if-none-match").is_none(), "{}", req.head_text());
            Reply::Send(response(200, &[("Cache-Control", "max-age=600")], b"full"))
        }
    });
    let Some((origin, server)) = with_origin(io, 2, origin) else {
        return;
    };
    server.get("/u");
    let r = server.get("/u");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.body, b"full");
    assert_eq!(origin.requests(), 3);
}

/// §4.3 with §4 coalescing: concurrent requests for one stale key cause
/// one conditional request; every client gets the validated body.
fn revalidation_coalesces(io: &str) {
    let origin = validating_origin(|_, _| {
        Reply::After(
            Duration::from_millis(1000),
            Box::new(not_modified(&[
                ("Cache-Control", "max-age=600"),
                ("ETag", "\"v1\""),
            ])),
        )
    });
    let Some((origin, server)) = with_origin(io, 1, origin) else {
        return;
    };
    server.get("/k");
    for r in http_get_concurrently(server.addr, "/k", 8) {
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(r.body, b"stored body");
        assert_eq!(
            param(&r, "fwd-status").as_deref(),
            Some("304"),
            "{}",
            r.summary()
        );
    }
    assert_eq!(origin.requests(), 2, "one validation for every waiter");
}

/// The same across workers: the fill lease makes one validation for the
/// whole process; other workers answer from the validated object.
fn revalidation_coalesces_across_workers(io: &str) {
    let origin = validating_origin(|_, _| {
        Reply::After(
            Duration::from_millis(1000),
            Box::new(not_modified(&[
                ("Cache-Control", "max-age=600"),
                ("ETag", "\"v1\""),
            ])),
        )
    });
    let Some((origin, server)) = with_origin(io, 2, origin) else {
        return;
    };
    server.get("/x");
    for r in http_get_concurrently(server.addr, "/x", 16) {
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(r.body, b"stored body");
    }
    assert_eq!(origin.requests(), 2, "one validation for the process");
}

/// §5.2.1.4: a client's no-cache on a fresh response with validators
/// validates it (fwd=request; fwd-status=304) instead of a full fetch.
fn no_cache_request_validates(io: &str) {
    let origin = TestOrigin::start(|req| {
        if req.header("if-none-match") == Some("\"v1\"") {
            Reply::Send(response(304, &[("ETag", "\"v1\"")], b""))
        } else {
            Reply::Send(response(
                200,
                &[("Cache-Control", "max-age=600"), ("ETag", "\"v1\"")],
                b"body",
            ))
        }
    });
    let Some((origin, server)) = with_origin(io, 2, origin) else {
        return;
    };
    server.get("/n");
    let r = request(&server, "GET", "/n", "Cache-Control: no-cache");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"body");
    assert_eq!(
        r.cache_status_params()[..2],
        ["fwd=request", "fwd-status=304"],
        "{}",
        r.summary()
    );
    assert_eq!(origin.requests(), 2);
}

/// RFC 8246 §2: a fresh immutable response answers a reload without
/// asking the origin.
fn immutable_answers_reload(io: &str) {
    let origin = TestOrigin::fixed("max-age=600, immutable", "forever");
    let Some((origin, server)) = with_origin(io, 2, origin) else {
        return;
    };
    server.get("/i");
    for field in [
        "Cache-Control: no-cache",
        "Cache-Control: max-age=0",
        "Pragma: no-cache",
    ] {
        let r = request(&server, "GET", "/i", field);
        assert!(r.is_hit(), "{field}: {}", r.summary());
    }
    assert_eq!(origin.requests(), 1);
}

/// One client of a herd on a key under validation: its method, its own
/// request fields, and the status it must get.
type Asker = (&'static str, &'static str, u16);

/// How many times each herd repeats its list of clients, so that every kind
/// lands on both workers (SO_REUSEPORT spreads connections by their ports:
/// eight of one kind all on one worker, 2^-7).
const HERD_ROUNDS: usize = 8;

/// §4.3.2 with §4 coalescing, over two workers: a stale stored object
/// (ETag `"v1"`, Last-Modified) is validated once for a herd. The
/// validation is held at the origin until every client of the herd waits
/// for it (`ringcache_coalesced_total`), so every answer is collapsed:
/// from the filler's response on its worker, from the store on the other.
/// Each client's own If-None-Match / If-Modified-Since is judged against
/// the validated response: a 304 with the §15.4.5 fields and no body, or
/// the 200 with the whole body.
fn herd_while_validating(io: &str, path: &str, askers: &[Asker]) {
    let release = Arc::new(AtomicBool::new(false));
    let held = release.clone();
    let origin = validating_origin(move |_, req| {
        let reply = if req.header("if-none-match") == Some("\"v1\"") {
            not_modified(&[("Cache-Control", "max-age=600"), ("ETag", "\"v1\"")])
        } else {
            Reply::Send(response(500, &[], b"not conditional"))
        };
        Reply::Until(held.clone(), Box::new(reply))
    });
    let Some((origin, server)) = with_origin(io, 2, origin) else {
        return;
    };
    assert_eq!(server.get(path).body, b"stored body");
    // The filler: a plain request, its validation held at the origin.
    let mut filler = server.client();
    filler.send(get_request(path).as_bytes());
    assert!(origin.wait_requests(2, Duration::from_secs(10)));
    let herd: Vec<(Asker, Client)> = (0..HERD_ROUNDS)
        .flat_map(|_| askers.iter().copied())
        .map(|asker @ (method, fields, _)| {
            let mut c = server.client();
            c.timeout = Duration::from_secs(20);
            let fields = if fields.is_empty() {
                String::new()
            } else {
                format!("{fields}\r\n")
            };
            c.send(
                format!("{method} {path} HTTP/1.1\r\nHost: ringcache.test\r\n{fields}\r\n")
                    .as_bytes(),
            );
            (asker, c)
        })
        .collect();
    let waiting = wait_until(Duration::from_secs(10), || {
        server.metrics().value("ringcache_coalesced_total") == herd.len() as f64
    });
    release.store(true, Ordering::SeqCst);
    assert!(waiting, "every client of the herd waits for the validation");
    let r = filler.read_response();
    assert_eq!((r.status, &r.body[..]), (200, &b"stored body"[..]));
    let mut not_modified_count = 0;
    for ((method, fields, status), mut c) in herd {
        let r = if method == "HEAD" {
            c.read_head_response()
        } else {
            c.read_response()
        };
        let what = format!("{method} {fields:?}: {}", r.summary());
        assert_eq!(r.status, status, "{what}");
        assert!(
            r.cache_status_params().iter().any(|p| p == "collapsed"),
            "{what}"
        );
        assert_eq!(r.header("etag"), Some("\"v1\""), "{what}");
        if status == 304 {
            not_modified_count += 1;
            assert!(r.body.is_empty(), "{what}");
            assert!(r.header("content-length").is_none(), "{what}");
            assert!(r.header("content-type").is_none(), "{what}");
            assert_eq!(r.header("cache-control"), Some("max-age=600"), "{what}");
        } else {
            assert_eq!(r.content_length(), Some(11), "{what}");
            assert_eq!(r.header("content-type"), Some("text/plain"), "{what}");
            let body: &[u8] = if method == "HEAD" {
                b""
            } else {
                b"stored body"
            };
            assert_eq!(r.body, body, "{what}");
        }
    }
    assert_eq!(origin.requests(), 2, "one validation for the herd");
    let m = server.metrics();
    assert_eq!(
        m.labelled("ringcache_cache_status_total", "outcome=\"collapsed\""),
        (HERD_ROUNDS * askers.len()) as f64
    );
    assert_eq!(
        m.labelled("ringcache_responses_by_status_total", "code=\"3xx\""),
        not_modified_count as f64
    );
    // Both workers answered part of the herd: each parsed more than the
    // two requests before it (the one that stored the object, the filler).
    for w in 0..2 {
        let n = m.labelled(
            "ringcache_worker_requests_total",
            &format!("worker=\"{w}\""),
        );
        assert!(n > 2.0, "worker {w} parsed {n} requests");
    }
}

/// If-None-Match that matches the validated ETag (weakly too, in a list)
/// gets a 304, GET or HEAD; the others of the herd get the 200.
fn collapsed_if_none_match(io: &str) {
    herd_while_validating(
        io,
        "/herd-inm",
        &[
            ("GET", "If-None-Match: \"v1\"", 304),
            ("GET", "", 200),
            ("HEAD", "If-None-Match: \"v1\"", 304),
            ("GET", "If-None-Match: \"v0\", W/\"v1\"", 304),
            ("HEAD", "", 200),
        ],
    );
}

/// If-Modified-Since at or after the validated Last-Modified gets a 304.
fn collapsed_if_modified_since(io: &str) {
    herd_while_validating(
        io,
        "/herd-ims",
        &[
            (
                "GET",
                "If-Modified-Since: Mon, 01 Jan 2024 00:00:00 GMT",
                304,
            ),
            ("GET", "", 200),
            (
                "HEAD",
                "If-Modified-Since: Mon, 01 Jan 2024 00:00:00 GMT",
                304,
            ),
            (
                "GET",
                "If-Modified-Since: Tue, 02 Jan 2024 00:00:00 GMT",
                304,
            ),
        ],
    );
}

/// Conditions that do not match get the 200: another ETag, an earlier
/// date, and (RFC 9110 §13.2.2) a non-matching If-None-Match that makes a
/// matching If-Modified-Since moot.
fn collapsed_conditions_not_matching(io: &str) {
    herd_while_validating(
        io,
        "/herd-other",
        &[
            ("GET", "If-None-Match: \"v0\"", 200),
            (
                "GET",
                "If-Modified-Since: Sun, 31 Dec 2023 00:00:00 GMT",
                200,
            ),
            (
                "GET",
                "If-None-Match: \"v0\"\r\nIf-Modified-Since: Mon, 01 Jan 2024 00:00:00 GMT",
                200,
            ),
            ("HEAD", "If-None-Match: \"v0\"", 200),
        ],
    );
}

both_io!(
    conditionals_ignored_for_stored_errors,
    revalidation_304,
    revalidation_200_replaces,
    client_preconditions_not_forwarded,
    conditionals_from_cache,
    if_match_forwarded,
    unselected_304_refetches,
    revalidation_coalesces,
    revalidation_coalesces_across_workers,
    no_cache_request_validates,
    immutable_answers_reload,
    collapsed_if_none_match,
    collapsed_if_modified_since,
    collapsed_conditions_not_matching,
);
