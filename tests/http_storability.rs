//! What ringcache stores (RFC 9111 §3) and the `[cache]` switches that
//! change it: the Set-Cookie policy, heuristic freshness (§4.2.2) and its
//! cap, `default_ttl`; statuses cacheable by default (RFC 9110 §15.1),
//! `private`, `no-store`, Authorization (§3.5), `must-understand`
//! (§5.2.2.3). Each scenario runs on both I/O backends.

#[macro_use]
mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;

/// An HTTP date `ago_secs` before now.
fn http_date(ago_secs: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    String::from_utf8(ringcache::http::format_http_date(now - ago_secs).to_vec()).unwrap()
}

/// An origin answering `/STATUS/anything?h=Name:Value|Name:Value` with that
/// status and those fields (`|` separates fields; `%20` is a space), a
/// `Date` of now and a short body (none for 204).
fn scripted_origin() -> TestOrigin {
    TestOrigin::start(|req| {
        let status: u16 = req.path().split('/').nth(1).unwrap().parse().unwrap();
        let query = req.target.split_once("?h=").map_or("", |(_, q)| q);
        let date = http_date(0);
        let text = query.replace("%20", " ").replace("%22", "\"");
        let mut fields: Vec<(&str, &str)> = text
            .split('|')
            .filter(|f| !f.is_empty())
            .map(|f| f.split_once(':').unwrap())
            .collect();
        fields.push(("Date", &date));
        let body: &[u8] = if status == 204 { b"" } else { b"stored?" };
        if status == 204 {
            return Reply::Send(response_no_length(status, &fields));
        }
        Reply::Send(response(status, &fields, body))
    })
}

