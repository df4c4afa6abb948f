//! The origin side of a worker: a pool of keep-alive connections, the fetch
//! that rides on each, response framing, storing and answering.
//!
//! A [`Fetch`] is one request on its way to the origin. It waits in the
//! pool's bounded queue when every allowed connection is busy. A reused
//! connection that the origin closed before answering gets the request
//! again, once, on a fresh connection, when the method is idempotent.

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
use crate::invalidate::fields;
use crate::metrics::Counter;
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
    /// Bytes of the tag field line at the end of `head` (0: none). It is
    /// stored, and cut from what clients get when `tag_header_strip`.
    tag_field_bytes: usize,
    body: Vec<u8>,
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
        } else if self.pool.conns_count < self.pool.conns_max {
            self.origin_open(fetch);
        } else if self.pool.queue.len() < self.pool.queue_max {
            self.pool.queue.push_back(fetch);
        } else {
            self.counters().incr(Counter::ErrOriginBusy);
            self.fail_fetch(fetch, 503, "origin-queue-full");
        }
    }

    /// Start queued fetches while connections are available.
    pub(super) fn pool_next(&mut self) {
        while !self.pool.queue.is_empty()
            && (!self.pool.idle.is_empty() || self.pool.conns_count < self.pool.conns_max)
        {
            let fetch = self.pool.queue.pop_front().expect("checked non-empty");
            self.dispatch_quiet(fetch);
        }
    }

    fn origin_open(&mut self, fetch: Box<Fetch>) {
        let addr = self.pool.target.addr;
        let fd = match crate::sys::stream_socket(&addr) {
            Ok(fd) => fd,
            Err(e) => {
                log::error!("origin {addr}: cannot create a socket: {e}");
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
        let Some(o) = self.origin(token) else { return };
        let Some(fetch) = o.fetch.as_mut() else {
            return;
        };
        // The kernel reads from `req_inflight` until `Sent`; the fetch keeps
        // an empty buffer meanwhile.
        std::mem::swap(&mut o.req_inflight, &mut fetch.req);
        o.sending = true;
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
                    let mut tag_fields = 0;
                    for f in h.headers {
                        let name = f.name.as_bytes();
                        if is_dropped_on_forward(h.headers, name) {
                            continue;
                        }
                        if name.eq_ignore_ascii_case(tag_header) {
                            tag_fields += 1;
                            continue; // stored last, below
                        }
                        if name.eq_ignore_ascii_case(b"age") {
                            if age_secs.is_none() {
                                age_secs = parse_age(f.value);
                            }
                            continue;
                        }
                        put_field(&mut head, name, f.value);
                    }
                    // The tag field goes last, as one line, so that a hit
                    // can cut it by looking at the tail alone.
                    let mut tag_field_bytes = 0;
                    if tag_fields > 0 {
                        let at = head.len();
                        head.extend_from_slice(tag_header);
                        head.extend_from_slice(b": ");
                        let mut first = true;
                        for v in headers::values(h.headers, tag_header) {
                            if !first {
                                head.extend_from_slice(b", ");
                            }
                            first = false;
                            head.extend_from_slice(headers::trim_ows(v));
                        }
                        head.extend_from_slice(b"\r\n");
                        tag_field_bytes = head.len() - at;
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
                                super::cache_key(host, path, &mut key);
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
                            tag_field_bytes,
                            body: Vec::new(),
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
        if done || matches!(p.framing, Framing::Empty) {
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
            if self.pool.conns_count < self.pool.conns_max {
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
        let reusable = p.keep_alive && !draining && !o.sending && o.inbuf.is_empty();
        let mut scratch = Vec::new();
        for key in &p.invalidate {
            let purged = super::purge_key(
                &self.reader,
                key_hash(key),
                key,
                crate::invalidate::Mode::Hard,
                &mut scratch,
            );
            if purged {
                self.counters().incr(Counter::Invalidated);
            }
        }
        let mut stored = false;
        if let (Some((hash, key)), Some(s)) = (fetch.key.as_ref(), p.storable.as_ref()) {
            if p.body.len() <= object_max && p.status == 200 {
                let meta = ItemMeta::new(self.clock.unix_secs, s.initial_age_secs, s.lifetime_secs);
                // Bans need the latest second any stored object is servable.
                self.invalidator
                    .bans
                    .note_servable_until(meta.expires_secs());
                stored = self.store.insert(*hash, key, &p.head, &p.body, meta);
                if stored {
                    self.counters().incr(Counter::Stored);
                    self.index_tags(*hash, key, &p.head[p.head.len() - p.tag_field_bytes..]);
                }
            }
        }
        // Release the connection before answering, so a queued fetch can use it.
        if reusable && self.pool.idle.len() < self.pool.idle_max {
            let now = self.clock.now;
            let o = self.origin(token).expect("checked above");
            o.state = State::Idle;
            o.since = now;
            self.pool.idle.push(token);
            self.pool_next();
        } else {
            self.close_socket(token);
        }
        let resp = self.compose_response(&fetch, &p, stored, false);
        let shareable = p.storable.is_some() && p.status == 200;
        let outcome = if shareable || p.status >= 500 {
            Outcome::Share
        } else {
            Outcome::Release
        };
        self.fill_complete(&fetch, outcome, stored, |proxy, waiter| {
            proxy.compose_response(waiter, &p, false, true)
        });
        self.client_respond(fetch.client, Some(fetch.seq), resp, !fetch.keep_alive);
        self.give_buffer(fetch.req);
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
        if self.invalidator.config.tag_header_strip {
            resp.extend_from_slice(&p.head[..p.head.len() - p.tag_field_bytes]);
        } else {
            resp.extend_from_slice(&p.head);
        }
        let bodiless = (100..200).contains(&p.status) || p.status == 204 || p.status == 304;
        if !bodiless {
            put_field_u64(&mut resp, b"Content-Length", p.body.len() as u64);
        }
        if let Some(age) = p.age_secs {
            put_field_u64(&mut resp, b"Age", age);
        }
        resp.extend_from_slice(b"Cache-Status: ringcache; fwd=");
        resp.extend_from_slice(fwd_reason(fetch));
        resp.extend_from_slice(b"; fwd-status=");
        super::compose::put_u64(&mut resp, u64::from(p.status));
        if stored {
            resp.extend_from_slice(b"; stored");
        }
        if collapsed {
            resp.extend_from_slice(b"; collapsed");
        }
        resp.extend_from_slice(b"\r\n");
        put_field(&mut resp, b"Via", VIA);
        put_connection(&mut resp, fetch.keep_alive, fetch.client_minor_version);
        resp.extend_from_slice(b"\r\n");
        if !fetch.client_head && !bodiless {
            resp.extend_from_slice(&p.body);
        }
        resp
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
        self.client_respond(fetch.client, Some(fetch.seq), resp, !fetch.keep_alive);
        self.give_buffer(fetch.req);
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
