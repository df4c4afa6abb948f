//! The object store shared by every worker.
//!
//! This is the interim store: sharded hash maps of reference-counted items
//! under a hard byte cap, with second-chance (CLOCK) eviction per shard. The
//! segment store in a memory-mapped file replaces it behind the same small
//! interface: [`Store::lookup`], [`Store::insert`], [`Store::remove`].
//!
//! An item is immutable once inserted; replacing a key swaps the `Arc`, so a
//! reader holding the old item keeps a whole, consistent response (no torn
//! reads). Accounting charges each item its key, header block, body and a
//! fixed overhead, so the cap holds metadata included.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

pub mod clockpro;

/// Shards of the index; a power of two.
pub const SHARDS_COUNT: usize = 64;
/// Bytes charged per item on top of its key, head and body (map entry,
/// queue slot, the item struct).
pub const ITEM_OVERHEAD_BYTES: usize = 160;

/// A stored response. Immutable once in the store.
#[derive(Debug)]
pub struct Item {
    pub key: Box<[u8]>,
    /// `HTTP/1.1 200 OK\r\n` and the stored header fields, each ending in
    /// CRLF, without the blank line, `Content-Length`, `Age` or hop-by-hop fields.
    pub head: Box<[u8]>,
    pub body: Box<[u8]>,
    /// Unix seconds at which the response was received.
    pub response_time_secs: u64,
    /// Corrected initial age (RFC 9111 §4.2.3), seconds.
    pub initial_age_secs: u64,
    /// Freshness lifetime, seconds.
    pub lifetime_secs: u64,
    referenced: AtomicBool,
}

impl Item {
    pub fn new(
        key: &[u8],
        head: Vec<u8>,
        body: Vec<u8>,
        response_time_secs: u64,
        initial_age_secs: u64,
        lifetime_secs: u64,
    ) -> Item {
        Item {
            key: key.into(),
            head: head.into_boxed_slice(),
            body: body.into_boxed_slice(),
            response_time_secs,
            initial_age_secs,
            lifetime_secs,
            referenced: AtomicBool::new(false),
        }
    }

    /// Current age (RFC 9111 §4.2.3) at `now_secs`.
    #[inline]
    pub fn age_secs(&self, now_secs: u64) -> u64 {
        self.initial_age_secs + now_secs.saturating_sub(self.response_time_secs)
    }

    /// Fresh at `now_secs`?
    #[inline]
    pub fn is_fresh(&self, now_secs: u64) -> bool {
        self.age_secs(now_secs) < self.lifetime_secs
    }

    /// Bytes charged against the cap.
    pub fn charge_bytes(&self) -> usize {
        self.key.len() + self.head.len() + self.body.len() + ITEM_OVERHEAD_BYTES
    }
}

struct Shard {
    map: HashMap<u64, Arc<Item>>,
    /// Hashes in insertion order: the CLOCK hand walks from the front.
    clock: VecDeque<u64>,
    bytes: usize,
}

/// The shared store.
pub struct Store {
    shards: Box<[Mutex<Shard>]>,
    shard_bytes_max: usize,
    bytes_max: u64,
    evictions: AtomicU64,
}

