//! Fill leases across workers: one origin fetch per key for the whole process.
//!
//! Each worker coalesces its own misses (see `coalesce`). Before a worker's
//! first miss for a key goes to the origin, it takes the key's lease in this
//! shared table. A worker that finds the lease held by another registers its
//! interest and parks its requests locally. When the filler's answer is
//! complete (or has failed), the filler releases the lease and posts a
//! [`Notice`] to every interested worker's mailbox, then wakes it by writing
//! one byte to a socket pair whose other end that worker's ring is already
//! receiving on — no polling, no sleeping.
//!
//! ```text
//!   worker A (filler)            leases              worker B (waiting)
//!   acquire(k) ──────────▶  k: owner A          ◀──── acquire(k): interest B
//!   fetch, store item       interested [B]           park requests
//!   release(k, Stored) ───▶ remove k ─▶ mailbox B ─▶ byte on B's wake socket
//!                                                    recv completion: drain
//!                                                    mailbox, serve from store
//! ```
//!
//! What the notice says decides what the waiting workers do (see
//! [`FillEnd`]): serve from the store; fetch in parallel (the answer cannot
//! be shared); or fetch again through one of their waiters, which takes the
//! lease while the others keep waiting (the fill failed, or its answer was
//! not stored). A filler whose origin connection dies mid-response thus costs
//! every other worker one fetch at most, never one per waiting request.
//!
//! A lease older than `limits.coalesce_wait_timeout` can be taken over by
//! the next worker that misses (its filler died or stalled); waiting workers
//! release their own requests to the origin after the same time.
//!
//! The table also carries the [`OriginBudget`], the process-wide cap on
//! origin connections (`limits.origin_connections_total_max`): it is the one
//! object every worker already shares, and both protect the origin.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

/// Shards of the lease table; a power of two.
pub const LEASE_SHARDS_COUNT: usize = 64;
/// Notices one worker's mailbox holds before the oldest are dropped (their
/// waiters then fetch for themselves when their wait limit passes).
pub const MAILBOX_NOTICES_MAX: usize = 65_536;

/// How a fill ended, as far as the workers waiting for it are concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FillEnd {
    /// The answer is in the store: serve it from there.
    Stored,
    /// The answer cannot be shared: every waiter asks the origin itself.
    Release,
    /// No shareable answer in the store (the fill failed, or its answer was
    /// not stored): one waiter fetches again, the others wait for it.
    Refetch,
}

/// What a filler's release tells the workers that waited for it.
#[derive(Debug)]
pub struct Notice {
    pub hash: u64,
    pub key: Box<[u8]>,
    pub end: FillEnd,
}

struct Lease {
    owner: usize,
    key: Box<[u8]>,
    taken: Instant,
    interested: Vec<u16>,
}

struct Mailbox {
    notices: Mutex<Vec<Notice>>,
    /// The sending end of the worker's wake socket pair (non-blocking).
    waker: UnixStream,
}

/// The result of asking for a key's lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acquire {
    /// This worker fetches; others will wait for it.
    Filler,
    /// This worker fetches, in place of a filler that overran the wait
    /// limit; the workers waiting on the old one wait on this one.
    TakenOver,
    /// Another worker is fetching; this one was registered to be told.
    Waiting,
    /// A different key with the same hash holds the slot: fetch without a lease.
    Alone,
}

/// Origin connections open in the whole process, against one cap.
///
/// Lock-free: a worker takes a slot with one compare-and-swap loop before it
/// opens a connection and gives it back when the connection's slot is freed.
/// `starving` counts the workers that hold queued requests they could send
/// if the cap allowed; while it is non-zero, workers close connections
/// instead of keeping them idle, so that the cap moves to where the work is.
pub struct OriginBudget {
    open: CachePadded<AtomicUsize>,
    starving: CachePadded<AtomicUsize>,
    max: usize,
}

