//! Store hot paths through the public API: lookup hit, lookup miss,
//! insert (replacing a key) and insert of a new key into a store full by
//! bytes (every insert evicts), 1 KiB bodies, on one and on two threads.
//!
//! Two-thread figures are the wall time each thread takes per operation
//! while the other runs the same loop (per-thread latency under contention;
//! aggregate throughput is twice the reciprocal). Keys are drawn from a
//! seeded xorshift so runs are comparable.
//!
//! `cargo bench --bench store_ops`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ringcache::store::engine::{Options, Store};
use ringcache::store::item::ItemMeta;
use ringcache::store::key_hash;
use ringcache::store::layout::BUDGET_BYTES_PER_SLOT;
use std::hint::black_box;
use std::io::Write;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Keys resident during the run: 1 KiB bodies in 256 MiB stay resident.
const KEYS_COUNT: u64 = 64 * 1024;
const BODY_BYTES: usize = 1024;
const BUDGET_BYTES: u64 = 256 << 20;
const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n";

fn key(i: u64) -> String {
    format!("bench.example\0/objects/{i:08}")
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn meta() -> ItemMeta {
    ItemMeta::new(1_700_000_000, 0, 3600)
}

/// A store holding every bench key, and the keys with their hashes.
fn filled() -> (Arc<Store>, Vec<(u64, Vec<u8>)>) {
    let options = Options {
        verify_reads: false,
        ..Options::default()
    };
    let s = Arc::new(Store::anonymous_with(BUDGET_BYTES, options).expect("store"));
    let body = vec![0x5a; BODY_BYTES];
    let keys: Vec<(u64, Vec<u8>)> = (0..KEYS_COUNT)
        .map(|i| {
            let k = key(i).into_bytes();
            (key_hash(&k), k)
        })
        .collect();
    for (h, k) in &keys {
        assert!(s.insert(*h, k, HEAD, &body, meta()));
    }
    // Far below the byte cap, with two buckets per key: every key stays,
    // so every "hit" is one.
    let r = s.reader().expect("reader slot");
    let mut out = Vec::new();
    assert!(keys
        .iter()
        .all(|(h, k)| r.lookup_into(*h, k, &mut out).is_some()));
    assert_eq!(s.usage().evictions, 0);
    (s, keys)
}

#[derive(Clone, Copy)]
enum Op {
    Hit,
    Miss,
    Insert,
    /// A new key into a store full by bytes: every insert evicts (the
    /// policy's hands, a test entry for an evicted key in its test period).
    InsertEvicting,
}

/// Budget of the store that `insert_evicting` keeps full.
const FULL_BUDGET_BYTES: u64 = 16 << 20;

/// A store full by bytes (1 KiB bodies past its cap).
fn full() -> Arc<Store> {
    let options = Options {
        verify_reads: false,
        ..Options::default()
    };
    let s = Arc::new(Store::anonymous_with(FULL_BUDGET_BYTES, options).expect("store"));
    let body = vec![0x5a; BODY_BYTES];
    let mut i = 0;
    while s.usage().evictions < 1000 {
        let k = key(i).into_bytes();
        assert!(s.insert(key_hash(&k), &k, HEAD, &body, meta()));
        i += 1;
    }
    s
}

/// Run `iters` operations on each of `threads` threads; returns the longest
/// thread's time.
fn run(
    s: &Arc<Store>,
    keys: &Arc<Vec<(u64, Vec<u8>)>>,
    op: Op,
    threads: usize,
    iters: u64,
) -> Duration {
    let barrier = Arc::new(Barrier::new(threads));
    let times: Vec<Duration> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (s, keys, barrier) = (s.clone(), keys.clone(), barrier.clone());
                scope.spawn(move || {
                    let r = s.reader().expect("reader slot");
                    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1));
                    let mut out = Vec::with_capacity(4096);
                    let body = vec![t as u8; BODY_BYTES];
                    let miss: Vec<(u64, Vec<u8>)> = (0..1024)
                        .map(|i| {
                            let k = format!("absent.example\0/{t}/{i}").into_bytes();
                            (key_hash(&k), k)
                        })
                        .collect();
                    barrier.wait();
                    let mut fresh = [0u8; 40];
                    let mut serial = 0u64;
                    let start = Instant::now();
                    for _ in 0..iters {
                        let x = rng.next();
                        match op {
                            Op::Hit => {
                                let (h, k) = &keys[(x % keys.len() as u64) as usize];
                                out.clear();
                                let hit = r.lookup_into(*h, k, &mut out);
                                debug_assert!(hit.is_some());
                                black_box(hit);
                            }
                            Op::Miss => {
                                let (h, k) = &miss[(x % 1024) as usize];
                                out.clear();
                                black_box(r.lookup_into(*h, k, &mut out));
                            }
                            Op::Insert => {
                                let (h, k) = &keys[(x % keys.len() as u64) as usize];
                                black_box(s.insert(*h, k, HEAD, &body, meta()));
                            }
                            Op::InsertEvicting => {
                                // A key never stored, written without allocating.
                                serial += 1;
                                let mut w = &mut fresh[..];
                                write!(w, "new.example\0/{t}/{serial:016x}").expect("key fits");
                                let len = 40 - w.len();
                                let k = &fresh[..len];
                                black_box(s.insert(key_hash(k), k, HEAD, &body, meta()));
                            }
                        }
                    }
                    start.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("bench thread"))
            .collect()
    });
    times.into_iter().max().unwrap_or_default()
}

