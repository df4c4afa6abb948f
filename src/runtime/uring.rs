//! io_uring backend: multishot accept, multishot recv into a provided-buffer
//! ring, one SQE per send, one `io_uring_enter` per loop turn.
//!
//! ## user_data
//! ```text
//!  63      56 55                 32 31                     0
//!  ┌─────────┬─────────────────────┬───────────────────────┐
//!  │   op    │ generation tag (24) │ slot / listener index │
//!  └─────────┴─────────────────────┴───────────────────────┘
//! ```
//! The tag is bits 32..56 of the token that started the operation. A
//! completion is delivered only if the slot still belongs to a token with the
//! same tag and is not closing; otherwise it is only accounted for.
//!
//! ## Per-slot state (flat array of `slots_max`)
//! `inflight` counts operations the kernel still holds for the slot (a
//! multishot recv counts once until its final CQE). `close` cancels every
//! operation on the fd (`ASYNC_CANCEL` by fd, all matches); when `inflight`
//! reaches zero the fd is closed with close(2) and `Closed` is delivered.
//! No buffer or operation of a closed token survives its `Closed`.
//!
//! ## Receive buffers
//! ```text
//!  ring (page aligned, count × 16 B)        data (page aligned)
//!  ┌──────────────────────────┐             ┌────────┬────────┬───┐
//!  │ addr │ len │ bid │ tail* │ ──────────▶ │ buf 0  │ buf 1  │ … │  count × bytes
//!  │ addr │ len │ bid │ resv  │             └────────┴────────┴───┘
//!  │  …                       │   * the ring's tail overlays entry 0's `resv`
//!  └──────────────────────────┘
//! ```
//! The kernel picks a buffer per recv completion; the bytes are lent to the
//! handler for the duration of one `Event::Recv` callback, then the buffer
//! goes straight back to the ring. Running dry (`ENOBUFS`) ends a multishot
//! recv, which is re-armed without telling the worker.
//!
//! ## Threading
//! The ring is created with `SINGLE_ISSUER | DEFER_TASKRUN` when the kernel
//! accepts them: a `UringIo` must be created on the worker thread that uses
//! it, which `!Send` enforces.

use std::alloc::{self, Layout};
use std::collections::VecDeque;
use std::io;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::ptr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring, Probe};

use super::io::{token_slot, Event, Io, Token};
use super::IoLimits;
use crate::sys::{self, SockAddr};

/// Listening sockets one backend accepts on at most.
pub const LISTENERS_MAX: usize = 16;
/// Buffer group id of the receive-buffer ring.
const BUF_GROUP: u16 = 1;
/// Completions copied out of the CQ per batch.
const CQE_BATCH: usize = 256;
/// Operations one slot can have in the kernel at once: recv, send, connect, cancel.
const SLOT_OPS_MAX: usize = 4;
/// CQ entries per SQ entry (multishot operations post many CQEs per SQE).
const CQ_PER_SQ: u32 = 4;
/// Longest single wait in the kernel; longer timeouts are served in pieces.
const WAIT_MAX: Duration = Duration::from_secs(3600);
/// Time `Drop` waits for cancelled operations to leave the kernel.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

const TAG_MASK: u64 = 0xFF_FFFF;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Op {
    Accept = 1,
    Recv = 2,
    Send = 3,
    Connect = 4,
    Cancel = 5,
    ListenerCancel = 6,
    Drain = 7,
}

impl Op {
    fn from_bits(bits: u8) -> Option<Op> {
        Some(match bits {
            1 => Op::Accept,
            2 => Op::Recv,
            3 => Op::Send,
            4 => Op::Connect,
            5 => Op::Cancel,
            6 => Op::ListenerCancel,
            7 => Op::Drain,
            _ => return None,
        })
    }
}

#[inline]
fn tag_of(token: Token) -> u64 {
    (token >> 32) & TAG_MASK
}

#[inline]
fn user_data(op: Op, token: Token, index: usize) -> u64 {
    debug_assert!(index <= u32::MAX as usize);
    (op as u64) << 56 | tag_of(token) << 32 | index as u64
}

#[inline]
fn decode(user_data: u64) -> (Option<Op>, u64, usize) {
    let op = Op::from_bits((user_data >> 56) as u8);
    (
        op,
        (user_data >> 32) & TAG_MASK,
        (user_data & 0xFFFF_FFFF) as usize,
    )
}

/// State of one token slot.
struct Slot {
    token: Token,
    /// The socket, or -1 before the slot's first operation.
    fd: RawFd,
    /// Operations the kernel holds for this slot.
    inflight: u16,
    closing: bool,
    recv_armed: bool,
    recv_ended: bool,
    /// The send in progress: `send_done` of `send_len` bytes at `send_buf` written.
    send_buf: *const u8,
    send_len: usize,
    send_done: usize,
    /// Address of the connect in flight; the SQE points here.
    connect_addr: SockAddr,
}

