//! Thread-per-core runtime: one pinned worker per core, each with its own
//! listening socket (SO_REUSEPORT) and its own I/O backend.

#[cfg(test)]
mod conformance;
pub mod epoll;
pub mod io;
pub mod uring;

/// Sizes a backend is built with; all allocation happens at construction.
#[derive(Clone, Copy, Debug)]
pub struct IoLimits {
    /// Token slot indices are below this (connections + origin sockets).
    pub slots_max: usize,
    /// Bytes in one provided receive buffer.
    pub recv_buffer_bytes: usize,
    /// Number of provided receive buffers (a power of two, at most 32768).
    pub recv_buffers_count: u16,
    /// Submission queue entries (a power of two).
    pub ring_entries: u32,
}
