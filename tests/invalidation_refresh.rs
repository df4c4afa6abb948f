//! Refresh instead of purge (`"mode": "refresh"`): objects are made stale
//! and refetched in the background through the key's lease, conditional
//! on their validators, at most `invalidation.refresh_concurrency_max` at
//! the origin at once, each key fetched once. Every scenario runs on both
//! I/O backends against a scripted origin that counts requests per path
//! and tracks how many are in progress.

#[macro_use]
mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const TOKEN: &str = "test-token-0123456789";
const HOST: &str = "ringcache.test";

fn config(extra: &str) -> String {
    format!("[admin]\ntoken = \"{TOKEN}\"\n{extra}\n")
}

#[track_caller]
fn invalidate(server: &Server, body: &str) -> serde_json::Value {
    let r = server.admin_post("/invalidate", TOKEN, body);
    assert_eq!(r.status, 200, "{body}: {}", r.summary());
    serde_json::from_slice(&r.body).expect("a JSON answer")
}

fn refreshes(server: &Server, result: &str) -> u64 {
    server.metrics().labelled(
        "ringcache_invalidation_refreshes_total",
        &format!("result=\"{result}\""),
    ) as u64
}

/// Wait until `n` queued refreshes have ended (done, failed or skipped).
#[track_caller]
fn wait_refreshes_ended(server: &Server, n: u64) {
    let ended = || {
        let m = server.metrics();
        ["done", "failed", "skipped"]
            .iter()
            .map(|r| {
                m.labelled(
                    "ringcache_invalidation_refreshes_total",
                    &format!("result=\"{r}\""),
                ) as u64
            })
            .sum::<u64>()
    };
    assert!(
        wait_until(Duration::from_secs(60), || ended() >= n),
        "{} of {n} refreshes ended",
        ended()
    );
}

/// `GET path` with extra header lines on `c`.
fn get_on(c: &mut Client, path: &str, fields: &[(&str, &str)]) -> Response {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\n");
    for (n, v) in fields {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    c.send(req.as_bytes());
    c.read_response()
}

/// What the versioned origin shares with the test.
#[derive(Default)]
struct Shared {
    /// The content version: ETag `"v<version>"`, body `v<version> <path>`.
    version: AtomicU64,
    /// Conditional requests in progress now, and the most at once.
    active: AtomicU64,
    peak: AtomicU64,
    /// Answer 500 while set.
    failing: std::sync::atomic::AtomicBool,
}

/// An origin of versioned objects tagged `all`: a request whose
/// If-None-Match names the current version gets a 304. Each conditional
/// request is held a few milliseconds, counted as in progress.
fn versioned_origin(shared: Arc<Shared>) -> TestOrigin {
    TestOrigin::start(move |req| {
        let v = shared.version.load(Ordering::SeqCst);
        let etag = format!("\"v{v}\"");
        if let Some(inm) = req.header("if-none-match") {
            let now = shared.active.fetch_add(1, Ordering::SeqCst) + 1;
            shared.peak.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(2));
            shared.active.fetch_sub(1, Ordering::SeqCst);
            if shared.failing.load(Ordering::SeqCst) {
                return Reply::Send(response(500, &[], b"down"));
            }
            if inm == etag {
                return Reply::Send(response(
                    304,
                    &[("ETag", &etag), ("Cache-Control", "max-age=300")],
                    b"",
                ));
            }
        }
        Reply::Send(response(
            200,
            &[
                ("ETag", &etag),
                ("Cache-Control", "max-age=300"),
                ("Surrogate-Key", "all"),
            ],
            format!("v{v} {}", req.path()).as_bytes(),
        ))
    })
}

fn serve(io: &str, origin: &TestOrigin, extra: &str) -> Option<(TempDir, Server)> {
    Server::serve_with_config(io, Some(&origin.url()), 2, &config(extra))
}

