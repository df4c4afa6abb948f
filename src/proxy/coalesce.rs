//! Request coalescing on one worker: one origin fetch per key at a time.
//!
//! The first miss for a key becomes the *filler*: its fetch goes to the
//! origin and a [`Fill`] records it. Later misses for the same key on this
//! worker park on the fill as waiters (their origin request is built but not
//! sent). When the filler's response is complete, one of three outcomes
//! applies to every waiter at once:
//!
//! ```text
//!   cacheable response ──▶ every waiter answered from it   (Cache-Status: collapsed)
//!   origin error (5xx)  ──▶ every waiter gets the same answer
//!   not cacheable       ──▶ waiters released to fetch in parallel, and the key
//!                           is remembered as hit-for-miss so that later
//!                           requests do not queue behind a fetch they cannot share
//! ```
//!
//! A waiter that ringcache validates for (it found the key stored, but
//! stale or refused by its own directives) keeps its own `If-None-Match`
//! / `If-Modified-Since`, and they are judged against the 200 it is about
//! to be served, as on a hit (RFC 9111 §4.3.2): when they select it, the
//! waiter gets a 304 with the fields RFC 9110 §15.4.5 lists and no body
//! instead. That holds for every way a
//! waiter is answered: from the filler's response (`origin`,
//! `put_response_head`), from the store after the fill (`FromStore`, a
//! notice from another worker's fill) and from the second look under the
//! lease (`respond_collapsed`). It is still counted `collapsed`. Any other
//! request with preconditions (`If-Range` aside) is personal: it never
//! waits on a fill.
//!
//! A filler that fails (502/504) fails its waiters with the same status. A
//! fill older than `limits.coalesce_wait_timeout` releases its waiters, each
//! to fetch for itself; the list of waiters is bounded by
//! `limits.coalesce_waiters_max` per worker (beyond it a request fetches on
//! its own, it is not refused).
//!
//! Across workers the key's lease (see `lease`) makes one fetch for the
//! process: a worker that finds it held parks its requests in a *remote*
//! fill and acts on the filler's notice: serve from the store, release its
//! waiters in parallel (and mark the key hit-for-miss here too), or — when
//! the fill failed or its answer was not stored — send its waiters through
//! [`Proxy::fetch_or_wait`] again, so that one leads a new fill and the
//! others wait for it.
//!
//! The lease is taken after the lookup that missed, not with it. Between
//! the two, another worker's fill may store the key and release its lease;
//! taking the lease then would make this worker the filler of a key that
//! is already stored, and the origin would be asked twice:
//!
//! ```text
//!   worker A                          worker B (filler)
//!   lookup(k): absent / stale
//!                                     store(k), release(k, Stored)
//!   acquire(k): Filler   ──▶ without a second look: another fetch of k
//! ```
//!
//! So a worker that takes the lease ([`Acquire::Filler`] or
//! [`Acquire::TakenOver`]) for a request that found the key absent, without
//! its variant, or stale looks in the store once more before it creates
//! the fill ([`Proxy::answer_under_lease`]), by the rule a waiter is
//! served with: its own fields choose the variant, and an answer that is
//! fresh now or expires after the request arrived is usable. A filler
//! stores before it releases, and the lease table's lock orders that
//! release before this acquire, so the second look sees whatever a fill
//! that ended in between stored. If it answers, the request is served
//! `collapsed`, the lease is released as [`FillEnd::Stored`] (workers that
//! registered for it meanwhile serve from the store too) and nothing is
//! fetched. A request whose own directives refused the stored answer
//! (`NotAccepted`) and a personal one (304, 206) still go to the origin. A
//! background refresh has the same window between answering (stale, or
//! fresh near its expiry for refresh-ahead) and [`Proxy::lead_refresh`];
//! under the lease it looks at the stored item as a queued refresh does
//! (`stored_under_lease`) and sends nothing when the item is fresh again
//! and not yet due for refresh-ahead. The cost is one store lookup per
//! leased miss or refresh; hits never reach this code.
//!
//! A large response (`limits.coalesce_stream_bytes_min`) is streamed to the
//! filler and to this worker's waiters as it arrives (see `origin`,
//! `stream_start`): such waiters stay in the fill until the response ends,
//! are not released by the wait limit, and on a failure their connection
//! closes short of the announced length instead of getting an error page.

