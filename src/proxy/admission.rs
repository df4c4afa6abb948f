//! Whether an origin response goes into the store, and in which form.
//!
//! The decision is `http::freshness::decide` (RFC 9111 §3) under the
//! operator's [`Policy`], built once from the `[cache]` table:
//!
//! | `[cache]` key | `Policy` field | default |
//! |---|---|---|
//! | `set_cookie` | `set_cookie` | `refuse` |
//! | `heuristic` | `heuristic` | off |
//! | `heuristic_percent` | `heuristic_percent` | 10 |
//! | `heuristic_max` | `heuristic_secs_max` | 1 day |
//! | `default_ttl` | `default_ttl_secs` | 0 (off) |
//!
//! On top of `decide`, what this proxy can serve today: a response is
//! admitted when it has a lifetime (explicit, heuristic or the default
//! TTL) and no unqualified `no-cache`. Statuses follow RFC 9110 §15.1
//! (cacheable by default, or any final status with explicit freshness or
//! `public`); 206 never (§3.4). The stored head leaves out what the
//! decision strips (`Set-Cookie` under `strip`, the fields a qualified
//! `private`/`no-cache` names); the client that caused the fetch gets the
//! response as the origin sent it. A response with `Vary` is admitted with
//! its names and the secondary key of the request that fetched it (see
//! `variants`).

use httparse::Header;

use crate::config::{CacheConfig, SetCookieMode};
use crate::http::freshness::{decide, Exchange, Stored};
use crate::http::policy::{Policy, SetCookie};
use crate::http::request::Method;
use crate::http::vary::{has_vary, write_secondary_key, write_vary_names};

use super::compose::{is_dropped_on_forward, put_field, put_status_line};
use super::variants::Variant;

/// The storability switches of `[cache]`.
pub(super) fn policy_of(cache: &CacheConfig) -> Policy {
    Policy {
        heuristic: cache.heuristic,
        heuristic_percent: cache.heuristic_percent,
        heuristic_secs_max: cache.heuristic_max.as_secs(),
        default_ttl_secs: cache.default_ttl.as_secs(),
        set_cookie: match cache.set_cookie {
            SetCookieMode::Refuse => SetCookie::Refuse,
            SetCookieMode::Strip => SetCookie::Strip,
            SetCookieMode::Store => SetCookie::Store,
        },
        ..Policy::default()
    }
}

/// A response the proxy will store once its body is complete.
pub(super) struct Admission {
    pub stored: Stored,
    /// `Some` when the response varies: stored as a variant.
    pub variant: Option<Variant>,
    /// The head to store when it differs from the one relayed (fields stripped).
    pub head: Option<Vec<u8>>,
}

impl Admission {
    /// May waiters of a coalesced fill get the relayed response as is?
    /// Not when it varies (their fields may select another variant) or
    /// when the stored form differs: they are answered from the store.
    pub fn shared_as_relayed(&self) -> bool {
        self.variant.is_none() && self.head.is_none()
    }
}

/// The request and response heads as the proxy has them when the
/// response head arrives.
pub(super) struct Heads<'a> {
    pub method: Method,
    pub request: &'a [Header<'a>],
    pub status: u16,
    pub reason: &'a [u8],
    pub response: &'a [Header<'a>],
    pub request_time_secs: u64,
    pub response_time_secs: u64,
}

/// Decide whether to store the response, and build what storing needs.
pub(super) fn admit(heads: &Heads<'_>, policy: &Policy) -> Option<Admission> {
    let x = Exchange {
        method: heads.method,
        request: heads.request,
        status: heads.status,
        response: heads.response,
        request_time_secs: heads.request_time_secs,
        response_time_secs: heads.response_time_secs,
    };
    let stored = decide(&x, policy).ok()?;
    if stored.lifetime_secs == 0 || stored.no_cache {
        return None; // would need validation on every use
    }
    let variant = if has_vary(heads.response) {
        let mut names = Vec::new();
        let mut secondary = Vec::new();
        write_vary_names(heads.response, &mut names).ok()?;
        write_secondary_key(heads.response, heads.request, &mut secondary).ok()?;
        Some(Variant { names, secondary })
    } else {
        None
    };
    let strips = heads
        .response
        .iter()
        .any(|f| stored.strips(heads.response, f.name.as_bytes()));
    let head = strips.then(|| {
        let mut head = Vec::new();
        put_status_line(&mut head, heads.status, heads.reason);
        for f in heads.response {
            let name = f.name.as_bytes();
            if is_dropped_on_forward(heads.response, name)
                || name.eq_ignore_ascii_case(b"age")
                || stored.strips(heads.response, name)
            {
                continue;
            }
            put_field(&mut head, name, f.value);
        }
        head
    });
    Some(Admission {
        stored,
        variant,
        head,
    })
}
