//! Per-core counters and histograms, summed on scrape.
//!
//! Each worker owns one cache-line-padded block of counters and is its only
//! writer, so an increment is a relaxed load and store (no locked
//! instruction, no shared cache line). The admin thread reads every block
//! and sums; a scrape may see a worker's counters a few increments old,
//! never torn.
//!
//! Histograms are counters too: fixed log-scale buckets, one atomic per
//! bucket plus the sum, in the same per-worker block. Bucket `i` counts the
//! values below `2^i` (durations in whole microseconds), so recording is a
//! leading-zeros count and two relaxed stores; merging workers is adding
//! their buckets, which the scrape does.
//!
//! ```text
//!   bucket   0     1     2      3      …   25            26
//!   values   0     1     2..3   4..7   …   2^24..2^25-1  2^25 and more (+Inf)
//!   le (µs)  1     2     4      8      …   2^25 (33.5 s)
//! ```

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
    /// Origin connections gone (closed and their slot freed).
    OriginConnectionsClosed,
    /// Fill leases taken over from a filler that overran the wait limit.
    LeaseTakeovers,
    /// Responses queued for clients, by status class; see [`STATUS_CLASSES`].
    Status1xx,
    Status2xx,
    Status3xx,
    Status4xx,
    Status5xx,
    /// Responses by what the cache did; see [`CACHE_OUTCOMES`].
    OutcomeHit,
    OutcomeMiss,
    OutcomeStale,
    OutcomeCollapsed,
    OutcomeRequest,
    OutcomeMethod,
    OutcomeBypass,
    OutcomeError,
    /// Misses by RFC 9211 `fwd` reason; see [`MISS_REASONS`].
    MissUri,
    MissVary,
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
    /// Background refreshes started for stale-while-revalidate (RFC 5861 §3).
    Refreshes,
    /// Leased misses and refreshes that looked in the store again once they
    /// held the key's lease; see [`LEASE_RECHECKS`].
    LeaseRecheckHit,
    LeaseRecheckMiss,
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

/// The status class counters and their `code` label.
pub const STATUS_CLASSES: [(Counter, &str); 5] = [
    (Counter::Status1xx, "1xx"),
    (Counter::Status2xx, "2xx"),
    (Counter::Status3xx, "3xx"),
    (Counter::Status4xx, "4xx"),
    (Counter::Status5xx, "5xx"),
];

/// What the cache did for a response, and the `outcome` label:
/// - `hit`: answered from the store;
/// - `miss`, `stale`, `request`, `method`: answered by the origin, with the
///   Cache-Status `fwd` reason of the same name (`miss` counts both
///   `uri-miss` and `vary-miss`);
/// - `collapsed`: answered from another request's fetch of the same key;
/// - `bypass`: sent to the origin without waiting for others, because the
///   key's last answer could not be shared (hit-for-miss);
/// - `error`: an error ringcache answered itself (bad request, origin
///   unreachable or timed out, queue full).
pub const CACHE_OUTCOMES: [(Counter, &str); 8] = [
    (Counter::OutcomeHit, "hit"),
    (Counter::OutcomeMiss, "miss"),
    (Counter::OutcomeStale, "stale"),
    (Counter::OutcomeCollapsed, "collapsed"),
    (Counter::OutcomeRequest, "request"),
    (Counter::OutcomeMethod, "method"),
    (Counter::OutcomeBypass, "bypass"),
    (Counter::OutcomeError, "error"),
];

/// Why a miss went to the origin (`outcome="miss"` above, split), and the
/// `reason` label: nothing stored under the URI, or responses stored but
/// none for the request's `Vary` fields.
pub const MISS_REASONS: [(Counter, &str); 2] = [
    (Counter::MissUri, "uri-miss"),
    (Counter::MissVary, "vary-miss"),
];

