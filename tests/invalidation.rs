//! Invalidation: the admin API (`POST /invalidate`, `/invalidate/all`,
//! `GET /bans`), URL purges hard and soft, tag purges, prefix and regex
//! bans, access control, and the `PURGE` method on the traffic port. The
//! traffic scenarios run on both I/O backends and count origin requests.

#[macro_use]
mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const TOKEN: &str = "test-token-0123456789";

fn config(extra: &str) -> String {
    format!("{extra}\n[admin]\ntoken = \"{TOKEN}\"\n")
}

/// The demo origin and a two-worker ringcache with an admin token.
fn with_demo(io: &str, extra: &str) -> Option<(DemoOrigin, TempDir, Server)> {
    let origin = DemoOrigin::start();
    let (dir, server) = Server::serve_with_config(io, Some(&origin.url()), 2, &config(extra))?;
    Some((origin, dir, server))
}

/// One admin call on a fresh connection.
fn admin(server: &Server, method: &str, path: &str, token: Option<&str>, body: &str) -> Response {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    server.admin_call(method, path, &auth, body)
}

#[track_caller]
fn invalidate(server: &Server, body: &str) -> serde_json::Value {
    let r = admin(server, "POST", "/invalidate", Some(TOKEN), body);
    assert_eq!(r.status, 200, "{body}: {}", r.summary());
    serde_json::from_slice(&r.body).expect("a JSON answer")
}

#[track_caller]
fn assert_hit(r: &Response) {
    assert_eq!(r.status, 200, "{}", r.summary());
    assert!(
        r.cache_status().starts_with("ringcache; hit; ttl="),
        "{}",
        r.summary()
    );
}

#[track_caller]
fn assert_miss(r: &Response) {
    assert_eq!(r.status, 200, "{}", r.summary());
    assert!(
        r.cache_status().starts_with("ringcache; fwd="),
        "expected a fetch: {}",
        r.summary()
    );
}

fn hard_url_purge(io: &str) {
    let Some((origin, _dir, server)) = with_demo(io, "") else {
        return;
    };
    let path = "/api/items/1";
    assert_miss(&server.get(path));
    assert_hit(&server.get(path));
    // An absolute URL names the key: removed now.
    let v = invalidate(
        &server,
        r#"{"urls": ["http://ringcache.test/api/items/1"]}"#,
    );
    assert_eq!(v["invalidated"], 1, "{v}");
    assert_eq!(v["bans"], 0, "{v}");
    assert_eq!(v["nodes"][0]["applied"], true, "{v}");
    let r = server.get(path);
    assert_eq!(
        r.cache_status_params(),
        ["fwd=uri-miss", "fwd-status=200", "stored"]
    );
    assert_eq!(
        origin.count(path),
        2,
        "the purge sent the next request to the origin"
    );
    assert_hit(&server.get(path));
    // A path without a host: an exact-path ban over every host.
    let v = invalidate(&server, r#"{"urls": ["/api/items/1"], "mode": "hard"}"#);
    assert_eq!(
        (v["invalidated"].as_u64(), v["bans"].as_u64()),
        (Some(0), Some(1))
    );
    assert_miss(&server.get(path));
    assert_eq!(origin.count(path), 3);
    let m = server.metrics();
    assert_eq!(m.labelled("ringcache_purges_total", "kind=\"url\""), 2.0);
    assert!(m.value("ringcache_invalidated_objects_total") >= 2.0);
    assert_eq!(m.value("ringcache_bans_active"), 1.0);
}

fn soft_url_purge(io: &str) {
    // A scripted origin with a validator: 304 when the ETag matches; it
    // counts the 304s it sent.
    let not_modified = Arc::new(AtomicU64::new(0));
    let sent_304 = Arc::clone(&not_modified);
    let origin = TestOrigin::start(move |req| {
        let conditional = req
            .headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case("if-none-match") && v == "\"v1\"");
        if conditional {
            sent_304.fetch_add(1, Ordering::Relaxed);
            Reply::Send(response(
                304,
                &[("ETag", "\"v1\""), ("Cache-Control", "max-age=60")],
                b"",
            ))
        } else {
            Reply::Send(response(
                200,
                &[("ETag", "\"v1\""), ("Cache-Control", "max-age=60")],
                b"soft body",
            ))
        }
    });
    let Some((_dir, server)) = Server::serve_with_config(io, Some(&origin.url()), 2, &config(""))
    else {
        return;
    };
    let path = "/soft";
    assert_miss(&server.get(path));
    assert_hit(&server.get(path));
    // Soft: the bytes stay, made stale now.
    let v = invalidate(
        &server,
        r#"{"urls": ["/soft"], "host": "ringcache.test", "mode": "soft"}"#,
    );
    assert_eq!(v["invalidated"], 1, "{v}");
    assert_eq!(
        server.metrics().value("ringcache_store_items"),
        1.0,
        "still stored"
    );
    // The next request validates the stale copy with its ETag: the origin
    // sees If-None-Match, answers 304, and the body comes from the store.
    let r = server.get(path);
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.body, b"soft body");
    let params = r.cache_status_params();
    assert_eq!(
        params[..2],
        ["fwd=stale", "fwd-status=304"],
        "{}",
        r.summary()
    );
    assert_eq!(origin.requests(), 2);
    assert_eq!(
        not_modified.load(Ordering::Relaxed),
        1,
        "the origin got If-None-Match and answered 304"
    );
    assert_hit(&server.get(path));
    assert_eq!(origin.requests(), 2);
    // Soft without a host cannot name the key: refused.
    let r = admin(
        &server,
        "POST",
        "/invalidate",
        Some(TOKEN),
        r#"{"urls": ["/soft"], "mode": "soft"}"#,
    );
    assert_eq!(r.status, 400, "{}", r.summary());
}

