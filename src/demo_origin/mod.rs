//! The built-in demo origin: a small, fast HTTP/1.1 server that ringcache
//! benchmarks and tests put behind the proxy.
//!
//! `ringcache origin --listen ADDR` runs it in the foreground; `ringcache
//! serve` without `--origin` starts it in-process. It sits on the miss path
//! of every benchmark, so each thread is a non-blocking mio event loop and a
//! delayed answer is a timer, never a sleeping thread.
//!
//! Routes:
//!
//! * `GET|HEAD /api/items/{id}`: a deterministic JSON body of exactly
//!   `size` bytes with `Date`, `ETag`, `Last-Modified`, `Content-Type` and
//!   `Cache-Control`; `If-None-Match` (weak comparison, `*`) gives 304.
//!   Query knobs: `size=BYTES` (256), `max_age=SECS` (60), `cc=VALUE`
//!   (percent-decoded, replaces Cache-Control; empty: none), `delay_ms=MS`,
//!   `status=CODE`, `chunked=1`, `close=1` (body delimited by closing),
//!   `tags=a,b` (sent as `Surrogate-Key: a b`, for tag purges).
//!   Unknown parameters are ignored; a malformed knob gives 400.
//! * `POST|PUT|DELETE|PATCH /api/items/{id}`: `{"ok":true,"method":".."}`,
//!   `Cache-Control: no-store`.
//! * `GET /__origin/stats`: `{"requests": N, "by_path": {..}}`, counting
//!   every request except `/__origin/` ones, when its head is parsed.
//! * `POST /__origin/reset`: zeroes the counters.
//! * anything else: 404 JSON (405 for a wrong method on a known path).
//!
//! Connections: keep-alive and pipelining (answers in request order, even
//! when an earlier one is delayed), HTTP/1.0, `Connection: close`, request
//! bodies (Content-Length or chunked) read and discarded. Malformed input
//! gets 400 and the connection closes after a lingering half-close, so the
//! client reads the error before any reset.
//!
//! Threads share one listening socket; each accepts a bounded batch per turn
//! so new connections spread over the threads.

mod request;
mod respond;
mod stats;
#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use request::{parse_head, ChunkedSkip, Framing, HeadError, HEADERS_MAX, HEAD_BYTES_MAX};
use respond::Ctx;
use stats::Stats;

pub use request::{
    BODY_BYTES_MAX, HEADERS_MAX as REQUEST_HEADERS_MAX, HEAD_BYTES_MAX as REQUEST_HEAD_BYTES_MAX,
};
pub use respond::{DELAY_MS_MAX, ITEM_BYTES_DEFAULT, ITEM_BYTES_MAX, MAX_AGE_DEFAULT};
pub use stats::{OTHER_KEY, STATS_PATHS_MAX, STATS_PATH_BYTES_MAX};

/// Connections one event-loop thread holds; beyond, it stops accepting
/// until one closes (others stay in the listen backlog).
pub const CONNS_PER_THREAD_MAX: usize = 16_384;
/// Responses of one connection waiting behind a delayed one; beyond, the
/// connection's further requests are not parsed until the queue drains.
pub const PIPELINE_QUEUED_MAX: usize = 256;
/// Unsent response bytes of one connection beyond which its further
/// requests are not parsed (TCP flow control pushes back on the client).
pub const WRITE_BUF_HIGH_BYTES: usize = 1 << 20;
/// Write-buffer capacity a connection keeps once it has sent everything.
const WRITE_BUF_KEEP_BYTES: usize = 64 * 1024;
/// Initial read buffer; it grows up to [`READ_BUF_MAX_BYTES`] for large heads.
const READ_BUF_INITIAL_BYTES: usize = 4096;
/// Largest read buffer: one maximal head plus room to detect an oversized one.
const READ_BUF_MAX_BYTES: usize = 2 * HEAD_BYTES_MAX;
/// After answering with `Connection: close`, input is read and discarded for
/// at most this long before the socket closes.
const LINGER: Duration = Duration::from_secs(2);
/// Connections one thread accepts per event-loop turn.
const ACCEPT_BATCH: usize = 16;
/// Readiness events taken per poll.
const EVENTS_CAPACITY: usize = 1024;

const LISTENER: Token = Token(usize::MAX);

/// A running demo origin. Dropping the handle leaves the server running for
/// the life of the process.
pub struct DemoOrigin {
    addr: SocketAddr,
}

