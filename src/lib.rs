//! ringcache: an HTTP/1.1 caching reverse proxy for Linux.
//!
//! ```text
//!            clients
//!               │  SO_REUSEPORT: one listening socket per worker
//!     ┌─────────┼──────────────────┐
//!     ▼         ▼                  ▼
//!  worker 0  worker 1  ...  worker N-1     one thread per core, pinned
//!  ┌───────────────────────┐
//!  │ io: io_uring | epoll  │  completions in, operations out, one submit per turn
//!  │ conns: Slab<Conn>     │  tokens = slot | generation
//!  │ proxy: parse → key →  │  hit: answered from the store in the same turn
//!  │   lookup → hit | miss │  miss: per-worker origin pool, keep-alive
//!  │ counters (per core)   │  CachePadded, summed on scrape
//!  └──────────┬────────────┘
//!             ▼
//!  store (shared by all workers)     admin thread: /metrics /healthz /stats,
//!                                    invalidation API (bans, tag index: `invalidate`)
//! ```
//!
//! Dependencies point one way: `main → runtime → proxy → {http, store}`,
//! `runtime → sys`. `http` is pure: bytes in, structs out.
//!
//! Global invariants (tests prove each): a cached response is byte-identical
//! to what the origin sent apart from hop-by-hop headers, `Age`, `Date` and
//! `Cache-Status`; malformed input gets a 4xx or a closed connection, never a
//! crash or a smuggled request; every queue, buffer and timeout has a limit
//! named in [`config`].

#![deny(unsafe_code)]
#![warn(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

pub mod access_log;
#[cfg(not(loom))]
pub mod admin;
#[cfg(not(loom))]
pub mod admin_auth;
#[cfg(not(loom))]
pub mod bus;
pub mod config;
pub mod demo_origin;
pub mod http;
#[cfg(not(loom))]
pub mod invalidate;
pub mod logging;
pub mod metrics;
#[cfg(not(loom))]
pub mod proxy;
#[allow(unsafe_code)]
#[cfg(not(loom))]
pub mod runtime;
#[allow(unsafe_code)]
pub mod store;
pub mod sync;
#[allow(unsafe_code)]
pub mod sys;