use std::collections::HashMap;
use std::time::Instant;

use crate::config::Limits;
use crate::metrics::{Counter, Histogram};
use crate::store::item::Hit;

use super::compose::put_field_u64;
use super::lease::{Acquire, FillEnd, Notice};
use super::origin::Fetch;
use super::revalidate::{client_not_modified, put_not_modified_head};
use super::{put_connection, Found, Proxy};

/// One fetch in flight for a key, and the requests waiting for it.
/// Waiters stay boxed: a released waiter goes to `dispatch` as the same box.
#[allow(clippy::vec_box)]
pub(super) struct Fill {
    id: u64,
    key: Box<[u8]>,
    started: Instant,
    waiters: Vec<Box<Fetch>>,
    /// Requests that waited on this fill so far (released ones included).
    waited: u64,
    /// Another worker holds the lease and fetches; this fill only waits.
    remote: bool,
    /// This worker holds the key's lease and must release it.
    leased: bool,
}

/// One worker's fills and hit-for-miss marks.
pub(super) struct Fills {
    by_hash: HashMap<u64, Fill>,
    next_id: u64,
    /// Keys whose last answer was not cacheable: hash → (key, until unix secs).
    hit_for_miss: HashMap<u64, (Box<[u8]>, u64)>,
    waiters_max: usize,
    hit_for_miss_max: usize,
    hit_for_miss_secs: u64,
}

/// What a finished fill means for its waiters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// The response may be shared: answer every waiter with it.
    Share,
    /// Not shareable: every waiter asks the origin itself.
    Release,
    /// Stored, but not as relayed (it varies, or fields were stripped):
    /// each waiter is answered from the store, or asks the origin itself
    /// when its variant is not there.
    FromStore,
}

impl Fills {
    /// Is a fetch for the key under way on this worker?
    pub(super) fn is_filling(&self, hash: u64) -> bool {
        self.by_hash.contains_key(&hash)
    }

    pub fn new(limits: &Limits) -> Fills {
        Fills {
            by_hash: HashMap::new(),
            next_id: 1,
            hit_for_miss: HashMap::new(),
            waiters_max: limits.coalesce_waiters_max,
            hit_for_miss_max: limits.hit_for_miss_count_max,
            hit_for_miss_secs: limits.hit_for_miss_ttl.as_secs().max(1),
        }
    }
}

impl Proxy {
    /// A cacheable miss: wait for a fill of the same key, or become its filler.
    pub(super) fn fetch_or_wait(&mut self, mut fetch: Box<Fetch>) {
        let Some((hash, key)) = fetch.key.as_ref().map(|(h, k)| (*h, k.clone())) else {
            self.dispatch(fetch);
            return;
        };
        if fetch.personal {
            self.dispatch(fetch); // a 304 or 206 could not be shared
            return;
        }
        let now_secs = self.clock.unix_secs;
        if let Some((k, until)) = self.fills.hit_for_miss.get(&hash) {
            if *k == key && *until > now_secs {
                fetch.bypass = true;
                self.dispatch(fetch); // known not to be shareable
                return;
            }
        }
        let waiters_max = self.fills.waiters_max;
        if let Some(fill) = self.fills.by_hash.get_mut(&hash) {
            if fill.key == key && fill.waiters.len() < waiters_max {
                let first_wait = !std::mem::replace(&mut fetch.parked, true);
                fill.waiters.push(fetch);
                fill.waited += 1;
                if first_wait {
                    self.counters().incr(Counter::Coalesced);
                }
                return;
            }
            // Another key with the same hash, or the list is full: fetch alone.
            self.dispatch(fetch);
            return;
        }
        let acquired = self
            .leases
            .acquire(self.worker_index, hash, &key, self.clock.now);
        if acquired == Acquire::TakenOver {
            self.counters().incr(Counter::LeaseTakeovers);
        }
        let leased = matches!(acquired, Acquire::Filler | Acquire::TakenOver);
        if leased {
            // Stored by another worker since this request's lookup?
            fetch = match self.answer_under_lease(fetch, hash, &key) {
                Ok(()) => return,
                Err(fetch) => fetch,
            };
        }
        let id = self.fills.next_id;
        self.fills.next_id += 1;
        let mut fill = Fill {
            id,
            key,
            started: self.clock.now,
            waiters: Vec::new(),
            waited: 0,
            remote: acquired == Acquire::Waiting,
            leased,
        };
        if fill.remote {
            // Another worker fetches this key: wait for its notice.
            let first_wait = !std::mem::replace(&mut fetch.parked, true);
            fill.waiters.push(fetch);
            fill.waited = 1;
            if first_wait {
                self.counters().incr(Counter::Coalesced);
            }
            self.fills.by_hash.insert(hash, fill);
            return;
        }
        self.fills.by_hash.insert(hash, fill);
        fetch.fill_id = Some(id);
        self.dispatch(fetch);
    }

