//! The tag index: tag → the keys of the objects stored with it, so a tag
//! purge reaches exactly those objects without a walk of the store.
//!
//! Written by workers when they store a response (the miss path, under one
//! mutex), read by the admin thread on a tag purge. Bounded by
//! `tag_index_bytes_max`, reserved out of `--memory`: the figure counted is
//! the bytes of the keys and tags held plus a fixed charge per map entry
//! for the hash maps' own slots ([`ENTRY_OVERHEAD_BYTES`]), an estimate
//! of the heap it takes.
//!
//! Exactness: an entry can outlive its object (evicted, expired, removed):
//! a purge therefore checks the stored head still carries the tag before
//! it acts, and an upkeep thread prunes such entries every
//! `INVALIDATION_UPKEEP_INTERVAL` ([`TagIndex::prune`]), so dead entries
//! do not fill the index. An object stored when the index was full is not indexed, and a
//! store reopened from its file holds objects the index never saw: the
//! index is then *incomplete*, and a tag purge also adds a tag ban, which
//! matches the tag in the stored field (exact, checked on lookup).
//! `/invalidate/all` empties the index and makes it complete again.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// Bytes charged per map entry beside the key and tag bytes.
pub const ENTRY_OVERHEAD_BYTES: u64 = 64;

struct KeyEntry {
    key: Box<[u8]>,
    tags: Vec<Box<[u8]>>,
}

#[derive(Default)]
struct Inner {
    tags: HashMap<Box<[u8]>, HashSet<u64>>,
    keys: HashMap<u64, KeyEntry>,
    bytes: u64,
}

/// The bounded inverted index.
pub struct TagIndex {
    inner: Mutex<Inner>,
    /// Mirror of `Inner::bytes` for metrics.
    bytes: AtomicU64,
    bytes_max: u64,
    complete: AtomicBool,
    /// Whether any key is indexed: a store without tags skips the lock.
    any: AtomicBool,
}

