//! ringcache's process life: start with the built-in demo origin, graceful
//! shutdown on SIGTERM, reload on SIGHUP, the systemd notify protocol and
//! watchdog, and `check-config`.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::*;

fn builtin_demo_origin(io: &str) {
    let Some(server) = Server::serve(io, None, 2, &[]) else {
        return;
    };
    let lines = server.stderr_lines();
    assert!(
        lines
            .first()
            .is_some_and(|l| l.to_ascii_lowercase().contains("demo origin")),
        "the first stderr line mentions the demo origin: {lines:?}"
    );
    assert!(
        server.ready_line.contains(&format!("io={io}")),
        "ready line names the backend: {:?}",
        server.ready_line
    );
    assert!(
        server.ready_line.contains("workers=2"),
        "{:?}",
        server.ready_line
    );

    let first = server.get("/api/items/1");
    assert_eq!(first.status, 200, "{}", first.summary());
    assert_eq!(
        first.cache_status_params(),
        ["fwd=uri-miss", "fwd-status=200", "stored"]
    );
    assert_eq!(body_id(&first.body), Some(1));
    let second = server.get("/api/items/1");
    assert!(
        second.cache_status().starts_with("ringcache; hit; ttl="),
        "{}",
        second.summary()
    );
    assert_eq!(second.body, first.body);

    let status = server.stop();
    assert!(status.success(), "exit after SIGTERM: {status:?}");
}

fn sigterm_drains_in_flight(io: &str) {
    let origin = TestOrigin::start(|req| {
        Reply::After(
            Duration::from_millis(1000),
            Box::new(Reply::Send(response(
                200,
                &[("Cache-Control", "no-store")],
                format!("slow answer to {}", req.path()).as_bytes(),
            ))),
        )
    });
    let Some(mut server) = Server::serve(io, Some(&origin.url()), 2, &[]) else {
        return;
    };
    // An idle keep-alive connection must not hold the shutdown up.
    let mut idle = server.client();
    let r = idle.get("/warm");
    assert_eq!(r.status, 200, "{}", r.summary());

    let mut busy = server.client();
    busy.timeout = Duration::from_secs(15);
    busy.send(get_request("/slow?delay_ms=1000").as_bytes());
    assert!(
        origin.wait_requests(2, IO_TIMEOUT),
        "the slow request never reached the origin"
    );
    let t = Instant::now();
    server.sigterm();

    let r = busy.read_response();
    assert_eq!(
        r.status,
        200,
        "the in-flight request completes: {}",
        r.summary()
    );
    assert_eq!(r.body_str(), "slow answer to /slow");

    let status = server
        .wait_exit(Duration::from_secs(15))
        .expect("ringcache still running 15 s after SIGTERM");
    assert!(status.success(), "exit status after draining: {status:?}");
    eprintln!("exited {:?} after SIGTERM", t.elapsed());

    // Both client connections are closed by now.
    idle.assert_closed(Duration::from_secs(2), "idle connection after shutdown");
    // Nothing listens any more.
    assert!(
        Client::try_connect(server.addr).is_err() || {
            let mut c = Client::connect(server.addr);
            c.wait_closed(Duration::from_secs(2)).is_ok()
        },
        "the listener still accepts after exit"
    );
}

