//! Restarts under load that drop no connection and keep the cache.
//!
//! The test process plays the service manager's socket unit: it holds the
//! listening socket and hands it to each ringcache process as fd 3. While
//! client threads send requests through that socket (keep-alive and
//! one-shot connections), the process is replaced twice: SIGTERM, wait for
//! the exit, start the next one on the same socket and store file.
//! Connections that arrive in between wait in the socket's queue.
//!
//! One client thread asks for uncacheable answers that the origin gives
//! slowly, so that fetches are in flight when a drain begins.
//!
//! Asserted: every request gets a complete, correct response (a keep-alive
//! connection may end with `Connection: close`, after which the client
//! opens a new one; nothing else counts as fine), every old process exits 0
//! with its store marked clean, and right after each restart every stored
//! key is a hit with the origin's request count unchanged.

#[macro_use]
mod common;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::*;

/// Keys stored before the load starts; the load asks only for these.
const KEYS: u64 = 16;
/// Client threads: even ones keep connections alive, odd ones open one per
/// request; the last one asks for uncacheable answers the origin is slow
/// to give, so that fetches are in flight when a drain begins.
const CLIENT_THREADS: u64 = 5;
/// Time the origin takes to answer an uncacheable request.
const PASS_DELAY: Duration = Duration::from_millis(20);
/// Requests one client thread sends at most.
const REQUESTS_PER_THREAD_MAX: u64 = 20_000;
/// Requests the load must complete between two restarts (progress, not speed).
const REQUESTS_BETWEEN_RESTARTS: u64 = 200;
/// A request may wait this long: across a whole restart on a busy machine.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on each wait for the load to make progress.
const PROGRESS_WITHIN: Duration = Duration::from_secs(30);
/// Restarts while the load runs.
const RESTARTS: usize = 2;

#[derive(Default)]
struct LoadStats {
    responses: AtomicU64,
    /// Responses that ended a keep-alive connection with `Connection: close`.
    closes: AtomicU64,
    errors: Mutex<Vec<String>>,
}

fn path_of(n: u64) -> String {
    format!("/item/{}", n % KEYS)
}

fn is_pass_thread(thread: u64) -> bool {
    thread == CLIENT_THREADS - 1
}

/// Origin requests for cacheable keys.
fn item_fetches(origin: &TestOrigin) -> usize {
    origin
        .all_requests()
        .iter()
        .filter(|r| r.path().starts_with("/item/"))
        .count()
}

fn expected_body(path: &str) -> String {
    format!("body of {path}")
}

/// One client thread: bounded request count, stops early when told.
fn client_load(addr: SocketAddr, thread: u64, stop: Arc<AtomicBool>, stats: Arc<LoadStats>) {
    let keep_alive = thread % 2 == 0;
    let mut conn: Option<Client> = None;
    for n in 0..REQUESTS_PER_THREAD_MAX {
        // Relaxed: a stop request; the join that follows orders the rest.
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let path = if is_pass_thread(thread) {
            format!("/pass/{n}")
        } else {
            path_of(n * CLIENT_THREADS + thread)
        };
        let mut c = match conn.take() {
            Some(c) => c,
            None => match Client::try_connect(addr) {
                Ok(mut c) => {
                    c.timeout = CLIENT_TIMEOUT;
                    c
                }
                Err(e) => {
                    stats
                        .errors
                        .lock()
                        .unwrap()
                        .push(format!("thread {thread} request {n}: connect: {e}"));
                    continue;
                }
            },
        };
        if let Err(e) = c.try_send(get_request(&path).as_bytes()) {
            stats
                .errors
                .lock()
                .unwrap()
                .push(format!("thread {thread} request {n} {path}: send: {e}"));
            continue;
        }
        match c.try_read_response() {
            Ok(r) if r.status == 200 && r.body_str() == expected_body(&path) => {
                stats.responses.fetch_add(1, Ordering::Relaxed);
                if r.connection_has("close") {
                    stats.closes.fetch_add(1, Ordering::Relaxed);
                } else if keep_alive {
                    conn = Some(c);
                }
            }
            Ok(r) => stats.errors.lock().unwrap().push(format!(
                "thread {thread} request {n} {path}: {}",
                r.summary()
            )),
            Err(e) => stats
                .errors
                .lock()
                .unwrap()
                .push(format!("thread {thread} request {n} {path}: read: {e}")),
        }
    }
}

