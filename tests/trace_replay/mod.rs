//! Trace replay shared by the trace tests and the hit-ratio benchmark:
//! loading `shared/traces`, the reference figures, and ringcache's
//! CLOCK-Pro in count mode.

use ringcache::store::clockpro::ClockPro;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Traces with at least this many requests are "large".
pub const LARGE_TRACE_REQUESTS_MIN: u64 = 1_000_000;
/// The agreement required with the reference CLOCK-Pro, in percentage points.
pub const GAP_PP_MAX: f64 = 0.5;

/// Where the traces are, or why they are not there.
pub fn traces_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("RINGCACHE_TRACES") {
        let dir = PathBuf::from(dir);
        return if dir.is_dir() {
            Ok(dir)
        } else {
            Err(format!(
                "RINGCACHE_TRACES={} is not a directory",
                dir.display()
            ))
        };
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/traces");
    if dir.is_dir() {
        Ok(dir)
    } else {
        Err(format!(
            "RINGCACHE_TRACES unset and {} missing",
            dir.display()
        ))
    }
}

/// The request keys of one `.evtr.gz` trace (sizes, if present, are dropped).
pub fn load_keys(path: &Path) -> Result<Vec<u64>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(std::io::BufReader::new(file))
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() < 16 || &bytes[..8] != b"EVTRACE1" {
        return Err(format!("{}: not an EVTRACE1 file", path.display()));
    }
    let flags = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
    let record_bytes = if flags & 1 != 0 { 12 } else { 8 };
    let records = &bytes[16..];
    if records.len() % record_bytes != 0 {
        return Err(format!("{}: truncated record", path.display()));
    }
    Ok(records
        .chunks_exact(record_bytes)
        .map(|r| u64::from_le_bytes(r[..8].try_into().unwrap()))
        .collect())
}

/// The hash the store would give the key.
pub fn key_hash(key: u64) -> u64 {
    let mut x = key.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Distinct keys. Keys are renumbered 0, 1, 2, ... in order of first appearance.
pub fn distinct_keys(keys: &[u64]) -> u64 {
    let distinct = keys.iter().max().map_or(0, |m| m + 1);
    assert!(
        distinct <= keys.len() as u64,
        "keys are not renumbered densely"
    );
    distinct
}

/// Capacity in count mode: floor(fraction × distinct keys), at least 1.
pub fn capacity_entries(fraction: f64, distinct: u64) -> u32 {
    ((fraction * distinct as f64).floor() as u32).max(1)
}

/// Misses of CLOCK-Pro with `capacity` entries over `keys` (every request counts).
pub fn clockpro_misses(keys: &[u64], distinct: u64, capacity: u32) -> u64 {
    let mut policy = ClockPro::new(capacity);
    let mut entry_of = vec![u32::MAX; distinct as usize];
    let mut key_of = vec![u64::MAX; capacity as usize];
    let mut misses = 0;
    for &key in keys {
        let entry = entry_of[key as usize];
        if entry != u32::MAX {
            policy.touch(entry);
            continue;
        }
        misses += 1;
        let admission = policy.admit(key_hash(key));
        if let Some(victim) = admission.victim {
            let old = std::mem::replace(&mut key_of[victim as usize], u64::MAX);
            entry_of[old as usize] = u32::MAX;
        }
        key_of[admission.entry as usize] = key;
        entry_of[key as usize] = admission.entry;
    }
    misses
}

/// One row of `bench/clockpro_reference.csv`.
#[derive(Clone, Debug)]
pub struct Reference {
    pub trace: String,
    /// As written in the file ("0.01"), to match rows exactly.
    pub fraction: String,
    pub capacity: u32,
    pub policy: String,
    pub requests: u64,
    pub misses: u64,
}

impl Reference {
    pub fn miss_ratio(&self) -> f64 {
        self.misses as f64 / self.requests as f64
    }
}

/// The reference simulator's figures, in file order.
pub fn reference() -> Vec<Reference> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/clockpro_reference.csv");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines().filter(|l| !l.starts_with('#'));
    let header = lines.next().expect("CSV header");
    assert!(header.starts_with("trace,mode,fraction,capacity,policy,requests,misses"));
    lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f[1], "count", "only count mode is replayed: {l}");
            Reference {
                trace: f[0].to_string(),
                fraction: f[2].to_string(),
                capacity: f[3].parse().unwrap(),
                policy: f[4].to_string(),
                requests: f[5].parse().unwrap(),
                misses: f[6].parse().unwrap(),
            }
        })
        .collect()
}

/// Trace names in the reference, in file order, each once.
pub fn trace_names(rows: &[Reference]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for r in rows {
        if !names.contains(&r.trace) {
            names.push(r.trace.clone());
        }
    }
    names
}

/// Our CLOCK-Pro beside one reference row of the same trace and size.
#[derive(Clone, Debug)]
pub struct Replayed {
    pub trace: String,
    pub fraction: String,
    pub capacity: u32,
    pub requests: u64,
    pub misses: u64,
}

impl Replayed {
    pub fn miss_ratio(&self) -> f64 {
        self.misses as f64 / self.requests as f64
    }
}

/// Replays `trace` at every size the reference has for it.
pub fn replay_trace(dir: &Path, trace: &str, rows: &[Reference]) -> Vec<Replayed> {
    let keys = load_keys(&dir.join(format!("{trace}.evtr.gz"))).unwrap_or_else(|e| panic!("{e}"));
    let distinct = distinct_keys(&keys);
    let mut out = Vec::new();
    for r in rows
        .iter()
        .filter(|r| r.trace == trace && r.policy == "CLOCK-Pro")
    {
        assert_eq!(r.requests, keys.len() as u64, "{trace}: request count");
        let capacity = capacity_entries(r.fraction.parse().unwrap(), distinct);
        assert_eq!(capacity, r.capacity, "{trace} at {}: capacity", r.fraction);
        out.push(Replayed {
            trace: trace.to_string(),
            fraction: r.fraction.clone(),
            capacity,
            requests: keys.len() as u64,
            misses: clockpro_misses(&keys, distinct, capacity),
        });
    }
    out
}
