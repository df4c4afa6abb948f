//! Replays the cache traces in `shared/traces` through the real store: index, shards, chunk
//! allocation and the store's CLOCK-Pro together, not the policy alone
//! (`tests/clockpro_traces.rs` checks that one against the reference simulator).
//!
//! The store must miss about as often as CLOCK-Pro in count mode with as many entries as the
//! store held: within [`STORE_GAP_PP_MAX`] percentage points. Two regimes:
//! * **index-bound**: 8-byte bodies take one 256-byte chunk each, well under the 512 bytes of
//!   budget the layout gives each index slot, so the index fills before the bytes do;
//! * **bytes-bound**: 700-byte bodies take three chunks, so the bytes run out first.
//!
//! Each store has 2^13 or 2^15 index slots (64 shards: 128 or 512 slots each). A point
//! counts only when the store evicted at least [`EVICTIONS_PER_REQUEST_MIN`] of the requests
//! (a store that never fills has no resident count to compare at). The gap allowed is wider
//! than the policy's own 0.5 points: the store is 64 CLOCK-Pro instances over a hash
//! partition, and its resident count moves a little as it evicts.
//!
//! Traces are found as in `tests/clockpro_traces.rs`; without them the tests print
//! `SKIPPED: ...` and pass.

#[allow(dead_code)]
#[path = "trace_replay/mod.rs"]
mod replay;

use replay::{clockpro_misses, distinct_keys, load_keys, traces_dir, LARGE_TRACE_REQUESTS_MIN};
use ringcache::store::engine::{Options, Store};
use ringcache::store::{key_hash, ItemMeta};
use std::sync::Arc;

/// The agreement required with count-mode CLOCK-Pro at the store's resident count, in
/// percentage points.
const STORE_GAP_PP_MAX: f64 = 1.0;
/// A point is compared only when the store evicted at least this share of the requests.
const EVICTIONS_PER_REQUEST_MIN: f64 = 0.01;
/// The resident count is sampled every this many requests, after the first fifth.
const SAMPLE_EVERY: usize = 64;

/// Budget bytes per index slot in `layout` (one slot per 512 bytes).
const BUDGET_BYTES_PER_SLOT: u64 = 512;

struct Point {
    requests: u64,
    misses: u64,
    evictions: u64,
    /// Mean resident count over the last four fifths of the trace.
    held: u32,
}

fn replay_store(keys: &[u64], slots_log2: u32, body_bytes: usize) -> Point {
    let options = Options {
        segment_bytes: 64 << 10,
        verify_reads: false,
        ..Options::default()
    };
    let bytes = (1u64 << slots_log2) * BUDGET_BYTES_PER_SLOT;
    let store: Arc<Store> = Arc::new(Store::anonymous_with(bytes, options).expect("store"));
    assert_eq!(
        store.metadata().slots,
        1 << slots_log2,
        "the layout's slots per budget byte changed: update BUDGET_BYTES_PER_SLOT"
    );
    let reader = store.reader().expect("reader");
    let body = vec![0x5a; body_bytes];
    let meta = ItemMeta::new(1_000_000, 0, 1 << 20);
    let mut out = Vec::new();
    let (mut misses, mut held_sum, mut held_samples) = (0u64, 0u64, 0u64);
    let warm = keys.len() / 5;
    for (i, &k) in keys.iter().enumerate() {
        let key = k.to_le_bytes();
        let hash = key_hash(&key);
        out.clear();
        if reader.lookup_into(hash, &key, &mut out).is_none() {
            misses += 1;
            assert!(store.insert(hash, &key, b"", &body, meta), "insert {k}");
        }
        if i >= warm && i % SAMPLE_EVERY == 0 {
            held_sum += store.usage().items;
            held_samples += 1;
        }
    }
    Point {
        requests: keys.len() as u64,
        misses,
        evictions: store.usage().evictions,
        held: (held_sum / held_samples.max(1)) as u32,
    }
}

fn check(large: bool, sizes: &[u32], bodies: &[usize]) {
    let dir = match traces_dir() {
        Ok(dir) => dir,
        Err(why) => {
            println!("SKIPPED: traces not found ({why})");
            return;
        }
    };
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .expect("traces dir")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".evtr.gz").map(str::to_string)
        })
        .collect();
    names.sort();
    let (mut compared, mut failures) = (0, Vec::new());
    for trace in names {
        let keys =
            load_keys(&dir.join(format!("{trace}.evtr.gz"))).unwrap_or_else(|e| panic!("{e}"));
        if (keys.len() as u64 >= LARGE_TRACE_REQUESTS_MIN) != large {
            continue;
        }
        let distinct = distinct_keys(&keys);
        for &slots_log2 in sizes {
            for &body in bodies {
                let p = replay_store(&keys, slots_log2, body);
                let store = p.misses as f64 / p.requests as f64;
                let regime = if body < 64 {
                    "index-bound"
                } else {
                    "bytes-bound"
                };
                if (p.evictions as f64) < EVICTIONS_PER_REQUEST_MIN * p.requests as f64 {
                    println!(
                        "{trace:24} 2^{slots_log2} {regime}: not compared, {} evictions",
                        p.evictions
                    );
                    continue;
                }
                let reference = clockpro_misses(&keys, distinct, p.held) as f64 / p.requests as f64;
                let gap_pp = (store - reference) * 100.0;
                compared += 1;
                println!(
                    "{trace:24} 2^{slots_log2} {regime}: held {:>6}, store {store:.4}, \
                     CLOCK-Pro({}) {reference:.4} ({gap_pp:+.3} pp)",
                    p.held, p.held
                );
                if gap_pp.abs() > STORE_GAP_PP_MAX {
                    failures.push(format!(
                        "{trace} at 2^{slots_log2} slots, {regime}: {gap_pp:+.3} pp from \
                         CLOCK-Pro with the {} entries the store held",
                        p.held
                    ));
                }
            }
        }
    }
    assert!(compared > 0, "no point compared");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn store_follows_clockpro_on_small_traces() {
    check(false, &[13, 15], &[8, 700]);
}

/// The 5M-request traces, index-bound only (about 8 s each unoptimised).
#[test]
fn store_follows_clockpro_on_large_traces_index_bound() {
    check(true, &[13], &[8]);
}
