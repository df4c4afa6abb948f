//! The invalidation journal: a fixed area of the store file where every
//! ban is recorded before it is acknowledged, so that a restart (clean or
//! after `kill -9`) can re-create the bans before the first request.
//!
//! The store knows records as bytes (a kind byte, two times, a payload);
//! what they mean is `invalidate::durable`'s business. This module keeps
//! the format, the append, the compaction and the scan.
//!
//! ```text
//! journal_offset (page aligned, see layout.rs)
//! ┌─────────────────────────────┐
//! │ control block, 4 KiB        │ magic, boot id of the last open, crc32c
//! ├─────────────────────────────┤ + CONTROL_BYTES
//! │ half 0: header slot         │ magic, generation, floor_secs, geometry,
//! │         slot 0 .. slots - 1 │ crc32c; then `slots` record slots
//! ├─────────────────────────────┤ + (slots + 1) × slot_bytes
//! │ half 1: header slot         │
//! │         slot 0 .. slots - 1 │
//! └─────────────────────────────┘ journal_bytes (rounded up to a page)
//!
//! record slot (little endian, slot_bytes each, the rest of the slot unused):
//!   0  crc32c        u32   of bytes 4 .. 40 + payload_len
//!   4  payload_len   u16
//!   6  kind          u8    opaque to the store
//!   7  zero          u8
//!   8  generation    u64   the generation of the half it was written for
//!  16  seq           u64   order of appends, across compactions
//!  24  created_secs  u64   Unix seconds, the clock items carry (born_secs)
//!  32  retire_secs   u64   Unix seconds
//!  40  payload       [u8; payload_len]
//! ```
//!
//! **Which half is live.** The half whose header checks out with the
//! highest generation. Records are appended to its next free slot. A slot
//! whose generation differs from its half's is empty (never written, or
//! left over from an earlier use of the half), so reusing a half needs no
//! erase.
//!
//! **Compaction** writes the live records into the other half under the
//! next generation, then that half's header last: until the header is
//! whole the old half stays live and complete; from then on the new one
//! is. A crash at any point leaves one complete copy. The floor of retired
//! bans (`floor_secs`) travels in the header.
//!
//! **Torn or bad records.** A record whose crc32c fails is dropped and
//! counted, never read. Records are written one after the other by one
//! writer at a time, and an invalidation is answered only after its
//! records are whole, so only the last written slot can be torn by a crash
//! of the process. A bad record anywhere else was damaged after it was
//! acknowledged: [`Scan::lost`] says so, and the caller must assume a ban
//! is missing. Likewise when a half header is neither blank nor whole.
//!
//! **Durability.** Records are written through a `MAP_SHARED` mapping of
//! the store file: once the write returns, the bytes are in the kernel's
//! page cache and survive the death of the process (`kill -9`, a panic,
//! the OOM killer). There is no `msync` per record: a power loss or a
//! kernel crash can lose any page not yet written back, in any order, the
//! item pages included (a purged item's old bytes could come back). The
//! control block therefore keeps the boot id of the open
//! (`/proc/sys/kernel/random/boot_id`): a store not closed cleanly and
//! last opened under another boot may have lost writes, and the caller
//! must treat every stored object as invalidated ([`Scan::booted_since`]).
//! Where the kernel gives no boot id, such a crash cannot be told from
//! the death of the process.
//! A clean close flushes the whole file (`Store::close`), journal included.

use std::fs::File;
use std::io;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use memmap2::{MmapMut, MmapOptions};

/// The control block at the start of the journal (one page).
pub const CONTROL_BYTES: u64 = 4096;
/// Bytes of a record slot before its payload.
pub const RECORD_HEADER_BYTES: usize = 40;
/// Bytes of a half's header (it takes the half's first slot).
pub const HALF_HEADER_BYTES: usize = 64;
/// Smallest record slot: a half header fits in one.
pub const SLOT_BYTES_MIN: u32 = 64;
/// Largest record slot.
pub const SLOT_BYTES_MAX: u32 = 64 << 10;
/// Most record slots per half.
pub const SLOTS_MAX: u32 = 1 << 17;
/// Bytes of a Linux boot id (`xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`).
pub const BOOT_ID_BYTES: usize = 36;

