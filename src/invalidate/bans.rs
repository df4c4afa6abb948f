//! Bans: selectors checked lazily on lookup against the objects stored
//! before them, so a prefix, a regex, a stored field or "everything" is
//! invalidated without walking the store.
//!
//! ```text
//!  admin thread ── add(selector) ──▶ RwLock<Vec<Arc<Ban>>>   (bounded: bans_max)
//!                                        │ count (AtomicUsize)
//!  worker lookup ── count == 0? ─────────┘ one atomic load, nothing else
//!        └─ else: read lock, each ban: born_secs <= created_secs && matches
//!           → the worker removes the object and treats it as a miss
//! ```
//!
//! **Stored before the ban.** The store keeps one time per object,
//! `born_secs` = response time − the origin's `Age` (RFC 9111 §4.2.3).
//! A ban created at second `T` matches objects with `born_secs <= T`: every
//! object stored before the ban qualifies (its birth is no later than its
//! insert). Two kinds of newer objects qualify too and are fetched again,
//! which costs an origin request but never serves invalidated bytes: one
//! stored in the same second as the ban, and one the origin sent with an
//! `Age` that puts its birth before the ban.
//!
//! **Variants.** A ban matches URLs: the path of a variant key
//! (`host 0x00 path 0x00 secondary`) ends at its second NUL, so every
//! variant of a banned URL matches, and a header or tag ban reads the
//! variant's own stored head.
//!
//! **Retirement.** A ban matters while an object stored before it can
//! still be used: served fresh, served stale, or validated with the origin
//! and then served. The first two have a bound, the last has none: an
//! expired object with validators stays in the store until it is evicted,
//! and a request may validate it any time (so may a client's `max-stale`
//! without a value accept it). So the rule has two parts:
//!
//! 1. The proxy reports, for every insert, the second until which the
//!    object may be served without asking the origin
//!    ([`Bans::note_servable_until`]: its expiry plus its
//!    stale-while-revalidate / stale-if-error window, the window counted up
//!    to `config::BAN_STALE_WINDOW_SECS_MAX`); the bans keep the maximum.
//!    A ban created at `T` copies that maximum as its `retire_secs`: once
//!    the clock passes it, every object stored before `T` is expired and
//!    past the windows that were counted.
//! 2. Retiring a ban raises the *floor* ([`Bans::floor_secs`]) to its
//!    creation second. An expired object born at or before the floor is
//!    never used again, by any path that uses expired objects (stale
//!    answers, validation, stale-if-error, the 304 merge): the proxy
//!    removes it and fetches the URL anew, as for a ban
//!    ([`Bans::check_expired`]). Fresh objects are not affected: one stored
//!    before a retired ban is expired by part 1.
//!
//! Part 2 is what makes retiring sound; part 1 keeps its cost small: only
//! objects past every counted window and older than a retired ban lose
//! their stored copy (an unconditional fetch instead of a validation). A
//! store reopened from its file holds objects whose expiry the bans never
//! saw: until the first insert the bound starts at the start time plus the
//! longest lifetime the store can hold and the longest counted window.
//! `/invalidate/all` replaces every ban by one that matches everything.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use regex::Regex;

use super::fields::{field_value, has_tag};

/// What a ban matches. Paths are the key's path and query.
#[derive(Debug)]
pub enum Selector {
    /// One path, under every host.
    Path(String),
    Prefix(String),
    Regex(Regex),
    /// A stored response field equal to `value` (name lowercase).
    Header {
        name: String,
        value: String,
    },
    /// A tag in the stored tag field (the index cannot answer exactly).
    Tag {
        header: String,
        tag: String,
    },
    All,
}

