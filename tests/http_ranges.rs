//! Range requests (RFC 9110 §14) answered from stored complete responses:
//! 206 with Content-Range, multipart/byteranges, 416, If-Range; a miss
//! fetches the whole response and stores it; a 206 from the origin is
//! never stored as the object (RFC 9111 §3.4). Each scenario runs on both
//! I/O backends.

#[macro_use]
mod common;

use common::*;

const BODY: &[u8] = b"0123456789abcdefghij";

/// An HTTP date `ago_secs` before now.
fn http_date(ago_secs: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    String::from_utf8(ringcache::http::format_http_date(now - ago_secs).to_vec()).unwrap()
}

/// The Last-Modified every response of a test origin carries: an hour ago.
fn last_modified() -> &'static str {
    static LM: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    LM.get_or_init(|| http_date(3600))
}

/// `GET path` with extra header lines, on a fresh connection.
fn get_with(server: &Server, path: &str, fields: &[(&str, &str)]) -> Response {
    let mut c = server.client();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: ringcache.test\r\n");
    for (n, v) in fields {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    c.send(req.as_bytes());
    c.read_response()
}

/// An origin serving BODY with a strong ETag, honouring `Range: bytes=a-b`
/// itself (as a 206) when the proxy passes one on; `cc` as Cache-Control.
fn body_origin(cc: &'static str) -> TestOrigin {
    TestOrigin::start(move |req| {
        let date = http_date(0);
        let fields = [
            ("Cache-Control", cc),
            ("ETag", "\"v1\""),
            ("Last-Modified", last_modified()),
            ("Date", &date),
            ("Content-Type", "text/plain"),
        ];
        if let Some(range) = req.header("range") {
            let spec = range.trim_start_matches("bytes=");
            let (a, b) = spec.split_once('-').unwrap();
            let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
            let cr = format!("bytes {a}-{b}/{}", BODY.len());
            let mut f = fields.to_vec();
            f.push(("Content-Range", &cr));
            return Reply::Send(response(206, &f, &BODY[a..=b]));
        }
        Reply::Send(response(200, &fields, BODY))
    })
}

fn stored_server(io: &str) -> Option<(TestOrigin, Server)> {
    let origin = body_origin("max-age=60");
    let server = Server::serve(io, Some(&origin.url()), 2, &[])?;
    let first = server.get("/r");
    assert!(
        first.cache_status().ends_with("stored"),
        "{}",
        first.summary()
    );
    Some((origin, server))
}

/// §14.1.2, §14.4, §15.3.7: one range of a stored response is a 206 with
/// its Content-Range, from the store.
fn single_ranges_from_store(io: &str) {
    let Some((origin, server)) = stored_server(io) else {
        return;
    };
    for (range, want, cr) in [
        ("bytes=0-4", &b"01234"[..], "bytes 0-4/20"),
        ("bytes=15-", b"fghij", "bytes 15-19/20"),
        ("bytes=-3", b"hij", "bytes 17-19/20"),
        ("bytes=18-100", b"ij", "bytes 18-19/20"),
    ] {
        let r = get_with(&server, "/r", &[("Range", range)]);
        assert_eq!(r.status, 206, "{range}: {}", r.summary());
        assert!(r.is_hit(), "{range}: {}", r.summary());
        assert_eq!(r.body, want, "{range}");
        assert_eq!(r.header("content-range"), Some(cr), "{range}");
        assert_eq!(r.header("content-type"), Some("text/plain"));
        assert_eq!(r.header("etag"), Some("\"v1\""));
    }
    assert_eq!(origin.requests(), 1);
}

/// §14.6: several ranges are one multipart/byteranges 206.
fn multipart_from_store(io: &str) {
    let Some((origin, server)) = stored_server(io) else {
        return;
    };
    let r = get_with(&server, "/r", &[("Range", "bytes=0-1, 10-11")]);
    assert_eq!(r.status, 206, "{}", r.summary());
    let ct = r.header("content-type").unwrap().to_string();
    let boundary = ct
        .strip_prefix("multipart/byteranges; boundary=")
        .unwrap_or_else(|| panic!("{}", r.summary()));
    assert_eq!(r.content_length(), Some(r.body.len() as u64));
    let body = r.body_str();
    let want = format!(
        "\r\n--{boundary}\r\nContent-Type: text/plain\r\nContent-Range: bytes 0-1/20\r\n\r\n01\
         \r\n--{boundary}\r\nContent-Type: text/plain\r\nContent-Range: bytes 10-11/20\r\n\r\nab\
         \r\n--{boundary}--\r\n"
    );
    assert_eq!(body, want);
    assert_eq!(origin.requests(), 1);
}

/// §15.5.17, §14.4: no satisfiable range: 416 with `bytes */len`; a Range
/// that does not parse is ignored (§14.2): the full 200.
fn unsatisfiable_and_invalid(io: &str) {
    let Some((origin, server)) = stored_server(io) else {
        return;
    };
    let r = get_with(&server, "/r", &[("Range", "bytes=20-")]);
    assert_eq!(r.status, 416, "{}", r.summary());
    assert_eq!(r.header("content-range"), Some("bytes */20"));
    assert!(r.body.is_empty());
    for bad in ["bytes=5-1", "items=0-1", "bytes=x-"] {
        let r = get_with(&server, "/r", &[("Range", bad)]);
        assert_eq!(r.status, 200, "{bad}: {}", r.summary());
        assert_eq!(r.body, BODY);
        assert!(r.is_hit());
    }
    assert_eq!(origin.requests(), 1);
}

/// §13.1.5: If-Range with the strong ETag or the exact Last-Modified
/// serves the range; anything else (another tag, a weak tag) the full 200.
fn if_range(io: &str) {
    let Some((origin, server)) = stored_server(io) else {
        return;
    };
    let other_date = http_date(60);
    for (if_range, status) in [
        ("\"v1\"", 206),
        (last_modified(), 206),
        ("\"v2\"", 200),
        ("W/\"v1\"", 200),
        (&other_date, 200),
    ] {
        let r = get_with(
            &server,
            "/r",
            &[("Range", "bytes=0-0"), ("If-Range", if_range)],
        );
        assert_eq!(r.status, status, "If-Range {if_range}: {}", r.summary());
        assert!(r.is_hit());
        let want: &[u8] = if status == 206 { b"0" } else { BODY };
        assert_eq!(r.body, want);
    }
    assert_eq!(origin.requests(), 1);
}

/// A range miss fetches the whole response (no Range, no If-Range toward
/// the origin), stores it and answers the range; later requests hit.
fn miss_fetches_whole_and_stores(io: &str) {
    let origin = body_origin("max-age=60");
    let Some(server) = Server::serve(io, Some(&origin.url()), 2, &[]) else {
        return;
    };
    let r = get_with(
        &server,
        "/m",
        &[("Range", "bytes=2-3"), ("If-Range", "\"v1\"")],
    );
    assert_eq!(r.status, 206, "{}", r.summary());
    assert_eq!(r.body, b"23");
    assert_eq!(r.header("content-range"), Some("bytes 2-3/20"));
    assert_eq!(
        r.cache_status_params(),
        ["fwd=uri-miss", "fwd-status=200", "stored"],
        "{}",
        r.summary()
    );
    let seen = origin.last_request().unwrap();
    assert!(
        !seen.has_header("range") && !seen.has_header("if-range"),
        "{}",
        seen.head_text()
    );
    let full = server.get("/m");
    assert!(full.is_hit(), "{}", full.summary());
    assert_eq!(full.body, BODY);
    let again = get_with(&server, "/m", &[("Range", "bytes=-1")]);
    assert!(again.is_hit() && again.status == 206, "{}", again.summary());
    assert_eq!(origin.requests(), 1);
}

/// RFC 9111 §3.4: a response that cannot be stored is fetched whole once;
/// then the key is known, and ranges go to the origin as asked. The
/// origin's 206 is relayed and never stored as the object.
fn partial_content_never_stored(io: &str) {
    let origin = body_origin("no-store");
    let Some(server) = Server::serve(io, Some(&origin.url()), 1, &[]) else {
        return;
    };
    let r = get_with(&server, "/p", &[("Range", "bytes=0-2")]);
    assert_eq!(
        (r.status, &r.body[..]),
        (206, &b"012"[..]),
        "{}",
        r.summary()
    );
    assert!(!origin.last_request().unwrap().has_header("range"));
    let r = get_with(&server, "/p", &[("Range", "bytes=3-4")]);
    assert_eq!(
        (r.status, &r.body[..]),
        (206, &b"34"[..]),
        "{}",
        r.summary()
    );
    assert_eq!(
        origin.last_request().unwrap().header("range"),
        Some("bytes=3-4"),
        "the second range is passed on"
    );
    assert!(!r.cache_status().contains("stored"), "{}", r.summary());
    let full = server.get("/p");
    assert_eq!(full.status, 200, "{}", full.summary());
    assert_eq!(full.body, BODY);
    assert!(!full.is_hit());
    assert_eq!(origin.requests(), 3);
}

/// HEAD ignores Range (§14.2 defines it for GET): the stored 200's head.
fn head_ignores_range(io: &str) {
    let Some((origin, server)) = stored_server(io) else {
        return;
    };
    let mut c = server.client();
    c.send(b"HEAD /r HTTP/1.1\r\nHost: ringcache.test\r\nRange: bytes=0-1\r\n\r\n");
    let r = c.read_head_response();
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.content_length(), Some(20));
    assert!(r.is_hit());
    assert_eq!(origin.requests(), 1);
}

