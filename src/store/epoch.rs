//! Grace periods: a chunk unlinked from the index is reused only after every
//! reader that could have seen it has finished.
//!
//! Epoch-based reclamation with a fixed table of reader slots (one per
//! worker; thread-per-core makes the count small and known). Why our own and
//! not a general collector: the store must know how many chunks wait for a
//! grace period (to decide between waiting and evicting more), must move
//! them back to its own free list without allocating, and the protocol must
//! run under loom through `crate::sync`.
//!
//! Protocol (`g` = global epoch):
//! - **pin**: `e = g` (SeqCst); `slot = e|PINNED` (SeqCst); fence(SeqCst); then
//!   read the index and copy the item. **unpin**: `slot = IDLE` (Release).
//! - **retire** (writer, after unlinking from the index): fence(SeqCst);
//!   `r = g` (SeqCst); push the chain onto `limbo[r % 3]`.
//! - **advance** (one at a time, under `advancing`): fence(SeqCst); if every
//!   pinned slot holds `g`, set `g + 1` and move `limbo[(g + 2) % 3]`
//!   (chains retired at `g - 1`, or 3k epochs earlier) to the free list.
//!
//! Why a pinned reader never sees a freed chunk: a reader R pinned at `e`
//! blocks the advance from `e + 1`, so `g ≤ e + 1` while R is pinned. If R
//! loaded the old index value, R's fence precedes the writer's in the
//! SeqCst order (otherwise R would see the unlink), so the writer's load of
//! `g` comes after R's in that order: `r ≥ e`. Chains retired at `r` are
//! freed when `g` reaches `r + 2 ≥ e + 2`: never while R is pinned. Any chain
//! in `limbo[(g + 2) % 3]` at an advance to `g + 1` was retired at `g - 1`
//! or earlier by 3k (a retirer reads an epoch ≤ the current one, and
//! advances are serialized so none happens during the move), so it is
//! already past its grace period.

use super::slab::{link_kind, link_next, link_word, FreeList, Links, KIND_FREE, NONE};
use crate::sync::{fence, AtomicBool, AtomicU64, Ordering};
use crossbeam_utils::CachePadded;

/// Slot states: 0 free, IDLE registered and unpinned, `e << 2 | 3` pinned.
const IDLE: u64 = 1;
const PINNED: u64 = 2;

/// Reader slots and limbo lists.
pub struct Epochs {
    global: CachePadded<AtomicU64>,
    slots: Box<[CachePadded<AtomicU64>]>,
    advancing: AtomicBool,
    limbo: [FreeList; 3],
    /// Chunks waiting in limbo.
    pending: AtomicU64,
}

impl Epochs {
    pub fn new(readers_max: usize) -> Epochs {
        Epochs {
            global: CachePadded::new(AtomicU64::new(0)),
            slots: (0..readers_max)
                .map(|_| CachePadded::new(AtomicU64::new(0)))
                .collect(),
            advancing: AtomicBool::new(false),
            limbo: [FreeList::new(), FreeList::new(), FreeList::new()],
            pending: AtomicU64::new(0),
        }
    }

