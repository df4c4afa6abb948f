//! Refresh instead of purge (`"mode": "refresh"`): the objects named are
//! made stale as a soft purge makes them, and their keys wait here for a
//! background refetch, so that the next client finds a fresh object and a
//! mass purge never turns into a stampede on the origin.
//!
//! ```text
//!  admin thread (Invalidator::apply)         worker, every loop turn
//!  ─────────────────────────────────         ───────────────────────────────
//!  soft purge of each object                 has_work(now)? three relaxed loads
//!  push(hash, key) ─▶ [ keys … ] ──take()──▶ a rate token and an in-flight
//!   full: counted as dropped,     ≤ queue_max  slot, or nothing
//!   the object stays soft-purged             └▶ the key's lease and fill, then
//!                                               a conditional GET (proxy::
//!                                               revalidate::refresh_queued)
//!  RefreshTicket (moves with the fetch) ── dropped when the fetch ends:
//!                                          in-flight slot back, done/failed/skipped
//! ```
//!
//! Limits, all from `[invalidation]`: `refresh_queue_max` keys wait at
//! most; `refresh_rate` refreshes start per second (a token bucket that
//! holds at most one second's worth or `refresh_concurrency_max` tokens,
//! whichever is fewer); `refresh_concurrency_max` refresh requests are at
//! the origin at once, over all workers. These belong to an origin: the
//! queue and its limiter sit beside the other per-origin state the workers
//! share (`proxy::lease::OriginBudget`), and ringcache has one origin, so
//! there is one queue. A refresh is a fetch like any other: it goes through
//! the origin pool and the process-wide connection cap too.
//!
//! Outcomes, counted in `ringcache_invalidation_refreshes_total{result}`:
//! `queued`; `done` (a fresh object is stored: a 200, or a 304 merged into
//! the stored one); `failed` (the origin failed or its answer could not be
//! stored: the object stays soft-purged); `dropped` (the queue was full);
//! `skipped` (nothing to fetch when its turn came: the object is gone or
//! fresh again, or another fetch for the key is under way and will bring
//! it).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The `result` labels of `ringcache_invalidation_refreshes_total`, in
/// counter order.
pub const REFRESH_RESULTS: [&str; 5] = ["queued", "done", "failed", "dropped", "skipped"];

/// How a refresh taken from the queue ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshEnd {
    Done,
    Failed,
    Skipped,
}

/// Keys waiting for a background refetch, and the limits of taking them.
pub struct RefreshQueue {
    inner: Mutex<Inner>,
    /// `inner.keys.len()`, readable without the lock.
    depth: AtomicUsize,
    /// Refreshes taken and not yet ended.
    in_flight: AtomicUsize,
    /// Microseconds after `epoch` before which no rate token is due: set
    /// when a take finds the bucket empty, so that workers do not take
    /// the lock every loop turn while the rate holds them back.
    next_token_us: AtomicU64,
    epoch: Instant,
    queue_max: usize,
    concurrency_max: usize,
    rate_per_sec: f64,
    burst: f64,
    /// Per [`REFRESH_RESULTS`].
    counts: [AtomicU64; 5],
}

struct Inner {
    keys: VecDeque<(u64, Box<[u8]>)>,
    /// Rate tokens now (one starts one refresh), and when they were counted.
    tokens: f64,
    counted_at: Instant,
}

/// A key taken from the queue: refetch it, then drop the ticket.
pub struct RefreshJob {
    pub hash: u64,
    pub key: Box<[u8]>,
    pub ticket: RefreshTicket,
}

/// One in-flight slot of the queue, held by the refresh that took it.
/// Dropping it gives the slot back and counts how the refresh ended
/// (`Failed` unless [`RefreshTicket::finish`] said otherwise, so a fetch
/// that ends on any error path counts as failed).
pub struct RefreshTicket {
    queue: Arc<RefreshQueue>,
    end: RefreshEnd,
}

impl std::fmt::Debug for RefreshTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshTicket")
            .field("end", &self.end)
            .finish()
    }
}

impl RefreshTicket {
    /// How the refresh ended, counted when the ticket is dropped.
    pub fn finish(&mut self, end: RefreshEnd) {
        self.end = end;
    }
}

impl Drop for RefreshTicket {
    fn drop(&mut self) {
        // Relaxed: a count of slots, guarding no other memory.
        let before = self.queue.in_flight.fetch_sub(1, Ordering::Relaxed);
        debug_assert!(before > 0, "more refresh slots given back than taken");
        let i = match self.end {
            RefreshEnd::Done => 1,
            RefreshEnd::Failed => 2,
            RefreshEnd::Skipped => 4,
        };
        // Relaxed: a statistic.
        self.queue.counts[i].fetch_add(1, Ordering::Relaxed);
    }
}

