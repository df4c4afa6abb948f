//! The store's eviction policy seen through the engine, by counting hits:
//! CLOCK-Pro keeps a re-read working set through a scan of one-hit keys
//! larger than the cache, where CLOCK loses it.

use ringcache::store::engine::{Options, Store};
use ringcache::store::item::ItemMeta;
use ringcache::store::key_hash;
use ringcache::store::policy::{Clock, ClockPro, Policy};
use std::sync::Arc;

/// Working-set keys, re-read every round.
const WORKING_KEYS: u32 = 400;
/// Rounds of scan then working-set reads.
const ROUNDS: u32 = 5;
const BODY_BYTES: usize = 1900;

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

fn meta() -> ItemMeta {
    ItemMeta::new(1_000_000, 0, 3600)
}

/// Reads every working-set key (inserting it on a miss); returns the hits.
fn read_working_set<P: Policy>(s: &Store<P>, r: &ringcache::store::engine::Reader<P>) -> u32 {
    let mut out = Vec::with_capacity(4096);
    let mut hits = 0;
    for i in 0..WORKING_KEYS {
        let k = format!("h\0/hot/{i}");
        let h = key_hash(k.as_bytes());
        out.clear();
        if r.lookup_into(h, k.as_bytes(), &mut out).is_some() {
            hits += 1;
        } else {
            s.insert(h, k.as_bytes(), b"", &[i as u8; BODY_BYTES], meta());
        }
    }
    hits
}

/// Working-set hits over the scan rounds, and the cache size in items.
fn scan_resistance<P: Policy + Sync>() -> (u32, u64, Store<P>) {
    let s = Arc::new(Store::<P>::anonymous_with(4 << 20, options()).unwrap());
    let r = s.reader().unwrap();
    // The working set is read three times in a row: a short reuse distance.
    for _ in 0..3 {
        read_working_set(&s, &r);
    }
    // Fill the rest of the cache and measure how many items it holds.
    let mut n = 0u64;
    let mut scan = |s: &Store<P>, count: u64| {
        for _ in 0..count {
            let k = format!("h\0/scan/{n}");
            n += 1;
            assert!(s.insert(
                key_hash(k.as_bytes()),
                k.as_bytes(),
                b"",
                &[0xAB; BODY_BYTES],
                meta()
            ));
        }
    };
    while s.usage().evictions == 0 {
        scan(&s, 1);
    }
    let capacity_items = s.usage().items;
    let mut hits = 0;
    for _ in 0..ROUNDS {
        // One-hit keys, twice as many as the cache holds.
        scan(&s, 2 * capacity_items);
        hits += read_working_set(&s, &r);
    }
    drop(r);
    let s = Arc::try_unwrap(s).ok().expect("sole owner");
    (hits, capacity_items, s)
}

#[test]
fn clockpro_keeps_a_working_set_through_a_scan_that_clock_loses() {
    let reads = WORKING_KEYS * ROUNDS;
    let (pro_hits, pro_items, pro) = scan_resistance::<ClockPro>();
    let (clock_hits, clock_items, _) = scan_resistance::<Clock>();
    let stats = pro.policy_stats().expect("CLOCK-Pro reports its counts");
    eprintln!(
        "working-set hits of {reads}: CLOCK-Pro {pro_hits} ({pro_items} items), \
         CLOCK {clock_hits} ({clock_items} items); {stats:?}"
    );
    // The working set fits well within either cache.
    assert!(u64::from(WORKING_KEYS) * 3 < pro_items.min(clock_items));
    assert!(
        pro_hits * 10 >= reads * 9,
        "CLOCK-Pro: {pro_hits} of {reads}"
    );
    assert!(clock_hits * 2 <= reads, "CLOCK: {clock_hits} of {reads}");
    // The counts add up: every resident item is hot or cold, and the test
    // entries stay within each shard's cache size m (here, with one item
    // size and no removals, the resident count).
    assert_eq!(
        u64::from(stats.hot_count + stats.cold_count),
        pro.usage().items
    );
    assert!(stats.test_count <= stats.hot_count + stats.cold_count);
    assert!(stats.hot_count >= WORKING_KEYS);
}
