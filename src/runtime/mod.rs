//! Thread-per-core runtime: one pinned worker per core, each with its own
//! I/O backend, and either its own listening socket (SO_REUSEPORT) or the
//! sockets passed by the service manager, shared by all (`activation`).
//!
//! The main thread owns the listening sockets, starts the workers, then
//! waits for signals: SIGTERM/SIGINT drain and stop, SIGHUP reloads the
//! configuration file (`reload`). Between signals it feeds the systemd
//! watchdog.

pub mod activation;

/// Start the invalidation bus: every other node's invalidation is applied
/// here as if it came to this node's admin API; lost entries drop the whole
/// cache (an invalidation of everything).
fn start_bus(
    cfg: crate::config::BusConfig,
    invalidator: &Arc<crate::invalidate::Invalidator>,
    metrics: &Metrics,
) -> Result<crate::bus::Bus, String> {
    let (apply_inv, drop_inv) = (Arc::clone(invalidator), Arc::clone(invalidator));
    let bus = crate::bus::Bus::start(
        cfg,
        move |body| match apply_inv.apply_json(body) {
            Ok(out) => Ok(out.invalidated),
            Err(crate::invalidate::Refusal::Invalid(m)) => Err(m),
            Err(crate::invalidate::Refusal::BansFull) => Err("limits.bans_max reached".into()),
        },
        move || {
            let all = crate::invalidate::InvalidationRequest {
                all: true,
                ..Default::default()
            };
            if let Err(e) = drop_inv.apply(&all) {
                log::error!("bus: dropping the whole cache failed: {e:?}");
            }
        },
    )?;
    metrics.attach_bus(bus.metrics());
    log::info!("bus: node {} on the invalidation stream", bus.node());
    Ok(bus)
}

/// Before the workers start (connections wait in the listen backlog),
/// apply what the stream received while this node was down, so that a warm
/// store never answers with an object purged meanwhile. Bounded: with Redis
/// unreachable the node serves after `timeout`, and the missed entries are
/// applied once Redis answers.
fn catch_up_bus(bus: &crate::bus::Bus, timeout: std::time::Duration) {
    log::info!("bus: applying what the stream holds past this node's position before serving");
    if bus.wait_caught_up(timeout) {
        log::info!("bus: caught up with the stream");
    } else {
        log::warn!(
            "bus: not caught up with the stream after {timeout:?} (bus.catch_up_timeout): serving anyway; stored objects purged meanwhile may be served until redis answers"
        );
    }
}

#[cfg(test)]
mod conformance;
pub mod epoll;
pub mod io;
pub mod reload;
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
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::config::{Config, IoMode, ServeArgs};
use crate::metrics::{Counter, Metrics};
use crate::proxy::{Leases, OriginTarget};
use crate::store::layout::LayoutError;
use crate::store::{OpenError, Options as StoreOptions, SharedStore};
use reload::Reload;
use worker::{Backend, WorkerSpec};

/// Time every worker gets to start accepting.
pub const WORKERS_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Threads of the in-process demo origin.
pub const DEMO_ORIGIN_THREADS: usize = 1;
/// Time the workers get to pick up reloaded limits before the reload is
/// reported (a longer wait means a stalled worker: the watchdog says so).
pub const RELOAD_PICKUP_TIMEOUT: Duration = Duration::from_secs(2);

pub use crate::config::FAULT_STALL_WORKER_ENV;

#[cfg(debug_assertions)]
fn fault_stall_worker() -> Option<usize> {
    let value = std::env::var(FAULT_STALL_WORKER_ENV).ok()?;
    match value.trim().parse() {
        Ok(index) => {
            log::warn!(
                "fault injection ({FAULT_STALL_WORKER_ENV}={index}, debug build): worker {index} stops turning after the first closed connection"
            );
            Some(index)
        }
        Err(_) => {
            log::warn!("{FAULT_STALL_WORKER_ENV}={value:?} is not a worker index; ignored");
            None
        }
    }
}

#[cfg(not(debug_assertions))]
fn fault_stall_worker() -> Option<usize> {
    None
}

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

/// The store file's invalidation journal and what it held at open.
type OpenedJournal = Option<(crate::store::journal::Journal, crate::store::journal::Scan)>;

