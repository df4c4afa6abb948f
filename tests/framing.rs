//! Malformed and abusive client input: each rejection carries the promised
//! status, the connection is closed after it, and nothing reaches the origin.
//! Slow and idle connections are closed by ringcache's timeouts. Each scenario
//! runs on both I/O backends.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::*;

/// Small limits so that every oversized input fits in one receive and the
/// rejection is not lost to a reset caused by unread bytes.
const LIMITS: &str = "[limits]\n\
head_bytes_max = \"4KiB\"\n\
headers_count_max = 100\n\
body_bytes_max = \"1KiB\"\n\
header_timeout = \"1s\"\n\
keepalive_timeout = \"1s\"\n";

/// Bound for "ringcache closes the connection" waits.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

struct Fixture {
    origin: TestOrigin,
    server: Server,
    _dir: TempDir,
}

fn fixture(io: &str) -> Option<Fixture> {
    let origin = TestOrigin::fixed("no-store", "ok");
    let (dir, cfg) = config_file(LIMITS);
    let server = Server::serve(
        io,
        Some(&origin.url()),
        2,
        &["--config", cfg.to_str().unwrap()],
    )?;
    Some(Fixture {
        origin,
        server,
        _dir: dir,
    })
}

impl Fixture {
    /// Send `raw` on a fresh connection; expect `status`, then a closed
    /// connection, and no request at the origin. A valid request on a new
    /// connection afterwards proves the server alive and that exactly one
    /// request (that one) reached the origin.
    #[track_caller]
    fn assert_rejected(&self, what: &str, raw: &[u8], status: u16) {
        let before = self.origin.requests();
        let mut c = self.server.client();
        c.send(raw);
        let r = match c.try_read_response() {
            Ok(r) => r,
            Err(e) => panic!("{what}: expected a {status} response, got {e}"),
        };
        assert_eq!(r.status, status, "{what}: {}", r.summary());
        c.assert_closed(CLOSE_WITHIN, what);
        self.assert_alive_and_origin_saw(before, what);
    }

    #[track_caller]
    fn assert_alive_and_origin_saw(&self, before: u64, what: &str) {
        let ok = self.server.get("/control");
        assert_eq!(ok.status, 200, "{what}: control request: {}", ok.summary());
        assert_eq!(
            self.origin.requests(),
            before + 1,
            "{what}: only the control request may reach the origin; it saw {:?}",
            self.origin
                .all_requests()
                .iter()
                .map(|r| r.target.clone())
                .collect::<Vec<_>>()
        );
    }
}

fn oversized_head_431(io: &str) {
    let Some(f) = fixture(io) else { return };
    let mut raw = b"GET /big-head HTTP/1.1\r\nHost: ringcache.test\r\nX-Big: ".to_vec();
    raw.extend_from_slice(&[b'a'; 6000]);
    raw.extend_from_slice(b"\r\n\r\n");
    f.assert_rejected("head of 6 KB over a 4 KiB limit", &raw, 431);

    // A long request line counts too.
    let mut raw = b"GET /".to_vec();
    raw.extend_from_slice(&[b'p'; 6000]);
    raw.extend_from_slice(b" HTTP/1.1\r\nHost: ringcache.test\r\n\r\n");
    f.assert_rejected("request line of 6 KB", &raw, 431);
}

fn head_just_under_limit_accepted(io: &str) {
    let Some(f) = fixture(io) else { return };
    let mut raw = b"GET /near-limit HTTP/1.1\r\nHost: ringcache.test\r\nX-Big: ".to_vec();
    raw.extend_from_slice(&[b'a'; 3000]);
    raw.extend_from_slice(b"\r\n\r\n");
    let mut c = f.server.client();
    c.send(&raw);
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(f.origin.requests(), 1);
}

fn too_many_headers_431(io: &str) {
    let Some(f) = fixture(io) else { return };
    let head = |n: usize| {
        let mut s = String::from("GET /many HTTP/1.1\r\nHost: ringcache.test\r\n");
        for i in 0..n {
            s.push_str(&format!("X-H{i}: v\r\n"));
        }
        s.push_str("\r\n");
        s
    };
    f.assert_rejected("150 header fields", head(150).as_bytes(), 431);

    // Below the count limit the same shape is fine.
    let mut c = f.server.client();
    c.send(head(50).as_bytes());
    assert_eq!(c.read_response().status, 200);
}

