//! Per-core counters, summed on scrape.
//!
//! Each worker owns one cache-line-padded block of counters and is its only
//! writer, so an increment is a relaxed load and store (no locked
//! instruction, no shared cache line). The admin thread reads every block
//! and sums; a scrape may see a worker's counters a few increments old,
//! never torn.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

/// Every counter a worker keeps. The discriminant is the index in the block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Counter {
    /// Requests parsed (including those answered with an error).
    Requests,
    /// Requests answered from the cache.
    Hits,
    /// Cacheable lookups that found nothing usable.
    Misses,
    /// Requests that bypass the cache (unsafe methods and the like).
    Passes,
    /// Requests sent to the origin (including retries).
    OriginFetches,
    /// Responses written into the store.
    Stored,
    /// Client connections accepted.
    ConnectionsAccepted,
    /// Client connections closed.
    ConnectionsClosed,
    /// Client connections refused at accept (limits.connections_max).
    ConnectionsRejected,
    /// Origin connections opened.
    OriginConnections,
    /// Requests retried once on a fresh origin connection.
    OriginRetries,
    /// Responses written to clients.
    Responses,
    /// Requests that waited for another request's fetch of the same key.
    Coalesced,
    /// Waiting requests released to fetch alone after the wait limit.
    CoalesceTimeouts,
    /// Keys marked hit-for-miss (answer not cacheable: no waiting next time).
    HitForMiss,
    /// Stored objects removed because a write answered for them (RFC 9111 §4.4).
    Invalidated,
    /// Errors, by kind; see [`ERROR_KINDS`].
    ErrBadRequest,
    ErrHeadTooLarge,
    ErrBodyTooLarge,
    ErrVersion,
    ErrNotImplemented,
    ErrMethod,
    ErrClientTimeout,
    ErrClientOverflow,
    ErrOriginConnect,
    ErrOriginTimeout,
    ErrOriginResponse,
    ErrOriginClosed,
    ErrOriginBusy,
}

/// Number of counters in a block.
pub const COUNTERS_COUNT: usize = Counter::ErrOriginBusy as usize + 1;

/// The error counters and their `kind` label.
pub const ERROR_KINDS: [(Counter, &str); 13] = [
    (Counter::ErrBadRequest, "bad_request"),
    (Counter::ErrHeadTooLarge, "head_too_large"),
    (Counter::ErrBodyTooLarge, "body_too_large"),
    (Counter::ErrVersion, "version"),
    (Counter::ErrNotImplemented, "not_implemented"),
    (Counter::ErrMethod, "method"),
    (Counter::ErrClientTimeout, "client_timeout"),
    (Counter::ErrClientOverflow, "client_overflow"),
    (Counter::ErrOriginConnect, "origin_connect"),
    (Counter::ErrOriginTimeout, "origin_timeout"),
    (Counter::ErrOriginResponse, "origin_response"),
    (Counter::ErrOriginClosed, "origin_closed"),
    (Counter::ErrOriginBusy, "origin_busy"),
];

/// One worker's counters.
pub struct WorkerCounters {
    values: [AtomicU64; COUNTERS_COUNT],
}

