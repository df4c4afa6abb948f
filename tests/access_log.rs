//! The access log as an operator reads it: one line per request answered
//! on the traffic port, in JSON lines or the combined format, sampled or
//! full, reopened on SIGUSR1 and flushed on SIGTERM. Each scenario runs on
//! both I/O backends, with the built-in demo origin behind ringcache.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// Lines of the log file (none when it does not exist).
fn lines(path: &Path) -> Vec<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => text.lines().map(str::to_string).collect(),
        Err(_) => Vec::new(),
    }
}

fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    lines(path)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn lines_written(server: &Server) -> f64 {
    server.metrics().value("ringcache_access_log_lines_total")
}

/// Wait (bounded) until the writer has written `n` lines in total.
fn wait_lines_written(server: &Server, n: f64) {
    let ok = wait_until(Duration::from_secs(5), || lines_written(server) >= n);
    assert!(
        ok,
        "ringcache_access_log_lines_total did not reach {n}: {}",
        lines_written(server)
    );
}

/// Start ringcache with `table` as its `[access_log]` (the log in `dir`).
fn serve(
    io: &str,
    workers: usize,
    dir: &TempDir,
    table: &str,
) -> Option<(TempDir, Server, PathBuf)> {
    let path = dir.path().join("access.log");
    let toml = format!(
        "[access_log]\npath = {:?}\n{table}\n",
        path.display().to_string()
    );
    let (cfg, server) = Server::serve_with_config(io, None, workers, &toml)?;
    Some((cfg, server, path))
}

/// `GET`/`HEAD` with the fields the log records.
fn request(method: &str, target: &str, extra: &str) -> Vec<u8> {
    format!("{method} {target} HTTP/1.1\r\nHost: t.example\r\n{extra}\r\n").into_bytes()
}

/// A request with a field that has no colon: 400 and a closed connection.
const BAD_REQUEST: &[u8] = b"GET /x HTTP/1.1\r\nHost: t.example\r\nBad Header\r\n\r\n";

