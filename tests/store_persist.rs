//! The segment store in a file: reopen after a crash (no clean flag) and
//! after a clean close; damaged, foreign-version and torn data refused or
//! dropped, never misread.

use ringcache::store::engine::{OpenError, Options, Store};
use ringcache::store::item::ItemMeta;
use ringcache::store::key_hash;
use ringcache::store::layout::{FileHeader, LayoutError, HEADER_FIELDS_BYTES};
use ringcache::store::policy::ClockPro;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;

const BUDGET: u64 = 4 << 20;

fn opts() -> Options {
    Options {
        segment_bytes: 64 << 10,
        chunk_bytes: 128,
        readers_max: 8,
        stale_keep_secs: 0,
        verify_reads: true,
        ..Options::default()
    }
}

struct TempFile(PathBuf);
impl TempFile {
    fn new(name: &str) -> TempFile {
        let p = std::env::temp_dir().join(format!("ringcache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        TempFile(p)
    }
}
impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn open(p: &TempFile) -> Result<Arc<Store<ClockPro>>, OpenError> {
    Store::<ClockPro>::open(&p.0, BUDGET, opts()).map(Arc::new)
}

fn body(i: u32, version: u32) -> Vec<u8> {
    (0..(i * 37 % 3000 + version))
        .map(|j| (i ^ j ^ version) as u8)
        .collect()
}

fn fill(s: &Store<ClockPro>, n: u32, version: u32) {
    for i in 0..n {
        let k = format!("h\0/obj/{i}");
        let head = format!("HTTP/1.1 200 OK\r\nX-V: {version}\r\n");
        assert!(s.insert(
            key_hash(k.as_bytes()),
            k.as_bytes(),
            head.as_bytes(),
            &body(i, version),
            ItemMeta::new(1000, 0, 60)
        ));
    }
}

fn check_all(s: &Arc<Store<ClockPro>>, n: u32, version: u32) {
    let r = s.reader().unwrap();
    let mut out = Vec::new();
    for i in 0..n {
        let k = format!("h\0/obj/{i}");
        out.clear();
        let hit = r
            .lookup_into(key_hash(k.as_bytes()), k.as_bytes(), &mut out)
            .unwrap_or_else(|| panic!("item {i} lost"));
        let head = format!("HTTP/1.1 200 OK\r\nX-V: {version}\r\n");
        assert_eq!(&out[..hit.head_len], head.as_bytes());
        assert_eq!(&out[hit.head_len..], &body(i, version)[..], "item {i}");
    }
}

#[test]
fn a_crash_loses_nothing_that_was_stored() {
    let p = TempFile::new("crash");
    {
        let s = open(&p).unwrap();
        assert!(!s.recovery().reused);
        fill(&s, 300, 1);
        fill(&s, 300, 2); // every key replaced once
                          // Dropped without close: the clean flag stays clear.
    }
    let s = open(&p).unwrap();
    let rec = s.recovery();
    assert!(rec.reused && !rec.was_clean, "{rec:?}");
    assert_eq!(rec.items_recovered, 300, "{rec:?}");
    check_all(&s, 300, 2);
    // The store keeps working: the free list was rebuilt.
    fill(&s, 300, 3);
    check_all(&s, 300, 3);
}

#[test]
fn a_clean_close_is_seen_at_the_next_open() {
    let p = TempFile::new("clean");
    {
        let s = open(&p).unwrap();
        fill(&s, 100, 1);
        s.close().unwrap();
    }
    let s = open(&p).unwrap();
    assert!(s.recovery().was_clean);
    assert_eq!(s.recovery().items_recovered, 100);
    // The open's duration is reported (for ringcache_store_recovery_seconds).
    assert!(s.recovery().open_time > std::time::Duration::ZERO);
    check_all(&s, 100, 1);
    drop(s);
    // Opening cleared the flag again.
    assert!(!open(&p).unwrap().recovery().was_clean);
}

fn read_header(p: &TempFile) -> [u8; HEADER_FIELDS_BYTES] {
    let mut raw = [0u8; HEADER_FIELDS_BYTES];
    std::fs::File::open(&p.0)
        .unwrap()
        .read_exact(&mut raw)
        .unwrap();
    raw
}

fn write_at(p: &TempFile, off: u64, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new().write(true).open(&p.0).unwrap();
    f.seek(SeekFrom::Start(off)).unwrap();
    f.write_all(bytes).unwrap();
}

#[test]
fn a_damaged_header_or_another_version_is_refused_clearly() {
    let p = TempFile::new("header");
    let layout = {
        let s = open(&p).unwrap();
        fill(&s, 10, 1);
        *s.layout()
    };
    let good = read_header(&p);

    let mut bad = good;
    bad[20] ^= 0x40;
    write_at(&p, 0, &bad);
    let e = open(&p).err().expect("refused");
    assert!(
        e.to_string()
            .contains("not a ringcache store file: header checksum"),
        "{e}"
    );

    let mut h = FileHeader::decode(&good, &layout).unwrap();
    h.version += 1;
    let mut raw = [0u8; HEADER_FIELDS_BYTES];
    h.encode(&mut raw);
    write_at(&p, 0, &raw);
    match open(&p) {
        Err(OpenError::Layout(LayoutError::Version { found, .. })) => assert_eq!(found, h.version),
        other => panic!("{:?}", other.err()),
    }
    let e = open(&p).err().unwrap().to_string();
    assert!(
        e.contains("format version") && e.contains("--store-reset"),
        "{e}"
    );

    write_at(&p, 0, b"NOTASTORE");
    assert!(open(&p).err().unwrap().to_string().contains("bad magic"));

    // Another layout (other chunk size) for the same file.
    write_at(&p, 0, &good);
    let other = Options {
        chunk_bytes: 256,
        ..opts()
    };
    let e = Store::<ClockPro>::open(&p.0, BUDGET, other)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("layout differs") && e.contains("chunk_bytes"),
        "{e}"
    );
    // Another index density (budget bytes per slot) is another layout too.
    let denser = Options {
        budget_bytes_per_slot: 256,
        ..opts()
    };
    let e = Store::<ClockPro>::open(&p.0, BUDGET, denser)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("layout differs") && e.contains("bytes per index slot"),
        "{e}"
    );
    // And the original opens again, items intact.
    check_all(&open(&p).unwrap(), 10, 1);
}

