//! One worker: a pinned thread, its listener, its I/O backend and its proxy.
//!
//! A loop turn: wait for completions (at most one tick), hand each to the
//! proxy, let the proxy queue its sends, hand every queued operation to the
//! backend, which submits them all with the next wait. Timeouts are checked
//! once per tick by a scan of the worker's sockets; reloaded limits and
//! `[cache]` (`runtime::reload`) are picked up at the same tick.
//!
//! Listeners: the worker accepts on every fd in `WorkerSpec::listeners` and
//! never closes them (`runtime::serve` owns them: with socket activation
//! all workers share the same ones). Drain: remove the listeners, then keep
//! turning until every connection is answered and closed and no accept can
//! still deliver one, or until `shutdown_grace` is over.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::Instant;

use crate::config::Limits;
use crate::metrics::{Counter, Metrics};
use crate::proxy::{slots_max, Leases, Op, OriginTarget, Proxy, ProxyConfig, TICK_INTERVAL};
use crate::store::SharedStore;

use super::epoll::EpollIo;
use super::io::Io;
use super::reload::Reload;
use super::uring::UringIo;
use super::IoLimits;

/// Which backend a worker runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Uring,
    Epoll,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Uring => "uring",
            Backend::Epoll => "epoll",
        }
    }
}

/// Everything a worker thread is started with.
pub struct WorkerSpec {
    pub index: usize,
    /// Listening sockets to accept on, owned by `runtime::serve`.
    pub listeners: Vec<RawFd>,
    pub backend: Backend,
    pub limits: Limits,
    pub cache: crate::config::CacheConfig,
    pub origin: OriginTarget,
    pub store: Arc<SharedStore>,
    pub metrics: Arc<Metrics>,
    pub shutdown: Arc<AtomicBool>,
    /// Loop turns of this worker, read by the watchdog.
    pub heartbeat: Arc<crossbeam_utils::CachePadded<AtomicU64>>,
    /// The fill leases shared by every worker, and this worker's wake socket.
    pub leases: Arc<Leases>,
    pub invalidator: Arc<crate::invalidate::Invalidator>,
    pub wake: std::os::unix::net::UnixStream,
    /// `Ok(cpu)` once accepting (the CPU it is pinned to, if any), or why it could not start.
    pub ready: SyncSender<Result<Option<usize>, String>>,
    /// The reloadable limits (SIGHUP), picked up once per tick.
    pub reload: Arc<Reload>,
    /// This worker's end of the access log, when it is on.
    pub access_log: Option<crate::access_log::WorkerLog>,
    /// Test fault (debug builds only, see `runtime::FAULT_STALL_WORKER_ENV`): stop turning
    /// the loop once a client connection has been closed.
    pub stall: bool,
}

/// The backend sizes for a worker with these limits.
pub fn io_limits(limits: &Limits) -> IoLimits {
    IoLimits {
        slots_max: slots_max(limits),
        recv_buffer_bytes: limits.recv_buffer_bytes,
        recv_buffers_count: limits.recv_buffers_count,
        ring_entries: limits.ring_entries,
    }
}

/// Thread body: pin, build the backend, run until drained.
pub fn run(spec: WorkerSpec) {
    let cpu = crate::sys::pin_to_core(spec.index);
    let io_limits = io_limits(&spec.limits);
    match spec.backend {
        Backend::Uring => match UringIo::new(&io_limits) {
            Ok(io) => event_loop(io, spec, cpu),
            Err(e) => {
                let _ = spec.ready.send(Err(format!(
                    "worker {}: cannot set up io_uring: {e} (check `ulimit -l` / LimitMEMLOCK, or use --io epoll)",
                    spec.index
                )));
            }
        },
        Backend::Epoll => match EpollIo::new(&io_limits) {
            Ok(io) => event_loop(io, spec, cpu),
            Err(e) => {
                let _ = spec.ready.send(Err(format!(
                    "worker {}: cannot set up epoll: {e}",
                    spec.index
                )));
            }
        },
    }
}

