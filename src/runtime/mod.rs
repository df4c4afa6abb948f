//! Thread-per-core runtime: one pinned worker per core, each with its own
//! listening socket (SO_REUSEPORT) and its own I/O backend.

#[cfg(test)]
mod conformance;
pub mod epoll;
pub mod io;
pub mod uring;

/// Sizes a backend is built with; all allocation happens at construction.
#[derive(Clone, Copy, Debug)]
pub struct IoLimits {
    /// Token slot indices are below this (connections + origin sockets).
    pub slots_max: usize,
    /// Bytes in one provided receive buffer.
    pub recv_buffer_bytes: usize,
    /// Number of provided receive buffers (a power of two, at most 32768).
    pub recv_buffers_count: u16,
    /// Submission queue entries (a power of two).
    pub ring_entries: u32,
}

pub mod worker;

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::config::{Config, IoMode};
use crate::metrics::{Counter, Metrics};
use crate::proxy::{Leases, OriginTarget};
use crate::store::layout::LayoutError;
use crate::store::{OpenError, Options as StoreOptions, SharedStore};
use worker::{Backend, WorkerSpec};

/// Time every worker gets to start accepting.
pub const WORKERS_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Threads of the in-process demo origin.
pub const DEMO_ORIGIN_THREADS: usize = 1;

/// Pick the backend: `auto` probes io_uring for every opcode ringcache needs.
pub fn choose_backend(mode: IoMode) -> Result<Backend, String> {
    match mode {
        IoMode::Epoll => Ok(Backend::Epoll),
        IoMode::Uring => uring::UringIo::probe()
            .map(|()| Backend::Uring)
            .map_err(|why| format!("--io uring: io_uring is unavailable: {why}")),
        IoMode::Auto => match uring::UringIo::probe() {
            Ok(()) => Ok(Backend::Uring),
            Err(why) => {
                log::warn!("io_uring is unavailable ({why}); falling back to epoll");
                Ok(Backend::Epoll)
            }
        },
    }
}

/// Open (or create) the store file, or map anonymous memory; log what a
/// reopened file held.
fn open_store(config: &Config) -> Result<SharedStore, String> {
    let options = StoreOptions {
        // One reader per worker, and one for the admin thread's soft purges.
        readers_max: config.workers + 1,
        ..StoreOptions::default()
    };
    // The tag index's bytes are reserved out of --memory.
    let store_bytes = config.store_bytes();
    let started = Instant::now();
    let Some(path) = &config.store_path else {
        return SharedStore::anonymous_with(store_bytes, options)
            .map_err(|e| format!("store (anonymous, {store_bytes} bytes): {e}"));
    };
    let opened = if config.store_reset {
        SharedStore::open_reset(path, store_bytes, options)
    } else {
        SharedStore::open(path, store_bytes, options)
    };
    let store = opened.map_err(|e| {
        let hint = if matches!(e, OpenError::Layout(LayoutError::NotAStore(_))) {
            "; remove the file or start with --store-reset to rebuild it cold"
        } else {
            ""
        };
        format!("store {}: {e}{hint}", path.display())
    })?;
    let r = store.recovery();
    if let Some(why) = store.reset_reason() {
        log::warn!(
            "store {}: rebuilt empty (--store-reset): {why}",
            path.display()
        );
    } else if r.reused {
        log::info!(
            "store {}: reopened after a{} stop: {} items recovered, {} dropped, in {:?}",
            path.display(),
            if r.was_clean { " clean" } else { "n unclean" },
            r.items_recovered,
            r.items_dropped,
            started.elapsed()
        );
    } else {
        log::info!("store {}: created ({store_bytes} bytes)", path.display());
    }
    Ok(store)
}

/// STATUS and WATCHDOG notifications to systemd from the main thread.
///
/// `WATCHDOG=1` goes out only when every worker's loop has turned since the
/// last check (a worker turns at least once per tick even when idle), so a
/// wedged worker stops the pings and systemd restarts the service.
struct Watchdog {
    heartbeats: Vec<Arc<crossbeam_utils::CachePadded<AtomicU64>>>,
    last: Vec<u64>,
    metrics: Arc<Metrics>,
    /// Half of `WatchdogSec=`, or the status period without a watchdog.
    interval: Duration,
    enabled: bool,
    last_requests: u64,
    last_at: Instant,
}

/// How often STATUS= is refreshed when systemd asks for no watchdog.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(5);

