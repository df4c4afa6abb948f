//! CLOCK-Pro eviction over entry indices (Jiang, Chen, Zhang, "CLOCK-Pro: An Effective
//! Improvement of the CLOCK Replacement", USENIX ATC 2005).
//!
//! The policy knows entries by index only; it never sees what an entry holds. The store calls
//! it inside a short critical section. It hands out entry indices in `0..capacity_entries` (or
//! takes the store's: "Entries chosen by the store" below), returns the entry that must leave
//! the cache, and never frees anything itself.
//!
//! # States
//! Every entry on the clock is one of:
//! * **hot**: resident, with a small reuse distance;
//! * **cold**: resident, on probation. It is *in test* from when it is (re)placed at the list
//!   head until a hand ends its test period;
//! * **test**: non-resident (its item is gone). It is kept only while in test, so that a quick
//!   re-request is recognised by its key hash and admitted as hot.
//!
//! # The clock
//! All three kinds share one circular list, ordered by their last placement. New and moved
//! entries go to the list head (`newest`). The three hands sweep from the oldest entry towards
//! the newest and then wrap around:
//! * A hit only sets the entry's reference bit ([`ClockPro::touch`]); nothing moves.
//! * **HAND_cold** runs on a miss when the cache is full. It stops at resident cold entries:
//!   - bit clear: evict it. If it is in test it stays on the clock as a test entry; otherwise
//!     it leaves the clock.
//!   - bit set and in test: promote it. The adaptive cold target `m_c` grows, then HAND_hot makes
//!     room (hot ≤ m − m_c). If HAND_hot ends the candidate's test period on the way, the
//!     promotion is abandoned and the entry stays cold.
//!   - bit set, not in test: clear the bit and move the entry to the head with a new test period.
//!
//!   The hand repeats until it has evicted one entry.
//! * **HAND_hot** demotes the oldest hot entry whose bit is clear. It clears the bit of the hot
//!   entries it passes that have it set, and moves them to the head. It ends the test period of
//!   every cold entry it passes, dropping the test (non-resident) ones. Demoted entries move to
//!   the head as cold entries, not in test. After a demotion (and after a promotion) the hand
//!   moves on to the next hot entry at once, ending the test periods on its way: it always
//!   stands on the oldest hot entry.
//! * **HAND_test** runs while there are more than `m` test entries. It ends test periods
//!   until it has dropped one test entry.
//! * A miss on a key that still has a test entry is a request in its test period: `m_c` grows,
//!   then HAND_hot makes room for one more hot entry while the test entry stays in place, and
//!   the key is admitted as hot. If HAND_hot ends that test period on the way, the key is
//!   admitted as an ordinary cold entry. HAND_cold runs first, and the key is looked up after
//!   it. Any other miss admits a cold entry in test.
//! * Adaptation (the paper's rule): `m_c` grows by one each time a cold entry proves it was
//!   requested during its test period: HAND_cold finds its bit set while in test, a hand
//!   ends its test period with the bit set (HAND_cold has not reached it yet), or its test
//!   entry is requested. It shrinks by one when a test period ends without a request. With
//!   `m_c_min = min(m, max(2, ⌊m/100⌋))` it stays within
//!   `[m_c_min, max(m_c_min, min(⌊99·m/100⌋, m − m_c_min))]`: a small cache keeps at least
//!   `m_c_min` entries for hot ones too (12 entries: `m_c` in `[2, 10]`, not 11). It starts
//!   at its minimum.
//! * Warm-up: until the cache first fills, new entries are hot while the resident count is
//!   below `m − m_c_min`.
//!
//! These are the rules of the reference simulator in `shared/tools/evict-sim` (count mode):
//! `tests/clockpro_traces.rs` holds every trace point within 0.5 percentage points of it.
//! The remaining differences (under a tenth of a point) come from the 28-bit fingerprint
//! below, which now and then matches a test entry of another key: with fingerprints that
//! cannot collide, every point of those traces agrees with the reference to three decimals.
//!
//! # Entries chosen by the store
//! [`ClockPro::new`] hands out resident entry indices itself. [`ClockPro::with_store_entries`]
//! instead lets the store name the entry at admission (its index slot, which the key's hash
//! picks): resident entries are `0..capacity` as before and test entries keep their own range
//! above, so no map between the two is needed. In that mode the store is usually short of
//! bytes before it is short of entries, so the cache size `m` that CLOCK-Pro adapts against
//! is not the capacity: it is the resident count each time the store asks for room
//! ([`ClockPro::evict_with`]). `m` bounds the test entries and `m_c`, and the hot target is
//! `m − m_c`. Admission never evicts in that mode (the store frees the slot first).
//!
//! A reference bit may also live outside the policy (the store keeps it in the index slot,
//! where a hit sets it without a lock): every hand reads a resident entry's bit through
//! [`ReferenceBits`] and folds it into its own before deciding, which is the same as a
//! `touch` delivered just before the hand arrived.
//!
//! Test entries are bounded by `m` (the capacity unless the store names entries), not by the
//! current resident count. The two are the same once the cache is full. Expired entries ([`ClockPro::mark_expired`]) are placed
//! under HAND_cold, so they are the next victims, and they leave no test entry.
//!
//! # Layout
//! ```text
//! nodes: [Node; 2·capacity + 1]          8 bytes each
//!   0 .. capacity                        resident entries (the index the store uses)
//!   capacity .. 2·capacity + 1           test entries (one spare: a test entry is created
//!                                        before HAND_test drops the oldest)
//! Node { prev: u32, next: u32 }
//!   prev == NIL                          node is free (next links the free list)
//! flags: [u8; capacity]                  a resident entry's EXPIRED | IN_TEST | REFERENCED | HOT
//! test_tags: [u32; capacity + 1]         a test entry's fingerprint (28 bits) | IN_TEST
//! fingerprints: [u32; capacity]          resident entries' fingerprints, only when the policy
//!                                        names entries; a store that names them gives the key
//!                                        hash back when the entry leaves a test entry behind
//!                                        ([`ReferenceBits::key_hash`])
//! table: [u32; ⌈4/3·(capacity + 1)⌉]      test entries by fingerprint (linear probing,
//!                                          backward-shift deletion), NIL = empty
//!   place = fingerprint's top bits | test node index (low node_bits bits)
//!   node_bits = bits of 2·capacity + 1: an index never fills them with ones, so no
//!   place is NIL; the top bits spare most probes a read of the node
//! ```
//! Memory: 9 bytes per resident entry (13 when the policy names entries), plus 12 bytes and
//! 5⅓ bytes of table per possible test entry: 26⅓ bytes per unit of capacity in store mode
//! and a few bytes more in all ([`ClockPro::metadata_bytes`]; the store charges 27 per index
//! slot).
//! The 28-bit fingerprint can make a new key match an unrelated test entry (probability about
//! test entries / 2^28 per miss). That key is then admitted as hot; nothing else is affected.

/// No node.
const NIL: u32 = u32::MAX;

/// Flags in the low bits of [`Node::tag`].
const HOT: u32 = 1;
const REFERENCED: u32 = 2;
const IN_TEST: u32 = 4;
const EXPIRED: u32 = 8;
const FLAGS_MASK: u32 = 0xF;

/// Largest supported capacity: node indices (2·capacity + 1 of them) must stay below `NIL`.
pub const CAPACITY_ENTRIES_MAX: u32 = (u32::MAX - 2) / 2;

/// A place on the clock: its two links. An entry's flags and fingerprint are kept beside
/// the nodes (see "Layout").
#[derive(Clone, Copy, Debug)]
struct Node {
    prev: u32,
    next: u32,
}

const _: () = assert!(std::mem::size_of::<Node>() == 8);

const FREE_NODE: Node = Node {
    prev: NIL,
    next: NIL,
};