fn event_loop<I: Io>(mut io: I, spec: WorkerSpec, cpu: Option<usize>) {
    for &fd in &spec.listeners {
        if let Err(e) = io.add_listener(fd) {
            let _ = spec.ready.send(Err(format!(
                "worker {}: cannot accept on listener fd {fd}: {e}",
                spec.index
            )));
            return;
        }
    }
    let mut grace = spec.limits.shutdown_grace;
    let mut reload_seen = 0;
    let Some(reader) = spec.store.reader() else {
        let _ = spec.ready.send(Err(format!(
            "worker {}: the store has no reader slot left",
            spec.index
        )));
        return;
    };
    let mut proxy = Proxy::new(
        ProxyConfig {
            worker_index: spec.index,
            limits: spec.limits,
            cache: spec.cache,
            origin: spec.origin,
            leases: spec.leases,
            invalidator: spec.invalidator,
            wake: spec.wake,
            access_log: spec.access_log,
        },
        reader,
        Arc::clone(&spec.metrics),
    );
    // The proxy's first operation (the receive on its wake socket) goes out
    // with the first wait.
    submit(&mut io, &mut proxy.ops);
    let _ = spec.ready.send(Ok(cpu));
    let mut next_tick = Instant::now() + TICK_INTERVAL;
    let mut draining_since: Option<Instant> = None;
    let mut turns: u64 = 0;
    loop {
        turns += 1;
        // Relaxed: a progress counter; the watchdog only needs to see it move.
        spec.heartbeat.store(turns, Ordering::Relaxed);
        if let Err(e) = io.poll(TICK_INTERVAL, &mut |event| proxy.handle(event)) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                log::error!("worker {}: {} poll failed: {e}", spec.index, io.name());
                break;
            }
        }
        let now = Instant::now();
        proxy.set_now(now);
        if now >= next_tick {
            if let Some((limits, cache)) = spec.reload.pick_up(spec.index, &mut reload_seen) {
                grace = limits.shutdown_grace;
                proxy.set_limits(limits);
                proxy.set_cache(&cache);
            }
            proxy.tick(now);
            proxy.access_log_tick(now);
            next_tick = now + TICK_INTERVAL;
        }
        // Acquire pairs with the Release store in runtime::serve.
        if draining_since.is_none() && spec.shutdown.load(Ordering::Acquire) {
            for &fd in &spec.listeners {
                io.remove_listener(fd);
            }
            proxy.begin_drain();
            log::info!(
                "worker {}: stopped accepting; draining {} connections",
                spec.index,
                proxy.clients_count()
            );
            draining_since = Some(now);
        }
        proxy.flush();
        submit(&mut io, &mut proxy.ops);
        if spec.stall && spec.metrics.total(Counter::ConnectionsClosed) > 0 {
            stall(spec.index, &spec.shutdown);
            break;
        }
        if let Some(since) = draining_since {
            if proxy.is_drained() && !io.accepting() {
                break;
            }
            if now.duration_since(since) >= grace {
                log::warn!(
                    "worker {}: grace time over with {} connections open; closing them",
                    spec.index,
                    proxy.clients_count()
                );
                break;
            }
        }
    }
    // Every line this worker formatted goes to the writer before it stops.
    proxy.access_log_flush();
}

/// The test fault: the loop stops turning (no heartbeat, no completions)
/// until shutdown, so that the watchdog sees a wedged worker.
fn stall(index: usize, shutdown: &AtomicBool) {
    log::warn!("worker {index}: fault injection: loop stopped (RINGCACHE_FAULT_STALL_WORKER)");
    // Acquire pairs with the Release store in runtime::serve.
    while !shutdown.load(Ordering::Acquire) {
        std::thread::sleep(TICK_INTERVAL);
    }
}

/// Hand the proxy's queued operations to the backend, in order.
fn submit<I: Io>(io: &mut I, ops: &mut Vec<Op>) {
    for op in ops.drain(..) {
        match op {
            Op::StartRecv { token, fd } => io.start_recv(token, fd),
            Op::Send {
                token,
                fd,
                ptr,
                len,
            } => {
                // SAFETY: the proxy lends `ptr..ptr+len` from a buffer it does
                // not touch or free until the `Sent` or `Closed` event of this
                // token (`Client::inflight`, `OriginConn::req_inflight`), and a
                // socket's slot, which owns that buffer, is freed only on
                // `Closed`.
                unsafe { io.send(token, fd, ptr, len) }
            }
            Op::Connect { token, fd, addr } => io.connect(token, fd, addr),
            Op::Close { token, fd } => io.close(token, fd),
        }
    }
}
