//! Chunk allocation: segments carved on demand, chunks recycled through a
//! lock-free free list.
//!
//! Every chunk starts with a link word (u32, atomic, in the region):
//! ```text
//!  31    28 27                         0
//! ┌────────┬────────────────────────────┐
//! │  kind  │ next chunk id (NONE = 2^28-1)│
//! └────────┴────────────────────────────┘
//! kind: FREE 0 · HEAD 1 (first chunk of a live item) · CONT 2 (later chunk)
//!       · RETIRED 3 (first chunk of an item unlinked from the index)
//!       · FILLING 4 (first chunk of an item being written, not published)
//! ```
//! The kind is written by the store only, never taken from payload, so the
//! recovery scan can tell item starts from bytes an origin sent (a body
//! crafted to look like an item header is never mistaken for one).
//!
//! Why one chunk size and chains rather than size classes: with per-item
//! eviction (CLOCK-Pro), any victim must free memory any newcomer can use.
//! Size classes pin segments to a class, and once the size mix moves, a
//! class starves while another holds the memory (slab calcification) unless
//! items are moved between classes. Chains of equal chunks never calcify;
//! the price is at most `chunk_bytes - 1` tail waste and 4 bytes per chunk.
//!
//! The free list is a Treiber stack: `head` packs an ABA tag (high 32 bits,
//! bumped by every successful push and pop) and `chunk + 1` (low 32 bits,
//! 0 = empty), so a pop that read a stale `next` fails its compare-exchange.

use crate::sync::{AtomicU32, AtomicU64, Ordering};

/// The link word of every chunk.
pub trait Links {
    fn link(&self, chunk: u32) -> &AtomicU32;
}

pub const KIND_FREE: u32 = 0;
pub const KIND_HEAD: u32 = 1;
pub const KIND_CONT: u32 = 2;
pub const KIND_RETIRED: u32 = 3;
pub const KIND_FILLING: u32 = 4;
/// "No next chunk".
pub const NONE: u32 = super::layout::CHUNK_NONE;
const NEXT_MASK: u32 = NONE;

#[inline]
pub fn link_word(kind: u32, next: u32) -> u32 {
    debug_assert!(kind < 16 && next <= NONE);
    kind << 28 | next
}
#[inline]
pub fn link_next(w: u32) -> u32 {
    w & NEXT_MASK
}
#[inline]
pub fn link_kind(w: u32) -> u32 {
    w >> 28
}

/// A lock-free stack of chunk chains.
pub struct FreeList {
    head: AtomicU64,
}

impl Default for FreeList {
    fn default() -> Self {
        Self::new()
    }
}

impl FreeList {
    pub fn new() -> FreeList {
        FreeList {
            head: AtomicU64::new(0),
        }
    }

    /// Push the chain `first ..= last` (already linked through `next`). The
    /// link of `last` is rewritten to point at the old top, keeping `last_kind`.
    pub fn push_chain<L: Links + ?Sized>(&self, links: &L, first: u32, last: u32, last_kind: u32) {
        // Relaxed: the value is only a guess for the compare-exchange below.
        let mut cur = self.head.load(Ordering::Relaxed);
        loop {
            let top = cur as u32;
            let next = if top == 0 { NONE } else { top - 1 };
            // Relaxed: published by the Release compare-exchange below.
            links
                .link(last)
                .store(link_word(last_kind, next), Ordering::Relaxed);
            let new = ((cur >> 32).wrapping_add(1) << 32) | u64::from(first + 1);
            // Release on success: a popper that Acquires this head sees the
            // link words of the chain (and everything written to the chunks
            // before they were freed). Relaxed on failure: we retry.
            match self
                .head
                .compare_exchange_weak(cur, new, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(seen) => cur = seen,
            }
        }
    }

    /// Pop one chunk.
    pub fn pop<L: Links + ?Sized>(&self, links: &L) -> Option<u32> {
        // Acquire: pairs with the Release push that put the top there, so
        // its link word (our `next`) is visible.
        let mut cur = self.head.load(Ordering::Acquire);
        loop {
            let top = cur as u32;
            if top == 0 {
                return None;
            }
            let chunk = top - 1;
            // Relaxed: ordered by the Acquire load of `head` above. If the
            // chunk was popped and reused meanwhile this is garbage, and the
            // tag makes the compare-exchange below fail.
            let next = link_next(links.link(chunk).load(Ordering::Relaxed));
            let low = if next == NONE { 0 } else { u64::from(next) + 1 };
            let new = ((cur >> 32).wrapping_add(1) << 32) | low;
            // AcqRel on success: Acquire the pusher's writes to the chunk;
            // Release keeps the release sequence for later poppers.
            // Acquire on failure: the new top's link must be visible.
            match self
                .head
                .compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(chunk),
                Err(seen) => cur = seen,
            }
        }
    }

    /// Take the whole stack; returns its first chunk (the chain ends at NONE).
    pub fn take_all(&self) -> Option<u32> {
        // Relaxed: a guess for the compare-exchange.
        let mut cur = self.head.load(Ordering::Relaxed);
        loop {
            let top = cur as u32;
            if top == 0 {
                return None;
            }
            let new = (cur >> 32).wrapping_add(1) << 32;
            // AcqRel: Acquire the pushers' link writes; Release for the sequence.
            match self
                .head
                .compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Some(top - 1),
                Err(seen) => cur = seen,
            }
        }
    }
}

