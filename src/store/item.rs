//! The item: what one stored response looks like in its chunks.
//!
//! An item is a logical byte string cut over a chain of chunks (the link
//! words are not part of it; see `slab`):
//! ```text
//!  0  crc32c         u32   over key, head, body, then header bytes 4 .. 20
//!  4  seq            u16   version of this key: the replaced item's + 1
//!  6  lifetime       u16   freshness lifetime, 16-bit float (see below)
//!  8  lens           u32   key_len (low 12 bits) | head_len << 12 (20 bits)
//! 12  body_len       u32
//! 16  born_secs      u32   response_time - initial_age, Unix seconds
//! 20  key, head, body
//! ```
//! Times are u32 Unix seconds (good to 2106); age at `now` is
//! `now - born_secs`, which is RFC 9111's `corrected_initial_age +
//! resident_time` without storing both. Limits: keys under 4 KiB, heads
//! under 1 MiB (the proxy's `head_bytes_max` ceiling), bodies under 4 GiB.
//!
//! The lifetime is a 16-bit float: 4 bits of exponent `e`, 12 of mantissa
//! `m`; `e = 0` is `m` seconds, else `(4096 + m) << (e - 1)`. Exact up to
//! 8191 s (2 h 16 min), relative error under 1/4096 above (under 22 s a
//! day), at most 134,201,344 s (4.25 years). Encoding rounds *down*: a
//! stored item goes stale at most that early, never late.
//!
//! The sequence is per key, not store-wide: an insert that replaces an item
//! takes its sequence + 1 (under the shard lock), a new key starts at 0.
//! Two intact versions of one key coexist in the region only between the
//! publish of the new one and the retire mark on the old one (one locked
//! section; see `engine`), so their sequences differ by exactly 1, and
//! the wrap-around comparison [`seq_newer`] (good for any distance under
//! 2^15) tells the newer one apart at any age of the store.
//!
//! Metadata per object (single-chunk item): index slot 8 + link word 4 +
//! this header 20 = 32 bytes, plus the eviction policy's heap bytes per
//! slot: 27 for CLOCK-Pro (the store's policy), 0 for CLOCK, whose whole
//! state is a bit in the slot; index and policy bytes count once per slot,
//! and there are about two slots per object (see `engine::Metadata`).
//!
//! Checksum: crc32c, through the `crc32c` crate (SSE4.2/ARMv8 instructions
//! with a table fallback): fast enough to verify every item on the recovery
//! scan, and the Castagnoli polynomial detects all the burst errors a torn
//! write leaves. Data first, header last: the inserting thread checksums
//! the bytes while it copies them and appends the header, whose sequence
//! is known only under the lock, in a few nanoseconds.

pub const ITEM_HEADER_BYTES: usize = 20;
pub const KEY_BYTES_MAX: usize = (1 << 12) - 1;
pub const HEAD_BYTES_MAX: usize = (1 << 20) - 1;
/// Largest lifetime the header holds; longer ones are stored as this.
pub const LIFETIME_SECS_MAX: u32 = 8191 << 14;

/// The 16-bit float of a lifetime, rounded down (see the module doc).
pub fn lifetime_encode(secs: u32) -> u16 {
    if secs < 4096 {
        return secs as u16;
    }
    let secs = secs.min(LIFETIME_SECS_MAX);
    let bits = u32::BITS - secs.leading_zeros(); // 13 ..= 27
    let shift = bits - 13;
    let m = (secs >> shift) - 4096;
    ((shift + 1) << 12 | m) as u16
}

/// Seconds of a 16-bit float lifetime.
pub fn lifetime_decode(v: u16) -> u32 {
    let (e, m) = (u32::from(v >> 12), u32::from(v & 0xfff));
    if e == 0 {
        m
    } else {
        (4096 + m) << (e - 1)
    }
}

/// Response metadata the store keeps beside the bytes, and the clock of
/// the insert that carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemMeta {
    /// `response_time - initial_age` (RFC 9111 §4.2.3), Unix seconds.
    pub born_secs: u32,
    /// Freshness lifetime, seconds. Stored as a 16-bit float rounded down:
    /// a hit may report slightly less than was inserted above 8191 s.
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
    pub seq: u16,
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
        b[4..6].copy_from_slice(&self.seq.to_le_bytes());
        b[6..8].copy_from_slice(&lifetime_encode(self.meta.lifetime_secs).to_le_bytes());
        let lens = self.key_len as u32 | (self.head_len as u32) << 12;
        b[8..12].copy_from_slice(&lens.to_le_bytes());
        b[12..16].copy_from_slice(&(self.body_len as u32).to_le_bytes());
        b[16..20].copy_from_slice(&self.meta.born_secs.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; ITEM_HEADER_BYTES]) -> ItemHeader {
        let at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let lens = at(8);
        ItemHeader {
            crc: at(0),
            seq: u16::from_le_bytes([b[4], b[5]]),
            key_len: (lens & 0xfff) as usize,
            head_len: (lens >> 12) as usize,
            body_len: at(12) as usize,
            meta: ItemMeta {
                born_secs: at(16),
                lifetime_secs: lifetime_decode(u16::from_le_bytes([b[6], b[7]])),
                now_secs: at(16),
            },
        }
    }

    /// Logical bytes of the whole item.
    pub fn total_bytes(&self) -> usize {
        ITEM_HEADER_BYTES + self.key_len + self.head_len + self.body_len
    }

    /// crc32c of the three parts: the first half of [`ItemHeader::checksum`].
    pub fn checksum_data(key: &[u8], head: &[u8], body: &[u8]) -> u32 {
        let c = crc32c::crc32c(key);
        let c = crc32c::crc32c_append(c, head);
        crc32c::crc32c_append(c, body)
    }

    /// The item's checksum, from the crc32c of its data (key, head, body).
    pub fn checksum(&self, data_crc: u32) -> u32 {
        crc32c::crc32c_append(data_crc, &self.encode()[4..])
    }
}

/// Version `a` is newer than `b` (serial arithmetic, RFC 1982 style; the
/// two must be fewer than 2^15 versions apart, see the module doc).
#[inline]
pub fn seq_newer(a: u16, b: u16) -> bool {
    (a.wrapping_sub(b) as i16) > 0
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
        assert!(seq_newer(1, u16::MAX) && !seq_newer(u16::MAX, 1));
        assert!(seq_newer(0, u16::MAX) && seq_newer(5, 4) && !seq_newer(4, 4));
    }

    #[test]
    fn lifetimes_round_down_by_under_one_in_4096() {
        for secs in (0..20_000).chain([86_400, 31_536_000, u32::MAX - 1, u32::MAX]) {
            let back = lifetime_decode(lifetime_encode(secs));
            assert!(back <= secs, "{secs} -> {back}");
            if secs < 8192 {
                assert_eq!(back, secs);
            } else if secs <= LIFETIME_SECS_MAX {
                assert!(
                    u64::from(secs - back) * 4096 < u64::from(secs),
                    "{secs} -> {back}"
                );
            } else {
                assert_eq!(back, LIFETIME_SECS_MAX);
            }
            // Decoded values encode to themselves (re-checksumming is exact).
            assert_eq!(lifetime_decode(lifetime_encode(back)), back);
        }
        for v in 0..=u16::MAX {
            assert_eq!(lifetime_encode(lifetime_decode(v)), v);
        }
    }
}
