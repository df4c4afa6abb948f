//! Conformance suite for [`Io`] backends: both backends run the same cases
//! on 127.0.0.1 through `conformance_suite!(make)`, where `make` builds a
//! backend or returns `None` to skip (io_uring unavailable).
//!
//! Every event passes an [`Audit`] that checks the contract's rules: at most
//! one `RecvEnd` per token and no `Recv` after it, nothing for a token after
//! `close` except one `Closed`, nothing at all after `Closed`. Every wait
//! is bounded; client threads use socket timeouts.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::thread;
use std::time::{Duration, Instant};

use super::io::{token_slot, Event, Io, Token};
use super::IoLimits;
use crate::sys;

/// Small buffers on purpose: payloads span many buffers and the ring runs dry.
pub(crate) const LIMITS: IoLimits = IoLimits {
    slots_max: 128,
    recv_buffer_bytes: 4096,
    recv_buffers_count: 16,
    ring_entries: 64,
};

const WAIT: Duration = Duration::from_secs(20);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);

/// Build one `#[test]` per conformance case for the backend built by `$make`
/// (`fn(&IoLimits) -> Option<B>`).
macro_rules! conformance_suite {
    ($make:ident) => {
        mod suite {
            use crate::runtime::conformance as c;

            #[test]
            fn echo_many_connections() {
                c::echo(super::$make, &c::LIMITS, 48);
            }
            #[test]
            fn large_send_to_slow_reader() {
                c::large_send_slow_reader(super::$make);
            }
            #[test]
            fn peer_close_ends_recv_once() {
                c::peer_close_recv_end_once(super::$make);
            }
            #[test]
            fn connect_ok() {
                c::connect_ok(super::$make);
            }
            #[test]
            fn connect_refused() {
                c::connect_refused(super::$make);
            }
            #[test]
            fn close_with_ops_in_flight() {
                c::close_in_flight(super::$make, true);
            }
            #[test]
            fn close_with_ops_not_yet_submitted() {
                c::close_in_flight(super::$make, false);
            }
            #[test]
            fn slot_reuse_with_new_generation() {
                c::slot_reuse(super::$make);
            }
            #[test]
            fn remove_listener_stops_accepting() {
                c::remove_listener(super::$make);
            }
        }
    };
}
pub(crate) use conformance_suite;

/// An owned copy of an [`Event`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Ev {
    Accepted(RawFd),
    Recv(Token, Vec<u8>),
    RecvEnd(Token, Option<i32>),
    Sent(Token, Result<(), i32>),
    Connected(Token, Result<(), i32>),
    Closed(Token),
}

impl Ev {
    fn from_event(event: Event<'_>) -> Ev {
        match event {
            Event::Accepted { fd } => Ev::Accepted(fd),
            Event::Recv { token, data } => Ev::Recv(token, data.to_vec()),
            Event::RecvEnd { token, errno } => Ev::RecvEnd(token, errno),
            Event::Sent { token, result } => Ev::Sent(token, result),
            Event::Connected { token, result } => Ev::Connected(token, result),
            Event::Closed { token } => Ev::Closed(token),
        }
    }

    fn token(&self) -> Option<Token> {
        match *self {
            Ev::Accepted(_) => None,
            Ev::Recv(t, _)
            | Ev::RecvEnd(t, _)
            | Ev::Sent(t, _)
            | Ev::Connected(t, _)
            | Ev::Closed(t) => Some(t),
        }
    }
}

/// Checks the contract's ordering rules on every event.
#[derive(Default)]
struct Audit {
    ended: HashSet<Token>,
    closing: HashSet<Token>,
    closed: HashSet<Token>,
}

