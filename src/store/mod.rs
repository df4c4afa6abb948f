//! The object store shared by every worker: a segment store in one memory
//! region (a file given by `--store`, or anonymous memory), under a hard byte
//! cap that includes its metadata. See [`engine`] for the layout, the read
//! protocol (items are immutable once published; freed chunks are reused
//! only after a grace period, so a reader copies bytes that cannot change
//! under it) and crash recovery.
//!
//! The proxy sees four operations: a worker's [`Reader::lookup`] (copies a
//! fresh item's head, the proxy's own fields and the body straight into the
//! client's output, no allocation), [`SharedStore::insert`],
//! [`SharedStore::remove`] and [`SharedStore::usage`] (with
//! [`SharedStore::policy_stats`] for CLOCK-Pro's hot, cold and test counts
//! and its cold target). Eviction is CLOCK-Pro over each shard's index
//! slots (`policy`, `clockpro`).

#[cfg(not(loom))]
pub mod engine;
pub mod epoch;
#[cfg(not(loom))]
pub mod inspect;
pub mod item;
pub mod journal;
pub mod layout;
#[cfg(not(loom))]
pub mod policy;
#[cfg(not(loom))]
pub mod region;
pub mod slab;

pub mod clockpro;
#[cfg(not(loom))]
pub use engine::{OpenError, Options, Recovery, Usage};
pub use item::ItemMeta;

/// The store every worker shares.
#[cfg(not(loom))]
pub type SharedStore = engine::Store;
/// A worker's read handle on the [`SharedStore`].
#[cfg(not(loom))]
pub type Reader = engine::Reader;

/// Hash of a cache key. The store file outlives processes, so this must not
/// change without a new store format version: recovery re-hashes stored keys.
pub fn key_hash(key: &[u8]) -> u64 {
    let mut h = KeyHasher::new();
    h.write(key);
    h.finish()
}

/// [`key_hash`] of a key that comes in pieces (a stored key spans chunks).
pub(crate) struct KeyHasher(u64);

impl KeyHasher {
    pub(crate) fn new() -> KeyHasher {
        KeyHasher(0xcbf2_9ce4_8422_2325)
    }

    /// FNV-1a over the bytes.
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// A finaliser spreads the high bits.
    pub(crate) fn finish(self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h
    }
}

#[cfg(test)]
mod tests {
    use super::key_hash;

    #[test]
    fn key_hash_is_stable_across_builds() {
        // Recovery depends on it: a change needs a new store format version.
        assert_eq!(key_hash(b"ringcache"), 0x25f9e98539911181);
        assert_ne!(key_hash(b"h\0/a"), key_hash(b"h\0/b"));
    }
}