fn transfer_encoding_with_content_length_400(io: &str) {
    let Some(f) = fixture(io) else { return };
    // A classic smuggling shape: the "body" holds a second request.
    f.assert_rejected(
        "Transfer-Encoding and Content-Length",
        b"POST /te-cl HTTP/1.1\r\nHost: ringcache.test\r\nContent-Length: 40\r\n\
          Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        400,
    );
    f.assert_rejected(
        "Content-Length before Transfer-Encoding, reversed order",
        b"POST /cl-te HTTP/1.1\r\nHost: ringcache.test\r\nTransfer-Encoding: chunked\r\n\
          Content-Length: 5\r\n\r\n0\r\n\r\n",
        400,
    );
}

fn differing_content_lengths_400(io: &str) {
    let Some(f) = fixture(io) else { return };
    f.assert_rejected(
        "two different Content-Length fields",
        b"POST /dup-cl HTTP/1.1\r\nHost: ringcache.test\r\nContent-Length: 5\r\n\
          Content-Length: 6\r\n\r\nhello!",
        400,
    );
    f.assert_rejected(
        "a Content-Length list with different values",
        b"POST /dup-cl HTTP/1.1\r\nHost: ringcache.test\r\nContent-Length: 5, 6\r\n\r\nhello!",
        400,
    );
}

fn invalid_chunk_size_400(io: &str) {
    let Some(f) = fixture(io) else { return };
    f.assert_rejected(
        "chunk size that is not hex",
        b"POST /chunks HTTP/1.1\r\nHost: ringcache.test\r\nTransfer-Encoding: chunked\r\n\r\n\
          zz\r\nhello\r\n0\r\n\r\n",
        400,
    );
    f.assert_rejected(
        "chunk size that overflows 64 bits",
        b"POST /chunks HTTP/1.1\r\nHost: ringcache.test\r\nTransfer-Encoding: chunked\r\n\r\n\
          1ffffffffffffffff1\r\nhello\r\n0\r\n\r\n",
        400,
    );
}

fn obs_fold_400(io: &str) {
    let Some(f) = fixture(io) else { return };
    f.assert_rejected(
        "obs-fold continuation line",
        b"GET /fold HTTP/1.1\r\nHost: ringcache.test\r\nX-A: 1\r\n  folded\r\n\r\n",
        400,
    );
}

fn bare_cr_400(io: &str) {
    let Some(f) = fixture(io) else { return };
    f.assert_rejected(
        "bare CR inside a field value",
        b"GET /cr HTTP/1.1\r\nHost: ringcache.test\r\nX-A: a\rb\r\n\r\n",
        400,
    );
}

fn invalid_header_name_400(io: &str) {
    let Some(f) = fixture(io) else { return };
    f.assert_rejected(
        "space inside a field name",
        b"GET /name HTTP/1.1\r\nHost: ringcache.test\r\nBad Name: 1\r\n\r\n",
        400,
    );
    f.assert_rejected(
        "whitespace between field name and colon",
        b"GET /name HTTP/1.1\r\nHost: ringcache.test\r\nX-A : 1\r\n\r\n",
        400,
    );
    f.assert_rejected(
        "delimiter inside a field name",
        b"GET /name HTTP/1.1\r\nHost: ringcache.test\r\nX(A): 1\r\n\r\n",
        400,
    );
}

fn missing_host_400(io: &str) {
    let Some(f) = fixture(io) else { return };
    f.assert_rejected(
        "HTTP/1.1 without Host",
        b"GET /no-host HTTP/1.1\r\nAccept: */*\r\n\r\n",
        400,
    );
}

fn unsupported_version_505(io: &str) {
    let Some(f) = fixture(io) else { return };
    f.assert_rejected(
        "HTTP/2.0 request line",
        b"GET /v HTTP/2.0\r\nHost: ringcache.test\r\n\r\n",
        505,
    );
    f.assert_rejected(
        "HTTP/1.2 request line",
        b"GET /v HTTP/1.2\r\nHost: ringcache.test\r\n\r\n",
        505,
    );
}

