//! ringcache's process life: start with the built-in demo origin, graceful
//! shutdown on SIGTERM, and `check-config`.

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
        ["fwd=miss", "fwd-status=200", "stored"]
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

both_io!(
    systemd_notify_ready_and_stopping,
    builtin_demo_origin,
    sigterm_drains_in_flight,
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
