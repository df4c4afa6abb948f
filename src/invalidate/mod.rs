//! Invalidation: "the data changed, forget it now".
//!
//! One [`InvalidationRequest`] (JSON, the body of `POST /invalidate`)
//! names what to forget with any subset of selectors, and a mode:
//!
//! | selector | how it acts |
//! |---|---|
//! | `urls` | now: the key the proxy builds (its `[cache]` key rules, `proxy::KeyRules`) and every `Vary` variant under it are removed (`hard`) or made stale in place (`soft`, the bytes and validators stay: the next request validates them; `refresh`, as `soft`, and each is queued for a background refetch: [refresh]) |
//! | `prefixes`, `regex`, `header` | a [ban](bans): checked on lookup against objects stored before it, always hard |
//! | `tags` | now, through the [tag index](tags); also a tag ban while the index is incomplete |
//! | `all` | a ban that matches everything (`POST /invalidate/all`) |
//!
//! A path without a host (`"/api/items/1"` and no `"host"`) cannot name
//! one key (the key holds the host the client sent): a hard purge of it
//! is an exact-path ban over every host, a soft or refresh one is refused.
//!
//! `refresh` acts on `urls` and `tags` only: bans act on lookup and know
//! no object ahead of it, so there would be nothing to refetch; a refresh
//! with `prefixes`, `regex`, `header` or `all` is refused (400) rather than
//! half done. With an incomplete tag index, a tag refresh refetches the
//! objects the index knows and bans the tag as a soft purge does.
//!
//! Where the proxy applies it: a URL purge goes through
//! `proxy::purge_primary`, the one function that knows markers and
//! variants (also used by `PURGE` and by invalidation after unsafe
//! requests); bans are checked by every path that answers from a stored
//! object (`proxy::variants::lookup_varied` for hits, ranges and coalesced
//! waiters; `proxy::revalidate` for stale answers, validation and the 304
//! merge); the tag field is stored last and cut from every answer when
//! `tag_header_strip` (see `fields::put_field_last`).
//!
//! The request is one value that serialises to JSON and applies on any
//! node: [`Invalidator::apply`] is what the admin API calls, and what a
//! bus that carries invalidations between nodes calls with the same body.
//! The whole request is checked before anything is applied: a bad regex
//! or a full ban list leaves the cache untouched.
//!
//! With a store file, bans outlive the process: each is written to the
//! file's invalidation journal before it is applied and acknowledged, and
//! replayed at the next start before the first request ([`durable`]).

pub mod bans;
pub mod durable;
pub mod fields;
pub mod refresh;
pub mod tags;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use regex::RegexBuilder;
use serde::{Deserialize, Serialize};

use crate::config::{
    CacheConfig, Cidr, Invalidation, BAN_REGEX_COMPILED_BYTES_MAX, BAN_REGEX_PATTERN_BYTES_MAX,
    BAN_SELECTOR_BYTES_MAX, BAN_STALE_WINDOW_SECS_MAX, INVALIDATION_SELECTORS_MAX,
    TAG_PRUNE_CHUNK_KEYS,
};
use crate::metrics::BanLogGauges;
use crate::proxy::KeyRules;
use crate::store::item::LIFETIME_SECS_MAX;
use crate::store::journal::{Journal, Scan};
use crate::store::{Reader, SharedStore};

pub use bans::{Ban, Bans, Selector};
pub use refresh::{RefreshEnd, RefreshJob, RefreshQueue, RefreshTicket};
pub use tags::TagIndex;

/// Remove, or keep the bytes and make them stale (and, with `Refresh`,
/// refetch them in the background: [`refresh`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Hard,
    Soft,
    Refresh,
}

/// A stored field to match: `{"name": "x-team", "value": "search"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSelector {
    pub name: String,
    pub value: String,
}

/// What to invalidate; every selector is optional, at least one is needed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvalidationRequest {
    /// Paths (`/a?b`) or absolute URLs (`http://host/a?b`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// The host of the paths in `urls`, as clients send it in `Host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefixes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<FieldSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Everything stored (what `POST /invalidate/all` sends).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
    #[serde(default)]
    pub mode: Mode,
    /// With the bus: answer once every live node applied it (`all`), or
    /// at once (`none`, the default). Not sent on the bus.
    #[serde(default, skip_serializing_if = "Wait::is_none")]
    pub wait: Wait,
    /// How long `"wait": "all"` waits, in milliseconds (default
    /// [`ACK_WAIT_MS_DEFAULT`], at most [`ACK_WAIT_MS_MAX`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// Default of `timeout_ms` for an acknowledged invalidation.