/// Reference bits kept outside the policy, read (and cleared) by the hands.
pub trait ReferenceBits {
    /// Clears resident `entry`'s outside bit; returns whether it was set.
    fn take_referenced(&self, entry: u32) -> bool;

    /// The key hash of resident `entry`, for a store that names entries: the policy keeps
    /// no fingerprint of its resident entries then and asks for it when one leaves a test
    /// entry behind. `None` (no one to ask): the entry leaves no test entry.
    fn key_hash(&self, entry: u32) -> Option<u64> {
        let _ = entry;
        None
    }
}

/// No outside bits: hits arrive through [`ClockPro::touch`] only.
pub struct OwnBits;

impl ReferenceBits for OwnBits {
    #[inline]
    fn take_referenced(&self, _entry: u32) -> bool {
        false
    }
}

/// Bytes of policy metadata per node (links only).
pub const NODE_BYTES: usize = std::mem::size_of::<Node>();
/// Bytes of a resident entry's flags.
pub const FLAGS_BYTES: usize = 1;
/// Bytes of a test entry's tag (fingerprint and flags).
pub const TEST_TAG_BYTES: usize = 4;

/// The outcome of [`ClockPro::admit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admission {
    /// The entry the new item goes under.
    pub entry: u32,
    /// A resident entry that left the cache: the store frees its item. It may be the same
    /// index as `entry`, so the store must free the victim before it stores the new item.
    pub victim: Option<u32>,
}

/// Counts for metrics and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockProStats {
    pub hot_count: u32,
    /// Resident cold entries.
    pub cold_count: u32,
    /// Non-resident entries in their test period.
    pub test_count: u32,
    /// The adaptive cold target `m_c`, in entries.
    pub cold_target: u32,
}

/// CLOCK-Pro over entry indices `0..capacity_entries`. Single-threaded; the store serialises
/// calls.
pub struct ClockPro {
    nodes: Box<[Node]>,
    /// Flags of resident entries `0..capacity`.
    flags: Box<[u8]>,
    /// Tags of test nodes `capacity..`: fingerprint | IN_TEST.
    test_tags: Box<[u32]>,
    /// Fingerprints of resident entries when the policy names them; empty when the store
    /// does (it gives the key hash back through [`ReferenceBits::key_hash`]).
    fingerprints: Box<[u32]>,
    /// Test entries by fingerprint: each place holds a test node's index in its low
    /// `node_bits` bits and the fingerprint's bits above them, `NIL` when empty.
    table: Box<[u32]>,
    /// Node indices fit below bit `node_bits`, and never fill it with ones.
    node_bits: u32,
    capacity: u32,
    free_resident: u32,
    free_test: u32,
    /// The store names resident entries ([`ClockPro::with_store_entries`]); the resident
    /// free list is unused then.
    store_entries: bool,
    /// The cache size `m` in entries: the capacity, or in store mode the resident count
    /// when the store last ran short of bytes.
    size: u32,
    /// The list head (most recently placed node), `NIL` when the clock is empty.
    newest: u32,
    hand_hot: u32,
    hand_cold: u32,
    hand_test: u32,
    hot_count: u32,
    cold_count: u32,
    test_count: u32,
    cold_target: u32,
    cold_target_min: u32,
    cold_target_max: u32,
    /// The cache has been full once (ends the warm-up).
    filled: bool,
}

/// `m_c`'s bounds for a cache of `m` entries: at least 1% of `m` and 2 entries (but not
/// more than `m`), at most 99% of `m` and never so much that the hot target `m − m_c` would
/// fall below the minimum cold share.
fn cold_target_bounds(m: u32) -> (u32, u32) {
    let min = (m / 100).max(2).min(m);
    let max = ((u64::from(m) * 99 / 100) as u32).min(m - min).max(min);
    (min, max)
}

#[inline]
fn fingerprint_tag(key_hash: u64) -> u32 {
    ((key_hash >> 32) as u32) & !FLAGS_MASK
}

impl ClockPro {
    /// A policy for at most `capacity_entries` resident entries. Allocates everything now.
    pub fn new(capacity_entries: u32) -> ClockPro {
        assert!(
            (1..=CAPACITY_ENTRIES_MAX).contains(&capacity_entries),
            "CLOCK-Pro capacity {capacity_entries} outside 1..={CAPACITY_ENTRIES_MAX}"
        );
        let cap = capacity_entries;
        let test_max = cap + 1;
        let node_count = (cap + test_max) as usize;
        let mut nodes = vec![FREE_NODE; node_count].into_boxed_slice();
        // Two free lists threaded through `next`: resident nodes, then test nodes.
        for i in 0..cap {
            nodes[i as usize].next = if i + 1 < cap { i + 1 } else { NIL };
        }
        for i in cap..cap + test_max {
            nodes[i as usize].next = if i + 1 < cap + test_max { i + 1 } else { NIL };
        }
        // At most 3/4 full; one place always stays empty, so every probe ends.
        let table_len = (test_max as usize * 4)
            .div_ceil(3)
            .max(test_max as usize + 1);
        assert!(
            table_len <= u32::MAX as usize,
            "CLOCK-Pro table over u32 places"
        );
        let node_bits = u32::BITS - (node_count as u32).leading_zeros();
        let (cold_target_min, cold_target_max) = cold_target_bounds(cap);
        ClockPro {
            nodes,
            flags: vec![0; cap as usize].into_boxed_slice(),
            test_tags: vec![0; test_max as usize].into_boxed_slice(),
            fingerprints: vec![0; cap as usize].into_boxed_slice(),
            table: vec![NIL; table_len].into_boxed_slice(),
            node_bits,
            capacity: cap,
            free_resident: 0,
            free_test: cap,
            store_entries: false,
            size: cap,
            newest: NIL,
            hand_hot: NIL,
            hand_cold: NIL,
            hand_test: NIL,
            hot_count: 0,
            cold_count: 0,
            test_count: 0,
            cold_target: cold_target_min,
            cold_target_min,
            cold_target_max,
            filled: false,
        }
    }

    /// A policy whose resident entries the store names ([`ClockPro::admit_entry`]): its
    /// index slots `0..capacity_entries`.
    pub fn with_store_entries(capacity_entries: u32) -> ClockPro {
        let mut cp = ClockPro::new(capacity_entries);
        cp.store_entries = true;
        cp.fingerprints = Box::default();
        cp.free_resident = NIL;
        for i in 0..capacity_entries {
            cp.nodes[i as usize].next = NIL;
        }
        cp
    }

    pub fn capacity_entries(&self) -> u32 {
        self.capacity
    }

    /// Resident entries (hot and cold).
    pub fn resident_count(&self) -> u32 {
        self.hot_count + self.cold_count
    }

    /// Heap bytes held by the policy (fixed at construction).
    pub fn metadata_bytes(&self) -> usize {
        self.nodes.len() * NODE_BYTES
            + self.flags.len() * FLAGS_BYTES
            + self.test_tags.len() * TEST_TAG_BYTES
            + self.fingerprints.len() * std::mem::size_of::<u32>()
            + self.table.len() * std::mem::size_of::<u32>()
    }

    pub fn stats(&self) -> ClockProStats {
        ClockProStats {
            hot_count: self.hot_count,
            cold_count: self.cold_count,
            test_count: self.test_count,
            cold_target: self.cold_target,
        }
    }

    /// A hit on resident `entry`: sets its reference bit. O(1), nothing moves.
    #[inline]
    pub fn touch(&mut self, entry: u32) {
        debug_assert!(self.is_resident_entry(entry), "touch on free entry {entry}");
        self.set_tag(entry, self.tag(entry) | REFERENCED);
    }

