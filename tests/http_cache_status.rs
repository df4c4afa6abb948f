//! `Cache-Status` (RFC 9211) on every kind of answer, and interim
//! responses (RFC 9110 §15.2). Each scenario runs on both I/O backends.

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

fn with_origin(io: &str, origin: TestOrigin) -> Option<(TestOrigin, Server)> {
    let server = Server::serve(io, Some(&origin.url()), 2, &[])?;
    Some((origin, server))
}

fn request(server: &Server, method: &str, path: &str, fields: &str) -> Response {
    let mut c = server.client();
    c.send(
        format!("{method} {path} HTTP/1.1\r\nHost: ringcache.test\r\nContent-Length: 0\r\n{fields}\r\n\r\n")
            .as_bytes(),
    );
    c.read_response()
}

/// An origin that answers by path.
fn origin() -> TestOrigin {
    TestOrigin::start(|req| {
        let cc = match req.path() {
            "/fresh" => "max-age=100",
            "/stale" => "max-age=1",
            "/nostore" => "no-store",
            "/private" => "private, max-age=60",
            _ => "max-age=100",
        };
        let mut fields = vec![("Cache-Control", cc)];
        if req.path() == "/stale" {
            fields.push(("Age", "30"));
        }
        if req.path() == "/vary" {
            fields.push(("Vary", "*"));
        }
        if req.path() == "/found" {
            // 302 is not cacheable by default (RFC 9110 §15.1) and carries
            // no explicit freshness here.
            return Reply::Send(response(302, &[("Location", "/fresh")], b""));
        }
        Reply::Send(response(200, &fields, b"body"))
    })
}

/// RFC 9211 §2.1, §2.7: a hit, with the remaining freshness as ttl.
fn hit_has_ttl(io: &str) {
    let Some((_origin, server)) = with_origin(io, origin()) else {
        return;
    };
    let r = server.get("/fresh");
    assert_eq!(
        r.cache_status_params(),
        ["fwd=uri-miss", "fwd-status=200", "stored"],
        "§2.2 fwd=uri-miss, §2.3 fwd-status, §2.5 stored: {}",
        r.summary()
    );
    let r = server.get("/fresh");
    let params = r.cache_status_params();
    assert_eq!(params[0], "hit", "{}", r.summary());
    let ttl: i64 = params[1].strip_prefix("ttl=").unwrap().parse().unwrap();
    assert!((98..=100).contains(&ttl), "{}", r.summary());
}

/// §2.2 fwd=stale with fwd-status; §2.7 a negative ttl on a stale hit.
fn stale_forms(io: &str) {
    let Some((_origin, server)) = with_origin(io, origin()) else {
        return;
    };
    server.get("/stale");
    let r = server.get("/stale");
    assert_eq!(
        r.cache_status_params(),
        ["fwd=stale", "fwd-status=200", "stored"],
        "{}",
        r.summary()
    );
    let mut c = server.client();
    c.send(b"GET /stale HTTP/1.1\r\nHost: ringcache.test\r\nCache-Control: max-stale\r\n\r\n");
    let r = c.read_response();
    let params = r.cache_status_params();
    assert_eq!(params[0], "hit", "{}", r.summary());
    let ttl: i64 = params[1].strip_prefix("ttl=").unwrap().parse().unwrap();
    assert!(ttl <= -29, "{}", r.summary());
}

