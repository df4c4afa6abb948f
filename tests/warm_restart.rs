//! Warm restarts with `--store FILE`: after SIGTERM every stored object is a
//! hit without asking the origin; after SIGKILL every intact object is
//! recovered byte for byte; a damaged file is refused with a clear message.

#[macro_use]
mod common;

use std::time::Duration;

use common::*;

/// Objects filled before the restart.
const OBJECTS: u64 = 300;
/// Objects filled before the SIGTERM restart: enough that the index's
/// buckets and the recovery scan see real work.
const WARM_OBJECTS: u64 = 3000;

fn item_path(i: u64) -> String {
    format!("/api/items/{i}?size={}", 200 + (i * 37) % 3000)
}

/// A demo origin and a store file in a temporary directory.
struct Fixture {
    origin: DemoOrigin,
    _dir: TempDir,
    store: std::path::PathBuf,
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        let dir = TempDir::new(tag);
        let store = dir.path().join("store");
        Fixture {
            origin: DemoOrigin::start(),
            _dir: dir,
            store,
        }
    }

    fn store_str(&self) -> &str {
        self.store.to_str().unwrap()
    }

    fn serve_args(&self, io: &str, extra: &[&str]) -> Vec<String> {
        let mut args = vec!["--store", self.store_str(), "--memory", "64MiB"];
        args.extend_from_slice(extra);
        serve_args(io, Some(&self.origin.url()), 2, &args)
    }

    fn serve(&self, io: &str, extra: &[&str]) -> Option<Server> {
        let args = self.serve_args(io, extra);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        Server::start_or_skip(&bin(), io, &refs, READY_DEADLINE)
    }

    /// Start, fill `count` objects, stop with SIGTERM; the bodies as first
    /// served.
    fn filled_and_stopped(&self, io: &str, count: u64) -> Option<Vec<Vec<u8>>> {
        let server = self.serve(io, &[])?;
        let bodies = fill(&server, count);
        let status = server.stop();
        assert!(status.success(), "exit after SIGTERM: {status:?}");
        Some(bodies)
    }

    /// Flip a byte in the store file's header.
    fn damage_header(&self) {
        let mut bytes = std::fs::read(&self.store).unwrap();
        bytes[20] ^= 0xff;
        std::fs::write(&self.store, &bytes).unwrap();
    }
}

/// Fill `count` objects through the proxy; returns each body as the origin
/// sent it.
fn fill(server: &Server, count: u64) -> Vec<Vec<u8>> {
    let mut c = server.client();
    (0..count)
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

/// The recovery figures at start: the log line and the metrics agree.
fn assert_recovery_reported(server: &Server, clean: bool, recovered: u64, dropped: u64) {
    let stop = if clean {
        "a clean stop"
    } else {
        "an unclean stop"
    };
    assert!(
        server.stderr_lines().iter().any(|l| {
            l.contains(&format!("reopened after {stop}"))
                && l.contains(&format!(
                    "{recovered} items recovered, {dropped} dropped, in "
                ))
        }),
        "no recovery line: {:?}",
        server.stderr_lines()
    );
    let m = server.metrics();
    assert_eq!(
        m.get("ringcache_store_recovered_items"),
        Some(recovered as f64)
    );
    assert_eq!(m.get("ringcache_store_dropped_items"), Some(dropped as f64));
    let secs = m
        .get("ringcache_store_recovery_seconds")
        .expect("ringcache_store_recovery_seconds is reported");
    assert!(secs > 0.0 && secs.is_finite(), "recovery seconds {secs}");
}

fn sigterm_restart_is_warm(io: &str) {
    let f = Fixture::new("warm");
    let Some(bodies) = f.filled_and_stopped(io, WARM_OBJECTS) else {
        return;
    };

    let server = f.serve(io, &[]).expect("restart");
    assert_recovery_reported(&server, true, WARM_OBJECTS, 0);
    assert_all_hits(&server, &f.origin, &bodies);
    let m = server.metrics();
    assert_eq!(m.value("ringcache_store_items"), WARM_OBJECTS as f64);
}

fn sigkill_restart_recovers_intact_items(io: &str) {
    let f = Fixture::new("kill9");
    let Some(mut server) = f.serve(io, &[]) else {
        return;
    };
    let bodies = fill(&server, OBJECTS);
    server.proc.signal(libc::SIGKILL);
    assert!(server.wait_exit(Duration::from_secs(5)).is_some());

    let server = f.serve(io, &[]).expect("restart");
    // Nothing was being written when the process died: all are intact.
    assert_recovery_reported(&server, false, OBJECTS, 0);
    assert_all_hits(&server, &f.origin, &bodies);
}

fn damaged_store_file_is_refused(io: &str) {
    let f = Fixture::new("damaged");
    if f.filled_and_stopped(io, OBJECTS).is_none() {
        return;
    }
    f.damage_header();
    let args = f.serve_args(io, &[]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (status, lines) = run(&refs, Duration::from_secs(10));
    assert!(!status.success(), "a damaged store must be refused");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("store") && l.contains(f.store_str())),
        "the refusal names the file: {lines:?}"
    );
}