const CONTROL_MAGIC: [u8; 8] = *b"RCJCTRL1";
const HALF_MAGIC: [u8; 8] = *b"RCJHALF1";
const CONTROL_FIELDS_BYTES: usize = 48;

const _: () = assert!(HALF_HEADER_BYTES <= SLOT_BYTES_MIN as usize);
const _: () = assert!(RECORD_HEADER_BYTES < SLOT_BYTES_MIN as usize);
const _: () = assert!(CONTROL_FIELDS_BYTES <= CONTROL_BYTES as usize);

/// The journal's shape: record slots of `slot_bytes`, `slots` per half.
/// Part of the store layout (and of the file header).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JournalGeometry {
    pub slot_bytes: u32,
    pub slots: u32,
}

impl JournalGeometry {
    /// No journal (anonymous stores, and stores opened without one).
    pub const NONE: JournalGeometry = JournalGeometry {
        slot_bytes: 0,
        slots: 0,
    };

    /// Room for `records_max` live records of up to `payload_bytes_max`
    /// payload bytes each. Clamped to the format's limits.
    pub fn for_records(records_max: usize, payload_bytes_max: usize) -> JournalGeometry {
        let slot = (RECORD_HEADER_BYTES + payload_bytes_max)
            .max(HALF_HEADER_BYTES)
            .next_multiple_of(64)
            .min(SLOT_BYTES_MAX as usize);
        JournalGeometry {
            slot_bytes: slot as u32,
            slots: records_max.clamp(1, SLOTS_MAX as usize) as u32,
        }
    }

    pub fn is_none(&self) -> bool {
        self.slots == 0
    }

    /// Within the format's limits (or none at all).
    pub fn is_valid(&self) -> bool {
        (self.slots == 0 && self.slot_bytes == 0)
            || ((SLOT_BYTES_MIN..=SLOT_BYTES_MAX).contains(&self.slot_bytes)
                && self.slot_bytes % 64 == 0
                && (1..=SLOTS_MAX).contains(&self.slots))
    }

    /// Largest payload a record may carry.
    pub fn payload_bytes_max(&self) -> usize {
        (self.slot_bytes as usize).saturating_sub(RECORD_HEADER_BYTES)
    }

    /// Bytes of one half: its header slot and its record slots.
    pub fn half_bytes(&self) -> u64 {
        (u64::from(self.slots) + 1) * u64::from(self.slot_bytes)
    }

    /// Bytes the journal takes in the region (0 for none).
    pub fn region_bytes(&self) -> u64 {
        if self.is_none() {
            return 0;
        }
        (CONTROL_BYTES + 2 * self.half_bytes()).next_multiple_of(4096)
    }

    /// Bytes of records one half holds when full.
    pub fn bytes_cap(&self) -> u64 {
        u64::from(self.slots) * u64::from(self.slot_bytes)
    }

    fn half_offset(&self, half: usize) -> usize {
        CONTROL_BYTES as usize + half * self.half_bytes() as usize
    }

    fn slot_offset(&self, half: usize, slot: u32) -> usize {
        self.half_offset(half) + (slot as usize + 1) * self.slot_bytes as usize
    }
}

/// One journal record. `seq` is assigned by the journal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub kind: u8,
    pub created_secs: u64,
    pub retire_secs: u64,
    pub payload: Vec<u8>,
}

/// What a record slot holds.
#[derive(Debug, PartialEq, Eq)]
pub enum SlotState {
    /// Not written for this generation.
    Empty,
    /// Written for this generation, but torn or damaged.
    Bad,
    Good(Record),
}

/// Encode `r` for a half of `generation` into `out` (one slot). False when
/// it does not fit.
pub fn encode_record(generation: u64, r: &Record, out: &mut [u8]) -> bool {
    let n = RECORD_HEADER_BYTES + r.payload.len();
    if n > out.len() || r.payload.len() > usize::from(u16::MAX) {
        return false;
    }
    out[4..6].copy_from_slice(&(r.payload.len() as u16).to_le_bytes());
    out[6] = r.kind;
    out[7] = 0;
    out[8..16].copy_from_slice(&generation.to_le_bytes());
    out[16..24].copy_from_slice(&r.seq.to_le_bytes());
    out[24..32].copy_from_slice(&r.created_secs.to_le_bytes());
    out[32..40].copy_from_slice(&r.retire_secs.to_le_bytes());
    out[40..n].copy_from_slice(&r.payload);
    let crc = crc32c::crc32c(&out[4..n]);
    out[0..4].copy_from_slice(&crc.to_le_bytes());
    true
}