pub const ACK_WAIT_MS_DEFAULT: u64 = 2000;
/// Longest `timeout_ms` accepted (beyond: 400): the admin thread waits.
pub const ACK_WAIT_MS_MAX: u64 = 30_000;

/// Whether an invalidation's answer waits for the other nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Wait {
    #[default]
    None,
    All,
}

impl Wait {
    fn is_none(&self) -> bool {
        *self == Wait::None
    }
}

impl InvalidationRequest {
    /// The request as the bus carries it to the other nodes: the same
    /// selectors and mode, without this node's waiting.
    pub fn for_bus(&self) -> Vec<u8> {
        let mut r = self.clone();
        r.wait = Wait::None;
        r.timeout_ms = None;
        serde_json::to_vec(&r).expect("an invalidation request serialises")
    }
}

/// What an applied request did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Objects removed or made stale now (for `all`: the objects stored).
    pub invalidated: u64,
    /// Bans added (they act on lookup; `GET /bans` counts their matches).
    pub bans: u64,
    /// `refresh`: keys queued for a background refetch.
    pub refresh_queued: u64,
    /// `refresh`: keys left soft-purged because the queue was full.
    pub refresh_dropped: u64,
}

/// Why a request was not applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The request is malformed (400), with a message for the caller.
    Invalid(String),
    /// The ban list is at `limits.bans_max` (503).
    BansFull,
}

/// The `kind` labels of `ringcache_purges_total`, in counter order.
pub const PURGE_KINDS: [&str; 6] = ["url", "prefix", "regex", "header", "tag", "all"];

/// A URL to purge now: `host` `None` for a path under every host.
struct UrlTarget {
    host: Option<String>,
    path: String,
}

/// A checked request, ready to apply.
struct Plan {
    urls: Vec<UrlTarget>,
    bans: Vec<Selector>,
    tags: Vec<String>,
    all: bool,
    mode: Mode,
}

/// Who may invalidate: the settings a SIGHUP reload replaces while serving
/// (read once per admin request and per `PURGE`, never on a hit).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InvalidationAccess {
    /// `admin.token` (or `RINGCACHE_ADMIN_TOKEN`); `None`: the API answers 403.
    pub admin_token: Option<String>,
    /// `invalidation.purge_allow`.
    pub purge_allow: Vec<Cidr>,
    /// `admin.hmac_key`: when set, invalidation calls must be signed.
    pub hmac_key: Option<String>,
    /// `admin.hmac_window`.
    pub hmac_window: std::time::Duration,
}

/// Invalidation state shared by the workers, the admin thread and (later)
/// a bus: bans, the tag index, counters.
pub struct Invalidator {
    pub bans: Bans,
    pub tags: TagIndex,
    /// `[invalidation]` as loaded at start; its `admin_token` and
    /// `purge_allow` are moved out into [`Invalidator::access`] (reloadable).
    pub config: Invalidation,
    access: RwLock<InvalidationAccess>,
    store: Arc<SharedStore>,
    /// The admin side's read handle, for soft purges and tag checks.
    reader: Mutex<Reader>,
    /// How URLs become keys: the workers' rules, built from the same
    /// `[cache]` (replaced by a SIGHUP reload).
    key_rules: RwLock<KeyRules>,
    purges: [AtomicU64; 6],
    invalidated: AtomicU64,
    node: String,
    /// The store file's journal (none for an anonymous store).
    log: Option<durable::BanLog>,
    /// One invalidation at a time (the admin thread, the bus, the upkeep's
    /// compaction): the journal holds exactly the bans added, in order.
    writer: Mutex<()>,
    /// Keys a `refresh` queued, taken by the workers.
    pub refresh: Arc<RefreshQueue>,
}

