//! The proxy's hooks into the access log (`crate::access_log`).
//!
//! A request's record is started when its head is parsed (`log_begin`)
//! and is *pending* while `Proxy::request` runs: whatever answer is queued
//! for the client in that time (`client_respond`, or the fast hit path
//! writing straight into the client's output) is its answer, and
//! `log_end` writes its line. A request that goes to the origin carries its
//! record in its `Fetch`; when the fetch is answered (`fetch_respond`), the
//! record is pending again for that answer only (`log_swap_in` /
//! `log_swap_out`). Errors ringcache answers outside a request's handling
//! (bad input, 408, 431, a body that fails) start and end their own
//! record in `client_fail`.
//!
//! With the log off every hook is one branch on an `Option`.

use std::time::Instant;

use crate::access_log::{Record, RequestFields};
use crate::http::request::RequestHead;
use crate::metrics::{Counter, CACHE_OUTCOMES};
use crate::runtime::io::Token;

use super::origin::Fetch;
use super::Proxy;

/// The `outcome` label of a `ringcache_cache_status_total` counter.
fn outcome_label(c: Counter) -> &'static str {
    CACHE_OUTCOMES
        .iter()
        .find(|(o, _)| *o == c)
        .map_or("-", |(_, label)| label)
}

impl Proxy {
    /// A request head was parsed (`None`: it could not be): start its
    /// record when it is logged.
    pub(super) fn log_begin(&mut self, token: Token, head: Option<&RequestHead<'_, '_>>) {
        let Some(log) = self.access_log.as_mut() else {
            return;
        };
        self.log_in_request = true;
        let peer = match self.slots.get(super::token_slot(token)) {
            Some(super::Socket::Client(c)) => c.peer,
            _ => None,
        };
        let fields = head.map(|h| {
            let mut referer = None;
            let mut user_agent = None;
            for f in h.headers {
                let n = f.name.as_bytes();
                if n.eq_ignore_ascii_case(b"referer") {
                    referer = Some(f.value);
                } else if n.eq_ignore_ascii_case(b"user-agent") {
                    user_agent = Some(f.value);
                }
            }
            RequestFields {
                method: h.method_bytes,
                target: h.target,
                minor: h.minor_version,
                host: h.host,
                referer,
                user_agent,
            }
        });
        self.log_pending = log.begin(peer, fields.as_ref());
    }

    /// The request's handling is over: write the line of an answered
    /// record (one that went to the origin has left with its fetch).
    pub(super) fn log_end(&mut self) {
        self.log_in_request = false;
        if let (Some(log), Some(r)) = (self.access_log.as_mut(), self.log_pending.take()) {
            log.finish(r);
        }
    }

    /// What the cache did for the pending request.
    pub(super) fn log_outcome(&mut self, c: Counter) {
        if let Some(r) = self.log_pending.as_mut() {
            r.outcome = outcome_label(c);
        }
    }

    /// A whole response was queued for the pending request.
    pub(super) fn log_answer(&mut self, resp: &[u8]) {
        if let Some(r) = self.log_pending.as_mut() {
            r.answer_response(resp);
        }
    }

    /// The fast hit path answered the pending request.
    pub(super) fn log_answer_parts(&mut self, status: u16, body_bytes: u64) {
        if let Some(r) = self.log_pending.as_mut() {
            r.answer(status, body_bytes);
        }
    }

    /// The record a new fetch carries: the pending one, unless the fetch
    /// is a background refresh (its client was answered from the store).
    pub(super) fn log_for_fetch(&mut self, background: bool) -> Option<Box<Record>> {
        if background {
            None
        } else {
            self.log_pending.take()
        }
    }

    /// Make `fetch`'s record the pending one while its answer is queued;
    /// returns the record that was pending, for `log_swap_out`.
    pub(super) fn log_swap_in(&mut self, fetch: &Fetch, outcome: Counter) -> Option<Box<Record>> {
        self.access_log.as_ref()?;
        let mut r = fetch.log.take();
        if let Some(r) = r.as_mut() {
            r.outcome = outcome_label(outcome);
        }
        std::mem::replace(&mut self.log_pending, r)
    }

    /// Write the line of the fetch's answer and restore the pending record.
    pub(super) fn log_swap_out(&mut self, outer: Option<Box<Record>>) {
        if self.access_log.is_none() {
            return;
        }
        if let (Some(log), Some(r)) = (self.access_log.as_mut(), self.log_pending.take()) {
            log.finish(r);
        }
        self.log_pending = outer;
    }

    /// The origin's answer to `fetch` is complete.
    pub(super) fn log_origin(fetch: &mut Fetch, status: u16, took: std::time::Duration) {
        if let Some(r) = fetch.log.get_mut() {
            r.origin_status = Some(status);
            r.origin_us = Some(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
        }
    }

    /// Once per tick: hand on lines older than the flush interval.
    pub fn access_log_tick(&mut self, now: Instant) {
        if let Some(log) = self.access_log.as_mut() {
            log.tick(now);
        }
    }

    /// The worker is stopping: hand on every line.
    pub fn access_log_flush(&mut self) {
        if let Some(log) = self.access_log.as_mut() {
            log.flush();
        }
    }
}
