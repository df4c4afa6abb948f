use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::request::ChunkedSkip;
use super::respond::{push_item_body, push_json_str};
use super::*;

const IO_TIMEOUT: Duration = Duration::from_secs(5);

fn origin(threads: usize) -> SocketAddr {
    spawn("127.0.0.1:0".parse().unwrap(), threads)
        .unwrap()
        .addr()
}

struct Client {
    reader: BufReader<TcpStream>,
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Chunks of a chunked body.
    chunks: usize,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        Client {
            reader: BufReader::new(stream),
        }
    }

    fn send(&mut self, raw: &str) {
        self.reader.get_mut().write_all(raw.as_bytes()).unwrap();
    }

    fn get(&mut self, target: &str) -> Resp {
        self.send(&format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n"));
        self.read(false)
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        assert!(line.ends_with("\r\n"), "truncated line {line:?}");
        line.truncate(line.len() - 2);
        line
    }

    /// Reads one final response (interim ones are skipped).
    fn read(&mut self, head_request: bool) -> Resp {
        let mut status_line = self.line();
        while status_line.starts_with("HTTP/1.1 1") {
            assert_eq!(self.line(), "");
            status_line = self.line();
        }
        assert!(status_line.starts_with("HTTP/1.1 "), "{status_line:?}");
        let status = status_line[9..12].parse().unwrap();
        let mut headers = Vec::new();
        loop {
            let line = self.line();
            if line.is_empty() {
                break;
            }
            let (n, v) = line.split_once(':').unwrap();
            headers.push((n.to_string(), v.trim().to_string()));
        }
        let mut resp = Resp {
            status,
            headers,
            body: Vec::new(),
            chunks: 0,
        };
        if head_request || status == 304 || status == 204 {
            return resp;
        }
        if resp.header("transfer-encoding") == Some("chunked") {
            loop {
                let size = usize::from_str_radix(&self.line(), 16).unwrap();
                if size == 0 {
                    assert_eq!(self.line(), "");
                    break;
                }
                let start = resp.body.len();
                resp.body.resize(start + size, 0);
                self.reader.read_exact(&mut resp.body[start..]).unwrap();
                assert_eq!(self.line(), "");
                resp.chunks += 1;
            }
        } else if let Some(len) = resp.header("content-length") {
            resp.body.resize(len.parse().unwrap(), 0);
            self.reader.read_exact(&mut resp.body).unwrap();
        } else {
            self.reader.read_to_end(&mut resp.body).unwrap();
        }
        resp
    }

    /// True when the server has closed the connection.
    fn at_eof(&mut self) -> bool {
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest).unwrap();
        rest.is_empty()
    }
}

fn expected_body(id: &str, size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    push_item_body(&mut out, id, size);
    out
}

