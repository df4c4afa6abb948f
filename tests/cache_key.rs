//! The cache key (RFC 9111 §2: the target URI; scheme, host, path and
//! query) and the `[cache]` options that change it: sorted query
//! parameters, ignored parameters, host left out. Each scenario runs on
//! both I/O backends.

#[macro_use]
mod common;

use common::*;

/// `GET target` with this Host, on a fresh connection.
fn get_host(server: &Server, host: &str, target: &str) -> Response {
    let mut c = server.client();
    c.send(format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
    c.read_response()
}

/// An origin whose body is the target it was asked for.
fn target_origin() -> TestOrigin {
    TestOrigin::start(|req| {
        Reply::Send(response(
            200,
            &[("Cache-Control", "max-age=60")],
            req.target.as_bytes(),
        ))
    })
}

fn serve(io: &str, origin: &TestOrigin, cache: &str) -> Option<(TempDir, Server)> {
    Server::serve_with_config(io, Some(&origin.url()), 2, &format!("[cache]\n{cache}"))
}

/// RFC 9111 §2 by default: host (case-insensitive), path and query as
/// written each make a key of their own.
fn default_key(io: &str) {
    let origin = target_origin();
    let Some((_dir, server)) = serve(io, &origin, "") else {
        return;
    };
    let misses = [
        ("a.example", "/k?x=1&y=2"),
        ("a.example", "/k?y=2&x=1"),
        ("a.example", "/k?x=1"),
        ("b.example", "/k?x=1"),
        ("a.example", "/K?x=1"),
    ];
    for (host, target) in misses {
        let r = get_host(&server, host, target);
        assert!(
            r.cache_status().ends_with("stored"),
            "{host}{target}: {}",
            r.summary()
        );
    }
    let r = get_host(&server, "A.EXAMPLE", "/k?x=1");
    assert!(r.is_hit(), "host case does not matter: {}", r.summary());
    assert_eq!(r.body_str(), "/k?x=1");
    assert_eq!(origin.requests(), misses.len() as u64);
}

/// `key_sort_query`: parameter order does not matter.
fn sorted_query(io: &str) {
    let origin = target_origin();
    let Some((_dir, server)) = serve(io, &origin, "key_sort_query = true\n") else {
        return;
    };
    assert!(get_host(&server, "h", "/s?b=2&a=1&c")
        .cache_status()
        .ends_with("stored"));
    for t in ["/s?a=1&b=2&c", "/s?c&b=2&a=1"] {
        let r = get_host(&server, "h", t);
        assert!(r.is_hit(), "{t}: {}", r.summary());
        assert_eq!(r.body_str(), "/s?b=2&a=1&c", "the stored response");
    }
    assert!(!get_host(&server, "h", "/s?a=1&b=3&c").is_hit());
    assert_eq!(origin.requests(), 2);
}

/// `key_ignore_params`: named parameters (exact, or by prefix with `*`)
/// are left out of the key, but still reach the origin.
fn ignored_params(io: &str) {
    let origin = target_origin();
    let Some((_dir, server)) = serve(io, &origin, "key_ignore_params = [\"utm_*\", \"fbclid\"]\n")
    else {
        return;
    };
    let first = get_host(&server, "h", "/i?id=1&utm_source=news");
    assert!(
        first.cache_status().ends_with("stored"),
        "{}",
        first.summary()
    );
    assert_eq!(
        origin.last_request().unwrap().target,
        "/i?id=1&utm_source=news",
        "the origin sees the target as written"
    );
    for t in ["/i?id=1", "/i?fbclid=9&id=1&utm_medium=x", "/i?id=1&utm_="] {
        let r = get_host(&server, "h", t);
        assert!(r.is_hit(), "{t}: {}", r.summary());
    }
    for t in ["/i?id=2", "/i?id=1&fbclidx=1", "/i?id=1&utm"] {
        let r = get_host(&server, "h", t);
        assert!(!r.is_hit(), "{t}: {}", r.summary());
    }
    assert_eq!(origin.requests(), 4);
}

/// `key_include_host = false`: one origin, one site, whatever the Host.
fn host_left_out(io: &str) {
    let origin = target_origin();
    let Some((_dir, server)) = serve(io, &origin, "key_include_host = false\n") else {
        return;
    };
    assert!(get_host(&server, "a.example", "/h")
        .cache_status()
        .ends_with("stored"));
    let r = get_host(&server, "b.example", "/h");
    assert!(r.is_hit(), "{}", r.summary());
    assert_eq!(origin.requests(), 1);
}

/// RFC 9111 §4.4 with key options: a write invalidates the key its
/// target maps to.
fn invalidation_uses_the_same_key(io: &str) {
    let origin = TestOrigin::start(|req| match req.method.as_str() {
        "GET" => Reply::Send(response(200, &[("Cache-Control", "max-age=60")], b"get")),
        _ => Reply::Send(response(204, &[], b"")),
    });
    let Some((_dir, server)) = serve(
        io,
        &origin,
        "key_sort_query = true\nkey_ignore_params = [\"utm_*\"]\nkey_include_host = false\n",
    ) else {
        return;
    };
    get_host(&server, "a.example", "/w?b=1&a=1");
    assert!(get_host(&server, "b.example", "/w?a=1&b=1").is_hit());
    let mut c = server.client();
    c.send(b"POST /w?a=1&utm_x=1&b=1 HTTP/1.1\r\nHost: c.example\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(c.read_response().status, 204);
    let r = get_host(&server, "a.example", "/w?b=1&a=1");
    assert!(!r.is_hit(), "invalidated: {}", r.summary());
    assert_eq!(server.metrics().value("ringcache_invalidations_total"), 1.0);
}

/// A bad option fails at start with a message naming the key.
fn bad_options_refused(_io: &str) {
    for (toml, key) in [
        (
            "[cache]\nkey_ignore_params = [\"a=b\"]\n",
            "cache.key_ignore_params",
        ),
        (
            "[cache]\nvariants_per_key_max = 0\n",
            "cache.variants_per_key_max",
        ),
        ("[cache]\nset_cookie = \"eat\"\n", "cache.set_cookie"),
        ("[cache]\nkey_sort = true\n", "key_sort"),
    ] {
        let (_dir, path) = config_file(toml);
        let (status, lines) = run(
            &["check-config", "--config", path.to_str().unwrap()],
            std::time::Duration::from_secs(10),
        );
        assert!(!status.success(), "{toml}");
        assert!(lines.join("\n").contains(key), "{toml}: {lines:?}");
    }
}

both_io!(
    default_key,
    sorted_query,
    ignored_params,
    host_left_out,
    invalidation_uses_the_same_key,
);

#[test]
fn bad_options_are_refused() {
    bad_options_refused("none");
}