/// Segments carved into chunks on first use, chunks recycled through one
/// free list. Nothing here takes a lock.
pub struct Slab {
    free: FreeList,
    /// Segments carved so far.
    carved: AtomicU32,
    segment_count: u32,
    chunks_per_segment: u32,
}

impl Slab {
    /// `carved` segments are already in use or on the free list (recovery).
    pub fn new(segment_count: u32, chunks_per_segment: u32, carved: u32) -> Slab {
        assert!(carved <= segment_count && chunks_per_segment >= 1);
        Slab {
            free: FreeList::new(),
            carved: AtomicU32::new(carved),
            segment_count,
            chunks_per_segment,
        }
    }

    pub fn free_list(&self) -> &FreeList {
        &self.free
    }

    /// Segments carved so far.
    pub fn carved(&self) -> u32 {
        // Relaxed: a statistic.
        self.carved.load(Ordering::Relaxed)
    }

    /// One chunk: recycled first, else from a fresh segment.
    pub fn alloc<L: Links + ?Sized>(&self, links: &L) -> Option<u32> {
        if let Some(c) = self.free.pop(links) {
            return Some(c);
        }
        // Relaxed: the counter only hands out segment numbers; chunk
        // contents are published through the free list or the index.
        let seg = self
            .carved
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                (s < self.segment_count).then_some(s + 1)
            })
            .ok()?;
        let first = seg * self.chunks_per_segment;
        let last = first + self.chunks_per_segment - 1;
        if last > first {
            for c in first + 1..last {
                // Relaxed: published by push_chain's Release.
                links
                    .link(c)
                    .store(link_word(KIND_FREE, c + 1), Ordering::Relaxed);
            }
            self.free.push_chain(links, first + 1, last, KIND_FREE);
        }
        Some(first)
    }

    /// Give a single chunk back (e.g. a partial allocation).
    pub fn free_one<L: Links + ?Sized>(&self, links: &L, chunk: u32) {
        self.free.push_chain(links, chunk, chunk, KIND_FREE);
    }
}

#[cfg(test)]
pub(crate) struct HeapLinks(pub Vec<AtomicU32>);

#[cfg(test)]
impl HeapLinks {
    pub fn new(n: u32) -> HeapLinks {
        HeapLinks((0..n).map(|_| AtomicU32::new(0)).collect())
    }
}

#[cfg(test)]
impl Links for HeapLinks {
    fn link(&self, chunk: u32) -> &AtomicU32 {
        &self.0[chunk as usize]
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn carves_then_recycles_every_chunk_once() {
        let links = HeapLinks::new(4 * 8);
        let slab = Slab::new(4, 8, 0);
        let mut got: Vec<u32> = (0..32).map(|_| slab.alloc(&links).unwrap()).collect();
        assert!(slab.alloc(&links).is_none());
        got.sort_unstable();
        assert_eq!(got, (0..32).collect::<Vec<_>>());
        for &c in &got {
            slab.free_one(&links, c);
        }
        let mut again: Vec<u32> = (0..32).map(|_| slab.alloc(&links).unwrap()).collect();
        again.sort_unstable();
        assert_eq!(again, got);
    }

    #[test]
    fn concurrent_alloc_free_never_hands_a_chunk_twice() {
        use std::sync::atomic::AtomicBool;
        let links = std::sync::Arc::new(HeapLinks::new(64));
        let slab = std::sync::Arc::new(Slab::new(8, 8, 0));
        let owned: std::sync::Arc<Vec<AtomicBool>> =
            std::sync::Arc::new((0..64).map(|_| AtomicBool::new(false)).collect());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (links, slab, owned) = (links.clone(), slab.clone(), owned.clone());
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        if let Some(c) = slab.alloc(&*links) {
                            assert!(
                                !owned[c as usize].swap(true, Ordering::SeqCst),
                                "double alloc {c}"
                            );
                            owned[c as usize].store(false, Ordering::SeqCst);
                            slab.free_one(&*links, c);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;

    /// Two threads pop and push on a three-chunk stack: every chunk is held
    /// by at most one thread, and all come back.
    #[test]
    fn treiber_stack_has_no_aba() {
        loom::model(|| {
            let links = loom::sync::Arc::new(HeapLinks::new(3));
            let list = loom::sync::Arc::new(FreeList::new());
            for c in 0..3 {
                list.push_chain(&*links, c, c, KIND_FREE);
            }
            let held =
                loom::sync::Arc::new([AtomicU32::new(0), AtomicU32::new(0), AtomicU32::new(0)]);
            let t: Vec<_> = (0..2)
                .map(|_| {
                    let (links, list, held) = (links.clone(), list.clone(), held.clone());
                    loom::thread::spawn(move || {
                        let a = list.pop(&*links).unwrap();
                        assert_eq!(held[a as usize].fetch_add(1, Ordering::SeqCst), 0);
                        held[a as usize].fetch_sub(1, Ordering::SeqCst);
                        list.push_chain(&*links, a, a, KIND_FREE);
                    })
                })
                .collect();
            for t in t {
                t.join().unwrap();
            }
            let mut n = 0;
            while list.pop(&*links).is_some() {
                n += 1;
            }
            assert_eq!(n, 3);
        });
    }
}
