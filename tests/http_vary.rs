//! Vary (RFC 9111 §4.1): several stored responses per URL, chosen by the
//! request fields each response nominates; `fwd=vary-miss` (RFC 9211
//! §2.2) for a request no stored variant matches; invalidation (§4.4)
//! removes every variant. Each scenario runs on both I/O backends.

#[macro_use]
mod common;

use std::thread;
use std::time::Duration;

use common::*;

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

/// An origin whose body names the request's Accept-Language (all lines
/// joined), varying on it.
fn language_origin(cc: &'static str) -> TestOrigin {
    TestOrigin::start(move |req| {
        let lang = req.headers_all("accept-language").join("+");
        Reply::Send(response(
            200,
            &[("Cache-Control", cc), ("Vary", "Accept-Language")],
            format!("lang={lang}").as_bytes(),
        ))
    })
}

#[track_caller]
fn assert_params(r: &Response, want: &[&str]) {
    assert_eq!(r.cache_status_params(), want, "{}", r.summary());
}

/// §4.1: each variant is stored under its secondary key; a request whose
/// fields select another variant is a vary-miss whose answer is stored too.
fn variants_stored_and_selected(io: &str) {
    let origin = language_origin("max-age=60");
    let Some(server) = Server::serve(io, Some(&origin.url()), 2, &[]) else {
        return;
    };
    let en = get_with(&server, "/page", &[("Accept-Language", "en")]);
    assert_params(&en, &["fwd=uri-miss", "fwd-status=200", "stored"]);
    assert_eq!(en.body_str(), "lang=en");
    let fr = get_with(&server, "/page", &[("Accept-Language", "fr")]);
    assert_params(&fr, &["fwd=vary-miss", "fwd-status=200", "stored"]);
    assert_eq!(fr.body_str(), "lang=fr");
    let none = get_with(&server, "/page", &[]);
    assert_params(&none, &["fwd=vary-miss", "fwd-status=200", "stored"]);
    assert_eq!(none.body_str(), "lang=");
    for (lang, body) in [("en", "lang=en"), ("fr", "lang=fr")] {
        let r = get_with(&server, "/page", &[("Accept-Language", lang)]);
        assert!(r.is_hit(), "{lang}: {}", r.summary());
        assert_eq!(r.body_str(), body);
        assert_eq!(r.header("vary"), Some("Accept-Language"));
    }
    let r = get_with(&server, "/page", &[]);
    assert!(
        r.is_hit(),
        "absent field is a variant of its own: {}",
        r.summary()
    );
    assert_eq!(r.body_str(), "lang=");
    // HEAD is answered from the variant the request selects.
    let mut c = server.client();
    c.send(b"HEAD /page HTTP/1.1\r\nHost: ringcache.test\r\nAccept-Language: fr\r\n\r\n");
    let head = c.read_head_response();
    assert!(head.is_hit(), "{}", head.summary());
    assert_eq!(head.content_length(), Some(7));
    assert_eq!(origin.requests(), 3, "one fetch per variant");
}

/// §4.1: field values are compared after normalisation: name case,
/// whitespace, and several field lines combined as one list.
fn normalised_field_values(io: &str) {
    let origin = TestOrigin::start(|_| {
        Reply::Send(response(
            200,
            &[("Cache-Control", "max-age=60"), ("Vary", "accept-encoding")],
            b"encoded",
        ))
    });
    let Some(server) = Server::serve(io, Some(&origin.url()), 1, &[]) else {
        return;
    };
    let first = get_with(&server, "/n", &[("Accept-Encoding", "gzip, br")]);
    assert_params(&first, &["fwd=uri-miss", "fwd-status=200", "stored"]);
    for fields in [
        &[("accept-encoding", "gzip,br")][..],
        &[("ACCEPT-ENCODING", "  gzip ,   br  ")],
        &[("Accept-Encoding", "gzip"), ("Accept-Encoding", "br")],
    ] {
        let r = get_with(&server, "/n", fields);
        assert!(r.is_hit(), "{fields:?}: {}", r.summary());
    }
    // Another order of elements is another variant.
    let other = get_with(&server, "/n", &[("Accept-Encoding", "br, gzip")]);
    assert_params(&other, &["fwd=vary-miss", "fwd-status=200", "stored"]);
    assert_eq!(origin.requests(), 2);
}

/// §4.1: `Vary: *` never matches a later request: never stored.
fn vary_star_not_stored(io: &str) {
    let origin = TestOrigin::start(|_| {
        Reply::Send(response(
            200,
            &[("Cache-Control", "max-age=60"), ("Vary", "Accept, *")],
            b"star",
        ))
    });
    let Some(server) = Server::serve(io, Some(&origin.url()), 1, &[]) else {
        return;
    };
    for _ in 0..2 {
        let r = server.get("/star");
        assert_params(&r, &["fwd=uri-miss", "fwd-status=200", "detail=vary-star"]);
    }
    assert_eq!(origin.requests(), 2);
}