    /// Look in the store again once this worker holds `key`'s lease (see
    /// the module doc): another worker's fill may have stored the key and
    /// let its lease go between this request's lookup and the lease.
    /// `Ok` when the stored answer served the request, as it would a
    /// waiter's (Cache-Status `collapsed`); the lease is then released as
    /// [`FillEnd::Stored`], so that workers which registered for it
    /// meanwhile serve from the store too. `Err` gives the fetch back, to
    /// go to the origin: nothing usable is stored, or the request's own
    /// directives refused the stored answer (`NotAccepted`), which only
    /// the origin can replace.
    fn answer_under_lease(
        &mut self,
        fetch: Box<Fetch>,
        hash: u64,
        key: &[u8],
    ) -> Result<(), Box<Fetch>> {
        if !matches!(fetch.found, Found::Absent | Found::VaryMiss | Found::Stale) {
            return Err(fetch);
        }
        match self.respond_collapsed(fetch) {
            Ok(()) => {
                self.counters().incr(Counter::LeaseRecheckHit);
                self.leases
                    .release(self.worker_index, hash, key, FillEnd::Stored);
                Ok(())
            }
            Err(fetch) => {
                self.counters().incr(Counter::LeaseRecheckMiss);
                Err(fetch)
            }
        }
    }

    /// Refresh a stale key in the background (RFC 5861 §3): the refresh
    /// leads a fill, so requests that must validate meanwhile wait for it.
    /// Skipped when a fetch for the key is under way on this worker, or
    /// another worker holds the key's lease: one refresh per key at a time.
    pub(super) fn start_refresh(&mut self, mut fetch: Box<Fetch>) {
        let Some((hash, key)) = fetch.key.as_ref().map(|(h, k)| (*h, k.clone())) else {
            self.give_buffer(fetch.req);
            return;
        };
        let Some(id) = self.lead_refresh(hash, key) else {
            self.give_buffer(fetch.req);
            return;
        };
        // Refreshed by another worker since this request found it due?
        let key = fetch.key.as_ref().map_or(&[][..], |(_, k)| k);
        let mut item = self.take_buffer();
        let percent = self.refresh_ahead_percent;
        let under_lease = self.stored_under_lease(hash, key, &mut item, percent);
        self.give_buffer(item);
        if under_lease.is_err_and(|end| end == FillEnd::Stored) {
            self.counters().incr(Counter::LeaseRecheckHit);
            self.drop_led_fill(hash, id, FillEnd::Stored);
            self.give_buffer(fetch.req);
            return;
        }
        self.counters().incr(Counter::LeaseRecheckMiss);
        fetch.fill_id = Some(id);
        self.counters().incr(Counter::Refreshes);
        self.dispatch(fetch);
    }

    /// Lead a fill for a background refresh of `key`: the id of the new
    /// fill, or `None` when a fetch for the key is under way on this
    /// worker, or another worker holds the key's lease.
    pub(super) fn lead_refresh(&mut self, hash: u64, key: Box<[u8]>) -> Option<u64> {
        let now = self.clock.now;
        if self.fills.by_hash.contains_key(&hash)
            || !self.leases.try_acquire(self.worker_index, hash, &key, now)
        {
            return None;
        }
        let id = self.fills.next_id;
        self.fills.next_id += 1;
        self.fills.by_hash.insert(
            hash,
            Fill {
                id,
                key,
                started: now,
                waiters: Vec::new(),
                waited: 0,
                remote: false,
                leased: true,
            },
        );
        Some(id)
    }