/// While draining, a request on a connection that was idle when SIGTERM
/// came is answered, with `Connection: close`, and so is the next request
/// on a connection whose response was in flight; a connection that stays
/// idle is closed after `drain_idle_timeout`.
fn drain_answers_open_connections(io: &str) {
    let origin = TestOrigin::start(|req| {
        let delay = if req.path() == "/slow" { 800 } else { 0 };
        Reply::After(
            Duration::from_millis(delay),
            Box::new(Reply::Send(response(
                200,
                &[("Cache-Control", "no-store")],
                format!("answer to {}", req.path()).as_bytes(),
            ))),
        )
    });
    let Some((_dir, mut server)) = Server::serve_with_config(
        io,
        Some(&origin.url()),
        1,
        "[limits]\ndrain_idle_timeout = \"3s\"\n",
    ) else {
        return;
    };
    let mut idle = server.client();
    assert_eq!(idle.get("/a").status, 200);
    let mut silent = server.client();
    assert_eq!(silent.get("/b").status, 200);
    let mut busy = server.client();
    busy.send(get_request("/slow").as_bytes());
    assert!(
        origin.wait_requests(3, IO_TIMEOUT),
        "/slow never reached the origin"
    );

    server.sigterm();
    assert!(
        wait_until(IO_TIMEOUT, || server.logged("worker 0: stopped accepting")),
        "no drain line"
    );
    let r = idle.get("/after-sigterm");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.body_str(), "answer to /after-sigterm");
    assert!(r.connection_has("close"), "{}", r.summary());
    idle.assert_closed(
        Duration::from_secs(2),
        "connection after its closing answer",
    );

    let r = busy.read_response();
    assert_eq!(r.body_str(), "answer to /slow", "{}", r.summary());
    let r = busy.get("/next");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert!(r.connection_has("close"), "{}", r.summary());

    silent.assert_closed(Duration::from_secs(6), "idle connection while draining");
    let status = server.wait_exit(Duration::from_secs(15)).expect("exit");
    assert!(status.success(), "{status:?}");
}

fn bad_config_fails_at_start(io: &str) {
    let (_dir, cfg) = config_file("[limits]\nheader_timeout = \"soon\"\n");
    let args = serve_args(io, None, 1, &["--config", cfg.to_str().unwrap()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    match Server::try_start(&refs) {
        Ok(_) => panic!("serve started with header_timeout = \"soon\""),
        Err(StartError::Exited { status, transcript }) => {
            assert!(!status.contains("code 0"), "exit status {status}");
            assert!(
                transcript.contains("limits.header_timeout"),
                "the error names the key:\n{transcript}"
            );
        }
        Err(e) => panic!("expected an early exit, got {e:?}"),
    }
}

/// Under systemd (Type=notify): READY=1 with a STATUS line once serving,
/// WATCHDOG=1 pings while the workers make progress, STOPPING=1 when
/// SIGTERM arrives.
fn systemd_notify_ready_and_stopping(io: &str) {
    use std::os::unix::net::UnixDatagram;
    let dir = TempDir::new("notify");
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let origin = DemoOrigin::start();
    // The shell sets the variables systemd would set (WATCHDOG_PID is its
    // own PID) and execs ringcache in place, so the PID stays the same.
    let script = format!(
        "NOTIFY_SOCKET='{}' WATCHDOG_USEC=400000 WATCHDOG_PID=$$ exec \"$0\" \"$@\"",
        path.display()
    );
    let mut args = vec!["-c".to_string(), script, bin().display().to_string()];
    args.extend(serve_args(io, Some(&origin.url()), 1, &[]));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let Some(mut server) =
        Server::start_or_skip(std::path::Path::new("/bin/sh"), io, &refs, READY_DEADLINE)
    else {
        return;
    };
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("a notification after start");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg:?}");
    assert!(msg.contains("STATUS=serving on"), "{msg:?}");
    // WatchdogSec=0.4s: pings every 0.2 s while every worker turns, with a
    // STATUS line carrying the request rate and hit ratio.
    let n = sock.recv(&mut buf).expect("a watchdog ping");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.lines().any(|l| l == "WATCHDOG=1"), "{msg:?}");
    assert!(msg.contains("hit ratio"), "{msg:?}");
    server.sigterm();
    // Pings may still be in the queue before the shutdown message.
    let stopping = (0..20).any(|_| {
        let n = sock.recv(&mut buf).expect("a notification at shutdown");
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .any(|l| l == "STOPPING=1")
    });
    assert!(stopping, "no STOPPING=1");
    let status = server.wait_exit(Duration::from_secs(15)).expect("exit");
    assert!(status.success(), "{status:?}");
}

/// A server started under a fake service manager: the notify socket it
/// reports to, and extra variables (`NAME=value ...`) for the shell.
struct Notified {
    _dir: TempDir,
    sock: std::os::unix::net::UnixDatagram,
    server: Server,
}