#[test]
fn a_torn_item_is_dropped_and_the_rest_kept() {
    let p = TempFile::new("torn");
    let layout = {
        let s = open(&p).unwrap();
        fill(&s, 50, 1);
        *s.layout()
    };
    // Flip one byte in the middle of the first carved segment's payloads.
    let off = layout.segments_offset + u64::from(layout.chunk_bytes) * 7 + 60;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p.0)
        .unwrap();
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(off)).unwrap();
    f.read_exact(&mut b).unwrap();
    write_at(&p, off, &[b[0] ^ 0xff]);
    let s = open(&p).unwrap();
    let rec = s.recovery();
    assert_eq!(rec.items_recovered, 49, "{rec:?}");
    assert_eq!(rec.items_dropped, 1, "{rec:?}");
    let r = s.reader().unwrap();
    let mut out = Vec::new();
    let mut found = 0;
    for i in 0..50u32 {
        let k = format!("h\0/obj/{i}");
        out.clear();
        if let Some(hit) = r.lookup_into(key_hash(k.as_bytes()), k.as_bytes(), &mut out) {
            assert_eq!(&out[hit.head_len..], &body(i, 1)[..]);
            found += 1;
        }
    }
    assert_eq!(found, 49);
}

#[test]
fn inspect_reports_a_store_without_changing_it() {
    use ringcache::store::inspect::inspect;
    let p = TempFile::new("inspect");
    let layout = {
        let s = open(&p).unwrap();
        fill(&s, 200, 1);
        fill(&s, 50, 2); // 50 replaced: their old chains are dead bytes
        s.close().unwrap();
        *s.layout()
    };
    let before = std::fs::read(&p.0).unwrap();
    let i = inspect(&p.0).unwrap();
    assert_eq!(
        std::fs::read(&p.0).unwrap(),
        before,
        "inspect wrote the file"
    );
    assert_eq!(i.version, ringcache::store::layout::FORMAT_VERSION);
    assert!(i.clean);
    assert_eq!(
        i.layout,
        ringcache::store::layout::Layout {
            heap_bytes: 0,
            ..layout
        }
    );
    assert_eq!((i.items, i.items_torn), (200, 0), "{i:?}");
    let live: u64 = (0..200u32)
        .map(|n| {
            let v = if n < 50 { 2 } else { 1 };
            let head = format!("HTTP/1.1 200 OK\r\nX-V: {v}\r\n");
            (20 + format!("h\0/obj/{n}").len() + head.len() + body(n, v).len()) as u64
        })
        .sum();
    assert_eq!(i.bytes_live, live);
    assert!(i.bytes_dead > 0, "{i:?}");
    assert_eq!(i.segments_used + i.segments_free, layout.segment_count);
    assert!(i.segments_used >= 1);
    let text = i.to_string();
    for want in [
        "format version",
        "clean",
        "200 intact",
        "segments:",
        "MiB live",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
    // Open (not closed): the flag shows it.
    let s = open(&p).unwrap();
    let i = inspect(&p.0).unwrap();
    assert!(!i.clean && i.to_string().contains("NOT clean"));
    drop(s);
    // A damaged header is refused, as by open.
    let mut bad = read_header(&p);
    bad[20] ^= 1;
    write_at(&p, 0, &bad);
    assert!(inspect(&p.0).unwrap_err().to_string().contains("checksum"));
}

#[test]
fn reset_rebuilds_a_refused_file_cold() {
    let p = TempFile::new("reset");
    {
        let s = open(&p).unwrap();
        fill(&s, 20, 1);
        s.close().unwrap();
    }
    // A file that opens is not reset: items kept.
    let s = Store::<ClockPro>::open_reset(&p.0, BUDGET, opts()).unwrap();
    assert!(!s.recovery().was_reset && s.recovery().items_recovered == 20);
    drop(s);
    let good = read_header(&p);
    type Damage<'a> = Box<dyn Fn() + 'a>;
    let cases: [(&str, Damage); 3] = [
        (
            "header checksum",
            Box::new(|| {
                let mut bad = good;
                bad[20] ^= 0x40;
                write_at(&p, 0, &bad);
            }),
        ),
        (
            "format version",
            Box::new(|| {
                let mut bad = good;
                bad[8] = 1; // version 1
                let crc = crc32c_of(&bad[..124]);
                bad[124..128].copy_from_slice(&crc.to_le_bytes());
                write_at(&p, 0, &bad);
            }),
        ),
        ("bad magic", Box::new(|| write_at(&p, 0, b"NOTASTORE"))),
    ];
    for (why, damage) in cases {
        damage();
        assert!(open(&p).is_err(), "{why}: plain open must refuse");
        let s = Arc::new(Store::<ClockPro>::open_reset(&p.0, BUDGET, opts()).unwrap());
        let rec = s.recovery();
        assert!(rec.was_reset && rec.items_recovered == 0, "{why}: {rec:?}");
        assert!(s.reset_reason().unwrap().to_string().contains(why), "{why}");
        fill(&s, 20, 1);
        check_all(&s, 20, 1);
        s.close().unwrap();
        drop(s);
        // The rebuilt file opens normally, items intact.
        let s = open(&p).unwrap();
        assert_eq!(s.recovery().items_recovered, 20, "{why}");
    }
    // Another layout (chunk size) is rebuilt too.
    let other = Options {
        chunk_bytes: 256,
        ..opts()
    };
    let s = Store::<ClockPro>::open_reset(&p.0, BUDGET, other).unwrap();
    assert!(s.recovery().was_reset);
    assert!(s
        .reset_reason()
        .unwrap()
        .to_string()
        .contains("chunk_bytes"));
}

fn crc32c_of(b: &[u8]) -> u32 {
    // Castagnoli, bitwise: the test does not lean on the store's crate.
    let mut crc = !0u32;
    for &x in b {
        crc ^= u32::from(x);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
