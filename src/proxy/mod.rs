//! One worker's proxy: client connections, the request state machine, the
//! origin pool. Single-threaded by construction (`!Send` via `Rc`-free
//! ownership: it lives inside its worker thread and is never shared).
//!
//! The proxy never calls the kernel. It reacts to [`Event`]s and queues
//! [`Op`]s, which the worker hands to its I/O backend after each poll.
//!
//! ```text
//!  client bytes ─▶ parse head ─▶ GET/HEAD? ─▶ lookup ─▶ fresh hit ─▶ respond now
//!                      │                         └─ miss/stale ─┐
//!                      └─ other methods (pass) ─────────────────┴▶ Fetch ─▶ origin pool
//!  origin bytes ─▶ parse head ─▶ body (length | chunked | close) ─▶ store? ─▶ respond
//! ```
//!
//! A lookup that finds a stale item, or a request with preconditions or
//! `no-cache`/`min-fresh`, leaves the fast path for `revalidate`: it
//! decides over the stored head whether to answer, answer and refresh in
//! the background, or validate with the origin.
//!
//! Responses leave strictly in request order: each connection keeps a queue
//! of exchanges; a response waits in its exchange until every earlier one
//! has been written.
//!
//! Caching decisions live beside this file: `key` (the primary key and its
//! `[cache]` options), `variants` (Vary: a marker item and one item per
//! variant), `ranges` (206/416 from complete responses), `admission`
//! (what is stored, under the `[cache]` switches), `coalesce` and `lease`
//! (one origin fetch per key). Invalidation (`crate::invalidate`) reaches
//! in at three places: `variants` (the ban check and the tag-field cut of
//! every answer served straight from the store, and `purge_primary`, the
//! one URL purge), `revalidate` (the same for stale and validated
//! objects), and `origin` (`insert_response`, the one insert of a
//! response: ban bounds and the tag index).
//!
//! Buffers lent to the kernel: a send hands out a pointer into a `Vec` that
//! is not touched again until the `Sent` or `Closed` event for its token
//! (`Client::inflight`, `Fetch::req`). A socket's slot is freed only on
//! `Closed`, so those buffers outlive every operation that uses them.

mod access;
mod admission;
mod coalesce;
mod compose;
mod key;
mod lease;
mod origin;
mod ranges;
mod revalidate;
mod variants;

use std::collections::VecDeque;
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use slab::Slab;

use crate::config::{Limits, HEADERS_COUNT_CAP};
use crate::http::chunked::ChunkedDecoder;
use crate::http::date::format_http_date;
use crate::http::request::{parse_request, BodyFraming, Method, RequestHead, RequestLimits};
use crate::http::reuse::RequestDirectives;
use crate::http::validation::is_precondition_field;
use crate::http::{headers, ParseError, Parsed};
use crate::invalidate::{Invalidator, Mode};
use crate::metrics::{status_class, Counter, Histogram, Metrics, WorkerCounters};
use crate::runtime::io::{token_slot, Event, Token};
use crate::store::{key_hash, Reader, SharedStore};

use coalesce::Fills;
use compose::{put_error, put_field, put_field_u64, put_u64, VIA};
pub use key::KeyRules;
pub use lease::Leases;
pub use origin::OriginTarget;
use origin::{Fetch, OriginConn, Pool};
use revalidate::{Plan, NO_CLIENT};
pub use variants::{purge_key, purge_primary, purge_url, purge_url_each};

/// Spare buffers a worker keeps for reuse.
pub const SPARE_BUFFERS_MAX: usize = 256;
/// Initial capacity of a connection's input and output buffers.
pub const CONN_BUFFER_BYTES: usize = 16 << 10;
/// Client error log lines one worker writes per second at most.
pub const CLIENT_ERROR_LOGS_PER_SEC_MAX: u32 = 10;

/// An operation for the I/O backend, queued while events are handled.
#[derive(Debug)]
pub enum Op {
    StartRecv {
        token: Token,
        fd: RawFd,
    },
    /// `ptr..ptr+len` stays untouched until `Sent`/`Closed` for `token`.
    Send {
        token: Token,
        fd: RawFd,
        ptr: *const u8,
        len: usize,
    },
    Connect {
        token: Token,
        fd: RawFd,
        addr: SocketAddr,
    },
    Close {
        token: Token,
        fd: RawFd,
    },
}

/// Seconds and the formatted `Date` value, refreshed once per tick.
struct Clock {
    now: Instant,
    unix_secs: u64,
    date: [u8; 29],
}

impl Clock {
    fn new() -> Clock {
        let unix_secs = unix_now();
        Clock {
            now: Instant::now(),
            unix_secs,
            date: format_http_date(unix_secs),
        }
    }