impl Audit {
    fn see(&mut self, ev: &Ev) {
        let Some(token) = ev.token() else {
            return;
        };
        assert!(!self.closed.contains(&token), "event after Closed: {ev:?}");
        match ev {
            Ev::Closed(_) => {
                assert!(
                    self.closing.contains(&token),
                    "Closed without close: {ev:?}"
                );
                self.closed.insert(token);
            }
            _ if self.closing.contains(&token) => panic!("event after close(): {ev:?}"),
            Ev::RecvEnd(..) => assert!(self.ended.insert(token), "second RecvEnd: {ev:?}"),
            Ev::Recv(..) => assert!(!self.ended.contains(&token), "Recv after RecvEnd"),
            _ => {}
        }
    }
}

/// A backend plus the log of everything it delivered.
struct Harness<I: Io> {
    io: I,
    log: Vec<Ev>,
    audit: Audit,
    accept_cursor: usize,
}

impl<I: Io> Harness<I> {
    fn new(make: fn(&IoLimits) -> Option<I>) -> Option<Harness<I>> {
        Harness::with_limits(make, &LIMITS)
    }

    fn with_limits(make: fn(&IoLimits) -> Option<I>, limits: &IoLimits) -> Option<Harness<I>> {
        Some(Harness {
            io: make(limits)?,
            log: Vec::new(),
            audit: Audit::default(),
            accept_cursor: 0,
        })
    }

    /// One poll; returns the index in `log` of its first event.
    fn poll(&mut self, timeout: Duration) -> usize {
        let start = self.log.len();
        let log = &mut self.log;
        let n = self
            .io
            .poll(timeout, &mut |event| log.push(Ev::from_event(event)))
            .expect("poll");
        assert_eq!(
            n,
            self.log.len() - start,
            "poll's count != events handed out"
        );
        for ev in &self.log[start..] {
            self.audit.see(ev);
        }
        start
    }

    /// Poll until an event satisfies `want`; panics after `WAIT`.
    fn until(&mut self, mut want: impl FnMut(&Ev) -> bool) -> Ev {
        let deadline = Instant::now() + WAIT;
        let mut seen = 0;
        loop {
            if let Some(ev) = self.log[seen..].iter().find(|ev| want(ev)) {
                return ev.clone();
            }
            seen = self.log.len();
            assert!(
                Instant::now() < deadline,
                "timed out; log tail: {:?}",
                self.tail()
            );
            self.poll(Duration::from_millis(50));
        }
    }

    /// Poll for `time`, collecting whatever comes.
    fn idle(&mut self, time: Duration) {
        let deadline = Instant::now() + time;
        while Instant::now() < deadline {
            self.poll(Duration::from_millis(20));
        }
    }

    /// The next connection accepted that no earlier `accept` returned.
    fn accept(&mut self) -> RawFd {
        let deadline = Instant::now() + WAIT;
        loop {
            let found = self.log[self.accept_cursor..]
                .iter()
                .position(|ev| matches!(ev, Ev::Accepted(_)));
            if let Some(pos) = found {
                self.accept_cursor += pos + 1;
                if let Ev::Accepted(fd) = self.log[self.accept_cursor - 1] {
                    return fd;
                }
            }
            assert!(Instant::now() < deadline, "no connection accepted");
            self.poll(Duration::from_millis(50));
        }
    }

    fn close(&mut self, token: Token, fd: RawFd) {
        self.audit.closing.insert(token);
        self.io.close(token, fd);
    }

    fn close_and_wait(&mut self, token: Token, fd: RawFd) {
        self.close(token, fd);
        self.until(|ev| *ev == Ev::Closed(token));
    }

    fn received(&self, token: Token) -> Vec<u8> {
        let mut bytes = Vec::new();
        for ev in &self.log {
            if let Ev::Recv(t, data) = ev {
                if *t == token {
                    bytes.extend_from_slice(data);
                }
            }
        }
        bytes
    }

    fn count(&self, pred: impl Fn(&Ev) -> bool) -> usize {
        self.log.iter().filter(|ev| pred(ev)).count()
    }

    fn tail(&self) -> &[Ev] {
        let len = self.log.len();
        &self.log[len.saturating_sub(8)..]
    }
}

