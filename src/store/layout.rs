//! Where everything sits in the store region, and the file header.
//!
//! ```text
//! offset 0                        the region (file or anonymous memory)
//! ┌──────────────────────────────┐
//! │ file header, 4 KiB page      │ magic, format version, layout parameters,
//! │                              │ clean flag, next sequence, header crc32c
//! ├──────────────────────────────┤ INDEX_OFFSET = 4096
//! │ index: shards × buckets      │ bucket = 8 slots × 8 B = one 64 B cache line
//! │   slot = u64 (see index.rs)  │ slot count = a power of two
//! ├──────────────────────────────┤ journal_offset (page aligned)
//! │ invalidation journal         │ journal_bytes (0 without a journal): a
//! │  control block, 4 KiB        │ control block (boot id), then two halves
//! │  half 0: header + N slots    │ of journal_slots fixed slots of
//! │  half 1: header + N slots    │ journal_slot_bytes each (see journal.rs)
//! ├──────────────────────────────┤ segments_offset (page aligned)
//! │ segment 0                    │ segment_bytes (default 1 MiB), carved into
//! │  ┌────────┬────────┬───────┐ │ chunks of chunk_bytes (default 256 B):
//! │  │ chunk 0│ chunk 1│ ...   │ │   [link u32][payload chunk_bytes - 4]
//! │  └────────┴────────┴───────┘ │ chunk id = segment × chunks_per_segment + i
//! │ segment 1 ...                │
//! └──────────────────────────────┘ region_bytes
//! ```
//!
//! Heap beside the region, charged against the same cap: the policy's
//! per-entry metadata (`entries × P::ENTRY_BYTES`) and a fixed allowance for
//! shard and reader bookkeeping. `bytes` given to the store bounds the sum.
//!
//! Only offsets and ids are stored in the region, never pointers, so the
//! file means the same thing at any mapping address.
//!
//! File header (little endian, all fields at fixed offsets):
//! ```text
//!   0  magic            [u8; 8]  b"RINGCSTO"
//!   8  version          u32      FORMAT_VERSION
//!  12  header_bytes     u32      4096
//!  16  region_bytes     u64
//!  24  segment_bytes    u32
//!  28  chunk_bytes      u32
//!  32  segment_count    u32
//!  36  shards_count     u32
//!  40  slots_count      u32      index slots, all shards
//!  44  clean            u32      1 after a clean close, 0 while open
//!  48  segments_offset  u64
//!  56  journal_offset   u64      where the invalidation journal starts
//!  64  journal_bytes    u64      its size (0: none)
//!  72  journal_slot_bytes u32    bytes per journal record slot
//!  76  journal_slots    u32      record slots per journal half
//!  80  reserved         [u8; 44] zero
//! 124  header_crc       u32      crc32c of bytes 0..124
//! ```
//! The whole layout is recomputed from (`region_bytes`, `segment_bytes`,
//! `chunk_bytes`) and must equal what the header says, field by field; any
//! difference refuses the file with the name of the field.

use std::fmt;

pub use super::journal::JournalGeometry;

