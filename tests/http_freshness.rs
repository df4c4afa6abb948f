//! Freshness lifetime and age (RFC 9111 §4.2.1, §4.2.3, §5.1, §5.3) as
//! clients see them through `Age` and the Cache-Status `ttl`. Each
//! scenario runs on both I/O backends.

#[macro_use]
mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use ringcache::http::format_http_date;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn date(offset_secs: i64) -> String {
    let t = now_secs() as i64 + offset_secs;
    String::from_utf8(format_http_date(t as u64).to_vec()).unwrap()
}

fn ttl(r: &Response) -> i64 {
    r.cache_status_params()
        .iter()
        .find_map(|p| p.strip_prefix("ttl=").map(|v| v.parse().unwrap()))
        .unwrap_or_else(|| panic!("no ttl: {}", r.summary()))
}

/// An origin that answers each path with the fields the test names.
fn origin() -> TestOrigin {
    TestOrigin::start(|req| {
        let fields: Vec<(String, String)> = match req.path() {
            "/age" => vec![
                ("Cache-Control".into(), "max-age=100".into()),
                ("Age".into(), "30".into()),
            ],
            "/date" => vec![
                ("Cache-Control".into(), "max-age=100".into()),
                ("Date".into(), date(-40)),
            ],
            "/expires" => vec![("Date".into(), date(0)), ("Expires".into(), date(100))],
            "/both" => vec![
                ("Cache-Control".into(), "max-age=50".into()),
                ("Date".into(), date(0)),
                ("Expires".into(), date(1000)),
            ],
            "/bad-expires" => vec![("Expires".into(), "0".into())],
            _ => vec![("Cache-Control".into(), "max-age=100".into())],
        };
        let fields: Vec<(&str, &str)> = fields
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        Reply::Send(response(200, &fields, b"body"))
    })
}

fn server(io: &str) -> Option<(TestOrigin, Server)> {
    let origin = origin();
    let server = Server::serve(io, Some(&origin.url()), 2, &[])?;
    Some((origin, server))
}

/// §4.2.3, §5.1: the origin's Age counts in the stored response's age;
/// the first answer relays it, the hit carries age + resident time.
fn age_from_origin(io: &str) {
    let Some((_origin, server)) = server(io) else {
        return;
    };
    let r = server.get("/age");
    assert_eq!(r.age(), Some(30), "{}", r.summary());
    let r = server.get("/age");
    assert!(r.is_hit());
    let age = r.age().unwrap();
    assert!((30..=32).contains(&age), "{}", r.summary());
    assert!((68..=70).contains(&ttl(&r)), "{}", r.summary());
}

/// §4.2.3: apparent age from a Date in the past.
fn apparent_age_from_date(io: &str) {
    let Some((_origin, server)) = server(io) else {
        return;
    };
    server.get("/date");
    let r = server.get("/date");
    assert!(r.is_hit(), "{}", r.summary());
    let age = r.age().unwrap();
    assert!((39..=43).contains(&age), "{}", r.summary());
}

/// §4.2.1: Expires − Date is the lifetime; max-age wins over Expires.
fn expires_and_max_age(io: &str) {
    let Some((origin, server)) = server(io) else {
        return;
    };
    server.get("/expires");
    let r = server.get("/expires");
    assert!(r.is_hit(), "{}", r.summary());
    assert!((97..=100).contains(&ttl(&r)), "{}", r.summary());
    server.get("/both");
    let r = server.get("/both");
    assert!((47..=50).contains(&ttl(&r)), "{}", r.summary());
    assert_eq!(origin.requests(), 2);
}

/// §5.3: an invalid Expires means already expired: nothing to store
/// without a validator (detail=not-reusable).
fn invalid_expires_is_stale(io: &str) {
    let Some((origin, server)) = server(io) else {
        return;
    };
    for _ in 0..2 {
        let r = server.get("/bad-expires");
        assert_eq!(
            r.cache_status_params(),
            ["fwd=uri-miss", "fwd-status=200", "detail=not-reusable"],
            "{}",
            r.summary()
        );
    }
    assert_eq!(origin.requests(), 2);
}

both_io!(
    age_from_origin,
    apparent_age_from_date,
    expires_and_max_age,
    invalid_expires_is_stale,
);
