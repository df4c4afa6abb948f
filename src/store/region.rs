//! The mapped region: a file or anonymous memory, one code path.
//!
//! The region is reached only through offsets checked against its length.
//! Three kinds of access, each with its own rule:
//! - atomics at aligned offsets (index slots, chunk link words), any time;
//! - plain byte copies into a chunk, by the one thread that owns it (popped
//!   from the free list, not yet published);
//! - plain byte reads of a published chunk, while the reader holds a pin
//!   or the shard lock that keeps it from being retired (see `epoch`).

use crate::sync::mapped::{AtomicU32, AtomicU64};
use memmap2::{MmapMut, MmapOptions};
use std::fs::File;
use std::io;
use std::path::Path;

pub struct Region {
    map: MmapMut,
    base: *mut u8,
    len: usize,
}

// SAFETY: the region is plain shared memory; every access goes through the
// rules in the module doc (atomics, or byte copies ordered by the index and
// grace-period protocol), so sharing the pointer across threads is sound.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

impl Region {
    /// Zeroed anonymous memory of `len` bytes.
    pub fn anonymous(len: usize) -> io::Result<Region> {
        let map = MmapOptions::new().len(len).map_anon()?;
        Ok(Region::from_map(map))
    }

    /// Map `file`, which must already be `len` bytes long.
    pub fn file(file: &File, len: usize) -> io::Result<Region> {
        // SAFETY: the store file is ours alone (a single ringcache process
        // opens it); no other process truncates or writes it while mapped,
        // which is the condition under which a shared file map is sound.
        // Populate: the recovery scan reads every chunk's link word, so
        // fault the whole file in at once rather than page by page.
        let map = unsafe { MmapOptions::new().len(len).populate().map_mut(file)? };
        Ok(Region::from_map(map))
    }

    /// Create or open the file at `path` as `len` bytes. Returns the file
    /// and whether it was new (empty before).
    pub fn create_or_open(path: &Path, len: u64) -> io::Result<(File, bool)> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let fresh = file.metadata()?.len() == 0;
        if fresh {
            file.set_len(len)?;
        }
        Ok((file, fresh))
    }

    fn from_map(mut map: MmapMut) -> Region {
        let base = map.as_mut_ptr();
        let len = map.len();
        Region { map, base, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    fn check(&self, off: usize, len: usize, align: usize) {
        assert!(
            off.checked_add(len).is_some_and(|end| end <= self.len) && off % align == 0,
            "region access out of bounds or misaligned"
        );
    }

    /// The u64 atomic at `off` (8-aligned).
    #[inline]
    pub fn atomic_u64(&self, off: usize) -> &AtomicU64 {
        self.check(off, 8, 8);
        // SAFETY: in bounds and aligned (checked); the mapping lives as long
        // as `self`; AtomicU64 has the layout of u64 and mapped memory is
        // only ever accessed atomically at slot offsets.
        unsafe { &*(self.base.add(off) as *const AtomicU64) }
    }

    /// The u32 atomic at `off` (4-aligned).
    #[inline]
    pub fn atomic_u32(&self, off: usize) -> &AtomicU32 {
        self.check(off, 4, 4);
        // SAFETY: as for atomic_u64; link words are only accessed atomically.
        unsafe { &*(self.base.add(off) as *const AtomicU32) }
    }

    /// Copy `src` into the region at `off`.
    ///
    /// # Safety
    /// No other thread reads or writes `off .. off + src.len()` during the
    /// call: the caller owns the chunk (popped, unpublished).
    #[inline]
    pub unsafe fn write(&self, off: usize, src: &[u8]) {
        self.check(off, src.len(), 1);
        // SAFETY: in bounds (checked); exclusive per the contract above.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.base.add(off), src.len()) }
    }

    /// The bytes at `off .. off + len`.
    ///
    /// # Safety
    /// Nobody writes those bytes while the slice lives: the item is
    /// published and the caller is pinned or holds the shard lock.
    #[inline]
    pub unsafe fn bytes(&self, off: usize, len: usize) -> &[u8] {
        self.check(off, len, 1);
        // SAFETY: in bounds (checked); immutable per the contract above.
        unsafe { std::slice::from_raw_parts(self.base.add(off), len) }
    }

    /// Write the mapped pages to the file (no-op for anonymous memory).
    pub fn flush(&self) -> io::Result<()> {
        self.map.flush()
    }
}