impl Selector {
    /// The `kind` label of the purge metric.
    pub fn kind(&self) -> &'static str {
        match self {
            Selector::Path(_) => "url",
            Selector::Prefix(_) => "prefix",
            Selector::Regex(_) => "regex",
            Selector::Header { .. } => "header",
            Selector::Tag { .. } => "tag",
            Selector::All => "all",
        }
    }

    /// Does the object under `key` (`host\0path`, or a variant key
    /// `host\0path\0secondary`) with stored `head` match?
    pub fn matches(&self, key: &[u8], head: &[u8]) -> bool {
        let path = key
            .iter()
            .position(|&b| b == 0)
            .map_or(key, |i| &key[i + 1..]);
        // A variant is matched by its URL.
        let path = path
            .iter()
            .position(|&b| b == 0)
            .map_or(path, |i| &path[..i]);
        match self {
            Selector::Path(p) => path == p.as_bytes(),
            Selector::Prefix(p) => path.starts_with(p.as_bytes()),
            Selector::Regex(r) => std::str::from_utf8(path).is_ok_and(|p| r.is_match(p)),
            Selector::Header { name, value } => {
                field_value(head, name.as_bytes()).is_some_and(|v| v == value.as_bytes())
            }
            Selector::Tag { header, tag } => has_tag(head, header.as_bytes(), tag.as_bytes()),
            Selector::All => true,
        }
    }

    /// A JSON value describing the selector, for `GET /bans`.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Selector::Path(p) => json!({ "url": p }),
            Selector::Prefix(p) => json!({ "prefix": p }),
            Selector::Regex(r) => json!({ "regex": r.as_str() }),
            Selector::Header { name, value } => {
                json!({ "header": { "name": name, "value": value } })
            }
            Selector::Tag { tag, .. } => json!({ "tag": tag }),
            Selector::All => json!({ "all": true }),
        }
    }
}

/// One ban.
#[derive(Debug)]
pub struct Ban {
    pub id: u64,
    pub selector: Selector,
    /// Unix second of creation: objects born at or before it match.
    pub created_secs: u64,
    /// Unix second from which no object stored before the ban is servable.
    pub retire_secs: u64,
    /// Objects this ban removed so far.
    pub matched: AtomicU64,
}

/// Why a ban was not added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BansFull;

/// The bounded list of active bans, shared by every worker and the admin.
pub struct Bans {
    /// `list.len()`, readable without the lock: the hot path's only cost.
    count: AtomicUsize,
    list: RwLock<Vec<Arc<Ban>>>,
    next_id: AtomicU64,
    /// Earliest `retire_secs` in the list (`u64::MAX` when empty).
    next_retire_secs: AtomicU64,
    /// Latest `created_secs` in the list: an object born after it matches
    /// no ban, and its lookup skips the lock.
    newest_created_secs: AtomicU64,
    /// Latest second until which any stored object may be served.
    servable_max_secs: AtomicU64,
    /// Creation second of the newest retired ban: expired objects born at
    /// or before it are not used (see the module doc).
    floor_secs: AtomicU64,
    max: usize,
}

impl Bans {
    /// `servable_max_secs`: the bound for objects already in the store
    /// (see the module doc).
    pub fn new(max: usize, servable_max_secs: u64) -> Bans {
        Bans {
            count: AtomicUsize::new(0),
            list: RwLock::new(Vec::with_capacity(max)),
            next_id: AtomicU64::new(1),
            next_retire_secs: AtomicU64::new(u64::MAX),
            newest_created_secs: AtomicU64::new(0),
            servable_max_secs: AtomicU64::new(servable_max_secs),
            floor_secs: AtomicU64::new(0),
            max,
        }
    }

    /// Record that an object just stored may be served until `secs`.
    /// Called before the insert, so a ban that reads the bound after its
    /// own creation covers every object stored before it.
    #[inline]
    pub fn note_servable_until(&self, secs: u64) {
        // Relaxed load first: the common case only reads the line.
        if self.servable_max_secs.load(Ordering::Relaxed) < secs {
            // SeqCst: ordered against the ban list's publication in `add`.
            self.servable_max_secs.fetch_max(secs, Ordering::SeqCst);
        }
    }

    /// `limits.bans_max`.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Active bans, without the lock.
    #[inline]
    pub fn active(&self) -> usize {
        // Acquire: pairs with the Release in `publish`. A lookup that runs
        // while a ban is added may miss it; every lookup that starts after
        // the admin answered sees it.
        self.count.load(Ordering::Acquire)
    }

    /// Add a ban created at `now_secs`. `All` replaces every other ban: it
    /// matches all they would.
    pub fn add(&self, selector: Selector, now_secs: u64) -> Result<Arc<Ban>, BansFull> {
        self.add_with(selector, now_secs, None)
    }