    /// Admits a missed key. `key_hash` lets a test entry of the same key be recognised. When
    /// the cache is full, one resident entry leaves first and is returned as the victim.
    pub fn admit(&mut self, key_hash: u64) -> Admission {
        assert!(
            !self.store_entries,
            "admit on a policy whose store names entries"
        );
        let victim = if self.resident_count() == self.capacity {
            self.run_hand_cold(&OwnBits)
        } else {
            None
        };
        // `place_admitted` looks the key's test entry up after HAND_cold: its sweep may
        // have ended that test period.
        let entry = self.free_resident;
        debug_assert!(entry != NIL);
        self.free_resident = self.nodes[entry as usize].next;
        self.place_admitted(entry, key_hash, &OwnBits);
        Admission { entry, victim }
    }

    /// Admits a missed key under `entry`, which the store chose (store mode). The entry must
    /// be free; admission never evicts here: the store asks for room with
    /// [`ClockPro::evict_with`] before it admits.
    pub fn admit_entry(&mut self, entry: u32, key_hash: u64, refs: &impl ReferenceBits) {
        assert!(
            self.store_entries,
            "admit_entry on a policy that names entries"
        );
        assert!(
            entry < self.capacity && self.nodes[entry as usize].prev == NIL,
            "admit_entry of resident or out-of-range entry {entry}"
        );
        self.place_admitted(entry, key_hash, refs);
    }

    fn place_admitted(&mut self, entry: u32, key_hash: u64, refs: &impl ReferenceBits) {
        let tag = fingerprint_tag(key_hash);
        if !self.store_entries {
            self.fingerprints[entry as usize] = tag;
        }
        // No test entries (a store being recovered, a cache warming up): spare the table
        // probe, a cache miss per admission.
        let test_entry = if self.test_count == 0 {
            NIL
        } else {
            self.table_find(tag)
        };
        if test_entry != NIL {
            // A request in the test period: `m_c` grows, then HAND_hot makes room for one
            // more hot entry while the test entry stays where it is. If the hand ends that
            // test period on the way, the key comes in as an ordinary cold entry.
            self.grow_cold_target();
            while self.hot_count > 0
                && self.hot_count + 1 > self.hot_target()
                && self.is_linked(test_entry)
            {
                self.run_hand_hot(refs);
            }
            if self.is_linked(test_entry) {
                self.drop_test(test_entry);
                self.place_at_head(entry, tag | HOT);
                self.hot_count += 1;
                self.settle_hand_hot(refs);
            } else {
                self.place_at_head(entry, tag | IN_TEST);
                self.cold_count += 1;
            }
        } else if !self.filled
            && self.resident_count() < self.size.saturating_sub(self.cold_target_min)
        {
            self.place_at_head(entry, tag | HOT);
            self.hot_count += 1;
        } else {
            self.place_at_head(entry, tag | IN_TEST);
            self.cold_count += 1;
        }
        if self.resident_count() == self.capacity {
            self.filled = true;
        }
        self.bound_test_entries(refs);
    }

    /// Makes one resident entry leave (the store is short of bytes, not of entries). Returns
    /// it, or `None` when nothing is resident.
    pub fn evict(&mut self) -> Option<u32> {
        self.evict_with(&OwnBits)
    }

    /// [`ClockPro::evict`], with reference bits kept outside the policy. In store mode the
    /// cache size `m` becomes the resident count: that many entries fill the store's bytes.
    pub fn evict_with(&mut self, refs: &impl ReferenceBits) -> Option<u32> {
        if self.resident_count() == 0 {
            return None;
        }
        if self.store_entries {
            self.resize(self.resident_count(), refs);
        }
        let victim = self.run_hand_cold(refs);
        self.bound_test_entries(refs);
        victim
    }

    /// Store mode: the cache holds `size` entries. Moves `m_c`'s bounds with it, demotes hot
    /// entries over the new hot target and drops test entries over the new bound.
    fn resize(&mut self, size: u32, refs: &impl ReferenceBits) {
        self.filled = true;
        if size == self.size {
            return;
        }
        self.size = size;
        (self.cold_target_min, self.cold_target_max) = cold_target_bounds(size);
        self.cold_target = self
            .cold_target
            .clamp(self.cold_target_min, self.cold_target_max);
        while self.hot_count > self.hot_target() {
            self.run_hand_hot(refs);
        }
    }

    /// The store dropped resident `entry` itself (purge, replacement). It leaves the clock
    /// with no test entry, and its index is free for [`ClockPro::admit`]. To replace an item
    /// under the same key and keep its history, the store keeps the entry and repoints it.
    pub fn remove(&mut self, entry: u32) {
        assert!(
            self.is_resident_entry(entry),
            "remove of free entry {entry}"
        );
        if self.tag(entry) & HOT != 0 {
            self.hot_count -= 1;
        } else {
            self.cold_count -= 1;
        }
        self.unlink(entry);
        self.free_resident_node(entry);
    }

    /// Folds node `i`'s outside reference bit (resident nodes only) into its tag; returns
    /// the tag.
    fn fold_reference(&mut self, i: u32, refs: &impl ReferenceBits) -> u32 {
        if !self.is_test_node(i) && refs.take_referenced(i) {
            self.set_tag(i, self.tag(i) | REFERENCED);
        }
        self.tag(i)
    }

    /// Where resident `entry` stands in the order of eviction, lowest first: expired, cold
    /// out of its test period, cold in test, then hot; at each step unrequested before
    /// requested. `referenced_outside` is its outside reference bit (not cleared). For a
    /// choice among a few entries (the store's full bucket pair), not for the hands.
    pub fn eviction_rank(&self, entry: u32, referenced_outside: bool) -> u8 {
        debug_assert!(self.is_resident_entry(entry), "rank of free entry {entry}");
        let tag = self.tag(entry);
        if tag & EXPIRED != 0 {
            return 0;
        }
        let requested = u8::from(referenced_outside || tag & REFERENCED != 0);
        let class = if tag & HOT != 0 {
            3
        } else if tag & IN_TEST != 0 {
            2
        } else {
            1
        };
        class * 2 - 1 + requested
    }

    /// Resident `entry` has expired: it becomes the next victim and leaves no test entry.
    pub fn mark_expired(&mut self, entry: u32) {
        assert!(
            self.is_resident_entry(entry),
            "mark_expired of free entry {entry}"
        );
        let tag = self.tag(entry);
        if tag & HOT != 0 {
            self.hot_count -= 1;
            self.cold_count += 1;
        }
        self.unlink(entry);
        self.set_tag(entry, (tag & !FLAGS_MASK) | EXPIRED);
        if self.newest == NIL {
            self.insert_at_head(entry);
        } else {
            // Just behind HAND_cold's position, with the hand on it.
            let at = self.hand_cold;
            let prev = self.nodes[at as usize].prev;
            self.nodes[entry as usize].prev = prev;
            self.nodes[entry as usize].next = at;
            self.nodes[prev as usize].next = entry;
            self.nodes[at as usize].prev = entry;
            self.hand_cold = entry;
        }
    }

    /// Node `i`'s tag: a resident entry's flags, or a test entry's fingerprint | IN_TEST.
    #[inline]
    fn tag(&self, i: u32) -> u32 {
        if i < self.capacity {
            u32::from(self.flags[i as usize])
        } else {
            self.test_tags[(i - self.capacity) as usize]
        }
    }

    /// Sets node `i`'s tag; a resident entry keeps only the flags.
    #[inline]
    fn set_tag(&mut self, i: u32, tag: u32) {
        if i < self.capacity {
            self.flags[i as usize] = (tag & FLAGS_MASK) as u8;
        } else {
            self.test_tags[(i - self.capacity) as usize] = tag;
        }
    }

    /// Node `i` is on the clock. Hands only free test nodes, never reuse them, so a test
    /// node found linked after a hand ran is the same test entry.
    #[inline]
    fn is_linked(&self, i: u32) -> bool {
        self.nodes[i as usize].prev != NIL
    }

