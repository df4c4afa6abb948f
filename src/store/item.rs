//! The item: what one stored response looks like in its chunks.
//!
//! An item is a logical byte string cut over a chain of chunks (the link
//! words are not part of it; see `slab`):
//! ```text
//!  0  crc32c         u32   over bytes 4 .. end (header rest, key, head, body)
//!  4  seq            u32   store-wide insert sequence (recovery keeps the newest)
//!  8  lens           u32   key_len (low 12 bits) | head_len << 12 (20 bits)
//! 12  body_len       u32
//! 16  born_secs      u32   response_time - initial_age, Unix seconds
//! 20  lifetime_secs  u32   freshness lifetime
//! 24  key, head, body
//! ```
//! Times are u32 Unix seconds (good to 2106); age at `now` is
//! `now - born_secs`, which is RFC 9111's `corrected_initial_age +
//! resident_time` without storing both. Limits: keys under 4 KiB, heads
//! under 1 MiB (the proxy's `head_bytes_max` ceiling), bodies under 4 GiB.
//!
//! Metadata per object (single-chunk item): index slot 8 + link word 4 +
//! this header 24 = 36 bytes, plus the policy's entry (CLOCK: 1).
//!
//! Checksum: crc32c, through the `crc32c` crate (SSE4.2/ARMv8 instructions
//! with a table fallback): fast enough to verify every item on the recovery
//! scan, and the Castagnoli polynomial detects all the burst errors a torn
//! write leaves.

pub const ITEM_HEADER_BYTES: usize = 24;
pub const KEY_BYTES_MAX: usize = (1 << 12) - 1;
pub const HEAD_BYTES_MAX: usize = (1 << 20) - 1;

/// Response metadata the store keeps beside the bytes, and the clock of
/// the insert that carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemMeta {
    /// `response_time - initial_age` (RFC 9111 §4.2.3), Unix seconds.
    pub born_secs: u32,
    /// Freshness lifetime, seconds.
    pub lifetime_secs: u32,
    /// Unix seconds at the insert: the "now" its expiry sweep compares
    /// expiry times against. Not stored in the item (a hit reports
    /// `born_secs` here); set it again with [`ItemMeta::at`] before
    /// re-inserting a hit's metadata.
    pub now_secs: u32,
}

impl ItemMeta {
    /// From the interim store's three figures (Unix seconds). The response
    /// time is the insert's clock: a response is stored as it arrives.
    pub fn new(response_time_secs: u64, initial_age_secs: u64, lifetime_secs: u64) -> ItemMeta {
        let born = response_time_secs.saturating_sub(initial_age_secs);
        ItemMeta {
            born_secs: u32::try_from(born).unwrap_or(u32::MAX),
            lifetime_secs: u32::try_from(lifetime_secs).unwrap_or(u32::MAX),
            now_secs: u32::try_from(response_time_secs).unwrap_or(u32::MAX),
        }
    }

    /// The same response, inserted at `now_secs`.
    pub fn at(self, now_secs: u64) -> ItemMeta {
        ItemMeta {
            now_secs: u32::try_from(now_secs).unwrap_or(u32::MAX),
            ..self
        }
    }

    /// Current age at `now_secs`.
    #[inline]
    pub fn age_secs(&self, now_secs: u64) -> u64 {
        now_secs.saturating_sub(u64::from(self.born_secs))
    }

    #[inline]
    pub fn is_fresh(&self, now_secs: u64) -> bool {
        self.age_secs(now_secs) < u64::from(self.lifetime_secs)
    }

    /// Unix second from which the item is stale.
    #[inline]
    pub fn expires_secs(&self) -> u64 {
        u64::from(self.born_secs) + u64::from(self.lifetime_secs)
    }
}

/// What a lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    pub meta: ItemMeta,
    pub head_len: usize,
    pub body_len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemHeader {
    pub crc: u32,
    pub seq: u32,
    pub key_len: usize,
    pub head_len: usize,
    pub body_len: usize,
    pub meta: ItemMeta,
}

impl ItemHeader {
    pub fn encode(&self) -> [u8; ITEM_HEADER_BYTES] {
        debug_assert!(self.key_len <= KEY_BYTES_MAX && self.head_len <= HEAD_BYTES_MAX);
        let mut b = [0u8; ITEM_HEADER_BYTES];
        b[0..4].copy_from_slice(&self.crc.to_le_bytes());
        b[4..8].copy_from_slice(&self.seq.to_le_bytes());
        let lens = self.key_len as u32 | (self.head_len as u32) << 12;
        b[8..12].copy_from_slice(&lens.to_le_bytes());
        b[12..16].copy_from_slice(&(self.body_len as u32).to_le_bytes());
        b[16..20].copy_from_slice(&self.meta.born_secs.to_le_bytes());
        b[20..24].copy_from_slice(&self.meta.lifetime_secs.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; ITEM_HEADER_BYTES]) -> ItemHeader {
        let at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let lens = at(8);
        ItemHeader {
            crc: at(0),
            seq: at(4),
            key_len: (lens & 0xfff) as usize,
            head_len: (lens >> 12) as usize,
            body_len: at(12) as usize,
            meta: ItemMeta {
                born_secs: at(16),
                lifetime_secs: at(20),
                now_secs: at(16),
            },
        }
    }

    /// Logical bytes of the whole item.
    pub fn total_bytes(&self) -> usize {
        ITEM_HEADER_BYTES + self.key_len + self.head_len + self.body_len
    }

    /// crc32c over header bytes 4.. and the three parts.
    pub fn checksum(&self, key: &[u8], head: &[u8], body: &[u8]) -> u32 {
        let h = self.encode();
        let mut c = crc32c::crc32c(&h[4..]);
        c = crc32c::crc32c_append(c, key);
        c = crc32c::crc32c_append(c, head);
        crc32c::crc32c_append(c, body)
    }
}

/// Sequence `a` is newer than `b` (serial arithmetic, RFC 1982 style).
#[inline]
pub fn seq_newer(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = ItemHeader {
            crc: 0xdead_beef,
            seq: 9,
            key_len: KEY_BYTES_MAX,
            head_len: HEAD_BYTES_MAX,
            body_len: 1 << 30,
            meta: ItemMeta::new(1000, 5, 60),
        };
        let d = ItemHeader::decode(&h.encode());
        assert_eq!(
            d,
            ItemHeader {
                meta: h.meta.at(995),
                ..h
            }
        );
        assert_eq!(h.meta.age_secs(1010), 15);
        assert!(h.meta.is_fresh(1054) && !h.meta.is_fresh(1055));
        assert!(seq_newer(1, u32::MAX) && !seq_newer(u32::MAX, 1));
    }
}
