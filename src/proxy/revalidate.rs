//! Stored responses the fast path does not answer: stale ones, requests
//! with cache directives or preconditions, validation with the origin,
//! stale-while-revalidate refreshes and stale-if-error (RFC 9111 §4.2.4,
//! §4.3, §5.2; RFC 5861; RFC 8246; RFC 9110 §13; RFC 9211).
//!
//! Where each piece of the reuse decision lives:
//!
//! ```text
//!  mod.rs respond_hit (hot)   ItemMeta only: born_secs + lifetime_secs → fresh?
//!     │  fresh, and the request has no Cache-Control/Pragma and no
//!     │  If-None-Match/If-Modified-Since → hit; nothing parsed, nothing allocated
//!     ▼  otherwise
//!  lookup_stored (cold, here)  copy the whole item (head + body, one version),
//!     │                        parse the stored head, freshness::decide over it
//!     │                        → Stored flags (must-revalidate, proxy-revalidate,
//!     │                        s-maxage, immutable, stale-while-revalidate,
//!     │                        stale-if-error, validators); lifetime and age from
//!     │                        ItemMeta; reuse::reuse with the request directives
//!     ├─ Fresh, StaleAllowed ───────────▶ answer the copy (200, or 304 when the
//!     │                                   client's If-None-Match/If-Modified-Since match)
//!     ├─ StaleWhileRevalidate ──────────▶ answer the copy, start one refresh
//!     │                                   (the key's fill lease; coalesce.rs)
//!     ├─ StaleIfErrorAllowed, MustRevalidate ▶ fetch with If-None-Match /
//!     │                                   If-Modified-Since from the stored validators
//!     │                                   (the client's own preconditions are dropped)
//!     └─ GatewayTimeout ────────────────▶ 504 (only-if-cached)
//!  origin.rs origin_complete   304 → not_modified(): the stored response it selects,
//!                              fields merged (§3.2, §4.3.4), re-inserted with the new
//!                              freshness, its body served (fwd-status=304), or a
//!                              304 when the client's own If-None-Match /
//!                              If-Modified-Since select it (client_not_modified),
//!                              to the requests that waited on it too (coalesce.rs);
//!                              500/502/503/504, connection error or timeout within the
//!                              stale-if-error window → stale_on_error() serves the
//!                              stored response (detail=stale-if-error)
//! ```
//!
//! The store needs no new fields: the fast path only asks "fresh now?",
//! which `ItemMeta` (birth and lifetime) answers. Every other rule is a
//! directive or validator in the stored header block, which is what the
//! origin sent (minus hop-by-hop fields and `Age`), so running
//! `freshness::decide` over it again gives the same flags as when the
//! response was stored. That parse happens only once an item is stale or
//! a request asks for more than a plain hit.
//!
//! Cache-Status forms (RFC 9211): a stale response served at once under
//! stale-while-revalidate did not go forward for this client, so it is a
//! `hit` with a negative `ttl` and `detail=stale-while-revalidate`; the
//! refresh behind it is counted in `ringcache_refreshes_total`. A response
//! validated with a 304 is `fwd=stale; fwd-status=304; ttl=N` (plus
//! `stored` when re-inserted); one served because the origin failed is
//! `fwd=stale; fwd-status=<the failure>; ttl=-N; detail=stale-if-error`.
//!
//! Invalidation: every stored item this file uses (the cold lookup, the
//! stale-if-error answer, the item a 304 validates) is checked against the
//! bans first, and once expired against the floor retired bans leave
//! (`invalidate::bans`): an invalidated item is removed and the request
//! goes on as if nothing were stored (fetched in full, never validated).
//! Answers built here leave out the tag field (`tag_header_strip`), and the
//! head a 304 merge stores again keeps it as its last line.
//!
//! ringcache fetches a HEAD miss as GET, so no HEAD response from the
//! origin ever meets a stored GET: `validation::head_update` has no caller.
//!
//! Queued refreshes (`"mode": "refresh"`, `invalidate::refresh`): at the
//! end of a loop turn a worker takes keys from the queue while its rate and
//! in-flight limit allow ([`Proxy::refresh_queued`]). Each leads the key's
//! fill as a stale-while-revalidate refresh does (`coalesce::lead_refresh`:
//! skipped when a fetch for the key is under way anywhere, which brings
//! the fresh object anyway), then looks at what is stored under the lease:
//! gone, banned or fresh again → nothing is sent. Otherwise it sends a GET
//! for the key's URL, with the `Vary` fields of its variant and the stored
//! validators, and no client. Requests for the key meanwhile are served
//! stale where the object's rules allow, or wait on the fill (on this
//! worker or, through the lease, on another): one origin fetch per key.
//! The fetch carries the queue's ticket; `origin_complete` marks it done
//! when a fresh object is stored (a 200, or a 304 merged), and any other
//! end counts as failed, leaving the object soft-purged.