    fn is_resident_entry(&self, entry: u32) -> bool {
        entry < self.capacity && self.nodes[entry as usize].prev != NIL
    }

    #[inline]
    fn is_test_node(&self, i: u32) -> bool {
        i >= self.capacity
    }

    fn hot_target(&self) -> u32 {
        self.size.saturating_sub(self.cold_target)
    }

    fn grow_cold_target(&mut self) {
        if self.cold_target < self.cold_target_max {
            self.cold_target += 1;
        }
    }

    fn shrink_cold_target(&mut self) {
        if self.cold_target > self.cold_target_min {
            self.cold_target -= 1;
        }
    }

    fn bound_test_entries(&mut self, refs: &impl ReferenceBits) {
        while self.test_count > self.size {
            self.run_hand_test(refs);
        }
    }

    // ---- list plumbing ----

    fn place_at_head(&mut self, i: u32, tag: u32) {
        self.set_tag(i, tag);
        self.insert_at_head(i);
    }

    fn insert_at_head(&mut self, i: u32) {
        if self.newest == NIL {
            self.nodes[i as usize].prev = i;
            self.nodes[i as usize].next = i;
            self.newest = i;
            self.hand_hot = i;
            self.hand_cold = i;
            self.hand_test = i;
            return;
        }
        let newest = self.newest;
        let oldest = self.nodes[newest as usize].next;
        self.nodes[i as usize].prev = newest;
        self.nodes[i as usize].next = oldest;
        self.nodes[oldest as usize].prev = i;
        self.nodes[newest as usize].next = i;
        self.newest = i;
    }

    /// Takes `i` off the clock. A hand on `i` moves on to the next node.
    fn unlink(&mut self, i: u32) {
        let Node { prev, next, .. } = self.nodes[i as usize];
        let alone = next == i;
        let successor = if alone { NIL } else { next };
        for hand in [&mut self.hand_hot, &mut self.hand_cold, &mut self.hand_test] {
            if *hand == i {
                *hand = successor;
            }
        }
        if self.newest == i {
            self.newest = if alone { NIL } else { prev };
        }
        if !alone {
            self.nodes[prev as usize].next = next;
            self.nodes[next as usize].prev = prev;
        }
        self.nodes[i as usize].prev = NIL;
        self.nodes[i as usize].next = NIL;
    }

    fn move_to_head(&mut self, i: u32) {
        self.unlink(i);
        self.insert_at_head(i);
    }

    fn free_resident_node(&mut self, i: u32) {
        if self.store_entries {
            self.nodes[i as usize] = FREE_NODE;
            self.set_tag(i, 0);
            return;
        }
        self.nodes[i as usize] = Node {
            prev: NIL,
            next: self.free_resident,
        };
        self.set_tag(i, 0);
        self.free_resident = i;
    }

    fn free_test_node(&mut self, i: u32) {
        self.nodes[i as usize] = Node {
            prev: NIL,
            next: self.free_test,
        };
        self.set_tag(i, 0);
        self.free_test = i;
    }

    /// The fingerprint of resident entry `r`: kept by the policy when it names entries,
    /// asked of the store otherwise.
    fn resident_fingerprint(&self, r: u32, refs: &impl ReferenceBits) -> Option<u32> {
        if self.store_entries {
            refs.key_hash(r).map(fingerprint_tag)
        } else {
            Some(self.fingerprints[r as usize])
        }
    }

    /// Resident cold entry `r`, in test, leaves the cache: a test node with fingerprint `fp`
    /// takes its place on the clock (hands included) and `r` is freed. Returns the test node.
    fn replace_with_test(&mut self, r: u32, fp: u32) -> u32 {
        let g = self.free_test;
        debug_assert!(g != NIL, "test nodes exhausted");
        self.free_test = self.nodes[g as usize].next;
        let Node { prev, next } = self.nodes[r as usize];
        self.set_tag(g, fp | IN_TEST);
        if next == r {
            self.nodes[g as usize] = Node { prev: g, next: g };
        } else {
            self.nodes[g as usize] = Node { prev, next };
            self.nodes[prev as usize].next = g;
            self.nodes[next as usize].prev = g;
        }
        for hand in [&mut self.hand_hot, &mut self.hand_cold, &mut self.hand_test] {
            if *hand == r {
                *hand = g;
            }
        }
        if self.newest == r {
            self.newest = g;
        }
        self.free_resident_node(r);
        self.table_insert(g);
        self.test_count += 1;
        g
    }

    /// Test node `g` leaves the clock and the table.
    fn drop_test(&mut self, g: u32) {
        self.table_remove(g);
        self.unlink(g);
        self.free_test_node(g);
        self.test_count -= 1;
    }

    // ---- hands ----

    /// Evicts one resident entry and returns it.
    fn run_hand_cold(&mut self, refs: &impl ReferenceBits) -> Option<u32> {
        loop {
            if self.cold_count == 0 {
                // Promotions (or the store's removals) left no cold entry: demote one. A
                // full cache never gets here while m_c ≥ 2 < capacity.
                if self.hot_count == 0 {
                    return None;
                }
                self.run_hand_hot(refs);
            }
            let i = self.hand_cold;
            let tag = self.tag(i);
            if self.is_test_node(i) || tag & HOT != 0 {
                self.hand_cold = self.nodes[i as usize].next;
                continue;
            }
            let tag = self.fold_reference(i, refs);
            if tag & REFERENCED == 0 || tag & EXPIRED != 0 {
                self.cold_count -= 1;
                let fp = if tag & (IN_TEST | EXPIRED) == IN_TEST {
                    self.resident_fingerprint(i, refs)
                } else {
                    None
                };
                if let Some(fp) = fp {
                    let g = self.replace_with_test(i, fp);
                    self.hand_cold = self.nodes[g as usize].next;
                    self.bound_test_entries(refs);
                } else {
                    self.unlink(i);
                    self.free_resident_node(i);
                }
                return Some(i);
            }
            if tag & IN_TEST != 0 {
                self.promote(i, refs);
            } else {
                self.set_tag(i, (tag & !REFERENCED) | IN_TEST);
                self.move_to_head(i);
            }
        }
    }

    /// Cold entry `i`, under HAND_cold, was requested during its test period.
    fn promote(&mut self, i: u32, refs: &impl ReferenceBits) {
        self.grow_cold_target();
        self.set_tag(i, self.tag(i) & !REFERENCED);
        self.hand_cold = self.nodes[i as usize].next;
        // Make room while the candidate stays where it is; HAND_hot may end its test period.
        while self.hot_count + 1 > self.hot_target() && self.hot_count > 0 {
            self.run_hand_hot(refs);
            if self.tag(i) & IN_TEST == 0 {
                break;
            }
        }
        let tag = self.tag(i);
        if tag & IN_TEST != 0 {
            self.set_tag(i, (tag & !IN_TEST) | HOT);
            self.cold_count -= 1;
            self.hot_count += 1;
            self.move_to_head(i);
            // When `i` is the only hot entry, HAND_hot must be put on it.
            self.settle_hand_hot(refs);
        } else {
            // Abandoned: stays cold, with a new test period at the head.
            self.set_tag(i, tag | IN_TEST);
            self.move_to_head(i);
        }
    }

    /// Demotes one hot entry, ending the test periods it passes, then moves on to the next
    /// hot entry ([`ClockPro::settle_hand_hot`]).
    fn run_hand_hot(&mut self, refs: &impl ReferenceBits) {
        if self.hot_count == 0 {
            return;
        }
        loop {
            let i = self.hand_hot;
            if self.pass_non_hot(i, refs) {
                continue;
            }
            let tag = self.tag(i);
            if tag & REFERENCED != 0 {
                // Spared: requested since the hand last passed.
                self.set_tag(i, tag & !REFERENCED);
                self.move_to_head(i);
                continue;
            }
            self.set_tag(i, tag & !HOT);
            self.move_to_head(i);
            self.hot_count -= 1;
            self.cold_count += 1;
            self.settle_hand_hot(refs);
            return;
        }
    }