fn token(generation: u32, slot: u32) -> Token {
    (u64::from(generation) << 32) | u64::from(slot)
}

fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    (listener, addr)
}

fn client(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    stream
}

fn pattern(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31) ^ seed) as u8)
        .collect()
}

/// Echo server state of one connection.
struct EchoConn {
    token: Token,
    fd: RawFd,
    /// Bytes the kernel may be reading (in flight until `Sent`).
    out: Vec<u8>,
    pending: Vec<u8>,
    sending: bool,
    ended: bool,
    closing: bool,
}

/// Echo server for `clients` concurrent clients: the first sends 1 MiB, the
/// others a few receive buffers' worth. Returns the backend for its counters.
pub(crate) fn echo<I: Io>(
    make: fn(&IoLimits) -> Option<I>,
    limits: &IoLimits,
    clients: usize,
) -> Option<I> {
    let mut h = Harness::with_limits(make, limits)?;
    let (listener, addr) = listener();
    h.io.add_listener(listener.as_raw_fd()).unwrap();

    let count = clients;
    let clients: Vec<_> = (0..count)
        .map(|i| {
            // One payload of 1 MiB, the rest a few buffers long.
            let len = if i == 0 { 1 << 20 } else { 3 * 4096 + i * 997 };
            thread::spawn(move || {
                let payload = pattern(i, len);
                let mut stream = client(addr);
                let writer = stream.try_clone().unwrap();
                let sent = payload.clone();
                let w = thread::spawn(move || {
                    let mut writer = writer;
                    writer.write_all(&sent).unwrap();
                    writer.shutdown(Shutdown::Write).unwrap();
                });
                let mut echoed = Vec::new();
                stream.read_to_end(&mut echoed).expect("read echo");
                w.join().unwrap();
                assert!(
                    echoed == payload,
                    "client {i}: echo differs ({} bytes)",
                    echoed.len()
                );
            })
        })
        .collect();

    let mut conns: Vec<EchoConn> = Vec::new();
    let mut closed = 0;
    let deadline = Instant::now() + WAIT;
    while closed < count {
        assert!(Instant::now() < deadline, "echo timed out, {closed} closed");
        let start = h.poll(Duration::from_millis(50));
        let events: Vec<Ev> = h.log[start..].to_vec();
        for ev in events {
            match ev {
                Ev::Accepted(fd) => {
                    let slot = conns.len() as u32;
                    let t = token(1, slot);
                    h.io.start_recv(t, fd);
                    conns.push(EchoConn {
                        token: t,
                        fd,
                        out: Vec::new(),
                        pending: Vec::new(),
                        sending: false,
                        ended: false,
                        closing: false,
                    });
                }
                Ev::Recv(t, data) => conns[token_slot(t)].pending.extend_from_slice(&data),
                Ev::RecvEnd(t, errno) => {
                    assert_eq!(errno, None);
                    conns[token_slot(t)].ended = true;
                }
                Ev::Sent(t, result) => {
                    assert_eq!(result, Ok(()));
                    conns[token_slot(t)].sending = false;
                }
                Ev::Closed(_) => closed += 1,
                Ev::Connected(..) => panic!("unexpected {ev:?}"),
            }
        }
        for c in conns.iter_mut() {
            if c.closing || c.sending {
                continue;
            }
            if !c.pending.is_empty() {
                c.out = std::mem::take(&mut c.pending);
                c.sending = true;
                // SAFETY: `c.out` is not touched until this token's `Sent` or `Closed`.
                unsafe { h.io.send(c.token, c.fd, c.out.as_ptr(), c.out.len()) };
            } else if c.ended {
                c.closing = true;
                h.audit.closing.insert(c.token);
                h.io.close(c.token, c.fd);
            }
        }
    }
    for c in clients {
        c.join().expect("client");
    }
    assert_eq!(h.count(|e| matches!(e, Ev::RecvEnd(..))), count);
    Some(h.io)
}

