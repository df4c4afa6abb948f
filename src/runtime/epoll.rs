//! epoll backend on mio: completions emulated on edge-triggered readiness.
//!
//! Each socket is registered once, for reading and writing, on its first
//! operation. Readiness is cached per slot (`readable`, `writable`) and
//! cleared only by `EAGAIN`, as edge-triggered epoll requires.
//!
//! ```text
//!  trait call            what happens now             what poll delivers
//!  start_recv            register, queue a read       Recv… RecvEnd
//!  send                  write until EAGAIN / done    Sent (queued or on writable)
//!  connect               connect(2) → EINPROGRESS     Connected (on writable: SO_ERROR)
//!  close                 deregister, close(2)         Closed
//! ```
//! Results known inside a trait call are queued and handed out at the start
//! of the next `poll`, which then does not block. A connection reads at most
//! `READS_PER_TURN_MAX` times per poll; if it still has data it is queued for
//! the next poll, so one busy peer cannot starve the others.

use std::collections::VecDeque;
use std::io;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Poll};

use super::io::{token_slot, Event, Io, Token};
use super::IoLimits;
use crate::sys::{self, SockAddr};

/// Listening sockets one backend accepts on at most.
pub const LISTENERS_MAX: usize = 16;
/// Reads from one connection per poll before it yields to the others.
const READS_PER_TURN_MAX: usize = 16;
/// Accepts from one listener per poll before it yields.
const ACCEPTS_PER_TURN_MAX: usize = 64;
/// Readiness events fetched per epoll_wait.
const EVENTS_MAX: usize = 1024;

/// State of one token slot.
struct Slot {
    token: Token,
    fd: RawFd,
    registered: bool,
    closing: bool,
    /// Cached readiness, cleared by EAGAIN.
    readable: bool,
    writable: bool,
    recv_active: bool,
    recv_ended: bool,
    /// The slot index is in `read_queue`.
    queued: bool,
    connecting: bool,
    send_active: bool,
    send_buf: *const u8,
    send_len: usize,
    send_done: usize,
}

impl Slot {
    fn fresh(token: Token) -> Slot {
        Slot {
            token,
            fd: -1,
            registered: false,
            closing: false,
            readable: false,
            writable: false,
            recv_active: false,
            recv_ended: false,
            queued: false,
            connecting: false,
            send_active: false,
            send_buf: std::ptr::null(),
            send_len: 0,
            send_done: 0,
        }
    }

    fn live(&self, token: Token) -> bool {
        self.token == token && !self.closing
    }
}

#[derive(Clone, Copy)]
struct Listener {
    fd: RawFd,
    active: bool,
    /// Accepting stopped on the per-poll budget; continue next poll.
    queued: bool,
}

const LISTENER_FREE: Listener = Listener {
    fd: -1,
    active: false,
    queued: false,
};

/// A result known inside a trait call, delivered by the next poll.
#[derive(Clone, Copy)]
enum Completion {
    RecvEnd(Token, i32),
    Sent(Token, Result<(), i32>),
    Connected(Token, Result<(), i32>),
    Closed(Token),
}

/// Readiness of one mio event, reduced to what the backend acts on.
#[derive(Clone, Copy)]
struct Ready {
    key: usize,
    /// Try reading (data, EOF or an error is waiting).
    read: bool,
    /// Try writing (room, or an error is waiting).
    write: bool,
    /// EPOLLOUT proper: a connect in progress has finished.
    out: bool,
}

/// Counters of the backend's internal work, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EpollStats {
    /// Connections that used up their reads for one poll with data left.
    pub read_yields: u64,
    /// Sends that hit EAGAIN and waited for writability.
    pub send_waits: u64,
    /// Listeners that used up their accepts for one poll.
    pub accept_yields: u64,
}

/// The epoll backend of one worker.
pub struct EpollIo {
    poll: Poll,
    events: mio::Events,
    ready: Vec<Ready>,
    slots: Vec<Slot>,
    listeners: [Listener; LISTENERS_MAX],
    completions: VecDeque<Completion>,
    read_queue: VecDeque<usize>,
    /// The one receive buffer every read goes through.
    buf: Box<[u8]>,
    stats: EpollStats,
    _not_send: PhantomData<*const ()>,
}