fn body_too_large_413(io: &str) {
    let Some(f) = fixture(io) else { return };
    let mut raw =
        b"POST /upload HTTP/1.1\r\nHost: ringcache.test\r\nContent-Length: 2048\r\n\r\n".to_vec();
    raw.extend_from_slice(&[b'b'; 2048]);
    f.assert_rejected("Content-Length body over 1 KiB", &raw, 413);

    let mut raw =
        b"POST /upload HTTP/1.1\r\nHost: ringcache.test\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for _ in 0..4 {
        raw.extend_from_slice(b"200\r\n");
        raw.extend_from_slice(&[b'c'; 0x200]);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    f.assert_rejected("chunked body over 1 KiB", &raw, 413);

    // At the limit it passes.
    let mut raw =
        b"POST /upload HTTP/1.1\r\nHost: ringcache.test\r\nContent-Length: 1024\r\n\r\n".to_vec();
    raw.extend_from_slice(&[b'd'; 1024]);
    let mut c = f.server.client();
    c.send(&raw);
    assert_eq!(c.read_response().status, 200);
    assert_eq!(f.origin.last_request().unwrap().body.len(), 1024);
}

fn valid_then_malformed_pipelined(io: &str) {
    let Some(f) = fixture(io) else { return };
    let mut c = f.server.client();
    c.send(
        b"GET /first HTTP/1.1\r\nHost: ringcache.test\r\n\r\n\
          GET /second HTTP/1.1\r\nHost: ringcache.test\r\nX-A: a\rb\r\n\r\n\
          GET /third HTTP/1.1\r\nHost: ringcache.test\r\n\r\n",
    );
    let first = c.read_response();
    assert_eq!(first.status, 200, "{}", first.summary());
    let second = c.read_response();
    assert_eq!(second.status, 400, "{}", second.summary());
    c.assert_closed(CLOSE_WITHIN, "after the malformed pipelined request");
    let seen: Vec<String> = f
        .origin
        .all_requests()
        .iter()
        .map(|r| r.target.clone())
        .collect();
    assert_eq!(seen, vec!["/first".to_string()], "origin saw {seen:?}");
}

/// The peer closed: either end of file/reset with nothing, or after a 408.
#[track_caller]
fn assert_timeout_close(c: &mut Client, within: Duration, what: &str) {
    match c.wait_closed(within) {
        Ok(Closed::Eof(extra)) | Ok(Closed::Reset(extra)) => assert!(
            extra.is_empty() || extra.starts_with(b"HTTP/1.1 408"),
            "{what}: only a 408 may precede the close, got {:?}",
            String::from_utf8_lossy(&extra)
        ),
        Err(extra) => panic!(
            "{what}: still open after {within:?} (received {:?})",
            String::from_utf8_lossy(&extra)
        ),
    }
}

fn slow_head_closed(io: &str) {
    let Some(f) = fixture(io) else { return };
    let mut c = f.server.client();
    c.send(b"GET /slow HT");
    let t = Instant::now();
    assert_timeout_close(&mut c, CLOSE_WITHIN, "half a request line");
    eprintln!("closed after {:?} (header_timeout 1s)", t.elapsed());
    assert_eq!(f.origin.requests(), 0);
}

fn trickled_head_closed(io: &str) {
    let Some(f) = fixture(io) else { return };
    // One header field every 200 ms: the head never completes, and the
    // deadline counts from its first byte, not from the last one.
    let mut c = f.server.client();
    c.send(b"GET /trickle HTTP/1.1\r\nHost: ringcache.test\r\n");
    let start = Instant::now();
    let mut closed = false;
    while start.elapsed() < CLOSE_WITHIN {
        if c.try_send(b"X-Drip: 1\r\n").is_err() {
            closed = true;
            break;
        }
        if c.wait_closed(Duration::from_millis(200)).is_ok() {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "a head trickled for {CLOSE_WITHIN:?} was not cut off"
    );
    assert_eq!(f.origin.requests(), 0);
}

fn idle_keepalive_closed(io: &str) {
    let Some(f) = fixture(io) else { return };
    let mut c = f.server.client();
    let r = c.get("/once");
    assert_eq!(r.status, 200, "{}", r.summary());
    let t = Instant::now();
    assert_timeout_close(&mut c, CLOSE_WITHIN, "idle keep-alive connection");
    eprintln!("closed after {:?} (keepalive_timeout 1s)", t.elapsed());
    assert_eq!(f.origin.requests(), 1);
}

both_io!(
    oversized_head_431,
    head_just_under_limit_accepted,
    too_many_headers_431,
    transfer_encoding_with_content_length_400,
    differing_content_lengths_400,
    invalid_chunk_size_400,
    obs_fold_400,
    bare_cr_400,
    invalid_header_name_400,
    missing_host_400,
    unsupported_version_505,
    body_too_large_413,
    valid_then_malformed_pipelined,
    slow_head_closed,
    trickled_head_closed,
    idle_keepalive_closed,
);