/// Returns the backend for its counters.
pub(crate) fn large_send_slow_reader<I: Io>(make: fn(&IoLimits) -> Option<I>) -> Option<I> {
    let mut h = Harness::new(make)?;
    let (listener, addr) = listener();
    h.io.add_listener(listener.as_raw_fd()).unwrap();
    const LEN: usize = 16 << 20;
    let reader = thread::spawn(move || {
        let mut stream = client(addr);
        // Let the socket buffers fill before reading, slowly.
        thread::sleep(Duration::from_millis(200));
        let mut got = Vec::with_capacity(LEN);
        let mut chunk = vec![0u8; 256 << 10];
        while got.len() < LEN {
            let n = stream.read(&mut chunk).expect("read");
            assert!(n > 0, "EOF after {} bytes", got.len());
            got.extend_from_slice(&chunk[..n]);
            thread::sleep(Duration::from_millis(1));
        }
        assert!(got == pattern(7, LEN), "payload corrupted");
    });
    let fd = h.accept();
    let t = token(3, 9);
    h.io.start_recv(t, fd);
    let payload = pattern(7, LEN);
    // SAFETY: `payload` outlives the send: we wait for Sent below.
    unsafe { h.io.send(t, fd, payload.as_ptr(), payload.len()) };
    let sent = h.until(|ev| matches!(ev, Ev::Sent(..)));
    assert_eq!(sent, Ev::Sent(t, Ok(())));
    reader.join().expect("reader");
    h.close_and_wait(t, fd);
    assert_eq!(h.count(|e| matches!(e, Ev::Sent(..))), 1);
    Some(h.io)
}

pub(crate) fn peer_close_recv_end_once<I: Io>(make: fn(&IoLimits) -> Option<I>) {
    let Some(mut h) = Harness::new(make) else {
        return;
    };
    let (listener, addr) = listener();
    h.io.add_listener(listener.as_raw_fd()).unwrap();
    let mut stream = client(addr);
    let fd = h.accept();
    let t = token(1, 0);
    h.io.start_recv(t, fd);
    stream.write_all(b"hello").unwrap();
    drop(stream);
    h.until(|ev| matches!(ev, Ev::RecvEnd(..)));
    h.idle(Duration::from_millis(150));
    assert_eq!(h.received(t), b"hello");
    assert_eq!(h.count(|e| matches!(e, Ev::RecvEnd(..))), 1);
    assert!(h.log.contains(&Ev::RecvEnd(t, None)));
    h.close_and_wait(t, fd);
}

pub(crate) fn connect_ok<I: Io>(make: fn(&IoLimits) -> Option<I>) {
    let Some(mut h) = Harness::new(make) else {
        return;
    };
    let (listener, addr) = listener();
    let fd = sys::tcp_socket(&addr).unwrap();
    let t = token(5, 3);
    h.io.connect(t, fd, addr);
    let ev = h.until(|ev| matches!(ev, Ev::Connected(..)));
    assert_eq!(ev, Ev::Connected(t, Ok(())));
    // The connection works: a byte from the peer arrives.
    h.io.start_recv(t, fd);
    let (mut peer, _) = {
        let deadline = Instant::now() + WAIT;
        loop {
            match listener.accept() {
                Ok(pair) => break pair,
                Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("accept: {e}"),
            }
        }
    };
    peer.write_all(b"!").unwrap();
    h.until(|ev| matches!(ev, Ev::Recv(..)));
    assert_eq!(h.received(t), b"!");
    h.close_and_wait(t, fd);
}

pub(crate) fn connect_refused<I: Io>(make: fn(&IoLimits) -> Option<I>) {
    let Some(mut h) = Harness::new(make) else {
        return;
    };
    let addr = {
        let (listener, addr) = listener();
        drop(listener);
        addr
    };
    let fd = sys::tcp_socket(&addr).unwrap();
    let t = token(6, 4);
    h.io.connect(t, fd, addr);
    let ev = h.until(|ev| matches!(ev, Ev::Connected(..)));
    assert_eq!(ev, Ev::Connected(t, Err(libc::ECONNREFUSED)));
    h.close_and_wait(t, fd);
}