/// Requests per path among `requests`.
fn per_path(requests: &[Request]) -> HashMap<String, u64> {
    let mut m = HashMap::new();
    for r in requests {
        *m.entry(r.target.clone()).or_insert(0) += 1;
    }
    m
}

const OBJECTS: u64 = 1000;

/// 1000 objects refreshed by one tag with `refresh_concurrency_max = 4`:
/// never more than 4 at the origin, exactly one conditional request per
/// key, and every object a fresh hit with the new body and ETag after.
/// Then a second refresh with clients asking for keys meanwhile: each
/// gets an answer, and still no key is fetched twice.
fn refresh_by_tag_is_paced_and_fetches_each_key_once(io: &str) {
    let shared = Arc::new(Shared::default());
    shared.version.store(1, Ordering::SeqCst);
    let origin = versioned_origin(Arc::clone(&shared));
    let extra = "[invalidation]\nrefresh_concurrency_max = 4\nrefresh_rate = 100000\n";
    let Some((_dir, server)) = serve(io, &origin, extra) else {
        return;
    };
    let mut c = server.client();
    for i in 0..OBJECTS {
        let r = get_on(&mut c, &format!("/item/{i}"), &[]);
        assert_eq!(r.status, 200, "{}", r.summary());
    }
    assert_eq!(origin.requests(), OBJECTS);

    // Round 1: the origin has a new version of everything.
    shared.version.store(2, Ordering::SeqCst);
    let v = invalidate(&server, r#"{"tags": ["all"], "mode": "refresh"}"#);
    assert_eq!(v["invalidated"], OBJECTS, "{v}");
    assert_eq!(v["queued"], OBJECTS, "{v}");
    assert_eq!(v["dropped"], 0, "{v}");
    wait_refreshes_ended(&server, OBJECTS);
    assert_eq!(refreshes(&server, "done"), OBJECTS);
    assert_eq!(refreshes(&server, "failed"), 0);
    let peak = shared.peak.load(Ordering::SeqCst);
    assert!(
        (1..=4).contains(&peak),
        "refresh requests in progress at once: {peak}"
    );
    let round1 = &origin.all_requests()[OBJECTS as usize..];
    assert_eq!(round1.len() as u64, OBJECTS, "one refresh per key");
    for r in round1 {
        assert_eq!(
            r.header("if-none-match"),
            Some("\"v1\""),
            "{}",
            r.head_text()
        );
    }
    let counts = per_path(round1);
    assert_eq!(counts.len() as u64, OBJECTS, "every key, none twice");
    for i in 0..OBJECTS {
        let r = get_on(&mut c, &format!("/item/{i}"), &[]);
        assert!(r.is_hit(), "{}", r.summary());
        assert_eq!(r.body_str(), format!("v2 /item/{i}"));
        assert_eq!(r.header("etag"), Some("\"v2\""));
    }
    assert_eq!(origin.requests(), 2 * OBJECTS, "all hits");
    let m = server.metrics();
    assert_eq!(
        m.value("ringcache_invalidation_refresh_queue_depth"),
        0.0,
        "queue drained"
    );
    assert_eq!(m.value("ringcache_invalidation_refreshes_in_flight"), 0.0);

    // Round 2: clients ask for keys while the refresh runs.
    shared.version.store(3, Ordering::SeqCst);
    let v = invalidate(&server, r#"{"tags": ["all"], "mode": "refresh"}"#);
    assert_eq!(v["queued"], OBJECTS, "{v}");
    let mut c2 = server.client();
    for i in (0..OBJECTS).step_by(5) {
        let r = get_on(&mut c2, &format!("/item/{i}"), &[]);
        assert_eq!(r.status, 200, "{}", r.summary());
        let body = r.body_str();
        assert!(
            body == format!("v2 /item/{i}") || body == format!("v3 /item/{i}"),
            "{}",
            r.summary()
        );
    }
    wait_refreshes_ended(&server, 2 * OBJECTS);
    let round2 = &origin.all_requests()[2 * OBJECTS as usize..];
    let counts = per_path(round2);
    assert_eq!(counts.len() as u64, OBJECTS, "every key fetched");
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "fetched twice: {twice:?}");
    for r in round2 {
        assert_eq!(
            r.header("if-none-match"),
            Some("\"v2\""),
            "{}",
            r.head_text()
        );
    }
    for i in 0..OBJECTS {
        let r = get_on(&mut c, &format!("/item/{i}"), &[]);
        assert!(r.is_hit(), "{}", r.summary());
        assert_eq!(r.body_str(), format!("v3 /item/{i}"));
    }
    assert_eq!(origin.requests(), 3 * OBJECTS);
}

/// A queue of 10 keys and a refresh of 50: the rest are dropped (counted,
/// and left soft-purged: the next request validates them itself).
fn queue_overflow_is_counted(io: &str) {
    let shared = Arc::new(Shared::default());
    shared.version.store(1, Ordering::SeqCst);
    let origin = versioned_origin(Arc::clone(&shared));
    let extra =
        "[invalidation]\nrefresh_queue_max = 10\nrefresh_rate = 1\nrefresh_concurrency_max = 1\n";
    let Some((_dir, server)) = serve(io, &origin, extra) else {
        return;
    };
    let mut c = server.client();
    for i in 0..50 {
        assert_eq!(get_on(&mut c, &format!("/o/{i}"), &[]).status, 200);
    }
    let v = invalidate(&server, r#"{"tags": ["all"], "mode": "refresh"}"#);
    let (queued, dropped) = (
        v["queued"].as_u64().unwrap(),
        v["dropped"].as_u64().unwrap(),
    );
    assert_eq!(v["invalidated"], 50, "{v}");
    assert_eq!(queued + dropped, 50, "{v}");
    // Ten fit; a worker may have taken one meanwhile (one rate token).
    assert!((10..=11).contains(&queued), "{v}");
    assert_eq!(refreshes(&server, "dropped"), dropped);
    assert_eq!(refreshes(&server, "queued"), queued);
    // Every object is stale now: the ones not refreshed yet are validated
    // by the next request (a 304: same body).
    let before = origin.requests();
    let mut validated = 0;
    for i in 0..50 {
        let r = get_on(&mut c, &format!("/o/{i}"), &[]);
        assert_eq!(r.body_str(), format!("v1 /o/{i}"));
        if r.cache_status_params().first().map(String::as_str) == Some("fwd=stale") {
            validated += 1;
        }
    }
    assert!(
        validated >= dropped,
        "{validated} validated, {dropped} dropped"
    );
    assert!(origin.requests() - before >= dropped);
}

/// An origin varying on Accept-Language with an ETag per language and
/// version; `de` is at version 2 once `changed` is set.
fn language_origin(changed: Arc<std::sync::atomic::AtomicBool>) -> TestOrigin {
    TestOrigin::start(move |req| {
        let lang = req.header("accept-language").unwrap_or("none").to_string();
        let v = if lang == "de" && changed.load(Ordering::SeqCst) {
            2
        } else {
            1
        };
        let etag = format!("\"{lang}-{v}\"");
        if req.header("if-none-match") == Some(etag.as_str()) {
            return Reply::Send(response(
                304,
                &[("ETag", &etag), ("Cache-Control", "max-age=120")],
                b"",
            ));
        }
        Reply::Send(response(
            200,
            &[
                ("Cache-Control", "max-age=60"),
                ("Vary", "Accept-Language"),
                ("ETag", &etag),
            ],
            format!("lang={lang} v{v}").as_bytes(),
        ))
    })
}

/// A URL refresh covers every Vary variant: each is refetched with its own
/// Accept-Language and validator; a 304 keeps the body, a 200 replaces it.
fn refresh_of_every_variant(io: &str) {
    let changed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let origin = language_origin(Arc::clone(&changed));
    let Some((_dir, server)) = serve(io, &origin, "") else {
        return;
    };
    let mut c = server.client();
    for lang in ["en", "de"] {
        let r = get_on(&mut c, "/page", &[("Accept-Language", lang)]);
        assert_eq!(r.body_str(), format!("lang={lang} v1"));
    }
    assert_eq!(origin.requests(), 2);
    changed.store(true, Ordering::SeqCst);
    let v = invalidate(
        &server,
        &format!(r#"{{"urls": ["http://{HOST}/page"], "mode": "refresh"}}"#),
    );
    assert_eq!(v["invalidated"], 2, "{v}");
    assert_eq!(v["queued"], 2, "{v}");
    wait_refreshes_ended(&server, 2);
    assert_eq!(refreshes(&server, "done"), 2);
    let requests = origin.all_requests();
    assert_eq!(requests.len(), 4, "one refresh per variant");
    let mut seen: Vec<(String, String)> = requests[2..]
        .iter()
        .map(|r| {
            (
                r.header("accept-language").unwrap_or("").to_string(),
                r.header("if-none-match").unwrap_or("").to_string(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("de".to_string(), "\"de-1\"".to_string()),
            ("en".to_string(), "\"en-1\"".to_string())
        ]
    );
    for (lang, body, etag) in [
        ("en", "lang=en v1", "\"en-1\""),
        ("de", "lang=de v2", "\"de-2\""),
    ] {
        let r = get_on(&mut c, "/page", &[("Accept-Language", lang)]);
        assert!(r.is_hit(), "{lang}: {}", r.summary());
        assert_eq!(r.body_str(), body);
        assert_eq!(r.header("etag"), Some(etag));
    }
    assert_eq!(origin.requests(), 4);
}

/// A refresh of a key that is not stored does nothing; refresh refuses
/// what it cannot refetch (bans, a path without a host).
fn refresh_of_a_missing_key_is_a_no_op(io: &str) {
    let shared = Arc::new(Shared::default());
    let origin = versioned_origin(Arc::clone(&shared));
    let Some((_dir, server)) = serve(io, &origin, "") else {
        return;
    };
    let v = invalidate(
        &server,
        &format!(r#"{{"urls": ["http://{HOST}/nothing"], "mode": "refresh"}}"#),
    );
    assert_eq!(
        (v["invalidated"].as_u64(), v["queued"].as_u64()),
        (Some(0), Some(0)),
        "{v}"
    );
    let v = invalidate(&server, r#"{"tags": ["nobody"], "mode": "refresh"}"#);
    assert_eq!(v["queued"], 0, "{v}");
    for body in [
        r#"{"prefixes": ["/a"], "mode": "refresh"}"#,
        r#"{"all": true, "mode": "refresh"}"#,
        r#"{"urls": ["/a"], "mode": "refresh"}"#,
    ] {
        let r = server.admin_post("/invalidate", TOKEN, body);
        assert_eq!(r.status, 400, "{body}: {}", r.summary());
    }
    assert_eq!(refreshes(&server, "queued"), 0);
    assert_eq!(origin.requests(), 0);
}

/// A refresh the origin fails leaves the object soft-purged: the next
/// request validates it.
fn failed_refresh_leaves_the_object_stale(io: &str) {
    let shared = Arc::new(Shared::default());
    shared.version.store(1, Ordering::SeqCst);
    let origin = versioned_origin(Arc::clone(&shared));
    let Some((_dir, server)) = serve(io, &origin, "") else {
        return;
    };
    let mut c = server.client();
    assert_eq!(get_on(&mut c, "/f", &[]).status, 200);
    shared.failing.store(true, Ordering::SeqCst);
    let v = invalidate(
        &server,
        &format!(r#"{{"urls": ["http://{HOST}/f"], "mode": "refresh"}}"#),
    );
    assert_eq!(v["queued"], 1, "{v}");
    wait_refreshes_ended(&server, 1);
    assert_eq!(refreshes(&server, "failed"), 1);
    assert_eq!(origin.requests(), 2);
    shared.failing.store(false, Ordering::SeqCst);
    let r = get_on(&mut c, "/f", &[]);
    assert_eq!(r.body_str(), "v1 /f");
    assert_eq!(
        r.cache_status_params().first().map(String::as_str),
        Some("fwd=stale"),
        "{}",
        r.summary()
    );
    assert_eq!(origin.requests(), 3);
    assert!(get_on(&mut c, "/f", &[]).is_hit());
}

/// While a refresh is at the origin, a client asking for the key waits for
/// it (answered with the refreshed object, `collapsed`), or, when the
/// object allows stale-while-revalidate, is answered stale at once: the
/// origin sees one request per key either way.
fn clients_during_a_refresh_wait_or_get_stale(io: &str) {
    let release = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let held = Arc::clone(&release);
    let origin = TestOrigin::start(move |req| {
        let cc = if req.path() == "/swr" {
            "max-age=300, stale-while-revalidate=60"
        } else {
            "max-age=300"
        };
        let (etag, body) = if req.header("if-none-match").is_some() {
            ("\"v2\"", format!("v2 {}", req.path()))
        } else {
            ("\"v1\"", format!("v1 {}", req.path()))
        };
        let reply = Reply::Send(response(
            200,
            &[("ETag", etag), ("Cache-Control", cc)],
            body.as_bytes(),
        ));
        if etag == "\"v2\"" {
            Reply::Until(Arc::clone(&held), Box::new(reply))
        } else {
            reply
        }
    });
    let Some((_dir, server)) = serve(io, &origin, "") else {
        return;
    };
    let mut c = server.client();
    for p in ["/held", "/swr"] {
        assert_eq!(get_on(&mut c, p, &[]).body_str(), format!("v1 {p}"));
    }
    let v = invalidate(
        &server,
        &format!(r#"{{"urls": ["http://{HOST}/held", "http://{HOST}/swr"], "mode": "refresh"}}"#),
    );
    assert_eq!(v["queued"], 2, "{v}");
    assert!(
        origin.wait_requests(4, Duration::from_secs(10)),
        "both refreshes at the origin"
    );
    // Stale-while-revalidate: answered stale now, no second fetch.
    let r = get_on(&mut c, "/swr", &[]);
    assert_eq!(r.body_str(), "v1 /swr", "{}", r.summary());
    assert!(
        r.cache_status().contains("stale-while-revalidate"),
        "{}",
        r.summary()
    );
    // Otherwise: the client waits for the refresh.
    let before = server.metrics().value("ringcache_coalesced_total");
    let addr = server.addr;
    let waiter = std::thread::spawn(move || {
        let mut c = Client::connect(addr);
        get_on(&mut c, "/held", &[])
    });
    assert!(
        wait_until(Duration::from_secs(10), || {
            server.metrics().value("ringcache_coalesced_total") > before
        }),
        "the client waits on the refresh"
    );
    release.store(true, std::sync::atomic::Ordering::SeqCst);
    let r = waiter.join().unwrap();
    assert_eq!(r.body_str(), "v2 /held", "{}", r.summary());
    assert!(
        r.cache_status_params().iter().any(|p| p == "collapsed"),
        "{}",
        r.summary()
    );
    wait_refreshes_ended(&server, 2);
    assert_eq!(refreshes(&server, "done"), 2);
    for p in ["/held", "/swr"] {
        let r = get_on(&mut c, p, &[]);
        assert!(r.is_hit(), "{}", r.summary());
        assert_eq!(r.body_str(), format!("v2 {p}"));
    }
    assert_eq!(origin.requests(), 4, "one refresh per key, nothing else");
}

both_io!(
    clients_during_a_refresh_wait_or_get_stale,
    refresh_by_tag_is_paced_and_fetches_each_key_once,
    queue_overflow_is_counted,
    refresh_of_every_variant,
    refresh_of_a_missing_key_is_a_no_op,
    failed_refresh_leaves_the_object_stale,
);