impl Slot {
    fn fresh(token: Token) -> Slot {
        Slot {
            token,
            fd: -1,
            inflight: 0,
            closing: false,
            recv_armed: false,
            recv_ended: false,
            send_buf: ptr::null(),
            send_len: 0,
            send_done: 0,
            connect_addr: SockAddr::empty(),
        }
    }
}

#[derive(Clone, Copy)]
struct Listener {
    fd: RawFd,
    /// The worker wants connections from this listener.
    active: bool,
    /// A multishot accept is in the kernel (or queued for it).
    armed: bool,
    /// The accept ended on a transient error; re-arm at the next `poll`.
    rearm: bool,
}

const LISTENER_FREE: Listener = Listener {
    fd: -1,
    active: false,
    armed: false,
    rearm: false,
};

/// One entry of the provided-buffer ring, in the kernel's `io_uring_buf` layout.
#[repr(C)]
struct BufEntry {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}
const _: () = assert!(std::mem::size_of::<BufEntry>() == 16);

/// The provided-buffer ring and the buffers it hands to the kernel.
struct RecvBuffers {
    ring: *mut BufEntry,
    ring_layout: Layout,
    data: *mut u8,
    data_layout: Layout,
    buffer_bytes: usize,
    count: u16,
    /// Our copy of the ring's tail (the kernel only reads it).
    tail: u16,
}