impl Watchdog {
    fn new(
        heartbeats: Vec<Arc<crossbeam_utils::CachePadded<AtomicU64>>>,
        metrics: Arc<Metrics>,
    ) -> Watchdog {
        let mut usec = 0;
        let enabled = sd_notify::watchdog_enabled(false, &mut usec);
        let interval = if enabled {
            Duration::from_micros(usec / 2).max(Duration::from_millis(100))
        } else {
            STATUS_INTERVAL
        };
        let last = vec![0; heartbeats.len()];
        Watchdog {
            heartbeats,
            last,
            metrics,
            interval,
            enabled,
            last_requests: 0,
            last_at: Instant::now(),
        }
    }

    fn check(&mut self) {
        let mut stalled = None;
        for (i, hb) in self.heartbeats.iter().enumerate() {
            // Relaxed: see the worker's store.
            let now = hb.load(Ordering::Relaxed);
            if now == self.last[i] {
                stalled = Some(i);
            }
            self.last[i] = now;
        }
        let requests = self.metrics.total(Counter::Requests);
        let hits = self.metrics.total(Counter::Hits);
        let elapsed = self.last_at.elapsed().as_secs_f64().max(1e-3);
        let rate = (requests - self.last_requests) as f64 / elapsed;
        self.last_requests = requests;
        self.last_at = Instant::now();
        let ratio = if requests == 0 {
            0.0
        } else {
            hits as f64 * 100.0 / requests as f64
        };
        let status = format!("{rate:.0} req/s, hit ratio {ratio:.1}% since start");
        let mut states = vec![sd_notify::NotifyState::Status(&status)];
        match stalled {
            Some(i) => log::error!(
                "worker {i} made no progress for {:?}: withholding the systemd watchdog ping",
                self.interval
            ),
            None if self.enabled => states.push(sd_notify::NotifyState::Watchdog),
            None => {}
        }
        let _ = sd_notify::notify(false, &states);
    }
}

