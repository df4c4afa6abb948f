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
//! and beyond that is answered 503 with `Retry-After` at once; one that
//! waits there longer than `limits.origin_queue_timeout` is answered the
//! same way (or stale, within stale-if-error). A worker held
//! back only by the process-wide cap says so in the budget; the other
//! workers then close connections rather than keep them idle, and the held
//! worker takes the freed slots on its next tick.

use std::collections::VecDeque;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Instant;

use crate::config::{Limits, BAN_STALE_WINDOW_SECS_MAX, HEADERS_COUNT_CAP};
use crate::http::chunked::ChunkedDecoder;
use crate::http::freshness::{decide, Exchange};
use crate::http::invalidation::{for_each_invalidated, Target};
use crate::http::request::Method;
use crate::http::response::{parse_response, ResponseFraming};
use crate::http::reuse::is_error_status;
use crate::http::sink::Out;
use crate::http::{headers, Parsed};
use crate::invalidate::{fields, Mode, RefreshEnd};
use crate::metrics::{Counter, Histogram};
use crate::runtime::io::Token;
use crate::store::ItemMeta;

use super::admission::{admit, Admission, Heads};
use super::coalesce::Outcome;
use super::compose::{
    is_dropped_on_forward, put_error, put_field, put_field_u64, put_status_line, VIA,
};
use super::revalidate::{client_not_modified, put_not_modified_head, Revalidation, NO_CLIENT};
use super::variants::purge_primary;
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
    /// The URL as sent, not a key: `origin_head` turns it (and the
    /// `Location` / `Content-Location` URLs) into keys with `KeyRules`.
    pub target_key: Option<Box<[u8]>>,
    /// What the lookup found, for Cache-Status `fwd` (miss, stale, request).
    pub found: super::Found,
    /// The request is conditional or asks for a range: its answer (304, 206)
    /// is its own, so it neither leads nor joins a fill.
    pub personal: bool,
    /// Something is stored for this key: how to validate it and when its
    /// stored response may stand in for an origin error (`revalidate`).
    pub revalidation: Option<Box<Revalidation>>,
    /// The request body, de-chunked.
    pub body: Vec<u8>,
    /// A range request fetched whole: the client gets its range of the answer.
    pub range: Option<Box<super::ranges::RangeAsk>>,
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
    /// Its access log record, when it is logged (see `super::access`).
    pub log: std::cell::Cell<Option<Box<crate::access_log::Record>>>,
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
    /// The tag field (`invalidation.tag_header`), if any, is its last line:
    /// stored, and cut from what clients get when `tag_header_strip`.
    head: Vec<u8>,
    /// The origin's Age value, passed on to this client only.
    age_secs: Option<u64>,
    storable: Option<Box<Admission>>,
    /// Keys this answer invalidates (RFC 9111 §4.4), removed once it is complete.
    invalidate: Vec<Box<[u8]>>,
    body: Vec<u8>,
    /// A 304 validated the stored response this progress now holds.
    validated: bool,
    /// Why a response to a cacheable request is not stored (Cache-Status `detail`).
    not_stored: Option<&'static str>,
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
    /// Fetches waiting for a connection, with when each was queued.
    pub queue: VecDeque<(Instant, Box<Fetch>)>,
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
            let now = self.clock.now;
            self.pool.queue.push_back((now, fetch));
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
                let (_, fetch) = self.pool.queue.pop_front().expect("checked non-empty");
                self.origin_assign(token, fetch);
            } else if self.origin_slot_take() {
                let (_, fetch) = self.pool.queue.pop_front().expect("checked non-empty");
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
        self.pool_expire_queued();
    }

    /// Per tick: fetches queued longer than `limits.origin_queue_timeout`
    /// are answered 503 with `Retry-After` (or stale, within
    /// stale-if-error). The queue is in arrival order: only its head is
    /// looked at.
    fn pool_expire_queued(&mut self) {
        let now = self.clock.now;
        let timeout = self.limits.origin_queue_timeout;
        let mut expired = 0u64;
        while self
            .pool
            .queue
            .front()
            .is_some_and(|(queued, _)| now.saturating_duration_since(*queued) >= timeout)
        {
            let (_, fetch) = self.pool.queue.pop_front().expect("checked non-empty");
            self.counters().incr(Counter::ErrOriginBusy);
            self.fail_fetch(fetch, 503, "origin-queue-timeout");
            expired += 1;
        }
        if expired > 0 {
            self.pool_note_starving();
            self.log_origin_error(&format!(
                "origin: {expired} request(s) waited {timeout:?} for an origin connection; answered 503"
            ));
        }
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
        let invalidator = std::sync::Arc::clone(&self.invalidator);
        let tag_header = invalidator.config.tag_header.as_bytes();
        let response_time_secs = self.clock.unix_secs;
        let policy = self.policy;
        let key_rules = std::rc::Rc::clone(&self.key_rules);
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
        // The whole array: the forwarded request has a few fields more than
        // the client sent (Via, X-Forwarded-For, Host).
        let mut req = httparse::Request::new(&mut req_fields);
        let req_sent = if fetch.req.is_empty() {
            &o.req_inflight
        } else {
            &fetch.req
        };
        // A request that does not parse back gives no fields to decide on
        // (Authorization, Vary): its answer is relayed, never stored.
        let req_whole = matches!(req.parse(req_sent), Ok(httparse::Status::Complete(_)));
        let inbuf = std::mem::take(&mut o.inbuf);
        let mut skip = 0;
        // 103 Early Hints go to the client ahead of the final response
        // (RFC 9110 §15.2, RFC 8297); other 1xx are consumed here.
        let mut interim = Vec::new();
        let result = loop {
            match parse_response(&inbuf[skip..], &mut fields[..headers_max], false, head_max) {
                Ok(Parsed::Partial) => break Ok(None),
                Ok(Parsed::Complete(h)) if (100..200).contains(&h.status) => {
                    if h.status == 103 {
                        put_status_line(&mut interim, h.status, h.reason);
                        for f in h.headers {
                            if !is_dropped_on_forward(h.headers, f.name.as_bytes()) {
                                put_field(&mut interim, f.name.as_bytes(), f.value);
                            }
                        }
                        interim.extend_from_slice(b"\r\n");
                    }
                    skip += h.head_len;
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
                    // The tag field goes last, as one line, in the relayed
                    // head and in the stored one, so that an answer built
                    // from either can cut it by looking at the tail alone.
                    fields::put_field_last(&mut head, tag_header);
                    let heads = Heads {
                        method: fetch.origin_method(),
                        request: req.headers,
                        status: h.status,
                        reason: h.reason,
                        response: h.headers,
                        request_time_secs: fetch.request_time_secs,
                        response_time_secs,
                    };
                    let decision = fetch
                        .key
                        .as_ref()
                        .filter(|_| req_whole)
                        .and_then(|_| admit(&heads, &policy))
                        .map(|mut a| {
                            if let Some(stored_head) = a.head.as_mut() {
                                fields::put_field_last(stored_head, tag_header);
                            }
                            Box::new(a)
                        });
                    let not_stored = match (&fetch.key, &decision) {
                        (Some(_), None) => Some(not_stored_detail(
                            &Exchange {
                                method: fetch.origin_method(),
                                request: req.headers,
                                status: h.status,
                                response: h.headers,
                                request_time_secs: fetch.request_time_secs,
                                response_time_secs,
                            },
                            &policy,
                        )),
                        _ => None,
                    };
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
                                key_rules.write(host, path, &mut key);
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
                            validated: false,
                            not_stored,
                            streaming: false,
                        },
                        skip + h.head_len,
                    )));
                }
                Err(e) => break Err(e),
            }
        };
        let (client, seq, minor) = (fetch.client, fetch.seq, fetch.client_minor_version);
        let o = self.origin(token).expect("checked above");
        match result {
            Ok(None) => {
                let mut inbuf = inbuf;
                inbuf.drain(..skip); // interim responses are handled once
                o.inbuf = inbuf;
                self.relay_interim(client, seq, minor, interim);
                let Some(o) = self.origin(token) else {
                    return false;
                };
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
                self.relay_interim(client, seq, minor, interim);
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
        let (Some(mut fetch), Some(mut p)) = (o.fetch.take(), o.progress.take()) else {
            return;
        };
        o.served += 1;
        let sent_at = o.sent_at;
        let reusable = p.keep_alive && !draining && !o.sending && o.inbuf.is_empty();
        let origin_time = sent_at.elapsed();
        self.counters()
            .record_duration(Histogram::Origin, origin_time);
        Proxy::log_origin(&mut fetch, p.status, origin_time);
        let mut scratch = self.take_buffer();
        for key in &p.invalidate {
            // Every variant of the URL, as a purge would (`purge_primary`).
            let purged = purge_primary(&self.reader, key, Mode::Hard, &mut scratch);
            if purged > 0 {
                self.counters().incr(Counter::Invalidated);
            }
        }
        self.give_buffer(scratch);
        // A 304 to ringcache's own conditional request (RFC 9111 §4.3.3).
        let conditional = fetch
            .revalidation
            .as_ref()
            .is_some_and(|r| r.conditional_at.is_some());
        let mut unselected = false;
        if p.status == 304 && conditional {
            match self.not_modified(&fetch, &p.head, p.age_secs) {
                Some(v) => {
                    p.head = v.head;
                    p.body = v.body;
                    p.status = v.status;
                    p.storable = v.storable;
                    p.age_secs = Some(v.age_secs);
                    p.validated = true;
                    p.not_stored = None;
                }
                None => unselected = true,
            }
        }
        let mut stored = false;
        if let (Some((hash, key)), Some(a), false) =
            (fetch.key.as_ref(), p.storable.as_deref(), unselected)
        {
            if p.body.len() <= object_max {
                let s = &a.stored;
                let meta = ItemMeta::new(self.clock.unix_secs, s.initial_age_secs, s.lifetime_secs);
                let head = a.head.as_deref().unwrap_or(&p.head);
                // How long past its lifetime it may still be served.
                let stale_secs = s.stale_while_revalidate_secs.max(s.stale_if_error_secs);
                stored = if p.validated {
                    // A validated response keeps the key it was found
                    // under (a variant's too: its marker still lists it).
                    self.insert_response(*hash, key, head, &p.body, meta, stale_secs)
                } else {
                    let variant = a.variant.as_ref();
                    self.store_response(key, variant, head, &p.body, meta, stale_secs)
                };
                if stored {
                    self.counters().incr(Counter::Stored);
                }
            } else if p.status == 200 {
                p.not_stored = Some("too-large");
            }
        }
        if let (Some((hash, key)), Some(_), false) =
            (fetch.key.as_ref(), fetch.revalidation.as_ref(), stored)
        {
            // A full answer that replaces the stored response but may not
            // be stored itself: the stored one is outdated (RFC 9111 §4.3.3).
            let replaces = !unselected
                && !p.validated
                && !is_error_status(p.status)
                && !matches!(p.status, 206 | 304);
            if replaces {
                self.store.remove(*hash, key);
            }
        }
        if fetch.range.is_some() && !stored {
            self.mark_hit_for_miss(&fetch); // later ranges of it go to the origin as ranges
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
        if unselected {
            // The stored response is gone or is not the one the 304
            // validates: ask again, without conditions.
            let at = fetch
                .revalidation
                .as_mut()
                .and_then(|r| r.conditional_at.take());
            match at {
                Some(at) if fetch.req.len() > at => {
                    fetch.req.truncate(at);
                    fetch.req.extend_from_slice(b"\r\n");
                    self.dispatch(fetch);
                }
                _ => self.fail_fetch(fetch, 502, "origin-not-modified"),
            }
            return;
        }
        let background = fetch.client == NO_CLIENT;
        if let Some(ticket) = fetch
            .revalidation
            .as_mut()
            .and_then(|r| r.refresh_ticket.as_mut())
        {
            // A queued refresh: done once a fresh object is stored.
            ticket.finish(if stored {
                RefreshEnd::Done
            } else {
                RefreshEnd::Failed
            });
        }
        let error = is_error_status(p.status);
        let resp = if background {
            None
        } else if fetch.streaming {
            Some(Vec::new()) // all of it is out already
        } else if error {
            Some(
                self.stale_on_error(&fetch, p.status)
                    .unwrap_or_else(|| self.compose_response(&fetch, &p, stored, false)),
            )
        } else {
            Some(self.compose_response(&fetch, &p, stored, false))
        };
        let outcome = match p.storable.as_deref() {
            Some(a) if a.shared_as_relayed() => Outcome::Share,
            Some(_) if stored => Outcome::FromStore,
            _ if p.status >= 500 => Outcome::Share,
            _ => Outcome::Release,
        };
        self.fill_complete(&fetch, outcome, stored, |proxy, waiter| {
            if error {
                if let Some(resp) = proxy.stale_on_error(waiter, p.status) {
                    return resp;
                }
            }
            proxy.compose_response(waiter, &p, false, true)
        });
        let (what, miss) = if fetch.bypass {
            (Counter::OutcomeBypass, None)
        } else {
            match fwd_reason(&fetch) {
                b"stale" => (Counter::OutcomeStale, None),
                b"request" => (Counter::OutcomeRequest, None),
                b"method" => (Counter::OutcomeMethod, None),
                b"bypass" => (Counter::OutcomeBypass, None),
                b"uri-miss" => (Counter::OutcomeMiss, Some(Counter::MissUri)),
                b"vary-miss" => (Counter::OutcomeMiss, Some(Counter::MissVary)),
                _ => (Counter::OutcomeMiss, None),
            }
        };
        if let Some(resp) = resp {
            if let Some(reason) = miss {
                self.counters().incr(reason);
            }
            self.fetch_respond(&fetch, resp, what);
        }
        self.give_buffer(fetch.req);
    }

    /// Relay interim responses (103) to the client of exchange `seq`, when
    /// it speaks HTTP/1.1 and every earlier response has been queued
    /// (an interim response must not overtake an earlier answer).
    fn relay_interim(&mut self, client: Token, seq: u64, minor: u8, interim: Vec<u8>) {
        if interim.is_empty() || minor == 0 {
            return;
        }
        let Some(c) = self.client(client) else { return };
        if c.queue
            .front()
            .is_some_and(|e| e.seq == seq && e.response.is_none())
        {
            c.out.extend_from_slice(&interim);
            self.mark_dirty(client);
        }
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
        let outer = self.log_swap_in(fetch, outcome);
        self.client_respond(fetch.client, Some(fetch.seq), resp, !fetch.keep_alive);
        self.log_swap_out(outer);
    }

    /// A response from the origin as `fetch`'s client gets it.
    fn compose_response(
        &mut self,
        fetch: &Fetch,
        p: &Progress,
        stored: bool,
        collapsed: bool,
    ) -> Vec<u8> {
        let cut = self.tag_cut(&p.head);
        if let Some(ask) = fetch.range.as_deref().filter(|_| p.status == 200) {
            let head = &p.head[..p.head.len() - cut];
            let (body, age) = (&p.body[..], p.age_secs);
            return self.compose_ranged(fetch, ask, head, body, age, (stored, collapsed));
        }
        let mut resp = self.take_buffer();
        let len = p.body.len() as u64;
        let bodiless = put_response_head(&mut resp, fetch, p, len, (stored, collapsed), cut);
        if !fetch.client_head && !bodiless {
            resp.extend_from_slice(&p.body);
        }
        resp
    }
}

/// The head of a response from the origin as `fetch`'s client gets it, with
/// `Content-Length: body_len`; `flags`: (stored, collapsed) for
/// Cache-Status; `tag_cut`: bytes of the tag field at the end of `p.head`
/// to leave out (see `Proxy::tag_cut`). Returns whether the status has no
/// body.
fn put_response_head(
    resp: &mut Vec<u8>,
    fetch: &Fetch,
    p: &Progress,
    body_len: u64,
    (stored, collapsed): (bool, bool),
    tag_cut: usize,
) -> bool {
    // The client's own preconditions, when ringcache validated for it
    // (RFC 9111 §4.3.2): a 304 from the response it would get.
    let not_modified = p.status == 200 && client_not_modified(fetch, &p.head);
    let bodiless =
        not_modified || (100..200).contains(&p.status) || p.status == 204 || p.status == 304;
    if not_modified {
        put_not_modified_head(resp, &p.head);
    } else {
        resp.extend_from_slice(&p.head[..p.head.len() - tag_cut]);
    }
    if !bodiless {
        put_field_u64(resp, b"Content-Length", body_len);
    }
    if let Some(age) = p.age_secs {
        put_field_u64(resp, b"Age", age);
    }
    resp.extend_from_slice(b"Cache-Status: ringcache; fwd=");
    resp.extend_from_slice(fwd_reason(fetch));
    resp.extend_from_slice(b"; fwd-status=");
    let fwd_status = if p.validated { 304 } else { p.status };
    super::compose::put_u64(resp, u64::from(fwd_status));
    if let (true, Some(s)) = (p.validated, p.storable.as_ref()) {
        resp.extend_from_slice(b"; ttl=");
        let ttl = s.stored.lifetime_secs.min(i64::MAX as u64) as i64
            - s.stored.initial_age_secs.min(i64::MAX as u64) as i64;
        let _ = Out::put_i64(resp, ttl);
    }
    if stored {
        resp.extend_from_slice(b"; stored");
    }
    if collapsed {
        resp.extend_from_slice(b"; collapsed");
    }
    if let (Some(detail), false) = (p.not_stored, stored) {
        resp.extend_from_slice(b"; detail=");
        resp.extend_from_slice(detail.as_bytes());
    }
    resp.extend_from_slice(b"\r\n");
    put_field(resp, b"Via", VIA);
    put_connection(resp, fetch.keep_alive, fetch.client_minor_version);
    resp.extend_from_slice(b"\r\n");
    bodiless
}

impl Proxy {
    /// Store one response under `key` (a primary key or a variant key),
    /// the only insert of a response: the bans learn until when it may be
    /// served (its expiry, plus `stale_secs` of stale-while-revalidate or
    /// stale-if-error, within `BAN_STALE_WINDOW_SECS_MAX`), and once it is
    /// in, the tag index learns its tags (the last line of `head`) under
    /// `key`.
    pub(super) fn insert_response(
        &mut self,
        hash: u64,
        key: &[u8],
        head: &[u8],
        body: &[u8],
        meta: ItemMeta,
        stale_secs: u64,
    ) -> bool {
        let stale_secs = stale_secs.min(BAN_STALE_WINDOW_SECS_MAX);
        self.invalidator
            .bans
            .note_servable_until(meta.expires_secs() + stale_secs);
        if !self.store.insert(hash, key, head, body, meta) {
            return false;
        }
        let tag_header = self.invalidator.config.tag_header.as_bytes();
        let tag_len = fields::last_field_len(head, tag_header);
        self.index_tags(hash, key, &head[head.len() - tag_len..]);
        true
    }

    /// Bytes of the tag field at the end of a stored or relayed head that
    /// a client's answer leaves out: its length with
    /// `invalidation.tag_header_strip`, else 0.
    #[inline]
    pub(super) fn tag_cut(&self, head: &[u8]) -> usize {
        let inv = &self.invalidator.config;
        if inv.tag_header_strip {
            fields::last_field_len(head, inv.tag_header.as_bytes())
        } else {
            0
        }
    }

    /// Record the tags of an object just stored (`field`: its tag field
    /// line, or empty) in the tag index, within the per-object limits.
    fn index_tags(&mut self, hash: u64, key: &[u8], field: &[u8]) {
        let inv = &self.invalidator;
        let field = field.strip_suffix(b"\r\n").unwrap_or(field);
        let value = field
            .iter()
            .position(|&b| b == b':')
            .map_or(&[][..], |i| &field[i + 1..]);
        let mut tags: [&[u8]; 256] = [&[]; 256];
        let mut n = 0;
        let mut skipped = false;
        for t in fields::tags(headers::trim_ows(value)) {
            if n == inv.config.tags_per_object_max || t.len() > inv.config.tag_bytes_max {
                skipped = true;
                continue;
            }
            tags[n] = t;
            n += 1;
        }
        if skipped {
            // A tag purge of those tags falls back to a ban from now on.
            inv.tags.mark_incomplete();
            log::debug!(
                "tags beyond invalidation.tags_per_object_max or tag_bytes_max not indexed for {}",
                String::from_utf8_lossy(key).replace('\0', "")
            );
        }
        inv.tags.note_store(hash, key, &tags[..n]);
    }

    /// Answer a fetch's client with an error ringcache generates.
    pub(super) fn fail_fetch(&mut self, fetch: Box<Fetch>, status: u16, detail: &str) {
        self.fill_failed(&fetch, status, detail);
        if fetch.streaming {
            // Its head and part of its body are out: the connection ends
            // short of the Content-Length it announced, which the client
            // sees; an error response now would be read as body bytes.
            self.counters().incr(Counter::OutcomeError);
            let outer = self.log_swap_in(&fetch, Counter::OutcomeError);
            self.client_respond(fetch.client, Some(fetch.seq), Vec::new(), true);
            self.log_swap_out(outer);
            self.give_buffer(fetch.req);
            return;
        }
        if let Some(resp) = self.stale_on_error(&fetch, status) {
            // RFC 5861 §4: the stored response stands in for the error.
            self.fetch_respond(&fetch, resp, Counter::OutcomeStale);
            self.give_buffer(fetch.req);
            return;
        }
        // §5.2.2.2: a must-revalidate response that cannot be validated is a 504.
        let status = match &fetch.revalidation {
            Some(r) if r.must_revalidate && status == 502 => 504,
            _ => status,
        };
        let date = self.clock.date;
        let mut resp = self.take_buffer();
        put_error(
            &mut resp,
            status,
            &date,
            Some(detail),
            Some(std::str::from_utf8(fwd_reason(&fetch)).unwrap_or("uri-miss")),
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
        // Only a response every waiter gets as relayed (no variant to
        // choose, no field stripped for storing), for a whole-body fetch
        // whose client gets the 200 itself (not a range of it, nor a 304
        // from ringcache's validation on its behalf).
        let relayed = p.storable.as_deref().is_some_and(|a| a.shared_as_relayed());
        if p.status != 200
            || !relayed
            || fetch.fill_id.is_none()
            || fetch.range.is_some()
            || fetch.revalidation.is_some()
        {
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
        if f.client_head || f.range.is_some() || f.client == NO_CLIENT {
            return;
        }
        let tag_cut = self.tag_cut(&p.head);
        let Some(c) = self.client(f.client) else {
            return;
        };
        if c.queue.front().map(|e| e.seq) != Some(f.seq) {
            return; // an earlier answer on this connection is not out yet
        }
        // Nothing can come between: later answers wait behind this exchange.
        put_response_head(&mut c.out, f, p, length, (false, collapsed), tag_cut);
        c.out.extend_from_slice(&p.body);
        f.streaming = true;
        if let Some(r) = f.log.get_mut() {
            r.answer(200, length);
        }
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

/// Why a response to a cacheable request is not stored, for Cache-Status
/// `detail` (RFC 9211 §2.8).
fn not_stored_detail(x: &Exchange<'_>, policy: &crate::http::policy::Policy) -> &'static str {
    match decide(x, policy) {
        Err(reason) => reason.detail(),
        Ok(s) if s.no_cache || s.lifetime_secs == 0 => "validate-only",
        Ok(_) if crate::http::vary::has_vary(x.response) => "vary",
        // Storable, but the forwarded request did not parse back whole.
        Ok(_) => "request",
    }
}

/// The Cache-Status `fwd` parameter (RFC 9211 §2.2) for a fetch.
pub(super) fn fwd_reason(fetch: &Fetch) -> &'static [u8] {
    if fetch.lookup {
        match fetch.found {
            super::Found::Stale => b"stale",
            super::Found::NotAccepted => b"request",
            super::Found::VaryMiss => b"vary-miss",
            super::Found::Absent => b"uri-miss",
            // A fresh answer is never fetched; kept as the generic reason.
            super::Found::Fresh => b"miss",
        }
    } else if matches!(fetch.method, Method::Get | Method::Head) {
        b"bypass" // a GET or HEAD with a body is relayed, never looked up
    } else {
        b"method"
    }
}
