//! The segment store in a file: reopen after a crash (no clean flag) and
//! after a clean close; damaged, foreign-version and torn data refused or
//! dropped, never misread.

use ringcache::store::engine::{OpenError, Options, Store};
use ringcache::store::item::ItemMeta;
use ringcache::store::key_hash;
use ringcache::store::layout::{FileHeader, LayoutError, HEADER_FIELDS_BYTES};
use ringcache::store::policy::Clock;
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

fn open(p: &TempFile) -> Result<Arc<Store<Clock>>, OpenError> {
    Store::<Clock>::open(&p.0, BUDGET, opts()).map(Arc::new)
}

fn body(i: u32, version: u32) -> Vec<u8> {
    (0..(i * 37 % 3000 + version))
        .map(|j| (i ^ j ^ version) as u8)
        .collect()
}

fn fill(s: &Store<Clock>, n: u32, version: u32) {
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

fn check_all(s: &Arc<Store<Clock>>, n: u32, version: u32) {
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
    let e = Store::<Clock>::open(&p.0, BUDGET, other)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("layout differs") && e.contains("chunk_bytes"),
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
