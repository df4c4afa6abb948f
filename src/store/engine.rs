//! The segment store: index, items in chunk chains, grace periods, eviction.
//!
//! Index slot (u64, in the region, see `layout`):
//! ```text
//!  63  62  61  60     48 47        32 31                 0
//! ┌───┬───┬─────┬───────┬────────────┬────────────────────┐
//! │REF│CLK│STALE│ zero  │ tag (16 b) │ first chunk id + 1 │   0 in the low half = empty
//! └───┴───┴─────┴───────┴────────────┴────────────────────┘
//! ```
//! `hash & 63` picks the shard. A key may live in two buckets of its shard
//! (each one cache line of 8 slots): its first bucket, picked by hash bits
//! 6 and up, and its alternate, picked by bits 27 and up (another bucket
//! whenever the shard has more than one). The top 16 bits are the tag.
//! Entry `e` of a shard's policy is `bucket × 8 + way`. REF marks a slot
//! whose hit is queued for the policy; CLK (bit 62) is the referenced bit
//! of a policy that keeps it in the slot (`Policy::SLOT_BIT`: CLOCK-Pro, the
//! store's policy, and CLOCK): a hit sets it once, a hand clears it. STALE
//! exists only while recovery runs (below).
//!
//! Two choices: an insert of a new key takes a free slot in the emptier of
//! its two buckets (the first on a tie). With 8-slot buckets that keeps
//! every insert placed at index loads well above what `layout` sizes the
//! index for (one slot per 512 bytes of budget): with one bucket per key,
//! 0.64 % of keys found their bucket full at 48 % load. Items never move
//! between slots, and a key is in at most one slot (an insert looks for it
//! in both buckets, under the shard lock, before it picks a free slot).
//!
//! When objects are small the index fills before the bytes do (an item of
//! one 256-byte chunk against 512 bytes of budget per slot). A shard
//! therefore holds at most 15/16 of its slots ([`SHARD_ITEMS_SIXTEENTHS`]):
//! a new key in a shard at that limit first has the policy evict (an
//! expired item if the bounded sweep finds one, else the hands' victim),
//! exactly as when the bytes run out. The index keeps free slots in most
//! bucket pairs, so the policy, not the bucket, chooses what leaves. Only
//! when both buckets of the new key are still full does the policy's
//! coldest entry of the sixteen give way, a counted eviction. Without the
//! limit the index ran full and nearly every insert took that path: on the
//! traces in `shared/traces`, with 8-byte bodies in 2^13 slots, the store
//! missed up to 4.4 points more often than CLOCK-Pro holding as many
//! entries (25.6 points with 2^12 slots); with it, from 0.73 points fewer
//! to 0.47 more (`tests/store_traces.rs`, both regimes, 22 points). The
//! price is 1/16 of the slots when the index is the limit.
//!
//! Metadata per object, as [`Store::metadata`] counts it: every index slot
//! (8 bytes) and the policy's heap bytes per slot (27 for CLOCK-Pro, none
//! for CLOCK), whether a slot holds an item or not, plus per item its
//! header (20) and one link word (4) per chunk, over the items held. The
//! index has one slot per 512 bytes of budget, so the per-slot bytes count
//! as often as there are slots per object: 2.1 for a million 100–400 byte
//! responses in 1 GiB (100 bytes per object), about 2.7 when 1 KiB bodies
//! fill it, 16/15 when those small responses fill it (`cargo bench --bench
//! store_ops` prints all three). At one slot per single-chunk object that
//! is 59 bytes (asserted below); see `policy` for what stands between that
//! and 32.
//!
//! Insert order, and why recovery's "newest wins" holds: the chain is
//! allocated with its first chunk marked FILLING (not an item start) and
//! filled with key, head and body; under the shard lock the insert finds
//! the item it replaces, takes its sequence + 1, writes the header, marks
//! the first chunk HEAD, publishes the slot and marks the old chain
//! RETIRED. So every HEAD chunk in the region is a published item, except
//! within that locked section, where a key has two: sequences s and s + 1.
//!
//! Read protocol (`Reader::lookup`, no lock, no allocation):
//! 1. pin the reader's epoch slot;
//! 2. load each slot of the first bucket, then of the alternate (Acquire),
//!    and on a tag match read the item header and compare the key from the
//!    chunks;
//! 3. copy head and body into the caller's buffer (and check the crc32c
//!    when `verify_reads`);
//! 4. unpin.
//!
//! Why a read cannot tear: an item's chunks are written completely by the
//! inserting thread before the Release store that publishes its slot, and
//! never written again while reachable. Replacing, removing or evicting an
//! item only swaps the slot and retires the chain; retired chunks return to
//! the free list only after a grace period (`epoch`), so every byte a pinned
//! reader copies belongs to the one item whose slot value it loaded. A
//! reader that loads the new slot value sees the new item whole (Acquire
//! pairs with the publishing Release); one that loaded the old value copies
//! the old item whole. There is no third case. Two buckets change none of
//! this: each slot is loaded and judged on its own, and an item stays in
//! the slot it was published in until it is unlinked, so a lookup that
//! races an insert either finds the new item whole or misses it, as with
//! one bucket.
//!
//! Recovery (`recover`, at open) rebuilds the index from the chunks: every
//! HEAD chunk whose chain and crc32c check out is an item; of two versions
//! of a key the newer sequence wins. The old index words are used only as
//! hints: each is kept with STALE set, an intact item goes back to a slot
//! of its own bucket pair that names its chunk under its tag (so the
//! arrangement the inserts found is found again, including items in their
//! alternate bucket), and any word still STALE at the end is cleared. An
//! item without a hint takes a slot as an insert would, preferring slots
//! no later chunk's hint names.
//!

//! Writers (insert, remove, eviction) take the shard's mutex for the index
//! update and the policy only: item bytes are copied into freshly allocated
//! chunks before the lock. Allocation is lock-free (`slab`); when it finds
//! no chunk it first lets grace periods end, then evicts (expired items in
//! a bounded sweep first, then the policy's victims), moving to the next
//! shard when one has nothing to give.

use super::clockpro::ClockProStats;
use super::epoch::Epochs;
use super::item::{
    seq_newer, Hit, ItemHeader, ItemMeta, HEAD_BYTES_MAX, ITEM_HEADER_BYTES, KEY_BYTES_MAX,
};
use super::journal::JournalGeometry;
use super::layout::{
    FileHeader, Layout, LayoutError, BUCKET_SLOTS, BUDGET_BYTES_PER_SLOT, CHUNK_BYTES_DEFAULT,
    FORMAT_VERSION, HEADER_BYTES, HEADER_FIELDS_BYTES, HEAP_FIXED_BYTES, LINK_BYTES,
    SEGMENT_BYTES_DEFAULT, SHARDS_COUNT, SLOTS_COUNT_BITS_MAX, SLOT_BYTES,
};
use super::policy::{Clock, ClockPro, Policy, SlotBits};
use super::region::Region;
use super::slab::{
    link_kind, link_next, link_word, Links, Slab, KIND_CONT, KIND_FILLING, KIND_FREE, KIND_HEAD,
    KIND_RETIRED, NONE,
};
use crate::sync::mapped;
use crate::sync::{spin_hint, Arc, AtomicU32, AtomicU64, Mutex, MutexGuard, Ordering};
use crossbeam_utils::CachePadded;
use std::cell::Cell;
use std::fmt;
use std::fs::File;
use std::marker::PhantomData;
use std::path::Path;

/// Touches queued per shard between two writers.
pub const TOUCH_BUFFER_COUNT: usize = 32;
/// Tries to find chunks for one insert before giving up.
pub const ALLOC_ATTEMPTS_MAX: usize = 512;
/// Slots the expiry sweep looks at per eviction.
pub const SWEEP_SLOTS_MAX: u32 = 16;
/// Largest item, as a fraction of the chunks: 1 / this.
pub const ITEM_CHUNKS_FRACTION: u32 = 8;
/// Items a shard holds at most, in sixteenths of its slots. A new key in a
/// full shard makes room through the policy first, so the index keeps free
/// slots and the policy's hands, not a bucket's coldest entry, choose
/// what leaves when objects are small enough for the index to fill first.
pub const SHARD_ITEMS_SIXTEENTHS: u32 = 15;
/// Victims one insert may take to bring its shard under that limit (more
/// than one only after a start that recovered more items than it allows).
const ROOM_PER_INSERT_MAX: u32 = 2;

const REF_BIT: u64 = 1 << 63;
const CLOCK_BIT: u64 = 1 << 62;
/// Set only during recovery, on a slot still holding the file's old
/// index word: a hint where the item it names sat before the restart.
const STALE_BIT: u64 = 1 << 61;

/// Hash bits 0..6 pick the shard, the bits from here the first bucket.
const FIRST_BUCKET_SHIFT: u32 = 6;
/// The bits from here pick the alternate bucket: independent of the first
/// bucket's bits and below the tag's (48..64) for every layout.
const ALTERNATE_BUCKET_SHIFT: u32 = 27;
/// Most buckets a shard can have, as a bit count.
const SHARD_BUCKET_BITS_MAX: u32 =
    SLOTS_COUNT_BITS_MAX - SHARDS_COUNT.trailing_zeros() - BUCKET_SLOTS.trailing_zeros();
const _: () = assert!(SHARDS_COUNT.trailing_zeros() <= FIRST_BUCKET_SHIFT);
const _: () = assert!(FIRST_BUCKET_SHIFT + SHARD_BUCKET_BITS_MAX <= ALTERNATE_BUCKET_SHIFT);
const _: () = assert!(ALTERNATE_BUCKET_SHIFT + SHARD_BUCKET_BITS_MAX <= 48);

/// Metadata per (single-chunk) object with the store's policy, CLOCK-Pro,
/// counting one index slot per object: a floor, over the 32-byte target by
/// its nodes and test table (see `policy`). The true figure, all slots
/// counted over the objects held, is [`Metadata::bytes_per_object`].
pub const METADATA_BYTES_PER_OBJECT: usize =
    SLOT_BYTES + LINK_BYTES + ITEM_HEADER_BYTES + <ClockPro as Policy>::ENTRY_BYTES;