/// First bytes of a store file.
pub const MAGIC: [u8; 8] = *b"RINGCSTO";
/// Bumped whenever any byte layout in the region changes meaning.
pub const FORMAT_VERSION: u32 = 3;
/// The header page.
pub const HEADER_BYTES: usize = 4096;
/// Encoded header fields (the rest of the page is zero).
pub const HEADER_FIELDS_BYTES: usize = 128;
/// Index shards (each one mutex for writers, one policy); a power of two.
pub const SHARDS_COUNT: usize = 64;
/// Slots per bucket: one cache line of u64 slots.
pub const BUCKET_SLOTS: usize = 8;
/// Bytes per index slot.
pub const SLOT_BYTES: usize = 8;
/// At most 2^this index slots in all shards.
pub const SLOTS_COUNT_BITS_MAX: u32 = 30;
/// One index slot per this many bytes of budget, by default (2× headroom
/// over a 1 KiB average object keeps buckets rarely full). Objects much
/// smaller than that fill the index before the bytes; a store for them
/// takes a smaller figure ([`Layout::compute_sized`]).
pub const BUDGET_BYTES_PER_SLOT: usize = 512;
/// The range [`Layout::compute_sized`] accepts for budget bytes per slot:
/// at 128 the index and CLOCK-Pro's heap (35 bytes a slot) take 27 % of
/// the budget already.
pub const BUDGET_BYTES_PER_SLOT_MIN: usize = 128;
pub const BUDGET_BYTES_PER_SLOT_MAX: usize = 64 << 10;
/// Bytes of the chunk link word that starts every chunk.
pub const LINK_BYTES: usize = 4;
/// Chunk ids fit in the low 28 bits of a link word.
pub const CHUNK_ID_BITS: u32 = 28;
/// Largest chunk id + 1; `CHUNK_NONE` is reserved.
pub const CHUNKS_MAX: u64 = (1 << CHUNK_ID_BITS) - 1;
/// "No chunk" in a link word.
pub const CHUNK_NONE: u32 = (1 << CHUNK_ID_BITS) - 1;
/// Heap bookkeeping charged against the cap besides the policy: shard
/// mutexes, retire counters, reader slots.
pub const HEAP_FIXED_BYTES: usize = SHARDS_COUNT * 1024 + 64 * 1024;
/// Default segment size.
pub const SEGMENT_BYTES_DEFAULT: usize = 1 << 20;
/// Default chunk size.
pub const CHUNK_BYTES_DEFAULT: usize = 256;
/// Smallest chunk: the link word, the item header and a few key bytes.
pub const CHUNK_BYTES_MIN: usize = 64;

const _: () = assert!(HEADER_FIELDS_BYTES <= HEADER_BYTES);
const _: () = assert!(BUCKET_SLOTS * SLOT_BYTES == 64);
const _: () = assert!(SHARDS_COUNT.is_power_of_two());
const _: () = assert!(HEADER_BYTES % 4096 == 0);
const _: () = assert!(CHUNK_BYTES_MIN >= LINK_BYTES + super::item::ITEM_HEADER_BYTES + 8);
const _: () = assert!(SEGMENT_BYTES_DEFAULT % CHUNK_BYTES_DEFAULT == 0);

/// Why a region could not be laid out or a file was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayoutError {
    /// The parameters make no store (too small, not powers of two, ...).
    Invalid(String),
    /// The file is not a ringcache store, or its header is damaged.
    NotAStore(String),
    /// A store of another format version.
    Version { found: u32, expected: u32 },
    /// A store laid out differently from what was asked.
    Mismatch {
        field: &'static str,
        found: u64,
        expected: u64,
    },
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayoutError::Invalid(s) => write!(f, "store layout: {s}"),
            LayoutError::NotAStore(s) => write!(f, "not a ringcache store file: {s}"),
            LayoutError::Version { found, expected } => write!(
                f,
                "store file has format version {found}, this build reads version {expected}; \
                 remove the file or start with --store-reset to rebuild it cold"
            ),
            LayoutError::Mismatch {
                field,
                found,
                expected,
            } => write!(
                f,
                "store file layout differs: {field} is {found} in the file, {expected} asked \
                 (the layout follows the memory size, the bytes per index slot, the chunk and \
                 segment sizes and the journal's size); remove the file or start with \
                 --store-reset to rebuild it cold"
            ),
        }
    }
}

impl std::error::Error for LayoutError {}

/// Every size and offset in the region, computed once from the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub region_bytes: u64,
    pub segment_bytes: u32,
    pub chunk_bytes: u32,
    pub segment_count: u32,
    pub slots_count: u32,
    pub segments_offset: u64,
    /// The invalidation journal's place in the region (`journal`).
    pub journal_offset: u64,
    pub journal_bytes: u64,
    pub journal_slot_bytes: u32,
    pub journal_slots: u32,
    /// Heap bytes charged beside the region (policy + fixed bookkeeping).
    pub heap_bytes: u64,
}