/// Hash of a cache key (64-bit, seeded per build, not per process: the store
/// outlives processes once it is persistent).
pub fn key_hash(key: &[u8]) -> u64 {
    // FNV-1a over the bytes, then a finaliser to spread the high bits.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

impl Store {
    /// A store holding at most `bytes_max` bytes, metadata included.
    pub fn new(bytes_max: u64) -> Store {
        let shards = (0..SHARDS_COUNT)
            .map(|_| {
                Mutex::new(Shard {
                    map: HashMap::new(),
                    clock: VecDeque::new(),
                    bytes: 0,
                })
            })
            .collect();
        Store {
            shards,
            shard_bytes_max: (bytes_max / SHARDS_COUNT as u64) as usize,
            bytes_max,
            evictions: AtomicU64::new(0),
        }
    }

    fn shard(&self, hash: u64) -> MutexGuard<'_, Shard> {
        let i = (hash as usize) & (SHARDS_COUNT - 1);
        // A poisoned shard only means a panic elsewhere mid-update; the map
        // itself is always consistent between statements, so keep going.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The item stored under `key`, if any (fresh or not).
    pub fn lookup(&self, hash: u64, key: &[u8]) -> Option<Arc<Item>> {
        let shard = self.shard(hash);
        let item = shard.map.get(&hash)?;
        if &*item.key != key {
            return None;
        }
        // Relaxed: a hint for the CLOCK hand, no ordering needed.
        item.referenced.store(true, Ordering::Relaxed);
        Some(Arc::clone(item))
    }

    /// Largest item the store admits.
    pub fn item_bytes_max(&self) -> usize {
        self.shard_bytes_max / 2
    }

    /// Insert or replace. Items too large for a shard are refused (`false`).
    pub fn insert(&self, hash: u64, item: Item) -> bool {
        let charge = item.charge_bytes();
        if charge > self.item_bytes_max() {
            return false;
        }
        let mut shard = self.shard(hash);
        if let Some(old) = shard.map.remove(&hash) {
            shard.bytes -= old.charge_bytes();
        } else {
            shard.clock.push_back(hash);
        }
        let mut evicted = 0;
        // Second chance: a referenced entry goes to the back once, unreferenced
        // entries are evicted. Bounded: each entry is passed over at most once
        // before its bit is clear.
        let mut steps_max = shard.clock.len() * 2 + 1;
        while shard.bytes + charge > self.shard_bytes_max && steps_max > 0 {
            steps_max -= 1;
            let Some(victim) = shard.clock.pop_front() else {
                break;
            };
            if victim == hash {
                shard.clock.push_back(victim);
                continue;
            }
            let Some(entry) = shard.map.get(&victim) else {
                continue; // removed earlier; drop the stale queue entry
            };
            // Relaxed: the hint is advisory.
            if entry.referenced.swap(false, Ordering::Relaxed) {
                shard.clock.push_back(victim);
                continue;
            }
            if let Some(old) = shard.map.remove(&victim) {
                shard.bytes -= old.charge_bytes();
                evicted += 1;
            }
        }
        if shard.bytes + charge > self.shard_bytes_max {
            return false;
        }
        shard.bytes += charge;
        shard.map.insert(hash, Arc::new(item));
        // Keep the queue from growing with removed entries.
        if shard.clock.len() > shard.map.len() * 2 + 64 {
            let Shard { map, clock, .. } = &mut *shard;
            clock.retain(|h| map.contains_key(h));
        }
        drop(shard);
        if evicted > 0 {
            // Relaxed: a statistic.
            self.evictions.fetch_add(evicted, Ordering::Relaxed);
        }
        true
    }

    /// Remove the item under `key`. Returns whether one was removed.
    pub fn remove(&self, hash: u64, key: &[u8]) -> bool {
        let mut shard = self.shard(hash);
        match shard.map.get(&hash) {
            Some(item) if &*item.key == key => {
                let charge = item.charge_bytes();
                shard.map.remove(&hash);
                shard.bytes -= charge;
                true
            }
            _ => false,
        }
    }

    /// Bytes charged now, items, the cap, and evictions so far.
    pub fn usage(&self) -> (u64, u64, u64, u64) {
        let (mut bytes, mut items) = (0u64, 0u64);
        for s in self.shards.iter() {
            let s = s.lock().unwrap_or_else(|e| e.into_inner());
            bytes += s.bytes as u64;
            items += s.map.len() as u64;
        }
        // Relaxed: a statistic.
        let evictions = self.evictions.load(Ordering::Relaxed);
        (bytes, items, self.bytes_max, evictions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(key: &str, body_bytes: usize) -> Item {
        Item::new(
            key.as_bytes(),
            b"HTTP/1.1 200 OK\r\n".to_vec(),
            vec![7; body_bytes],
            100,
            0,
            60,
        )
    }

    #[test]
    fn insert_lookup_replace_remove() {
        let s = Store::new(64 << 20);
        let k = b"h\0/a";
        let h = key_hash(k);
        assert!(s.lookup(h, k).is_none());
        assert!(s.insert(h, item("h\0/a", 10)));
        let got = s.lookup(h, k).unwrap();
        assert_eq!(got.body.len(), 10);
        assert!(s.insert(h, item("h\0/a", 20)));
        assert_eq!(s.lookup(h, k).unwrap().body.len(), 20);
        // The old reader still holds its whole item.
        assert_eq!(got.body.len(), 10);
        assert!(s.remove(h, k));
        assert!(s.lookup(h, k).is_none());
        assert_eq!(s.usage().0, 0);
    }

    #[test]
    fn a_colliding_hash_with_another_key_is_a_miss() {
        let s = Store::new(64 << 20);
        assert!(s.insert(5, item("a", 1)));
        assert!(s.lookup(5, b"b").is_none());
    }

    #[test]
    fn cap_holds_under_many_inserts() {
        let cap = 4u64 << 20;
        let s = Store::new(cap);
        for i in 0..20_000 {
            let k = format!("h\0/item/{i}");
            s.insert(key_hash(k.as_bytes()), item(&k, 1000));
            // Touch some keys so second chance is exercised.
            if i % 3 == 0 {
                let k = format!("h\0/item/{}", i / 2);
                s.lookup(key_hash(k.as_bytes()), k.as_bytes());
            }
        }
        let (bytes, items, bytes_max, evictions) = s.usage();
        assert!(bytes <= bytes_max, "{bytes} > {bytes_max}");
        assert!(items > 1000, "{items}");
        assert!(evictions > 0);
    }

    #[test]
    fn freshness_and_age() {
        let it = Item::new(b"k", vec![], vec![], 1000, 5, 60);
        assert_eq!(it.age_secs(1000), 5);
        assert_eq!(it.age_secs(1010), 15);
        assert!(it.is_fresh(1054));
        assert!(!it.is_fresh(1055));
    }
}
