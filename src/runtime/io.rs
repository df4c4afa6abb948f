//! The completion-style interface every I/O backend offers a worker.
//!
//! A worker never talks to the kernel itself. It asks its backend to start
//! operations (`start_recv`, `send`, `connect`, `close`) and learns their
//! outcome as [`Event`]s handed to it by [`Io::poll`]. io_uring is completion
//! based already; the epoll backend emulates completions on top of readiness,
//! so one worker implementation runs on both.
//!
//! ```text
//!   worker loop turn:
//!     io.poll(timeout, |event| worker.handle(event))   // reap completions
//!     worker.flush_ops(&mut io)                          // queue new operations
//!     (next poll submits them in one go and waits)
//! ```
//!
//! ## Tokens
//! A [`Token`] is opaque to the backend except for one rule: its low 32 bits
//! are a slot index below the `slots_max` the backend was built with, so a
//! backend may keep per-slot state in flat arrays. The worker packs a
//! generation into the high bits so that an event for a slot that has since
//! been reused is recognised and dropped.
//!
//! ## Rules both backends follow
//! 1. `start_recv` keeps receiving until the peer closes or an error occurs;
//!    each chunk of bytes is one `Recv` event, and the stream's end is exactly
//!    one `RecvEnd`. Running out of provided buffers is not an end: the
//!    backend re-arms on its own.
//! 2. At most one `send` per token is in flight. `Sent` is reported once all
//!    bytes are written (short writes are continued inside the backend) or on
//!    the first error.
//! 3. After `close(token)`, no event for that token is delivered except one
//!    final `Closed`, which comes only when the kernel holds no buffer or
//!    operation of the token any more; the fd is closed by then. Only after
//!    `Closed` may the worker free the buffers it lent or reuse the slot.
//! 4. Operations pushed between two `poll` calls are submitted by the next
//!    `poll` in one batch (io_uring: one `io_uring_enter` per loop turn).

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Duration;

/// Operation owner: low 32 bits are the slot index, the rest is the worker's.
pub type Token = u64;

/// The slot index carried in a token's low 32 bits.
#[inline]
pub fn token_slot(token: Token) -> usize {
    (token & 0xFFFF_FFFF) as usize
}

/// Outcome of a finished operation, as a worker sees it.
#[derive(Debug)]
pub enum Event<'a> {
    /// The listener accepted a connection. The fd is non-blocking, close-on-exec
    /// and owned by the worker from now on.
    Accepted { fd: RawFd },
    /// Bytes arrived on a stream started with `start_recv`. The slice is only
    /// valid during the callback.
    Recv { token: Token, data: &'a [u8] },
    /// The stream ended: `errno` is `None` for an orderly close by the peer.
    RecvEnd { token: Token, errno: Option<i32> },
    /// A `send` finished: every byte written (`Ok`) or failed with an errno.
    Sent {
        token: Token,
        result: Result<(), i32>,
    },
    /// A `connect` finished.
    Connected {
        token: Token,
        result: Result<(), i32>,
    },
    /// Everything of a closed token is over; the slot may be reused.
    Closed { token: Token },
}

/// One worker's I/O backend. Not `Send`: it lives and dies on its core.
pub trait Io {
    /// Short name for logs and metrics: `"uring"` or `"epoll"`.
    fn name(&self) -> &'static str;

    /// Start accepting on a listening socket (multishot accept on io_uring).
    fn add_listener(&mut self, fd: RawFd) -> io::Result<()>;

    /// Stop accepting on the listener given to `add_listener` (graceful drain).
    /// The listener fd itself stays open and owned by the caller.
    fn remove_listener(&mut self, fd: RawFd);

    /// Whether an accept may still deliver connections (`Accepted` events):
    /// after `remove_listener`, io_uring reports connections its multishot
    /// accept took before the cancel. epoll accepts inside `poll` only.
    fn accepting(&self) -> bool {
        false
    }

    /// Receive continuously on a connected stream (multishot recv into the
    /// provided-buffer ring on io_uring).
    fn start_recv(&mut self, token: Token, fd: RawFd);

    /// Write `len` bytes starting at `buf`.
    ///
    /// # Safety
    /// `buf..buf+len` must stay valid and unchanged until the `Sent` or
    /// `Closed` event for `token` has been delivered.
    unsafe fn send(&mut self, token: Token, fd: RawFd, buf: *const u8, len: usize);

    /// Connect a fresh non-blocking stream socket to `addr`.
    fn connect(&mut self, token: Token, fd: RawFd, addr: SocketAddr);

    /// End every operation of `token`, close `fd`, then report `Closed`.
    fn close(&mut self, token: Token, fd: RawFd);

    /// Submit everything queued since the last call, wait up to `timeout`
    /// for at least one completion, and hand every completion available to
    /// `handler`. Returns the number of events delivered.
    fn poll(&mut self, timeout: Duration, handler: &mut dyn FnMut(Event<'_>)) -> io::Result<usize>;
}