fn tag_purge(io: &str) {
    let Some((origin, _dir, server)) = with_demo(io, "") else {
        return;
    };
    let a = "/api/items/1?tags=a,b";
    let b = "/api/items/2?tags=b";
    let c = "/api/items/3?tags=c";
    for p in [a, b, c] {
        let r = server.get(p);
        assert_miss(&r);
        assert!(!r.has_header("surrogate-key"), "stripped: {}", r.summary());
    }
    for p in [a, b, c] {
        let r = server.get(p);
        assert_hit(&r);
        assert!(!r.has_header("surrogate-key"), "stripped: {}", r.summary());
    }
    assert!(server.metrics().value("ringcache_tag_index_bytes") > 0.0);
    let v = invalidate(&server, r#"{"tags": ["b"]}"#);
    assert_eq!(v["invalidated"], 2, "{v}");
    assert_eq!(v["bans"], 0, "the index is complete: no ban needed: {v}");
    assert_miss(&server.get(a));
    assert_miss(&server.get(b));
    assert_hit(&server.get(c));
    assert_eq!(origin.count("/api/items/1"), 2);
    assert_eq!(origin.count("/api/items/2"), 2);
    assert_eq!(origin.count("/api/items/3"), 1);
    // A tag nothing carries invalidates nothing.
    let v = invalidate(&server, r#"{"tags": ["zzz"]}"#);
    assert_eq!(v["invalidated"], 0, "{v}");
    assert_eq!(
        server
            .metrics()
            .labelled("ringcache_purges_total", "kind=\"tag\""),
        2.0
    );
}

fn prefix_and_regex_bans(io: &str) {
    let Some((origin, _dir, server)) = with_demo(io, "") else {
        return;
    };
    let paths = [
        "/api/items/10",
        "/api/items/11",
        "/api/items/20",
        "/api/items/30",
    ];
    for p in paths {
        assert_miss(&server.get(p));
        assert_hit(&server.get(p));
    }
    let v = invalidate(
        &server,
        r#"{"prefixes": ["/api/items/1"], "regex": "^/api/items/2[0-9]$"}"#,
    );
    assert_eq!(v["bans"], 2, "{v}");
    for p in &paths[..3] {
        assert_miss(&server.get(p));
        assert_eq!(origin.count(p), 2, "{p}");
    }
    assert_hit(&server.get(paths[3]));
    assert_eq!(origin.count(paths[3]), 1);
    let r = admin(&server, "GET", "/bans", Some(TOKEN), "");
    assert_eq!(r.status, 200, "{}", r.summary());
    let bans: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let list = bans["bans"].as_array().expect("a list");
    assert_eq!(list.len(), 2, "{bans}");
    assert_eq!(list[0]["selector"]["prefix"], "/api/items/1", "{bans}");
    assert_eq!(list[0]["invalidated"], 2, "{bans}");
    assert_eq!(
        list[1]["selector"]["regex"], "^/api/items/2[0-9]$",
        "{bans}"
    );
    assert_eq!(list[1]["invalidated"], 1, "{bans}");
    let m = server.metrics();
    assert_eq!(m.value("ringcache_bans_active"), 2.0);
    assert_eq!(m.labelled("ringcache_purges_total", "kind=\"prefix\""), 1.0);
    assert_eq!(m.labelled("ringcache_purges_total", "kind=\"regex\""), 1.0);
}

fn header_ban_and_invalidate_all(io: &str) {
    let origin = TestOrigin::start(|req| {
        let team = if req.path().starts_with("/search") {
            "search"
        } else {
            "ads"
        };
        Reply::Send(response(
            200,
            &[("Cache-Control", "max-age=60"), ("X-Team", team)],
            req.path().as_bytes(),
        ))
    });
    let Some((_dir, server)) = Server::serve_with_config(io, Some(&origin.url()), 2, &config(""))
    else {
        return;
    };
    let paths = ["/search/1", "/search/2", "/ads/1"];
    for p in paths {
        assert_miss(&server.get(p));
        assert_hit(&server.get(p));
    }
    let v = invalidate(
        &server,
        r#"{"header": {"name": "X-Team", "value": "search"}}"#,
    );
    assert_eq!(v["bans"], 1, "{v}");
    assert_miss(&server.get(paths[0]));
    assert_miss(&server.get(paths[1]));
    assert_hit(&server.get(paths[2]));
    assert_eq!(origin.requests(), 5);
    // Everything: one ban that replaces the others.
    let r = admin(&server, "POST", "/invalidate/all", Some(TOKEN), "");
    assert_eq!(r.status, 200, "{}", r.summary());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["invalidated"], 3, "every stored object: {v}");
    assert_miss(&server.get(paths[2]));
    assert_eq!(origin.requests(), 6);
    let m = server.metrics();
    // Two by the header ban, one by the ban on everything (so far).
    assert_eq!(m.value("ringcache_invalidated_objects_total"), 3.0);
    assert_eq!(m.value("ringcache_bans_active"), 1.0);
    assert_eq!(m.labelled("ringcache_purges_total", "kind=\"all\""), 1.0);
    assert_eq!(m.labelled("ringcache_purges_total", "kind=\"header\""), 1.0);
}

fn access_control(io: &str) {
    let origin = DemoOrigin::start();
    // No token configured: the invalidation API is closed.
    let Some(server) = Server::serve(io, Some(&origin.url()), 1, &[]) else {
        return;
    };
    let body = r#"{"urls": ["/api/items/1"]}"#;
    assert_eq!(
        admin(&server, "POST", "/invalidate", None, body).status,
        403
    );
    assert_eq!(
        admin(&server, "POST", "/invalidate", Some(TOKEN), body).status,
        403
    );
    assert_eq!(admin(&server, "GET", "/bans", None, "").status, 403);
    assert_eq!(admin(&server, "GET", "/stats", None, "").status, 200);
    drop(server);
    let Some((_origin, _dir, server)) = with_demo(io, "") else {
        return;
    };
    let r = admin(&server, "POST", "/invalidate", None, body);
    assert_eq!(r.status, 401, "{}", r.summary());
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert_eq!(
        admin(
            &server,
            "POST",
            "/invalidate",
            Some("test-token-012345678X"),
            body
        )
        .status,
        401
    );
    assert_eq!(admin(&server, "GET", "/bans", Some("nope"), "").status, 401);
    assert_eq!(admin(&server, "GET", "/stats", None, "").status, 401);
    assert_eq!(admin(&server, "GET", "/stats", Some(TOKEN), "").status, 200);
    assert_eq!(admin(&server, "GET", "/healthz", None, "").status, 200);
    assert_eq!(admin(&server, "GET", "/metrics", None, "").status, 200);
    assert_eq!(
        admin(&server, "POST", "/invalidate", Some(TOKEN), body).status,
        200
    );
    // The log line is written before the answer; its capture may lag.
    let logged = wait_until(Duration::from_secs(5), || {
        server
            .stderr_lines()
            .iter()
            .any(|l| l.contains("invalidate: peer 127.0.0.1") && l.contains("/api/items/1"))
    });
    assert!(logged, "{:?}", server.stderr_lines());
}

fn purge_request(path: &str) -> String {
    format!("PURGE {path} HTTP/1.1\r\nHost: ringcache.test\r\n\r\n")
}

fn purge_method(io: &str) {
    let origin = DemoOrigin::start();
    let path = "/api/items/5";
    // Allowed only from 10.0.0.0/8: loopback is refused, nothing is purged.
    let denied = config(
        "[invalidation]\npurge_method = true\npurge_allow = [\"10.0.0.0/8\", \"fd00::/8\"]\n",
    );
    let Some((_dir, server)) = Server::serve_with_config(io, Some(&origin.url()), 2, &denied)
    else {
        return;
    };
    assert_miss(&server.get(path));
    let mut c = server.client();
    c.send(purge_request(path).as_bytes());
    let r = c.read_response();
    assert_eq!(r.status, 403, "{}", r.summary());
    assert_hit(&server.get(path));
    assert_eq!(origin.count(path), 1, "PURGE never reaches the origin");
    drop(server);
    let allowed = config(
        "[invalidation]\npurge_method = true\npurge_allow = [\"127.0.0.1/32\", \"::1/128\"]\n",
    );
    let Some((_dir, server)) = Server::serve_with_config(io, Some(&origin.url()), 2, &allowed)
    else {
        return;
    };
    assert_miss(&server.get(path));
    assert_eq!(origin.count(path), 2);
    let mut c = server.client();
    c.send(purge_request(path).as_bytes());
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.body_str(), "{\"purged\":1}\n");
    // The connection stays usable, and the purged object is fetched again.
    let r = c.get(path);
    assert_miss(&r);
    assert_eq!(origin.count(path), 3);
    assert_eq!(
        server
            .metrics()
            .labelled("ringcache_purges_total", "kind=\"url\""),
        1.0
    );
}

