//! The origin side of a worker: a pool of keep-alive connections, the fetch
//! that rides on each, response framing, storing and answering.
//!
//! A [`Fetch`] is one request on its way to the origin. It waits in the
//! pool's bounded queue when every allowed connection is busy. A reused
//! connection that the origin closed before answering gets the request
//! again, once, on a fresh connection, when the method is idempotent.
//!
//! Two caps bound the connections: `limits.origin_connections_max` per
//! worker, and `limits.origin_connections_total_max` for the process, kept
//! in the shared [`OriginBudget`](super::lease::OriginBudget). A request
//! beyond either waits in the worker's queue (`limits.origin_queue_max`)
//! and beyond that is answered 503 with `Retry-After` at once. A worker held
//! back only by the process-wide cap says so in the budget; the other
//! workers then close connections rather than keep them idle, and the held
//! worker takes the freed slots on its next tick.

use std::collections::VecDeque;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Instant;

use crate::config::{Limits, HEADERS_COUNT_CAP};
use crate::http::chunked::ChunkedDecoder;
use crate::http::freshness::{storable, Storable};
use crate::http::invalidation::{for_each_invalidated, Target};
use crate::http::request::Method;
use crate::http::response::{parse_response, ResponseFraming};
use crate::http::{headers, Parsed};
use crate::metrics::{Counter, Histogram};
use crate::runtime::io::Token;
use crate::store::{key_hash, ItemMeta};

use super::coalesce::Outcome;
use super::compose::{
    is_dropped_on_forward, put_error, put_field, put_field_u64, put_status_line, VIA,
};
use super::{put_connection, Op, Proxy, Socket, TimeoutKind};

/// Where misses go.
#[derive(Clone, Debug)]
pub struct OriginTarget {
    pub addr: SocketAddr,
    /// Sent as Host when the client sent none (HTTP/1.0).
    pub authority: String,
}

/// One request on its way to the origin.
pub(super) struct Fetch {
    pub client: Token,
    pub seq: u64,
    pub method: Method,
    /// The client asked HEAD (the origin is asked GET).
    pub client_head: bool,
    pub client_minor_version: u8,
    pub keep_alive: bool,
    /// The request as the origin gets it.
    pub req: Vec<u8>,
    /// Hash and key when the answer may be stored.
    pub key: Option<(u64, Box<[u8]>)>,
    /// The cache was consulted (GET/HEAD): the answer is a miss, not a pass.
    pub lookup: bool,
    pub request_time_secs: u64,
    pub retried: bool,
    /// This fetch leads the fill with this id (see `coalesce`).
    pub fill_id: Option<u64>,
    /// `host\0path` of an unsafe request: what its answer may invalidate.
    pub target_key: Option<Box<[u8]>>,
    /// What the lookup found, for Cache-Status `fwd` (miss, stale, request).
    pub found: super::Found,
    /// The request is conditional or asks for a range: its answer (304, 206)
    /// is its own, so it neither leads nor joins a fill.
    pub personal: bool,
    /// The request body, de-chunked.
    pub body: Vec<u8>,
    /// When the request was parsed; its response time counts from here.
    pub started: Instant,
    /// Sent without waiting for others: the key is marked hit-for-miss.
    pub bypass: bool,
    /// Waited for another's fetch already (counted once as coalesced, even
    /// when a failed fill sends it to wait again).
    pub parked: bool,
    /// Its response is being streamed: the head and the body so far are in
    /// the client's output already (see `stream_start`).
    pub streaming: bool,
}

impl Fetch {
    /// End the request head: framing for the body, the blank line, the body.
    pub fn finish_request(&mut self) {
        if !self.body.is_empty()
            || matches!(self.method, Method::Post | Method::Put | Method::Patch)
        {
            put_field_u64(&mut self.req, b"Content-Length", self.body.len() as u64);
        }
        self.req.extend_from_slice(b"\r\n");
        self.req.extend_from_slice(&self.body);
        self.body = Vec::new();
    }