/// The index slots `ringcache inspect` reports for the fixture's store.
fn inspected_slots(f: &Fixture) -> u64 {
    let out = std::process::Command::new(bin())
        .args(["inspect", "--store", f.store_str()])
        .output()
        .expect("run ringcache inspect");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let before = text
        .split(" index slots")
        .next()
        .unwrap_or_else(|| panic!("{text}"));
    before
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no slot count in {text}"))
}

/// `memory_per_index_slot` sizes the index of the store file; a file made
/// with another value is refused with the reason, and rebuilt on request.
fn index_density_is_part_of_the_layout(io: &str) {
    let f = Fixture::new("density");
    if f.filled_and_stopped(io, OBJECTS).is_none() {
        return;
    }
    let default_slots = inspected_slots(&f);
    let denser = ["--set", "memory_per_index_slot=256"];
    let args = f.serve_args(io, &denser);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (status, lines) = run(&refs, Duration::from_secs(10));
    assert!(
        !status.success(),
        "a store of another density must be refused"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("layout differs") && l.contains("bytes per index slot")),
        "{lines:?}"
    );
    let server = f
        .serve(io, &["--store-reset", denser[0], denser[1]])
        .expect("start with --store-reset");
    let status = server.stop();
    assert!(status.success(), "exit after SIGTERM: {status:?}");
    assert_eq!(inspected_slots(&f), 2 * default_slots);
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

    let f = Fixture::new("kill9load");
    let Some(mut server) = f.serve(io, &[]) else {
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

    let server = f.serve(io, &[]).expect("restart");
    let mut proxy = server.client();
    let mut hits = 0;
    for i in 0..LOAD_KEYS {
        let path = load_path(i);
        proxy.send(get_request(&path).as_bytes());
        let r = proxy.read_response();
        assert_eq!(r.status, 200, "{}", r.summary());
        if r.is_hit() {
            hits += 1;
            let direct = http_get(f.origin.addr, &path);
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
    let f = Fixture::new("inspect");
    if f.filled_and_stopped(io, OBJECTS).is_none() {
        return;
    }
    let before = std::fs::read(&f.store).unwrap();
    let inspected = std::process::Command::new(bin())
        .args(["inspect", "--store", f.store_str()])
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
        std::fs::read(&f.store).unwrap() == before,
        "inspect changed the file"
    );

    // Damage the header: rebuilt cold with --store-reset.
    f.damage_header();
    let server = f
        .serve(io, &["--store-reset"])
        .expect("start with --store-reset");
    assert!(
        server.logged("rebuilt empty (--store-reset)"),
        "{:?}",
        server.stderr_lines()
    );
    let r = server.get(&item_path(0));
    assert_eq!(r.status, 200);
    assert!(!r.is_hit(), "a rebuilt store starts cold");
}

both_io!(
    index_density_is_part_of_the_layout,
    inspect_and_reset,
    sigkill_under_load_serves_only_origin_bytes,
    sigterm_restart_is_warm,
    sigkill_restart_recovers_intact_items,
    damaged_store_file_is_refused,
);