    /// Puts HAND_hot on the oldest hot entry (the one it demotes next, unless requested),
    /// ending the test periods of the cold entries it passes on the way. So test periods end
    /// as soon as HAND_hot has gone past them, not when it next has to demote.
    fn settle_hand_hot(&mut self, refs: &impl ReferenceBits) {
        if self.hot_count == 0 {
            return;
        }
        while self.pass_non_hot(self.hand_hot, refs) {}
    }

    /// HAND_hot stands on node `i`: if it is not a hot entry, ends its test period (dropping
    /// a test entry), moves the hand on and returns true. A hot entry is left to the caller,
    /// with its outside reference bit folded in.
    fn pass_non_hot(&mut self, i: u32, refs: &impl ReferenceBits) -> bool {
        if self.is_test_node(i) {
            self.shrink_cold_target();
            self.drop_test(i);
            return true;
        }
        let tag = self.fold_reference(i, refs);
        if tag & HOT != 0 {
            return false;
        }
        self.end_test_period(i, tag);
        self.hand_hot = self.nodes[i as usize].next;
        true
    }

    /// Drops one test entry, ending the test periods it passes.
    fn run_hand_test(&mut self, refs: &impl ReferenceBits) {
        if self.test_count == 0 {
            return;
        }
        loop {
            let i = self.hand_test;
            if self.is_test_node(i) {
                self.shrink_cold_target();
                self.drop_test(i);
                return;
            }
            let tag = self.fold_reference(i, refs);
            if tag & HOT == 0 {
                self.end_test_period(i, tag);
            }
            self.hand_test = self.nodes[i as usize].next;
        }
    }

    /// A hand ends the test period of resident cold entry `i`. A request during the period
    /// (bit set, HAND_cold has not seen it yet) proves a short reuse distance: `m_c` grows.
    /// None: `m_c` shrinks. The bit stays for HAND_cold, which then finds the entry out of
    /// its test period and gives it a new one (no second credit).
    fn end_test_period(&mut self, i: u32, tag: u32) {
        if tag & IN_TEST != 0 {
            self.set_tag(i, tag & !IN_TEST);
            if tag & REFERENCED != 0 {
                self.grow_cold_target();
            } else {
                self.shrink_cold_target();
            }
        }
    }

    // ---- test entries by fingerprint: open addressing, linear probing ----
    //
    // The table is not a power of two long (3/4 full at most, 5⅓ bytes per test entry):
    // a fingerprint's home is the high half of its mixed bits times the length, and the
    // probe wraps at the end. Each place keeps the fingerprint's top bits beside the node
    // index, so a probe reads a node only when those bits match.

    /// Bits of a table place above the node index.
    #[inline]
    fn filter_mask(&self) -> u32 {
        u32::MAX.checked_shl(self.node_bits).unwrap_or(0)
    }

    /// The table place for test node `g` with fingerprint `fp`.
    #[inline]
    fn table_place(&self, g: u32, fp: u32) -> u32 {
        g | (fp & self.filter_mask())
    }

    #[inline]
    fn place_node(&self, place: u32) -> u32 {
        place & !self.filter_mask()
    }

    #[inline]
    fn home_slot(&self, fp: u32) -> u32 {
        let mixed = (fp >> 4).wrapping_mul(0x9E37_79B1);
        ((u64::from(mixed) * self.table.len() as u64) >> 32) as u32
    }

    #[inline]
    fn next_slot(&self, s: u32) -> u32 {
        if s as usize + 1 == self.table.len() {
            0
        } else {
            s + 1
        }
    }

    /// Places from `from` forward to `to`, wrapping.
    #[inline]
    fn probe_distance(&self, from: u32, to: u32) -> u32 {
        if to >= from {
            to - from
        } else {
            to + self.table.len() as u32 - from
        }
    }

    fn table_find(&self, fp: u32) -> u32 {
        let filter = fp & self.filter_mask();
        let mut s = self.home_slot(fp);
        loop {
            let place = self.table[s as usize];
            if place == NIL {
                return NIL;
            }
            if place & self.filter_mask() == filter {
                let g = self.place_node(place);
                if self.tag(g) & !FLAGS_MASK == fp {
                    return g;
                }
            }
            s = self.next_slot(s);
        }
    }

    fn table_insert(&mut self, g: u32) {
        let fp = self.tag(g) & !FLAGS_MASK;
        let mut s = self.home_slot(fp);
        while self.table[s as usize] != NIL {
            s = self.next_slot(s);
        }
        self.table[s as usize] = self.table_place(g, fp);
    }

    fn table_remove(&mut self, g: u32) {
        let fp = self.tag(g) & !FLAGS_MASK;
        let gone = self.table_place(g, fp);
        let mut hole = self.home_slot(fp);
        while self.table[hole as usize] != gone {
            debug_assert!(self.table[hole as usize] != NIL, "test entry not in table");
            hole = self.next_slot(hole);
        }
        // Backward-shift deletion: pull later members of the cluster into the hole when
        // their home slot is not between the hole and their slot.
        let mut j = self.next_slot(hole);
        loop {
            let place = self.table[j as usize];
            if place == NIL {
                break;
            }
            let h = self.place_node(place);
            let home = self.home_slot(self.tag(h) & !FLAGS_MASK);
            if self.probe_distance(home, j) >= self.probe_distance(hole, j) {
                self.table[hole as usize] = place;
                hole = j;
            }
            j = self.next_slot(j);
        }
        self.table[hole as usize] = NIL;
    }

    /// Checks every structural invariant; panics on the first broken one. O(capacity).
    pub fn debug_validate(&self) {
        let cap = self.capacity;
        assert!(
            self.hot_count + self.cold_count <= cap,
            "resident over capacity"
        );
        assert!(self.size <= cap, "m over capacity");
        assert!(self.test_count <= self.size, "test entries over bound");
        assert!(
            (self.cold_target_min..=self.cold_target_max).contains(&self.cold_target),
            "m_c {} outside [{}, {}]",
            self.cold_target,
            self.cold_target_min,
            self.cold_target_max
        );
        let (mut hot, mut cold, mut test, mut linked) = (0u32, 0u32, 0u32, 0u32);
        let mut hands_seen = [false; 3];
        if self.newest != NIL {
            let mut i = self.newest;
            loop {
                let n = self.nodes[i as usize];
                assert!(n.prev != NIL, "linked node {i} marked free");
                assert_eq!(self.nodes[n.next as usize].prev, i, "broken link at {i}");
                let tag = self.tag(i);
                if self.is_test_node(i) {
                    assert_eq!(tag & FLAGS_MASK, IN_TEST, "test node {i} flags");
                    assert!(
                        self.table_find(tag & !FLAGS_MASK) != NIL,
                        "test node {i} not in table"
                    );
                    test += 1;
                } else if tag & HOT != 0 {
                    assert_eq!(tag & (IN_TEST | EXPIRED), 0, "hot node {i} flags");
                    hot += 1;
                } else {
                    cold += 1;
                }
                for (k, hand) in [self.hand_hot, self.hand_cold, self.hand_test]
                    .iter()
                    .enumerate()
                {
                    hands_seen[k] |= *hand == i;
                }
                linked += 1;
                assert!(linked <= 2 * cap + 1, "cycle does not close");
                i = n.next;
                if i == self.newest {
                    break;
                }
            }
            assert_eq!(hands_seen, [true; 3], "a hand is off the clock");
        } else {
            assert_eq!(
                [self.hand_hot, self.hand_cold, self.hand_test],
                [NIL; 3],
                "hands on an empty clock"
            );
        }
        assert_eq!(
            (hot, cold, test),
            (self.hot_count, self.cold_count, self.test_count),
            "list and counts disagree"
        );
        for &place in self.table.iter().filter(|&&p| p != NIL) {
            let g = self.place_node(place);
            assert!(
                self.is_test_node(g) && self.is_linked(g),
                "table names node {g}"
            );
            let fp = self.tag(g) & !FLAGS_MASK;
            assert_eq!(place, self.table_place(g, fp), "table filter bits of {g}");
        }
        let in_table = self.table.iter().filter(|&&g| g != NIL).count() as u32;
        assert_eq!(in_table, self.test_count, "table and test count disagree");
        let free_resident = if self.store_entries {
            assert_eq!(self.free_resident, NIL, "store mode keeps no free list");
            (0..cap)
                .filter(|&i| self.nodes[i as usize].prev == NIL)
                .count() as u32
        } else {
            self.free_list_len(self.free_resident)
        };
        let free_test = self.free_list_len(self.free_test);
        assert_eq!(free_resident + hot + cold, cap, "resident nodes leak");
        assert_eq!(free_test + test, cap + 1, "test nodes leak");
    }