const _: () = assert!(METADATA_BYTES_PER_OBJECT == 59);
/// The same with CLOCK, whose whole state is CLK: the 32-byte target.
pub const METADATA_BYTES_PER_OBJECT_CLOCK: usize =
    SLOT_BYTES + LINK_BYTES + ITEM_HEADER_BYTES + <Clock as Policy>::ENTRY_BYTES;
const _: () = assert!(METADATA_BYTES_PER_OBJECT_CLOCK <= 32);
const LOW_MASK: u64 = 0xffff_ffff;
const TAG_MASK: u64 = 0xffff << 32;

#[inline]
fn slot_word(tag: u16, chunk: u32) -> u64 {
    u64::from(tag) << 32 | (u64::from(chunk) + 1)
}
#[inline]
fn slot_chunk(v: u64) -> Option<u32> {
    let low = v & LOW_MASK;
    (low != 0).then(|| (low - 1) as u32)
}
#[inline]
fn slot_tag(v: u64) -> u16 {
    (v >> 32) as u16
}
/// Items ahead of the recovery scan whose index buckets are prefetched.
const RECOVERY_PREFETCH_ITEMS: usize = 16;

/// Asks the CPU to bring the cache line holding `at` in; no other effect.
#[inline]
fn prefetch<T>(at: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch neither faults nor writes, whatever the address;
    // SSE, which it needs, is part of every x86_64 CPU.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((at as *const T).cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// Is entry `e` in the bucket that starts at entry `first`?
#[inline]
fn in_bucket(first: u32, e: u32) -> bool {
    (first..first + BUCKET_SLOTS as u32).contains(&e)
}
#[inline]
fn hash_tag(hash: u64) -> u16 {
    (hash >> 48) as u16
}

/// Tunables with defaults; all go into the file header except the last two.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub segment_bytes: usize,
    pub chunk_bytes: usize,
    /// Reader handles (one per worker thread).
    pub readers_max: usize,
    /// Seconds an item is kept past its freshness before the sweep takes it
    /// ahead of live items (room for stale-while-revalidate).
    pub stale_keep_secs: u32,
    /// Check every hit's crc32c (the grace-period protocol already rules
    /// out tearing; this is a belt for tests and paranoid deployments).
    pub verify_reads: bool,
    /// Budget bytes per index slot: the index has one slot per this many
    /// bytes, and a shard holds at most 15/16 of its slots, whatever room
    /// the bytes have left (see `layout::Layout::compute_sized`).
    pub budget_bytes_per_slot: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            chunk_bytes: CHUNK_BYTES_DEFAULT,
            readers_max: 128,
            stale_keep_secs: 0,
            verify_reads: cfg!(debug_assertions),
            budget_bytes_per_slot: BUDGET_BYTES_PER_SLOT,
        }
    }
}

/// Why a store could not be opened.
#[derive(Debug)]
pub enum OpenError {
    Io(std::io::Error),
    Layout(LayoutError),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Io(e) => write!(f, "store file: {e}"),
            OpenError::Layout(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for OpenError {}

impl From<std::io::Error> for OpenError {
    fn from(e: std::io::Error) -> Self {
        OpenError::Io(e)
    }
}
impl From<LayoutError> for OpenError {
    fn from(e: LayoutError) -> Self {
        OpenError::Layout(e)
    }
}

/// Figures from the open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovery {
    /// The file existed (false: created or anonymous).
    pub reused: bool,
    /// Its clean flag was set.
    pub was_clean: bool,
    pub items_recovered: u64,
    /// Items dropped: torn, bad checksum, broken chain, or an older version.
    pub items_dropped: u64,
    /// The file was refused and rebuilt cold ([`Store::open_reset`]).
    pub was_reset: bool,
    /// How long the open took: header checks, mapping, and the recovery
    /// scan of a reused file.
    pub open_time: std::time::Duration,
}

/// What `usage` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Bytes in chunks held by items.
    pub item_bytes: u64,
    pub items: u64,
    /// The cap given at open (region + charged heap ≤ this).
    pub bytes_max: u64,
    pub evictions: u64,
    /// Of `evictions`, those made because the index, not the bytes, was
    /// full: a shard at its item limit, or both buckets of a key full.
    pub index_evictions: u64,
    pub expirations: u64,
    /// Index slots, all shards.
    pub index_slots: u64,
    /// Chunks waiting for a grace period.
    pub pending_chunks: u64,
}

/// Every byte the store keeps beyond keys and responses, by where it lives
/// ([`Store::metadata`]). Index and policy bytes are fixed at open (one
/// slot per `BUDGET_BYTES_PER_SLOT` of budget, whatever the objects);
/// header and link bytes grow with the items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metadata {
    /// Index slots, in the region.
    pub index_bytes: u64,
    /// The policy's heap: `P::ENTRY_BYTES` per index slot.
    pub policy_bytes: u64,
    /// Heap bookkeeping besides the policy (`HEAP_FIXED_BYTES`).
    pub fixed_heap_bytes: u64,
    /// One item header per item.
    pub item_header_bytes: u64,
    /// One link word per chunk held by an item.
    pub link_bytes: u64,
    pub slots: u64,
    pub items: u64,
}

impl Metadata {
    pub fn total_bytes(&self) -> u64 {
        self.index_bytes
            + self.policy_bytes
            + self.fixed_heap_bytes
            + self.item_header_bytes
            + self.link_bytes
    }

    /// The true figure: all metadata bytes over the items held (`None`
    /// while the store is empty).
    pub fn bytes_per_object(&self) -> Option<f64> {
        (self.items > 0).then(|| self.total_bytes() as f64 / self.items as f64)
    }

    /// Index slots per item held: what the per-slot costs are multiplied by.
    pub fn slots_per_object(&self) -> Option<f64> {
        (self.items > 0).then(|| self.slots as f64 / self.items as f64)
    }
}

impl fmt::Display for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per = |b: u64| b as f64 / self.items.max(1) as f64;
        write!(
            f,
            "{:.1} B/object over {} objects ({:.2} slots/object): index {:.1}, policy {:.1}, \
             fixed heap {:.1}, item headers {:.1}, link words {:.1}",
            per(self.total_bytes()),
            self.items,
            self.slots as f64 / self.items.max(1) as f64,
            per(self.index_bytes),
            per(self.policy_bytes),
            per(self.fixed_heap_bytes),
            per(self.item_header_bytes),
            per(self.link_bytes),
        )
    }
}

struct ShardState<P> {
    policy: P,
    victims: Vec<u32>,
    sweep_hand: u32,
}

struct Shard<P> {
    state: Mutex<ShardState<P>>,
    touched: [AtomicU32; TOUCH_BUFFER_COUNT],
    touched_len: AtomicU32,
    /// Items in the shard's slots. Changed under the shard lock; Relaxed.
    items: AtomicU32,
}

/// The segment store. Share it in an `Arc`; each worker takes a [`Reader`].
pub struct Store<P: Policy = ClockPro> {
    region: Region,
    layout: Layout,
    slab: Slab,
    epochs: Epochs,
    shards: Box<[CachePadded<Shard<P>>]>,
    options: Options,
    budget_bytes: u64,
    /// Items one shard holds at most (see [`SHARD_ITEMS_SIXTEENTHS`]).
    shard_items_max: u32,
    file: Option<File>,
    /// Latest insert clock seen (Unix seconds): the expiry sweep's "now",
    /// so one insert carrying a stale clock cannot hold expiry back.
    clock_secs: AtomicU32,
    reset_reason: Option<LayoutError>,
    items: AtomicU64,
    chunks_used: AtomicU64,
    evictions: AtomicU64,
    index_evictions: AtomicU64,
    expirations: AtomicU64,
    recovery: Recovery,
}

impl<P: Policy> Links for Store<P> {
    #[inline]
    fn link(&self, chunk: u32) -> &mapped::AtomicU32 {
        self.region.atomic_u32(self.layout.chunk_offset(chunk))
    }
}

/// Drops the pin on every exit path.
struct Pin<'a> {
    epochs: &'a Epochs,
    slot: usize,
}

impl<'a> Pin<'a> {
    fn new(epochs: &'a Epochs, slot: usize) -> Pin<'a> {
        epochs.pin(slot);
        Pin { epochs, slot }
    }
}

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        self.epochs.unpin(self.slot);
    }
}

/// A worker's read handle: owns one epoch slot. `!Sync`: one thread at a time.
pub struct Reader<P: Policy = ClockPro> {
    store: Arc<Store<P>>,
    slot: usize,
    _not_sync: PhantomData<Cell<()>>,
}

impl<P: Policy> Drop for Reader<P> {
    fn drop(&mut self) {
        self.store.epochs.unregister(self.slot);
    }
}

impl<P: Policy> Reader<P> {
    pub fn store(&self) -> &Arc<Store<P>> {
        &self.store
    }

    /// Look `key` up; on a hit, append the head to `out`, call `between`
    /// (to append fields that go between head and body; it returns whether
    /// the body is wanted), then append the body. On a miss `out` is as it
    /// was. Never allocates unless `out` must grow.
    pub fn lookup(
        &self,
        hash: u64,
        key: &[u8],
        out: &mut Vec<u8>,
        between: impl FnOnce(&mut Vec<u8>, &Hit) -> bool,
    ) -> Option<Hit> {
        self.store.lookup_pinned(self.slot, hash, key, out, between)
    }

    /// Look up and append head then body.
    pub fn lookup_into(&self, hash: u64, key: &[u8], out: &mut Vec<u8>) -> Option<Hit> {
        self.lookup(hash, key, out, |_, _| true)
    }
}

/// A shard's slots as a `SLOT_BIT` policy sees them (under the shard lock).
struct ShardSlots<'a, P: Policy> {
    store: &'a Store<P>,
    shard: usize,
}