fn u64_at(raw: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(raw[o..o + 8].try_into().expect("8 bytes"))
}

fn u32_at(raw: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(raw[o..o + 4].try_into().expect("4 bytes"))
}

/// Decode one slot of a half of `generation`.
pub fn decode_record(generation: u64, raw: &[u8]) -> SlotState {
    if raw.len() < RECORD_HEADER_BYTES || u64_at(raw, 8) != generation {
        return SlotState::Empty;
    }
    let len = usize::from(u16::from_le_bytes([raw[4], raw[5]]));
    let n = RECORD_HEADER_BYTES + len;
    if n > raw.len() || raw[7] != 0 || crc32c::crc32c(&raw[4..n]) != u32_at(raw, 0) {
        return SlotState::Bad;
    }
    SlotState::Good(Record {
        seq: u64_at(raw, 16),
        kind: raw[6],
        created_secs: u64_at(raw, 24),
        retire_secs: u64_at(raw, 32),
        payload: raw[RECORD_HEADER_BYTES..n].to_vec(),
    })
}

fn encode_half(
    g: JournalGeometry,
    generation: u64,
    floor_secs: u64,
    records: u32,
) -> [u8; HALF_HEADER_BYTES] {
    let mut out = [0u8; HALF_HEADER_BYTES];
    out[0..8].copy_from_slice(&HALF_MAGIC);
    out[8..16].copy_from_slice(&generation.to_le_bytes());
    out[16..24].copy_from_slice(&floor_secs.to_le_bytes());
    out[24..28].copy_from_slice(&g.slot_bytes.to_le_bytes());
    out[28..32].copy_from_slice(&g.slots.to_le_bytes());
    out[32..36].copy_from_slice(&records.to_le_bytes());
    let crc = crc32c::crc32c(&out[..60]);
    out[60..64].copy_from_slice(&crc.to_le_bytes());
    out
}

/// A half header's (generation, floor_secs), when it checks out.
fn decode_half(g: JournalGeometry, raw: &[u8]) -> Option<(u64, u64)> {
    let ok = raw[0..8] == HALF_MAGIC
        && crc32c::crc32c(&raw[..60]) == u32_at(raw, 60)
        && u32_at(raw, 24) == g.slot_bytes
        && u32_at(raw, 28) == g.slots
        && u64_at(raw, 8) != 0;
    ok.then(|| (u64_at(raw, 8), u64_at(raw, 16)))
}

fn encode_control(boot_id: &[u8; BOOT_ID_BYTES]) -> [u8; CONTROL_FIELDS_BYTES] {
    let mut out = [0u8; CONTROL_FIELDS_BYTES];
    out[0..8].copy_from_slice(&CONTROL_MAGIC);
    out[8..8 + BOOT_ID_BYTES].copy_from_slice(boot_id);
    let crc = crc32c::crc32c(&out[..44]);
    out[44..48].copy_from_slice(&crc.to_le_bytes());
    out
}

fn decode_control(raw: &[u8]) -> Option<[u8; BOOT_ID_BYTES]> {
    let ok = raw[0..8] == CONTROL_MAGIC && crc32c::crc32c(&raw[..44]) == u32_at(raw, 44);
    ok.then(|| raw[8..8 + BOOT_ID_BYTES].try_into().expect("boot id bytes"))
}

/// This boot's id, or zeros when the kernel does not say.
pub fn boot_id() -> [u8; BOOT_ID_BYTES] {
    let mut id = [0u8; BOOT_ID_BYTES];
    if let Ok(s) = std::fs::read_to_string("/proc/sys/kernel/random/boot_id") {
        let s = s.trim().as_bytes();
        if s.len() == BOOT_ID_BYTES {
            id.copy_from_slice(s);
        }
    }
    id
}