impl Notified {
    /// `serve --config CFG` for `origin` on `workers` workers, once it has
    /// said READY=1.
    fn ready_with_config(
        io: &str,
        origin: &TestOrigin,
        workers: usize,
        cfg: &std::path::Path,
    ) -> Option<Notified> {
        let config = ["--config", cfg.to_str().unwrap()];
        let n = Notified::start(
            io,
            "",
            serve_args(io, Some(&origin.url()), workers, &config),
        )?;
        n.until("READY=1");
        Some(n)
    }

    fn start(io: &str, env: &str, args: Vec<String>) -> Option<Notified> {
        use std::os::unix::net::UnixDatagram;
        let dir = TempDir::new("notify");
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let script = format!(
            "NOTIFY_SOCKET='{}' {env} exec \"$0\" \"$@\"",
            path.display()
        );
        let mut argv = vec!["-c".to_string(), script, bin().display().to_string()];
        argv.extend(args);
        let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        let server =
            Server::start_or_skip(std::path::Path::new("/bin/sh"), io, &refs, READY_DEADLINE)?;
        Some(Notified {
            _dir: dir,
            sock,
            server,
        })
    }

    /// The next notification (bounded by the socket's read timeout).
    fn next(&self) -> String {
        let mut buf = [0u8; 4096];
        let n = self.sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).to_string()
    }

    /// Read notifications until one has the line `line`; returns it whole.
    fn until(&self, line: &str) -> String {
        for _ in 0..50 {
            let msg = self.next();
            if msg.lines().any(|l| l == line) {
                return msg;
            }
        }
        panic!("no {line} among 50 notifications");
    }

    fn wait_log(&self, needle: &str) -> String {
        let mut found = None;
        wait_until(Duration::from_secs(10), || {
            found = self
                .server
                .stderr_lines()
                .into_iter()
                .find(|l| l.contains(needle));
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("no log line with {needle:?}"))
    }
}

/// A request whose head is about `bytes` long.
fn big_head_request(bytes: usize) -> String {
    format!(
        "GET /big HTTP/1.1\r\nHost: t\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(bytes)
    )
}

fn big_head_status(server: &Server, bytes: usize) -> u16 {
    let mut c = server.client();
    c.send(big_head_request(bytes).as_bytes());
    c.read_response().status
}

/// SIGHUP: RELOADING=1 with MONOTONIC_USEC, then READY=1; a smaller
/// head_bytes_max now answers 431; what needs a restart is reported and
/// keeps its running value.
fn sighup_reloads_limits(io: &str) {
    let origin = TestOrigin::fixed("max-age=60", "ok");
    let dir = TempDir::new("reload");
    let cfg = dir.write(
        "ringcache.toml",
        "memory = \"64MiB\"\n[limits]\nhead_bytes_max = \"16KiB\"\n",
    );
    let Some(mut n) = Notified::ready_with_config(io, &origin, 1, &cfg) else {
        return;
    };
    assert_eq!(big_head_status(&n.server, 4000), 200);

    dir.write(
        "ringcache.toml",
        "memory = \"32MiB\"\nlog_level = \"debug\"\n[limits]\nhead_bytes_max = \"1KiB\"\n",
    );
    n.server.proc.signal(libc::SIGHUP);
    let msg = n.until("RELOADING=1");
    assert!(
        msg.lines().any(|l| l.starts_with("MONOTONIC_USEC=")
            && l["MONOTONIC_USEC=".len()..]
                .parse::<u64>()
                .is_ok_and(|v| v > 0)),
        "RELOADING=1 comes with MONOTONIC_USEC: {msg:?}"
    );
    n.until("READY=1");
    let line = n.wait_log("reload: applied");
    assert!(
        line.contains("limits.head_bytes_max 16KiB → 1KiB"),
        "{line}"
    );
    assert!(line.contains("log_level unset → debug"), "{line}");
    assert!(
        line.contains("needs a restart") && line.contains("memory 64MiB → 32MiB"),
        "{line}"
    );
    // Reported after every worker picked the limits up: in effect now.
    assert_eq!(big_head_status(&n.server, 4000), 431);
    assert_eq!(n.server.get("/small").status, 200);
    let status = n.server.stop();
    assert!(status.success(), "{status:?}");
}