    fn free_list_len(&self, mut i: u32) -> u32 {
        let mut n = 0;
        while i != NIL {
            assert_eq!(self.nodes[i as usize].prev, NIL, "free node {i} is linked");
            n += 1;
            i = self.nodes[i as usize].next;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    /// Key hashes whose fingerprints differ (the fingerprint is the high 28 bits).
    fn h(key: u64) -> u64 {
        let mut x = key.wrapping_add(0x9E37_79B9_7F4A_7C15);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^ (x >> 31)
    }

    /// A tiny cache driver: key → entry, entry → key.
    struct Driver {
        cp: ClockPro,
        entry_of: HashMap<u64, u32>,
        key_of: HashMap<u32, u64>,
        misses: u64,
    }

    impl Driver {
        fn new(capacity: u32) -> Driver {
            Driver {
                cp: ClockPro::new(capacity),
                entry_of: HashMap::new(),
                key_of: HashMap::new(),
                misses: 0,
            }
        }

        /// Requests `key`; returns the evicted key on a miss that evicted.
        fn get(&mut self, key: u64) -> Option<u64> {
            if let Some(&e) = self.entry_of.get(&key) {
                self.cp.touch(e);
                return None;
            }
            self.misses += 1;
            let a = self.cp.admit(h(key));
            let evicted = a.victim.map(|v| {
                let k = self.key_of.remove(&v).expect("victim was resident");
                self.entry_of.remove(&k);
                k
            });
            assert!(self.key_of.insert(a.entry, key).is_none(), "entry in use");
            self.entry_of.insert(key, a.entry);
            self.cp.debug_validate();
            evicted
        }

        fn is_hot(&self, key: u64) -> bool {
            let e = self.entry_of[&key];
            self.cp.tag(e) & HOT != 0
        }

        fn stats(&self) -> (u32, u32, u32, u32) {
            let s = self.cp.stats();
            (s.hot_count, s.cold_count, s.test_count, s.cold_target)
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(NODE_BYTES, 8);
        // capacity 1000: 2001 nodes, 1000 flag bytes and fingerprints, 1001 test tags and a
        // 1335-place table (1001 test entries, 3/4 full).
        assert_eq!(
            ClockPro::new(1000).metadata_bytes(),
            2001 * 8 + 1000 + 1000 * 4 + 1001 * 4 + 1335 * 4
        );
        // The store keeps the fingerprints: what it charges per slot covers the rest, with
        // three nodes to spare.
        // (`policy::CLOCKPRO_ENTRY_BYTES`, which loom builds leave out.)
        let charge = 2 * NODE_BYTES + FLAGS_BYTES + TEST_TAG_BYTES + 6;
        assert_eq!(charge, 27);
        for cap in [1, 2, 7, 8, 64, 1000, 1 << 15] {
            let bytes = ClockPro::with_store_entries(cap).metadata_bytes();
            assert!(
                bytes <= cap as usize * charge + 3 * NODE_BYTES,
                "capacity {cap}: {bytes}"
            );
        }
    }

    #[test]
    fn cold_target_bounds_leave_room_for_hot_entries() {
        assert_eq!(cold_target_bounds(1), (1, 1));
        assert_eq!(cold_target_bounds(2), (2, 2));
        assert_eq!(cold_target_bounds(4), (2, 2));
        // 99% of 12 is 11, but then only one entry could be hot: m − m_c_min = 10.
        assert_eq!(cold_target_bounds(12), (2, 10));
        assert_eq!(cold_target_bounds(100), (2, 98));
        assert_eq!(cold_target_bounds(1000), (10, 990));
        let cp = ClockPro::new(12);
        assert_eq!((cp.cold_target_min, cp.cold_target_max), (2, 10));
    }

    #[test]
    fn hand_hot_credits_a_request_in_the_test_period_it_ends() {
        let mut d = Driver::new(10);
        (0..10).for_each(|k| assert_eq!(d.get(k), None));
        // Every entry requested: the hot ones are spared (and move to the head), the cold
        // ones 8 and 9 were requested during their test periods, which HAND_hot ends before
        // HAND_cold has seen them: m_c grows twice. Then 0 is demoted.
        (0..10).for_each(|k| assert_eq!(d.get(k), None));
        d.cp.run_hand_hot(&OwnBits);
        d.cp.debug_validate();
        assert_eq!(d.stats(), (7, 3, 0, 4));
        assert!(!d.is_hot(0) && !d.is_hot(8) && !d.is_hot(9));
        for k in [8, 9] {
            let tag = d.cp.tag(d.entry_of[&k]);
            assert_eq!(tag & (IN_TEST | REFERENCED), REFERENCED, "key {k}");
        }
        // HAND_hot now stands on the oldest hot entry.
        assert_eq!(d.cp.hand_hot, d.entry_of[&1]);
    }

    #[test]
    fn eviction_rank_orders_cold_before_hot_and_unrequested_before_requested() {
        let mut d = Driver::new(10);
        (0..10).for_each(|k| assert_eq!(d.get(k), None));
        // 0..8 hot, 8 and 9 cold in test; 9 requested.
        d.get(9);
        let rank = |d: &Driver, k: u64, outside: bool| d.cp.eviction_rank(d.entry_of[&k], outside);
        assert!(rank(&d, 8, false) < rank(&d, 9, false));
        assert!(rank(&d, 9, false) < rank(&d, 0, false));
        assert!(
            rank(&d, 0, false) < rank(&d, 0, true),
            "an outside bit counts"
        );
        assert_eq!(rank(&d, 8, true), rank(&d, 9, false));
        let e = d.entry_of[&3];
        d.cp.mark_expired(e);
        assert_eq!(d.cp.eviction_rank(e, true), 0, "expired goes first");
    }

    #[test]
    fn warm_up_fills_hot_then_cold() {
        let mut d = Driver::new(10);
        for k in 0..10 {
            assert_eq!(d.get(k), None);
        }
        // m_c starts at its minimum, 2: eight hot entries, then two cold ones.
        assert_eq!(d.stats(), (8, 2, 0, 2));
        assert!(d.is_hot(7) && !d.is_hot(8) && !d.is_hot(9));
    }

    #[test]
    fn unreferenced_cold_entry_leaves_a_test_entry() {
        let mut d = Driver::new(10);
        (0..10).for_each(|k| assert_eq!(d.get(k), None));
        // HAND_cold reaches 8 first (the oldest cold entry); it is in test, so it stays as a
        // test entry.
        assert_eq!(d.get(100), Some(8));
        assert_eq!(d.stats(), (8, 2, 1, 2));
        assert_eq!(d.get(101), Some(9));
        assert_eq!(d.stats(), (8, 2, 2, 2));
    }

    #[test]
    fn test_entry_hit_promotes_and_grows_cold_target() {
        let mut d = Driver::new(10);
        (0..10).for_each(|k| assert_eq!(d.get(k), None));
        assert_eq!(d.get(100), Some(8));
        // 8 comes back during its test period: admitted hot, m_c 2 → 3, and HAND_hot demotes
        // the oldest unreferenced hot entries (0, then 1) to keep hot ≤ 10 − 3.
        assert_eq!(d.get(8), Some(9));
        assert!(d.is_hot(8));
        assert!(!d.is_hot(0) && !d.is_hot(1) && d.is_hot(2));
        assert_eq!(d.stats(), (7, 3, 1, 3));
    }

    #[test]
    fn referenced_cold_entry_in_test_is_promoted_by_hand_cold() {
        let mut d = Driver::new(10);
        (0..10).for_each(|k| assert_eq!(d.get(k), None));
        d.get(8); // hit: reference bit on a cold entry in test
                  // HAND_cold finds 8 referenced and in test: promotion (m_c 2 → 3, 0 and 1 demoted),
                  // then it moves on and evicts 9.
        assert_eq!(d.get(100), Some(9));
        assert!(d.is_hot(8));
        assert_eq!(d.stats(), (7, 3, 1, 3));
        // The demoted entries are cold and not in test; unreferenced, they go next, leaving
        // no test entry.
        assert_eq!(d.get(101), Some(0));
        assert_eq!(d.get(102), Some(1));
        assert_eq!(d.stats().2, 1);
    }

    #[test]
    fn hot_entry_with_reference_bit_is_spared() {
        let mut d = Driver::new(10);
        (0..10).for_each(|k| assert_eq!(d.get(k), None));
        d.get(0); // hot 0 referenced
        assert_eq!(d.get(100), Some(8));
        assert_eq!(d.get(8), Some(9)); // promotion: HAND_hot must demote two
                                       // 0 was spared (bit cleared, moved to the head); 1 and 2 were demoted.
        assert!(d.is_hot(0) && !d.is_hot(1) && !d.is_hot(2) && d.is_hot(3));
    }

    #[test]
    fn cold_target_shrinks_when_test_periods_expire() {
        let mut d = Driver::new(10);
        (0..10).for_each(|k| assert_eq!(d.get(k), None));
        d.get(100);
        d.get(8);
        assert_eq!(d.stats().3, 3);
        // A stream of one-time keys: every test period ends without a request, so m_c
        // returns to its minimum and the test entries stay bounded by the capacity.
        for k in 1000..1100 {
            d.get(k);
            assert!(d.stats().2 <= 10);
        }
        assert_eq!(d.stats().3, 2);
        assert_eq!(d.stats().2, 10);
    }

    #[test]
    fn cold_target_tracks_reuse_up_and_down() {
        // Every new key is requested again five misses later (a short reuse distance that
        // only a cold entry in test can catch): m_c grows towards its maximum.
        let mut d = Driver::new(100);
        for k in 0..20 {
            d.get(k);
        }
        for i in 1000..3000u64 {
            d.get(i);
            d.get(i - 5);
        }
        let grown = d.stats().3;
        assert!(grown >= 50, "m_c only reached {grown}");
        // One-time keys: every test period ends without a request, m_c comes back down.
        for k in 10_000..12_000 {
            d.get(k);
        }
        assert_eq!(d.stats().3, 2);
    }

    #[test]
    fn loop_larger_than_the_cache_keeps_hot_entries() {
        // A strict cycle over 150 keys with room for 100: LRU and CLOCK miss on every request.
        let mut d = Driver::new(100);
        for _ in 0..50 {
            for k in 0..150 {
                d.get(k);
            }
        }
        let requests = 50 * 150;
        let hits = requests - d.misses;
        assert!(
            hits * 2 > requests,
            "only {hits} hits of {requests} on a loop"
        );
        assert!(d.stats().0 >= 90, "hot set shrank to {}", d.stats().0);
    }

    #[test]
    fn expired_entry_is_the_next_victim_and_leaves_no_test_entry() {
        let mut d = Driver::new(10);
        (0..10).for_each(|k| assert_eq!(d.get(k), None));
        let e = d.entry_of[&3];
        d.cp.mark_expired(e);
        d.cp.debug_validate();
        assert_eq!(d.stats(), (7, 3, 0, 2));
        assert_eq!(d.get(100), Some(3));
        assert_eq!(d.stats(), (7, 3, 0, 2));
        // A request for 3 now is an ordinary cold admission.
        assert_eq!(d.get(3), Some(8));
        assert!(!d.is_hot(3));
    }

    #[test]
    fn remove_and_evict() {
        let mut d = Driver::new(4);
        (0..4).for_each(|k| assert_eq!(d.get(k), None));
        let e = d.entry_of.remove(&1).unwrap();
        d.key_of.remove(&e);
        d.cp.remove(e);
        d.cp.debug_validate();
        assert_eq!(d.cp.resident_count(), 3);
        // The freed index is handed out again, with no eviction.
        assert_eq!(d.get(50), None);
        assert_eq!(d.entry_of[&50], e);
        // Evict everything by hand (store short of bytes).
        let mut evicted = 0;
        while let Some(v) = d.cp.evict() {
            d.cp.debug_validate();
            assert!(d.key_of.remove(&v).is_some());
            evicted += 1;
        }
        assert_eq!(evicted, 4);
        assert_eq!(d.cp.resident_count(), 0);
        assert_eq!(d.get(60), None);
    }

    #[test]
    fn tiny_capacities() {
        for cap in 1..=4 {
            let mut d = Driver::new(cap);
            for i in 0..500u64 {
                d.get((i * 7919) % 11);
                assert!(d.cp.resident_count() <= cap);
            }
        }
    }

    #[test]
    fn hand_cold_demotes_when_promotions_leave_no_cold_entry() {
        // Capacity 1: m_c's minimum (2) exceeds it, so there is no room for hot entries.
        let mut d = Driver::new(1);
        d.get(1);
        d.get(1);
        assert_eq!(d.get(2), Some(1));
        // A cache that is not full: only cold entries left, all requested in their test
        // period. HAND_cold promotes them, then must demote one and evict it.
        let mut d = Driver::new(10);
        (0..10).for_each(|k| assert_eq!(d.get(k), None));
        for k in 0..8 {
            let e = d.entry_of.remove(&k).unwrap();
            d.key_of.remove(&e);
            d.cp.remove(e);
        }
        d.get(8);
        d.get(9);
        let v = d.cp.evict();
        d.cp.debug_validate();
        assert!(v.is_some());
        assert_eq!(d.cp.resident_count(), 1);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Get(u64),
        Remove(u64),
        Expire(u64),
        Evict,
    }

    fn op() -> impl Strategy<Value = Op> {
        // Zipf-like: squaring a uniform draw favours small keys.
        let key = (0u32..1 << 16).prop_map(|r| u64::from((r * r) >> 22));
        prop_oneof![
            16 => key.clone().prop_map(Op::Get),
            1 => key.clone().prop_map(Op::Remove),
            1 => key.prop_map(Op::Expire),
            1 => Just(Op::Evict),
        ]
    }

    /// Outside reference bits, as the store keeps them in its index slots, and the key hash of each resident entry, which the store gives back on request.
    struct Bits(Vec<std::cell::Cell<bool>>, Vec<std::cell::Cell<u64>>);
    impl Bits {
        fn new(capacity: u32) -> Bits {
            let cells = |v| (0..capacity).map(|_| std::cell::Cell::new(v)).collect();
            Bits(
                cells(false),
                (0..capacity).map(|_| std::cell::Cell::new(0)).collect(),
            )
        }
        /// The store admits the key with hash `hash` under `e`.
        fn admit(&self, cp: &mut ClockPro, e: u32, hash: u64) {
            self.1[e as usize].set(hash);
            cp.admit_entry(e, hash, self);
        }
    }
    impl ReferenceBits for Bits {
        fn take_referenced(&self, entry: u32) -> bool {
            self.0[entry as usize].replace(false)
        }
        fn key_hash(&self, entry: u32) -> Option<u64> {
            Some(self.1[entry as usize].get())
        }
    }

    #[test]
    fn store_mode_adapts_to_the_resident_count_and_reads_outside_bits() {
        // 64 entries, but the store fills its bytes at 20: m follows, and the hot target is
        // 20 − m_c.
        let mut cp = ClockPro::with_store_entries(64);
        let bits = Bits::new(64);
        for e in 0..20 {
            bits.admit(&mut cp, e, h(u64::from(e)));
        }
        assert_eq!(cp.stats().hot_count, 20, "warm-up against the capacity");
        bits.0[0].set(true); // a hit on 0, seen only through the outside bit
        let v = cp.evict_with(&bits).unwrap();
        cp.debug_validate();
        assert_ne!(v, 0);
        let s = cp.stats();
        assert_eq!(s.cold_target, 2);
        assert!(s.hot_count <= 18, "hot {} over m − m_c", s.hot_count);
        // The store names the freed slot again; one-time keys keep test entries under m.
        bits.admit(&mut cp, v, h(1000));
        for round in 0..200u64 {
            let v = cp.evict_with(&bits).unwrap();
            bits.admit(&mut cp, v, h(2000 + round));
            cp.debug_validate();
            assert!(cp.stats().test_count <= 20);
        }
        assert_eq!(cp.resident_count(), 20);
        assert_eq!(cp.stats().cold_target, 2);
    }

    #[test]
    fn store_mode_asks_the_store_for_an_evicted_keys_hash() {
        // 8 hot and 2 cold entries; the oldest cold one (8) is evicted in its test period.
        let mut cp = ClockPro::with_store_entries(10);
        let bits = Bits::new(10);
        for e in 0..10 {
            bits.admit(&mut cp, e, h(u64::from(e)));
        }
        assert_eq!(cp.evict_with(&bits), Some(8));
        assert_eq!(cp.stats().test_count, 1);
        // Its key comes back (into any free slot): recognised by the hash the store gave.
        bits.admit(&mut cp, 8, h(8));
        cp.debug_validate();
        assert_eq!(cp.tag(8) & HOT, HOT);
        assert_eq!((cp.stats().test_count, cp.stats().cold_target), (0, 3));
        // With no one to ask, an evicted entry leaves no test entry.
        let v = cp.evict_with(&OwnBits).unwrap();
        cp.debug_validate();
        assert_eq!(cp.tag(v) & HOT, 0);
        assert_eq!(cp.stats().test_count, 0);
    }

    #[derive(Clone, Debug)]
    enum StoreOp {
        /// Request key; on a miss the store names a free entry (key mod capacity, probing).
        Get(u64),
        Remove(u64),
        /// The store is short of bytes.
        Evict,
    }

    fn store_op() -> impl Strategy<Value = StoreOp> {
        let key = (0u32..1 << 16).prop_map(|r| u64::from((r * r) >> 22));
        prop_oneof![
            12 => key.clone().prop_map(StoreOp::Get),
            1 => key.prop_map(StoreOp::Remove),
            4 => Just(StoreOp::Evict),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Store mode against a plain model: the store names entries, hits arrive as outside
        /// bits, victims were resident, and every invariant holds after every operation.
        #[test]
        fn store_mode_model(capacity in 1u32..64, ops in proptest::collection::vec(store_op(), 1..600)) {
            let mut cp = ClockPro::with_store_entries(capacity);
            let bits = Bits::new(capacity);
            let mut entry_of: HashMap<u64, u32> = HashMap::new();
            let mut key_of: HashMap<u32, u64> = HashMap::new();
            for op in ops {
                match op {
                    StoreOp::Get(k) => {
                        if let Some(&e) = entry_of.get(&k) {
                            bits.0[e as usize].set(true);
                        } else {
                            if key_of.len() as u32 == capacity {
                                let v = cp.evict_with(&bits).unwrap();
                                let vk = key_of.remove(&v);
                                prop_assert!(vk.is_some(), "victim {} not resident", v);
                                entry_of.remove(&vk.unwrap());
                                bits.0[v as usize].set(false);
                            }
                            let mut e = (k % u64::from(capacity)) as u32;
                            while key_of.contains_key(&e) {
                                e = (e + 1) % capacity;
                            }
                            bits.admit(&mut cp, e, h(k));
                            key_of.insert(e, k);
                            entry_of.insert(k, e);
                        }
                    }
                    StoreOp::Remove(k) => {
                        if let Some(e) = entry_of.remove(&k) {
                            key_of.remove(&e);
                            cp.remove(e);
                            bits.0[e as usize].set(false);
                        }
                    }
                    StoreOp::Evict => {
                        let v = cp.evict_with(&bits);
                        prop_assert_eq!(v.is_some(), !key_of.is_empty());
                        if let Some(v) = v {
                            let vk = key_of.remove(&v);
                            prop_assert!(vk.is_some(), "victim {} not resident", v);
                            entry_of.remove(&vk.unwrap());
                            bits.0[v as usize].set(false);
                        }
                    }
                }
                prop_assert_eq!(cp.resident_count() as usize, key_of.len());
                cp.debug_validate();
            }
        }

        /// Against a plain model (key ↔ entry maps): capacity is never exceeded, victims were
        /// resident, indices handed out were free, touch never evicts, and every invariant
        /// holds after every operation.
        #[test]
        fn model(capacity in 1u32..64, ops in proptest::collection::vec(op(), 1..600)) {
            let mut cp = ClockPro::new(capacity);
            let mut entry_of: HashMap<u64, u32> = HashMap::new();
            let mut key_of: HashMap<u32, u64> = HashMap::new();
            for op in ops {
                match op {
                    Op::Get(k) => {
                        if let Some(&e) = entry_of.get(&k) {
                            let before = cp.stats();
                            cp.touch(e);
                            prop_assert_eq!(cp.stats(), before);
                        } else {
                            let full = key_of.len() as u32 == capacity;
                            let a = cp.admit(h(k));
                            prop_assert_eq!(a.victim.is_some(), full);
                            if let Some(v) = a.victim {
                                let vk = key_of.remove(&v);
                                prop_assert!(vk.is_some(), "victim {} not resident", v);
                                entry_of.remove(&vk.unwrap());
                            }
                            prop_assert!(a.entry < capacity);
                            prop_assert!(!key_of.contains_key(&a.entry), "entry {} in use", a.entry);
                            key_of.insert(a.entry, k);
                            entry_of.insert(k, a.entry);
                        }
                    }
                    Op::Remove(k) => {
                        if let Some(e) = entry_of.remove(&k) {
                            key_of.remove(&e);
                            cp.remove(e);
                        }
                    }
                    Op::Expire(k) => {
                        if let Some(&e) = entry_of.get(&k) {
                            cp.mark_expired(e);
                            // The next victim is this entry.
                            let v = cp.evict();
                            prop_assert_eq!(v, Some(e));
                            key_of.remove(&e);
                            entry_of.remove(&k);
                        }
                    }
                    Op::Evict => {
                        let v = cp.evict();
                        prop_assert_eq!(v.is_some(), !key_of.is_empty());
                        if let Some(v) = v {
                            let vk = key_of.remove(&v);
                            prop_assert!(vk.is_some(), "victim {} not resident", v);
                            entry_of.remove(&vk.unwrap());
                        }
                    }
                }
                prop_assert_eq!(cp.resident_count() as usize, key_of.len());
                prop_assert!(cp.resident_count() <= capacity);
                cp.debug_validate();
            }
        }
    }
}
