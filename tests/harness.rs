//! Tests of the integration-test harness itself (client, scripted origin,
//! start-up failure handling), independent of ringcache's serving code.

#[macro_use]
mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;

/// An executable shell script standing in for the ringcache binary.
fn script(dir: &TempDir, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.write(name, &format!("#!/bin/sh\n{body}\n"));
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

#[test]
fn readiness_deadline_is_ten_seconds() {
    assert_eq!(READY_DEADLINE, Duration::from_secs(10));
}

#[test]
fn start_fails_fast_when_the_process_exits() {
    let dir = TempDir::new("exits");
    let bin = script(&dir, "exits", "echo 'cannot bind' >&2; exit 3");
    let t = Instant::now();
    match Server::try_start_with(&bin, &["serve"], READY_DEADLINE) {
        Err(StartError::Exited { status, transcript }) => {
            assert_eq!(status, "exit code 3");
            assert!(transcript.contains("cannot bind"), "{transcript}");
        }
        Err(e) => panic!("unexpected {e:?}"),
        Ok(_) => panic!("a script cannot be ready"),
    }
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[test]
fn start_gives_up_at_the_deadline_and_kills() {
    let dir = TempDir::new("hangs");
    let bin = script(&dir, "hangs", "echo 'starting' >&2; exec sleep 60");
    let t = Instant::now();
    match Server::try_start_with(&bin, &["serve"], Duration::from_millis(500)) {
        Err(StartError::Timeout { transcript, .. }) => {
            assert!(transcript.contains("starting"), "{transcript}")
        }
        Err(e) => panic!("unexpected {e:?}"),
        Ok(_) => panic!("a script cannot be ready"),
    }
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[test]
fn ready_line_is_parsed() {
    let dir = TempDir::new("ready");
    let bin = script(
        &dir,
        "ready",
        "echo 'INFO ready: listen=127.0.0.1:4321 admin=127.0.0.1:4322 origin=http://127.0.0.1:9 workers=2 io=epoll' >&2; exec sleep 60",
    );
    let s = Server::start_or_skip(&bin, "epoll", &["serve"], READY_DEADLINE).unwrap();
    assert_eq!(s.addr, "127.0.0.1:4321".parse().unwrap());
    assert_eq!(s.admin, "127.0.0.1:4322".parse().unwrap());
    let pid = s.proc.pid();
    let t = Instant::now();
    let status = s.stop();
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(!status.success(), "sleep dies of SIGTERM");
    // SAFETY: signal 0 only probes whether the PID exists.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    assert!(!alive, "the process is gone");
}

#[test]
fn uring_unavailable_is_a_skip() {
    let dir = TempDir::new("nouring");
    let bin = script(
        &dir,
        "nouring",
        "echo 'error: io_uring is not available: Operation not permitted' >&2; exit 1",
    );
    assert!(Server::start_or_skip(&bin, "uring", &["serve"], READY_DEADLINE).is_none());
}

#[test]
#[should_panic(expected = "before printing `ready: listen=`")]
fn epoll_start_failure_panics() {
    let dir = TempDir::new("noepoll");
    let bin = script(&dir, "noepoll", "echo 'io_uring whatever' >&2; exit 1");
    Server::start_or_skip(&bin, "epoll", &["serve"], READY_DEADLINE);
}

#[test]
fn client_reads_every_framing() {
    let origin = TestOrigin::start(|req| match req.path() {
        "/cl" => Reply::Send(response(200, &[("X-A", "1")], b"content-length")),
        "/chunked" => Reply::Send(chunked_response(200, &[], &[b"chun", b"ked"])),
        "/close" => Reply::SendClose(close_delimited_response(200, &[], b"until close")),
        "/slow" => Reply::After(
            Duration::from_millis(200),
            Box::new(Reply::Send(response(204, &[], b""))),
        ),
        "/drop" => Reply::Drop,
        _ => Reply::Hang,
    });
    let mut c = Client::connect(origin.addr);
    let r = c.get("/cl");
    assert_eq!((r.status, r.body_str().as_str()), (200, "content-length"));
    assert_eq!(r.header("x-a"), Some("1"));
    let r = c.get("/chunked");
    assert!(r.chunked);
    assert_eq!(r.body_str(), "chunked");
    let r = c.get("/slow");
    assert_eq!(r.status, 204);
    c.send(b"HEAD /cl HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.read_head_response().content_length(), Some(14));
    // (the stand-in origin does send a body to HEAD; skip it)
    let _ = c.wait_closed(Duration::from_millis(100));

    let mut c = Client::connect(origin.addr);
    let r = c.get("/close");
    assert!(r.close_delimited);
    assert_eq!(r.body_str(), "until close");

    let mut c = Client::connect(origin.addr);
    c.send(get_request("/drop").as_bytes());
    assert!(c.try_read_response().is_err());
    assert!(c.wait_closed(Duration::from_secs(1)).is_ok());

    let mut c = Client::connect(origin.addr);
    c.timeout = Duration::from_millis(300);
    c.send(get_request("/hang").as_bytes());
    let t = Instant::now();
    let e = c.try_read_response().unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(
        c.wait_closed(Duration::from_millis(100)).is_err(),
        "still open"
    );
}

#[test]
fn origin_records_requests_and_dechunks() {
    let origin = TestOrigin::fixed("no-store", "ok");
    let mut c = Client::connect(origin.addr);
    c.send(
        b"POST /p?x=1 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\
          3\r\nabc\r\n2;e=1\r\nde\r\n0\r\nTrailer: 1\r\n\r\n\
          PUT /q HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nxy",
    );
    assert_eq!(c.read_response().body_str(), "ok");
    assert_eq!(c.read_response().body_str(), "ok");
    let all = origin.all_requests();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].method, "POST");
    assert_eq!(all[0].path(), "/p");
    assert!(all[0].chunked);
    assert_eq!(all[0].body, b"abcde");
    assert_eq!(all[1].body, b"xy");
    assert_eq!(all[1].seq_on_conn, 1);
    assert_eq!(all[1].header("content-length"), Some("2"));
    assert_eq!(origin.requests(), 2);
    assert_eq!(origin.connections(), 1);
}

#[test]
fn stats_metrics_and_ids_parse() {
    let s = parse_stats(r#"{"requests": 5, "by_path": {"/api/items/1": 3, "/api/items/2":2}}"#)
        .unwrap();
    assert_eq!(s.total, 5);
    assert_eq!(s.path("/api/items/1"), 3);
    assert_eq!(s.path("/api/items/2"), 2);
    assert_eq!(s.path("/nope"), 0);
    let s = parse_stats(r#"{"requests":0,"by_path":{}}"#).unwrap();
    assert_eq!((s.total, s.by_path.len()), (0, 0));

    let m = Metrics::parse(
        "# HELP ringcache_requests_total Requests.\n# TYPE ringcache_requests_total counter\n\
         ringcache_requests_total 12\n\
         ringcache_errors_total{kind=\"origin_connect\"} 2\n\
         ringcache_errors_total{kind=\"bad request\"} 3\n\
         ringcache_connections_open 1\n",
    );
    assert_eq!(m.get("ringcache_requests_total"), Some(12.0));
    assert_eq!(m.value("ringcache_errors_total"), 5.0);
    assert_eq!(
        m.labelled("ringcache_errors_total", "kind=\"bad request\""),
        3.0
    );
    assert_eq!(m.get("ringcache_missing"), None);

    assert_eq!(body_id(br#"{"id": 42, "name": "item 42"}"#), Some(42));
    assert_eq!(body_id(br#"{"id":"7","pad":"xxx"}"#), Some(7));
    assert_eq!(body_id(b"{}"), None);
}