impl<P: Policy> SlotBits for ShardSlots<'_, P> {
    fn entries(&self) -> u32 {
        self.store.layout.shard_slots()
    }

    fn resident(&self, e: u32) -> bool {
        // Relaxed: under the shard lock; only hint bits change concurrently.
        slot_chunk(self.store.slot(self.shard, e).load(Ordering::Relaxed)).is_some()
    }

    fn take_referenced(&self, e: u32) -> bool {
        // Relaxed: clearing a hint.
        self.store
            .slot(self.shard, e)
            .fetch_and(!CLOCK_BIT, Ordering::Relaxed)
            & CLOCK_BIT
            != 0
    }

    fn referenced(&self, e: u32) -> bool {
        // Relaxed: reading a hint.
        self.store.slot(self.shard, e).load(Ordering::Relaxed) & CLOCK_BIT != 0
    }

    fn key_hash(&self, e: u32) -> Option<u64> {
        // Relaxed: under the shard lock, which every writer of the slot holds.
        let chunk = slot_chunk(self.store.slot(self.shard, e).load(Ordering::Relaxed))?;
        let mut hasher = super::KeyHasher::new();
        // SAFETY: published in our locked shard: no one retires the chain
        // while we read its header and key.
        unsafe {
            let (h, mut cur) = self.store.header_at(chunk);
            self.store.visit(&mut cur, h.key_len, |b| hasher.write(b));
        }
        Some(hasher.finish())
    }
}

/// A position in an item's logical bytes.
#[derive(Clone, Copy)]
struct Cursor {
    chunk: u32,
    pos: usize,
}

impl Store {
    /// A store in anonymous memory with default options.
    pub fn anonymous(bytes: u64) -> Result<Store, OpenError> {
        Store::anonymous_with(bytes, Options::default())
    }
}

impl<P: Policy> Store<P> {
    /// A store in anonymous memory.
    pub fn anonymous_with(bytes: u64, options: Options) -> Result<Store<P>, OpenError> {
        let layout = Layout::compute_sized(
            bytes,
            options.segment_bytes,
            options.chunk_bytes,
            P::ENTRY_BYTES,
            JournalGeometry::NONE,
            options.budget_bytes_per_slot,
        )?;
        let region = Region::anonymous(layout.region_bytes as usize)?;
        Store::build(region, layout, bytes, options, None, None)
    }

    /// A store in the file at `path`: created and sized when missing or
    /// empty, else checked (magic, version, layout, header checksum) and
    /// recovered by a scan of every chunk. The clean flag is cleared while
    /// the store is open; [`Store::close`] sets it.
    pub fn open(path: &Path, bytes: u64, options: Options) -> Result<Store<P>, OpenError> {
        Store::open_journaled(path, bytes, options, JournalGeometry::NONE)
    }

    /// [`Store::open`] with room for an invalidation journal of `journal`
    /// in the file (part of the layout: a file with another journal
    /// geometry is refused like one with other chunks). The journal itself
    /// is opened by its user, `journal::Journal::open`.
    pub fn open_journaled(
        path: &Path,
        bytes: u64,
        options: Options,
        journal: JournalGeometry,
    ) -> Result<Store<P>, OpenError> {
        let started = std::time::Instant::now();
        let layout = Layout::compute_sized(
            bytes,
            options.segment_bytes,
            options.chunk_bytes,
            P::ENTRY_BYTES,
            journal,
            options.budget_bytes_per_slot,
        )?;
        let (file, fresh) = Region::create_or_open(path, layout.region_bytes)?;
        let mut header = None;
        if !fresh {
            let mut raw = [0u8; HEADER_FIELDS_BYTES];
            std::io::Read::read_exact(&mut &file, &mut raw)
                .map_err(|_| LayoutError::NotAStore("file shorter than a store header".into()))?;
            header = Some(FileHeader::decode(&raw, &layout)?);
            let len = file.metadata()?.len();
            if len != layout.region_bytes {
                return Err(LayoutError::Mismatch {
                    field: "file_bytes",
                    found: len,
                    expected: layout.region_bytes,
                }
                .into());
            }
        }
        let region = Region::file(&file, layout.region_bytes as usize)?;
        let mut store = Store::build(region, layout, bytes, options, Some(file), header)?;
        store.recovery.open_time = started.elapsed();
        Ok(store)
    }

    /// [`Store::open`], but a file it would refuse (not a store, a damaged
    /// header, another format version or layout) is rebuilt cold: emptied
    /// and created anew, its items lost. `Recovery::was_reset` tells, with
    /// the refusal in `reset_reason`. I/O errors still fail.
    pub fn open_reset(path: &Path, bytes: u64, options: Options) -> Result<Store<P>, OpenError> {
        Store::open_reset_journaled(path, bytes, options, JournalGeometry::NONE)
    }

    /// [`Store::open_reset`] with an invalidation journal, as
    /// [`Store::open_journaled`].
    pub fn open_reset_journaled(
        path: &Path,
        bytes: u64,
        options: Options,
        journal: JournalGeometry,
    ) -> Result<Store<P>, OpenError> {
        let started = std::time::Instant::now();
        match Store::open_journaled(path, bytes, options, journal) {
            Err(OpenError::Layout(refusal)) if !matches!(refusal, LayoutError::Invalid(_)) => {
                let file = std::fs::OpenOptions::new().write(true).open(path)?;
                file.set_len(0)?;
                file.sync_all()?;
                drop(file);
                let mut store = Store::open_journaled(path, bytes, options, journal)?;
                store.recovery.was_reset = true;
                store.recovery.open_time = started.elapsed();
                store.reset_reason = Some(refusal);
                Ok(store)
            }
            other => other,
        }
    }

    /// Why the file was rebuilt cold by [`Store::open_reset`], if it was.
    pub fn reset_reason(&self) -> Option<&LayoutError> {
        self.reset_reason.as_ref()
    }

    fn build(
        region: Region,
        layout: Layout,
        budget_bytes: u64,
        options: Options,
        file: Option<File>,
        header: Option<FileHeader>,
    ) -> Result<Store<P>, OpenError> {
        let shard_slots = layout.shard_slots();
        let shards = (0..SHARDS_COUNT)
            .map(|_| {
                CachePadded::new(Shard {
                    state: Mutex::new(ShardState {
                        policy: P::with_entries(shard_slots),
                        victims: Vec::with_capacity(64),
                        sweep_hand: 0,
                    }),
                    touched: std::array::from_fn(|_| AtomicU32::new(0)),
                    touched_len: AtomicU32::new(0),
                    items: AtomicU32::new(0),
                })
            })
            .collect();
        let reused = header.is_some();
        let carved = if reused { layout.segment_count } else { 0 };
        let mut store = Store {
            region,
            layout,
            slab: Slab::new(layout.segment_count, layout.chunks_per_segment(), carved),
            epochs: Epochs::new(options.readers_max),
            shards,
            options,
            budget_bytes,
            shard_items_max: shard_slots / 16 * SHARD_ITEMS_SIXTEENTHS,
            file,
            clock_secs: AtomicU32::new(0),
            reset_reason: None,
            items: AtomicU64::new(0),
            chunks_used: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            index_evictions: AtomicU64::new(0),
            expirations: AtomicU64::new(0),
            recovery: Recovery {
                reused,
                was_clean: header.is_some_and(|h| h.clean),
                ..Recovery::default()
            },
        };
        if reused {
            store.recover();
        }
        store.write_header(false)?;
        Ok(store)
    }