/// Second looks in the store under a freshly taken fill lease, and the
/// `result` label: `hit` when another worker's fill had stored the key
/// since this worker's lookup (nothing is fetched), `miss` otherwise.
pub const LEASE_RECHECKS: [(Counter, &str); 2] = [
    (Counter::LeaseRecheckHit, "hit"),
    (Counter::LeaseRecheckMiss, "miss"),
];

/// The status class counter for a status code (1xx to 5xx; others count as 5xx).
pub fn status_class(status: u16) -> Counter {
    match status / 100 {
        1 => Counter::Status1xx,
        2 => Counter::Status2xx,
        3 => Counter::Status3xx,
        4 => Counter::Status4xx,
        _ => Counter::Status5xx,
    }
}

/// Every histogram a worker keeps. The discriminant is the index in the block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Histogram {
    /// Request parsed → response queued, answered from the cache (µs).
    RequestHit,
    /// The same, answered after asking the origin (or waiting for another fetch).
    RequestMiss,
    /// The same, for requests that bypass the cache (other methods).
    RequestPass,
    /// Origin request sent → response complete (µs).
    Origin,
    /// Requests of one worker that waited for one fill (a count).
    CoalesceWaiters,
    /// Time a request waited for another's fetch (µs).
    CoalesceWait,
}

/// Number of histograms in a block.
pub const HISTOGRAMS_COUNT: usize = Histogram::CoalesceWait as usize + 1;
/// Finite buckets: bucket `i` counts values below `2^i`.
pub const HISTOGRAM_FINITE_BUCKETS_COUNT: usize = 26;
/// Finite buckets plus the overflow (+Inf) bucket.
pub const HISTOGRAM_BUCKETS_COUNT: usize = HISTOGRAM_FINITE_BUCKETS_COUNT + 1;

/// The bucket a value falls in.
#[inline]
pub fn bucket_index(v: u64) -> usize {
    ((u64::BITS - v.leading_zeros()) as usize).min(HISTOGRAM_FINITE_BUCKETS_COUNT)
}

/// One histogram's cells in a worker's block.
struct HistogramCells {
    buckets: [AtomicU64; HISTOGRAM_BUCKETS_COUNT],
    sum: AtomicU64,
}

/// A histogram summed over workers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Per bucket (not cumulative).
    pub buckets: [u64; HISTOGRAM_BUCKETS_COUNT],
    pub sum: u64,
}

impl HistogramSnapshot {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The bound of the bucket holding quantile `q` (0..=1), in the recorded
    /// unit: every value in that bucket is below it. `u64::MAX` when it is
    /// the overflow bucket, 0 when the histogram is empty.
    pub fn quantile_bound(&self, q: f64) -> u64 {
        let count = self.count();
        if count == 0 {
            return 0;
        }
        let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return if i < HISTOGRAM_FINITE_BUCKETS_COUNT {
                    1 << i
                } else {
                    u64::MAX
                };
            }
        }
        u64::MAX
    }
}

/// One worker's counters.
pub struct WorkerCounters {
    values: [AtomicU64; COUNTERS_COUNT],
    histograms: [HistogramCells; HISTOGRAMS_COUNT],
}

impl WorkerCounters {
    fn new() -> Self {
        WorkerCounters {
            values: std::array::from_fn(|_| AtomicU64::new(0)),
            histograms: std::array::from_fn(|_| HistogramCells {
                buckets: std::array::from_fn(|_| AtomicU64::new(0)),
                sum: AtomicU64::new(0),
            }),
        }
    }