/// Close a token with a recv and a big send outstanding; `settle` first
/// polls so both are in the kernel, otherwise close comes right away.
pub(crate) fn close_in_flight<I: Io>(make: fn(&IoLimits) -> Option<I>, settle: bool) {
    let Some(mut h) = Harness::new(make) else {
        return;
    };
    let (listener, addr) = listener();
    h.io.add_listener(listener.as_raw_fd()).unwrap();
    let stream = client(addr); // never reads, never writes
    let fd = h.accept();
    let t = token(2, 17);
    h.io.start_recv(t, fd);
    let payload = pattern(1, 16 << 20);
    // SAFETY: `payload` outlives the backend's use: we wait for Closed below.
    unsafe { h.io.send(t, fd, payload.as_ptr(), payload.len()) };
    if settle {
        h.idle(Duration::from_millis(100));
        assert_eq!(h.count(|e| e.token() == Some(t)), 0, "{:?}", h.tail());
    }
    let before = h.log.len();
    h.close(t, fd);
    h.until(|ev| *ev == Ev::Closed(t));
    h.idle(Duration::from_millis(150));
    let after: Vec<&Ev> = h.log[before..]
        .iter()
        .filter(|e| e.token() == Some(t))
        .collect();
    assert_eq!(after, [&Ev::Closed(t)]);
    drop(payload);
    // The peer sees the connection end.
    let mut stream = stream;
    let mut sink = vec![0u8; 1 << 20];
    let deadline = Instant::now() + WAIT;
    loop {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => assert!(Instant::now() < deadline, "peer never saw the close"),
        }
    }
}

pub(crate) fn slot_reuse<I: Io>(make: fn(&IoLimits) -> Option<I>) {
    let Some(mut h) = Harness::new(make) else {
        return;
    };
    let (listener, addr) = listener();
    h.io.add_listener(listener.as_raw_fd()).unwrap();
    let old = token(1, 5);
    let new = token(2, 5);

    let mut a = client(addr);
    let fd_a = h.accept();
    h.io.start_recv(old, fd_a);
    a.write_all(b"old-1").unwrap();
    h.until(|ev| matches!(ev, Ev::Recv(t, _) if *t == old));
    // More bytes arrive while the close is under way.
    a.write_all(b"old-2").unwrap();
    h.close_and_wait(old, fd_a);
    let closed_at = h.log.len();

    let mut b = client(addr);
    let fd_b = h.accept();
    h.io.start_recv(new, fd_b);
    let _ = a.write_all(b"old-3");
    b.write_all(b"new").unwrap();
    h.until(|ev| matches!(ev, Ev::Recv(t, _) if *t == new));
    h.idle(Duration::from_millis(100));
    for ev in &h.log[closed_at..] {
        assert_ne!(
            ev.token(),
            Some(old),
            "old token's event after reuse: {ev:?}"
        );
    }
    assert_eq!(h.received(new), b"new");
    h.close_and_wait(new, fd_b);
}

pub(crate) fn remove_listener<I: Io>(make: fn(&IoLimits) -> Option<I>) {
    let Some(mut h) = Harness::new(make) else {
        return;
    };
    let (listener, addr) = listener();
    let lfd = listener.as_raw_fd();
    h.io.add_listener(lfd).unwrap();
    let _c1 = client(addr);
    sys::close(h.accept());

    h.io.remove_listener(lfd);
    h.idle(Duration::from_millis(50));
    let _c2 = client(addr); // completes in the kernel's backlog
    let before = h.log.len();
    h.idle(Duration::from_millis(300));
    assert!(
        !h.log[before..].iter().any(|e| matches!(e, Ev::Accepted(_))),
        "accepted after remove_listener"
    );
    // Adding it back picks up the waiting connection.
    h.io.add_listener(lfd).unwrap();
    sys::close(h.accept());
}