impl OriginBudget {
    pub fn new(max: usize) -> OriginBudget {
        OriginBudget {
            open: CachePadded::new(AtomicUsize::new(0)),
            starving: CachePadded::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// Take a slot for one more connection; false when the cap is reached.
    pub fn try_take(&self) -> bool {
        // Relaxed: the count guards no other memory; the CAS alone keeps
        // every worker's view of the total exact.
        self.open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    /// A connection taken with [`OriginBudget::try_take`] is gone.
    pub fn give_back(&self) {
        // Relaxed: as in `try_take`.
        let before = self.open.fetch_sub(1, Ordering::Relaxed);
        debug_assert!(before > 0, "more connections given back than taken");
    }

    /// Connections open in the process now.
    pub fn open_count(&self) -> usize {
        // Relaxed: a figure for reporting and for the next decision only.
        self.open.load(Ordering::Relaxed)
    }

    /// This worker starts or stops holding requests back for want of a slot.
    pub fn set_starving(&self, starving: bool) {
        // Relaxed: a hint read by other workers' idle decisions; a stale
        // value costs one idle connection kept or closed, nothing more.
        if starving {
            self.starving.fetch_add(1, Ordering::Relaxed);
        } else {
            self.starving.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Some worker waits for a slot: idle connections should be let go.
    pub fn is_contended(&self) -> bool {
        // Relaxed: see `set_starving`.
        self.starving.load(Ordering::Relaxed) > 0
    }
}

/// The process-wide lease table and the workers' mailboxes.
pub struct Leases {
    shards: Box<[Mutex<HashMap<u64, Lease>>]>,
    mailboxes: Box<[Mailbox]>,
    takeover_after: Duration,
    /// The process-wide origin connection cap.
    pub origin_budget: OriginBudget,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means a panic elsewhere mid-update; every update
    // here leaves the map consistent between statements.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Leases {
    /// A table for `workers` workers. Returns the receiving end of each
    /// worker's wake socket (non-blocking), to be handed to that worker.
    pub fn new(
        workers: usize,
        takeover_after: Duration,
    ) -> std::io::Result<(Leases, Vec<UnixStream>)> {
        Leases::with_origin_cap(workers, takeover_after, usize::MAX)
    }

    /// [`Leases::new`] with a process-wide cap of `origin_connections_max`
    /// origin connections.
    pub fn with_origin_cap(
        workers: usize,
        takeover_after: Duration,
        origin_connections_max: usize,
    ) -> std::io::Result<(Leases, Vec<UnixStream>)> {
        assert!(workers <= usize::from(u16::MAX), "worker ids are u16");
        let mut mailboxes = Vec::with_capacity(workers);
        let mut receivers = Vec::with_capacity(workers);
        for _ in 0..workers {
            let (waker, receiver) = UnixStream::pair()?;
            waker.set_nonblocking(true)?;
            receiver.set_nonblocking(true)?;
            mailboxes.push(Mailbox {
                notices: Mutex::new(Vec::new()),
                waker,
            });
            receivers.push(receiver);
        }
        let shards = (0..LEASE_SHARDS_COUNT)
            .map(|_| Mutex::new(HashMap::new()))
            .collect();
        Ok((
            Leases {
                shards,
                mailboxes: mailboxes.into_boxed_slice(),
                takeover_after,
                origin_budget: OriginBudget::new(origin_connections_max),
            },
            receivers,
        ))
    }

    fn shard(&self, hash: u64) -> MutexGuard<'_, HashMap<u64, Lease>> {
        lock(&self.shards[(hash as usize) & (LEASE_SHARDS_COUNT - 1)])
    }

    /// Take `key`'s lease for `worker`, or register its interest in the fill
    /// under way.
    pub fn acquire(&self, worker: usize, hash: u64, key: &[u8], now: Instant) -> Acquire {
        let mut shard = self.shard(hash);
        match shard.get_mut(&hash) {
            Some(lease) if *lease.key != *key => Acquire::Alone,
            Some(lease)
                if lease.owner != worker
                    && now.saturating_duration_since(lease.taken) < self.takeover_after =>
            {
                let me = worker as u16;
                if !lease.interested.contains(&me) {
                    lease.interested.push(me);
                }
                Acquire::Waiting
            }
            Some(lease) => {
                // Ours already, or its filler is overdue: take it over and
                // keep the interested workers.
                let taken_over = lease.owner != worker;
                lease.owner = worker;
                lease.taken = now;
                if taken_over {
                    Acquire::TakenOver
                } else {
                    Acquire::Filler
                }
            }
            None => {
                shard.insert(
                    hash,
                    Lease {
                        owner: worker,
                        key: key.into(),
                        taken: now,
                        interested: Vec::new(),
                    },
                );
                Acquire::Filler
            }
        }
    }

    /// Take `key`'s lease for `worker` only when no other worker holds it
    /// (or its holder is overdue); never registers interest. For work that
    /// is skipped rather than waited for, such as a background refresh.
    pub fn try_acquire(&self, worker: usize, hash: u64, key: &[u8], now: Instant) -> bool {
        let mut shard = self.shard(hash);
        match shard.get_mut(&hash) {
            Some(lease)
                if *lease.key != *key
                    || now.saturating_duration_since(lease.taken) < self.takeover_after =>
            {
                false
            }
            Some(lease) => {
                lease.owner = worker;
                lease.taken = now;
                true
            }
            None => {
                shard.insert(
                    hash,
                    Lease {
                        owner: worker,
                        key: key.into(),
                        taken: now,
                        interested: Vec::new(),
                    },
                );
                true
            }
        }
    }

    /// The filler is done: drop the lease and tell every interested worker.
    pub fn release(&self, worker: usize, hash: u64, key: &[u8], end: FillEnd) {
        let lease = {
            let mut shard = self.shard(hash);
            match shard.get(&hash) {
                Some(l) if l.owner == worker && *l.key == *key => shard.remove(&hash),
                _ => None, // taken over meanwhile: the new owner releases it
            }
        };
        let Some(lease) = lease else { return };
        for w in lease.interested {
            let w = usize::from(w);
            if w == worker || w >= self.mailboxes.len() {
                continue;
            }
            let mailbox = &self.mailboxes[w];
            {
                let mut notices = lock(&mailbox.notices);
                if notices.len() >= MAILBOX_NOTICES_MAX {
                    notices.remove(0);
                }
                notices.push(Notice {
                    hash,
                    key: lease.key.clone(),
                    end,
                });
            }
            // One byte wakes the worker's recv; a full socket buffer means
            // wake-ups are already pending, so EAGAIN is fine to ignore.
            let _ = (&mailbox.waker).write(&[1]);
        }
    }

    /// Move `worker`'s notices into `into` (which is expected empty).
    pub fn take_notices(&self, worker: usize, into: &mut Vec<Notice>) {
        std::mem::swap(&mut *lock(&self.mailboxes[worker].notices), into);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn one_filler_and_a_notice_for_the_waiter() {
        let (leases, receivers) = Leases::new(3, Duration::from_secs(10)).unwrap();
        let now = Instant::now();
        assert_eq!(leases.acquire(0, 7, b"k", now), Acquire::Filler);
        assert_eq!(leases.acquire(1, 7, b"k", now), Acquire::Waiting);
        assert_eq!(leases.acquire(2, 7, b"k", now), Acquire::Waiting);
        assert_eq!(leases.acquire(1, 7, b"k", now), Acquire::Waiting);
        assert_eq!(leases.acquire(1, 7, b"other", now), Acquire::Alone);
        leases.release(0, 7, b"k", FillEnd::Stored);
        for (w, mut rx) in receivers.into_iter().enumerate() {
            let mut notices = Vec::new();
            leases.take_notices(w, &mut notices);
            let mut byte = [0u8; 8];
            let woken = rx.read(&mut byte).is_ok();
            if w == 0 {
                assert!(notices.is_empty() && !woken, "the filler is not told");
            } else {
                assert_eq!(notices.len(), 1, "worker {w} told once");
                assert!(notices[0].end == FillEnd::Stored && *notices[0].key == *b"k");
                assert!(woken, "worker {w} woken");
            }
        }
        // Released: the next miss fills again.
        assert_eq!(leases.acquire(2, 7, b"k", now), Acquire::Filler);
    }

    #[test]
    fn try_acquire_takes_a_free_lease_only() {
        let (leases, _rx) = Leases::new(2, Duration::from_secs(10)).unwrap();
        let now = Instant::now();
        assert!(leases.try_acquire(0, 7, b"k", now));
        assert!(!leases.try_acquire(1, 7, b"k", now), "held by worker 0");
        assert!(
            !leases.try_acquire(0, 7, b"k", now),
            "one refresh at a time"
        );
        assert_eq!(leases.acquire(1, 7, b"k", now), Acquire::Waiting);
        leases.release(0, 7, b"k", FillEnd::Stored);
        assert!(leases.try_acquire(1, 7, b"k", now));
    }

    #[test]
    fn the_origin_budget_caps_the_process_and_tracks_contention() {
        let (leases, _rx) = Leases::with_origin_cap(2, Duration::from_secs(10), 3).unwrap();
        let budget = &leases.origin_budget;
        assert!(budget.try_take() && budget.try_take() && budget.try_take());
        assert!(!budget.try_take(), "a fourth connection is over the cap");
        assert_eq!(budget.open_count(), 3);
        budget.give_back();
        assert!(budget.try_take(), "a slot given back can be taken again");
        assert!(!budget.is_contended());
        budget.set_starving(true);
        budget.set_starving(true);
        budget.set_starving(false);
        assert!(budget.is_contended(), "one worker still waits");
        budget.set_starving(false);
        assert!(!budget.is_contended());
    }

    #[test]
    fn the_origin_budget_holds_under_threads() {
        let (leases, _rx) = Leases::with_origin_cap(4, Duration::from_secs(10), 5).unwrap();
        let leases = std::sync::Arc::new(leases);
        let peak = std::sync::Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (leases, peak) = (leases.clone(), peak.clone());
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        if leases.origin_budget.try_take() {
                            peak.fetch_max(leases.origin_budget.open_count(), Ordering::Relaxed);
                            leases.origin_budget.give_back();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(peak.load(Ordering::Relaxed) <= 5);
        assert_eq!(leases.origin_budget.open_count(), 0);
    }

    #[test]
    fn an_overdue_lease_is_taken_over_and_the_old_release_is_ignored() {
        let (leases, _rx) = Leases::new(2, Duration::from_millis(10)).unwrap();
        let t0 = Instant::now();
        assert_eq!(leases.acquire(0, 1, b"k", t0), Acquire::Filler);
        let later = t0 + Duration::from_millis(20);
        assert_eq!(leases.acquire(1, 1, b"k", later), Acquire::TakenOver);
        leases.release(0, 1, b"k", FillEnd::Stored); // the old filler: not the owner
        assert_eq!(leases.acquire(0, 1, b"k", later), Acquire::Waiting);
    }
}
