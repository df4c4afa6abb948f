//! The segment store through its public API: basics, a proptest against a
//! plain HashMap model, persistence, and a concurrent stress test.

use proptest::prelude::*;
use ringcache::store::engine::{Options, Store};
use ringcache::store::item::ItemMeta;
use ringcache::store::key_hash;
use ringcache::store::policy::ClockPro;
use std::collections::HashMap;
use std::sync::Arc;

fn small() -> Options {
    Options {
        segment_bytes: 64 << 10,
        chunk_bytes: 128,
        readers_max: 32,
        stale_keep_secs: 0,
        verify_reads: true,
        ..Options::default()
    }
}

fn meta(lifetime: u32) -> ItemMeta {
    ItemMeta::new(1_000_000, 0, u64::from(lifetime))
}

#[test]
fn insert_lookup_replace_remove() {
    let s = Arc::new(Store::<ClockPro>::anonymous_with(4 << 20, small()).unwrap());
    let r = s.reader().unwrap();
    let k = b"h\0/a";
    let h = key_hash(k);
    let mut out = Vec::new();
    assert!(r.lookup_into(h, k, &mut out).is_none());
    assert!(s.insert(h, k, b"HTTP/1.1 200 OK\r\n", &[7; 1000], meta(60)));
    let hit = r.lookup_into(h, k, &mut out).unwrap();
    assert_eq!((hit.head_len, hit.body_len), (17, 1000));
    assert_eq!(&out[..17], b"HTTP/1.1 200 OK\r\n");
    assert!(out[17..].iter().all(|&b| b == 7));
    assert!(hit.meta.is_fresh(1_000_059) && !hit.meta.is_fresh(1_000_060));
    // Replace; fields go between head and body.
    assert!(s.insert(h, k, b"H\r\n", b"new", meta(60)));
    out.clear();
    r.lookup(h, k, &mut out, |o, hit| {
        o.extend_from_slice(format!("Content-Length: {}\r\n\r\n", hit.body_len).as_bytes());
        true
    })
    .unwrap();
    assert_eq!(out, b"H\r\nContent-Length: 3\r\n\r\nnew");
    // HEAD: no body.
    out.clear();
    r.lookup(h, k, &mut out, |_, _| false).unwrap();
    assert_eq!(out, b"H\r\n");
    assert_eq!(s.usage().items, 1);
    assert!(s.remove(h, k));
    assert!(!s.remove(h, k));
    assert!(r.lookup_into(h, k, &mut out).is_none());
    assert_eq!(s.usage().items, 0);
}

#[test]
fn a_colliding_hash_with_another_key_is_a_miss() {
    let s = Arc::new(Store::<ClockPro>::anonymous_with(4 << 20, small()).unwrap());
    let r = s.reader().unwrap();
    assert!(s.insert(5, b"a", b"", b"1", meta(60)));
    assert!(s.insert(5, b"b", b"", b"2", meta(60)));
    let mut out = Vec::new();
    r.lookup_into(5, b"a", &mut out).unwrap();
    assert_eq!(out, b"1");
    assert!(r.lookup_into(5, b"c", &mut out).is_none());
}

#[test]
fn cap_holds_and_expired_items_go_first() {
    let budget = 2u64 << 20;
    let s = Arc::new(Store::<ClockPro>::anonymous_with(budget, small()).unwrap());
    let l = *s.layout();
    assert!(l.region_bytes + l.heap_bytes <= budget);
    // Expired items (lifetime 0), then many live ones.
    for i in 0..200 {
        let k = format!("old/{i}");
        assert!(s.insert(
            key_hash(k.as_bytes()),
            k.as_bytes(),
            b"",
            &[1; 300],
            ItemMeta::new(10, 0, 0)
        ));
    }
    for i in 0..20_000 {
        let k = format!("h\0/item/{i}");
        assert!(
            s.insert(
                key_hash(k.as_bytes()),
                k.as_bytes(),
                b"h",
                &[2; 1000],
                meta(600)
            ),
            "{i}"
        );
    }
    let u = s.usage();
    assert!(u.item_bytes <= l.region_bytes, "{u:?}");
    assert!(u.items > 500, "{u:?}");
    assert!(u.expirations > 0 && u.evictions > 0, "{u:?}");
}

#[test]
fn items_longer_than_a_chunk_chain_and_big_ones_are_refused() {
    let s = Arc::new(Store::<ClockPro>::anonymous_with(4 << 20, small()).unwrap());
    let r = s.reader().unwrap();
    let body: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    let key = vec![b'k'; 4000];
    assert!(s.insert(key_hash(&key), &key, &[b'x'; 5000], &body, meta(60)));
    let mut out = Vec::new();
    r.lookup_into(key_hash(&key), &key, &mut out).unwrap();
    assert_eq!(&out[5000..], &body[..]);
    assert!(!s.insert(1, &[0; 5000], b"", b"", meta(60)));
    assert!(!s.insert(1, b"k", b"", &vec![0; 4 << 20], meta(60)));
}