impl EpollIo {
    /// Create the epoll instance and allocate every buffer and queue.
    pub fn new(limits: &IoLimits) -> io::Result<EpollIo> {
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_string());
        if limits.slots_max == 0 || limits.slots_max > u32::MAX as usize {
            return Err(invalid("slots_max must be in 1..=u32::MAX"));
        }
        if limits.recv_buffer_bytes == 0 {
            return Err(invalid("recv_buffer_bytes must be positive"));
        }
        let mut slots = Vec::with_capacity(limits.slots_max);
        slots.extend((0..limits.slots_max).map(|_| Slot::fresh(0)));
        Ok(EpollIo {
            poll: Poll::new()?,
            events: mio::Events::with_capacity(EVENTS_MAX),
            ready: Vec::with_capacity(EVENTS_MAX),
            slots,
            listeners: [LISTENER_FREE; LISTENERS_MAX],
            // Per slot at most one each of RecvEnd, Sent, Connected, Closed.
            completions: VecDeque::with_capacity(4 * limits.slots_max),
            read_queue: VecDeque::with_capacity(limits.slots_max),
            buf: vec![0u8; limits.recv_buffer_bytes].into_boxed_slice(),
            stats: EpollStats::default(),
            _not_send: PhantomData,
        })
    }

    /// Counters since construction.
    pub fn stats(&self) -> EpollStats {
        self.stats
    }

    /// The slot of `token`, set up for it; `None` if it is closing.
    fn claim(&mut self, token: Token, fd: RawFd) -> Option<usize> {
        let index = token_slot(token);
        let slot = &mut self.slots[index];
        if slot.token != token {
            if slot.closing || slot.registered {
                debug_assert!(false, "slot {index} reused before its Closed");
                return None;
            }
            let queued = slot.queued;
            *slot = Slot::fresh(token);
            slot.queued = queued;
        }
        if slot.closing {
            return None;
        }
        if slot.fd < 0 {
            slot.fd = fd;
        }
        debug_assert_eq!(slot.fd, fd, "token used with two fds");
        Some(index)
    }

    fn register(&mut self, index: usize) -> Result<(), i32> {
        let slot = &mut self.slots[index];
        if slot.registered {
            return Ok(());
        }
        self.poll
            .registry()
            .register(
                &mut SourceFd(&slot.fd),
                mio::Token(index),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
        slot.registered = true;
        Ok(())
    }

    fn queue_read(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        if !slot.queued {
            slot.queued = true;
            self.read_queue.push_back(index);
        }
    }

    /// Write until done or EAGAIN; `Some` once the send is over.
    fn write(&mut self, index: usize) -> Option<Result<(), i32>> {
        let slot = &mut self.slots[index];
        debug_assert!(slot.send_active);
        loop {
            if slot.send_done >= slot.send_len {
                slot.send_active = false;
                return Some(Ok(()));
            }
            // SAFETY: `Io::send`'s contract keeps `send_buf..send_buf+send_len`
            // valid and unchanged until `Sent` or `Closed`, and send_done < send_len.
            let rest = unsafe {
                std::slice::from_raw_parts(
                    slot.send_buf.add(slot.send_done),
                    slot.send_len - slot.send_done,
                )
            };
            match sys::send(slot.fd, rest) {
                Ok(0) => {
                    slot.send_active = false;
                    return Some(Err(libc::EPIPE));
                }
                Ok(n) => slot.send_done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    slot.writable = false;
                    self.stats.send_waits += 1;
                    return None;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    slot.send_active = false;
                    return Some(Err(e.raw_os_error().unwrap_or(libc::EIO)));
                }
            }
        }
    }

    /// Read up to the per-turn budget, handing each chunk to `handler`.
    fn read(&mut self, index: usize, handler: &mut dyn FnMut(Event<'_>)) -> usize {
        let mut delivered = 0;
        let token = self.slots[index].token;
        let fd = self.slots[index].fd;
        for _ in 0..READS_PER_TURN_MAX {
            match sys::recv(fd, &mut self.buf) {
                Ok(0) => {
                    let slot = &mut self.slots[index];
                    slot.recv_active = false;
                    slot.recv_ended = true;
                    handler(Event::RecvEnd { token, errno: None });
                    return delivered + 1;
                }
                Ok(n) => {
                    handler(Event::Recv {
                        token,
                        data: &self.buf[..n],
                    });
                    delivered += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.slots[index].readable = false;
                    return delivered;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let slot = &mut self.slots[index];
                    slot.recv_active = false;
                    slot.recv_ended = true;
                    let errno = Some(e.raw_os_error().unwrap_or(libc::EIO));
                    handler(Event::RecvEnd { token, errno });
                    return delivered + 1;
                }
            }
        }
        // Budget spent with data possibly left: continue next poll.
        self.stats.read_yields += 1;
        self.queue_read(index);
        delivered
    }

    fn accept(&mut self, index: usize, handler: &mut dyn FnMut(Event<'_>)) -> usize {
        let fd = self.listeners[index].fd;
        for accepted in 0..ACCEPTS_PER_TURN_MAX {
            match sys::accept(fd) {
                Ok(conn) => handler(Event::Accepted { fd: conn }),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return accepted,
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ECONNABORTED | libc::EINTR | libc::EPROTO)
                    ) => {}
                Err(e) => {
                    // EMFILE and friends: the next incoming connection brings
                    // a new edge; retrying now would only spin.
                    log::warn!("accept on listener fd {fd}: {e}");
                    return accepted;
                }
            }
        }
        self.listeners[index].queued = true;
        self.stats.accept_yields += 1;
        ACCEPTS_PER_TURN_MAX
    }

    fn on_slot_ready(&mut self, ready: Ready, handler: &mut dyn FnMut(Event<'_>)) -> usize {
        let index = ready.key;
        let slot = &mut self.slots[index];
        if !slot.registered || slot.closing {
            return 0;
        }
        let token = slot.token;
        let mut delivered = 0;
        if ready.write {
            slot.writable = true;
            if slot.connecting {
                let result = match sys::take_socket_error(slot.fd) {
                    Ok(0) if ready.out => Some(Ok(())),
                    Ok(0) => None,
                    Ok(errno) => Some(Err(errno)),
                    Err(e) => Some(Err(e.raw_os_error().unwrap_or(libc::EIO))),
                };
                if let Some(result) = result {
                    slot.connecting = false;
                    handler(Event::Connected { token, result });
                    delivered += 1;
                }
            }
            if self.slots[index].send_active && !self.slots[index].connecting {
                if let Some(result) = self.write(index) {
                    handler(Event::Sent { token, result });
                    delivered += 1;
                }
            }
        }
        if ready.read {
            let slot = &mut self.slots[index];
            slot.readable = true;
            if slot.recv_active && !slot.connecting {
                delivered += self.read(index, handler);
            }
        }
        delivered
    }

    /// Hand out results queued by trait calls; returns the events delivered.
    fn deliver_completions(&mut self, handler: &mut dyn FnMut(Event<'_>)) -> usize {
        let mut delivered = 0;
        while let Some(completion) = self.completions.pop_front() {
            match completion {
                Completion::Closed(token) => {
                    let slot = &mut self.slots[token_slot(token)];
                    let queued = slot.queued;
                    *slot = Slot::fresh(token);
                    slot.queued = queued;
                    handler(Event::Closed { token });
                }
                Completion::RecvEnd(token, errno) => {
                    if !self.slots[token_slot(token)].live(token) {
                        continue;
                    }
                    let errno = Some(errno);
                    handler(Event::RecvEnd { token, errno });
                }
                Completion::Sent(token, result) => {
                    if !self.slots[token_slot(token)].live(token) {
                        continue;
                    }
                    handler(Event::Sent { token, result });
                }
                Completion::Connected(token, result) => {
                    if !self.slots[token_slot(token)].live(token) {
                        continue;
                    }
                    handler(Event::Connected { token, result });
                }
            }
            delivered += 1;
        }
        delivered
    }

    /// Serve connections and listeners that were left with work last poll.
    fn run_queues(&mut self, handler: &mut dyn FnMut(Event<'_>)) -> usize {
        let mut delivered = 0;
        for _ in 0..self.read_queue.len() {
            let Some(index) = self.read_queue.pop_front() else {
                break;
            };
            let slot = &mut self.slots[index];
            slot.queued = false;
            if slot.registered && !slot.closing && slot.recv_active && slot.readable {
                delivered += self.read(index, handler);
            }
        }
        for index in 0..LISTENERS_MAX {
            let listener = &mut self.listeners[index];
            if listener.queued {
                listener.queued = false;
                if listener.active {
                    delivered += self.accept(index, handler);
                }
            }
        }
        delivered
    }

    fn has_queued_work(&self) -> bool {
        !self.completions.is_empty()
            || !self.read_queue.is_empty()
            || self.listeners.iter().any(|l| l.queued)
    }
}

impl Io for EpollIo {
    fn name(&self) -> &'static str {
        "epoll"
    }

    fn add_listener(&mut self, fd: RawFd) -> io::Result<()> {
        if self.listeners.iter().any(|l| l.active && l.fd == fd) {
            return Ok(());
        }
        let Some(index) = self.listeners.iter().position(|l| !l.active) else {
            return Err(io::Error::other(format!(
                "more than {LISTENERS_MAX} listeners on one worker"
            )));
        };
        let key = self.slots.len() + index;
        self.poll
            .registry()
            .register(&mut SourceFd(&fd), mio::Token(key), Interest::READABLE)?;
        self.listeners[index] = Listener {
            fd,
            active: true,
            queued: false,
        };
        Ok(())
    }

    fn remove_listener(&mut self, fd: RawFd) {
        for listener in self.listeners.iter_mut() {
            if listener.active && listener.fd == fd {
                let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
                *listener = LISTENER_FREE;
            }
        }
    }

    fn start_recv(&mut self, token: Token, fd: RawFd) {
        let Some(index) = self.claim(token, fd) else {
            return;
        };
        let slot = &self.slots[index];
        if slot.recv_active || slot.recv_ended {
            return;
        }
        if let Err(errno) = self.register(index) {
            self.slots[index].recv_ended = true;
            self.completions
                .push_back(Completion::RecvEnd(token, errno));
            return;
        }
        let slot = &mut self.slots[index];
        slot.recv_active = true;
        if slot.readable {
            self.queue_read(index);
        }
    }

    unsafe fn send(&mut self, token: Token, fd: RawFd, buf: *const u8, len: usize) {
        let Some(index) = self.claim(token, fd) else {
            return;
        };
        if let Err(errno) = self.register(index) {
            self.completions
                .push_back(Completion::Sent(token, Err(errno)));
            return;
        }
        let slot = &mut self.slots[index];
        debug_assert!(!slot.send_active, "two sends in flight for one token");
        slot.send_active = true;
        slot.send_buf = buf;
        slot.send_len = len;
        slot.send_done = 0;
        if slot.connecting {
            return;
        }
        if let Some(result) = self.write(index) {
            self.completions.push_back(Completion::Sent(token, result));
        }
    }

    fn connect(&mut self, token: Token, fd: RawFd, addr: SocketAddr) {
        let Some(index) = self.claim(token, fd) else {
            return;
        };
        // connect(2) before registering: an unconnected TCP socket reports
        // EPOLLHUP, which would read as a failed connect.
        let started = match sys::connect(fd, &SockAddr::new(&addr)) {
            Ok(()) => Ok(false),
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(true),
            Err(e) => Err(e.raw_os_error().unwrap_or(libc::EIO)),
        };
        let result = started.and_then(|pending| self.register(index).map(|()| pending));
        match result {
            Ok(true) => self.slots[index].connecting = true,
            Ok(false) => self
                .completions
                .push_back(Completion::Connected(token, Ok(()))),
            Err(errno) => self
                .completions
                .push_back(Completion::Connected(token, Err(errno))),
        }
    }

    fn close(&mut self, token: Token, fd: RawFd) {
        let index = token_slot(token);
        let slot = &mut self.slots[index];
        if slot.token != token {
            if slot.closing || slot.registered {
                debug_assert!(false, "close of token {token:#x} on a busy slot");
                return;
            }
            let queued = slot.queued;
            *slot = Slot::fresh(token);
            slot.queued = queued;
        }
        if slot.closing {
            return;
        }
        if slot.registered {
            let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        }
        sys::close(fd);
        let queued = slot.queued;
        *slot = Slot::fresh(token);
        slot.queued = queued;
        slot.closing = true;
        self.completions.push_back(Completion::Closed(token));
    }

    fn poll(&mut self, timeout: Duration, handler: &mut dyn FnMut(Event<'_>)) -> io::Result<usize> {
        let deadline = Instant::now().checked_add(timeout);
        let mut delivered = self.deliver_completions(handler);
        loop {
            let wait = if delivered > 0 || self.has_queued_work() {
                Duration::ZERO
            } else {
                match deadline {
                    Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                    None => Duration::from_secs(3600),
                }
            };
            match self.poll.poll(&mut self.events, Some(wait)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            self.ready.clear();
            self.ready.extend(self.events.iter().map(|event| Ready {
                key: event.token().0,
                read: event.is_readable() || event.is_read_closed() || event.is_error(),
                write: event.is_writable() || event.is_write_closed() || event.is_error(),
                out: event.is_writable(),
            }));
            delivered += self.run_queues(handler);
            for i in 0..self.ready.len() {
                let ready = self.ready[i];
                if ready.key < self.slots.len() {
                    delivered += self.on_slot_ready(ready, handler);
                } else {
                    let index = ready.key - self.slots.len();
                    if index < LISTENERS_MAX && self.listeners[index].active {
                        delivered += self.accept(index, handler);
                    }
                }
            }
            if delivered > 0 || wait.is_zero() {
                return Ok(delivered);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::conformance;

    fn make(limits: &IoLimits) -> Option<EpollIo> {
        Some(EpollIo::new(limits).expect("EpollIo::new"))
    }

    crate::runtime::conformance::conformance_suite!(make);

    /// A 1 MiB upload through 4 KiB reads exceeds one poll's read budget.
    #[test]
    fn busy_connection_yields() {
        let io = conformance::echo(make, &conformance::LIMITS, 2).unwrap();
        assert!(io.stats().read_yields > 0, "{:?}", io.stats());
    }

    #[test]
    fn blocked_sends_wait_for_writable() {
        let io = conformance::large_send_slow_reader(make).unwrap();
        assert!(io.stats().send_waits > 0, "{:?}", io.stats());
    }
}