/// §2.2 fwd=method for unsafe methods, fwd=bypass for a GET ringcache
/// does not look up (it has a body), fwd=request when the request's
/// directives refuse a fresh stored response.
fn fwd_reasons(io: &str) {
    let Some((_origin, server)) = with_origin(io, origin()) else {
        return;
    };
    let r = request(&server, "POST", "/post", "");
    assert_eq!(r.cache_status_params()[0], "fwd=method", "{}", r.summary());
    let mut c = server.client();
    c.send(b"GET /body HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi");
    let r = c.read_response();
    assert_eq!(r.cache_status_params()[0], "fwd=bypass", "{}", r.summary());
    server.get("/fresh");
    let mut c = server.client();
    c.send(b"GET /fresh HTTP/1.1\r\nHost: ringcache.test\r\nCache-Control: no-cache\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.cache_status_params()[0], "fwd=request", "{}", r.summary());
}

/// §2.2: ringcache tells the two misses apart: nothing stored under the
/// URI is `fwd=uri-miss`, a stored URI with no variant for this request
/// is `fwd=vary-miss`; errors ringcache makes for a miss say the same.
fn uri_miss_and_vary_miss(io: &str) {
    let origin = TestOrigin::start(|req| {
        if req.path() == "/down" {
            return Reply::Drop;
        }
        let lang = req.header("accept-language").unwrap_or("").to_string();
        Reply::Send(response(
            200,
            &[
                ("Cache-Control", "max-age=100"),
                ("Vary", "Accept-Language"),
            ],
            format!("lang={lang}").as_bytes(),
        ))
    });
    let Some((origin, server)) = with_origin(io, origin) else {
        return;
    };
    let absent = request(&server, "GET", "/v", "Accept-Language: en");
    let unlisted = request(&server, "GET", "/v", "Accept-Language: fr");
    assert_eq!(
        (absent.cache_status_params(), unlisted.cache_status_params()),
        (
            vec![
                "fwd=uri-miss".into(),
                "fwd-status=200".into(),
                "stored".into()
            ],
            vec![
                "fwd=vary-miss".into(),
                "fwd-status=200".into(),
                "stored".into()
            ],
        ),
        "{} / {}",
        absent.summary(),
        unlisted.summary()
    );
    assert_eq!(unlisted.body_str(), "lang=fr");
    assert_eq!(origin.requests(), 2);
    let m = server.metrics();
    let reason = |r: &str| m.labelled("ringcache_misses_total", &format!("reason=\"{r}\""));
    assert_eq!((reason("uri-miss"), reason("vary-miss")), (1.0, 1.0));
    let failed = server.get("/down");
    assert_eq!(failed.status, 502, "{}", failed.summary());
    assert_eq!(
        failed.cache_status_params()[0],
        "fwd=uri-miss",
        "{}",
        failed.summary()
    );
}

/// §2.8 detail says why a response was not stored.
fn detail_not_stored(io: &str) {
    let Some((_origin, server)) = with_origin(io, origin()) else {
        return;
    };
    for (path, detail) in [
        ("/nostore", "no-store"),
        ("/private", "private"),
        ("/vary", "vary-star"),
        ("/found", "status"),
    ] {
        let r = server.get(path);
        let params = r.cache_status_params();
        assert_eq!(params[0], "fwd=uri-miss", "{path}: {}", r.summary());
        assert!(!params.iter().any(|p| p == "stored"), "{path}");
        assert_eq!(
            params.last().map(String::as_str),
            Some(format!("detail={detail}").as_str()),
            "{path}: {}",
            r.summary()
        );
    }
}

/// §2.6 collapsed: requests that waited for another's fetch say so.
fn collapsed(io: &str) {
    let origin = TestOrigin::start(|_| {
        Reply::After(
            Duration::from_millis(500),
            Box::new(Reply::Send(response(
                200,
                &[("Cache-Control", "max-age=100")],
                b"slow",
            ))),
        )
    });
    let Some(server) = Server::serve(io, Some(&origin.url()), 1, &[]) else {
        return;
    };
    let statuses: Vec<Vec<String>> = http_get_concurrently(server.addr, "/herd", 4)
        .iter()
        .map(Response::cache_status_params)
        .collect();
    assert_eq!(origin.requests(), 1);
    let collapsed = statuses
        .iter()
        .filter(|p| p.iter().any(|x| x == "collapsed") || p[0] == "hit")
        .count();
    assert_eq!(collapsed, 3, "{statuses:?}");
    // §2.2: a waiter went forward because nothing was stored under the URI.
    for p in statuses.iter().filter(|p| p[0] != "hit") {
        assert_eq!(p[0], "fwd=uri-miss", "{statuses:?}");
    }
}

/// Every answer ringcache generates itself carries Cache-Status too.
fn generated_answers(io: &str) {
    let Some((_origin, server)) = with_origin(io, origin()) else {
        return;
    };
    let mut c = server.client();
    c.send(b"GET /x HTTP/1.1\r\nHost: h\r\nCache-Control: only-if-cached\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 504);
    assert_eq!(r.cache_status(), "ringcache; detail=only-if-cached");
    let mut c = server.client();
    c.send(b"TRACE / HTTP/1.1\r\nHost: h\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 405);
    assert!(r.cache_status().starts_with("ringcache"), "{}", r.summary());
}

/// Read raw bytes until `until` appears (or 5 s pass).
fn read_until(s: &mut TcpStream, until: &[u8]) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(5);
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut got = Vec::new();
    while find(&got, until).is_none() && Instant::now() < deadline {
        let mut buf = [0u8; 4096];
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    got
}

/// RFC 9110 §15.2: 103 Early Hints from the origin reach an HTTP/1.1
/// client before the final response; 100 Continue is consumed; an
/// HTTP/1.0 client gets no interim response; interim responses are never
/// stored (the hit that follows has none).
fn interim_responses(io: &str) {
    let origin = TestOrigin::start(|_| {
        let mut bytes = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n".to_vec();
        bytes.extend(response(200, &[("Cache-Control", "max-age=100")], b"final"));
        Reply::Send(bytes)
    });
    let Some((_origin, server)) = with_origin(io, origin) else {
        return;
    };
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.write_all(b"GET /hints HTTP/1.1\r\nHost: h\r\n\r\n")
        .unwrap();
    let got = String::from_utf8(read_until(&mut s, b"final")).unwrap();
    assert!(
        got.starts_with(
            "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\n"
        ),
        "{got}"
    );
    assert!(!got.contains("100 Continue"), "{got}");
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.write_all(b"GET /hints10 HTTP/1.0\r\nHost: h\r\n\r\n")
        .unwrap();
    let got = String::from_utf8(read_until(&mut s, b"final")).unwrap();
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.write_all(b"GET /hints HTTP/1.1\r\nHost: h\r\n\r\n")
        .unwrap();
    let got = String::from_utf8(read_until(&mut s, b"final")).unwrap();
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert!(got.contains("Cache-Status: ringcache; hit"), "{got}");
}

both_io!(
    hit_has_ttl,
    stale_forms,
    fwd_reasons,
    uri_miss_and_vary_miss,
    detail_not_stored,
    collapsed,
    generated_answers,
    interim_responses,
);