#[derive(Debug, Clone)]
enum Op {
    Insert(u8, u16),
    Remove(u8),
    Lookup(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..200, 0u16..8000).prop_map(|(k, n)| Op::Insert(k, n)),
        1 => (0u8..200).prop_map(Op::Remove),
        3 => (0u8..200).prop_map(Op::Lookup),
    ]
}

fn body_for(k: u8, n: u16) -> Vec<u8> {
    (0..n)
        .map(|i| k.wrapping_mul(31).wrapping_add(i as u8))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// Against a HashMap: a hit returns exactly the latest value stored;
    /// a miss is allowed only for keys that were removed, never stored, or
    /// may have been evicted (the store is small enough to evict).
    #[test]
    fn behaves_like_a_map_that_may_forget(ops in proptest::collection::vec(op(), 1..300)) {
        let s = Arc::new(Store::<ClockPro>::anonymous_with(1 << 20, small()).unwrap());
        let r = s.reader().unwrap();
        let mut model: HashMap<u8, Vec<u8>> = HashMap::new();
        let mut out = Vec::new();
        for op in ops {
            match op {
                Op::Insert(k, n) => {
                    let key = format!("key/{k}");
                    let body = body_for(k, n);
                    if s.insert(key_hash(key.as_bytes()), key.as_bytes(), b"h", &body, meta(60)) {
                        model.insert(k, body);
                    } else {
                        model.remove(&k);
                    }
                }
                Op::Remove(k) => {
                    let key = format!("key/{k}");
                    let had = s.remove(key_hash(key.as_bytes()), key.as_bytes());
                    let modeled = model.remove(&k).is_some();
                    prop_assert!(!had || modeled, "removed a key the model never had");
                }
                Op::Lookup(k) => {
                    let key = format!("key/{k}");
                    out.clear();
                    match r.lookup_into(key_hash(key.as_bytes()), key.as_bytes(), &mut out) {
                        Some(_) => {
                            let want = model.get(&k);
                            prop_assert!(want.is_some(), "hit on a key the model lacks");
                            prop_assert_eq!(&out[1..], &want.unwrap()[..]);
                        }
                        None => {
                            // Evicted: forget it in the model too.
                            model.remove(&k);
                        }
                    }
                }
            }
            let u = s.usage();
            prop_assert!(u.item_bytes + s.layout().heap_bytes <= u.bytes_max);
        }
    }
}

/// The expiry sweep runs on the insert's clock (the response time), not on
/// the birth time of the response (response time minus its initial age):
/// a response that arrives already old must not turn the clock back.
#[test]
fn expiry_uses_the_insert_time_not_the_birth_time() {
    let s = Arc::new(Store::<ClockPro>::anonymous_with(2 << 20, small()).unwrap());
    let r = s.reader().unwrap();
    // Received at 1000, fresh for 10 s: stale from 1010.
    for i in 0..100 {
        let k = format!("short/{i}");
        assert!(s.insert(
            key_hash(k.as_bytes()),
            k.as_bytes(),
            b"",
            &[1; 300],
            ItemMeta::new(1000, 0, 10)
        ));
    }
    // Received at 5000 from an upstream cache that says `Age: 4500`: born
    // at 500. A sweep on the birth time would find the first items fresh
    // (stale from 1010 > 500); at the insert's clock, 5000, they are stale.
    let aged = ItemMeta::new(5000, 4500, 86_400);
    assert_eq!((aged.born_secs, aged.now_secs), (500, 5000));
    for i in 0..5000 {
        let k = format!("aged/{i}");
        assert!(s.insert(key_hash(k.as_bytes()), k.as_bytes(), b"", &[2; 1000], aged));
    }
    assert_eq!(s.clock_secs(), 5000);
    let u = s.usage();
    assert!(
        u.expirations >= 50,
        "expired items went by the policy: {u:?}"
    );
    // And a later insert carrying an older clock does not move it back.
    let k = b"late";
    assert!(s.insert(key_hash(k), k, b"", b"x", ItemMeta::new(4000, 0, 60)));
    assert_eq!(s.clock_secs(), 5000);
    let mut out = Vec::new();
    let hit = r.lookup_into(key_hash(k), k, &mut out).unwrap();
    // A hit reports the stored figures; its `now_secs` is its birth.
    assert_eq!(hit.meta, ItemMeta::new(4000, 0, 60).at(4000));
}