/// A bodiless response without Content-Length (204, RFC 9110 §8.6).
fn response_no_length(status: u16, fields: &[(&str, &str)]) -> Vec<u8> {
    let mut r = format!("HTTP/1.1 {status} No Content\r\n");
    for (n, v) in fields {
        r.push_str(&format!("{n}: {v}\r\n"));
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// `GET target` with extra fields, on a fresh connection.
fn get_with(server: &Server, target: &str, fields: &[(&str, &str)]) -> Response {
    let mut c = server.client();
    let mut req = format!("GET {target} HTTP/1.1\r\nHost: ringcache.test\r\n");
    for (n, v) in fields {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    c.send(req.as_bytes());
    c.read_response()
}

/// Two requests: is the second answered from the store?
fn stored_twice(server: &Server, target: &str, fields: &[(&str, &str)]) -> bool {
    let first = get_with(server, target, fields);
    let second = get_with(server, target, fields);
    assert_eq!(first.status, second.status, "{}", second.summary());
    let stored = first.cache_status().ends_with("; stored");
    assert_eq!(stored, second.is_hit(), "{target}: {}", second.summary());
    stored
}

fn serve(io: &str, origin: &TestOrigin, cache: &str) -> Option<(TempDir, Server)> {
    Server::serve_with_config(io, Some(&origin.url()), 2, &format!("[cache]\n{cache}"))
}

/// RFC 9110 §15.1: statuses cacheable by default are stored with explicit
/// freshness; any other final status needs explicit freshness (RFC 9111
/// §3) and is not stored on a validator alone; 204 is answered without
/// Content-Length (RFC 9110 §8.6).
fn statuses(io: &str) {
    let origin = scripted_origin();
    let Some((_dir, server)) = serve(io, &origin, "default_ttl = \"60s\"\n") else {
        return;
    };
    for status in [200, 203, 300, 301, 308, 404, 405, 410, 414, 501] {
        let t = format!("/{status}/x?h=Cache-Control:max-age=60");
        assert!(stored_twice(&server, &t, &[]), "{status} is stored");
        // default_ttl applies to statuses that allow a heuristic.
        let t = format!("/{status}/v?h=ETag:\"v\"");
        assert!(stored_twice(&server, &t, &[]), "{status} with a validator");
    }
    for status in [302, 307, 400, 403, 500, 503] {
        let t = format!("/{status}/v?h=ETag:\"v\"");
        assert!(
            !stored_twice(&server, &t, &[]),
            "{status} needs explicit freshness"
        );
        let t = format!("/{status}/x?h=Cache-Control:max-age=60");
        assert!(stored_twice(&server, &t, &[]), "{status} with max-age");
    }
    let t = "/204/x?h=Cache-Control:max-age=60";
    assert!(stored_twice(&server, t, &[]));
    let r = get_with(&server, t, &[]);
    assert!(r.is_hit() && r.status == 204, "{}", r.summary());
    assert!(r.content_length().is_none(), "{}", r.summary());
}

/// RFC 9111 §5.2.2.5, §5.2.1.5, §5.2.2.7: `no-store` (either side) and
/// unqualified `private` are never stored.
fn no_store_and_private(io: &str) {
    let origin = scripted_origin();
    let Some((_dir, server)) = serve(io, &origin, "") else {
        return;
    };
    for cc in ["no-store,%20max-age=60", "private,%20max-age=60"] {
        let t = format!("/200/cc?h=Cache-Control:{cc}");
        assert!(!stored_twice(&server, &t, &[]), "{cc}");
    }
    let t = "/200/req?h=Cache-Control:max-age=60";
    assert!(!stored_twice(&server, t, &[("Cache-Control", "no-store")]));
    assert!(stored_twice(&server, t, &[]));
    // A qualified private="X-User" stores the response without that field;
    // the client that caused the fetch still gets it.
    let t = "/200/q?h=Cache-Control:private=%22X-User%22,%20max-age=60|X-User:alice";
    let first = get_with(&server, t, &[]);
    assert_eq!(first.header("x-user"), Some("alice"), "{}", first.summary());
    let hit = get_with(&server, t, &[]);
    assert!(hit.is_hit(), "{}", hit.summary());
    assert!(!hit.has_header("x-user"), "{}", hit.summary());
}

/// RFC 9111 §3.5: a request with Authorization is stored only when the
/// response says `public`, `s-maxage` or `must-revalidate`.
fn authorization(io: &str) {
    let origin = scripted_origin();
    let Some((_dir, server)) = serve(io, &origin, "") else {
        return;
    };
    let auth = [("Authorization", "Bearer x")];
    assert!(!stored_twice(
        &server,
        "/200/a?h=Cache-Control:max-age=60",
        &auth
    ));
    for cc in [
        "public,%20max-age=60",
        "s-maxage=60",
        "max-age=60,%20must-revalidate",
    ] {
        let t = format!("/200/b?h=Cache-Control:{cc}");
        assert!(stored_twice(&server, &t, &auth), "{cc}");
    }
}

/// RFC 9111 §3.5 with a request holding as many fields as the limit
/// allows: the fields ringcache adds toward the origin (Via,
/// X-Forwarded-For) must not hide its Authorization from the decision.
fn authorization_with_fields_at_the_limit(io: &str) {
    let origin = scripted_origin();
    let Some((_dir, server)) = Server::serve_with_config(
        io,
        Some(&origin.url()),
        1,
        "[limits]\nheaders_count_max = 8\n",
    ) else {
        return;
    };
    let t = "/200/limit?h=Cache-Control:max-age=60";
    let fields = [
        ("Authorization", "Bearer secret"),
        ("X-A", "1"),
        ("X-B", "2"),
        ("X-C", "3"),
        ("X-D", "4"),
        ("X-E", "5"),
        ("X-F", "6"),
    ];
    let r = get_with(&server, t, &fields);
    assert_eq!(r.status, 200, "{}", r.summary());
    assert!(!r.cache_status().ends_with("stored"), "{}", r.summary());
    let other = get_with(&server, t, &[]);
    assert!(
        !other.is_hit(),
        "an authorized answer is not shared: {}",
        other.summary()
    );
}

/// RFC 9111 §5.2.2.3: `must-understand` overrides `no-store` for a status
/// ringcache understands, and only then.
fn must_understand(io: &str) {
    let origin = scripted_origin();
    let Some((_dir, server)) = serve(io, &origin, "") else {
        return;
    };
    let cc = "Cache-Control:must-understand,%20no-store,%20max-age=60";
    assert!(stored_twice(&server, &format!("/200/m?h={cc}"), &[]));
    assert!(!stored_twice(&server, &format!("/299/m?h={cc}"), &[]));
}

/// `set_cookie`: refuse (default) does not store, strip stores without
/// the field (the client that caused the fetch still gets it), store
/// keeps it.
fn set_cookie_policy(io: &str) {
    let t = "/200/c?h=Cache-Control:max-age=60|Set-Cookie:id=1";
    let origin = scripted_origin();
    for (cache, stored, cookie_on_hit) in [
        ("", false, false),
        ("set_cookie = \"refuse\"\n", false, false),
        ("set_cookie = \"strip\"\n", true, false),
        ("set_cookie = \"store\"\n", true, true),
    ] {
        let Some((_dir, server)) = serve(io, &origin, cache) else {
            return;
        };
        let first = get_with(&server, t, &[]);
        assert_eq!(
            first.header("set-cookie"),
            Some("id=1"),
            "{cache}: {}",
            first.summary()
        );
        let second = get_with(&server, t, &[]);
        assert_eq!(second.is_hit(), stored, "{cache}: {}", second.summary());
        if stored {
            assert_eq!(
                second.has_header("set-cookie"),
                cookie_on_hit,
                "{cache}: {}",
                second.summary()
            );
        }
    }
}

/// `set_cookie = "strip"` under a herd: one fetch; only the client whose
/// request fetched it gets the cookie, every waiter the stored form.
fn stripped_cookie_not_shared_with_waiters(io: &str) {
    let origin = TestOrigin::start(|_| {
        Reply::After(
            Duration::from_millis(300),
            Box::new(Reply::Send(response(
                200,
                &[("Cache-Control", "max-age=60"), ("Set-Cookie", "id=1")],
                b"herd",
            ))),
        )
    });
    let Some((_dir, server)) = serve(io, &origin, "set_cookie = \"strip\"\n") else {
        return;
    };
    let addr = server.addr;
    let clients: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                c.send(b"GET /herd HTTP/1.1\r\nHost: ringcache.test\r\n\r\n");
                c.read_response()
            })
        })
        .collect();
    let responses: Vec<Response> = clients.into_iter().map(|t| t.join().unwrap()).collect();
    for r in &responses {
        assert_eq!(
            (r.status, &r.body[..]),
            (200, &b"herd"[..]),
            "{}",
            r.summary()
        );
    }
    let with_cookie = responses
        .iter()
        .filter(|r| r.has_header("set-cookie"))
        .count();
    assert_eq!(origin.requests(), 1, "one fetch for the herd");
    assert_eq!(with_cookie, 1, "only the filler's client gets Set-Cookie");
}