    /// End a fill from [`Proxy::lead_refresh`] that sent nothing (before
    /// any event could add waiters here): its lease goes, and other
    /// workers' waiters act on `end`.
    pub(super) fn drop_led_fill(&mut self, hash: u64, id: u64, end: FillEnd) {
        let fill = match self.fills.by_hash.get(&hash) {
            Some(f) if f.id == id => self.fills.by_hash.remove(&hash),
            _ => None,
        };
        let Some(fill) = fill else { return };
        debug_assert!(fill.waiters.is_empty(), "no event ran since it was led");
        if fill.leased {
            self.leases.release(self.worker_index, hash, &fill.key, end);
        }
    }

    /// Another worker's fill for a key this worker waits on is over.
    pub(super) fn lease_notice(&mut self, notice: Notice) {
        let waiters = match self.fills.by_hash.get(&notice.hash) {
            Some(f) if f.remote && f.key == notice.key => {
                self.fills.by_hash.remove(&notice.hash).map(|f| {
                    self.counters().record(Histogram::CoalesceWaiters, f.waited);
                    f.waiters
                })
            }
            _ => None, // released after its wait limit, or filled here since
        };
        let Some(waiters) = waiters else { return };
        if notice.end == FillEnd::Release {
            if let Some(first) = waiters.first() {
                self.mark_hit_for_miss(first);
            }
        }
        for waiter in waiters {
            match notice.end {
                FillEnd::Stored => {
                    self.waiter_released(&waiter);
                    if let Err(waiter) = self.respond_collapsed(waiter) {
                        self.dispatch(waiter);
                    }
                }
                FillEnd::Release => {
                    self.waiter_released(&waiter);
                    self.dispatch(waiter);
                }
                // The first leads a new fill (or waits on another worker's),
                // the others join it: still one fetch for the key.
                FillEnd::Refetch => self.fetch_or_wait(waiter),
            }
        }
    }

    /// Answer a waiter from the store, as the request it waited for stored
    /// it; `Err` gives the waiter back when no fresh item is there. A
    /// waiter whose own preconditions select the stored 200 gets a 304
    /// (see [`put_collapsed_fields`]).
    fn respond_collapsed(&mut self, waiter: Box<Fetch>) -> Result<(), Box<Fetch>> {
        let Some((hash, key)) = waiter.key.as_ref().map(|(h, k)| (*h, k.clone())) else {
            return Err(waiter);
        };
        if waiter.range.is_some() {
            return self.respond_collapsed_range(waiter, hash, &key);
        }
        let now_secs = self.clock.unix_secs;
        // The answer fetched for this request may be served even if its
        // lifetime ran out meanwhile (a one-second max-age stored late in a
        // second): one that was fresh after the request arrived is newer
        // than whatever sent the request to the origin. Refusing it would
        // send every waiter to the origin at once.
        let request_secs = waiter.request_time_secs;
        let usable = move |meta: &crate::store::ItemMeta| {
            meta.is_fresh(now_secs) || meta.expires_secs() > request_secs
        };
        let mut buf = self.take_buffer();
        // The waiter's own fields choose its variant when the response varies.
        let mut fields = [httparse::EMPTY_HEADER; crate::config::HEADERS_COUNT_CAP];
        let mut req = httparse::Request::new(&mut fields);
        let request = match req.parse(&waiter.req) {
            Ok(_) => &*req.headers,
            Err(_) => &[][..],
        };
        self.key.clear();
        self.key.extend_from_slice(&key);
        let asker: &Fetch = &waiter;
        let (hit, _, _) = self.lookup_varied(hash, request, &mut buf, |b, hit| {
            usable(&hit.meta) && put_collapsed_fields(b, hit, asker, now_secs)
        });
        if !hit.is_some_and(|h| usable(&h.meta)) {
            self.give_buffer(buf);
            return Err(waiter);
        }
        self.fetch_respond(&waiter, buf, Counter::OutcomeCollapsed);
        self.give_buffer(waiter.req);
        Ok(())
    }

