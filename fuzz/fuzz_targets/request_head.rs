//! A request head on arbitrary bytes, then the caching decisions that
//! read its fields.
#![no_main]

use std::mem::MaybeUninit;

use libfuzzer_sys::fuzz_target;
use ringcache::http::request::{parse_request, Parsed, RequestLimits};
use ringcache::http::{reuse, validation, vary};

const HEADERS_COUNT_MAX: usize = 64;

fuzz_target!(|data: &[u8]| {
    let limits = RequestLimits {
        head_bytes_max: 16 << 10,
        headers_count_max: HEADERS_COUNT_MAX,
        body_bytes_max: 1 << 20,
    };
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; HEADERS_COUNT_MAX];
    if let Ok(Parsed::Complete(head)) = parse_request(data, &mut fields, &limits) {
        assert!(head.head_len <= data.len());
        let d = reuse::RequestDirectives::from_headers(head.headers);
        let _ = d.only_if_cached();
        let _ = validation::evaluate_preconditions(head.method, head.headers, head.headers);
        let mut key = Vec::new();
        if vary::write_secondary_key(head.headers, head.headers, &mut key).is_ok() {
            assert!(vary::variant_matches(head.headers, &key, head.headers));
        }
    }
});