impl DemoOrigin {
    /// The address it accepts on (the real port when spawned on port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// The `Last-Modified` of every item: when the first origin of this process
/// started.
fn last_modified() -> &'static str {
    static LAST_MODIFIED: OnceLock<String> = OnceLock::new();
    LAST_MODIFIED.get_or_init(|| httpdate::fmt_http_date(SystemTime::now()))
}

/// Binds `listen` and starts `threads` event-loop threads (at least one);
/// returns once they accept.
pub fn spawn(listen: SocketAddr, threads: usize) -> io::Result<DemoOrigin> {
    let threads = threads.max(1);
    let listener: std::net::TcpListener = TcpListener::bind(listen)?.into();
    let addr = listener.local_addr()?;
    let stats = Arc::new(Stats::new(threads));
    let last_modified = last_modified();
    let (ready_tx, ready_rx) = mpsc::channel();
    for shard in 0..threads {
        let listener = listener.try_clone()?;
        listener.set_nonblocking(true)?;
        let ctx = Ctx::new(Arc::clone(&stats), shard, last_modified);
        let ready_tx = ready_tx.clone();
        std::thread::Builder::new()
            .name(format!("demo-origin-{shard}"))
            .spawn(
                move || match Worker::new(TcpListener::from_std(listener), ctx) {
                    Ok(worker) => {
                        let _ = ready_tx.send(Ok(()));
                        worker.run()
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                },
            )?;
    }
    drop(ready_tx);
    for _ in 0..threads {
        ready_rx
            .recv()
            .map_err(|_| io::Error::other("demo origin thread exited at start"))??;
    }
    Ok(DemoOrigin { addr })
}

/// [`spawn`], then blocks forever.
pub fn run(listen: SocketAddr, threads: usize) -> io::Result<()> {
    let origin = spawn(listen, threads)?;
    log::info!(
        "demo origin listening on http://{} with {threads} thread(s)",
        origin.addr()
    );
    loop {
        std::thread::park();
    }
}

/// How much of the current request body is still to be discarded.
enum BodySkip {
    None,
    Length(u64),
    Chunked(ChunkedSkip),
}

/// A response that must wait for an earlier, delayed one.
struct Deferred {
    /// Not sent before this instant.
    at: Instant,
    what: DeferredKind,
}

enum DeferredKind {
    /// A copy of the request head, parsed and answered again when due, so
    /// `Date` reflects when the answer leaves.
    Request(Vec<u8>),
    /// An error response after which the connection closes.
    Error(u16),
}

struct Conn {
    stream: TcpStream,
    generation: u64,
    rbuf: Vec<u8>,
    /// Unconsumed input is `rbuf[rlo..rhi]`.
    rlo: usize,
    rhi: usize,
    body: BodySkip,
    wbuf: Vec<u8>,
    /// Bytes of `wbuf` already sent.
    wpos: usize,
    deferred: VecDeque<Deferred>,
    /// A response that ends the connection has been queued: parse no more.
    last_queued: bool,
    peer_eof: bool,
    /// Write side shut; input is discarded until EOF or this instant.
    lingering: Option<Instant>,
}

type Timers = BinaryHeap<Reverse<(Instant, usize, u64)>>;

struct Worker {
    poll: Poll,
    listener: TcpListener,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    live: usize,
    generation: u64,
    timers: Timers,
    accept_pending: bool,
    ctx: Ctx,
}

impl Worker {
    fn new(mut listener: TcpListener, ctx: Ctx) -> io::Result<Worker> {
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok(Worker {
            poll,
            listener,
            conns: Vec::new(),
            free: Vec::new(),
            live: 0,
            generation: 0,
            timers: BinaryHeap::new(),
            // Connections may have queued before registration.
            accept_pending: true,
            ctx,
        })
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("demo origin: poll failed: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_pending = true,
                    Token(slot) => self.on_ready(slot),
                }
            }
            if self.accept_pending && self.live < CONNS_PER_THREAD_MAX {
                self.accept();
            }
            self.fire_timers();
        }
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if self.accept_pending && self.live < CONNS_PER_THREAD_MAX {
            return Some(Duration::ZERO);
        }
        self.timers
            .peek()
            .map(|Reverse((at, _, _))| at.saturating_duration_since(Instant::now()))
    }

    fn accept(&mut self) {
        for _ in 0..ACCEPT_BATCH {
            if self.live >= CONNS_PER_THREAD_MAX {
                return;
            }
            match self.listener.accept() {
                Ok((stream, _)) => self.add(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.accept_pending = false;
                    return;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // Out of descriptors or similar: retry on the next
                    // arrival rather than spin.
                    log::warn!("demo origin: accept failed: {e}");
                    self.accept_pending = false;
                    return;
                }
            }
        }
    }

    fn add(&mut self, mut stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let slot = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, Token(slot), interest)
        {
            log::warn!("demo origin: register failed: {e}");
            self.free.push(slot);
            return;
        }
        self.generation += 1;
        self.conns[slot] = Some(Conn {
            stream,
            generation: self.generation,
            rbuf: vec![0; READ_BUF_INITIAL_BYTES],
            rlo: 0,
            rhi: 0,
            body: BodySkip::None,
            wbuf: Vec::new(),
            wpos: 0,
            deferred: VecDeque::new(),
            last_queued: false,
            peer_eof: false,
            lingering: None,
        });
        self.live += 1;
    }

    fn close(&mut self, slot: usize) {
        if let Some(mut conn) = self.conns[slot].take() {
            let _ = self.poll.registry().deregister(&mut conn.stream);
            self.free.push(slot);
            self.live -= 1;
        }
    }

    fn on_ready(&mut self, slot: usize) {
        let Some(Some(conn)) = self.conns.get_mut(slot) else {
            return;
        };
        if !drive(conn, &mut self.ctx, &mut self.timers, slot) {
            self.close(slot);
        }
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(&Reverse((at, slot, generation))) = self.timers.peek() {
            if at > now {
                return;
            }
            self.timers.pop();
            let Some(Some(conn)) = self.conns.get_mut(slot) else {
                continue;
            };
            if conn.generation != generation {
                continue;
            }
            if conn.lingering.is_some_and(|until| until <= now) {
                self.close(slot);
                continue;
            }
            release_due(conn, &mut self.ctx, now);
            if !drive(conn, &mut self.ctx, &mut self.timers, slot) {
                self.close(slot);
            }
        }
    }
}