    /// Take the waiters of the fill `fetch` led, if it is still the current
    /// one, and release its lease: other workers' waiters learn whether the
    /// answer is in the store.
    #[allow(clippy::vec_box)]
    fn take_fill(&mut self, fetch: &Fetch, end: FillEnd) -> Option<Vec<Box<Fetch>>> {
        let id = fetch.fill_id?;
        let (hash, key) = fetch.key.as_ref()?;
        let fill = match self.fills.by_hash.get(hash) {
            Some(fill) if fill.id == id => self.fills.by_hash.remove(hash)?,
            _ => return None,
        };
        if fill.leased {
            self.leases.release(self.worker_index, *hash, key, end);
        }
        self.counters()
            .record(Histogram::CoalesceWaiters, fill.waited);
        for waiter in &fill.waiters {
            self.waiter_released(waiter);
        }
        Some(fill.waiters)
    }

    /// The filler's response is complete. `share` says whether waiters may be
    /// answered with it; `answer` composes a waiter's response.
    pub(super) fn fill_complete(
        &mut self,
        fetch: &Fetch,
        outcome: Outcome,
        stored: bool,
        mut answer: impl FnMut(&mut Proxy, &Fetch) -> Vec<u8>,
    ) {
        let end = match outcome {
            _ if stored => FillEnd::Stored,
            Outcome::Release => FillEnd::Release,
            Outcome::Share | Outcome::FromStore => FillEnd::Refetch,
        };
        let Some(waiters) = self.take_fill(fetch, end) else {
            return;
        };
        if outcome == Outcome::Release {
            self.mark_hit_for_miss(fetch);
        }
        for waiter in waiters {
            match outcome {
                Outcome::FromStore => {
                    if let Err(waiter) = self.respond_collapsed(waiter) {
                        self.dispatch(waiter);
                    }
                }
                Outcome::Share => {
                    let resp = if waiter.streaming {
                        Vec::new() // all of it is out already
                    } else {
                        answer(self, &waiter)
                    };
                    self.fetch_respond(&waiter, resp, Counter::OutcomeCollapsed);
                    self.give_buffer(waiter.req);
                }
                Outcome::Release => self.dispatch(waiter),
            }
        }
    }

    /// The filler failed with `status`: its waiters get the same answer.
    pub(super) fn fill_failed(&mut self, fetch: &Fetch, status: u16, detail: &str) {
        let Some(waiters) = self.take_fill(fetch, FillEnd::Refetch) else {
            return;
        };
        for waiter in waiters {
            self.fail_fetch(waiter, status, detail);
        }
    }

    /// Is this key remembered as not storable?
    pub(super) fn is_hit_for_miss(&self, hash: u64, key: &[u8]) -> bool {
        self.fills
            .hit_for_miss
            .get(&hash)
            .is_some_and(|(k, until)| &k[..] == key && *until > self.clock.unix_secs)
    }

    /// The waiters of the fill `fetch` leads, lent out (see `fill_waiters_put`).
    #[allow(clippy::vec_box)]
    pub(super) fn fill_waiters_take(&mut self, fetch: &Fetch) -> Vec<Box<Fetch>> {
        match self.led_fill(fetch) {
            Some(fill) => std::mem::take(&mut fill.waiters),
            None => Vec::new(),
        }
    }

    /// Give back the waiters lent by `fill_waiters_take`.
    #[allow(clippy::vec_box)]
    pub(super) fn fill_waiters_put(&mut self, fetch: &Fetch, waiters: Vec<Box<Fetch>>) {
        if let Some(fill) = self.led_fill(fetch) {
            debug_assert!(fill.waiters.is_empty(), "waiters joined while lent");
            fill.waiters = waiters;
        }
    }

    fn led_fill(&mut self, fetch: &Fetch) -> Option<&mut Fill> {
        let id = fetch.fill_id?;
        let (hash, _) = fetch.key.as_ref()?;
        self.fills.by_hash.get_mut(hash).filter(|f| f.id == id)
    }

    /// A waiter's wait is over (answered, failed or released to fetch).
    fn waiter_released(&self, waiter: &Fetch) {
        self.counters()
            .record_duration(Histogram::CoalesceWait, waiter.started.elapsed());
    }