    /// The `retire_secs` a ban created at `now_secs` gets now (see the
    /// module doc): read before the ban is recorded in the journal, then
    /// given to [`Bans::add_with`].
    pub fn retire_bound(&self, now_secs: u64) -> u64 {
        // SeqCst: pairs with `note_servable_until`.
        self.servable_max_secs
            .load(Ordering::SeqCst)
            .max(now_secs + 1)
    }

    /// Add a ban created at `created_secs`, retiring at `retire_secs`
    /// (`None`: [`Bans::retire_bound`] now). With explicit times: a ban
    /// recorded earlier and replayed from the journal, or recorded just
    /// before with these times.
    pub fn add_with(
        &self,
        selector: Selector,
        created_secs: u64,
        retire_secs: Option<u64>,
    ) -> Result<Arc<Ban>, BansFull> {
        let now_secs = created_secs;
        let mut list = self.list.write().unwrap_or_else(|e| e.into_inner());
        self.retire_locked(&mut list, now_secs);
        let all = matches!(selector, Selector::All);
        if all {
            // The new ban covers every object these did, for at least as
            // long (its bound is the maximum so far): no floor needed.
            list.clear();
        } else if list.len() >= self.max {
            self.publish(&list);
            return Err(BansFull);
        }
        let retire_secs = retire_secs.unwrap_or_else(|| self.retire_bound(now_secs));
        let ban = Arc::new(Ban {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            selector,
            created_secs: now_secs,
            retire_secs,
            matched: AtomicU64::new(0),
        });
        list.push(Arc::clone(&ban));
        self.publish(&list);
        Ok(ban)
    }

    fn publish(&self, list: &[Arc<Ban>]) {
        let next = list.iter().map(|b| b.retire_secs).min().unwrap_or(u64::MAX);
        let newest = list.iter().map(|b| b.created_secs).max().unwrap_or(0);
        // Relaxed: hints; the list itself is read under the lock, and the
        // Release below orders them before the count a lookup loads first.
        self.next_retire_secs.store(next, Ordering::Relaxed);
        self.newest_created_secs.store(newest, Ordering::Relaxed);
        // Release: pairs with the Acquire in `active`.
        self.count.store(list.len(), Ordering::Release);
    }

    /// Drop the bans no object can still need.
    pub fn retire(&self, now_secs: u64) {
        let mut list = self.list.write().unwrap_or_else(|e| e.into_inner());
        self.retire_locked(&mut list, now_secs);
        self.publish(&list);
    }

    /// Drop the bans whose bound passed, raising the floor to the newest of
    /// them (under the list's write lock).
    fn retire_locked(&self, list: &mut Vec<Arc<Ban>>, now_secs: u64) {
        let mut floor = 0;
        list.retain(|b| {
            let keep = now_secs < b.retire_secs;
            if !keep {
                floor = floor.max(b.created_secs);
            }
            keep
        });
        if floor > 0 {
            // Release: a lookup that no longer finds the ban in the list
            // (read under the lock after this) or in the count sees the
            // floor that replaces it; pairs with the Acquire in `floor_secs`.
            self.floor_secs.fetch_max(floor, Ordering::Release);
        }
    }

    /// Raise the floor to `secs` (a floor kept in the journal from before
    /// a restart).
    pub fn raise_floor(&self, secs: u64) {
        // Release: as in `retire_locked`.
        self.floor_secs.fetch_max(secs, Ordering::Release);
    }

    /// Creation second of the newest retired ban (0: none retired yet).
    #[inline]
    pub fn floor_secs(&self) -> u64 {
        // Acquire: pairs with the Release in `retire_locked`.
        self.floor_secs.load(Ordering::Acquire)
    }

    /// Is an object that is no longer fresh (`key`, stored `head`, born
    /// at `born_secs`) invalidated? Matched by an active ban, or born at or
    /// before a retired one (see the module doc). For the paths that serve
    /// or validate expired objects; counts a ban's match.
    pub fn check_expired(&self, key: &[u8], head: &[u8], born_secs: u64, now_secs: u64) -> bool {
        (self.active() > 0 && self.check(key, head, born_secs, now_secs))
            || born_secs <= self.floor_secs()
    }