/// Concurrent range requests for a cold key share one whole fetch: each
/// client gets its own range (and a plain GET among them the whole body).
fn concurrent_ranges_share_one_fetch(io: &str) {
    let inner = body_origin("max-age=60");
    let inner_addr = inner.addr;
    // A slow front for the body origin, so the requests overlap.
    let origin = TestOrigin::start(move |req| {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let mut c = Client::connect(inner_addr);
        c.send(&req.raw);
        let r = c.read_response();
        let fields: Vec<(&str, &str)> = r
            .headers
            .iter()
            .filter(|(n, _)| !n.eq_ignore_ascii_case("content-length"))
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        Reply::Send(response(r.status, &fields, &r.body))
    });
    let Some(server) = Server::serve(io, Some(&origin.url()), 2, &[]) else {
        return;
    };
    let addr = server.addr;
    let clients: Vec<_> = (0..10usize)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let range = if i == 9 {
                    String::new()
                } else {
                    format!("Range: bytes={i}-{}\r\n", i + 1)
                };
                c.send(
                    format!("GET /herd HTTP/1.1\r\nHost: ringcache.test\r\n{range}\r\n").as_bytes(),
                );
                (i, c.read_response())
            })
        })
        .collect();
    for t in clients {
        let (i, r) = t.join().unwrap();
        if i == 9 {
            assert_eq!((r.status, &r.body[..]), (200, BODY), "{}", r.summary());
        } else {
            assert_eq!(r.status, 206, "{}", r.summary());
            assert_eq!(r.body, &BODY[i..=i + 1], "{}", r.summary());
            assert_eq!(
                r.header("content-range"),
                Some(format!("bytes {i}-{}/20", i + 1).as_str())
            );
        }
    }
    assert_eq!(origin.requests(), 1, "one whole fetch for every range");
    assert!(
        server.metrics().value("ringcache_coalesced_total") >= 1.0,
        "some requests waited on the fill"
    );
}

both_io!(
    single_ranges_from_store,
    multipart_from_store,
    unsatisfiable_and_invalid,
    if_range,
    miss_fetches_whole_and_stores,
    partial_content_never_stored,
    head_ignores_range,
    concurrent_ranges_share_one_fetch,
);
