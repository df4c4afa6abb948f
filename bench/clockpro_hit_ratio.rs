//! Hit-ratio benchmark: ringcache's CLOCK-Pro on every trace of `shared/traces` at 1%, 5% and
//! 10% of the distinct keys (count mode). It is printed beside the reference simulator's
//! CLOCK-Pro, LRU and S3-FIFO (`bench/clockpro_reference.csv`), with the gap to the best of
//! them. Run with `cargo bench --bench clockpro_hit_ratio`.
//!
//! Traces come from `RINGCACHE_TRACES` or `../shared/traces`, as in the test.

#[allow(dead_code)]
#[path = "../tests/clockpro_traces.rs"]
mod traces;

use traces::replay::{reference, replay_trace, trace_names, traces_dir};

fn main() {
    let dir = match traces_dir() {
        Ok(dir) => dir,
        Err(why) => {
            println!("SKIPPED: traces not found ({why})");
            return;
        }
    };
    let rows = reference();
    println!("miss ratios, count mode (ours = ringcache CLOCK-Pro; the rest from bench/clockpro_reference.csv)");
    println!(
        "{:26} {:>5} {:>7} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9}",
        "trace", "size", "entries", "ours", "ref-CPro", "LRU", "S3-FIFO", "vs-ref", "vs-best"
    );
    let started = std::time::Instant::now();
    let mut requests_total = 0u64;
    let (mut gap_ref_sum_pp, mut gap_best_sum_pp, mut points) = (0.0, 0.0, 0u32);
    for trace in trace_names(&rows) {
        for ours in replay_trace(&dir, &trace, &rows) {
            let ratio_of = |policy: &str| {
                rows.iter()
                    .find(|r| r.trace == trace && r.fraction == ours.fraction && r.policy == policy)
                    .map(|r| r.miss_ratio())
            };
            let reference_clockpro = ratio_of("CLOCK-Pro").unwrap();
            let lru = ratio_of("LRU").unwrap_or(f64::NAN);
            let s3fifo = ratio_of("S3-FIFO").unwrap_or(f64::NAN);
            let best = reference_clockpro
                .min(lru)
                .min(s3fifo)
                .min(ours.miss_ratio());
            let gap_ref_pp = (ours.miss_ratio() - reference_clockpro) * 100.0;
            let gap_best_pp = (ours.miss_ratio() - best) * 100.0;
            println!(
                "{trace:26} {:>4}% {:>7} {:>9.4} {:>9.4} {:>9.4} {:>9.4} {:>+7.2}pp {:>+7.2}pp",
                (ours.fraction.parse::<f64>().unwrap() * 100.0).round(),
                ours.capacity,
                ours.miss_ratio(),
                reference_clockpro,
                lru,
                s3fifo,
                gap_ref_pp,
                gap_best_pp,
            );
            requests_total += ours.requests;
            gap_ref_sum_pp += gap_ref_pp.abs();
            gap_best_sum_pp += gap_best_pp;
            points += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{points} points: mean |gap to reference CLOCK-Pro| {:.3} pp, mean gap to the best \
         {:.3} pp; {requests_total} requests replayed in {secs:.2} s (trace decoding included)",
        gap_ref_sum_pp / f64::from(points.max(1)),
        gap_best_sum_pp / f64::from(points.max(1)),
    );
}