/// `cache.variants_per_key_max`: beyond it the oldest variant gives way.
fn variants_limit(io: &str) {
    let origin = language_origin("max-age=60");
    let Some((_dir, server)) = Server::serve_with_config(
        io,
        Some(&origin.url()),
        1,
        "[cache]\nvariants_per_key_max = 2\n",
    ) else {
        return;
    };
    for lang in ["a", "b", "c"] {
        let r = get_with(&server, "/lim", &[("Accept-Language", lang)]);
        assert!(r.cache_status().ends_with("stored"), "{}", r.summary());
    }
    assert_eq!(origin.requests(), 3);
    for lang in ["b", "c"] {
        let r = get_with(&server, "/lim", &[("Accept-Language", lang)]);
        assert!(r.is_hit(), "{lang} kept: {}", r.summary());
    }
    let a = get_with(&server, "/lim", &[("Accept-Language", "a")]);
    assert_params(&a, &["fwd=vary-miss", "fwd-status=200", "stored"]);
    assert_eq!(origin.requests(), 4);
}

/// §4.4: a successful unsafe request removes every variant of its target.
fn invalidation_removes_every_variant(io: &str) {
    let origin = TestOrigin::start(|req| {
        if req.method == "POST" {
            return Reply::Send(response(204, &[], b""));
        }
        let lang = req.headers_all("accept-language").join("+");
        Reply::Send(response(
            200,
            &[("Cache-Control", "max-age=60"), ("Vary", "Accept-Language")],
            format!("lang={lang}").as_bytes(),
        ))
    });
    let Some(server) = Server::serve(io, Some(&origin.url()), 2, &[]) else {
        return;
    };
    for lang in ["en", "fr"] {
        get_with(&server, "/doc", &[("Accept-Language", lang)]);
        assert!(get_with(&server, "/doc", &[("Accept-Language", lang)]).is_hit());
    }
    let mut c = server.client();
    c.send(b"POST /doc HTTP/1.1\r\nHost: ringcache.test\r\nContent-Length: 1\r\n\r\nx");
    assert_eq!(c.read_response().status, 204);
    // Marker and variants are gone: the first request finds nothing at
    // all, the second a new marker that does not list its variant.
    let en = get_with(&server, "/doc", &[("Accept-Language", "en")]);
    assert_params(&en, &["fwd=uri-miss", "fwd-status=200", "stored"]);
    let fr = get_with(&server, "/doc", &[("Accept-Language", "fr")]);
    assert_params(&fr, &["fwd=vary-miss", "fwd-status=200", "stored"]);
    assert_eq!(fr.body_str(), "lang=fr");
    assert_eq!(server.metrics().value("ringcache_invalidations_total"), 1.0);
    assert_eq!(origin.requests(), 2 + 1 + 2);
}

/// A URL whose origin stops varying: the plain response replaces the
/// variants, and one that starts varying replaces the plain response.
fn vary_appears_and_disappears(io: &str) {
    let origin = TestOrigin::start(|req| {
        let varies = req.target.contains("v=1") || req.header("x-round").is_some();
        let mut fields = vec![("Cache-Control", "max-age=60")];
        if varies {
            fields.push(("Vary", "X-Round"));
        }
        Reply::Send(response(200, &fields, b"body"))
    });
    let Some((_dir, server)) = Server::serve_with_config(
        io,
        Some(&origin.url()),
        1,
        "[cache]\nkey_ignore_params = [\"v\"]\n",
    ) else {
        return;
    };
    // Plain first.
    assert!(server.get("/p?v=0").cache_status().ends_with("stored"));
    assert!(server.get("/p?v=0").is_hit());
    // The origin starts varying (a forced refetch through no-cache).
    let r = get_with(&server, "/p?v=1", &[("Cache-Control", "no-cache")]);
    assert!(r.cache_status().ends_with("stored"), "{}", r.summary());
    let r = get_with(&server, "/p?v=1", &[]);
    assert!(r.is_hit(), "the variant without X-Round: {}", r.summary());
    let r = get_with(&server, "/p?v=1", &[("X-Round", "2")]);
    assert_params(&r, &["fwd=vary-miss", "fwd-status=200", "stored"]);
    // And stops again: the plain response replaces marker and variants.
    let r = get_with(&server, "/p?v=0", &[("Cache-Control", "no-cache")]);
    assert!(r.cache_status().ends_with("stored"), "{}", r.summary());
    assert!(get_with(&server, "/p?v=0", &[("X-Round", "2")]).is_hit());
    assert_eq!(origin.requests(), 4);
}