#[test]
fn item_body_is_deterministic_and_exactly_sized() {
    let addr = origin(2);
    let a = Client::connect(addr).get("/api/items/42?size=300");
    let b = Client::connect(addr).get("/api/items/42?size=300");
    assert_eq!(a.status, 200);
    assert_eq!(a.body.len(), 300);
    assert_eq!(a.body, b.body);
    assert!(a.body.starts_with(br#"{"id":"42","data":""#));
    assert!(a.body.ends_with(br#""}"#));
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert_eq!(a.header("cache-control"), Some("public, max-age=60"));
    assert_eq!(a.header("content-length"), Some("300"));
    assert!(a.header("date").is_some());
    assert!(a.header("last-modified").is_some());
    assert_eq!(a.header("etag"), b.header("etag"));
    let etag = a.header("etag").unwrap();
    assert!(etag.len() == 18 && etag.starts_with('"') && etag.ends_with('"'));

    let mut c = Client::connect(addr);
    let default = c.get("/api/items/42");
    assert_eq!(default.body.len(), ITEM_BYTES_DEFAULT);
    let other = c.get("/api/items/43?size=300");
    assert_ne!(other.body, a.body);
    assert_ne!(other.header("etag"), a.header("etag"));
    // Too small for the JSON: bare padding, still exact and repeatable.
    let tiny = c.get("/api/items/42?size=5");
    assert_eq!(tiny.body.len(), 5);
    assert_eq!(tiny.body, c.get("/api/items/42?size=5").body);
    assert!(c.get("/api/items/42?size=0").body.is_empty());
    // An id needing escapes still yields valid, exactly sized JSON.
    let quoted = c.get("/api/items/a%22b\\c?size=64");
    assert_eq!(quoted.body.len(), 64);
    assert!(quoted.body.starts_with(br#"{"id":"a%22b\\c","data":""#));
}

#[test]
fn cache_control_and_status_knobs() {
    let addr = origin(1);
    let mut c = Client::connect(addr);
    let r = c.get("/api/items/1?max_age=5");
    assert_eq!(r.header("cache-control"), Some("public, max-age=5"));
    let r = c.get("/api/items/1?cc=private%2C%20max-age%3D3&max_age=9");
    assert_eq!(r.header("cache-control"), Some("private, max-age=3"));
    let r = c.get("/api/items/1?cc=");
    assert_eq!(r.header("cache-control"), None);
    assert_eq!(r.status, 200);
    let plain = c.get("/api/items/1");
    let r = c.get("/api/items/1?status=503");
    assert_eq!(r.status, 503);
    assert_eq!(r.body, plain.body);
    let r = c.get("/api/items/1?status=404&v=7");
    assert_eq!(r.status, 404);
    let r = c.get("/api/items/1?status=204");
    assert_eq!((r.status, r.header("content-length")), (204, None));
    // Bad knobs: 400, connection kept.
    assert_eq!(c.get("/api/items/1?size=abc").status, 400);
    assert_eq!(c.get("/api/items/1?cc=%0d%0aX:%20y").status, 400);
    assert_eq!(c.get("/api/items/1?status=99").status, 400);
    assert_eq!(c.get("/api/items/1").status, 200);
}

#[test]
fn tags_knob_sends_a_surrogate_key() {
    let addr = origin(1);
    let mut c = Client::connect(addr);
    let r = c.get("/api/items/1?tags=a,b");
    assert_eq!(r.header("surrogate-key"), Some("a b"));
    assert_eq!(c.get("/api/items/1").header("surrogate-key"), None);
    assert_eq!(c.get("/api/items/1?tags=a%20b").status, 400);
}

#[test]
fn head_and_other_methods_and_unknown_routes() {
    let addr = origin(1);
    let mut c = Client::connect(addr);
    c.send("HEAD /api/items/7?size=1000 HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.read(true);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("1000"));
    c.send("POST /api/items/7 HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello");
    let r = c.read(false);
    assert_eq!(r.body, br#"{"ok":true,"method":"POST"}"#);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    c.send("DELETE /api/items/7 HTTP/1.1\r\n\r\n");
    assert_eq!(c.read(false).body, br#"{"ok":true,"method":"DELETE"}"#);
    let r = c.get("/nope");
    assert_eq!(r.status, 404);
    assert_eq!(r.body, br#"{"error":"not found"}"#);
    assert_eq!(c.get("/api/items/").status, 404);
    c.send("OPTIONS /api/items/7 HTTP/1.1\r\n\r\n");
    assert_eq!(c.read(false).status, 405);
    assert_eq!(c.get("/api/items/7?size=3").body.len(), 3);
}

#[test]
fn chunked_knob_decodes_to_the_same_bytes() {
    let addr = origin(1);
    let mut c = Client::connect(addr);
    let plain = c.get("/api/items/abc?size=5000");
    let chunked = c.get("/api/items/abc?size=5000&chunked=1");
    assert_eq!(chunked.header("transfer-encoding"), Some("chunked"));
    assert_eq!(chunked.header("content-length"), None);
    assert!(chunked.chunks >= 2, "{} chunks", chunked.chunks);
    assert_eq!(chunked.body, plain.body);
    assert_eq!(chunked.header("etag"), plain.header("etag"));
    // The connection stays usable.
    assert_eq!(c.get("/api/items/abc?size=5000").body, plain.body);
}

#[test]
fn close_knob_delimits_the_body_by_closing() {
    let addr = origin(1);
    let plain = Client::connect(addr).get("/api/items/9?size=2000");
    let mut c = Client::connect(addr);
    let r = c.get("/api/items/9?size=2000&close=1");
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(r.header("content-length"), None);
    assert_eq!(r.body, plain.body);
}

#[test]
fn connection_close_and_http10() {
    let addr = origin(1);
    let mut c = Client::connect(addr);
    c.send("GET /api/items/1 HTTP/1.1\r\nConnection: close\r\n\r\n");
    let r = c.read(false);
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    assert_eq!(r.body.len(), ITEM_BYTES_DEFAULT);
    assert!(c.at_eof());

    let mut c = Client::connect(addr);
    c.send("GET /api/items/1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let r = c.read(false);
    assert_eq!(r.header("connection"), Some("keep-alive"));
    c.send("GET /api/items/1?chunked=1 HTTP/1.0\r\n\r\n");
    let r = c.read(false);
    assert_eq!(r.header("transfer-encoding"), None);
    assert_eq!(r.body.len(), ITEM_BYTES_DEFAULT);
    assert!(c.at_eof());
}

#[test]
fn malformed_input_gets_400_and_close() {
    let addr = origin(1);
    for bad in [
        "GARBAGE\r\n\r\n",
        "GET /api/items/1 HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        "GET /api/items/1 HTTP/1.1\r\nContent-Length: x\r\n\r\n",
        "GET /api/items/1 HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
    ] {
        let mut c = Client::connect(addr);
        c.send(bad);
        let r = c.read(false);
        assert_eq!(r.status, 400, "{bad:?}");
        assert_eq!(r.header("connection"), Some("close"));
        assert!(c.at_eof(), "{bad:?}");
    }
    // A bad chunked body: the request was answered at its head, then 400.
    let mut c = Client::connect(addr);
    c.send("POST /api/items/1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
    assert_eq!(c.read(false).status, 200);
    assert_eq!(c.read(false).status, 400);
    assert!(c.at_eof());
    let mut c = Client::connect(addr);
    c.send(&format!("GET /{} HTTP/1.1\r\n", "a".repeat(HEAD_BYTES_MAX)));
    assert_eq!(c.read(false).status, 431);
    let mut c = Client::connect(addr);
    c.send(&format!(
        "POST /api/items/1 HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        BODY_BYTES_MAX + 1
    ));
    assert_eq!(c.read(false).status, 413);
}

#[test]
fn request_bodies_are_discarded() {
    let addr = origin(1);
    let mut c = Client::connect(addr);
    c.send("PUT /api/items/1 HTTP/1.1\r\nContent-Length: 10\r\n\r\n01234");
    std::thread::sleep(Duration::from_millis(20));
    c.send("56789GET /api/items/2?size=10 HTTP/1.1\r\n\r\n");
    assert_eq!(c.read(false).body, br#"{"ok":true,"method":"PUT"}"#);
    assert_eq!(c.read(false).body.len(), 10);
    c.send("PATCH /api/items/1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n");
    std::thread::sleep(Duration::from_millis(20));
    c.send("3\r\nabc\r\n0\r\nTrailer: 1\r\n\r\nGET /api/items/3?size=11 HTTP/1.1\r\n\r\n");
    assert_eq!(c.read(false).body, br#"{"ok":true,"method":"PATCH"}"#);
    assert_eq!(c.read(false).body.len(), 11);
    c.send("POST /api/items/1 HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n");
    let mut interim = String::new();
    c.reader.read_line(&mut interim).unwrap();
    assert_eq!(interim, "HTTP/1.1 100 Continue\r\n");
    assert_eq!(c.line(), "");
    c.send("ok");
    assert_eq!(c.read(false).status, 200);
    assert_eq!(c.get("/api/items/4?size=12").body.len(), 12);
}

#[test]
fn if_none_match_gives_304() {
    let addr = origin(1);
    let mut c = Client::connect(addr);
    let r = c.get("/api/items/5?max_age=30");
    let etag = r.header("etag").unwrap().to_string();
    for inm in [
        etag.clone(),
        format!("W/{etag}"),
        "*".into(),
        format!("\"x\", {etag}"),
    ] {
        c.send(&format!(
            "GET /api/items/5?max_age=30 HTTP/1.1\r\nIf-None-Match: {inm}\r\n\r\n"
        ));
        let r = c.read(false);
        assert_eq!(r.status, 304, "{inm}");
        assert_eq!(r.header("etag"), Some(etag.as_str()));
        assert_eq!(r.header("cache-control"), Some("public, max-age=30"));
        assert!(r.header("date").is_some());
        assert_eq!(r.header("content-length"), None);
    }
    c.send("GET /api/items/5?max_age=30 HTTP/1.1\r\nIf-None-Match: \"other\"\r\n\r\n");
    assert_eq!(c.read(false).status, 200);
}

#[test]
fn delay_does_not_block_other_connections() {
    const DELAY: Duration = Duration::from_millis(300);
    // One thread: the undelayed answer proves the loop is not sleeping.
    let addr = origin(1);
    let mut slow = Client::connect(addr);
    let mut fast = Client::connect(addr);
    let start = Instant::now();
    slow.send(&format!(
        "GET /api/items/1?delay_ms={} HTTP/1.1\r\n\r\n",
        DELAY.as_millis()
    ));
    fast.send("GET /api/items/2 HTTP/1.1\r\n\r\n");
    let r = fast.read(false);
    let fast_at = Instant::now();
    assert_eq!(r.status, 200);
    let r = slow.read(false);
    let slow_at = Instant::now();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, expected_body("1", ITEM_BYTES_DEFAULT));
    assert!(slow_at - start >= DELAY);
    assert!(fast_at < slow_at);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let addr = origin(1);
    let mut c = Client::connect(addr);
    let mut burst = String::new();
    for i in 0..10 {
        match i {
            3 => burst.push_str("POST /api/items/3 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"),
            // A delayed one in the middle holds back those behind it.
            5 => burst.push_str("GET /api/items/5?size=40&delay_ms=50 HTTP/1.1\r\n\r\n"),
            _ => burst.push_str(&format!("GET /api/items/{i}?size=40 HTTP/1.1\r\n\r\n")),
        }
    }
    c.send(&burst);
    for i in 0..10 {
        let r = c.read(false);
        assert_eq!(r.status, 200);
        if i == 3 {
            assert_eq!(r.body, br#"{"ok":true,"method":"POST"}"#);
        } else {
            assert_eq!(r.body, expected_body(&i.to_string(), 40), "response {i}");
        }
    }
    assert_eq!(c.get("/api/items/x?size=1").body.len(), 1);
}

#[test]
fn stats_count_per_path_and_reset() {
    let addr = origin(2);
    let mut c = Client::connect(addr);
    c.get("/api/items/1");
    c.get("/api/items/1?size=10");
    c.get("/api/items/2");
    c.get("/elsewhere");
    let mut other = Client::connect(addr);
    other.get("/api/items/2");
    let stats = String::from_utf8(c.get("/__origin/stats").body).unwrap();
    assert_eq!(
        stats,
        r#"{"requests": 5, "by_path": {"/api/items/1": 2, "/api/items/2": 2, "/elsewhere": 1}}"#
    );
    c.send("POST /__origin/reset HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(c.read(false).status, 200);
    let stats = String::from_utf8(c.get("/__origin/stats").body).unwrap();
    assert_eq!(stats, r#"{"requests": 0, "by_path": {}}"#);
    c.get("/api/items/\"q\"");
    let stats = String::from_utf8(c.get("/__origin/stats").body).unwrap();
    assert_eq!(
        stats,
        r#"{"requests": 1, "by_path": {"/api/items/\"q\"": 1}}"#
    );
}

#[test]
fn stats_map_is_bounded() {
    let stats = stats::Stats::new(1);
    for i in 0..STATS_PATHS_MAX + 3 {
        stats.record(0, &format!("/p{i}"));
    }
    stats.record(0, "/p0");
    let mut out = Vec::new();
    stats.write_json(&mut out);
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with(&format!("{{\"requests\": {}, ", STATS_PATHS_MAX + 4)));
    assert!(text.contains(r#""(other)": 3"#));
    assert!(text.contains(r#""/p0": 2"#));
}

#[test]
fn json_escaping() {
    let mut out = Vec::new();
    push_json_str(&mut out, "a\"b\\c\u{1}d\u{e9}");
    assert_eq!(out, b"a\\\"b\\\\c\\u0001d\xc3\xa9");
}

#[test]
fn chunked_skip_handles_any_split() {
    let body = b"4\r\nwiki\r\n5;ext=1\r\npedia\r\n0\r\nX-T: y\r\n\r\nNEXT";
    for split in 0..body.len() - 4 {
        let mut skip = ChunkedSkip::new();
        let (a, done) = skip.feed(&body[..split]).unwrap();
        assert!(!done);
        assert_eq!(a, split);
        let (b, done) = skip.feed(&body[split..]).unwrap();
        assert!(done);
        assert_eq!(&body[split + b..], b"NEXT");
    }
    assert!(ChunkedSkip::new().feed(b"4\r\nwikiXX").is_err());
    assert!(ChunkedSkip::new().feed(b"ffffffffffffffff\r\n").is_err());
}