    /// Claim a reader slot.
    pub fn register(&self) -> Option<usize> {
        self.slots.iter().position(|s| {
            // AcqRel/Relaxed: claiming a free slot; no data travels with it.
            s.compare_exchange(0, IDLE, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        })
    }

    /// Give a slot back (must be unpinned).
    pub fn unregister(&self, slot: usize) {
        // Release: our last reads finish before the slot is seen free.
        self.slots[slot].store(0, Ordering::Release);
    }

    /// Enter a read-side critical section.
    #[inline]
    pub fn pin(&self, slot: usize) {
        // SeqCst: global loads, slot stores and the fences form the total
        // order the module doc argues over.
        let e = self.global.load(Ordering::SeqCst);
        debug_assert_eq!(self.slots[slot].load(Ordering::Relaxed), IDLE);
        // SeqCst: see above.
        self.slots[slot].store(e << 2 | PINNED | IDLE, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// Leave it: every read of shared chunks is done.
    #[inline]
    pub fn unpin(&self, slot: usize) {
        // Release: our reads of the chunks happen before an advancer's
        // SeqCst load of this slot, hence before the chunks are reused.
        self.slots[slot].store(IDLE, Ordering::Release);
    }

    /// Chunks waiting for their grace period.
    pub fn pending(&self) -> u64 {
        // Relaxed: a hint for the allocator.
        self.pending.load(Ordering::Relaxed)
    }

    /// Retire the chain `first ..= last` (`chunks` long) after it was
    /// unlinked from the index. `last_kind` keeps the kind bits of `last`.
    pub fn retire<L: Links + ?Sized>(
        &self,
        links: &L,
        first: u32,
        last: u32,
        last_kind: u32,
        chunks: u64,
    ) {
        fence(Ordering::SeqCst);
        // SeqCst: after the unlink in the total order (see module doc).
        let r = self.global.load(Ordering::SeqCst);
        // Relaxed: a counter; the chain itself is published by push_chain.
        self.pending.fetch_add(chunks, Ordering::Relaxed);
        self.limbo[(r % 3) as usize].push_chain(links, first, last, last_kind);
    }

    /// Try to advance the global epoch; on success, chunks past their grace
    /// period go to `free`. Returns the number of chunks freed, or None when
    /// a reader holds an older epoch (or another advance is running).
    pub fn try_advance<L: Links + ?Sized>(&self, links: &L, free: &FreeList) -> Option<u64> {
        // Acquire: the previous advancer's moves happen before ours.
        if self.advancing.swap(true, Ordering::Acquire) {
            return None;
        }
        fence(Ordering::SeqCst);
        // SeqCst: see module doc.
        let g = self.global.load(Ordering::SeqCst);
        for s in self.slots.iter() {
            // SeqCst: see module doc; also Acquires a reader's unpin.
            let v = s.load(Ordering::SeqCst);
            if v & PINNED != 0 && v >> 2 != g {
                // Release: hand the flag back.
                self.advancing.store(false, Ordering::Release);
                return None;
            }
        }
        // SeqCst: only the flag holder writes `global`.
        self.global.store(g + 1, Ordering::SeqCst);
        let mut freed = 0;
        if let Some(first) = self.limbo[((g + 2) % 3) as usize].take_all() {
            let mut c = first;
            loop {
                freed += 1;
                // Relaxed: we own the chain now; published by push_chain.
                let w = links.link(c).load(Ordering::Relaxed);
                let next = link_next(w);
                if link_kind(w) != KIND_FREE {
                    // Relaxed: as above.
                    links
                        .link(c)
                        .store(link_word(KIND_FREE, next), Ordering::Relaxed);
                }
                if next == NONE {
                    break;
                }
                c = next;
            }
            free.push_chain(links, first, c, KIND_FREE);
            // Relaxed: a counter.
            self.pending.fetch_sub(freed, Ordering::Relaxed);
        }
        // Release: our moves happen before the next advancer's.
        self.advancing.store(false, Ordering::Release);
        Some(freed)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::super::slab::HeapLinks;
    use super::*;

    #[test]
    fn a_pinned_reader_holds_back_reuse() {
        let links = HeapLinks::new(4);
        let free = FreeList::new();
        let ep = Epochs::new(4);
        let r = ep.register().unwrap();
        ep.pin(r);
        links
            .link(0)
            .store(link_word(KIND_FREE, NONE), Ordering::Relaxed);
        ep.retire(&links, 0, 0, KIND_FREE, 1);
        // One advance is allowed (the reader is at the current epoch), the
        // second is not.
        assert_eq!(ep.try_advance(&links, &free), Some(0));
        assert_eq!(ep.try_advance(&links, &free), None);
        assert!(free.pop(&links).is_none());
        ep.unpin(r);
        let mut freed = 0;
        for _ in 0..3 {
            freed += ep.try_advance(&links, &free).unwrap();
        }
        assert_eq!(freed, 1);
        assert_eq!(free.pop(&links), Some(0));
        assert_eq!(ep.pending(), 0);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::super::slab::{HeapLinks, NONE};
    use super::*;
    use loom::cell::UnsafeCell;
    use loom::sync::Arc;

    /// The publish/read/retire protocol: a writer publishes a new item in a
    /// fresh chunk, retires the old chunk, runs grace periods and rewrites
    /// the old chunk if it got it back, while a reader pins, loads the slot
    /// and reads the chunk it names. Loom checks the reader's read never
    /// races the rewrite (UnsafeCell causality) and sees only published
    /// values.
    #[test]
    fn a_retired_chunk_is_not_rewritten_under_a_reader() {
        loom::model(|| {
            let links = Arc::new(HeapLinks::new(2));
            let cells = Arc::new([UnsafeCell::new(10u64), UnsafeCell::new(0u64)]);
            let free = Arc::new(FreeList::new());
            let ep = Arc::new(Epochs::new(1));
            let slot = Arc::new(AtomicU64::new(1)); // chunk 0 published
            links
                .link(1)
                .store(link_word(KIND_FREE, NONE), Ordering::Relaxed);
            free.push_chain(&*links, 1, 1, KIND_FREE);
            let r = ep.register().unwrap();

            let reader = {
                let (cells, ep, slot) = (cells.clone(), ep.clone(), slot.clone());
                loom::thread::spawn(move || {
                    ep.pin(r);
                    let v = slot.load(Ordering::Acquire);
                    // SAFETY: loom checks this read against every write.
                    let x = cells[(v - 1) as usize].with(|p| unsafe { *p });
                    ep.unpin(r);
                    assert!(x == 10 || x == 20, "read {x}");
                })
            };

            let c = free.pop(&*links).unwrap();
            // SAFETY: popped: ours until published.
            cells[c as usize].with_mut(|p| unsafe { *p = 20 });
            let old = slot.swap(u64::from(c) + 1, Ordering::AcqRel) - 1;
            links
                .link(old as u32)
                .store(link_word(KIND_FREE, NONE), Ordering::Relaxed);
            ep.retire(&*links, old as u32, old as u32, KIND_FREE, 1);
            for _ in 0..3 {
                ep.try_advance(&*links, &free);
            }
            if let Some(again) = free.pop(&*links) {
                assert_eq!(again, old as u32);
                // SAFETY: reused after its grace period.
                cells[again as usize].with_mut(|p| unsafe { *p = 30 });
            }
            reader.join().unwrap();
        });
    }
}