    /// Figures from the open (recovered and dropped items).
    pub fn recovery(&self) -> Recovery {
        self.recovery
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// A read handle for one worker; None when all `readers_max` are taken.
    pub fn reader(self: &Arc<Self>) -> Option<Reader<P>> {
        let slot = self.epochs.register()?;
        Some(Reader {
            store: Arc::clone(self),
            slot,
            _not_sync: PhantomData,
        })
    }

    /// Flush and mark the file clean. Call once the workers have stopped.
    pub fn close(&self) -> std::io::Result<()> {
        if self.file.is_some() {
            self.region.flush()?;
            self.write_header(true)?;
        }
        Ok(())
    }

    fn write_header(&self, clean: bool) -> std::io::Result<()> {
        if self.file.is_none() {
            return Ok(());
        }
        let mut raw = [0u8; HEADER_FIELDS_BYTES];
        FileHeader {
            version: FORMAT_VERSION,
            layout: self.layout,
            clean,
        }
        .encode(&mut raw);
        // SAFETY: the header page is written only here, by open and close,
        // which run while no other thread uses the store.
        unsafe { self.region.write(0, &raw) };
        self.region.flush()
    }

    #[inline]
    fn shard_of(hash: u64) -> usize {
        (hash as usize) & (SHARDS_COUNT - 1)
    }

    /// The first entries of the two buckets `hash` may live in: its first
    /// choice, then its alternate. The same bucket twice only when the
    /// shard has a single bucket.
    #[inline]
    fn bucket_pair(&self, hash: u64) -> [u32; 2] {
        let mask = self.layout.shard_slots() / BUCKET_SLOTS as u32 - 1;
        let first = ((hash >> FIRST_BUCKET_SHIFT) as u32) & mask;
        let mut alternate = ((hash >> ALTERNATE_BUCKET_SHIFT) as u32) & mask;
        if alternate == first {
            alternate = first ^ (1 & mask);
        }
        [first * BUCKET_SLOTS as u32, alternate * BUCKET_SLOTS as u32]
    }

    /// The entries `hash` may live in: the first bucket's slots, then the
    /// alternate's (16 slots, or 8 when the shard has one bucket).
    #[inline]
    fn entries_of(&self, hash: u64) -> impl Iterator<Item = u32> {
        let [a, b] = self.bucket_pair(hash);
        let alternate = if b == a {
            0..0
        } else {
            b..b + BUCKET_SLOTS as u32
        };
        (a..a + BUCKET_SLOTS as u32).chain(alternate)
    }

    #[inline]
    fn slot(&self, shard: usize, e: u32) -> &mapped::AtomicU64 {
        let i = shard * self.layout.shard_slots() as usize + e as usize;
        self.region.atomic_u64(HEADER_BYTES + i * SLOT_BYTES)
    }

    /// Visit `len` logical bytes from `cur`, moving it.
    ///
    /// # Safety
    /// The chain is published and cannot be retired meanwhile (caller is
    /// pinned or holds the shard lock), or is owned by the caller.
    unsafe fn visit(&self, cur: &mut Cursor, mut len: usize, mut f: impl FnMut(&[u8])) {
        let payload = self.layout.payload_bytes();
        while len > 0 {
            if cur.pos == payload {
                // Relaxed: the chain was published with the slot (Acquire)
                // or is ours.
                cur.chunk = link_next(self.link(cur.chunk).load(Ordering::Relaxed));
                cur.pos = 0;
            }
            let n = len.min(payload - cur.pos);
            let off = self.layout.chunk_offset(cur.chunk) + LINK_BYTES + cur.pos;
            // SAFETY: immutable while visited, per this function's contract.
            f(unsafe { self.region.bytes(off, n) });
            cur.pos += n;
            len -= n;
        }
    }

    /// Copy `src` at `cur` into chunks the caller owns.
    ///
    /// # Safety
    /// The chain from `cur` is allocated to the caller and unpublished.
    unsafe fn fill(&self, cur: &mut Cursor, mut src: &[u8]) {
        let payload = self.layout.payload_bytes();
        while !src.is_empty() {
            if cur.pos == payload {
                // Relaxed: our own chain.
                cur.chunk = link_next(self.link(cur.chunk).load(Ordering::Relaxed));
                cur.pos = 0;
            }
            let n = src.len().min(payload - cur.pos);
            let off = self.layout.chunk_offset(cur.chunk) + LINK_BYTES + cur.pos;
            // SAFETY: exclusive per this function's contract.
            unsafe { self.region.write(off, &src[..n]) };
            cur.pos += n;
            src = &src[n..];
        }
    }

    /// The item header at `chunk`.
    ///
    /// # Safety
    /// As for `visit`.
    unsafe fn header_at(&self, chunk: u32) -> (ItemHeader, Cursor) {
        let mut raw = [0u8; ITEM_HEADER_BYTES];
        let mut cur = Cursor { chunk, pos: 0 };
        let mut at = 0;
        // SAFETY: forwarded contract.
        unsafe {
            self.visit(&mut cur, ITEM_HEADER_BYTES, |b| {
                raw[at..at + b.len()].copy_from_slice(b);
                at += b.len();
            })
        };
        (ItemHeader::decode(&raw), cur)
    }

    /// Does the item at `chunk` hold `key`? Leaves `cur` after the key.
    ///
    /// # Safety
    /// As for `visit`.
    unsafe fn key_matches(&self, h: &ItemHeader, cur: &mut Cursor, key: &[u8]) -> bool {
        if h.key_len != key.len() {
            return false;
        }
        let mut at = 0;
        let mut eq = true;
        // SAFETY: forwarded contract.
        unsafe {
            self.visit(cur, key.len(), |b| {
                eq &= b == &key[at..at + b.len()];
                at += b.len();
            })
        };
        eq
    }

    fn lookup_pinned(
        &self,
        reader_slot: usize,
        hash: u64,
        key: &[u8],
        out: &mut Vec<u8>,
        between: impl FnOnce(&mut Vec<u8>, &Hit) -> bool,
    ) -> Option<Hit> {
        let _pin = Pin::new(&self.epochs, reader_slot);
        let shard = Self::shard_of(hash);
        let tag = hash_tag(hash);
        for e in self.entries_of(hash) {
            let slot = self.slot(shard, e);
            // Acquire: pairs with the Release that published the item, so
            // its chunks are fully written before we read them.
            let v = slot.load(Ordering::Acquire);
            let Some(chunk) = slot_chunk(v) else { continue };
            if slot_tag(v) != tag {
                continue;
            }
            // SAFETY: we are pinned, and `chunk` was reachable when we loaded
            // the slot: it is not reused before we unpin (module doc).
            let (h, mut cur) = unsafe { self.header_at(chunk) };
            // SAFETY: as above.
            if !unsafe { self.key_matches(&h, &mut cur, key) } {
                continue;
            }
            let hit = Hit {
                meta: h.meta,
                head_len: h.head_len,
                body_len: h.body_len,
            };
            if P::SLOT_BIT {
                if v & CLOCK_BIT == 0 {
                    // Relaxed: the bit is a hint; a lost race loses one hit.
                    let _ = slot.compare_exchange(
                        v,
                        v | CLOCK_BIT,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
            } else {
                self.touch(shard, e, slot, v);
            }
            let start = out.len();
            let verify = self.options.verify_reads;
            let mut crc = 0;
            if verify {
                crc = crc32c::crc32c(key);
            }
            // SAFETY: as above.
            unsafe {
                self.visit(&mut cur, h.head_len, |b| {
                    out.extend_from_slice(b);
                    if verify {
                        crc = crc32c::crc32c_append(crc, b);
                    }
                })
            };
            let want_body = between(out, &hit);
            if want_body || verify {
                // SAFETY: as above.
                unsafe {
                    self.visit(&mut cur, h.body_len, |b| {
                        if want_body {
                            out.extend_from_slice(b);
                        }
                        if verify {
                            crc = crc32c::crc32c_append(crc, b);
                        }
                    })
                };
            }
            if verify && h.checksum(crc) != h.crc {
                debug_assert!(false, "item checksum mismatch on a published item");
                out.truncate(start);
                return None;
            }
            return Some(hit);
        }
        None
    }

    /// Queue a hit for the policy (no lock: mark the slot, then claim a
    /// place in the shard's touch buffer).
    #[inline]
    fn touch(&self, shard: usize, e: u32, slot: &mapped::AtomicU64, v: u64) {
        if v & REF_BIT != 0 {
            return;
        }
        let s = &self.shards[shard];
        // Relaxed: a hint. A full buffer (no writer drained it yet) drops
        // the touch here, before three shared-line writes that would only
        // be undone below.
        if s.touched_len.load(Ordering::Relaxed) as usize >= TOUCH_BUFFER_COUNT {
            return;
        }
        // Relaxed: REF is a hint; losing the race only loses a touch.
        if slot
            .compare_exchange(v, v | REF_BIT, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        // Relaxed: the place is claimed; the entry is published below.
        let i = s.touched_len.fetch_add(1, Ordering::Relaxed) as usize;
        if i < TOUCH_BUFFER_COUNT {
            // Release: read by the draining writer's swap (Acquire).
            s.touched[i].store(e + 1, Ordering::Release);
        } else {
            // Relaxed: undo the mark so a later hit can queue again.
            slot.fetch_and(!REF_BIT, Ordering::Relaxed);
        }
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, ShardState<P>> {
        // A panic under the lock leaves the shard's policy possibly behind
        // the index, never the index inconsistent: keep going.
        self.shards[shard]
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Hand queued touches to the policy. Under the shard lock.
    fn drain_touches(&self, shard: usize, st: &mut ShardState<P>) {
        let s = &self.shards[shard];
        // Acquire: pairs with nothing in particular; the entries are read
        // with their own Acquire below.
        let n = (s.touched_len.swap(0, Ordering::Acquire) as usize).min(TOUCH_BUFFER_COUNT);
        for t in &s.touched[..n] {
            // Acquire: pairs with the reader's Release store.
            let e1 = t.swap(0, Ordering::Acquire);
            if e1 == 0 {
                continue; // its reader has not stored yet: next time
            }
            let e = e1 - 1;
            let slot = self.slot(shard, e);
            // Relaxed: clearing a hint.
            let v = slot.fetch_and(!REF_BIT, Ordering::Relaxed);
            if slot_chunk(v).is_some() {
                st.policy.touch(e);
            }
        }
    }

    /// Unlink entry `e` of `shard` and retire its chain. Under the shard
    /// lock. The policy is not told (callers know whether it already knows).
    fn unlink(&self, shard: usize, e: u32) -> bool {
        // AcqRel: Release orders the unlink before the retire's fence;
        // Acquire takes a reader's REF mark race into account (no data).
        let v = self.slot(shard, e).swap(0, Ordering::AcqRel);
        match slot_chunk(v) {
            Some(chunk) => {
                self.retire_chain(chunk);
                // Relaxed: under the shard lock.
                self.shards[shard].items.fetch_sub(1, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Mark an unlinked chain retired and hand it to the grace period.
    fn retire_chain(&self, first: u32) {
        // Relaxed: link words of an item are written before its publish and
        // only read here, under the shard lock that orders us after it.
        let w0 = self.link(first).load(Ordering::Relaxed);
        self.link(first)
            .store(link_word(KIND_RETIRED, link_next(w0)), Ordering::Relaxed);
        let (mut last, mut n) = (first, 1u64);
        loop {
            // Relaxed: as above.
            let next = link_next(self.link(last).load(Ordering::Relaxed));
            if next == NONE {
                break;
            }
            last = next;
            n += 1;
        }
        let last_kind = if last == first {
            KIND_RETIRED
        } else {
            KIND_CONT
        };
        self.epochs.retire(self, first, last, last_kind, n);
        // Relaxed: statistics.
        self.items.fetch_sub(1, Ordering::Relaxed);
        self.chunks_used.fetch_sub(n, Ordering::Relaxed);
    }

    /// Make room: one expired item (bounded sweep) or the policy's victims,
    /// for the bytes or, with `for_index`, for a shard at its item limit.
    /// Under the shard lock.
    fn evict_one(
        &self,
        shard: usize,
        st: &mut ShardState<P>,
        now_secs: u64,
        for_index: bool,
    ) -> bool {
        let slots = self.layout.shard_slots();
        for _ in 0..SWEEP_SLOTS_MAX {
            let e = st.sweep_hand;
            st.sweep_hand = (st.sweep_hand + 1) % slots;
            // Relaxed: under the shard lock, only REF changes concurrently.
            let Some(chunk) = slot_chunk(self.slot(shard, e).load(Ordering::Relaxed)) else {
                continue;
            };
            if self.is_expired(chunk, now_secs) {
                st.policy.remove(e);
                self.unlink(shard, e);
                // Relaxed: a statistic.
                self.expirations.fetch_add(1, Ordering::Relaxed);
                return true;
            }
        }
        st.victims.clear();
        let ShardState {
            policy, victims, ..
        } = st;
        policy.evict_in(&ShardSlots { store: self, shard }, victims);
        let mut any = false;
        for i in 0..st.victims.len() {
            let e = st.victims[i];
            // Relaxed: under the shard lock, only REF changes concurrently.
            let Some(chunk) = slot_chunk(self.slot(shard, e).load(Ordering::Relaxed)) else {
                debug_assert!(false, "policy victim {e} holds no item");
                continue;
            };
            // An expired victim (the sweep had not reached it) counts as
            // an expiration, as if the sweep had taken it.
            let expired = self.is_expired(chunk, now_secs);
            self.unlink(shard, e);
            any = true;
            // Relaxed: statistics.
            if expired {
                self.expirations.fetch_add(1, Ordering::Relaxed);
            } else {
                self.evictions.fetch_add(1, Ordering::Relaxed);
                if for_index {
                    self.index_evictions.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        any
    }

    /// Is the published item at `chunk` past its freshness and the stale
    /// allowance, on the store's clock? Under the shard lock.
    fn is_expired(&self, chunk: u32, now_secs: u64) -> bool {
        // SAFETY: published and in our locked shard: not retired meanwhile.
        let (h, _) = unsafe { self.header_at(chunk) };
        h.meta.expires_secs() + u64::from(self.options.stale_keep_secs) <= now_secs
    }

    /// `n` chunks linked as a chain (HEAD, CONT, ...), or None.
    fn alloc_chain(&self, home: usize, n: usize, now_secs: u64) -> Option<u32> {
        let (mut first, mut prev, mut got) = (NONE, NONE, 0);
        let mut victim_shard = home;
        let mut barren_shards = 0;
        let mut attempts = 0;
        while got < n {
            if let Some(c) = self.slab.alloc(self) {
                let kind = if got == 0 { KIND_FILLING } else { KIND_CONT };
                // Relaxed: the chain is ours until published by the slot.
                self.link(c).store(link_word(kind, NONE), Ordering::Relaxed);
                if prev == NONE {
                    first = c;
                } else {
                    let pk = if got == 1 { KIND_FILLING } else { KIND_CONT };
                    // Relaxed: as above.
                    self.link(prev).store(link_word(pk, c), Ordering::Relaxed);
                }
                prev = c;
                got += 1;
                continue;
            }
            attempts += 1;
            if attempts > ALLOC_ATTEMPTS_MAX || barren_shards > SHARDS_COUNT {
                if first != NONE {
                    self.free_chain(first);
                }
                return None;
            }
            let pending = self.epochs.pending();
            if pending > 0
                && self
                    .epochs
                    .try_advance(self, self.slab.free_list())
                    .is_some()
            {
                continue;
            }
            if pending >= (n - got) as u64 {
                spin_hint(); // a reader holds the epoch for a moment
                continue;
            }
            let mut st = self.lock(victim_shard);
            self.drain_touches(victim_shard, &mut st);
            if !self.evict_one(victim_shard, &mut st, now_secs, false) {
                victim_shard = (victim_shard + 1) % SHARDS_COUNT;
                barren_shards += 1;
            }
        }
        Some(first)
    }

    /// Move the store's clock to this insert's time (never backwards) and
    /// return it. Never earlier than the item's birth: an item cannot be
    /// inserted before its response was generated.
    #[inline]
    fn advance_clock(&self, meta: ItemMeta) -> u64 {
        let now = meta.now_secs.max(meta.born_secs);
        // Relaxed: a monotonic hint for the sweep; no data travels with it.
        // Load first so the common case (same second) only reads the line.
        let seen = self.clock_secs.load(Ordering::Relaxed);
        if now <= seen {
            return u64::from(seen);
        }
        // Relaxed: as above.
        let prev = self.clock_secs.fetch_max(now, Ordering::Relaxed);
        u64::from(prev.max(now))
    }

    /// The store's clock: the latest insert time seen (Unix seconds).
    pub fn clock_secs(&self) -> u64 {
        // Relaxed: a hint.
        u64::from(self.clock_secs.load(Ordering::Relaxed))
    }

    /// Give an unpublished chain straight back to the free list.
    fn free_chain(&self, first: u32) {
        let mut c = first;
        loop {
            // Relaxed: our own chain.
            let next = link_next(self.link(c).load(Ordering::Relaxed));
            if next == NONE {
                break;
            }
            // Relaxed: published by push_chain.
            self.link(c)
                .store(link_word(KIND_FREE, next), Ordering::Relaxed);
            c = next;
        }
        self.slab.free_list().push_chain(self, first, c, KIND_FREE);
    }

    /// Store a response under `key`, replacing any older one. False when
    /// the item exceeds the limits (key < 4 KiB, head < 1 MiB, 1/8 of the
    /// chunks) or no room could be made.
    pub fn insert(&self, hash: u64, key: &[u8], head: &[u8], body: &[u8], meta: ItemMeta) -> bool {
        if key.len() > KEY_BYTES_MAX
            || head.len() > HEAD_BYTES_MAX
            || u32::try_from(body.len()).is_err()
        {
            return false;
        }
        let mut h = ItemHeader {
            crc: 0,
            seq: 0,
            key_len: key.len(),
            head_len: head.len(),
            body_len: body.len(),
            meta,
        };
        let n = h.total_bytes().div_ceil(self.layout.payload_bytes());
        if n as u64 > u64::from(self.layout.chunk_count() / ITEM_CHUNKS_FRACTION).max(1) {
            return false;
        }
        let shard = Self::shard_of(hash);
        let now_secs = self.advance_clock(meta);
        let Some(first) = self.alloc_chain(shard, n, now_secs) else {
            return false;
        };
        let mut cur = Cursor {
            chunk: first,
            pos: ITEM_HEADER_BYTES,
        };
        // SAFETY: the chain was just allocated to us and is unpublished.
        unsafe {
            self.fill(&mut cur, key);
            self.fill(&mut cur, head);
            self.fill(&mut cur, body);
        }
        let data_crc = ItemHeader::checksum_data(key, head, body);
        let mut st = self.lock(shard);
        self.drain_touches(shard, &mut st);
        let [first_bucket, _] = self.bucket_pair(hash);
        let tag = hash_tag(hash);
        let mut room_made = 0;
        let (same, empty) = loop {
            let mut same = None;
            // Per bucket of the pair: its first empty slot and its empty count.
            let mut empty = [(None, 0u32); 2];
            for e in self.entries_of(hash) {
                // Relaxed: under the shard lock, only REF changes concurrently.
                let v = self.slot(shard, e).load(Ordering::Relaxed);
                let Some(chunk) = slot_chunk(v) else {
                    let b = &mut empty[usize::from(!in_bucket(first_bucket, e))];
                    b.0 = b.0.or(Some(e));
                    b.1 += 1;
                    continue;
                };
                if slot_tag(v) == tag {
                    // SAFETY: published, in our locked shard.
                    let (oh, mut oc) = unsafe { self.header_at(chunk) };
                    // SAFETY: as above.
                    if unsafe { self.key_matches(&oh, &mut oc, key) } {
                        same = Some(e);
                        h.seq = oh.seq.wrapping_add(1);
                        break;
                    }
                }
            }
            // A new key in a shard at its item limit: the policy's victim (or
            // an expired item) leaves first, so the index keeps free slots and
            // the hands, not a bucket's coldest, choose what goes.
            // Relaxed: under the shard lock.
            let at_limit = self.shards[shard].items.load(Ordering::Relaxed) >= self.shard_items_max;
            if same.is_none()
                && at_limit
                && room_made < ROOM_PER_INSERT_MAX
                && self.evict_one(shard, &mut st, now_secs, true)
            {
                room_made += 1;
                continue;
            }
            break (same, empty);
        };
        h.crc = h.checksum(data_crc);
        let mut at = Cursor {
            chunk: first,
            pos: 0,
        };
        // SAFETY: still ours and unpublished; the header lies in the first
        // chunk (CHUNK_BYTES_MIN leaves room).
        unsafe { self.fill(&mut at, &h.encode()) };
        // Relaxed: published with the slot below (Release). Written last,
        // so the recovery scan sees an item start only once it is whole.
        let w = self.link(first).load(Ordering::Relaxed);
        self.link(first)
            .store(link_word(KIND_HEAD, link_next(w)), Ordering::Relaxed);
        let word = slot_word(tag, first);
        // Relaxed: statistics.
        self.items.fetch_add(1, Ordering::Relaxed);
        self.chunks_used.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(e) = same {
            // A replaced key stays referenced.
            let word = if P::SLOT_BIT { word | CLOCK_BIT } else { word };
            // AcqRel: Release publishes the new chunks to Acquire readers.
            let old = self.slot(shard, e).swap(word, Ordering::AcqRel);
            if let Some(c) = slot_chunk(old) {
                self.retire_chain(c);
            }
            if !P::SLOT_BIT {
                st.policy.touch(e);
            }
            return true;
        }
        // The emptier bucket of the pair (the first on a tie): two choices
        // keep both buckets full only at index loads far above the one
        // BUDGET_BYTES_PER_SLOT sizes for.
        let e = match empty {
            [(Some(a), na), (_, nb)] if na >= nb => a,
            [_, (Some(b), _)] => b,
            [(Some(a), _), _] => a,
            [(None, _), (None, _)] => {
                // Both buckets are full (the index, not the bytes, is the
                // limit): the policy's coldest entry of the pair gives way,
                // a counted eviction.
                let mut candidates = [0u32; 2 * BUCKET_SLOTS];
                let mut len = 0;
                for e in self.entries_of(hash) {
                    candidates[len] = e;
                    len += 1;
                }
                let e = st
                    .policy
                    .coldest(&ShardSlots { store: self, shard }, &candidates[..len]);
                st.policy.remove(e);
                self.unlink(shard, e);
                // Relaxed: statistics.
                self.evictions.fetch_add(1, Ordering::Relaxed);
                self.index_evictions.fetch_add(1, Ordering::Relaxed);
                e
            }
        };
        // Release: publishes the chunks written above to Acquire readers.
        self.slot(shard, e).store(word, Ordering::Release);
        // Relaxed: under the shard lock.
        self.shards[shard].items.fetch_add(1, Ordering::Relaxed);
        let ShardState {
            policy, victims, ..
        } = &mut *st;
        victims.clear();
        policy.admit_in(&ShardSlots { store: self, shard }, e, hash, victims);
        for i in 0..st.victims.len() {
            let v = st.victims[i];
            if v != e && self.unlink(shard, v) {
                // Relaxed: a statistic.
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
        true
    }

    /// Remove the item under `key`. Returns whether there was one.
    pub fn remove(&self, hash: u64, key: &[u8]) -> bool {
        let shard = Self::shard_of(hash);
        let mut st = self.lock(shard);
        self.drain_touches(shard, &mut st);
        for e in self.entries_of(hash) {
            // Relaxed: under the shard lock.
            let v = self.slot(shard, e).load(Ordering::Relaxed);
            let Some(chunk) = slot_chunk(v) else { continue };
            if slot_tag(v) != hash_tag(hash) {
                continue;
            }
            // SAFETY: published, in our locked shard.
            let (h, mut cur) = unsafe { self.header_at(chunk) };
            // SAFETY: as above.
            if unsafe { self.key_matches(&h, &mut cur, key) } {
                st.policy.remove(e);
                self.unlink(shard, e);
                return true;
            }
        }
        false
    }

    /// Counters and sizes.
    pub fn usage(&self) -> Usage {
        // Relaxed: statistics.
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Usage {
            item_bytes: r(&self.chunks_used) * u64::from(self.layout.chunk_bytes),
            items: r(&self.items),
            bytes_max: self.budget_bytes,
            evictions: r(&self.evictions),
            index_evictions: r(&self.index_evictions),
            expirations: r(&self.expirations),
            index_slots: u64::from(self.layout.slots_count),
            pending_chunks: self.epochs.pending(),
        }
    }

    /// The metadata bytes the store holds now, and what they come to per
    /// object. Counters only: no lock, no scan.
    pub fn metadata(&self) -> Metadata {
        let slots = u64::from(self.layout.slots_count);
        // Relaxed: statistics.
        let items = self.items.load(Ordering::Relaxed);
        let chunks = self.chunks_used.load(Ordering::Relaxed);
        Metadata {
            index_bytes: slots * SLOT_BYTES as u64,
            policy_bytes: slots * P::ENTRY_BYTES as u64,
            fixed_heap_bytes: HEAP_FIXED_BYTES as u64,
            item_header_bytes: items * ITEM_HEADER_BYTES as u64,
            link_bytes: chunks * LINK_BYTES as u64,
            slots,
            items,
        }
    }

    /// The policy's counts summed over the shards (hot, cold, test entries
    /// and the cold targets `m_c`), when the policy is CLOCK-Pro. Takes each
    /// shard's lock in turn: for metrics, not the request path.
    pub fn policy_stats(&self) -> Option<ClockProStats> {
        let mut sum: Option<ClockProStats> = None;
        for shard in 0..SHARDS_COUNT {
            let s = self.lock(shard).policy.clockpro_stats()?;
            let t = sum.get_or_insert(ClockProStats {
                hot_count: 0,
                cold_count: 0,
                test_count: 0,
                cold_target: 0,
            });
            t.hot_count += s.hot_count;
            t.cold_count += s.cold_count;
            t.test_count += s.test_count;
            t.cold_target += s.cold_target;
        }
        sum
    }

    /// Recovery: prefetch the two index buckets of the item that starts at
    /// chunk `c` (its key hashed as it stands, unchecked: a damaged item
    /// only prefetches a useless line). Single-threaded, at open.
    fn prefetch_buckets_of(&self, c: u32) {
        // SAFETY: single-threaded; the header lies in c's payload
        // (CHUNK_BYTES_MIN leaves room), so no link is followed.
        let (h, _) = unsafe { self.header_at(c) };
        if h.key_len > self.layout.payload_bytes() - ITEM_HEADER_BYTES {
            return; // the key goes on in another chunk: not worth it
        }
        let off = self.layout.chunk_offset(c) + LINK_BYTES + ITEM_HEADER_BYTES;
        // SAFETY: single-threaded, within chunk c's payload (checked above).
        let hash = super::key_hash(unsafe { self.region.bytes(off, h.key_len) });
        let shard = Self::shard_of(hash);
        for first in self.bucket_pair(hash) {
            prefetch(self.slot(shard, first));
        }
    }

    /// Rebuild the index, the policy and the free list from the chunks.
    /// Single-threaded, at open. Keeps the newest intact version of a key.
    fn recover(&mut self) {
        let count = self.layout.chunk_count();
        let payload = self.layout.payload_bytes();
        let mut claimed = vec![0u64; (count as usize).div_ceil(64)];
        let is_claimed = |m: &[u64], c: u32| m[c as usize / 64] & (1 << (c % 64)) != 0;
        let set = |m: &mut [u64], c: u32, on: bool| {
            if on {
                m[c as usize / 64] |= 1 << (c % 64);
            } else {
                m[c as usize / 64] &= !(1 << (c % 64));
            }
        };
        // Mark the `n` chunks of the chain starting at `first`.
        let set_chain = |store: &Self, m: &mut [u64], first: u32, n: usize, on: bool| {
            let mut c = first;
            for i in 0..n {
                set(m, c, on);
                if i + 1 < n {
                    // Relaxed: single-threaded.
                    c = link_next(store.link(c).load(Ordering::Relaxed));
                }
            }
        };
        // The index in the file is not trusted: it is rebuilt from the
        // items. Its words are only hints where each item sat: a word that
        // names a chunk is kept with STALE set, and an intact item goes
        // back to the slot that named it when that slot is in one of its
        // two buckets (so the arrangement the inserts found is found again;
        // a greedy re-placement in chunk order could leave an item with
        // both buckets full). Words still STALE after the scan are cleared.
        for shard in 0..SHARDS_COUNT {
            for e in 0..self.layout.shard_slots() {
                let slot = self.slot(shard, e);
                // Relaxed: single-threaded.
                let v = slot.load(Ordering::Relaxed);
                let hint = match slot_chunk(v) {
                    Some(c) if c < count => v & (TAG_MASK | LOW_MASK) | STALE_BIT,
                    _ => 0,
                };
                // Relaxed: single-threaded.
                slot.store(hint, Ordering::Relaxed);
            }
        }
        let (mut recovered, mut dropped) = (0u64, 0u64);
        // One buffer for every key (keys are under 4 KiB).
        let mut key = Vec::with_capacity(KEY_BYTES_MAX);
        // Items whose buckets are being prefetched, from `c0` to `ahead`.
        let (mut ahead, mut in_flight) = (0u32, 0usize);
        for c0 in 0..count {
            // Relaxed: single-threaded.
            if link_kind(self.link(c0).load(Ordering::Relaxed)) != KIND_HEAD {
                continue;
            }
            // The index lines of an item are far apart in memory and
            // missing in cache: fetch those of the items a little ahead, so
            // the misses overlap instead of coming one after the other.
            if c0 < ahead {
                in_flight -= 1;
            } else {
                ahead = c0 + 1;
            }
            while in_flight < RECOVERY_PREFETCH_ITEMS && ahead < count {
                // Relaxed: single-threaded.
                if link_kind(self.link(ahead).load(Ordering::Relaxed)) == KIND_HEAD {
                    self.prefetch_buckets_of(ahead);
                    in_flight += 1;
                }
                ahead += 1;
            }
            // SAFETY: single-threaded; the header lies in c0's payload
            // (CHUNK_BYTES_MIN leaves room), so no link is followed yet.
            let (h, _) = unsafe { self.header_at(c0) };
            let n = h.total_bytes().div_ceil(payload);
            // Check the chain before reading through it.
            let mut ok = h.key_len <= KEY_BYTES_MAX && n as u64 <= u64::from(count);
            let mut c = c0;
            let mut walked = 1;
            while ok && walked < n {
                // Relaxed: single-threaded.
                let next = link_next(self.link(c).load(Ordering::Relaxed));
                ok = next < count
                    && !is_claimed(&claimed, next)
                    // Relaxed: single-threaded.
                    && link_kind(self.link(next).load(Ordering::Relaxed)) == KIND_CONT;
                c = next;
                walked += 1;
            }
            if !ok {
                dropped += 1;
                continue;
            }
            let mut cur = Cursor {
                chunk: c0,
                pos: ITEM_HEADER_BYTES,
            };
            key.clear();
            let mut crc;
            // SAFETY: single-threaded; the chain was checked above.
            unsafe {
                self.visit(&mut cur, h.key_len, |b| key.extend_from_slice(b));
                crc = crc32c::crc32c(&key);
                self.visit(&mut cur, h.head_len + h.body_len, |b| {
                    crc = crc32c::crc32c_append(crc, b)
                });
            }
            if h.checksum(crc) != h.crc {
                dropped += 1;
                continue;
            }
            // Claim the chain.
            set_chain(self, &mut claimed, c0, n, true);
            // Index it, newest version first.
            let hash = super::key_hash(&key);
            let shard = Self::shard_of(hash);
            let [first_bucket, _] = self.bucket_pair(hash);
            let tag = hash_tag(hash);
            let mut loser = None;
            let mut same = None;
            // A hint naming this chunk, and per bucket: its first free slot
            // (empty, or a hint whose chunk was scanned and did not claim
            // it), its first hint naming a chunk not scanned yet, and how
            // many of its slots hold neither an item placed by this scan.
            let mut hint = None;
            let mut open = [(None, None, 0u32); 2];
            for e in self.entries_of(hash) {
                // Relaxed: single-threaded.
                let v = self.slot(shard, e).load(Ordering::Relaxed);
                let chunk = slot_chunk(v);
                if chunk.is_none() || v & STALE_BIT != 0 {
                    let b = &mut open[usize::from(!in_bucket(first_bucket, e))];
                    b.2 += 1;
                    match chunk {
                        Some(c) if c == c0 && slot_tag(v) == tag => hint = Some(e),
                        Some(c) if c > c0 => b.1 = b.1.or(Some(e)),
                        _ => b.0 = b.0.or(Some(e)),
                    }
                    continue;
                }
                let Some(oc) = chunk else { continue };
                if slot_tag(v) != tag {
                    continue;
                }
                // SAFETY: single-threaded, chain checked when indexed.
                let (oh, mut ocur) = unsafe { self.header_at(oc) };
                // SAFETY: as above.
                if unsafe { self.key_matches(&oh, &mut ocur, &key) } {
                    if seq_newer(h.seq, oh.seq) {
                        same = Some(e);
                        loser = Some(oc);
                    } else {
                        loser = Some(c0);
                    }
                    break;
                }
            }
            let place = match (loser, same) {
                // Newer than the version indexed: takes its slot.
                (Some(_), Some(e)) => Some((e, true)),
                // Older than the version indexed: dropped below.
                (Some(_), None) => None,
                // Its old slot, else the emptier bucket (the first on a
                // tie), a free slot before one another chunk may claim.
                _ => {
                    let [a, b] = open;
                    let (x, y) = if a.2 >= b.2 { (a, b) } else { (b, a) };
                    hint.or(x.0).or(x.1).or(y.0).or(y.1).map(|e| (e, false))
                }
            };
            if let Some(l) = loser {
                let (lh, _) = {
                    // SAFETY: single-threaded.
                    unsafe { self.header_at(l) }
                };
                let ln = lh.total_bytes().div_ceil(payload);
                set_chain(self, &mut claimed, l, ln, false);
                dropped += 1;
                if l != c0 {
                    recovered -= 1;
                    // Relaxed: single-threaded.
                    self.chunks_used.fetch_sub(ln as u64, Ordering::Relaxed);
                    self.items.fetch_sub(1, Ordering::Relaxed);
                }
            }
            let Some((e, replacing)) = place else {
                if loser.is_none() {
                    // Both buckets full of items found earlier (possible
                    // only when the old index gave no usable hints): drop
                    // this one.
                    set_chain(self, &mut claimed, c0, n, false);
                    dropped += 1;
                }
                continue;
            };
            // Relaxed: single-threaded; published to workers by the Arc.
            self.slot(shard, e)
                .store(slot_word(tag, c0), Ordering::Relaxed);
            if !replacing {
                // Relaxed: single-threaded.
                self.shards[shard].items.fetch_add(1, Ordering::Relaxed);
                let st = self.shards[shard]
                    .state
                    .get_mut()
                    .unwrap_or_else(|e| e.into_inner());
                let ShardState {
                    policy, victims, ..
                } = st;
                policy.admit(e, hash, victims);
            }
            recovered += 1;
            // Relaxed: single-threaded.
            self.items.fetch_add(1, Ordering::Relaxed);
            self.chunks_used.fetch_add(n as u64, Ordering::Relaxed);
        }
        for shard in 0..SHARDS_COUNT {
            for e in 0..self.layout.shard_slots() {
                let slot = self.slot(shard, e);
                // Relaxed: single-threaded.
                if slot.load(Ordering::Relaxed) & STALE_BIT != 0 {
                    slot.store(0, Ordering::Relaxed);
                }
            }
        }
        // Everything unclaimed is free: one chain, pushed once.
        let (mut first, mut prev) = (NONE, NONE);
        for c in 0..count {
            if is_claimed(&claimed, c) {
                continue;
            }
            if prev == NONE {
                first = c;
            } else {
                // Relaxed: single-threaded; published by push_chain.
                self.link(prev)
                    .store(link_word(KIND_FREE, c), Ordering::Relaxed);
            }
            prev = c;
        }
        if prev != NONE {
            self.slab
                .free_list()
                .push_chain(self, first, prev, KIND_FREE);
        }
        self.recovery.items_recovered = recovered;
        self.recovery.items_dropped = dropped;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::key_hash;
    use crate::store::policy::CLOCKPRO_ENTRY_BYTES;

    struct TempPath(std::path::PathBuf);
    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn options() -> Options {
        Options {
            segment_bytes: 64 << 10,
            chunk_bytes: 128,
            readers_max: 4,
            stale_keep_secs: 0,
            verify_reads: true,
            ..Options::default()
        }
    }

    /// The first chunk of the item published under `hash` (one key only).
    fn published(s: &Store<ClockPro>, hash: u64) -> u32 {
        let shard = Store::<ClockPro>::shard_of(hash);
        s.entries_of(hash)
            // Relaxed: single-threaded test.
            .find_map(|e| slot_chunk(s.slot(shard, e).load(Ordering::Relaxed)))
            .expect("published")
    }

    /// Insert `versions` versions of one key, then one more, and put the
    /// replaced chain's HEAD mark back: the region as a crash between the
    /// publish and the retire mark leaves it. Recovery must keep the newest.
    fn newest_wins_after(versions: u32, name: &str) {
        newest_wins_with(versions, name, false);
        newest_wins_with(versions, &format!("{name}-hint-old"), true);
    }

    /// `index_names_old`: the crash came before the publish, so the file's
    /// index (a recovery hint) still names the older version.
    fn newest_wins_with(versions: u32, name: &str, index_names_old: bool) {
        let p = TempPath(
            std::env::temp_dir().join(format!("ringcache-newest-{name}-{}", std::process::id())),
        );
        let _ = std::fs::remove_file(&p.0);
        let key = b"h\0/versioned";
        let hash = key_hash(key);
        let meta = ItemMeta::new(1000, 0, 60);
        {
            let s = Store::<ClockPro>::open(&p.0, 4 << 20, options()).unwrap();
            for v in 0..versions {
                assert!(s.insert(hash, key, b"", &v.to_le_bytes(), meta));
            }
            let old = published(&s, hash);
            // SAFETY: single-threaded; `old` is published.
            let (oh, _) = unsafe { s.header_at(old) };
            assert_eq!(u32::from(oh.seq), (versions - 1) % (1 << 16));
            assert!(s.insert(hash, key, b"", b"newest", meta));
            let new = published(&s, hash);
            // SAFETY: as above.
            let (nh, _) = unsafe { s.header_at(new) };
            assert_eq!(nh.seq, oh.seq.wrapping_add(1));
            // Relaxed: single-threaded. One-chunk items: no next chunk.
            s.link(old)
                .store(link_word(KIND_HEAD, NONE), Ordering::Relaxed);
            if index_names_old {
                let shard = Store::<ClockPro>::shard_of(hash);
                let e = s
                    .entries_of(hash)
                    // Relaxed: single-threaded test.
                    .find(|&e| slot_chunk(s.slot(shard, e).load(Ordering::Relaxed)) == Some(new))
                    .unwrap();
                // Relaxed: single-threaded test.
                s.slot(shard, e)
                    .store(slot_word(hash_tag(hash), old), Ordering::Relaxed);
            }
            // Dropped without close.
        }
        let s = Arc::new(Store::<ClockPro>::open(&p.0, 4 << 20, options()).unwrap());
        let rec = s.recovery();
        assert_eq!((rec.items_recovered, rec.items_dropped), (1, 1), "{rec:?}");
        let r = s.reader().unwrap();
        let mut out = Vec::new();
        r.lookup_into(hash, key, &mut out).unwrap();
        assert_eq!(out, b"newest");
        // And the next version continues the sequence.
        let before = {
            // SAFETY: single-threaded.
            unsafe { s.header_at(published(&s, hash)) }.0.seq
        };
        assert!(s.insert(hash, key, b"", b"next", meta));
        // SAFETY: single-threaded.
        let after = unsafe { s.header_at(published(&s, hash)) }.0.seq;
        assert_eq!(after, before.wrapping_add(1));
    }

    #[test]
    fn recovery_keeps_the_newest_of_two_versions() {
        newest_wins_after(1, "one");
        newest_wins_after(7, "seven");
    }

    #[test]
    fn recovery_keeps_the_newest_across_the_sequence_wrap() {
        // The replaced item has sequence 65535, its successor 0.
        newest_wins_after(1 << 16, "wrap");
    }

    #[test]
    fn an_item_being_filled_is_not_recovered() {
        let p = TempPath(
            std::env::temp_dir().join(format!("ringcache-filling-{}", std::process::id())),
        );
        let _ = std::fs::remove_file(&p.0);
        let (key, meta) = (b"h\0/gone", ItemMeta::new(1000, 0, 60));
        let hash = key_hash(key);
        {
            let s = Store::<ClockPro>::open(&p.0, 4 << 20, options()).unwrap();
            assert!(s.insert(hash, key, b"", b"body", meta));
            let c = published(&s, hash);
            assert!(s.remove(hash, key));
            // The chunk is reused for a new item, crash before its header
            // is written: the old bytes are whole, but the kind says FILLING.
            // Relaxed: single-threaded.
            s.link(c)
                .store(link_word(KIND_FILLING, NONE), Ordering::Relaxed);
        }
        let s = Store::<ClockPro>::open(&p.0, 4 << 20, options()).unwrap();
        assert_eq!(s.recovery().items_recovered, 0, "a removed item came back");
    }

    /// A hash in shard 0 with the given first and alternate buckets and tag.
    fn crafted_hash(first: u64, alternate: u64, tag: u64) -> u64 {
        first << FIRST_BUCKET_SHIFT | alternate << ALTERNATE_BUCKET_SHIFT | tag << 48
    }

    #[test]
    fn fewer_budget_bytes_per_slot_hold_more_small_objects() {
        // Items of one 128-byte chunk: the index is the limit at the
        // default density, the bytes at a quarter of it.
        let held = |budget_bytes_per_slot: usize| {
            let o = Options {
                budget_bytes_per_slot,
                ..options()
            };
            let s = Store::<ClockPro>::anonymous_with(8 << 20, o).unwrap();
            let meta = ItemMeta::new(1000, 0, 60);
            for i in 0..200_000u64 {
                let k = format!("small/{i}");
                assert!(s.insert(key_hash(k.as_bytes()), k.as_bytes(), b"", b"v", meta));
            }
            (s.layout().slots_count, s.usage().items)
        };
        let (slots_default, items_default) = held(BUDGET_BYTES_PER_SLOT);
        let (slots_dense, items_dense) = held(BUDGET_BYTES_PER_SLOT / 4);
        assert_eq!(slots_dense, 4 * slots_default);
        // Index-bound: 15/16 of the slots, give or take a full bucket pair.
        assert!(items_default <= u64::from(slots_default) * 15 / 16);
        assert!(
            items_default > u64::from(slots_default) * 7 / 8,
            "{items_default}"
        );
        assert!(
            items_dense > items_default * 3 / 2,
            "{items_dense} vs {items_default}"
        );
        let refused = Options {
            budget_bytes_per_slot: 64,
            ..options()
        };
        assert!(Store::<ClockPro>::anonymous_with(8 << 20, refused).is_err());
    }

    #[test]
    fn a_shard_at_its_item_limit_makes_room_through_the_policy() {
        let s = Arc::new(Store::<ClockPro>::anonymous_with(4 << 20, options()).unwrap());
        let slots = s.layout().shard_slots();
        let limit = slots / 16 * SHARD_ITEMS_SIXTEENTHS;
        let buckets = u64::from(slots) / BUCKET_SLOTS as u64;
        let r = s.reader().unwrap();
        let meta = ItemMeta::new(1000, 0, 60);
        let mut out = Vec::new();
        let hot = (crafted_hash(0, 1, 1), b"hot".as_slice());
        assert!(s.insert(hot.0, hot.1, b"", b"h", meta));
        // Small items: the bytes would hold far more than the index.
        let inserts = 8 * u64::from(slots);
        for i in 0..inserts {
            let k = format!("k/{i}");
            let h = crafted_hash(i % buckets, (i * 7 + 3) % buckets, 2 + i % 60_000);
            assert!(s.insert(h, k.as_bytes(), b"", b"v", meta));
            out.clear();
            assert!(
                r.lookup_into(hot.0, hot.1, &mut out).is_some(),
                "hot key lost at {i}"
            );
            // Relaxed: single-threaded test.
            let items = s.shards[0].items.load(Ordering::Relaxed);
            assert!(items <= limit, "{items} items over the limit {limit}");
        }
        // Full at the limit, every insert past it one eviction, each for
        // the index (the bytes hold far more).
        let u = s.usage();
        assert_eq!(u.items, u64::from(limit));
        assert_eq!(u.evictions, inserts + 1 - u64::from(limit));
        assert_eq!(u.index_evictions, u.evictions);
    }

    #[test]
    fn a_full_first_bucket_sends_keys_to_the_alternate_and_a_full_pair_evicts_its_coldest() {
        let s = Arc::new(Store::<ClockPro>::anonymous_with(4 << 20, options()).unwrap());
        assert_eq!(s.layout().shard_slots() / BUCKET_SLOTS as u32, 16);
        let r = s.reader().unwrap();
        let meta = ItemMeta::new(1000, 0, 60);
        let keys: Vec<(u64, String)> = (0..17u64)
            .map(|i| (crafted_hash(3, 5, 100 + i), format!("pair/{i}")))
            .collect();
        assert_eq!(s.bucket_pair(keys[0].0), [3 * 8, 5 * 8]);
        let mut out = Vec::new();
        for (h, k) in &keys[..16] {
            assert!(s.insert(*h, k.as_bytes(), b"", k.as_bytes(), meta));
        }
        // Sixteen keys in one bucket pair: all stored, none evicted.
        assert_eq!((s.usage().items, s.usage().evictions), (16, 0));
        for (h, k) in &keys[..16] {
            out.clear();
            assert!(r.lookup_into(*h, k.as_bytes(), &mut out).is_some(), "{k}");
            assert_eq!(out, k.as_bytes());
        }
        // Both buckets full: the 17th key evicts the coldest of the pair.
        // Every key but pair/5 was just requested (their CLK is set).
        // Relaxed: single-threaded test.
        let e5 = s
            .entries_of(keys[5].0)
            .find(|&e| {
                // Relaxed: single-threaded test.
                let c = slot_chunk(s.slot(0, e).load(Ordering::Relaxed)).unwrap();
                // SAFETY: single-threaded, published.
                let (h, mut cur) = unsafe { s.header_at(c) };
                // SAFETY: as above.
                unsafe { s.key_matches(&h, &mut cur, keys[5].1.as_bytes()) }
            })
            .unwrap();
        // Relaxed: single-threaded test.
        s.slot(0, e5).fetch_and(!CLOCK_BIT, Ordering::Relaxed);
        let (h, k) = &keys[16];
        assert!(s.insert(*h, k.as_bytes(), b"", k.as_bytes(), meta));
        assert_eq!((s.usage().items, s.usage().evictions), (16, 1));
        for (i, (h, k)) in keys.iter().enumerate() {
            out.clear();
            let hit = r.lookup_into(*h, k.as_bytes(), &mut out).is_some();
            assert_eq!(hit, i != 5, "{k}");
        }
    }

    #[test]
    fn metadata_counts_every_slot_header_and_link_word() {
        // 8192 slots; 1000 two-chunk items (a 124-byte payload per chunk:
        // header 20 + key + body 150 spill into a second chunk).
        let s = Store::<ClockPro>::anonymous_with(4 << 20, options()).unwrap();
        assert_eq!(s.metadata().bytes_per_object(), None);
        let meta = ItemMeta::new(1000, 0, 60);
        let body = [7u8; 150];
        for i in 0..1000 {
            let k = format!("meta/{i:04}");
            assert!(s.insert(key_hash(k.as_bytes()), k.as_bytes(), b"", &body, meta));
        }
        let m = s.metadata();
        assert_eq!(m.items, 1000);
        assert_eq!(m.index_bytes, 8192 * 8);
        assert_eq!(m.policy_bytes, 8192 * CLOCKPRO_ENTRY_BYTES as u64);
        assert_eq!(m.item_header_bytes, 1000 * ITEM_HEADER_BYTES as u64);
        assert_eq!(m.link_bytes, 2000 * LINK_BYTES as u64);
        let want = (8192 * (8 + CLOCKPRO_ENTRY_BYTES) + HEAP_FIXED_BYTES + 1000 * (20 + 8)) as f64
            / 1000.0;
        assert_eq!(m.bytes_per_object(), Some(want));
        assert_eq!(m.slots_per_object(), Some(8.192));
        // Removing an item gives back its header and link words.
        assert!(s.remove(key_hash(b"meta/0000"), b"meta/0000"));
        let m = s.metadata();
        assert_eq!((m.items, m.link_bytes), (999, 1998 * LINK_BYTES as u64));
    }

    #[test]
    fn the_policy_gets_an_evicted_keys_hash_from_the_stored_key() {
        // A 300-byte key spans three 124-byte payloads after the header.
        let s = Store::<ClockPro>::anonymous_with(4 << 20, options()).unwrap();
        let meta = ItemMeta::new(1000, 0, 60);
        let long = vec![b'k'; 300];
        let h = key_hash(&long);
        assert!(s.insert(h, &long, b"", b"body", meta));
        let shard = Store::<ClockPro>::shard_of(h);
        let slots = ShardSlots { store: &s, shard };
        let e = s
            .entries_of(h)
            // Relaxed: single-threaded test.
            .find(|&e| slot_chunk(s.slot(shard, e).load(Ordering::Relaxed)).is_some())
            .unwrap();
        assert_eq!(slots.key_hash(e), Some(h));
        let empty = s.entries_of(h).find(|&f| f != e).unwrap();
        assert_eq!(slots.key_hash(empty), None);
        // One-time keys past the byte cap: evicted cold entries in their test
        // period leave test entries, which need those hashes.
        let body = [1u8; 1000];
        for i in 0..6000 {
            let k = format!("once/{i}");
            assert!(s.insert(key_hash(k.as_bytes()), k.as_bytes(), b"", &body, meta));
        }
        assert!(s.usage().evictions > 0);
        assert!(s.policy_stats().unwrap().test_count > 0);
    }

    #[test]
    fn a_store_at_half_its_index_drops_no_insert() {
        // 8192 slots; 4096 one-chunk objects take 512 KiB of 4 MiB: the
        // bytes are not the limit, so nothing may be evicted.
        let s = Arc::new(Store::<ClockPro>::anonymous_with(4 << 20, options()).unwrap());
        assert_eq!(s.layout().slots_count, 8192);
        let r = s.reader().unwrap();
        let meta = ItemMeta::new(1000, 0, 60);
        let key = |i: u32| format!("half/{i}");
        for i in 0..4096 {
            let k = key(i);
            assert!(s.insert(key_hash(k.as_bytes()), k.as_bytes(), b"", b"v", meta));
        }
        let u = s.usage();
        assert_eq!((u.items, u.evictions, u.expirations), (4096, 0, 0), "{u:?}");
        let mut out = Vec::new();
        for i in 0..4096 {
            let k = key(i);
            assert!(r
                .lookup_into(key_hash(k.as_bytes()), k.as_bytes(), &mut out)
                .is_some());
        }
    }

    /// Every slot word, without the policy's hint bits.
    fn index_words(s: &Store<ClockPro>) -> Vec<u64> {
        (0..SHARDS_COUNT)
            .flat_map(|shard| (0..s.layout().shard_slots()).map(move |e| (shard, e)))
            // Relaxed: single-threaded test.
            .map(|(shard, e)| s.slot(shard, e).load(Ordering::Relaxed) & (TAG_MASK | LOW_MASK))
            .collect()
    }

    #[test]
    fn recovery_puts_items_back_in_their_slots_and_survives_a_scrambled_index() {
        let p =
            TempPath(std::env::temp_dir().join(format!("ringcache-hints-{}", std::process::id())));
        let _ = std::fs::remove_file(&p.0);
        let meta = ItemMeta::new(1000, 0, 60);
        let key = |i: u32| format!("hint/{i}");
        // 7000 keys in 8192 slots: many in their alternate bucket, and some
        // would find both buckets full if placed again in another order.
        let count = 7000;
        let (before, stored) = {
            let s = Store::<ClockPro>::open(&p.0, 4 << 20, options()).unwrap();
            for i in 0..count {
                let k = key(i);
                assert!(s.insert(key_hash(k.as_bytes()), k.as_bytes(), b"", b"v", meta));
            }
            s.close().unwrap();
            (index_words(&s), s.usage().items)
        };
        {
            let s = Store::<ClockPro>::open(&p.0, 4 << 20, options()).unwrap();
            assert_eq!(s.recovery().items_recovered, stored);
            assert_eq!(index_words(&s), before, "items moved");
            // Scramble the index (it is only a hint): every slot names some
            // chunk under some tag.
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            for shard in 0..SHARDS_COUNT {
                for e in 0..s.layout().shard_slots() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let word = slot_word(x as u16, (x >> 20) as u32 % s.layout().chunk_count());
                    // Relaxed: single-threaded test.
                    s.slot(shard, e).store(word, Ordering::Relaxed);
                }
            }
            // Dropped without close.
        }
        let s = Arc::new(Store::<ClockPro>::open(&p.0, 4 << 20, options()).unwrap());
        let rec = s.recovery();
        let r = s.reader().unwrap();
        let mut hits = 0u64;
        let mut out = Vec::new();
        for i in 0..count {
            let k = key(i);
            out.clear();
            if r.lookup_into(key_hash(k.as_bytes()), k.as_bytes(), &mut out)
                .is_some()
            {
                assert_eq!(out, b"v");
                hits += 1;
            }
        }
        assert_eq!(hits, rec.items_recovered, "{rec:?}");
        assert_eq!(rec.items_recovered + rec.items_dropped, stored, "{rec:?}");
        // Placed again in chunk order without usable hints, nearly all fit.
        assert!(hits * 100 >= stored * 99, "{rec:?} of {stored}");
        // Nothing left STALE.
        assert!(index_words(&s).iter().all(|w| w & STALE_BIT == 0));
    }
}