/// Coalesced waiters get the variant their own fields select: the ones
/// matching the filler's are answered from the store, the others fetch.
fn coalesced_waiters_get_their_variant(io: &str) {
    let origin = TestOrigin::start(|req| {
        let lang = req.headers_all("accept-language").join("+");
        Reply::After(
            Duration::from_millis(400),
            Box::new(Reply::Send(response(
                200,
                &[("Cache-Control", "max-age=60"), ("Vary", "Accept-Language")],
                format!("lang={lang}").as_bytes(),
            ))),
        )
    });
    let Some(server) = Server::serve(io, Some(&origin.url()), 2, &[]) else {
        return;
    };
    let addr = server.addr;
    let clients: Vec<_> = (0..12)
        .map(|i| {
            let lang = if i % 3 == 0 { "fr" } else { "en" };
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                c.send(
                    format!(
                        "GET /herd HTTP/1.1\r\nHost: ringcache.test\r\nAccept-Language: {lang}\r\n\r\n"
                    )
                    .as_bytes(),
                );
                (lang, c.read_response())
            })
        })
        .collect();
    for t in clients {
        let (lang, r) = t.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(r.body_str(), format!("lang={lang}"), "{}", r.summary());
    }
    let by_lang = |l: &str| {
        origin
            .all_requests()
            .iter()
            .filter(|r| r.header("accept-language") == Some(l))
            .count()
    };
    assert!(by_lang("en") >= 1 && by_lang("fr") >= 1);
    assert!(
        origin.requests() < 12,
        "waiters share fills: {} fetches",
        origin.requests()
    );
    for lang in ["en", "fr"] {
        let r = get_with(&server, "/herd", &[("Accept-Language", lang)]);
        assert!(r.is_hit(), "{lang}: {}", r.summary());
        assert_eq!(r.body_str(), format!("lang={lang}"));
    }
}

/// RFC 9110 §14 on a varying URL: the range comes from the variant the
/// request's fields select.
fn range_of_a_variant(io: &str) {
    let origin = language_origin("max-age=60");
    let Some(server) = Server::serve(io, Some(&origin.url()), 1, &[]) else {
        return;
    };
    for lang in ["en", "fr"] {
        get_with(&server, "/rv", &[("Accept-Language", lang)]);
    }
    for lang in ["en", "fr"] {
        let r = get_with(
            &server,
            "/rv",
            &[("Accept-Language", lang), ("Range", "bytes=5-6")],
        );
        assert_eq!(r.status, 206, "{}", r.summary());
        assert!(r.is_hit(), "{}", r.summary());
        assert_eq!(r.body_str(), lang);
    }
    let r = get_with(
        &server,
        "/rv",
        &[("Accept-Language", "de"), ("Range", "bytes=5-6")],
    );
    assert_eq!(r.status, 206, "{}", r.summary());
    assert_eq!(r.body_str(), "de");
    assert_eq!(
        r.cache_status_params()[0],
        "fwd=vary-miss",
        "{}",
        r.summary()
    );
    assert_eq!(origin.requests(), 3);
}

/// Variants survive a warm restart (SIGTERM, same `--store`): the marker
/// and every variant are items like any other.
fn variants_survive_restart(io: &str) {
    let origin = language_origin("max-age=600");
    let dir = TempDir::new("vary-restart");
    let store = dir.path().join("store");
    let extra = ["--store", store.to_str().unwrap(), "--memory", "16MiB"];
    let Some(server) = Server::serve(io, Some(&origin.url()), 1, &extra) else {
        return;
    };
    for lang in ["en", "fr"] {
        let r = get_with(&server, "/warm", &[("Accept-Language", lang)]);
        assert!(r.cache_status().ends_with("stored"), "{}", r.summary());
    }
    assert!(server.stop().success());
    let Some(server) = Server::serve(io, Some(&origin.url()), 1, &extra) else {
        return;
    };
    for lang in ["en", "fr"] {
        let r = get_with(&server, "/warm", &[("Accept-Language", lang)]);
        assert!(r.is_hit(), "{lang} after restart: {}", r.summary());
        assert_eq!(r.body_str(), format!("lang={lang}"));
    }
    assert_eq!(origin.requests(), 2);
}

both_io!(
    variants_stored_and_selected,
    normalised_field_values,
    vary_star_not_stored,
    variants_limit,
    invalidation_removes_every_variant,
    vary_appears_and_disappears,
    coalesced_waiters_get_their_variant,
    range_of_a_variant,
    variants_survive_restart,
);
