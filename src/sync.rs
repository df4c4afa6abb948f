//! The std ↔ loom facade.
//!
//! Every atomic shared across cores comes from here, so the lock-free
//! protocols of the store run unchanged under the loom model checker
//! (`RUSTFLAGS="--cfg loom" cargo test --release --lib store::`).
//!
//! One exception, stated here so it stays the only one: atomics that live
//! *inside the mapped region* (index slots, chunk link words) must have the
//! layout of a plain integer, which loom's types do not. They come from
//! [`mapped`], always std. The protocols that use them are written over
//! traits ([`crate::store::slab::Links`]) so the loom models drive the same
//! code with facade atomics kept on the heap.

#[cfg(loom)]
pub use loom::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
#[cfg(loom)]
pub use loom::sync::{Arc, Mutex, MutexGuard};

#[cfg(not(loom))]
pub use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
#[cfg(not(loom))]
pub use std::sync::{Arc, Mutex, MutexGuard};

/// Atomics placed in mapped memory: always std, layout-identical to the
/// integer they wrap (`#[repr(C, align(N))]` of one `UnsafeCell<uN>`).
#[cfg(not(loom))]
pub mod mapped {
    pub use std::sync::atomic::{AtomicU32, AtomicU64};
}

/// Hint to the CPU (or to loom: yield) inside a bounded retry loop.
#[inline]
pub fn spin_hint() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::hint::spin_loop();
}