/// Open (or create) the store file with its invalidation journal, or map
/// anonymous memory; log what a reopened file held.
fn open_store(config: &Config) -> Result<(SharedStore, OpenedJournal), String> {
    let options = StoreOptions {
        // One reader per worker, and one for the admin thread's soft purges.
        readers_max: config.workers + 1,
        budget_bytes_per_slot: usize::try_from(config.memory_per_index_slot).unwrap_or(usize::MAX),
        ..StoreOptions::default()
    };
    // The tag index's bytes are reserved out of --memory.
    let store_bytes = config.store_bytes();
    let started = Instant::now();
    let Some(path) = &config.store_path else {
        return SharedStore::anonymous_with(store_bytes, options)
            .map(|s| (s, None))
            .map_err(|e| format!("store (anonymous, {store_bytes} bytes): {e}"));
    };
    let journal =
        crate::invalidate::durable::geometry(config.limits.bans_max, &config.invalidation);
    let opened = if config.store_reset {
        SharedStore::open_reset_journaled(path, store_bytes, options, journal)
    } else {
        SharedStore::open_journaled(path, store_bytes, options, journal)
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
    let journal = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .and_then(|file| crate::store::journal::Journal::open(&file, store.layout()))
        .map_err(|e| format!("store {}: invalidation journal: {e}", path.display()))?;
    Ok((store, Some(journal)))
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
    /// Half of `WatchdogSec=` capped at [`STATUS_INTERVAL`], or that
    /// period without a watchdog.
    interval: Duration,
    enabled: bool,
    last_requests: u64,
    last_at: Instant,
    /// A worker was found stalled at the last check.
    stalled: bool,
}

/// How often STATUS= is refreshed at least (and the watchdog checked).
pub const STATUS_INTERVAL: Duration = Duration::from_secs(5);

impl Watchdog {
    fn new(
        heartbeats: Vec<Arc<crossbeam_utils::CachePadded<AtomicU64>>>,
        metrics: Arc<Metrics>,
    ) -> Watchdog {
        let mut usec = 0;
        let enabled = sd_notify::watchdog_enabled(false, &mut usec);
        // Half the watchdog time, and often enough that STATUS= stays fresh.
        let interval = if enabled {
            Duration::from_micros(usec / 2).clamp(Duration::from_millis(100), STATUS_INTERVAL)
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
            stalled: false,
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
            None if self.stalled => {
                log::warn!("every worker makes progress again");
                if self.enabled {
                    states.push(sd_notify::NotifyState::Watchdog);
                }
            }
            None if self.enabled => states.push(sd_notify::NotifyState::Watchdog),
            None => {}
        }
        self.stalled = stalled.is_some();
        let _ = sd_notify::notify(false, &states);
    }
}

/// The traffic listening sockets and which worker accepts on which.
struct Listeners {
    /// Owned here until every worker has stopped.
    owned: Vec<OwnedFd>,
    /// Every worker accepts on every socket (socket activation), or worker
    /// `i` on socket `i` alone (one SO_REUSEPORT socket each).
    shared: bool,
    addr: std::net::SocketAddr,
}

impl Listeners {
    fn for_worker(&self, index: usize) -> Vec<std::os::fd::RawFd> {
        if self.shared {
            self.owned.iter().map(AsRawFd::as_raw_fd).collect()
        } else {
            vec![self.owned[index].as_raw_fd()]
        }
    }
}

/// Take the inherited traffic sockets, or bind one SO_REUSEPORT socket per worker.
fn traffic_listeners(config: &Config, inherited: Vec<OwnedFd>) -> Result<Listeners, String> {
    if !inherited.is_empty() {
        let addr = crate::sys::local_addr(inherited[0].as_raw_fd())
            .map_err(|e| format!("inherited listener: {e}"))?;
        log::info!(
            "accepting on {} inherited socket(s) from every worker; listen = {} is not used",
            inherited.len(),
            config.listen
        );
        return Ok(Listeners {
            owned: inherited,
            shared: true,
            addr,
        });
    }
    let mut owned = Vec::with_capacity(config.workers);
    let mut addr = config.listen;
    for i in 0..config.workers {
        let fd =
            crate::sys::reuseport_listener(&addr).map_err(|e| format!("listen {addr}: {e}"))?;
        // SAFETY: `reuseport_listener` returned a fresh fd that nothing else owns.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        if i == 0 {
            addr = crate::sys::local_addr(fd.as_raw_fd()).map_err(|e| format!("listen: {e}"))?;
        }
        owned.push(fd);
    }
    Ok(Listeners {
        owned,
        shared: false,
        addr,
    })
}