fn full_mode_json_lines(io: &str) {
    let dir = TempDir::new("alog-json");
    let Some((_cfg, server, path)) =
        serve(io, 2, &dir, "mode = \"full\"\nflush_interval = \"50ms\"")
    else {
        return;
    };
    let mut c = server.client();
    let mut ask = |method: &str, target: &str, extra: &str| {
        c.send(&request(method, target, extra));
        if method == "HEAD" {
            c.read_head_response()
        } else {
            c.read_response()
        }
    };
    let miss1 = ask("GET", "/api/items/1", "");
    let hit1 = ask("GET", "/api/items/1", "");
    let miss2 = ask("GET", "/api/items/2?size=100", "");
    let hit2 = ask("GET", "/api/items/2?size=100", "");
    let head = ask("HEAD", "/api/items/1", "");
    let not_found = ask("GET", "/api/items/3?status=404", "");
    let with_fields = ask(
        "GET",
        "/api/items/1",
        "Referer: http://r.example/page\r\nUser-Agent: probe \"7\"\r\n",
    );
    assert!(!miss1.is_hit() && !miss2.is_hit(), "{}", miss2.summary());
    assert!(
        hit1.is_hit() && hit2.is_hit() && head.is_hit(),
        "{}",
        hit2.summary()
    );
    assert!(with_fields.is_hit(), "{}", with_fields.summary());
    assert_eq!(not_found.status, 404, "{}", not_found.summary());
    let mut bad = server.client();
    bad.send(BAD_REQUEST);
    let r = bad.read_response();
    assert_eq!(r.status, 400, "{}", r.summary());
    let n = 8;

    wait_lines_written(&server, n as f64);
    let mut server = server;
    server.sigterm();
    assert!(server.wait_exit(Duration::from_secs(15)).is_some());
    let v = json_lines(&path);
    assert_eq!(
        v.len(),
        n,
        "one line per request:\n{}",
        lines(&path).join("\n")
    );

    let time = regex::Regex::new(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$").unwrap();
    for l in &v {
        assert!(time.is_match(l["time"].as_str().unwrap()), "{l}");
        assert_eq!(l["client"], "127.0.0.1", "{l}");
        assert!(l["worker"].as_u64().unwrap() < 2, "{l}");
        assert!(l["duration_us"].is_u64(), "{l}");
        assert_eq!(l["cut"], false, "{l}");
    }
    let find = |pred: &dyn Fn(&serde_json::Value) -> bool| -> Vec<&serde_json::Value> {
        v.iter().filter(|l| pred(l)).collect()
    };
    let outcome = |o: &str| find(&|l| l["cache"] == o).len();
    assert_eq!(
        (outcome("miss"), outcome("hit"), outcome("error")),
        (3, 4, 1)
    );

    let m = find(&|l| l["target"] == "/api/items/2?size=100" && l["cache"] == "miss");
    assert_eq!(m.len(), 1);
    assert_eq!(m[0]["method"], "GET");
    assert_eq!(m[0]["protocol"], "HTTP/1.1");
    assert_eq!(m[0]["status"], 200);
    assert_eq!(m[0]["bytes"], miss2.body.len() as u64);
    assert_eq!(m[0]["origin_status"], 200);
    assert!(m[0]["origin_duration_us"].is_u64(), "{}", m[0]);
    assert_eq!(m[0]["host"], "t.example");
    assert_eq!(m[0]["referer"], serde_json::Value::Null);

    let h = find(&|l| l["target"] == "/api/items/2?size=100" && l["cache"] == "hit");
    assert_eq!(h.len(), 1);
    assert_eq!(h[0]["bytes"], hit2.body.len() as u64);
    assert_eq!(h[0]["origin_status"], serde_json::Value::Null);
    assert_eq!(h[0]["origin_duration_us"], serde_json::Value::Null);

    let hd = find(&|l| l["method"] == "HEAD");
    assert_eq!(hd.len(), 1);
    assert_eq!(
        (hd[0]["status"].as_u64(), hd[0]["bytes"].as_u64()),
        (Some(200), Some(0))
    );

    let nf = find(&|l| l["status"] == 404);
    assert_eq!(nf.len(), 1);
    assert_eq!(nf[0]["target"], "/api/items/3?status=404");
    assert_eq!(nf[0]["cache"], "miss");
    assert_eq!(nf[0]["origin_status"], 404);

    let f = find(&|l| l["user_agent"] == "probe \"7\"");
    assert_eq!(f.len(), 1, "{v:?}");
    assert_eq!(f[0]["referer"], "http://r.example/page");
    assert_eq!(f[0]["cache"], "hit");

    let e = find(&|l| l["status"] == 400);
    assert_eq!(e.len(), 1);
    assert_eq!(e[0]["cache"], "error");
    assert_eq!(e[0]["method"], serde_json::Value::Null);
    assert_eq!(e[0]["target"], serde_json::Value::Null);
}

fn sampled_one_in_ten(io: &str) {
    let dir = TempDir::new("alog-sampled");
    let Some((_cfg, mut server, path)) = serve(
        io,
        1,
        &dir,
        "mode = \"sampled\"\nsample = 10\nflush_interval = \"50ms\"",
    ) else {
        return;
    };
    let requests = 1000;
    let mut c = server.client();
    for i in 0..requests {
        let r = c.get(&format!("/api/items/{}", i % 7));
        assert_eq!(r.status, 200, "{}", r.summary());
    }
    server.sigterm();
    assert!(server.wait_exit(Duration::from_secs(15)).is_some());
    let v = json_lines(&path);
    // One worker numbers its requests 0..1000 and logs those divisible by 10.
    assert_eq!(
        v.len(),
        requests / 10,
        "lines of 1000 requests sampled 1 in 10"
    );
    let mut seqs: Vec<u64> = v.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    seqs.sort_unstable();
    let expected: Vec<u64> = (0..requests as u64).step_by(10).collect();
    assert_eq!(seqs, expected);
}

fn sampled_counts_per_worker(io: &str) {
    let dir = TempDir::new("alog-sampled-2");
    let Some((_cfg, mut server, path)) = serve(
        io,
        2,
        &dir,
        "mode = \"sampled\"\nsample = 10\nflush_interval = \"50ms\"",
    ) else {
        return;
    };
    // Ten connections, which the kernel spreads over the two workers.
    let (connections, per_connection) = (10, 100);
    for c in 0..connections {
        let mut client = server.client();
        for i in 0..per_connection {
            let r = client.get(&format!("/api/items/{}", (c + i) % 7));
            assert_eq!(r.status, 200, "{}", r.summary());
        }
    }
    server.sigterm();
    assert!(server.wait_exit(Duration::from_secs(15)).is_some());
    let v = json_lines(&path);
    // Each worker logs its requests 0, 10, 20...: k lines for a worker
    // that answered between 10(k-1)+1 and 10k requests.
    let mut lower = 0;
    let mut upper = 0;
    for worker in 0..2u64 {
        let mut seqs: Vec<u64> = v
            .iter()
            .filter(|l| l["worker"] == worker)
            .map(|l| l["seq"].as_u64().unwrap())
            .collect();
        seqs.sort_unstable();
        let k = seqs.len() as u64;
        let expected: Vec<u64> = (0..k).map(|i| i * 10).collect();
        assert_eq!(seqs, expected, "worker {worker}");
        if k > 0 {
            lower += 10 * (k - 1) + 1;
            upper += 10 * k;
        }
    }
    let total = (connections * per_connection) as u64;
    assert!(
        (lower..=upper).contains(&total),
        "{} lines do not account for {total} requests",
        v.len()
    );
}

/// The documented combined line (README, "Access log").
const COMBINED: &str = r#"^(\S+) - - \[(\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} \+0000)\] "([^"]*)" (\d{3}) (\d+) "([^"]*)" "([^"]*)" cache=(\S+) duration_us=(\d+) origin_status=(\d{3}|-) origin_duration_us=(\d+|-) host="([^"]*)" worker=(\d+) seq=(\d+)$"#;

fn combined_format_escapes(io: &str) {
    let dir = TempDir::new("alog-combined");
    let Some((_cfg, mut server, path)) = serve(
        io,
        2,
        &dir,
        "mode = \"full\"\nformat = \"combined\"\nflush_interval = \"50ms\"",
    ) else {
        return;
    };
    let mut c = server.client();
    c.send(&request(
        "GET",
        "/api/items/5",
        "Referer: http://r.example/\r\nUser-Agent: a\"b\tc\r\n",
    ));
    assert_eq!(c.read_response().status, 200);
    let mut bad = server.client();
    bad.send(BAD_REQUEST);
    assert_eq!(bad.read_response().status, 400);
    wait_lines_written(&server, 2.0);
    server.sigterm();
    assert!(server.wait_exit(Duration::from_secs(15)).is_some());
    let all = lines(&path);
    assert_eq!(all.len(), 2, "{all:?}");
    let re = regex::Regex::new(COMBINED).unwrap();
    let mut found_ua = false;
    for l in &all {
        let caps = re
            .captures(l)
            .unwrap_or_else(|| panic!("does not match the format: {l}"));
        assert_eq!(&caps[1], "127.0.0.1");
        if &caps[4] == "200" {
            found_ua = true;
            assert_eq!(&caps[3], "GET /api/items/5 HTTP/1.1");
            assert_eq!(&caps[6], "http://r.example/");
            // A quote and a tab, escaped as nginx's escape=default does.
            assert_eq!(&caps[7], r"a\x22b\x09c");
            assert_eq!(&caps[8], "miss");
            assert_eq!(&caps[10], "200");
            assert_eq!(&caps[12], "t.example");
        } else {
            assert_eq!(&caps[4], "400");
            assert_eq!(&caps[3], "-");
            assert_eq!(&caps[8], "error");
            assert_eq!(&caps[10], "-");
        }
    }
    assert!(found_ua, "{all:?}");
}

fn off_writes_no_file(io: &str) {
    let dir = TempDir::new("alog-off");
    // A path but no mode: the log stays off.
    let Some((_cfg, server, path)) = serve(io, 2, &dir, "") else {
        return;
    };
    for _ in 0..3 {
        assert_eq!(server.get("/api/items/1").status, 200);
    }
    assert_eq!(lines_written(&server), 0.0);
    let status = server.stop();
    assert!(status.success(), "{status:?}");
    assert!(!path.exists(), "{} exists with the log off", path.display());
}

fn sigusr1_reopens_after_rename(io: &str) {
    let dir = TempDir::new("alog-rotate");
    let Some((_cfg, mut server, path)) =
        serve(io, 2, &dir, "mode = \"full\"\nflush_interval = \"50ms\"")
    else {
        return;
    };
    let mut c = server.client();
    for i in 0..3 {
        assert_eq!(c.get(&format!("/api/items/{i}")).status, 200);
    }
    wait_lines_written(&server, 3.0);
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    server.proc.signal(libc::SIGUSR1);
    assert!(
        wait_until(Duration::from_secs(5), || path.exists()),
        "SIGUSR1 did not reopen {}",
        path.display()
    );
    for i in 0..2 {
        assert_eq!(c.get(&format!("/api/items/after-{i}")).status, 200);
    }
    wait_lines_written(&server, 5.0);
    server.sigterm();
    assert!(server.wait_exit(Duration::from_secs(15)).is_some());
    let old = json_lines(&rotated);
    let new = json_lines(&path);
    assert_eq!((old.len(), new.len()), (3, 2), "old {old:?}\nnew {new:?}");
    assert!(new.iter().all(|l| l["target"]
        .as_str()
        .unwrap()
        .starts_with("/api/items/after-")));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777 & !0o640, 0, "created {mode:o}");
    }
}

fn sigterm_flushes_lines(io: &str) {
    let dir = TempDir::new("alog-flush");
    // Lines would wait a minute in the workers' buffers: only the stop flushes them.
    let Some((_cfg, mut server, path)) =
        serve(io, 2, &dir, "mode = \"full\"\nflush_interval = \"60s\"")
    else {
        return;
    };
    let mut c = server.client();
    for i in 0..5 {
        assert_eq!(c.get(&format!("/api/items/{i}")).status, 200);
    }
    assert_eq!(lines_written(&server), 0.0, "lines left a buffer early");
    drop(c);
    server.sigterm();
    let status = server.wait_exit(Duration::from_secs(15));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert_eq!(json_lines(&path).len(), 5, "{:?}", lines(&path));
}

both_io!(
    full_mode_json_lines,
    sampled_one_in_ten,
    sampled_counts_per_worker,
    combined_format_escapes,
    off_writes_no_file,
    sigusr1_reopens_after_rename,
    sigterm_flushes_lines,
);