/// SIGHUP applies `[cache]`: a new `default_ttl` stores what was not
/// stored before, a new key option (`key_ignore_params`) changes the
/// workers' keys and the invalidation API's alike; the log line names
/// them, and a `[bus]` change is reported as needing a restart.
fn sighup_reloads_cache(io: &str) {
    const TOKEN: &str = "reload-token-0123456789";
    // `/k…`: an explicit lifetime; anything else: a validator only.
    let origin = TestOrigin::start(|req| {
        let fresh = req.target.starts_with("/k");
        let cc: &[(&str, &str)] = if fresh {
            &[("Cache-Control", "max-age=60")]
        } else {
            &[("ETag", "\"v1\"")]
        };
        Reply::Send(response(200, cc, req.target.as_bytes()))
    });
    let count = |target: &str| {
        origin
            .all_requests()
            .iter()
            .filter(|r| r.target == target)
            .count()
    };
    let dir = TempDir::new("reload-cache");
    let before = format!("memory = \"64MiB\"\n[admin]\ntoken = \"{TOKEN}\"\n");
    let cfg = dir.write("ringcache.toml", &before);
    let Some(mut n) = Notified::ready_with_config(io, &origin, 2, &cfg) else {
        return;
    };
    // Before: a validator alone gives no lifetime, and every query is its own key.
    for _ in 0..2 {
        assert_eq!(n.server.get("/v1").status, 200);
    }
    assert_eq!(count("/v1"), 2, "not stored without default_ttl");
    for target in ["/k?utm_source=a", "/k?utm_source=b"] {
        let r = n.server.get(target);
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(r.body, target.as_bytes());
    }
    assert_eq!(count("/k?utm_source=b"), 1, "a key of its own");

    dir.write(
        "ringcache.toml",
        &format!(
            "{before}[cache]\ndefault_ttl = \"1m\"\nkey_ignore_params = [\"utm_*\"]\n\
             [bus]\nurl = \"redis://127.0.0.1:1/reload\"\n"
        ),
    );
    n.server.proc.signal(libc::SIGHUP);
    n.until("RELOADING=1");
    n.until("READY=1");
    let line = n.wait_log("reload: applied");
    let at = line.find("needs a restart").expect(&line);
    let (applied, restart) = line.split_at(at);
    assert!(applied.contains("cache.default_ttl 0s → 1m"), "{line}");
    assert!(
        applied.contains("cache.key_ignore_params [] → [\"utm_*\"]"),
        "{line}"
    );
    assert!(
        restart.contains("bus.url unset → redis://127.0.0.1:1/reload"),
        "{line}"
    );
    assert!(!applied.contains("bus."), "{line}");

    // After: the default lifetime stores a response with a validator…
    assert_eq!(n.server.get("/v2").status, 200);
    let r = n.server.get("/v2");
    assert!(
        r.cache_status().starts_with("ringcache; hit"),
        "{}",
        r.summary()
    );
    assert_eq!(count("/v2"), 1, "stored with the reloaded default_ttl");
    // …and utm_* parameters leave the key on every worker.
    let first = n.server.get("/k?utm_source=c");
    assert_eq!(first.status, 200, "{}", first.summary());
    for i in 0..4 {
        let r = n.server.get(&format!("/k?utm_medium=x{i}"));
        assert!(
            r.cache_status().starts_with("ringcache; hit"),
            "{}",
            r.summary()
        );
        assert_eq!(r.body, first.body, "the object stored under /k");
    }
    let to_origin = origin
        .all_requests()
        .iter()
        .filter(|r| r.target.starts_with("/k"))
        .count();
    assert_eq!(to_origin, 3, "one fetch after the reload");
    // The invalidation API keys URLs with the reloaded rules too.
    let r = n.server.admin_post(
        "/invalidate",
        TOKEN,
        r#"{"urls": ["http://ringcache.test/k?utm_campaign=z"]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.summary());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["invalidated"], 1, "{v}");
    assert_eq!(n.server.get("/k?utm_source=d").status, 200);
    let to_origin = origin
        .all_requests()
        .iter()
        .filter(|r| r.target.starts_with("/k"))
        .count();
    assert_eq!(to_origin, 4, "the purge reached the object under /k");
    let status = n.server.stop();
    assert!(status.success(), "{status:?}");
}

/// A file that fails validation on SIGHUP is refused with a log line naming
/// the key; the running configuration stays and the server keeps serving.
fn sighup_refuses_bad_file(io: &str) {
    let origin = TestOrigin::fixed("max-age=60", "ok");
    let dir = TempDir::new("reload-bad");
    let cfg = dir.write("ringcache.toml", "[limits]\nhead_bytes_max = \"16KiB\"\n");
    let Some(mut n) = Notified::ready_with_config(io, &origin, 1, &cfg) else {
        return;
    };
    dir.write(
        "ringcache.toml",
        "[limits]\nhead_bytes_max = \"1KiB\"\nheader_timeout = \"soon\"\n",
    );
    n.server.proc.signal(libc::SIGHUP);
    n.until("RELOADING=1");
    n.until("READY=1");
    let line = n.wait_log("reload refused");
    assert!(line.contains("limits.header_timeout"), "{line}");
    // The old head limit still holds, and requests are served.
    assert_eq!(big_head_status(&n.server, 4000), 200);
    assert_eq!(n.server.get("/after").status, 200);
    // A file that parses but breaks a relation between values is refused too.
    dir.write("ringcache.toml", "[limits]\norigin_idle_max = 100000\n");
    n.server.proc.signal(libc::SIGHUP);
    n.until("RELOADING=1");
    n.until("READY=1");
    wait_until(Duration::from_secs(10), || {
        n.server
            .stderr_lines()
            .iter()
            .filter(|l| l.contains("reload refused"))
            .count()
            == 2
    });
    assert!(
        n.server
            .stderr_lines()
            .iter()
            .any(|l| l.contains("reload refused") && l.contains("limits.origin_idle_max")),
        "the second refusal names its key"
    );
    assert_eq!(n.server.get("/still").status, 200);
    let status = n.server.stop();
    assert!(status.success(), "{status:?}");
}

/// A wedged worker (test fault, debug builds only) stops the WATCHDOG=1
/// pings and is reported by an error line.
fn watchdog_stops_when_a_worker_stalls(io: &str) {
    let origin = TestOrigin::fixed("max-age=60", "ok");
    let args = serve_args(io, Some(&origin.url()), 1, &[]);
    let env = "WATCHDOG_USEC=400000 WATCHDOG_PID=$$ RINGCACHE_FAULT_STALL_WORKER=0";
    let Some(n) = Notified::start(io, env, args) else {
        return;
    };
    n.until("READY=1");
    if !n
        .server
        .logged("fault injection (RINGCACHE_FAULT_STALL_WORKER=0")
    {
        println!("SKIPPED: this build ignores RINGCACHE_FAULT_STALL_WORKER (release build)");
        return;
    }
    // Pings while every worker turns.
    n.until("WATCHDOG=1");
    // A closed client connection arms the fault: the worker answers this
    // request, closes the connection, then stops turning.
    let r = n.server.get("/x");
    assert_eq!(r.status, 200, "{}", r.summary());
    n.wait_log("fault injection: loop stopped");
    let line = n.wait_log("worker 0 made no progress");
    assert!(line.contains("ERROR"), "{line}");
    // Notifications already queued may hold pings from before the stall.
    n.sock.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    while n.sock.recv(&mut buf).is_ok() {}
    n.sock.set_nonblocking(false).unwrap();
    n.sock
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // Five watchdog intervals: STATUS lines, no ping.
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        if let Ok(len) = n.sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..len]).to_string();
            assert!(
                !msg.lines().any(|l| l == "WATCHDOG=1"),
                "a ping while worker 0 is stalled: {msg:?}"
            );
        }
    }
    let mut server = n.server;
    server.sigterm();
    let status = server.wait_exit(Duration::from_secs(15)).expect("exit");
    assert!(status.success(), "{status:?}");
}