fn bad_requests(io: &str) {
    let Some((_origin, _dir, server)) =
        with_demo(io, "[limits]\nadmin_body_bytes_max = \"1KiB\"\n")
    else {
        return;
    };
    for (body, what) in [
        ("{not json", "invalid JSON"),
        ("{}", "nothing to invalidate"),
        (r#"{"regex": "(unclosed"}"#, "regex"),
        (r#"{"urls": ["no-slash"]}"#, "url"),
        (r#"{"prefixes": ["/a"], "mode": "soft"}"#, "hard"),
        (r#"{"urls": ["/a"], "mode": "sideways"}"#, "invalid JSON"),
        (r#"{"unknown": 1}"#, "invalid JSON"),
        (r#"{"tags": [""]}"#, "tag"),
    ] {
        let r = admin(&server, "POST", "/invalidate", Some(TOKEN), body);
        assert_eq!(r.status, 400, "{body}: {}", r.summary());
        assert!(r.body_str().contains(what), "{body}: {}", r.body_str());
    }
    let big = format!(r#"{{"urls": ["/{}"]}}"#, "a".repeat(2000));
    let r = admin(&server, "POST", "/invalidate", Some(TOKEN), &big);
    assert_eq!(r.status, 413, "{}", r.summary());
    // A regex too large once compiled is refused, not built.
    let huge = r#"{"regex": "(\\w{50}){50}"}"#;
    let r = admin(&server, "POST", "/invalidate", Some(TOKEN), huge);
    assert_eq!(r.status, 400, "{}", r.summary());
    assert_eq!(admin(&server, "GET", "/healthz", None, "").status, 200);
    assert_eq!(server.metrics().value("ringcache_bans_active"), 0.0);
    assert_miss(&server.get("/api/items/1"));
}

fn tag_purge_after_restart(io: &str) {
    let origin = DemoOrigin::start();
    let dir = TempDir::new("inv-restart");
    let store = dir.path().join("store");
    let toml = config(&format!(
        "memory = \"16MiB\"\nstore = \"{}\"\n",
        store.display()
    ));
    let Some((_cfg, server)) = Server::serve_with_config(io, Some(&origin.url()), 1, &toml) else {
        return;
    };
    let x = "/api/items/1?tags=x";
    let y = "/api/items/2?tags=y";
    assert_miss(&server.get(x));
    assert_miss(&server.get(y));
    assert!(server.stop().success());
    let Some((_cfg, server)) = Server::serve_with_config(io, Some(&origin.url()), 1, &toml) else {
        return;
    };
    assert_hit(&server.get(x));
    // The index is empty after the restart: the purge adds a tag ban,
    // which reads the tag in the stored field.
    let v = invalidate(&server, r#"{"tags": ["x"]}"#);
    assert_eq!(
        (v["invalidated"].as_u64(), v["bans"].as_u64()),
        (Some(0), Some(1))
    );
    assert_miss(&server.get(x));
    assert_hit(&server.get(y));
    assert_eq!(origin.count("/api/items/1"), 2);
    assert_eq!(origin.count("/api/items/2"), 1);
}

fn bans_are_bounded(io: &str) {
    let Some((_origin, _dir, server)) = with_demo(io, "[limits]\nbans_max = 2\n") else {
        return;
    };
    // An object servable for an hour keeps the bans below from retiring
    // (on an empty store they would retire at the next second, and a slow
    // machine would find room for the third).
    let r = server.get("/api/items/1?max_age=3600");
    assert_eq!(r.status, 200, "{}", r.summary());
    invalidate(&server, r#"{"prefixes": ["/a", "/b"]}"#);
    let r = admin(
        &server,
        "POST",
        "/invalidate",
        Some(TOKEN),
        r#"{"prefixes": ["/c"]}"#,
    );
    assert_eq!(r.status, 503, "{}", r.summary());
    assert!(r.body_str().contains("bans_max"), "{}", r.body_str());
    // Everything replaces the bans it covers.
    let r = admin(&server, "POST", "/invalidate/all", Some(TOKEN), "");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(server.metrics().value("ringcache_bans_active"), 1.0);
    invalidate(&server, r#"{"prefixes": ["/c"]}"#);
}

fn expect_continue(io: &str) {
    use std::io::{Read, Write};
    let Some((_origin, _dir, server)) = with_demo(io, "") else {
        return;
    };
    let body = r#"{"urls": ["http://ringcache.test/api/items/1"]}"#;
    let mut s = std::net::TcpStream::connect(server.admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "POST /invalidate HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {TOKEN}\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    // The go-ahead comes before the body is sent.
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).unwrap(),
            1,
            "{:?}",
            String::from_utf8_lossy(&got)
        );
        got.push(byte[0]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 100 "),
        "{}",
        String::from_utf8_lossy(&got)
    );
    s.write_all(body.as_bytes()).unwrap();
    let mut rest = String::new();
    s.read_to_string(&mut rest).unwrap();
    assert!(rest.starts_with("HTTP/1.1 200 "), "{rest}");
    assert!(rest.contains("\"invalidated\":0"), "{rest}");
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

/// An origin varying on Accept-Language, tagging each variant `page` and
/// `lang-<language>`; the body names the language.
fn language_origin() -> TestOrigin {
    TestOrigin::start(|req| {
        let lang = req.header("accept-language").unwrap_or("none").to_string();
        Reply::Send(response(
            200,
            &[
                ("Cache-Control", "max-age=60"),
                ("Vary", "Accept-Language"),
                ("Surrogate-Key", &format!("page lang-{lang}")),
            ],
            format!("lang={lang}").as_bytes(),
        ))
    })
}

const LANGUAGES: [&str; 3] = ["en", "fr", "de"];

/// Store one variant per language and check each is a hit.
#[track_caller]
fn store_variants(server: &Server) {
    for lang in LANGUAGES {
        let r = get_with(server, "/page", &[("Accept-Language", lang)]);
        assert_miss(&r);
    }
    for lang in LANGUAGES {
        let r = get_with(server, "/page", &[("Accept-Language", lang)]);
        assert_hit(&r);
        assert_eq!(r.body_str(), format!("lang={lang}"));
        assert!(!r.has_header("surrogate-key"), "{}", r.summary());
    }
}

/// A URL purge acts on every Vary variant of the URL: the admin API's
/// hard and soft purges, and PURGE on the traffic port.
fn url_purge_covers_every_variant(io: &str) {
    let origin = language_origin();
    let extra = "[invalidation]\npurge_method = true\n";
    let Some((_dir, server)) =
        Server::serve_with_config(io, Some(&origin.url()), 2, &config(extra))
    else {
        return;
    };
    store_variants(&server);
    assert_eq!(origin.requests(), 3);
    let v = invalidate(&server, r#"{"urls": ["http://ringcache.test/page"]}"#);
    assert_eq!(v["invalidated"], 3, "every variant: {v}");
    for lang in LANGUAGES {
        assert_miss(&get_with(&server, "/page", &[("Accept-Language", lang)]));
    }
    assert_eq!(origin.requests(), 6, "each variant fetched again");
    // Soft: every variant is kept, stale; the next request of each goes
    // to the origin for it.
    let v = invalidate(
        &server,
        r#"{"urls": ["/page"], "host": "ringcache.test", "mode": "soft"}"#,
    );
    assert_eq!(v["invalidated"], 3, "every variant: {v}");
    for lang in LANGUAGES {
        let r = get_with(&server, "/page", &[("Accept-Language", lang)]);
        assert_eq!(r.cache_status_params()[0], "fwd=stale", "{}", r.summary());
        assert_eq!(r.body_str(), format!("lang={lang}"));
    }
    assert_eq!(origin.requests(), 9);
    // PURGE on the traffic port: the same purge.
    let mut c = server.client();
    c.send(purge_request("/page").as_bytes());
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.body_str(), "{\"purged\":3}\n");
    for lang in LANGUAGES {
        assert_miss(&get_with(&server, "/page", &[("Accept-Language", lang)]));
    }
    assert_eq!(origin.requests(), 12);
}

/// The tag index holds variants under their own keys: a tag one variant
/// carries invalidates that variant only, a tag all carry every one.
fn tag_purge_of_a_variant(io: &str) {
    let origin = language_origin();
    let Some((_dir, server)) = Server::serve_with_config(io, Some(&origin.url()), 2, &config(""))
    else {
        return;
    };
    store_variants(&server);
    let v = invalidate(&server, r#"{"tags": ["lang-fr"]}"#);
    assert_eq!(
        (v["invalidated"].as_u64(), v["bans"].as_u64()),
        (Some(1), Some(0)),
        "{v}"
    );
    let fr = get_with(&server, "/page", &[("Accept-Language", "fr")]);
    assert_eq!(
        fr.cache_status_params()[0],
        "fwd=vary-miss",
        "{}",
        fr.summary()
    );
    assert_eq!(fr.body_str(), "lang=fr");
    for lang in ["en", "de"] {
        assert_hit(&get_with(&server, "/page", &[("Accept-Language", lang)]));
    }
    assert_eq!(
        origin.requests(),
        4,
        "only the tagged variant was fetched again"
    );
    let v = invalidate(&server, r#"{"tags": ["page"]}"#);
    assert_eq!(v["invalidated"], 3, "{v}");
    for lang in LANGUAGES {
        assert_miss(&get_with(&server, "/page", &[("Accept-Language", lang)]));
    }
    assert_eq!(origin.requests(), 7);
}

/// A ban hides a stale-while-revalidate object: the request after it is
/// fetched, never answered with the stale copy. A URL the ban does not
/// match is answered stale as usual (and without its tag field).
fn ban_hides_a_stale_while_revalidate_object(io: &str) {
    // Stale on arrival (Age beyond max-age), within its swr window.
    let origin = TestOrigin::start(|req| {
        Reply::Send(response(
            200,
            &[
                ("Cache-Control", "max-age=1, stale-while-revalidate=600"),
                ("Age", "10"),
                ("ETag", "\"v1\""),
                ("Surrogate-Key", "swr"),
            ],
            format!("body of {}", req.path()).as_bytes(),
        ))
    });
    let Some((_dir, server)) = Server::serve_with_config(io, Some(&origin.url()), 2, &config(""))
    else {
        return;
    };
    for path in ["/swr/banned", "/kept"] {
        assert_miss(&server.get(path));
    }
    // The control: a stale answer at once.
    let r = server.get("/kept");
    assert!(r.is_hit(), "{}", r.summary());
    assert!(
        r.cache_status_params()
            .iter()
            .any(|p| p == "detail=stale-while-revalidate"),
        "{}",
        r.summary()
    );
    assert!(!r.has_header("surrogate-key"), "{}", r.summary());
    let v = invalidate(&server, r#"{"prefixes": ["/swr/"]}"#);
    assert_eq!(v["bans"], 1, "{v}");
    let r = server.get("/swr/banned");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(
        r.cache_status_params()[..2],
        ["fwd=uri-miss", "fwd-status=200"],
        "no stale answer after the ban: {}",
        r.summary()
    );
    let fetched = origin
        .all_requests()
        .iter()
        .filter(|q| q.path() == "/swr/banned")
        .count();
    assert_eq!(fetched, 2, "the banned object was fetched again");
    assert!(
        origin
            .all_requests()
            .iter()
            .filter(|q| q.path() == "/swr/banned")
            .all(|q| q.header("if-none-match").is_none()),
        "a banned object is not validated either"
    );
}

/// The tag field is cut from a range answered from the store and from the
/// answers of requests that waited for another's fetch, whether relayed,
/// served from the store (another worker) or streamed; it stays stored
/// (a tag purge still finds the object).
fn tag_field_absent_from_range_and_collapsed_answers(io: &str) {
    let body: Vec<u8> = (0..96 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    let origin = {
        let body = body.clone();
        TestOrigin::start(move |req| {
            let body = if req.path().starts_with("/large") {
                &body[..]
            } else {
                b"0123456789"
            };
            // Slow enough that the herd below parks behind the first.
            Reply::After(
                Duration::from_millis(300),
                Box::new(Reply::Send(response(
                    200,
                    &[("Cache-Control", "max-age=60"), ("Surrogate-Key", "t1 t2")],
                    body,
                ))),
            )
        })
    };
    let extra = "[limits]\ncoalesce_stream_bytes_min = \"64KiB\"\n";
    let Some((_dir, server)) =
        Server::serve_with_config(io, Some(&origin.url()), 2, &config(extra))
    else {
        return;
    };
    // A range of a stored response.
    assert_miss(&server.get("/digits"));
    let r = get_with(&server, "/digits", &[("Range", "bytes=2-4")]);
    assert_eq!(r.status, 206, "{}", r.summary());
    assert!(
        r.cache_status().starts_with("ringcache; hit"),
        "{}",
        r.summary()
    );
    assert_eq!(r.body, b"234");
    assert!(!r.has_header("surrogate-key"), "{}", r.summary());
    // A herd on a cold key, over both workers, small and large (streamed).
    for (path, len) in [("/herd", 10), ("/large", body.len())] {
        let mut clients: Vec<Client> = (0..16).map(|_| server.client()).collect();
        for c in clients.iter_mut() {
            c.timeout = Duration::from_secs(20);
            c.send(get_request(path).as_bytes());
        }
        let answers: Vec<Response> = clients.iter_mut().map(|c| c.read_response()).collect();
        let mut collapsed = 0;
        for r in &answers {
            assert_eq!(r.status, 200, "{}", r.summary());
            assert_eq!(r.body.len(), len, "{}", r.summary());
            assert!(!r.has_header("surrogate-key"), "{path}: {}", r.summary());
            collapsed += usize::from(r.cache_status_params().iter().any(|p| p == "collapsed"));
        }
        assert!(
            collapsed > 0,
            "{path}: no request waited for another's fetch"
        );
    }
    let fetched = |p: &str| {
        origin
            .all_requests()
            .iter()
            .filter(|q| q.path() == p)
            .count()
    };
    assert!(fetched("/herd") <= 2 && fetched("/large") <= 2);
    // Stored with the field: the tag finds all three objects.
    let v = invalidate(&server, r#"{"tags": ["t2"]}"#);
    assert_eq!(v["invalidated"], 3, "{v}");
}

/// SIGHUP applies a new admin token and a new `purge_allow` at once: the
/// old token gets 401, the new one works, and PURGE from loopback is
/// refused once loopback is no longer allowed.
fn token_and_purge_allow_reload(io: &str) {
    let origin = DemoOrigin::start();
    let path = "/api/items/9";
    let Some((dir, mut server)) = Server::serve_with_config(
        io,
        Some(&origin.url()),
        2,
        &config("[invalidation]\npurge_method = true\n"),
    ) else {
        return;
    };
    let all = r#"{"tags": ["nothing"]}"#;
    assert_eq!(
        admin(&server, "POST", "/invalidate", Some(TOKEN), all).status,
        200
    );
    let new_token = "a-second-token-0123456789";
    dir.write(
        "ringcache.toml",
        &format!(
            "[invalidation]\npurge_method = true\npurge_allow = [\"10.0.0.0/8\"]\n\n[admin]\ntoken = \"{new_token}\"\n"
        ),
    );
    server.proc.signal(libc::SIGHUP);
    let reloaded = wait_until(Duration::from_secs(10), || {
        admin(&server, "POST", "/invalidate", Some(new_token), all).status == 200
    });
    assert!(reloaded, "{:?}", server.stderr_lines());
    assert_eq!(
        admin(&server, "POST", "/invalidate", Some(TOKEN), all).status,
        401
    );
    // The line is logged just after the new access is set: wait for it.
    let mut line = None;
    wait_until(Duration::from_secs(10), || {
        line = server
            .stderr_lines()
            .into_iter()
            .find(|l| l.contains("reload: applied"));
        line.is_some()
    });
    let line = line.expect("a reload line");
    assert!(line.contains("admin.token (set → set, changed)"), "{line}");
    assert!(line.contains("invalidation.purge_allow"), "{line}");
    assert!(
        !line.contains(new_token),
        "the token is never logged: {line}"
    );
    assert_miss(&server.get(path));
    let mut c = server.client();
    c.send(purge_request(path).as_bytes());
    let r = c.read_response();
    assert_eq!(r.status, 403, "{}", r.summary());
    assert_hit(&server.get(path));
    assert_eq!(origin.count(path), 1);
}

/// An origin for `/v` with a validator and a tag, stale on arrival (no
/// stale window): every later request validates, and the 304 adds a
/// field; `/fresh` is the same response, fresh for a minute. Their
/// `Set-Cookie` makes the stored head differ from the relayed one under
/// `set_cookie = "strip"`.
fn validating_tagged_origin() -> TestOrigin {
    TestOrigin::start(|req| {
        if req.path() == "/fresh" {
            return Reply::Send(response(
                200,
                &[
                    ("Cache-Control", "max-age=60"),
                    ("Surrogate-Key", "t-fresh"),
                    ("Set-Cookie", "s=1"),
                    ("X-After", "1"),
                ],
                b"fresh body",
            ));
        }
        if req.header("if-none-match") == Some("\"v1\"") {
            return Reply::Send(response(
                304,
                &[
                    ("ETag", "\"v1\""),
                    ("Cache-Control", "max-age=60"),
                    ("X-Validated", "yes"),
                ],
                b"",
            ));
        }
        Reply::Send(response(
            200,
            &[
                ("Cache-Control", "max-age=1"),
                ("Age", "10"),
                ("ETag", "\"v1\""),
                ("Surrogate-Key", "t-v"),
                ("Set-Cookie", "s=1"),
                ("X-After", "1"),
            ],
            b"validated body",
        ))
    })
}

/// The tag field stays the stored head's last line when `[cache]` strips
/// fields for storing and after a 304 merges new fields in: answers never
/// carry it (the 304 from the store, the validated answer, the hit after
/// it), and the tag index still finds the object.
fn tag_field_survives_stripping_and_304_merge(io: &str) {
    let origin = validating_tagged_origin();
    let extra = "[cache]\nset_cookie = \"strip\"\n";
    let Some((_dir, server)) =
        Server::serve_with_config(io, Some(&origin.url()), 2, &config(extra))
    else {
        return;
    };
    let r = server.get("/v");
    assert_miss(&r);
    assert!(r.has_header("set-cookie"), "{}", r.summary());
    assert!(!r.has_header("surrogate-key"), "{}", r.summary());
    // Stale: validated, the stored body served with the merged fields.
    let r = server.get("/v");
    assert_eq!(
        r.cache_status_params()[..2],
        ["fwd=stale", "fwd-status=304"],
        "{}",
        r.summary()
    );
    assert_eq!(r.body, b"validated body");
    assert_eq!(r.header("x-validated"), Some("yes"), "{}", r.summary());
    assert!(!r.has_header("set-cookie"), "{}", r.summary());
    assert!(!r.has_header("surrogate-key"), "{}", r.summary());
    let r = server.get("/v");
    assert_hit(&r);
    assert_eq!(r.header("x-after"), Some("1"), "{}", r.summary());
    assert!(!r.has_header("surrogate-key"), "{}", r.summary());
    // A 304 from the store for the client's own condition.
    let r = get_with(&server, "/v", &[("If-None-Match", "\"v1\"")]);
    assert_eq!(r.status, 304, "{}", r.summary());
    assert!(!r.has_header("surrogate-key"), "{}", r.summary());
    assert_eq!(origin.requests(), 2);
    let v = invalidate(&server, r#"{"tags": ["t-v"]}"#);
    assert_eq!(v["invalidated"], 1, "still tagged after the merge: {v}");
    assert_miss(&server.get("/v"));
    // Stored in the stripped form, never validated: the hit has no tag field.
    assert_miss(&server.get("/fresh"));
    let r = server.get("/fresh");
    assert_hit(&r);
    assert_eq!(r.header("x-after"), Some("1"), "{}", r.summary());
    assert!(!r.has_header("set-cookie"), "{}", r.summary());
    assert!(!r.has_header("surrogate-key"), "{}", r.summary());
    let v = invalidate(&server, r#"{"tags": ["t-fresh"]}"#);
    assert_eq!(v["invalidated"], 1, "{v}");
}

/// A retired ban leaves a floor: an expired object stored before it is
/// not validated (which would serve the banned body again after a 304)
/// but fetched in full.
fn retired_ban_leaves_no_validation_of_older_objects(io: &str) {
    // Stale on arrival with a validator, no stale window: every later
    // request would validate it.
    let origin = TestOrigin::start(|req| {
        if req.header("if-none-match") == Some("\"v1\"") {
            return Reply::Send(response(
                304,
                &[("ETag", "\"v1\""), ("Cache-Control", "max-age=1")],
                b"",
            ));
        }
        Reply::Send(response(
            200,
            &[
                ("Cache-Control", "max-age=1"),
                ("Age", "10"),
                ("ETag", "\"v1\""),
            ],
            b"old body",
        ))
    });
    let Some((_dir, server)) = Server::serve_with_config(io, Some(&origin.url()), 2, &config(""))
    else {
        return;
    };
    assert_miss(&server.get("/old/x"));
    let v = invalidate(&server, r#"{"prefixes": ["/old/"]}"#);
    assert_eq!(v["bans"], 1, "{v}");
    // Every object stored before the ban is expired: it retires within a
    // second or two (a scrape retires what is due).
    let retired = wait_until(Duration::from_secs(10), || {
        server.metrics().value("ringcache_bans_active") == 0.0
    });
    assert!(retired, "the ban did not retire");
    let r = server.get("/old/x");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(
        r.cache_status_params()[..2],
        ["fwd=uri-miss", "fwd-status=200"],
        "{}",
        r.summary()
    );
    let requests = origin.all_requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[1].header("if-none-match"),
        None,
        "the banned copy is not validated after the ban retired"
    );
}

both_io!(
    hard_url_purge,
    soft_url_purge,
    tag_purge,
    prefix_and_regex_bans,
    header_ban_and_invalidate_all,
    access_control,
    purge_method,
    bad_requests,
    tag_purge_after_restart,
    bans_are_bounded,
    expect_continue,
    url_purge_covers_every_variant,
    tag_purge_of_a_variant,
    ban_hides_a_stale_while_revalidate_object,
    tag_field_absent_from_range_and_collapsed_answers,
    token_and_purge_allow_reload,
    tag_field_survives_stripping_and_304_merge,
    retired_ban_leaves_no_validation_of_older_objects,
);
