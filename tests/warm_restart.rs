//! Warm restarts with `--store FILE`: after SIGTERM every stored object is a
//! hit without asking the origin; after SIGKILL every intact object is
//! recovered byte for byte; a damaged file is refused with a clear message.

#[macro_use]
mod common;

use std::time::Duration;

use common::*;

/// Objects filled before the restart.
const OBJECTS: u64 = 300;

fn item_path(i: u64) -> String {
    format!("/api/items/{i}?size={}", 200 + (i * 37) % 3000)
}

fn serve_with_store(io: &str, origin: &DemoOrigin, store: &str) -> Option<Server> {
    Server::serve(
        io,
        Some(&origin.url()),
        2,
        &["--store", store, "--memory", "64MiB"],
    )
}

/// Fill OBJECTS through the proxy; returns each body as the origin sent it.
fn fill(server: &Server) -> Vec<Vec<u8>> {
    let mut c = server.client();
    (0..OBJECTS)
        .map(|i| {
            c.send(get_request(&item_path(i)).as_bytes());
            let r = c.read_response();
            assert_eq!(r.status, 200, "{}", r.summary());
            assert!(
                r.cache_status_params().iter().any(|p| p == "stored"),
                "{}",
                r.summary()
            );
            r.body
        })
        .collect()
}

/// Every object is a hit with the same bytes, and the origin is not asked.
fn assert_all_hits(server: &Server, origin: &DemoOrigin, bodies: &[Vec<u8>]) {
    let before = origin.stats().total;
    let mut c = server.client();
    for (i, body) in bodies.iter().enumerate() {
        c.send(get_request(&item_path(i as u64)).as_bytes());
        let r = c.read_response();
        assert!(r.is_hit(), "object {i} after restart: {}", r.summary());
        assert_eq!(&r.body, body, "object {i}: body differs after restart");
    }
    assert_eq!(origin.stats().total, before, "the origin was asked again");
}

fn sigterm_restart_is_warm(io: &str) {
    let origin = DemoOrigin::start();
    let dir = TempDir::new("warm");
    let store = dir.path().join("store");
    let store = store.to_str().unwrap();
    let Some(server) = serve_with_store(io, &origin, store) else {
        return;
    };
    let bodies = fill(&server);
    let status = server.stop();
    assert!(status.success(), "exit after SIGTERM: {status:?}");

    let server = serve_with_store(io, &origin, store).expect("restart");
    assert!(
        server
            .stderr_lines()
            .iter()
            .any(|l| l.contains("reopened after a clean stop")
                && l.contains(&format!("{OBJECTS} items recovered"))),
        "no recovery line: {:?}",
        server.stderr_lines()
    );
    assert_all_hits(&server, &origin, &bodies);
    let m = server.metrics();
    assert_eq!(m.value("ringcache_store_recovered_items"), OBJECTS as f64);
}

fn sigkill_restart_recovers_intact_items(io: &str) {
    let origin = DemoOrigin::start();
    let dir = TempDir::new("kill9");
    let store = dir.path().join("store");
    let store = store.to_str().unwrap();
    let Some(mut server) = serve_with_store(io, &origin, store) else {
        return;
    };
    let bodies = fill(&server);
    server.proc.signal(libc::SIGKILL);
    assert!(server.wait_exit(Duration::from_secs(5)).is_some());

    let server = serve_with_store(io, &origin, store).expect("restart");
    assert!(
        server
            .stderr_lines()
            .iter()
            .any(|l| l.contains("reopened after an unclean stop")),
        "no recovery line: {:?}",
        server.stderr_lines()
    );
    // Nothing was being written when the process died: all are intact.
    assert_all_hits(&server, &origin, &bodies);
}

fn damaged_store_file_is_refused(io: &str) {
    let origin = DemoOrigin::start();
    let dir = TempDir::new("damaged");
    let store = dir.path().join("store");
    let store_s = store.to_str().unwrap();
    let Some(server) = serve_with_store(io, &origin, store_s) else {
        return;
    };
    fill(&server);
    assert!(server.stop().success());
    // Flip a byte in the file header.
    let mut bytes = std::fs::read(&store).unwrap();
    bytes[20] ^= 0xff;
    std::fs::write(&store, &bytes).unwrap();
    let args = serve_args(
        io,
        Some(&origin.url()),
        2,
        &["--store", store_s, "--memory", "64MiB"],
    );
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (status, lines) = run(&refs, Duration::from_secs(10));
    assert!(!status.success(), "a damaged store must be refused");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("store") && l.contains(store_s)),
        "the refusal names the file: {lines:?}"
    );
}

