//! The memory cap holds: with ten times more distinct bytes than `--memory`
//! pushed through the cache, the process's peak resident memory stays under
//! `--memory` plus the fixed buffers (receive buffers, connection buffers,
//! the program itself).

#[macro_use]
mod common;

use common::*;

const MEMORY_MIB: u64 = 32;
/// Distinct bytes pushed through: ten times the cap.
const OBJECT_BYTES: u64 = 100_000;
const OBJECTS: u64 = 10 * (MEMORY_MIB << 20) / OBJECT_BYTES + 1;
/// Fixed allowance beyond `--memory`: one worker's provided receive buffers
/// (1024 × 16 KiB), connection and response buffers, the binary and its
/// libraries, thread stacks.
const FIXED_MIB: u64 = 48;

fn status_kib(pid: i32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn peak_rss_stays_under_the_cap(io: &str) {
    let origin = DemoOrigin::start();
    let memory = format!("{MEMORY_MIB}MiB");
    let Some(server) = Server::serve(io, Some(&origin.url()), 1, &["--memory", &memory]) else {
        return;
    };
    let pid = server.proc.pid();
    let baseline_kib = status_kib(pid, "VmRSS:");
    let mut c = server.client();
    for i in 0..OBJECTS {
        c.send(get_request(&format!("/api/items/rss{i}?size={OBJECT_BYTES}")).as_bytes());
        let r = c.read_response();
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(r.body.len() as u64, OBJECT_BYTES);
    }
    let peak_kib = status_kib(pid, "VmHWM:");
    let m = server.metrics();
    let evictions = m.value("ringcache_store_evictions_total");
    eprintln!(
        "pushed {} MiB through a {MEMORY_MIB} MiB cache: RSS at start {} MiB, peak {} MiB, {} objects held, {evictions} evictions",
        (OBJECTS * OBJECT_BYTES) >> 20,
        baseline_kib >> 10,
        peak_kib >> 10,
        m.value("ringcache_store_items"),
    );
    assert!(
        evictions > 0.0,
        "nothing was evicted: the test did not fill the cache"
    );
    // 100 KB objects: the bytes ran out, never the index.
    assert_eq!(m.value("ringcache_store_index_evictions_total"), 0.0);
    // CLOCK-Pro's view of the same cache: resident entries are the items,
    // and test entries remember some of what was evicted.
    let resident = m.labelled("ringcache_clockpro_entries", "state=\"hot\"")
        + m.labelled("ringcache_clockpro_entries", "state=\"cold\"");
    assert_eq!(resident, m.value("ringcache_store_items"));
    assert!(m.labelled("ringcache_clockpro_entries", "state=\"test\"") > 0.0);
    assert!(
        peak_kib >> 10 <= MEMORY_MIB + FIXED_MIB,
        "peak RSS {} MiB is over --memory {MEMORY_MIB} MiB + {FIXED_MIB} MiB of fixed buffers",
        peak_kib >> 10
    );
}

/// Small objects fill the index before the bytes: the store holds at most
/// 15/16 of its slots, and the evictions past that are counted as the
/// index's, which tells an operator to lower `memory_per_index_slot`.
fn small_objects_are_evicted_for_the_index(io: &str) {
    let origin = DemoOrigin::start();
    let args = ["--memory", "4MiB", "--set", "limits.object_bytes_max=64KiB"];
    let Some(server) = Server::serve(io, Some(&origin.url()), 1, &args) else {
        return;
    };
    let slots = server.metrics().value("ringcache_store_index_slots");
    assert!(slots >= 512.0, "{slots} index slots");
    let mut c = server.client();
    let objects = 2 * slots as u64;
    for i in 0..objects {
        c.send(get_request(&format!("/api/items/tiny{i}?size=16")).as_bytes());
        assert_eq!(c.read_response().status, 200);
    }
    let m = server.metrics();
    let (items, evictions) = (
        m.value("ringcache_store_items"),
        m.value("ringcache_store_evictions_total"),
    );
    assert!(
        items <= slots * 15.0 / 16.0,
        "{items} items in {slots} slots"
    );
    assert!(evictions > 0.0, "nothing evicted");
    assert_eq!(m.value("ringcache_store_index_evictions_total"), evictions);
    assert!(m.value("ringcache_store_bytes_used") < m.value("ringcache_store_bytes_max") / 2.0);
}

both_io!(
    peak_rss_stays_under_the_cap,
    small_objects_are_evicted_for_the_index
);