    /// Is the object (`key`, stored `head`, born at `born_secs`) banned?
    /// Counts the match on the ban. Call only when [`Bans::active`] > 0.
    pub fn check(&self, key: &[u8], head: &[u8], born_secs: u64, now_secs: u64) -> bool {
        // Relaxed: a hint, see `publish`. Objects stored after every ban
        // (the common case once banned objects were fetched again) are
        // cleared without the lock.
        if born_secs > self.newest_created_secs.load(Ordering::Relaxed) {
            return false;
        }
        // Relaxed: a hint, see `publish`.
        if now_secs >= self.next_retire_secs.load(Ordering::Relaxed) {
            if let Ok(mut list) = self.list.try_write() {
                self.retire_locked(&mut list, now_secs);
                self.publish(&list);
            }
        }
        let list = self.list.read().unwrap_or_else(|e| e.into_inner());
        for ban in list.iter() {
            if born_secs <= ban.created_secs && ban.selector.matches(key, head) {
                // Relaxed: a statistic.
                ban.matched.fetch_add(1, Ordering::Relaxed);
                return true;
            }
        }
        false
    }

    /// The active bans, oldest first.
    pub fn list(&self, now_secs: u64) -> Vec<Arc<Ban>> {
        self.retire(now_secs);
        self.list
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nX-Team: search\r\nSurrogate-Key: a b\r\n";

    #[test]
    fn selectors_match_path_fields_and_tags() {
        let key = b"h\0/api/users/7?x=1";
        assert!(Selector::Prefix("/api/users/".into()).matches(key, HEAD));
        assert!(!Selector::Prefix("/api/items/".into()).matches(key, HEAD));
        assert!(Selector::Path("/api/users/7?x=1".into()).matches(key, HEAD));
        assert!(!Selector::Path("/api/users/7".into()).matches(key, HEAD));
        let r = Regex::new("^/api/u.*x=1$").unwrap();
        assert!(Selector::Regex(r).matches(key, HEAD));
        let h = |v: &str| Selector::Header {
            name: "x-team".into(),
            value: v.into(),
        };
        assert!(h("search").matches(key, HEAD));
        assert!(!h("sear").matches(key, HEAD));
        let t = |v: &str| Selector::Tag {
            header: "surrogate-key".into(),
            tag: v.into(),
        };
        assert!(t("b").matches(key, HEAD));
        assert!(!t("c").matches(key, HEAD));
    }

    #[test]
    fn bans_match_older_objects_only_and_retire() {
        let bans = Bans::new(2, 0);
        assert_eq!(bans.active(), 0);
        bans.note_servable_until(160);
        bans.add(Selector::Prefix("/a".into()), 100).unwrap();
        assert_eq!(bans.active(), 1);
        assert!(bans.check(b"h\0/a/1", HEAD, 100, 101));
        assert!(
            !bans.check(b"h\0/a/1", HEAD, 101, 101),
            "born after the ban"
        );
        assert!(!bans.check(b"h\0/b", HEAD, 50, 101));
        bans.add(Selector::Path("/b".into()), 100).unwrap();
        assert_eq!(
            bans.add(Selector::Path("/c".into()), 100).unwrap_err(),
            BansFull
        );
        // Everything replaces the rest.
        bans.add(Selector::All, 120).unwrap();
        assert_eq!(bans.active(), 1);
        assert!(bans.check(b"h\0/z", HEAD, 119, 121));
        // Past the servable bound the ban is dropped.
        assert!(!bans.check(b"h\0/z", HEAD, 119, 160));
        assert_eq!(bans.active(), 0);
        assert_eq!(bans.list(161).len(), 0);
        // Retired, the ban leaves a floor: expired objects born before it
        // are not used again; newer ones are.
        assert_eq!(bans.floor_secs(), 120);
        assert!(bans.check_expired(b"h\0/z", HEAD, 119, 161));
        assert!(bans.check_expired(b"h\0/other", HEAD, 120, 161));
        assert!(!bans.check_expired(b"h\0/z", HEAD, 121, 161));
    }

    #[test]
    fn variants_match_by_their_url() {
        let variant = b"h\0/a/1\0accept-encoding\0gzip";
        assert!(Selector::Path("/a/1".into()).matches(variant, HEAD));
        assert!(Selector::Prefix("/a/".into()).matches(variant, HEAD));
        let r = Regex::new("^/a/1$").unwrap();
        assert!(Selector::Regex(r).matches(variant, HEAD));
        assert!(!Selector::Path("/a/1\0accept-encoding".into()).matches(variant, HEAD));
    }
}
