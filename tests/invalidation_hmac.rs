//! Signed invalidation bodies (`admin.hmac_key`): with a key set, every
//! `POST /invalidate*` needs `Ringcache-Timestamp` and
//! `Ringcache-Signature: sha256=HMAC(key, "<timestamp>.<body>")` beside the
//! bearer token; a missing, wrong, stale or replayed signature gets 401 and
//! a log line, and nothing is invalidated. Without a key none is asked for.
//! The signatures here are computed with the RustCrypto crates directly,
//! not with ringcache's own code.

#[macro_use]
mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use common::*;

const TOKEN: &str = "test-token-0123456789";
const KEY: &str = "hmac-key-for-tests-0123456789abcdef";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sign(key: &str, ts: u64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(format!("{ts}.{body}").as_bytes());
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// `POST path` with the token and, when given, the signature fields.
fn post(server: &Server, path: &str, body: &str, signed: Option<(u64, &str)>) -> Response {
    let signature = signed.map_or(String::new(), |(ts, sig)| {
        format!("Ringcache-Timestamp: {ts}\r\nRingcache-Signature: {sig}\r\n")
    });
    let fields = format!("Authorization: Bearer {TOKEN}\r\n{signature}");
    server.admin_call("POST", path, &fields, body)
}

fn serve(io: &str, origin: &TestOrigin, hmac: bool) -> Option<(TempDir, Server)> {
    let key = if hmac {
        format!("hmac_key = \"{KEY}\"\nhmac_window = \"60s\"\n")
    } else {
        String::new()
    };
    let toml = format!("[admin]\ntoken = \"{TOKEN}\"\n{key}");
    Server::serve_with_config(io, Some(&origin.url()), 2, &toml)
}

/// Store `/a` and check it is a hit.
#[track_caller]
fn store_a(server: &Server) {
    assert_eq!(server.get("/a").status, 200);
    assert!(server.get("/a").is_hit());
}

#[track_caller]
fn assert_refused(server: &Server, r: &Response, why: &str) {
    assert_eq!(r.status, 401, "{why}: {}", r.summary());
    assert!(server.get("/a").is_hit(), "{why}: nothing invalidated");
}

fn signed_calls_are_checked(io: &str) {
    let origin = TestOrigin::fixed("max-age=300", "a");
    let Some((_dir, server)) = serve(io, &origin, true) else {
        return;
    };
    store_a(&server);
    let body = r#"{"urls": ["http://ringcache.test/a"]}"#.to_string();
    let ts = now();
    // No signature, a wrong key, a tampered body, a stale timestamp.
    assert_refused(
        &server,
        &post(&server, "/invalidate", &body, None),
        "unsigned",
    );
    let wrong = sign("another-key-entirely-0123456789abcdef", ts, &body);
    assert_refused(
        &server,
        &post(&server, "/invalidate", &body, Some((ts, &wrong))),
        "wrong key",
    );
    let sig = sign(KEY, ts, &body);
    let tampered = body.replace("/a", "/b");
    assert_refused(
        &server,
        &post(&server, "/invalidate", &tampered, Some((ts, &sig))),
        "tampered body",
    );
    let old = ts - 120;
    assert_refused(
        &server,
        &post(
            &server,
            "/invalidate",
            &body,
            Some((old, &sign(KEY, old, &body))),
        ),
        "stale timestamp",
    );
    // Valid: applied.
    let r = post(&server, "/invalidate", &body, Some((ts, &sig)));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert!(
        r.body_str().contains("\"invalidated\":1"),
        "{}",
        r.summary()
    );
    assert!(!server.get("/a").is_hit(), "purged");
    assert!(server.get("/a").is_hit());
    // The same call again: a replay.
    assert_refused(
        &server,
        &post(&server, "/invalidate", &body, Some((ts, &sig))),
        "replay",
    );
    // /invalidate/all signs its (empty) body too.
    assert_refused(
        &server,
        &post(&server, "/invalidate/all", "", None),
        "unsigned all",
    );
    let r = post(
        &server,
        "/invalidate/all",
        "",
        Some((ts, &sign(KEY, ts, ""))),
    );
    assert_eq!(r.status, 200, "{}", r.summary());
    // Each refusal was logged with its reason.
    let logged = || {
        let lines = server.stderr_lines();
        [
            "signature required",
            "does not match",
            "outside admin.hmac_window",
            "already used",
        ]
        .iter()
        .all(|why| {
            lines
                .iter()
                .any(|l| l.contains("refused") && l.contains(why))
        })
    };
    assert!(
        wait_until(Duration::from_secs(5), logged),
        "{:?}",
        server.stderr_lines()
    );
}

fn no_key_no_signature_needed(io: &str) {
    let origin = TestOrigin::fixed("max-age=300", "a");
    let Some((_dir, server)) = serve(io, &origin, false) else {
        return;
    };
    store_a(&server);
    let body = r#"{"urls": ["http://ringcache.test/a"]}"#.to_string();
    let r = post(&server, "/invalidate", &body, None);
    assert_eq!(r.status, 200, "{}", r.summary());
    assert!(!server.get("/a").is_hit(), "purged");
}

/// SIGHUP sets the key: unsigned calls are refused from the next one on,
/// signed ones work, and the key is never logged.
fn key_applies_on_reload(io: &str) {
    let origin = TestOrigin::fixed("max-age=300", "a");
    let Some((dir, mut server)) = serve(io, &origin, false) else {
        return;
    };
    let body = r#"{"tags": ["nothing"]}"#;
    assert_eq!(post(&server, "/invalidate", body, None).status, 200);
    dir.write(
        "ringcache.toml",
        &format!("[admin]\ntoken = \"{TOKEN}\"\nhmac_key = \"{KEY}\"\n"),
    );
    server.proc.signal(libc::SIGHUP);
    let reloaded = wait_until(Duration::from_secs(10), || {
        post(&server, "/invalidate", body, None).status == 401
    });
    assert!(reloaded, "{:?}", server.stderr_lines());
    let ts = now();
    let r = post(
        &server,
        "/invalidate",
        body,
        Some((ts, &sign(KEY, ts, body))),
    );
    assert_eq!(r.status, 200, "{}", r.summary());
    // The key applies before the reload's log line is written.
    let reload_line = || {
        server
            .stderr_lines()
            .into_iter()
            .find(|l| l.contains("reload: applied"))
    };
    assert!(
        wait_until(Duration::from_secs(10), || reload_line().is_some()),
        "{:?}",
        server.stderr_lines()
    );
    let line = reload_line().expect("a reload line");
    assert!(
        line.contains("admin.hmac_key (unset → set, changed)"),
        "{line}"
    );
    assert!(!line.contains(KEY), "the key is never logged: {line}");
}

both_io!(
    signed_calls_are_checked,
    no_key_no_signature_needed,
    key_applies_on_reload
);
