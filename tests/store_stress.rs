//! Writers overwrite, remove and evict a small key set while readers check
//! every byte of every hit: a response is never assembled from two items.

use ringcache::store::engine::{Options, Store};
use ringcache::store::item::ItemMeta;
use ringcache::store::key_hash;
use ringcache::store::policy::{Clock, ClockPro, Policy};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEYS: u64 = 16;

fn body(key: u64, version: u64) -> Vec<u8> {
    let len = 16 + (version * 131 + key * 17) % 6000;
    let mut b = Vec::with_capacity(len as usize);
    b.extend_from_slice(&key.to_le_bytes());
    b.extend_from_slice(&version.to_le_bytes());
    let mut x = key.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ version;
    while b.len() < len as usize {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b.push(x as u8);
    }
    b
}

#[test]
fn readers_never_see_a_torn_or_mixed_item() {
    stress::<ClockPro>("clockpro");
}

#[test]
fn readers_never_see_a_torn_or_mixed_item_with_clock() {
    stress::<Clock>("clock");
}

fn stress<P: Policy + Sync + 'static>(name: &str) {
    let opts = Options {
        segment_bytes: 64 << 10,
        chunk_bytes: 128,
        readers_max: 16,
        stale_keep_secs: 0,
        verify_reads: true,
        ..Options::default()
    };
    let s = Arc::new(Store::<P>::anonymous_with(2 << 20, opts).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let version = Arc::new(AtomicU64::new(1));
    let hits = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut threads = Vec::new();
    for w in 0..2u64 {
        let (s, stop, version) = (s.clone(), stop.clone(), version.clone());
        threads.push(std::thread::spawn(move || {
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let key = i % KEYS;
                let k = format!("key/{key}");
                let v = version.fetch_add(1, Ordering::Relaxed);
                if i % 11 == 0 {
                    s.remove(key_hash(k.as_bytes()), k.as_bytes());
                    continue;
                }
                let head = format!("V: {v}\r\n");
                s.insert(
                    key_hash(k.as_bytes()),
                    k.as_bytes(),
                    head.as_bytes(),
                    &body(key, v),
                    ItemMeta::new(100, 0, 60),
                );
                // Junk that forces eviction of everything, including our keys.
                let j = format!("junk/{w}/{i}");
                s.insert(
                    key_hash(j.as_bytes()),
                    j.as_bytes(),
                    b"",
                    &[0xAB; 3000],
                    ItemMeta::new(100, 0, 60),
                );
            }
        }));
    }
    for _ in 0..2 {
        let (s, stop, hits) = (s.clone(), stop.clone(), hits.clone());
        threads.push(std::thread::spawn(move || {
            let r = s.reader().unwrap();
            let mut out = Vec::with_capacity(8192);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let key = n % KEYS;
                let k = format!("key/{key}");
                out.clear();
                let Some(hit) = r.lookup_into(key_hash(k.as_bytes()), k.as_bytes(), &mut out)
                else {
                    continue;
                };
                let (head, b) = out.split_at(hit.head_len);
                let v: u64 = std::str::from_utf8(&head[3..head.len() - 2])
                    .unwrap()
                    .parse()
                    .unwrap();
                assert_eq!(b, &body(key, v)[..], "key {key} version {v}: torn or mixed");
                hits.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let u = s.usage();
    assert!(
        hits.load(Ordering::Relaxed) > 100,
        "too few hits to mean anything"
    );
    assert!(u.evictions > 0, "{u:?}");
    eprintln!(
        "stress ({name}): {} hits, {u:?}",
        hits.load(Ordering::Relaxed)
    );
    if let Some(p) = s.policy_stats() {
        eprintln!("stress ({name}): {p:?}");
    }
}