impl Layout {
    /// Lay out a store of at most `budget_bytes`, region and charged heap
    /// together, with `policy_entry_bytes` of policy metadata per slot.
    pub fn compute(
        budget_bytes: u64,
        segment_bytes: usize,
        chunk_bytes: usize,
        policy_entry_bytes: usize,
    ) -> Result<Layout, LayoutError> {
        Layout::compute_with_journal(
            budget_bytes,
            segment_bytes,
            chunk_bytes,
            policy_entry_bytes,
            JournalGeometry::NONE,
        )
    }

    /// [`Layout::compute`] with room for an invalidation journal of
    /// `journal` between the index and the segments, out of the same budget.
    pub fn compute_with_journal(
        budget_bytes: u64,
        segment_bytes: usize,
        chunk_bytes: usize,
        policy_entry_bytes: usize,
        journal: JournalGeometry,
    ) -> Result<Layout, LayoutError> {
        Layout::compute_sized(
            budget_bytes,
            segment_bytes,
            chunk_bytes,
            policy_entry_bytes,
            journal,
            BUDGET_BYTES_PER_SLOT,
        )
    }

    /// [`Layout::compute_with_journal`] with one index slot per
    /// `budget_bytes_per_slot` of budget (rounded down to a power of two
    /// of slots), instead of [`BUDGET_BYTES_PER_SLOT`].
    pub fn compute_sized(
        budget_bytes: u64,
        segment_bytes: usize,
        chunk_bytes: usize,
        policy_entry_bytes: usize,
        journal: JournalGeometry,
        budget_bytes_per_slot: usize,
    ) -> Result<Layout, LayoutError> {
        let bad = |s: &str| Err(LayoutError::Invalid(s.to_string()));
        if !(BUDGET_BYTES_PER_SLOT_MIN..=BUDGET_BYTES_PER_SLOT_MAX).contains(&budget_bytes_per_slot)
        {
            return bad("budget bytes per index slot must be between 128 bytes and 64KiB");
        }
        if !segment_bytes.is_power_of_two() || !(4096..=1 << 30).contains(&segment_bytes) {
            return bad("segment_bytes must be a power of two between 4KiB and 1GiB");
        }
        if !chunk_bytes.is_power_of_two()
            || chunk_bytes < CHUNK_BYTES_MIN
            || chunk_bytes > segment_bytes
        {
            return bad("chunk_bytes must be a power of two between 64 bytes and segment_bytes");
        }
        let budget = usize::try_from(budget_bytes).unwrap_or(usize::MAX);
        let slots_min = SHARDS_COUNT * BUCKET_SLOTS;
        let mut slots = (budget / budget_bytes_per_slot).max(slots_min);
        slots = 1 << (usize::BITS - 1 - slots.leading_zeros()); // round down to 2^k
        if slots > 1 << SLOTS_COUNT_BITS_MAX {
            slots = 1 << SLOTS_COUNT_BITS_MAX;
        }
        let index_bytes = slots * SLOT_BYTES;
        let journal_offset = (HEADER_BYTES + index_bytes).next_multiple_of(4096);
        let journal_bytes = usize::try_from(journal.region_bytes()).unwrap_or(usize::MAX);
        let segments_offset = journal_offset.saturating_add(journal_bytes);
        let heap_bytes = slots * policy_entry_bytes + HEAP_FIXED_BYTES;
        let fixed = segments_offset + heap_bytes;
        if budget < fixed + segment_bytes {
            return bad(
                "memory budget too small for the header, index, invalidation journal and one segment",
            );
        }
        let segment_count = (budget - fixed) / segment_bytes;
        let chunks = segment_count as u64 * (segment_bytes / chunk_bytes) as u64;
        if chunks > CHUNKS_MAX || segment_count > u32::MAX as usize {
            return bad("too many chunks: raise chunk_bytes");
        }
        let layout = Layout {
            region_bytes: (segments_offset + segment_count * segment_bytes) as u64,
            segment_bytes: segment_bytes as u32,
            chunk_bytes: chunk_bytes as u32,
            segment_count: segment_count as u32,
            slots_count: slots as u32,
            segments_offset: segments_offset as u64,
            journal_offset: journal_offset as u64,
            journal_bytes: journal_bytes as u64,
            journal_slot_bytes: journal.slot_bytes,
            journal_slots: journal.slots,
            heap_bytes: heap_bytes as u64,
        };
        debug_assert!(layout.region_bytes + layout.heap_bytes <= budget_bytes);
        Ok(layout)
    }