/// RFC 9111 §4.2.2: heuristic freshness is off by default; on, a response
/// with Last-Modified and no explicit lifetime is fresh for a share of
/// its age, capped by `heuristic_max`, and only for statuses that allow it.
fn heuristic_freshness(io: &str) {
    let origin = scripted_origin();
    let lm = http_date(10 * 24 * 3600).replace(' ', "%20");
    let t = format!("/200/h?h=Last-Modified:{lm}");
    {
        let Some((_dir, server)) = serve(io, &origin, "") else {
            return;
        };
        assert!(!stored_twice(&server, &t, &[]), "off by default");
    }
    let Some((_dir, server)) = serve(
        io,
        &origin,
        "heuristic = true\nheuristic_percent = 10\nheuristic_max = \"2s\"\n",
    ) else {
        return;
    };
    assert!(stored_twice(&server, &t, &[]));
    assert!(stored_twice(
        &server,
        &format!("/404/h?h=Last-Modified:{lm}"),
        &[]
    ));
    assert!(!stored_twice(
        &server,
        &format!("/302/h?h=Last-Modified:{lm}"),
        &[]
    ));
    // 10 % of ten days is a day; the cap makes it two seconds.
    std::thread::sleep(Duration::from_millis(2100));
    let r = get_with(&server, &t, &[]);
    assert_eq!(r.cache_status_params()[0], "fwd=stale", "{}", r.summary());
}

/// `default_ttl`: a response with a validator and no lifetime is stored
/// for that long; without a validator it is not.
fn default_ttl(io: &str) {
    let origin = scripted_origin();
    let Some((_dir, server)) = serve(io, &origin, "default_ttl = \"60s\"\n") else {
        return;
    };
    assert!(stored_twice(&server, "/200/e?h=ETag:\"v1\"", &[]));
    assert!(!stored_twice(
        &server,
        "/200/n?h=Content-Type:text/plain",
        &[]
    ));
    let Some((_dir2, plain)) = serve(io, &origin, "") else {
        return;
    };
    assert!(
        !stored_twice(&plain, "/200/e2?h=ETag:\"v1\"", &[]),
        "off by default"
    );
}

both_io!(
    statuses,
    no_store_and_private,
    authorization,
    authorization_with_fields_at_the_limit,
    must_understand,
    set_cookie_policy,
    stripped_cookie_not_shared_with_waiters,
    heuristic_freshness,
    default_ttl,
);