fn wait_progress(stats: &LoadStats, from: u64) {
    let reached = wait_until(PROGRESS_WITHIN, || {
        stats.responses.load(Ordering::Relaxed) >= from + REQUESTS_BETWEEN_RESTARTS
            || !stats.errors.lock().unwrap().is_empty()
    });
    assert!(
        reached,
        "the load made no progress: {} responses",
        stats.responses.load(Ordering::Relaxed)
    );
}

fn restarts_drop_nothing_and_stay_warm(io: &str) {
    let origin = TestOrigin::start(|req| {
        if req.path().starts_with("/pass/") {
            return Reply::After(
                PASS_DELAY,
                Box::new(Reply::Send(response(
                    200,
                    &[("Cache-Control", "no-store")],
                    expected_body(req.path()).as_bytes(),
                ))),
            );
        }
        Reply::Send(response(
            200,
            &[("Cache-Control", "max-age=3600")],
            expected_body(req.path()).as_bytes(),
        ))
    });
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = TempDir::new("restart");
    let store = dir.path().join("store");
    let cfg = dir.write(
        "ringcache.toml",
        "[limits]\nshutdown_grace = \"10s\"\ndrain_idle_timeout = \"3s\"\n",
    );
    let args = serve_args(
        io,
        Some(&origin.url()),
        2,
        &[
            "--memory",
            "64MiB",
            "--store",
            store.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
        ],
    );
    let Some(mut server) = Server::serve_inheriting(io, &listener, "http", &args) else {
        return;
    };
    for k in 0..KEYS {
        let r = http_get(addr, &path_of(k));
        assert_eq!(r.status, 200, "{}", r.summary());
        assert!(
            r.cache_status_params().iter().any(|p| p == "stored"),
            "{}",
            r.summary()
        );
    }
    assert_eq!(item_fetches(&origin), KEYS as usize);

    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(LoadStats::default());
    let clients: Vec<_> = (0..CLIENT_THREADS)
        .map(|t| {
            let (stop, stats) = (Arc::clone(&stop), Arc::clone(&stats));
            thread::spawn(move || client_load(addr, t, stop, stats))
        })
        .collect();

    for round in 1..=RESTARTS {
        wait_progress(&stats, stats.responses.load(Ordering::Relaxed));
        server.sigterm();
        let status = server
            .wait_exit(Duration::from_secs(20))
            .expect("the old process is still running 20 s after SIGTERM");
        assert!(status.success(), "restart {round}: old process {status:?}");
        assert!(
            server.logged("flushed and marked clean"),
            "restart {round}: the store was not closed clean"
        );
        server =
            Server::serve_inheriting(io, &listener, "http", &args).expect("the new process starts");
        assert!(
            server.logged("reopened after a clean stop"),
            "restart {round}: the store was not reopened warm"
        );
        for k in 0..KEYS {
            let r = http_get(addr, &path_of(k));
            assert!(
                r.is_hit(),
                "restart {round}: {} is not a hit: {}",
                path_of(k),
                r.summary()
            );
        }
        assert_eq!(
            item_fetches(&origin),
            KEYS as usize,
            "restart {round}: the origin was asked again for a stored key"
        );
    }
    wait_progress(&stats, stats.responses.load(Ordering::Relaxed));
    // Relaxed: the joins below order everything the threads did.
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client thread");
    }
    let errors = stats.errors.lock().unwrap();
    eprintln!(
        "{} responses, {} keep-alive connections closed by the server, {} errors",
        stats.responses.load(Ordering::Relaxed),
        stats.closes.load(Ordering::Relaxed),
        errors.len()
    );
    assert!(
        errors.is_empty(),
        "{} requests failed across the restarts, first ones: {:#?}",
        errors.len(),
        &errors[..errors.len().min(10)]
    );
    assert_eq!(
        item_fetches(&origin),
        KEYS as usize,
        "every request of the load for a stored key was a hit"
    );
    assert!(
        origin.requests() > KEYS,
        "the uncacheable requests reached the origin"
    );
    assert!(server.stop().success());
}

both_io!(restarts_drop_nothing_and_stay_warm);