use httparse::Header;

use super::admission::Admission;
use crate::config::HEADERS_COUNT_CAP;
use crate::http::cache_status::{CacheStatus, Fwd};
use crate::http::freshness::{decide, initial_age_secs, Exchange, Stored};
use crate::http::policy::Policy;
use crate::http::request::{Method, RequestHead};
use crate::http::reuse::{reuse, RequestDirectives, Reuse};
use crate::http::validation::{
    evaluate_preconditions_on, merge_not_modified, selects_stored, write_conditional_fields,
    write_not_modified_fields, Precondition,
};
use crate::invalidate::fields::put_field_last;
use crate::invalidate::{RefreshEnd, RefreshJob, RefreshTicket};
use crate::proxy::lease::FillEnd;
use crate::runtime::io::Token;
use crate::store::item::Hit;
use crate::store::ItemMeta;

use super::compose::{put_error, put_field, put_field_u64, put_status_line, VIA};
use super::origin::Fetch;
use super::variants::{primary_of, put_variant_fields};
use super::{put_connection, refresh_ahead_due, Found, Proxy};

/// The client of a background refresh: no socket has this token, so its
/// answer is dropped.
pub(super) const NO_CLIENT: Token = u64::MAX;

/// What a fetch that may replace a stored response carries.
#[derive(Debug, Default)]
pub(super) struct Revalidation {
    /// Conditional fields built from the stored validators, moved into the
    /// request when it is built.
    pub conditional: Vec<u8>,
    /// Where those fields start in the request (`None`: none were added).
    pub conditional_at: Option<usize>,
    /// Serve the stored response instead of an origin error until this
    /// Unix second (RFC 5861 §4); 0: never.
    pub stale_if_error_until: u64,
    /// The stored response said must-revalidate (or proxy-revalidate,
    /// s-maxage): an origin that cannot be reached is a 504 (§5.2.2.2).
    pub must_revalidate: bool,
    /// The client's own `If-None-Match` / `If-Modified-Since` lines, judged
    /// against whatever answers it (RFC 9111 §4.3.2).
    pub client_conditions: Option<Box<[u8]>>,
    /// A stale-while-revalidate refresh: no client waits for it.
    pub background: bool,
    /// A refresh taken from the invalidation refresh queue: its in-flight
    /// slot, given back (and the outcome counted) when the fetch ends.
    pub refresh_ticket: Option<RefreshTicket>,
}

/// What the cold lookup did.
pub(super) enum Plan {
    /// Answered from the store.
    Answered,
    /// Answered stale; refresh the key in the background.
    Refresh(Box<Revalidation>),
    /// Ask the origin. With a revalidation when something is stored.
    Forward(Found, Option<Box<Revalidation>>),
}

/// A stored head (status line and field lines, without the empty line that
/// ends a head) as parseable text.
fn head_text(head: &[u8]) -> Vec<u8> {
    let mut text = Vec::with_capacity(head.len() + 2);
    text.extend_from_slice(head);
    text.extend_from_slice(b"\r\n");
    text
}

/// Status and fields of a head text from [`head_text`].
fn parse_head<'h, 'b>(
    text: &'b [u8],
    fields: &'h mut [Header<'b>],
) -> Option<(u16, &'h [Header<'b>])> {
    let mut resp = httparse::Response::new(fields);
    match resp.parse(text) {
        Ok(httparse::Status::Complete(_)) => Some((resp.code?, resp.headers)),
        _ => None,
    }
}