/// `ringcache serve`: start everything, run until SIGTERM/SIGINT, drain, return.
pub fn serve(config: Config) -> Result<(), String> {
    // Before any thread exists, so that every thread inherits the mask and
    // only the main thread's sigwait sees shutdown signals.
    crate::sys::block_signals().map_err(|e| format!("cannot block signals: {e}"))?;

    let origin = match &config.origin {
        Some(o) => OriginTarget {
            addr: o.addr,
            authority: o.authority.clone(),
        },
        None => {
            let demo = crate::demo_origin::spawn(
                "127.0.0.1:0".parse().expect("literal address"),
                DEMO_ORIGIN_THREADS,
            )
            .map_err(|e| format!("cannot start the built-in demo origin: {e}"))?;
            log::info!(
                "no --origin given: started the built-in demo origin on http://{} (try GET /api/items/1)",
                demo.addr()
            );
            OriginTarget {
                addr: demo.addr(),
                authority: demo.addr().to_string(),
            }
        }
    };
    let backend = choose_backend(config.io)?;
    match crate::sys::raise_nofile_limit() {
        Ok(n) => {
            let wanted = config.workers as u64
                * (config.limits.connections_max + config.limits.origin_connections_max) as u64;
            if n < wanted {
                log::warn!(
                    "open files limited to {n}, below workers × (connections_max + origin_connections_max) = {wanted}; raise LimitNOFILE (systemd) or ulimit -n"
                );
            }
        }
        Err(e) => log::warn!("cannot read or raise the open files limit: {e}"),
    }

    let mut listeners = Vec::with_capacity(config.workers);
    let mut listen_addr = config.listen;
    for i in 0..config.workers {
        let fd = crate::sys::reuseport_listener(&listen_addr)
            .map_err(|e| format!("listen {listen_addr}: {e}"))?;
        if i == 0 {
            listen_addr = crate::sys::local_addr(fd).map_err(|e| format!("listen: {e}"))?;
        }
        listeners.push(fd);
    }
    let admin =
        TcpListener::bind(config.admin).map_err(|e| format!("admin {}: {e}", config.admin))?;
    let admin_addr = admin.local_addr().map_err(|e| format!("admin: {e}"))?;

    let store = Arc::new(open_store(&config)?);
    let metrics = Arc::new(Metrics::new(config.workers));
    let shutdown = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicBool::new(false));
    let draining = Arc::new(AtomicBool::new(false));
    let admin_reader = store
        .reader()
        .ok_or("the store has no reader slot left for the admin thread")?;
    let invalidator = Arc::new(crate::invalidate::Invalidator::new(
        config.invalidation.clone(),
        config.limits.bans_max,
        Arc::clone(&store),
        admin_reader,
    ));
    crate::admin::spawn(
        admin,
        crate::admin::AdminState {
            metrics: Arc::clone(&metrics),
            invalidator: Arc::clone(&invalidator),
            body_bytes_max: config.limits.admin_body_bytes_max,
            store: Arc::clone(&store),
            ready: Arc::clone(&ready),
            draining: Arc::clone(&draining),
        },
    )
    .map_err(|e| format!("cannot start the admin thread: {e}"))?;

    let heartbeats: Vec<_> = (0..config.workers)
        .map(|_| Arc::new(crossbeam_utils::CachePadded::new(AtomicU64::new(0))))
        .collect();
    let (leases, wakes) = Leases::new(config.workers, config.limits.coalesce_wait_timeout)
        .map_err(|e| format!("cannot create the workers' wake sockets: {e}"))?;
    let leases = Arc::new(leases);
    let mut wakes = wakes.into_iter();
    let (ready_tx, ready_rx) = mpsc::sync_channel(config.workers);
    let mut handles = Vec::with_capacity(config.workers);
    for (index, listener) in listeners.into_iter().enumerate() {
        let spec = WorkerSpec {
            index,
            listener,
            backend,
            limits: config.limits,
            origin: origin.clone(),
            store: Arc::clone(&store),
            metrics: Arc::clone(&metrics),
            shutdown: Arc::clone(&shutdown),
            heartbeat: Arc::clone(&heartbeats[index]),
            leases: Arc::clone(&leases),
            invalidator: Arc::clone(&invalidator),
            wake: wakes.next().expect("one wake socket per worker"),
            ready: ready_tx.clone(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("ringcache-w{index}"))
            .spawn(move || worker::run(spec))
            .map_err(|e| format!("cannot start worker {index}: {e}"))?;
        handles.push(handle);
    }
    drop(ready_tx);
    let deadline = Instant::now() + WORKERS_READY_TIMEOUT;
    let mut cpus = Vec::with_capacity(config.workers);
    for _ in 0..config.workers {
        let left = deadline.saturating_duration_since(Instant::now());
        match ready_rx.recv_timeout(left) {
            Ok(Ok(cpu)) => cpus.push(cpu),
            Ok(Err(why)) => return Err(why),
            Err(_) => return Err("workers did not start in time".to_string()),
        }
    }
    // Release pairs with the Acquire loads in admin.
    ready.store(true, Ordering::Release);
    let pinned = if cpus.iter().all(Option::is_some) {
        "pinned"
    } else {
        "not pinned"
    };
    log::info!(
        "ready: listen={listen_addr} admin={admin_addr} origin=http://{} workers={} io={} memory={} ({pinned})",
        origin.authority,
        config.workers,
        backend.name(),
        config.memory_bytes
    );

    // systemd (Type=notify): ready only now that every worker accepts and
    // the store is open. Outside systemd NOTIFY_SOCKET is unset: a no-op.
    let status = format!(
        "serving on {listen_addr}, {} workers, io={}",
        config.workers,
        backend.name()
    );
    if let Err(e) = sd_notify::notify(
        false,
        &[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&status),
        ],
    ) {
        log::warn!("systemd notify (READY=1) failed: {e}");
    }

    let mut watchdog = Watchdog::new(heartbeats, Arc::clone(&metrics));
    loop {
        let Some(sig) = crate::sys::wait_signal(watchdog.interval) else {
            watchdog.check();
            continue;
        };
        if sig == libc::SIGHUP {
            log::info!("SIGHUP: nothing to reload in this version; send SIGTERM to restart");
            continue;
        }
        log::info!(
            "{}: draining (no new connections, in-flight requests get {:?})",
            crate::sys::signal_name(sig),
            config.limits.shutdown_grace
        );
        break;
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    // Release pairs with the Acquire loads in the workers and admin.
    draining.store(true, Ordering::Release);
    shutdown.store(true, Ordering::Release);
    for h in handles {
        let _ = h.join();
    }
    if let Some(path) = &config.store_path {
        match store.close() {
            Ok(()) => log::info!("store {}: flushed and marked clean", path.display()),
            Err(e) => log::error!(
                "store {}: flush failed, the next start recovers by scan: {e}",
                path.display()
            ),
        }
    }
    log::info!("stopped");
    Ok(())
}