    /// The method the origin sees.
    fn origin_method(&self) -> Method {
        if self.client_head {
            Method::Get
        } else {
            self.method
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Connecting,
    Busy,
    Idle,
}

/// The response being received on a busy connection, once its head is in.
struct Progress {
    status: u16,
    keep_alive: bool,
    framing: Framing,
    /// Status line and forwarded fields, without Age; what a hit replays.
    head: Vec<u8>,
    /// The origin's Age value, passed on to this client only.
    age_secs: Option<u64>,
    storable: Option<Storable>,
    /// Keys this answer invalidates (RFC 9111 §4.4), removed once it is complete.
    invalidate: Vec<Box<[u8]>>,
    body: Vec<u8>,
    /// Body bytes go to the streaming clients as they arrive.
    streaming: bool,
}

enum Framing {
    Empty,
    Length(u64),
    Chunked(ChunkedDecoder),
    Close,
}

pub(super) struct OriginConn {
    pub fd: RawFd,
    pub closing: bool,
    state: State,
    pub fetch: Option<Box<Fetch>>,
    /// The request bytes the kernel may be sending; kept until `Sent`.
    req_inflight: Vec<u8>,
    sending: bool,
    pub inbuf: Vec<u8>,
    progress: Option<Progress>,
    /// Responses completed on this connection.
    served: u32,
    /// Any byte of the current response arrived.
    received_any: bool,
    /// Connect or response deadline, or the idle start.
    since: Instant,
    /// When the current request was handed to the kernel to send.
    sent_at: Instant,
}

impl OriginConn {
    pub fn is_idle(&self) -> bool {
        self.state == State::Idle
    }

    pub(super) fn timed_out(&self, now: Instant, limits: &Limits) -> Option<TimeoutKind> {
        let waited = now.duration_since(self.since);
        match self.state {
            State::Connecting if waited >= limits.origin_connect_timeout => {
                Some(TimeoutKind::OriginConnect)
            }
            State::Busy if waited >= limits.origin_response_timeout => {
                Some(TimeoutKind::OriginResponse)
            }
            State::Idle if waited >= limits.origin_idle_timeout => Some(TimeoutKind::OriginIdle),
            _ => None,
        }
    }
}

/// One worker's origin connections.
pub(super) struct Pool {
    pub target: OriginTarget,
    /// Idle connections, most recently used last.
    pub idle: Vec<Token>,
    /// Connections open or opening (busy, idle, closing).
    pub conns_count: usize,
    pub queue: VecDeque<Box<Fetch>>,
    /// This worker is counted in the budget as waiting for a slot.
    starving: bool,
    conns_max: usize,
    idle_max: usize,
    queue_max: usize,
}

impl Pool {
    pub fn new(target: OriginTarget, limits: &Limits) -> Pool {
        Pool {
            target,
            idle: Vec::with_capacity(limits.origin_idle_max),
            conns_count: 0,
            queue: VecDeque::new(),
            starving: false,
            conns_max: limits.origin_connections_max,
            idle_max: limits.origin_idle_max,
            queue_max: limits.origin_queue_max,
        }
    }
}

fn parse_age(v: &[u8]) -> Option<u64> {
    let v = headers::trim_ows(v);
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // Saturate like delta-seconds (RFC 9111 §1.2.2).
    Some(
        std::str::from_utf8(v)
            .ok()?
            .parse::<u64>()
            .unwrap_or(1 << 31),
    )
}

impl Proxy {
    fn origin(&mut self, token: Token) -> Option<&mut OriginConn> {
        match self.socket_mut(token)? {
            Socket::Origin(o) => Some(o),
            _ => None,
        }
    }

    /// Send a fetch to the origin: an idle connection, a new one, or the queue.
    pub(super) fn dispatch(&mut self, fetch: Box<Fetch>) {
        self.counters().incr(Counter::OriginFetches);
        self.dispatch_quiet(fetch);
    }

    fn dispatch_quiet(&mut self, fetch: Box<Fetch>) {
        if let Some(token) = self.pool.idle.pop() {
            self.origin_assign(token, fetch);
        } else if self.origin_slot_take() {
            self.origin_open(fetch);
        } else if self.pool.queue.len() < self.pool.queue_max {
            self.pool.queue.push_back(fetch);
            self.pool_note_starving();
        } else {
            self.counters().incr(Counter::ErrOriginBusy);
            self.fail_fetch(fetch, 503, "origin-queue-full");
        }
    }

    /// Room for one more connection under both caps; takes a process-wide
    /// slot, which the connection gives back when it is gone.
    fn origin_slot_take(&mut self) -> bool {
        self.pool.conns_count < self.pool.conns_max && self.leases.origin_budget.try_take()
    }

    /// Start queued fetches while connections are available.
    pub(super) fn pool_next(&mut self) {
        while !self.pool.queue.is_empty() {
            if let Some(token) = self.pool.idle.pop() {
                let fetch = self.pool.queue.pop_front().expect("checked non-empty");
                self.origin_assign(token, fetch);
            } else if self.origin_slot_take() {
                let fetch = self.pool.queue.pop_front().expect("checked non-empty");
                self.origin_open(fetch);
            } else {
                break;
            }
        }
        self.pool_note_starving();
    }

    /// Tell the budget whether this worker holds requests back only for
    /// want of a process-wide slot.
    fn pool_note_starving(&mut self) {
        let starving = !self.pool.queue.is_empty()
            && self.pool.idle.is_empty()
            && self.pool.conns_count < self.pool.conns_max;
        if starving != self.pool.starving {
            self.pool.starving = starving;
            self.leases.origin_budget.set_starving(starving);
        }
    }

    /// An origin connection's slot was freed: both caps get it back.
    pub(super) fn origin_conn_gone(&mut self) {
        self.pool.conns_count -= 1;
        self.leases.origin_budget.give_back();
        self.counters().incr(Counter::OriginConnectionsClosed);
    }

    /// Per tick: while another worker waits for a process-wide slot, idle
    /// connections here are closed; a worker that waits tries again.
    pub(super) fn origin_tick(&mut self) {
        if self.leases.origin_budget.is_contended() && self.pool.queue.is_empty() {
            for token in std::mem::take(&mut self.pool.idle) {
                self.close_socket(token);
            }
        }
        self.pool_next();
    }

    fn origin_open(&mut self, fetch: Box<Fetch>) {
        let addr = self.pool.target.addr;
        let fd = match crate::sys::stream_socket(&addr) {
            Ok(fd) => fd,
            Err(e) => {
                log::error!("origin {addr}: cannot create a socket: {e}");
                self.leases.origin_budget.give_back();
                self.counters().incr(Counter::ErrOriginConnect);
                self.fail_fetch(fetch, 502, "origin-socket");
                return;
            }
        };
        let entry = self.slots.vacant_entry();
        let slot = entry.key();
        let token = (u64::from(self.generations[slot]) << 32) | slot as u64;
        let inbuf = self.spare.pop().unwrap_or_default();
        self.slots.insert(Socket::Origin(OriginConn {
            fd,
            closing: false,
            state: State::Connecting,
            fetch: Some(fetch),
            req_inflight: Vec::new(),
            sending: false,
            inbuf,
            progress: None,
            served: 0,
            received_any: false,
            since: self.clock.now,
            sent_at: self.clock.now,
        }));
        self.pool.conns_count += 1;
        self.counters().incr(Counter::OriginConnections);
        self.ops.push(Op::Connect { token, fd, addr });
    }

    /// Put a fetch on a connected connection and send its request.
    fn origin_assign(&mut self, token: Token, fetch: Box<Fetch>) {
        let now = self.clock.now;
        let Some(o) = self.origin(token) else {
            // Cannot happen: idle tokens are live. Be safe anyway.
            self.dispatch_quiet(fetch);
            return;
        };
        debug_assert!(!o.sending && o.progress.is_none());
        o.state = State::Busy;
        o.since = now;
        o.received_any = false;
        o.fetch = Some(fetch);
        self.origin_send(token);
    }

    fn origin_send(&mut self, token: Token) {
        // The loop clock is taken before the wait for events; durations
        // need the time of this very event.
        let now = Instant::now();
        let Some(o) = self.origin(token) else { return };
        let Some(fetch) = o.fetch.as_mut() else {
            return;
        };
        // The kernel reads from `req_inflight` until `Sent`; the fetch keeps
        // an empty buffer meanwhile.
        std::mem::swap(&mut o.req_inflight, &mut fetch.req);
        o.sending = true;
        o.sent_at = now;
        let (fd, ptr, len) = (o.fd, o.req_inflight.as_ptr(), o.req_inflight.len());
        self.ops.push(Op::Send {
            token,
            fd,
            ptr,
            len,
        });
    }

    pub(super) fn origin_connected(&mut self, token: Token, result: Result<(), i32>) {
        let now = self.clock.now;
        let Some(o) = self.origin(token) else { return };
        match result {
            Ok(()) => {
                o.state = State::Busy;
                o.since = now;
                let fd = o.fd;
                self.ops.push(Op::StartRecv { token, fd });
                self.origin_send(token);
            }
            Err(errno) => {
                let fetch = o.fetch.take();
                let addr = self.pool.target.addr;
                self.log_origin_error(&format!(
                    "origin {addr}: connect: {}",
                    std::io::Error::from_raw_os_error(errno)
                ));
                self.counters().incr(Counter::ErrOriginConnect);
                self.close_socket(token);
                if let Some(f) = fetch {
                    self.fail_fetch(f, 502, "origin-connect");
                }
            }
        }
    }

    pub(super) fn origin_sent(&mut self, token: Token, result: Result<(), i32>) {
        let Some(o) = self.origin(token) else { return };
        o.sending = false;
        if let Some(fetch) = o.fetch.as_mut() {
            // Keep the bytes with the fetch (a retry needs them).
            std::mem::swap(&mut o.req_inflight, &mut fetch.req);
        }
        o.req_inflight.clear();
        if let Err(errno) = result {
            self.origin_broken(token, "send", Some(errno));
        }
    }

    pub(super) fn origin_recv(&mut self, token: Token, data: &[u8]) {
        let Some(o) = self.origin(token) else { return };
        if o.state != State::Busy {
            // Bytes nobody asked for: the connection is out of step.
            self.close_socket(token);
            return;
        }
        o.received_any = true;
        if o.progress.is_none() {
            o.inbuf.extend_from_slice(data);
            if !self.origin_head(token) {
                return;
            }
            self.stream_start(token);
            let Some(o) = self.origin(token) else { return };
            let mut rest = std::mem::take(&mut o.inbuf);
            self.origin_body(token, &rest);
            if let Some(o) = self.origin(token) {
                rest.clear();
                o.inbuf = rest;
            }
        } else {
            self.origin_body(token, data);
        }
    }

    /// Parse the response head from `inbuf`. Returns true once it is in; the
    /// body bytes that came with it are left in `inbuf`.
    fn origin_head(&mut self, token: Token) -> bool {
        let head_max = self.limits.head_bytes_max.max(64 << 10);
        let headers_max = self.limits.headers_count_max;
        let response_time_secs = self.clock.unix_secs;
        let Some(o) = self.origin(token) else {
            return false;
        };
        let Some(fetch) = o.fetch.as_ref() else {
            return false;
        };
        let mut fields =
            [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; HEADERS_COUNT_CAP];
        // The request as sent, for the storability rules (Authorization, no-store).
        let mut req_fields = [httparse::EMPTY_HEADER; HEADERS_COUNT_CAP];
        let mut req = httparse::Request::new(&mut req_fields[..headers_max]);
        let req_sent = if fetch.req.is_empty() {
            &o.req_inflight
        } else {
            &fetch.req
        };
        let _ = req.parse(req_sent);
        let inbuf = std::mem::take(&mut o.inbuf);
        let mut skip = 0;
        let result = loop {
            match parse_response(&inbuf[skip..], &mut fields[..headers_max], false, head_max) {
                Ok(Parsed::Partial) => break Ok(None),
                Ok(Parsed::Complete(h)) if (100..200).contains(&h.status) => {
                    skip += h.head_len; // interim responses are not relayed
                }
                Ok(Parsed::Complete(h)) => {
                    let mut head = Vec::with_capacity(h.head_len + 64);
                    put_status_line(&mut head, h.status, h.reason);
                    let mut age_secs = None;
                    for f in h.headers {
                        let name = f.name.as_bytes();
                        if is_dropped_on_forward(h.headers, name) {
                            continue;
                        }
                        if name.eq_ignore_ascii_case(b"age") {
                            if age_secs.is_none() {
                                age_secs = parse_age(f.value);
                            }
                            continue;
                        }
                        put_field(&mut head, name, f.value);
                    }
                    // Until secondary keys (issue 5) exist, a response that
                    // varies is relayed, never stored or shared.
                    let varies = headers::values(h.headers, b"vary")
                        .any(|v| !headers::trim_ows(v).is_empty());
                    let decision = fetch.key.as_ref().filter(|_| !varies).and_then(|_| {
                        storable(
                            fetch.origin_method(),
                            req.headers,
                            h.status,
                            h.headers,
                            fetch.request_time_secs,
                            response_time_secs,
                        )
                    });
                    let mut invalidate = Vec::new();
                    if let Some(target) = fetch.target_key.as_deref() {
                        let split = target.iter().position(|&b| b == 0).unwrap_or(0);
                        let target = Target {
                            scheme: b"http",
                            host: &target[..split],
                            path: &target[split + 1..],
                        };
                        for_each_invalidated(
                            fetch.method,
                            h.status,
                            &target,
                            h.headers,
                            |host, path| {
                                let mut key = Vec::with_capacity(host.len() + 1 + path.len());
                                key.extend(host.iter().map(u8::to_ascii_lowercase));
                                key.push(0);
                                key.extend_from_slice(path);
                                invalidate.push(key.into_boxed_slice());
                            },
                        );
                    }
                    let framing = match h.body {
                        ResponseFraming::Empty => Framing::Empty,
                        ResponseFraming::Length(0) => Framing::Empty,
                        ResponseFraming::Length(n) => Framing::Length(n),
                        ResponseFraming::Chunked => Framing::Chunked(ChunkedDecoder::new()),
                        ResponseFraming::Close => Framing::Close,
                    };
                    break Ok(Some((
                        Progress {
                            status: h.status,
                            keep_alive: h.keep_alive,
                            framing,
                            head,
                            age_secs,
                            storable: decision,
                            invalidate,
                            body: Vec::new(),
                            streaming: false,
                        },
                        skip + h.head_len,
                    )));
                }
                Err(e) => break Err(e),
            }
        };
        let o = self.origin(token).expect("checked above");
        match result {
            Ok(None) => {
                o.inbuf = inbuf;
                if o.inbuf.len() > head_max {
                    self.origin_bad_response(token, "response head too large");
                }
                false
            }
            Ok(Some((progress, consumed))) => {
                let mut inbuf = inbuf;
                inbuf.drain(..consumed);
                o.inbuf = inbuf;
                o.progress = Some(progress);
                true
            }
            Err(e) => {
                o.inbuf = inbuf;
                self.origin_bad_response(token, e.detail());
                false
            }
        }
    }

    /// Feed response body bytes; completes the fetch when the body is whole.
    fn origin_body(&mut self, token: Token, data: &[u8]) {
        let bytes_max = self.limits.origin_response_bytes_max;
        let Some(o) = self.origin(token) else { return };
        let Some(p) = o.progress.as_mut() else { return };
        let body_before = p.body.len();
        let done = match &mut p.framing {
            Framing::Empty => data.is_empty(),
            Framing::Length(remaining) => {
                let take = (*remaining).min(data.len() as u64) as usize;
                if take < data.len() {
                    // More bytes than the response has: the connection is out of step.
                    p.keep_alive = false;
                }
                p.body.extend_from_slice(&data[..take]);
                *remaining -= take as u64;
                *remaining == 0
            }
            Framing::Chunked(decoder) => match decoder.decode(data, &mut p.body) {
                Ok((used, done)) => {
                    if used < data.len() {
                        p.keep_alive = false;
                    }
                    done
                }
                Err(_) => {
                    self.origin_bad_response(token, "invalid chunked body");
                    return;
                }
            },
            Framing::Close => {
                p.body.extend_from_slice(data);
                false
            }
        };
        if matches!(p.framing, Framing::Empty) && !data.is_empty() {
            p.keep_alive = false;
        }
        if p.head.len() + p.body.len() > bytes_max {
            self.origin_bad_response(
                token,
                "response larger than limits.origin_response_bytes_max",
            );
            return;
        }
        let complete = done || matches!(p.framing, Framing::Empty);
        if p.streaming && p.body.len() > body_before {
            self.stream_body(token, body_before);
        }
        if complete {
            self.origin_complete(token);
        }
    }

    pub(super) fn origin_recv_end(&mut self, token: Token, errno: Option<i32>) {
        let Some(o) = self.origin(token) else { return };
        match (o.state, o.progress.as_ref().map(|p| &p.framing)) {
            (State::Busy, Some(Framing::Close)) if errno.is_none() => {
                if let Some(p) = o.progress.as_mut() {
                    p.keep_alive = false;
                }
                self.origin_complete(token);
            }
            (State::Busy, _) => {
                self.origin_broken(token, "closed before the response was complete", errno)
            }
            _ => self.close_socket(token),
        }
    }

    /// The connection failed under a fetch: retry once or answer 502.
    fn origin_broken(&mut self, token: Token, what: &str, errno: Option<i32>) {
        let Some(o) = self.origin(token) else { return };
        let fetch = o.fetch.take();
        let retryable = o.served > 0 && !o.received_any;
        let req_bytes = if o.sending {
            o.req_inflight.clone()
        } else {
            Vec::new()
        };
        self.close_socket(token);
        let Some(mut fetch) = fetch else { return };
        if fetch.req.is_empty() {
            fetch.req = req_bytes;
        }
        if retryable && fetch.method.is_idempotent() && !fetch.retried && !fetch.req.is_empty() {
            fetch.retried = true;
            self.counters().incr(Counter::OriginRetries);
            self.counters().incr(Counter::OriginFetches);
            // A fresh connection: the other idle ones may be just as stale.
            if self.origin_slot_take() {
                self.origin_open(fetch);
            } else {
                self.dispatch_quiet(fetch);
            }
            return;
        }
        let addr = self.pool.target.addr;
        let reason = match errno {
            Some(e) => format!(
                "origin {addr}: {what}: {}",
                std::io::Error::from_raw_os_error(e)
            ),
            None => format!("origin {addr}: {what}"),
        };
        self.log_origin_error(&reason);
        self.counters().incr(Counter::ErrOriginClosed);
        self.fail_fetch(fetch, 502, "origin-closed");
    }

    fn origin_bad_response(&mut self, token: Token, what: &str) {
        let addr = self.pool.target.addr;
        self.log_origin_error(&format!("origin {addr}: bad response: {what}"));
        self.counters().incr(Counter::ErrOriginResponse);
        let Some(o) = self.origin(token) else { return };
        let fetch = o.fetch.take();
        self.close_socket(token);
        if let Some(f) = fetch {
            self.fail_fetch(f, 502, "origin-bad-response");
        }
    }

    pub(super) fn origin_timeout(&mut self, token: Token, kind: TimeoutKind) {
        let Some(o) = self.origin(token) else { return };
        let fetch = o.fetch.take();
        self.close_socket(token);
        let addr = self.pool.target.addr;
        let (detail, what) = match kind {
            TimeoutKind::OriginConnect => ("origin-connect-timeout", "connect timed out"),
            TimeoutKind::OriginResponse => ("origin-timeout", "response timed out"),
            _ => return, // an idle connection: just closed
        };
        self.log_origin_error(&format!("origin {addr}: {what}"));
        self.counters().incr(Counter::ErrOriginTimeout);
        if let Some(f) = fetch {
            self.fail_fetch(f, 504, detail);
        }
    }

    /// The whole response is in: store it when allowed, answer the client,
    /// and give the connection back to the pool.
    fn origin_complete(&mut self, token: Token) {
        let object_max = self.limits.object_bytes_max;
        let draining = self.draining;
        let Some(o) = self.origin(token) else { return };
        let (Some(fetch), Some(p)) = (o.fetch.take(), o.progress.take()) else {
            return;
        };
        o.served += 1;
        let sent_at = o.sent_at;
        let reusable = p.keep_alive && !draining && !o.sending && o.inbuf.is_empty();
        let origin_time = sent_at.elapsed();
        self.counters()
            .record_duration(Histogram::Origin, origin_time);
        for key in &p.invalidate {
            if self.store.remove(key_hash(key), key) {
                self.counters().incr(Counter::Invalidated);
            }
        }
        let mut stored = false;
        if let (Some((hash, key)), Some(s)) = (fetch.key.as_ref(), p.storable.as_ref()) {
            if p.body.len() <= object_max && p.status == 200 {
                let meta = ItemMeta::new(self.clock.unix_secs, s.initial_age_secs, s.lifetime_secs);
                stored = self.store.insert(*hash, key, &p.head, &p.body, meta);
                if stored {
                    self.counters().incr(Counter::Stored);
                }
            }
        }
        // Release the connection before answering, so a queued fetch can use
        // it. Idle, it would hold a process-wide slot another worker waits for.
        let wanted_elsewhere =
            self.leases.origin_budget.is_contended() && self.pool.queue.is_empty();
        if reusable && self.pool.idle.len() < self.pool.idle_max && !wanted_elsewhere {
            let now = self.clock.now;
            let o = self.origin(token).expect("checked above");
            o.state = State::Idle;
            o.since = now;
            self.pool.idle.push(token);
            self.pool_next();
        } else {
            self.close_socket(token);
        }
        let resp = if fetch.streaming {
            Vec::new() // all of it is out already
        } else {
            self.compose_response(&fetch, &p, stored, false)
        };
        let shareable = p.storable.is_some() && p.status == 200;
        let outcome = if shareable || p.status >= 500 {
            Outcome::Share
        } else {
            Outcome::Release
        };
        self.fill_complete(&fetch, outcome, stored, |proxy, waiter| {
            proxy.compose_response(waiter, &p, false, true)
        });
        let what = if fetch.bypass {
            Counter::OutcomeBypass
        } else {
            match fwd_reason(&fetch) {
                b"stale" => Counter::OutcomeStale,
                b"request" => Counter::OutcomeRequest,
                b"method" => Counter::OutcomeMethod,
                _ => Counter::OutcomeMiss,
            }
        };
        self.fetch_respond(&fetch, resp, what);
        self.give_buffer(fetch.req);
    }

    /// Queue the response to a fetch's client; count what the cache did
    /// (`outcome`) and the time since the request was parsed.
    pub(super) fn fetch_respond(&mut self, fetch: &Fetch, resp: Vec<u8>, outcome: Counter) {
        let h = if fetch.lookup {
            Histogram::RequestMiss
        } else {
            Histogram::RequestPass
        };
        self.counters().incr(outcome);
        self.counters().record_duration(h, fetch.started.elapsed());
        self.client_respond(fetch.client, Some(fetch.seq), resp, !fetch.keep_alive);
    }

    /// A response from the origin as `fetch`'s client gets it.
    fn compose_response(
        &mut self,
        fetch: &Fetch,
        p: &Progress,
        stored: bool,
        collapsed: bool,
    ) -> Vec<u8> {
        let mut resp = self.take_buffer();
        let bodiless =
            put_response_head(&mut resp, fetch, p, p.body.len() as u64, stored, collapsed);
        if !fetch.client_head && !bodiless {
            resp.extend_from_slice(&p.body);
        }
        resp
    }
}

/// The head of a response from the origin as `fetch`'s client gets it, with
/// `Content-Length: body_len`. Returns whether the status has no body.
fn put_response_head(
    resp: &mut Vec<u8>,
    fetch: &Fetch,
    p: &Progress,
    body_len: u64,
    stored: bool,
    collapsed: bool,
) -> bool {
    resp.extend_from_slice(&p.head);
    let bodiless = (100..200).contains(&p.status) || p.status == 204 || p.status == 304;
    if !bodiless {
        put_field_u64(resp, b"Content-Length", body_len);
    }
    if let Some(age) = p.age_secs {
        put_field_u64(resp, b"Age", age);
    }
    resp.extend_from_slice(b"Cache-Status: ringcache; fwd=");
    resp.extend_from_slice(fwd_reason(fetch));
    resp.extend_from_slice(b"; fwd-status=");
    super::compose::put_u64(resp, u64::from(p.status));
    if stored {
        resp.extend_from_slice(b"; stored");
    }
    if collapsed {
        resp.extend_from_slice(b"; collapsed");
    }
    resp.extend_from_slice(b"\r\n");
    put_field(resp, b"Via", VIA);
    put_connection(resp, fetch.keep_alive, fetch.client_minor_version);
    resp.extend_from_slice(b"\r\n");
    bodiless
}

impl Proxy {
    /// Answer a fetch's client with an error ringcache generates.
    pub(super) fn fail_fetch(&mut self, fetch: Box<Fetch>, status: u16, detail: &str) {
        self.fill_failed(&fetch, status, detail);
        if fetch.streaming {
            // Its head and part of its body are out: the connection ends
            // short of the Content-Length it announced, which the client
            // sees; an error response now would be read as body bytes.
            self.counters().incr(Counter::OutcomeError);
            self.client_respond(fetch.client, Some(fetch.seq), Vec::new(), true);
            self.give_buffer(fetch.req);
            return;
        }
        let date = self.clock.date;
        let mut resp = self.take_buffer();
        put_error(
            &mut resp,
            status,
            &date,
            Some(detail),
            Some(std::str::from_utf8(fwd_reason(&fetch)).unwrap_or("miss")),
            !fetch.keep_alive,
        );
        self.fetch_respond(&fetch, resp, Counter::OutcomeError);
        self.give_buffer(fetch.req);
    }

    /// A large shareable response's head is in (`Content-Length` at least
    /// `limits.coalesce_stream_bytes_min`, status 200, storable) and its
    /// fetch leads a fill: send the head now, and each body byte as it
    /// arrives (`stream_body`), to the filler's client and to this worker's
    /// waiters whose answer is the next one on their connection. Waiters
    /// behind other answers, or arriving later, get the whole response at
    /// the end as before; waiters on other workers are served from the store.
    fn stream_start(&mut self, token: Token) {
        let min = self.limits.coalesce_stream_bytes_min as u64;
        let Some(o) = self.origin(token) else { return };
        let (Some(fetch), Some(p)) = (o.fetch.as_ref(), o.progress.as_mut()) else {
            return;
        };
        let length = match p.framing {
            Framing::Length(n) if n >= min => n,
            _ => return,
        };
        if p.status != 200 || p.storable.is_none() || fetch.fill_id.is_none() {
            return;
        }
        p.streaming = true;
        let (Some(mut fetch), Some(p)) = (o.fetch.take(), o.progress.take()) else {
            return;
        };
        self.stream_begin(&mut fetch, &p, length, false);
        let mut waiters = self.fill_waiters_take(&fetch);
        for waiter in waiters.iter_mut() {
            self.stream_begin(waiter, &p, length, true);
        }
        self.fill_waiters_put(&fetch, waiters);
        if let Some(o) = self.origin(token) {
            o.fetch = Some(fetch);
            o.progress = Some(p);
        }
    }

    /// Start streaming to `f`'s client when its answer is the next one due.
    fn stream_begin(&mut self, f: &mut Fetch, p: &Progress, length: u64, collapsed: bool) {
        if f.client_head {
            return;
        }
        let Some(c) = self.client(f.client) else {
            return;
        };
        if c.queue.front().map(|e| e.seq) != Some(f.seq) {
            return; // an earlier answer on this connection is not out yet
        }
        // Nothing can come between: later answers wait behind this exchange.
        put_response_head(&mut c.out, f, p, length, false, collapsed);
        c.out.extend_from_slice(&p.body);
        f.streaming = true;
        self.counters().incr(Counter::Status2xx);
        self.mark_dirty(f.client);
    }

    /// Body bytes from `from` on arrived: pass them to every streaming client.
    fn stream_body(&mut self, token: Token, from: usize) {
        let Some(o) = self.origin(token) else { return };
        if o.fetch.is_none() || o.progress.is_none() {
            return;
        }
        let (Some(fetch), Some(p)) = (o.fetch.take(), o.progress.take()) else {
            return;
        };
        let chunk = &p.body[from..];
        self.stream_more(&fetch, chunk);
        let waiters = self.fill_waiters_take(&fetch);
        for waiter in &waiters {
            self.stream_more(waiter, chunk);
        }
        self.fill_waiters_put(&fetch, waiters);
        if let Some(o) = self.origin(token) {
            o.fetch = Some(fetch);
            o.progress = Some(p);
        }
    }

    fn stream_more(&mut self, f: &Fetch, chunk: &[u8]) {
        if !f.streaming {
            return;
        }
        if let Some(c) = self.client(f.client) {
            c.out.extend_from_slice(chunk);
            self.mark_dirty(f.client);
        }
    }

    /// Rate-limited log line about the origin (shares the client limit).
    fn log_origin_error(&mut self, what: &str) {
        if self.error_logs_sec != self.clock.unix_secs {
            self.error_logs_sec = self.clock.unix_secs;
            self.error_logs_this_sec = 0;
        }
        if self.error_logs_this_sec < super::CLIENT_ERROR_LOGS_PER_SEC_MAX {
            self.error_logs_this_sec += 1;
            log::warn!("{what}");
        }
    }
}

/// The Cache-Status `fwd` parameter (RFC 9211 §2.2) for a fetch.
fn fwd_reason(fetch: &Fetch) -> &'static [u8] {
    if fetch.lookup {
        match fetch.found {
            super::Found::Stale => b"stale",
            super::Found::NotAccepted => b"request",
            super::Found::Fresh | super::Found::Absent => b"miss",
        }
    } else if fetch.method.is_safe() {
        b"request"
    } else {
        b"method"
    }
}