    /// Record one value. Only the owning worker calls this.
    #[inline]
    pub fn record(&self, h: Histogram, v: u64) {
        let cells = &self.histograms[h as usize];
        let bucket = &cells.buckets[bucket_index(v)];
        // Relaxed: single writer, as for counters. A scrape may see the
        // bucket and the sum one value apart; never a torn value.
        bucket.store(bucket.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        let sum = &cells.sum;
        sum.store(
            sum.load(Ordering::Relaxed).wrapping_add(v),
            Ordering::Relaxed,
        );
    }

    /// Record a duration in whole microseconds.
    #[inline]
    pub fn record_duration(&self, h: Histogram, d: Duration) {
        self.record(h, u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
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
    /// Of `evictions`, those made because the index was full.
    pub index_evictions: u64,
    /// Index slots: the store holds at most 15/16 of this many objects.
    pub index_slots: u64,
    pub expirations: u64,
    /// Items recovered from the store file at start.
    pub recovered: u64,
    /// Items dropped at start (torn, bad checksum, older version).
    pub dropped: u64,
    /// Seconds the store's open took at start, its recovery scan included.
    pub recovery_secs: f64,
    /// CLOCK-Pro's resident hot and cold entries, test entries, cold target.
    pub clockpro: Option<[u64; 4]>,
}

/// All workers' counters.
pub struct Metrics {
    workers: Box<[CachePadded<WorkerCounters>]>,
    /// The invalidation bus's series, once a bus is attached.
    bus: std::sync::OnceLock<std::sync::Arc<BusMetrics>>,
    /// The access log's series (`crate::access_log`).
    pub access_log: AccessLogMetrics,
}

impl Metrics {
    pub fn new(workers_count: usize) -> Self {
        Metrics {
            workers: (0..workers_count)
                .map(|_| CachePadded::new(WorkerCounters::new()))
                .collect(),
            bus: std::sync::OnceLock::new(),
            access_log: AccessLogMetrics::default(),
        }
    }

    /// Render the bus's series with the others from now on (once).
    pub fn attach_bus(&self, bus: std::sync::Arc<BusMetrics>) {
        let _ = self.bus.set(bus);
    }

    /// The block worker `index` writes.
    pub fn worker(&self, index: usize) -> &WorkerCounters {
        &self.workers[index]
    }

    /// Sum of one counter over every worker.
    pub fn total(&self, c: Counter) -> u64 {
        self.workers.iter().map(|w| w.get(c)).sum()
    }

    /// One histogram summed over every worker.
    pub fn histogram(&self, h: Histogram) -> HistogramSnapshot {
        let mut snap = HistogramSnapshot {
            buckets: [0; HISTOGRAM_BUCKETS_COUNT],
            sum: 0,
        };
        for w in self.workers.iter() {
            let cells = &w.histograms[h as usize];
            for (into, b) in snap.buckets.iter_mut().zip(cells.buckets.iter()) {
                // Relaxed: a monotonic counter read for reporting.
                *into += b.load(Ordering::Relaxed);
            }
            snap.sum = snap.sum.wrapping_add(cells.sum.load(Ordering::Relaxed));
        }
        snap
    }

    /// Origin connections open now, over every worker.
    pub fn origin_connections_open(&self) -> u64 {
        self.total(Counter::OriginConnections)
            .saturating_sub(self.total(Counter::OriginConnectionsClosed))
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
            "# HELP ringcache_refreshes_total Background refreshes of stale objects (stale-while-revalidate).\n# TYPE ringcache_refreshes_total counter\nringcache_refreshes_total {}",
            self.total(Counter::Refreshes)
        );
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
        for (name, help, table, label) in [
            (
                "ringcache_responses_by_status_total",
                "Responses queued for clients, by status class.",
                &STATUS_CLASSES[..],
                "code",
            ),
            (
                "ringcache_cache_status_total",
                "Responses by what the cache did (hit, forwarded and why, collapsed, error).",
                &CACHE_OUTCOMES[..],
                "outcome",
            ),
            (
                "ringcache_misses_total",
                "Misses answered by the origin, by Cache-Status fwd reason (uri-miss, vary-miss).",
                &MISS_REASONS[..],
                "reason",
            ),
            (
                "ringcache_lease_rechecks_total",
                "Leased misses and refreshes that looked in the store again under the lease (hit: stored by another worker meanwhile, not fetched).",
                &LEASE_RECHECKS[..],
                "result",
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (c, value) in table {
                let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {}", self.total(*c));
            }
        }
        let _ = writeln!(
            out,
            "# HELP ringcache_lease_takeovers_total Fill leases taken over from a filler that overran the wait limit.\n# TYPE ringcache_lease_takeovers_total counter\nringcache_lease_takeovers_total {}",
            self.total(Counter::LeaseTakeovers)
        );
        let _ = writeln!(
            out,
            "# HELP ringcache_origin_connections_open Origin connections open now.\n# TYPE ringcache_origin_connections_open gauge\nringcache_origin_connections_open {}",
            self.origin_connections_open()
        );
        self.render_histograms(&mut out);
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
        let gauges: [(&str, u64, &str, &str); 9] = [
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
            (
                "ringcache_store_index_evictions_total",
                store.index_evictions,
                "counter",
                "Of the evictions, those made because the index, not the bytes, was full (see memory_per_index_slot).",
            ),
            (
                "ringcache_store_index_slots",
                store.index_slots,
                "gauge",
                "Index slots; the store holds at most 15/16 of this many objects.",
            ),
        ];
        for (name, v, kind, help) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP ringcache_store_recovery_seconds Seconds the store's open took at start, its recovery scan included.\n# TYPE ringcache_store_recovery_seconds gauge\nringcache_store_recovery_seconds {}",
            store.recovery_secs
        );
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
        if let Some(bus) = self.bus.get() {
            bus.render(&mut out);
        }
        self.access_log.render(&mut out);
        out
    }

    fn render_histograms(&self, out: &mut String) {
        /// Name, help, and each series' histogram with its labels.
        type Family = (
            &'static str,
            &'static str,
            &'static [(Histogram, &'static str)],
        );
        let seconds: [Family; 3] = [
            (
                "ringcache_request_duration_seconds",
                "Time from a parsed request to its queued response, by what the cache did.",
                &[
                    (Histogram::RequestHit, "cache=\"hit\""),
                    (Histogram::RequestMiss, "cache=\"miss\""),
                    (Histogram::RequestPass, "cache=\"pass\""),
                ],
            ),
            (
                "ringcache_origin_duration_seconds",
                "Time from sending a request to the origin to its complete response.",
                &[(Histogram::Origin, "")],
            ),
            (
                "ringcache_coalesce_wait_seconds",
                "Time a request waited for another request's fetch of the same key.",
                &[(Histogram::CoalesceWait, "")],
            ),
        ];
        for (name, help, series) in seconds {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for (h, labels) in series {
                write_histogram(out, name, labels, &self.histogram(*h), 1e6);
            }
        }
        let name = "ringcache_coalesce_waiters_per_fill";
        let _ = writeln!(
            out,
            "# HELP {name} Requests of one worker that waited for one fill of a key.\n# TYPE {name} histogram"
        );
        write_histogram(
            out,
            name,
            "",
            &self.histogram(Histogram::CoalesceWaiters),
            1.0,
        );
    }
}

