//! Request counters of the demo origin: a total and a bounded per-path map.
//!
//! Each event-loop thread owns one shard of the per-path map, so recording a
//! request takes an uncontended lock; `/__origin/stats` merges the shards.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::respond::{push_json_str, push_u64};

/// Distinct paths counted individually (summed over shards); later paths are
/// counted under [`OTHER_KEY`].
pub const STATS_PATHS_MAX: usize = 100_000;
/// Longer paths are counted under [`OTHER_KEY`].
pub const STATS_PATH_BYTES_MAX: usize = 1024;
/// Key collecting paths beyond the bounds above.
pub const OTHER_KEY: &str = "(other)";

pub(super) struct Stats {
    requests: AtomicU64,
    distinct: AtomicUsize,
    shards: Vec<Mutex<HashMap<String, u64>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Stats {
    pub(super) fn new(shards: usize) -> Stats {
        Stats {
            requests: AtomicU64::new(0),
            distinct: AtomicUsize::new(0),
            shards: (0..shards.max(1)).map(|_| Mutex::default()).collect(),
        }
    }

    /// Counts one request for `path` (without its query) on `shard`.
    pub(super) fn record(&self, shard: usize, path: &str) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut map = lock(&self.shards[shard % self.shards.len()]);
        if let Some(n) = map.get_mut(path) {
            *n += 1;
            return;
        }
        let key = if path.len() <= STATS_PATH_BYTES_MAX && self.claim_path() {
            path
        } else {
            OTHER_KEY
        };
        *map.entry(key.to_owned()).or_insert(0) += 1;
    }

    fn claim_path(&self) -> bool {
        let before = self.distinct.fetch_add(1, Ordering::Relaxed);
        if before < STATS_PATHS_MAX {
            return true;
        }
        self.distinct.fetch_sub(1, Ordering::Relaxed);
        false
    }

    pub(super) fn reset(&self) {
        for shard in &self.shards {
            lock(shard).clear();
        }
        self.distinct.store(0, Ordering::Relaxed);
        self.requests.store(0, Ordering::Relaxed);
    }

    pub(super) fn total(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// `{"requests": N, "by_path": {"/p": n, ...}}`, keys sorted.
    pub(super) fn write_json(&self, out: &mut Vec<u8>) {
        let mut merged: BTreeMap<String, u64> = BTreeMap::new();
        for shard in &self.shards {
            for (k, v) in lock(shard).iter() {
                *merged.entry(k.clone()).or_insert(0) += v;
            }
        }
        out.extend_from_slice(b"{\"requests\": ");
        push_u64(out, self.total());
        out.extend_from_slice(b", \"by_path\": {");
        for (i, (k, v)) in merged.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b", ");
            }
            out.push(b'"');
            push_json_str(out, k);
            out.extend_from_slice(b"\": ");
            push_u64(out, *v);
        }
        out.extend_from_slice(b"}}");
    }
}
