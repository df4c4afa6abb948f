//! `inspect`: what a store file holds, read without changing it.
//!
//! The file is opened read-only and mapped read-only; nothing is written,
//! no index is built, no thread is started. The header is checked as an
//! open checks it (magic, checksum, version, a self-consistent layout) but
//! the layout is taken from the file rather than computed from a budget.
//! Every chunk's link word is read and every item start is verified the way
//! the recovery scan does (chain shape, crc32c), so "items" is what an
//! open would recover, give or take two versions of one key (counted
//! twice here, deduplicated by the open).

use super::engine::OpenError;
use super::item::{ItemHeader, ITEM_HEADER_BYTES, KEY_BYTES_MAX};
use super::journal::{JournalGeometry, JournalInspection};
use super::layout::{FileHeader, Layout, LayoutError, HEADER_FIELDS_BYTES, LINK_BYTES};
use super::slab::{link_kind, link_next, KIND_CONT, KIND_FREE, KIND_HEAD};
use memmap2::Mmap;
use std::fmt;
use std::path::Path;

/// What a store file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inspection {
    pub version: u32,
    /// As recorded in the file (`heap_bytes` is not: 0).
    pub layout: Layout,
    /// The last process closed it cleanly.
    pub clean: bool,
    /// Segments holding at least one chunk that is not free.
    pub segments_used: u32,
    pub segments_free: u32,
    /// Intact items (chain and checksum verified).
    pub items: u64,
    /// Item starts that fail verification (torn writes).
    pub items_torn: u64,
    /// Bytes of the intact items (header, key, head, body).
    pub bytes_live: u64,
    /// Bytes of non-free chunks not holding intact items: retired chains
    /// waiting for a grace period, items being written, torn items, and
    /// the tail waste of live chains.
    pub bytes_dead: u64,
    /// The invalidation journal (none in a file laid out without one).
    pub journal: Option<JournalInspection>,
}

/// Inspect the store file at `path` without modifying it.
pub fn inspect(path: &Path) -> Result<Inspection, OpenError> {
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    if len < HEADER_FIELDS_BYTES as u64 {
        return Err(LayoutError::NotAStore("file shorter than a store header".into()).into());
    }
    // SAFETY: a read-only shared map. The store file is ours alone; if a
    // running ringcache writes it meanwhile, the figures are a snapshot
    // that may be inconsistent, never unsound: we only read bytes and
    // check every offset against the map's length.
    let map = unsafe { Mmap::map(&file)? };
    let raw: &[u8; HEADER_FIELDS_BYTES] = map[..HEADER_FIELDS_BYTES].try_into().expect("len");
    let header = FileHeader::decode_any(raw)?;
    let l = header.layout;
    if len != l.region_bytes {
        return Err(LayoutError::Mismatch {
            field: "file_bytes",
            found: len,
            expected: l.region_bytes,
        }
        .into());
    }
    let chunk_bytes = l.chunk_bytes as usize;
    let payload = l.payload_bytes();
    let count = l.chunk_count();
    let link = |c: u32| {
        let o = l.chunk_offset(c);
        u32::from_le_bytes(map[o..o + LINK_BYTES].try_into().expect("4 bytes"))
    };
    // Logical bytes `pos .. pos + n` of the chain from `c`, in pieces.
    let visit = |c: &mut u32, pos: &mut usize, mut n: usize, f: &mut dyn FnMut(&[u8])| {
        while n > 0 {
            if *pos == payload {
                *c = link_next(link(*c));
                *pos = 0;
            }
            let k = n.min(payload - *pos);
            let o = l.chunk_offset(*c) + LINK_BYTES + *pos;
            f(&map[o..o + k]);
            *pos += k;
            n -= k;
        }
    };
    let mut r = Inspection {
        version: header.version,
        layout: l,
        clean: header.clean,
        segments_used: 0,
        segments_free: 0,
        items: 0,
        items_torn: 0,
        bytes_live: 0,
        bytes_dead: 0,
        journal: None,
    };
    if l.journal_bytes > 0 {
        let g = JournalGeometry {
            slot_bytes: l.journal_slot_bytes,
            slots: l.journal_slots,
        };
        let o = l.journal_offset as usize;
        let area = &map[o..o + l.journal_bytes as usize];
        r.journal = Some(super::journal::inspect(area, g));
    }
    let mut used_chunks = 0u64;
    let mut live_chunks = 0u64;
    for seg in 0..l.segment_count {
        let first = seg * l.chunks_per_segment();
        let mut used = false;
        for c in first..first + l.chunks_per_segment() {
            let w = link(c);
            // A never-carved chunk is all zero: kind FREE.
            if link_kind(w) == KIND_FREE {
                continue;
            }
            used = true;
            used_chunks += 1;
            if link_kind(w) != KIND_HEAD {
                continue;
            }
            let o = l.chunk_offset(c) + LINK_BYTES;
            let hb: &[u8; ITEM_HEADER_BYTES] =
                map[o..o + ITEM_HEADER_BYTES].try_into().expect("len");
            let h = ItemHeader::decode(hb);
            let n = h.total_bytes().div_ceil(payload);
            let mut ok = h.key_len <= KEY_BYTES_MAX && n as u64 <= u64::from(count);
            let mut at = c;
            for _ in 1..n {
                if !ok {
                    break;
                }
                let next = link_next(link(at));
                ok = next < count && link_kind(link(next)) == KIND_CONT;
                at = next;
            }
            if ok {
                let (mut cur, mut pos) = (c, ITEM_HEADER_BYTES);
                // crc32c_append from 0 is the crc32c of the first piece.
                let mut crc = 0;
                visit(
                    &mut cur,
                    &mut pos,
                    h.total_bytes() - ITEM_HEADER_BYTES,
                    &mut |b| crc = crc32c::crc32c_append(crc, b),
                );
                ok = h.checksum(crc) == h.crc;
            }
            if ok {
                r.items += 1;
                r.bytes_live += h.total_bytes() as u64;
                live_chunks += n as u64;
            } else {
                r.items_torn += 1;
            }
        }
        if used {
            r.segments_used += 1;
        } else {
            r.segments_free += 1;
        }
    }
    debug_assert!(r.bytes_live <= live_chunks * chunk_bytes as u64);
    r.bytes_dead = used_chunks * chunk_bytes as u64 - r.bytes_live;
    Ok(r)
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.layout;
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        writeln!(f, "ringcache store, format version {}", self.version)?;
        writeln!(
            f,
            "  layout:   {:.1} MiB region, {} segments of {} KiB, {} B chunks, {} index slots",
            mib(l.region_bytes),
            l.segment_count,
            l.segment_bytes / 1024,
            l.chunk_bytes,
            l.slots_count
        )?;
        writeln!(
            f,
            "  shutdown: {}",
            if self.clean {
                "clean (closed and flushed)"
            } else {
                "NOT clean (crashed, killed or still open): the next open verifies every item"
            }
        )?;
        writeln!(
            f,
            "  segments: {} used, {} free",
            self.segments_used, self.segments_free
        )?;
        writeln!(
            f,
            "  items:    {} intact, {} torn",
            self.items, self.items_torn
        )?;
        write!(
            f,
            "  bytes:    {:.1} MiB live, {:.1} MiB dead",
            mib(self.bytes_live),
            mib(self.bytes_dead)
        )?;
        if let Some(j) = &self.journal {
            write!(
                f,
                "\n  journal:  {} entries, {} dropped, {} of {} bytes used (generation {}, floor {})",
                j.entries, j.dropped, j.bytes_used, j.bytes_cap, j.generation, j.floor_secs
            )?;
        }
        Ok(())
    }
}