/// One histogram's series: cumulative buckets, sum and count. A recorded
/// value divided by `per_unit` is in the metric's unit (1e6 for microseconds
/// → seconds, 1 for counts).
/// Buckets hold values below `2^i` recorded; for a count that is `le` `2^i - 1`,
/// for a duration truncated to whole microseconds `le` `2^i` µs.
fn write_histogram(
    out: &mut String,
    name: &str,
    labels: &str,
    h: &HistogramSnapshot,
    per_unit: f64,
) {
    let sep = if labels.is_empty() { "" } else { "," };
    let mut cumulative = 0;
    for (i, n) in h.buckets.iter().enumerate() {
        cumulative += n;
        if i == HISTOGRAM_FINITE_BUCKETS_COUNT {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
            );
        } else {
            let bound = if per_unit == 1.0 {
                ((1u64 << i) - 1) as f64
            } else {
                (1u64 << i) as f64 / per_unit
            };
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
    }
    let braces = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let _ = writeln!(out, "{name}_sum{braces} {}", h.sum as f64 / per_unit);
    let _ = writeln!(out, "{name}_count{braces} {cumulative}");
}

/// The access log's series (see `crate::access_log`). Lines written are
/// added by its writer thread; lines dropped by a worker that found no
/// buffer free (a rare, cold path) or by the writer when a write failed.
#[derive(Default)]
pub struct AccessLogMetrics {
    pub lines: AtomicU64,
    pub dropped: AtomicU64,
}