impl Invalidator {
    /// `reader`: a read handle of its own (not a worker's); `cache`: the
    /// `[cache]` table the workers build their keys from.
    pub fn new(
        mut config: Invalidation,
        cache: &CacheConfig,
        bans_max: usize,
        store: Arc<SharedStore>,
        reader: Reader,
    ) -> Invalidator {
        let now = unix_now();
        // A reopened store holds objects whose expiry no insert reported.
        let holds_objects = store.usage().items > 0;
        let servable = if holds_objects {
            now + u64::from(LIFETIME_SECS_MAX) + BAN_STALE_WINDOW_SECS_MAX
        } else {
            0
        };
        let access = InvalidationAccess {
            admin_token: config.admin_token.take(),
            purge_allow: std::mem::take(&mut config.purge_allow),
            hmac_key: config.admin_hmac_key.take(),
            hmac_window: config.admin_hmac_window,
        };
        let refresh = Arc::new(RefreshQueue::new(
            config.refresh_queue_max,
            config.refresh_rate,
            config.refresh_concurrency_max,
        ));
        Invalidator {
            access: RwLock::new(access),
            bans: Bans::new(bans_max, servable),
            tags: TagIndex::new(config.tag_index_bytes_max, !holds_objects),
            config,
            store,
            reader: Mutex::new(reader),
            key_rules: RwLock::new(KeyRules::new(cache)),
            purges: std::array::from_fn(|_| AtomicU64::new(0)),
            invalidated: AtomicU64::new(0),
            node: node_name(),
            log: None,
            writer: Mutex::new(()),
            refresh,
        }
    }

    /// Keep bans in the store file's `journal` from now on, after
    /// re-creating those `scan` read from it (see [`durable`]). Call
    /// before anything is served.
    pub fn with_journal(
        mut self,
        journal: Journal,
        scan: Scan,
    ) -> (Invalidator, durable::Replayed) {
        let r = self.store.recovery();
        let unclean = r.reused && !r.was_clean;
        // The tag index stays as `new` left it: incomplete when the store
        // holds objects, even after an `all` (an object born after the
        // start's clock would escape it).
        let (log, replayed) =
            durable::BanLog::replay(journal, scan, &self.bans, unclean, unix_now());
        self.log = Some(log);
        (self, replayed)
    }

    /// The journal's figures, when bans are kept in a store file.
    pub fn ban_log(&self) -> Option<BanLogGauges> {
        self.log.as_ref().map(durable::BanLog::gauges)
    }

    /// The admin token and `purge_allow` now.
    pub fn access(&self) -> RwLockReadGuard<'_, InvalidationAccess> {
        self.access.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replace the admin token and `purge_allow` (a SIGHUP reload): the
    /// next admin request and the next `PURGE` see the new values.
    pub fn set_access(&self, access: InvalidationAccess) {
        *self.access.write().unwrap_or_else(PoisonError::into_inner) = access;
    }

    /// Build keys with a reloaded `[cache]` table from the next
    /// invalidation on, as the workers do from their next tick.
    pub fn set_key_rules(&self, cache: &CacheConfig) {
        *self
            .key_rules
            .write()
            .unwrap_or_else(PoisonError::into_inner) = KeyRules::new(cache);
    }

    /// This node's name in answers (the host name).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Purges applied, per [`PURGE_KINDS`].
    pub fn purges(&self) -> [u64; 6] {
        // Relaxed: statistics.
        std::array::from_fn(|i| self.purges[i].load(Ordering::Relaxed))
    }

    /// Objects invalidated so far (now, or by a ban on lookup).
    pub fn invalidated(&self) -> u64 {
        // Relaxed: a statistic.
        self.invalidated.load(Ordering::Relaxed)
    }

    /// A worker removed an object a ban matched.
    pub fn note_banned(&self) {
        // Relaxed: a statistic.
        self.invalidated.fetch_add(1, Ordering::Relaxed);
    }

    /// Objects invalidated now by a caller outside [`Invalidator::apply`].
    pub fn note_invalidated(&self, n: u64) {
        // Relaxed: a statistic.
        self.invalidated.fetch_add(n, Ordering::Relaxed);
    }