    fn refresh(&mut self, now: Instant) {
        self.now = now;
        let secs = unix_now();
        if secs != self.unix_secs {
            self.unix_secs = secs;
            self.date = format_http_date(secs);
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

enum Socket {
    Client(Client),
    Origin(OriginConn),
    /// The receiving end of this worker's wake socket (see `lease`); held
    /// here so that it lives as long as the receive on it.
    Wake {
        _socket: std::os::unix::net::UnixStream,
    },
}

/// One response slot in a connection's ordered queue.
struct Exchange {
    seq: u64,
    /// `None` while the origin is being asked.
    response: Option<Vec<u8>>,
    /// The connection closes once this response is written.
    close: bool,
}

enum ReadState {
    Head,
    /// Reading the body of request `seq`; the fetch is dispatched once whole.
    Body {
        fetch: Box<Fetch>,
        framing: BodyRead,
    },
}

enum BodyRead {
    Length(u64),
    Chunked(ChunkedDecoder),
}

struct Client {
    fd: RawFd,
    peer: Option<IpAddr>,
    inbuf: Vec<u8>,
    read: ReadState,
    queue: VecDeque<Exchange>,
    next_seq: u64,
    /// Bytes waiting to be sent.
    out: Vec<u8>,
    /// Bytes the kernel is sending now.
    inflight: Vec<u8>,
    sending: bool,
    /// A request that ends the connection was parsed: read no further.
    stop_reading: bool,
    /// The last response is in `out`/`inflight`: close once they are sent.
    close_after_flush: bool,
    /// The peer has closed its sending side.
    read_closed: bool,
    closing: bool,
    /// The first byte of a request head not yet complete arrived at this time.
    head_started: Option<Instant>,
    /// Last time the connection went idle (nothing pending).
    idle_since: Instant,
    /// When the send in flight started.
    send_started: Instant,
}

/// What a worker needs to build its proxy.
pub struct ProxyConfig {
    pub worker_index: usize,
    pub limits: Limits,
    pub origin: OriginTarget,
    /// The fill leases shared by every worker.
    pub leases: Arc<Leases>,
    /// This worker's end of its wake socket.
    pub wake: std::os::unix::net::UnixStream,
    /// Cache key options, variants and storability switches.
    pub cache: crate::config::CacheConfig,
    /// Bans, the tag index and the PURGE settings, shared with the admin.
    pub invalidator: Arc<Invalidator>,
    /// This worker's end of the access log, when it is on.
    pub access_log: Option<crate::access_log::WorkerLog>,
}

/// One worker's proxy state.
pub struct Proxy {
    /// Operations queued for the backend; the worker drains this after each poll.
    pub ops: Vec<Op>,
    slots: Slab<Socket>,
    /// Generation per slot, bumped when a slot is freed.
    generations: Vec<u32>,
    /// Client tokens with bytes to flush at the end of this loop turn.
    dirty: Vec<Token>,
    store: Arc<SharedStore>,
    /// This worker's read handle on the store (its epoch slot).
    reader: Reader,
    metrics: Arc<Metrics>,
    worker_index: usize,
    limits: Limits,
    clock: Clock,
    pool: Pool,
    fills: Fills,
    leases: Arc<Leases>,
    /// Notices taken from this worker's mailbox, reused.
    notices: Vec<lease::Notice>,
    clients_count: usize,
    draining: bool,
    /// When the drain began: idle connections get `drain_idle_timeout` from then.
    drain_started: Option<Instant>,
    spare: Vec<Vec<u8>>,
    key: Vec<u8>,
    error_logs_this_sec: u32,
    error_logs_sec: u64,
    /// How requests become keys (`[cache]` key options).
    key_rules: std::rc::Rc<key::KeyRules>,
    /// Storability switches (`[cache]`).
    policy: crate::http::policy::Policy,
    variants_per_key_max: usize,
    /// `cache.refresh_ahead`: a fresh hit in this last share (percent) of
    /// its lifetime starts a background refresh; 0: off.
    refresh_ahead_percent: u8,
    /// Set by the fast hit path when the hit it answered is due for a
    /// refresh ahead of its expiry.
    refresh_ahead_due: bool,
    /// Bans, the tag index and the PURGE settings, shared with the admin.
    invalidator: Arc<Invalidator>,
    /// The access log (see `access`): this worker's end, the record of
    /// the request being handled, and whether a request is being handled.
    access_log: Option<crate::access_log::WorkerLog>,
    log_pending: Option<Box<crate::access_log::Record>>,
    log_in_request: bool,
}

/// Slots a worker needs: every client, every origin connection, the wake socket.
pub fn slots_max(limits: &Limits) -> usize {
    limits.connections_max + limits.origin_connections_max + 1
}

impl Proxy {
    pub fn new(config: ProxyConfig, reader: Reader, metrics: Arc<Metrics>) -> Proxy {
        let slots = slots_max(&config.limits);
        let store = Arc::clone(reader.store());
        let wake = config.wake;
        let key_rules = std::rc::Rc::new(key::KeyRules::new(&config.cache));
        let policy = admission::policy_of(&config.cache);
        let mut proxy = Proxy {
            key_rules,
            policy,
            variants_per_key_max: config.cache.variants_per_key_max,
            refresh_ahead_percent: config.cache.refresh_ahead_percent,
            refresh_ahead_due: false,
            reader,
            ops: Vec::with_capacity(1024),
            slots: Slab::with_capacity(slots),
            generations: vec![0; slots],
            dirty: Vec::with_capacity(1024),
            store,
            metrics,
            worker_index: config.worker_index,
            pool: Pool::new(config.origin, &config.limits),
            fills: Fills::new(&config.limits),
            leases: config.leases,
            notices: Vec::new(),
            limits: config.limits,
            clock: Clock::new(),
            clients_count: 0,
            draining: false,
            drain_started: None,
            spare: Vec::new(),
            key: Vec::with_capacity(1024),
            error_logs_this_sec: 0,
            error_logs_sec: 0,
            invalidator: config.invalidator,
            access_log: config.access_log,
            log_pending: None,
            log_in_request: false,
        };
        // The wake socket is received on like any connection: another
        // worker's byte on it is a completion in this worker's loop.
        let fd = std::os::fd::AsRawFd::as_raw_fd(&wake);
        let slot = proxy.slots.insert(Socket::Wake { _socket: wake });
        let token = proxy.token_for(slot);
        proxy.ops.push(Op::StartRecv { token, fd });
        proxy
    }

    #[inline]
    fn counters(&self) -> &WorkerCounters {
        self.metrics.worker(self.worker_index)
    }

    /// Client connections open on this worker.
    pub fn clients_count(&self) -> usize {
        self.clients_count
    }

    fn token_for(&self, slot: usize) -> Token {
        (u64::from(self.generations[slot]) << 32) | slot as u64
    }

    fn take_buffer(&mut self) -> Vec<u8> {
        self.spare.pop().unwrap_or_default()
    }

    fn give_buffer(&mut self, mut buf: Vec<u8>) {
        if self.spare.len() < SPARE_BUFFERS_MAX && buf.capacity() <= CONN_BUFFER_BYTES * 4 {
            buf.clear();
            self.spare.push(buf);
        }
    }

    /// Rate-limited log line about a client's bad input.
    fn log_client_error(&mut self, what: &str, peer: Option<IpAddr>) {
        if self.error_logs_sec != self.clock.unix_secs {
            self.error_logs_sec = self.clock.unix_secs;
            self.error_logs_this_sec = 0;
        }
        if self.error_logs_this_sec < CLIENT_ERROR_LOGS_PER_SEC_MAX {
            self.error_logs_this_sec += 1;
            match peer {
                Some(ip) => log::warn!("client {ip}: {what}"),
                None => log::warn!("client: {what}"),
            }
        }
    }

    /// Handle one completion from the backend.
    pub fn handle(&mut self, event: Event<'_>) {
        match event {
            Event::Accepted { fd } => self.accept(fd),
            Event::Recv { token, data } => match self.socket_mut(token) {
                Some(Socket::Client(_)) => self.client_recv(token, data),
                Some(Socket::Origin(_)) => self.origin_recv(token, data),
                Some(Socket::Wake { .. }) => self.woken(),
                None => {}
            },
            Event::RecvEnd { token, errno } => match self.socket_mut(token) {
                Some(Socket::Client(_)) => self.client_recv_end(token, errno),
                Some(Socket::Origin(_)) => self.origin_recv_end(token, errno),
                Some(Socket::Wake { .. }) => {
                    log::error!(
                        "worker {}: wake socket ended ({errno:?}); waiting requests now rely on their wait limit",
                        self.worker_index
                    );
                }
                None => {}
            },
            Event::Sent { token, result } => match self.socket_mut(token) {
                Some(Socket::Client(_)) => self.client_sent(token, result),
                Some(Socket::Origin(_)) => self.origin_sent(token, result),
                _ => {}
            },
            Event::Connected { token, result } => self.origin_connected(token, result),
            Event::Closed { token } => self.closed(token),
        }
    }

    /// The socket of a live token (not closing, generation matching).
    fn socket_mut(&mut self, token: Token) -> Option<&mut Socket> {
        let slot = token_slot(token);
        if self.token_for_checked(slot) != Some(token) {
            return None;
        }
        match self.slots.get_mut(slot)? {
            Socket::Client(c) if c.closing => None,
            Socket::Origin(o) if o.closing => None,
            s => Some(s),
        }
    }

    fn token_for_checked(&self, slot: usize) -> Option<Token> {
        (slot < self.generations.len()).then(|| self.token_for(slot))
    }

    fn client(&mut self, token: Token) -> Option<&mut Client> {
        match self.socket_mut(token)? {
            Socket::Client(c) => Some(c),
            _ => None,
        }
    }

    /// Another worker finished fills this one waits for: act on its notices.
    fn woken(&mut self) {
        let mut notices = std::mem::take(&mut self.notices);
        self.leases.take_notices(self.worker_index, &mut notices);
        for notice in notices.drain(..) {
            self.lease_notice(notice);
        }
        self.notices = notices;
    }

    /// Run with reloaded limits from now on. Only values read per request
    /// or per tick may differ from the running ones (`runtime::reload`
    /// decides which); what was sized at start keeps its size.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// A reloaded `[cache]` table (once per tick, off the request path):
    /// the key rules, the storability policy, the variants kept and the
    /// refresh-ahead share. Fills in flight keep the rules they started with.
    pub fn set_cache(&mut self, cache: &crate::config::CacheConfig) {
        self.key_rules = std::rc::Rc::new(key::KeyRules::new(cache));
        self.policy = admission::policy_of(cache);
        self.variants_per_key_max = cache.variants_per_key_max;
        self.refresh_ahead_percent = cache.refresh_ahead_percent;
    }

    /// Called every loop turn: the time events of the next turn see.
    pub fn set_now(&mut self, now: Instant) {
        self.clock.refresh(now);
    }

    /// Called once per tick: fire the timeouts that are due.
    pub fn tick(&mut self, now: Instant) {
        self.clock.refresh(now);
        let mut expired: Vec<(Token, TimeoutKind)> = Vec::new();
        for (slot, socket) in self.slots.iter() {
            let token = self.token_for(slot);
            match socket {
                Socket::Client(c)
                    if !c.closing
                        && c.sending
                        && now.duration_since(c.send_started) >= self.limits.send_timeout =>
                {
                    expired.push((token, TimeoutKind::Send));
                }
                Socket::Client(c) if !c.closing && !c.stop_reading => {
                    if let Some(t) = c.head_started {
                        if now.duration_since(t) >= self.limits.header_timeout {
                            expired.push((token, TimeoutKind::Head));
                        }
                    } else if c.queue.is_empty()
                        && !c.sending
                        && matches!(c.read, ReadState::Head)
                        && (now.duration_since(c.idle_since) >= self.limits.keepalive_timeout
                            || self.drain_started.is_some_and(|d| {
                                now.duration_since(c.idle_since.max(d))
                                    >= self.limits.drain_idle_timeout
                            }))
                    {
                        expired.push((token, TimeoutKind::Idle));
                    }
                    if let ReadState::Body { .. } = c.read {
                        if now.duration_since(c.idle_since) >= self.limits.header_timeout {
                            expired.push((token, TimeoutKind::Head));
                        }
                    }
                }
                Socket::Origin(o) if !o.closing => {
                    if let Some(kind) = o.timed_out(now, &self.limits) {
                        expired.push((token, kind));
                    }
                }
                _ => {}
            }
        }
        self.coalesce_tick(now);
        self.origin_tick();
        for (token, kind) in expired {
            match kind {
                TimeoutKind::Head => {
                    self.counters().incr(Counter::ErrClientTimeout);
                    let peer = self.client(token).and_then(|c| c.peer);
                    self.log_client_error("request head or body not received in time (408)", peer);
                    self.client_fail(token, 408, "request-timeout");
                }
                TimeoutKind::Idle => self.close_socket(token),
                TimeoutKind::Send => {
                    self.counters().incr(Counter::ErrClientTimeout);
                    let peer = self.client(token).and_then(|c| c.peer);
                    self.log_client_error("responses not taken within limits.send_timeout", peer);
                    self.close_socket(token);
                }
                TimeoutKind::OriginConnect
                | TimeoutKind::OriginResponse
                | TimeoutKind::OriginIdle => self.origin_timeout(token, kind),
            }
        }
    }

    /// Stop taking new work without dropping any: every request already
    /// received, or arriving before its connection is closed, is answered;
    /// the first one answered from now on carries `Connection: close` and
    /// ends its connection. A connection with nothing pending is closed once
    /// it has been idle for `drain_idle_timeout` since the drain began
    /// (`tick`); idle origin connections close now.
    ///
    /// Connections the backend accepted before the listener was removed are
    /// still served (`accept`): they were taken from the listening socket's
    /// queue, so no other process can answer them.
    pub fn begin_drain(&mut self) {
        self.draining = true;
        self.drain_started = Some(self.clock.now);
        let tokens: Vec<Token> = self
            .slots
            .iter()
            .map(|(slot, _)| self.token_for(slot))
            .collect();
        for token in tokens {
            if let Some(Socket::Origin(o)) = self.socket_mut(token) {
                if o.is_idle() {
                    self.close_socket(token);
                }
            }
        }
    }

    /// Bytes queued by this turn's events go out now, one send per
    /// connection; queued refreshes (`invalidate::refresh`) start first,
    /// so their requests go out with the same submit.
    pub fn flush(&mut self) {
        if self.invalidator.refresh.has_work(self.clock.now) {
            self.refresh_queued();
        }
        let dirty = std::mem::take(&mut self.dirty);
        for &token in &dirty {
            self.client_start_send(token);
        }
        self.dirty = dirty;
        self.dirty.clear();
    }

    // ----- clients ---------------------------------------------------------

    fn accept(&mut self, fd: RawFd) {
        if self.clients_count >= self.limits.connections_max {
            crate::sys::close(fd);
            self.counters().incr(Counter::ConnectionsRejected);
            return;
        }
        crate::sys::set_nodelay(fd);
        let entry = self.slots.vacant_entry();
        let slot = entry.key();
        let token = (u64::from(self.generations[slot]) << 32) | slot as u64;
        let inbuf = self.spare.pop().unwrap_or_default();
        let out = self.spare.pop().unwrap_or_default();
        let inflight = self.spare.pop().unwrap_or_default();
        self.slots.insert(Socket::Client(Client {
            fd,
            peer: crate::sys::peer_ip(fd),
            inbuf,
            read: ReadState::Head,
            queue: VecDeque::new(),
            next_seq: 0,
            out,
            inflight,
            sending: false,
            stop_reading: false,
            close_after_flush: false,
            read_closed: false,
            closing: false,
            head_started: None,
            idle_since: self.clock.now,
            send_started: self.clock.now,
        }));
        self.clients_count += 1;
        self.counters().incr(Counter::ConnectionsAccepted);
        self.ops.push(Op::StartRecv { token, fd });
    }

    fn client_recv(&mut self, token: Token, data: &[u8]) {
        let limits = self.limits;
        let now = self.clock.now;
        let Some(c) = self.client(token) else { return };
        if c.stop_reading {
            return; // bytes after a closing request are ignored
        }
        let pending = c.inbuf.len();
        let input_max = limits.head_bytes_max * 2 + limits.recv_buffer_bytes;
        if pending + data.len() > input_max {
            // The client keeps sending while its earlier requests wait:
            // more than one head and a buffer's worth is not a client we serve.
            let peer = c.peer;
            self.counters().incr(Counter::ErrClientOverflow);
            self.log_client_error("input beyond limits while requests are pending", peer);
            self.client_fail(token, 431, "input-overflow");
            return;
        }
        c.inbuf.extend_from_slice(data);
        if c.head_started.is_none() && matches!(c.read, ReadState::Head) {
            c.head_started = Some(now);
        }
        self.client_process(token);
    }

    /// Parse and act on everything buffered, as far as limits allow.
    fn client_process(&mut self, token: Token) {
        let limits = self.limits;
        let now = self.clock.now;
        let request_limits = RequestLimits {
            head_bytes_max: limits.head_bytes_max,
            headers_count_max: limits.headers_count_max,
            body_bytes_max: limits.body_bytes_max,
        };
        let Some(c) = self.client(token) else { return };
        let mut inbuf = std::mem::take(&mut c.inbuf);
        let mut consumed = 0;
        while let Some(c) = self.client(token) {
            if c.stop_reading {
                break;
            }
            if let ReadState::Body { .. } = c.read {
                let n = self.client_body(token, &inbuf[consumed..]);
                consumed += n;
                let Some(c) = self.client(token) else { break };
                if let ReadState::Body { .. } = c.read {
                    break; // need more bytes
                }
                continue;
            }
            if consumed == inbuf.len() {
                c.head_started = None;
                break;
            }
            if c.queue.len() >= limits.pipeline_depth_max
                || c.out.len() >= limits.client_output_bytes_max
            {
                // Resumed when responses drain; the earlier requests' own
                // deadlines bound the wait, so the head timer stops meanwhile.
                c.head_started = None;
                break;
            }
            let mut fields =
                [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; HEADERS_COUNT_CAP];
            let fields = &mut fields[..limits.headers_count_max];
            match parse_request(&inbuf[consumed..], fields, &request_limits) {
                Ok(Parsed::Partial) => {
                    if c.head_started.is_none() {
                        c.head_started = Some(now);
                    }
                    break;
                }
                Ok(Parsed::Complete(head)) => {
                    consumed += head.head_len;
                    if let Some(c) = self.client(token) {
                        c.head_started = None;
                    }
                    self.counters().incr(Counter::Requests);
                    self.log_begin(token, Some(&head));
                    self.request(token, &head);
                    self.log_end();
                }
                Err(e) => {
                    self.counters().incr(Counter::Requests);
                    self.count_parse_error(e);
                    let peer = self.client(token).and_then(|c| c.peer);
                    self.log_client_error(e.detail(), peer);
                    self.client_fail(token, e.status(), e.detail());
                    break;
                }
            }
        }
        if let Some(c) = self.client(token) {
            inbuf.drain(..consumed);
            c.inbuf = inbuf;
            if c.inbuf.is_empty() && matches!(c.read, ReadState::Head) {
                c.head_started = None;
            }
        }
    }

    fn count_parse_error(&self, e: ParseError) {
        let counter = match e {
            ParseError::HeadTooLarge | ParseError::TooManyHeaders => Counter::ErrHeadTooLarge,
            ParseError::BodyTooLarge => Counter::ErrBodyTooLarge,
            ParseError::VersionNotSupported => Counter::ErrVersion,
            ParseError::NotImplemented(_) => Counter::ErrNotImplemented,
            ParseError::Malformed(_) => Counter::ErrBadRequest,
        };
        self.counters().incr(counter);
    }

    /// Answer with an error and close the connection once it is written.
    fn client_fail(&mut self, token: Token, status: u16, detail: &str) {
        let date = self.clock.date;
        let Some(c) = self.client(token) else { return };
        c.stop_reading = true;
        c.head_started = None;
        // A request whose body is being read already has its exchange in the
        // queue: the error is its answer.
        let (seq, body_log) = match std::mem::replace(&mut c.read, ReadState::Head) {
            ReadState::Body { fetch, .. } => {
                let seq = fetch.seq;
                let log = fetch.log.take();
                self.give_buffer(fetch.req);
                (Some(seq), Some(log))
            }
            ReadState::Head => (None, None),
        };
        // Outside a request's handling (bad input, timeouts, a body that
        // fails) this answer gets its own access log record.
        let own_record = !self.log_in_request;
        if own_record {
            match body_log {
                Some(log) => {
                    self.log_in_request = true;
                    self.log_pending = log;
                }
                None => self.log_begin(token, None),
            }
        }
        let mut resp = self.take_buffer();
        put_error(&mut resp, status, &date, Some(detail), None, true);
        self.counters().incr(Counter::OutcomeError);
        self.log_outcome(Counter::OutcomeError);
        self.client_respond(token, seq, resp, true);
        if own_record {
            self.log_end();
        }
    }

    /// A parsed request head: answer from the cache or start a fetch.
    fn request(&mut self, token: Token, head: &RequestHead<'_, '_>) {
        let started = Instant::now();
        let keep_alive = head.keep_alive && !self.draining;
        match head.method {
            Method::Connect | Method::Trace => {
                self.counters().incr(Counter::ErrMethod);
                self.client_reject(
                    token,
                    405,
                    "method-not-allowed",
                    head.body != BodyFraming::None,
                );
                return;
            }
            _ => {}
        }
        let Some(path) = origin_form(head.target, head.method) else {
            self.counters().incr(Counter::ErrBadRequest);
            let peer = self.client(token).and_then(|c| c.peer);
            self.log_client_error("request target is not origin-form or absolute-form", peer);
            self.client_fail(token, 400, "bad-target");
            return;
        };
        let authority = std::mem::take(&mut self.pool.target.authority);
        // RFC 9112 §3.2.2: an absolute-form target's authority wins over Host.
        let absolute = absolute_authority(head.target);
        let host = absolute.or(head.host).unwrap_or(authority.as_bytes());
        let has_body = !matches!(head.body, BodyFraming::None | BodyFraming::Length(0));
        let lookup = matches!(head.method, Method::Get | Method::Head) && !has_body;
        let mut hash = 0;
        let mut found = Found::Absent;
        self.key.clear();
        self.key_rules.write(host, path, &mut self.key);
        if head.method == Method::Other
            && head.method_bytes == b"PURGE"
            && self.invalidator.config.purge_method
        {
            self.pool.target.authority = authority;
            let has_body = head.body != BodyFraming::None;
            self.purge_request(token, keep_alive, head.minor_version, has_body);
            return;
        }
        // Request directives (RFC 9111 §5.2.1), read only when the client
        // sent any: no-cache and max-age limit what the store may answer,
        // only-if-cached forbids asking the origin.
        // One pass over the fields finds the directives, `Range` (RFC 9110
        // §14) and any precondition.
        let (mut has_directives, mut has_range, mut has_precondition) = (false, false, false);
        for f in head.headers {
            let n = f.name.as_bytes();
            has_directives |=
                n.eq_ignore_ascii_case(b"cache-control") || n.eq_ignore_ascii_case(b"pragma");
            has_range |= n.eq_ignore_ascii_case(b"range");
            has_precondition |= is_precondition_field(n) && !n.eq_ignore_ascii_case(b"if-range");
        }
        let directives = has_directives.then(|| RequestDirectives::from_headers(head.headers));
        let range = (has_range && head.method == Method::Get && lookup)
            .then(|| ranges::RangeAsk::of(head.headers))
            .flatten();
        let mut revalidation = None;
        let mut refresh = false;
        if lookup {
            hash = key_hash(&self.key);
            // `age_max` is `Some(None)` when nothing stored may answer on the
            // fast path, `Some(Some(n))` for a max-age bound. The fast path
            // answers fresh items to requests without preconditions whose
            // directives (if any) only bound the age; the rest is decided
            // over the stored head (see `revalidate`). A range is answered
            // from a fresh stored response or fetched whole.
            let bound = match directives {
                Some(d) if d.no_cache() => Some(None),
                Some(d) => d.cc.max_age.map(Some),
                None => None,
            };
            found = match range.as_deref() {
                Some(ask) => self.respond_range(
                    token,
                    &mut hash,
                    head.headers,
                    &ranges::RangeHit {
                        ask,
                        keep_alive,
                        minor: head.minor_version,
                        age_max: bound,
                    },
                ),
                None => {
                    let needs_stored_head = has_precondition
                        || directives.is_some_and(|d| d.no_cache() || d.cc.min_fresh.is_some());
                    self.respond_hit(
                        token,
                        &mut hash,
                        head.headers,
                        head.method == Method::Head,
                        keep_alive,
                        head.minor_version,
                        if needs_stored_head { Some(None) } else { bound },
                    )
                }
            };
            if range.is_none() && matches!(found, Found::Stale | Found::NotAccepted) {
                match self.lookup_stored(token, head, hash, directives, keep_alive) {
                    Plan::Answered => found = Found::Fresh,
                    Plan::Refresh(rev) => {
                        found = Found::Fresh;
                        revalidation = Some(rev);
                        refresh = true;
                    }
                    Plan::Forward(f, rev) => {
                        found = f;
                        revalidation = rev;
                    }
                }
            }
            if found == Found::Fresh {
                self.counters().incr(Counter::Hits);
                self.counters().incr(Counter::OutcomeHit);
                self.log_outcome(Counter::OutcomeHit);
                self.counters()
                    .record_duration(Histogram::RequestHit, started.elapsed());
                if !keep_alive {
                    if let Some(c) = self.client(token) {
                        c.stop_reading = true;
                    }
                }
                if !refresh && std::mem::take(&mut self.refresh_ahead_due) {
                    // Refresh-ahead: answered fresh, and near its expiry.
                    if let Some(rev) = self.refresh_ahead(hash) {
                        revalidation = Some(rev);
                        refresh = true;
                    }
                }
                if !refresh {
                    self.pool.target.authority = authority;
                    return;
                }
                found = Found::Stale;
            } else {
                self.counters().incr(Counter::Misses);
            }
            if !refresh && directives.is_some_and(|d| d.only_if_cached()) {
                // §5.2.1.7: nothing usable stored, and the origin is off limits.
                self.pool.target.authority = authority;
                let date = self.clock.date;
                let mut resp = self.take_buffer();
                put_error(
                    &mut resp,
                    504,
                    &date,
                    Some("only-if-cached"),
                    None,
                    !keep_alive,
                );
                self.counters().incr(Counter::OutcomeError);
                self.log_outcome(Counter::OutcomeError);
                self.client_respond(token, None, resp, !keep_alive);
                return;
            }
        } else {
            self.counters().incr(Counter::Passes);
        }
        // A range miss fetches the whole response, unless the key is known
        // not to be storable: then the range goes to the origin as asked.
        let range = range.filter(|_| !self.is_hit_for_miss(hash, &self.key));
        // Miss or pass: build the origin request now, while the head is borrowed.
        let mut req = self.take_buffer();
        let peer = self.client(token).and_then(|c| c.peer);
        // A HEAD miss fetches the GET, so the answer can be stored and reused.
        let origin_method: &[u8] = if head.method == Method::Head {
            b"GET"
        } else {
            head.method_bytes
        };
        req.extend_from_slice(origin_method);
        req.push(b' ');
        req.extend_from_slice(path);
        req.extend_from_slice(b" HTTP/1.1\r\n");
        let mut xff_done = false;
        let mut host_done = false;
        for f in head.headers {
            let name = f.name.as_bytes();
            if compose::is_dropped_on_forward(head.headers, name)
                || name.eq_ignore_ascii_case(b"expect")
                || (range.is_some()
                    && (name.eq_ignore_ascii_case(b"range")
                        || name.eq_ignore_ascii_case(b"if-range")))
            {
                continue;
            }
            if revalidation.is_some()
                && (name.eq_ignore_ascii_case(b"if-none-match")
                    || name.eq_ignore_ascii_case(b"if-modified-since"))
            {
                continue; // ringcache validates its own copy (RFC 9111 §4.3.1)
            }
            if name.eq_ignore_ascii_case(b"x-forwarded-for") {
                if xff_done {
                    continue; // all lines were merged into the first
                }
                xff_done = true;
                req.extend_from_slice(b"X-Forwarded-For: ");
                let mut first = true;
                for g in head
                    .headers
                    .iter()
                    .filter(|g| g.name.eq_ignore_ascii_case("x-forwarded-for"))
                {
                    if !first {
                        req.extend_from_slice(b", ");
                    }
                    first = false;
                    req.extend_from_slice(headers::trim_ows(g.value));
                }
                if let Some(ip) = peer {
                    req.extend_from_slice(b", ");
                    put_ip(&mut req, ip);
                }
                req.extend_from_slice(b"\r\n");
                continue;
            }
            if name.eq_ignore_ascii_case(b"host") {
                if absolute.is_some() {
                    continue; // replaced by the target's authority below
                }
                host_done = true;
            }
            put_field(&mut req, name, f.value);
        }
        if !host_done {
            put_field(&mut req, b"Host", host);
        }
        if !xff_done {
            if let Some(ip) = peer {
                req.extend_from_slice(b"X-Forwarded-For: ");
                put_ip(&mut req, ip);
                req.extend_from_slice(b"\r\n");
            }
        }
        put_field(&mut req, b"Via", VIA);
        if let Some(rev) = revalidation.as_mut() {
            if !rev.conditional.is_empty() {
                rev.conditional_at = Some(req.len());
                req.extend_from_slice(&std::mem::take(&mut rev.conditional));
            }
        }
        // An unsafe method's answer may invalidate its target (RFC 9111 §4.4).
        let target_key = (!head.method.is_safe()).then(|| {
            let mut target = Vec::with_capacity(host.len() + 1 + path.len());
            target.extend(host.iter().map(u8::to_ascii_lowercase));
            target.push(0);
            target.extend_from_slice(path);
            target.into_boxed_slice()
        });
        self.pool.target.authority = authority;
        let key = if lookup {
            Some((hash, self.key.clone().into_boxed_slice()))
        } else {
            None
        };
        let (client, seq) = if refresh {
            (NO_CLIENT, 0)
        } else {
            let Some(c) = self.client(token) else {
                self.give_buffer(req);
                return;
            };
            let seq = c.next_seq;
            c.next_seq += 1;
            c.queue.push_back(Exchange {
                seq,
                response: None,
                close: !keep_alive,
            });
            if !keep_alive {
                c.stop_reading = true;
            }
            (token, seq)
        };
        let revalidating = revalidation.is_some();
        let log = self.log_for_fetch(refresh);
        let fetch = Box::new(Fetch {
            client,
            seq,
            method: head.method,
            client_head: head.method == Method::Head,
            client_minor_version: head.minor_version,
            keep_alive,
            req,
            key,
            lookup,
            request_time_secs: self.clock.unix_secs,
            retried: false,
            fill_id: None,
            started,
            bypass: false,
            parked: false,
            streaming: false,
            found,
            target_key,
            // A request whose answer is its own (206 passed through, 304,
            // 412) neither leads nor joins a fill; ringcache's own validation
            // replaces the client's If-None-Match / If-Modified-Since, and a
            // range fetched whole is a plain GET toward the origin (each
            // client gets its own range).
            personal: head.headers.iter().any(|f| {
                let n = f.name.as_bytes();
                n.eq_ignore_ascii_case(b"if-match")
                    || n.eq_ignore_ascii_case(b"if-unmodified-since")
                    || (!revalidating
                        && (n.eq_ignore_ascii_case(b"if-none-match")
                            || n.eq_ignore_ascii_case(b"if-modified-since")))
                    || (n.eq_ignore_ascii_case(b"range") && range.is_none())
            }),
            revalidation,
            body: Vec::new(),
            range,
            log: std::cell::Cell::new(log),
        });
        if refresh {
            let mut fetch = fetch;
            fetch.finish_request();
            self.start_refresh(fetch);
            return;
        }
        let framing = match head.body {
            BodyFraming::None | BodyFraming::Length(0) => {
                let mut fetch = fetch;
                fetch.finish_request();
                if lookup {
                    self.fetch_or_wait(fetch);
                } else {
                    self.dispatch(fetch);
                }
                return;
            }
            BodyFraming::Length(n) => BodyRead::Length(n),
            BodyFraming::Chunked => BodyRead::Chunked(ChunkedDecoder::new()),
        };
        let now = self.clock.now;
        let c = self.client(token).expect("client checked above");
        // 100-continue only when nothing is ahead of it: an interim response
        // must not overtake an earlier request's answer.
        if head.expect_continue && c.queue.len() == 1 {
            c.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            self.dirty.push(token);
        }
        let c = self.client(token).expect("client checked above");
        c.idle_since = now;
        c.read = ReadState::Body { fetch, framing };
    }

    /// A request ringcache refuses without asking the origin (405 and the like).
    fn client_reject(&mut self, token: Token, status: u16, detail: &str, has_body: bool) {
        if has_body {
            // The body's framing would have to be skipped; closing is simpler and safe.
            self.client_fail(token, status, detail);
            return;
        }
        let date = self.clock.date;
        let mut resp = self.take_buffer();
        put_error(&mut resp, status, &date, Some(detail), None, false);
        self.counters().incr(Counter::OutcomeError);
        self.log_outcome(Counter::OutcomeError);
        self.client_respond(token, None, resp, false);
    }

    /// Consume request body bytes; returns how many of `input` were used.
    fn client_body(&mut self, token: Token, input: &[u8]) -> usize {
        let body_max = self.limits.body_bytes_max;
        let now = self.clock.now;
        let Some(c) = self.client(token) else {
            return input.len();
        };
        c.idle_since = now;
        let ReadState::Body { fetch, framing } = &mut c.read else {
            return 0;
        };
        let (used, done) = match framing {
            BodyRead::Length(remaining) => {
                let take = (*remaining).min(input.len() as u64) as usize;
                fetch.body.extend_from_slice(&input[..take]);
                *remaining -= take as u64;
                (take, *remaining == 0)
            }
            BodyRead::Chunked(decoder) => {
                let r = decoder.decode(input, &mut fetch.body);
                let over = fetch.body.len() > body_max;
                match r {
                    Ok(_) if over => {
                        self.counters().incr(Counter::ErrBodyTooLarge);
                        self.client_fail(token, 413, "body-too-large");
                        return input.len();
                    }
                    Ok((used, done)) => (used, done),
                    Err(_) => {
                        self.counters().incr(Counter::ErrBadRequest);
                        let peer = self.client(token).and_then(|c| c.peer);
                        self.log_client_error("invalid chunked request body", peer);
                        self.client_fail(token, 400, "bad-chunked-body");
                        return input.len();
                    }
                }
            }
        };
        if done {
            let c = self.client(token).expect("client checked above");
            let ReadState::Body { mut fetch, .. } = std::mem::replace(&mut c.read, ReadState::Head)
            else {
                unreachable!("state checked above")
            };
            fetch.finish_request();
            self.dispatch(fetch);
        }
        used
    }

    /// Queue a finished response for exchange `seq` (or a new one when `None`)
    /// and move every response that is now in order into the output buffer.
    fn client_respond(&mut self, token: Token, seq: Option<u64>, resp: Vec<u8>, close: bool) {
        if self.client(token).is_none() {
            self.give_buffer(resp);
            return;
        }
        self.log_answer(&resp);
        // Every response starts with `HTTP/1.1 NNN`: its first status digit.
        // (An empty one ends a streamed response, counted when it began.)
        if let Some(&digit) = resp.get(9) {
            let class = u16::from(digit.wrapping_sub(b'0'));
            self.counters().incr(status_class(class * 100));
        }
        let Some(c) = self.client(token) else { return };
        match seq {
            Some(seq) => {
                let Some(front) = c.queue.front() else { return };
                let index = (seq - front.seq) as usize;
                let Some(ex) = c.queue.get_mut(index) else {
                    return;
                };
                ex.response = Some(resp);
                ex.close |= close;
            }
            None => {
                if c.queue.is_empty() {
                    c.out.extend_from_slice(&resp);
                    if close {
                        c.close_after_flush = true;
                        c.stop_reading = true;
                    }
                    self.give_buffer(resp);
                    self.mark_dirty(token);
                    return;
                }
                let seq = c.next_seq;
                c.next_seq += 1;
                c.queue.push_back(Exchange {
                    seq,
                    response: Some(resp),
                    close,
                });
            }
        }
        self.client_drain_queue(token);
    }

    fn client_drain_queue(&mut self, token: Token) {
        let mut freed = Vec::new();
        let Some(c) = self.client(token) else { return };
        while c.queue.front().is_some_and(|e| e.response.is_some()) {
            let ex = c.queue.pop_front().expect("front checked");
            let resp = ex.response.expect("checked");
            if c.out.is_empty() {
                freed.push(std::mem::replace(&mut c.out, resp));
            } else {
                c.out.extend_from_slice(&resp);
                freed.push(resp);
            }
            if ex.close {
                c.close_after_flush = true;
                c.stop_reading = true;
                break;
            }
        }
        for b in freed {
            self.give_buffer(b);
        }
        self.mark_dirty(token);
    }

    /// Remember to flush this client's output at the end of the loop turn.
    /// Duplicates are harmless: starting a send is idempotent.
    fn mark_dirty(&mut self, token: Token) {
        self.dirty.push(token);
    }

    /// Answer from the store when `self.key` holds a fresh item the request
    /// accepts: the stored status line and fields, then ours, then the body,
    /// copied straight into the client's output. Nothing is written
    /// otherwise; `revalidate::lookup_stored` takes those cases.
    ///
    /// `age_max`: the client's limit on the age of what it accepts —
    /// `Some(None)` accepts nothing on this fast path (no-cache, or a request
    /// that needs the stored head: preconditions, min-fresh), `Some(Some(n))`
    /// at most `n` seconds (max-age). `hash` becomes the hash of the key
    /// `self.key` ends on (a variant's, when the URL's responses vary).
    #[allow(clippy::too_many_arguments)]
    fn respond_hit(
        &mut self,
        token: Token,
        hash: &mut u64,
        request: &[httparse::Header<'_>],
        head_only: bool,
        keep_alive: bool,
        minor: u8,
        age_max: Option<Option<u64>>,
    ) -> Found {
        let now_secs = self.clock.unix_secs;
        self.refresh_ahead_due = false;
        let direct = self.client(token).is_some_and(|c| c.queue.is_empty());
        let mut buf = if direct {
            let c = self.client(token).expect("checked");
            std::mem::take(&mut c.out)
        } else {
            self.take_buffer()
        };
        let start = buf.len();
        let (hit, final_hash, varied) = self.lookup_varied(*hash, request, &mut buf, |b, hit| {
            if !usable(hit, now_secs, age_max) {
                return false; // rolled back below
            }
            // RFC 9110 §8.6: no Content-Length in a 204.
            if hit.body_len > 0 || !b[b.len() - hit.head_len..].starts_with(b"HTTP/1.1 204") {
                put_field_u64(b, b"Content-Length", hit.body_len as u64);
            }
            let age = hit.meta.age_secs(now_secs);
            put_field_u64(b, b"Age", age);
            b.extend_from_slice(b"Cache-Status: ringcache; hit; ttl=");
            put_u64(b, u64::from(hit.meta.lifetime_secs).saturating_sub(age));
            b.extend_from_slice(b"\r\nVia: 1.1 ringcache\r\n");
            put_connection(b, keep_alive, minor);
            b.extend_from_slice(b"\r\n");
            !head_only
        });
        *hash = final_hash;
        let fresh = hit.as_ref().is_some_and(|h| usable(h, now_secs, age_max));
        if !fresh {
            buf.truncate(start);
        } else if self.refresh_ahead_percent > 0 {
            self.refresh_ahead_due = hit
                .as_ref()
                .is_some_and(|h| refresh_ahead_due(&h.meta, now_secs, self.refresh_ahead_percent));
        }
        if direct {
            let now = self.clock.now;
            if fresh {
                self.counters().incr(Counter::Status2xx); // only 200s are stored
                if self.log_pending.is_some() {
                    let status = buf
                        .get(start + 9..start + 12)
                        .and_then(|d| std::str::from_utf8(d).ok())
                        .and_then(|d| d.parse().ok())
                        .unwrap_or(0);
                    let body = match (&hit, head_only) {
                        (Some(h), false) => h.body_len as u64,
                        _ => 0,
                    };
                    self.log_answer_parts(status, body);
                }
            }
            let c = self.client(token).expect("checked");
            c.out = buf;
            if fresh {
                if !keep_alive {
                    c.close_after_flush = true;
                }
                c.idle_since = now;
                self.mark_dirty(token);
            }
        } else if fresh {
            self.client_respond(token, None, buf, !keep_alive);
        } else {
            self.give_buffer(buf);
        }
        match hit {
            _ if fresh => Found::Fresh,
            Some(h) if h.meta.is_fresh(now_secs) => Found::NotAccepted,
            Some(_) => Found::Stale,
            None if varied == variants::Varied::NotListed => Found::VaryMiss,
            None => Found::Absent,
        }
    }

    fn client_start_send(&mut self, token: Token) {
        let now = self.clock.now;
        let Some(c) = self.client(token) else { return };
        if c.sending {
            return;
        }
        if c.out.is_empty() {
            if c.close_after_flush || (c.read_closed && c.queue.is_empty()) {
                self.close_socket(token);
            }
            return;
        }
        std::mem::swap(&mut c.out, &mut c.inflight);
        c.sending = true;
        c.send_started = now;
        let (fd, ptr, len) = (c.fd, c.inflight.as_ptr(), c.inflight.len());
        self.counters().incr(Counter::Responses);
        self.ops.push(Op::Send {
            token,
            fd,
            ptr,
            len,
        });
    }

    fn client_sent(&mut self, token: Token, result: Result<(), i32>) {
        let now = self.clock.now;
        let Some(c) = self.client(token) else { return };
        c.sending = false;
        c.inflight.clear();
        if result.is_err() {
            self.close_socket(token);
            return;
        }
        if c.queue.is_empty() && c.out.is_empty() {
            c.idle_since = now;
        }
        let more_input = !c.inbuf.is_empty();
        if !c.out.is_empty() {
            self.mark_dirty(token);
        } else if c.close_after_flush || (c.read_closed && c.queue.is_empty()) {
            self.close_socket(token);
            return;
        }
        // Output drained: requests held back by the output limit can go on.
        if more_input {
            self.client_process(token);
        }
    }

    fn client_recv_end(&mut self, token: Token, errno: Option<i32>) {
        let Some(c) = self.client(token) else { return };
        c.read_closed = true;
        if errno.is_some() || (c.queue.is_empty() && !c.sending && c.out.is_empty()) {
            self.close_socket(token);
            return;
        }
        // Half-closed: answer what was asked, then close.
        c.stop_reading = true;
        if let ReadState::Body { .. } = c.read {
            self.close_socket(token);
        }
    }

    fn close_socket(&mut self, token: Token) {
        let slot = token_slot(token);
        if self.token_for_checked(slot) != Some(token) {
            return;
        }
        let (fd, idle_origin) = match self.slots.get_mut(slot) {
            Some(Socket::Client(c)) if !c.closing => {
                c.closing = true;
                (c.fd, false)
            }
            Some(Socket::Origin(o)) if !o.closing => {
                o.closing = true;
                (o.fd, o.is_idle())
            }
            _ => return,
        };
        if idle_origin {
            self.pool.idle.retain(|&t| t != token);
        }
        self.ops.push(Op::Close { token, fd });
    }

    fn closed(&mut self, token: Token) {
        let slot = token_slot(token);
        if self.token_for_checked(slot) != Some(token) || !self.slots.contains(slot) {
            return;
        }
        let socket = self.slots.remove(slot);
        self.generations[slot] = self.generations[slot].wrapping_add(1);
        match socket {
            Socket::Client(c) => {
                self.clients_count -= 1;
                self.counters().incr(Counter::ConnectionsClosed);
                self.give_buffer(c.inbuf);
                self.give_buffer(c.out);
                self.give_buffer(c.inflight);
                for ex in c.queue {
                    if let Some(r) = ex.response {
                        self.give_buffer(r);
                    }
                }
            }
            Socket::Wake { .. } => {}
            Socket::Origin(o) => {
                self.origin_conn_gone();
                self.pool.idle.retain(|&t| t != token);
                if let Some(f) = o.fetch {
                    // Every path that closes a busy connection answers its
                    // fetch first; this is the last line of defence.
                    self.fail_fetch(f, 502, "origin-closed");
                }
                self.give_buffer(o.inbuf);
                self.pool_next();
            }
        }
    }

    /// Duration since the proxy started draining is the caller's business;
    /// this says whether any client remains.
    pub fn is_drained(&self) -> bool {
        self.clients_count == 0
    }
}

impl Proxy {
    /// `PURGE` on the traffic port (`invalidation.purge_method`): the
    /// target in `self.key` is hard-purged when the peer's address is in
    /// `purge_allow`, else 403. Never forwarded to the origin.
    fn purge_request(&mut self, token: Token, keep_alive: bool, minor: u8, has_body: bool) {
        let peer = self.client(token).and_then(|c| c.peer);
        // `purge_allow` now (a SIGHUP reload may replace it).
        let allowed = peer.is_some_and(|ip| {
            self.invalidator
                .access()
                .purge_allow
                .iter()
                .any(|n| n.contains(ip))
        });
        if !allowed {
            self.log_client_error(
                "PURGE from an address not in invalidation.purge_allow",
                peer,
            );
            self.client_reject(token, 403, "purge-not-allowed", has_body);
            return;
        }
        if has_body {
            self.client_reject(token, 400, "purge-with-body", true);
            return;
        }
        let mut scratch = self.take_buffer();
        // Every variant of the URL, through the one purge function.
        let purged = variants::purge_primary(&self.reader, &self.key, Mode::Hard, &mut scratch);
        self.give_buffer(scratch);
        self.invalidator.count_purge("url");
        self.invalidator.note_invalidated(purged);
        log::info!(
            "invalidate: peer {} PURGE {} mode=hard: {purged} object(s)",
            peer.map_or_else(|| "?".to_string(), |ip| ip.to_string()),
            String::from_utf8_lossy(&self.key).replace('\0', ""),
        );
        let mut body = self.take_buffer();
        body.extend_from_slice(b"{\"purged\":");
        put_u64(&mut body, purged);
        body.extend_from_slice(b"}\n");
        let date = self.clock.date;
        let mut resp = self.take_buffer();
        compose::put_status_line(&mut resp, 200, b"OK");
        put_field(&mut resp, b"Date", &date);
        put_field(&mut resp, b"Content-Type", b"application/json");
        put_field_u64(&mut resp, b"Content-Length", body.len() as u64);
        put_field(&mut resp, b"Cache-Status", b"ringcache; detail=purge");
        put_field(&mut resp, b"Via", VIA);
        put_connection(&mut resp, keep_alive, minor);
        resp.extend_from_slice(b"\r\n");
        resp.extend_from_slice(&body);
        self.give_buffer(body);
        self.client_respond(token, None, resp, !keep_alive);
    }
}

/// How often timeouts are checked; the resolution of every timeout.
pub const TICK_INTERVAL: Duration = Duration::from_millis(50);

/// What a lookup found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Found {
    Fresh,
    /// Fresh, but the request's directives did not accept it (`fwd=request`).
    NotAccepted,
    Stale,
    /// The URL's responses vary, and none stored matches this request
    /// (`fwd=vary-miss`, RFC 9211 §2.2).
    VaryMiss,
    Absent,
}

/// Is a fresh item in the last `percent` of its freshness lifetime? Plain
/// arithmetic on the metadata, for the hit path.
#[inline]
fn refresh_ahead_due(meta: &crate::store::item::ItemMeta, now_secs: u64, percent: u8) -> bool {
    let lifetime = u64::from(meta.lifetime_secs);
    let left = lifetime.saturating_sub(meta.age_secs(now_secs));
    percent > 0 && left > 0 && left * 100 <= lifetime * u64::from(percent)
}

/// May a stored item answer a request? Fresh, and within the client's
/// limit on age: `age_max` is `Some(None)` for no-cache (nothing stored),
/// `Some(Some(n))` for max-age=n.
#[inline]
fn usable(hit: &crate::store::item::Hit, now_secs: u64, age_max: Option<Option<u64>>) -> bool {
    hit.meta.is_fresh(now_secs)
        && match age_max {
            None => true,
            Some(None) => false,
            Some(Some(n)) => hit.meta.age_secs(now_secs) <= n,
        }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TimeoutKind {
    Head,
    Idle,
    Send,
    OriginConnect,
    OriginResponse,
    OriginIdle,
}

/// `Connection` field for a response, when one is needed.
fn put_connection(buf: &mut Vec<u8>, keep_alive: bool, minor: u8) {
    if !keep_alive {
        buf.extend_from_slice(b"Connection: close\r\n");
    } else if minor == 0 {
        buf.extend_from_slice(b"Connection: keep-alive\r\n");
    }
}

fn put_ip(buf: &mut Vec<u8>, ip: IpAddr) {
    use std::io::Write;
    let _ = write!(buf, "{ip}");
}

/// The origin-form (path and query) of a request target: origin-form as is,
/// absolute-form without scheme and authority, `*` for OPTIONS.
fn origin_form(target: &[u8], method: Method) -> Option<&[u8]> {
    if target.first() == Some(&b'/') {
        return Some(target);
    }
    if target == b"*" && method == Method::Options {
        return Some(target);
    }
    let rest = strip_prefix_ci(target, b"http://")?;
    match rest.iter().position(|&b| b == b'/' || b == b'?') {
        Some(i) if rest[i] == b'/' => Some(&rest[i..]),
        Some(_) => None,
        None => Some(b"/"),
    }
}

fn absolute_authority(target: &[u8]) -> Option<&[u8]> {
    let rest = strip_prefix_ci(target, b"http://")?;
    let end = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

fn strip_prefix_ci<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &s[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_targets() {
        assert_eq!(origin_form(b"/a?b", Method::Get), Some(&b"/a?b"[..]));
        assert_eq!(origin_form(b"http://h:1/x", Method::Get), Some(&b"/x"[..]));
        assert_eq!(origin_form(b"HTTP://h", Method::Get), Some(&b"/"[..]));
        assert_eq!(origin_form(b"*", Method::Options), Some(&b"*"[..]));
        assert_eq!(origin_form(b"*", Method::Get), None);
        assert_eq!(origin_form(b"h:80", Method::Get), None);
        assert_eq!(absolute_authority(b"http://h:1/x"), Some(&b"h:1"[..]));
    }

    #[test]
    fn refresh_ahead_window() {
        // Born at 1000 with a 100 s lifetime: fresh until 1100.
        let meta = crate::store::item::ItemMeta::new(1000, 0, 100);
        assert!(!refresh_ahead_due(&meta, 1089, 10));
        assert!(refresh_ahead_due(&meta, 1090, 10));
        assert!(refresh_ahead_due(&meta, 1099, 10));
        assert!(!refresh_ahead_due(&meta, 1100, 10), "stale: not this path");
        assert!(!refresh_ahead_due(&meta, 1099, 0), "off");
        assert!(refresh_ahead_due(&meta, 1050, 50));
        assert!(!refresh_ahead_due(&meta, 1049, 50));
    }
}