/// The reuse rules of a stored response: directives and validators from
/// its fields, lifetime and age from the store's metadata.
pub(super) fn stored_rules(
    status: u16,
    fields: &[Header<'_>],
    meta: ItemMeta,
    policy: &Policy,
) -> Stored {
    let born = u64::from(meta.born_secs);
    let x = Exchange {
        method: Method::Get,
        request: &[],
        status,
        response: fields,
        request_time_secs: born,
        response_time_secs: born,
    };
    let mut s = decide(&x, policy).unwrap_or(Stored {
        // Stored under other rules: validate before any reuse.
        response_time_secs: born,
        lifetime_secs: 0,
        initial_age_secs: 0,
        heuristic: false,
        no_cache: true,
        no_stale: true,
        must_revalidate: false,
        immutable: false,
        stale_while_revalidate_secs: 0,
        stale_if_error_secs: 0,
        strip_qualified: false,
        strip_set_cookie: false,
        has_validator: false,
    });
    s.response_time_secs = born;
    s.initial_age_secs = 0;
    s.lifetime_secs = u64::from(meta.lifetime_secs);
    s
}

/// Remaining freshness of a stored item (negative once stale).
pub(super) fn ttl_secs(meta: &ItemMeta, now_secs: u64) -> i64 {
    i64::from(meta.lifetime_secs) - meta.age_secs(now_secs).min(i64::MAX as u64) as i64
}

/// Append the head of a 304 for the stored head `head` (RFC 9110 §15.4.5).
pub(super) fn put_not_modified_head(resp: &mut Vec<u8>, head: &[u8]) {
    put_status_line(resp, 304, b"Not Modified");
    let text = head_text(head);
    let mut fields = [httparse::EMPTY_HEADER; HEADERS_COUNT_CAP];
    if let Some((_, fields)) = parse_head(&text, &mut fields) {
        let _ = write_not_modified_fields(fields, resp);
    }
}

/// The client's `If-None-Match` / `If-Modified-Since` lines, if any.
fn client_conditions(headers: &[Header<'_>]) -> Option<Box<[u8]>> {
    let mut lines = Vec::new();
    for f in headers {
        let n = f.name.as_bytes();
        if n.eq_ignore_ascii_case(b"if-none-match") || n.eq_ignore_ascii_case(b"if-modified-since")
        {
            put_field(&mut lines, n, f.value);
        }
    }
    (!lines.is_empty()).then(|| lines.into_boxed_slice())
}

/// Do the client's conditions (from [`client_conditions`]) select a 304
/// for the response head `head`?
pub(super) fn conditions_match(conditions: &[u8], method: Method, head: &[u8]) -> bool {
    let mut text = Vec::with_capacity(conditions.len() + 2);
    text.extend_from_slice(conditions);
    text.extend_from_slice(b"\r\n");
    let mut req_fields = [httparse::EMPTY_HEADER; 4];
    let Ok(httparse::Status::Complete((_, req_fields))) =
        httparse::parse_headers(&text, &mut req_fields)
    else {
        return false;
    };
    let stored = head_text(head);
    let mut fields = [httparse::EMPTY_HEADER; HEADERS_COUNT_CAP];
    let Some((status, fields)) = parse_head(&stored, &mut fields) else {
        return false;
    };
    evaluate_preconditions_on(status, method, req_fields, fields) == Precondition::NotModified
}

/// Does `fetch`'s client get a 304 instead of the 200 whose head (status
/// line and fields) is `head` (RFC 9111 §4.3.2)? Only a request that
/// ringcache validates for keeps its own `If-None-Match` /
/// `If-Modified-Since` ([`Revalidation::client_conditions`]; any other
/// conditional request is personal and sent as it came); they are judged
/// against the response it is about to be served, whether that came from
/// its own fetch, another request's fetch, or the store. The caller checks
/// that the status is 200.
pub(super) fn client_not_modified(fetch: &Fetch, head: &[u8]) -> bool {
    fetch
        .revalidation
        .as_ref()
        .and_then(|r| r.client_conditions.as_deref())
        .is_some_and(|c| conditions_match(c, fetch.method, head))
}

/// A stored response brought up to date by a 304.
pub(super) struct Validated {
    /// Status line and merged fields.
    pub head: Vec<u8>,
    pub body: Vec<u8>,
    pub status: u16,
    pub storable: Option<Box<Admission>>,
    /// Age of the validated response (the 304's, corrected).
    pub age_secs: u64,
}

/// Where a cold answer goes and how it is framed.
pub(super) struct Reply {
    pub head_only: bool,
    pub keep_alive: bool,
    pub minor: u8,
    pub not_modified: bool,
}

impl Proxy {
    /// A stored item the fast path did not answer (see the module doc).
    pub(super) fn lookup_stored(
        &mut self,
        token: Token,
        head: &RequestHead<'_, '_>,
        hash: u64,
        directives: Option<RequestDirectives>,
        keep_alive: bool,
    ) -> Plan {
        let now = self.clock.unix_secs;
        let policy = self.policy;
        let mut item = self.take_buffer();
        let Some(hit) = self.lookup_unbanned(hash, &self.key, &mut item) else {
            self.give_buffer(item);
            return Plan::Forward(Found::Absent, None);
        };
        let found = if hit.meta.is_fresh(now) {
            Found::NotAccepted
        } else {
            Found::Stale
        };
        let text = head_text(&item[..hit.head_len]);
        let mut fields = [httparse::EMPTY_HEADER; HEADERS_COUNT_CAP];
        let Some((status, stored_fields)) = parse_head(&text, &mut fields) else {
            self.give_buffer(item);
            return Plan::Forward(found, None);
        };
        let rules = stored_rules(status, stored_fields, hit.meta, &policy);
        let directives = directives.unwrap_or_default();
        let decision = reuse(&rules, &directives, now, &policy);
        let precondition =
            evaluate_preconditions_on(status, head.method, head.headers, stored_fields);
        if precondition == Precondition::Forward {
            // If-Match / If-Unmodified-Since: the origin's to judge (§4.3.2).
            self.give_buffer(item);
            return Plan::Forward(found, None);
        }
        let reply = Reply {
            head_only: head.method == Method::Head,
            keep_alive,
            minor: head.minor_version,
            not_modified: precondition == Precondition::NotModified,
        };
        let served_detail: Option<&[u8]> = match decision {
            Reuse::Fresh => Some(b""),
            Reuse::StaleAllowed => Some(b"max-stale"),
            Reuse::StaleWhileRevalidate => Some(b"stale-while-revalidate"),
            _ => None,
        };
        if let Some(detail) = served_detail {
            let cs = CacheStatus {
                hit: true,
                ttl_secs: Some(rules.ttl_secs(now)),
                detail: (!detail.is_empty()).then_some(detail),
                ..CacheStatus::default()
            };
            let resp = self.answer_stored(&item, &hit, &cs, &reply);
            self.give_buffer(item);
            self.client_respond(token, None, resp, !keep_alive);
            if decision != Reuse::StaleWhileRevalidate {
                return Plan::Answered;
            }
            let mut rev = self.revalidation(stored_fields, &rules, 0);
            rev.background = true;
            return Plan::Refresh(rev);
        }
        if decision == Reuse::GatewayTimeout {
            self.give_buffer(item);
            let date = self.clock.date;
            let mut resp = self.take_buffer();
            put_error(
                &mut resp,
                504,
                &date,
                Some("only-if-cached"),
                None,
                !keep_alive,
            );
            self.client_respond(token, None, resp, !keep_alive);
            return Plan::Answered;
        }
        let until = match decision {
            Reuse::StaleIfErrorAllowed { until_secs } => until_secs,
            _ => 0,
        };
        let mut rev = self.revalidation(stored_fields, &rules, until);
        rev.client_conditions = client_conditions(head.headers);
        self.give_buffer(item);
        Plan::Forward(found, Some(rev))
    }

    /// Is the stored object under `key` (`head`, `meta`) invalidated: a
    /// ban matches it, or, once expired, it is older than a retired ban
    /// (`invalidate::bans`, retirement)? Then it is removed, and the
    /// caller goes on as if nothing were stored.
    fn drop_if_invalidated(&self, hash: u64, key: &[u8], head: &[u8], meta: &ItemMeta) -> bool {
        let now = self.clock.unix_secs;
        let bans = &self.invalidator.bans;
        let born = u64::from(meta.born_secs);
        let invalidated = if meta.is_fresh(now) {
            bans.active() > 0 && bans.check(key, head, born, now)
        } else {
            bans.check_expired(key, head, born, now)
        };
        if invalidated {
            self.store.remove(hash, key);
            self.invalidator.note_banned();
        }
        invalidated
    }

    /// The item stored under `key`, read into `item`, unless there is none
    /// or a ban removes it ([`Self::drop_if_invalidated`]).
    fn lookup_unbanned(&self, hash: u64, key: &[u8], item: &mut Vec<u8>) -> Option<Hit> {
        let hit = self.reader.lookup_into(hash, key, item)?;
        if self.drop_if_invalidated(hash, key, &item[..hit.head_len], &hit.meta) {
            return None;
        }
        Some(hit)
    }

    /// Refresh-ahead (`cache.refresh_ahead`): the background revalidation
    /// of the fresh response just answered for the key in `self.key`,
    /// conditional when it has validators. `None` when a fetch for the key
    /// is under way on this worker already, or the stored head is gone.
    pub(super) fn refresh_ahead(&mut self, hash: u64) -> Option<Box<Revalidation>> {
        if self.fills.is_filling(hash) {
            return None;
        }
        let policy = self.policy;
        let mut item = self.take_buffer();
        let Some(hit) = self.reader.lookup_into(hash, &self.key, &mut item) else {
            self.give_buffer(item);
            return None;
        };
        let text = head_text(&item[..hit.head_len]);
        self.give_buffer(item);
        let mut fields = [httparse::EMPTY_HEADER; HEADERS_COUNT_CAP];
        let (status, stored_fields) = parse_head(&text, &mut fields)?;
        let rules = stored_rules(status, stored_fields, hit.meta, &policy);
        let mut rev = self.revalidation(stored_fields, &rules, 0);
        rev.background = true;
        Some(rev)
    }

    /// Start queued refreshes while the queue's rate and in-flight limit
    /// allow (see the module doc).
    pub(super) fn refresh_queued(&mut self) {
        if self.draining {
            return;
        }
        let queue = std::sync::Arc::clone(&self.invalidator.refresh);
        while let Some(job) = queue.take(self.clock.now) {
            self.refresh_one(job);
        }
    }

    /// What is stored under `key` once this worker holds its fill lease
    /// for a refresh: the item to refresh (read into `item`), or how the
    /// fill ends without a fetch — `Stored` when the item is fresh again
    /// (another fetch stored it since the key was found due, and let its
    /// lease go), `Refetch` when it is gone, banned, or a `Vary` marker now
    /// (its variants are keys of their own). A fresh item in the last
    /// `refresh_ahead_percent` of its lifetime is still due (refresh-ahead;
    /// 0: any fresh item is fresh again).
    pub(super) fn stored_under_lease(
        &self,
        hash: u64,
        key: &[u8],
        item: &mut Vec<u8>,
        refresh_ahead_percent: u8,
    ) -> Result<Hit, FillEnd> {
        let now = self.clock.unix_secs;
        match self.reader.lookup_into(hash, key, item) {
            None => Err(FillEnd::Refetch),
            Some(_) if item.first() == Some(&0) => Err(FillEnd::Refetch),
            Some(h) if self.drop_if_invalidated(hash, key, &item[..h.head_len], &h.meta) => {
                Err(FillEnd::Refetch)
            }
            Some(h)
                if h.meta.is_fresh(now)
                    && !refresh_ahead_due(&h.meta, now, refresh_ahead_percent) =>
            {
                Err(FillEnd::Stored)
            }
            Some(h) => Ok(h),
        }
    }

    /// Refetch one queued key, or end its ticket as skipped.
    fn refresh_one(&mut self, job: RefreshJob) {
        let RefreshJob {
            hash,
            key,
            mut ticket,
        } = job;
        ticket.finish(RefreshEnd::Skipped);
        // One fetch per key: none when one is under way.
        let Some(id) = self.lead_refresh(hash, key.clone()) else {
            return;
        };
        let now = self.clock.unix_secs;
        let policy = self.policy;
        let mut item = self.take_buffer();
        // Fresh again: fetched since it was queued.
        let plan = self
            .stored_under_lease(hash, &key, &mut item, 0)
            .map(|h| (head_text(&item[..h.head_len]), h));
        self.give_buffer(item);
        let (text, hit) = match plan {
            Ok(p) => p,
            Err(end) => {
                self.drop_led_fill(hash, id, end);
                return;
            }
        };
        let mut fields = [httparse::EMPTY_HEADER; HEADERS_COUNT_CAP];
        let mut req = self.take_buffer();
        let built = match parse_head(&text, &mut fields) {
            Some((status, stored_fields)) => {
                let rules = stored_rules(status, stored_fields, hit.meta, &policy);
                let rev = self.revalidation(stored_fields, &rules, 0);
                self.refresh_request(&key, &mut req).then_some(rev)
            }
            None => None,
        };
        let Some(mut rev) = built else {
            self.give_buffer(req);
            self.drop_led_fill(hash, id, FillEnd::Refetch);
            ticket.finish(RefreshEnd::Failed);
            return;
        };
        if !rev.conditional.is_empty() {
            rev.conditional_at = Some(req.len());
            req.extend_from_slice(&std::mem::take(&mut rev.conditional));
        }
        rev.background = true;
        ticket.finish(RefreshEnd::Failed); // until a fresh object is stored
        rev.refresh_ticket = Some(ticket);
        let mut fetch = Box::new(Fetch {
            client: NO_CLIENT,
            seq: 0,
            method: Method::Get,
            client_head: false,
            client_minor_version: 1,
            keep_alive: true,
            req,
            key: Some((hash, key)),
            lookup: true,
            request_time_secs: now,
            retried: false,
            fill_id: Some(id),
            started: std::time::Instant::now(),
            bypass: false,
            parked: false,
            streaming: false,
            found: Found::Stale,
            target_key: None,
            personal: false,
            revalidation: Some(rev),
            body: Vec::new(),
            range: None,
            // A background refetch answers no client: nothing to log.
            log: std::cell::Cell::new(None),
        });
        fetch.finish_request();
        self.dispatch(fetch);
    }

    /// The head of a refresh request for `key` (without its blank line):
    /// the URL the key names, its `Vary` fields when it is a variant key.
    /// `false` when the key cannot be sent as a request.
    fn refresh_request(&self, key: &[u8], req: &mut Vec<u8>) -> bool {
        let primary = primary_of(key);
        let Some(split) = primary.iter().position(|&b| b == 0) else {
            return false;
        };
        let (host, target) = (&primary[..split], &primary[split + 1..]);
        // A key without the host (`key_include_host = false`) is the origin's.
        let host = if host.is_empty() {
            self.pool.target.authority.as_bytes()
        } else {
            host
        };
        if !target.starts_with(b"/") || !target.iter().all(u8::is_ascii_graphic) {
            return false;
        }
        req.extend_from_slice(b"GET ");
        req.extend_from_slice(target);
        req.extend_from_slice(b" HTTP/1.1\r\n");
        put_field(req, b"Host", host);
        if primary.len() < key.len() && !put_variant_fields(&key[primary.len() + 1..], req) {
            return false;
        }
        put_field(req, b"Via", VIA);
        true
    }

    fn revalidation(
        &mut self,
        stored_fields: &[Header<'_>],
        rules: &Stored,
        stale_if_error_until: u64,
    ) -> Box<Revalidation> {
        let mut conditional = Vec::new();
        if rules.has_validator {
            let _ = write_conditional_fields(stored_fields, &mut conditional);
        }
        Box::new(Revalidation {
            conditional,
            stale_if_error_until,
            must_revalidate: rules.must_revalidate,
            ..Revalidation::default()
        })
    }

    /// A response from a stored item (`item` holds its head then body).
    pub(super) fn answer_stored(
        &mut self,
        item: &[u8],
        hit: &Hit,
        cs: &CacheStatus<'_>,
        reply: &Reply,
    ) -> Vec<u8> {
        let now = self.clock.unix_secs;
        let mut resp = self.take_buffer();
        let head = &item[..hit.head_len];
        if reply.not_modified {
            put_not_modified_head(&mut resp, head);
        } else {
            resp.extend_from_slice(&head[..head.len() - self.tag_cut(head)]);
            put_field_u64(&mut resp, b"Content-Length", hit.body_len as u64);
        }
        put_field_u64(&mut resp, b"Age", hit.meta.age_secs(now));
        let _ = cs.write_field(&mut resp);
        put_field(&mut resp, b"Via", VIA);
        put_connection(&mut resp, reply.keep_alive, reply.minor);
        resp.extend_from_slice(b"\r\n");
        if !reply.not_modified && !reply.head_only {
            resp.extend_from_slice(&item[hit.head_len..hit.head_len + hit.body_len]);
        }
        resp
    }

    /// The origin failed (`status`) for a fetch that may serve its stored
    /// response instead (RFC 5861 §4): that response, if it is allowed and
    /// still stored.
    pub(super) fn stale_on_error(&mut self, fetch: &Fetch, status: u16) -> Option<Vec<u8>> {
        let rev = fetch.revalidation.as_ref()?;
        let now = self.clock.unix_secs;
        if rev.background || rev.stale_if_error_until <= now {
            return None;
        }
        let (hash, key) = fetch.key.as_ref()?;
        let mut item = self.take_buffer();
        let Some(hit) = self.lookup_unbanned(*hash, key, &mut item) else {
            self.give_buffer(item);
            return None;
        };
        let not_modified = rev
            .client_conditions
            .as_deref()
            .is_some_and(|c| conditions_match(c, fetch.method, &item[..hit.head_len]));
        let cs = CacheStatus {
            fwd: Some(if fetch.found == Found::NotAccepted {
                Fwd::Request
            } else {
                Fwd::Stale
            }),
            fwd_status: Some(status),
            ttl_secs: Some(ttl_secs(&hit.meta, now)),
            detail: Some(b"stale-if-error"),
            ..CacheStatus::default()
        };
        let reply = Reply {
            head_only: fetch.client_head,
            keep_alive: fetch.keep_alive,
            minor: fetch.client_minor_version,
            not_modified,
        };
        let resp = self.answer_stored(&item, &hit, &cs, &reply);
        self.give_buffer(item);
        Some(resp)
    }

    /// A 304 answered `fetch`'s conditional request: the stored response
    /// it selects, with the 304's fields merged in (RFC 9111 §3.2,
    /// §4.3.4), and whether it may be stored again. `None` when no stored
    /// response is selected (replaced or evicted meanwhile).
    pub(super) fn not_modified(
        &mut self,
        fetch: &Fetch,
        not_modified_head: &[u8],
        origin_age_secs: Option<u64>,
    ) -> Option<Validated> {
        let (hash, key) = fetch.key.as_ref()?;
        let now = self.clock.unix_secs;
        let mut item = self.take_buffer();
        // Gone, or invalidated while the validation was on its way: fetched anew.
        let Some(hit) = self.lookup_unbanned(*hash, key, &mut item) else {
            self.give_buffer(item);
            return None;
        };
        let stored_text = head_text(&item[..hit.head_len]);
        let mut stored_fields = [httparse::EMPTY_HEADER; HEADERS_COUNT_CAP];
        let nm_text = head_text(not_modified_head);
        let mut nm_fields = [httparse::EMPTY_HEADER; HEADERS_COUNT_CAP];
        let parsed =
            parse_head(&stored_text, &mut stored_fields).zip(parse_head(&nm_text, &mut nm_fields));
        let Some(((status, stored), (_, nm))) = parsed else {
            self.give_buffer(item);
            return None;
        };
        if !selects_stored(stored, nm) {
            self.give_buffer(item);
            return None;
        }
        // The stored status line, then the merged fields.
        let line_end = item
            .windows(2)
            .position(|w| w == b"\r\n")
            .map_or(0, |i| i + 2);
        let mut head = Vec::with_capacity(hit.head_len + not_modified_head.len());
        head.extend_from_slice(&item[..line_end]);
        let _ = merge_not_modified(stored, nm, &mut head);
        // The tag field stays the stored head's last line.
        put_field_last(&mut head, self.invalidator.config.tag_header.as_bytes());
        let body = item[hit.head_len..hit.head_len + hit.body_len].to_vec();
        self.give_buffer(item);
        let merged_text = head_text(&head);
        let mut merged = [httparse::EMPTY_HEADER; HEADERS_COUNT_CAP];
        let (storable, age_secs) = match parse_head(&merged_text, &mut merged) {
            Some((_, merged)) => {
                let request_time = fetch.request_time_secs;
                let delay = now.saturating_sub(request_time);
                let age = initial_age_secs(merged, request_time, now)
                    .max(origin_age_secs.unwrap_or(0).saturating_add(delay));
                let x = Exchange {
                    method: Method::Get,
                    request: &[],
                    status,
                    response: merged,
                    request_time_secs: request_time,
                    response_time_secs: now,
                };
                // Stored again under the key it was found under: no variant
                // to derive, and the merged head is what is stored.
                let s = decide(&x, &self.policy)
                    .ok()
                    .filter(|s| s.lifetime_secs > 0 && !s.no_cache)
                    .map(|s| {
                        Box::new(Admission {
                            stored: Stored {
                                initial_age_secs: age,
                                ..s
                            },
                            variant: None,
                            head: None,
                        })
                    });
                (s, age)
            }
            None => (None, 0),
        };
        Some(Validated {
            head,
            body,
            status,
            storable,
            age_secs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed<'b>(text: &'b [u8], fields: &'b mut [Header<'b>]) -> &'b [Header<'b>] {
        parse_head(text, fields).expect("a head").1
    }

    #[test]
    fn stored_heads_parse_back() {
        let text = head_text(b"HTTP/1.1 200 OK\r\nETag: \"a\"\r\nCache-Control: max-age=5\r\n");
        let mut fields = [httparse::EMPTY_HEADER; 8];
        let (status, fields) = parse_head(&text, &mut fields).unwrap();
        assert_eq!(status, 200);
        assert_eq!(fields.len(), 2);
        let mut fields = [httparse::EMPTY_HEADER; 8];
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nX: y\r\n", &mut fields).is_none());
    }

    #[test]
    fn rules_come_from_the_head_and_numbers_from_the_meta() {
        let text = head_text(
            b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60, must-revalidate, stale-if-error=9\r\nETag: \"a\"\r\n",
        );
        let mut fields = [httparse::EMPTY_HEADER; 8];
        let fields = parsed(&text, &mut fields);
        let meta = ItemMeta::new(1_000, 10, 30);
        let s = stored_rules(200, fields, meta, &Policy::default());
        assert_eq!((s.lifetime_secs, s.response_time_secs), (30, 990));
        assert!(s.must_revalidate && s.no_stale && s.has_validator);
        assert_eq!(s.stale_if_error_secs, 9);
        assert_eq!(s.age_secs(1_000), 10);
        assert_eq!(ttl_secs(&meta, 1_000), 20);
        assert_eq!(ttl_secs(&meta, 1_050), -30);
        // A head decide() refuses is validated before any reuse.
        let text = head_text(b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\n");
        let mut fields = [httparse::EMPTY_HEADER; 8];
        let s = stored_rules(200, parsed(&text, &mut fields), meta, &Policy::default());
        assert!(s.no_cache && s.no_stale);
    }

    #[test]
    fn client_conditions_are_kept_and_judged() {
        let req = [
            Header {
                name: "If-None-Match",
                value: b"W/\"a\"",
            },
            Header {
                name: "Accept",
                value: b"*/*",
            },
        ];
        let lines = client_conditions(&req).unwrap();
        assert_eq!(&*lines, b"If-None-Match: W/\"a\"\r\n");
        let head = b"HTTP/1.1 200 OK\r\nETag: \"a\"\r\n";
        assert!(conditions_match(&lines, Method::Get, head));
        assert!(!conditions_match(
            &lines,
            Method::Get,
            b"HTTP/1.1 200 OK\r\nETag: \"b\"\r\n"
        ));
        assert!(client_conditions(&req[1..]).is_none());
    }

    #[test]
    fn not_modified_head_carries_the_listed_fields() {
        let mut out = Vec::new();
        put_not_modified_head(
            &mut out,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nETag: \"a\"\r\nCache-Control: max-age=5\r\n",
        );
        assert_eq!(
            out,
            b"HTTP/1.1 304 Not Modified\r\nETag: \"a\"\r\nCache-Control: max-age=5\r\n"
        );
    }
}