impl AccessLogMetrics {
    fn render(&self, out: &mut String) {
        // Relaxed: monotonic counters read for reporting.
        let lines = self.lines.load(Ordering::Relaxed);
        let dropped = self.dropped.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP ringcache_access_log_lines_total Access log lines written.\n# TYPE ringcache_access_log_lines_total counter\nringcache_access_log_lines_total {lines}"
        );
        let _ = writeln!(
            out,
            "# HELP ringcache_access_log_dropped_total Access log lines dropped (the writer was behind, or a write failed).\n# TYPE ringcache_access_log_dropped_total counter\nringcache_access_log_dropped_total {dropped}"
        );
    }
}

/// The invalidation bus's series (see `crate::bus`). One writer, the bus's
/// consumer thread, except `publish_errors`, `outbox_dropped` and
/// `outbox_entries` (publishers, under the outbox's lock).
#[derive(Default)]
pub struct BusMetrics {
    /// 1 while the consumer holds a working connection to Redis.
    pub connected: AtomicU64,
    /// Entries in the stream not yet applied by this node.
    pub lag_entries: AtomicU64,
    /// Age of the oldest entry not yet applied, in milliseconds (0 when caught up).
    pub lag_ms: AtomicU64,
    pub reconnects: AtomicU64,
    /// Other nodes' entries applied.
    pub applied: AtomicU64,
    /// Other nodes' entries whose apply failed (skipped, acknowledged as failed).
    pub apply_errors: AtomicU64,
    /// Publishes that did not reach Redis (queued in the outbox or refused).
    pub publish_errors: AtomicU64,
    /// Queued invalidations dropped because the outbox was full.
    pub outbox_dropped: AtomicU64,
    /// Invalidations waiting in the outbox for Redis now.
    pub outbox_entries: AtomicU64,
    /// Whole-cache drops because entries were lost (trimmed stream, lost Redis data).
    pub cache_drops: AtomicU64,
    /// Other nodes an acknowledged invalidation (`"wait": "all"`) waited for.
    pub acks_awaited: AtomicU64,
    /// Of those, the ones that had not applied it when the wait ended.
    pub acks_failed: AtomicU64,
}