impl RefreshQueue {
    /// `rate_per_sec` and `concurrency_max` at least 1.
    pub fn new(queue_max: usize, rate_per_sec: u32, concurrency_max: usize) -> RefreshQueue {
        assert!(
            rate_per_sec >= 1 && concurrency_max >= 1,
            "checked by config"
        );
        let rate = f64::from(rate_per_sec);
        let burst = rate.min(concurrency_max as f64).max(1.0);
        let epoch = Instant::now();
        RefreshQueue {
            inner: Mutex::new(Inner {
                keys: VecDeque::new(),
                tokens: burst,
                counted_at: epoch,
            }),
            depth: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            next_token_us: AtomicU64::new(0),
            epoch,
            queue_max,
            concurrency_max,
            rate_per_sec: rate,
            burst,
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every update leaves the deque and the bucket consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue `key` for a refetch; `false` (counted as dropped) when the
    /// queue holds `refresh_queue_max` keys.
    pub fn push(&self, hash: u64, key: &[u8]) -> bool {
        let mut inner = self.lock();
        if inner.keys.len() >= self.queue_max {
            // Relaxed: a statistic.
            self.counts[3].fetch_add(1, Ordering::Relaxed);
            return false;
        }
        inner.keys.push_back((hash, key.into()));
        // Relaxed: a hint for `has_work`; the deque under the lock is the truth.
        self.depth.store(inner.keys.len(), Ordering::Relaxed);
        self.counts[0].fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Anything to take at `now`? Lock-free, for every loop turn of a worker.
    #[inline]
    pub fn has_work(&self, now: Instant) -> bool {
        // Relaxed: hints; `take` decides under the lock and the CAS.
        self.depth.load(Ordering::Relaxed) > 0
            && self.in_flight.load(Ordering::Relaxed) < self.concurrency_max
            && self.micros(now) >= self.next_token_us.load(Ordering::Relaxed)
    }

    fn micros(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_micros()).unwrap_or(u64::MAX)
    }

    /// The next key to refresh, when the rate and the in-flight limit allow.
    pub fn take(self: &Arc<Self>, now: Instant) -> Option<RefreshJob> {
        let mut inner = self.lock();
        if inner.keys.is_empty() {
            return None;
        }
        let elapsed = now.saturating_duration_since(inner.counted_at);
        inner.tokens = (inner.tokens + elapsed.as_secs_f64() * self.rate_per_sec).min(self.burst);
        inner.counted_at = now.max(inner.counted_at);
        if inner.tokens < 1.0 {
            let wait_us = ((1.0 - inner.tokens) / self.rate_per_sec * 1e6).ceil() as u64;
            // Relaxed: a hint for `has_work`, written under the lock.
            self.next_token_us
                .store(self.micros(now).saturating_add(wait_us), Ordering::Relaxed);
            return None;
        }
        // Relaxed: the CAS alone keeps the in-flight count exact.
        self.in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.concurrency_max).then_some(n + 1)
            })
            .ok()?;
        let (hash, key) = inner.keys.pop_front().expect("checked non-empty");
        inner.tokens -= 1.0;
        self.depth.store(inner.keys.len(), Ordering::Relaxed);
        Some(RefreshJob {
            hash,
            key,
            ticket: RefreshTicket {
                queue: Arc::clone(self),
                end: RefreshEnd::Failed,
            },
        })
    }

    /// Keys waiting now.
    pub fn depth(&self) -> usize {
        // Relaxed: a gauge.
        self.depth.load(Ordering::Relaxed)
    }

    /// Refreshes taken and not yet ended.
    pub fn in_flight(&self) -> usize {
        // Relaxed: a gauge.
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Totals per [`REFRESH_RESULTS`].
    pub fn counts(&self) -> [u64; 5] {
        // Relaxed: statistics.
        std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_queue_is_bounded_and_counts_what_it_drops() {
        let q = RefreshQueue::new(2, 100, 4);
        assert!(q.push(1, b"a") && q.push(2, b"b"));
        assert!(!q.push(3, b"c"), "a third key is over the limit");
        assert_eq!(q.depth(), 2);
        assert_eq!(q.counts(), [2, 0, 0, 1, 0]);
    }

    #[test]
    fn in_flight_slots_cap_the_takes_and_tickets_give_them_back() {
        let q = Arc::new(RefreshQueue::new(16, 1000, 2));
        for i in 0..5u8 {
            assert!(q.push(u64::from(i), &[i]));
        }
        let now = Instant::now();
        let mut a = q.take(now).unwrap();
        let b = q.take(now).unwrap();
        assert_eq!((a.key[0], b.key[0]), (0, 1), "first in, first out");
        // A rate token more a little later (a bucket of two at 1000/s).
        let later = now + Duration::from_millis(10);
        assert!(q.take(later).is_none(), "two in flight at most");
        assert!(!q.has_work(later));
        a.ticket.finish(RefreshEnd::Done);
        drop(a);
        assert!(q.has_work(later), "a slot is free again");
        let c = q.take(later).unwrap();
        drop(b); // ended without a word: failed
        let mut c = c;
        c.ticket.finish(RefreshEnd::Skipped);
        drop(c);
        assert_eq!(q.in_flight(), 0);
        assert_eq!(q.counts(), [5, 1, 1, 0, 1]);
        assert_eq!(q.depth(), 2);
    }

    #[test]
    fn the_rate_spreads_the_takes() {
        let q = Arc::new(RefreshQueue::new(16, 2, 8));
        for i in 0..6u8 {
            q.push(u64::from(i), &[i]);
        }
        let t0 = Instant::now();
        // A bucket of two tokens (the rate is below the concurrency).
        let first: Vec<_> = std::iter::from_fn(|| q.take(t0)).collect();
        assert_eq!(first.len(), 2);
        let t1 = t0 + Duration::from_millis(100);
        assert!(q.take(t1).is_none());
        assert!(!q.has_work(t1), "no token due yet: no need to look");
        let t2 = t0 + Duration::from_millis(600);
        assert!(q.has_work(t2));
        assert!(q.take(t2).is_some());
        drop(first);
    }
}