/// Distinct objects the load below touches.
const LOAD_KEYS: u64 = 20_000;

fn load_path(i: u64) -> String {
    format!("/api/items/load{i}?size={}", 100 + (i * 7919) % 20_000)
}

/// SIGKILL while clients are filling the cache: after the restart, every
/// object served as a hit is byte for byte what the origin sends.
fn sigkill_under_load_serves_only_origin_bytes(io: &str) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let origin = DemoOrigin::start();
    let dir = TempDir::new("kill9load");
    let store = dir.path().join("store");
    let store = store.to_str().unwrap();
    let Some(mut server) = serve_with_store(io, &origin, store) else {
        return;
    };
    let stop = Arc::new(AtomicBool::new(false));
    let loaders: Vec<_> = (0..4u64)
        .map(|t| {
            let (addr, stop) = (server.addr, Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut i = t;
                // Bounded: at most LOAD_KEYS requests per thread.
                while !stop.load(Ordering::Relaxed) && i < 4 * LOAD_KEYS {
                    let Ok(mut c) = Client::try_connect(addr) else {
                        return;
                    };
                    for _ in 0..16 {
                        let path = load_path(i % LOAD_KEYS);
                        i += 4;
                        if c.try_send(get_request(&path).as_bytes()).is_err()
                            || c.try_read_response().is_err()
                        {
                            return; // the server was killed
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let still_loading = loaders.iter().any(|l| !l.is_finished());
    server.proc.signal(libc::SIGKILL);
    stop.store(true, Ordering::Relaxed);
    for l in loaders {
        l.join().unwrap();
    }
    assert!(server.wait_exit(Duration::from_secs(5)).is_some());

    let server = serve_with_store(io, &origin, store).expect("restart");
    let mut proxy = server.client();
    let mut hits = 0;
    for i in 0..LOAD_KEYS {
        let path = load_path(i);
        proxy.send(get_request(&path).as_bytes());
        let r = proxy.read_response();
        assert_eq!(r.status, 200, "{}", r.summary());
        if r.is_hit() {
            hits += 1;
            let direct = http_get(origin.addr, &path);
            assert_eq!(
                r.body, direct.body,
                "{path}: a recovered body differs from the origin's"
            );
        }
    }
    eprintln!(
        "{hits} of {LOAD_KEYS} objects recovered after SIGKILL (load still running: {still_loading})"
    );
    assert!(hits > 0, "nothing was recovered");
}

/// `ringcache inspect` reports a closed store without changing it, and
/// `--store-reset` rebuilds a refused file empty.
fn inspect_and_reset(io: &str) {
    let origin = DemoOrigin::start();
    let dir = TempDir::new("inspect");
    let store = dir.path().join("store");
    let store_s = store.to_str().unwrap();
    let Some(server) = serve_with_store(io, &origin, store_s) else {
        return;
    };
    fill(&server);
    assert!(server.stop().success());
    let before = std::fs::read(&store).unwrap();
    let inspected = std::process::Command::new(bin())
        .args(["inspect", "--store", store_s])
        .output()
        .expect("run ringcache inspect");
    let out = String::from_utf8_lossy(&inspected.stdout).to_string();
    assert!(
        inspected.status.success(),
        "inspect failed: {}",
        String::from_utf8_lossy(&inspected.stderr)
    );
    assert!(out.contains("format version"), "{out}");
    assert!(out.contains("clean (closed and flushed)"), "{out}");
    assert!(out.contains(&format!("{OBJECTS} intact, 0 torn")), "{out}");
    assert!(
        std::fs::read(&store).unwrap() == before,
        "inspect changed the file"
    );

    // Damage the header: refused without --store-reset, rebuilt cold with it.
    let mut bytes = before;
    bytes[20] ^= 0xff;
    std::fs::write(&store, &bytes).unwrap();
    let server = Server::serve(
        io,
        Some(&origin.url()),
        2,
        &["--store", store_s, "--memory", "64MiB", "--store-reset"],
    )
    .expect("start with --store-reset");
    assert!(
        server
            .stderr_lines()
            .iter()
            .any(|l| l.contains("rebuilt empty (--store-reset)")),
        "{:?}",
        server.stderr_lines()
    );
    let r = server.get(&item_path(0));
    assert_eq!(r.status, 200);
    assert!(!r.is_hit(), "a rebuilt store starts cold");
}

both_io!(
    inspect_and_reset,
    sigkill_under_load_serves_only_origin_bytes,
    sigterm_restart_is_warm,
    sigkill_restart_recovers_intact_items,
    damaged_store_file_is_refused,
);
