//! The operator's switches for the caching decisions, with the defaults
//! that follow the RFC text. The proxy builds one [`Policy`] from its
//! config at start and passes it by reference; nothing here is read from
//! the environment.

/// What to do with a response that carries `Set-Cookie`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SetCookie {
    /// Do not store the response (the default: a cookie is usually meant
    /// for one client, and a shared cache would hand it to everyone).
    #[default]
    Refuse,
    /// Store the response without its `Set-Cookie` fields.
    Strip,
    /// Store it as received (the RFC allows this; the origin must mark
    /// per-client responses `private`).
    Store,
}

/// Switches for storability, freshness and reuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Allow heuristic freshness (RFC 9111 §4.2.2) for responses without
    /// an explicit lifetime. Off by default: no lifetime the origin did
    /// not give.
    pub heuristic: bool,
    /// Heuristic lifetime as a percentage of (Date − Last-Modified).
    pub heuristic_percent: u8,
    /// Upper bound of any heuristic lifetime.
    pub heuristic_secs_max: u64,
    /// Heuristic lifetime when there is no Last-Modified to work from
    /// (0: none, such responses need a validator or are not stored).
    pub heuristic_default_secs: u64,
    /// Lifetime of a response that has a validator (`ETag` or
    /// `Last-Modified`) but no explicit lifetime and no heuristic one
    /// (0: none). A heuristic in the sense of RFC 9111 §4.2.2: it applies
    /// only to statuses cacheable by default or marked `public`.
    pub default_ttl_secs: u64,
    pub set_cookie: SetCookie,
    /// RFC 8246: while a response marked `immutable` is fresh, a client's
    /// reload (`Cache-Control: no-cache` or `max-age=0`, `Pragma:
    /// no-cache`) is answered from cache without asking the origin.
    pub immutable_ignores_reload: bool,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            heuristic: false,
            heuristic_percent: 10,
            heuristic_secs_max: 24 * 3600,
            heuristic_default_secs: 0,
            default_ttl_secs: 0,
            set_cookie: SetCookie::Refuse,
            immutable_ignores_reload: true,
        }
    }
}