    /// Count one purge of `kind` (one of [`PURGE_KINDS`]).
    pub fn count_purge(&self, kind: &str) {
        if let Some(i) = PURGE_KINDS.iter().position(|k| *k == kind) {
            // Relaxed: a statistic.
            self.purges[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Periodic upkeep, off the request path: retire bans no object can
    /// need any more, and drop tag index entries of objects that left the
    /// store (evicted, expired, removed), so the index does not fill with
    /// them and stays complete.
    pub fn maintain(&self) -> usize {
        let now = unix_now();
        self.bans.retire(now);
        if let Some(journal) = &self.log {
            let _one = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
            if journal.has_dead_records(&self.bans) {
                journal.compact(&self.bans, now);
            }
        }
        let reader = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        let mut head = Vec::new();
        self.tags.prune(TAG_PRUNE_CHUNK_KEYS, |hash, key| {
            head.clear();
            // The head only: the body is not needed to know it is there.
            reader.lookup(hash, key, &mut head, |_, _| false).is_some()
        })
    }

    /// Parse a JSON body and apply it.
    pub fn apply_json(&self, body: &[u8]) -> Result<Outcome, Refusal> {
        let req: InvalidationRequest = serde_json::from_slice(body)
            .map_err(|e| Refusal::Invalid(format!("invalid JSON request: {e}")))?;
        self.apply(&req)
    }

    /// Check the whole request, record its bans in the journal, then
    /// apply it (the order [`durable`] explains).
    pub fn apply(&self, req: &InvalidationRequest) -> Result<Outcome, Refusal> {
        let plan = self.check(req)?;
        let _one = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let now = unix_now();
        // A tag purge is also a ban while the index may miss objects.
        let tag_bans = !plan.all && !self.tags.is_complete();
        let needed = plan.bans.len()
            + plan.urls.iter().filter(|u| u.host.is_none()).count()
            + if tag_bans { plan.tags.len() } else { 0 };
        if !plan.all && self.bans.active() + needed > self.bans.max() {
            self.bans.retire(now);
            if self.bans.active() + needed > self.bans.max() {
                return Err(Refusal::BansFull);
            }
        }
        for _ in &plan.urls {
            self.count_purge("url");
        }
        for sel in &plan.bans {
            self.count_purge(sel.kind());
        }
        for _ in &plan.tags {
            self.count_purge("tag");
        }
        // The bans, in the order they are recorded and added.
        let mut sels = Vec::with_capacity(needed + 1);
        if plan.all {
            self.count_purge("all");
            sels.push(Selector::All);
        }
        for u in plan.urls.iter().filter(|u| u.host.is_none()) {
            sels.push(Selector::Path(u.path.clone()));
        }
        sels.extend(plan.bans);
        if tag_bans {
            sels.extend(plan.tags.iter().map(|tag| Selector::Tag {
                header: self.config.tag_header.clone(),
                tag: tag.clone(),
            }));
        }
        let retire = self.bans.retire_bound(now);
        // Recorded before anything is applied.
        let mut fallback = false;
        if let Some(journal) = &self.log {
            if journal.record(&self.bans, &sels, now, retire).is_err() {
                log::error!(
                    "invalidation journal full: {} ban(s) recorded as an invalidation of everything",
                    sels.len()
                );
                journal.record_all(now, retire, self.bans.floor_secs());
                fallback = true;
            }
        }
        if fallback {
            // What was recorded instead: everything stored before now.
            sels = vec![Selector::All];
        }
        let mut out = Outcome::default();
        // Objects stored when everything is banned: answered, but counted in
        // the metric one by one as lookups remove them.
        let mut all_items = 0;
        for sel in sels {
            let all = matches!(sel, Selector::All);
            if all {
                all_items = self.store.usage().items;
            }
            self.bans
                .add_with(sel, now, Some(retire))
                .map_err(|_| Refusal::BansFull)?;
            if all {
                self.tags.reset();
            }
            out.bans += 1;
        }
        let mut scratch = Vec::new();
        let reader = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        let key_rules = self
            .key_rules
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        for u in &plan.urls {
            if let Some(host) = &u.host {
                // Every variant of the URL (see `proxy::purge_primary`).
                let n = crate::proxy::purge_url_each(
                    &reader,
                    &key_rules,
                    (host.as_bytes(), u.path.as_bytes()),
                    plan.mode,
                    &mut scratch,
                    &mut |hash, key| self.queue_refresh(plan.mode, hash, key, &mut out),
                );
                out.invalidated += n;
            }
        }
        let header = self.config.tag_header.as_bytes();
        for tag in &plan.tags {
            for (hash, key) in self.tags.keys_for(tag.as_bytes(), plan.mode == Mode::Hard) {
                scratch.clear();
                let Some(hit) = reader.lookup_into(hash, &key, &mut scratch) else {
                    continue;
                };
                // The entry may be older than the object now stored there.
                if !fields::has_tag(&scratch[..hit.head_len], header, tag.as_bytes()) {
                    continue;
                }
                if crate::proxy::purge_key(&reader, hash, &key, plan.mode, &mut scratch) {
                    out.invalidated += 1;
                    self.queue_refresh(plan.mode, hash, &key, &mut out);
                }
            }
        }
        // Relaxed: a statistic.
        self.invalidated
            .fetch_add(out.invalidated, Ordering::Relaxed);
        out.invalidated += all_items;
        Ok(out)
    }

    /// With `Refresh`, queue an object just made stale for its refetch.
    fn queue_refresh(&self, mode: Mode, hash: u64, key: &[u8], out: &mut Outcome) {
        if mode != Mode::Refresh {
            return;
        }
        if self.refresh.push(hash, key) {
            out.refresh_queued += 1;
        } else {
            out.refresh_dropped += 1;
        }
    }

    /// Validate every selector and compile the regex.
    fn check(&self, req: &InvalidationRequest) -> Result<Plan, Refusal> {
        let bad = |m: String| Refusal::Invalid(m);
        let empty = req.urls.is_empty()
            && req.prefixes.is_empty()
            && req.regex.is_none()
            && req.header.is_none()
            && req.tags.is_empty()
            && !req.all;
        if empty {
            return Err(bad(
                "nothing to invalidate: give urls, prefixes, regex, header, tags or all".into(),
            ));
        }
        if req.timeout_ms.is_some_and(|t| t > ACK_WAIT_MS_MAX) {
            return Err(bad(format!("timeout_ms: at most {ACK_WAIT_MS_MAX}")));
        }
        for (name, n) in [
            ("urls", req.urls.len()),
            ("prefixes", req.prefixes.len()),
            ("tags", req.tags.len()),
        ] {
            if n > INVALIDATION_SELECTORS_MAX {
                return Err(bad(format!(
                    "{name}: at most {INVALIDATION_SELECTORS_MAX} in one request"
                )));
            }
        }
        if let Some(h) = &req.host {
            if !valid_host(h) {
                return Err(bad(format!("host {h:?}: not a host[:port]")));
            }
        }
        let mut urls = Vec::with_capacity(req.urls.len());
        for u in &req.urls {
            let (host, path) = match u.strip_prefix("http://") {
                Some(rest) => {
                    let split = rest.find(['/', '?']).unwrap_or(rest.len());
                    let (h, p) = rest.split_at(split);
                    if !valid_host(h) {
                        return Err(bad(format!("url {u:?}: not http://host[:port]/path")));
                    }
                    let p = if p.is_empty() { "/" } else { p };
                    if p.starts_with('?') {
                        return Err(bad(format!("url {u:?}: the path must start with /")));
                    }
                    (Some(h.to_string()), p.to_string())
                }
                None if u.starts_with('/') => (req.host.clone(), u.clone()),
                None => {
                    return Err(bad(format!(
                        "url {u:?}: a path (/...) or an http:// URL is needed"
                    )))
                }
            };
            if !path.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(bad(format!("url {u:?}: the path holds spaces or controls")));
            }
            if host.is_none() && path.len() > BAN_SELECTOR_BYTES_MAX {
                return Err(bad(format!(
                    "url {u:?}: a path without host is a ban, at most {BAN_SELECTOR_BYTES_MAX} bytes"
                )));
            }
            if host.is_none() && req.mode != Mode::Hard {
                return Err(bad(format!(
                    "url {u:?}: a soft purge or refresh needs the host: an http:// URL or \"host\""
                )));
            }
            urls.push(UrlTarget { host, path });
        }
        let mut bans = Vec::new();
        for p in &req.prefixes {
            if !p.starts_with('/') {
                return Err(bad(format!("prefix {p:?}: must start with /")));
            }
            if p.len() > BAN_SELECTOR_BYTES_MAX {
                return Err(bad(format!(
                    "prefix: longer than {BAN_SELECTOR_BYTES_MAX} bytes"
                )));
            }
            bans.push(Selector::Prefix(p.clone()));
        }
        if let Some(r) = &req.regex {
            if r.len() > BAN_REGEX_PATTERN_BYTES_MAX {
                return Err(bad(format!(
                    "regex: longer than {BAN_REGEX_PATTERN_BYTES_MAX} bytes"
                )));
            }
            let re = RegexBuilder::new(r)
                .size_limit(BAN_REGEX_COMPILED_BYTES_MAX)
                .dfa_size_limit(BAN_REGEX_COMPILED_BYTES_MAX)
                .build()
                .map_err(|e| bad(format!("regex: {e}")))?;
            bans.push(Selector::Regex(re));
        }
        if let Some(h) = &req.header {
            if h.name.is_empty()
                || !h
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(&b))
            {
                return Err(bad(format!("header name {:?}: not a field name", h.name)));
            }
            if h.value.bytes().any(|b| b.is_ascii_control()) {
                return Err(bad("header value: holds control characters".into()));
            }
            if h.name.len() + h.value.len() > BAN_SELECTOR_BYTES_MAX {
                return Err(bad(format!(
                    "header: name and value longer than {BAN_SELECTOR_BYTES_MAX} bytes"
                )));
            }
            bans.push(Selector::Header {
                name: h.name.to_ascii_lowercase(),
                value: h.value.trim().to_string(),
            });
        }
        for t in &req.tags {
            if t.is_empty()
                || t.len() > self.config.tag_bytes_max
                || t.bytes().any(|b| !b.is_ascii_graphic() || b == b',')
            {
                return Err(bad(format!(
                    "tag {t:?}: 1 to {} visible characters, no comma",
                    self.config.tag_bytes_max
                )));
            }
        }
        if (!bans.is_empty() || req.all) && req.mode != Mode::Hard {
            return Err(bad(
                "prefixes, regex, header and all act as bans, which are hard: send them with mode \"hard\" (soft and refresh act on urls and tags)".into(),
            ));
        }
        Ok(Plan {
            urls,
            bans,
            tags: req.tags.clone(),
            all: req.all,
            mode: req.mode,
        })
    }
}

/// `host[:port]` as clients send it in `Host`.
fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "local".into())
}

