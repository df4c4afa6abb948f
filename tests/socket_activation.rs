//! Socket activation: listening sockets passed by the service manager
//! (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`) are checked and used by
//! every worker; a descriptor that is not a listening TCP socket stops the
//! start with a message naming it.

#[macro_use]
mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;

/// `systemd-socket-activate -l 127.0.0.1:PORT ringcache serve ...`: the
/// program binds, waits for the first connection, then execs ringcache with
/// the socket as fd 3.
fn systemd_socket_activate(io: &str) {
    let program = Path::new("/usr/bin/systemd-socket-activate");
    if !program.exists() {
        println!("SKIPPED: {} is not installed", program.display());
        eprintln!("SKIPPED: systemd-socket-activate is not installed");
        return;
    }
    let origin = TestOrigin::fixed("max-age=3600", "activated");
    // A free port: bound and released here, bound again by the program.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec![
        "-l".to_string(),
        listen.clone(),
        bin().display().to_string(),
    ];
    args.extend(serve_args(io, Some(&origin.url()), 2, &[]));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let proc = Proc::spawn_bin(program, "ringcache", &refs);
    // Nothing runs ringcache before the first connection arrives.
    let addr = listen.parse().unwrap();
    let mut first = None;
    for _ in 0..100 {
        match Client::try_connect(addr) {
            Ok(c) => {
                first = Some(c);
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    let mut first = first.expect("systemd-socket-activate never listened");
    first.timeout = READY_DEADLINE + IO_TIMEOUT;
    first.send(get_request("/a").as_bytes());
    let server = match Server::wait_ready(proc, READY_DEADLINE) {
        Ok(s) => s,
        Err(StartError::Exited { transcript, .. })
            if io == "uring" && transcript.contains("io_uring") =>
        {
            println!("SKIPPED: io_uring is unavailable here:\n{transcript}");
            return;
        }
        Err(e) => panic!("{}", describe_start_error(program, &refs, &e)),
    };
    assert_eq!(server.addr, addr, "{}", server.ready_line);
    assert!(
        server.ready_line.contains("inherited listener"),
        "{}",
        server.ready_line
    );
    // The connection that triggered the start is answered.
    let r = first.read_response();
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.body_str(), "activated");
    let r = server.get("/a");
    assert!(r.is_hit(), "{}", r.summary());
    assert_eq!(origin.requests(), 1);
    let status = server.stop();
    assert!(status.success(), "{status:?}");
}

/// The test is the service manager: it holds the listening socket and
/// passes it as fd 3; both workers accept on it.
fn inherited_traffic_socket(io: &str) {
    let origin = TestOrigin::fixed("max-age=3600", "shared");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let args = serve_args(io, Some(&origin.url()), 2, &[]);
    let Some(server) = Server::serve_inheriting(io, &listener, "http", &args) else {
        return;
    };
    assert_eq!(server.addr, addr, "{}", server.ready_line);
    assert!(
        server.logged("passed by the service manager (fd 3, name \"http\")"),
        "the inherited socket is reported"
    );
    // Many connections, each answered, whichever worker takes it.
    for i in 0..40 {
        let r = http_get(addr, &format!("/k{}", i % 4));
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(r.body_str(), "shared");
    }
    assert_eq!(origin.requests(), 4, "one fetch per key");
    let m = server.metrics();
    assert_eq!(m.value("ringcache_cache_hits_total"), 36.0);
    let status = server.stop();
    assert!(status.success(), "{status:?}");
    // The socket outlives the process: a connection now waits in its queue.
    let _queued = std::net::TcpStream::connect(addr).expect("the held socket still queues");
}

/// A socket named "admin" is the admin listener; traffic binds as usual.
fn inherited_admin_socket(io: &str) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = listener.local_addr().unwrap();
    let origin = TestOrigin::fixed("max-age=3600", "x");
    let args = serve_args(io, Some(&origin.url()), 1, &[]);
    let Some(server) = Server::serve_inheriting(io, &listener, "admin", &args) else {
        return;
    };
    assert_eq!(server.admin, admin, "{}", server.ready_line);
    assert_ne!(server.addr.port(), admin.port());
    let r = http_get(admin, "/healthz");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(server.get("/").status, 200);
    assert!(server.stop().success());
}

/// fd 3 is not a listening socket: the start fails and says so.
fn inherited_fd_that_is_not_a_listener(io: &str) {
    let dir = TempDir::new("notsock");
    let file = std::fs::File::create(dir.path().join("plain")).unwrap();
    let script = "exec 3<&0 0</dev/null; LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\"";
    let mut argv = vec![
        "-c".to_string(),
        script.to_string(),
        bin().display().to_string(),
    ];
    argv.extend(serve_args(io, None, 1, &[]));
    let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
    let proc = Proc::spawn_bin_stdin(Path::new("/bin/sh"), "ringcache", &refs, Stdio::from(file));
    match Server::wait_ready(proc, READY_DEADLINE) {
        Ok(_) => panic!("serve started with a plain file as its listening socket"),
        Err(StartError::Exited { status, transcript }) => {
            assert!(!status.contains("code 0"), "{status}");
            assert!(
                transcript.contains("fd 3") && transcript.contains("not a socket"),
                "the error names the descriptor and what it is:\n{transcript}"
            );
        }
        Err(e) => panic!("expected an early exit, got {e:?}"),
    }
    // A connected (not listening) TCP socket is refused too.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let proc = Proc::spawn_bin_stdin(
        Path::new("/bin/sh"),
        "ringcache",
        &refs,
        Stdio::from(std::os::fd::OwnedFd::from(stream)),
    );
    match Server::wait_ready(proc, READY_DEADLINE) {
        Ok(_) => panic!("serve started with a connected socket as its listener"),
        Err(StartError::Exited { transcript, .. }) => {
            assert!(transcript.contains("not listening"), "{transcript}");
        }
        Err(e) => panic!("expected an early exit, got {e:?}"),
    }
}

both_io!(
    systemd_socket_activate,
    inherited_traffic_socket,
    inherited_admin_socket,
    inherited_fd_that_is_not_a_listener,
);
