//! `Cache-Control` and the targeted fields on arbitrary bytes: split the
//! input into field lines at LF and parse them as one field, both ways.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcache::http::{cache_control, sf, targeted};

fuzz_target!(|data: &[u8]| {
    let lines = data.split(|&b| b == b'\n');
    let cc = cache_control::parse(lines.clone());
    assert!(cc
        .max_age
        .map_or(true, |s| s <= cache_control::DELTA_SECONDS_MAX));
    let _ = cache_control::qualified_fields(lines.clone()).count();
    let _ = targeted::parse_targeted(lines);
    if let Ok(d) = sf::Dictionary::parse(data) {
        for m in d.members() {
            let _ = m.params.count();
        }
    }
});