/// A small `[invalidation]` table for unit tests (tight tag limits, a
/// short refresh queue).
#[cfg(test)]
pub(crate) fn test_config() -> Invalidation {
    Invalidation {
        admin_token: None,
        tag_header: "surrogate-key".into(),
        tag_header_strip: true,
        tags_per_object_max: 4,
        tag_bytes_max: 16,
        tag_index_bytes_max: 1 << 16,
        purge_method: false,
        purge_allow: Vec::new(),
        admin_hmac_key: None,
        admin_hmac_window: std::time::Duration::from_secs(300),
        refresh_queue_max: 4,
        refresh_rate: 100,
        refresh_concurrency_max: 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{key_hash, ItemMeta};

    fn setup() -> (Arc<SharedStore>, Invalidator) {
        let store = Arc::new(SharedStore::anonymous_with(4 << 20, Default::default()).unwrap());
        let reader = store.reader().unwrap();
        let config = test_config();
        let inv = Invalidator::new(
            config,
            &CacheConfig::default(),
            8,
            Arc::clone(&store),
            reader,
        );
        (store, inv)
    }

    fn put(store: &SharedStore, key: &[u8], head: &[u8]) {
        let now = unix_now();
        let meta = ItemMeta::new(now, 0, 60);
        assert!(store.insert(key_hash(key), key, head, b"body", meta));
    }

    fn lookup(store: &Arc<SharedStore>, key: &[u8]) -> Option<crate::store::item::Hit> {
        let reader = store.reader()?;
        let mut out = Vec::new();
        reader.lookup_into(key_hash(key), key, &mut out)
    }

    #[test]
    fn url_purges_hard_and_soft() {
        let (store, inv) = setup();
        put(&store, b"h\0/a", b"HTTP/1.1 200 OK\r\n");
        put(&store, b"h\0/b", b"HTTP/1.1 200 OK\r\n");
        let req: InvalidationRequest =
            serde_json::from_str(r#"{"urls": ["http://H/a"], "mode": "hard"}"#).unwrap();
        assert_eq!(inv.apply(&req).unwrap().invalidated, 1);
        assert!(
            lookup(&store, b"h\0/a").is_none(),
            "the host is lowercased as in the key"
        );
        let req: InvalidationRequest =
            serde_json::from_str(r#"{"urls": ["/b"], "host": "h", "mode": "soft"}"#).unwrap();
        assert_eq!(inv.apply(&req).unwrap().invalidated, 1);
        let hit = lookup(&store, b"h\0/b").expect("soft keeps the object");
        assert!(!hit.meta.is_fresh(unix_now()), "but stale");
        assert_eq!(inv.purges()[0], 2);
        // The request serialises back to what was sent, for a bus.
        let json = serde_json::to_string(&req).unwrap();
        assert_eq!(json, r#"{"urls":["/b"],"host":"h","mode":"soft"}"#);
    }

    #[test]
    fn tag_purges_use_the_index_and_check_the_stored_field() {
        let (store, inv) = setup();
        let tagged = b"HTTP/1.1 200 OK\r\nsurrogate-key: a b\r\n";
        for k in [&b"h\0/1"[..], b"h\0/2"] {
            put(&store, k, tagged);
            inv.tags.note_store(key_hash(k), k, &[b"a", b"b"]);
        }
        // Stored again without the tag: the index entry is stale.
        put(&store, b"h\0/2", b"HTTP/1.1 200 OK\r\n");
        let out = inv.apply_json(br#"{"tags": ["a"]}"#).unwrap();
        assert_eq!((out.invalidated, out.bans), (1, 0));
        assert!(lookup(&store, b"h\0/1").is_none());
        assert!(lookup(&store, b"h\0/2").is_some());
        // An incomplete index adds a tag ban.
        inv.tags.mark_incomplete();
        let out = inv.apply_json(br#"{"tags": ["b"]}"#).unwrap();
        assert_eq!(out.bans, 1);
        assert!(inv.bans.check(b"h\0/9", tagged, 0, unix_now()));
    }

    #[test]
    fn upkeep_prunes_entries_of_objects_gone() {
        let (store, inv) = setup();
        let head = b"HTTP/1.1 200 OK\r\nsurrogate-key: a\r\n";
        for k in [&b"h\0/1"[..], b"h\0/2"] {
            put(&store, k, head);
            inv.tags.note_store(key_hash(k), k, &[b"a"]);
        }
        let before = inv.tags.bytes();
        assert!(store.remove(key_hash(b"h\0/1"), b"h\0/1"));
        assert_eq!(inv.maintain(), 1);
        assert!(inv.tags.bytes() < before);
        assert_eq!(inv.tags.keys_for(b"a", false).len(), 1);
        assert!(inv.tags.is_complete());
    }

    #[test]
    fn refused_requests_change_nothing() {
        let (_store, inv) = setup();
        for body in [
            &br#"{"prefixes": ["/a"], "regex": "("}"#[..],
            br#"{"prefixes": ["a"]}"#,
            br#"{"urls": ["ftp://x/"]}"#,
            br#"{"all": true, "mode": "soft"}"#,
            br#"{"header": {"name": "bad name", "value": "x"}}"#,
            br#"[]"#,
        ] {
            let r = inv.apply_json(body);
            assert!(matches!(r, Err(Refusal::Invalid(_))), "{r:?}");
        }
        assert_eq!(inv.bans.active(), 0);
        let long = format!(
            r#"{{"regex": "{}"}}"#,
            "a".repeat(BAN_REGEX_PATTERN_BYTES_MAX + 1)
        );
        assert!(inv.apply_json(long.as_bytes()).is_err());
        // Bans whose selector would not fit a journal record.
        let long = "x".repeat(BAN_SELECTOR_BYTES_MAX);
        for body in [
            format!(r#"{{"prefixes": ["/{long}"]}}"#),
            format!(r#"{{"urls": ["/{long}"]}}"#),
            format!(r#"{{"header": {{"name": "x-a", "value": "{long}"}}}}"#),
        ] {
            let r = inv.apply_json(body.as_bytes());
            assert!(matches!(r, Err(Refusal::Invalid(_))), "{r:?}");
        }
        // With a host the URL is no ban: no limit beyond the request's.
        assert!(inv
            .apply_json(format!(r#"{{"urls": ["http://h/{long}"]}}"#).as_bytes())
            .is_ok());
        assert_eq!(inv.bans.active(), 0);
        // Nine prefixes over a list of eight: refused whole.
        let nine: Vec<String> = (0..9).map(|i| format!("/p{i}")).collect();
        let req = InvalidationRequest {
            prefixes: nine,
            ..Default::default()
        };
        assert_eq!(inv.apply(&req), Err(Refusal::BansFull));
        assert_eq!(inv.bans.active(), 0);
    }
}
