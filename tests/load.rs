//! Load and slow-client behaviour: wrk on the hit path, and a client that
//! never reads its responses.

#[macro_use]
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// wrk's run length on the hit path; the acceptance run uses 10 s.
const WRK_SECS: u32 = 10;
/// wrk connections.
const WRK_CONNECTIONS: u32 = 256;

/// Is `wrk` on PATH? In CI it must be (`.ci/run` installs it).
fn have_wrk() -> bool {
    let found = Command::new("wrk")
        .arg("--version")
        .output()
        .map(|o| !o.stdout.is_empty() || !o.stderr.is_empty())
        .unwrap_or(false);
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "wrk is not installed, but CI must run this test (.ci/run installs it)"
        );
        eprintln!("SKIPPED: wrk is not installed (apt-get install wrk)");
    }
    found
}

/// `wrk -t1 -c256 -d10s` on a stored object: every response is a 2xx, no
/// socket errors, and the origin is asked exactly once.
/// The wrk runs take both cores: one at a time, or a loaded machine makes
/// them time out against each other.
static WRK_ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn wrk_hit_path_has_no_errors(io: &str) {
    if !have_wrk() {
        return;
    }
    let _one = WRK_ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let origin = DemoOrigin::start();
    let Some(server) = Server::serve(io, Some(&origin.url()), 1, &[]) else {
        return;
    };
    let path = "/api/items/7?size=1024";
    // Warm with the Host wrk sends: the host is part of the cache key.
    let warm = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr);
    let mut c = server.client();
    c.send(warm.as_bytes());
    let first = c.read_response();
    assert_eq!(first.status, 200, "{}", first.summary());
    c.send(warm.as_bytes());
    assert!(c.read_response().is_hit());
    let url = format!("{}{path}", server.url());
    let out = Command::new("timeout")
        .args(["60", "wrk", "-t1"])
        .arg(format!("-c{WRK_CONNECTIONS}"))
        .arg(format!("-d{WRK_SECS}s"))
        // A debug build on a shared machine: a slow answer is not an error
        // here, a lost or malformed one is.
        .arg("--timeout")
        .arg("10s")
        .arg(&url)
        .output()
        .expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    assert!(out.status.success(), "wrk failed: {text}");
    // wrk prints these lines only when there is something to report.
    assert!(!text.contains("Socket errors"), "socket errors: {text}");
    assert!(!text.contains("Non-2xx"), "non-2xx responses: {text}");
    let requests: u64 = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no request count in wrk output: {text}"));
    assert!(requests > 1000, "wrk made only {requests} requests");
    assert_eq!(
        origin.count("/api/items/7"),
        1,
        "the origin was asked again"
    );
    let m = server.metrics();
    assert!(m.value("ringcache_cache_hits_total") >= requests as f64);
}

/// A client that sends requests for large responses and never reads them is
/// closed after `send_timeout`, instead of holding its buffers forever.
fn client_that_never_reads_is_closed(io: &str) {
    let origin = DemoOrigin::start();
    let Some((_dir, server)) = Server::serve_with_config(
        io,
        Some(&origin.url()),
        1,
        "[limits]\nsend_timeout = \"1s\"\n",
    ) else {
        return;
    };
    let size = 16 << 20;
    let mut c = server.client();
    let mut raw = Vec::new();
    for id in 0..4 {
        raw.extend_from_slice(
            format!("GET /api/items/{id}?size={size} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
        );
    }
    c.send(&raw);
    // Do not read: the kernel buffers fill, the write cannot finish, and
    // after send_timeout the server gives up on the client. Waiting for
    // that (rather than for a fixed time) keeps a slow machine, whose origin
    // is still sending when a fixed wait ends, from reading everything.
    let timed_out = wait_until(Duration::from_secs(30), || {
        server
            .metrics()
            .labelled("ringcache_errors_total", "client_timeout")
            >= 1.0
    });
    assert!(timed_out, "no client_timeout within 30 s of not reading");
    let t = Instant::now();
    let received = match c.wait_closed(Duration::from_secs(20)) {
        Ok(Closed::Eof(b)) | Ok(Closed::Reset(b)) => b.len(),
        Err(b) => panic!(
            "connection still open after send_timeout (received {} bytes)",
            b.len()
        ),
    };
    eprintln!(
        "closed {:?} after reading began; {received} bytes arrived",
        t.elapsed()
    );
    assert!(
        received < 4 * size,
        "all {received} bytes arrived: nothing timed out"
    );
    let m = server.metrics();
    assert!(m.labelled("ringcache_errors_total", "client_timeout") >= 1.0);
}

both_io!(
    wrk_hit_path_has_no_errors,
    client_that_never_reads_is_closed
);