/// Signals do not postpone the watchdog: SIGHUPs arriving faster than the
/// ping interval (200 ms here) still leave room for WATCHDOG=1.
fn watchdog_pings_through_frequent_reloads(io: &str) {
    let origin = TestOrigin::fixed("max-age=60", "ok");
    let args = serve_args(io, Some(&origin.url()), 1, &[]);
    let Some(mut n) = Notified::start(io, "WATCHDOG_USEC=400000 WATCHDOG_PID=$$", args) else {
        return;
    };
    n.until("READY=1");
    n.sock
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let mut buf = [0u8; 4096];
    let mut pings = 0;
    let mut hups = 0;
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        n.server.proc.signal(libc::SIGHUP);
        hups += 1;
        let next_hup = Instant::now() + Duration::from_millis(80);
        while Instant::now() < next_hup {
            if let Ok(len) = n.sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..len]).to_string();
                pings += msg.lines().filter(|l| *l == "WATCHDOG=1").count();
            }
        }
    }
    assert!(
        pings >= 3,
        "{pings} WATCHDOG=1 in 2 s of {hups} SIGHUPs at 80 ms intervals"
    );
    let mut server = n.server;
    server.sigterm();
    let status = server.wait_exit(Duration::from_secs(15)).expect("exit");
    assert!(status.success(), "{status:?}");
}