/// What a journal area holds.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// The live half and its generation (0: no half checks out).
    pub half: usize,
    pub generation: u64,
    /// Creation second of the newest ban retired before the last compaction.
    pub floor_secs: u64,
    /// Intact records of the live half, in append order.
    pub records: Vec<Record>,
    /// Records dropped: torn or damaged.
    pub dropped: u64,
    /// Slots of the live half written so far (good or bad).
    pub used_slots: u32,
    /// A record the journal had acknowledged cannot be read (damaged, not
    /// torn), or no half header checks out in a journal that is not blank.
    pub lost: bool,
    /// The boot id of the last open, when the control block checks out.
    pub boot_id: Option<[u8; BOOT_ID_BYTES]>,
    /// Nothing was ever written (a new file).
    pub blank: bool,
}

impl Scan {
    /// The journal was last opened under another boot than `now` (or the
    /// control block is unreadable in a journal that is not blank).
    pub fn booted_since(&self, now: &[u8; BOOT_ID_BYTES]) -> bool {
        match &self.boot_id {
            Some(id) => id != now,
            None => !self.blank,
        }
    }
}

/// Read a journal area of geometry `g` (the bytes at `journal_offset`).
pub fn scan(area: &[u8], g: JournalGeometry) -> Scan {
    let mut s = Scan::default();
    if g.is_none() || (area.len() as u64) < g.region_bytes() {
        s.blank = true;
        return s;
    }
    s.boot_id = decode_control(&area[..CONTROL_FIELDS_BYTES]);
    let best = (0..2)
        .filter_map(|h| {
            let o = g.half_offset(h);
            decode_half(g, &area[o..o + HALF_HEADER_BYTES]).map(|(gen, floor)| (h, gen, floor))
        })
        .max_by_key(|&(_, gen, _)| gen);
    // A half header that is neither blank nor whole was damaged: if it was
    // the live half's, falling back to the other would silently lose what
    // was appended since (a process that dies mid-compaction leaves the
    // new header unwritten, not half written, but for a window of one
    // 64-byte copy: treated the same, safely).
    let damaged_header = (0..2).any(|h| {
        let o = g.half_offset(h);
        let raw = &area[o..o + HALF_HEADER_BYTES];
        raw.iter().any(|&b| b != 0) && decode_half(g, raw).is_none()
    });
    let Some((half, generation, floor_secs)) = best else {
        s.blank = area.iter().all(|&b| b == 0);
        s.lost = !s.blank;
        return s;
    };
    s.half = half;
    s.generation = generation;
    s.floor_secs = floor_secs;
    let mut bad = Vec::new();
    for i in 0..g.slots {
        let o = g.slot_offset(half, i);
        match decode_record(generation, &area[o..o + g.slot_bytes as usize]) {
            SlotState::Empty => {}
            SlotState::Bad => {
                bad.push(i);
                s.used_slots = i + 1;
            }
            SlotState::Good(r) => {
                s.records.push(r);
                s.used_slots = i + 1;
            }
        }
    }
    s.dropped = bad.len() as u64;
    // Only the last slot written can be torn by a crash (module doc).
    s.lost = damaged_header || bad.iter().any(|&i| i + 1 != s.used_slots);
    s.records.sort_by_key(|r| r.seq);
    s
}

/// The journal has no room for the records (or a record is too large).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalFull;

struct Inner {
    map: MmapMut,
    half: usize,
    generation: u64,
    next_slot: u32,
    next_seq: u64,
}

/// The journal of an open store: one writer at a time (a mutex), off the
/// request path (the admin thread, the bus, the upkeep thread).
pub struct Journal {
    geometry: JournalGeometry,
    inner: Mutex<Inner>,
    /// Slots used in the live half, for metrics.
    used_slots: AtomicU64,
}

