//! Invalidation on writes (RFC 9111 §4.4): a non-error answer to an
//! unsafe request removes its target and the same-origin URIs in
//! `Location` and `Content-Location`; other origins and error answers
//! invalidate nothing. One scenario per requirement, each on both I/O
//! backends against a scripted counting origin.

#[macro_use]
mod common;

use common::*;

/// GETs are stored for a minute, body `get <host> <path>`; writes answer
/// by path.
fn origin() -> TestOrigin {
    TestOrigin::start(|req| match (req.method.as_str(), req.path()) {
        ("GET", p) => {
            let host = req.header("host").unwrap_or("").to_string();
            Reply::Send(response(
                200,
                &[("Cache-Control", "max-age=60")],
                format!("get {host} {p}").as_bytes(),
            ))
        }
        (_, "/created") => Reply::Send(response(201, &[("Location", "/things/5")], b"created")),
        (_, "/moved") => Reply::Send(response(
            200,
            &[("Content-Location", "http://ringcache.test/docs/v2")],
            b"updated",
        )),
        (_, "/elsewhere") => Reply::Send(response(
            201,
            &[
                ("Location", "http://other.test/things/9"),
                ("Content-Location", "//other.test/docs/9"),
            ],
            b"created elsewhere",
        )),
        (_, "/server-error") => Reply::Send(response(500, &[("Location", "/things/5")], b"failed")),
        (_, "/client-error") => Reply::Send(response(
            409,
            &[("Content-Location", "/docs/v2")],
            b"conflict",
        )),
        _ => Reply::Send(response(204, &[], b"")),
    })
}

fn with_origin(io: &str) -> Option<(TestOrigin, Server)> {
    let origin = origin();
    let server = Server::serve(io, Some(&origin.url()), 2, &[])?;
    Some((origin, server))
}

/// `GET path` with this Host, on a fresh connection.
fn get_host(server: &Server, host: &str, path: &str) -> Response {
    let mut c = server.client();
    c.send(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
    c.read_response()
}

/// Fetch and store each (host, path), and check it is a hit now.
#[track_caller]
fn store(server: &Server, objects: &[(&str, &str)]) {
    for (host, path) in objects {
        assert_eq!(get_host(server, host, path).status, 200);
        let r = get_host(server, host, path);
        assert!(r.is_hit(), "{host}{path} is stored: {}", r.summary());
    }
}

/// `method path` with a two-byte body; the answer's status.
fn write(server: &Server, method: &str, path: &str) -> u16 {
    let mut c = server.client();
    c.send(
        format!("{method} {path} HTTP/1.1\r\nHost: ringcache.test\r\nContent-Length: 2\r\n\r\nhi")
            .as_bytes(),
    );
    c.read_response().status
}

#[track_caller]
fn assert_invalidated(server: &Server, host: &str, path: &str) {
    let r = get_host(server, host, path);
    assert_eq!(
        r.cache_status_params()[0],
        "fwd=uri-miss",
        "{host}{path} is invalidated: {}",
        r.summary()
    );
}

#[track_caller]
fn assert_kept(server: &Server, host: &str, path: &str) {
    let r = get_host(server, host, path);
    assert!(r.is_hit(), "{host}{path} is kept: {}", r.summary());
}

fn invalidations(server: &Server) -> f64 {
    server.metrics().value("ringcache_invalidations_total")
}

/// §4.4: a non-error answer to an unsafe method invalidates the target
/// URI, whatever the method.
fn unsafe_method_invalidates_target(io: &str) {
    let Some((origin, server)) = with_origin(io) else {
        return;
    };
    let h = "ringcache.test";
    store(&server, &[(h, "/a"), (h, "/b"), (h, "/c"), (h, "/kept")]);
    assert_eq!(write(&server, "POST", "/a"), 204);
    assert_eq!(write(&server, "PUT", "/b"), 204);
    assert_eq!(write(&server, "DELETE", "/c"), 204);
    for p in ["/a", "/b", "/c"] {
        assert_invalidated(&server, h, p);
    }
    assert_kept(&server, h, "/kept");
    assert_eq!(invalidations(&server), 3.0);
    assert_eq!(origin.requests(), 4 + 3 + 3);
}

/// §4.4: a same-origin `Location` (relative here) is invalidated.
fn location_invalidated(io: &str) {
    let Some((_origin, server)) = with_origin(io) else {
        return;
    };
    let h = "ringcache.test";
    store(&server, &[(h, "/created"), (h, "/things/5")]);
    assert_eq!(write(&server, "POST", "/created"), 201);
    assert_invalidated(&server, h, "/created");
    assert_invalidated(&server, h, "/things/5");
    assert_eq!(invalidations(&server), 2.0);
}

/// §4.4: a same-origin `Content-Location` (absolute here) is invalidated.
fn content_location_invalidated(io: &str) {
    let Some((_origin, server)) = with_origin(io) else {
        return;
    };
    let h = "ringcache.test";
    store(&server, &[(h, "/moved"), (h, "/docs/v2")]);
    assert_eq!(write(&server, "PUT", "/moved"), 200);
    assert_invalidated(&server, h, "/moved");
    assert_invalidated(&server, h, "/docs/v2");
    assert_eq!(invalidations(&server), 2.0);
}

/// §4.4: `Location` and `Content-Location` naming another host are not
/// invalidated, neither under that host nor under the target's.
fn other_origin_not_invalidated(io: &str) {
    let Some((_origin, server)) = with_origin(io) else {
        return;
    };
    let (h, other) = ("ringcache.test", "other.test");
    store(
        &server,
        &[
            (h, "/elsewhere"),
            (other, "/things/9"),
            (other, "/docs/9"),
            (h, "/things/9"),
            (h, "/docs/9"),
        ],
    );
    assert_eq!(write(&server, "POST", "/elsewhere"), 201);
    assert_invalidated(&server, h, "/elsewhere");
    for (host, path) in [
        (other, "/things/9"),
        (other, "/docs/9"),
        (h, "/things/9"),
        (h, "/docs/9"),
    ] {
        assert_kept(&server, host, path);
    }
    assert_eq!(invalidations(&server), 1.0, "the target only");
}

/// §4.4: an error answer (5xx or 4xx) invalidates nothing: neither the
/// target nor its `Location` or `Content-Location`.
fn error_answer_invalidates_nothing(io: &str) {
    let Some((origin, server)) = with_origin(io) else {
        return;
    };
    let h = "ringcache.test";
    store(
        &server,
        &[
            (h, "/server-error"),
            (h, "/client-error"),
            (h, "/things/5"),
            (h, "/docs/v2"),
        ],
    );
    assert_eq!(write(&server, "PUT", "/server-error"), 500);
    assert_eq!(write(&server, "POST", "/client-error"), 409);
    for p in ["/server-error", "/client-error", "/things/5", "/docs/v2"] {
        assert_kept(&server, h, p);
    }
    assert_eq!(invalidations(&server), 0.0);
    assert_eq!(origin.requests(), 4 + 2);
}

both_io!(
    unsafe_method_invalidates_target,
    location_invalidated,
    content_location_invalidated,
    other_origin_not_invalidated,
    error_answer_invalidates_nothing,
);