impl TagIndex {
    /// `complete`: false when the store already holds objects (reopened file).
    pub fn new(bytes_max: u64, complete: bool) -> TagIndex {
        TagIndex {
            inner: Mutex::new(Inner::default()),
            bytes: AtomicU64::new(0),
            bytes_max,
            complete: AtomicBool::new(complete && bytes_max > 0),
            any: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Estimated bytes held.
    pub fn bytes(&self) -> u64 {
        // Relaxed: a gauge.
        self.bytes.load(Ordering::Relaxed)
    }

    /// Does the index know every stored object's tags?
    pub fn is_complete(&self) -> bool {
        // Relaxed: read by the admin thread; a late true only adds a ban.
        self.complete.load(Ordering::Relaxed)
    }

    /// Some object's tags could not all be indexed.
    pub fn mark_incomplete(&self) {
        // Relaxed: see `is_complete`.
        self.complete.store(false, Ordering::Relaxed);
    }

    /// The object under (`hash`, `key`) was stored carrying `tags`
    /// (already bounded in number and size by the caller).
    pub fn note_store(&self, hash: u64, key: &[u8], tags: &[&[u8]]) {
        // Relaxed: a hint; set under the lock below when a key is indexed.
        if tags.is_empty() && !self.any.load(Ordering::Relaxed) {
            return;
        }
        let mut inner = self.lock();
        unlink_key(&mut inner, hash);
        if tags.is_empty() {
            self.bytes.store(inner.bytes, Ordering::Relaxed);
            return;
        }
        let mut cost = key.len() as u64 + ENTRY_OVERHEAD_BYTES;
        for t in tags {
            cost += 2 * t.len() as u64 + 2 * ENTRY_OVERHEAD_BYTES;
        }
        if inner.bytes + cost > self.bytes_max {
            // Relaxed: read by the admin thread only as a policy switch.
            self.complete.store(false, Ordering::Relaxed);
            self.bytes.store(inner.bytes, Ordering::Relaxed);
            return;
        }
        inner.bytes += cost;
        for t in tags {
            inner.tags.entry(Box::from(*t)).or_default().insert(hash);
        }
        inner.keys.insert(
            hash,
            KeyEntry {
                key: Box::from(key),
                tags: tags.iter().map(|t| Box::from(*t)).collect(),
            },
        );
        // Relaxed: see above.
        self.any.store(true, Ordering::Relaxed);
        self.bytes.store(inner.bytes, Ordering::Relaxed);
    }

    /// The keys indexed under `tag` (hash, key). With `forget`, their
    /// entries leave the index (the objects are being removed).
    pub fn keys_for(&self, tag: &[u8], forget: bool) -> Vec<(u64, Box<[u8]>)> {
        let mut inner = self.lock();
        let Some(hashes) = inner.tags.get(tag) else {
            return Vec::new();
        };
        let hashes: Vec<u64> = hashes.iter().copied().collect();
        let out: Vec<(u64, Box<[u8]>)> = hashes
            .iter()
            .filter_map(|h| inner.keys.get(h).map(|e| (*h, e.key.clone())))
            .collect();
        if forget {
            for h in hashes {
                unlink_key(&mut inner, h);
            }
        }
        self.bytes.store(inner.bytes, Ordering::Relaxed);
        out
    }

    /// Drop the entries of objects no longer stored (`stored(hash, key)`
    /// says). Checks `chunk` keys per lock hold, so a worker storing meanwhile
    /// waits for one chunk at most; an object stored during the check
    /// re-indexes itself after it (its `note_store` takes the lock after
    /// the insert). Returns the entries dropped.
    pub fn prune(&self, chunk: usize, mut stored: impl FnMut(u64, &[u8]) -> bool) -> usize {
        let hashes: Vec<u64> = self.lock().keys.keys().copied().collect();
        let mut dropped = 0;
        for part in hashes.chunks(chunk.max(1)) {
            let mut inner = self.lock();
            for &h in part {
                let gone = match inner.keys.get(&h) {
                    Some(e) => !stored(h, &e.key),
                    None => false,
                };
                if gone {
                    unlink_key(&mut inner, h);
                    dropped += 1;
                }
            }
            // Relaxed: a gauge.
            self.bytes.store(inner.bytes, Ordering::Relaxed);
        }
        dropped
    }

    /// Forget everything: every stored object was just made unservable.
    pub fn reset(&self) {
        let mut inner = self.lock();
        *inner = Inner::default();
        self.bytes.store(0, Ordering::Relaxed);
        self.complete.store(self.bytes_max > 0, Ordering::Relaxed);
    }
}

/// Remove a key's entry and its links from every tag.
fn unlink_key(inner: &mut Inner, hash: u64) {
    let Some(entry) = inner.keys.remove(&hash) else {
        return;
    };
    let mut freed = entry.key.len() as u64 + ENTRY_OVERHEAD_BYTES;
    for t in &entry.tags {
        freed += 2 * t.len() as u64 + 2 * ENTRY_OVERHEAD_BYTES;
        if let Some(set) = inner.tags.get_mut(t) {
            set.remove(&hash);
            if set.is_empty() {
                inner.tags.remove(t);
            }
        }
    }
    inner.bytes = inner.bytes.saturating_sub(freed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_follows_stores_and_stays_bounded() {
        let idx = TagIndex::new(1000, true);
        idx.note_store(1, b"h\0/1", &[b"a", b"b"]);
        idx.note_store(2, b"h\0/2", &[b"b"]);
        assert_eq!(idx.keys_for(b"a", false).len(), 1);
        assert_eq!(idx.keys_for(b"b", false).len(), 2);
        // Stored again without tag a: no longer under a.
        idx.note_store(1, b"h\0/1", &[b"b"]);
        assert!(idx.keys_for(b"a", false).is_empty());
        let b = idx.keys_for(b"b", true);
        assert_eq!(b.len(), 2);
        assert!(idx.keys_for(b"b", false).is_empty());
        assert_eq!(idx.bytes(), 0);
        assert!(idx.is_complete());
        // Over the cap: not indexed, and the index says it is incomplete.
        for i in 0..100u64 {
            idx.note_store(i, b"h\0/some/long/key", &[b"tag"]);
        }
        assert!(idx.bytes() <= 1000);
        assert!(!idx.is_complete());
        idx.reset();
        assert!(idx.is_complete());
        assert_eq!(idx.bytes(), 0);
        // Entries of objects no longer stored are pruned.
        idx.note_store(1, b"h\0/1", &[b"a"]);
        idx.note_store(2, b"h\0/2", &[b"a"]);
        assert_eq!(idx.prune(1, |h, _| h == 2), 1);
        assert_eq!(
            idx.keys_for(b"a", false),
            vec![(2, Box::from(&b"h\0/2"[..]))]
        );
    }
}