/// Renders, in order, the deferred responses that are due.
fn release_due(conn: &mut Conn, ctx: &mut Ctx, now: Instant) {
    while conn.deferred.front().is_some_and(|d| d.at <= now) {
        let Some(d) = conn.deferred.pop_front() else {
            break;
        };
        match d.what {
            DeferredKind::Error(status) => respond::respond_error(&mut conn.wbuf, ctx, status),
            DeferredKind::Request(head) => {
                let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
                // The head parsed when it arrived; it parses the same now.
                if let Ok(Some(head)) = parse_head(&head, &mut headers) {
                    let (path, query) = respond::split_target(head.target);
                    let route = respond::route(head.method, path, query);
                    respond::respond(&head, &route, ctx, &mut conn.wbuf);
                }
            }
        }
    }
}

/// Sends what is buffered. `Err` on a broken connection.
fn flush(conn: &mut Conn) -> io::Result<()> {
    while conn.wpos < conn.wbuf.len() {
        match conn.stream.write(&conn.wbuf[conn.wpos..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => conn.wpos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    conn.wbuf.clear();
    conn.wpos = 0;
    if conn.wbuf.capacity() > WRITE_BUF_KEEP_BYTES {
        conn.wbuf = Vec::new();
    }
    Ok(())
}

/// Reads once into the read buffer. `Ok(false)`: nothing to read now.
fn read_some(conn: &mut Conn) -> io::Result<bool> {
    if conn.rlo == conn.rhi {
        conn.rlo = 0;
        conn.rhi = 0;
    }
    if conn.rhi == conn.rbuf.len() {
        if conn.rlo > 0 {
            conn.rbuf.copy_within(conn.rlo..conn.rhi, 0);
            conn.rhi -= conn.rlo;
            conn.rlo = 0;
        } else if conn.rbuf.len() < READ_BUF_MAX_BYTES {
            conn.rbuf
                .resize((conn.rbuf.len() * 2).min(READ_BUF_MAX_BYTES), 0);
        } else {
            // Unreachable: an oversized head is refused before this.
            return Err(io::ErrorKind::OutOfMemory.into());
        }
    }
    loop {
        match conn.stream.read(&mut conn.rbuf[conn.rhi..]) {
            Ok(0) => {
                conn.peer_eof = true;
                return Ok(true);
            }
            Ok(n) => {
                conn.rhi += n;
                return Ok(true);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Discards input of a half-closed connection. `false`: close it now.
fn drain(conn: &mut Conn) -> bool {
    let mut sink = [0u8; 4096];
    loop {
        match conn.stream.read(&mut sink) {
            Ok(0) => return false,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// Moves one connection as far as it can go without blocking: send, parse,
/// answer, read, until the socket would block. `false`: close it now.
fn drive(conn: &mut Conn, ctx: &mut Ctx, timers: &mut Timers, slot: usize) -> bool {
    loop {
        if flush(conn).is_err() {
            return false;
        }
        if conn.lingering.is_some() {
            return drain(conn);
        }
        let unsent = conn.wbuf.len() - conn.wpos;
        let can_parse = !conn.last_queued
            && unsent < WRITE_BUF_HIGH_BYTES
            && conn.deferred.len() < PIPELINE_QUEUED_MAX;
        if can_parse && conn.rhi > conn.rlo {
            let before = (conn.rlo, conn.wbuf.len(), conn.deferred.len());
            process(conn, ctx, timers, slot);
            if before != (conn.rlo, conn.wbuf.len(), conn.deferred.len()) {
                continue;
            }
        }
        let idle = conn.deferred.is_empty() && conn.wpos == conn.wbuf.len();
        if conn.last_queued && idle {
            // Everything is answered: half-close so the client sees EOF
            // after the last byte, and discard input for a while so a reset
            // does not destroy unread response bytes.
            let _ = conn.stream.shutdown(Shutdown::Write);
            let until = Instant::now() + LINGER;
            conn.lingering = Some(until);
            timers.push(Reverse((until, slot, conn.generation)));
            continue;
        }
        if conn.peer_eof {
            // A partial request left at EOF is dropped.
            return !idle;
        }
        if !can_parse {
            // Resumed by a writable event or a timer.
            return true;
        }
        match read_some(conn) {
            Ok(true) => {}
            Ok(false) => return true,
            Err(_) => return false,
        }
    }
}

/// Queues an error response in order; the connection ends after it.
fn queue_error(conn: &mut Conn, ctx: &mut Ctx, error: HeadError) {
    conn.last_queued = true;
    if conn.deferred.is_empty() {
        respond::respond_error(&mut conn.wbuf, ctx, error.status());
    } else {
        conn.deferred.push_back(Deferred {
            at: Instant::now(),
            what: DeferredKind::Error(error.status()),
        });
    }
}

/// Parses and answers the requests buffered on `conn`, discarding their
/// bodies, until input runs out or backpressure applies.
fn process(conn: &mut Conn, ctx: &mut Ctx, timers: &mut Timers, slot: usize) {
    loop {
        if conn.last_queued
            || conn.wbuf.len() - conn.wpos >= WRITE_BUF_HIGH_BYTES
            || conn.deferred.len() >= PIPELINE_QUEUED_MAX
        {
            return;
        }
        let avail = (conn.rhi - conn.rlo) as u64;
        match &mut conn.body {
            BodySkip::None => {}
            BodySkip::Length(left) => {
                let take = (*left).min(avail);
                conn.rlo += take as usize;
                *left -= take;
                if *left > 0 {
                    return;
                }
                conn.body = BodySkip::None;
            }
            BodySkip::Chunked(skip) => match skip.feed(&conn.rbuf[conn.rlo..conn.rhi]) {
                Ok((used, done)) => {
                    conn.rlo += used;
                    if !done {
                        return;
                    }
                    conn.body = BodySkip::None;
                }
                Err(e) => return queue_error(conn, ctx, e),
            },
        }
        if conn.rlo == conn.rhi {
            return;
        }
        let buf = &conn.rbuf[conn.rlo..conn.rhi];
        let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
        let head = match parse_head(buf, &mut headers) {
            Ok(Some(head)) => head,
            Ok(None) if buf.len() > HEAD_BYTES_MAX => {
                return queue_error(conn, ctx, HeadError::TooLarge)
            }
            Ok(None) => return,
            Err(e) => return queue_error(conn, ctx, e),
        };
        let (path, query) = respond::split_target(head.target);
        let route = respond::route(head.method, path, query);
        if !respond::is_control(path) {
            ctx.stats.record(ctx.shard, path);
        }
        let delay = route.delay_ms();
        if delay == 0 && conn.deferred.is_empty() {
            respond::respond(&head, &route, ctx, &mut conn.wbuf);
        } else {
            let at = Instant::now() + Duration::from_millis(delay);
            conn.deferred.push_back(Deferred {
                at,
                what: DeferredKind::Request(buf[..head.len].to_vec()),
            });
            if delay > 0 {
                timers.push(Reverse((at, slot, conn.generation)));
            }
        }
        conn.last_queued = !respond::keeps_alive(&head, &route);
        conn.body = match head.framing {
            Framing::Length(0) => BodySkip::None,
            Framing::Length(n) => BodySkip::Length(n),
            Framing::Chunked => BodySkip::Chunked(ChunkedSkip::new()),
        };
        conn.rlo += head.len;
    }
}