/// SIGHUP: reread the file with the same flags, apply what can change now,
/// report the rest. A file that fails to load or validate changes nothing.
fn reload_config(
    running: &mut Config,
    args: &ServeArgs,
    reload: &Reload,
    invalidator: &crate::invalidate::Invalidator,
) {
    let reloading = [
        sd_notify::NotifyState::Reloading,
        sd_notify::NotifyState::monotonic_usec_now()
            .unwrap_or(sd_notify::NotifyState::MonotonicUsec(0)),
    ];
    let _ = sd_notify::notify(false, &reloading);
    let outcome = Config::load(args).and_then(|new| {
        let plan = reload::plan(running, &new);
        plan.config.validate()?;
        Ok(plan)
    });
    let status = match outcome {
        Err(e) => {
            log::error!("reload refused, the running configuration stays: {e}");
            "reload refused; see the log".to_string()
        }
        Ok(plan) => {
            crate::logging::apply_level(plan.config.log_level);
            if plan.access_changed(running) {
                invalidator.set_access(crate::invalidate::InvalidationAccess {
                    admin_token: plan.config.invalidation.admin_token.clone(),
                    purge_allow: plan.config.invalidation.purge_allow.clone(),
                    hmac_key: plan.config.invalidation.admin_hmac_key.clone(),
                    hmac_window: plan.config.invalidation.admin_hmac_window,
                });
            }
            if plan.cache_changed(running) {
                invalidator.set_key_rules(&plan.config.cache);
            }
            if plan.limits_changed(running) || plan.cache_changed(running) {
                let generation = reload.publish(plan.config.limits, plan.config.cache.clone());
                if !reload.wait_seen(generation, RELOAD_PICKUP_TIMEOUT) {
                    log::warn!(
                        "reload: not every worker picked up the new limits and [cache] within {RELOAD_PICKUP_TIMEOUT:?}; they will at their next tick"
                    );
                }
            }
            log::info!("{}", plan.summary());
            *running = plan.config;
            "reloaded".to_string()
        }
    };
    let _ = sd_notify::notify(
        false,
        &[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&status),
        ],
    );
}