impl RecvBuffers {
    /// Allocate `count` buffers of `buffer_bytes` and fill the ring with all of them.
    fn new(count: u16, buffer_bytes: usize) -> io::Result<RecvBuffers> {
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_string());
        if !count.is_power_of_two() || count > 32768 {
            return Err(invalid("recv_buffers_count must be a power of two ≤ 32768"));
        }
        if buffer_bytes == 0 || buffer_bytes > u32::MAX as usize {
            return Err(invalid("recv_buffer_bytes must be in 1..=u32::MAX"));
        }
        let page = sys::page_size();
        let ring_bytes = (usize::from(count) * 16).next_multiple_of(page);
        let data_bytes = usize::from(count)
            .checked_mul(buffer_bytes)
            .ok_or_else(|| invalid("receive buffers overflow usize"))?;
        let ring_layout = Layout::from_size_align(ring_bytes, page).map_err(|_| invalid("ring"))?;
        let data_layout = Layout::from_size_align(data_bytes, page).map_err(|_| invalid("data"))?;
        // SAFETY: both layouts have a non-zero size (count ≥ 1, buffer_bytes ≥ 1).
        let ring = unsafe { alloc::alloc_zeroed(ring_layout) }.cast::<BufEntry>();
        if ring.is_null() {
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        // SAFETY: as above.
        let data = unsafe { alloc::alloc(data_layout) };
        if data.is_null() {
            // SAFETY: `ring` was allocated just above with `ring_layout`.
            unsafe { alloc::dealloc(ring.cast(), ring_layout) };
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        let mut bufs = RecvBuffers {
            ring,
            ring_layout,
            data,
            data_layout,
            buffer_bytes,
            count,
            tail: 0,
        };
        for bid in 0..count {
            bufs.put(bid);
        }
        bufs.publish();
        Ok(bufs)
    }

    fn ring_addr(&self) -> u64 {
        self.ring as u64
    }

    /// Write buffer `bid` into the ring slot at our tail (not yet visible).
    #[inline]
    fn put(&mut self, bid: u16) {
        debug_assert!(bid < self.count);
        let index = usize::from(self.tail & (self.count - 1));
        let addr = self.data as u64 + u64::from(bid) * self.buffer_bytes as u64;
        // SAFETY: `index < count`, so the entry lies inside the ring allocation.
        // The kernel only reads entries between its head and the published
        // tail; this one lies beyond the tail until `publish`. `resv` is not
        // written: in entry 0 it is the tail.
        unsafe {
            let entry = self.ring.add(index);
            ptr::addr_of_mut!((*entry).addr).write(addr);
            ptr::addr_of_mut!((*entry).len).write(self.buffer_bytes as u32);
            ptr::addr_of_mut!((*entry).bid).write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Make every entry written by `put` visible to the kernel.
    #[inline]
    fn publish(&self) {
        // SAFETY: the tail is the `resv` field of entry 0, a live, aligned u16
        // that only we write; the kernel reads it with acquire semantics.
        let tail = unsafe { AtomicU16::from_ptr(ptr::addr_of_mut!((*self.ring).resv)) };
        // Release: the entry writes in `put` happen before the kernel sees the tail.
        tail.store(self.tail, Ordering::Release);
    }

    /// Return buffer `bid` to the kernel.
    #[inline]
    fn give_back(&mut self, bid: u16) {
        self.put(bid);
        self.publish();
    }

    /// The first `len` bytes of buffer `bid`.
    ///
    /// # Safety
    /// The kernel must have completed a receive of `len` bytes into `bid`
    /// and the buffer must not have been given back since.
    #[inline]
    unsafe fn bytes<'a>(&self, bid: u16, len: usize) -> &'a [u8] {
        debug_assert!(bid < self.count && len <= self.buffer_bytes);
        // SAFETY: bid < count so the range is inside `data`; the caller
        // guarantees the bytes were written and are not handed out again
        // before the slice's last use (within one callback).
        unsafe {
            std::slice::from_raw_parts(self.data.add(usize::from(bid) * self.buffer_bytes), len)
        }
    }
}

impl Drop for RecvBuffers {
    fn drop(&mut self) {
        // SAFETY: both pointers come from `alloc` with these layouts; the ring
        // that used them was drained and torn down before (field order in UringIo).
        unsafe {
            alloc::dealloc(self.ring.cast(), self.ring_layout);
            alloc::dealloc(self.data, self.data_layout);
        }
    }
}

/// Build a ring with the best setup flags this kernel accepts
/// (`deferred`: try `SINGLE_ISSUER | DEFER_TASKRUN` first).
fn build_ring(entries: u32, deferred: bool) -> io::Result<IoUring> {
    let cq_entries = entries.saturating_mul(CQ_PER_SQ);
    let first = if deferred {
        IoUring::builder()
            .setup_cqsize(cq_entries)
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(entries)
    } else {
        Err(io::Error::from_raw_os_error(libc::EINVAL))
    };
    first
        .or_else(|_| {
            IoUring::builder()
                .setup_cqsize(cq_entries)
                .setup_coop_taskrun()
                .build(entries)
        })
        .or_else(|_| IoUring::builder().setup_cqsize(cq_entries).build(entries))
}

/// Counters of the backend's internal work, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UringStats {
    /// Multishot recvs re-armed after the ring ran out of buffers.
    pub recv_rearms_enobufs: u64,
    /// Multishot recvs re-armed after ending without an error.
    pub recv_rearms_ended: u64,
    /// Short writes continued with another send.
    pub send_continuations: u64,
    /// Submits made early because the SQ was full.
    pub sq_full_submits: u64,
}

/// The io_uring backend of one worker.
pub struct UringIo {
    // Field order matters: the ring is dropped before the buffers it used.
    ring: IoUring,
    bufs: RecvBuffers,
    slots: Vec<Slot>,
    listeners: [Listener; LISTENERS_MAX],
    /// Tokens closed with nothing in the kernel; `Closed` goes out at the next poll.
    closed_ready: VecDeque<Token>,
    /// SQEs that found the SQ full even after a submit.
    backlog: VecDeque<squeue::Entry>,
    backlog_max: usize,
    cqes: Vec<(u64, i32, u32)>,
    /// Set by `Drop`: nothing is re-armed or delivered any more.
    draining: bool,
    stats: UringStats,
    _not_send: PhantomData<*const ()>,
}

impl UringIo {
    /// Set up the ring, allocate and register the receive buffers.
    ///
    /// Must be called on the thread that will use the backend.
    pub fn new(limits: &IoLimits) -> io::Result<UringIo> {
        UringIo::with_setup(limits, true)
    }

    fn with_setup(limits: &IoLimits, deferred: bool) -> io::Result<UringIo> {
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_string());
        if limits.slots_max == 0 || limits.slots_max > u32::MAX as usize {
            return Err(invalid("slots_max must be in 1..=u32::MAX"));
        }
        if !limits.ring_entries.is_power_of_two() {
            return Err(invalid("ring_entries must be a power of two"));
        }
        let ring = build_ring(limits.ring_entries, deferred).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "io_uring_setup({} entries) failed: {e}; check kernel.io_uring_disabled, \
                     seccomp and RLIMIT_MEMLOCK, or use --io epoll",
                    limits.ring_entries
                ),
            )
        })?;
        if !ring.params().is_feature_ext_arg() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring lacks IORING_FEAT_EXT_ARG (timed waits, Linux 5.11+)",
            ));
        }
        let bufs = RecvBuffers::new(limits.recv_buffers_count, limits.recv_buffer_bytes)?;
        // SAFETY: the ring memory stays allocated and in place until `bufs`
        // is dropped, which happens after the ring is torn down.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                bufs.ring_addr(),
                bufs.count,
                BUF_GROUP,
                0,
            )
        }
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("registering the receive buffer ring failed: {e} (needs Linux 5.19+)"),
            )
        })?;
        let mut slots = Vec::with_capacity(limits.slots_max);
        slots.extend((0..limits.slots_max).map(|_| Slot::fresh(0)));
        let backlog_max = limits.slots_max * SLOT_OPS_MAX + 2 * LISTENERS_MAX;
        Ok(UringIo {
            ring,
            bufs,
            slots,
            listeners: [LISTENER_FREE; LISTENERS_MAX],
            closed_ready: VecDeque::with_capacity(limits.slots_max),
            backlog: VecDeque::with_capacity(backlog_max),
            backlog_max,
            cqes: Vec::with_capacity(CQE_BATCH),
            draining: false,
            stats: UringStats::default(),
            _not_send: PhantomData,
        })
    }

    /// Check that this kernel offers everything `UringIo` uses; the error
    /// names what is missing.
    pub fn probe() -> Result<(), String> {
        let ring = IoUring::new(8).map_err(|e| {
            format!(
                "io_uring_setup failed: {e} (Linux 5.19+ needed; check kernel.io_uring_disabled \
                 and seccomp)"
            )
        })?;
        if !ring.params().is_feature_ext_arg() {
            return Err("io_uring lacks IORING_FEAT_EXT_ARG (timed waits, Linux 5.11+)".into());
        }
        let mut probe = Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(|e| format!("IORING_REGISTER_PROBE failed: {e} (Linux 5.6+ needed)"))?;
        let needed = [
            (opcode::AcceptMulti::CODE, "ACCEPT"),
            (opcode::RecvMulti::CODE, "RECV"),
            (opcode::Send::CODE, "SEND"),
            (opcode::Connect::CODE, "CONNECT"),
            (opcode::AsyncCancel2::CODE, "ASYNC_CANCEL"),
        ];
        let missing: Vec<&str> = needed
            .iter()
            .filter(|(code, _)| !probe.is_supported(*code))
            .map(|(_, name)| *name)
            .collect();
        if !missing.is_empty() {
            return Err(format!("io_uring opcodes missing: {}", missing.join(", ")));
        }
        probe_multishot_recv(ring)
    }

    /// Counters since construction.
    pub fn stats(&self) -> UringStats {
        self.stats
    }

    /// Queue an SQE for the next submit; submits early if the SQ is full.
    ///
    /// # Safety
    /// Every pointer in `entry` must stay valid until its final CQE is reaped.
    unsafe fn push(&mut self, entry: squeue::Entry) {
        if self.backlog.is_empty() {
            // SAFETY: the caller guarantees the entry's pointers.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            // The SQ is full: hand what it holds to the kernel to make room.
            self.stats.sq_full_submits += 1;
            let _ = self.ring.submit();
            // SAFETY: as above.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
        }
        debug_assert!(
            self.backlog.len() < self.backlog_max,
            "SQE backlog over its bound"
        );
        self.backlog.push_back(entry);
    }

    /// Move backlogged SQEs into the SQ while it has room.
    fn flush_backlog(&mut self) {
        while let Some(entry) = self.backlog.front() {
            // SAFETY: the entry was vetted by `push`'s caller when it was queued.
            if unsafe { self.ring.submission().push(entry) }.is_err() {
                break;
            }
            self.backlog.pop_front();
        }
    }

    /// The slot of `token`, set up for it; `None` if the slot is closing or
    /// still busy with another token (a contract violation).
    fn claim(&mut self, token: Token, fd: RawFd) -> Option<usize> {
        let index = token_slot(token);
        let slot = &mut self.slots[index];
        if slot.token != token {
            if slot.inflight != 0 || slot.closing {
                debug_assert!(false, "slot {index} reused before its Closed");
                return None;
            }
            *slot = Slot::fresh(token);
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

    fn arm_accept(&mut self, index: usize) {
        let listener = &mut self.listeners[index];
        listener.armed = true;
        listener.rearm = false;
        let entry = opcode::AcceptMulti::new(types::Fd(listener.fd))
            .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
            .build()
            .user_data(user_data(Op::Accept, 0, index));
        // SAFETY: the entry holds no pointers.
        unsafe { self.push(entry) };
    }

    fn arm_recv(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        slot.recv_armed = true;
        slot.inflight += 1;
        let entry = opcode::RecvMulti::new(types::Fd(slot.fd), BUF_GROUP)
            .build()
            .user_data(user_data(Op::Recv, slot.token, index));
        // SAFETY: the entry holds no pointers; buffers come from the registered ring.
        unsafe { self.push(entry) };
    }

    /// Queue a send of the unwritten rest of the slot's send buffer.
    fn push_send(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        let rest = slot.send_len - slot.send_done;
        let len = rest.min(u32::MAX as usize) as u32;
        // SAFETY: send_done ≤ send_len, so the pointer stays inside the caller's buffer.
        let buf = unsafe { slot.send_buf.add(slot.send_done) };
        slot.inflight += 1;
        let entry = opcode::Send::new(types::Fd(slot.fd), buf, len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(user_data(Op::Send, slot.token, index));
        // SAFETY: `Io::send`'s contract keeps the buffer valid until `Sent` or
        // `Closed`, and neither is delivered before this SQE's CQE is reaped.
        unsafe { self.push(entry) };
    }

    /// Submit queued SQEs and wait up to `wait` for a completion.
    fn enter(&mut self, wait: Duration) -> io::Result<()> {
        let ts = types::Timespec::from(wait.min(WAIT_MAX));
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Handle every completion in the CQ; returns the events delivered.
    fn reap(&mut self, handler: &mut dyn FnMut(Event<'_>)) -> usize {
        let mut delivered = 0;
        // Bound: new CQEs may be posted while we work (without DEFER_TASKRUN).
        let rounds_max = self.ring.params().cq_entries() as usize / CQE_BATCH + 2;
        for _ in 0..rounds_max {
            self.cqes.clear();
            for cqe in self.ring.completion().take(CQE_BATCH) {
                self.cqes.push((cqe.user_data(), cqe.result(), cqe.flags()));
            }
            if self.cqes.is_empty() {
                break;
            }
            for i in 0..self.cqes.len() {
                let (user_data, result, flags) = self.cqes[i];
                delivered += self.complete(user_data, result, flags, handler);
            }
        }
        delivered
    }

    fn complete(
        &mut self,
        user_data: u64,
        result: i32,
        flags: u32,
        handler: &mut dyn FnMut(Event<'_>),
    ) -> usize {
        let (op, tag, index) = decode(user_data);
        match op {
            Some(Op::Accept) => self.complete_accept(index, result, flags, handler),
            Some(Op::ListenerCancel | Op::Drain) => 0,
            Some(op) => self.complete_slot_op(op, tag, index, result, flags, handler),
            None => {
                debug_assert!(false, "unknown user_data {user_data:#x}");
                0
            }
        }
    }

    fn complete_accept(
        &mut self,
        index: usize,
        result: i32,
        flags: u32,
        handler: &mut dyn FnMut(Event<'_>),
    ) -> usize {
        let listener = &mut self.listeners[index];
        let live = listener.active && !self.draining;
        let mut delivered = 0;
        if result >= 0 {
            // A connection accepted before a removed listener's cancel took
            // effect is delivered all the same: it left the listening
            // socket's queue, so nobody else can answer it.
            if !self.draining {
                handler(Event::Accepted { fd: result });
                delivered = 1;
            } else {
                sys::close(result);
            }
        }
        if !cqueue::more(flags) {
            listener.armed = false;
            if live {
                let errno = -result;
                let transient = matches!(
                    errno,
                    libc::EMFILE
                        | libc::ENFILE
                        | libc::ENOBUFS
                        | libc::ENOMEM
                        | libc::ECONNABORTED
                        | libc::EINTR
                        | libc::EAGAIN
                        | libc::EPERM
                );
                if result >= 0 {
                    self.arm_accept(index);
                } else if transient {
                    // Re-arm at the next poll, not now: a listener failing
                    // on every attempt must not spin inside one poll.
                    listener.rearm = true;
                } else {
                    log::error!(
                        "accept on listener fd {} failed: {}; no longer accepting on it",
                        listener.fd,
                        io::Error::from_raw_os_error(errno)
                    );
                    listener.active = false;
                }
            }
        }
        delivered
    }

    fn complete_slot_op(
        &mut self,
        op: Op,
        tag: u64,
        index: usize,
        result: i32,
        flags: u32,
        handler: &mut dyn FnMut(Event<'_>),
    ) -> usize {
        let more = cqueue::more(flags);
        let slot = &mut self.slots[index];
        if !more {
            debug_assert!(
                slot.inflight > 0,
                "CQE for slot {index} with nothing in flight"
            );
            slot.inflight = slot.inflight.saturating_sub(1);
        }
        let live = !slot.closing && !self.draining && tag_of(slot.token) == tag;
        let token = slot.token;
        let mut delivered = 0;
        match op {
            Op::Recv => {
                if !more {
                    slot.recv_armed = false;
                }
                let bid = cqueue::buffer_select(flags);
                if result > 0 {
                    debug_assert!(bid.is_some(), "recv completion without a buffer");
                    if let Some(bid) = bid {
                        if live {
                            // SAFETY: the kernel wrote `result` bytes into
                            // `bid`; it goes back to the ring only after the callback.
                            let data = unsafe { self.bufs.bytes(bid, result as usize) };
                            handler(Event::Recv { token, data });
                            delivered = 1;
                        }
                        self.bufs.give_back(bid);
                    }
                    if live && !more {
                        // The multishot ended without an error: keep receiving.
                        self.stats.recv_rearms_ended += 1;
                        self.arm_recv(index);
                    }
                } else {
                    if let Some(bid) = bid {
                        self.bufs.give_back(bid);
                    }
                    if result == 0 {
                        if live {
                            self.slots[index].recv_ended = true;
                            handler(Event::RecvEnd { token, errno: None });
                            delivered = 1;
                        }
                    } else if -result == libc::ENOBUFS {
                        // Out of buffers is not an end (rule 1).
                        if live && !more {
                            self.stats.recv_rearms_enobufs += 1;
                            self.arm_recv(index);
                        }
                    } else if live && !more {
                        self.slots[index].recv_ended = true;
                        handler(Event::RecvEnd {
                            token,
                            errno: Some(-result),
                        });
                        delivered = 1;
                    }
                }
            }
            Op::Send => {
                if live {
                    if result < 0 {
                        slot.send_len = 0;
                        handler(Event::Sent {
                            token,
                            result: Err(-result),
                        });
                        delivered = 1;
                    } else {
                        slot.send_done += result as usize;
                        if slot.send_done >= slot.send_len {
                            slot.send_len = 0;
                            handler(Event::Sent {
                                token,
                                result: Ok(()),
                            });
                            delivered = 1;
                        } else if result == 0 {
                            slot.send_len = 0;
                            handler(Event::Sent {
                                token,
                                result: Err(libc::EPIPE),
                            });
                            delivered = 1;
                        } else {
                            // Short write: continue with the rest.
                            self.stats.send_continuations += 1;
                            self.push_send(index);
                        }
                    }
                }
            }
            Op::Connect => {
                if live {
                    let result = if result < 0 { Err(-result) } else { Ok(()) };
                    handler(Event::Connected { token, result });
                    delivered = 1;
                }
            }
            Op::Cancel => {
                if result == -libc::EALREADY {
                    // An operation is running and cannot be cancelled; a
                    // shutdown makes it return.
                    let _ = sys::shutdown(slot.fd, libc::SHUT_RDWR);
                }
            }
            Op::Accept | Op::ListenerCancel | Op::Drain => unreachable!(),
        }
        let slot = &mut self.slots[index];
        if slot.closing && slot.inflight == 0 && !self.draining {
            sys::close(slot.fd);
            let token = slot.token;
            *slot = Slot::fresh(token);
            handler(Event::Closed { token });
            delivered += 1;
        }
        delivered
    }

    /// Operations the kernel still holds.
    fn inflight_total(&self) -> usize {
        let slots: usize = self.slots.iter().map(|s| usize::from(s.inflight)).sum();
        slots + self.listeners.iter().filter(|l| l.armed).count()
    }
}

/// Run one multishot recv into a two-buffer ring on a socket pair.
fn probe_multishot_recv(mut ring: IoUring) -> Result<(), String> {
    let bufs = RecvBuffers::new(2, 64).map_err(|e| format!("buffer ring allocation: {e}"))?;
    // SAFETY: `bufs` outlives the ring's use of it: the recv is finished
    // below before `bufs` drops, and `ring` is dropped first.
    unsafe {
        ring.submitter()
            .register_buf_ring_with_flags(bufs.ring_addr(), bufs.count, BUF_GROUP, 0)
    }
    .map_err(|e| format!("IORING_REGISTER_PBUF_RING failed: {e} (Linux 5.19+ needed)"))?;
    let (a, b) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let entry = opcode::RecvMulti::new(types::Fd(std::os::fd::AsRawFd::as_raw_fd(&a)), BUF_GROUP)
        .build()
        .user_data(1);
    // SAFETY: the entry holds no pointers.
    unsafe { ring.submission().push(&entry) }.map_err(|_| "SQ full".to_string())?;
    std::io::Write::write_all(&mut &b, b"x").map_err(|e| format!("socketpair write: {e}"))?;
    let wait = |ring: &mut IoUring| -> Option<(i32, u32)> {
        let ts = types::Timespec::from(Duration::from_secs(1));
        let args = types::SubmitArgs::new().timespec(&ts);
        let _ = ring.submitter().submit_with_args(1, &args);
        ring.completion().next().map(|c| (c.result(), c.flags()))
    };
    let first = wait(&mut ring);
    // End the recv (EOF) so the kernel lets go of the buffers before they are freed.
    drop(b);
    let mut done = !matches!(first, Some((_, f)) if cqueue::more(f));
    for _ in 0..4 {
        if done {
            break;
        }
        done = matches!(wait(&mut ring), Some((_, f)) if !cqueue::more(f));
    }
    drop(ring);
    drop(bufs);
    match first {
        Some((1, flags)) if cqueue::more(flags) && cqueue::buffer_select(flags).is_some() => Ok(()),
        Some((res, flags)) => Err(format!(
            "multishot recv with a buffer ring does not work (res {res}, flags {flags:#x}; \
             Linux 6.0+ needed)"
        )),
        None => Err("multishot recv with a buffer ring did not complete".into()),
    }
}

impl Io for UringIo {
    fn name(&self) -> &'static str {
        "uring"
    }

    fn add_listener(&mut self, fd: RawFd) -> io::Result<()> {
        if self.listeners.iter().any(|l| l.active && l.fd == fd) {
            return Ok(());
        }
        let Some(index) = self.listeners.iter().position(|l| !l.active && !l.armed) else {
            return Err(io::Error::other(format!(
                "more than {LISTENERS_MAX} listeners on one worker"
            )));
        };
        self.listeners[index] = Listener {
            fd,
            active: true,
            armed: false,
            rearm: false,
        };
        self.arm_accept(index);
        Ok(())
    }

    fn remove_listener(&mut self, fd: RawFd) {
        for index in 0..LISTENERS_MAX {
            let listener = &mut self.listeners[index];
            if !listener.active || listener.fd != fd {
                continue;
            }
            listener.active = false;
            listener.rearm = false;
            if listener.armed {
                let entry = opcode::AsyncCancel::new(user_data(Op::Accept, 0, index))
                    .build()
                    .user_data(user_data(Op::ListenerCancel, 0, index));
                // SAFETY: the entry holds no pointers.
                unsafe { self.push(entry) };
            }
        }
    }

    fn accepting(&self) -> bool {
        self.listeners.iter().any(|l| l.armed)
    }

    fn start_recv(&mut self, token: Token, fd: RawFd) {
        let Some(index) = self.claim(token, fd) else {
            return;
        };
        let slot = &self.slots[index];
        if !slot.recv_armed && !slot.recv_ended {
            self.arm_recv(index);
        }
    }

    unsafe fn send(&mut self, token: Token, fd: RawFd, buf: *const u8, len: usize) {
        let Some(index) = self.claim(token, fd) else {
            return;
        };
        let slot = &mut self.slots[index];
        debug_assert_eq!(slot.send_len, 0, "two sends in flight for one token");
        slot.send_buf = buf;
        slot.send_len = len;
        slot.send_done = 0;
        self.push_send(index);
    }

    fn connect(&mut self, token: Token, fd: RawFd, addr: SocketAddr) {
        let Some(index) = self.claim(token, fd) else {
            return;
        };
        let slot = &mut self.slots[index];
        slot.connect_addr = SockAddr::new(&addr);
        slot.inflight += 1;
        let entry = opcode::Connect::new(
            types::Fd(fd),
            slot.connect_addr.as_ptr(),
            slot.connect_addr.byte_len(),
        )
        .build()
        .user_data(user_data(Op::Connect, token, index));
        // SAFETY: the address lives in the slot, which stays in place (the
        // slot array never reallocates) and is not rewritten before this
        // connect's CQE, since the slot is not reused before `Closed`.
        unsafe { self.push(entry) };
    }

    fn close(&mut self, token: Token, fd: RawFd) {
        let index = token_slot(token);
        let slot = &mut self.slots[index];
        if slot.token != token {
            if slot.inflight != 0 || slot.closing {
                debug_assert!(false, "close of token {token:#x} on a busy slot");
                return;
            }
            *slot = Slot::fresh(token);
        }
        if slot.closing {
            return;
        }
        slot.closing = true;
        slot.fd = fd;
        if slot.inflight == 0 {
            sys::close(fd);
            self.closed_ready.push_back(token);
        } else {
            slot.inflight += 1;
            let entry = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(fd)).all())
                .build()
                .user_data(user_data(Op::Cancel, token, index));
            // SAFETY: the entry holds no pointers.
            unsafe { self.push(entry) };
        }
    }

    fn poll(&mut self, timeout: Duration, handler: &mut dyn FnMut(Event<'_>)) -> io::Result<usize> {
        let deadline = Instant::now().checked_add(timeout);
        let mut delivered = 0;
        while let Some(token) = self.closed_ready.pop_front() {
            self.slots[token_slot(token)] = Slot::fresh(token);
            handler(Event::Closed { token });
            delivered += 1;
        }
        for index in 0..LISTENERS_MAX {
            let listener = &self.listeners[index];
            if listener.rearm && listener.active && !listener.armed {
                self.arm_accept(index);
            }
        }
        loop {
            self.flush_backlog();
            let wait = match deadline {
                _ if delivered > 0 => Duration::ZERO,
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                None => WAIT_MAX,
            };
            self.enter(wait)?;
            delivered += self.reap(handler);
            // Only internal completions (re-arms, cancels) so far: wait on.
            if delivered > 0 || wait.is_zero() {
                return Ok(delivered);
            }
        }
    }
}

impl Drop for UringIo {
    fn drop(&mut self) {
        // Operations still in the kernel may write into the receive buffers:
        // cancel them and wait (bounded) before the memory is freed.
        self.draining = true;
        if self.inflight_total() == 0 {
            return;
        }
        let entry = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(user_data(Op::Drain, 0, 0));
        // SAFETY: the entry holds no pointers.
        unsafe { self.push(entry) };
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let mut ignore = |_: Event<'_>| {};
        while self.inflight_total() > 0 && Instant::now() < deadline {
            self.flush_backlog();
            if self.enter(Duration::from_millis(10)).is_err() {
                break;
            }
            self.reap(&mut ignore);
        }
        // Sockets the worker closed are its no longer: close what is left.
        for slot in &mut self.slots {
            if slot.closing && slot.inflight == 0 && slot.fd >= 0 {
                sys::close(slot.fd);
                slot.fd = -1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::conformance;

    fn make(limits: &IoLimits) -> Option<UringIo> {
        if let Err(reason) = UringIo::probe() {
            eprintln!("skipping io_uring test: {reason}");
            return None;
        }
        Some(UringIo::new(limits).expect("UringIo::new"))
    }

    /// The fallback ring (no DEFER_TASKRUN): completions may be posted
    /// during any system call, not only inside `poll`.
    fn make_plain(limits: &IoLimits) -> Option<UringIo> {
        if let Err(reason) = UringIo::probe() {
            eprintln!("skipping io_uring test: {reason}");
            return None;
        }
        Some(UringIo::with_setup(limits, false).expect("UringIo::with_setup"))
    }

    mod plain_ring {
        use super::make_plain;
        crate::runtime::conformance::conformance_suite!(make_plain);
    }

    #[test]
    fn user_data_round_trip() {
        let token = (0xABCDEFu64 << 32) | 77;
        let (op, tag, index) = decode(user_data(Op::Send, token, 77));
        assert_eq!(op, Some(Op::Send));
        assert_eq!(tag, tag_of(token));
        assert_eq!(index, 77);
    }

    #[test]
    fn probe_reports() {
        match UringIo::probe() {
            Ok(()) => {}
            Err(reason) => eprintln!("io_uring unavailable: {reason}"),
        }
    }

    crate::runtime::conformance::conformance_suite!(make);

    /// Rule 1: with a single receive buffer the ring runs dry all the time;
    /// every stream must still arrive whole with one RecvEnd.
    #[test]
    fn running_out_of_buffers_is_not_an_end() {
        let limits = IoLimits {
            recv_buffers_count: 1,
            ..conformance::LIMITS
        };
        let Some(io) = conformance::echo(make, &limits, 4) else {
            return;
        };
        assert!(io.stats().recv_rearms_enobufs > 0, "{:?}", io.stats());
    }

    /// A connection the multishot accept took before a removed listener's
    /// cancel took effect is delivered, not closed: it left the socket's
    /// queue, so nobody else could answer it (a restart behind a socket
    /// held by the service manager). Each connection is either delivered
    /// or still queued on the listener, on both ring setups.
    #[test]
    fn accepted_before_listener_cancel_is_delivered() {
        for make in [make, make_plain] {
            let Some(mut io) = make(&conformance::LIMITS) else {
                return;
            };
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            let addr = listener.local_addr().unwrap();
            let lfd = std::os::fd::AsRawFd::as_raw_fd(&listener);
            io.add_listener(lfd).unwrap();
            let mut accepted = Vec::new();
            let mut handler = |e: Event<'_>| {
                if let Event::Accepted { fd } = e {
                    accepted.push(fd);
                }
            };
            io.poll(Duration::from_millis(10), &mut handler).unwrap();
            let clients: Vec<_> = (0..4)
                .map(|_| std::net::TcpStream::connect(addr).unwrap())
                .collect();
            io.remove_listener(lfd);
            let deadline = Instant::now() + Duration::from_secs(5);
            while io.accepting() {
                assert!(Instant::now() < deadline, "the accept never ended");
                io.poll(Duration::from_millis(10), &mut handler).unwrap();
            }
            let mut queued = 0;
            while listener.accept().is_ok() {
                queued += 1;
            }
            assert_eq!(
                accepted.len() + queued,
                clients.len(),
                "delivered {} + queued {queued}",
                accepted.len()
            );
            for fd in accepted {
                sys::close(fd);
            }
        }
    }

    #[test]
    fn short_writes_are_continued() {
        let Some(io) = conformance::large_send_slow_reader(make) else {
            return;
        };
        assert!(io.stats().send_continuations > 0, "{:?}", io.stats());
    }
}