    pub(super) fn mark_hit_for_miss(&mut self, fetch: &Fetch) {
        let Some((hash, key)) = fetch.key.as_ref() else {
            return;
        };
        let until = self.clock.unix_secs + self.fills.hit_for_miss_secs;
        let now_secs = self.clock.unix_secs;
        let hfm = &mut self.fills.hit_for_miss;
        if hfm.len() >= self.fills.hit_for_miss_max {
            hfm.retain(|_, (_, t)| *t > now_secs);
            if hfm.len() >= self.fills.hit_for_miss_max {
                return; // full of live marks: coalescing stays on for this key
            }
        }
        hfm.insert(*hash, (key.clone(), until));
        self.counters().incr(Counter::HitForMiss);
    }

    /// Per tick: fills older than the wait limit release their waiters.
    pub(super) fn coalesce_tick(&mut self, now: Instant) {
        let timeout = self.limits.coalesce_wait_timeout;
        if self.fills.by_hash.is_empty() {
            return;
        }
        let overdue: Vec<u64> = self
            .fills
            .by_hash
            .iter()
            .filter(|(_, f)| {
                f.waiters.iter().any(|w| !w.streaming) && now.duration_since(f.started) >= timeout
            })
            .map(|(h, _)| *h)
            .collect();
        for hash in overdue {
            let waiters = match self.fills.by_hash.get_mut(&hash) {
                // Waiting on another worker that did not answer in time:
                // forget that fill, so later misses lead or wait anew.
                Some(fill) if fill.remote => match self.fills.by_hash.remove(&hash) {
                    Some(fill) => {
                        self.counters()
                            .record(Histogram::CoalesceWaiters, fill.waited);
                        fill.waiters
                    }
                    None => continue,
                },
                // Those being streamed to keep their place: their answer is
                // arriving, bounded by the origin response timeout.
                Some(fill) => {
                    let (streaming, released): (Vec<_>, Vec<_>) = std::mem::take(&mut fill.waiters)
                        .into_iter()
                        .partition(|w| w.streaming);
                    fill.waiters = streaming;
                    released
                }
                None => continue,
            };
            self.counters()
                .add(Counter::CoalesceTimeouts, waiters.len() as u64);
            for waiter in waiters {
                self.waiter_released(&waiter);
                self.dispatch(waiter);
            }
        }
    }
}

/// Complete the head of a collapsed answer from a stored response, whose
/// head (status line and fields, no blank line) ends `b`: its framing,
/// `Age`, `Cache-Status` (`fwd` is why the waiter went forward,
/// `fwd-status` the stored status, and `collapsed`), `Via`, `Connection`
/// and the blank line. Returns whether the body follows.
///
/// The waiter's own `If-None-Match` / `If-Modified-Since`, when ringcache
/// validated for it, are judged against the stored 200 as the hit path
/// judges them (RFC 9111 §4.3.2): when they select it, a 304 head with the
/// fields RFC 9110 §15.4.5 lists replaces the stored one, without
/// `Content-Length` and without a body, for GET and HEAD alike.
fn put_collapsed_fields(b: &mut Vec<u8>, hit: &Hit, waiter: &Fetch, now_secs: u64) -> bool {
    let head_at = b.len() - hit.head_len;
    // The stored status line: `HTTP/1.1 NNN ...`.
    let mut status = *b"200";
    if let Some(s) = b[head_at..].get(9..12) {
        status.copy_from_slice(s);
    }
    let not_modified = &status == b"200" && client_not_modified(waiter, &b[head_at..]);
    if not_modified {
        let stored = b.split_off(head_at);
        put_not_modified_head(b, &stored);
    } else if hit.body_len > 0 || &status != b"204" {
        // RFC 9110 §8.6: no Content-Length in a 204.
        put_field_u64(b, b"Content-Length", hit.body_len as u64);
    }
    put_field_u64(b, b"Age", hit.meta.age_secs(now_secs));
    b.extend_from_slice(b"Cache-Status: ringcache; fwd=");
    // Why the waiter went forward: absent (`uri-miss`), no variant
    // matched (`vary-miss`), or stale.
    b.extend_from_slice(super::origin::fwd_reason(waiter));
    b.extend_from_slice(b"; fwd-status=");
    b.extend_from_slice(&status);
    b.extend_from_slice(b"; collapsed\r\nVia: 1.1 ringcache\r\n");
    put_connection(b, waiter.keep_alive, waiter.client_minor_version);
    b.extend_from_slice(b"\r\n");
    !not_modified && !waiter.client_head
}