/// Metadata per object as the store counts it ([`Store::metadata`]) for
/// two fills of a 1 GiB store: one million responses of 100 to 400 bytes
/// (head and body), and 1 KiB bodies inserted until the bytes run out.
fn report_metadata() {
    const GIB: u64 = 1 << 30;
    const SMALL_COUNT: u64 = 1_000_000;
    const INSERTS_MAX: u64 = 4_000_000;
    let options = Options {
        verify_reads: false,
        ..Options::default()
    };
    let head = b"HTTP/1.1 200 OK\r\n\r\n";
    let s: Store = Store::anonymous_with(GIB, options).expect("store");
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let small = vec![0x5a; 400];
    // Key `i` with a response of 100 to 400 bytes, head included.
    let mut insert_small = |s: &Store, i: u64| {
        let k = key(i).into_bytes();
        let len = 100 + (rng.next() % 301) as usize - head.len();
        assert!(s.insert(key_hash(&k), &k, head, &small[..len], meta()));
    };
    for i in 0..SMALL_COUNT {
        insert_small(&s, i);
    }
    assert_eq!(s.usage().evictions, 0, "the small objects fit");
    eprintln!(
        "metadata, 1M objects of 100-400 B in 1 GiB: {}",
        s.metadata()
    );
    drop(s);
    let s: Store = Store::anonymous_with(GIB, options).expect("store");
    let body = vec![0x5a; 1024];
    let mut i = 0;
    while s.usage().evictions == 0 && i < INSERTS_MAX {
        let k = key(i).into_bytes();
        assert!(s.insert(key_hash(&k), &k, HEAD, &body, meta()));
        i += 1;
    }
    eprintln!("metadata, 1 KiB bodies filling 1 GiB: {}", s.metadata());
    drop(s);
    // The steady state of a cache of small objects: inserts go on past the
    // first eviction until as many again have been made, so the index and
    // the bytes both hold as much as they can.
    for per_slot in [BUDGET_BYTES_PER_SLOT, BUDGET_BYTES_PER_SLOT / 2] {
        let o = Options {
            budget_bytes_per_slot: per_slot,
            ..options
        };
        let s: Store = Store::anonymous_with(GIB, o).expect("store");
        let mut i = 0;
        while s.usage().evictions == 0 && i < INSERTS_MAX {
            insert_small(&s, i);
            i += 1;
        }
        for j in i..2 * i {
            insert_small(&s, j);
        }
        eprintln!(
            "metadata, 100-400 B responses past full ({} inserts), a slot per {per_slot} B: {}, \
             {:.0} MiB of item chunks",
            2 * i,
            s.metadata(),
            s.usage().item_bytes as f64 / f64::from(1 << 20)
        );
    }
}

fn store_ops(c: &mut Criterion) {
    report_metadata();
    let (s, keys) = filled();
    let keys = Arc::new(keys);
    let full_store = full();
    let mut g = c.benchmark_group("store");
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));
    for threads in [1usize, 2] {
        for (name, op) in [
            ("lookup_hit", Op::Hit),
            ("lookup_miss", Op::Miss),
            ("insert_replace", Op::Insert),
        ] {
            g.bench_with_input(BenchmarkId::new(name, threads), &threads, |b, &t| {
                b.iter_custom(|iters| run(&s, &keys, op, t, iters))
            });
        }
        g.bench_with_input(
            BenchmarkId::new("insert_evicting", threads),
            &threads,
            |b, &t| b.iter_custom(|iters| run(&full_store, &keys, Op::InsertEvicting, t, iters)),
        );
    }
    g.finish();
    eprintln!("store after the run: {:?}", s.usage());
    eprintln!(
        "full store after the run: {:?}, CLOCK-Pro {:?}",
        full_store.usage(),
        full_store.policy_stats()
    );
}

criterion_group!(benches, store_ops);
criterion_main!(benches);