impl Journal {
    /// Map the journal area of the store file `file` laid out as
    /// `layout`, read it, and stamp this boot's id in its control block.
    /// Returns the journal and what it held.
    pub fn open(file: &File, layout: &super::layout::Layout) -> io::Result<(Journal, Scan)> {
        let g = JournalGeometry {
            slot_bytes: layout.journal_slot_bytes,
            slots: layout.journal_slots,
        };
        if g.is_none() || !g.is_valid() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the store has no invalidation journal",
            ));
        }
        // SAFETY: the store file is ours alone (one ringcache process
        // opens it; see `Region::file`), it is at least region_bytes long
        // (checked at open) and nobody truncates it while mapped. This
        // range of it is written only through this mapping.
        let map = unsafe {
            MmapOptions::new()
                .offset(layout.journal_offset)
                .len(layout.journal_bytes as usize)
                .map_mut(file)?
        };
        Ok(Journal::from_map(map, g))
    }

    /// A journal in anonymous memory (tests; a store without a file).
    pub fn anonymous(g: JournalGeometry) -> io::Result<(Journal, Scan)> {
        assert!(g.is_valid() && !g.is_none(), "journal geometry {g:?}");
        let map = MmapOptions::new()
            .len(g.region_bytes() as usize)
            .map_anon()?;
        Ok(Journal::from_map(map, g))
    }

    fn from_map(mut map: MmapMut, g: JournalGeometry) -> (Journal, Scan) {
        let scan = scan(&map, g);
        let (mut half, mut generation, mut next_slot) =
            (scan.half, scan.generation, scan.used_slots);
        if generation == 0 {
            // A new journal, or one whose headers are both damaged (the
            // caller sees `lost`): start over from a blank area, so no
            // older record can be taken for one of the new generation.
            map.fill(0);
            (half, generation, next_slot) = (0, 1, 0);
            let o = g.half_offset(0);
            map[o..o + HALF_HEADER_BYTES].copy_from_slice(&encode_half(g, 1, 0, 0));
        }
        map[..CONTROL_FIELDS_BYTES].copy_from_slice(&encode_control(&boot_id()));
        let inner = Inner {
            map,
            half,
            generation,
            next_slot,
            next_seq: scan.records.iter().map(|r| r.seq + 1).max().unwrap_or(1),
        };
        let journal = Journal {
            geometry: g,
            used_slots: AtomicU64::new(u64::from(next_slot)),
            inner: Mutex::new(inner),
        };
        (journal, scan)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn geometry(&self) -> JournalGeometry {
        self.geometry
    }

    /// Records in the live half (live and not yet compacted away).
    pub fn records(&self) -> u64 {
        // Relaxed: a gauge.
        self.used_slots.load(Ordering::Relaxed)
    }

    /// Bytes of the live half's slots in use.
    pub fn bytes_used(&self) -> u64 {
        self.records() * u64::from(self.geometry.slot_bytes)
    }

    /// Bytes of records the live half can hold.
    pub fn bytes_cap(&self) -> u64 {
        self.geometry.bytes_cap()
    }

    /// Append `records` (their `seq` is set here) to the live half: all of
    /// them, or none when they do not fit. When this returns Ok the bytes
    /// are in the mapped file (see the module doc for what survives what).
    pub fn append(&self, records: &mut [Record]) -> Result<(), JournalFull> {
        let g = self.geometry;
        let mut inner = self.lock();
        let fits = records
            .iter()
            .all(|r| r.payload.len() <= g.payload_bytes_max());
        if !fits || u64::from(inner.next_slot) + records.len() as u64 > u64::from(g.slots) {
            return Err(JournalFull);
        }
        let (half, generation) = (inner.half, inner.generation);
        for r in records.iter_mut() {
            r.seq = inner.next_seq;
            inner.next_seq += 1;
            let o = g.slot_offset(half, inner.next_slot);
            let slot = &mut inner.map[o..o + g.slot_bytes as usize];
            let written = encode_record(generation, r, slot);
            debug_assert!(written, "checked above");
            inner.next_slot += 1;
        }
        // SeqCst: the record bytes are stored before anything the caller
        // does next (applying the ban, answering).
        fence(Ordering::SeqCst);
        // Relaxed: a gauge.
        self.used_slots
            .store(u64::from(inner.next_slot), Ordering::Relaxed);
        Ok(())
    }

    /// Rewrite the journal to hold exactly `live` (their `seq` is set here,
    /// in order) and `floor_secs`, crash-safe: written to the other half,
    /// which becomes live only when its header is whole.
    pub fn compact(&self, live: &mut [Record], floor_secs: u64) -> Result<(), JournalFull> {
        let g = self.geometry;
        if live.len() > g.slots as usize
            || live.iter().any(|r| r.payload.len() > g.payload_bytes_max())
        {
            return Err(JournalFull);
        }
        let mut inner = self.lock();
        let target = 1 - inner.half;
        let generation = inner.generation + 1;
        for (i, r) in live.iter_mut().enumerate() {
            r.seq = inner.next_seq;
            inner.next_seq += 1;
            let o = g.slot_offset(target, i as u32);
            let slot = &mut inner.map[o..o + g.slot_bytes as usize];
            let written = encode_record(generation, r, slot);
            debug_assert!(written, "checked above");
        }
        // SeqCst: every record of the new half is stored before its header
        // (the commit point).
        fence(Ordering::SeqCst);
        let o = g.half_offset(target);
        let header = encode_half(g, generation, floor_secs, live.len() as u32);
        inner.map[o..o + HALF_HEADER_BYTES].copy_from_slice(&header);
        // SeqCst: the commit is stored before later appends to the half.
        fence(Ordering::SeqCst);
        inner.half = target;
        inner.generation = generation;
        inner.next_slot = live.len() as u32;
        // Relaxed: a gauge.
        self.used_slots
            .store(u64::from(inner.next_slot), Ordering::Relaxed);
        Ok(())
    }

    /// Write the journal's pages to the file (a clean close flushes the
    /// whole store file anyway).
    pub fn flush(&self) -> io::Result<()> {
        self.lock().map.flush()
    }

    /// The journal area as it stands (tests).
    #[cfg(test)]
    fn snapshot(&self) -> Vec<u8> {
        self.lock().map.to_vec()
    }

    /// A copy of this journal's bytes opened again, as a restart after
    /// the death of the process would (tests).
    #[cfg(test)]
    pub(crate) fn reopened(&self) -> (Journal, Scan) {
        let mut map = MmapMut::map_anon(self.geometry.region_bytes() as usize).expect("map");
        map.copy_from_slice(&self.snapshot());
        Journal::from_map(map, self.geometry)
    }
}