/// `ringcache serve`: start everything, run until SIGTERM/SIGINT, drain,
/// return. `args` are the flags the configuration was loaded with; SIGHUP
/// reloads the file under the same flags.
pub fn serve(config: Config, args: &ServeArgs) -> Result<(), String> {
    let mut config = config;
    // Before any thread exists: the environment is changed (LISTEN_*
    // variables removed), and every thread inherits the signal mask, so
    // that only the main thread's sigwait sees shutdown signals.
    let inherited = activation::take()?;
    crate::sys::block_signals().map_err(|e| format!("cannot block signals: {e}"))?;
    crate::logging::apply_level(config.log_level);
    let (inherited_traffic, inherited_admin) = match inherited {
        Some(i) => (i.traffic, i.admin),
        None => (Vec::new(), None),
    };

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

    let listeners = traffic_listeners(&config, inherited_traffic)?;
    let listen_addr = listeners.addr;
    let admin = match inherited_admin {
        Some(fd) => TcpListener::from(fd),
        None => {
            TcpListener::bind(config.admin).map_err(|e| format!("admin {}: {e}", config.admin))?
        }
    };
    let admin_addr = admin.local_addr().map_err(|e| format!("admin: {e}"))?;

    let (store, journal) = open_store(&config)?;
    let store = Arc::new(store);
    let metrics = Arc::new(Metrics::new(config.workers));
    let shutdown = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicBool::new(false));
    let draining = Arc::new(AtomicBool::new(false));
    let admin_reader = store
        .reader()
        .ok_or("the store has no reader slot left for the admin thread")?;
    let mut invalidator = crate::invalidate::Invalidator::new(
        config.invalidation.clone(),
        &config.cache,
        config.limits.bans_max,
        Arc::clone(&store),
        admin_reader,
    );
    // Bans from before the restart, before the admin thread and the
    // workers start (see `invalidate::durable`).
    if let Some((journal, scan)) = journal {
        let (inv, r) = invalidator.with_journal(journal, scan);
        invalidator = inv;
        log::info!(
            "invalidation journal: {} ban(s) replayed, {} record(s) dropped{}",
            r.bans,
            r.dropped,
            if r.dropped_all {
                "; every stored object invalidated"
            } else {
                ""
            }
        );
    }
    let invalidator = Arc::new(invalidator);
    let bus = match config.bus.clone() {
        Some(bc) => Some(Arc::new(start_bus(bc, &invalidator, &metrics)?)),
        None => None,
    };
    let bus_handle = bus.clone();
    crate::admin::spawn(
        admin,
        crate::admin::AdminState {
            metrics: Arc::clone(&metrics),
            invalidator: Arc::clone(&invalidator),
            body_bytes_max: config.limits.admin_body_bytes_max,
            store: Arc::clone(&store),
            ready: Arc::clone(&ready),
            draining: Arc::clone(&draining),
            bus,
        },
    )
    .map_err(|e| format!("cannot start the admin thread: {e}"))?;
    if let (Some(bus), Some(bc)) = (&bus_handle, &config.bus) {
        catch_up_bus(bus, bc.catch_up_timeout);
    }

    let heartbeats: Vec<_> = (0..config.workers)
        .map(|_| Arc::new(crossbeam_utils::CachePadded::new(AtomicU64::new(0))))
        .collect();
    let (leases, wakes) = Leases::with_origin_cap(
        config.workers,
        config.limits.coalesce_wait_timeout,
        config.limits.origin_connections_total_max,
    )
    .map_err(|e| format!("cannot create the workers' wake sockets: {e}"))?;
    let leases = Arc::new(leases);
    let reload = Arc::new(Reload::new(
        config.limits,
        config.cache.clone(),
        config.workers,
    ));
    let stall_worker = fault_stall_worker();
    let mut wakes = wakes.into_iter();
    let (access_log, mut worker_logs) =
        match crate::access_log::AccessLog::start(&config.access_log, config.workers, &metrics)? {
            Some((log, workers)) => (Some(log), workers.into_iter().map(Some).collect()),
            None => (None, Vec::new()),
        };
    let mut worker_logs = worker_logs.drain(..);
    let (ready_tx, ready_rx) = mpsc::sync_channel(config.workers);
    let mut handles = Vec::with_capacity(config.workers);
    for (index, heartbeat) in heartbeats.iter().enumerate() {
        let spec = WorkerSpec {
            index,
            listeners: listeners.for_worker(index),
            backend,
            limits: config.limits,
            cache: config.cache.clone(),
            origin: origin.clone(),
            store: Arc::clone(&store),
            metrics: Arc::clone(&metrics),
            shutdown: Arc::clone(&shutdown),
            heartbeat: Arc::clone(heartbeat),
            leases: Arc::clone(&leases),
            invalidator: Arc::clone(&invalidator),
            wake: wakes.next().expect("one wake socket per worker"),
            ready: ready_tx.clone(),
            reload: Arc::clone(&reload),
            stall: stall_worker == Some(index),
            access_log: worker_logs.next().flatten(),
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
        "ready: listen={listen_addr} admin={admin_addr} origin=http://{} workers={} io={} memory={} ({pinned}{})",
        origin.authority,
        config.workers,
        backend.name(),
        config.memory_bytes,
        if listeners.shared { ", inherited listener" } else { "" }
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
    // The checks keep their own clock: a signal (a reload, say) ends the
    // wait early and must not push the next ping back, or a few SIGHUPs
    // inside one interval would starve systemd's watchdog.
    let mut next_check = Instant::now() + watchdog.interval;
    loop {
        let now = Instant::now();
        if now >= next_check {
            watchdog.check();
            next_check = now + watchdog.interval;
        }
        let Some(sig) = crate::sys::wait_signal(next_check.saturating_duration_since(now)) else {
            continue;
        };
        if sig == libc::SIGHUP {
            reload_config(&mut config, args, &reload, &invalidator);
            continue;
        }
        if sig == libc::SIGUSR1 {
            // logrotate moved the file: the writer reopens the path.
            match &access_log {
                Some(log) => log.reopen(),
                None => log::info!("SIGUSR1: no access log to reopen"),
            }
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
    // Applying invalidations until no worker serves any more, then leave
    // the cluster: other nodes' "wait": "all" stops counting this one.
    if let Some(bus) = &bus_handle {
        bus.close();
        log::info!("bus: left the cluster");
    }
    // Every worker has handed on its last lines: write them, then stop.
    if let Some(log) = access_log {
        log.close();
    }
    // Closes this process's copies only: a socket held by the service
    // manager keeps queueing connections for the next process.
    drop(listeners);
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