impl WorkerCounters {
    fn new() -> Self {
        WorkerCounters {
            values: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Add one. Only the owning worker calls this.
    #[inline]
    pub fn incr(&self, c: Counter) {
        self.add(c, 1);
    }

    /// Add `n`. Only the owning worker calls this.
    #[inline]
    pub fn add(&self, c: Counter, n: u64) {
        let v = &self.values[c as usize];
        // Relaxed: single writer; readers only need a value that was current
        // at some point, and a plain load+store avoids a locked instruction.
        v.store(v.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }

    /// Current value.
    pub fn get(&self, c: Counter) -> u64 {
        // Relaxed: a monotonic counter read for reporting.
        self.values[c as usize].load(Ordering::Relaxed)
    }
}

/// Gauges that are not per-core counters, read on scrape.
pub struct StoreGauges {
    pub bytes_used: u64,
    pub bytes_max: u64,
    pub items: u64,
    pub evictions: u64,
    pub expirations: u64,
    /// Items recovered from the store file at start.
    pub recovered: u64,
    /// Items dropped at start (torn, bad checksum, older version).
    pub dropped: u64,
    /// CLOCK-Pro's resident hot and cold entries, test entries, cold target.
    pub clockpro: Option<[u64; 4]>,
}

/// All workers' counters.
pub struct Metrics {
    workers: Box<[CachePadded<WorkerCounters>]>,
}

impl Metrics {
    pub fn new(workers_count: usize) -> Self {
        Metrics {
            workers: (0..workers_count)
                .map(|_| CachePadded::new(WorkerCounters::new()))
                .collect(),
        }
    }

    /// The block worker `index` writes.
    pub fn worker(&self, index: usize) -> &WorkerCounters {
        &self.workers[index]
    }

    /// Sum of one counter over every worker.
    pub fn total(&self, c: Counter) -> u64 {
        self.workers.iter().map(|w| w.get(c)).sum()
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self, store: &StoreGauges) -> String {
        let mut out = String::with_capacity(4096);
        let counters: [(&str, Counter, &str); 15] = [
            (
                "ringcache_requests_total",
                Counter::Requests,
                "Requests parsed.",
            ),
            (
                "ringcache_responses_total",
                Counter::Responses,
                "Responses written to clients.",
            ),
            (
                "ringcache_cache_hits_total",
                Counter::Hits,
                "Requests answered from the cache.",
            ),
            (
                "ringcache_cache_misses_total",
                Counter::Misses,
                "Cacheable lookups that missed.",
            ),
            (
                "ringcache_cache_passes_total",
                Counter::Passes,
                "Requests that bypass the cache.",
            ),
            (
                "ringcache_cache_stored_total",
                Counter::Stored,
                "Responses stored.",
            ),
            (
                "ringcache_origin_fetches_total",
                Counter::OriginFetches,
                "Requests sent to the origin.",
            ),
            (
                "ringcache_origin_connections_total",
                Counter::OriginConnections,
                "Origin connections opened.",
            ),
            (
                "ringcache_origin_retries_total",
                Counter::OriginRetries,
                "Requests retried on a fresh origin connection.",
            ),
            (
                "ringcache_coalesced_total",
                Counter::Coalesced,
                "Requests that waited for another request's fetch of the same key.",
            ),
            (
                "ringcache_coalesce_timeouts_total",
                Counter::CoalesceTimeouts,
                "Waiting requests released to fetch alone after the wait limit.",
            ),
            (
                "ringcache_hit_for_miss_total",
                Counter::HitForMiss,
                "Keys marked hit-for-miss (their answer could not be shared).",
            ),
            (
                "ringcache_invalidations_total",
                Counter::Invalidated,
                "Stored objects removed because a write to them succeeded.",
            ),
            (
                "ringcache_connections_accepted_total",
                Counter::ConnectionsAccepted,
                "Client connections accepted.",
            ),
            (
                "ringcache_connections_rejected_total",
                Counter::ConnectionsRejected,
                "Client connections refused at the connection limit.",
            ),
        ];
        for (name, c, help) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", self.total(c));
        }
        let _ = writeln!(
            out,
            "# HELP ringcache_errors_total Errors by kind.\n# TYPE ringcache_errors_total counter"
        );
        for (c, kind) in ERROR_KINDS {
            let _ = writeln!(
                out,
                "ringcache_errors_total{{kind=\"{kind}\"}} {}",
                self.total(c)
            );
        }
        let open = self
            .total(Counter::ConnectionsAccepted)
            .saturating_sub(self.total(Counter::ConnectionsClosed));
        let _ = writeln!(
            out,
            "# HELP ringcache_connections_open Client connections open now.\n# TYPE ringcache_connections_open gauge\nringcache_connections_open {open}"
        );
        let _ = writeln!(
            out,
            "# HELP ringcache_worker_requests_total Requests parsed, per worker.\n# TYPE ringcache_worker_requests_total counter"
        );
        for (i, w) in self.workers.iter().enumerate() {
            let _ = writeln!(
                out,
                "ringcache_worker_requests_total{{worker=\"{i}\"}} {}",
                w.get(Counter::Requests)
            );
        }
        let gauges: [(&str, u64, &str, &str); 7] = [
            (
                "ringcache_store_expirations_total",
                store.expirations,
                "counter",
                "Expired objects reclaimed ahead of live ones.",
            ),
            (
                "ringcache_store_recovered_items",
                store.recovered,
                "gauge",
                "Objects recovered from the store file at start.",
            ),
            (
                "ringcache_store_dropped_items",
                store.dropped,
                "gauge",
                "Objects dropped at start (torn, bad checksum, older version).",
            ),
            (
                "ringcache_store_bytes_used",
                store.bytes_used,
                "gauge",
                "Bytes the store holds.",
            ),
            (
                "ringcache_store_bytes_max",
                store.bytes_max,
                "gauge",
                "The store's byte cap.",
            ),
            (
                "ringcache_store_items",
                store.items,
                "gauge",
                "Objects in the store.",
            ),
            (
                "ringcache_store_evictions_total",
                store.evictions,
                "counter",
                "Objects evicted to make room.",
            ),
        ];
        for (name, v, kind, help) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
        if let Some([hot, cold, test, cold_target]) = store.clockpro {
            let _ = writeln!(
                out,
                "# HELP ringcache_clockpro_entries CLOCK-Pro entries: resident hot and cold, non-resident in test.\n# TYPE ringcache_clockpro_entries gauge"
            );
            for (state, v) in [("hot", hot), ("cold", cold), ("test", test)] {
                let _ = writeln!(out, "ringcache_clockpro_entries{{state=\"{state}\"}} {v}");
            }
            let _ = writeln!(
                out,
                "# HELP ringcache_clockpro_cold_target CLOCK-Pro's adaptive cold target m_c, entries.\n# TYPE ringcache_clockpro_cold_target gauge\nringcache_clockpro_cold_target {cold_target}"
            );
        }
        out
    }
}

/// Invalidation figures, read on scrape (kept by `invalidate`, which is
/// shared by the workers and the admin thread, not per core).
pub struct InvalidationGauges {
    /// Purges by `kind` label.
    pub purges: [(&'static str, u64); 6],
    /// Objects invalidated (now, or by a ban on lookup).
    pub invalidated: u64,
    pub bans_active: u64,
    /// Estimated bytes held by the tag index.
    pub tag_index_bytes: u64,
}

/// Append the invalidation series to a `/metrics` page.
pub fn render_invalidation(out: &mut String, g: &InvalidationGauges) {
    let _ = writeln!(
        out,
        "# HELP ringcache_purges_total Invalidation selectors applied, by kind.\n# TYPE ringcache_purges_total counter"
    );
    for (kind, v) in g.purges {
        let _ = writeln!(out, "ringcache_purges_total{{kind=\"{kind}\"}} {v}");
    }
    for (name, v, kind, help) in [
        (
            "ringcache_invalidated_objects_total",
            g.invalidated,
            "counter",
            "Objects removed or made stale by purges and bans.",
        ),
        (
            "ringcache_bans_active",
            g.bans_active,
            "gauge",
            "Bans checked on lookup now.",
        ),
        (
            "ringcache_tag_index_bytes",
            g.tag_index_bytes,
            "gauge",
            "Bytes held by the tag index (estimate), reserved out of memory.",
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_sum_over_workers() {
        let m = Metrics::new(3);
        m.worker(0).incr(Counter::Hits);
        m.worker(2).add(Counter::Hits, 4);
        m.worker(1).incr(Counter::ErrOriginTimeout);
        assert_eq!(m.total(Counter::Hits), 5);
        let text = m.render(&StoreGauges {
            bytes_used: 1,
            bytes_max: 2,
            items: 3,
            evictions: 0,
            expirations: 0,
            recovered: 0,
            dropped: 0,
            clockpro: Some([5, 6, 7, 8]),
        });
        assert!(text.contains("ringcache_cache_hits_total 5\n"), "{text}");
        assert!(text.contains("ringcache_errors_total{kind=\"origin_timeout\"} 1\n"));
        assert!(text.contains("ringcache_store_items 3\n"));
        assert!(
            text.contains("ringcache_clockpro_entries{state=\"test\"} 7\n"),
            "{text}"
        );
        assert!(
            text.contains("ringcache_clockpro_cold_target 8\n"),
            "{text}"
        );
    }

    #[test]
    fn error_kinds_cover_every_error_counter() {
        assert_eq!(
            ERROR_KINDS.len(),
            COUNTERS_COUNT - Counter::ErrBadRequest as usize
        );
        for (i, (c, _)) in ERROR_KINDS.iter().enumerate() {
            assert_eq!(*c as usize, Counter::ErrBadRequest as usize + i);
        }
    }
}