impl BusMetrics {
    /// Current value of one series (Relaxed: values read for reporting).
    pub fn get(v: &AtomicU64) -> u64 {
        v.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String) {
        let g = |v: &AtomicU64| v.load(Ordering::Relaxed);
        let lag_secs = g(&self.lag_ms) as f64 / 1000.0;
        let series: [(&str, &str, String, &str); 12] = [
            (
                "ringcache_bus_connected",
                "gauge",
                g(&self.connected).to_string(),
                "1 while the invalidation bus is connected to Redis.",
            ),
            (
                "ringcache_bus_lag_entries",
                "gauge",
                g(&self.lag_entries).to_string(),
                "Bus entries not yet applied by this node.",
            ),
            (
                "ringcache_bus_lag_seconds",
                "gauge",
                format!("{lag_secs:.3}"),
                "Age of the oldest bus entry not yet applied.",
            ),
            (
                "ringcache_bus_reconnects_total",
                "counter",
                g(&self.reconnects).to_string(),
                "Bus connections to Redis re-established.",
            ),
            (
                "ringcache_bus_applied_total",
                "counter",
                g(&self.applied).to_string(),
                "Other nodes' invalidations applied.",
            ),
            (
                "ringcache_bus_apply_errors_total",
                "counter",
                g(&self.apply_errors).to_string(),
                "Other nodes' invalidations that failed to apply.",
            ),
            (
                "ringcache_bus_publish_errors_total",
                "counter",
                g(&self.publish_errors).to_string(),
                "Invalidations that could not be published at once.",
            ),
            (
                "ringcache_bus_outbox_dropped_total",
                "counter",
                g(&self.outbox_dropped).to_string(),
                "Unpublished invalidations dropped from the full outbox.",
            ),
            (
                "ringcache_bus_outbox_entries",
                "gauge",
                g(&self.outbox_entries).to_string(),
                "Invalidations applied here and waiting for Redis to be shared.",
            ),
            (
                "ringcache_bus_cache_drops_total",
                "counter",
                g(&self.cache_drops).to_string(),
                "Whole-cache drops because bus entries were lost.",
            ),
            (
                "ringcache_bus_acks_awaited_total",
                "counter",
                g(&self.acks_awaited).to_string(),
                "Other nodes an acknowledged invalidation waited for.",
            ),
            (
                "ringcache_bus_acks_failed_total",
                "counter",
                g(&self.acks_failed).to_string(),
                "Other nodes that had not applied an acknowledged invalidation when the wait ended.",
            ),
        ];
        for (name, kind, v, help) in series {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
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

/// The invalidation journal in the store file (`store::journal`), read on
/// scrape.
pub struct BanLogGauges {
    /// Records in the live half (active bans and not yet compacted ones).
    pub records: u64,
    pub bytes_used: u64,
    pub bytes_cap: u64,
    /// Bans re-created from the journal at start.
    pub replayed: u64,
    /// Records dropped at start (torn or damaged).
    pub dropped: u64,
    /// Invalidations whose bans did not fit and were recorded as `all`.
    pub overflows: u64,
}

/// Append the invalidation journal series to a `/metrics` page.
pub fn render_ban_log(out: &mut String, g: &BanLogGauges) {
    for (name, v, kind, help) in [
        (
            "ringcache_ban_log_records",
            g.records,
            "gauge",
            "Records in the store file's invalidation journal.",
        ),
        (
            "ringcache_ban_log_bytes",
            g.bytes_used,
            "gauge",
            "Bytes of the invalidation journal in use.",
        ),
        (
            "ringcache_ban_log_bytes_max",
            g.bytes_cap,
            "gauge",
            "Bytes of records the invalidation journal holds.",
        ),
        (
            "ringcache_ban_log_replayed_total",
            g.replayed,
            "counter",
            "Bans re-created from the invalidation journal at start.",
        ),
        (
            "ringcache_ban_log_dropped_total",
            g.dropped,
            "counter",
            "Invalidation journal records dropped at start (torn or damaged).",
        ),
        (
            "ringcache_ban_log_overflows_total",
            g.overflows,
            "counter",
            "Invalidations recorded as everything because their bans did not fit the journal.",
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
        );
    }
}

/// The invalidation refresh queue (`"mode": "refresh"`) as `/metrics`
/// shows it.
#[derive(Clone, Copy, Debug, Default)]
pub struct RefreshGauges {
    /// Refreshes by `result` label: queued, done, failed, dropped, skipped.
    pub results: [(&'static str, u64); 5],
    /// Keys waiting in the queue now.
    pub queue_depth: u64,
    /// Refresh requests taken and not yet ended.
    pub in_flight: u64,
}

/// Append the refresh queue series to a `/metrics` page.
pub fn render_refresh(out: &mut String, g: &RefreshGauges) {
    let _ = writeln!(
        out,
        "# HELP ringcache_invalidation_refreshes_total Keys a refresh invalidation queued for a background refetch, and how each ended.\n# TYPE ringcache_invalidation_refreshes_total counter"
    );
    for (result, v) in g.results {
        let _ = writeln!(
            out,
            "ringcache_invalidation_refreshes_total{{result=\"{result}\"}} {v}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP ringcache_invalidation_refresh_queue_depth Keys waiting for a background refetch.\n# TYPE ringcache_invalidation_refresh_queue_depth gauge\nringcache_invalidation_refresh_queue_depth {}",
        g.queue_depth
    );
    let _ = writeln!(
        out,
        "# HELP ringcache_invalidation_refreshes_in_flight Refresh requests at the origin now.\n# TYPE ringcache_invalidation_refreshes_in_flight gauge\nringcache_invalidation_refreshes_in_flight {}",
        g.in_flight
    );
}

/// A `/metrics` page as one JSON object, for `/stats`: each series by
/// name, a plain number without labels, or an object of its label sets
/// (`{"outcome=\"hit\"": 5}`) with them. Comment lines are left out;
/// values that JSON cannot hold (`NaN`, `+Inf`) become `null`. Off the
/// request path (the admin thread, on a scrape).
pub fn text_to_json(text: &str) -> String {
    use serde_json::{Map, Value};
    let mut root = Map::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let value = value
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::Null, |n| {
                // Whole numbers print as integers.
                match n.as_f64() {
                    Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Value::from(f as i64),
                    _ => Value::Number(n),
                }
            });
        match series.split_once('{') {
            Some((name, labels)) => {
                let labels = labels.strip_suffix('}').unwrap_or(labels);
                let entry = root
                    .entry(name.to_string())
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(m) = entry {
                    m.insert(labels.to_string(), value);
                }
            }
            None => {
                root.insert(series.to_string(), value);
            }
        }
    }
    Value::Object(root).to_string()
}

#[cfg(test)]
mod tests {

    #[test]
    fn metrics_text_as_json() {
        let text = "# HELP a_total A.\n# TYPE a_total counter\na_total 3\n\
                    b{outcome=\"hit\"} 5\nb{outcome=\"miss\"} 0.25\nc_bucket{le=\"+Inf\"} 7\nd NaN\n";
        let v: serde_json::Value = serde_json::from_str(&text_to_json(text)).unwrap();
        assert_eq!(v["a_total"], 3);
        assert_eq!(v["b"]["outcome=\"hit\""], 5);
        assert_eq!(v["b"]["outcome=\"miss\""], 0.25);
        assert_eq!(v["c_bucket"]["le=\"+Inf\""], 7);
        assert!(v["d"].is_null());
        assert!(v.get("# HELP a_total A.").is_none());
    }

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
            index_evictions: 0,
            index_slots: 0,
            expirations: 0,
            recovered: 0,
            dropped: 0,
            recovery_secs: 0.25,
            clockpro: Some([5, 6, 7, 8]),
        });
        assert!(
            text.contains("ringcache_store_recovery_seconds 0.25\n"),
            "{text}"
        );
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
        assert!(!text.contains("ringcache_bus_"));
        let bus = std::sync::Arc::new(BusMetrics::default());
        bus.connected.store(1, Ordering::Relaxed);
        bus.lag_ms.store(1500, Ordering::Relaxed);
        m.attach_bus(bus);
        let text = m.render(&StoreGauges {
            bytes_used: 1,
            bytes_max: 2,
            items: 3,
            evictions: 0,
            index_evictions: 0,
            index_slots: 0,
            expirations: 0,
            recovered: 0,
            dropped: 0,
            recovery_secs: 0.0,
            clockpro: None,
        });
        assert!(text.contains("ringcache_bus_connected 1\n"), "{text}");
        assert!(text.contains("ringcache_bus_lag_seconds 1.500\n"), "{text}");
    }

    #[test]
    fn histogram_bucket_edges() {
        assert_eq!(bucket_index(0), 0);
        assert_eq!(bucket_index(1), 1);
        assert_eq!(bucket_index(2), 2);
        assert_eq!(bucket_index(3), 2);
        assert_eq!(bucket_index(4), 3);
        assert_eq!(bucket_index(1023), 10);
        assert_eq!(bucket_index(1024), 11);
        assert_eq!(bucket_index((1 << 25) - 1), 25);
        assert_eq!(bucket_index(1 << 25), HISTOGRAM_FINITE_BUCKETS_COUNT);
        assert_eq!(bucket_index(u64::MAX), HISTOGRAM_FINITE_BUCKETS_COUNT);
        for i in 1..HISTOGRAM_FINITE_BUCKETS_COUNT {
            // Every value of bucket i is below 2^i, and 2^i is in the next one.
            assert_eq!(bucket_index((1 << i) - 1), i);
            assert_eq!(bucket_index(1 << i), i + 1);
        }
        let m = Metrics::new(1);
        m.worker(0)
            .record_duration(Histogram::Origin, Duration::from_nanos(999));
        m.worker(0)
            .record_duration(Histogram::Origin, Duration::from_micros(3));
        let h = m.histogram(Histogram::Origin);
        assert_eq!((h.buckets[0], h.buckets[2], h.sum), (1, 1, 3));
        assert_eq!(h.quantile_bound(0.5), 1);
        assert_eq!(h.quantile_bound(1.0), 4);
    }

    #[test]
    fn histograms_sum_over_two_workers_on_scrape() {
        let m = Metrics::new(2);
        m.worker(0).record(Histogram::CoalesceWaiters, 0);
        m.worker(0).record(Histogram::CoalesceWaiters, 3);
        m.worker(1).record(Histogram::CoalesceWaiters, 3);
        m.worker(1).record(Histogram::CoalesceWaiters, 999);
        let h = m.histogram(Histogram::CoalesceWaiters);
        assert_eq!(h.count(), 4);
        assert_eq!(h.sum, 1005);
        assert_eq!((h.buckets[0], h.buckets[2], h.buckets[10]), (1, 2, 1));
        m.worker(0)
            .record_duration(Histogram::RequestHit, Duration::from_micros(5));
        m.worker(1)
            .record_duration(Histogram::RequestHit, Duration::from_secs(60));
        let text = m.render(&StoreGauges {
            bytes_used: 0,
            bytes_max: 0,
            items: 0,
            evictions: 0,
            index_evictions: 0,
            index_slots: 0,
            expirations: 0,
            recovered: 0,
            dropped: 0,
            recovery_secs: 0.0,
            clockpro: None,
        });
        for line in [
            "ringcache_coalesce_waiters_per_fill_bucket{le=\"0\"} 1\n",
            "ringcache_coalesce_waiters_per_fill_bucket{le=\"3\"} 3\n",
            "ringcache_coalesce_waiters_per_fill_bucket{le=\"511\"} 3\n",
            "ringcache_coalesce_waiters_per_fill_bucket{le=\"1023\"} 4\n",
            "ringcache_coalesce_waiters_per_fill_bucket{le=\"+Inf\"} 4\n",
            "ringcache_coalesce_waiters_per_fill_sum 1005\n",
            "ringcache_coalesce_waiters_per_fill_count 4\n",
            "ringcache_request_duration_seconds_bucket{cache=\"hit\",le=\"0.000004\"} 0\n",
            "ringcache_request_duration_seconds_bucket{cache=\"hit\",le=\"0.000008\"} 1\n",
            "ringcache_request_duration_seconds_bucket{cache=\"hit\",le=\"33.554432\"} 1\n",
            "ringcache_request_duration_seconds_bucket{cache=\"hit\",le=\"+Inf\"} 2\n",
            "ringcache_request_duration_seconds_count{cache=\"hit\"} 2\n",
            "ringcache_request_duration_seconds_sum{cache=\"hit\"} 60.000005\n",
            "ringcache_request_duration_seconds_count{cache=\"miss\"} 0\n",
            "ringcache_origin_duration_seconds_count 0\n",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
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