    pub fn chunks_per_segment(&self) -> u32 {
        self.segment_bytes / self.chunk_bytes
    }

    pub fn chunk_count(&self) -> u32 {
        self.segment_count * self.chunks_per_segment()
    }

    /// Payload bytes per chunk (after the link word).
    pub fn payload_bytes(&self) -> usize {
        self.chunk_bytes as usize - LINK_BYTES
    }

    /// Region offset of chunk `c`.
    #[inline]
    pub fn chunk_offset(&self, c: u32) -> usize {
        debug_assert!(c < self.chunk_count());
        self.segments_offset as usize + c as usize * self.chunk_bytes as usize
    }

    /// Index slots per shard.
    pub fn shard_slots(&self) -> u32 {
        self.slots_count / SHARDS_COUNT as u32
    }
}

/// The decoded file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHeader {
    pub version: u32,
    pub layout: Layout,
    pub clean: bool,
}

impl FileHeader {
    /// Encode into the first `HEADER_FIELDS_BYTES` of the header page.
    pub fn encode(&self, out: &mut [u8; HEADER_FIELDS_BYTES]) {
        *out = [0; HEADER_FIELDS_BYTES];
        let l = &self.layout;
        out[0..8].copy_from_slice(&MAGIC);
        out[8..12].copy_from_slice(&self.version.to_le_bytes());
        out[12..16].copy_from_slice(&(HEADER_BYTES as u32).to_le_bytes());
        out[16..24].copy_from_slice(&l.region_bytes.to_le_bytes());
        out[24..28].copy_from_slice(&l.segment_bytes.to_le_bytes());
        out[28..32].copy_from_slice(&l.chunk_bytes.to_le_bytes());
        out[32..36].copy_from_slice(&l.segment_count.to_le_bytes());
        out[36..40].copy_from_slice(&(SHARDS_COUNT as u32).to_le_bytes());
        out[40..44].copy_from_slice(&l.slots_count.to_le_bytes());
        out[44..48].copy_from_slice(&u32::from(self.clean).to_le_bytes());
        out[48..56].copy_from_slice(&l.segments_offset.to_le_bytes());
        out[56..64].copy_from_slice(&l.journal_offset.to_le_bytes());
        out[64..72].copy_from_slice(&l.journal_bytes.to_le_bytes());
        out[72..76].copy_from_slice(&l.journal_slot_bytes.to_le_bytes());
        out[76..80].copy_from_slice(&l.journal_slots.to_le_bytes());
        let crc = crc32c::crc32c(&out[..124]);
        out[124..128].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decode a header without a budget to compare against: magic, checksum
    /// and version are checked, and the layout is taken from the file (its
    /// `heap_bytes` is unknown, 0) after checking it is self-consistent.
    pub fn decode_any(raw: &[u8; HEADER_FIELDS_BYTES]) -> Result<FileHeader, LayoutError> {
        let u32_at = |o: usize| u32::from_le_bytes(raw[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(raw[o..o + 8].try_into().expect("8 bytes"));
        if raw[0..8] != MAGIC {
            return Err(LayoutError::NotAStore("bad magic".into()));
        }
        if crc32c::crc32c(&raw[..124]) != u32_at(124) {
            return Err(LayoutError::NotAStore("header checksum mismatch".into()));
        }
        let version = u32_at(8);
        if version != FORMAT_VERSION {
            return Err(LayoutError::Version {
                found: version,
                expected: FORMAT_VERSION,
            });
        }
        let layout = Layout {
            region_bytes: u64_at(16),
            segment_bytes: u32_at(24),
            chunk_bytes: u32_at(28),
            segment_count: u32_at(32),
            slots_count: u32_at(40),
            segments_offset: u64_at(48),
            journal_offset: u64_at(56),
            journal_bytes: u64_at(64),
            journal_slot_bytes: u32_at(72),
            journal_slots: u32_at(76),
            heap_bytes: 0,
        };
        let journal = JournalGeometry {
            slot_bytes: layout.journal_slot_bytes,
            slots: layout.journal_slots,
        };
        let consistent = layout.chunk_bytes as usize >= CHUNK_BYTES_MIN
            && layout.chunk_bytes.is_power_of_two()
            && layout.segment_bytes.is_power_of_two()
            && layout.chunk_bytes <= layout.segment_bytes
            && u64::from(layout.segment_count)
                * u64::from(layout.segment_bytes / layout.chunk_bytes)
                <= CHUNKS_MAX
            && layout.journal_offset
                >= (HEADER_BYTES as u64 + u64::from(layout.slots_count) * SLOT_BYTES as u64)
            && layout.journal_offset % 4096 == 0
            && journal.is_valid()
            && layout.journal_bytes == journal.region_bytes()
            && layout.segments_offset == layout.journal_offset + layout.journal_bytes
            && layout.region_bytes
                == layout.segments_offset
                    + u64::from(layout.segment_count) * u64::from(layout.segment_bytes);
        if !consistent || u32_at(36) as usize != SHARDS_COUNT {
            return Err(LayoutError::NotAStore("inconsistent layout fields".into()));
        }
        Ok(FileHeader {
            version,
            layout,
            clean: u32_at(44) == 1,
        })
    }

    /// Decode and check a header against the layout this build computes for
    /// the same budget. Every refusal names what was wrong.
    pub fn decode(
        raw: &[u8; HEADER_FIELDS_BYTES],
        expected: &Layout,
    ) -> Result<FileHeader, LayoutError> {
        let u32_at = |o: usize| u32::from_le_bytes(raw[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(raw[o..o + 8].try_into().expect("8 bytes"));
        if raw[0..8] != MAGIC {
            return Err(LayoutError::NotAStore("bad magic".into()));
        }
        let crc = crc32c::crc32c(&raw[..124]);
        if crc != u32_at(124) {
            return Err(LayoutError::NotAStore("header checksum mismatch".into()));
        }
        let version = u32_at(8);
        if version != FORMAT_VERSION {
            return Err(LayoutError::Version {
                found: version,
                expected: FORMAT_VERSION,
            });
        }
        let checks: [(&'static str, u64, u64); 12] = [
            ("header_bytes", u64::from(u32_at(12)), HEADER_BYTES as u64),
            ("region_bytes", u64_at(16), expected.region_bytes),
            (
                "segment_bytes",
                u64::from(u32_at(24)),
                u64::from(expected.segment_bytes),
            ),
            (
                "chunk_bytes",
                u64::from(u32_at(28)),
                u64::from(expected.chunk_bytes),
            ),
            (
                "segment_count",
                u64::from(u32_at(32)),
                u64::from(expected.segment_count),
            ),
            ("shards_count", u64::from(u32_at(36)), SHARDS_COUNT as u64),
            (
                "slots_count",
                u64::from(u32_at(40)),
                u64::from(expected.slots_count),
            ),
            ("segments_offset", u64_at(48), expected.segments_offset),
            ("journal_offset", u64_at(56), expected.journal_offset),
            ("journal_bytes", u64_at(64), expected.journal_bytes),
            (
                "journal_slot_bytes",
                u64::from(u32_at(72)),
                u64::from(expected.journal_slot_bytes),
            ),
            (
                "journal_slots",
                u64::from(u32_at(76)),
                u64::from(expected.journal_slots),
            ),
        ];
        for (field, found, want) in checks {
            if found != want {
                return Err(LayoutError::Mismatch {
                    field,
                    found,
                    expected: want,
                });
            }
        }
        Ok(FileHeader {
            version,
            layout: *expected,
            clean: u32_at(44) == 1,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_fits_the_budget() {
        for budget in [1u64 << 20, 8 << 20, 64 << 20, 1 << 30] {
            let l = Layout::compute(budget, 64 << 10, 256, 1).unwrap();
            assert!(l.region_bytes + l.heap_bytes <= budget, "{l:?}");
            assert!(l.segment_count >= 1);
            assert_eq!(l.segments_offset % 4096, 0);
            assert!(l.slots_count.is_power_of_two());
        }
        assert!(Layout::compute(64 << 10, 64 << 10, 256, 1).is_err());
        assert!(Layout::compute(1 << 20, 64 << 10, 100, 1).is_err());
    }

    #[test]
    fn the_journal_sits_between_index_and_segments_in_the_budget() {
        let g = JournalGeometry::for_records(65, 1100);
        let plain = Layout::compute(16 << 20, 64 << 10, 256, 1).unwrap();
        let l = Layout::compute_with_journal(16 << 20, 64 << 10, 256, 1, g).unwrap();
        assert!(l.region_bytes + l.heap_bytes <= 16 << 20);
        assert_eq!(l.journal_offset, plain.segments_offset);
        assert_eq!(l.journal_offset % 4096, 0);
        assert_eq!(l.segments_offset, l.journal_offset + g.region_bytes());
        assert!(
            l.segment_count < plain.segment_count,
            "paid from the budget"
        );
        assert_eq!(plain.journal_bytes, 0);
        let h = FileHeader {
            version: FORMAT_VERSION,
            layout: l,
            clean: false,
        };
        let mut raw = [0u8; HEADER_FIELDS_BYTES];
        h.encode(&mut raw);
        assert_eq!(FileHeader::decode(&raw, &l).unwrap(), h);
        let any = FileHeader::decode_any(&raw).unwrap();
        assert_eq!(any.layout, Layout { heap_bytes: 0, ..l });
        // Another journal geometry is another layout.
        let other = JournalGeometry::for_records(66, 1100);
        let l2 = Layout::compute_with_journal(16 << 20, 64 << 10, 256, 1, other).unwrap();
        assert!(matches!(
            FileHeader::decode(&raw, &l2),
            Err(LayoutError::Mismatch { .. })
        ));
        // A journal too large for the budget is refused with a message.
        let huge = JournalGeometry::for_records(100_000, 60_000);
        assert!(Layout::compute_with_journal(16 << 20, 64 << 10, 256, 1, huge).is_err());
    }

    #[test]
    fn header_round_trip_and_refusals() {
        let l = Layout::compute(4 << 20, 64 << 10, 256, 1).unwrap();
        let h = FileHeader {
            version: FORMAT_VERSION,
            layout: l,
            clean: true,
        };
        let mut raw = [0u8; HEADER_FIELDS_BYTES];
        h.encode(&mut raw);
        assert_eq!(FileHeader::decode(&raw, &l).unwrap(), h);

        let mut torn = raw;
        torn[30] ^= 1;
        assert!(matches!(
            FileHeader::decode(&torn, &l),
            Err(LayoutError::NotAStore(_))
        ));

        let other = FileHeader { version: 9, ..h };
        other.encode(&mut raw);
        assert_eq!(
            FileHeader::decode(&raw, &l),
            Err(LayoutError::Version {
                found: 9,
                expected: FORMAT_VERSION
            })
        );

        let l2 = Layout::compute(4 << 20, 64 << 10, 512, 1).unwrap();
        h.encode(&mut raw);
        let e = FileHeader::decode(&raw, &l2).unwrap_err();
        assert!(e.to_string().contains("chunk_bytes"), "{e}");
    }
}