/// What `ringcache inspect` shows of a journal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalInspection {
    pub generation: u64,
    pub entries: u64,
    pub dropped: u64,
    pub bytes_used: u64,
    pub bytes_cap: u64,
    pub floor_secs: u64,
}

/// Inspect a journal area of geometry `g` without changing it.
pub fn inspect(area: &[u8], g: JournalGeometry) -> JournalInspection {
    let s = scan(area, g);
    JournalInspection {
        generation: s.generation,
        entries: s.records.len() as u64,
        dropped: s.dropped,
        bytes_used: u64::from(s.used_slots) * u64::from(g.slot_bytes),
        bytes_cap: g.bytes_cap(),
        floor_secs: s.floor_secs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const G: JournalGeometry = JournalGeometry {
        slot_bytes: 128,
        slots: 8,
    };

    fn rec(kind: u8, t: u64, payload: &[u8]) -> Record {
        Record {
            seq: 0,
            kind,
            created_secs: t,
            retire_secs: t + 60,
            payload: payload.to_vec(),
        }
    }

    fn reopen(j: &Journal) -> (Journal, Scan) {
        j.reopened()
    }

    #[test]
    fn geometry_sizes() {
        let g = JournalGeometry::for_records(1024, 1100);
        assert!(g.is_valid());
        assert_eq!(g.slot_bytes % 64, 0);
        assert!(g.payload_bytes_max() >= 1100);
        assert_eq!(g.region_bytes() % 4096, 0);
        assert!(g.region_bytes() >= CONTROL_BYTES + 2 * 1025 * u64::from(g.slot_bytes));
        assert_eq!(JournalGeometry::NONE.region_bytes(), 0);
        assert!(JournalGeometry::NONE.is_valid());
    }

    #[test]
    fn appends_survive_a_reopen_and_torn_last_records_are_dropped() {
        let (j, s) = Journal::anonymous(G).unwrap();
        assert!(s.blank && !s.lost);
        let mut a = [rec(1, 100, b"/a"), rec(2, 101, b"/b/")];
        j.append(&mut a).unwrap();
        assert_eq!((a[0].seq, a[1].seq), (1, 2));
        assert_eq!(j.records(), 2);
        let (j2, s) = reopen(&j);
        assert_eq!(s.records, a.to_vec());
        assert_eq!((s.dropped, s.lost), (0, false));
        assert!(!s.booted_since(&boot_id()));
        // The last record torn: dropped, not a lost acknowledgement.
        let mut snap = j2.snapshot();
        let o = G.slot_offset(s.half, 1);
        snap[o + 41] ^= 0xff;
        let s = scan(&snap, G);
        assert_eq!(s.records, a[..1].to_vec());
        assert_eq!((s.dropped, s.lost), (1, false));
        // The first damaged: a record was lost after its acknowledgement.
        let mut snap = j2.snapshot();
        let o = G.slot_offset(s.half, 0);
        snap[o + 20] ^= 1;
        let s = scan(&snap, G);
        assert_eq!(s.records, a[1..].to_vec());
        assert_eq!((s.dropped, s.lost), (1, true));
    }

    #[test]
    fn full_journals_refuse_whole_appends() {
        let (j, _) = Journal::anonymous(G).unwrap();
        let mut six: Vec<Record> = (0..6).map(|i| rec(1, i, b"/x")).collect();
        j.append(&mut six).unwrap();
        let mut three: Vec<Record> = (0..3).map(|i| rec(1, i, b"/y")).collect();
        assert_eq!(j.append(&mut three), Err(JournalFull));
        assert_eq!(j.records(), 6);
        let mut big = [rec(1, 0, &[b'a'; 100])];
        assert_eq!(j.append(&mut big), Err(JournalFull));
        let mut live = [rec(3, 7, b"")];
        j.compact(&mut live, 5).unwrap();
        assert_eq!(j.records(), 1);
        let (_, s) = reopen(&j);
        assert_eq!(s.records, live.to_vec());
        assert_eq!(s.floor_secs, 5);
    }

    #[test]
    fn a_compaction_cut_short_leaves_the_old_half() {
        let (j, _) = Journal::anonymous(G).unwrap();
        let mut a: Vec<Record> = (0..4).map(|i| rec(1, i, b"/old")).collect();
        j.append(&mut a).unwrap();
        let before = j.snapshot();
        let mut live = vec![rec(1, 3, b"/old")];
        j.compact(&mut live, 2).unwrap();
        let after = j.snapshot();
        // Any prefix of the compaction's writes: the old half whole, or
        // (header written) the new half whole.
        let target = G.half_offset(1);
        let header_at = target..target + HALF_HEADER_BYTES;
        let mut torn = before.clone();
        for (i, b) in after.iter().enumerate() {
            if !header_at.contains(&i) {
                torn[i] = *b;
            }
        }
        let s = scan(&torn, G);
        assert_eq!((s.records, s.lost), (a.clone(), false));
        // A header cut in the middle of its copy: the old half, and the
        // caller is told a loss is possible.
        let mut half_header = torn.clone();
        half_header[target..target + 30].copy_from_slice(&after[target..target + 30]);
        let s = scan(&half_header, G);
        assert_eq!((s.records, s.lost), (a, true), "a torn header");
        assert_eq!(scan(&after, G).records, live);
        // Appends after the compaction go to the new half.
        let mut more = [rec(2, 9, b"/new")];
        j.append(&mut more).unwrap();
        let (_, s) = reopen(&j);
        assert_eq!(s.records, vec![live[0].clone(), more[0].clone()]);
    }

    #[test]
    fn damaged_headers_are_a_loss_and_start_over_blank() {
        let (j, _) = Journal::anonymous(G).unwrap();
        j.append(&mut [rec(1, 1, b"/a")]).unwrap();
        let mut snap = j.snapshot();
        let o = G.half_offset(0);
        snap[o + 9] ^= 1;
        let s = scan(&snap, G);
        assert!(s.lost && s.records.is_empty() && !s.blank);
        let mut map = MmapMut::map_anon(G.region_bytes() as usize).unwrap();
        map.copy_from_slice(&snap);
        let (j2, _) = Journal::from_map(map, G);
        let (_, s) = reopen(&j2);
        assert!(!s.lost && s.records.is_empty());
        // Another boot's id in the control block.
        let mut snap = j.snapshot();
        snap[10] ^= 1;
        let crc = crc32c::crc32c(&snap[..44]);
        snap[44..48].copy_from_slice(&crc.to_le_bytes());
        assert!(scan(&snap, G).booted_since(&boot_id()));
    }

    proptest! {
        #[test]
        fn records_round_trip(
            kind in any::<u8>(),
            gen in 1u64..,
            created in any::<u64>(),
            retire in any::<u64>(),
            payload in proptest::collection::vec(any::<u8>(), 0..88),
            flip in 0usize..128,
        ) {
            let r = Record { seq: 7, kind, created_secs: created, retire_secs: retire, payload };
            let mut slot = [0u8; 128];
            prop_assert!(encode_record(gen, &r, &mut slot));
            prop_assert_eq!(decode_record(gen, &slot), SlotState::Good(r.clone()));
            prop_assert_eq!(decode_record(gen + 1, &slot), SlotState::Empty);
            // Any flipped bit of the record is caught, never misread.
            let n = RECORD_HEADER_BYTES + r.payload.len();
            if flip < n {
                let mut bad = slot;
                bad[flip] ^= 0x10;
                let got = decode_record(gen, &bad);
                let caught = matches!(got, SlotState::Bad | SlotState::Empty);
                prop_assert!(caught, "{:?}", got);
            }
        }

        /// Damage anywhere (random bytes overwritten in a journal that
        /// holds records): the scan never panics and every record it
        /// returns is one that was written, whole.
        #[test]
        fn damage_is_dropped_never_misread(
            hits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..64),
            compact in any::<bool>(),
        ) {
            let (j, _) = Journal::anonymous(G).unwrap();
            let mut written: Vec<Record> = (0..6u8)
                .map(|i| rec(i, u64::from(i), &vec![b'a' + i; usize::from(i) * 13]))
                .collect();
            j.append(&mut written).unwrap();
            // Every record ever written, under each sequence it had.
            let mut ever = written.clone();
            if compact {
                j.compact(&mut written[..3], 4).unwrap();
                let mut more: Vec<Record> = (6..8u8).map(|i| rec(i, 9, b"/m")).collect();
                j.append(&mut more).unwrap();
                ever.extend(written[..3].iter().cloned());
                ever.extend(more);
            }
            let mut bytes = j.snapshot();
            for (at, b) in hits {
                let i = at % bytes.len();
                bytes[i] = b;
            }
            let s = scan(&bytes, G);
            for r in &s.records {
                prop_assert!(ever.contains(r), "misread: {:?}", r);
            }
        }

        /// Appends and compactions against a plain model: a reopen reads
        /// back exactly the model's records.
        #[test]
        fn appends_and_compactions_match_a_model(ops in proptest::collection::vec((0u8..3, 1usize..4), 1..40)) {
            let (j, _) = Journal::anonymous(G).unwrap();
            let mut model: Vec<Record> = Vec::new();
            let mut floor = 0;
            let mut t = 0;
            for (op, n) in ops {
                t += 1;
                match op {
                    0 | 1 => {
                        let mut recs: Vec<Record> = (0..n).map(|i| rec(op, t, &vec![b'p'; i])).collect();
                        let room = model.len() + n <= G.slots as usize;
                        let r = j.append(&mut recs);
                        prop_assert_eq!(r.is_ok(), room);
                        if room {
                            model.extend(recs);
                        }
                    }
                    _ => {
                        // Keep every other record, raise the floor.
                        let mut live: Vec<Record> = model.iter().step_by(2).cloned().collect();
                        floor = t;
                        j.compact(&mut live, floor).unwrap();
                        model = live;
                    }
                }
                let (_, s) = reopen(&j);
                prop_assert_eq!(&s.records, &model);
                prop_assert_eq!(s.floor_secs, floor);
                prop_assert!(!s.lost);
            }
        }
    }
}
