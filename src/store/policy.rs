//! The eviction hook: the engine tells a policy about entries and asks it
//! for victims; the engine frees them. An entry is an index slot of one
//! shard (`0 .. shard_slots`), so a policy's metadata is a flat array.
//!
//! The engine delivers `touch` lazily: a hit only marks the slot and queues
//! the entry in a small per-shard buffer (no lock on the hit path); the next
//! writer in that shard drains the buffer into `touch` under the shard lock.
//! Touches lost when the buffer is full only make the policy a little less
//! informed, never wrong about residency.
//!
//! Beyond the shape `touch / admit / remove`, a policy constructs itself
//! from an entry count, states its bytes per entry (charged against the
//! store's cap) and answers `evict` when the engine needs room in bytes
//! rather than in entries.

/// An eviction policy over entry indices `0 .. entries`.
pub trait Policy: Send {
    /// Heap bytes per entry, charged against the store's cap.
    const ENTRY_BYTES: usize;
    fn with_entries(entries: u32) -> Self
    where
        Self: Sized;
    /// A hit on resident entry `e`.
    fn touch(&mut self, e: u32);
    /// `e` becomes resident; push entries to evict (count-based policies).
    fn admit(&mut self, e: u32, key_hash: u64, victims: &mut Vec<u32>);
    /// `e` left for another reason (removed, expired, replaced slot).
    fn remove(&mut self, e: u32);
    /// The engine needs room: push at least one resident entry if any.
    fn evict(&mut self, victims: &mut Vec<u32>);
}

const RESIDENT: u8 = 1;
const REFERENCED: u8 = 2;

/// Second-chance CLOCK: one byte per entry, one hand.
pub struct Clock {
    bits: Vec<u8>,
    hand: u32,
}

impl Policy for Clock {
    const ENTRY_BYTES: usize = 1;

    fn with_entries(entries: u32) -> Clock {
        Clock {
            bits: vec![0; entries as usize],
            hand: 0,
        }
    }

    fn touch(&mut self, e: u32) {
        if let Some(b) = self.bits.get_mut(e as usize) {
            if *b & RESIDENT != 0 {
                *b |= REFERENCED;
            }
        }
    }

    fn admit(&mut self, e: u32, _key_hash: u64, _victims: &mut Vec<u32>) {
        // One entry per index slot: residency never exceeds the entries.
        self.bits[e as usize] = RESIDENT;
    }

    fn remove(&mut self, e: u32) {
        self.bits[e as usize] = 0;
    }

    fn evict(&mut self, victims: &mut Vec<u32>) {
        let n = self.bits.len() as u32;
        // Bounded: each entry is passed over at most once with its bit set.
        for _ in 0..2 * n {
            let e = self.hand;
            self.hand = (self.hand + 1) % n;
            let b = &mut self.bits[e as usize];
            if *b & RESIDENT == 0 {
                continue;
            }
            if *b & REFERENCED != 0 {
                *b &= !REFERENCED;
                continue;
            }
            *b = 0;
            victims.push(e);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_gives_a_second_chance() {
        let mut c = Clock::with_entries(4);
        let mut v = Vec::new();
        for e in 0..3 {
            c.admit(e, 0, &mut v);
        }
        assert!(v.is_empty());
        c.touch(0);
        c.evict(&mut v);
        assert_eq!(v, [1]);
        c.remove(2);
        v.clear();
        c.evict(&mut v);
        assert_eq!(v, [0]);
        v.clear();
        c.evict(&mut v);
        assert!(v.is_empty());
    }
}