both_io!(
    sighup_reloads_limits,
    watchdog_pings_through_frequent_reloads,
    sighup_reloads_cache,
    sighup_refuses_bad_file,
    watchdog_stops_when_a_worker_stalls,
    systemd_notify_ready_and_stopping,
    builtin_demo_origin,
    sigterm_drains_in_flight,
    drain_answers_open_connections,
    bad_config_fails_at_start,
);

const CHECK_WITHIN: Duration = Duration::from_secs(10);

#[test]
fn check_config_accepts_good_file() {
    let (_dir, cfg) = config_file(
        "listen = \"127.0.0.1:0\"\n\
         admin = \"127.0.0.1:0\"\n\
         workers = 2\n\
         io = \"epoll\"\n\
         memory = \"64MiB\"\n\
         \n\
         [limits]\n\
         head_bytes_max = \"16KiB\"\n\
         headers_count_max = 100\n\
         body_bytes_max = \"8MiB\"\n\
         header_timeout = \"10s\"\n\
         keepalive_timeout = \"60s\"\n\
         origin_connect_timeout = \"2s\"\n\
         origin_response_timeout = \"500ms\"\n",
    );
    let (status, stderr) = run(
        &["check-config", "--config", cfg.to_str().unwrap()],
        CHECK_WITHIN,
    );
    assert!(
        status.success(),
        "check-config on a good file: {status:?}\n{stderr:?}"
    );
}

#[test]
fn check_config_names_bad_value() {
    let (_dir, cfg) = config_file("[limits]\nheader_timeout = \"soon\"\n");
    let (status, stderr) = run(
        &["check-config", "--config", cfg.to_str().unwrap()],
        CHECK_WITHIN,
    );
    assert!(!status.success(), "check-config accepted a bad duration");
    assert!(
        stderr.iter().any(|l| l.contains("limits.header_timeout")),
        "stderr names the key: {stderr:?}"
    );
}

#[test]
fn check_config_names_unknown_key() {
    let (_dir, cfg) = config_file("[limits]\nhead_bytes_maxx = \"4KiB\"\n");
    let (status, stderr) = run(
        &["check-config", "--config", cfg.to_str().unwrap()],
        CHECK_WITHIN,
    );
    assert!(!status.success(), "check-config accepted an unknown key");
    assert!(
        stderr.iter().any(|l| l.contains("head_bytes_maxx")),
        "stderr names the key: {stderr:?}"
    );
}

#[test]
fn check_config_missing_file() {
    let dir = TempDir::new("missing");
    let path = dir.path().join("nope.toml");
    let (status, stderr) = run(
        &["check-config", "--config", path.to_str().unwrap()],
        CHECK_WITHIN,
    );
    assert!(!status.success(), "check-config accepted a missing file");
    assert!(!stderr.is_empty(), "a missing file is reported on stderr");
}
